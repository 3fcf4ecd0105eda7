"""refinery.sim: determinism, the sample contract, labels that agree with the pixels, and the
real variant differing from the synthetic one in the intended ways (on the same geometry)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from refinery import samples, sim
from refinery.sim import hands, streets

CASES = [(domain, variant) for domain in sim.DOMAINS for variant in sim.VARIANTS]
COMPONENTS = {
    "gaze": ["__key__", "png", "json"],
    "hand": ["__key__", "depth.png", "json"],
    "scene": ["__key__", "png", "seg.png", "depth.png", "json"],
}
SHAPES = {"gaze": (35, 55), "hand": (128, 128), "scene": (256, 512)}
SIMULATORS = {
    "gaze": "refinery.sim.eyes",
    "hand": "refinery.sim.hands",
    "scene": "refinery.sim.streets",
}


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        if isinstance(a[name], np.ndarray):
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
        else:
            assert a[name] == b[name], name


# -- API and determinism ----------------------------------------------------------------------


def test_key_format():
    assert sim.key_for("gaze", "synthetic", 42, seed=7) == "gaze-syn-s7-00000042"
    assert sim.key_for("scene", "real", 0, seed=0) == "scene-rea-s0-00000000"
    assert "." not in sim.key_for("hand", "real", 123456, seed=99)


@pytest.mark.parametrize(("domain", "variant"), CASES)
def test_sample_layout(domain, variant):
    sample = sim.render(domain, variant, 3, seed=5)
    assert list(sample) == COMPONENTS[domain]
    assert sample["__key__"] == sim.key_for(domain, variant, 3, seed=5)
    image = sample["depth.png"] if domain == "hand" else sample["png"]
    assert image.shape[:2] == SHAPES[domain]
    assert image.dtype == (np.uint16 if domain == "hand" else np.uint8)
    label = sample["json"]
    assert label["domain"] == domain and label["variant"] == variant
    assert label["source"] == {"simulator": SIMULATORS[domain], "seed": 5, "index": 3}
    # Plain JSON types only: dumping needs no numpy-aware default.
    assert json.loads(json.dumps(label, allow_nan=False)) == label


@pytest.mark.parametrize(("domain", "variant"), CASES)
def test_round_trip_through_the_sample_contract(domain, variant):
    sample = sim.render(domain, variant, 1, seed=2)
    decoded = samples.decode_sample(samples.encode_sample(sample, domain), domain)
    assert_same(decoded, sample)


@pytest.mark.parametrize(("domain", "variant"), CASES)
def test_reproducible_and_seeded(domain, variant):
    a = sim.render(domain, variant, 4, seed=11)
    assert_same(a, sim.render(domain, variant, 4, seed=11))
    other = sim.render(domain, variant, 4, seed=12)
    image = COMPONENTS[domain][1]
    assert not np.array_equal(other[image], a[image])
    geometry = {k: v for k, v in a["json"].items() if k not in ("source", "present", "ontology")}
    assert geometry != {k: other["json"][k] for k in geometry}


@pytest.mark.parametrize("domain", sim.DOMAINS)
def test_sample_does_not_depend_on_start(domain):
    run = list(sim.generate(domain, "real", 5, seed=3))
    assert [s["__key__"] for s in run] == [sim.key_for(domain, "real", i, seed=3) for i in range(5)]
    assert_same(run[3], next(sim.generate(domain, "real", 1, seed=3, start=3)))
    assert_same(run[0], sim.render(domain, "real", 0, seed=3))


@pytest.mark.parametrize(
    ("domain", "options", "shape"),
    [
        ("gaze", {"height": 36, "width": 60}, (36, 60)),
        ("hand", {"size": 64}, (64, 64)),
        ("scene", {"height": 64, "width": 128}, (64, 128)),
    ],
)
def test_size_options(domain, options, shape):
    sample = sim.render(domain, "real", 0, **options)
    for name in COMPONENTS[domain][1:-1]:
        assert sample[name].shape[:2] == shape
    samples.check_labels(sample, domain)


def test_bad_arguments_fail_loudly():
    with pytest.raises(TypeError, match=r"'size'.*height, width"):
        sim.render("gaze", "synthetic", 0, size=64)
    with pytest.raises(TypeError, match="unknown option"):
        next(sim.generate("hand", "synthetic", 3, height=64))
    with pytest.raises(ValueError, match="hand size"):
        sim.render("hand", "synthetic", 0, size=8)
    with pytest.raises(ValueError, match="scene width"):
        sim.render("scene", "synthetic", 0, width=64.0)
    with pytest.raises(ValueError, match="unknown domain"):
        sim.render("eyes", "synthetic", 0)
    with pytest.raises(ValueError, match="unknown variant"):
        sim.render("gaze", "refined", 0)
    with pytest.raises(ValueError, match="index"):
        sim.render("gaze", "real", -1)
    with pytest.raises(ValueError, match="seed"):
        sim.key_for("gaze", "real", 0, seed=-2)


@pytest.mark.parametrize("domain", sim.DOMAINS)
def test_variants_share_labeled_geometry(domain):
    for index in range(3):
        synthetic = sim.render(domain, "synthetic", index, seed=9)
        real = sim.render(domain, "real", index, seed=9)
        drop = ("variant",)
        assert {k: v for k, v in synthetic["json"].items() if k not in drop} == {
            k: v for k, v in real["json"].items() if k not in drop
        }
        if domain == "scene":
            assert np.array_equal(synthetic["seg.png"], real["seg.png"])
            assert np.array_equal(synthetic["depth.png"], real["depth.png"])


# -- gaze -------------------------------------------------------------------------------------


def _pupil_centre(image: np.ndarray) -> tuple[float, float]:
    """Centroid of the darkest pixels: the pupil in a synthetic crop."""
    dark = image <= int(image.min()) + 8
    ys, xs = np.nonzero(dark)
    return float(xs.mean()), float(ys.mean())


def test_gaze_image_follows_the_label():
    found, iris, centre, look = [], [], [], []
    for sample in sim.generate("gaze", "synthetic", 60, seed=21):
        label = sample["json"]
        found.append(_pupil_centre(sample["png"]))
        iris.append(label["landmarks"]["iris_centre"])
        centre.append(label["eyeball"]["centre"])
        look.append(label["look_vec"])
        pitch, yaw = label["gaze"]["pitch"], label["gaze"]["yaw"]
        expected = [
            -math.cos(pitch) * math.sin(yaw),
            -math.sin(pitch),
            -math.cos(pitch) * math.cos(yaw),
        ]
        assert np.allclose(label["look_vec"], expected, atol=1e-4)
        assert math.isclose(pitch, math.asin(-label["look_vec"][1]), abs_tol=1e-4)
        assert math.isclose(
            yaw, math.atan2(-label["look_vec"][0], -label["look_vec"][2]), abs_tol=1e-4
        )
    found, iris, centre, look = map(np.array, (found, iris, centre, look))
    # The pupil moves with the gaze: x with g_x (yaw > 0 moves it to the image left), y with g_y.
    shift = found - centre
    assert np.corrcoef(shift[:, 0], look[:, 0])[0, 1] > 0.9
    assert np.corrcoef(shift[:, 1], look[:, 1])[0, 1] > 0.9
    # ... and sits on the labeled iris centre.
    error = np.linalg.norm(found - iris, axis=1)
    assert np.median(error) < 1.0
    assert np.mean(error < 2.0) > 0.9


def test_gaze_landmarks_are_in_the_crop_and_ordered():
    for sample in sim.generate("gaze", "synthetic", 20, seed=4):
        marks = sample["json"]["landmarks"]
        (lx, ly), (rx, ry) = marks["eye_corners"]
        assert 0 <= lx < rx < 55 and 0 <= ly < 35 and 0 <= ry < 35
        upper, lower = np.array(marks["upper_lid"]), np.array(marks["lower_lid"])
        assert upper.shape == lower.shape == (8, 2)
        assert np.all(upper[1:-1, 1] < lower[1:-1, 1])  # lids open between the corners
        assert len(sample["json"]["head_pose"]) == 3


def test_gaze_anatomy_options_scale_the_iris_and_the_opening_and_nothing_else():
    for index in range(5):
        plain = sim.render("gaze", "synthetic", index, seed=6)["json"]
        same = sim.render("gaze", "synthetic", index, seed=6, iris_scale=1.0, opening=1.0)["json"]
        assert same == plain  # 1.0 is the eyes every recorded benchmark used
        drawn = sim.render("gaze", "synthetic", index, seed=6, iris_scale=1.2, opening=0.8)
        label = drawn["json"]
        assert (
            label["gaze"] == plain["gaze"]
            and label["eyeball"]["centre"] == plain["eyeball"]["centre"]
        )
        assert math.isclose(
            label["eyeball"]["iris_radius"], 1.2 * plain["eyeball"]["iris_radius"], rel_tol=1e-4
        )
        assert label["landmarks"]["eye_corners"] == plain["landmarks"]["eye_corners"]
        # both lids move towards the corner line by the same factor
        corners = np.array(plain["landmarks"]["eye_corners"])
        for lid in ("upper_lid", "lower_lid"):
            base = np.linspace(corners[0], corners[1], 8)
            was = np.linalg.norm(np.array(plain["landmarks"][lid]) - base, axis=1)
            now = np.linalg.norm(np.array(label["landmarks"][lid]) - base, axis=1)
            assert np.allclose(now, 0.8 * was, atol=2e-4)
    # the larger iris shows: more dark pixels inside the eye on average
    dark = [
        np.mean(
            [(s["png"] < 100).mean() for s in sim.generate("gaze", "synthetic", 30, seed=2, **o)]
        )
        for o in ({}, {"iris_scale": 1.3})
    ]
    assert dark[1] > dark[0] + 0.02  # about 40 more of 1,925 pixels (0.212 -> 0.247)
    for bad in ({"iris_scale": 0.1}, {"opening": 2}, {"opening": True}, {"iris_scale": "1"}):
        with pytest.raises(ValueError, match=f"gaze {next(iter(bad))} must be a number"):
            sim.render("gaze", "real", 0, **bad)


def test_gaze_iris_tone_darkens_the_iris_alone():
    plain = sim.generate("gaze", "synthetic", 12, seed=4)
    same = sim.generate("gaze", "synthetic", 12, seed=4, iris_tone=1.0)
    dark = sim.generate("gaze", "synthetic", 12, seed=4, iris_tone=0.4)
    drops = []
    for p, s, d in zip(plain, same, dark, strict=True):
        assert np.array_equal(s["png"], p["png"])  # 1.0 is the eyes every record used
        assert d["json"] == p["json"]  # labels and geometry stay
        before, after = p["png"].astype(int), d["png"].astype(int)
        assert np.all(after <= before)  # only darker
        cx, cy = p["json"]["landmarks"]["iris_centre"]
        y, x = np.mgrid[: before.shape[0], : before.shape[1]]
        moved = after < before
        reach = np.hypot(x - cx, y - cy)[moved]
        assert reach.size == 0 or reach.max() <= 1.2 * p["json"]["eyeball"]["iris_radius"] + 1
        drops.append((before - after).sum())
    assert np.mean(drops) > 12 * 20  # tens of iris pixels darker by tens of grey levels
    with pytest.raises(ValueError, match=r"gaze iris_tone must be a number in \[0.25, 1.5\]"):
        sim.render("gaze", "synthetic", 0, iris_tone=0.1)


def test_gaze_lower_lash_darkens_a_band_under_the_lower_lid_alone():
    plain = sim.generate("gaze", "synthetic", 12, seed=4)
    same = sim.generate("gaze", "synthetic", 12, seed=4, lower_lash=0.0)
    lashed = sim.generate("gaze", "synthetic", 12, seed=4, lower_lash=0.6)
    below, elsewhere = [], []
    for p, s, d in zip(plain, same, lashed, strict=True):
        assert np.array_equal(s["png"], p["png"])  # 0 is the eyes every earlier record used
        assert d["json"] == p["json"]  # labels and geometry stay
        before, after = p["png"].astype(int), d["png"].astype(int)
        assert np.all(after <= before)  # only darker
        # the lower lid polyline, interpolated per column: the band lies 0.5-5 px under it
        lid = np.asarray(p["json"]["landmarks"]["lower_lid"])
        y, x = np.mgrid[: before.shape[0], : before.shape[1]]
        under = y - np.interp(x, lid[:, 0], lid[:, 1])
        drop = before - after
        band = (under > 0.5) & (under < 5.0) & (x > lid[0, 0] + 4) & (x < lid[-1, 0] - 4)
        below.append(drop[band].mean())
        elsewhere.append(drop[(under < -1.5) | (under > 8.0)].mean())
    assert np.mean(below) > 8.0  # the band: several grey levels darker
    assert np.mean(elsewhere) < 0.1 * np.mean(below)  # the eye and the skin away from it stay
    with pytest.raises(ValueError, match=r"gaze lower_lash must be a number in \[0.0, 1.0\]"):
        sim.render("gaze", "synthetic", 0, lower_lash=1.5)


def test_gaze_distribution_options_move_and_scale_the_drawn_labels():
    plain = [s["json"]["gaze"] for s in sim.generate("gaze", "synthetic", 40, seed=8)]
    same = list(
        sim.generate("gaze", "synthetic", 40, seed=8, pitch_shift=0.0, yaw_shift=0, yaw_scale=1)
    )
    assert [s["json"]["gaze"] for s in same] == plain
    moved = list(
        sim.generate("gaze", "synthetic", 40, seed=8, pitch_shift=10, yaw_shift=-4, yaw_scale=0.5)
    )
    for p, m in zip(plain, moved, strict=True):
        assert m["json"]["gaze"]["pitch"] == pytest.approx(p["pitch"] + np.radians(10), abs=2e-5)
        assert m["json"]["gaze"]["yaw"] == pytest.approx(0.5 * p["yaw"] - np.radians(4), abs=2e-5)
    # the iris follows its label: higher in the crop when the gaze is shifted up
    rows = [
        np.mean([s["json"]["landmarks"]["iris_centre"][1] for s in drawn])
        for drawn in (same, moved)
    ]
    assert rows[1] < rows[0] - 2.0
    with pytest.raises(ValueError, match=r"gaze pitch_shift must be a number in \[-15.0, 15.0\]"):
        sim.render("gaze", "synthetic", 0, pitch_shift=20)


def _assert_equalised(images: np.ndarray) -> None:
    """Each (H, W) image of the stack spreads over the grey levels as MPIIGaze's equalised crops
    do: mean near the middle, quartiles near a quarter and three quarters of the range."""
    assert np.all(np.abs(images.mean(axis=(1, 2)) - 127.5) < 10)
    quartiles = np.percentile(images, [25, 75], axis=(1, 2))
    assert np.all(np.abs(quartiles[0] - 64) < 25) and np.all(np.abs(quartiles[1] - 191) < 25)


def test_gaze_equalise_spreads_a_synthetic_eye_over_the_grey_levels_and_keeps_its_order():
    plain = list(sim.generate("gaze", "synthetic", 12, seed=5))
    same = list(sim.generate("gaze", "synthetic", 12, seed=5, equalise=0))
    half = list(sim.generate("gaze", "synthetic", 12, seed=5, equalise=0.5))
    full = list(sim.generate("gaze", "synthetic", 12, seed=5, equalise=1.0))
    for p, s, h, f in zip(plain, same, half, full, strict=True):
        assert np.array_equal(s["png"], p["png"])  # 0 is the eyes every record used
        assert f["json"] == p["json"] and h["json"] == p["json"]  # labels and geometry stay
        before, after = p["png"].astype(int), f["png"].astype(int)
        _assert_equalised(after[None])  # like MPIIGaze's crops
        # a monotone map of the grey levels: a darker pixel never becomes the brighter one
        order = np.argsort(before.ravel(), kind="stable")
        assert np.all(np.diff(after.ravel()[order]) >= 0)
        # the blend lies between the drawn eye and the equalised one
        assert np.all(np.abs(2 * h["png"].astype(int) - before - after) <= 1)
    with pytest.raises(ValueError, match=r"gaze equalise must be a number in \[0.0, 1.0\]"):
        sim.render("gaze", "synthetic", 0, equalise=1.5)
    # the real variant is always equalised; the option leaves it alone
    real = sim.render("gaze", "real", 3, seed=5)["png"]
    assert np.array_equal(sim.render("gaze", "real", 3, seed=5, equalise=1)["png"], real)


def _high_frequency(image: np.ndarray) -> float:
    image = image.astype(np.float32)
    return float(np.abs(image - cv2.medianBlur(image, 3)).mean())


def test_real_gaze_is_equalised_and_grainy_like_mpiigaze():
    pairs = [
        (
            sim.render("gaze", "synthetic", i, seed=8)["png"],
            sim.render("gaze", "real", i, seed=8)["png"],
        )
        for i in range(20)
    ]
    # Skin below the lower lid: smooth shading in synthetic crops, grain and noise in real ones.
    noise = np.array([[_high_frequency(s[-6:]), _high_frequency(r[-6:])] for s, r in pairs])
    assert np.mean(noise[:, 1] > noise[:, 0]) > 0.8
    # MPIIGaze's normalised crops are histogram-equalised: every real crop spreads over the
    # grey levels with a mean near the middle; synthetic ones keep their own exposure.
    real = np.stack([r for _, r in pairs]).astype(np.float32)
    synthetic = np.stack([s for s, _ in pairs]).astype(np.float32)
    _assert_equalised(real)
    assert synthetic.mean(axis=(1, 2)).std() > 4 * real.mean(axis=(1, 2)).std()


def test_real_gaze_is_closer_to_mpiigaze_than_synthetic(shared_fixture):
    """The "real" variant is tuned against real MPIIGaze crops with the two-sample test."""
    from train.evaluation.realism import two_sample_test

    folder = shared_fixture("mpiigaze_unlabeled")
    crops = []
    for path in sorted(folder.glob("*.jpg"))[:600]:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)  # 36x60 -> centre 36x57 -> 35x55
        crops.append(cv2.resize(image[:, 1:58], (55, 35), interpolation=cv2.INTER_AREA))

    def unit(images):
        return torch.from_numpy(np.stack(images).astype(np.float32)[:, None] / 127.5 - 1.0)

    real = unit(crops)
    accuracy = {
        variant: two_sample_test(
            real,
            unit([s["png"] for s in sim.generate("gaze", variant, 600, seed=5)]),
            seed=0,
            epochs=5,
        )["accuracy"]
        for variant in ("synthetic", "real")
    }
    assert accuracy["synthetic"] > 0.97  # clean renders: told apart
    assert accuracy["real"] < accuracy["synthetic"] - 0.04, accuracy


# -- hand -------------------------------------------------------------------------------------


def test_hand_joints_agree_with_the_depth():
    near, total = 0, 0
    for sample in sim.generate("hand", "synthetic", 30, seed=6):
        label, depth = sample["json"], sample["depth.png"]
        assert label["joint_names"] == list(hands.JOINT_NAMES)
        uvd, xyz = np.array(label["joints_uvd"]), np.array(label["joints_xyz"])
        assert uvd.shape == xyz.shape == (14, 3)
        k = label["intrinsics"]
        projected = np.stack(
            [
                k["fx"] * xyz[:, 0] / xyz[:, 2] + k["cx"],
                k["fy"] * xyz[:, 1] / xyz[:, 2] + k["cy"],
                xyz[:, 2],
            ],
            axis=1,
        )
        assert np.allclose(projected, uvd, atol=1e-3)
        size = depth.shape[0]
        assert np.all((uvd[:, :2] >= 0) & (uvd[:, :2] <= size - 1))
        assert np.all((uvd[:, 2] > 300) & (uvd[:, 2] < 1200))  # hand centre at 500-900 mm
        surface = depth[np.rint(uvd[:, 1]).astype(int), np.rint(uvd[:, 0]).astype(int)].astype(
            float
        )
        # The surface is in front of a joint centre by about the finger / palm radius.
        in_front = uvd[:, 2] - surface
        near += int(np.sum((in_front > -2.0) & (in_front < 30.0)))
        total += len(in_front)
        assert np.all(depth > 0)
    assert near / total > 0.75


def test_real_hand_depth_has_kinect_artefacts():
    for index in range(5):
        synthetic = sim.render("hand", "synthetic", index, seed=1)["depth.png"]
        real = sim.render("hand", "real", index, seed=1)["depth.png"]
        holes = real == 0
        assert not np.any(synthetic == 0)
        assert 0.01 < holes.mean() < 0.5
        # Holes gather at depth discontinuities (edges of the hand).
        clean = synthetic.astype(np.float32)
        kernel = np.ones((5, 5), np.uint8)
        edge = (cv2.dilate(clean, kernel) - cv2.erode(clean, kernel)) > 20.0
        assert holes[edge].mean() > 2 * holes[~edge].mean()
        # Measured hand depth stays close to the truth where it is measured.
        hand = (synthetic < np.median(synthetic) - 100) & ~holes
        assert np.median(np.abs(real[hand].astype(int) - synthetic[hand].astype(int))) < 10


# -- scene ------------------------------------------------------------------------------------


def test_scene_seg_and_depth_agree():
    train_ids = set(streets.CLASSES.values())
    for sample in sim.generate("scene", "synthetic", 6, seed=2):
        seg, depth, label = sample["seg.png"], sample["depth.png"], sample["json"]
        assert label["ontology"] == "cityscapes-19" and label["depth_unit"] == "cm"
        present = sorted(np.unique(seg).tolist())
        assert label["present"] == present
        assert set(present) <= train_ids
        assert np.array_equal(seg == streets.SKY, depth == streets.SKY_DEPTH)
        camera = label["camera"]
        rows = np.arange(seg.shape[0], dtype=np.float64)[:, None] * np.ones(seg.shape)
        below = rows > camera["cy"]  # the ground is only seen below the horizon row
        ground_cm = np.full(seg.shape, np.inf)
        ground_cm[below] = 100.0 * camera["fy"] * camera["height_m"] / (rows[below] - camera["cy"])
        # Road is the ground plane itself; cars and people stand in front of the ground behind them.
        road = seg == streets.ROAD
        assert np.all(below[road])
        assert np.all(
            np.abs(depth[road] - np.minimum(ground_cm[road], streets.MAX_DEPTH_CM)) <= 1.0
        )
        for class_id in (streets.CAR, streets.PERSON):
            mask = (seg == class_id) & below
            assert np.all(depth[mask] < ground_cm[mask] + 1.0)
        assert np.all(depth[seg != streets.SKY] < streets.SKY_DEPTH)


def test_real_scene_changes_palette_and_texture_not_labels():
    shifts, noise = [], []
    for index in range(4):
        synthetic = sim.render("scene", "synthetic", index, seed=5)
        real = sim.render("scene", "real", index, seed=5)
        seg = synthetic["seg.png"]
        for class_id in (streets.ROAD, streets.BUILDING, streets.SKY, streets.VEGETATION):
            mask = seg == class_id
            if mask.sum() > 500:
                mean_s = synthetic["png"][mask].mean(0)
                mean_r = real["png"][mask].mean(0)
                shifts.append(np.abs(mean_s - mean_r).max())
        road = seg == streets.ROAD
        noise.append(
            [
                _high_frequency(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
                for img in (synthetic["png"], real["png"])
            ]
        )
        assert road.any()
    assert np.median(shifts) > 20
    noise = np.array(noise)
    assert np.all(noise[:, 1] > noise[:, 0])


# -- the benchmark ----------------------------------------------------------------------------


@pytest.mark.slow
def test_domain_gap_benchmark_quick(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # benchmarks/
    from benchmarks import domain_gap

    figures = domain_gap.main(["--quick", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "domain_gap.json").read_text())
    assert record["figures"] == json.loads(json.dumps(figures))
    assert record["settings"]["quick"] is True
    for domain in sim.DOMAINS:
        row = record["figures"][domain]
        for key in (
            "train_synthetic_test_synthetic",
            "train_synthetic_test_real",
            "train_real_test_real",
            "drop_abs",
            "drop_rel",
        ):
            assert math.isfinite(row[key]), (domain, key)
        assert record["settings"]["domains"][domain]["train"] > 0
