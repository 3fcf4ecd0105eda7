"""Street scenes: GTA-V (Playing for Data), SYNTHIA-RAND-CITYSCAPES and Cityscapes, as `scene` samples.

On disk (``root`` is the directory named first in each tree)::

    gta5/        images/NNNNN.png        RGB frame
                 labels/NNNNN.png        palette PNG; the palette *indices* are Cityscapes label ids
    synthia/     RGB/NNNNNNN.png         RGB frame
                 GT/LABELS/NNNNNNN.png   16-bit PNG, class id in the first channel (R), instance
                                         id in the second; OpenCV reads BGR(A), so the class is
                                         channel 2 (DAFormer reads ``[:, :, -1]`` of the 3 channels)
                 Depth/Depth/NNNNNNN.png 16-bit PNG, depth in centimetres in R (the channels repeat
                                         it); CorDA divides by 100 for metres
    cityscapes/  leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
                 gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png   (or _color.png)

Every frame of every tree is an item, complete or not: an image without its label (or a label,
or for SYNTHIA a depth map, without its image) is listed by ``items()`` and ``convert`` raises
``SampleError`` with reason ``missing-component`` naming the missing file.

A sample (contract 1, `scene`):

- ``png``: the frame, the source file's bytes unchanged (checked to decode as 8-bit RGB; an
  opaque RGBA frame loses its alpha and is re-encoded; anything else is rejected). With
  ``size=(H, W)`` the frame is resized (``INTER_AREA`` to shrink, ``INTER_LINEAR`` to enlarge)
  and re-encoded.
- ``seg.png``: 8-bit class ids in the chosen ontology (``refinery.ontology``: cityscapes-19,
  cityscapes-7, synthia-16, synthia-13, sggan-8); labels and depth are only ever resized by
  nearest neighbour.
- the raw ids, so that no label information is lost whatever the ontology:
  ``labelids.png`` (GTA-V, Cityscapes): 8-bit Cityscapes label ids 0..33, 34 = license plate
  (GTA-V's palette index for it), 255 = a value that is no Cityscapes id (reported in the json);
  a Cityscapes labelIds file that already is an 8-bit grey PNG is kept byte for byte.
  ``synthia_ids.png`` (SYNTHIA): 8-bit SYNTHIA class ids 0..22 from the label's first channel
  (the instance channel is not kept); values above 255 are stored as 255 and reported.
- ``depth.png`` (SYNTHIA): 16-bit depth in centimetres, the dataset's own unit (millimetres would
  overflow 16 bits beyond 65 m); the json says ``"depth_unit": "cm"`` like refinery/sim/streets.py.
- ``json``: ``domain``, ``dataset``, ``labeled``, ``ontology``, ``classes`` (names by id),
  ``ignore_index`` (255, or null for sggan-8, which has no ignore label), ``raw_ids``
  (``{"component", "space"}``), ``source`` (file paths relative to the root), and where they
  apply ``split``, ``city``, ``depth_unit``, ``resized_from`` ([H, W]), ``unknown_ids`` /
  ``unknown_colours`` (value -> pixel count for raw values outside the table; those pixels are
  ignore in ``seg.png``).

Cityscapes without labels (``labels="none"``) gives real, unlabeled samples: ``png`` and a
``json`` with ``"labeled": false`` and no ontology. ``labels="color"`` reads the
``_gtFine_color.png`` files instead, matching colours exactly against the Cityscapes table
(SG-GAN's own inputs are these colour files).

Keys: ``gta5-00005``, ``synthia-0000001``, ``cityscapes-aachen_000000_000019`` (file stems;
a dot in a stem becomes ``_``). GTA-V frames whose image and label differ in size (a few do)
are rejected as ``malformed``.

Palette PNGs: OpenCV decodes a palette PNG to its colours, and GTA-V's palette repeats colours
(four void ids are black), so ``png_indices`` rewrites the file in memory with a palette that
maps every index i to the grey (i, i, i) and lets OpenCV decode that; no PIL needed.

References read: cityscapesScripts helpers/labels.py and preparation/json2labelImg.py; DAFormer
tools/convert_datasets/synthia.py (label channel, id table); CorDA data/synthia_dataset.py
(Depth/Depth, cm); DADA dada/dataset/synthia.py; SG-GAN segment_class.py and prepare_data.py.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from refinery import ontology as ont
from refinery.formats import Item, register_format
from refinery.samples import (
    DEPTH16,
    MALFORMED,
    MISSING,
    RGB8,
    SEG8,
    UNDECODABLE,
    SampleError,
    encode_image,
    encode_json,
    imdecode,
)

IMAGE, LABEL, DEPTH = "image", "label", "depth"  # the parts of a frame
COMPONENT = {IMAGE: "png", LABEL: "seg.png", DEPTH: "depth.png"}  # part -> sample component
LABEL_MODES = ("labelIds", "color", "none")  # Cityscapes ``labels=``
SYNTHIA_DIRS = {IMAGE: "RGB", LABEL: "GT/LABELS", DEPTH: "Depth/Depth"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- reading files ----------------------------------------------------------------------------


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data.startswith(_PNG_SIGNATURE):
        raise SampleError(UNDECODABLE, "not a PNG file")
    chunks, pos = [], len(_PNG_SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            raise SampleError(UNDECODABLE, "truncated PNG")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, end = data[pos + 4 : pos + 8], pos + 12 + length
        if end > len(data):
            raise SampleError(UNDECODABLE, f"truncated PNG ({kind!r} chunk)")
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos = end
        if kind == b"IEND":
            break
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise SampleError(UNDECODABLE, "PNG without a valid IHDR chunk")
    return chunks


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _is_grey8(data: bytes) -> bool:
    """An 8-bit greyscale PNG (colour type 0): OpenCV reads its values as they are."""
    ihdr = _chunks(data)[0][1]
    return ihdr[8] == 8 and ihdr[9] == 0


def png_indices(data: bytes) -> np.ndarray:
    """The stored values of a single-channel PNG of <= 8 bits, palette or grey, as (H, W) uint8.

    The file is rewritten as a palette PNG whose palette maps index i to the grey (i, i, i):
    IHDR colour type 3, a 2**bit_depth-entry PLTE, IDAT and IEND kept, ancillary chunks (tRNS,
    gAMA, sRGB, bKGD, ...) dropped. Grey PNGs of <= 8 bits store pixels exactly like palette
    PNGs, so they go the same way (OpenCV itself would scale 1/2/4-bit grey to 0..255).
    """
    chunks = _chunks(data)
    ihdr = chunks[0][1]
    bit_depth, colour_type = ihdr[8], ihdr[9]
    if colour_type not in (0, 3):
        what = {2: "RGB", 4: "grey+alpha", 6: "RGBA"}.get(colour_type, f"type {colour_type}")
        raise SampleError(
            MALFORMED,
            f"expected a palette or greyscale PNG of label ids, got a {what} PNG "
            "(a colour label? Cityscapes: labels='color')",
        )
    if bit_depth > 8:
        raise SampleError(MALFORMED, f"expected label ids of <= 8 bits, got {bit_depth}-bit PNG")
    grey = np.repeat(np.arange(1 << bit_depth, dtype=np.uint8), 3).tobytes()
    out = [_PNG_SIGNATURE, _chunk(b"IHDR", ihdr[:9] + b"\x03" + ihdr[10:]), _chunk(b"PLTE", grey)]
    out += [_chunk(kind, body) for kind, body in chunks[1:] if kind in (b"IDAT", b"IEND")]
    array = imdecode(b"".join(out), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise SampleError(UNDECODABLE, "OpenCV could not decode the PNG's pixel data")
    return np.ascontiguousarray(array[:, :, 0] if array.ndim == 3 else array)  # (H, W)


def _imdecode(data: bytes) -> np.ndarray:
    array = imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise SampleError(UNDECODABLE, f"not a decodable image ({len(data)} bytes)")
    return array


def _rgb(data: bytes) -> tuple[np.ndarray, bool]:
    """(H, W, 3) RGB of an 8-bit frame, and whether the bytes must be re-encoded to be RGB8."""
    bgr = _imdecode(data)
    channels = bgr.shape[2] if bgr.ndim == 3 else 1
    opaque = channels == 4 and bool((bgr[:, :, 3] == 255).all())
    if bgr.dtype != np.uint8 or not (channels == 3 or opaque):
        raise SampleError(
            MALFORMED,
            f"expected an 8-bit RGB image, got {channels} channel(s) of {bgr.dtype}"
            + (" with transparency" if channels == 4 else ""),
        )
    return cv2.cvtColor(bgr[:, :, :3], cv2.COLOR_BGR2RGB), channels == 4


def _colour_label(data: bytes) -> np.ndarray:
    """(H, W, 3) RGB of a colour label (RGBA or RGB, 8-bit; alpha dropped as SG-GAN does)."""
    bgr = _imdecode(data)
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] not in (3, 4):
        raise SampleError(MALFORMED, f"expected an 8-bit colour label, got {bgr.shape} {bgr.dtype}")
    return np.ascontiguousarray(bgr[:, :, 2::-1])


def _first_channel(data: bytes, *, what: str, need16: bool) -> np.ndarray:
    """SYNTHIA's R channel: index 2 of OpenCV's BGR(A); a single-channel file as it is."""
    array = _imdecode(data)
    if array.ndim == 3:
        if array.shape[2] not in (3, 4):
            raise SampleError(MALFORMED, f"{what}: unexpected {array.shape[2]} channels")
        array = array[:, :, 2]
    if array.dtype not in (np.uint8, np.uint16) or (need16 and array.dtype != np.uint16):
        raise SampleError(MALFORMED, f"{what}: expected a 16-bit PNG, got {array.dtype}")
    return np.ascontiguousarray(array)  # (H, W)


# -- options ----------------------------------------------------------------------------------


def _size(size: Any) -> tuple[int, int] | None:
    """``size`` as (H, W); also accepts "HxW" (e.g. "512x1024") for command lines."""
    if size is None:
        return None
    if isinstance(size, str):
        size = re.split(r"[x,]", size.strip())
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W) or 'HxW', got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {(height, width)}")
    return height, width


def _key(dataset: str, stem: str) -> str:
    return f"{dataset}-{stem.replace('.', '_')}"


def _pngs(directory: str, suffix: str = ".png") -> dict[str, str]:
    """{stem: path} of the files in ``directory`` ending with ``suffix`` (none if absent)."""
    if not os.path.isdir(directory):
        return {}
    return {
        entry.name[: -len(suffix)]: entry.path
        for entry in os.scandir(directory)
        if entry.name.endswith(suffix) and entry.is_file()
    }


def _require_dirs(dataset: str, root: str, dirs: Sequence[str], hint: str) -> None:
    for directory in dirs:
        if not os.path.isdir(os.path.join(root, directory)):
            raise FileNotFoundError(f"{dataset}: no {directory}/ under {root!r}; {hint}")


@dataclass(frozen=True)
class _Frame:
    """One frame: each part's expected path and whether it was there when listed."""

    key: str
    parts: tuple[tuple[str, str, bool], ...]  # (part, path, exists)
    extra: tuple[tuple[str, str], ...] = ()  # json fields (split, city)

    def path(self, part: str) -> str | None:
        return next((p for name, p, _ in self.parts if name == part), None)


