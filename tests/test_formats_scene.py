"""gta5, synthia, cityscapes readers: tiny trees in the real on-disk layouts, checked exactly, and
the real files in ../shared/fixtures/real through the same code paths."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from refinery import ontology as ont
from refinery.formats import FORMATS
from refinery.formats.scenes import GTA5, Cityscapes, Synthia, png_indices
from refinery.samples import MALFORMED, MISSING, SampleError, decode_sample

H, W = 8, 12
RNG = np.random.default_rng(6)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def palette_png(indices: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    """An 8-bit palette PNG written by hand (cv2 cannot write one), with tRNS and gAMA chunks
    that a reader of the indices must ignore."""
    height, width = indices.shape
    rows = b"".join(b"\x00" + row.tobytes() for row in indices.astype(np.uint8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + _chunk(b"gAMA", struct.pack(">I", 45455))
        + _chunk(b"PLTE", bytes(v for colour in palette for v in colour))
        + _chunk(b"tRNS", bytes([0] + [255] * (len(palette) - 1)))
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


# GTA-V's palette: Playing for Data's colours by Cityscapes id (four void ids black, static
# (20, 20, 20)), then license plate at 34.
GTA_PALETTE = [(0, 0, 0)] * 4 + [(20, 20, 20)]
GTA_PALETTE += [lab.colour for lab in ont.CITYSCAPES_LABELS[5:34]] + [(0, 0, 142)]


def write(path: Path, data: bytes | np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, np.ndarray):
        assert cv2.imwrite(str(path), data)
    else:
        path.write_bytes(data)
    return path


def rgb_frame(height=H, width=W) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def convert(reader, name: str) -> dict:
    (item,) = [i for i in reader.items() if i.name == name]
    (sample,) = reader.convert(item)
    return sample


def raises(reader, name: str, reason: str) -> SampleError:
    (item,) = [i for i in reader.items() if i.name == name]
    with pytest.raises(SampleError) as info:
        reader.convert(item)
    assert info.value.reason == reason, info.value
    return info.value


# Cityscapes ids covering void (0, 4), ignore-in-train (9, 18 polegroup), every kind of class,
# the license plate (34) and a value that is no id (200).
GTA_IDS = np.array(
    [[0, 4, 7, 8, 9, 11, 12, 13, 17, 18, 19, 20],
     [21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 34]] * 4,
    np.uint8,
)  # fmt: skip
GTA_IDS[7, 11] = 200


@pytest.fixture
def gta_tree(tmp_path):
    frame = rgb_frame()
    write(tmp_path / "images" / "00001.png", frame)
    write(tmp_path / "labels" / "00001.png", palette_png(GTA_IDS, GTA_PALETTE))
    write(tmp_path / "images" / "00002.png", rgb_frame())  # no label
    write(tmp_path / "labels" / "00003.png", palette_png(GTA_IDS, GTA_PALETTE))  # no image
    (tmp_path / "labels" / "notes.txt").write_text("not a frame")
    return tmp_path


def test_registered_as_scene_formats():
    for name, cls in (("gta5", GTA5), ("synthia", Synthia), ("cityscapes", Cityscapes)):
        assert FORMATS[name].domain == "scene" and FORMATS[name].factory is cls


def test_png_indices_reads_indices_not_colours():
    data = palette_png(GTA_IDS, GTA_PALETTE)
    assert np.array_equal(png_indices(data), GTA_IDS)
    assert decode(data).ndim == 3  # OpenCV itself gives the colours (0-3 are all black)
    grey = GTA_IDS.copy()
    ok, buf = cv2.imencode(".png", grey)
    assert ok and np.array_equal(png_indices(buf.tobytes()), grey)
    with pytest.raises(SampleError, match="RGB PNG"):
        png_indices(cv2.imencode(".png", rgb_frame())[1].tobytes())
    with pytest.raises(SampleError) as info:
        png_indices(b"GIF89a")
    assert info.value.reason == "undecodable"


def test_png_indices_agrees_with_pil_on_real_palettes(shared_fixture):
    image = pytest.importorskip("PIL.Image")
    for name in ("gta5/labels/00005.png", "cityscapes_labelids/" + LABELIDS_FIXTURE):
        path = shared_fixture(name)
        assert np.array_equal(png_indices(path.read_bytes()), np.asarray(image.open(path)))


def test_gta5_sample_exactly(gta_tree):
    reader = GTA5(str(gta_tree))
    assert [i.name for i in reader.items()] == ["00001", "00002", "00003"]
    sample = convert(reader, "00001")
    assert list(sample) == ["__key__", "png", "seg.png", "labelids.png", "json"]
    assert sample["__key__"] == "gta5-00001"
    assert sample["png"] == (gta_tree / "images" / "00001.png").read_bytes()  # not re-encoded
    decoded = decode_sample(sample, "scene")
    rows = [
        [255, 255, 0, 1, 255, 2, 3, 4, 5, 255, 6, 7],
        [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 255],
    ]
    assert decoded["seg.png"].tolist() == rows * 4  # 200 (no id) at [7, 11] is 255 too
    assert np.array_equal(decode(sample["labelids.png"]), GTA_IDS)
    assert decoded["json"] == {
        "domain": "scene",
        "dataset": "gta5",
        "labeled": True,
        "ontology": "cityscapes-19",
        "classes": list(ont.TRAIN_NAMES),
        "ignore_index": 255,
        "raw_ids": {"component": "labelids.png", "space": "cityscapes"},
        "source": {"image": "images/00001.png", "label": "labels/00001.png"},
        "unknown_ids": {"200": 1},
    }


@pytest.mark.parametrize(
    ("name", "row0"),
    [
        ("cityscapes-7", [255, 255, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]),
        ("synthia-16", [255, 255, 0, 1, 255, 2, 3, 4, 5, 255, 6, 7]),
        ("synthia-13", [255, 255, 0, 1, 255, 2, 255, 255, 255, 255, 3, 4]),
        ("sggan-8", [0, 0, 4, 4, 4, 5, 5, 5, 0, 0, 0, 0]),
    ],
)
def test_gta5_ontologies(gta_tree, name, row0):
    sample = convert(GTA5(str(gta_tree), ontology=name), "00001")
    seg = decode(sample["seg.png"])
    assert seg[0].tolist() == row0
    assert np.array_equal(seg, ont.map_ids(GTA_IDS, name))
    assert np.array_equal(decode(sample["labelids.png"]), GTA_IDS)  # raw ids whatever the choice
    label = decode_sample(sample, "scene")["json"]
    assert label["ontology"] == name and label["classes"] == list(ont.get(name).classes)
    assert label["ignore_index"] == (None if name == "sggan-8" else 255)


def test_gta5_missing_halves_are_reported(gta_tree):
    reader = GTA5(str(gta_tree))
    error = raises(reader, "00002", MISSING)
    assert (error.key, error.component) == ("gta5-00002", "seg.png")
    assert error.url == str(gta_tree / "labels" / "00002.png")
    assert "labels/00002.png is missing (have: images/00002.png)" in error.detail
    error = raises(reader, "00003", MISSING)
    assert (error.key, error.component) == ("gta5-00003", "png")
    assert error.url == str(gta_tree / "images" / "00003.png")


def test_gta5_resize_nearest_for_labels(gta_tree):
    reader = GTA5(str(gta_tree), size=(4, 6))
    sample = convert(reader, "00001")
    image = decode(sample["png"])
    assert image.shape == (4, 6, 3)
    frame = cv2.imread(str(gta_tree / "images" / "00001.png"))
    assert np.array_equal(image, cv2.resize(frame, (6, 4), interpolation=cv2.INTER_AREA))
    assert np.array_equal(decode(sample["labelids.png"]), GTA_IDS[::2, ::2])
    assert np.array_equal(
        decode(sample["seg.png"]), ont.map_ids(GTA_IDS[::2, ::2], "cityscapes-19")
    )
    assert decode_sample(sample, "scene")["json"]["resized_from"] == [H, W]
    assert GTA5(str(gta_tree), size="8x12").size == (8, 12)
    same = convert(GTA5(str(gta_tree), size=(H, W)), "00001")
    assert same["png"] == (gta_tree / "images" / "00001.png").read_bytes()
    with pytest.raises(ValueError, match="size"):
        GTA5(str(gta_tree), size=(0, 4))


def test_gta5_bad_frames(gta_tree):
    write(gta_tree / "images" / "00004.png", rgb_frame(H, W + 1))
    write(gta_tree / "labels" / "00004.png", palette_png(GTA_IDS, GTA_PALETTE))
    write(gta_tree / "images" / "00005.png", rgb_frame()[:, :, 0])  # grey
    write(gta_tree / "labels" / "00005.png", palette_png(GTA_IDS, GTA_PALETTE))
    opaque = np.dstack([rgb_frame(), np.full((H, W), 255, np.uint8)])
    write(gta_tree / "images" / "00006.png", opaque)
    write(gta_tree / "labels" / "00006.png", palette_png(GTA_IDS, GTA_PALETTE))
    write(gta_tree / "images" / "00007.png", rgb_frame())
    write(gta_tree / "labels" / "00007.png", rgb_frame())  # a colour image as ids
    reader = GTA5(str(gta_tree))
    error = raises(reader, "00004", MALFORMED)
    assert error.component == "seg.png" and "12x8, the image 13x8" in error.detail
    assert raises(reader, "00005", MALFORMED).component == "png"
    sample = convert(reader, "00006")  # opaque alpha: dropped and re-encoded
    assert np.array_equal(decode(sample["png"]), opaque[:, :, :3])
    error = raises(reader, "00007", MALFORMED)
    assert error.url == str(gta_tree / "labels" / "00007.png") and "RGB PNG" in error.detail


def test_gta5_requires_its_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels/"):
        GTA5(str(write(tmp_path / "images" / "1.png", rgb_frame()).parent.parent))
    with pytest.raises(TypeError):
        GTA5(str(tmp_path), split="train")


# -- SYNTHIA ---------------------------------------------------------------------------------

SYN_IDS = np.arange(H * W, dtype=np.uint16).reshape(H, W) % 23  # every SYNTHIA class
SYN_IDS[0, 0] = 300  # not a class; above 8 bits
DEPTH_CM = RNG.integers(1, 65535, (H, W), dtype=np.uint16)


def synthia_label(ids: np.ndarray, channels: int = 3) -> np.ndarray:
    """(H, W, C) uint16 in OpenCV's BGR(A) order: class in R (index 2), noise elsewhere."""
    planes = [RNG.integers(0, 65535, ids.shape, dtype=np.uint16) for _ in range(channels)]
    planes[2] = ids
    return np.dstack(planes)


