"""Every class table of the scene domain, and the lookup tables that move label ids between them.

Two *raw id spaces* hold what a dataset writes on disk, and every ontology maps from both:

- ``"cityscapes"``: Cityscapes label ids 0..33 (``CITYSCAPES_LABELS``, the table of
  cityscapesScripts ``helpers/labels.py``), written by Cityscapes' ``*_gtFine_labelIds.png`` and
  by GTA-V (Playing for Data), whose palette PNGs use the same ids as indices. Cityscapes'
  license plate has id -1 and is never drawn (``json2labelImg.py`` skips negative ids); GTA-V's
  palette gives it index 34, so raw id 34 (``LICENSE_PLATE``) means license plate here.
- ``"synthia"``: SYNTHIA-RAND-CITYSCAPES class ids 0..22 (``SYNTHIA_CLASSES``, the table of the
  dataset's README.txt).

An *ontology* is what ``seg.png`` holds (``--ontology`` at ingest chooses it; the raw ids stay in
the sample as well, so nothing is lost). Each one maps both raw spaces:

- ``cityscapes-19``: the 19 train ids (road ... bicycle). From Cityscapes ids: cityscapesScripts'
  trainId. From SYNTHIA: DAFormer ``tools/convert_datasets/synthia.py``, all 19 ids; SYNTHIA has
  no terrain, truck or train pixels, and the methods that keep these ids (DAFormer, HRDA)
  report the mean over the 16 ``SYNTHIA16_TRAIN_IDS`` (and 13 ``SYNTHIA13_TRAIN_IDS``).
- ``cityscapes-7``: flat, construction, object, nature, sky, human, vehicle. From Cityscapes ids:
  categoryId - 1 (void is ignore). From SYNTHIA: DADA ``dada/dataset/synthia.py``'s 7-class table
  exactly, which leaves motorcycle, rider, bus, wall and road-work unmapped (ignore) and puts
  lanemarking in flat.
- ``synthia-16``: the 16 SYNTHIA->Cityscapes classes renumbered 0..15 in train-id order, as
  DADA and CTRL store them (DADA's 16-class table); Cityscapes ids via their train id.
- ``synthia-13``: ``synthia-16`` without wall, fence and pole, renumbered 0..12.
- ``sggan-8``: other, vehicle, pedestrian, cyclist, road, building, sky, tree. From Cityscapes
  ids: SG-GAN ``segment_class.py``'s colour table applied to each id's colour (SG-GAN builds its
  class maps from colour images, so this reproduces them pixel for pixel). From SYNTHIA (ours;
  SG-GAN never used SYNTHIA): SYNTHIA id -> train id -> that class's colour -> SG-GAN's table.

Pixels without a class get ``IGNORE`` (255, cityscapesScripts' ignore train id), except in
``sggan-8``: SG-GAN has no ignore label (its map is a ``defaultdict(int)``), so everything it
does not list is 0, "other", exactly as in SG-GAN's own class maps.

Raw values outside a space (an unknown id, a colour not in the Cityscapes table) map to the
ontology's "no class" value and are counted by ``unknown_ids`` / ``cityscapes_ids_from_colours``
so that readers report them. All mapping is table lookup (``np.take`` over a 256-entry LUT, or a
2**24-entry LUT for colours); nothing loops over pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

IGNORE = 255  # "no class" in every seg.png written here (cityscapesScripts' ignore trainId)
UNKNOWN_ID = 255  # a raw id that is in neither raw id space; never a valid raw id
SOURCES = ("cityscapes", "synthia")  # the raw id spaces


@dataclass(frozen=True)
class CityscapesLabel:
    """One row of cityscapesScripts ``labels.py`` (same fields, snake_case)."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    colour: tuple[int, int, int]  # RGB


