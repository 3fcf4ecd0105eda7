"""Domain gap of the mini-simulators: what a task network trained on synthetic data loses on real data.

For each domain of ``refinery.sim`` a small task network is trained on synthetic samples only and
evaluated on held-out synthetic samples and on real samples; a second network of the same size,
trained on real samples and evaluated on real samples, is the upper bound a perfect refiner could
reach. The synthetic -> real drop is what refinement is meant to close, so it has to be there
(real error at least 1.5x the synthetic error, or at least 10 mIoU points) while the real variant
stays learnable (train-real -> test-real close to train-synthetic -> test-synthetic).

| domain  | network (CPU-sized)                              | input                                         | metric                          |
|---------|--------------------------------------------------|-----------------------------------------------|---------------------------------|
| `gaze`  | 3 strided convs + 2 linear, regresses (pitch, yaw) | 35x55 crop / 255                               | mean angle between look vectors, degrees |
| `hand`  | 4 strided convs + 2 linear, regresses 14 x (u, v) | depth at 64x64 (nearest), (d - hand median) / 150 mm, clipped to [-1, 1]; no measurement (0) counts as far (+1) | mean joint distance in pixels of the 128-pixel crop |
| `scene` | 4-level encoder-decoder FCN, 19 classes          | RGB at 64x128 (area), seg at 64x128 (nearest, never bilinear) | mIoU over classes in the test ground truth, points |

The four sets of a domain (train synthetic, train real, test synthetic, test real) come from four
different seeds, so no two share geometry. No augmentation, no tricks: the point is the gap.

Run from the repository root: ``python -m benchmarks.domain_gap`` (about 5 minutes on 2 CPU
cores) writes ``benchmarks/results/domain_gap.json``; ``--quick`` is a seconds-long smoke run,
``--out DIR`` writes ``DIR/domain_gap.json`` instead, ``--domains gaze,hand`` picks domains.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks import common
from refinery import sim

NAME = "domain_gap"
THREADS = 2
# Seeds per set: different seeds, so train and test (and synthetic and real) share no geometry.
SEEDS = {"train_synthetic": 101, "train_real": 202, "test_synthetic": 303, "test_real": 404}
HAND_INPUT = 64  # hand crops are resampled to this side for the network
SCENE_INPUT = (64, 128)  # (H, W) for the segmenter
NUM_CLASSES = 19


@dataclass(frozen=True)
class RunConfig:
    """Sizes for one domain; the defaults are the full benchmark."""

    domain: str
    train: int
    test: int
    epochs: int
    batch: int
    lr: float


FULL = {
    "gaze": RunConfig("gaze", train=6000, test=1500, epochs=10, batch=128, lr=2e-3),
    "hand": RunConfig("hand", train=3000, test=800, epochs=12, batch=64, lr=1e-3),
    "scene": RunConfig("scene", train=1200, test=200, epochs=16, batch=16, lr=3e-3),
}
QUICK = {
    "gaze": replace(FULL["gaze"], train=256, test=64, epochs=1),
    "hand": replace(FULL["hand"], train=96, test=32, epochs=1),
    "scene": replace(FULL["scene"], train=12, test=6, epochs=1, batch=6),
}


# -- data: rendered in worker processes, preprocessed there, returned as arrays ---------------


def _prepare(domain: str, sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(network input (C, H, W) float32, target) for one sample."""
    label = sample["json"]
    if domain == "gaze":
        image = sample["png"].astype(np.float32)[None] / 255.0  # (1, 35, 55)
        return image, np.array([label["gaze"]["pitch"], label["gaze"]["yaw"]], np.float32)
    if domain == "hand":
        depth = sample["depth.png"]
        size = depth.shape[0]
        small = cv2.resize(depth, (HAND_INPUT, HAND_INPUT), interpolation=cv2.INTER_NEAREST)
        small = small.astype(np.float32)
        # The hand's depth: median of the measured pixels in the central quarter of the crop.
        q = HAND_INPUT // 4
        centre = small[q : 3 * q, q : 3 * q]
        valid = centre[centre > 0]
        median = float(np.median(valid)) if valid.size else float(np.median(small[small > 0]))
        normalised = np.where(small > 0, np.clip((small - median) / 150.0, -1.0, 1.0), 1.0)
        uv = np.array(label["joints_uvd"], np.float32)[:, :2]  # (14, 2) crop pixels
        target = (uv - (size - 1) / 2) / (size / 2)  # [-1, 1]
        return normalised[None].astype(np.float32), target.reshape(-1)
    height, width = SCENE_INPUT
    rgb = cv2.resize(sample["png"], (width, height), interpolation=cv2.INTER_AREA)
    seg = cv2.resize(sample["seg.png"], (width, height), interpolation=cv2.INTER_NEAREST)
    return rgb.transpose(2, 0, 1).astype(np.float32) / 255.0, seg.astype(np.int64)


