"""Gaze formats on trees in their real on-disk layout: UnityEyes (imgs/N.jpg + N.json) and
MPIIGaze (Data/Normalized/pXX/dayNN.mat), checked exactly against hand-computed values."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from refinery.formats import open_format
from refinery.ingest import Filtered
from refinery.samples import MALFORMED, MISSING, UNDECODABLE, SampleError, decode_sample
from refinery.sim.eyes import look_vector

# -- UnityEyes --------------------------------------------------------------------------------


def unity(points_top_left, height):
    """Image (x, y-down) points → UnityEyes strings (origin bottom-left, a depth third)."""
    return [f"({x:.4f}, {height - y:.4f}, 9.0000)" for x, y in points_top_left]


def margin_points(left, right, top, bottom):
    """16 interior-margin points: 0 left corner, 1..7 upper lid, 8 right corner, 9..15 lower."""
    xs = np.linspace(left, right, 9)
    t = np.linspace(0, np.pi, 9)
    mid = (top + bottom) / 2
    upper = [(x, mid - (mid - top) * np.sin(a)) for x, a in zip(xs, t, strict=True)]
    lower = [(x, mid + (bottom - mid) * np.sin(a)) for x, a in zip(xs, t, strict=True)]
    return upper + lower[::-1][1:-1]  # 0..8 along the top, then 15..9 back along the bottom


def write_unityeyes(
    root: Path,
    stem: str,
    *,
    shape=(120, 160),
    margin=None,
    look_vec="(0.0000, 0.0000, -1.0000, 0.0000)",
    head_pose="(0.0000, 180.0000, 0.0000)",
    seed=0,
):
    """One imgs/N.jpg + imgs/N.json pair; returns the decoded grayscale image."""
    height, width = shape
    imgs = root / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2)
    cv2.imwrite(str(imgs / f"{stem}.jpg"), image)
    margin = margin if margin is not None else margin_points(50, 90, 50, 66)
    label = {
        "interior_margin_2d": unity(margin, height),
        "caruncle_2d": unity([(46, 58), (47, 60), (45, 59)], height),
        "iris_2d": unity([(70 + 8 * math.cos(a), 58 + 8 * math.sin(a)) for a in range(8)], height),
        "eye_details": {"look_vec": look_vec, "pupil_size": "0.1", "iris_size": "0.9"},
        "head_pose": head_pose,
    }
    (imgs / f"{stem}.json").write_text(json.dumps(label, indent=2))
    return cv2.imread(str(imgs / f"{stem}.jpg"), cv2.IMREAD_GRAYSCALE)


def convert_one(root, stem="1", **options):
    reader = open_format("unityeyes", str(root), **options)
    (item,) = [i for i in reader.items() if i.name == f"imgs/{stem}"]
    (sample,) = reader.convert(item)
    return decode_sample(sample, "gaze")


def test_crop_box_and_landmarks_at_scale_one(tmp_path):
    image = write_unityeyes(tmp_path, "1")
    sample = convert_one(tmp_path, size=(36, 60))
    label = sample["json"]
    # interior margin x 50..90, y 50..66: centre (70, 58), box 1.5 * 40 = 60 wide, 36 high.
    assert label["crop"]["box"] == [40, 40, 100, 76]
    assert label["crop"]["scale"] == [1.0, 1.0]
    assert label["crop"]["source_size"] == [160, 120]
    assert label["crop"]["padded"] is False
    assert np.array_equal(sample["png"], image[40:76, 40:100])
    marks = label["landmarks"]
    # A point at (x, y) moves to pixel-centre coordinates (x - 40 - 0.5, y - 40 - 0.5).
    assert np.allclose(marks["eye_corners"], [[9.5, 17.5], [49.5, 17.5]], atol=1e-3)
    assert np.allclose(marks["upper_lid"][4], [29.5, 9.5], atol=1e-3)  # the apex, y = 50
    assert np.allclose(marks["lower_lid"][4], [29.5, 25.5], atol=1e-3)  # the nadir, y = 66
    assert len(marks["upper_lid"]) == len(marks["lower_lid"]) == 9
    assert marks["upper_lid"][0] == marks["lower_lid"][0] == marks["eye_corners"][0]
    assert marks["upper_lid"][-1] == marks["lower_lid"][-1] == marks["eye_corners"][1]
    assert np.allclose(marks["iris_centre"], np.mean(marks["iris"], axis=0))
    assert np.allclose(marks["caruncle"][0], [46 - 40.5, 58 - 40.5], atol=1e-3)
    assert sample["__key__"] == "unityeyes-00000001"
    assert label["source"]["image"] == "imgs/1.jpg"
    assert label["source"]["label"] == "imgs/1.json"


def test_crop_is_area_resized_to_the_default_size(tmp_path):
    margin = margin_points(100, 100 + 220 / 3, 80, 100)
    image = write_unityeyes(tmp_path, "3", shape=(160, 240), margin=margin)
    sample = convert_one(tmp_path, "3")
    label = sample["json"]
    # centre (136.67, 90); 110 x 70 (35/55 of the width): x0 = floor(81.67 + 0.5), y0 = 55.
    assert label["crop"]["box"] == [82, 55, 192, 125]
    assert label["crop"]["scale"] == [0.5, 0.5]
    expected = cv2.resize(image[55:125, 82:192], (55, 35), interpolation=cv2.INTER_AREA)
    assert sample["png"].shape == (35, 55)
    assert np.array_equal(sample["png"], expected)
    # (100, 90) -> ((100 - 82) * 0.5 - 0.5, (90 - 55) * 0.5 - 0.5)
    assert np.allclose(label["landmarks"]["eye_corners"][0], [8.5, 17.0], atol=1e-3)


def test_a_box_past_the_image_edge_is_padded_by_replication(tmp_path):
    image = write_unityeyes(tmp_path, "2", shape=(70, 95), margin=margin_points(62, 92, 50, 66))
    sample = convert_one(tmp_path, "2", size=(36, 60))
    label = sample["json"]
    # centre (77, 58); 1.5 * 30 = 45 wide, 27 high: x 55..100 (5 past 95), y 45..72 (2 past 70).
    assert label["crop"]["box"] == [55, 45, 100, 72]
    assert label["crop"]["padded"] is True
    padded = cv2.copyMakeBorder(image[45:70, 55:95], 0, 2, 0, 5, cv2.BORDER_REPLICATE)
    expected = cv2.resize(padded, (60, 36), interpolation=cv2.INTER_LINEAR)  # enlarging
    assert np.array_equal(sample["png"], expected)


@pytest.mark.parametrize(
    ("look_vec", "pitch", "yaw"),
    [
        ((0.0, 0.0, -1.0), 0.0, 0.0),
        ((0.0, 1.0, -1.0), math.pi / 4, 0.0),  # Unity y is up: looking up
        ((0.0, -0.5, -math.sqrt(3) / 2), -math.pi / 6, 0.0),
        ((1.0, 0.0, -1.0), 0.0, -math.pi / 4),  # x right: the iris moves to the image right
        ((-0.5, 0.0, -math.sqrt(3) / 2), 0.0, math.pi / 6),
    ],
)
def test_gaze_angles_for_known_look_vectors(tmp_path, look_vec, pitch, yaw):
    text = "({:.6f}, {:.6f}, {:.6f}, 0.0000)".format(*look_vec)
    write_unityeyes(tmp_path, "1", look_vec=text)
    label = convert_one(tmp_path)["json"]
    assert label["gaze"]["pitch"] == pytest.approx(pitch, abs=1e-6)
    assert label["gaze"]["yaw"] == pytest.approx(yaw, abs=1e-6)
    g = np.array(look_vec) * [1, -1, 1]
    assert np.allclose(label["look_vec"], g / np.linalg.norm(g), atol=1e-6)
    # The same convention as the procedural eyes: look_vector(pitch, yaw) gives look_vec back.
    assert np.allclose(look_vector(pitch, yaw), label["look_vec"], atol=1e-6)


def test_real_unityeyes_label_parses_to_the_documented_gaze(tmp_path, shared_fixture):
    fixture = shared_fixture("unityeyes/1.json")
    (tmp_path / "imgs").mkdir()
    shutil.copyfile(fixture, tmp_path / "imgs" / "1.json")
    # No image was published with the label; it rendered at 800x600.
    cv2.imwrite(str(tmp_path / "imgs" / "1.jpg"), np.full((600, 800, 3), 128, np.uint8))
    label = convert_one(tmp_path)["json"]
    assert label["gaze"]["pitch"] == pytest.approx(0.3983, abs=1e-3)
    assert label["gaze"]["yaw"] == pytest.approx(-0.3783, abs=1e-3)
    assert label["source"]["look_vec"] == [0.3404, 0.3879, -0.8566, 0.0]
    assert label["source"]["head_pose_deg"] == [355.0770, 203.8451, 0.0]
    # The camera's Euler angles (p, y) give the face direction (-sin y, sin p cos y, cos p cos y)
    # in its y-up frame: pitch 4.50°, yaw -23.92°, near GazeML's corrected (-4.92°, 23.85°)
    # with the signs flipped.
    p, y = np.radians([355.0770, 203.8451])
    assert label["head_pose"][0] == pytest.approx(math.asin(math.sin(p) * math.cos(y)), abs=1e-6)
    assert label["head_pose"][1] == pytest.approx(
        math.atan2(math.sin(y), -math.cos(p) * math.cos(y)), abs=1e-6
    )
    assert np.degrees(label["head_pose"][:2]) == pytest.approx([4.50, -23.92], abs=0.01)
    # GazeML's eyeball model: the iris centre lies R = 71.7593 px from the image centre along
    # (g_x, g_y); the mean of iris_2d agrees within a few pixels.
    x0, y0 = label["crop"]["box"][:2]
    sx, sy = label["crop"]["scale"]
    u, v = label["landmarks"]["iris_centre"]
    iris_source = np.array([(u + 0.5) / sx + x0, (v + 0.5) / sy + y0])
    model = np.array([400.0, 300.0]) + 71.7593 * np.array(label["look_vec"][:2])
    assert np.linalg.norm(iris_source - model) < 5.0


def test_head_pose_range_filters(tmp_path, shared_fixture):
    fixture = shared_fixture("unityeyes/1.json")
    (tmp_path / "imgs").mkdir()
    shutil.copyfile(fixture, tmp_path / "imgs" / "1.json")
    cv2.imwrite(str(tmp_path / "imgs" / "1.jpg"), np.full((600, 800, 3), 128, np.uint8))
    reader = open_format("unityeyes", str(tmp_path), head_pose_range=(20, 20))
    with pytest.raises(Filtered) as caught:
        reader.convert(reader.items()[0])
    assert caught.value.reason == "head-pose"
    assert "yaw -23.9°" in caught.value.detail
    assert convert_one(tmp_path, head_pose_range=(4.6, 24))["json"]["gaze"]["pitch"] > 0
    with pytest.raises(Filtered):  # pitch 4.50 > 4.4
        convert_one(tmp_path, head_pose_range=(4.4, 24))


@pytest.mark.parametrize(
    ("head_pose", "expected"),
    [
        ("(0.0000, 180.0000, 0.0000)", [0.0, 0.0, 0.0]),  # frontal
        ("(0.0000, 190.0000, 0.0000)", [0.0, -10.0, 0.0]),
        ("(350.0000, 180.0000, 0.0000)", [10.0, 0.0, 0.0]),
        ("(0.0000, 180.0000, 10.0000)", [0.0, 0.0, 10.0]),
    ],
)
def test_head_pose_in_the_gaze_convention(tmp_path, head_pose, expected):
    write_unityeyes(tmp_path, "1", head_pose=head_pose)
    label = convert_one(tmp_path, head_pose_range=(10, 10))["json"]
    assert np.allclose(label["head_pose"], np.radians(expected), atol=1e-9)


def test_bad_unityeyes_files_are_rejects_naming_the_file(tmp_path):
    write_unityeyes(tmp_path, "1")
    write_unityeyes(tmp_path, "2")
    write_unityeyes(tmp_path, "3", look_vec="(0.1, 0.2)")
    write_unityeyes(tmp_path, "4")
    write_unityeyes(tmp_path, "5", look_vec="__import__('os')")
    write_unityeyes(tmp_path, "6")
    (tmp_path / "imgs" / "6.jpg").write_bytes(b"")  # zero bytes: OpenCV asserts, not None
    (tmp_path / "imgs" / "1.jpg").unlink()
    (tmp_path / "imgs" / "2.json").unlink()
    (tmp_path / "imgs" / "4.jpg").write_bytes(b"not a jpeg")
    reader = open_format("unityeyes", str(tmp_path))
    items = reader.items()
    assert [i.name for i in items] == [f"imgs/{n}" for n in range(1, 7)]
    expected = {
        "1": (MISSING, "1.jpg", "png"),
        "2": (MISSING, "2.json", "json"),
        "3": (MALFORMED, "3.json", "json"),
        "4": (UNDECODABLE, "4.jpg", "png"),
        "5": (MALFORMED, "5.json", "json"),
        "6": (UNDECODABLE, "6.jpg", "png"),
    }
    for item in items:
        with pytest.raises(SampleError) as caught:
            reader.convert(item)
        reason, name, component = expected[item.name.rsplit("/", 1)[1]]
        error = caught.value
        assert (error.reason, Path(error.url).name, error.component) == (reason, name, component)
        assert error.key == f"unityeyes-0000000{item.name[-1]}"


def test_unityeyes_items_sort_by_number_and_root_may_be_imgs(tmp_path):
    for stem in ("10", "2", "1"):
        write_unityeyes(tmp_path, stem)
    names = [i.name for i in open_format("unityeyes", str(tmp_path)).items()]
    assert names == ["imgs/1", "imgs/2", "imgs/10"]
    inner = [i.name for i in open_format("unityeyes", str(tmp_path / "imgs")).items()]
    assert inner == ["1", "2", "10"]


def test_unityeyes_options_are_checked():
    with pytest.raises(ValueError, match="size"):
        open_format("unityeyes", ".", size=(35,))
    with pytest.raises(ValueError, match="head_pose_range"):
        open_format("unityeyes", ".", head_pose_range=(-1, 20))
    with pytest.raises(TypeError):
        open_format("unityeyes", ".", crop=3)


# -- MPIIGaze ---------------------------------------------------------------------------------


def rodrigues(pitch, yaw, roll):
    """The Rodrigues vector of R = Ry(yaw) Rx(-pitch) Rz(roll)."""
    ry = cv2.Rodrigues(np.array([0.0, yaw, 0.0]))[0]
    rx = cv2.Rodrigues(np.array([-pitch, 0.0, 0.0]))[0]
    rz = cv2.Rodrigues(np.array([0.0, 0.0, roll]))[0]
    return cv2.Rodrigues(ry @ rx @ rz)[0].ravel()


def write_day(root: Path, person: str, day: str, count: int, *, seed=0, filenames=True):
    """Data/Normalized/<person>/<day>.mat in MPIIGaze's struct layout; returns its arrays."""
    rng = np.random.default_rng(seed)
    eyes = {}
    for eye in ("left", "right"):
        pitch = rng.uniform(-0.4, 0.4, count)
        yaw = rng.uniform(-0.5, 0.5, count)
        eyes[eye] = {
            "image": rng.integers(0, 256, (count, 36, 60), dtype=np.uint8),
            "gaze": np.stack([look_vector(p, y) for p, y in zip(pitch, yaw, strict=True)]),
            "pose": np.stack([rodrigues(0.1, 0.2 + 0.01 * i, 0.05) for i in range(count)]),
        }
    folder = root / "Data" / "Normalized" / person
    folder.mkdir(parents=True, exist_ok=True)
    content = {"data": eyes}
    if filenames:
        content["filenames"] = np.array([f"{i + 1:04d}.jpg" for i in range(count)], dtype=object)
    scipy.io.savemat(str(folder / f"{day}.mat"), content)
    return eyes


