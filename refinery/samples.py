"""Contract 1: what a sample is, per domain, and how each component maps to and from bytes.

A sample is a dict in WebDataset form: ``"__key__"`` plus one entry per component, named by
the component's extension in the tar (``"png"``, ``"depth.png"``, ``"seg.png"``, ``"json"``).
On disk every component is bytes; decoded, images are numpy arrays and labels are dicts.

| domain  | image component        | labels (never modified)            | optional                    |
|---------|------------------------|------------------------------------|-----------------------------|
| `gaze`  | `png` 8-bit grayscale  | `json` (gaze, look_vec, ...)       |                             |
| `hand`  | `depth.png` uint16 mm  | `json` (joints_uvd, ...)           |                             |
| `scene` | `jpg` or `png` RGB     | `seg.png` uint8 ids, `json`        | `depth.png` uint16          |

Real images are unlabeled by nature. An unlabeled sample's ``json`` says ``"labeled": false``
(and where the image came from: ``refinery ingest images`` writes ``{"domain", "labeled":
false, "source"}``) and needs no label fields; readers of a real pool (``labels=False``) also
take a sample that is its image alone. A labeled set (what the refine job reads) needs the
``json`` and the labels in it: ``label_problem`` checks a raw sample as ``decode_sample`` (and
so ``refinery inspect``) does, and refuses ``"labeled": false`` there.

Every domain may also carry `orig.<image ext>` (the unrefined image, kept by the refine job)
and `refinery.json` (provenance). Components this module does not know stay bytes: nothing is
ever unpickled and no string from a label is evaluated.

Decoding is strict: an 8-bit PNG in a depth slot, a colour or palette PNG in a seg slot, or a
label without its required fields is an error that names the key, the component and the reason,
because each of those is a silent label corruption if let through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import orjson

DOMAINS = ("gaze", "hand", "scene")

# Reasons a sample is rejected; every report counts rejects under one of these.
MISSING = "missing-component"
UNDECODABLE = "undecodable"
MALFORMED = "malformed"
TRUNCATED = "truncated-tar"
DUPLICATE = "duplicate-key"
BAD_MEMBER = "bad-member"
UNREADABLE = "unreadable-shard"
BAD_KEY = "bad-key"  # a key that is not a safe relative path (``../x``, ``/abs``, a newline)
REASONS = (MISSING, UNDECODABLE, MALFORMED, TRUNCATED, DUPLICATE, BAD_MEMBER, UNREADABLE, BAD_KEY)

# Component kinds: how bytes become values.
GRAY8 = "gray8"  # (H, W) uint8
RGB8 = "rgb8"  # (H, W, 3) uint8, RGB order
DEPTH16 = "depth16"  # (H, W) uint16, lossless 16-bit PNG
SEG8 = "seg8"  # (H, W) uint8 class ids, lossless PNG
JSON = "json"  # dict


class SampleError(Exception):
    """A bad sample: which shard, which key, which component, and why.

    ``reason`` is one of ``REASONS`` (what reports count by); ``detail`` is for people.
    """

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        key: str | None = None,
        component: str | None = None,
        url: str | None = None,
    ):
        self.reason = reason
        self.detail = detail
        self.key = key
        self.component = component
        self.url = url
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [self.url or "<stream>"]
        if self.key is not None:
            where.append(f"key {self.key!r}")
        if self.component is not None:
            where.append(f"component {self.component!r}")
        return f"{', '.join(where)}: {self.reason}: {self.detail}"

    def with_url(self, url: str) -> SampleError:
        if self.url is None:
            self.url = url
        return self

    def __reduce__(self):  # crosses to and from decoding processes whole, not as its message
        return (_sample_error, (self.reason, self.detail, self.key, self.component, self.url))

    def as_record(self) -> dict[str, Any]:
        """JSON-able form for stats files and reject lists."""
        return {
            "url": self.url,
            "key": self.key,
            "component": self.component,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class DomainSpec:
    """Which components make a sample of one domain."""

    name: str
    images: tuple[str, ...]  # accepted image components; exactly one must be present
    image_kind: str
    labels: tuple[str, ...]  # required label components
    optional: tuple[str, ...] = ()

    @property
    def default_image(self) -> str:
        return self.images[0]


SPECS: dict[str, DomainSpec] = {
    "gaze": DomainSpec("gaze", images=("png",), image_kind=GRAY8, labels=("json",)),
    "hand": DomainSpec("hand", images=("depth.png",), image_kind=DEPTH16, labels=("json",)),
    "scene": DomainSpec(
        "scene",
        images=("jpg", "png"),
        image_kind=RGB8,
        labels=("json",),
        # seg.png is required unless json says "labeled": false (real unlabeled scenes);
        # labelids.png / synthia_ids.png keep the dataset's raw class ids (refinery.ontology)
        optional=("seg.png", "depth.png", "labelids.png", "synthia_ids.png"),
    ),
}

PROVENANCE = "refinery.json"


def spec(domain: str) -> DomainSpec:
    try:
        return SPECS[domain]
    except KeyError:
        raise ValueError(
            f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}"
        ) from None


def image_component(sample: Mapping[str, Any], domain: str, key: str | None = None) -> str:
    """The name of the sample's image component (for `scene`, `jpg` or `png`)."""
    found = [name for name in spec(domain).images if name in sample]
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise SampleError(
            MISSING if not found else MALFORMED,
            f"{what} image component; a {domain} sample has exactly one of "
            f"{', '.join(spec(domain).images)} (has: {', '.join(components(sample)) or 'nothing'})",
            key=key if key is not None else sample.get("__key__"),
        )
    return found[0]


