"""Training speed through the real loop, and the share of it spent waiting for data.

Unlike ``simgan_speed`` (the trainer's compute ceiling on batches held in memory), this drives
``train.<method>.train``, the loop every user runs: batches are read from shards, decoded,
validated and scaled by the method's streams, and the loop logs, per interval of
``log_every`` iterations, ``speed/images_per_s`` and ``time/data_wait_share`` (the seconds the
streams kept it waiting, over the interval's wall time). The figures are the means over the
intervals of the adversarial phase after the first (warm-up).

Cases, side by side in one run (this machine is noisy: compare the ratio):

- SimGAN ``--preset small`` on 35x55 procedural eyes (batch 32), decoding on the loop's own
  thread (``decode_workers: 0``, what every run did before) and on two background threads (the
  recipes' default);
- ``--methods simgan,sggan`` adds SG-GAN ``--preset small`` on 64x128 street frames.

Target (issue 16): on the CPU, small gaze preset, waiting for data ≤ 10% of step time.
``benchmarks.gpu`` runs the same measure on a GPU (paper presets, FP32 and AMP).

    python -m benchmarks.train_speed [--quick] [--methods simgan,sggan] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from benchmarks import common

NAME = "train_speed"


def make_shards(
    root: Path, domain: str, count: int, *, size: tuple[int, int] | None = None
) -> dict:
    """Synthetic and real procedural shards (500 per shard) for ``domain``, rendered side by
    side in two spawned processes; their URLs."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn) as pool:
        made = {
            variant: pool.submit(
                common.procedural_shards, root, domain, variant, count, seed=seed, size=size
            )
            for variant, seed in (("synthetic", 1), ("real", 2))
        }
    return {variant: future.result() for variant, future in made.items()}


