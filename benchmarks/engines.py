"""Engine throughput: ONNX Runtime against torch eager on the same exported refiners.

Each refiner is exported once (random weights: speed does not depend on their values), both
backends are loaded side by side, and timing rounds alternate between them so drift on a
noisy machine hits both alike. Reported: median images/s over rounds per backend, the ratio
(the issue's target: ONNX Runtime >= 1.5x torch eager for the gaze refiner at batch 64 on
CPU), latency percentiles, and on a CUDA machine torch FP16 against FP32 and ONNX Runtime's
CUDA provider when it is installed.

    python -m benchmarks.engines [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import engines
from benchmarks.common import RESULTS, write_result
from engines.export import export_module
from engines.spec import PixelIO, Profile
from refinery.registry import build_network, network_info


def export_random(name: str, out: Path) -> Path:
    """A gaze engine of the registered refiner ``name`` with random weights (speed does not
    depend on them), profiled around the network's design size."""
    info = network_info(name)
    torch.manual_seed(0)
    pixels = PixelIO(image_component="png", pixel_kind="gray8", channels=1, low=0.0, high=255.0)
    export_module(
        build_network(name, channels=1),
        out,
        network=name,
        kwargs={"channels": 1},
        method="benchmark",
        domain="gaze",
        pixels=pixels,
        profile=Profile.around(*info.input_size),
        source={"run": None, "checkpoint": None, "note": "random weights"},
    )
    return out


def _rounds(contenders: dict[str, engines.Engine], x: np.ndarray, rounds: int, calls: int):
    for engine in contenders.values():  # warm-up
        for _ in range(2):
            engine(x)
    per_call: dict[str, list[float]] = {k: [] for k in contenders}
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for key, engine in contenders.items():
            start = time.perf_counter()
            for _ in range(calls):
                t0 = time.perf_counter()
                engine(x)
                per_call[key].append(time.perf_counter() - t0)
            rates[key].append(len(x) * calls / (time.perf_counter() - start))
    return {
        key: {
            "images_per_s": float(np.median(rates[key])),
            "images_per_s_rounds": [round(r, 1) for r in rates[key]],
            "latency_ms_p50": float(np.percentile(per_call[key], 50) * 1000),
            "latency_ms_p90": float(np.percentile(per_call[key], 90) * 1000),
            "latency_ms_p99": float(np.percentile(per_call[key], 99) * 1000),
        }
        for key in contenders
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one refiner, few rounds (tests)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="timed calls per round")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    names = (
        ["simgan-refiner-small"] if args.quick else ["simgan-refiner-gaze", "simgan-refiner-small"]
    )
    rounds, calls = (2, 2) if args.quick else (args.rounds, args.calls)
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            directory = export_random(name, Path(tmp) / name)
            height, width = network_info(name).input_size
            x = np.random.default_rng(0).uniform(-1, 1, (args.batch, 1, height, width))
            x = x.astype(np.float32)
            contenders = {
                "torch_eager_cpu": engines.load(directory, backend="torch", device="cpu"),
                "onnxruntime_cpu": engines.load(directory, backend="onnxruntime", device="cpu"),
            }
            result = _rounds(contenders, x, rounds, calls)
            result["onnxruntime_vs_torch"] = (
                result["onnxruntime_cpu"]["images_per_s"]
                / result["torch_eager_cpu"]["images_per_s"]
            )
            if torch.cuda.is_available():
                gpu = {
                    "torch_fp32_cuda": engines.load(directory, backend="torch", device="cuda"),
                    "torch_fp16_cuda": engines.load(
                        directory, backend="torch", device="cuda", precision="fp16"
                    ),
                }
                try:
                    gpu["onnxruntime_cuda"] = engines.load(directory, device="cuda")
                except engines.EngineError as exc:
                    result["onnxruntime_cuda_unavailable"] = str(exc)
                result.update(_rounds(gpu, x, rounds, calls))
                result["torch_fp16_vs_fp32"] = (
                    result["torch_fp16_cuda"]["images_per_s"]
                    / result["torch_fp32_cuda"]["images_per_s"]
                )
            figures[name] = result
            print(
                f"{name}: "
                + ", ".join(
                    f"{k} {v['images_per_s']:.0f} img/s"
                    for k, v in result.items()
                    if isinstance(v, dict)
                )
            )
    settings = {
        "batch": args.batch,
        "rounds": rounds,
        "calls_per_round": calls,
        "input": "random uniform [-1, 1], each refiner's design size (35x55 for gaze/small)",
        "weights": "random (speed does not depend on them)",
        "threads": "library defaults (torch intra-op = ONNX Runtime intra-op = all cores)",
        "torch_threads": torch.get_num_threads(),
        "target": "onnxruntime_vs_torch >= 1.5 for simgan-refiner-gaze at batch 64 on CPU",
    }
    write_result("engines", figures, settings, results=Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