def _frames(
    dataset: str, stems: dict[str, dict[str, str]], expected: dict[str, str], extra=()
) -> list[Item]:
    """Items for the union of stems over the parts; ``expected`` gives each part's path pattern."""
    items = []
    for stem in sorted(set().union(*stems.values())):
        parts = tuple(
            (part, stems[part].get(stem) or expected[part].format(stem=stem), stem in stems[part])
            for part in stems
        )
        frame = _Frame(_key(dataset, stem), parts, tuple(extra))
        items.append(Item(name=stem, paths=tuple(p for _, p, _ in parts), data=frame))
    return items


# -- the readers ------------------------------------------------------------------------------


class _Scenes:
    """What the three readers share: checks, resizing, and the sample they write."""

    dataset = ""
    space = "cityscapes"  # raw id space of the label files
    raw_component = "labelids.png"

    def __init__(self, root: str, *, ontology: str = "cityscapes-19", size: Any = None):
        self.root = os.fspath(root)
        self.ontology = ont.get(ontology)
        self.size = _size(size)

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def convert(self, item: Item) -> list[dict[str, Any]]:
        frame: _Frame = item.data
        for part, path, exists in frame.parts:
            if not exists:
                have = [self._relative(p) for _, p, ok in frame.parts if ok]
                raise SampleError(
                    MISSING,
                    f"{self._relative(path)} is missing (have: {', '.join(have)})",
                    key=frame.key,
                    component=COMPONENT[part],
                    url=path,
                )
        sample: dict[str, Any] = {"__key__": frame.key}
        label: dict[str, Any] = {"domain": "scene", "dataset": self.dataset}
        label.update(frame.extra)
        label["source"] = {part: self._relative(path) for part, path, _ in frame.parts}
        current = IMAGE
        try:
            data = self._read(frame.path(IMAGE))
            rgb, reencode = _rgb(data)
            native = rgb.shape[:2]
            resize = self.size is not None and self.size != native
            if resize:
                label["resized_from"] = list(native)
                rgb = _resize(rgb, self.size, image=True)
            sample["png"] = encode_image(rgb, RGB8) if resize or reencode else data
            current = LABEL
            if frame.path(LABEL) is not None:
                self._labels(frame, native, resize, sample, label)
            else:
                label["labeled"] = False
            current = DEPTH
            if frame.path(DEPTH) is not None:
                depth = _first_channel(self._read(frame.path(DEPTH)), what="depth", need16=True)
                _check_size(depth, native, DEPTH)
                sample["depth.png"] = encode_image(_resize(depth, self.size), DEPTH16)
                label["depth_unit"] = "cm"
        except SampleError as error:
            error.key = frame.key
            if error.component is None:
                error.component = COMPONENT[current]
            raise error.with_url(frame.path(current)) from None
        sample["json"] = encode_json(label)
        return [sample]

    def _read(self, path: str) -> bytes:
        try:
            with open(path, "rb") as file:
                return file.read()
        except FileNotFoundError:
            raise SampleError(MISSING, f"{self._relative(path)} disappeared") from None
        except OSError as exc:
            raise SampleError(UNDECODABLE, f"cannot read: {exc}") from None

    def _raw_ids(self, data: bytes) -> tuple[np.ndarray, bool, dict[str, Any]]:
        """(raw ids (H, W), whether ``data`` can be stored as the raw component as it is, extra
        json fields). GTA-V and Cityscapes labelIds: palette/grey PNG indices."""
        return png_indices(data), _is_grey8(data), {}

    def _labels(self, frame, native, resize, sample, label) -> None:
        data = self._read(frame.path(LABEL))
        ids, keep_bytes, extra = self._raw_ids(data)
        _check_size(ids, native, LABEL)
        unknown = ont.unknown_ids(ids, self.space)
        if ids.dtype != np.uint8:
            ids = np.minimum(ids, ont.UNKNOWN_ID).astype(np.uint8)  # values > 255: reported
        ids = _resize(ids, self.size)
        sample["seg.png"] = encode_image(
            ont.map_ids(ids, self.ontology.name, source=self.space), SEG8
        )
        sample[self.raw_component] = data if keep_bytes and not resize else encode_image(ids, SEG8)
        label.update(
            labeled=True,
            ontology=self.ontology.name,
            classes=list(self.ontology.classes),
            ignore_index=self.ontology.ignore_index,
            raw_ids={"component": self.raw_component, "space": self.space},
        )
        label.update(extra)
        if unknown:
            label["unknown_ids"] = {str(v): n for v, n in unknown.items()}