# mcordts/cityscapesScripts : cityscapesscripts/helpers/labels.py (ids 0..33 and -1).
# fmt: off
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = tuple(CityscapesLabel(*row) for row in (
    # name                    id  trainId  category       catId  inst   ignore  colour
    ("unlabeled",              0,  255,  "void",           0,  False, True,  (  0,   0,   0)),
    ("ego vehicle",            1,  255,  "void",           0,  False, True,  (  0,   0,   0)),
    ("rectification border",   2,  255,  "void",           0,  False, True,  (  0,   0,   0)),
    ("out of roi",             3,  255,  "void",           0,  False, True,  (  0,   0,   0)),
    ("static",                 4,  255,  "void",           0,  False, True,  (  0,   0,   0)),
    ("dynamic",                5,  255,  "void",           0,  False, True,  (111,  74,   0)),
    ("ground",                 6,  255,  "void",           0,  False, True,  ( 81,   0,  81)),
    ("road",                   7,    0,  "flat",           1,  False, False, (128,  64, 128)),
    ("sidewalk",               8,    1,  "flat",           1,  False, False, (244,  35, 232)),
    ("parking",                9,  255,  "flat",           1,  False, True,  (250, 170, 160)),
    ("rail track",            10,  255,  "flat",           1,  False, True,  (230, 150, 140)),
    ("building",              11,    2,  "construction",   2,  False, False, ( 70,  70,  70)),
    ("wall",                  12,    3,  "construction",   2,  False, False, (102, 102, 156)),
    ("fence",                 13,    4,  "construction",   2,  False, False, (190, 153, 153)),
    ("guard rail",            14,  255,  "construction",   2,  False, True,  (180, 165, 180)),
    ("bridge",                15,  255,  "construction",   2,  False, True,  (150, 100, 100)),
    ("tunnel",                16,  255,  "construction",   2,  False, True,  (150, 120,  90)),
    ("pole",                  17,    5,  "object",         3,  False, False, (153, 153, 153)),
    ("polegroup",             18,  255,  "object",         3,  False, True,  (153, 153, 153)),
    ("traffic light",         19,    6,  "object",         3,  False, False, (250, 170,  30)),
    ("traffic sign",          20,    7,  "object",         3,  False, False, (220, 220,   0)),
    ("vegetation",            21,    8,  "nature",         4,  False, False, (107, 142,  35)),
    ("terrain",               22,    9,  "nature",         4,  False, False, (152, 251, 152)),
    ("sky",                   23,   10,  "sky",            5,  False, False, ( 70, 130, 180)),
    ("person",                24,   11,  "human",          6,  True,  False, (220,  20,  60)),
    ("rider",                 25,   12,  "human",          6,  True,  False, (255,   0,   0)),
    ("car",                   26,   13,  "vehicle",        7,  True,  False, (  0,   0, 142)),
    ("truck",                 27,   14,  "vehicle",        7,  True,  False, (  0,   0,  70)),
    ("bus",                   28,   15,  "vehicle",        7,  True,  False, (  0,  60, 100)),
    ("caravan",               29,  255,  "vehicle",        7,  True,  True,  (  0,   0,  90)),
    ("trailer",               30,  255,  "vehicle",        7,  True,  True,  (  0,   0, 110)),
    ("train",                 31,   16,  "vehicle",        7,  True,  False, (  0,  80, 100)),
    ("motorcycle",            32,   17,  "vehicle",        7,  True,  False, (  0,   0, 230)),
    ("bicycle",               33,   18,  "vehicle",        7,  True,  False, (119,  11,  32)),
    ("license plate",         -1,   -1,  "vehicle",        7,  False, True,  (  0,   0, 142)),
))
# fmt: on
LICENSE_PLATE = 34  # raw id of the license plate (GTA-V's palette index; Cityscapes draws none)
CITYSCAPES_RAW_IDS = 35  # raw Cityscapes ids are 0..34


def raw_id(label: CityscapesLabel) -> int:
    """The value a label has in a raw Cityscapes id array (license plate: ``LICENSE_PLATE``)."""
    return LICENSE_PLATE if label.id < 0 else label.id


