"""The numbers a downstream evaluation reports, one function per metric, no training code.

| task         | metric                                    | function                                |
|--------------|-------------------------------------------|-----------------------------------------|
| gaze         | angle between look vectors, degrees       | `angular_error_deg` (``refinery.nets.gaze``) |
| hand pose    | distance per joint, pixels; PCK curve     | `joint_errors`, `pck`                   |
| segmentation | confusion matrix, IoU per class, mIoU     | `confusion`, `iou_from_confusion`, `image_miou` |

PCK follows the SimGAN paper's hand figure (Shrivastava et al., CVPR 2017, Fig. 7, after
Tompson et al. 2014): the share of joints whose predicted position is within ``d`` pixels of
the ground truth, for a range of ``d``; a joint exactly ``d`` away counts as within.

IoU follows Cityscapes: per class, TP / (TP + FP + FN) over every pixel of the set, ignored
pixels (``refinery.ontology.IGNORE``) left out. A class that is neither in the ground truth nor
in the predictions has no IoU (``None``) and is left out of the mean; a class in the ground
truth that is never predicted has IoU 0, and so does a class predicted but absent from the
ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from refinery.nets.gaze import angular_error_deg
from refinery.ontology import IGNORE

__all__ = [
    "angular_error_deg",
    "confusion",
    "image_miou",
    "iou_from_confusion",
    "joint_errors",
    "pck",
]


def joint_errors(
    predicted: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
) -> np.ndarray:
    """(..., J, 2) predicted and true (u, v) -> (..., J) Euclidean distances, float64."""
    a = np.asarray(predicted, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    if a.shape != b.shape or a.shape[-1] != 2:
        raise ValueError(
            f"expected two (..., J, 2) arrays of one shape, got {a.shape} and {b.shape}"
        )
    return np.sqrt(((a - b) ** 2).sum(-1))


def pck(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Share of ``errors`` (any shape, one entry per joint) that are <= each threshold."""
    values = np.asarray(errors, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no joint errors to compute PCK from")
    if not np.isfinite(values).all():
        raise ValueError("joint errors contain non-finite values")
    limits = np.asarray(thresholds, dtype=np.float64)
    return (values[None, :] <= limits[:, None]).mean(axis=1)


def confusion(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int = IGNORE
) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted class.

    Pixels whose target is ``ignore`` are left out; any other target or prediction outside
    ``[0, num_classes)`` is an error (it would silently land in another class's cell).
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    keep = target != ignore
    t, p = target[keep].astype(np.int64), pred[keep].astype(np.int64)
    for name, ids in (("target", t), ("prediction", p)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"{name} has ids outside [0, {num_classes}): {np.unique(ids)}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def iou_from_confusion(matrix: np.ndarray) -> tuple[float, list[float | None]]:
    """Mean IoU over the classes present in targets or predictions, and IoU per class
    (``None`` for a class absent from both). An empty matrix has mean IoU 0."""
    matrix = np.asarray(matrix)
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    per_class = [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
    present = [v for v in per_class if v is not None]
    return (float(np.mean(present)) if present else 0.0), per_class


def image_miou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """mIoU of one image (classes present in its target or prediction); a per-image score
    for distributions, not the dataset mIoU (which pools pixels over all images)."""
    return iou_from_confusion(confusion(pred, target, num_classes))[0]