def _check_size(array: np.ndarray, native: tuple[int, int], part: str) -> None:
    if array.shape[:2] != native:
        raise SampleError(
            MALFORMED,
            f"{part} is {array.shape[1]}x{array.shape[0]}, the image {native[1]}x{native[0]}",
            component=COMPONENT[part],
        )


def _resize(array: np.ndarray, size: tuple[int, int] | None, *, image: bool = False):
    """Resize to (H, W): images by area (shrinking) or bilinear; labels and depth by nearest."""
    if size is None or array.shape[:2] == size:
        return array
    height, width = size
    if image:
        shrink = height <= array.shape[0] and width <= array.shape[1]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    else:
        interpolation = cv2.INTER_NEAREST
    return cv2.resize(array, (width, height), interpolation=interpolation)


@register_format(
    "gta5",
    domain="scene",
    summary="GTA-V / Playing for Data: images/N.png + labels/N.png (palette = Cityscapes ids)",
)
class GTA5(_Scenes):
    """GTA-V frames and labels; see the module docstring. ``size``: optional (H, W) resize."""

    dataset = "gta5"

    def __init__(self, root: str, *, ontology: str = "cityscapes-19", size: Any = None):
        super().__init__(root, ontology=ontology, size=size)
        _require_dirs("gta5", self.root, ("images", "labels"), "expected images/ and labels/")

    def items(self) -> list[Item]:
        images, labels = (os.path.join(self.root, d) for d in ("images", "labels"))
        return _frames(
            self.dataset,
            {IMAGE: _pngs(images), LABEL: _pngs(labels)},
            {IMAGE: os.path.join(images, "{stem}.png"), LABEL: os.path.join(labels, "{stem}.png")},
        )