def components(sample: Mapping[str, Any]) -> list[str]:
    """Component names in the sample's own order (``__key__``, ``__url__`` ... excluded)."""
    return [k for k in sample if not k.startswith("__")]


def component_kind(domain: str | None, name: str) -> str | None:
    """How a component decodes, or None for components passed through as bytes."""
    base = name[len("orig.") :] if name.startswith("orig.") else name
    if base == "depth.png":
        return DEPTH16
    if base in ("seg.png", "labelids.png", "synthia_ids.png"):
        return SEG8
    if base == "json" or base.endswith(".json"):
        return JSON
    if base in ("png", "jpg", "jpeg"):
        return spec(domain).image_kind if domain is not None else RGB8
    return None


# -- encode -----------------------------------------------------------------------------------

PNG_COMPRESSION = 3  # zlib level: lossless either way; 3 is ~2x faster to write than 9
JPEG_QUALITY = 95


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a JSON label")


def encode_json(obj: Mapping[str, Any]) -> bytes:
    """Deterministic JSON: sorted keys, compact, UTF-8; NaN/inf are refused."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), default=_json_default, allow_nan=False
    ).encode("utf-8")


def encode_image(array: np.ndarray, kind: str, ext: str = "png") -> bytes:
    """Encode an array of the given kind; `ext` is ``png`` or ``jpg`` (8-bit kinds only)."""
    _check_array(array, kind)
    if ext in ("jpg", "jpeg"):
        if kind not in (GRAY8, RGB8):
            raise ValueError(f"{kind} must be stored losslessly as PNG, not JPEG")
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        suffix = ".jpg"
    elif ext == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
        suffix = ".png"
    else:
        raise ValueError(f"unsupported image extension {ext!r}")
    if kind == RGB8:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(array), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {array.shape} {array.dtype} array as {ext}")
    return buf.tobytes()


def encode_component(name: str, value: Any, domain: str | None = None) -> bytes:
    """Bytes for one component; bytes pass through unchanged."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    kind = component_kind(domain, name)
    if kind == JSON:
        return encode_json(value)
    if kind is None:
        raise ValueError(f"component {name!r} has no known encoding; pass bytes")
    return encode_image(np.asarray(value), kind, ext=name.rsplit(".", 1)[-1])


