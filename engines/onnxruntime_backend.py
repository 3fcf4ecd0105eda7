"""ONNX Runtime backend: the exported graph on the CPU or CUDA execution provider.

ONNX Runtime quietly runs a session on the CPU when the CUDA provider cannot be loaded (a
missing cuDNN, a CPU-only wheel); here that is an error, checked twice: the provider must be
listed as available, and the created session must actually use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.base import Engine
from engines.spec import EngineError, EngineSpec, verify_file

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(
        self,
        spec: EngineSpec,
        engine_dir: str | Path,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
    ):
        super().__init__(spec, engine_dir)
        import onnxruntime as ort

        kind, _, index = device.partition(":")
        if kind not in PROVIDERS:
            raise EngineError(f"onnxruntime backend: device {device!r} is not cpu or cuda[:N]")
        provider = PROVIDERS[kind]
        available = ort.get_available_providers()
        if provider not in available:
            raise EngineError(
                f"onnxruntime backend: {provider} is not available in onnxruntime "
                f"{ort.__version__} here (available: {', '.join(available)}); install "
                "onnxruntime-gpu for CUDA, or run with device 'cpu'"
            )
        if precision == "fp32":
            model = verify_file(engine_dir, spec.model)
        elif precision == "fp16":
            if "onnx-fp16" not in spec.builds:
                raise EngineError(
                    f"{engine_dir}: no FP16 graph; run 'refinery build {engine_dir} "
                    "--backend onnxruntime --fp16' first"
                )
            model = verify_file(engine_dir, spec.builds["onnx-fp16"])
        else:
            raise EngineError(f"onnxruntime backend: precision {precision!r} is not fp32 or fp16")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        provider_options = {"device_id": int(index or 0)} if kind == "cuda" else {}
        self.session = ort.InferenceSession(
            str(model), sess_options=options, providers=[(provider, provider_options)]
        )
        used = self.session.get_providers()
        if used[0] != provider:
            raise EngineError(
                f"onnxruntime backend: asked for {provider}, but the session runs on {used[0]} "
                "(the provider failed to load; see ONNX Runtime's log above)"
            )
        self.device = device
        self.precision = precision
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        (y,) = self.session.run([self.output_name], {self.input_name: x})
        return y.astype(np.float32, copy=False)
