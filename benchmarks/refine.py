"""The refine job against the engine alone, against a naive loop, and its memory over size.

Four measurements on procedural gaze shards (35x55 PNG + JSON), ONNX Runtime on this CPU:

1. throughput, side by side in one process, alternating rounds: the engine alone (pre-decoded
   pixels in, refined pixels out, batch 64) against the whole job (``deploy.run``: tar read,
   decode pool, engine, encode pool, tar write, stats) on the same samples; target: the job
   at >= 90% of the engine alone;
2. the job against a naive single-process loop (tarfile -> cv2.imdecode -> torch eager on one
   image -> cv2.imencode -> tarfile, the way a first script would do it); target: >= 3x;
3. peak resident memory of a job process over 10k and over 100k samples (a fresh process each,
   the small refiner so 100k samples take minutes, not an hour); target: within 10%;
4. the stages alone: the same job with a pass-through engine (returns its input), i.e. what
   reading, decoding, encoding and writing sustain on this machine, the ceiling the job meets
   once its engine is faster (a GPU).

    python -m benchmarks.refine [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

import engines
from benchmarks.common import RESULTS, write_result
from benchmarks.engines import export_random
from deploy import RefineConfig, run
from deploy.stages import machine_threads
from engines.base import Engine
from refinery import sim
from refinery.registry import build_network
from refinery.samples import encode_sample
from refinery.shards import read, write_shards

ROOT = Path(__file__).resolve().parents[1]


def _shards(out: Path, n: int, shard_size: int = 1000) -> list[str]:
    samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", n, seed=7))
    return write_shards(samples, str(out / "gaze-%06d.tar"), shard_size=shard_size)


class PassThrough(Engine):
    """Not a refiner: its output is its input, so a job with it measures everything but the
    engine (read, decode, scaling, encode, write)."""

    backend = "pass-through"

    def _run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _engine_only(engine, pixels: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        engine.refine(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - start)


def _job(engine_dir: Path, urls: list[str], out: Path, batch: int, engine=None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    config = RefineConfig(engine=str(engine_dir), output=str(out), batch=batch)
    summary = run(config, urls, engine=engine)
    assert summary.rejected == 0
    return summary.read / summary.seconds


def _naive(engine_dir: Path, url: str, out: Path, limit: int) -> float:
    """The loop a first script writes: one image at a time, torch eager, tarfile."""
    from safetensors.torch import load_file

    module = build_network("simgan-refiner-gaze", channels=1).eval()
    module.load_state_dict(load_file(str(engine_dir / "model.safetensors")))
    start = time.perf_counter()
    done = 0
    with tarfile.open(url) as source, tarfile.open(out, "w") as target:
        for member in source:
            data = source.extractfile(member).read()
            if member.name.endswith(".png"):
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
                x = torch.from_numpy(image).float().div(127.5).sub(1)[None, None]
                with torch.no_grad():
                    y = module(x)[0, 0].numpy()
                pixels = np.rint((np.clip(y, -1, 1) + 1) * 127.5).astype(np.uint8)
                data = cv2.imencode(".png", pixels)[1].tobytes()
                done += 1
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            target.addfile(info, io.BytesIO(data))
            if done >= limit:
                break
    return done / (time.perf_counter() - start)


def _peak_rss_child(engine_dir: Path, urls: list[str], out: Path) -> dict:
    code = (
        "import json, sys, time\n"
        "from deploy import RefineConfig, run\n"
        "urls = json.loads(sys.argv[3])\n"
        "summary = run(RefineConfig(engine=sys.argv[1], output=sys.argv[2]), urls)\n"
        "status = open('/proc/self/status').read().splitlines()\n"
        "peak = next(int(l.split()[1]) for l in status if l.startswith('VmHWM:'))\n"
        "print(json.dumps({'peak_rss_mib': peak / 1024, 'samples': summary.read,"
        " 'samples_per_s': summary.read / summary.seconds}))\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-c", code, str(engine_dir), str(out), json.dumps(urls)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4000, help="throughput samples")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--naive", type=int, default=1000, help="samples for the naive loop")
    parser.add_argument("--memory", default="10000,100000", help="sample counts for memory")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.rounds, args.naive, args.memory = 256, 1, 64, "300,600"
    sizes = [int(n) for n in args.memory.split(",")]
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gaze = export_random("simgan-refiner-gaze", root / "engine-gaze")
        small = export_random("simgan-refiner-small", root / "engine-small")
        urls = _shards(root / "in", args.samples, shard_size=min(1000, args.samples))
        pixels = np.stack([s["png"] for s in read(urls, "gaze")])
        engine = engines.load(gaze, backend="onnxruntime")
        alone, job = [], []
        for _ in range(args.rounds):
            alone.append(_engine_only(engine, pixels, args.batch))
            job.append(_job(gaze, urls, root / "out", args.batch))
        naive = _naive(gaze, urls[0], root / "naive.tar", args.naive)
        through = PassThrough(engines.read_spec(gaze), gaze)
        stages = [_job(gaze, urls, root / "out", args.batch, through) for _ in range(args.rounds)]
        figures["throughput"] = {
            "engine_only_samples_per_s": float(np.median(alone)),
            "job_samples_per_s": float(np.median(job)),
            "job_vs_engine_only": float(np.median(job) / np.median(alone)),
            "naive_loop_samples_per_s": naive,
            "job_vs_naive": float(np.median(job) / naive),
            "rounds": {"engine_only": alone, "job": job, "stages": stages},
        }
        figures["stages"] = {
            "samples_per_s": float(np.median(stages)),
            "decode_workers": machine_threads(),
            "encode_workers": machine_threads(),
        }
        memory = {}
        for n in sizes:
            big = _shards(root / f"mem{n}", n)
            memory[str(n)] = _peak_rss_child(small, big, root / f"memout{n}")
            shutil.rmtree(root / f"mem{n}")
            shutil.rmtree(root / f"memout{n}")
        first, last = memory[str(sizes[0])], memory[str(sizes[-1])]
        memory["growth"] = last["peak_rss_mib"] / first["peak_rss_mib"] - 1
        figures["memory"] = memory
    t = figures["throughput"]
    print(
        f"engine only {t['engine_only_samples_per_s']:.0f}/s, job {t['job_samples_per_s']:.0f}/s "
        f"({t['job_vs_engine_only']:.0%}), naive {t['naive_loop_samples_per_s']:.0f}/s "
        f"(job {t['job_vs_naive']:.1f}x); stages alone {figures['stages']['samples_per_s']:.0f}/s; "
        f"peak RSS growth {sizes[0]} -> {sizes[-1]}: "
        f"{figures['memory']['growth']:+.1%}"
    )
    settings = {
        "engine": "simgan-refiner-gaze (64 maps, 4 blocks), random weights, ONNX Runtime CPU",
        "batch": args.batch,
        "throughput_samples": args.samples,
        "rounds": args.rounds,
        "naive": "tarfile -> cv2.imdecode -> torch eager, batch 1 -> cv2.imencode -> tarfile",
        "naive_samples": args.naive,
        "memory_engine": "simgan-refiner-small, ONNX Runtime CPU, fresh process per size",
        "memory_sizes": sizes,
        "stages": "the job with a pass-through engine (output = input): the stages alone",
        "targets": "job >= 0.9 x engine only; job >= 3 x naive; memory growth <= 10%",
    }
    write_result("refine", figures, settings, results=Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
