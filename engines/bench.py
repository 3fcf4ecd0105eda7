"""Throughput, latency percentiles and peak memory of one engine at one batch shape.

Warm up, then time each call end to end (host array in, host array out: what a job sees; on
CUDA the copy back is the sync point). Peak host memory is the process's resident-set high
water mark over loading and running the engine (Linux resets it through
``/proc/self/clear_refs``); on CUDA, the torch allocator's peak is added (TensorRT's and ONNX
Runtime's own device pools are not visible to it, which the record says).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import numpy as np


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def bench_engine(
    engine_dir: str | Path,
    *,
    backend: str,
    batch: int,
    size: tuple[int, int],
    iterations: int = 30,
    warmup: int = 5,
    **options: Any,
) -> dict[str, Any]:
    """Figures for ``engine_dir`` on ``backend``: images/s, latency ms (p50/p90/p99), memory."""
    import engines

    reset = _reset_peak_rss()
    before = _rss_mib("VmRSS")
    cuda = str(options.get("device", "")).startswith("cuda") or backend == "tensorrt"
    if cuda:
        import torch

        if torch.cuda.is_available():  # otherwise loading below raises a clear EngineError
            torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    engine = engines.load(engine_dir, backend=backend, **options)
    load_s = time.perf_counter() - start
    height, width = size
    engine.spec.check_fits(size=size, batch=None)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, engine.spec.io.channels, height, width))
    x = x.astype(np.float32)
    for _ in range(warmup):
        engine(x)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        y = engine(x)
        times.append(time.perf_counter() - t0)
    finite = bool(np.isfinite(y).all())
    ms = np.array(times) * 1000
    peak = _rss_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures: dict[str, Any] = {
        "images_per_s": batch * iterations / float(np.sum(times)),
        "latency_ms": {
            p: float(np.percentile(ms, q)) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))
        },
        "load_s": load_s,
        "peak_rss_mib": peak,
        "rss_before_load_mib": before,
        "outputs_finite": finite,
    }
    if cuda:
        import torch

        figures["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        figures["cuda_memory_note"] = "torch allocator only; backend-internal pools not counted"
    settings = {
        "engine": engine.spec.engine_id,
        "network": engine.spec.name,
        "backend": backend,
        "options": {k: str(v) for k, v in options.items()},
        "batch": batch,
        "size": [height, width],
        "iterations": iterations,
        "warmup": warmup,
        "precision": getattr(engine, "precision", "fp32"),
    }
    return {"figures": figures, "settings": settings}
