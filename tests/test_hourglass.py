"""The stacked hourglass of refinery.nets.hourglass: output sizes, config checks, heatmap
encoding / decoding, coordinate mapping, the loss, and a one-batch overfit that needs gradients
to reach every stack. Shapes, finiteness and ONNX export of both presets are in test_networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refinery.nets.hourglass import (
    HourglassConfig,
    StackedHourglass,
    from_heatmap,
    gaussian_heatmaps,
    heatmap_loss,
    heatmap_peaks,
    to_heatmap,
)
from refinery.registry import build_network, network_info


def depth_like(batch: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Smooth random fields in [-1, 1]: low-resolution noise upsampled bilinearly."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((batch, 1, 8, 8), generator=generator)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False) * 2 - 1


# -- the network ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "heatmap"),
    [((64, 64), (16, 16)), ((96, 96), (24, 24)), ((72, 40), (18, 10)), ((35, 55), (9, 14))],
)
def test_small_preset_output_size(size, heatmap):
    torch.manual_seed(0)
    net = build_network("hand-hourglass-small").eval()
    with torch.no_grad():
        y = net(depth_like(2, size))
    assert y.shape == (2, 2, 14, *heatmap)  # (B, stacks, joints, ceil(H/4), ceil(W/4))
    assert torch.isfinite(y).all()


def test_paper_preset():
    info = network_info("hand-hourglass")
    assert (info.role, info.channels, info.input_size) == ("task", 1, (224, 224))
    assert info.fully_convolutional
    torch.manual_seed(0)
    net = build_network("hand-hourglass").eval()
    config = net.config
    assert (config.stacks, config.features, config.depth, config.blocks) == (2, 256, 4, 1)
    assert 5_000_000 < sum(p.numel() for p in net.parameters()) < 8_000_000
    with torch.no_grad():
        y = net(depth_like(1, (64, 64)))
    assert y.shape == (1, 2, 14, 16, 16) and torch.isfinite(y).all()


def test_small_preset_size_and_arguments():
    net = build_network("hand-hourglass-small", joints=21, channels=2)
    assert 50_000 < sum(p.numel() for p in net.parameters()) < 200_000
    with torch.no_grad():
        y = net.eval()(torch.zeros(1, 2, 32, 32))
    assert y.shape == (1, 2, 21, 8, 8)


def test_stacks_are_merged_and_each_returned():
    net = StackedHourglass(HourglassConfig(stacks=3, features=16, depth=2, joints=5))
    assert len(net.stacks) == 3 and len(net.merge_features) == len(net.merge_heatmaps) == 2
    y = net(depth_like(2, (32, 32)))
    assert y.shape == (2, 3, 5, 8, 8)
    y[:, 0].sum().backward()  # the first stack's heatmaps depend on the stem, not on later stacks
    assert net.stem[0].weight.grad.abs().sum() > 0
    assert (net.stacks[2].score.weight.grad == 0).all()
    single = StackedHourglass(HourglassConfig(stacks=1, features=16, depth=1))
    assert single(depth_like(1, (16, 16))).shape == (1, 1, 14, 4, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": 0},
        {"joints": -1},
        {"stacks": 0},
        {"features": 30},  # not a multiple of 4
        {"depth": 0},
        {"blocks": 1.5},
        {"depth": True},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError, match="HourglassConfig"):
        HourglassConfig(**kwargs)


def test_config_is_frozen_and_keyword_only():
    config = HourglassConfig()
    with pytest.raises(AttributeError):
        config.stacks = 8
    with pytest.raises(TypeError):
        HourglassConfig(1, 14)


# -- heatmaps ---------------------------------------------------------------------------------


def test_gaussian_heatmaps_values():
    uv = torch.tensor([[[3.0, 5.0], [2.5, 1.0], [-20.0, 4.0], [math.nan, 2.0]]])
    maps = gaussian_heatmaps(uv, (8, 10), sigma=2.0)
    assert maps.shape == (1, 4, 8, 10)
    assert maps[0, 0, 5, 3] == 1.0 and maps[0, 0].max() == 1.0  # peak 1 at (u, v) = (3, 5)
    assert math.isclose(maps[0, 0, 5, 5].item(), math.exp(-4 / 8), rel_tol=1e-6)  # d = 2 px
    assert math.isclose(maps[0, 0, 4, 3].item(), math.exp(-1 / 8), rel_tol=1e-6)  # one row up
    torch.testing.assert_close(maps[0, 1, :, 2], maps[0, 1, :, 3])  # half-pixel: equal pair
    assert maps[0, 2].max() < 1e-10  # far outside the map
    assert (maps[0, 3] == 0).all()  # not annotated


def test_gaussian_heatmaps_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"\(B, J, 2\)"):
        gaussian_heatmaps(torch.zeros(4, 2), (8, 8))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_heatmaps(torch.zeros(1, 4, 2), (8, 8), sigma=0.0)


def test_peaks_recover_integer_and_half_pixel_positions():
    generator = torch.Generator().manual_seed(0)
    integer = torch.randint(1, 15, (3, 14, 2), generator=generator).float()
    peaks = heatmap_peaks(gaussian_heatmaps(integer, (16, 16)))
    assert peaks.shape == (3, 14, 2)
    torch.testing.assert_close(peaks, integer, atol=0, rtol=0)
    half = integer.clamp(max=13) + 0.5  # both pixels of the tie inside the map's interior
    error = (heatmap_peaks(gaussian_heatmaps(half, (16, 16), sigma=1.5)) - half).abs()
    assert error.max() <= 0.25 + 1e-6
    off = torch.tensor([[[6.3, 4.8]]])  # argmax (6, 5), shifted to (6.25, 4.75)
    peaks = heatmap_peaks(gaussian_heatmaps(off, (12, 12)))
    torch.testing.assert_close(peaks, torch.tensor([[[6.25, 4.75]]]))


def test_quarter_shift_direction_ties_and_borders():
    maps = torch.zeros(1, 5, 5, 6)
    maps[0, 0, 2, 3] = 1.0  # peak at (u, v) = (3, 2)
    maps[0, 0, 2, 4] = 0.5  # right neighbour higher than the left (0) -> u + 0.25
    maps[0, 0, 1, 3] = 0.3  # upper neighbour higher than the lower (0) -> v - 0.25
    maps[0, 1, 2, 3] = 1.0  # isolated peak: equal neighbours, no shift
    maps[0, 2, 1, 2] = maps[0, 2, 3, 4] = 1.0  # a tie: the first in row-major order wins
    maps[0, 2, 1, 1] = 0.2
    maps[0, 3, 0, 5] = 1.0  # top-right corner: no neighbour on one side, no shift
    maps[0, 3, 0, 4] = maps[0, 3, 1, 5] = 0.9
    maps[0, 4] = -1.0  # all negative (raw network output) decodes as well
    maps[0, 4, 3, 1], maps[0, 4, 3, 0], maps[0, 4, 3, 2] = -0.1, -0.5, -0.9
    maps[0, 4, 2, 1], maps[0, 4, 4, 1] = -0.4, -0.3
    expected = torch.tensor([[[3.25, 1.75], [3.0, 2.0], [1.75, 1.0], [5.0, 0.0], [0.75, 3.25]]])
    torch.testing.assert_close(heatmap_peaks(maps), expected)


# -- coordinates ------------------------------------------------------------------------------


def test_to_heatmap_known_values():
    uv = np.array([[1.5, 1.5], [2.0, 0.0], [127.5, 62.5]])
    out = to_heatmap(uv, (128, 128), (32, 32))
    assert isinstance(out, np.ndarray)
    # heatmap pixel 0 is the centre of image pixels 0..3 (u = 1.5); image pixel 0 is at -0.375
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.125, -0.375], [31.5, 15.25]])
    # u follows the width, v the height
    out = to_heatmap(torch.tensor([[3.5, 3.5]]), (64, 32), (16, 16))
    torch.testing.assert_close(out, torch.tensor([[1.5, 0.5]]))


def test_heatmap_coordinate_round_trip():
    generator = torch.Generator().manual_seed(0)
    uv = torch.rand(4, 14, 2, generator=generator, dtype=torch.float64) * 224
    heat = to_heatmap(uv, (224, 224), (56, 56))
    assert isinstance(heat, torch.Tensor) and heat.dtype == torch.float64
    torch.testing.assert_close(from_heatmap(heat, (56, 56), (224, 224)), uv)
    torch.testing.assert_close(to_heatmap(uv, (224, 224), (56, 56)) * 4 + 1.5, uv)
    grid = np.arange(8).reshape(4, 2)  # integers become floats
    back = from_heatmap(to_heatmap(grid, (30, 40), (9, 7)), (9, 7), (30, 40))
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, grid, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(u, v\)"):
        to_heatmap(np.zeros((3, 3)), (8, 8), (2, 2))


# -- loss -------------------------------------------------------------------------------------


def test_heatmap_loss_by_hand():
    target = torch.zeros(2, 3, 4, 4)
    output = torch.zeros(2, 2, 3, 4, 4, requires_grad=True)
    with torch.no_grad():
        output[:, 0] += 1.0  # stack 0: MSE 1
        output[:, 1, :, 0, 0] += 4.0  # stack 1: one pixel in 16 off by 4: MSE 1
    loss = heatmap_loss(output, target)
    assert math.isclose(loss.item(), 2.0)  # summed over stacks
    loss.backward()
    assert (output.grad[:, 1, :, 0, 0] > 0).all() and (output.grad[:, 0] > 0).all()
    weight = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    with torch.no_grad():
        output[:, :, 1] += 100.0  # joint 1 is masked out: no effect
    assert math.isclose(heatmap_loss(output, target, weight).item(), 2.0)
    assert heatmap_loss(output, target, torch.zeros(2, 3)).item() == 0.0


def test_heatmap_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="target"):
        heatmap_loss(torch.zeros(2, 2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="target"):
        heatmap_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="weight"):
        heatmap_loss(torch.zeros(2, 2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.ones(2, 2))


# -- training ---------------------------------------------------------------------------------


@pytest.mark.slow  # ~5-10 s on a 2-core CPU
def test_small_net_overfits_one_batch():
    torch.manual_seed(0)
    net = build_network("hand-hourglass-small").train()
    x = depth_like(4, (64, 64))
    generator = torch.Generator().manual_seed(1)
    uv = torch.rand(4, 14, 2, generator=generator) * 13 + 1  # (B, J, 2) in the 16×16 heatmap
    target = gaussian_heatmaps(uv, (16, 16))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        optimizer.zero_grad()
        output = net(x)  # (4, 2, 14, 16, 16)
        loss = heatmap_loss(output, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5
    error = (heatmap_peaks(output[:, -1].detach()) - uv).norm(dim=-1)  # (B, J) heatmap pixels
    assert (error < 1.5).float().mean() > 0.8, error
    first_stack = (heatmap_peaks(output[:, 0].detach()) - uv).norm(dim=-1)
    assert (first_stack < 1.5).float().mean() > 0.5  # intermediate supervision reaches stack 0