def _render_chunk(args: tuple[str, str, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    domain, variant, seed, start, n = args
    cv2.setNumThreads(1)
    pairs = [_prepare(domain, s) for s in sim.generate(domain, variant, n, seed=seed, start=start)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def make_set(
    domain: str, variant: str, n: int, seed: int, pool: ProcessPoolExecutor
) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = max(1, math.ceil(n / (4 * THREADS)))
    jobs = [(domain, variant, seed, start, min(chunk, n - start)) for start in range(0, n, chunk)]
    parts = list(pool.map(_render_chunk, jobs))
    inputs = np.concatenate([p[0] for p in parts])
    targets = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(inputs), torch.from_numpy(targets)


# -- networks ---------------------------------------------------------------------------------


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def gaze_net() -> nn.Module:
    return nn.Sequential(  # (B, 1, 35, 55) -> (B, 2) pitch, yaw
        _conv(1, 32, 2),  # (B, 32, 18, 28)
        _conv(32, 64, 2),  # (B, 64, 9, 14)
        _conv(64, 64, 2),  # (B, 64, 5, 7)
        nn.Flatten(),
        nn.Linear(64 * 5 * 7, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, 2),
    )


def hand_net(joints: int = 14) -> nn.Module:
    return nn.Sequential(  # (B, 1, 64, 64) -> (B, 2 * joints) u, v in [-1, 1]
        _conv(1, 16, 2),  # (B, 16, 32, 32)
        _conv(16, 64, 2),  # (B, 64, 16, 16)
        _conv(64, 64, 2),  # (B, 64, 8, 8)
        _conv(64, 64, 2),  # (B, 64, 4, 4)
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, 2 * joints),
    )


class SceneNet(nn.Module):
    """Encoder-decoder FCN: three stride-2 stages, a dilated context conv, skip connections."""

    def __init__(self, *, classes: int = NUM_CLASSES, width: int = 16):
        super().__init__()
        w = width
        self.enc1 = _conv(3, w, 2)  # (B, w, H/2, W/2)
        self.enc2 = _conv(w, 2 * w, 2)  # (B, 2w, H/4, W/4)
        self.enc3 = nn.Sequential(_conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w, dilation=2))  # H/8
        self.dec2 = nn.Sequential(
            nn.Conv2d(5 * w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True)
        )
        self.head = nn.Conv2d(3 * w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        b = self.enc2(a)
        c = F.interpolate(self.enc3(b), size=b.shape[2:], mode="bilinear", align_corners=False)
        d = F.interpolate(
            self.dec2(torch.cat([c, b], 1)), size=a.shape[2:], mode="bilinear", align_corners=False
        )
        logits = self.head(torch.cat([d, a], 1))  # (B, classes, H/2, W/2)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "gaze": gaze_net,
    "hand": hand_net,
    "scene": SceneNet,
}
NETWORK_NAMES = {
    "gaze": "gaze_net: conv 32-64-64 (3x3, stride 2, BN) + linear 128 + linear 2",
    "hand": "hand_net: conv 16-64-64-64 (3x3, stride 2, BN) + linear 256 + linear 28",
    "scene": "SceneNet(width=16): encoder 16-32-48 (stride 2) + dilated 48, skip decoder, 19 classes",
}


# -- training and metrics ---------------------------------------------------------------------


def _loss(domain: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if domain == "scene":
        return F.cross_entropy(output, target, ignore_index=255)
    return F.smooth_l1_loss(output, target, beta=0.05)


def train(config: RunConfig, inputs: torch.Tensor, targets: torch.Tensor, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = NETWORKS[config.domain]()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * math.ceil(len(inputs) / config.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), config.batch):
            batch = order[start : start + config.batch]
            if len(batch) < 2:  # BatchNorm needs two samples
                continue
            loss = _loss(config.domain, model(inputs[batch]), targets[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def _predict(model: nn.Module, inputs: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


def _look(pitch_yaw: np.ndarray) -> np.ndarray:
    pitch, yaw = pitch_yaw[:, 0], pitch_yaw[:, 1]
    return np.stack([-np.cos(pitch) * np.sin(yaw), -np.sin(pitch), -np.cos(pitch) * np.cos(yaw)], 1)


def evaluate(domain: str, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    output = _predict(model, inputs)
    if domain == "gaze":
        cosine = np.sum(_look(output.numpy()) * _look(targets.numpy()), axis=1)
        return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))).mean())
    if domain == "hand":
        scale = sim.options_for("hand").size / 2  # [-1, 1] -> crop pixels
        error = (output - targets).reshape(len(output), -1, 2).norm(dim=2) * scale
        return float(error.mean())
    prediction = output.argmax(1).flatten().numpy()
    truth = targets.flatten().numpy()
    keep = truth != 255
    confusion = np.bincount(
        truth[keep] * NUM_CLASSES + prediction[keep], minlength=NUM_CLASSES**2
    ).reshape(NUM_CLASSES, NUM_CLASSES)
    present = confusion.sum(1) > 0
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    iou = np.diag(confusion)[present] / np.maximum(union[present], 1)
    return float(100.0 * iou.mean())


# -- the benchmark ----------------------------------------------------------------------------

METRICS = {
    "gaze": ("mean angular error (deg)", True),
    "hand": ("mean joint error (px, 128-pixel crop)", True),
    "scene": ("mIoU (points, classes in the test ground truth)", False),
}


def run_domain(
    config: RunConfig, pool: ProcessPoolExecutor
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(figures, settings) for one domain."""
    began = time.perf_counter()
    domain = config.domain
    data = {
        name: make_set(
            domain,
            name.split("_")[1],
            config.train if name.startswith("train") else config.test,
            seed,
            pool,
        )
        for name, seed in SEEDS.items()
    }
    rendered = time.perf_counter() - began
    on_synthetic = train(config, *data["train_synthetic"], seed=SEEDS["train_synthetic"])
    on_real = train(config, *data["train_real"], seed=SEEDS["train_real"])
    trained = time.perf_counter() - began - rendered
    syn_syn = evaluate(domain, on_synthetic, *data["test_synthetic"])
    syn_real = evaluate(domain, on_synthetic, *data["test_real"])
    real_real = evaluate(domain, on_real, *data["test_real"])
    metric, lower_is_better = METRICS[domain]
    if lower_is_better:
        drop = syn_real - syn_syn
        relative = drop / syn_syn
        gap_ok = syn_real >= 1.5 * syn_syn
    else:
        drop = syn_syn - syn_real
        relative = drop / syn_syn
        gap_ok = drop >= 10.0
    figures = {
        "metric": metric,
        "lower_is_better": lower_is_better,
        "train_synthetic_test_synthetic": round(syn_syn, 3),
        "train_synthetic_test_real": round(syn_real, 3),
        "train_real_test_real": round(real_real, 3),
        "drop_abs": round(drop, 3),
        "drop_rel": round(relative, 4),
        "gap_ok": bool(gap_ok),
        "seconds": {
            "render": round(rendered, 1),
            "train": round(trained, 1),
            "total": round(time.perf_counter() - began, 1),
        },
    }
    model = NETWORKS[domain]()
    settings = {
        **asdict(config),
        "seeds": dict(SEEDS),
        "network": NETWORK_NAMES[domain],
        "parameters": sum(p.numel() for p in model.parameters()),
        "optimiser": "Adam + OneCycleLR, smooth L1 (beta 0.05) for regression, cross-entropy for seg",
        "input": {
            "gaze": "35x55 / 255",
            "hand": f"{HAND_INPUT}x{HAND_INPUT} nearest, (d - median) / 150 mm clipped, 0 -> +1",
            "scene": f"{SCENE_INPUT[0]}x{SCENE_INPUT[1]}, RGB area / 255, seg nearest",
        }[domain],
    }
    return figures, settings


def run(
    domains: Sequence[str], configs: dict[str, RunConfig]
) -> tuple[dict[str, Any], dict[str, Any]]:
    torch.set_num_threads(THREADS)
    figures: dict[str, Any] = {}
    settings: dict[str, Any] = {"torch_threads": THREADS, "render_workers": THREADS, "domains": {}}
    # Spawned, not forked, workers: a fork of a process whose OpenCV or OpenMP thread pools have
    # run (in a test session, say) can deadlock in the child.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=THREADS, mp_context=context) as pool:
        for domain in domains:
            figures[domain], settings["domains"][domain] = run_domain(configs[domain], pool)
            print(f"{domain}: {json.dumps(figures[domain])}", flush=True)
    return figures, settings


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of seconds")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write DIR/domain_gap.json instead of benchmarks/results/",
    )
    parser.add_argument(
        "--domains", default=",".join(sim.DOMAINS), help="comma-separated subset of gaze,hand,scene"
    )
    args = parser.parse_args(argv)
    domains = [d for d in args.domains.split(",") if d]
    unknown = sorted(set(domains) - set(sim.DOMAINS))
    if unknown:
        parser.error(
            f"unknown domain(s) {', '.join(unknown)}; choose from {', '.join(sim.DOMAINS)}"
        )
    figures, settings = run(domains, QUICK if args.quick else FULL)
    settings["quick"] = args.quick
    common.write_result(NAME, figures, settings, results=args.out or common.RESULTS)
    return figures


if __name__ == "__main__":
    main()
