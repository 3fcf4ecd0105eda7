"""Every class table against the values of the code that defines it (second transcriptions, kept
independent of refinery/ontology.py on purpose), and the lookups built from them."""

from __future__ import annotations

import numpy as np
import pytest

from refinery import ontology as ont

# mcordts/cityscapesScripts helpers/labels.py, written out per id (0..33): trainId, categoryId.
# The trainId row is also voldemortX/pytorch-auto-drive's CITY_LABEL_MAP.
CS_TRAIN = [255] * 7 + [0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9, 10, 11, 12]
CS_TRAIN += [13, 14, 15, 255, 255, 16, 17, 18]
CS_CATEGORY = [0] * 7 + [1] * 4 + [2] * 6 + [3] * 4 + [4] * 2 + [5] + [6] * 2 + [7] * 8
CS_NAMES = [
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic",
    "ground", "road", "sidewalk", "parking", "rail track", "building", "wall", "fence",
    "guard rail", "bridge", "tunnel", "pole", "polegroup", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "caravan",
    "trailer", "train", "motorcycle", "bicycle",
]  # fmt: skip
CS_COLOURS = {
    "dynamic": (111, 74, 0), "ground": (81, 0, 81), "road": (128, 64, 128),
    "sidewalk": (244, 35, 232), "parking": (250, 170, 160), "rail track": (230, 150, 140),
    "building": (70, 70, 70), "wall": (102, 102, 156), "fence": (190, 153, 153),
    "guard rail": (180, 165, 180), "bridge": (150, 100, 100), "tunnel": (150, 120, 90),
    "pole": (153, 153, 153), "polegroup": (153, 153, 153), "traffic light": (250, 170, 30),
    "traffic sign": (220, 220, 0), "vegetation": (107, 142, 35), "terrain": (152, 251, 152),
    "sky": (70, 130, 180), "person": (220, 20, 60), "rider": (255, 0, 0), "car": (0, 0, 142),
    "truck": (0, 0, 70), "bus": (0, 60, 100), "caravan": (0, 0, 90), "trailer": (0, 0, 110),
    "train": (0, 80, 100), "motorcycle": (0, 0, 230), "bicycle": (119, 11, 32),
    "license plate": (0, 0, 142),
}  # fmt: skip  # the void ids 0-4 are black
CS_THINGS = {"person", "rider", "car", "truck", "bus", "caravan", "trailer", "train"}
CS_THINGS |= {"motorcycle", "bicycle"}

# lhoyer/DAFormer tools/convert_datasets/synthia.py id_to_trainid.
DAFORMER = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12}
DAFORMER |= {8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
# valeoai/DADA dada/dataset/synthia.py, num_classes 16 and 7.
DADA16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12}
DADA16 |= {19: 13, 12: 14, 11: 15}
DADA7 = {1: 4, 2: 1, 3: 0, 4: 0, 5: 1, 6: 3, 7: 2, 8: 6, 9: 2, 10: 5, 11: 6, 15: 2, 22: 0}
# 13 classes: DADA16 without wall (21), fence (5), pole (7), renumbered in the same order.
SYN13 = {3: 0, 4: 1, 2: 2, 15: 3, 9: 4, 6: 5, 1: 6, 10: 7, 17: 8, 8: 9, 19: 10, 12: 11, 11: 12}
# Peilun-Li/SG-GAN segment_class.py, its colour list read as Cityscapes class names.
SGGAN_BY_NAME = {
    "road": 4, "sidewalk": 4, "parking": 4, "rail track": 4, "building": 5, "wall": 5,
    "fence": 5, "guard rail": 5, "bridge": 5, "tunnel": 5, "vegetation": 7, "sky": 6,
    "person": 2, "rider": 2, "car": 1, "truck": 1, "bus": 1, "caravan": 1, "trailer": 1,
    "motorcycle": 3, "bicycle": 3,
}  # fmt: skip


def _lut_dict(name: str, source: str, n: int) -> list[int]:
    return ont.get(name).luts[source][:n].tolist()


