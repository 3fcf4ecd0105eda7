"""Stacked hourglass heatmap network for hand pose on depth crops, and heatmap helpers.

The task network of SimGAN's hand experiment (Shrivastava et al., CVPR 2017, §3.3): "a fully
convolutional hand pose estimator CNN similar to Stacked Hourglass Net [Newell et al.]", 2
hourglass blocks, 224×224 depth crops in, 64×64 heatmaps out, scored on NYU's 14 joints
(``refinery.sim.hands.JOINT_NAMES``). The layout is Newell et al.'s ("Stacked Hourglass
Networks for Human Pose Estimation", ECCV 2016; umich-vl/pose-hg-train ``hg.lua``):

- Residual module (``Residual``): pre-activation bottleneck BN-ReLU-conv1×1 (f/2), BN-ReLU-
  conv3×3 (f/2), BN-ReLU-conv1×1 (f), plus the input (through a 1×1 conv when channels differ).
- Stem: conv7×7/2 → f/4, BN, ReLU; residual → f/2; maxpool 2×2; residual → f/2; residual → f.
  With f = 256 these are Newell's 64, 128, 128, 256 maps. The hourglasses run at 1/4 scale.
- Hourglass of depth n (``Hourglass``): upper branch ``blocks`` residuals at this scale; lower
  branch maxpool 2×2, ``blocks`` residuals, an hourglass of depth n - 1 (at n = 1: ``blocks``
  residuals), ``blocks`` residuals, nearest upsampling to the upper branch's exact size; the
  sum of both branches.
- Per stack: hourglass, ``blocks`` residuals, 1×1 conv + BN + ReLU ("lin"), 1×1 conv to one
  heatmap per joint. Between stacks, intermediate supervision's merge: the next stack's input
  is this stack's input + 1×1 conv(lin features) + 1×1 conv(heatmaps).

Code (paper): ``StackedHourglass.stem`` (the initial processing, r1..r5 in ``hg.lua``),
``stacks[i].hourglass`` (hg), ``stacks[i].lin`` (ll), ``stacks[i].score`` (tmpOut),
``merge_features`` / ``merge_heatmaps`` (ll_ / tmpOut_).

Sizes. Every 2×2 max-pool uses ``ceil_mode`` (an odd side keeps its last row / column) and the
upsampling goes to the upper branch's exact size, so the network takes any H, W
(``size_multiple`` is 1): the heatmaps are ``ceil(H / 4) × ceil(W / 4)`` (224 → 56, 256 → 64,
72 → 18, 35 → 9). Heatmap pixel (i, j) sits on the stride-4 grid of the input, so with H, W
multiples of 4 ``to_heatmap(uv, (H, W), (H // 4, W // 4))`` maps image joints onto it; for
other sizes map with ``image_size = (4 * h, 4 * w)`` (the input padded at the bottom / right)
to keep the stride-4 geometry. Newell's 256×256 → 64×64 is the paper's "64×64 heatmaps"; the
paper's 224×224 crops give 56×56 with this network (resize to 256 for 64×64).

Inputs: (B, C, H, W) depth normalised to about [-1, 1] by the caller. Output: one tensor
(B, stacks, joints, h, w) with every stack's heatmaps (the last stack's are the prediction):
one tensor rather than a list, so it exports to ONNX and TensorRT as a single output.

Heatmaps (``gaussian_heatmaps``, ``heatmap_peaks``, ``heatmap_loss``) use Newell's targets:
unnormalised Gaussians with peak 1, MSE on every stack, argmax plus a quarter-pixel shift
towards the higher neighbour. Coordinates are uv = (u, v) = (column, row) with pixel centres
at integer coordinates, as in ``refinery.sim.hands`` and ``refinery.formats.nyu_hand``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refinery.registry import register_network

Coords = TypeVar("Coords", np.ndarray, torch.Tensor)


@dataclass(frozen=True, kw_only=True)
class HourglassConfig:
    channels: int = 1  # input maps (depth: 1)
    joints: int = 14  # heatmaps per stack (NYU's evaluation subset)
    stacks: int = 2  # hourglasses, each with its own heatmaps (SimGAN §3.3: 2)
    features: int = 256  # f: maps inside the hourglasses; the stem has f/4 and f/2
    depth: int = 4  # 2×2 down-samplings inside each hourglass (Newell: 4, 64 → 4)
    blocks: int = 1  # residual modules per level and branch (Newell's nModules)

    def __post_init__(self) -> None:
        for name in ("channels", "joints", "stacks", "features", "depth", "blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"HourglassConfig.{name} must be a positive integer, got {value!r}"
                )
        if self.features % 4:
            raise ValueError(
                f"HourglassConfig.features must be a multiple of 4 (the stem has features/4 "
                f"maps and every residual halves its maps), got {self.features}"
            )


def _bn_relu_conv(c_in: int, c_out: int, kernel_size: int) -> list[nn.Module]:
    return [
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2),
    ]


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(2, 2, ceil_mode=True)  # n -> ceil(n / 2): any size works


class Residual(nn.Module):
    """Newell's residual module: pre-activation bottleneck (1×1 → c/2, 3×3, 1×1 → c) + skip."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = c_out // 2
        self.body = nn.Sequential(
            *_bn_relu_conv(c_in, mid, 1), *_bn_relu_conv(mid, mid, 3), *_bn_relu_conv(mid, c_out, 1)
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)  # (B, c_out, H, W)


