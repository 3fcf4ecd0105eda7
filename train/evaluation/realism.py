"""How real do images look, measured without labels: for unlabeled real sets.

Two measures, each comparing a candidate set (synthetic, refined) with a real set:

- **Classifier two-sample test** (C2ST; Lopez-Paz & Oquab, ICLR 2017). A small CNN is trained
  to tell real from candidate images on one half of each set and scored on the other half,
  balanced: held-out accuracy 1.0 = told apart every time, 0.5 = indistinguishable (the SimGAN
  paper's human observers reached 51.7% on refined vs real eyes). Repeated over seeds (the
  split, the draw and the network's initialisation), mean ± std. Under the null hypothesis
  (same distribution) the accuracy on ``n`` held-out images is ~ N(0.5, 0.25 / n): the report
  gives that 95% band, so a value inside it is "not told apart".
- **Kernel distance** (KID; Bińkowski et al., ICLR 2018): the unbiased MMD² between the two sets'
  features with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³, averaged over random
  subsets, 0 for the same distribution (it may dip below 0 by chance). The features are those
  of a network this project trains, stated in the report: the domain's task network trained on
  the synthetic set (the input of its last layer, averaged over space). Unlike the Fréchet
  distance it is unbiased for the few thousand images a CPU run has.

``images(...)`` reads any set, labeled or not (``labels=False``), into the task network's input
form, resized to a given size, so real crops of another size compare with synthetic ones; with
``scratch`` it keeps them on disk (``train.evaluation.rows.Rows``), and both measures read the sets
a batch
at a time, so their memory does not grow with the sets.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from refinery.samples import image_component
from refinery.shards import read
from train.data import scaling_for, unit_channels_first
from train.evaluation.rows import Rows, RowWriter, inference_batch, scratch_file

Images = torch.Tensor | Rows  # (N, C, H, W) float32, in memory or on disk

SCHEDULES = ("constant", "cosine")  # two_sample_test's learning-rate schedules
C2ST_REPEAT_STRIDE = 1000  # realism(repeats=R): seed s scores with classifiers s, s + 1000, ...
C2ST_MAX_SIDE = 64  # images are area-averaged down to at most this height before the C2ST
C2ST_NOTE = (
    "held-out accuracy of a small CNN telling real from candidate images, balanced halves: "
    "1.0 = told apart, 0.5 = indistinguishable (the SimGAN paper's human test: 51.7% refined "
    "vs real)"
)
KID_NOTE = (
    "unbiased MMD² with the cubic polynomial kernel over features of {network}: "
    "0 = same distribution"
)


# -- reading ---------------------------------------------------------------------------------


def images(
    urls: str | Sequence[str],
    domain: str,
    *,
    size: Sequence[int],
    limit: int | None = None,
    depth_input: int | None = None,
    scratch: Path | None = None,
) -> Images:
    """(N, C, H, W) float32 in [-1, 1] of any set of ``domain`` (labels not needed), each image
    resized to ``size`` (H, W) as the task networks take it; ``limit``: the first N samples.
    Hand depth goes through the hand task's own normalisation at ``depth_input`` pixels.
    A tensor, or with ``scratch`` (a directory) ``Rows`` of the 8-bit images stored there."""
    from train.evaluation.downstream import hand_input

    height, width = (int(s) for s in size)

    def resized(image: np.ndarray) -> np.ndarray:  # 8-bit, stored as such
        if image.shape[:2] == (height, width):
            return image
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

    def normalised(depth: np.ndarray) -> np.ndarray:  # float32, stored as such
        return hand_input(depth, depth_input or height)

    if domain == "hand":
        stored, transform = normalised, lambda x: x[:, None]
    else:
        stored, transform = resized, unit_channels_first(scaling_for(domain))
    rows = RowWriter(scratch_file(scratch, "realism"), transform=transform)
    for sample in read(urls, domain, labels=False):
        rows.append(stored(sample[image_component(sample, domain)]))
        if limit is not None and rows.count >= limit:
            break
    if not rows.count:
        raise ValueError(f"no {domain} images in {urls!r}")
    return rows.finish()


# -- the classifier two-sample test ----------------------------------------------------------


class TwoSampleNet(nn.Module):
    """Three strided 3×3 convolutions, global average pooling, one logit (real vs candidate)."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))[:, 0]


