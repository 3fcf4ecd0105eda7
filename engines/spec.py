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
import torch

FORMAT = "refinery-engine"
FORMAT_VERSION = 1
SPEC_FILE = "engine.json"
MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
FP16_FILE = "model.fp16.onnx"
PLAN_FILE = "model.plan"
PIXEL_DTYPES = {"gray8": "uint8", "rgb8": "uint8", "depth16": "uint16"}
TORCH_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16}
DEFAULT_BATCH = 64  # a refine job's --batch, and a TensorRT plan's default max batch
MAX_BATCH = 4096  # the exported graph's batch range (ONNX dims are symbolic; see Profile.for_plan)


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
        """The exported graph's range: batch 1..4096 (opt 64), sizes from 16 px (or less) to 4x
        the training size, tuned for the training size itself. ONNX Runtime and torch allocate
        per call, so a wide range costs nothing; a TensorRT plan narrows it (``for_plan``)."""

        def down(v: int) -> int:
            return max(multiple, v // multiple * multiple)

        return cls(
            Shape(1, down(min(height, 16)), down(min(width, 16))),
            Shape(64, height, width),
            Shape(MAX_BATCH, 4 * height, 4 * width),
            multiple=multiple,
        )

    def for_plan(self, batch: int, *, growth: int = 2) -> Profile:
        """A TensorRT plan's default profile inside this (exported) one: batches up to the job's
        ``batch``, sizes up to ``growth`` x the training size (``opt``), tuned for ``batch`` at
        the training size. A plan's execution context allocates activations for its largest
        shape, so the default stays near what a job runs: the exported 4096 x 4x-size range
        would ask tens of GB for a 1024x2048 generator. Widen it with ``refinery build --batch N``
        or ``--shapes MIN/OPT/MAX``."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        m = self.multiple

        def grown(dim: str) -> int:
            size = min(growth * getattr(self.opt, dim), getattr(self.max, dim))
            return max(getattr(self.opt, dim), size // m * m)

        batch = min(batch, self.max.batch)
        return Profile(
            Shape(self.min.batch, self.min.height, self.min.width),
            Shape(batch, self.opt.height, self.opt.width),
            Shape(batch, grown("height"), grown("width")),
            multiple=m,
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
    # N(0, 1) channels appended to the image's outside the graph (refinery.noise.seeded_noise,
    # a function of the pixels): the graph takes channels + noise_channels, returns channels
    noise_channels: int = 0

    @property
    def graph_channels(self) -> int:
        """Channels of the graph's input: the image's and the noise's."""
        return self.channels + self.noise_channels

    @property
    def pixel_dtype(self) -> str:
        return PIXEL_DTYPES[self.pixel_kind]

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.pixel_dtype]

    def to_model(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(B, H, W[, C]) stored pixels -> (B, C, H, W) float32 in [-1, 1], computed where the
        pixels are (a CUDA tensor stays on its device); NumPy in, NumPy out."""
        if isinstance(pixels, np.ndarray):
            return self.to_model(torch.from_numpy(pixels)).numpy()
        if pixels.ndim == 3:
            pixels = pixels[..., None]
        # the same float32 operations as NumPy's, so CPU results are bit-identical to them (on
        # CUDA torch divides by a scalar as a multiplication by its reciprocal: an ulp at most,
        # far below the half grey level that rounding back to pixels resolves)
        unit = (pixels.to(torch.float32) - self.low) / float(self.high - self.low)
        x = unit.clamp(0.0, 1.0) * 2.0 - 1.0
        return x.permute(0, 3, 1, 2).contiguous()

    def to_pixels(
        self, x: np.ndarray | torch.Tensor, finite: torch.Tensor | None = None
    ) -> np.ndarray | torch.Tensor:
        """(B, C, H, W) model output -> (B, H, W[, C]) pixels in the stored dtype (rounded half
        to even, as ``np.rint``), computed where the output is; NumPy in, NumPy out. Samples
        whose ``finite`` flag is False come out as zeros (never a cast of NaN)."""
        if isinstance(x, np.ndarray):
            return self.to_pixels(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        values = ((x.clamp(-1.0, 1.0) + 1.0) / 2.0 * (self.high - self.low) + self.low).round()
        if finite is not None:  # before the cast: uint16 tensors support little beyond copies
            values = torch.where(finite.view(-1, 1, 1, 1), values, 0.0)
        values = values.permute(0, 2, 3, 1)
        if self.channels == 1:
            values = values[..., 0]
        return values.contiguous().to(self.torch_dtype)


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
