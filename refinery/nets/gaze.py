"""Gaze estimator of Shrivastava et al. (CVPR 2017, §3.1) and gaze-vector helpers.

The task network that measures what refinement is worth: trained on (refined) synthetic eye
crops, tested on real ones, it regresses the 3-D look vector. The paper's layout, "similar to
[Zhang et al., MPIIGaze]": a 35×55 grayscale crop, conv3×3 → 32, conv3×3 → 32, conv3×3 → 64,
maxpool 3×3/2, conv3×3 → 80, conv3×3 → 192, maxpool 2×2/2, FC9600, FC1000, FC3, Euclidean loss;
ReLU after every conv and hidden FC. The convs are unpadded: that is what makes a 35×55 crop end
as 192×5×10 = 9600 features.

"FC9600" read literally is a fully connected layer of 9600 units (the paper counts "3 fully
connected layers"), which with the 9600 features before it is a 92M-parameter matrix; that is
the default of ``gaze-estimator`` (``fc=(9600, 1000)``). The coincidence also allows reading
"FC9600" as the flattened features themselves: ``GazeEstimatorConfig(fc=(1000,))`` builds that.

Input size. The flatten size is computed from ``input_size`` when the network is built, so the
same layout takes other crops, e.g. 36×60 (MPIIGaze's normalised eye size), by building with
``input_size=(36, 60)``; feeding another size raises a ValueError that says what was expected.
(We chose that over adaptive pooling, which would resample the feature map unevenly for sizes
the pooling does not divide and is awkward in ONNX.) Inputs are in [-1, 1], like the refiner's.

Gaze convention (MPIIGaze / GazeML, as ``refinery.sim.eyes``): x right, y down, z away from the
camera; g = (-cos p sin y, -sin p, -cos p cos y) for pitch p and yaw y in radians.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from refinery.registry import register_network

MIN_SIZE = 19  # smallest side that leaves a 1×1 feature map


def _feature_side(n: int) -> int:
    n = n - 6  # three unpadded 3×3 convs
    n = (n - 3) // 2 + 1  # maxpool 3×3 / 2
    n = n - 4  # two unpadded 3×3 convs
    return n // 2  # maxpool 2×2 / 2


@dataclass(frozen=True, kw_only=True)
class GazeEstimatorConfig:
    channels: int = 1
    input_size: tuple[int, int] = (35, 55)  # (H, W) the FC layers are sized for
    convs: tuple[int, int, int, int, int] = (32, 32, 64, 80, 192)  # maps of the 5 conv3×3
    fc: tuple[int, ...] = (9600, 1000)  # hidden FC widths before the FC3 output

    def __post_init__(self) -> None:
        values = [self.channels, *self.input_size, *self.convs, *self.fc]
        if len(self.input_size) != 2 or len(self.convs) != 5:
            raise ValueError("GazeEstimatorConfig: input_size is (H, W) and convs has 5 widths")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"GazeEstimatorConfig: every size must be a positive int: {self}")
        if min(self.input_size) < MIN_SIZE:
            raise ValueError(
                f"GazeEstimatorConfig.input_size must be at least {MIN_SIZE}×{MIN_SIZE} "
                f"(5 unpadded convs and 2 pools), got {self.input_size}"
            )

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the last feature map: 35×55 -> 5×10."""
        return _feature_side(self.input_size[0]), _feature_side(self.input_size[1])


class GazeEstimator(nn.Module):
    """(B, C, H, W) eye crops in [-1, 1], (H, W) = config.input_size -> (B, 3) look vectors."""

    def __init__(self, config: GazeEstimatorConfig):
        super().__init__()
        self.config = config
        c1, c2, c3, c4, c5 = config.convs
        self.features = nn.Sequential(
            nn.Conv2d(config.channels, c1, 3),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 3),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c3, c4, 3),
            nn.ReLU(),
            nn.Conv2d(c4, c5, 3),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        h, w = config.feature_size
        widths = [c5 * h * w, *config.fc]
        head: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in itertools.pairwise(widths):
            head += [nn.Linear(n_in, n_out), nn.ReLU()]
        head.append(nn.Linear(widths[-1], 3))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.config.input_size:
            raise ValueError(
                f"gaze estimator built for {self.config.input_size[0]}×{self.config.input_size[1]}"
                f" inputs got {x.shape[-2]}×{x.shape[-1]}; build it with input_size=(H, W)"
            )
        return self.head(self.features(x))  # (B, 3)


