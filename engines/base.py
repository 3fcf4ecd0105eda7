"""The one interface every backend implements: a batch of images in, the refined batch out.

``engine(x)`` maps (B, C, H, W) float32 in the model range [-1, 1] to the same shape;
``engine.refine(pixels)`` wraps it with the engine's own pixel scaling (``engine.json``) and
reports, per sample, whether the output was finite: a sample whose output holds a NaN or an
infinity is flagged, never handed on as an image (its pixels are zeroed).

Batches larger than the profile's maximum are split; any other shape outside the profile, or
the wrong channel count, raises ``EngineMismatch`` before the backend sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.spec import EngineMismatch, EngineSpec


@dataclass(frozen=True)
class Refined:
    pixels: np.ndarray  # (B, H, W[, C]) in the stored pixel dtype; zeros where not finite
    finite: np.ndarray  # (B,) bool: False = the engine produced NaN/inf for that sample

    @property
    def bad(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.finite)]


class Engine:
    """Base class: subclasses set ``backend`` and implement ``_run`` on one in-profile batch."""

    backend = "?"

    def __init__(self, spec: EngineSpec, engine_dir: str | Path):
        self.spec = spec
        self.engine_dir = Path(engine_dir)
        self.profile = spec.profile  # a TensorRT plan narrows it to the one it was built for

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, x: np.ndarray) -> None:
        if x.ndim != 4:
            raise EngineMismatch(f"engine input must be (B, C, H, W), got shape {x.shape}")
        batch, channels, height, width = x.shape
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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.check(x)
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self.profile.max.batch
        if len(x) <= step:
            return self._run(x)
        return np.concatenate([self._run(x[i : i + step]) for i in range(0, len(x), step)])

    def refine(self, pixels: np.ndarray) -> Refined:
        """(B, H, W[, C]) stored pixels -> refined pixels of the same shape and dtype."""
        if pixels.dtype != np.dtype(self.spec.io.pixel_dtype):
            raise EngineMismatch(
                f"engine {self.spec.engine_id} takes {self.spec.io.pixel_dtype} pixels, "
                f"got {pixels.dtype}"
            )
        y = self(self.spec.io.to_model(pixels))  # (B, C, H, W)
        finite = np.isfinite(y).reshape(len(y), -1).all(axis=1)
        refined = self.spec.io.to_pixels(np.where(finite[:, None, None, None], y, -1.0))
        refined[~finite] = 0
        return Refined(refined, finite)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.engine_id} backend={self.backend}>"
