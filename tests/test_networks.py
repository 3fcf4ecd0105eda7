"""Every registered network gets the same CPU checks (shapes, finite outputs, ONNX export), plus
the registry's contract and the gaze-vector helpers of refinery.nets.gaze."""

from __future__ import annotations

import copy
import functools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from refinery import sim
from refinery.nets.gaze import (
    angular_error_deg,
    euclidean_loss,
    pitchyaw_to_vector,
    vector_to_pitchyaw,
)
from refinery.registry import (
    Registry,
    build_network,
    list_networks,
    network_info,
    register_network,
)

NETWORKS = list_networks()
REFINERS = list_networks("refiner")
DISCRIMINATORS = list_networks("discriminator")
TASKS = list_networks("task")
# Two sizes per network; the paper-sized hand nets are checked on small crops to stay fast.
# Nets with a `size_multiple` get sizes that are multiples of it; the first one (the example
# the ONNX export traces) is at least 2x the multiple: torch.export specialises a dimension
# m * Dim whose example value is m.
SIZES = {
    "simgan-refiner-hand": ((32, 32), (24, 40)),
    "simgan-discriminator-hand": ((32, 32), (48, 40)),
    "sggan-generator": ((512, 512), (256, 512)),
    "sggan-generator-small": ((64, 64), (32, 96)),
    "sggan-generator-small-resize": ((64, 64), (32, 96)),
    "sggan-generator-resnet": ((32, 32), (24, 40)),
    "spigan-generator": ((32, 32), (24, 40)),
    "spigan-generator-small": ((32, 32), (24, 40)),
    "fcn8s-vgg16": ((64, 64), (32, 96)),
    "fcn8s-vgg16-depth": ((64, 64), (32, 96)),
    "fcn8s-small": ((64, 64), (32, 96)),
    "fcn8s-small-depth": ((64, 64), (32, 96)),
}
DEFAULT_SIZES = ((35, 55), (36, 60))
# Large ONNX files: gaze-estimator ~102M parameters (400 MB), fcn8s-vgg16 ~134M (540 MB),
# sggan-generator 54M traced at 512×512; hand-hourglass: ~1000 graph nodes, ~40 s to export.
SLOW_EXPORT = {
    "gaze-estimator",
    "fcn8s-vgg16",
    "fcn8s-vgg16-depth",
    "sggan-generator",
    "hand-hourglass",
}
SLOW = {"sggan-generator"}  # 54M parameters at 512×512 on a 2-core CPU


def sizes(name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    return SIZES.get(name, DEFAULT_SIZES)


def param(name: str, slow: set[str] = SLOW):
    return pytest.param(name, marks=pytest.mark.slow) if name in slow else name


@functools.lru_cache(maxsize=4)  # the paper's gaze estimator is 400 MB: keep few alive
def model(name: str, input_size: tuple[int, int] | None = None) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"input_size": input_size} if input_size is not None else {}
    return build_network(name, **kwargs).eval()


def images(batch: int, channels: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, channels, *size), generator=generator) * 2 - 1  # [-1, 1]


def test_registry_lists_the_paper_networks():
    assert set(NETWORKS) >= {
        "simgan-refiner-gaze",
        "simgan-refiner-hand",
        "simgan-refiner-small",
        "simgan-discriminator-gaze",
        "simgan-discriminator-hand",
        "simgan-discriminator-small",
        "gaze-estimator",
        "gaze-estimator-small",
    }
    assert sorted(NETWORKS) == NETWORKS
    assert sorted(REFINERS + DISCRIMINATORS + TASKS) == NETWORKS


# -- every network ----------------------------------------------------------------------------


def last_conv(net: nn.Module) -> nn.Conv2d:
    last = [m for m in net.modules() if not isinstance(m, nn.Sequential | type(net))][-1]
    assert isinstance(last, nn.Conv2d), f"{type(net).__name__} does not end in a conv"
    return last