def _residuals(features: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(Residual(features, features) for _ in range(blocks)))


class Hourglass(nn.Module):
    """One hourglass of ``depth`` levels: (B, f, H, W) -> (B, f, H, W), any H, W."""

    def __init__(self, features: int, depth: int, blocks: int):
        super().__init__()
        self.upper = _residuals(features, blocks)
        self.pool = _pool()
        self.down = _residuals(features, blocks)
        self.inner = (
            Hourglass(features, depth - 1, blocks) if depth > 1 else _residuals(features, blocks)
        )
        self.up = _residuals(features, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upper = self.upper(x)  # (B, f, H, W)
        low = self.up(self.inner(self.down(self.pool(x))))  # (B, f, ceil(H/2), ceil(W/2))
        return upper + F.interpolate(low, size=upper.shape[-2:], mode="nearest")


class HourglassStack(nn.Module):
    """One stack: hourglass, residuals, "lin" 1×1 conv + BN + ReLU, 1×1 conv to heatmaps."""

    def __init__(self, features: int, joints: int, depth: int, blocks: int):
        super().__init__()
        self.hourglass = Hourglass(features, depth, blocks)
        self.residuals = _residuals(features, blocks)
        self.lin = nn.Sequential(
            nn.Conv2d(features, features, 1), nn.BatchNorm2d(features), nn.ReLU()
        )
        self.score = nn.Conv2d(features, joints, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lin = self.lin(self.residuals(self.hourglass(x)))  # (B, f, h, w)
        return lin, self.score(lin)  # and (B, J, h, w) heatmaps


class StackedHourglass(nn.Module):
    """(B, C, H, W) depth in about [-1, 1] -> (B, stacks, joints, ceil(H/4), ceil(W/4)) heatmaps.

    Any H, W (``size_multiple`` is 1; see the module docstring for the size rule). Every stack's
    heatmaps are returned for intermediate supervision (``heatmap_loss``); ``output[:, -1]`` is
    the prediction.
    """

    size_multiple = 1
    output_stride = 4  # heatmap pixels per input pixel, per side (rounded up)

    def __init__(self, config: HourglassConfig):
        super().__init__()
        self.config = config
        f = config.features
        self.stem = nn.Sequential(
            nn.Conv2d(config.channels, f // 4, 7, 2, 3),  # (B, f/4, ceil(H/2), ceil(W/2))
            nn.BatchNorm2d(f // 4),
            nn.ReLU(),
            Residual(f // 4, f // 2),
            _pool(),  # (B, f/2, ceil(H/4), ceil(W/4))
            Residual(f // 2, f // 2),
            Residual(f // 2, f),
        )
        self.stacks = nn.ModuleList(
            HourglassStack(f, config.joints, config.depth, config.blocks)
            for _ in range(config.stacks)
        )
        self.merge_features = nn.ModuleList(nn.Conv2d(f, f, 1) for _ in range(config.stacks - 1))
        self.merge_heatmaps = nn.ModuleList(
            nn.Conv2d(config.joints, f, 1) for _ in range(config.stacks - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)  # (B, f, h, w)
        heatmaps = []
        for i, stack in enumerate(self.stacks):
            lin, score = stack(y)  # (B, f, h, w), (B, J, h, w)
            heatmaps.append(score)
            if i < len(self.merge_features):
                y = y + self.merge_features[i](lin) + self.merge_heatmaps[i](score)
        return torch.stack(heatmaps, dim=1)  # (B, S, J, h, w)


@register_network("hand-hourglass", role="task", input_size=(224, 224))
def hand_hourglass(*, channels: int = 1, joints: int = 14) -> StackedHourglass:
    """SimGAN's hand pose net (§3.3): 2-stack hourglass, 256 maps, depth 4 (~6.6M parameters)."""
    return StackedHourglass(
        HourglassConfig(channels=channels, joints=joints, stacks=2, features=256, depth=4)
    )


@register_network("hand-hourglass-small", role="task", input_size=(64, 64))
def hand_hourglass_small(*, channels: int = 1, joints: int = 14) -> StackedHourglass:
    """A CPU-sized hand pose net: 2-stack hourglass, 32 maps, depth 3 (~88k parameters)."""
    return StackedHourglass(
        HourglassConfig(channels=channels, joints=joints, stacks=2, features=32, depth=3)
    )


# -- heatmaps ---------------------------------------------------------------------------------


def gaussian_heatmaps(uv: torch.Tensor, size: tuple[int, int], sigma: float = 1.0) -> torch.Tensor:
    """(B, J, 2) uv in heatmap pixels -> (B, J, h, w) Gaussians exp(-d² / 2σ²), peak 1 at uv.

    Sub-pixel uv are drawn exactly (the peak pixel is then below 1). A joint more than 3σ
    outside the map gives values below exp(-4.5) ≈ 0.011 everywhere; a joint with a non-finite
    coordinate (not annotated) gives an all-zero map.
    """
    if uv.ndim != 3 or uv.shape[-1] != 2:
        raise ValueError(f"gaussian_heatmaps: uv must be (B, J, 2), got {tuple(uv.shape)}")
    if not sigma > 0:
        raise ValueError(f"gaussian_heatmaps: sigma must be positive, got {sigma!r}")
    h, w = size
    dtype = uv.dtype if uv.is_floating_point() else torch.float32
    uv = uv.to(dtype)
    finite = torch.isfinite(uv).all(-1)  # (B, J)
    uv = torch.where(finite[..., None], uv, torch.zeros_like(uv))
    u = torch.arange(w, dtype=dtype, device=uv.device)  # (w,)
    v = torch.arange(h, dtype=dtype, device=uv.device)  # (h,)
    du2 = (u - uv[..., 0:1]).square()  # (B, J, w)
    dv2 = (v - uv[..., 1:2]).square()  # (B, J, h)
    maps = torch.exp(-(dv2[..., :, None] + du2[..., None, :]) / (2 * sigma**2))  # (B, J, h, w)
    return maps * finite[..., None, None]


def heatmap_peaks(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, J, h, w) heatmaps -> (B, J, 2) uv of their peaks in heatmap pixels.

    Newell et al.'s decoding: the argmax (the first maximum in row-major order on ties), moved
    by a quarter pixel towards the higher of its two neighbours in u and, separately, in v; no
    shift where the neighbours are equal or the argmax is on that axis' border (one neighbour
    missing), so peaks stay within [0, w - 1] × [0, h - 1].
    """
    if heatmaps.ndim != 4:
        raise ValueError(
            f"heatmap_peaks: heatmaps must be (B, J, h, w), got {tuple(heatmaps.shape)}"
        )
    h, w = heatmaps.shape[-2:]
    flat = heatmaps.flatten(2)  # (B, J, h*w)
    index = flat.argmax(-1, keepdim=True)  # (B, J, 1)
    u, v = index % w, index // w

    def shift(coord: torch.Tensor, n: int, step: int) -> torch.Tensor:
        inside = (coord > 0) & (coord < n - 1)
        before = flat.gather(-1, torch.where(inside, index - step, index))
        after = flat.gather(-1, torch.where(inside, index + step, index))
        return 0.25 * torch.sign(after - before) * inside  # equal when not inside: 0

    dtype = heatmaps.dtype if heatmaps.is_floating_point() else torch.float32
    peaks_u = u.to(dtype) + shift(u, w, 1).to(dtype)
    peaks_v = v.to(dtype) + shift(v, h, w).to(dtype)
    return torch.cat([peaks_u, peaks_v], dim=-1)  # (B, J, 2)


def heatmap_loss(
    output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Intermediate supervision (Newell et al. §3.4): MSE of every stack's heatmaps.

    output (B, S, J, h, w), target (B, J, h, w), weight (B, J) or None -> scalar: the sum over
    the S stacks of the mean squared error over batch, joints and pixels. With ``weight`` the
    mean is weighted per joint: sum(weight · squared error) / (sum(weight) · h · w), so a joint
    with weight 0 is not supervised and does not dilute the others; all-zero weights give 0.
    Computed in float32 so it is safe under float16 / bfloat16 autocast.
    """
    if output.ndim != 5 or target.shape != output.shape[:1] + output.shape[2:]:
        raise ValueError(
            f"heatmap_loss: output must be (B, S, J, h, w) and target (B, J, h, w), got "
            f"{tuple(output.shape)} and {tuple(target.shape)}"
        )
    error = (output.float() - target.float()[:, None]).square()  # (B, S, J, h, w)
    if weight is None:
        return error.mean(dim=(0, 2, 3, 4)).sum()
    if weight.shape != output.shape[:1] + output.shape[2:3]:
        raise ValueError(
            f"heatmap_loss: weight must be (B, J) = {tuple(output.shape[:1] + output.shape[2:3])}"
            f", got {tuple(weight.shape)}"
        )
    weight = weight.float()
    per_joint = error.mean(dim=(3, 4))  # (B, S, J)
    total = (per_joint * weight[:, None]).sum(dim=(0, 2))  # (S,)
    return total.sum() / weight.sum().clamp_min(torch.finfo(torch.float32).tiny)


def _rescale(uv: Coords, src: tuple[int, int], dst: tuple[int, int]) -> Coords:
    """uv in a (src_h, src_w) grid -> uv in a (dst_h, dst_w) grid, pixel centres aligned."""
    (src_h, src_w), (dst_h, dst_w) = src, dst
    if min(src_h, src_w, dst_h, dst_w) <= 0:
        raise ValueError(f"sizes must be positive (h, w), got {src} and {dst}")
    if uv.shape[-1] != 2:
        raise ValueError(f"uv must be (..., 2) = (u, v), got shape {tuple(uv.shape)}")
    scale = (dst_w / src_w, dst_h / src_h)  # (u, v)
    if isinstance(uv, torch.Tensor):
        dtype = uv.dtype if uv.is_floating_point() else torch.float32
        uv = uv.to(dtype)
        scale = torch.tensor(scale, dtype=dtype, device=uv.device)
    else:
        uv = np.asarray(uv)
        uv = uv if np.issubdtype(uv.dtype, np.floating) else uv.astype(np.float64)
        scale = np.asarray(scale, dtype=uv.dtype)
    return (uv + 0.5) * scale - 0.5


def to_heatmap(
    uv_image: Coords, image_size: tuple[int, int], heatmap_size: tuple[int, int]
) -> Coords:
    """(..., 2) uv in an image of (H, W) pixels -> uv in a heatmap of (h, w) pixels.

    Pixel centres aligned: u_h = (u + 0.5) · w / W - 0.5 (v likewise with h / H); for 4× down-
    sampling heatmap pixel 0 is the centre of image pixels 0..3, u = 1.5. numpy in, numpy out;
    torch in, torch out (integer input becomes float).
    """
    return _rescale(uv_image, image_size, heatmap_size)


def from_heatmap(
    uv_heat: Coords, heatmap_size: tuple[int, int], image_size: tuple[int, int]
) -> Coords:
    """(..., 2) uv in a heatmap of (h, w) pixels -> uv in an image of (H, W): ``to_heatmap``'s
    inverse, u = (u_h + 0.5) · W / w - 0.5."""
    return _rescale(uv_heat, heatmap_size, image_size)
