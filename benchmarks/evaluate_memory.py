"""Peak host memory of ``refinery evaluate scene`` against the number of frames.

Issue 16's target: the peak should not depend on the number of frames (1k against 4k within
10%). ``evaluate`` decodes its sets into a scratch directory and reads them back a batch at a
time (``train.evaluation.rows``), so the peak is set by batches, not sets. Procedural street
frames (64x128) are rendered once, two processes side by side, as synthetic and real train
shards of the largest size (shards of 500) and one real test set; each size reads the first
shards of the two sets, the synthetic ones standing in for the refined ones too (the same keys;
what is measured is memory, not refinement), and ``python -m refinery evaluate scene`` runs in a
process of its own with one seed and one epoch. The figure is the peak resident memory the
report states (``memory.peak_host_rss_mib``, from ``getrusage``).

The real test set is the same for every size (a quarter of the smallest, 250 frames): it goes
through the same row store as the three sets that grow, and realism's two-sample classifiers
(10 epochs on it, for synthetic and refined) cost in proportion to it; grown with the sets it
made the 4k run's realism four minutes of the benchmark's thirteen.

    python -m benchmarks.evaluate_memory [--quick] [--sizes 1000 4000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import common

NAME = "evaluate_memory"
SIZE = (64, 128)


def shard_size(sizes: list[int]) -> int:
    """The largest shard of at most 500 frames that every size is a whole number of."""
    common_size = math.gcd(*sizes)
    return next(d for d in range(min(500, common_size), 0, -1) if common_size % d == 0)


def render(
    root: Path, sizes: list[int], real_test: int, *, size: tuple[int, int] = SIZE
) -> dict[str, list[str]]:
    """The sets every size reads from: synthetic and real train shards of the largest size
    (shards of ``shard_size(sizes)``) and a real test set of ``real_test``, each rendered in a
    process of its own, two side by side."""
    frames, shard = max(sizes), shard_size(sizes)
    sets = {
        "synthetic": ("synthetic", frames, 1),
        "real_train": ("real", frames, 2),
        "real_test": ("real", real_test, 3),
    }
    options = {"size": size, "shard_size": shard}
    # spawned: the caller may hold CUDA and threads (benchmarks.gpu), which fork does not carry
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            name: pool.submit(
                common.procedural_shards, root, "scene", variant, count, seed=seed, **options
            )
            for name, (variant, count, seed) in sets.items()
        }
        return {name: future.result() for name, future in futures.items()}


def measure(
    root: Path,
    sets: dict[str, list[str]],
    frames: int,
    shard: int,
    *,
    device: str = "cpu",
    size: tuple[int, int] = SIZE,
) -> dict[str, Any]:
    """``refinery evaluate scene`` in a process of its own on the first ``frames`` frames (shards
    of ``shard``) of ``sets``' synthetic and real train shards and on its whole real test set:
    its peak memory (host and, on CUDA, device) and seconds."""
    shards = frames // shard
    synthetic, real_train = (sets[name][:shards] for name in ("synthetic", "real_train"))
    out = root / f"report-{frames}"
    command = [
        sys.executable, "-m", "refinery", "evaluate", "scene",
        "--synthetic", *synthetic, "--refined", *synthetic, "--real-train", *real_train,
        "--real-test", *sets["real_test"], "--out", str(out), "--seeds", "0", "--epochs", "1",
        "--device", device,
    ]  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"evaluate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    return {
        "frames_per_set": report["counts"]["synthetic"],
        "real_test_frames": report["counts"]["real_test"],
        "peak_host_rss_mib": report["memory"]["peak_host_rss_mib"],
        "peak_device_mib": report["memory"]["peak_device_mib"],
        "size": list(size),
        "device": device,
        "evaluate_seconds": report["seconds"],
        "seconds": time.perf_counter() - began,
    }


def measure_sizes(
    root: Path, sizes: list[int], *, device: str = "cpu", size: tuple[int, int] = SIZE
) -> dict[str, Any]:
    """``measure`` at each of ``sizes`` frames per set, all read from one ``render`` under
    ``root`` with a real test set of a quarter of the smallest size (at least 8)."""
    real_test = max(min(sizes) // 4, 8)
    began = time.perf_counter()
    sets = render(root, sizes, real_test, size=size)
    render_seconds = time.perf_counter() - began
    runs = {}
    for frames in sizes:
        runs[str(frames)] = measure(root, sets, frames, shard_size(sizes), device=device, size=size)
        print(f"{frames} frames per set: peak {runs[str(frames)]['peak_host_rss_mib']:.0f} MiB")
    return {"runs": runs, "render_seconds": render_seconds, "real_test_frames": real_test}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 4000])
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    sizes = [16, 64] if args.quick else args.sizes
    with tempfile.TemporaryDirectory(prefix="evaluate-memory-") as tmp:
        measured = measure_sizes(Path(tmp), sizes)
    runs = measured["runs"]
    small, large = (runs[str(s)]["peak_host_rss_mib"] for s in sizes)
    figures = {
        "runs": runs,
        "growth": large / small - 1,
        "target_growth": 0.10,
        "met": large / small - 1 <= 0.10,
        "render_seconds": measured["render_seconds"],
    }
    settings = {
        "domain": "scene",
        "size": list(SIZE),
        "sizes": sizes,
        "real_test_frames": measured["real_test_frames"],
        "task": "fcn8s-small, 1 epoch, seed 0",
        "refined": "the synthetic shards themselves (memory, not refinement, is measured)",
        "quick": args.quick,
    }
    common.write_result(NAME, figures, settings, results=args.out)
    return figures


if __name__ == "__main__":
    main()