@pytest.fixture
def synthia_tree(tmp_path):
    write(tmp_path / "RGB" / "0000001.png", rgb_frame())
    write(tmp_path / "GT" / "LABELS" / "0000001.png", synthia_label(SYN_IDS))
    noisy_depth = np.dstack([DEPTH_CM // 2, DEPTH_CM // 3, DEPTH_CM])  # B, G, R
    write(tmp_path / "Depth" / "Depth" / "0000001.png", noisy_depth)
    write(tmp_path / "RGB" / "0000002.png", rgb_frame())
    write(tmp_path / "GT" / "LABELS" / "0000002.png", synthia_label(SYN_IDS % 23, channels=4))
    write(tmp_path / "RGB" / "0000003.png", rgb_frame())
    write(tmp_path / "Depth" / "Depth" / "0000003.png", DEPTH_CM)
    write(tmp_path / "GT" / "COLOR" / "0000001.png", rgb_frame())  # not read
    return tmp_path


def test_synthia_sample_exactly(synthia_tree):
    reader = Synthia(str(synthia_tree))
    assert [i.name for i in reader.items()] == ["0000001", "0000002", "0000003"]
    sample = convert(reader, "0000001")
    assert list(sample) == ["__key__", "png", "seg.png", "synthia_ids.png", "depth.png", "json"]
    assert sample["__key__"] == "synthia-0000001"
    decoded = decode_sample(sample, "scene")
    clipped = np.minimum(SYN_IDS, 255).astype(np.uint8)
    assert np.array_equal(decode(sample["synthia_ids.png"]), clipped)
    expected = np.array([DAFORMER.get(int(v), 255) for v in SYN_IDS.ravel()]).reshape(H, W)
    assert np.array_equal(decoded["seg.png"], expected)
    assert np.array_equal(decoded["depth.png"], DEPTH_CM)  # R channel, units kept (cm)
    assert decoded["json"] == {
        "domain": "scene",
        "dataset": "synthia",
        "labeled": True,
        "ontology": "cityscapes-19",
        "classes": list(ont.TRAIN_NAMES),
        "ignore_index": 255,
        "raw_ids": {"component": "synthia_ids.png", "space": "synthia"},
        "source": {
            "image": "RGB/0000001.png",
            "label": "GT/LABELS/0000001.png",
            "depth": "Depth/Depth/0000001.png",
        },
        "depth_unit": "cm",
        "unknown_ids": {"300": 1},
    }


DAFORMER = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12}
DAFORMER |= {8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def test_synthia_protocols_and_missing(synthia_tree):
    reader = Synthia(str(synthia_tree), ontology="synthia-16", depth=False)
    sample = convert(reader, "0000002")  # BGRA label: the class is still channel 2
    assert np.array_equal(
        decode(sample["seg.png"]), ont.map_ids(SYN_IDS % 23, "synthia-16", source="synthia")
    )
    assert decode(sample["seg.png"])[0, :8].tolist() == [9, 9, 2, 0, 1, 4, 8, 5]
    error = raises(reader, "0000003", MISSING)
    assert (error.component, error.key) == ("seg.png", "synthia-0000003")
    assert error.url.endswith(os.path.join("GT", "LABELS", "0000003.png"))
    assert "depth.png" not in convert(reader, "0000001")
    sample = convert(Synthia(str(synthia_tree), ontology="synthia-13"), "0000001")
    assert np.array_equal(
        decode(sample["seg.png"]), ont.map_ids(SYN_IDS, "synthia-13", source="synthia")
    )
    assert decode(sample["seg.png"])[0, :8].tolist() == [255, 6, 2, 0, 1, 255, 5, 255]
    small = convert(Synthia(str(synthia_tree), size=(4, 6)), "0000001")
    assert np.array_equal(decode(small["depth.png"]), DEPTH_CM[::2, ::2])  # nearest only


def test_synthia_missing_depth_and_8bit_depth(synthia_tree):
    reader = Synthia(str(synthia_tree))
    error = raises(reader, "0000002", MISSING)
    assert error.component == "depth.png" and "Depth/Depth/0000002.png is missing" in error.detail
    write(synthia_tree / "Depth" / "Depth" / "0000002.png", (DEPTH_CM >> 8).astype(np.uint8))
    error = raises(Synthia(str(synthia_tree)), "0000002", MALFORMED)
    assert error.component == "depth.png" and "16-bit" in error.detail


# -- Cityscapes ------------------------------------------------------------------------------

CS_IDS = np.array([[0, 1, 7, 8, 11, 17, 18, 21, 23, 24, 26, 33]] * H, np.uint8)


def cityscapes_frame(root: Path, split: str, city: str, stem: str, labels=True) -> Path:
    write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb_frame())
    if labels:
        path = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        write(path, CS_IDS)  # 8-bit grey, as Cityscapes ships them
        colours = np.array([[ont.CITYSCAPES_LABELS[i].colour for i in row] for row in CS_IDS])
        rgba = np.dstack([colours[:, :, ::-1], np.full((H, W), 255)]).astype(np.uint8)
        write(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", rgba)
    return root


@pytest.fixture
def cityscapes_tree(tmp_path):
    cityscapes_frame(tmp_path, "train", "aachen", "aachen_000000_000019")
    cityscapes_frame(tmp_path, "train", "bochum", "bochum_000000_000313", labels=False)
    cityscapes_frame(tmp_path, "val", "frankfurt", "frankfurt_000000_000294")
    write(
        tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", CS_IDS
    )
    return tmp_path


def test_cityscapes_sample_exactly(cityscapes_tree):
    reader = Cityscapes(str(cityscapes_tree))
    assert [i.name for i in reader.items()] == [
        "train/aachen/aachen_000000_000019",
        "train/bochum/bochum_000000_000313",
        "val/frankfurt/frankfurt_000000_000294",
        "val/lindau/lindau_000000_000019",
    ]
    sample = convert(reader, "train/aachen/aachen_000000_000019")
    assert sample["__key__"] == "cityscapes-aachen_000000_000019"
    gt = cityscapes_tree / "gtFine" / "train" / "aachen"
    assert sample["labelids.png"] == (gt / "aachen_000000_000019_gtFine_labelIds.png").read_bytes()
    decoded = decode_sample(sample, "scene")
    row = [255, 255, 0, 1, 2, 5, 255, 8, 10, 11, 13, 18]
    assert decoded["seg.png"].tolist() == [row] * H
    assert decoded["json"] == {
        "domain": "scene",
        "dataset": "cityscapes",
        "split": "train",
        "city": "aachen",
        "labeled": True,
        "ontology": "cityscapes-19",
        "classes": list(ont.TRAIN_NAMES),
        "ignore_index": 255,
        "raw_ids": {"component": "labelids.png", "space": "cityscapes"},
        "source": {
            "image": "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
            "label": "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
        },
    }
    error = raises(reader, "train/bochum/bochum_000000_000313", MISSING)
    assert error.component == "seg.png" and error.url.endswith("_gtFine_labelIds.png")
    assert raises(reader, "val/lindau/lindau_000000_000019", MISSING).component == "png"


def test_cityscapes_colour_labels_split_and_unlabeled(cityscapes_tree):
    colour = Cityscapes(str(cityscapes_tree), labels="color", split="val", ontology="sggan-8")
    assert [i.name for i in colour.items()] == ["val/frankfurt/frankfurt_000000_000294"]
    sample = convert(colour, "val/frankfurt/frankfurt_000000_000294")
    # the colour file says pole for polegroup (18): the only id it cannot tell apart
    assert decode(sample["labelids.png"])[0].tolist() == [
        0,
        0,
        7,
        8,
        11,
        17,
        17,
        21,
        23,
        24,
        26,
        33,
    ]
    assert decode(sample["seg.png"])[0].tolist() == [0, 0, 4, 4, 5, 0, 0, 7, 6, 2, 1, 3]
    unlabeled = Cityscapes(str(cityscapes_tree), labels="none", split="train")
    sample = convert(unlabeled, "train/bochum/bochum_000000_000313")
    assert list(sample) == ["__key__", "png", "json"]
    assert decode_sample(sample)["json"] == {
        "domain": "scene",
        "dataset": "cityscapes",
        "split": "train",
        "city": "bochum",
        "labeled": False,
        "source": {"image": "leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png"},
    }
    with pytest.raises(FileNotFoundError, match="found: train, val"):
        Cityscapes(str(cityscapes_tree), split="test")
    with pytest.raises(ValueError, match="labels"):
        Cityscapes(str(cityscapes_tree), labels="trainIds")


def test_cityscapes_without_gtfine_needs_labels_none(tmp_path):
    cityscapes_frame(tmp_path, "test", "berlin", "berlin_000000_000019", labels=False)
    with pytest.raises(FileNotFoundError, match="labels='none'"):
        Cityscapes(str(tmp_path))
    reader = Cityscapes(str(tmp_path), labels="none")
    assert [i.name for i in reader.items()] == ["test/berlin/berlin_000000_000019"]


def test_cityscapes_unknown_colours_are_ignore_and_reported(cityscapes_tree):
    path = cityscapes_tree / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_color.png"
    rgba = decode(path.read_bytes())
    rgba[0, 0, :3] = (3, 2, 1)  # BGR of the unknown colour (1, 2, 3)
    write(path, rgba)
    reader = Cityscapes(str(cityscapes_tree), labels="color", split="val")
    sample = convert(reader, "val/frankfurt/frankfurt_000000_000294")
    label = decode_sample(sample, "scene")["json"]
    assert label["unknown_colours"] == {"1,2,3": 1} and label["unknown_ids"] == {"255": 1}
    assert decode(sample["seg.png"])[0, 0] == 255 and decode(sample["labelids.png"])[0, 0] == 255


# -- the real files --------------------------------------------------------------------------

LABELIDS_FIXTURE = "frankfurt_000000_000294_gtFine_labelIds.png"
# Cityscapes label id -> pixel count of the GTA-V label 00005.png (counted with PIL).
GTA_00005_IDS = {
    0: 26732, 1: 182040, 4: 10564, 5: 54944, 7: 850357, 8: 55270, 11: 292128, 12: 7592,
    13: 2279, 15: 872, 17: 42514, 19: 976, 20: 1973, 21: 22543, 22: 27498, 23: 419595,
    24: 1145, 26: 7693, 27: 6813,
}  # fmt: skip


def histogram(array: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(array, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_real_gta5_frame_and_label(shared_fixture):
    root = shared_fixture("gta5/images/00005.png").parent.parent
    shared_fixture("gta5/labels/00005.png")
    reader = GTA5(str(root), ontology="sggan-8")
    (item,) = reader.items()
    (sample,) = reader.convert(item)
    decoded = decode_sample(sample, "scene")
    assert decoded["png"].shape == (1052, 1914, 3)
    assert sample["png"] == (root / "images" / "00005.png").read_bytes()
    ids = decode(sample["labelids.png"])
    assert histogram(ids) == GTA_00005_IDS
    sggan = cv2.imread(str(shared_fixture("sggan_classes/gta5_00005.png")), cv2.IMREAD_UNCHANGED)
    assert sggan.dtype == np.uint8 and sggan.shape == (1052, 1914)
    assert np.array_equal(decoded["seg.png"], sggan)  # SG-GAN's own class map, pixel for pixel
    train = ont.map_ids(ids, "cityscapes-19")
    expected = {}
    for i, n in GTA_00005_IDS.items():
        t = int(ont.get("cityscapes-19").luts["cityscapes"][i])
        expected[t] = expected.get(t, 0) + n
    assert histogram(train) == expected


def _cityscapes_tree_around(tmp_path: Path, label: Path, stem: str, suffix: str) -> Path:
    """The real label file in a Cityscapes tree, next to a stand-in frame of its size."""
    city = stem.split("_")[0]
    gt = tmp_path / "gtFine" / "train" / city
    gt.mkdir(parents=True)
    os.symlink(label, gt / f"{stem}_gtFine_{suffix}.png")
    write(
        tmp_path / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png",
        np.zeros((1024, 2048, 3), np.uint8),
    )
    return tmp_path


def test_real_cityscapes_colour_label_is_sggans_class_map(shared_fixture, tmp_path):
    label = shared_fixture("cityscapes_color/aachen_000000_000019_gtFine_color.png")
    sggan = shared_fixture("sggan_classes/cityscapes_aachen_000000_000019.png")
    root = _cityscapes_tree_around(tmp_path, label, "aachen_000000_000019", "color")
    reader = Cityscapes(str(root), labels="color", ontology="sggan-8")
    (item,) = reader.items()
    (sample,) = reader.convert(item)
    decoded = decode_sample(sample, "scene")
    assert "unknown_colours" not in decoded["json"]
    assert np.array_equal(decoded["seg.png"], cv2.imread(str(sggan), cv2.IMREAD_UNCHANGED))


def test_real_cityscapes_labelids(shared_fixture, tmp_path):
    label = shared_fixture("cityscapes_labelids/" + LABELIDS_FIXTURE)
    root = _cityscapes_tree_around(tmp_path, label, "frankfurt_000000_000294", "labelIds")
    reader = Cityscapes(str(root))
    (item,) = reader.items()
    (sample,) = reader.convert(item)
    decoded = decode_sample(sample, "scene")
    assert "unknown_ids" not in decoded["json"]
    assert histogram(decoded["seg.png"]) == {
        0: 807465, 1: 178016, 2: 835894, 4: 2177, 5: 51738, 6: 68, 7: 9281, 8: 44244, 9: 10,
        10: 42901, 11: 7580, 13: 117192, 14: 331, 15: 44, 18: 211,
    }  # fmt: skip  # road, sidewalk, building, ... bicycle: a street scene, nothing ignored