def _has_train_id(label: CityscapesLabel) -> bool:
    return 0 <= label.train_id < IGNORE


# The 19 train ids, in order; refinery/sim/streets.py CLASSES and refinery/sheets.py
# CITYSCAPES_COLOURS hold the same names and colours (tests/test_ontology.py checks they agree).
TRAIN_LABELS = tuple(sorted(filter(_has_train_id, CITYSCAPES_LABELS), key=lambda x: x.train_id))
TRAIN_NAMES = tuple(label.name for label in TRAIN_LABELS)
TRAIN_COLOURS = tuple(label.colour for label in TRAIN_LABELS)
CATEGORIES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")  # catId 1..7

# SYNTHIA-RAND-CITYSCAPES README.txt class table (ids 0..22), as copied into
# SysCV/CTRL ctrl/dataset/synthia*.py; names lower-cased.
SYNTHIA_CLASSES = (
    "void", "sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car",
    "traffic sign", "pedestrian", "bicycle", "motorcycle", "parking-slot", "road-work",
    "traffic light", "terrain", "rider", "truck", "bus", "train", "wall", "lanemarking",
)  # fmt: skip

# lhoyer/DAFormer : tools/convert_datasets/synthia.py id_to_trainid (SYNTHIA id -> train id);
# 16 (terrain), 18 (truck), 20 (train) are mapped there with the note "not present in synthia".
SYNTHIA_TO_TRAIN = MappingProxyType({
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
    8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
})  # fmt: skip
# The 16- and 13-class SYNTHIA->Cityscapes protocols as train ids: the mIoU16 / mIoU13 index
# lists of the UDA evaluation scripts (the same lists recur across repositories). 16 drops
# terrain, truck, train; 13 also drops wall, fence, pole.
SYNTHIA16_TRAIN_IDS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA13_TRAIN_IDS = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
# valeoai/DADA : dada/dataset/synthia.py, num_classes == 7 (SYNTHIA id -> 7-class id).
SYNTHIA_TO_7 = MappingProxyType({
    1: 4, 2: 1, 3: 0, 4: 0, 5: 1, 6: 3, 7: 2, 8: 6, 9: 2, 10: 5, 11: 6, 15: 2, 22: 0,
})  # fmt: skip

# Peilun-Li/SG-GAN : segment_class.py cityscape(): RGB colour -> group; every other colour is 0.
SGGAN_GROUPS = ("other", "vehicle", "pedestrian", "cyclist", "road", "building", "sky", "tree")
SGGAN_COLOURS = MappingProxyType({
    (128, 64, 128): 4, (244, 35, 232): 4, (250, 170, 160): 4, (230, 150, 140): 4,
    (70, 70, 70): 5, (102, 102, 156): 5, (190, 153, 153): 5, (180, 165, 180): 5,
    (150, 100, 100): 5, (150, 120, 90): 5, (107, 142, 35): 7, (70, 130, 180): 6,
    (220, 20, 60): 2, (255, 0, 0): 2, (0, 0, 142): 1, (0, 0, 70): 1, (0, 60, 100): 1,
    (0, 0, 90): 1, (0, 0, 110): 1, (0, 0, 230): 3, (119, 11, 32): 3,
})  # fmt: skip


@dataclass(frozen=True, eq=False)
class Ontology:
    """An id space for ``seg.png``: class names by id and a LUT from each raw id space."""

    name: str
    classes: tuple[str, ...]  # classes[k] is the name of id k
    ignore_index: int | None  # the "no class" id, None where every pixel has a class
    luts: MappingProxyType[str, np.ndarray]  # source -> (256,) uint8, read-only
    reference: str

    @property
    def unknown(self) -> int:
        """The id that raw ids without a class (and unknown raw values) map to."""
        return self.ignore_index if self.ignore_index is not None else 0


