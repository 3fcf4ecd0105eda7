"""Downstream task networks: what refinement is worth, measured on the task it is for.

Refined data exists to train networks that then run on real data. Each domain has one task,
trained and tested from shards the same way:

| domain  | task network (default, CPU-sized)        | target                         | primary metric                  |
|---------|------------------------------------------|--------------------------------|---------------------------------|
| `gaze`  | `gaze-estimator-small` (SimGAN §3.1)     | unit 3-D look vector           | mean angular error, degrees     |
| `hand`  | `hand-hourglass-small` (SimGAN §3.3, Newell et al. 2016) | 14 joint heatmaps | mean joint error, crop pixels; PCK |
| `scene` | `fcn8s-small` (FCN8s, SPIGAN's T)        | class id per pixel             | mIoU over the shards' ontology  |

The paper presets (`gaze-estimator`, `hand-hourglass`, `fcn8s-vgg16`) are one ``network=``
away. Each domain is a ``Task``: how samples become network inputs and targets, the loss, how
outputs become predictions in label space (look vectors, joint pixels, class maps), the
metrics, and the disagreement between two predictions of the same sample (label drift). The
pieces, each usable alone::

    task = get_task("hand")
    data = task.load(urls)                      # a LabeledSet: inputs (N, C, H, W), targets, keys
    model = fit(task, data, epochs=8, seed=0)
    predicted = task.predict(model, data)       # hand: (N, 14, 2) joint (u, v) in crop pixels
    metrics, per_sample = task.score(predicted, data)

and ``train_task(domain, train=URLS, eval=URLS, out=DIR)`` runs them in order and writes
``model.safetensors``, ``config.json`` and ``metrics.json`` into ``out``.

Inputs (STYLE 4: written into ``config.json`` beside the weights):

- gaze: 8-bit crops with the refiner's scaling (``train.data.scaling_for``: /127.5 - 1);
- hand: the 16-bit depth crop resized (nearest) to ``input_size`` (64); the 300 mm behind the
  nearest surface (the hand's front; 2nd percentile of the measured depths) map to [-1, 1],
  farther surfaces and no measurement (0) read as +1, like DeepPrior's cube crops; no label is
  used, so real crops are normalised like synthetic ones.
  Joints (``json.joints_uvd``; the NYU 14-joint subset ``EVAL14`` when a label has all 36)
  become Gaussian heatmaps (σ = 1 heatmap pixel) at a quarter of the input size, and
  predictions are mapped back to pixels of the stored crop, so errors are in crop pixels;
- scene: RGB scaled to [-1, 1], labels in the ontology named by the first sample's
  ``json.ontology`` (cityscapes-19 frames convert to a coarser ontology when one is asked
  for); frames whose sides are not multiples of 32 (FCN8s' five pools) are resized down to
  the nearest multiples (area for images, nearest for labels).

Training: Adam with a one-cycle schedule peaking at ``lr``, every epoch a permutation drawn
from ``seed``. No augmentation: the point is the domain gap, not the best estimator.
Repeatability: the initial weights, dropout and batch order come from ``seed`` alone (inside
``torch.random.fork_rng``, so the caller's global RNG is left as it was); the same seed on the
same machine and thread count gives the same weights and metrics on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from refinery import metrics as M
from refinery import ontology as ontologies
from refinery.nets import hourglass
from refinery.nets.gaze import euclidean_loss
from refinery.registry import build_network, network_info
from refinery.samples import image_component
from refinery.shards import Handler, reraise
from train.cache import read_cached as read  # the decoded cache where it can serve
from train.data import scaling_for, scene_labels, unit_channels_first
from train.evaluation.rows import (
    Rows,
    RowWriter,
    ahead,
    inference_batch,
    scratch_directory,
    scratch_file,
)
from train.evaluation.rows import take as take_rows

TASKS = ("gaze", "hand", "scene")

Progress = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class Metric:
    """The primary metric of a task, as a report shows it."""

    key: str
    label: str
    unit: str
    higher_is_better: bool = False


@dataclass
class LabeledSet:
    """A labeled set ready for a task network, in memory or on disk
    (``train.evaluation.rows.Rows``: read
    a batch at a time; ``Task.load(..., scratch=DIR)``).

    ``inputs`` (N, C, H, W) float32; ``targets``: gaze (N, 3) unit look vectors, hand (N, J, 2)
    joint (u, v) in pixels of the stored crop, scene (N, H, W) uint8 class ids (255 = ignore).
    Either is a tensor or ``Rows``; both index like a tensor's first axis (``x[index]``).
    ``fingerprints`` hash each sample's labels (label components as decoded), so two sets can
    be checked for labels kept per key. ``info`` holds what the task needs to read its
    targets back (crop size, ontology and class names) and is written into ``config.json``.
    """

    domain: str
    keys: list[str]
    inputs: torch.Tensor | Rows
    targets: torch.Tensor | Rows
    fingerprints: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, index: Sequence[int]) -> LabeledSet:
        """The samples at ``index``, in that order (on disk: a view, nothing is read)."""
        index = [int(i) for i in index]
        return replace(
            self,
            keys=[self.keys[i] for i in index],
            inputs=take_rows(self.inputs, index),
            targets=take_rows(self.targets, index),
            fingerprints=[self.fingerprints[i] for i in index],
        )

    def batches(
        self, index: Sequence[int] | torch.Tensor | None = None, *, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) of ``index`` (default: every sample in order), ``batch_size`` at a
        time; the next batch is read on a background thread while the caller uses this one."""
        order = torch.arange(len(self)) if index is None else torch.as_tensor(index)
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        return ahead(lambda chunk: (self.inputs[chunk], self.targets[chunk]), chunks)


