"""Any folder of images → unlabeled real samples of one domain (``refinery ingest images``).

On disk: every ``.png``, ``.jpg`` or ``.jpeg`` file (any case) under the root, at any depth;
hidden files and folders (a name starting with ``.``) and other files are left out. One item is
one file, listed by its path relative to the root (posix), sorted.

Each sample is the image plus a minimal label that says it has none::

    {"__key__": "p00/day01/0001", "png": ..., "json": {"domain": "gaze", "labeled": false,
                                                      "source": "p00/day01/0001.jpg"}}

Keys are the relative path without its extension, ASCII-safe: every character outside
``[A-Za-z0-9_/-]`` becomes ``_``, and where that changed the name a short hash of the original
(the path without extension, UTF-8) is appended, so distinct names stay distinct keys:
``眼.jpg`` -> ``_-<hex8>``, ``目.jpg`` -> ``_-<other hex8>``, ``p00/day01/0001.jpg`` ->
``p00/day01/0001``. The label keeps the original name (``"source"``). Two files that differ
only in their extension (``a.png``, ``a.jpg``) share a key: the ingest driver rejects the
second as a duplicate.

Links are never followed, here as in the refine job (where a link member of a shard is a
reject): a symbolic link in the folder, to an image file or to a folder, is one ``bad-member``
reject that names it and its target, and nothing is read through it. Hidden ones (``.name``)
are left out like any hidden file. The folder given on the command line is opened as given.

Per domain (contract 1, ``refinery.samples``):

- ``gaze``: ``png`` 8-bit grayscale, ``size`` (35, 55) unless given; colour becomes gray
  (OpenCV's BGR2GRAY weights); a 16-bit image is rejected (``malformed``).
- ``hand``: ``depth.png`` 16-bit single channel; anything 8-bit is rejected (``malformed``),
  depth is resized with nearest neighbour only (an average of two depths is a depth that is
  on neither surface).
- ``scene``: ``jpg`` for a JPEG source, ``png`` otherwise, 8-bit RGB; gray becomes RGB, alpha
  is dropped. A 3-channel 8-bit image that needs no resize keeps its bytes exactly.

``size`` (h, w) is the output size; ``None`` (hand, scene default) keeps each image's own.
``crop="center"`` first cuts the largest centred region with the target's aspect ratio, so
nothing is stretched; ``crop="none"`` resizes the whole image (the aspect ratio changes).
Shrinking averages (``INTER_AREA``), enlarging interpolates (``INTER_LINEAR``); depth is
always ``INTER_NEAREST``.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import cv2
import numpy as np

from refinery.formats import Item, register_format
from refinery.formats.unityeyes import check_size, resize
from refinery.samples import (
    BAD_MEMBER,
    DEPTH16,
    DOMAINS,
    GRAY8,
    MALFORMED,
    MISSING,
    RGB8,
    UNDECODABLE,
    SampleError,
    encode_image,
    encode_json,
)

EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_SIZE = {"gaze": (35, 55), "hand": None, "scene": None}
CROPS = ("center", "none")
_UNSAFE = re.compile(r"[^A-Za-z0-9_/-]")


def image_key(relative: str) -> str:
    """The sample key of a file at posix path ``relative``: no extension, ASCII-safe, and a
    short hash of the original name where making it safe changed it (distinct names, distinct
    keys)."""
    stem = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
    safe = _UNSAFE.sub("_", stem)
    if safe == stem:
        return safe
    return f"{safe}-{hashlib.sha256(stem.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The largest centred region of ``image`` with the aspect ratio of ``size`` (h, w)."""
    height, width = image.shape[:2]
    target_h, target_w = size
    if width * target_h > height * target_w:  # wider than the target: cut the sides
        crop_h, crop_w = height, max(1, min(width, round(height * target_w / target_h)))
    else:  # taller: cut top and bottom
        crop_h, crop_w = max(1, min(height, round(width * target_h / target_w))), width
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image[top : top + crop_h, left : left + crop_w]


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


