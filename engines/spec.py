"""``engine.json``: what an engine directory holds and what data it fits (contract 2).

A job reads this file before it reads any data and refuses an engine that does not fit
(``EngineSpec.check_fits``). Everything a backend needs to turn stored pixels into the graph's
input and back lives here, never in a constant copied into the job (STYLE 4)::

    ENGINE_DIR/engine.json          this spec
    ENGINE_DIR/model.onnx           FP32 graph, dynamic batch/height/width, model range in and out
    ENGINE_DIR/model.safetensors    the generator's weights (the torch backend, the reference)
    ENGINE_DIR/model.fp16.onnx      FP16 graph with FP32 I/O (``refinery build --fp16``)
    ENGINE_DIR/model.plan           a TensorRT plan (``refinery build --backend tensorrt``)

Pixel scaling lives outside the graph, here: ``model = clip((pixel - low) / (high - low), 0, 1)
* 2 - 1`` and back ``pixel = round((clip(model, -1, 1) + 1) / 2 * (high - low) + low)``, the
rule the trainer used (``train.data.Scaling``), with ``low``/``high`` taken from the run.
Keeping the graph in the model's [-1, 1] range makes the parity tolerances (1e-5 FP32, 1e-2
FP16) mean the same thing for 8-bit images and 16-bit depth.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "refinery-engine"
FORMAT_VERSION = 1
SPEC_FILE = "engine.json"
MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
FP16_FILE = "model.fp16.onnx"
PLAN_FILE = "model.plan"
PIXEL_DTYPES = {"gray8": "uint8", "rgb8": "uint8", "depth16": "uint16"}


class EngineError(RuntimeError):
    """An engine cannot be loaded or run as asked (missing backend, provider, artifact)."""


class EngineMismatch(ValueError):
    """An engine does not fit the data (or the machine) it was asked to process."""


@dataclass(frozen=True)
class Shape:
    """One (batch, height, width) point of the optimisation profile; channels are fixed."""

    batch: int
    height: int
    width: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        parts = text.lower().split("x")
        try:
            batch, height, width = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"shape {text!r}: expected BxHxW, e.g. 64x35x55") from None
        if min(batch, height, width) < 1:
            raise ValueError(f"shape {text!r}: every dimension must be at least 1")
        return cls(batch, height, width)

    def __str__(self) -> str:
        return f"{self.batch}x{self.height}x{self.width}"


@dataclass(frozen=True)
class Profile:
    """Dynamic dimensions: every (B, H, W) with min <= dim <= max is accepted; ``opt`` is the
    shape TensorRT tunes for. ``multiple``: H and W must be multiples of it (strided nets)."""

    min: Shape
    opt: Shape
    max: Shape
    multiple: int = 1

    def __post_init__(self) -> None:
        for dim in ("batch", "height", "width"):
            low, mid, high = (getattr(s, dim) for s in (self.min, self.opt, self.max))
            if not low <= mid <= high:
                raise ValueError(f"profile {self}: {dim} must satisfy min <= opt <= max")

    @classmethod
    def parse(cls, text: str, *, multiple: int = 1) -> Profile:
        """``MIN/OPT/MAX`` with each ``BxHxW``: ``1x35x55/64x35x55/256x140x220``."""
        parts = text.split("/")
        if len(parts) != 3:
            raise ValueError(f"shapes {text!r}: expected MIN/OPT/MAX, each BxHxW")
        return cls(*(Shape.parse(p) for p in parts), multiple=multiple)

    @classmethod
    def around(cls, height: int, width: int, *, multiple: int = 1) -> Profile:
        """The default: batch 1..256 (opt 64), sizes from 16 px (or less) to 4x the training
        size, tuned for the training size itself."""

        def down(v: int) -> int:
            return max(multiple, v // multiple * multiple)

        return cls(
            Shape(1, down(min(height, 16)), down(min(width, 16))),
            Shape(64, height, width),
            Shape(256, 4 * height, 4 * width),
            multiple=multiple,
        )

    def __str__(self) -> str:
        return f"{self.min}/{self.opt}/{self.max}"

    def problems(self, batch: int | None, height: int, width: int) -> list[str]:
        found = []
        checks = [("height", height), ("width", width)]
        if batch is not None:
            checks.insert(0, ("batch", batch))
        for dim, value in checks:
            low, high = getattr(self.min, dim), getattr(self.max, dim)
            if not low <= value <= high:
                found.append(f"{dim} {value} is outside the engine's profile [{low}, {high}]")
        for dim, value in checks[-2:]:
            if value % self.multiple:
                found.append(f"{dim} {value} is not a multiple of {self.multiple}")
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "min": asdict(self.min),
            "opt": asdict(self.opt),
            "max": asdict(self.max),
            "multiple": self.multiple,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(
            *(Shape(**data[k]) for k in ("min", "opt", "max")), multiple=data.get("multiple", 1)
        )


@dataclass(frozen=True)
class PixelIO:
    """How stored pixels become the graph's input and its output becomes pixels again."""

    image_component: str  # "png", "depth.png", "jpg"
    pixel_kind: str  # refinery.samples kind: gray8 | rgb8 | depth16
    channels: int
    low: float  # pixel value that maps to model -1
    high: float  # pixel value that maps to model +1
    layout: str = "NCHW"
    model_dtype: str = "float32"
    model_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def pixel_dtype(self) -> str:
        return PIXEL_DTYPES[self.pixel_kind]

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        """(B, H, W[, C]) stored pixels -> (B, C, H, W) float32 in [-1, 1]."""
        if pixels.ndim == 3:
            pixels = pixels[..., None]
        unit = (pixels.astype(np.float32) - self.low) / (self.high - self.low)
        x = np.clip(unit, 0.0, 1.0) * 2.0 - 1.0
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """(B, C, H, W) model output -> (B, H, W[, C]) pixels in the stored dtype (rounded)."""
        values = (np.clip(x, -1.0, 1.0) + 1.0) / 2.0 * (self.high - self.low) + self.low
        values = np.rint(values.transpose(0, 2, 3, 1))
        if self.channels == 1:
            values = values[..., 0]
        return values.astype(self.pixel_dtype)


