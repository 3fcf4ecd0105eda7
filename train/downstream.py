"""Downstream task networks: what refinement is worth, measured on the task it is for.

SimGAN's claim (Shrivastava et al., CVPR 2017, §3.1, Table 2) is that a gaze estimator trained
on refined synthetic eye crops does better on real crops than one trained on the unrefined
synthetic crops. This module trains and tests that estimator from shards; the benchmark
``benchmarks/simgan_gaze.py`` composes it with a SimGAN run.

The pieces, each usable alone::

    images, vectors = load_gaze(urls)          # (N, 1, H, W) float32 in [-1, 1], (N, 3) unit
    model = fit_gaze(images, vectors, epochs=8, seed=0)
    predicted = predict_gaze(model, images)     # (N, 3) unit look vectors
    metrics = evaluate_gaze(model, images, vectors)  # mean / median angular error, degrees

and ``train_task("gaze", train=URLS, eval=URLS, out=DIR)`` runs them in order and writes
``model.safetensors``, ``config.json`` and ``metrics.json`` into ``out``.

Inputs use the refiner's scaling (``train.data.scaling_for``: 8-bit pixels / 127.5 - 1), so a
refiner's output can be fed to the estimator without a second copy of that constant; the
scaling is written into ``config.json`` next to the weights (STYLE 4). Targets are the labels'
3-D look vectors (``json.look_vec``, normalised), the loss is the paper's Euclidean loss
(``refinery.nets.gaze.euclidean_loss``), the metric the angle between predicted and true look
vectors. No augmentation: the point is the domain gap, not the best estimator.

Repeatability: the network's initial weights and the batch order come from ``seed`` alone
(the global torch RNG is left as it was), so the same seed on the same machine and thread count
gives the same weights and metrics on CPU.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from refinery.nets.gaze import angular_error_deg, euclidean_loss
from refinery.registry import build_network, network_info
from refinery.samples import image_component
from refinery.shards import Handler, read, reraise
from train.data import scaling_for

TASKS = ("gaze",)  # hand and scene task networks come with a later issue

# Defaults sized for a 2-core CPU: about a minute for 10k eye crops with the small estimator.
NETWORK = "gaze-estimator-small"
EPOCHS = 8
BATCH_SIZE = 64
LR = 1e-3

Progress = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True, kw_only=True)
class GazeTaskConfig:
    """What a trained estimator was trained with; written to ``config.json`` beside it."""

    domain: str = "gaze"
    network: str = NETWORK
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    lr: float = LR  # Adam, one-cycle schedule peaking at lr
    seed: int = 0

    def __post_init__(self) -> None:
        if self.domain not in TASKS:
            raise ValueError(_unsupported(self.domain))
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if network_info(self.network).role != "task":
            raise ValueError(f"{self.network!r} is not a task network")


def _unsupported(domain: str) -> str:
    return (
        f"no downstream task for domain {domain!r}; supported: {', '.join(TASKS)} "
        "(hand-pose and segmentation task networks are not implemented yet)"
    )


# -- data -------------------------------------------------------------------------------------


def load_gaze(
    urls: str | Sequence[str], *, handler: Handler = reraise
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample of ``urls`` in memory: images (N, 1, H, W) float32 in [-1, 1], look
    vectors (N, 3) float32 of unit length (``json.look_vec``, normalised).

    Bad samples go to ``handler`` (default: raise); all images must share one size.
    """
    scaling = scaling_for("gaze")
    images: list[np.ndarray] = []
    vectors: list[list[float]] = []
    for sample in read(urls, "gaze", handler=handler):
        image = sample[image_component(sample, "gaze")]  # (H, W) uint8
        if images and image.shape != images[0].shape:
            raise ValueError(
                f"sample {sample['__key__']!r} is {image.shape[0]}×{image.shape[1]}, the first "
                f"was {images[0].shape[0]}×{images[0].shape[1]}; one size per set"
            )
        images.append(image)
        vectors.append(sample["json"]["look_vec"])
    if not images:
        raise ValueError(f"no gaze samples in {urls!r}")
    pixels = scaling.to_unit(np.stack(images))[:, None]  # (N, 1, H, W)
    look = torch.tensor(vectors, dtype=torch.float32)  # (N, 3)
    norm = look.norm(dim=1, keepdim=True)
    if bool((norm < 1e-6).any()):
        raise ValueError(f"a look_vec in {urls!r} has zero length")
    return torch.from_numpy(np.ascontiguousarray(pixels)), look / norm


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# -- training, prediction, evaluation ---------------------------------------------------------