@register_format(
    "images",
    domain=None,
    summary="any folder of PNG/JPEG images → unlabeled real samples of --domain gaze|hand|scene",
)
class Images:
    """Reader over a folder tree of images; see the module docstring."""

    default_shard_size = 1000  # images per shard

    def __init__(
        self,
        root: str,
        *,
        domain: str | None = None,
        size: tuple[int, int] | None = None,
        crop: str = "center",
    ):
        if domain not in DOMAINS:
            raise ValueError(
                f"format 'images' needs a domain, one of {', '.join(DOMAINS)} (got {domain!r})"
            )
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"no image folder {self.root!r}")
        self.domain = domain
        self.size = check_size(size) if size is not None else DEFAULT_SIZE[domain]
        self.crop = crop
        self.resolved = {"size": self.size}  # what the ingest records (the domain's default)

    def items(self) -> list[Item]:
        found = []
        for folder, dirs, files in os.walk(self.root):  # never into a linked folder
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
            images = [f for f in files if f.lower().endswith(EXTENSIONS)]
            for name in links + images:
                if name.startswith("."):
                    continue
                path = os.path.join(folder, name)
                found.append((os.path.relpath(path, self.root).replace(os.sep, "/"), path))
        return [Item(name=relative, paths=(path,)) for relative, path in sorted(found)]

    def convert(self, item: Item) -> list[dict[str, Any]]:
        (path,) = item.paths
        key = image_key(item.name)
        if os.path.islink(path):
            raise SampleError(
                BAD_MEMBER,
                f"{item.name!r} is a symbolic link to {os.readlink(path)!r}; links are never "
                "followed",
                key=key,
                url=path,
            )
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            reason = MISSING if isinstance(exc, FileNotFoundError) else UNDECODABLE
            raise SampleError(
                reason, f"cannot read the file: {exc.strerror or exc}", key=key, url=path
            ) from None
        try:
            name, encoded = self._image(data)
        except SampleError as error:
            error.key, error.url = key, path
            raise
        label = {"domain": self.domain, "labeled": False, "source": item.name}
        return [{"__key__": key, name: encoded, "json": encode_json(label)}]

    def _image(self, data: bytes) -> tuple[str, bytes]:
        """(component name, encoded bytes) of one file's bytes, for this domain."""
        image = _decode(data)
        bits = 16 if image.dtype == np.uint16 else 8 if image.dtype == np.uint8 else None
        channels = 1 if image.ndim == 2 else image.shape[2]
        what = f"{bits or image.dtype}-bit, {channels} channel{'s' if channels != 1 else ''}"
        if self.domain == "hand":
            if bits != 16 or channels != 1:
                raise SampleError(
                    MALFORMED, f"needs 16-bit depth (a single-channel 16-bit PNG), got {what}"
                )
            # (H, W) uint16: nearest only, an averaged depth lies on neither surface
            depth = self._fit(image, interpolation=cv2.INTER_NEAREST)
            return "depth.png", encode_image(depth, DEPTH16)
        if bits != 8:
            raise SampleError(
                MALFORMED, f"{self.domain} needs an 8-bit image, got {what} (convert it first)"
            )
        if self.domain == "gaze":
            gray = image if channels == 1 else _convert(image, channels, to="gray")
            gray = self._fit(gray)  # (h, w) uint8
            return "png", encode_image(gray, GRAY8)
        rgb = image[:, :, ::-1] if channels == 3 else _convert(image, channels, to="rgb")
        fitted = self._fit(np.ascontiguousarray(rgb))  # (h, w, 3) uint8 RGB
        ext = "jpg" if _is_jpeg(data) else "png"
        if channels == 3 and fitted.shape == image.shape:
            return ext, data  # unchanged: the source bytes as they are
        return ext, encode_image(fitted, RGB8, ext=ext)

    def _fit(self, image: np.ndarray, *, interpolation: int | None = None) -> np.ndarray:
        """Crop (``crop="center"``) and resize to ``size``; unchanged when ``size`` is None."""
        if self.size is None or image.shape[:2] == self.size:
            return image
        if self.crop == "center":
            image = np.ascontiguousarray(center_crop(image, self.size))
        if interpolation is None:
            return resize(image, self.size)
        height, width = self.size
        return cv2.resize(image, (width, height), interpolation=interpolation)


def _decode(data: bytes) -> np.ndarray:
    if not data:
        raise SampleError(UNDECODABLE, "not a decodable image (0 bytes)")
    if _is_jpeg(data) and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # some decoders return a half-grey image for a cut JPEG; its end marker is missing
        raise SampleError(
            UNDECODABLE, f"truncated JPEG: no end-of-image marker ({len(data)} bytes)"
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        message = (exc.err or str(exc)).strip()
        raise SampleError(
            UNDECODABLE, f"not a decodable image ({len(data)} bytes): OpenCV: {message}"
        ) from None
    if image is None:
        raise SampleError(UNDECODABLE, f"not a decodable image ({len(data)} bytes)")
    return image


def _convert(image: np.ndarray, channels: int, *, to: str) -> np.ndarray:
    """OpenCV's BGR(A)/gray order → gray or RGB."""
    codes = {
        ("gray", 3): cv2.COLOR_BGR2GRAY,
        ("gray", 4): cv2.COLOR_BGRA2GRAY,
        ("rgb", 1): cv2.COLOR_GRAY2RGB,
        ("rgb", 4): cv2.COLOR_BGRA2RGB,
    }
    if (to, channels) not in codes:
        raise SampleError(MALFORMED, f"cannot make {to} from a {channels}-channel image")
    return cv2.cvtColor(image, codes[(to, channels)])