@dataclass(frozen=True)
class EngineSpec:
    """The parsed ``engine.json``. ``builds`` holds one record per backend artifact."""

    name: str  # registered network name
    method: str  # simgan | sggan | spigan
    domain: str
    io: PixelIO
    profile: Profile
    model: dict[str, Any]  # file, sha256, opset, input, output, exporter
    weights: dict[str, Any]  # file, sha256, network, kwargs
    source: dict[str, Any]  # run, checkpoint, checkpoint_sha256, recipe
    refinery_version: str
    precision: str = "fp32"
    validation: dict[str, Any] = field(default_factory=dict)
    builds: dict[str, Any] = field(default_factory=dict)

    @property
    def engine_hash(self) -> str:
        """The model graph's sha256: what a refined sample's provenance names."""
        return self.model["sha256"]

    @property
    def engine_id(self) -> str:
        return f"{self.name}@{self.engine_hash[:12]}"

    # -- compatibility ----------------------------------------------------------------------

    def check_fits(
        self,
        *,
        domain: str | None = None,
        image_component: str | None = None,
        channels: int | None = None,
        pixel_dtype: str | np.dtype | None = None,
        size: tuple[int, int] | None = None,
        batch: int | None = None,
    ) -> None:
        """Raise ``EngineMismatch`` naming every way the data does not fit this engine."""
        problems = []
        if domain is not None and domain != self.domain:
            problems.append(f"domain {domain!r} (engine refines {self.domain!r})")
        if image_component is not None and image_component != self.io.image_component:
            problems.append(
                f"image component {image_component!r} (engine reads {self.io.image_component!r})"
            )
        if channels is not None and channels != self.io.channels:
            problems.append(f"{channels} channels (engine takes {self.io.channels})")
        if pixel_dtype is not None and np.dtype(pixel_dtype) != np.dtype(self.io.pixel_dtype):
            problems.append(
                f"pixel dtype {np.dtype(pixel_dtype)} (engine takes {self.io.pixel_dtype})"
            )
        if size is not None:
            problems += self.profile.problems(batch, *size)
        if problems:
            raise EngineMismatch(f"engine {self.engine_id} does not fit: " + "; ".join(problems))

    # -- files ------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "profile":
                value = value.as_dict()
            elif f.name == "io":
                value = {**asdict(value), "pixel_dtype": value.pixel_dtype}
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = SPEC_FILE) -> EngineSpec:
        if data.get("format") != FORMAT:
            raise EngineError(
                f"{where}: not a Refinery engine spec (format {data.get('format')!r})"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise EngineError(
                f"{where}: engine format version {data.get('format_version')} is not supported "
                f"(this Refinery reads version {FORMAT_VERSION}); re-export the engine"
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            io = dict(values["io"])
            io.pop("pixel_dtype", None)
            io["model_range"] = tuple(io.get("model_range", (-1.0, 1.0)))
            values["io"] = PixelIO(**io)
            values["profile"] = Profile.from_dict(values["profile"])
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"{where}: malformed engine spec ({exc})") from None

    def with_build(self, backend: str, record: dict[str, Any]) -> EngineSpec:
        return replace(self, builds={**self.builds, backend: record})


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_spec(engine_dir: str | Path) -> EngineSpec:
    path = Path(engine_dir) / SPEC_FILE
    if not path.exists():
        raise EngineError(f"{engine_dir}: no {SPEC_FILE}; is this an engine directory?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EngineError(f"{path}: not valid JSON ({exc})") from None
    return EngineSpec.from_dict(data, where=str(path))


def write_spec(engine_dir: str | Path, spec: EngineSpec) -> Path:
    path = Path(engine_dir) / SPEC_FILE
    write_atomic(path, (json.dumps(spec.as_dict(), indent=2) + "\n").encode())
    return path


def verify_file(engine_dir: str | Path, record: dict[str, Any]) -> Path:
    """The artifact ``record`` names, after checking its sha256 against the spec."""
    path = Path(engine_dir) / record["file"]
    if not path.exists():
        raise EngineError(f"{path}: missing (engine.json lists it)")
    digest = sha256_file(path)
    if digest != record["sha256"]:
        raise EngineMismatch(
            f"{path}: sha256 {digest[:12]}... differs from engine.json's {record['sha256'][:12]}...; "
            "the file was changed after export or build"
        )
    return path
