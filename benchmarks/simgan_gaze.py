"""Does refinement help the task? SimGAN's gaze experiment (Shrivastava et al. §3.1) on CPU.

End to end on the procedural eye domain (``refinery.sim.eyes``):

1. render four sets, each from its own seed so that no two share geometry: synthetic train
   (labels used), real unlabeled (SimGAN's real images), real labeled train, real test;
2. train SimGAN with the CPU preset (``train/recipes/simgan-small.yaml`` plus the overrides
   recorded in the settings), timing it;
3. refine the synthetic training images with the trained refiner (eval mode, in memory),
   rounded to the 8-bit grid a refined shard would store;
4. train the gaze estimator (``train.downstream``) on synthetic, on refined and on labeled real
   images, with several estimator seeds each, and test every one on the real test set;
5. report the three mean angular errors, the share of the synthetic-to-real gap that
   refinement closed, (E_syn - E_ref) / (E_syn - E_real), and the label drift: the mean angle
   between the synthetic-trained estimator's predictions on each synthetic image and on its
   refined version (a refiner that moved the iris would show here; it also counts how much
   that estimator reacts to appearance alone, so it is an upper bound on what moved). As a
   second view, the real-trained estimator judges both versions of the synthetic training set
   against their labels: refined images that look real and keep their gaze score close to its
   real-test error.

The numbers are recorded whatever they show. A contact sheet (rows: synthetic, refined,
real) is saved as ``simgan_gaze.png`` next to the result.

Run from the repository root: ``python -m benchmarks.simgan_gaze`` (about 15 minutes on 2 CPU
cores, of which SimGAN about 6) writes ``benchmarks/results/simgan_gaze.json``; ``--quick`` is
a smoke run of seconds; ``--out DIR`` writes into DIR instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from benchmarks import common
from refinery import sheets, sim
from refinery.nets.gaze import angular_error_deg
from refinery.registry import build_network
from refinery.samples import encode_sample
from refinery.shards import write_shards
from train import downstream, simgan
from train.config import to_dict
from train.evaluate import gap_closed, summary

NAME = "simgan_gaze"
THREADS = 2
# One seed per set: no two sets share geometry (same seed + index = same labeled eye).
SEEDS = {"synthetic_train": 5101, "real_unlabeled": 5202, "real_train": 5303, "real_test": 5404}
SHARD_SIZE = 1000


@dataclass(frozen=True)
class RunConfig:
    """Sizes of one run; the defaults are the full benchmark."""

    synthetic_train: int = 8000
    real_unlabeled: int = 8000
    real_train: int = 8000
    real_test: int = 2000
    estimator_epochs: int = 4
    estimator_batch: int = 64
    estimator_lr: float = downstream.GazeTask.lr
    estimator_seeds: tuple[int, ...] = (0, 1)
    network: str = downstream.GazeTask.network
    simgan_preset: str = "small"
    simgan_overrides: dict[str, Any] = field(default_factory=dict)  # on top of the recipe


FULL = RunConfig()
QUICK = RunConfig(
    synthetic_train=192,
    real_unlabeled=192,
    real_train=192,
    real_test=96,
    estimator_epochs=1,
    estimator_seeds=(0,),
    simgan_overrides=dict(
        batch_size=8,
        pretrain_refiner_steps=3,
        pretrain_discriminator_steps=2,
        steps=4,
        buffer_size=64,
        shuffle_buffer=32,
        checkpoint_every=1000,
        log_every=2,
        sample_every=1000,
    ),
)


# -- data -------------------------------------------------------------------------------------


def synthesize(root: Path, name: str, variant: str, n: int, seed: int) -> str:
    """Render ``n`` samples into shards under ``root``; returns their brace URL."""
    samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", variant, n, seed=seed))
    urls = write_shards(samples, str(root / f"{name}-%04d.tar"), shard_size=SHARD_SIZE)
    return str(root / f"{name}-{{0000..{len(urls) - 1:04d}}}.tar")


def load_refiner(checkpoint: Path, config: simgan.SimGANConfig) -> nn.Module:
    refiner = build_network(config.refiner, channels=config.channels)
    refiner.load_state_dict(load_file(str(checkpoint / "refiner.safetensors")))
    return refiner.eval()


@torch.no_grad()
def refine(refiner: nn.Module, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] -> refined, rounded to the 8-bit grid a refined shard stores."""
    out = torch.cat(
        [refiner(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )
    return ((out.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def _tile(image: torch.Tensor, scale: int = 3) -> np.ndarray:
    """(1, H, W) in [-1, 1] -> (scale·H, scale·W, 3) uint8 RGB."""
    gray = ((image[0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    rgb = np.repeat(gray[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb.repeat(scale, 0).repeat(scale, 1))


def contact_sheet(
    synthetic: torch.Tensor, refined: torch.Tensor, real: torch.Tensor, count: int = 10
) -> np.ndarray:
    rows = [[_tile(img) for img in images[:count]] for images in (synthetic, refined, real)]
    return sheets.grid(rows, titles=["synthetic", "refined", "real (unlabeled set)"])


# -- statistics -------------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, Any]:
    """``train.evaluate.summary`` (mean, sample std, runs), rounded to 3 decimals."""
    figures = summary(values)
    return {"mean": round(figures["mean"], 3), "std": round(figures["std"], 3),
            "runs": [round(v, 3) for v in figures["runs"]]}  # fmt: skip


# -- the benchmark ----------------------------------------------------------------------------


def run(config: RunConfig, workdir: Path, results: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    torch.set_num_threads(THREADS)
    began = time.perf_counter()
    seconds: dict[str, float] = {}

    sizes = {
        "synthetic_train": ("synthetic", config.synthetic_train),
        "real_unlabeled": ("real", config.real_unlabeled),
        "real_train": ("real", config.real_train),
        "real_test": ("real", config.real_test),
    }
    urls = {
        name: synthesize(workdir / "data", name, variant, n, SEEDS[name])
        for name, (variant, n) in sizes.items()
    }
    seconds["render"] = time.perf_counter() - began

    # -- SimGAN on synthetic train + real unlabeled ------------------------------------------
    gan_config = simgan.load_config(preset=config.simgan_preset, **config.simgan_overrides)
    last_logged: dict[str, float] = {}

    def progress(iteration: int, values: dict[str, float]) -> None:
        last_logged.clear()
        last_logged.update(values, iteration=iteration)
        if iteration % max(1, 10 * gan_config.log_every) == 0:
            print(f"simgan {iteration}: {json.dumps({k: round(v, 4) for k, v in values.items()})}")

    start = time.perf_counter()
    checkpoint = simgan.train(
        gan_config,
        synthetic=urls["synthetic_train"],
        real=urls["real_unlabeled"],
        out=workdir / "simgan",
        device="cpu",
        progress=progress,
    )
    seconds["simgan"] = time.perf_counter() - start
    print(f"simgan: {seconds['simgan']:.0f} s, last log {last_logged}", flush=True)

    # -- refine the synthetic training set ----------------------------------------------------
    start = time.perf_counter()
    task = downstream.get_task("gaze")
    data = {name: task.load(url) for name, url in urls.items()}
    refiner = load_refiner(checkpoint, gan_config)
    synthetic = data["synthetic_train"]
    synthetic_images = synthetic.inputs
    refined_images = refine(refiner, synthetic_images)
    seconds["load_and_refine"] = time.perf_counter() - start
    pixel_change = (refined_images - synthetic_images).abs().mean().item() * 127.5
    sheet = contact_sheet(synthetic_images, refined_images, data["real_unlabeled"].inputs)
    sheet_path = sheets.save_png(results / f"{NAME}.png", sheet)

    # -- the gaze estimator on each training set, tested on real ------------------------------
    refined = synthetic.with_inputs(refined_images)  # labels of the synthetic images
    training_sets = {"synthetic": synthetic, "refined": refined, "real": data["real_train"]}
    test = data["real_test"]
    errors: dict[str, list[float]] = {name: [] for name in training_sets}
    medians: dict[str, list[float]] = {name: [] for name in training_sets}
    drift: list[float] = []
    # the real-trained estimator as a judge: its error against the synthetic labels
    judged: dict[str, list[float]] = {"synthetic": [], "refined": []}
    start = time.perf_counter()
    for seed in config.estimator_seeds:
        for name, training in training_sets.items():
            began_fit = time.perf_counter()
            estimator = downstream.TaskConfig(
                domain="gaze",
                network=config.network,
                epochs=config.estimator_epochs,
                batch_size=config.estimator_batch,
                lr=config.estimator_lr,
                seed=seed,
            )
            model = downstream.fit(task, training, estimator, device="cpu")
            metrics = downstream.evaluate(task, model, test)
            errors[name].append(metrics["mean_angular_error_deg"])
            medians[name].append(metrics["median_angular_error_deg"])
            if name == "synthetic":
                on_synthetic = task.predict(model, synthetic)
                on_refined = task.predict(model, refined)
                drift.append(float(angular_error_deg(on_synthetic, on_refined).mean()))
            if name == "real":
                for judged_set, judged_data in (("synthetic", synthetic), ("refined", refined)):
                    judged[judged_set].append(
                        downstream.evaluate(task, model, judged_data)["mean_angular_error_deg"]
                    )
            print(
                f"estimator seed {seed} on {name}: real test error "
                f"{metrics['mean_angular_error_deg']:.3f} deg "
                f"({time.perf_counter() - began_fit:.0f} s)",
                flush=True,
            )
    seconds["estimators"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - began

    mean = {name: statistics.fmean(values) for name, values in errors.items()}
    closed = gap_closed(mean["synthetic"], mean["refined"], mean["real"])
    closed_runs = [
        gap_closed(s, r, e)
        for s, r, e in zip(errors["synthetic"], errors["refined"], errors["real"], strict=True)
    ]
    figures = {
        "metric": "mean angular error on the real test set (deg)",
        "train_synthetic_test_real": _summary(errors["synthetic"]),
        "train_refined_test_real": _summary(errors["refined"]),
        "train_real_test_real": _summary(errors["real"]),
        "median_error_deg": {name: _summary(values)["mean"] for name, values in medians.items()},
        "gap_closed": None if closed is None else round(closed, 4),
        "gap_closed_runs": [None if g is None else round(g, 4) for g in closed_runs],
        "refined_beats_synthetic": mean["refined"] < mean["synthetic"],
        "label_drift_deg": _summary(drift),
        "real_estimator_error_on_synthetic_train_deg": _summary(judged["synthetic"]),
        "real_estimator_error_on_refined_train_deg": _summary(judged["refined"]),
        "refiner_mean_pixel_change": round(pixel_change, 3),  # 8-bit levels, |R(x) - x|
        "simgan_last_log": {k: round(v, 4) for k, v in last_logged.items()},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    settings = {
        **{k: v for k, v in asdict(config).items() if k != "simgan_overrides"},
        "estimator_seeds": list(config.estimator_seeds),
        "data_seeds": dict(SEEDS),
        "simgan_overrides": dict(config.simgan_overrides),
        "simgan_config": to_dict(gan_config),
        "simgan_device": "cpu",
        "torch_threads": THREADS,
        "estimator": (
            f"{config.network}, Adam one-cycle (peak lr {config.estimator_lr}), Euclidean loss "
            "on unit look vectors, no augmentation"
        ),
        "refined_images": "refiner in eval mode, output rounded to 8-bit levels",
        "contact_sheet": sheet_path.name,
    }
    return figures, settings


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of seconds")
    parser.add_argument(
        "--out", type=Path, default=None, help="write DIR/simgan_gaze.json instead of results/"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep shards and the SimGAN run in this directory"
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    results = args.out or common.RESULTS
    with tempfile.TemporaryDirectory(prefix="simgan_gaze-") as tmp:
        workdir = args.keep or Path(tmp)
        figures, settings = run(config, workdir, Path(results))
    settings["quick"] = args.quick
    common.write_result(NAME, figures, settings, results=results)
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
