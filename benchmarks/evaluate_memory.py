"""Peak host memory of ``refinery evaluate scene`` against the number of frames.

Issue 16's target: the peak should not depend on the number of frames (1k against 4k within
10%). ``evaluate`` decodes its sets into a scratch directory and reads them back a batch at a
time (``train.evaluation.rows``), so the peak is set by batches, not sets. For each size, procedural
street frames (64x128) are rendered as synthetic,
real train and real test shards, the synthetic shards stand in for the refined ones (the same
keys; what is measured is memory, not refinement), and ``python -m refinery evaluate scene``
runs in a process of its own with one seed and one epoch. The figure is the peak resident
memory the report states (``memory.peak_host_rss_mib``, from ``getrusage``).

    python -m benchmarks.evaluate_memory [--quick] [--sizes 1000 4000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

NAME = "evaluate_memory"
SIZE = (64, 128)


def measure(
    root: Path, frames: int, *, device: str = "cpu", size: tuple[int, int] = SIZE
) -> dict[str, Any]:
    """``refinery evaluate scene`` in a process of its own on ``frames`` frames per set of
    ``size``: its peak memory (host and, on CUDA, device) and seconds."""

    def shards(variant: str, count: int, seed: int) -> list[str]:
        return common.procedural_shards(root, "scene", variant, count, seed=seed, size=size)

    synthetic = shards("synthetic", frames, 1)
    real_train = shards("real", frames, 2)
    real_test = shards("real", max(frames // 4, 8), 3)
    out = root / "report"
    command = [
        sys.executable, "-m", "refinery", "evaluate", "scene",
        "--synthetic", *synthetic, "--refined", *synthetic, "--real-train", *real_train,
        "--real-test", *real_test, "--out", str(out), "--seeds", "0", "--epochs", "1",
        "--device", device,
    ]  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"evaluate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    return {
        "frames_per_set": frames,
        "real_test_frames": report["counts"]["real_test"],
        "peak_host_rss_mib": report["memory"]["peak_host_rss_mib"],
        "peak_device_mib": report["memory"]["peak_device_mib"],
        "size": list(size),
        "device": device,
        "evaluate_seconds": report["seconds"],
        "seconds": time.perf_counter() - began,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 4000])
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    sizes = [16, 64] if args.quick else args.sizes
    runs = {}
    for frames in sizes:
        with tempfile.TemporaryDirectory(prefix="evaluate-memory-") as tmp:
            runs[str(frames)] = measure(Path(tmp), frames)
        print(f"{frames} frames per set: peak {runs[str(frames)]['peak_host_rss_mib']:.0f} MiB")
    small, large = (runs[str(s)]["peak_host_rss_mib"] for s in sizes)
    figures = {
        "runs": runs,
        "growth": large / small - 1,
        "target_growth": 0.10,
        "met": large / small - 1 <= 0.10,
    }
    settings = {
        "domain": "scene",
        "size": list(SIZE),
        "sizes": sizes,
        "task": "fcn8s-small, 1 epoch, seed 0",
        "refined": "the synthetic shards themselves (memory, not refinement, is measured)",
        "quick": args.quick,
    }
    common.write_result(NAME, figures, settings, results=args.out)
    return figures


if __name__ == "__main__":
    main()