def test_cityscapes_table_matches_cityscapes_scripts():
    labels = ont.CITYSCAPES_LABELS
    assert [lab.id for lab in labels] == [*range(34), -1]
    assert [lab.name for lab in labels] == [*CS_NAMES, "license plate"]
    assert [lab.train_id for lab in labels] == [*CS_TRAIN, -1]
    assert [lab.category_id for lab in labels] == [*CS_CATEGORY, 7]
    categories = ("void", *ont.CATEGORIES)
    assert all(lab.category == categories[lab.category_id] for lab in labels)
    assert {lab.name: lab.colour for lab in labels} == {
        **{n: (0, 0, 0) for n in CS_NAMES[:5]},
        **CS_COLOURS,
    }
    assert {lab.name for lab in labels if lab.has_instances} == CS_THINGS
    assert all(lab.ignore_in_eval == (lab.train_id in (255, -1)) for lab in labels)


def test_train_names_agree_with_streets_and_sheets():
    """refinery/sim/streets.py and refinery/sheets.py keep their own copies of the 19 classes."""
    from refinery.sheets import CITYSCAPES_COLOURS
    from refinery.sim.streets import CLASSES, IGNORE

    assert tuple(CS_NAMES[i] for i in range(34) if CS_TRAIN[i] != 255) == ont.TRAIN_NAMES
    assert dict(CLASSES) == {name: i for i, name in enumerate(ont.TRAIN_NAMES)}
    assert [tuple(c) for c in CITYSCAPES_COLOURS.tolist()] == list(ont.TRAIN_COLOURS)
    assert IGNORE == ont.IGNORE == 255


def test_cityscapes_luts():
    assert _lut_dict("cityscapes-19", "cityscapes", 35) == [*CS_TRAIN, 255]  # 34: plate
    assert _lut_dict("cityscapes-7", "cityscapes", 35) == [
        c - 1 if c else 255 for c in [*CS_CATEGORY, 7]
    ]
    sixteen = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    thirteen = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    for name, kept in (("synthia-16", sixteen), ("synthia-13", thirteen)):
        expected = [kept.index(t) if t in kept else 255 for t in [*CS_TRAIN, 255]]
        assert _lut_dict(name, "cityscapes", 35) == expected, name
    sggan = [SGGAN_BY_NAME.get(n, 0) for n in CS_NAMES] + [1]  # license plate is car-coloured
    assert _lut_dict("sggan-8", "cityscapes", 35) == sggan
    for o in ont.ONTOLOGIES.values():  # every value outside the id space has no class
        lut = o.luts["cityscapes"]
        assert (lut[35:] == o.unknown).all() and o.unknown == (0 if o.name == "sggan-8" else 255)


def test_sggan_colour_table_is_sggans_own():
    """SG-GAN's table lists exactly the colours of these Cityscapes classes."""
    colours = {lab.name: lab.colour for lab in ont.CITYSCAPES_LABELS}
    assert dict(ont.SGGAN_COLOURS) == {colours[n]: g for n, g in SGGAN_BY_NAME.items()}
    assert ont.SGGAN_GROUPS == (
        "other", "vehicle", "pedestrian", "cyclist", "road", "building", "sky", "tree"
    )  # fmt: skip


def test_synthia_luts():
    assert ont.SYNTHIA_CLASSES[:4] == ("void", "sky", "building", "road")
    assert ont.SYNTHIA_CLASSES[21:] == ("wall", "lanemarking") and len(ont.SYNTHIA_CLASSES) == 23

    def full(table):
        return [table.get(s, 255) for s in range(256)]

    assert ont.get("cityscapes-19").luts["synthia"].tolist() == full(DAFORMER)
    assert ont.get("synthia-16").luts["synthia"].tolist() == full(DADA16)
    assert ont.get("synthia-13").luts["synthia"].tolist() == full(SYN13)
    assert ont.get("cityscapes-7").luts["synthia"].tolist() == full(DADA7)
    # ours (SG-GAN never used SYNTHIA): through the train id's Cityscapes colour
    sggan = {s: SGGAN_BY_NAME.get(ont.TRAIN_NAMES[t], 0) for s, t in DAFORMER.items()}
    assert ont.get("sggan-8").luts["synthia"].tolist() == [sggan.get(s, 0) for s in range(256)]