@pytest.mark.parametrize("name", [param(n) for n in NETWORKS])
def test_output_shape_and_finite(name):
    info = network_info(name)
    assert info.role in ("refiner", "discriminator", "task")
    assert info.channels in (1, 3)
    for i, size in enumerate(sizes(name)):
        net = model(name, None if info.fully_convolutional else size)
        assert all(s % getattr(net, "size_multiple", 1) == 0 for s in size)
        x = images(2 + i, info.channels, size)
        with torch.no_grad():
            y = net(x)
        assert torch.isfinite(y).all()
        if info.role == "refiner":
            assert y.shape == x.shape
        elif info.role == "discriminator":  # patch logits, one map per output of the last conv
            assert y.ndim == 4 and y.shape[:2] == (x.shape[0], last_conv(net).out_channels)
            assert y.shape[2] >= 1 and y.shape[3] >= 1
        elif info.fully_convolutional:  # dense prediction at the input's size / output_stride
            stride = getattr(net, "output_stride", 1)  # heatmap nets: (B, stacks, J, h, w)
            assert y.ndim == (4 if stride == 1 else 5) and y.shape[0] == x.shape[0]
            assert y.shape[-2:] == tuple(-(-s // stride) for s in x.shape[2:])
        else:
            assert y.shape == (x.shape[0], 3)


@pytest.mark.parametrize("name", [param(n) for n in NETWORKS])
def test_channels_argument(name):
    info = network_info(name)
    other = 3 if info.channels == 1 else 1
    net = build_network(name, channels=other).eval()
    size = sizes(name)[0] if info.fully_convolutional else info.input_size
    with torch.no_grad():
        y = net(images(1, other, size))
    assert y.shape[0] == 1 and (info.role != "refiner" or y.shape[1] == other)


@pytest.mark.parametrize("name", [param(n) for n in REFINERS])
def test_refiner_range_and_batch_independence(name):
    net = model(name)
    x = images(4, network_info(name).channels, sizes(name)[0]) * 5  # tanh still bounds it
    with torch.no_grad():
        y = net(x)
        alone = torch.cat([net(x[i : i + 1]) for i in range(4)])
    assert y.min() >= -1 and y.max() <= 1
    torch.testing.assert_close(y, alone, atol=1e-5, rtol=0)
    assert net.value_range == (-1.0, 1.0)


def test_instance_norm_refiner_is_batch_independent():
    net = build_network("simgan-refiner-small", norm="instance").eval()
    x = images(3, 1, (35, 55))
    with torch.no_grad():
        torch.testing.assert_close(net(x)[1:2], net(x[1:2]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="norm"):
        build_network("simgan-refiner-small", norm="batch")


@pytest.mark.parametrize("name", [param(n) for n in REFINERS if n.startswith("simgan")])
def test_reflect_padding_leaves_no_frame(name):
    """A flat image refines to a flat image with reflect padding: no layer sees a border. With
    zeros the borders differ from the centre (the frame lines of refined eyes)."""
    flat = torch.full((1, 1, 24, 30), 0.3)
    torch.manual_seed(0)
    reflect = build_network(name, padding="reflect").eval()
    torch.manual_seed(0)
    zeros = build_network(name, padding="zeros").eval()
    with torch.no_grad():
        out = reflect(flat)
        framed = zeros(flat)
    assert float(out.max() - out.min()) < 1e-5
    assert float(framed.max() - framed.min()) > 1e-3
    with pytest.raises(ValueError, match="padding"):
        build_network(name, padding="circular-ish")


@pytest.mark.parametrize("name", DISCRIMINATORS)
def test_discriminator_emits_unbounded_logits(name):
    net = copy.deepcopy(model(name))
    lasts = [last_conv(b) for b in getattr(net, "branches", (net,))]  # a two-scale D: each head
    # Shift even logits down and odd ones up (SimGAN: "refined" down, "real" up; one-logit
    # nets: down): every one must show through unclipped.
    signs = torch.tensor([(-1.0) ** (k + 1) for k in range(lasts[0].out_channels)])
    with torch.no_grad():
        for last in lasts:
            last.bias.copy_(50.0 * signs)
        y = net(images(4, network_info(name).channels, sizes(name)[0]))
    assert (y * signs.view(1, -1, 1, 1) > 0).all(), (
        "logits are clipped at 0: is there a ReLU on the last layer?"
    )


def test_discriminator_patch_maps():
    with torch.no_grad():
        gaze = model("simgan-discriminator-gaze")(images(1, 1, (35, 55)))
        hand = build_network("simgan-discriminator-hand").eval()(images(1, 1, (224, 224)))
    assert gaze.shape == (1, 2, 9, 14)
    assert hand.shape == (1, 2, 7, 7)


def test_receptive_fields_of_the_eye_discriminators():
    """The small discriminator's logits each see 23×23 pixels, the local one's 11×11, measured
    as the input pixels a centre logit's gradient reaches (random weights, no max-pool to
    route the gradient to one pixel of each window in the local one)."""
    from refinery.nets.simgan import LOCAL_LAYERS, SMALL_LAYERS, receptive_field

    assert receptive_field(SMALL_LAYERS) == 23 and receptive_field(LOCAL_LAYERS) == 11
    torch.manual_seed(0)
    net = build_network("simgan-discriminator-local")
    x = images(1, 1, (35, 55)).requires_grad_(True)
    y = net(x)
    assert y.shape == (1, 2, 18, 28)
    y[0, :, 9, 14].sum().backward()
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    assert rows.max() - rows.min() + 1 == 11 and cols.max() - cols.min() + 1 == 11


def test_wide_local_discriminator_judges_the_local_windows_with_twice_the_maps():
    from refinery.nets.simgan import LOCAL_LAYERS, LOCAL_WIDE_LAYERS, receptive_field

    assert receptive_field(LOCAL_WIDE_LAYERS) == receptive_field(LOCAL_LAYERS) == 11
    wide, local = (build_network(f"simgan-discriminator-local{s}") for s in ("-wide", ""))
    maps = [
        [m.out_channels for m in n.modules() if isinstance(m, nn.Conv2d)] for n in (wide, local)
    ]
    assert maps[0] == [2 * c for c in maps[1][:-1]] + [2]
    with torch.no_grad():
        assert wide(images(1, 1, (35, 55))).shape == (1, 2, 18, 28)


def test_two_scale_discriminator_weighs_its_scales_equally():
    """The fine (11×11) and coarse (23×23) heads' maps are stacked at the fine map's size, so
    the local adversarial loss of the whole map is the mean of the two heads' losses."""
    from refinery.losses import REAL, local_adversarial_loss

    torch.manual_seed(0)
    net = build_network("simgan-discriminator-two-scale")
    x = images(3, 1, (35, 55))
    with torch.no_grad():
        y, fine, coarse = net(x), net.fine(x), net.coarse(x)
    assert fine.shape == (3, 2, 18, 28) and coarse.shape == (3, 2, 9, 14)
    assert y.shape == (3, 2, 36, 28)
    assert torch.equal(y[:, :, :18], fine)
    assert torch.equal(y[:, :, 18::2, ::2], coarse) and torch.equal(y[:, :, 19::2, 1::2], coarse)
    both = local_adversarial_loss(y, REAL)
    halves = (local_adversarial_loss(fine, REAL) + local_adversarial_loss(coarse, REAL)) / 2
    assert torch.allclose(both, halves, atol=1e-6)


def test_gaze_estimator_layout():
    net = model("gaze-estimator")
    assert net.config.feature_size == (5, 10)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (9600, 9600),
        (9600, 1000),
        (1000, 3),
    ]
    small = sum(p.numel() for p in model("gaze-estimator-small").parameters())
    assert 200_000 < small < 400_000


@pytest.mark.parametrize("name", [n for n in TASKS if not network_info(n).fully_convolutional])
def test_task_network_refuses_other_sizes(name):
    with pytest.raises(ValueError, match="35×55"):
        model(name)(images(1, 1, (36, 60)))


@pytest.mark.parametrize(
    "name", [n for n in NETWORKS if n.startswith(("sggan-gen", "spigan-gen", "fcn8s"))]
)
def test_strided_networks_refuse_sizes_that_are_not_multiples(name):
    net = model(name)
    m = net.size_multiple
    assert m > 1
    with pytest.raises(ValueError, match=f"multiples of {m}"):
        net(images(1, network_info(name).channels, (m + m // 2, m)))


# -- ONNX -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # inside torch.onnx
@pytest.mark.parametrize("name", [param(n, SLOW_EXPORT) for n in NETWORKS])
def test_onnx_export_matches_torch(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from torch.export import Dim

    info = network_info(name)
    net = model(name)
    c, m = info.channels, getattr(net, "size_multiple", 1)
    first, second = sizes(name)
    if not info.fully_convolutional:
        first = second = info.input_size  # dynamic batch only
    dims = {0: Dim.DYNAMIC}
    if info.fully_convolutional and m == 1:
        dims |= {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    elif info.fully_convolutional:
        dims |= {2: m * Dim("h_over_m", min=1), 3: m * Dim("w_over_m", min=1)}
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        net, (images(2, c, first),), str(path), dynamo=True, dynamic_shapes=(dims,), verbose=False
    )
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (input_name,) = [i.name for i in session.get_inputs()]
    for batch, size in ((2, first), (3, second)):
        x = images(batch, c, size, seed=batch)
        with torch.no_grad():
            expected = net(x).numpy()
            exact = copy.deepcopy(net).double()(x.double()).numpy()
        (got,) = session.run(None, {input_name: x.numpy()})
        assert got.shape == expected.shape
        # torch's FP32 output is itself ~1e-5 off the exact (FP64) one for deep instance-norm
        # nets (9 ResNet blocks, SG-GAN's logits up to ~5): allow 4x that noise, at least 1e-5
        tolerance = max(1e-5, 4 * float(np.abs(expected - exact).max()))
        assert np.abs(got - expected).max() < tolerance


# -- the registry -----------------------------------------------------------------------------


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_network("simgan-refiner-gaze", role="refiner", input_size=(35, 55))
    registry = Registry("network")

    def builder(*, channels: int = 1) -> nn.Module:
        return nn.Identity()

    registry.register("a", role="refiner", input_size=(8, 8), fully_convolutional=True)(builder)
    with pytest.raises(ValueError, match="'a' is already registered"):
        registry.register("a", role="task", input_size=(8, 8), fully_convolutional=False)
    assert registry.names() == ["a"]


def test_builders_must_be_keyword_only_and_roles_known():
    registry = Registry("network")

    def positional(channels: int = 1) -> nn.Module:
        return nn.Identity()

    with pytest.raises(TypeError, match="keyword-only"):
        registry.register("p", role="refiner", input_size=(8, 8), fully_convolutional=True)(
            positional
        )
    with pytest.raises(ValueError, match="role"):
        registry.register("r", role="generator", input_size=(8, 8), fully_convolutional=True)
    assert registry.names() == []


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(KeyError) as error:
        build_network("simgan-refiner-huge")
    for name in NETWORKS:
        assert name in str(error.value)
    with pytest.raises(KeyError):
        network_info("nope")


def test_unknown_keyword_raises_type_error():
    with pytest.raises(TypeError, match=r"'blocks'.*takes channels, norm"):
        build_network("simgan-refiner-gaze", blocks=5)


def test_build_after_importing_only_the_registry():
    code = (
        "import refinery.registry as r; "
        "m = r.build_network('simgan-refiner-small'); "
        "print(type(m).__name__, len(r.list_networks()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["SimGANRefiner", str(len(NETWORKS))]


def test_configs_are_frozen():
    net = model("simgan-refiner-gaze")
    assert (net.config.kernel_size, net.config.blocks, net.config.features) == (3, 4, 64)
    with pytest.raises(AttributeError):
        net.config.blocks = 5
    hand = network_info("simgan-refiner-hand")
    assert hand.input_size == (224, 224) and hand.fully_convolutional


# -- gaze vectors -----------------------------------------------------------------------------


def test_angular_error_of_known_vectors():
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -2.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(angular_error_deg(x, y), torch.tensor([90.0, 0.0, 180.0, 45.0]))
    same = torch.nn.functional.normalize(torch.randn(100, 3, dtype=torch.float64), dim=-1)
    error = angular_error_deg(same, same * 7)
    assert torch.isfinite(error).all() and error.max() < 1e-5
    assert float(angular_error_deg(torch.zeros(1, 3), torch.ones(1, 3))) == pytest.approx(90.0)
    # a vector and itself: exactly 0 in float32, where arccos of the rounded cosine read up to
    # 0.028 deg (and evaluate a drift of 0.0012 deg between identical images on an Intel CPU)
    look = torch.nn.functional.normalize(torch.randn(10_000, 3), dim=-1)
    assert look.dtype == torch.float32 and float(angular_error_deg(look, look).abs().max()) == 0.0
    # small angles keep their precision: 1e-4 rad apart, in float32
    tilted = torch.stack(
        [torch.cos(torch.tensor(1e-4)), torch.sin(torch.tensor(1e-4)), torch.tensor(0.0)]
    )
    small = float(angular_error_deg(torch.tensor([1.0, 0.0, 0.0]), tilted))
    assert small == pytest.approx(math.degrees(1e-4), rel=1e-3)


def test_pitchyaw_round_trip_and_convention():
    pitchyaw = torch.tensor([[0.0, 0.0], [0.3, -0.5], [-0.5, 0.6], [0.2, 1.2]], dtype=torch.float64)
    vec = pitchyaw_to_vector(pitchyaw)
    torch.testing.assert_close(vec.norm(dim=-1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(vector_to_pitchyaw(vec * 2.5), pitchyaw)
    torch.testing.assert_close(vec[0], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))
    up = pitchyaw_to_vector(torch.tensor([0.4, 0.0]))
    assert up[1] < 0  # positive pitch looks up: -y in image coordinates


def test_pitchyaw_agrees_with_the_eye_simulator():
    for index in range(5):
        label = sim.render("gaze", "synthetic", index)["json"]
        pitchyaw = torch.tensor([label["gaze"]["pitch"], label["gaze"]["yaw"]], dtype=torch.float64)
        look = torch.tensor(label["look_vec"], dtype=torch.float64)
        torch.testing.assert_close(pitchyaw_to_vector(pitchyaw), look, atol=2e-5, rtol=0)
        torch.testing.assert_close(vector_to_pitchyaw(look), pitchyaw, atol=1e-4, rtol=0)
        assert angular_error_deg(pitchyaw_to_vector(pitchyaw), look) < 2e-3


def test_euclidean_loss_by_hand():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], requires_grad=True)
    true = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    loss = euclidean_loss(pred, true)
    assert math.isclose(loss.item(), (4 + 9 + 1) / (2 * 2))
    loss.backward()
    torch.testing.assert_close(pred.grad, (pred.detach() - true) / 2)