def convert_day(root, name, **options):
    reader = open_format("mpiigaze", str(root), **options)
    (item,) = [i for i in reader.items() if i.name == name]
    return [decode_sample(s, "gaze") for s in reader.convert(item)]


def test_mpiigaze_items_follow_the_real_layout(tmp_path):
    write_day(tmp_path, "p01", "day01", 2)
    write_day(tmp_path, "p00", "day02", 2)
    write_day(tmp_path, "p00", "day01", 2)
    names = [i.name for i in open_format("mpiigaze", str(tmp_path)).items()]
    assert names == [
        "Data/Normalized/p00/day01",
        "Data/Normalized/p00/day02",
        "Data/Normalized/p01/day01",
    ]
    inner = open_format("mpiigaze", str(tmp_path / "Data" / "Normalized")).items()
    assert [i.name for i in inner] == ["p00/day01", "p00/day02", "p01/day01"]


def test_mpiigaze_left_as_is_right_mirrored(tmp_path):
    eyes = write_day(tmp_path, "p03", "day07", 3)
    samples = convert_day(tmp_path, "Data/Normalized/p03/day07")
    assert [s["__key__"] for s in samples] == [
        f"mpiigaze-p03-day07-{i:04d}-{eye}" for i in range(3) for eye in ("left", "right")
    ]
    mirror = np.diag([-1.0, 1.0, 1.0])
    for index in range(3):
        left, right = samples[2 * index], samples[2 * index + 1]
        assert np.array_equal(left["png"], eyes["left"]["image"][index])
        assert np.array_equal(right["png"], eyes["right"]["image"][index][:, ::-1])
        g_left = eyes["left"]["gaze"][index]
        g_right = eyes["right"]["gaze"][index] * [-1, 1, 1]
        assert np.allclose(left["json"]["look_vec"], g_left)
        assert np.allclose(right["json"]["look_vec"], g_right)
        for sample, g in ((left, g_left), (right, g_right)):
            gaze = sample["json"]["gaze"]
            assert np.allclose(look_vector(gaze["pitch"], gaze["yaw"]), g)
            assert gaze["pitch"] == pytest.approx(math.asin(-g[1]))
            assert gaze["yaw"] == pytest.approx(math.atan2(-g[0], -g[2]))
        # Head pose written as R = Ry(0.2 + 0.01 i) Rx(-0.1) Rz(0.05): pitch 0.1, roll 0.05.
        want = [0.1, 0.2 + 0.01 * index, 0.05]
        assert np.allclose(left["json"]["head_pose"], want, atol=1e-6)
        assert np.allclose(right["json"]["head_pose"], [want[0], -want[1], -want[2]], atol=1e-6)
        r = cv2.Rodrigues(np.array(eyes["right"]["pose"][index]))[0]
        r_mirrored = cv2.Rodrigues(np.array(right["json"]["head_rvec"]))[0]
        assert np.allclose(r_mirrored, mirror @ r @ mirror, atol=1e-6)
        assert (left["json"]["mirrored"], right["json"]["mirrored"]) == (False, True)
        assert (left["json"]["eye"], right["json"]["eye"]) == ("left", "right")
        assert left["json"]["source"] == {
            "dataset": "mpiigaze",
            "file": "Data/Normalized/p03/day07.mat",
            "person": "p03",
            "day": "day07",
            "index": index,
            "image": f"{index + 1:04d}.jpg",
        }
        assert "resize" not in left["json"]