def measure(
    method: str,
    preset: str,
    urls: dict[str, list[str]],
    *,
    device: str,
    steps: int,
    log_every: int,
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``method`` for ``steps`` adversarial iterations through ``train.loop``; the mean
    images/s and data-wait share over the adversarial intervals after the first."""
    import importlib

    module = importlib.import_module(f"train.{method}")
    config = module.load_config(
        preset=preset,
        steps=steps,
        log_every=log_every,
        checkpoint_every=10**9,  # the end of the run only
        sample_every=10**9,
        **overrides,
    )
    schedule = config.schedule
    pretrain = schedule.pretrain
    intervals: list[dict[str, float]] = []

    def progress(done: int, values: dict[str, float]) -> None:
        if done - log_every >= pretrain:  # a whole interval of adversarial iterations
            intervals.append(values)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train-speed-") as out:
        module.train(
            config,
            synthetic=urls["synthetic"],
            real=urls["real"],
            out=Path(out) / "run",
            device=device,
            progress=progress,
        )
    timed = intervals[1:] or intervals
    if not timed:
        raise RuntimeError(f"{method}: no adversarial interval of {log_every} iterations")
    return {
        "images_per_s": statistics.fmean(v["speed/images_per_s"] for v in timed),
        "data_wait_share": statistics.fmean(v["time/data_wait_share"] for v in timed),
        "intervals": len(timed),
        "iterations": schedule.total,
        "seconds": time.perf_counter() - began,
        "batch_size": config.batch_size,
        "decode_workers": config.decode_workers,
        "amp": bool(config.amp and device.startswith("cuda")),
    }


def feed(
    urls: dict[str, list[str]],
    *,
    batch_size: int = 512,
    seconds: float = 5.0,
    rounds: int = 3,
    decoders: tuple[int, ...] = (0, 2),
) -> dict[str, Any]:
    """The gaze data feed alone, as the loop drives it: ``ImageStream`` batches of
    ``batch_size`` (SimGAN's paper preset) from the synthetic shards, with decoding on this
    process's thread or in ``decoders`` worker processes, and with the heap as it is or frozen
    as ``train.loop`` freezes it. Per case: samples/s here, and the CPU seconds this process
    (all its threads, not the workers) spends per sample, whose inverse is the most it can feed
    where every worker has a core of its own, as on a GPU server. Cases interleaved over
    ``rounds``; each keeps its least CPU per sample and its best rate."""
    from train.data import ImageStream
    from train.loop import frozen_heap

    rows: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for frozen in (False, True):
            for workers in decoders:
                key = f"{'frozen' if frozen else 'default'}_heap_decoders_{workers}"
                with frozen_heap() if frozen else contextlib.nullcontext():
                    stream = ImageStream(
                        urls["synthetic"], domain="gaze", batch_size=batch_size, seed=1,
                        decoders=workers, shuffle_buffer=5000,
                    )  # fmt: skip
                    stream.next_batch()  # workers started, shuffle buffer filled
                    wall, cpu, samples = time.perf_counter(), time.process_time(), 0
                    while time.perf_counter() - wall < seconds:
                        stream.next_batch()
                        samples += batch_size
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                row = rows.setdefault(
                    key,
                    {"decoders": workers, "frozen_heap": frozen, "samples_per_s": 0.0,
                     "cpu_us_per_sample": math.inf},
                )  # fmt: skip
                row["samples_per_s"] = max(row["samples_per_s"], samples / wall)
                row["cpu_us_per_sample"] = min(row["cpu_us_per_sample"], cpu / samples * 1e6)
    for row in rows.values():
        row["ceiling_samples_per_s"] = 1e6 / row["cpu_us_per_sample"]
    return rows


CASES = {
    # method: (preset, domain, frame size or None, overrides)
    "simgan": (
        "small",
        "gaze",
        None,
        {"pretrain_refiner_steps": 5, "pretrain_discriminator_steps": 5},
    ),
    "sggan": ("small", "scene", (64, 128), {}),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations: a smoke run")
    parser.add_argument("--methods", default="simgan", help=f"comma-separated from {list(CASES)}")
    parser.add_argument("--steps", type=int, default=80, help="adversarial iterations per case")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    steps, log_every, count = (6, 2, 64) if args.quick else (args.steps, 10, 2000)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="train-speed-data-") as tmp:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            preset, domain, size, overrides = CASES[method]
            urls = make_shards(
                Path(tmp) / method, domain, count if domain == "gaze" else count // 4, size=size
            )
            runs = {}
            for workers in (0, 2):
                runs[f"decode_workers_{workers}"] = measure(
                    method,
                    preset,
                    urls,
                    device="cpu",
                    steps=steps,
                    log_every=log_every,
                    decode_workers=workers,
                    **overrides,
                )
                r = runs[f"decode_workers_{workers}"]
                print(
                    f"{method} decode_workers={workers}: {r['images_per_s']:.0f} images/s, "
                    f"waiting for data {r['data_wait_share']:.1%}",
                    flush=True,
                )
            inline, threaded = runs["decode_workers_0"], runs["decode_workers_2"]
            figures[method] = {
                **runs,
                "speedup": threaded["images_per_s"] / inline["images_per_s"],
                "target_data_wait_share": 0.10,
                "met": threaded["data_wait_share"] <= 0.10,
            }
        urls = make_shards(Path(tmp) / "feed", "gaze", 64 if args.quick else 5000)
        figures["feed"] = feed(
            urls, batch_size=8 if args.quick else 512, seconds=0.2 if args.quick else 5.0,
            rounds=1 if args.quick else 3,
        )  # fmt: skip
        for key, row in figures["feed"].items():
            print(
                f"feed {key}: {row['samples_per_s']:.0f} samples/s, "
                f"{row['cpu_us_per_sample']:.0f} µs CPU per sample on the loop's process",
                flush=True,
            )
    settings = {
        "cases": {
            m: dict(zip(("preset", "domain", "size", "overrides"), CASES[m], strict=True))
            for m in figures
            if m in CASES
        },
        "feed": "ImageStream alone on 5,000 procedural eyes, batch 512, shuffle buffer 5,000; "
        "three interleaved rounds of 5 s per case, each case's least CPU and best rate",
        "steps": steps,
        "log_every": log_every,
        "samples_per_pool": count,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
        "measure": "means over the logged intervals of the adversarial phase after the first",
    }
    common.write_result(NAME, figures, settings, results=args.out)
    return figures


if __name__ == "__main__":
    main()