def build_estimator(
    network: str = NETWORK, *, input_size: tuple[int, int] = (35, 55), seed: int = 0
) -> nn.Module:
    """A freshly initialised estimator; its weights depend on ``seed`` only."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(seed)
        return build_network(network, channels=1, input_size=tuple(input_size))


def fit_gaze(
    images: torch.Tensor,
    vectors: torch.Tensor,
    *,
    network: str = NETWORK,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> nn.Module:
    """Train ``network`` to map images (N, 1, H, W) in [-1, 1] to look vectors (N, 3).

    Adam with a one-cycle schedule (peak ``lr``), Euclidean loss on unit look vectors, the
    order of every epoch drawn from ``seed``. ``progress(epoch, {"loss", "lr", "seconds"})``
    is called after each epoch. Returns the model in eval mode, on ``device``.
    """
    if images.ndim != 4 or images.shape[1] != 1 or vectors.shape != (len(images), 3):
        raise ValueError(
            f"expected images (N, 1, H, W) and vectors (N, 3), got {tuple(images.shape)} "
            f"and {tuple(vectors.shape)}"
        )
    config = GazeTaskConfig(network=network, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    dev = _default_device(device)
    model = build_estimator(network, input_size=tuple(images.shape[-2:]), seed=seed).to(dev)
    inputs, targets = images.to(dev), vectors.to(dev)  # the whole set: ~7.7 kB per eye crop
    steps_per_epoch = math.ceil(len(inputs) / config.batch_size)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    order_rng = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(config.epochs):
        began = time.perf_counter()
        order = torch.randperm(len(inputs), generator=order_rng).to(dev)
        total = torch.zeros((), device=dev)
        for start in range(0, len(inputs), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = euclidean_loss(model(inputs[batch]), targets[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.detach() * len(batch)
        if progress is not None:
            progress(
                epoch + 1,
                {
                    "loss": float(total) / len(inputs),  # CPU-GPU sync, once per epoch
                    "lr": optimiser.param_groups[0]["lr"],
                    "seconds": time.perf_counter() - began,
                },
            )
    return model.eval()


@torch.no_grad()
def predict_gaze(model: nn.Module, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] -> (N, 3) unit look vectors on the CPU, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(images[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    predicted = torch.cat(out) if out else torch.zeros(0, 3)
    return predicted / predicted.norm(dim=1, keepdim=True).clamp_min(1e-12)


def summarise_errors(errors: torch.Tensor) -> dict[str, float]:
    """Per-sample angular errors (N,) in degrees -> mean, median, 90th percentile, count."""
    errors = errors.double()
    return {
        "mean_angular_error_deg": float(errors.mean()),
        "median_angular_error_deg": float(errors.median()),
        "p90_angular_error_deg": float(torch.quantile(errors, 0.9)),
        "n_eval": len(errors),
    }


def evaluate_gaze(
    model: nn.Module, images: torch.Tensor, vectors: torch.Tensor, *, batch_size: int = 512
) -> dict[str, float]:
    """Angular error between the model's look vectors and ``vectors`` (N, 3), in degrees."""
    if len(images) == 0:
        raise ValueError("no images to evaluate on")
    predicted = predict_gaze(model, images, batch_size=batch_size)
    return summarise_errors(angular_error_deg(predicted, vectors))


# -- the task, from shards to a run directory -------------------------------------------------


def _urls(urls: str | Sequence[str]) -> str | list[str]:
    return urls if isinstance(urls, str) else list(urls)


def train_task(
    domain: str,
    *,
    train: str | list[str],
    eval: str | list[str],
    out: str | Path | None = None,
    network: str = NETWORK,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    seed: int = 0,
    device: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``domain``'s task network on every sample of ``train``, test it on ``eval``.

    Returns JSON-able metrics (``mean_angular_error_deg``, ``median_angular_error_deg``,
    ``n_train``, ``n_eval``, ``epochs``, ``network``, ``seconds``, ...). With ``out``, writes
    ``out/model.safetensors``, ``out/config.json`` (training settings, input scaling, data)
    and ``out/metrics.json``; ``load_estimator(out)`` restores the model.
    """
    if domain not in TASKS:
        raise ValueError(_unsupported(domain))
    config = GazeTaskConfig(
        domain=domain, network=network, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed
    )
    began = time.perf_counter()
    train_images, train_vectors = load_gaze(train)
    eval_images, eval_vectors = load_gaze(eval)
    loaded = time.perf_counter()
    model = fit_gaze(
        train_images,
        train_vectors,
        network=config.network,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        device=device,
        progress=progress,
    )
    fitted = time.perf_counter()
    metrics: dict[str, Any] = {
        "domain": domain,
        **evaluate_gaze(model, eval_images, eval_vectors),
        "n_train": len(train_images),
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
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"network": config.network})
        record = {
            **asdict(config),
            "input": {
                "channels": 1,
                "size": list(train_images.shape[-2:]),  # (H, W)
                "range": [-1.0, 1.0],
                "scaling": scaling_for("gaze").as_dict(),  # stored pixel range mapped to [-1, 1]
            },
            "target": "unit look vector (x right, y down, z away from the camera)",
            "loss": "euclidean",
            "optimiser": "adam, one-cycle",
            "train": _urls(train),
            "eval": _urls(eval),
        }
        (out / "config.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def load_estimator(run: str | Path, *, device: str | None = None) -> nn.Module:
    """The estimator ``train_task(..., out=run)`` wrote, in eval mode."""
    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    model = build_network(
        config["network"],
        channels=config["input"]["channels"],
        input_size=tuple(config["input"]["size"]),
    )
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    return model.to(_default_device(device)).eval()
