"""The prepared GPU check (``make gpu-check``): every check that needs a GPU, in one run.

    python -m benchmarks.gpu                 # on a GPU machine: sized for < 8 min on one H200
    python -m benchmarks.gpu --device cpu    # the same steps at CPU sizes: proves the script

Steps, each recorded with its seconds and a status (``passed``, ``failed`` with the error, or
``not run`` with the reason; a step that did not run is never counted as passed):

1. ``environment``: GPU name, capability, memory and driver; CPU count; versions (torch, CUDA,
   torchvision, ONNX Runtime and its providers, OpenCV, DALI, TensorRT, webdataset); a large
   FP16 (CPU: FP32) matrix product as the chip's achievable peak, measured in the same run.
2. ``pytest``: ``pytest -m gpu`` over the test files that hold GPU tests; every test's outcome
   (a skip with its reason).
3. ``engines``: engine-only frames/s of the gaze refiner at 35x55 (batch 1024) and of the
   SG-GAN U-Net and the SPIGAN ResNet-9 generators at 1024x2048, torch FP32 and FP16, eager and
   with CUDA graphs; device-resident (uint8 pixels on the GPU in and out) and host-to-host
   (pinned transfers included); peak device memory; FLOP per frame (counted from the
   convolutions) and the achieved share of the measured peak; FP16 against FP32 in grey levels.
   ONNX Runtime's CUDA provider and TensorRT run where installed, otherwise are listed as not
   run.
4. ``job``: the whole refine job (``deploy.run``: read, decode, engine, encode, write) on 100k
   gaze frames (PNG) and on 200 scene frames at 1024x2048 (JPEG in, JPEG out), with the engine
   loaded and warmed first; the gaze job again through the CLI as a user runs it, and as
   several processes sharing the GPU (``--rank``/``--world-size``, ``--device cuda:0``).
5. ``train``: training through the real loop (shards read, decoded and batched by the
   trainers' streams): SimGAN's gaze paper preset (batch 512) in FP32 and with AMP (two and
   eight decoding processes, then from the decoded cache, ``train.cache``) and SG-GAN's paper
   preset at 256x512, FP32 and AMP, AMP again from the cache; images/s and the share of the
   wall time the loop waited for data (targets: ≥ 10,000 images/s with AMP, ≤ 10% waiting).
6. ``evaluate``: ``refinery evaluate scene`` on the device at 256x512, 100 and 400 frames per
   set (one seed, one epoch; sets read a batch at a time from the scratch directory): seconds,
   peak host memory (its growth between the sizes) and peak device memory.

Records ``benchmarks/results/gpu-check.json`` (``--device cpu``: ``out/gpu-check-cpu/``, which
is not a result), rewritten after every step, so a run cut short keeps what it measured.

The GPU machine this project can test on has torch, torchvision, ONNX Runtime (CPU build) and
OpenCV, but neither DALI, TensorRT nor webdataset, and no network: wheels placed in ``.whl/``
(``make gpu-wheels``) are installed from there into a temporary directory first.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
NEEDED = {"webdataset": "webdataset", "braceexpand": "braceexpand"}  # module -> wheel name


def install_wheels(wheels: Path = WHEELS) -> list[str]:
    """Install the carried wheels of modules that are missing here (no index, no deps) into a
    temporary directory on ``sys.path`` and ``PYTHONPATH``; the wheel files it used."""
    import importlib.util

    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        return []
    files = sorted(str(p) for p in wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        raise RuntimeError(
            f"modules {missing} are missing and there are no wheels in {wheels}: run "
            "'make gpu-wheels' on a machine with the package index, then carry .whl along"
        )
    target = tempfile.mkdtemp(prefix="refinery-wheels-")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--target",
            target,
            *files,
        ],
        check=True,
    )
    sys.path.insert(0, target)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (target, str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    return [Path(f).name for f in files]


# -- sizes --------------------------------------------------------------------------------------

NETWORKS = {  # name -> network, channels, pixel kind
    "gaze-refiner": ("simgan-refiner-gaze", 1, "gray8"),
    "sggan-unet": ("sggan-generator", 3, "rgb8"),
    "spigan-resnet9": ("spigan-generator", 3, "rgb8"),
}
SIZES = {
    # per network: (height, width, batch); job: gaze frames, scene frames, processes
    "cuda": {
        "gaze-refiner": (35, 55, 1024),
        "sggan-unet": (1024, 2048, 4),
        "spigan-resnet9": (1024, 2048, 2),
        "iterations": 20,
        "host_iterations": 5,
        "gaze_frames": 100_000,
        "scene_frames": 200,
        "scene_batch": 4,
        "processes": 4,
        # training (train_step): the paper presets; iterations after a 2 + 2 pretraining
        "train_gaze": {
            "preset": "gaze",
            "batch_size": 512,
            "pool": 20_000,
            "steps": 40,
            "log_every": 10,
            "decode_workers": [2, 8],
        },
        "train_scene": {
            "preset": "paper",
            "size": [256, 512],
            "batch_size": 1,
            "pool": 100,
            "steps": 30,
            "log_every": 10,
        },
        "evaluate": {"size": [256, 512], "frames": [100, 400]},
    },
    "cpu": {
        "gaze-refiner": (35, 55, 64),
        "sggan-unet": (256, 256, 1),
        "spigan-resnet9": (64, 128, 1),
        "iterations": 3,
        "host_iterations": 2,
        "gaze_frames": 2_000,
        "scene_frames": 8,
        "scene_batch": 2,
        "processes": 2,
        "train_gaze": {
            "preset": "gaze",
            "batch_size": 8,
            "pool": 64,
            "steps": 6,
            "log_every": 2,
            "decode_workers": [2],
        },
        "train_scene": {
            "preset": "small",
            "size": [64, 128],
            "batch_size": 1,
            "pool": 8,
            "steps": 6,
            "log_every": 2,
        },
        "evaluate": {"size": [64, 128], "frames": [16, 64]},
    },
}


def conv_flops(module, shape: tuple[int, ...]) -> int:
    """Multiply-adds x 2 of every convolution and linear layer for one input of ``shape``,
    counted on the meta device (shapes only, no arithmetic)."""
    import torch
    from torch import nn

    total = 0

    def count(layer, inputs, output):
        nonlocal total
        if isinstance(layer, nn.ConvTranspose2d):
            kernel = layer.kernel_size[0] * layer.kernel_size[1]
            total += 2 * inputs[0].numel() * layer.out_channels // layer.groups * kernel
        elif isinstance(layer, nn.Conv2d):
            kernel = layer.kernel_size[0] * layer.kernel_size[1]
            total += 2 * output.numel() * layer.in_channels // layer.groups * kernel
        elif isinstance(layer, nn.Linear):
            total += 2 * output.numel() * layer.in_features

    meta = copy.deepcopy(module).to("meta")
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    hooks = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        meta(torch.empty(shape, device="meta"))
    for hook in hooks:
        hook.remove()
    return total


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device) -> dict[str, Any]:
    """The chip's achievable matrix throughput, measured here: FP16 8192^3 on CUDA, FP32
    1024^3 on the CPU; the reference every engine's share is computed against."""
    import torch

    n, dtype = (8192, torch.float16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    repeats = 10 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    seconds = time.perf_counter() - start
    return {"tflops": 2 * n**3 * repeats / seconds / 1e12, "matmul": f"{n}^3 {dtype}"}


# -- steps --------------------------------------------------------------------------------------


def environment(ctx: dict) -> dict[str, Any]:
    import cv2
    import torch

    from refinery.records import machine, versions

    device = ctx["device"]
    found: dict[str, Any] = {"machine": machine(), "versions": versions()}
    found["versions"]["torch_cuda"] = torch.version.cuda
    found["versions"]["opencv"] = cv2.__version__
    try:
        import torchvision

        found["versions"]["torchvision"] = torchvision.__version__
    except Exception as exc:  # a CUDA-only wheel next to a CPU torch raises RuntimeError
        found["versions"]["torchvision"] = f"not importable: {exc}"
    try:
        import onnxruntime

        found["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        found["onnxruntime_providers"] = []
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        found["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
        }
    found["cpu_threads"] = len(os.sched_getaffinity(0))
    found["peak"] = ctx["peak"] = peak_tflops(device)
    return found


def parse_junit(path: Path) -> dict[str, Any]:
    """Outcome of every test case in a pytest JUnit XML file."""
    tests: dict[str, dict[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "failed", "skipped": "skipped"}[tag]
                detail = (element.get("message") or "").strip()[:300]
                break
        tests[name] = {"outcome": outcome, "detail": detail}
    counts = {
        k: sum(t["outcome"] == k for t in tests.values()) for k in ("passed", "failed", "skipped")
    }
    return {"counts": counts, "tests": tests}


def pytest_gpu(ctx: dict) -> dict[str, Any]:
    files = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").glob("test_*.py")
        if "mark.gpu" in p.read_text()
    )
    xml = Path(ctx["work"]) / "pytest-gpu.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        *files,
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=ctx["pytest_timeout"]
    )
    if not xml.exists():
        raise RuntimeError(
            f"pytest wrote no report (exit {done.returncode}): {done.stdout[-2000:]}"
        )
    result = parse_junit(xml)
    result["exit_code"] = done.returncode
    result["command"] = " ".join(command[1:])
    counts = result["counts"]
    for name, test in result["tests"].items():
        if test["outcome"] == "skipped":  # what could not run here is named, never passed
            ctx["not_run"].append(f"{name.rsplit('.', 1)[-1]}: {test['detail']}")
    if counts["failed"]:
        result["status"] = "failed"
        result["output_tail"] = done.stdout[-3000:]
    elif not counts["passed"]:
        result["status"] = "not run"  # every GPU test skipped: nothing was checked
    return result


def _engine_dir(ctx: dict, key: str) -> Path:
    """An engine of ``key``'s network with random weights (speed does not depend on them),
    exported through the product's path, its profile holding this run's size and batch."""
    import torch

    from engines.export import export_module
    from engines.spec import PixelIO, Profile, Shape
    from refinery.registry import build_network

    out = Path(ctx["work"]) / "engines" / key
    if (out / "engine.json").exists():
        return out
    network, channels, kind = NETWORKS[key]
    height, width, batch = ctx["sizes"][key]
    torch.manual_seed(0)
    module = build_network(network, channels=channels)
    m = getattr(module, "size_multiple", 1)
    low = max(m, 16 // m * m)
    # traced and checked against ONNX Runtime at a small size; the range reaches this run's
    opt = Shape(1, min(height, max(m, 256)), min(width, max(m, 256)))
    top = Shape(max(batch, 1024) if m == 1 else batch, height, width)
    profile = Profile(Shape(1, low, low), opt, top, multiple=m)
    domain, component = ("gaze", "png") if channels == 1 else ("scene", "jpg")
    export_module(
        module,
        out,
        network=network,
        kwargs={"channels": channels},
        method="benchmark",
        domain=domain,
        pixels=PixelIO(component, kind, channels, low=0.0, high=255.0),
        profile=profile,
        source={"run": None, "checkpoint": None, "note": "random weights"},
    )
    return out


def _time_calls(call: Callable[[], Any], device, iterations: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        call()
    sync(device)
    return (time.perf_counter() - start) / iterations


def engine_variants(device) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, backend, options) for this device; what cannot run is reported by the caller."""
    if device.type == "cuda":
        return [
            ("torch fp32 eager", "torch", {"precision": "fp32", "graphs": False}),
            ("torch fp32 graphs", "torch", {"precision": "fp32", "graphs": True}),
            ("torch fp16 eager", "torch", {"precision": "fp16", "graphs": False}),
            ("torch fp16 graphs", "torch", {"precision": "fp16", "graphs": True}),
            ("onnxruntime cuda fp32", "onnxruntime", {"precision": "fp32"}),
            ("tensorrt fp16", "tensorrt", {}),
        ]
    return [
        ("torch fp32 eager", "torch", {"precision": "fp32"}),
        ("onnxruntime cpu fp32", "onnxruntime", {"precision": "fp32"}),
    ]


def _unavailable(backend: str, device) -> str | None:
    if backend == "onnxruntime" and device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return f"onnxruntime {onnxruntime.__version__} here has no CUDAExecutionProvider"
    if backend == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "TensorRT is not installed here (its wheels come only from NVIDIA's index)"
    return None


def engines_step(ctx: dict) -> dict[str, Any]:
    import numpy as np
    import torch

    import engines
    from engines.spec import Profile, Shape
    from refinery.registry import build_network

    device, sizes = ctx["device"], ctx["sizes"]
    peak = ctx["peak"]["tflops"]
    found: dict[str, Any] = {}
    for key, (network, channels, _) in NETWORKS.items():
        height, width, batch = sizes[key]
        engine_dir = _engine_dir(ctx, key)
        flops = conv_flops(build_network(network, channels=channels), (1, channels, height, width))
        shape = (batch, height, width) + ((3,) if channels == 3 else ())
        rng = np.random.default_rng(0)
        host = rng.integers(0, 256, shape, dtype=np.uint8)
        rows: dict[str, Any] = {}
        outputs: dict[str, np.ndarray] = {}
        for label, backend, options in engine_variants(device):
            reason = _unavailable(backend, device)
            if reason is not None:
                rows[label] = {"status": "not run", "reason": reason}
                ctx["not_run"].append(f"{key} {label}: {reason}")
                continue
            if backend == "tensorrt":
                plan = Profile(
                    Shape(1, height, width),
                    Shape(batch, height, width),
                    Shape(batch, height, width),
                    multiple=engines.read_spec(engine_dir).profile.multiple,
                )
                engines.build(engine_dir, backend="tensorrt", fp16=True, profile=plan)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            dev = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"
            engine = engines.load(engine_dir, backend=backend, device=dev, **options)
            resident = torch.from_numpy(host).to(engine.device)
            seconds = _time_calls(
                lambda e=engine, x=resident: e.refine_tensor(x),
                engine.device,
                ctx["sizes"]["iterations"],
                warmup=3,
            )
            host_seconds = _time_calls(
                lambda e=engine, x=host: e.refine(x),
                engine.device,
                ctx["sizes"]["host_iterations"],
                warmup=1,
            )
            outputs[label] = engine.refine(host).pixels
            fps = batch / seconds
            row = {
                "status": "passed",
                "frames_per_s": fps,
                "frames_per_s_host_to_host": batch / host_seconds,
                "ms_per_batch": seconds * 1000,
                "achieved_tflops": fps * flops / 1e12,
                "share_of_measured_peak": fps * flops / 1e12 / peak,
            }
            if device.type == "cuda":
                row["peak_device_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                if getattr(engine, "graphs", None) is not None:
                    row["graph_captures"] = engine.graphs.captures
            rows[label] = row
            del engine, resident
        reference = outputs.get("torch fp32 eager")
        for label, pixels in outputs.items():
            if reference is not None and label != "torch fp32 eager":
                diff = np.abs(pixels.astype(int) - reference.astype(int))
                rows[label]["max_grey_levels_vs_fp32_eager"] = int(diff.max())
        found[key] = {
            "network": network,
            "size": [height, width],
            "batch": batch,
            "gflop_per_frame": flops / 1e9,
            "variants": rows,
        }
    return found


def _gaze_shards(root: Path, frames: int, unique: int = 10_000) -> str:
    """``frames`` gaze samples as 1000-sample shards: ``unique`` rendered, the shards then
    copied under new names (the job does not compare keys across shards)."""
    from benchmarks import common

    count = min(frames, unique)
    made = common.gaze_shards(root / "made", count, shard_size=min(1000, count))
    common.copied_shards(made, root / "gaze", -(-frames // min(1000, count)))
    return str(root / "gaze")


def _scene_shards(root: Path, frames: int, height: int, width: int, unique: int = 20) -> str:
    """``frames`` procedural street frames as JPEG (q95) with their labels, 20 per shard."""
    import cv2
    import numpy as np

    from refinery import sim
    from refinery.samples import encode_sample
    from refinery.shards import ShardWriter

    made = []
    for s in sim.generate(
        "scene", "synthetic", min(frames, unique), seed=3, height=height, width=width
    ):
        sample = encode_sample(s, "scene")
        bgr = cv2.imdecode(np.frombuffer(sample.pop("png"), np.uint8), cv2.IMREAD_COLOR)
        made.append(
            {
                "__key__": sample.pop("__key__"),
                "jpg": cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(),
                **sample,
            }
        )
    out = root / "scene"
    out.mkdir(parents=True)
    per = len(made)
    for i in range(-(-frames // per)):
        with ShardWriter(str(out / f"scene-{i:06d}.tar")) as writer:
            for sample in made[: min(per, frames - i * per)]:
                writer.write(sample)
    return str(out)


def _in_process(engine, config, urls: str) -> dict[str, Any]:
    from deploy import run

    shutil.rmtree(config.output, ignore_errors=True)
    start = time.perf_counter()
    summary = run(config, urls, engine=engine)
    seconds = time.perf_counter() - start
    if summary.rejected or summary.written != summary.read:
        raise RuntimeError(f"job rejected {summary.rejected} of {summary.read}")
    decoders = sorted({s.decoder for s in summary.shards})
    return {
        "frames": summary.read,
        "seconds": seconds,
        "frames_per_s": summary.read / seconds,
        "decoders": decoders,
    }


def _cli(
    engine_dir: Path, urls: str, out: Path, *, device: str, batch: int, procs: int, extra: list[str]
) -> dict[str, Any]:
    """The job as ``procs`` processes of ``python -m refinery refine`` on one device, each
    with its share of the shards (``--rank``/``--world-size``); wall time of them all."""
    shutil.rmtree(out, ignore_errors=True)
    base = [
        sys.executable,
        "-m",
        "refinery",
        "refine",
        "--engine",
        str(engine_dir),
        "--input",
        urls,
        "--output",
        str(out),
        "--device",
        device,
        "--batch",
        str(batch),
        *extra,
    ]
    start = time.perf_counter()
    jobs = [
        subprocess.Popen(
            [*base, "--rank", str(r), "--world-size", str(procs)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(procs)
    ]
    outputs = [job.communicate(timeout=600) for job in jobs]
    seconds = time.perf_counter() - start
    failed = [o[1][-1500:] for job, o in zip(jobs, outputs, strict=True) if job.returncode]
    if failed:
        raise RuntimeError(f"refinery refine failed: {failed[0]}")
    stats = [json.loads(p.read_text()) for p in out.glob("*.stats.json")]
    frames = sum(s["read"] for s in stats)
    return {
        "processes": procs,
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "command": " ".join(base[1:]),
    }


def job_step(ctx: dict) -> dict[str, Any]:
    import numpy as np

    import engines
    from benchmarks.refine import measure_cpu_side
    from deploy import RefineConfig
    from refinery.shards import expand_urls, read

    device, sizes, work = ctx["device"], ctx["sizes"], Path(ctx["work"])
    dev = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"
    options = {"precision": "fp16"} if device.type == "cuda" else {}
    note = "torch fp16 + CUDA graphs" if device.type == "cuda" else "torch fp32 eager (CPU)"
    found: dict[str, Any] = {}

    gaze_dir = _engine_dir(ctx, "gaze-refiner")
    batch = sizes["gaze-refiner"][2]
    urls = _gaze_shards(work / "data", sizes["gaze_frames"])
    engine = engines.load(gaze_dir, backend="torch", device=dev, **options)
    engine.refine(np.zeros((batch, 35, 55), np.uint8))  # graphs captured, kernels chosen
    # the engine alone on the same frames, decoded: host pixels in, host pixels out
    shards = expand_urls(urls)
    pixels = np.stack([s["png"] for s in read(shards[: max(1, len(shards) // 10)], "gaze")])
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        engine.refine(pixels[i : i + batch])
    alone = len(pixels) / (time.perf_counter() - start)
    config = RefineConfig(
        engine=str(gaze_dir),
        output=str(work / "out-gaze"),
        batch=batch,
        backend="torch",
        device=dev,
    )
    found["gaze"] = _in_process(engine, config, urls)
    found["gaze"]["engine"] = note
    found["gaze_engine_alone"] = {"frames": len(pixels), "frames_per_s": alone, "engine": note}
    found["gaze"]["share_of_engine"] = found["gaze"]["frames_per_s"] / alone
    del engine
    # the CPU side alone (--engine identity) against OpenCV's codec floor, one worker and all
    cpu_side = measure_cpu_side(shards, work / "cpu-side", rounds=1)
    found["gaze_codec_floor"] = cpu_side["codec_floor"]
    found["gaze_identity"] = {k: v for k, v in cpu_side["identity"].items() if k != "rounds"}
    precision = ["--precision", "fp16"] if device.type == "cuda" else []
    for key, procs in (("gaze_cli", 1), ("gaze_cli_processes", sizes["processes"])):
        found[key] = _cli(
            gaze_dir,
            urls,
            work / f"out-{key}",
            device=dev,
            batch=batch,
            procs=procs,
            extra=["--backend", "torch", *precision],
        )
        found[key]["engine"] = note

    scene_dir = _engine_dir(ctx, "sggan-unet")
    height, width, _ = sizes["sggan-unet"]
    scene_urls = _scene_shards(work / "data", sizes["scene_frames"], height, width)
    engine = engines.load(scene_dir, backend="torch", device=dev, **options)
    engine.refine(np.zeros((sizes["scene_batch"], height, width, 3), np.uint8))
    config = RefineConfig(
        engine=str(scene_dir),
        output=str(work / "out-scene"),
        batch=sizes["scene_batch"],
        backend="torch",
        device=dev,
    )
    found["scene"] = _in_process(engine, config, scene_urls)
    found["scene"].update(
        engine=note, network="sggan-generator", size=[height, width], image="JPEG q95 in, JPEG out"
    )
    from deploy.dali import have_dali

    if device.type == "cuda" and not have_dali():
        ctx["not_run"].append(
            "DALI mixed (nvJPEG) decoding: nvidia-dali is not installed here; JPEG was decoded "
            "by the OpenCV pool"
        )
    ctx["not_run"].append(
        "GPU JPEG encoding: not implemented; the job encodes on the CPU pool (--encode-workers)"
    )
    return found


def train_step(ctx: dict) -> dict[str, Any]:
    """Training through the real loop (``benchmarks.train_speed.measure``): SimGAN's gaze paper
    preset and SG-GAN's paper preset at 256x512, FP32 and AMP; images/s and the share of the
    wall time spent waiting for data."""
    from benchmarks.train_speed import make_shards, measure

    device, sizes, work = ctx["device"], ctx["sizes"], Path(ctx["work"])
    dev = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"
    found: dict[str, Any] = {}
    gaze = sizes["train_gaze"]
    urls = make_shards(work / "train-gaze", "gaze", gaze["pool"])
    short = {"pretrain_refiner_steps": 2, "pretrain_discriminator_steps": 2}
    # decoding as read (cache off: 2 and 8 processes), then from the decoded cache (train.cache,
    # the recipes' default; built before the first cached run's timing starts)
    cases = [(False, w, False) for w in gaze["decode_workers"][:1]]
    cases += [(True, w, False) for w in gaze["decode_workers"]] + [(True, 2, True)]
    for amp, workers, cache in cases:
        key = f"simgan_gaze_{'amp' if amp else 'fp32'}_" + (
            "cache" if cache else f"decode{workers}"
        )
        found[key] = measure(
            "simgan", gaze["preset"], urls, device=dev, steps=gaze["steps"],
            log_every=gaze["log_every"], batch_size=gaze["batch_size"], amp=amp,
            decode_workers=workers, buffer_size=max(64, 4 * gaze["batch_size"]), cache=cache,
            **short,
        )  # fmt: skip
        print(f"gpu-check: train {key}: {json.dumps(found[key])}", flush=True)
    scene = sizes["train_scene"]
    urls = make_shards(work / "train-scene", "scene", scene["pool"], size=tuple(scene["size"]))
    for amp, cache in ((False, False), (True, False), (True, True)):
        key = f"sggan_{'amp' if amp else 'fp32'}" + ("_cache" if cache else "")
        found[key] = measure(
            "sggan", scene["preset"], urls, device=dev, steps=scene["steps"],
            log_every=scene["log_every"], batch_size=scene["batch_size"], amp=amp, cache=cache,
        )  # fmt: skip
        found[key]["size"] = scene["size"]
        print(f"gpu-check: train {key}: {json.dumps(found[key])}", flush=True)
    found["targets"] = {
        "simgan_gaze_amp_images_per_s": 10_000,
        "data_wait_share": 0.10,
        "note": "issue 16, on one H200: SimGAN gaze paper preset with AMP",
    }
    return found


def evaluate_step(ctx: dict) -> dict[str, Any]:
    """``refinery evaluate scene`` on the device (``benchmarks.evaluate_memory.measure_sizes``):
    FCN8s trained and tested a batch at a time from the scratch directory, at two set sizes;
    seconds and peak host and device memory."""
    from benchmarks.evaluate_memory import measure_sizes

    device, sizes, work = ctx["device"], ctx["sizes"], Path(ctx["work"])
    dev = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"
    plan = sizes["evaluate"]
    root = work / "evaluate"
    root.mkdir(parents=True, exist_ok=True)
    found = measure_sizes(root, plan["frames"], device=dev, size=tuple(plan["size"]))["runs"]
    small, large = (found[str(f)]["peak_host_rss_mib"] for f in plan["frames"])
    found["host_growth"] = large / small - 1
    return found


STEPS: dict[str, Callable[[dict], dict[str, Any]]] = {
    "environment": environment,
    "pytest": pytest_gpu,
    "engines": engines_step,
    "job": job_step,
    "train": train_step,
    "evaluate": evaluate_step,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument(
        "--out",
        help="records directory (default: benchmarks/results on "
        "CUDA, out/gpu-check-cpu on the CPU)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=list(STEPS))
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=list(STEPS),
        help="run these steps in this order (default: all, in the order above), so the ones "
        "that matter most run before --budget is spent; the others are recorded as not run",
    )
    parser.add_argument("--budget", type=float, default=450, help="seconds; later steps skip")
    parser.add_argument("--quick", action="store_true", help="smallest sizes (tests)")
    return parser


def _sizes(kind: str, quick: bool) -> dict[str, Any]:
    """The sizes of ``kind`` (cuda or cpu); with ``quick``, the smallest that still run every
    step (tests)."""
    sizes = dict(SIZES[kind])
    if quick:
        sizes.update(
            {
                "gaze-refiner": (35, 55, 8),
                "sggan-unet": (256, 256, 1),
                "spigan-resnet9": (32, 32, 1),
                "iterations": 1,
                "host_iterations": 1,
                "gaze_frames": 40,
                "scene_frames": 2,
                "scene_batch": 1,
                "processes": 2,
                "train_gaze": {
                    **sizes["train_gaze"],
                    "batch_size": 4,
                    "pool": 16,
                    "steps": 4,
                    "decode_workers": [2],
                },
                "train_scene": {
                    **sizes["train_scene"],
                    "preset": "small",
                    "size": [64, 64],
                    "pool": 4,
                    "steps": 4,
                },
                "evaluate": {"size": [64, 64], "frames": [8, 16]},
            }
        )
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    began = time.perf_counter()
    wheels = install_wheels()

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run with --device cpu to check the script")
        return 2
    kind = "cuda" if device.type == "cuda" else "cpu"
    out = Path(
        args.out
        or (ROOT / "benchmarks" / "results" if kind == "cuda" else ROOT / "out" / "gpu-check-cpu")
    )
    sizes = _sizes(kind, args.quick)
    ctx: dict[str, Any] = {
        "device": device,
        "sizes": sizes,
        "not_run": [],
        "work": tempfile.mkdtemp(prefix="gpu-check-"),
        "pytest_timeout": 300,
        "peak": {"tflops": float("nan")},
    }
    figures: dict[str, Any] = {"steps": {}, "not_run": ctx["not_run"]}
    settings = {
        "device": str(device),
        "sizes": sizes,
        "wheels": wheels,
        "networks": {k: v[0] for k, v in NETWORKS.items()},
        "budget_s": args.budget,
        "command": "python -m benchmarks.gpu " + " ".join(argv or sys.argv[1:]),
    }
    from refinery.records import write_record

    path = out / "gpu-check.json"
    try:
        _run_steps(args, ctx, figures, settings, path, began)
    finally:
        shutil.rmtree(ctx["work"], ignore_errors=True)
    figures["seconds"] = time.perf_counter() - began
    write_record(path, "gpu-check", figures, settings)
    print(json.dumps({k: v.get("status") for k, v in figures["steps"].items()}))
    for line in ctx["not_run"]:
        print(f"not run: {line}")
    print(f"wrote {path}")
    failed = [k for k, v in figures["steps"].items() if v["status"] == "failed"]
    return 1 if failed else 0


def _run_steps(
    args: argparse.Namespace,
    ctx: dict[str, Any],
    figures: dict[str, Any],
    settings: dict[str, Any],
    path: Path,
    began: float,
) -> None:
    """Each step in order (environment first), or recorded as not run with the reason; the
    record is rewritten after every step, so a run cut short keeps what it measured."""
    from refinery.records import write_record

    order = args.steps or list(STEPS)
    if "environment" in order:  # the matrix peak it measures is what the engines are shared by
        order = ["environment", *(n for n in order if n != "environment")]
    for name in [*order, *(n for n in STEPS if n not in order)]:
        step = STEPS[name]
        if name in args.skip or name not in order:
            reason = "--skip" if name in args.skip else "not in --steps"
            figures["steps"][name] = {"status": "not run", "reason": reason}
            continue
        if time.perf_counter() - began > args.budget:
            figures["steps"][name] = {"status": "not run", "reason": "time budget spent"}
            ctx["not_run"].append(f"{name}: the time budget ({args.budget:.0f} s) was spent")
            continue
        start = time.perf_counter()
        print(f"gpu-check: {name} ...", flush=True)
        try:
            result = step(ctx)
            result.setdefault("status", "passed")
        except Exception as exc:
            result = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-4000:],
            }
        result["seconds"] = time.perf_counter() - start
        figures["steps"][name] = result
        print(f"gpu-check: {name} {result['status']} in {result['seconds']:.0f} s", flush=True)
        figures["seconds"] = time.perf_counter() - began
        write_record(path, "gpu-check", figures, settings)


if __name__ == "__main__":
    sys.exit(main())
