"""The one interface every backend implements: a batch of images in, the refined batch out.

Stored pixels (uint8/uint16) are what crosses the host-device boundary; everything else runs
on the engine's device, next to the model::

    refined, finite = engine.refine_tensor(pixels)  # (B, H, W[, C]) stored dtype, any device
                                                    # -> same shape and dtype on engine.device,
                                                    #    finite: (B,) bool on engine.device
    result = engine.refine(pixels)                  # NumPy (or a tensor) in, NumPy out:
                                                    # result.pixels, result.finite
    pending = engine.submit(pixels)                 # the same, queued: pending.result()
    y = engine.run_tensor(x)                        # (B, C, H, W) float32 in [-1, 1] on
                                                    # engine.device -> the same shape
    y = engine(x)                                   # the same on NumPy arrays

``refine_tensor`` takes host pixels up through pinned memory without blocking, scales them to
the model range (``engine.json``: ``PixelIO.to_model``), runs the model, checks every sample
for NaN/inf and quantises back to stored pixels, all on the device; a sample whose output is
not finite is flagged and its pixels are zeroed, never handed on as an image. On a CUDA device
each engine runs on its own stream (never the legacy default stream), entered through
``engine.on_device()``.

Batches larger than the profile's maximum are split; any other shape outside the profile, or
the wrong channel count, raises ``EngineMismatch`` before the backend sees it.

An engine whose refiner takes noise (``engine.json``: ``io.noise_channels`` N > 0) is still
called with the C image channels: ``run_tensor`` appends the N channels of seeded noise that the
graph takes (``refinery.noise``, a function of each image's pixels, computed on the device), so
every backend gives the same result for a sample in any batch, as the trained module does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.spec import EngineMismatch, EngineSpec
from refinery.noise import with_noise


@dataclass(frozen=True)
class Refined:
    pixels: np.ndarray  # (B, H, W[, C]) in the stored pixel dtype; zeros where not finite
    finite: np.ndarray  # (B,) bool: False = the engine produced NaN/inf for that sample

    @property
    def bad(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.finite)]


def cuda_index(device: str | torch.device | None) -> int | None:
    """The CUDA ordinal a device string names (``cuda`` is ``cuda:0``), None for the CPU."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return 0 if device.index is None else device.index


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: host -> CUDA goes through pinned memory without blocking
    (torch's caching host allocator reuses the pinned block once the copy has completed)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def to_host(tensor: torch.Tensor, *, wait: bool = True) -> torch.Tensor:
    """A CPU copy of ``tensor`` through pinned memory, queued on the current stream and
    complete on return (``wait=False``: the caller waits, e.g. on an event); a CPU tensor as
    it is."""
    if tensor.device.type == "cpu":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    if wait:
        torch.cuda.current_stream(tensor.device).synchronize()  # CPU-GPU sync
    return host


@dataclass
class PendingRefined:
    """A refine call whose device work and copies back are queued: ``result()`` waits."""

    pixels: torch.Tensor  # host tensor, complete once `done` has happened
    finite: torch.Tensor
    done: torch.cuda.Event | None = None  # None: computed on the CPU, complete already

    def result(self) -> Refined:
        if self.done is not None:
            self.done.synchronize()  # CPU-GPU sync
        return Refined(self.pixels.numpy(), self.finite.numpy())


class Engine:
    """Base class: subclasses set ``backend`` and ``device`` (``torch.device``; the CPU unless
    they say otherwise) and implement ``_run_tensor`` on one in-profile batch."""

    backend = "?"

    def __init__(self, spec: EngineSpec, engine_dir: str | Path):
        self.spec = spec
        self.engine_dir = Path(engine_dir)
        self.profile = spec.profile  # a TensorRT plan narrows it to the one it was built for
        self.device = torch.device("cpu")
        self.stream = None  # a CUDA engine's own stream (make_stream)

    def _run_tensor(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """(B, C, H, W) float32 on ``self.device``, in profile -> float32 of the same shape."""
        raise NotImplementedError

    def make_stream(self) -> None:
        """Give a CUDA engine its own stream (TensorRT's enqueue on the legacy default stream
        synchronises with every other stream)."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # the current device is per thread; see on_device
            self.stream = torch.cuda.Stream(self.device)

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        """Run the enclosed calls on this engine's device and stream. The stream waits for the
        caller's current stream on entry (inputs made there are ready) and the caller's stream
        waits for it on exit (outputs are ready for whatever the caller does next)."""
        if self.device.type != "cuda" or self.stream is None:
            yield
            return
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(caller)
            try:
                with torch.cuda.stream(self.stream):
                    yield
            finally:
                caller.wait_stream(self.stream)

    def check(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4:
            raise EngineMismatch(f"engine input must be (B, C, H, W), got shape {tuple(shape)}")
        batch, channels, height, width = shape
        problems = self.profile.problems(None, height, width)
        if channels != self.spec.io.channels:
            problems.insert(0, f"{channels} channels (engine takes {self.spec.io.channels})")
        if batch < 1:
            problems.insert(0, "an empty batch")
        if problems:
            raise EngineMismatch(
                f"engine {self.spec.engine_id} ({self.backend}) does not fit: "
                + "; ".join(problems)
            )

    @torch.inference_mode()
    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32 in the model range -> the engine's output, on ``self.device``;
        batches above the profile's maximum run in slices."""
        self.check(tuple(x.shape))
        with self.on_device():
            x = to_device(x, self.device).to(torch.float32)
            x = with_noise(x, self.spec.io.noise_channels)  # per image: slicing cannot change it
            step = self.profile.max.batch
            if len(x) <= step:
                return self._run_tensor(x)
            return torch.cat([self._run_tensor(x[i : i + step]) for i in range(0, len(x), step)])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``run_tensor`` on a host array: (B, C, H, W) float32 -> float32 NumPy."""
        y = self.run_tensor(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return to_host(y).numpy()

    @torch.inference_mode()
    def refine_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W[, C]) stored pixels on any device -> (refined pixels, finite flags), both on
        ``self.device``. Scaling, the finite check and quantisation run on the device."""
        io = self.spec.io
        if pixels.dtype != io.torch_dtype:
            raise EngineMismatch(
                f"engine {self.spec.engine_id} takes {io.pixel_dtype} pixels, "
                f"got {str(pixels.dtype).removeprefix('torch.')}"
            )
        with self.on_device():
            pixels = to_device(pixels, self.device)
            y = self.run_tensor(io.to_model(pixels))  # (B, C, H, W)
            finite = torch.isfinite(y).flatten(1).all(dim=1)  # (B,)
            refined = io.to_pixels(y, finite)
        return refined, finite

    def refine(self, pixels: np.ndarray | torch.Tensor) -> Refined:
        """(B, H, W[, C]) stored pixels (NumPy, or a tensor on any device) -> NumPy pixels of
        the same shape and dtype, with per-sample finite flags: ``refine_tensor`` for host
        callers, with only stored-dtype pixels coming back."""
        return self.submit(pixels).result()

    def submit(self, pixels: np.ndarray | torch.Tensor) -> PendingRefined:
        """``refine`` without waiting for the device: the work and the copies back are queued
        on this engine's stream, so a caller can prepare the next batch meanwhile."""
        if isinstance(pixels, np.ndarray):
            if pixels.dtype != np.dtype(self.spec.io.pixel_dtype):
                raise EngineMismatch(
                    f"engine {self.spec.engine_id} takes {self.spec.io.pixel_dtype} pixels, "
                    f"got {pixels.dtype}"
                )
            pixels = torch.from_numpy(np.ascontiguousarray(pixels))
        with self.on_device():
            refined, finite = (to_host(t, wait=False) for t in self.refine_tensor(pixels))
            done = None
            if self.device.type == "cuda":
                done = torch.cuda.Event()
                done.record(self.stream)
        return PendingRefined(refined, finite, done)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.engine_id} backend={self.backend}>"
