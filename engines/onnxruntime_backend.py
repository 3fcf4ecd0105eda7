"""ONNX Runtime backend: the exported graph on the CPU or CUDA execution provider.

ONNX Runtime quietly runs a session on the CPU when the CUDA provider cannot be loaded (a
missing cuDNN, a CPU-only wheel); here that is an error, checked twice: the provider must be
listed as available, and the created session must actually use it.

On the CPU a tensor goes in and comes out as a NumPy view (no copy). On CUDA the session reads
and writes torch's device memory through an I/O binding, so pixels never leave the device: the
caller's stream is synchronised first (ONNX Runtime runs on its own stream), and ``run`` has
finished writing the output when it returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

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
        self.device = (
            torch.device("cuda", int(index or 0)) if kind == "cuda" else torch.device(kind)
        )
        self.precision = precision
        self.make_stream()
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            (y,) = self.session.run([self.output_name], {self.input_name: x.contiguous().numpy()})
            return torch.from_numpy(y.astype(np.float32, copy=False))
        x = x.contiguous()
        # refiners keep (B, H, W) and return the image's channels (the input may add noise's)
        shape = (x.shape[0], self.spec.io.channels, *x.shape[2:])
        y = torch.empty(shape, dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        for bind, name, t in (
            (binding.bind_input, self.input_name, x),
            (binding.bind_output, self.output_name, y),
        ):
            bind(
                name=name,
                device_type="cuda",
                device_id=self.device.index,
                element_type=np.float32,
                shape=tuple(t.shape),
                buffer_ptr=t.data_ptr(),
            )
        torch.cuda.current_stream(self.device).synchronize()  # CPU-GPU sync: x is ready
        self.session.run_with_iobinding(binding)
        return y