def encode_sample(sample: Mapping[str, Any], domain: str | None = None) -> dict[str, Any]:
    """Encode every non-bytes component, keeping the component order."""
    out: dict[str, Any] = {}
    for name, value in sample.items():
        out[name] = value if name.startswith("__") else encode_component(name, value, domain)
    return out


# -- decode -----------------------------------------------------------------------------------

_EXPECT = {
    GRAY8: "8-bit single-channel image",
    RGB8: "8-bit 3-channel image",
    DEPTH16: "16-bit single-channel PNG (depth in integer units)",
    SEG8: "8-bit single-channel PNG of class ids (no palette, no colour)",
}


def _check_array(array: np.ndarray, kind: str) -> None:
    dtype = np.uint16 if kind == DEPTH16 else np.uint8
    ndim_ok = array.ndim == 3 and array.shape[2] == 3 if kind == RGB8 else array.ndim == 2
    if array.dtype != dtype or not ndim_ok or array.size == 0:
        raise ValueError(
            f"expected {_EXPECT[kind]}, got shape {tuple(array.shape)} dtype {array.dtype}"
        )


def imdecode(data: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray | None:
    """``cv2.imdecode`` that says "cannot decode" one way: None, also for empty bytes (where
    OpenCV raises an assertion error instead), so every reader turns both into one reject
    that names its key."""
    if not data:
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None


def decode_image(data: bytes, kind: str) -> np.ndarray:
    """Decode image bytes of the given kind; raises ValueError (undecodable or wrong kind)."""
    array = imdecode(data)
    if array is None:
        raise Undecodable(f"not a decodable image ({len(data)} bytes)")
    if kind == RGB8 and array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    _check_array(array, kind)
    return array


class Undecodable(ValueError):
    """Bytes that are not an image / JSON at all (reason UNDECODABLE, not MALFORMED)."""


def decode_component(name: str, data: bytes, domain: str | None = None) -> Any:
    """Decode one component's bytes; unknown components are returned as bytes."""
    kind = component_kind(domain, name)
    if kind is None:
        return data
    if kind == JSON:
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Undecodable(f"not UTF-8 JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {type(value).__name__}")
        return value
    return decode_image(data, kind)


def _sample_error(reason, detail, key, component, url) -> SampleError:
    return SampleError(reason, detail, key=key, component=component, url=url)


def decode_or_error(
    sample: Mapping[str, Any], domain: str | None = None, *, labels: bool = True
) -> dict[str, Any] | SampleError:
    """``decode_sample``, or the SampleError it raised (with the sample's shard), as a value."""
    try:
        return decode_sample(sample, domain, labels=labels)
    except SampleError as error:
        return error.with_url(sample.get("__url__", "<stream>"))


def decode_draws(
    draws: list[tuple[Any, Mapping[str, Any]]], domain: str | None = None, *, labels: bool = True
) -> list[tuple[Any, dict[str, Any] | SampleError]]:
    """``[(tag, raw sample)]`` -> ``[(tag, decoded sample, or the SampleError it raised)]``.

    The unit of work of a decoding process (``train.data``): a module without torch, so a
    spawned worker starts in a fraction of a second, and errors come back as values for the
    caller's handler to see in order."""
    return [(tag, decode_or_error(sample, domain, labels=labels)) for tag, sample in draws]


def decode_sample(
    sample: Mapping[str, Any], domain: str | None = None, *, labels: bool = True
) -> dict[str, Any]:
    """Decode every known component and validate the sample; raises SampleError.

    With a domain the sample is checked against that domain's contract (required components,
    label fields, matching sizes); without one, components are decoded by name only. With
    ``labels=False`` (a real pool, unlabeled by nature) a sample may be its image alone; a
    label it does carry is still checked.
    """
    key = sample.get("__key__")
    if domain is not None:
        missing_components(sample, domain, key=key, labels=labels)
    out: dict[str, Any] = {}
    for name, value in sample.items():
        if name.startswith("__"):
            out[name] = value
            continue
        out[name] = decode_or_reject(name, value, domain, key)
    if domain is not None:
        check_labels(out, domain)
    return out


def decode_or_reject(name: str, value: bytes, domain: str | None, key: str | None) -> Any:
    """``decode_component``, its failure raised as the sample's reject: ``undecodable`` for
    bytes that are no image or JSON at all, ``malformed`` for ones that break the contract."""
    try:
        return decode_component(name, value, domain)
    except Undecodable as exc:
        raise SampleError(UNDECODABLE, str(exc), key=key, component=name) from None
    except ValueError as exc:
        raise SampleError(MALFORMED, str(exc), key=key, component=name) from None


def missing_components(
    sample: Mapping[str, Any], domain: str, *, key: str | None = None, labels: bool = True
) -> None:
    """Raise SampleError(MISSING) naming what a sample of `domain` lacks (with
    ``labels=False``, only its image)."""
    image_component(sample, domain, key=key)
    for name in spec(domain).labels if labels else ():
        if name not in sample:
            raise SampleError(
                MISSING,
                f"a {domain} sample needs {name!r} (has: {', '.join(components(sample))})",
                key=key,
                component=name,
            )


def _finite_numbers(value: Any, count: int | None = None) -> bool:
    if not isinstance(value, list | tuple) or (count is not None and len(value) != count):
        return False
    for v in value:  # a loop, not all(<generator>): the job checks every label
        if type(v) is float:
            if not math.isfinite(v):
                return False
        elif type(v) is not int and (
            not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v)
        ):
            return False
    return True


