"""The metrics of the downstream tasks against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refinery import metrics
from refinery.nets.hourglass import from_heatmap, heatmap_peaks
from refinery.ontology import IGNORE


def test_angular_error_of_known_vectors():
    x, y, z = torch.eye(3)
    predicted = torch.stack([x, x, x, x + y, -z, 3 * z])
    truth = torch.stack([x, y, -x, x, z, z])
    expected = torch.tensor([0.0, 90.0, 180.0, 45.0, 180.0, 0.0])
    torch.testing.assert_close(
        metrics.angular_error_deg(predicted, truth), expected, atol=1e-4, rtol=0
    )
    # 60°: cos = 1/2
    sixty = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3), 0.0]])
    assert float(metrics.angular_error_deg(sixty, x[None])) == pytest.approx(60.0, abs=1e-4)


def test_joint_errors_are_euclidean_per_joint():
    predicted = np.array([[[3.0, 4.0], [1.0, 1.0]], [[0.0, 0.0], [-6.0, 8.0]]])  # (2, 2, 2)
    truth = np.zeros((2, 2, 2))
    truth[0, 1] = (1.0, 1.0)
    np.testing.assert_allclose(metrics.joint_errors(predicted, truth), [[5.0, 0.0], [0.0, 10.0]])
    with pytest.raises(ValueError, match="one shape"):
        metrics.joint_errors(predicted, truth[:1])


def test_pck_on_a_toy_heatmap():
    # Two joints on 8×8 heatmaps of a 32×32 crop (4 crop pixels per heatmap pixel).
    heat = torch.zeros(1, 2, 8, 8)
    heat[0, 0, 2, 3] = 1.0  # joint 0: peak at (u, v) = (3, 2) ...
    heat[0, 0, 2, 4] = 0.5  # ... its right neighbour is higher than its left: u + 0.25
    heat[0, 1, 6, 1] = 1.0  # joint 1: a lone peak at (1, 6)
    peaks = heatmap_peaks(heat)
    torch.testing.assert_close(peaks, torch.tensor([[[3.25, 2.0], [1.0, 6.0]]]))
    # heatmap pixel centre h -> crop pixel (h + 0.5) * 4 - 0.5
    uv = from_heatmap(peaks, (8, 8), (32, 32))
    torch.testing.assert_close(uv, torch.tensor([[[14.5, 9.5], [5.5, 25.5]]]))
    truth = np.array([[[14.5, 12.5], [5.5, 25.5 + 8.0]]])  # 3 px and 8 px away
    errors = metrics.joint_errors(uv, truth)
    np.testing.assert_allclose(errors, [[3.0, 8.0]])
    # within d: 0 joints below 3 px, 1 at 3 (inclusive) to 7.99, 2 from 8
    np.testing.assert_allclose(metrics.pck(errors, [0, 2.99, 3, 5, 8, 20]), [0, 0, 0.5, 0.5, 1, 1])


def test_pck_refuses_nothing_and_nan():
    with pytest.raises(ValueError, match="no joint errors"):
        metrics.pck(np.zeros(0), [1])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.pck(np.array([1.0, np.nan]), [1])


def test_iou_with_an_absent_class_and_ignored_pixels():
    # 4 classes; class 2 is in neither target nor prediction; class 3 is predicted only.
    target = np.array([[0, 0, 1, 1], [0, 1, 1, IGNORE]])
    pred = np.array([[0, 1, 1, 1], [3, 1, 1, 0]])  # the ignored pixel's prediction is not counted
    matrix = metrics.confusion(pred, target, 4)
    assert matrix.sum() == 7
    assert matrix.tolist() == [[1, 1, 0, 1], [0, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    miou, per_class = metrics.iou_from_confusion(matrix)
    # class 0: TP 1, FN 2 (one as 1, one as 3), FP 0 -> 1/3; class 1: TP 4, FP 1 -> 4/5
    # class 2: absent -> None, not in the mean; class 3: predicted, absent from target -> 0
    assert per_class == pytest.approx([1 / 3, 4 / 5, None, 0.0])
    assert miou == pytest.approx((1 / 3 + 4 / 5 + 0.0) / 3)
    assert metrics.image_miou(pred, target, 4) == pytest.approx(miou)


def test_iou_of_a_perfect_and_an_empty_prediction():
    target = np.array([[0, 1], [2, 2]])
    assert metrics.iou_from_confusion(metrics.confusion(target, target, 3))[0] == 1.0
    assert metrics.iou_from_confusion(np.zeros((3, 3), np.int64)) == (0.0, [None, None, None])


def test_confusion_refuses_ids_outside_the_ontology():
    with pytest.raises(ValueError, match=r"target has ids outside \[0, 3\)"):
        metrics.confusion(np.zeros((2, 2)), np.full((2, 2), 7), 3)
    with pytest.raises(ValueError, match="prediction has ids"):
        metrics.confusion(np.full((2, 2), 3), np.zeros((2, 2)), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.confusion(np.zeros((2, 2)), np.zeros((2, 3)), 3)
