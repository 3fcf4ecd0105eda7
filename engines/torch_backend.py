"""The reference backend: the registered network in eager PyTorch, weights from the engine dir.

On CUDA it runs channels-last, and with ``precision="fp16"`` under float16 autocast (the
convolutions in FP16, reductions and normalisation statistics kept in FP32 by autocast's own
op lists); ``compile=True`` wraps the module in ``torch.compile`` with dynamic shapes. On the
CPU it runs FP32 eager only: FP16 on a CPU is slower, not a deployment target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from engines.base import Engine
from engines.spec import EngineError, EngineSpec, verify_file
from refinery.registry import build_network


class TorchEngine(Engine):
    backend = "torch"

    def __init__(
        self,
        spec: EngineSpec,
        engine_dir: str | Path,
        *,
        device: str | None = None,
        precision: str = "fp32",
        compile: bool = False,
    ):
        super().__init__(spec, engine_dir)
        if precision not in ("fp32", "fp16"):
            raise EngineError(f"torch backend: precision {precision!r} is not fp32 or fp16")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"torch backend: device {device!r} asked for, but CUDA is absent")
        if precision == "fp16" and self.device.type != "cuda":
            raise EngineError("torch backend: fp16 needs a CUDA device (got the CPU)")
        self.precision = precision
        weights = verify_file(engine_dir, spec.weights)
        module = build_network(spec.weights["network"], **spec.weights.get("kwargs", {}))
        module.load_state_dict(load_file(str(weights)))
        module = module.eval().requires_grad_(False).to(self.device)
        self.memory_format = torch.preserve_format
        if self.device.type == "cuda":
            self.memory_format = torch.channels_last
            module = module.to(memory_format=torch.channels_last)
        self.module = torch.compile(module, dynamic=True) if compile else module

    @torch.inference_mode()
    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) on any device -> float32 output on ``self.device`` (no host copy)."""
        x = x.to(self.device, dtype=torch.float32, memory_format=self.memory_format)
        with torch.autocast(
            self.device.type, dtype=torch.float16, enabled=self.precision == "fp16"
        ):
            y = self.module(x)
        return y.float()

    def _run(self, x: np.ndarray) -> np.ndarray:
        y = self.run_tensor(torch.from_numpy(x))
        return y.cpu().contiguous().numpy()  # CPU-GPU sync