def test_mpiigaze_single_sample_day_file(tmp_path):
    eyes = write_day(tmp_path, "p00", "day01", 1)
    # scipy squeezes a one-sample day to rank-lower arrays and filenames to a bare string.
    squeezed = scipy.io.loadmat(
        str(tmp_path / "Data/Normalized/p00/day01.mat"), struct_as_record=False, squeeze_me=True
    )
    assert squeezed["data"].left.image.shape == (36, 60)
    assert isinstance(squeezed["filenames"], str)
    samples = convert_day(tmp_path, "Data/Normalized/p00/day01")
    assert [s["__key__"] for s in samples] == [
        "mpiigaze-p00-day01-0000-left",
        "mpiigaze-p00-day01-0000-right",
    ]
    assert np.array_equal(samples[1]["png"], eyes["right"]["image"][0][:, ::-1])
    assert samples[0]["json"]["source"]["image"] == "0001.jpg"


def test_mpiigaze_without_filenames(tmp_path):
    write_day(tmp_path, "p00", "day01", 2, filenames=False)
    samples = convert_day(tmp_path, "Data/Normalized/p00/day01")
    assert len(samples) == 4 and samples[0]["json"]["source"]["image"] is None


def test_mpiigaze_optional_resize(tmp_path):
    eyes = write_day(tmp_path, "p00", "day01", 2)
    samples = convert_day(tmp_path, "Data/Normalized/p00/day01", size=(35, 55))
    right = np.ascontiguousarray(eyes["right"]["image"][1][:, ::-1])
    expected = cv2.resize(right, (55, 35), interpolation=cv2.INTER_AREA)
    assert samples[3]["png"].shape == (35, 55)
    assert np.array_equal(samples[3]["png"], expected)
    assert samples[3]["json"]["resize"] == {"from": [36, 60], "to": [35, 55]}


