"""Engines: a trained generator exported to ONNX with its metadata, behind one interface.

    spec = engines.export_run("runs/gaze", "engines/gaze")        # model.onnx + engine.json
    engine = engines.load("engines/gaze", backend="onnxruntime")  # or "torch", "tensorrt"
    refined = engine.refine(pixels)                               # (B, H, W) uint8 -> same
    refined.pixels, refined.finite                                # per-sample NaN/inf flags
    pixels, finite = engine.refine_tensor(on_device)              # stays on engine.device

``engine.json`` (``engines.spec``) is contract 2 of ARCHITECTURE.md: a job calls
``spec.check_fits(...)`` before it reads data. Backends: ``torch`` (the reference), ``onnxruntime``
(CPU and CUDA providers, no silent fallback) and ``tensorrt`` (a plan from ``build``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.base import Engine, Refined
from engines.spec import (
    DEFAULT_BATCH,
    EngineError,
    EngineMismatch,
    EngineSpec,
    PixelIO,
    Profile,
    Shape,
    read_spec,
)

BACKENDS = ("onnxruntime", "torch", "tensorrt")

__all__ = [
    "BACKENDS",
    "Engine",
    "EngineError",
    "EngineMismatch",
    "EngineSpec",
    "PixelIO",
    "Profile",
    "Refined",
    "Shape",
    "build",
    "export_run",
    "load",
    "read_spec",
]


def load(engine_dir: str | Path, backend: str = "onnxruntime", **options: Any) -> Engine:
    """The engine in ``engine_dir`` on ``backend``; options go to the backend (``device``,
    ``precision``, ``threads`` for onnxruntime, ``compile`` and ``graphs`` for torch)."""
    spec = read_spec(engine_dir)
    if backend == "onnxruntime":
        from engines.onnxruntime_backend import OnnxRuntimeEngine as cls
    elif backend == "torch":
        from engines.torch_backend import TorchEngine as cls
    elif backend == "tensorrt":
        from engines.tensorrt_backend import TensorRTEngine as cls
    else:
        raise EngineError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    try:
        return cls(spec, engine_dir, **options)
    except TypeError as exc:
        raise EngineError(f"{backend} backend: {exc}") from None


def export_run(run_dir: str | Path, out_dir: str | Path, **options: Any) -> EngineSpec:
    from engines.export import export_run as export

    return export(run_dir, out_dir, **options)


def build(
    engine_dir: str | Path,
    *,
    backend: str,
    fp16: bool = False,
    profile: Profile | None = None,
    batch: int | None = None,
    workspace_gib: float = 4.0,
) -> EngineSpec:
    """Add a backend artifact: ``onnxruntime --fp16`` writes the FP16 graph;
    ``tensorrt`` builds a plan for this GPU (FP16 from that graph when ``fp16``) whose profile
    is ``profile``, or batches up to ``batch`` (default 64, a job's default) at up to twice
    the training size."""
    if backend == "tensorrt":
        from engines.tensorrt_backend import build_plan

        if profile is not None and batch is not None:
            raise EngineError("give --shapes or --batch for a plan, not both")
        return build_plan(
            engine_dir,
            fp16=fp16,
            profile=profile,
            batch=batch or DEFAULT_BATCH,
            workspace_gib=workspace_gib,
        )
    if backend == "onnxruntime":
        if not fp16:
            raise EngineError("onnxruntime runs model.onnx as exported; build adds only --fp16")
        if profile is not None or batch is not None:
            raise EngineError(
                "--shapes and --batch apply to TensorRT plans; ONNX Runtime takes any shape"
            )
        from engines.fp16 import ensure_fp16_graph

        return ensure_fp16_graph(engine_dir, read_spec(engine_dir))
    if backend == "torch":
        raise EngineError("the torch backend needs no build: it runs model.safetensors eagerly")
    raise EngineError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