def is_labeled(sample: Mapping[str, Any]) -> bool:
    """Whether a decoded sample carries labels: a ``json`` that does not say
    ``"labeled": false`` (real images are unlabeled by nature: ``refinery ingest images``)."""
    label = sample.get("json")
    return isinstance(label, dict) and label.get("labeled", True) is not False


def _label_problem(label: dict[str, Any], domain: str, *, wanted: str = "expected") -> str | None:
    if "domain" in label and label["domain"] != domain:
        return f"label says domain {label['domain']!r}, {wanted} {domain!r}"
    if "labeled" in label and not isinstance(label["labeled"], bool):
        return f"'labeled' must be true or false, got {label['labeled']!r}"
    if label.get("labeled", True) is False:
        return None  # an unlabeled (real) sample: its json only says so, and where it came from
    if domain == "gaze":
        gaze = label.get("gaze")
        if not isinstance(gaze, dict) or not _finite_numbers(
            [gaze.get("pitch"), gaze.get("yaw")], 2
        ):
            return "'gaze' must be {'pitch': radians, 'yaw': radians} with finite numbers"
        if not _finite_numbers(label.get("look_vec"), 3):
            return "'look_vec' must be 3 finite numbers"
    elif domain == "hand":
        joints = label.get("joints_uvd")
        if (
            not isinstance(joints, list)
            or not joints
            or not all(_finite_numbers(j, 3) for j in joints)
        ):
            return "'joints_uvd' must be a non-empty list of [u, v, d] finite numbers"
        xyz = label.get("joints_xyz")
        if xyz is not None and (
            not isinstance(xyz, list)
            or len(xyz) != len(joints)
            or not all(_finite_numbers(j, 3) for j in xyz)
        ):
            return f"'joints_xyz' must be {len(joints)} [x, y, z] finite numbers like joints_uvd"
    elif domain == "scene":
        if not isinstance(label.get("ontology"), str):
            return "'ontology' must name the id space of seg.png (e.g. 'cityscapes-19')"
    return None


