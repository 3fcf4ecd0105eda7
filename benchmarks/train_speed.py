"""Training speed through the real loop, and the share of it spent waiting for data.

Unlike ``simgan_speed`` (the trainer's compute ceiling on batches held in memory), this drives
``train.<method>.train``, the loop every user runs: batches are read from shards, decoded,
validated and scaled by the method's streams, and the loop logs, per interval of
``log_every`` iterations, ``speed/images_per_s`` and ``time/data_wait_share`` (the seconds the
streams kept it waiting, over the interval's wall time). The figures are the means over the
intervals of the adversarial phase after the first (warm-up).

Cases, side by side in one run (this machine is noisy: compare the ratio):

- SimGAN ``--preset small`` on 35x55 procedural eyes (batch 32), decoding as it reads, on the
  loop's own thread (``decode_workers: 0, cache: false``) and in two processes
  (``decode_workers: 2, cache: false``), and from the decoded cache (``cache: true``, the
  recipes' default: ``train.cache``; its size on disk and build time are recorded);
- ``--methods simgan,sggan`` adds SG-GAN ``--preset small`` on 64x128 street frames;
- the loader alone (``feed``): ``ImageStream`` batches of 512 eyes as the loop takes them,
  decoded as read (0 or 2 processes, heap as it is or frozen) and from the cache, as float
  batches in [-1, 1] (``next_batch``, what a CPU run trains on) and as stored pixels
  (``next_stored``, what crosses to a GPU, where they are scaled): images/s and the CPU µs per
  sample of the loop's process.

Targets: issue 16, waiting for data ≤ 10% of step time (small gaze preset, CPU); issue 50, from
the cache the loader alone delivers ≥ 20x the small preset's training images/s on one core,
at ≤ 5 µs of CPU per sample, and the loop waits ≤ 5% of its time.
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
        "cache": config.cache,
        "amp": bool(config.amp and device.startswith("cuda")),
    }


def feed(
    urls: dict[str, list[str]],
    *,
    batch_size: int = 512,
    seconds: float = 5.0,
    rounds: int = 3,
    decoders: tuple[int, ...] = (0, 2),
    cached: bool = True,
) -> dict[str, Any]:
    """The gaze data feed alone, as the loop drives it: ``ImageStream`` batches of
    ``batch_size`` (SimGAN's paper preset) from the synthetic shards, with decoding on this
    process's thread or in ``decoders`` worker processes, and with the heap as it is or frozen
    as ``train.loop`` freezes it. Per case: samples/s here, and the CPU seconds this process
    (all its threads, not the workers) spends per sample, whose inverse is the most it can feed
    where every worker has a core of its own, as on a GPU server. Cases interleaved over
    ``rounds``; each keeps its least CPU per sample and its best rate. With ``cached`` also
    the stream from the decoded cache (built before the rounds; the heap frozen), as float
    batches (``cache``) and as stored pixels (``cache_stored``)."""
    from train.data import ImageStream
    from train.loop import frozen_heap

    cases = [(frozen, workers, False, False) for frozen in (False, True) for workers in decoders]
    if cached:
        cases += [(True, 0, True, False), (True, 0, True, True)]
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for frozen, workers, cache, stored in cases:
            if cache:
                key = "cache_stored" if stored else "cache"
            else:
                key = f"{'frozen' if frozen else 'default'}_heap_decoders_{workers}"
            with frozen_heap() if frozen else contextlib.nullcontext():
                stream = ImageStream(
                    urls["synthetic"], domain="gaze", batch_size=batch_size, seed=1,
                    decoders=workers, shuffle_buffer=5000, cache=cache,
                )  # fmt: skip
                take = stream.next_stored if stored else stream.next_batch
                take()  # workers started, shuffle buffer filled
                wall, cpu, samples = time.perf_counter(), time.process_time(), 0
                while time.perf_counter() - wall < seconds:
                    take()
                    samples += batch_size
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            row = rows.setdefault(
                key,
                {"decoders": workers, "frozen_heap": frozen, "cache": cache, "stored": stored,
                 "samples_per_s": 0.0, "cpu_us_per_sample": math.inf},
            )  # fmt: skip
            row["samples_per_s"] = max(row["samples_per_s"], samples / wall)
            row["cpu_us_per_sample"] = min(row["cpu_us_per_sample"], cpu / samples * 1e6)
    for row in rows.values():
        row["ceiling_samples_per_s"] = 1e6 / row["cpu_us_per_sample"]
    return rows


def _cache_record(urls: dict[str, list[str]], domain: str) -> dict[str, Any]:
    """Size on disk and build time of the caches the cached run built (reopened, not rebuilt)."""
    from train.cache import open_cache

    out = {}
    for variant, labels in (("synthetic", True), ("real", False)):
        meta = open_cache(urls[variant], domain=domain, labels=labels).meta
        out[variant] = {"samples": meta["samples"], "bytes": meta["bytes"],
                        "build_seconds": meta["build_seconds"]}  # fmt: skip
    return out


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
    rounds = 1 if args.quick else 2
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="train-speed-data-") as tmp:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            preset, domain, size, overrides = CASES[method]
            urls = make_shards(
                Path(tmp) / method, domain, count if domain == "gaze" else count // 4, size=size
            )
            runs = {}
            for name, workers, cache in (
                ("decode_workers_0", 0, False), ("decode_workers_2", 2, False), ("cache", 2, True)
            ):  # fmt: skip
                runs[name] = measure(
                    method,
                    preset,
                    urls,
                    device="cpu",
                    steps=steps,
                    log_every=log_every,
                    decode_workers=workers,
                    cache=cache,
                    **overrides,
                )
                r = runs[name]
                print(
                    f"{method} {name}: {r['images_per_s']:.0f} images/s, "
                    f"waiting for data {r['data_wait_share']:.1%}",
                    flush=True,
                )
            built = _cache_record(urls, CASES[method][1])
            inline, threaded, cached = (
                runs["decode_workers_0"], runs["decode_workers_2"], runs["cache"]
            )  # fmt: skip
            figures[method] = {
                **runs,
                "cache_build": built,
                "speedup": threaded["images_per_s"] / inline["images_per_s"],
                "cache_speedup": cached["images_per_s"] / threaded["images_per_s"],
                "target_data_wait_share": 0.10,
                "met": threaded["data_wait_share"] <= 0.10,
                "target_cache_data_wait_share": 0.05,
                "cache_met": cached["data_wait_share"] <= 0.05,
            }
        urls = make_shards(Path(tmp) / "feed", "gaze", 64 if args.quick else 5000)
        rows = feed(
            urls, batch_size=8 if args.quick else 512, seconds=0.2 if args.quick else 5.0,
            rounds=rounds,
        )  # fmt: skip
        figures["feed"] = {k: v for k, v in rows.items() if not v["cache"]}
        figures["feed_cache"] = {k: v for k, v in rows.items() if v["cache"]}
        for key, row in rows.items():
            print(
                f"feed {key}: {row['samples_per_s']:.0f} samples/s, "
                f"{row['cpu_us_per_sample']:.1f} µs CPU per sample on the loop's process",
                flush=True,
            )
        if "simgan" in figures:
            train_rate = figures["simgan"]["cache"]["images_per_s"]
            loader = figures["feed_cache"]["cache"]
            stored = figures["feed_cache"]["cache_stored"]
            figures["cache_targets"] = {
                "loader_over_training": loader["samples_per_s"] / train_rate,
                "loader_over_training_target": 20.0,
                "cpu_us_per_sample": loader["cpu_us_per_sample"],
                "stored_cpu_us_per_sample": stored["cpu_us_per_sample"],
                "cpu_us_per_sample_target": 5.0,
                "data_wait_share": figures["simgan"]["cache"]["data_wait_share"],
                "data_wait_share_target": 0.05,
            }
            print(f"cache targets: {figures['cache_targets']}", flush=True)
    settings = {
        "cases": {
            m: dict(zip(("preset", "domain", "size", "overrides"), CASES[m], strict=True))
            for m in figures
            if m in CASES
        },
        "feed": "ImageStream alone on 5,000 procedural eyes, batch 512, shuffle buffer 5,000; "
        f"{rounds} interleaved rounds of 5 s per case, each case's least CPU and best rate",
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