def _lut(pairs: dict[int, int], default: int) -> np.ndarray:
    lut = np.full(256, default, np.uint8)
    for src, dst in pairs.items():
        lut[src] = dst
    lut.setflags(write=False)
    return lut


def _compact(train_ids: tuple[int, ...], lut: np.ndarray) -> np.ndarray:
    """Renumber a train-id LUT to 0..len(train_ids)-1; train ids not listed become IGNORE."""
    renumber = np.full(256, IGNORE, np.uint8)
    renumber[list(train_ids)] = np.arange(len(train_ids))
    out = renumber[lut]
    out.setflags(write=False)
    return out


def _build() -> dict[str, Ontology]:
    labels = {raw_id(label): label for label in CITYSCAPES_LABELS}
    city_train = _lut({i: lab.train_id for i, lab in labels.items() if _has_train_id(lab)}, IGNORE)
    synthia_train = _lut(dict(SYNTHIA_TO_TRAIN), IGNORE)
    city_categories = _lut(
        {i: lab.category_id - 1 for i, lab in labels.items() if lab.category_id > 0}, IGNORE
    )
    city_sggan = _lut({i: SGGAN_COLOURS.get(lab.colour, 0) for i, lab in labels.items()}, 0)
    synthia_sggan = _lut(
        {s: SGGAN_COLOURS.get(TRAIN_COLOURS[t], 0) for s, t in SYNTHIA_TO_TRAIN.items()}, 0
    )
    names16 = tuple(TRAIN_NAMES[t] for t in SYNTHIA16_TRAIN_IDS)
    names13 = tuple(TRAIN_NAMES[t] for t in SYNTHIA13_TRAIN_IDS)

    def make(name, classes, ignore, city, synthia, reference):
        luts = MappingProxyType({"cityscapes": city, "synthia": synthia})
        return Ontology(name, tuple(classes), ignore, luts, reference)

    cs = "mcordts/cityscapesScripts:cityscapesscripts/helpers/labels.py"
    table = [
        make(
            "cityscapes-19", TRAIN_NAMES, IGNORE, city_train, synthia_train,
            f"{cs} (trainId); lhoyer/DAFormer:tools/convert_datasets/synthia.py",
        ),
        make(
            "cityscapes-7", CATEGORIES, IGNORE, city_categories, _lut(dict(SYNTHIA_TO_7), IGNORE),
            f"{cs} (categoryId - 1); valeoai/DADA:dada/dataset/synthia.py (7 classes)",
        ),
        make(
            "synthia-16", names16, IGNORE, _compact(SYNTHIA16_TRAIN_IDS, city_train),
            _compact(SYNTHIA16_TRAIN_IDS, synthia_train),
            "valeoai/DADA:dada/dataset/synthia.py (16 classes); mIoU16 train-id list",
        ),
        make(
            "synthia-13", names13, IGNORE, _compact(SYNTHIA13_TRAIN_IDS, city_train),
            _compact(SYNTHIA13_TRAIN_IDS, synthia_train),
            "mIoU13 train-id list (synthia-16 without wall, fence, pole)",
        ),
        make(
            "sggan-8", SGGAN_GROUPS, None, city_sggan, synthia_sggan,
            "Peilun-Li/SG-GAN:segment_class.py (colour -> group, everything else 0)",
        ),
    ]  # fmt: skip
    return {o.name: o for o in table}


ONTOLOGIES: MappingProxyType[str, Ontology] = MappingProxyType(_build())


def list_ontologies() -> list[str]:
    return sorted(ONTOLOGIES)


def get(name: str) -> Ontology:
    try:
        return ONTOLOGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown ontology {name!r}; known: {', '.join(list_ontologies())}"
        ) from None


def _source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"unknown raw id space {source!r}; expected one of {', '.join(SOURCES)}")
    return source