def test_ontology_class_names():
    assert ont.get("cityscapes-19").classes == ont.TRAIN_NAMES
    assert ont.get("cityscapes-7").classes == (
        "flat", "construction", "object", "nature", "sky", "human", "vehicle"
    )  # fmt: skip
    assert len(ont.get("synthia-16").classes) == 16
    assert ont.get("synthia-13").classes == (
        "road", "sidewalk", "building", "traffic light", "traffic sign", "vegetation", "sky",
        "person", "rider", "car", "bus", "motorcycle", "bicycle",
    )  # fmt: skip
    assert ont.get("sggan-8").ignore_index is None
    assert ont.list_ontologies() == sorted(ont.ONTOLOGIES)
    with pytest.raises(ValueError, match="cityscapes-19"):
        ont.get("cityscapes-20")
    assert not ont.get("cityscapes-19").luts["cityscapes"].flags.writeable


def test_map_ids_is_a_lookup_with_unknowns():
    ids = np.array([[7, 26, 34], [0, 200, 33]], np.uint8)
    assert ont.map_ids(ids, "cityscapes-19").tolist() == [[0, 13, 255], [255, 255, 18]]
    assert ont.map_ids(ids, "sggan-8").dtype == np.uint8
    assert ont.unknown_ids(ids) == {200: 1}
    wide = np.array([3, 21, 22, 23, 300, 65535], np.uint16)  # SYNTHIA's 16-bit channel
    assert ont.map_ids(wide, "synthia-16", source="synthia").tolist() == [0, 3, 255, 255, 255, 255]
    assert ont.unknown_ids(wide, "synthia") == {23: 1, 300: 1, 65535: 1}
    with pytest.raises(ValueError, match="unsigned"):
        ont.map_ids(ids.astype(np.int16), "cityscapes-19")
    with pytest.raises(ValueError, match="raw id space"):
        ont.map_ids(ids, "cityscapes-19", source="gta")


def test_colours_to_ids_exact_match_first_in_table():
    rgb = np.array(
        [[(0, 0, 0), (153, 153, 153), (0, 0, 142), (128, 64, 128)],
         [(119, 11, 32), (1, 2, 3), (1, 2, 3), (128, 64, 129)]],
        np.uint8,
    )  # fmt: skip
    ids, unknown = ont.cityscapes_ids_from_colours(rgb)
    # black -> unlabeled (0), grey -> pole (not polegroup), dark blue -> car (not license plate)
    assert ids.tolist() == [[0, 17, 26, 7], [33, 255, 255, 255]]
    assert unknown == {(1, 2, 3): 2, (128, 64, 129): 1}
    every = np.array([[lab.colour for lab in ont.CITYSCAPES_LABELS]], np.uint8)
    ids, unknown = ont.cityscapes_ids_from_colours(every)
    assert not unknown  # void 0-4 share black, polegroup is pole, the plate is car
    assert ids[0].tolist() == [0] * 5 + [*range(5, 18), 17, *range(19, 34), 26]
    with pytest.raises(ValueError, match="RGB"):
        ont.cityscapes_ids_from_colours(np.zeros((2, 2, 4), np.uint8))


def test_train_ids_convert_to_other_ontologies_through_their_label_ids():
    train_ids = np.array([[0, 1, 11, 13, 18, 255]], np.uint8)  # road sidewalk person car bicycle -
    assert np.array_equal(ont.from_train_ids(train_ids, "cityscapes-19"), train_ids)
    groups = ont.from_train_ids(train_ids, "sggan-8")
    names = [ont.SGGAN_GROUPS[g] for g in groups[0]]
    assert names == ["road", "road", "pedestrian", "vehicle", "cyclist", "other"]
    categories = ont.from_train_ids(train_ids, "cityscapes-7")
    assert [ont.CATEGORIES[c] if c != ont.IGNORE else None for c in categories[0]] == [
        "flat", "flat", "human", "vehicle", "vehicle", None,
    ]  # fmt: skip