@register_format(
    "synthia",
    domain="scene",
    summary="SYNTHIA-RAND-CITYSCAPES: RGB/, GT/LABELS/ (16-bit, id in R), Depth/Depth/ (cm)",
)
class Synthia(_Scenes):
    """SYNTHIA-RAND-CITYSCAPES frames, labels and depth (privileged information); see the
    module docstring. ``depth=False`` ingests without depth; ``size``: optional (H, W)."""

    dataset = "synthia"
    space = "synthia"
    raw_component = "synthia_ids.png"

    def __init__(
        self, root: str, *, ontology: str = "cityscapes-19", size: Any = None, depth: bool = True
    ):
        super().__init__(root, ontology=ontology, size=size)
        if not isinstance(depth, bool):
            raise ValueError(f"depth must be True or False, got {depth!r}")
        self.parts = (IMAGE, LABEL, DEPTH) if depth else (IMAGE, LABEL)
        _require_dirs(
            "synthia",
            self.root,
            [SYNTHIA_DIRS[p] for p in self.parts],
            "expected SYNTHIA-RAND-CITYSCAPES' RGB/, GT/LABELS/ and Depth/Depth/"
            + (" (depth=False ingests without depth)" if depth else ""),
        )

    def items(self) -> list[Item]:
        dirs = {p: os.path.join(self.root, *SYNTHIA_DIRS[p].split("/")) for p in self.parts}
        return _frames(
            self.dataset,
            {p: _pngs(d) for p, d in dirs.items()},
            {p: os.path.join(d, "{stem}.png") for p, d in dirs.items()},
        )

    def _raw_ids(self, data: bytes) -> tuple[np.ndarray, bool, dict[str, Any]]:
        return _first_channel(data, what="label", need16=False), False, {}