def map_ids(ids: np.ndarray, ontology: str, *, source: str = "cityscapes") -> np.ndarray:
    """Raw ids (any unsigned integer array) -> uint8 ids of ``ontology``, same shape.

    Values outside the raw id space (including anything above 255 in a 16-bit array) map to
    the ontology's ``unknown`` id; count them with ``unknown_ids``.
    """
    lut = get(ontology).luts[_source(source)]
    ids = np.asarray(ids)
    if ids.dtype.kind != "u":
        raise ValueError(f"raw ids must be an unsigned integer array, got {ids.dtype}")
    return np.take(lut, ids, mode="clip")  # clip: every value >= 255 reads lut[255], "unknown"


@functools.cache
def _from_train_ids_lut(ontology: str) -> np.ndarray:
    raw = np.zeros(256, np.uint8)  # IGNORE and unused train ids: raw id 0, "unlabeled"
    for label in TRAIN_LABELS:
        raw[label.train_id] = label.id
    return map_ids(raw, ontology)


def from_train_ids(seg: np.ndarray, ontology: str) -> np.ndarray:
    """``cityscapes-19`` train ids (what the street simulator and ingest's default write) ->
    ``ontology`` ids, through each train id's Cityscapes label id; IGNORE maps like the
    unlabeled id 0 (to IGNORE, or to "other" in sggan-8)."""
    seg = np.asarray(seg)
    if seg.dtype != np.uint8:
        raise ValueError(f"train ids must be uint8, got {seg.dtype}")
    return np.take(_from_train_ids_lut(ontology), seg)


def valid_raw_ids(source: str) -> range:
    return range(CITYSCAPES_RAW_IDS if _source(source) == "cityscapes" else len(SYNTHIA_CLASSES))


def unknown_ids(ids: np.ndarray, source: str = "cityscapes") -> dict[int, int]:
    """{value: pixel count} for values of ``ids`` that are not ids of the raw space."""
    ids = np.asarray(ids)
    bad = ids[ids >= len(valid_raw_ids(source))]
    if bad.size == 0:
        return {}
    values, counts = np.unique(bad, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts, strict=True)}


@functools.cache
def _colour_lut() -> np.ndarray:
    """(2**24,) uint8: packed RGB -> raw Cityscapes id; colours outside the table -> UNKNOWN_ID.

    Labels that share a colour (the void ids 0-4, pole/polegroup, car/license plate) get the
    first in table order, as cityscapesScripts' own inverse mappings do; every ontology maps
    those pairs to the same class except cityscapes-19 for polegroup (ignore; pole wins here).
    """
    lut = np.full(1 << 24, UNKNOWN_ID, np.uint8)  # 16 MiB, built once
    for label in reversed(CITYSCAPES_LABELS):
        r, g, b = label.colour
        lut[(r << 16) | (g << 8) | b] = raw_id(label)
    lut.setflags(write=False)
    return lut


def cityscapes_ids_from_colours(
    rgb: np.ndarray,
) -> tuple[np.ndarray, dict[tuple[int, int, int], int]]:
    """A Cityscapes colour label (H, W, 3) uint8 RGB -> raw Cityscapes ids (H, W) uint8.

    Matching is exact. Colours that are not in the table become ``UNKNOWN_ID`` and are returned
    as {colour: pixel count} for the caller to report.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    packed = (
        (rgb[..., 0].astype(np.uint32) << 16)
        | (rgb[..., 1].astype(np.uint32) << 8)
        | rgb[..., 2].astype(np.uint32)
    )  # (H, W)
    ids = np.take(_colour_lut(), packed)
    unknown: dict[tuple[int, int, int], int] = {}
    missing = ids == UNKNOWN_ID
    if missing.any():
        values, counts = np.unique(packed[missing], return_counts=True)
        for v, n in zip(values.tolist(), counts.tolist(), strict=True):
            unknown[(v >> 16, (v >> 8) & 255, v & 255)] = n
    return ids, unknown