@register_network("gaze-estimator", role="task", input_size=(35, 55), fully_convolutional=False)
def gaze_estimator(*, channels: int = 1, input_size: tuple[int, int] = (35, 55)) -> GazeEstimator:
    """The paper's gaze estimator (§3.1): 5 convs, FC9600, FC1000, FC3 (~102M parameters)."""
    return GazeEstimator(GazeEstimatorConfig(channels=channels, input_size=tuple(input_size)))


@register_network(
    "gaze-estimator-small", role="task", input_size=(35, 55), fully_convolutional=False
)
def gaze_estimator_small(
    *, channels: int = 1, input_size: tuple[int, int] = (35, 55)
) -> GazeEstimator:
    """A CPU-sized gaze estimator: the paper's layout with 16-64 maps and FC64 (~0.27M params)."""
    return GazeEstimator(
        GazeEstimatorConfig(
            channels=channels, input_size=tuple(input_size), convs=(16, 32, 32, 64, 64), fc=(64,)
        )
    )


# -- gaze vectors -----------------------------------------------------------------------------


def pitchyaw_to_vector(pitchyaw: torch.Tensor) -> torch.Tensor:
    """(..., 2) [pitch, yaw] radians -> (..., 3) unit look vectors g."""
    pitch, yaw = pitchyaw.unbind(-1)
    cos_pitch = torch.cos(pitch)
    return torch.stack(
        [-cos_pitch * torch.sin(yaw), -torch.sin(pitch), -cos_pitch * torch.cos(yaw)], dim=-1
    )


def vector_to_pitchyaw(vec: torch.Tensor) -> torch.Tensor:
    """(..., 3) look vectors (any length > 0) -> (..., 2) [pitch, yaw] radians."""
    g = vec / vec.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(vec.dtype).tiny)
    pitch = torch.asin((-g[..., 1]).clamp(-1.0, 1.0))
    yaw = torch.atan2(-g[..., 0], -g[..., 2])
    return torch.stack([pitch, yaw], dim=-1)


def angular_error_deg(pred_vec: torch.Tensor, true_vec: torch.Tensor) -> torch.Tensor:
    """(..., 3), (..., 3) -> (...,) angle between the vectors in degrees, in float32 or wider.

    Computed from the unit vectors u, v as 2·atan2(‖u − v‖, ‖u + v‖) (Kahan), which is exact for
    equal vectors and accurate near 0° and 180°, where arccos of their cosine is not: in float32 a
    cosine that rounds one or two steps below 1 reads 0.02-0.03° between a vector and itself. Lengths are floored, so
    a zero vector gives 90°, not NaN. A metric: train on ``euclidean_loss``, not on this.
    """
    dtype = torch.promote_types(torch.promote_types(pred_vec.dtype, true_vec.dtype), torch.float32)
    a, b = pred_vec.to(dtype), true_vec.to(dtype)
    eps = torch.finfo(dtype).tiny
    u = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    v = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return torch.rad2deg(2.0 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1)))


def euclidean_loss(pred_vec: torch.Tensor, true_vec: torch.Tensor) -> torch.Tensor:
    """The paper's "Euclidean loss" (Caffe's EuclideanLoss): sum ||pred - true||² / (2 B).

    Computed in float32 so it is safe under float16 / bfloat16 autocast.
    """
    diff = pred_vec.float() - true_vec.float()  # (B, 3)
    return diff.pow(2).sum() / (2 * diff.shape[0])
