"""The refine job's CPU side against the codec's floor, over cores, with an engine, over size.

Measured side by side in one run, in alternating rounds, on procedural gaze shards (35x55 PNG
+ JSON labels, 1,000 per shard):

1. ``codec_floor``: the same frames decoded and encoded by OpenCV in a tight loop, one thread
   (PNG level 3, the encoder the job used before), CPU us per frame; and decoded by OpenCV,
   encoded by the job's own encoder (``refinery.png``: libdeflate);
2. ``identity``: the whole job with ``--engine identity`` (tar read, label check, decode,
   encode, tar write, stats), its CPU us per frame (this process and its workers) and the ratio
   to the OpenCV floor (target <= 1.5), its frames/s with one worker and with every core
   (scaling), and CPU seconds over wall seconds with every core (target >= 1.6 on 2 cores);
3. ``throughput``: the job with a real engine (the paper gaze refiner, random weights, ONNX
   Runtime on this CPU) against that engine alone on the decoded pixels, and against the loop a
   first script writes (tarfile -> cv2 -> torch, one image at a time);
4. ``memory``: peak resident memory of a fresh job process (and of its largest worker) over
   10k and over 100k frames (target: within 10%).

    python -m benchmarks.refine [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
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
from benchmarks.common import RESULTS, copied_shards, gaze_shards, write_result
from benchmarks.engines import export_random
from deploy import RefineConfig, run
from deploy.stages import machine_threads
from deploy.workers import stop_fork_server
from refinery import png
from refinery.registry import build_network
from refinery.shards import read, shard_samples

ROOT = Path(__file__).resolve().parents[1]
UNIQUE = 10_000  # eyes rendered; larger inputs are copies of their shards (common.copied_shards)


def _cpu_seconds() -> float:
    """CPU seconds of this process and of every child it has waited for (the job's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def codec_floor(blobs: list[bytes]) -> dict[str, float]:
    """CPU us per frame of OpenCV decoding and encoding the frames in a tight loop, one thread;
    and of OpenCV decoding with the job's own encoder."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        start = time.process_time()
        images = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED) for b in blobs]
        decode = time.process_time() - start
        start = time.process_time()
        for image in images:
            cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        opencv = time.process_time() - start
        start = time.process_time()
        for image in images:
            png.encode_png(image, "gray8")
        own = time.process_time() - start
    finally:
        cv2.setNumThreads(threads)
    per = 1e6 / len(blobs)
    return {
        "decode_us": decode * per,
        "encode_opencv_us": opencv * per,
        "encode_libdeflate_us": own * per,
        "opencv_us_per_frame": (decode + opencv) * per,
        "libdeflate_us_per_frame": (decode + own) * per,
    }


def identity_job(urls: list[str], out: Path, *, workers: int | None) -> dict[str, float]:
    """The identity job in this process and its workers: frames/s, CPU us per frame, busy."""
    shutil.rmtree(out, ignore_errors=True)
    config = RefineConfig(engine="identity", domain="gaze", output=str(out), workers=workers)
    stop_fork_server()  # this job starts its own, and pays for it
    cpu, start = _cpu_seconds(), time.perf_counter()
    summary = run(config, urls)
    wall = time.perf_counter() - start
    stop_fork_server()  # reaped: its CPU and its workers' now count as this process's children
    cpu = _cpu_seconds() - cpu
    if summary.rejected or summary.written != summary.read:
        raise RuntimeError(f"identity job rejected {summary.rejected} of {summary.read}")
    return {
        "frames": summary.read,
        "frames_per_s": summary.read / wall,
        "cpu_us_per_frame": cpu / summary.read * 1e6,
        "cpu_busy": cpu / wall,
    }


def _engine_only(engine, pixels: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        engine.refine(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - start)


def _job(engine_dir: Path, urls: list[str], out: Path, batch: int, engine=None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    config = RefineConfig(engine=str(engine_dir), output=str(out), batch=batch)
    summary = run(config, urls, engine=engine)
    if summary.rejected:
        raise RuntimeError(f"job rejected {summary.rejected} of {summary.read}")
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


def _peak_rss_child(urls: list[str], out: Path) -> dict:
    """Peak resident memory of a fresh identity job process and of its largest worker."""
    code = (
        "import json, resource, sys\n"
        "from deploy import RefineConfig, run\n"
        "urls = json.loads(sys.argv[2])\n"
        "from deploy.workers import stop_fork_server\n"
        "summary = run(RefineConfig(engine='identity', domain='gaze', output=sys.argv[1]), urls)\n"
        "stop_fork_server()  # reaped, with the workers it reaped: RUSAGE_CHILDREN holds them\n"
        "status = open('/proc/self/status').read().splitlines()\n"
        "peak = next(int(l.split()[1]) for l in status if l.startswith('VmHWM:'))\n"
        "worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'peak_rss_mib': peak / 1024, 'worker_peak_rss_mib': worker / 1024,"
        " 'samples': summary.read, 'samples_per_s': summary.read / summary.seconds}))\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-c", code, str(out), json.dumps(urls)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_cpu_side(urls: list[str], root: Path, rounds: int) -> dict:
    """Codec floor and the identity job (one worker, every core), alternating rounds."""
    blobs = [s["png"] for s in shard_samples(urls[: max(1, len(urls) // 4)])]
    floors, single, every = [], [], []
    for _ in range(rounds):
        floors.append(codec_floor(blobs))
        single.append(identity_job(urls, root / "out-identity", workers=1))
        every.append(identity_job(urls, root / "out-identity", workers=None))

    def median(runs: list[dict], key: str) -> float:
        return float(np.median([r[key] for r in runs]))

    floor = {key: median(floors, key) for key in floors[0]}
    cpu = median(every, "cpu_us_per_frame")
    return {
        "codec_floor": floor,
        "identity": {
            "frames": every[0]["frames"],
            "workers": min(machine_threads(), len(urls)),
            "cpu_us_per_frame": cpu,
            "vs_codec_floor": cpu / floor["opencv_us_per_frame"],
            "vs_own_codec": cpu / floor["libdeflate_us_per_frame"],
            "frames_per_s_one_worker": median(single, "frames_per_s"),
            "frames_per_s": median(every, "frames_per_s"),
            "scaling": median(every, "frames_per_s") / median(single, "frames_per_s"),
            "cpu_busy": median(every, "cpu_busy"),
            "rounds": {"one_worker": single, "every_core": every, "floor": floors},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--frames", type=int, default=40000, help="identity job frames")
    parser.add_argument("--samples", type=int, default=2000, help="engine throughput samples")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--naive", type=int, default=500, help="samples for the naive loop")
    parser.add_argument("--memory", default="10000,100000", help="sample counts for memory")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.samples, args.rounds = 2000, 256, 1
        args.naive, args.memory = 64, "300,600"
    sizes = [int(n) for n in args.memory.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shard = min(1000, args.frames // 2)
        made = gaze_shards(root / "made", min(args.frames, UNIQUE), shard_size=shard)
        urls = copied_shards(made, root / "in", args.frames // shard)
        figures = measure_cpu_side(urls, root, args.rounds)

        gaze = export_random("simgan-refiner-gaze", root / "engine-gaze")
        few = gaze_shards(root / "few", args.samples, shard_size=min(1000, args.samples // 2))
        pixels = np.stack([s["png"] for s in read(few, "gaze")])
        engine = engines.load(gaze, backend="onnxruntime")
        alone, job = [], []
        for _ in range(args.rounds):
            alone.append(_engine_only(engine, pixels, args.batch))
            job.append(_job(gaze, few, root / "out", args.batch))
        naive = _naive(gaze, few[0], root / "naive.tar", args.naive)
        figures["throughput"] = {
            "engine_only_samples_per_s": float(np.median(alone)),
            "job_samples_per_s": float(np.median(job)),
            "job_vs_engine_only": float(np.median(job) / np.median(alone)),
            "naive_loop_samples_per_s": naive,
            "job_vs_naive": float(np.median(job) / naive),
            "rounds": {"engine_only": alone, "job": job},
        }
        memory = {}
        memory_shard = min(1000, sizes[0])
        if memory_shard != shard:
            made = gaze_shards(root / "made-memory", min(sizes[0], UNIQUE), shard_size=memory_shard)
        for n in sizes:
            big = copied_shards(made, root / f"mem{n}", n // memory_shard)
            memory[str(n)] = _peak_rss_child(big, root / f"memout{n}")
            shutil.rmtree(root / f"mem{n}")
            shutil.rmtree(root / f"memout{n}")
        first, last = memory[str(sizes[0])], memory[str(sizes[-1])]
        memory["growth"] = last["peak_rss_mib"] / first["peak_rss_mib"] - 1
        figures["memory"] = memory
    i, f, t = figures["identity"], figures["codec_floor"], figures["throughput"]
    print(
        f"codec floor {f['opencv_us_per_frame']:.0f} us/frame (OpenCV), "
        f"{f['libdeflate_us_per_frame']:.0f} (libdeflate encode); identity job "
        f"{i['cpu_us_per_frame']:.0f} us/frame ({i['vs_codec_floor']:.2f}x the floor), "
        f"{i['frames_per_s']:.0f} frames/s on {i['workers']} workers "
        f"({i['scaling']:.2f}x one worker, CPU busy {i['cpu_busy']:.2f}); engine only "
        f"{t['engine_only_samples_per_s']:.0f}/s, job {t['job_samples_per_s']:.0f}/s "
        f"({t['job_vs_engine_only']:.0%}); peak RSS growth {sizes[0]} -> {sizes[-1]}: "
        f"{figures['memory']['growth']:+.1%}"
    )
    settings = {
        "frames": args.frames,
        "shard_size": shard,
        "unique_frames": min(args.frames, UNIQUE),
        "inputs": "procedural eyes (seed 7); beyond the unique ones, copies of their shards",
        "rounds": args.rounds,
        "codec_floor": "cv2.imdecode + cv2.imencode PNG level 3, one thread, tight loop, "
        "CPU time; libdeflate: the job's encoder (refinery.png) in place of imencode",
        "identity": "deploy.run with --engine identity; CPU = this process + the workers' fork "
        "server (started by each job) + the workers",
        "engine": "simgan-refiner-gaze (64 maps, 4 blocks), random weights, ONNX Runtime CPU",
        "batch": args.batch,
        "throughput_samples": args.samples,
        "naive": "tarfile -> cv2.imdecode -> torch eager, batch 1 -> cv2.imencode -> tarfile",
        "naive_samples": args.naive,
        "memory_job": "the identity job, a fresh process per size",
        "memory_sizes": sizes,
        "targets": "identity CPU/frame <= 1.5 x codec floor; CPU busy >= 1.6 on 2 cores; "
        "memory growth <= 10%",
    }
    write_result("refine", figures, settings, results=Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
