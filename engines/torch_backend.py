"""The reference backend: the registered network in eager PyTorch, weights from the engine dir.

On CUDA it runs channels-last, with ``precision="fp16"`` under float16 autocast (convolutions
in FP16; reductions and normalisation statistics stay FP32 by autocast's own op lists), on the
engine's own stream, and replays CUDA graphs (``graphs``, on by default there): one graph per
(batch bucket, C, H, W), a batch padded up to the next power of two, so a small gaze batch
costs one graph launch instead of hundreds of kernel launches. Every network here treats the
samples of a batch independently (instance norm, eval-mode batch norm), so padding rows never
change a real row. ``compile=True`` wraps the module in ``torch.compile`` (dynamic shapes)
instead. On the CPU it runs FP32 eager only: FP16 on a CPU is slower, not a deployment target.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from engines.base import Engine
from engines.spec import EngineError, EngineSpec, verify_file
from refinery.registry import build_network

Forward = Callable[[torch.Tensor], torch.Tensor]
# (forward, static input) -> (replay, static output): a captured call that reads the input's
# storage and writes the output's on every replay
Capture = Callable[[Forward, torch.Tensor], tuple[Callable[[], None], torch.Tensor]]


def capture_cuda_graph(forward: Forward, static_input: torch.Tensor):
    """Capture ``forward(static_input)`` as a CUDA graph after a warm-up on a side stream
    (cuDNN picks its algorithms and the allocator settles outside the capture)."""
    side = torch.cuda.Stream(static_input.device)
    side.wait_stream(torch.cuda.current_stream(static_input.device))
    with torch.cuda.stream(side):
        for _ in range(2):
            forward(static_input)
    torch.cuda.current_stream(static_input.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: a refine job's other threads (DALI, pinned copies) may use CUDA meanwhile
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        static_output = forward(static_input)
    return graph.replay, static_output


class GraphCache:
    """Static-shape replays of ``forward``: a batch of B goes into the smallest bucket (a power
    of two, at most ``max_batch``) that holds it; one capture per (bucket, C, H, W), the least
    recently used dropped beyond ``max_graphs`` (each holds its own activation memory)."""

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch: int,
        memory_format: torch.memory_format = torch.contiguous_format,
        capture: Capture = capture_cuda_graph,
        max_graphs: int = 8,
    ):
        self.forward, self.capture, self.memory_format = forward, capture, memory_format
        self.max_batch, self.max_graphs = max_batch, max_graphs
        self.graphs: OrderedDict[tuple[int, ...], tuple] = OrderedDict()
        self.captures = 0

    def bucket(self, batch: int) -> int:
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch {batch} outside [1, {self.max_batch}]")
        return min(1 << (batch - 1).bit_length(), self.max_batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> forward's output for the B real rows (a copy: the next replay
        overwrites the static output)."""
        batch = len(x)
        key = (self.bucket(batch), *x.shape[1:])
        entry = self.graphs.get(key)
        if entry is None:
            static_input = x.new_zeros(key).contiguous(memory_format=self.memory_format)
            entry = (static_input, *self.capture(self.forward, static_input))
            self.captures += 1
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        static_input, replay, static_output = entry
        static_input[:batch].copy_(x)
        if batch < len(static_input):
            static_input[batch:].zero_()  # padding rows: finite, and independent of the batch
        replay()
        return static_output[:batch].clone()


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
        graphs: bool | None = None,
    ):
        super().__init__(spec, engine_dir)
        if precision not in ("fp32", "fp16"):
            raise EngineError(f"torch backend: precision {precision!r} is not fp32 or fp16")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cuda = self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise EngineError(f"torch backend: device {device!r} asked for, but CUDA is absent")
        if precision == "fp16" and not cuda:
            raise EngineError("torch backend: fp16 needs a CUDA device (got the CPU)")
        if graphs and not cuda:
            raise EngineError("torch backend: CUDA graphs need a CUDA device (got the CPU)")
        if graphs and compile:
            raise EngineError("torch backend: choose CUDA graphs or torch.compile, not both")
        if cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.precision = precision
        self.make_stream()
        weights = verify_file(engine_dir, spec.weights)
        module = build_network(spec.weights["network"], **spec.weights.get("kwargs", {}))
        module.load_state_dict(load_file(str(weights)))
        module = module.eval().requires_grad_(False).to(self.device)
        self.memory_format = torch.contiguous_format
        if cuda:
            self.memory_format = torch.channels_last
            module = module.to(memory_format=torch.channels_last)
        self.module = torch.compile(module, dynamic=True) if compile else module
        use_graphs = cuda and not compile if graphs is None else graphs
        self.graphs = None
        if use_graphs:
            self.graphs = GraphCache(
                self._forward, max_batch=self.profile.max.batch, memory_format=self.memory_format
            )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # cache_enabled=False: autocast's weight-cast cache must not outlive a graph capture
        with torch.autocast(
            self.device.type,
            dtype=torch.float16,
            enabled=self.precision == "fp16",
            cache_enabled=False,
        ):
            return self.module(x).float()

    def _run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)  # (B, C, H, W), NHWC in memory on CUDA
        y = self.graphs(x) if self.graphs is not None else self._forward(x)
        return y.contiguous()