def _fingerprint(sample: dict[str, Any], image: str) -> str:
    """sha256 over every component but the image and refinery.json (labels, as decoded)."""
    digest = hashlib.sha256()
    for name in sorted(k for k in sample if not k.startswith("__")):
        if name in (image, "refinery.json") or name.startswith("orig."):
            continue
        value = sample[name]
        digest.update(name.encode())
        if isinstance(value, np.ndarray):
            digest.update(str((value.dtype, value.shape)).encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, bytes):
            digest.update(value)
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _one_size(sample: dict, image: np.ndarray, first: tuple[int, ...] | None) -> None:
    if first is not None and image.shape != first:
        raise ValueError(
            f"sample {sample['__key__']!r} ({sample.get('__url__', '?')}) has an image of "
            f"{image.shape}, the first had {first}; one size per set"
        )


# -- the tasks --------------------------------------------------------------------------------


class Task:
    """What differs between domains; ``fit``, ``train_task`` and ``evaluate`` do the rest."""

    domain: str
    network: str  # the default, CPU-sized network
    epochs: int  # the default epochs
    batch_size: int  # the default batch size
    lr: float = 1e-3  # the default peak learning rate
    metric: Metric
    drift: Metric  # label drift: disagreement between two predictions of one sample
    appearance: bool = (
        True  # whether vary_appearance applies (not to depth, whose values are shape)
    )

    def load(
        self,
        urls: str | Sequence[str],
        *,
        handler: Handler = reraise,
        scratch: Path | None = None,
        **options: Any,
    ) -> LabeledSet:
        """The labeled set of ``urls``: in memory, or with ``scratch`` (a directory) decoded
        into files there and read back a batch at a time (``train.evaluation.rows``)."""
        raise NotImplementedError

    def options(self, data: LabeledSet) -> dict[str, Any]:
        """The load options that make another set comparable with ``data`` (same sizes)."""
        return {}

    def build(self, network: str, data: LabeledSet) -> nn.Module:
        raise NotImplementedError

    def loss(self, output: torch.Tensor, targets: torch.Tensor, data: LabeledSet) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, output: torch.Tensor, data: LabeledSet) -> torch.Tensor:
        """A batch of network outputs -> predictions in label space, on the CPU."""
        raise NotImplementedError

    def score_batches(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], data: LabeledSet
    ) -> tuple[dict[str, Any], np.ndarray]:
        """(metrics, per-sample values for a distribution plot) of (predicted, targets) pairs
        given a batch at a time, covering ``data``."""
        raise NotImplementedError

    def disagreement_batches(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], data: LabeledSet
    ) -> float:
        """Label drift between two predictions of the same samples, given as (a, b) pairs a
        batch at a time, in ``drift.unit``."""
        raise NotImplementedError

    def score(self, predicted: torch.Tensor, data: LabeledSet) -> tuple[dict[str, Any], np.ndarray]:
        """``score_batches`` of every prediction at once."""
        return self.score_batches([(predicted, data.targets[:])], data)

    def disagreement(self, a: torch.Tensor, b: torch.Tensor, data: LabeledSet) -> float:
        """``disagreement_batches`` of two whole predictions."""
        return self.disagreement_batches([(a, b)], data)

    @torch.no_grad()
    def predictions(
        self, model: nn.Module, data: LabeledSet, *, batch_size: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(predictions in label space, targets) for every sample in order, a batch at a time
        (default: ``train.evaluation.rows.inference_batch`` of the input size), in eval mode."""
        batch_size = batch_size or inference_batch(data.inputs.shape)
        with _evaluating(model):
            device = next(model.parameters()).device
            for inputs, targets in data.batches(batch_size=batch_size):
                yield self.decode(model(_to(inputs, device)), data), targets

    def predict(
        self, model: nn.Module, data: LabeledSet, *, batch_size: int | None = None
    ) -> torch.Tensor:
        """Predictions for every sample, in label space, in eval mode (all in memory: ``test``
        and ``label_drift`` keep a batch at a time)."""
        out = [p for p, _ in self.predictions(model, data, batch_size=batch_size)]
        if not out:
            raise ValueError("no samples to predict")
        return torch.cat(out)

    def test(self, model: nn.Module, data: LabeledSet) -> tuple[dict[str, Any], np.ndarray]:
        """(metrics, per-sample values) of ``model`` on ``data``, a batch at a time."""
        return self.score_batches(self.predictions(model, data), data)

    def label_drift(self, model: nn.Module, a: LabeledSet, b: LabeledSet) -> float:
        """Label drift of ``model`` between two sets of the same samples (paired by position),
        a batch at a time."""
        if len(a) != len(b):
            raise ValueError(f"drift needs paired sets, got {len(a)} and {len(b)} samples")
        with _evaluating(model):
            pairs = zip(self.predictions(model, a), self.predictions(model, b), strict=True)
            return self.disagreement_batches(((pa, pb) for (pa, _), (pb, _) in pairs), a)


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on ``device``: pinned and copied asynchronously to a GPU."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


class GazeTask(Task):
    domain = "gaze"
    network = "gaze-estimator-small"
    epochs = 8
    batch_size = 64
    metric = Metric("mean_angular_error_deg", "mean angular error", "deg")
    drift = Metric("label_drift_deg", "angle between predictions on synthetic and refined", "deg")

    def load(self, urls, *, handler=reraise, scratch=None, **options):
        if options:
            raise TypeError(f"gaze takes no load options, got {sorted(options)}")
        scaling = scaling_for("gaze")
        images = RowWriter(
            scratch_file(scratch, "inputs"), transform=unit_channels_first(scaling)
        )  # stored (H, W) uint8 -> (N, 1, H, W) float32 in [-1, 1]
        keys, vectors, prints = [], [], []
        first: tuple[int, ...] | None = None
        for sample in read(urls, "gaze", handler=handler):
            name = image_component(sample, "gaze")
            image = sample[name]  # (H, W) uint8
            _one_size(sample, image, first)
            first = image.shape
            look = np.asarray(sample["json"]["look_vec"], np.float64)
            if look.shape != (3,) or not np.linalg.norm(look) > 1e-6:
                raise ValueError(
                    f"sample {sample['__key__']!r} ({sample.get('__url__', '?')}): json.look_vec "
                    f"must be a non-zero 3-vector, got {sample['json']['look_vec']!r}"
                )
            keys.append(sample["__key__"])
            images.append(image)
            vectors.append(look / np.linalg.norm(look))
            prints.append(_fingerprint(sample, name))
        _not_empty(keys, urls, "gaze")
        assert first is not None
        return LabeledSet(
            "gaze",
            keys,
            images.finish(),
            torch.tensor(np.stack(vectors), dtype=torch.float32),  # small: kept in memory
            prints,
            {
                "channels": 1,
                "size": list(first),
                "range": [-1.0, 1.0],
                "scaling": scaling.as_dict(),  # stored pixel range mapped to [-1, 1]
                "target": "unit look vector (x right, y down, z away from the camera)",
            },
        )

    def build(self, network, data):
        return build_network(network, channels=1, input_size=tuple(data.info["size"]))

    def loss(self, output, targets, data):
        return euclidean_loss(output, targets)

    def decode(self, output, data):
        out = output.float().cpu()
        return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (B, 3)

    def score_batches(self, batches, data):
        errors = _cat(M.angular_error_deg(p, t) for p, t in batches).double()
        return _error_summary(errors.numpy(), "angular_error_deg"), errors.numpy()

    def disagreement_batches(self, batches, data):
        return float(_cat(M.angular_error_deg(a, b) for a, b in batches).double().mean())


HAND_INPUT = 64  # side of the network input, pixels
HAND_DEPTH_SCALE_MM = 150.0  # half of the 300 mm range in front of the hand mapped to [-1, 1]
HEATMAP_SIGMA = 1.0  # heatmap pixels (Newell et al.)
PCK_THRESHOLDS = tuple(range(0, 21))  # crop pixels, as the SimGAN paper's Fig. 7 x-axis


def hand_input(depth: np.ndarray, size: int) -> np.ndarray:
    """(S, S) uint16 depth in mm -> (size, size) float32 in [-1, 1], the hand's front at -1.

    The hand is the nearest surface in its crop: depths from the 2nd percentile of the measured
    pixels (robust to a few stray near values) over the next 300 mm map linearly to [-1, 1];
    farther surfaces and no measurement (0) read as +1. No label is used, so real test crops
    are normalised exactly like training crops.
    """
    small = cv2.resize(depth, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    measured = small[small > 0]
    if measured.size == 0:
        return np.ones_like(small)  # nothing measured: all far
    near = float(np.percentile(measured, 2))
    scaled = np.clip((small - near) / HAND_DEPTH_SCALE_MM - 1.0, -1.0, 1.0)
    return np.where(small > 0, scaled, 1.0).astype(np.float32)


class HandTask(Task):
    domain = "hand"
    appearance = False
    network = "hand-hourglass-small"
    epochs = 12
    batch_size = 16  # 16 and 3e-3: 7.0 px on real crops where 32 and 1e-3 gave 12.6 (800, CPU)
    lr = 3e-3
    metric = Metric("mean_joint_error_px", "mean joint error", "px")
    drift = Metric(
        "label_drift_px", "joint displacement between predictions on synthetic and refined", "px"
    )

    def load(self, urls, *, handler=reraise, scratch=None, input_size: int = HAND_INPUT):
        from refinery.formats.nyu_hand import EVAL14

        inputs = RowWriter(scratch_file(scratch, "inputs"), transform=lambda x: x[:, None])
        keys, joints, prints = [], [], []
        crop: tuple[int, ...] | None = None
        for sample in read(urls, "hand", handler=handler):
            name = image_component(sample, "hand")
            depth = sample[name]  # (S, S) uint16 mm
            _one_size(sample, depth, crop)
            crop = depth.shape
            uvd = np.asarray(sample["json"].get("joints_uvd"), np.float64)
            if uvd.ndim != 2 or uvd.shape[1] < 2 or len(uvd) not in (14, 36):
                raise ValueError(
                    f"sample {sample['__key__']!r} ({sample.get('__url__', '?')}): json.joints_uvd "
                    f"must be 14 or 36 joints of (u, v, d), got shape {uvd.shape}"
                )
            if len(uvd) == 36:
                uvd = uvd[list(EVAL14)]  # NYU's 14-joint evaluation subset
            keys.append(sample["__key__"])
            inputs.append(hand_input(depth, input_size))
            joints.append(uvd[:, :2])
            prints.append(_fingerprint(sample, name))
        _not_empty(keys, urls, "hand")
        assert crop is not None
        return LabeledSet(
            "hand",
            keys,
            inputs.finish(),  # (N, 1, R, R) float32
            torch.tensor(np.stack(joints), dtype=torch.float32),  # (N, 14, 2) crop px, in memory
            prints,
            {
                "channels": 1,
                "size": [input_size, input_size],
                "crop": list(crop),
                "depth": (
                    f"nearest resize to {input_size}; (d - near) / {HAND_DEPTH_SCALE_MM:g} mm - 1 "
                    "clipped to [-1, 1], near = 2nd percentile of the measured depths, "
                    "0 (no measurement) -> +1"
                ),
                "joints": 14,
                "heatmap_sigma": HEATMAP_SIGMA,
                "target": "joint (u, v) in pixels of the stored crop (json.joints_uvd)",
            },
        )

    def options(self, data):
        return {"input_size": data.info["size"][0]}

    def build(self, network, data):
        return build_network(network, channels=1, joints=data.info["joints"])

    def _heat_size(self, output: torch.Tensor) -> tuple[int, int]:
        return tuple(output.shape[-2:])

    def loss(self, output, targets, data):
        heat = self._heat_size(output)  # output (B, stacks, J, h, w)
        uv = hourglass.to_heatmap(targets, tuple(data.info["crop"]), heat)
        target = hourglass.gaussian_heatmaps(uv, heat, HEATMAP_SIGMA)
        inside = (uv >= -0.5).all(-1) & (uv[..., 0] < heat[1] - 0.5) & (uv[..., 1] < heat[0] - 0.5)
        return hourglass.heatmap_loss(output, target.to(output.dtype), inside.to(output.dtype))

    def decode(self, output, data):
        peaks = hourglass.heatmap_peaks(output[:, -1].float().cpu())  # last stack
        return hourglass.from_heatmap(peaks, self._heat_size(output), tuple(data.info["crop"]))

    def score_batches(self, batches, data):
        errors = np.concatenate([M.joint_errors(p, t) for p, t in batches])  # (N, J)
        summary = {
            **_error_summary(errors.ravel(), "joint_error_px"),
            "n_eval": len(errors),
            "n_joints": int(errors.size),
        }
        curve = M.pck(errors, PCK_THRESHOLDS)
        summary["pck"] = {"thresholds": list(PCK_THRESHOLDS), "share": curve.round(5).tolist()}
        for d in (5, 10):
            summary[f"pck_{d}px"] = float(curve[PCK_THRESHOLDS.index(d)])
        return summary, errors.ravel()

    def disagreement_batches(self, batches, data):
        return float(np.concatenate([M.joint_errors(a, b) for a, b in batches]).mean())


SCENE_MULTIPLE = 32  # FCN8s: five 2x2 pools


class SceneTask(Task):
    domain = "scene"
    network = "fcn8s-small"
    epochs = 15
    batch_size = 8
    metric = Metric("miou", "mIoU", "IoU", higher_is_better=True)
    drift = Metric(
        "label_drift_iou",
        "1 - mIoU between the segmentations of synthetic and refined frames",
        "1 - IoU",
    )

    def load(self, urls, *, handler=reraise, scratch=None, ontology: str | None = None, size=None):
        scaling = scaling_for("scene")
        images = RowWriter(
            scratch_file(scratch, "inputs"), transform=unit_channels_first(scaling)
        )  # stored (H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]
        segs = RowWriter(scratch_file(scratch, "targets"))  # (H, W) uint8 class ids
        keys, prints = [], []
        first: tuple[int, ...] | None = None
        target_size = None if size is None else tuple(size)
        for sample in read(urls, "scene", handler=handler):
            name = image_component(sample, "scene")
            rgb = sample[name]  # (H, W, 3) uint8
            _one_size(sample, rgb, first)
            first = rgb.shape
            if ontology is None:
                ontology = sample["json"].get("ontology")
                if ontology not in ontologies.list_ontologies():
                    raise ValueError(
                        f"sample {sample['__key__']!r} ({sample.get('__url__', '?')}): "
                        f"json.ontology {ontology!r} is not one of {ontologies.list_ontologies()}"
                    )
            seg = scene_labels(sample, ontology)
            if target_size is None:
                h, w = rgb.shape[:2]
                target_size = (
                    h // SCENE_MULTIPLE * SCENE_MULTIPLE,
                    w // SCENE_MULTIPLE * SCENE_MULTIPLE,
                )
                if min(target_size) == 0:
                    raise ValueError(
                        f"sample {sample['__key__']!r}: {h}×{w} frames are smaller than "
                        f"{SCENE_MULTIPLE} pixels; FCN8s needs at least one 32-pixel cell"
                    )
            if rgb.shape[:2] != target_size:
                rgb = cv2.resize(rgb, target_size[::-1], interpolation=cv2.INTER_AREA)
                seg = cv2.resize(seg, target_size[::-1], interpolation=cv2.INTER_NEAREST)
            keys.append(sample["__key__"])
            images.append(rgb)
            segs.append(seg.astype(np.uint8))
            prints.append(_fingerprint(sample, name))
        _not_empty(keys, urls, "scene")
        classes = ontologies.get(ontology).classes
        return LabeledSet(
            "scene",
            keys,
            images.finish(),  # (N, 3, H, W) float32
            segs.finish(),  # (N, H, W) uint8
            prints,
            {
                "channels": 3,
                "size": list(target_size),
                "frames": list(first[:2]),
                "range": [-1.0, 1.0],
                "scaling": scaling.as_dict(),
                "ontology": ontology,
                "classes": list(classes),
                "ignore": ontologies.IGNORE,
                "target": "class id per pixel (seg.png), 255 = ignore",
            },
        )

    def options(self, data):
        return {"ontology": data.info["ontology"], "size": tuple(data.info["size"])}

    def build(self, network, data):
        return build_network(network, channels=3, num_classes=len(data.info["classes"]))

    def loss(self, output, targets, data):
        return F.cross_entropy(output.float(), targets.long(), ignore_index=ontologies.IGNORE)

    def decode(self, output, data):
        return output.argmax(1).to(torch.uint8).cpu()  # (B, H, W)

    def score_batches(self, batches, data):
        classes = len(data.info["classes"])
        matrix = np.zeros((classes, classes), np.int64)
        per_image = []
        for predicted, targets in batches:
            pred, target = predicted.numpy(), targets.numpy()
            for i in range(len(pred)):
                one = M.confusion(pred[i], target[i], classes)
                matrix += one
                per_image.append(M.iou_from_confusion(one)[0])
        per_image = np.asarray(per_image, np.float64)
        miou, per_class = M.iou_from_confusion(matrix)
        labeled = matrix.sum()
        summary = {
            "miou": miou,
            "per_class_iou": dict(zip(data.info["classes"], per_class, strict=True)),
            "pixel_accuracy": float(np.trace(matrix) / labeled) if labeled else 0.0,
            "mean_image_miou": float(per_image.mean()),
            "n_eval": len(per_image),
        }
        return summary, per_image

    def disagreement_batches(self, batches, data):
        classes = len(data.info["classes"])
        matrix = np.zeros((classes, classes), np.int64)
        for a, b in batches:  # a's segmentation taken as the reference
            for i in range(len(a)):
                matrix += M.confusion(b[i].numpy(), a[i].numpy(), classes)
        return 1.0 - M.iou_from_confusion(matrix)[0]


_TASKS: dict[str, Task] = {t.domain: t for t in (GazeTask(), HandTask(), SceneTask())}


def get_task(domain: str) -> Task:
    if domain not in _TASKS:
        raise ValueError(f"no downstream task for domain {domain!r}; supported: {', '.join(TASKS)}")
    return _TASKS[domain]


def _cat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    out = list(tensors)
    if not out:
        raise ValueError("no samples to score")
    return torch.cat(out)


def _not_empty(keys: list[str], urls, domain: str) -> None:
    if not keys:
        raise ValueError(f"no {domain} samples in {urls!r}")


def _error_summary(errors: np.ndarray, name: str) -> dict[str, Any]:
    """Per-sample errors -> mean, median, 90th percentile and count (``mean_<name>`` ...)."""
    errors = np.asarray(errors, np.float64)
    return {
        f"mean_{name}": float(errors.mean()),
        f"median_{name}": float(np.median(errors)),
        f"p90_{name}": float(np.quantile(errors, 0.9)),
        "n_eval": int(errors.size),
    }


# -- training ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """How a task network was trained; written to ``config.json`` beside it."""

    domain: str
    network: str = ""  # "" = the task's default
    epochs: int = 0  # 0 = the task's default
    batch_size: int = 0  # 0 = the task's default
    lr: float = 0.0  # Adam, one-cycle schedule peaking at lr; 0 = the task's default
    seed: int = 0
    appearance: bool = False  # random appearance changes while training (vary_appearance)

    def __post_init__(self) -> None:
        task = get_task(self.domain)
        if not self.network:
            object.__setattr__(self, "network", task.network)
        if self.epochs == 0:
            object.__setattr__(self, "epochs", task.epochs)
        if self.batch_size == 0:
            object.__setattr__(self, "batch_size", task.batch_size)
        if self.lr == 0:
            object.__setattr__(self, "lr", task.lr)
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if network_info(self.network).role != "task":
            raise ValueError(f"{self.network!r} is not a task network")
        if self.appearance and not task.appearance:
            raise ValueError(
                f"{self.domain} has no appearance changes to train with (depth: its values are "
                "the geometry)"
            )


class Standardised(nn.Module):
    """``network`` on each image standardised (zero mean, unit variance over its pixels and
    channels): global brightness and contrast have no effect on it at all."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return self.network((x - mean) / std)


def build(task: Task, config: TaskConfig, data: LabeledSet) -> nn.Module:
    """The network of ``config`` for ``data``; trained for appearance, it sees standardised
    images."""
    network = task.build(config.network, data)
    return Standardised(network) if config.appearance else network


APPEARANCE_SEED_OFFSET = 7919  # the appearance draws' stream, apart from the batch order's


def vary_appearance(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random changes of appearance, none of geometry, to a batch (B, C, H, W) in [-1, 1]:
    a tone curve (gamma 0.5 to 2), contrast ×0.5 to 1.5 and brightness ±20% of the range,
    colour gains ±10% per channel, a linear shading ramp across the image (up to ±20% at the
    edges), a Gaussian blur (σ 1 px) mixed in at 0 to 100%, and sensor noise (σ up to 6% of
    the range), each drawn per image. Where things are (pupil, joints, class boundaries) is
    untouched, so labels stay valid: a network trained with it answers to geometry rather than
    tone, which is what label drift needs from it (``evaluate``'s appearance-robust drift)."""
    b, c, h, w = x.shape

    def draw(low: float, high: float, channels: int = 1) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, channels, 1, 1, generator=rng)

    y = ((x.float() + 1) / 2).clamp(0, 1) ** torch.exp(draw(-0.7, 0.7))
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * draw(0.5, 1.5) + mean + draw(-0.2, 0.2)
    if c > 1:
        y = y * draw(0.9, 1.1, c)
    rows = torch.linspace(-0.5, 0.5, h).view(1, 1, h, 1)
    cols = torch.linspace(-0.5, 0.5, w).view(1, 1, 1, w)
    y = y + draw(-0.4, 0.4) * rows + draw(-0.4, 0.4) * cols
    taps = torch.exp(-(torch.arange(-2.0, 3.0) ** 2) / 2)
    taps = (taps / taps.sum()).to(y.dtype)
    padded = F.pad(y, (2, 2, 2, 2), mode="replicate")
    blurred = F.conv2d(padded, taps.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    blurred = F.conv2d(blurred, taps.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    mix = draw(0.0, 1.0)
    y = y * (1 - mix) + blurred * mix
    y = y + draw(0.0, 0.06) * torch.randn(y.shape, generator=rng)
    return (y.clamp(0, 1) * 2 - 1).to(x.dtype)


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fit(
    task: Task,
    data: LabeledSet,
    config: TaskConfig | None = None,
    *,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> nn.Module:
    """Train ``config.network`` on every sample of ``data``; the model in eval mode, on ``device``.

    ``progress(epoch, {"loss", "lr", "seconds"})`` is called after each epoch.
    """
    config = config or TaskConfig(domain=task.domain)
    if config.domain != task.domain or data.domain != task.domain:
        raise ValueError(
            f"{config.domain!r} config / {data.domain!r} data for the {task.domain} task"
        )
    dev = _default_device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)  # weights, dropout: from the seed alone
        model = build(task, config, data).to(dev)
        steps_per_epoch = math.ceil(len(data) / config.batch_size)
        optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
        )
        order_rng = torch.Generator().manual_seed(config.seed)
        looks_rng = torch.Generator().manual_seed(config.seed + APPEARANCE_SEED_OFFSET)
        model.train()
        for epoch in range(config.epochs):
            began = time.perf_counter()
            order = torch.randperm(len(data), generator=order_rng)
            total = torch.zeros((), device=dev)
            for inputs, targets in data.batches(order, batch_size=config.batch_size):
                if config.appearance:
                    inputs = vary_appearance(inputs, looks_rng)
                loss = task.loss(model(_to(inputs, dev)), _to(targets, dev), data)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.detach() * len(inputs)
            if progress is not None:
                progress(
                    epoch + 1,
                    {
                        "loss": float(total) / len(data),  # CPU-GPU sync, once per epoch
                        "lr": optimiser.param_groups[0]["lr"],
                        "seconds": time.perf_counter() - began,
                    },
                )
    return model.eval()


def evaluate(task: Task, model: nn.Module, data: LabeledSet) -> dict[str, Any]:
    """The task's metrics of ``model`` on ``data``."""
    return task.test(model, data)[0]


# -- the task, from shards to a run directory -------------------------------------------------


def _urls(urls: str | Sequence[str]) -> str | list[str]:
    return urls if isinstance(urls, str) else list(urls)


def train_task(
    domain: str,
    *,
    train: str | list[str],
    eval: str | list[str],
    out: str | Path | None = None,
    network: str = "",
    epochs: int = 0,
    batch_size: int = 0,
    lr: float = 0.0,
    seed: int = 0,
    device: str | None = None,
    progress: Progress | None = None,
    scratch: str | Path | None = None,
    appearance: bool = False,
) -> dict[str, Any]:
    """Train ``domain``'s task network on every sample of ``train``, test it on ``eval``.

    Both sets are decoded once into a temporary directory under ``scratch`` (default: the
    system's temporary directory), removed at the end, and read back a batch at a time, so
    memory does not grow with the sets (``train.evaluation.rows``). Returns JSON-able metrics (the
    task's, plus ``n_train``, ``epochs``, ``network``, ``seconds``, ...). With ``out``, writes
    ``out/model.safetensors``, ``out/config.json`` (training settings, input preprocessing,
    data) and ``out/metrics.json``; ``load_task_model(out)`` restores the model.
    """
    task = get_task(domain)
    config = TaskConfig(
        domain=domain,
        network=network,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        appearance=appearance,
    )
    began = time.perf_counter()
    with scratch_directory(scratch, "task") as where:
        train_set = task.load(train, scratch=where)
        eval_set = task.load(eval, scratch=where, **task.options(train_set))
        loaded = time.perf_counter()
        model = fit(task, train_set, config, device=device, progress=progress)
        fitted = time.perf_counter()
        scores = evaluate(task, model, eval_set)
    metrics: dict[str, Any] = {
        "domain": domain,
        **scores,
        "n_train": len(train_set),
        "epochs": config.epochs,
        "network": config.network,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": config.seed,
        "device": str(next(model.parameters()).device),
    }
    ended = time.perf_counter()
    metrics["seconds"] = round(ended - began, 3)
    metrics["timings"] = {
        "load": round(loaded - began, 3),
        "fit": round(fitted - loaded, 3),
        "eval": round(ended - fitted, 3),
    }
    if out is not None:
        save_task_model(model, config, train_set, Path(out), train=train, eval=eval)
        (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def save_task_model(
    model: nn.Module, config: TaskConfig, data: LabeledSet, out: Path, **sources: Any
) -> None:
    """``model.safetensors`` + ``config.json`` (settings, input preprocessing, data sources)."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"network": config.network})
    task = get_task(config.domain)
    record = {
        **asdict(config),
        "input": data.info,
        "metric": asdict(task.metric),
        "optimiser": "adam, one-cycle",
        **{k: _urls(v) for k, v in sources.items()},
    }
    (out / "config.json").write_text(json.dumps(record, indent=2) + "\n")


def load_task_model(
    run: str | Path, *, device: str | None = None
) -> tuple[nn.Module, TaskConfig, dict[str, Any]]:
    """(model in eval mode, its TaskConfig, its input record) from a ``train_task`` run dir;
    ``get_task(config.domain).load(urls, **load_options(info, config.domain))`` reads data the
    same way."""
    run = Path(run)
    record = json.loads((run / "config.json").read_text())
    config = TaskConfig(
        **{k: record[k] for k in ("domain", "network", "epochs", "batch_size", "lr", "seed")},
        appearance=bool(record.get("appearance", False)),
    )
    info = record["input"]
    template = LabeledSet(config.domain, [], torch.zeros(0), torch.zeros(0), [], info)
    model = build(get_task(config.domain), config, template)
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    return model.to(_default_device(device)).eval(), config, info


def load_options(info: dict[str, Any], domain: str) -> dict[str, Any]:
    """The ``Task.load`` options that reproduce a saved model's input preprocessing."""
    template = LabeledSet(domain, [], torch.zeros(0), torch.zeros(0), [], info)
    return get_task(domain).options(template)
