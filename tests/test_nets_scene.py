"""Scene networks: SG-GAN's U-Net and semantic-aware discriminator, SPIGAN's generator, PatchGAN
and FCN8s task/privileged nets, and the VGG layers with their local-file weight loading.

The registry-wide checks (shapes, finite outputs, ONNX export) are in test_networks.py and the
engine export of every generator in test_engines.py; these are the family-specific ones."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from refinery.nets.sggan import (
    UNetConfig,
    UNetGenerator,
    nearest_labels,
    semantic_mask,
    semantic_select,
)
from refinery.nets.spigan import FCN8s, PatchDiscriminator, ResnetGenerator, bilinear_kernel
from refinery.nets.vgg import (
    PERCEPTUAL_LAYERS,
    UntrainedWeightsWarning,
    VGG16Features,
    VGG19Features,
    load_vgg_weights,
    vgg19_perceptual_layers,
    vgg_layer_index,
    vgg_layers,
)
from refinery.registry import build_network, network_info


def images(batch: int, channels: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, channels, *size), generator=generator) * 2 - 1  # [-1, 1]


def count(net: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


# -- generators -------------------------------------------------------------------------------


def test_unet_generator_shapes_range_and_norms():
    net = build_network("sggan-generator-small").eval()
    assert isinstance(net, UNetGenerator) and net.size_multiple == 32
    for size in ((32, 64), (64, 32)):
        x = images(2, 3, size) * 4  # far outside [-1, 1]: tanh still bounds the output
        with torch.no_grad():
            y = net(x)
        assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    # instance norm after every conv but the innermost encoder one and the output layer
    assert count(net, nn.InstanceNorm2d) == 2 * (net.config.downs - 1)
    assert all(m.affine for m in net.modules() if isinstance(m, nn.InstanceNorm2d))
    assert isinstance(list(net.modules())[-1], nn.Tanh)
    with pytest.raises(ValueError, match="multiples of 32"):
        net(images(1, 3, (48, 64)))


def test_unet_paper_layout_and_dropout():
    paper = UNetConfig()  # SG-GAN's generator_unet: e1 ... e8
    assert paper.widths == (64, 128, 256, 512, 512, 512, 512, 512)
    assert network_info("sggan-generator").input_size == (256, 512)
    net = build_network("sggan-generator-small")
    assert count(net, nn.Dropout) == 3  # d1 ... d3, as SG-GAN
    x = images(1, 3, (32, 32))
    with torch.no_grad():
        assert not torch.equal(net.train()(x), net(x))  # dropout active in training
        torch.testing.assert_close(net.eval()(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "affine", "transposed"),
    [("spigan-generator-small", False, 0), ("sggan-generator-resnet", True, 2)],
)
def test_resnet_generator_shapes_range_and_norms(name, affine, transposed):
    net = build_network(name).eval()
    assert isinstance(net, ResnetGenerator) and net.size_multiple == 4
    for size in ((16, 24), (32, 16)):
        x = images(2, 3, size) * 4
        with torch.no_grad():
            y = net(x)
        assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    blocks = net.config.blocks
    assert count(net, nn.InstanceNorm2d) == 3 + 2 * blocks + 2
    assert all(m.affine is affine for m in net.modules() if isinstance(m, nn.InstanceNorm2d))
    strided = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 2 and count(net, nn.ConvTranspose2d) == transposed
    assert count(net, nn.Upsample) == 2 - transposed  # the small one resizes, then convolves
    with pytest.raises(ValueError, match="multiples of 4"):
        net(images(1, 3, (18, 16)))


def test_spigan_generator_is_cyclegans_resnet_9blocks():
    net = build_network("spigan-generator")
    assert (net.config.features, net.config.blocks, net.config.upsample) == (64, 9, "transpose")
    assert 11_000_000 < sum(p.numel() for p in net.parameters()) < 11_500_000


def test_resize_upsampling_has_no_checkerboard():
    """Upsampling a constant map: resize-convolution gives a constant interior; a transposed
    conv of stride 2 and kernel 3 covers output pixels unevenly and prints the strides'
    lattice, whatever its weights."""
    from refinery.nets.spigan import ResnetGeneratorConfig

    torch.manual_seed(0)
    spread = {}
    for upsample in ("transpose", "resize"):
        cfg = ResnetGeneratorConfig(channels=3, features=8, blocks=1, upsample=upsample)
        net = ResnetGenerator(cfg).eval()
        up = next(
            m
            for m in net.model
            if isinstance(m, nn.ConvTranspose2d)
            or (isinstance(m, nn.Sequential) and isinstance(m[0], nn.Upsample))
        )
        with torch.no_grad():
            out = up(torch.ones(1, 32, 8, 8))[..., 2:-2, 2:-2]
        assert out.shape[1:] == (16, 12, 12)
        spread[upsample] = float(out.std(dim=(-2, -1)).max())
    assert spread["resize"] < 1e-5 < 1e-2 < spread["transpose"]
    with pytest.raises(ValueError, match="upsample"):
        ResnetGeneratorConfig(upsample="bilinear")


# -- discriminators ---------------------------------------------------------------------------


def test_sggan_discriminator_has_one_map_per_group_at_one_eighth():
    net = build_network("sggan-discriminator-small").eval()
    assert isinstance(net, PatchDiscriminator) and net.config.padding == "same"
    with torch.no_grad():
        assert net(images(2, 3, (64, 128))).shape == (2, 8, 8, 16)  # (B, K, H/8, W/8)
        assert build_network("sggan-discriminator-small", groups=5)(
            images(1, 3, (32, 32))
        ).shape == (1, 5, 4, 4)
        paper = build_network("sggan-discriminator").eval()
        assert paper(images(1, 3, (256, 512))).shape == (1, 8, 32, 64)  # SG-GAN's h4
    assert count(net, nn.InstanceNorm2d) == 3 and count(net, nn.LeakyReLU) == 4


def test_spigan_discriminator_is_a_three_layer_patchgan():
    net = build_network("spigan-discriminator").eval()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.stride[0]) for m in convs] == [
        (64, 2),
        (128, 2),
        (256, 2),
        (512, 1),
        (1, 1),
    ]
    with torch.no_grad():
        assert net(images(1, 3, (320, 320))).shape == (1, 1, 38, 38)


# -- semantic selection -----------------------------------------------------------------------


def test_semantic_select_reads_the_channel_of_each_pixels_group():
    # K = 3 groups, a 2×2 logit map whose channel k holds 10 k + (pixel number): the value read
    # at a pixel names the channel it came from.
    logits = (torch.arange(3).view(1, 3, 1, 1) * 10 + torch.arange(4).view(1, 1, 2, 2)).float()
    seg = torch.tensor([[[0, 1], [2, 1]]])  # (B, H, W) at the logits' own size
    out = semantic_select(logits, seg)
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[0.0, 11.0], [22.0, 13.0]]
    changed = seg.clone()
    changed[0, 1, 1] = 0  # one pixel changes group: only it reads another channel
    after = semantic_select(logits, changed)[0, 0]
    assert after.tolist() == [[0.0, 11.0], [22.0, 3.0]]
    ignored = seg.clone()
    ignored[0, 0, 1], ignored[0, 1, 0] = 255, -1  # ignore ids, or anything outside [0, K)
    assert semantic_select(logits, ignored)[0, 0].tolist() == [[0.0, 0.0], [0.0, 13.0]]


def test_semantic_select_gradient_reaches_only_the_selected_channel():
    logits = torch.randn(2, 4, 3, 5, requires_grad=True)
    seg = torch.randint(0, 4, (2, 3, 5))
    semantic_select(logits, seg).sum().backward()
    torch.testing.assert_close(logits.grad, F.one_hot(seg, 4).permute(0, 3, 1, 2).float())


def test_semantic_mask_is_resized_with_nearest_neighbour():
    # 8×8 labels -> 2×2: each output pixel takes the input pixel nearest its centre, rows and
    # columns floor((i + 1/2) * 4) = 2 and 6; a bilinear resize of the one-hot would blend.
    seg = torch.zeros(1, 8, 8, dtype=torch.long)
    seg[0, :, 4:] = 1  # left half group 0, right half group 1
    seg[0, 2, 2] = 2  # the one pixel the top-left output reads
    mask = semantic_mask(seg, 3, (2, 2))
    assert mask.shape == (1, 3, 2, 2) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.sum(1).eq(1).all()  # exactly one group per output pixel: no blending
    assert mask[0].argmax(0).tolist() == [[2, 1], [0, 1]]
    # the same pixels F.interpolate's "nearest-exact" picks, for sizes that do not divide
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 19, (3, 37, 53), generator=generator)
    for size in ((5, 7), (12, 20), (37, 53), (64, 80)):
        expected = F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")
        assert torch.equal(nearest_labels(labels, size), expected[:, 0].long())


def test_semantic_select_resizes_labels_to_the_discriminator_output():
    net = build_network("sggan-discriminator-small").eval()
    x = images(2, 3, (64, 128))
    seg = torch.randint(0, 8, (2, 64, 128))
    with torch.no_grad():
        logits = net(x)  # (2, 8, 8, 16)
    out = semantic_select(logits, seg)
    assert out.shape == (2, 1, 8, 16)
    small = seg[:, 4::8, 4::8]  # nearest to each 8×8 block's centre
    torch.testing.assert_close(out[:, 0], logits.gather(1, small[:, None])[:, 0])


def test_semantic_select_refuses_float_labels_and_bad_shapes():
    logits = torch.zeros(1, 8, 4, 4)
    with pytest.raises(TypeError, match="nearest neighbour"):
        semantic_select(logits, torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        semantic_select(logits, torch.zeros(1, 1, 32, 32, dtype=torch.long))


# -- FCN8s ------------------------------------------------------------------------------------


def test_fcn8s_outputs_are_at_the_input_size():
    task = build_network("fcn8s-small", num_classes=7).eval()
    depth = build_network("fcn8s-small-depth").eval()
    assert isinstance(task, FCN8s) and task.size_multiple == 32
    for size in ((32, 64), (96, 64)):
        x = images(2, 3, size)
        with torch.no_grad():
            assert task(x).shape == (2, 7, *size)
            assert depth(x).shape == (2, 1, *size)
    assert build_network("fcn8s-small").config.out_channels == 19  # Cityscapes' train ids
    with pytest.raises(ValueError, match="multiples of 32"):
        task(images(1, 3, (48, 64)))


def test_fcn8s_backbone_is_vgg16_and_the_upsamplings_start_bilinear():
    net = build_network("fcn8s-small")
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and count(net.features, nn.MaxPool2d) == 5
    assert net.fc6.kernel_size == (7, 7) and net.fc7.kernel_size == (1, 1)
    assert [m.out_channels for m in convs][::3] == [8, 16, 32, 64, 64]  # 1/8 of VGG16's
    # a constant map stays constant through a bilinear 2× deconvolution (away from the border)
    up = nn.ConvTranspose2d(2, 2, 4, 2, 1, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(2, 4))
        y = up(torch.ones(1, 2, 4, 4))
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.ones(1, 2, 6, 6))
    torch.testing.assert_close(net.upscore2.weight, bilinear_kernel(19, 4))


# -- VGG --------------------------------------------------------------------------------------


def test_vgg_layer_indices_are_torchvisions():
    v16, v19 = vgg_layer_index(16), vgg_layer_index(19)
    convs16 = [i for name, i in v16.items() if name.startswith("conv")]
    assert convs16 == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28] and v16["pool5"] == 30
    assert (v19["relu1_2"], v19["relu3_2"], v19["relu5_2"], v19["pool5"]) == (3, 13, 31, 36)
    names = [type(m).__name__ for m in vgg_layers(19, width=8)]
    assert len(names) == 37 and names[v19["pool3"]] == "MaxPool2d"


def test_vgg19_perceptual_layers_and_frozen_weights():
    assert vgg19_perceptual_layers() == PERCEPTUAL_LAYERS
    with pytest.warns(UntrainedWeightsWarning, match="random-feature loss"):
        vgg = VGG19Features()
    assert vgg.out_channels == (64, 128, 256, 512, 512)
    x = images(2, 3, (32, 48)).requires_grad_()
    feats = vgg(x)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512]
    assert [tuple(f.shape[2:]) for f in feats] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert all((f >= 0).all() for f in feats)  # read after the ReLU
    sum(f.mean() for f in feats).backward()
    assert x.grad is not None and not any(p.requires_grad for p in vgg.parameters())
    assert len(vgg.features) == vgg_layer_index(19)["relu5_2"] + 1  # nothing built past it


def test_untrained_warning_text():
    with pytest.warns(UntrainedWeightsWarning) as record:
        VGG16Features(layers=("relu1_2",))
        load_vgg_weights(build_network("fcn8s-small-depth"), None)
    first, second = (str(w.message) for w in record)
    assert first.startswith("VGG16Features: no VGG16 weights file was given")
    assert "untrained (random init)" in first and "nothing is downloaded" in first
    assert "FCN8s: no VGG16 weights" in second and "task/privileged network" in second


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vgg_weights_round_trip_through_a_local_file(tmp_path, suffix):
    with pytest.warns(UntrainedWeightsWarning):
        vgg = VGG19Features(layers=("relu1_2", "relu2_2"))
    path = tmp_path / f"vgg19{suffix}"
    state = {k: v.contiguous() for k, v in vgg.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedWeightsWarning)  # a file: no warning
        again = VGG19Features(layers=("relu1_2", "relu2_2"), weights=path)
    x = images(1, 3, (16, 16))
    for a, b in zip(vgg(x), again(x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.warns(UntrainedWeightsWarning):
        deeper = VGG16Features(layers=("relu3_1",))  # needs features.10, not in the file
    with pytest.raises(ValueError, match=r"no VGG weights for features\.10\.weight"):
        load_vgg_weights(deeper, path)


def test_fcn8s_takes_a_torchvision_vgg16_file_with_its_classifier(tmp_path):
    net = build_network("fcn8s-small")
    # what torchvision's vgg16().state_dict() holds, at this net's widths
    state = {k: torch.randn_like(v) for k, v in net.state_dict().items() if k.startswith("feat")}
    state["classifier.0.weight"] = torch.randn(512, 64 * 7 * 7)
    state["classifier.0.bias"] = torch.randn(512)
    state["classifier.3.weight"] = torch.randn(512, 512)
    state["classifier.3.bias"] = torch.randn(512)
    state["classifier.6.weight"] = torch.randn(1000, 512)  # ImageNet's classes: not used
    torch.save(state, tmp_path / "vgg16.pth")
    loaded = load_vgg_weights(net, tmp_path / "vgg16.pth")
    assert len(loaded) == 26 + 4  # 13 convs, fc6, fc7; the score layers stay as they were
    torch.testing.assert_close(net.features[28].weight, state["features.28.weight"])
    torch.testing.assert_close(net.fc6.weight.flatten(1), state["classifier.0.weight"])
    torch.testing.assert_close(net.fc7.weight[:, :, 0, 0], state["classifier.3.weight"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vgg_weights(net, tmp_path / "missing.pth")


@pytest.mark.gpu("torchvision")
def test_torchvision_vgg_state_dicts_match_ours():
    import torchvision

    for depth, build in ((16, torchvision.models.vgg16), (19, torchvision.models.vgg19)):
        theirs = build(weights=None).features.state_dict()
        ours = vgg_layers(depth).state_dict()
        assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}


def test_unet_resize_upsampling_has_no_transposed_convs_and_keeps_the_layout():
    transposed = build_network("sggan-generator-small")
    resized = build_network("sggan-generator-small-resize").eval()
    assert count(transposed, nn.ConvTranspose2d) == 5 and count(resized, nn.ConvTranspose2d) == 0
    assert count(resized, nn.Upsample) == 5 and resized.size_multiple == 32
    assert count(resized, nn.InstanceNorm2d) == count(transposed, nn.InstanceNorm2d)
    x = images(2, 3, (32, 64))
    with torch.no_grad():
        y = resized(x)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    with pytest.raises(ValueError, match="upsample"):
        UNetConfig(upsample="bilinear")