def test_bad_mpiigaze_files_are_rejects(tmp_path):
    write_day(tmp_path, "p00", "day01", 2)
    folder = tmp_path / "Data" / "Normalized" / "p00"
    (folder / "day02.mat").write_bytes(b"MATLAB 5.0 but not really")
    scipy.io.savemat(str(folder / "day03.mat"), {"data": {"left": {"image": 1}}})
    reader = open_format("mpiigaze", str(tmp_path))
    items = reader.items()
    for item, reason in zip(items[1:], (UNDECODABLE, MALFORMED), strict=True):
        with pytest.raises(SampleError) as caught:
            reader.convert(item)
        assert caught.value.reason == reason
        assert caught.value.url == item.paths[0]


def test_mpiigaze_through_the_command(tmp_path, capsys):
    from refinery.cli import main
    from refinery.shards import read

    write_day(tmp_path, "p00", "day01", 1)
    write_day(tmp_path, "p00", "day02", 3, seed=1)
    write_day(tmp_path, "p01", "day01", 2, seed=2)
    out = tmp_path / "out"
    assert main(["ingest", "mpiigaze", str(tmp_path), "--out", str(out), "--size", "35x55"]) == 0
    # Two day files per shard by default.
    assert sorted(p.name for p in out.glob("*.tar")) == [
        "mpiigaze-000000.tar",
        "mpiigaze-000001.tar",
    ]
    samples = list(read(str(out), "gaze"))
    assert len(samples) == 2 * (1 + 3 + 2)
    assert {s["png"].shape for s in samples} == {(35, 55)}
    assert "12 written" in capsys.readouterr().out
    with pytest.raises(SystemExit) as caught:
        main(["ingest", "mpiigaze", str(tmp_path), "--out", str(out), "--head-pose-range", "9,9"])
    assert caught.value.code == 2
    assert "--head-pose-range does not apply to format 'mpiigaze'" in capsys.readouterr().err