def _shrink(x: torch.Tensor) -> torch.Tensor:
    factor = math.ceil(x.shape[-2] / C2ST_MAX_SIDE)
    return nn.functional.avg_pool2d(x, factor) if factor > 1 else x


def two_sample_test(
    real: Images,
    candidate: Images,
    *,
    seed: int = 0,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    schedule: str = "constant",
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """One C2ST: held-out accuracy of a fresh ``TwoSampleNet`` (see the module docstring).

    ``schedule``: the learning rate over training. ``"constant"`` (what ``refinery evaluate``
    and every record use) stops the classifier wherever its last step left it, and on real eye
    crops its held-out accuracy still moves by several points from one epoch to the next;
    ``"cosine"`` decays the rate to 0 over the ``epochs`` (Loshchilov & Hutter, ICLR 2017), so
    the classifier settles before it is scored (``benchmarks/experiments/c2st_noise.py`` measures both).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if real.shape[1:] != candidate.shape[1:]:
        raise ValueError(
            f"real {tuple(real.shape[1:])} and candidate {tuple(candidate.shape[1:])} images "
            "differ in shape"
        )
    generator = torch.Generator().manual_seed(seed)
    n = min(len(real), len(candidate))
    half = n // 2
    if half < 2:  # tiny sets give a wide null band (reported), not an error
        raise ValueError(f"a two-sample test needs at least 4 images of each set, got {n}")
    real_rows = torch.randperm(len(real), generator=generator)[: 2 * half]
    candidate_rows = torch.randperm(len(candidate), generator=generator)[: 2 * half]
    # examples 0..half-1 are real, half..2*half-1 candidates; read a batch at a time
    x_train = _Examples(real, real_rows[:half], candidate, candidate_rows[:half])
    x_test = _Examples(real, real_rows[half:], candidate, candidate_rows[half:])
    y_train = torch.cat([torch.ones(half), torch.zeros(half)])
    y_test = torch.cat([torch.ones(half), torch.zeros(half)])

    torch.manual_seed(seed)
    net = TwoSampleNet(real.shape[1]).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x_train) / batch_size)
    decay = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        if schedule == "cosine"
        else None
    )
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            loss = loss_fn(net(x_train[batch].to(device)), y_train[batch].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if decay is not None:
                decay.step()
    net.eval()
    step = inference_batch(x_test[0:1].shape)
    with torch.no_grad():
        logits = torch.cat(
            [net(x_test[i : i + step].to(device)).cpu() for i in range(0, len(x_test), step)]
        )
    accuracy = float(((logits > 0).float() == y_test).float().mean())
    return {"accuracy": accuracy, "train": 2 * half, "test": 2 * half}


class _Examples:
    """The C2ST's examples: ``real[real_rows]`` then ``candidate[candidate_rows]``, shrunk,
    read only when a batch of them is asked for."""

    def __init__(self, real: Images, real_rows, candidate: Images, candidate_rows):
        self.sources = (real, candidate)
        self.rows = (real_rows, candidate_rows)
        self.half = len(real_rows)

    def __len__(self) -> int:
        return self.half + len(self.rows[1])

    def __getitem__(self, key: torch.Tensor | slice) -> torch.Tensor:
        index = torch.arange(len(self))[key] if isinstance(key, slice) else key
        is_real = index < self.half
        parts = [
            (is_real, self.sources[0][self.rows[0][index[is_real]]]),
            (~is_real, self.sources[1][self.rows[1][index[~is_real] - self.half]]),
        ]
        present = [(mask, _shrink(x)) for mask, x in parts if len(x)]
        out = torch.empty((len(index), *present[0][1].shape[1:]), dtype=present[0][1].dtype)
        for mask, x in present:
            out[mask] = x
        return out


def null_band(test: int) -> float:
    """Half-width of the 95% band of a C2ST's accuracy on ``test`` images when the two sets
    are one distribution: 1.96 · sqrt(0.25 / test)."""
    return 1.96 * math.sqrt(0.25 / test)


# -- the kernel distance ---------------------------------------------------------------------


def features(model: nn.Module, inputs: Images, *, batch_size: int | None = None) -> torch.Tensor:
    """(N, D): the input of ``model``'s last ``Linear`` or ``Conv2d`` layer (its features),
    averaged over space, in eval mode, ``batch_size`` images at a time (default:
    ``train.evaluation.rows.inference_batch`` of their size)."""
    batch_size = batch_size or inference_batch(inputs.shape)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer")
    captured: list[torch.Tensor] = []

    def keep(_module, args, _output) -> None:
        x = args[0].detach().float()
        captured.append((x.mean(dim=(2, 3)) if x.ndim == 4 else x.flatten(1)).cpu())

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hook = layers[-1].register_forward_hook(keep)
    try:
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                model(inputs[i : i + batch_size].to(device))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured)


def kernel_distance(
    x: torch.Tensor, y: torch.Tensor, *, subsets: int = 20, subset_size: int = 1000, seed: int = 0
) -> dict[str, float]:
    """KID: the unbiased MMD² of the cubic polynomial kernel, mean and std over random subsets
    of ``min(subset_size, len(x), len(y))`` features of each set."""
    x, y = x.double(), y.double()
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"a kernel distance needs at least 2 features of each set, got {m}")
    d = x.shape[1]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=generator)[:m]]
        b = y[torch.randperm(len(y), generator=generator)[:m]]
        k_aa = (a @ a.T / d + 1) ** 3
        k_bb = (b @ b.T / d + 1) ** 3
        k_ab = (a @ b.T / d + 1) ** 3
        within = (k_aa.sum() - k_aa.diagonal().sum() + k_bb.sum() - k_bb.diagonal().sum()) / (
            m * (m - 1)
        )
        values.append(float(within - 2 * k_ab.mean()))
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "subset": m}


def pooled_std(spreads: Sequence[dict[str, Any]]) -> float:
    """The pooled standard deviation of equal-sized groups, from their summaries (``std``)."""
    return math.sqrt(statistics.fmean(s["std"] ** 2 for s in spreads))


# -- both, for a report ----------------------------------------------------------------------


def realism(
    real: Images,
    candidates: dict[str, Images],
    *,
    seeds: Sequence[int],
    feature_model: nn.Module | None = None,
    feature_network: str = "",
    epochs: int = 10,
    repeats: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Each candidate set against ``real``: C2ST over ``seeds`` and, with a feature model, KID.

    ``repeats``: classifiers per seed (seed ``s`` uses classifier seeds ``s``, ``s + 1000``,
    ...), their mean being the seed's accuracy. One classifier's draw (split, draw,
    initialisation) moves the accuracy by about ± 0.03 on the same images
    (``benchmarks/experiments/c2st_noise.py``); with ``repeats`` > 1 that spread is reported too
    (``c2st_classifier_std``, pooled over seeds) and shrinks from each seed's figure.
    """
    from train.evaluation.evaluate import summary

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    out: dict[str, Any] = {"note": C2ST_NOTE, "sets": {}}
    real_features = features(feature_model, real) if feature_model is not None else None
    for name, candidate in candidates.items():
        runs = [
            [
                two_sample_test(
                    real, candidate, seed=s + C2ST_REPEAT_STRIDE * k, epochs=epochs, device=device
                )
                for k in range(repeats)
            ]
            for s in seeds
        ]
        per_seed = [summary([r["accuracy"] for r in classifiers]) for classifiers in runs]
        entry: dict[str, Any] = {
            "c2st_accuracy": summary([p["mean"] for p in per_seed]),
            "c2st_train_images": runs[0][0]["train"],
            "c2st_test_images": runs[0][0]["test"],
            "c2st_null_band": null_band(runs[0][0]["test"]),
            "c2st_classifiers_per_seed": repeats,
        }
        if repeats > 1:
            entry["c2st_per_seed"] = per_seed
            entry["c2st_classifier_std"] = pooled_std(per_seed)
        if real_features is not None:
            entry["kid"] = kernel_distance(features(feature_model, candidate), real_features)
        out["sets"][name] = entry
    if feature_model is not None:
        out["kid_note"] = KID_NOTE.format(network=feature_network)
    out["real_images"] = len(real)
    return out