@register_format(
    "cityscapes",
    domain="scene",
    summary="Cityscapes: leftImg8bit/{split}/{city}/*.png [+ gtFine *_labelIds.png or *_color.png]",
)
class Cityscapes(_Scenes):
    """Cityscapes frames with fine labels (``labels="labelIds"``, the default, or ``"color"``)
    or without (``labels="none"``: real, unlabeled samples). ``split``: None for every split
    under leftImg8bit/, or one name ("train", "val", "test", ...). ``size``: optional (H, W)."""

    dataset = "cityscapes"

    def __init__(
        self,
        root: str,
        *,
        ontology: str = "cityscapes-19",
        size: Any = None,
        split: str | None = None,
        labels: str = "labelIds",
    ):
        super().__init__(root, ontology=ontology, size=size)
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
        self.labels = labels
        need = ["leftImg8bit"] + (["gtFine"] if labels != "none" else [])
        _require_dirs("cityscapes", self.root, need, "pass labels='none' for images only")
        found = sorted(e.name for e in os.scandir(self._dir("leftImg8bit")) if e.is_dir())
        if split is not None and split not in found:
            raise FileNotFoundError(
                f"cityscapes: no split {split!r} under leftImg8bit/ (found: {', '.join(found)})"
            )
        self.splits = [split] if split is not None else found

    def _dir(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def items(self) -> list[Item]:
        suffix = f"_gtFine_{self.labels}.png"
        items = []
        for split in self.splits:
            images = self._dir("leftImg8bit", split)
            labels = self._dir("gtFine", split)
            cities = {e.name for e in os.scandir(images) if e.is_dir()}
            if self.labels != "none" and os.path.isdir(labels):
                cities |= {e.name for e in os.scandir(labels) if e.is_dir()}
            for city in sorted(cities):
                parts = {IMAGE: _pngs(os.path.join(images, city), "_leftImg8bit.png")}
                expected = {IMAGE: os.path.join(images, city, "{stem}_leftImg8bit.png")}
                if self.labels != "none":
                    parts[LABEL] = _pngs(os.path.join(labels, city), suffix)
                    expected[LABEL] = os.path.join(labels, city, "{stem}" + suffix)
                extra = (("split", split), ("city", city))
                for item in _frames(self.dataset, parts, expected, extra):
                    items.append(Item(f"{split}/{city}/{item.name}", item.paths, item.data))
        return items

    def _raw_ids(self, data: bytes) -> tuple[np.ndarray, bool, dict[str, Any]]:
        if self.labels == "labelIds":
            return super()._raw_ids(data)
        ids, unknown = ont.cityscapes_ids_from_colours(_colour_label(data))
        extra: dict[str, Any] = {}
        if unknown:
            extra["unknown_colours"] = {",".join(map(str, c)): n for c, n in unknown.items()}
        return ids, False, extra