def _label_error(
    label: dict[str, Any],
    sample: Mapping[str, Any],
    domain: str,
    *,
    labeled: bool,
    wanted: str = "expected",
) -> SampleError | None:
    """The label checks of one parsed ``json`` (``label``) of ``sample``: its fields
    (``_label_problem``), a labeled set's refusal of an unlabeled sample, a labeled scene's
    ``seg.png``."""
    key = sample.get("__key__")
    problem = _label_problem(label, domain, wanted=wanted)
    if problem:
        return SampleError(MALFORMED, problem, key=key, component="json")
    unlabeled = label.get("labeled", True) is False
    if unlabeled and labeled:
        return SampleError(
            MISSING,
            'labels required, and the json says "labeled": false (an unlabeled image, as '
            "`refinery ingest images` writes for real pools)",
            key=key,
            component="json",
        )
    if domain == "scene" and "seg.png" not in sample and not unlabeled:
        return SampleError(
            MISSING,
            "a labeled scene sample needs 'seg.png' (unlabeled ones say \"labeled\": false)",
            key=key,
            component="seg.png",
        )
    return None


def _quick_label(data: bytes) -> dict[str, Any] | None:
    """The label parsed by orjson (4x ``json.loads`` on a gaze label, the job's costliest
    check), or None where orjson refuses it or it is not an object. orjson is strict JSON:
    what it parses ``json.loads`` parses to the same values (an integer past 64 bits becomes
    a float, still a number), so a label it passes is passed; anything else takes the
    ``json`` path, whose words the reject keeps."""
    try:
        label = orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return label if isinstance(label, dict) else None


def label_problem(
    sample: Mapping[str, Any], domain: str, *, labeled: bool = True, wanted: str = "expected"
) -> SampleError | None:
    """Why a raw sample (components still bytes) fails its labels, or None: the checks
    ``decode_sample`` applies (and so ``refinery inspect``), with the ``json`` parsed once and
    no image decoded. A ``json`` is required; it must be UTF-8 JSON, an object, of ``domain``,
    with the domain's label fields (a gaze ``{}`` or ``{"domain": "gaze"}`` is ``malformed``).
    ``labeled`` (a labeled set: what the refine job refines) also refuses a sample whose json
    says ``"labeled": false``; ``wanted`` words a foreign domain ("the engine refines")."""
    key = sample.get("__key__")
    if "json" not in sample:
        have = ", ".join(components(sample)) or "nothing"
        detail = f"a {domain} sample needs 'json' (has: {have})"  # as missing_components says
        return SampleError(MISSING, detail, key=key, component="json")
    label = _quick_label(sample["json"])
    if label is not None and _label_error(label, sample, domain, labeled=labeled) is None:
        return None
    try:
        label = decode_component("json", sample["json"], domain)  # the one json.loads
    except Undecodable as exc:
        return SampleError(UNDECODABLE, str(exc), key=key, component="json")
    except ValueError as exc:
        return SampleError(MALFORMED, str(exc), key=key, component="json")
    return _label_error(label, sample, domain, labeled=labeled, wanted=wanted)


def check_labels(sample: Mapping[str, Any], domain: str) -> None:
    """Check a decoded sample's labels (when it has a ``json``: ``_label_error``, as
    ``label_problem`` does on raw bytes) and that its per-pixel components match the image."""
    key = sample.get("__key__")
    if "json" in sample:
        error = _label_error(sample["json"], sample, domain, labeled=False)
        if error is not None:
            raise error
    image_name = image_component(sample, domain, key=key)
    height, width = sample[image_name].shape[:2]
    for name in ("seg.png", "depth.png", "labelids.png", "synthia_ids.png"):
        if name != image_name and name in sample and not isinstance(sample[name], bytes):
            if sample[name].shape[:2] != (height, width):
                raise SampleError(
                    MALFORMED,
                    f"size {sample[name].shape[:2]} differs from the image's {(height, width)}",
                    key=key,
                    component=name,
                )
