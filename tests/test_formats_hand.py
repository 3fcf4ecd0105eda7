"""The `nyu-hand` format: NYU hand pose depth PNGs + joint_data.mat, written in the real layout."""

from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest
import scipy.io

from refinery.formats import format_info, list_formats, open_format
from refinery.formats.nyu_hand import EVAL14, NYU_JOINT_NAMES
from refinery.samples import MALFORMED, MISSING, UNDECODABLE, SampleError, decode_sample
from refinery.sim.hands import JOINT_NAMES

FX, FY, CX, CY = 588.036865, 587.075073, 320.0, 240.0  # NYU convert_xyz_to_uvd.m
KINECTS, FRAMES = 3, 4


def nyu_xyz(uvd: np.ndarray) -> np.ndarray:
    """NYU's convert_uvd_to_xyz.m: y up."""
    xyz = np.empty_like(uvd)
    xyz[..., 2] = uvd[..., 2]
    xyz[..., 0] = (uvd[..., 0] / 640 - 0.5) * uvd[..., 2] * 1.08836710
    xyz[..., 1] = (0.5 - uvd[..., 1] / 480) * uvd[..., 2] * 0.817612648
    return xyz


def write_labels(root, uvd: np.ndarray) -> None:
    names = np.empty((1, 36), dtype=object)
    names[0, :] = NYU_JOINT_NAMES  # a MATLAB cell array, as in the dataset
    scipy.io.savemat(
        root / "joint_data.mat",
        {"joint_names": names, "joint_uvd": uvd, "joint_xyz": nyu_xyz(uvd)},
    )


def random_uvd(rng: np.random.Generator) -> np.ndarray:
    uvd = np.empty((KINECTS, FRAMES, 36, 3))
    uvd[..., 0] = rng.uniform(150, 490, uvd.shape[:3])
    uvd[..., 1] = rng.uniform(110, 370, uvd.shape[:3])
    uvd[..., 2] = rng.uniform(600, 900, uvd.shape[:3])
    return uvd


def write_depth(path, depth_mm: np.ndarray, rng: np.random.Generator | None = None) -> None:
    """NYU packing: G = high byte, B = low byte, R unused (filled with noise to catch swaps)."""
    bgr = np.zeros((*depth_mm.shape, 3), np.uint8)
    bgr[..., 0] = depth_mm & 0xFF  # OpenCV writes channel 0 as the PNG's blue
    bgr[..., 1] = depth_mm >> 8
    if rng is not None:
        bgr[..., 2] = rng.integers(0, 256, depth_mm.shape, dtype=np.uint8)
    assert cv2.imwrite(str(path), bgr)


@pytest.fixture
def tree(tmp_path):
    """joint_data.mat for 3 views x 4 frames, and a few synthetic and real frames."""
    rng = np.random.default_rng(0)
    uvd = random_uvd(rng)
    write_labels(tmp_path, uvd)
    depth = rng.integers(0, 4096, (480, 640)).astype(np.uint16)
    for name in (
        "synthdepth_1_0000002.png",
        "synthdepth_1_0000001.png",
        "synthdepth_2_0000003.png",
        "depth_1_0000001.png",
        "rgb_1_0000001.png",
    ):
        write_depth(tmp_path / name, depth, rng)
    return tmp_path, uvd, depth


def convert_one(fmt, name: str) -> dict:
    (item,) = [item for item in fmt.items() if item.name == name]
    (sample,) = fmt.convert(item)
    return decode_sample(sample, "hand")


def test_registered_in_the_hand_domain():
    assert "nyu-hand" in list_formats()
    assert format_info("nyu-hand").domain == "hand"


def test_items_list_the_variants_files_in_order_without_reading_labels(tree):
    root, _, _ = tree
    fmt = open_format("nyu-hand", str(root))
    assert [item.name for item in fmt.items()] == [
        "synthdepth_1_0000001",
        "synthdepth_1_0000002",
        "synthdepth_2_0000003",
    ]
    assert fmt.items()[2].data == (2, 3)
    assert fmt._joints is None  # the (big) label file is read on the first convert only
    real = open_format("nyu-hand", str(root), variant="real")
    assert [item.name for item in real.items()] == ["depth_1_0000001"]
    view2 = open_format("nyu-hand", str(root), kinect=2)
    assert [item.name for item in view2.items()] == ["synthdepth_2_0000003"]


def test_depth_is_g_times_256_plus_b_in_mm(tmp_path):
    rng = np.random.default_rng(1)
    write_labels(tmp_path, random_uvd(rng))
    depth = rng.integers(0, 65536, (480, 640)).astype(np.uint16)
    depth[0, :8] = [0, 1, 255, 256, 257, 731, 2000, 2001]  # > 255: G matters
    write_depth(tmp_path / "depth_1_0000001.png", depth, rng)

    kept = convert_one(
        open_format("nyu-hand", str(tmp_path), variant="real", no_depth=None), "depth_1_0000001"
    )
    assert kept["depth.png"].dtype == np.uint16
    np.testing.assert_array_equal(kept["depth.png"], depth)

    default = convert_one(open_format("nyu-hand", str(tmp_path), variant="real"), "depth_1_0000001")
    np.testing.assert_array_equal(default["depth.png"], np.where(depth == 2001, 0, depth))
    assert default["json"]["source"]["no_depth"] == 2001


def test_joints_of_the_files_view_and_frame_eval_subset_and_all_36(tree):
    root, uvd, _ = tree
    label = convert_one(open_format("nyu-hand", str(root)), "synthdepth_2_0000003")["json"]
    want_uvd = uvd[1, 2]  # view 2, frame 3 (both 1-based in the file name)
    want_xyz = nyu_xyz(want_uvd) * [1.0, -1.0, 1.0]  # y down, like refinery/sim/hands.py
    assert EVAL14 == (0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32)
    np.testing.assert_array_equal(label["joints_uvd"], want_uvd[list(EVAL14)])
    np.testing.assert_allclose(label["joints_xyz"], want_xyz[list(EVAL14)], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(label["nyu36"]["joints_uvd"], want_uvd)
    np.testing.assert_allclose(label["nyu36"]["joints_xyz"], want_xyz, rtol=0, atol=1e-9)
    assert label["joint_names"] == list(JOINT_NAMES)
    assert label["nyu_joint_names"] == [
        "F1_KNU3_A", "F1_KNU2_B", "F2_KNU3_A", "F2_KNU2_B", "F3_KNU3_A", "F3_KNU2_B",
        "F4_KNU3_A", "F4_KNU2_B", "TH_KNU3_A", "TH_KNU3_B", "TH_KNU2_B",
        "PALM_1", "PALM_2", "PALM_3",
    ]  # fmt: skip
    assert label["nyu36"]["joint_names"] == list(NYU_JOINT_NAMES)
    assert label["intrinsics"] == {"fx": FX, "fy": FY, "cx": CX, "cy": CY}
    assert label["depth_unit"] == "mm"
    assert label["source"] == {
        "dataset": "nyu-hand",
        "file": "synthdepth_2_0000003.png",
        "labels": "joint_data.mat",
        "kinect": 2,
        "frame": 3,
        "no_depth": 2001,
    }
    # The y sign: u = fx x / z + cx and v = fy y / z + cy with positive intrinsics.
    xyz, got = np.array(label["joints_xyz"]), np.array(label["joints_uvd"])
    np.testing.assert_allclose(FX * xyz[:, 0] / xyz[:, 2] + CX, got[:, 0], atol=1e-3)
    np.testing.assert_allclose(FY * xyz[:, 1] / xyz[:, 2] + CY, got[:, 1], atol=1e-3)


def test_keys_are_stable_unique_and_dotless(tree):
    root, _, _ = tree
    keys = []
    for variant in ("synthetic", "real"):
        fmt = open_format("nyu-hand", str(root), variant=variant)
        keys += [fmt.convert(item)[0]["__key__"] for item in fmt.items()]
    assert keys == [
        "nyu-synth-k1-0000001",
        "nyu-synth-k1-0000002",
        "nyu-synth-k2-0000003",
        "nyu-real-k1-0000001",
    ]


def hand_scene(centre_depth: float) -> np.ndarray:
    """A wall (NYU's 2001 marker) with a 'hand' near the centre depth, distinct per pixel."""
    y, x = np.mgrid[0:480, 0:640]
    depth = np.full((480, 640), 2001, np.uint16)
    hand = (centre_depth - 120 + (7 * x + 13 * y) % 240).astype(np.uint16)  # some beyond the cube
    box = (np.abs(x - 320) < 200) & (np.abs(y - 240) < 180)
    depth[box] = hand[box]
    return depth


@pytest.mark.parametrize(
    ("centre", "size"),
    [((300.3, 200.7, 750.0), 64), ((330.8, 260.2, 1200.0), 224), ((20.4, 450.6, 720.0), 96)],
    ids=["downscale", "upscale", "off-the-frame"],
)
def test_crop_moves_joints_and_resamples_depth_by_nearest(tmp_path, centre, size):
    rng = np.random.default_rng(2)
    uvd = random_uvd(rng)
    uvd[0, 0, 32] = centre  # PALM_3, the crop centre
    write_labels(tmp_path, uvd)
    depth = hand_scene(centre[2])
    write_depth(tmp_path / "synthdepth_1_0000001.png", depth)

    fmt = open_format("nyu-hand", str(tmp_path), crop=size)
    sample = convert_one(fmt, "synthdepth_1_0000001")
    label = sample["json"]

    u, v, d = centre
    side = round(300 * FX / d)
    x0, y0 = math.floor(u - (side - 1) / 2 + 0.5), math.floor(v - (side - 1) / 2 + 0.5)
    assert label["crop"] == {
        "box": [x0, y0, side, side],
        "scale": size / side,
        "size": size,
        "cube_mm": 300.0,
        "center": "PALM_3",
        "center_uvd": list(centre),
        "source_size": [640, 480],
    }
    # Reference: cut (zero-padded off the frame), OpenCV's exact nearest resize, cube test.
    # With an odd side no destination pixel centre falls half-way between two source pixels,
    # so the nearest pixel is unique and OpenCV's fixed-point rounding cannot differ.
    assert side % 2 == 1
    wall_free = np.where(depth == 2001, 0, depth)
    padded = np.zeros((480 + 2 * side, 640 + 2 * side), np.uint16)
    padded[side : side + 480, side : side + 640] = wall_free
    cut = padded[y0 + side : y0 + 2 * side, x0 + side : x0 + 2 * side]
    want = cv2.resize(cut, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    want[np.abs(want.astype(float) - d) > 150] = 0
    np.testing.assert_array_equal(sample["depth.png"], want)
    assert sample["depth.png"].shape == (size, size)
    assert (sample["depth.png"] > 0).any()

    scale = size / side
    full = uvd[0, 0]
    moved_u = (full[:, 0] - x0 + 0.5) * scale - 0.5
    moved_v = (full[:, 1] - y0 + 0.5) * scale - 0.5
    got = np.array(label["nyu36"]["joints_uvd"])
    np.testing.assert_allclose(got[:, 0], moved_u, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got[:, 1], moved_v, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got[:, 2], full[:, 2])
    np.testing.assert_array_equal(label["joints_uvd"], got[list(EVAL14)])
    # The crop centre lands at the middle of the crop (to within half a source pixel).
    assert abs(got[32, 0] - (size - 1) / 2) <= 0.5 * scale + 1e-9
    # xyz is unchanged and still projects onto the moved joints with the cropped intrinsics.
    k = label["intrinsics"]
    assert k["fx"] == pytest.approx(FX * scale) and k["fy"] == pytest.approx(FY * scale)
    xyz = np.array(label["nyu36"]["joints_xyz"])
    np.testing.assert_allclose(xyz, nyu_xyz(full) * [1, -1, 1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(k["fx"] * xyz[:, 0] / xyz[:, 2] + k["cx"], got[:, 0], atol=1e-3)
    np.testing.assert_allclose(k["fy"] * xyz[:, 1] / xyz[:, 2] + k["cy"], got[:, 1], atol=1e-3)


def test_a_frame_without_a_label_is_rejected_naming_the_file(tree):
    root, _, depth = tree
    write_depth(root / "synthdepth_1_0000005.png", depth)  # the .mat holds 4 frames
    write_depth(root / "synthdepth_4_0000001.png", depth)  # ... and 3 views
    fmt = open_format("nyu-hand", str(root))
    for name, detail in (("synthdepth_1_0000005", "frame 5"), ("synthdepth_4_0000001", "view 4")):
        (item,) = [item for item in fmt.items() if item.name == name]
        with pytest.raises(SampleError) as caught:
            fmt.convert(item)
        error = caught.value
        assert error.reason == MISSING and error.component == "json"
        assert error.url == str(root / f"{name}.png")
        assert detail in error.detail and error.key.startswith("nyu-synth-")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not a png at all", UNDECODABLE),
        (cv2.imencode(".png", np.full((480, 640), 900, np.uint16))[1].tobytes(), MALFORMED),
        (cv2.imencode(".png", np.zeros((240, 320, 3), np.uint8))[1].tobytes(), MALFORMED),
        (cv2.imencode(".png", np.zeros((480, 640, 4), np.uint8))[1].tobytes(), MALFORMED),
    ],
    ids=["garbage", "16-bit-gray", "wrong-size", "rgba"],
)
def test_a_bad_png_is_rejected_naming_the_file(tree, content, reason):
    root, _, _ = tree
    (root / "synthdepth_1_0000004.png").write_bytes(content)
    fmt = open_format("nyu-hand", str(root))
    (item,) = [item for item in fmt.items() if item.name == "synthdepth_1_0000004"]
    with pytest.raises(SampleError) as caught:
        fmt.convert(item)
    assert caught.value.reason == reason
    assert caught.value.url == str(root / "synthdepth_1_0000004.png")
    assert caught.value.component == "depth.png"
    assert "synthdepth_1_0000004.png" in str(caught.value)


def test_missing_or_broken_labels_fail_loudly(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"joint_data\.mat"):
        open_format("nyu-hand", str(tmp_path))
    scipy.io.savemat(tmp_path / "joint_data.mat", {"joint_uvd": np.zeros((3, 2, 14, 3))})
    write_depth(tmp_path / "synthdepth_1_0000001.png", np.zeros((480, 640), np.uint16))
    fmt = open_format("nyu-hand", str(tmp_path))
    with pytest.raises(ValueError, match="joint_uvd"):  # not a SampleError: nothing is labelable
        fmt.convert(fmt.items()[0])


def test_options_are_checked(tree):
    root, _, _ = tree
    with pytest.raises(TypeError):
        open_format("nyu-hand", str(root), colour="red")
    for bad in ({"variant": "synth"}, {"kinect": 0}, {"crop": 0}, {"cube": -1}, {"no_depth": 0}):
        with pytest.raises(ValueError):
            open_format("nyu-hand", str(root), **bad)


def test_real_nyu_depth_frame(shared_fixture, tmp_path):
    """The published NYU frame through the real code path: depth in mm, hand/body 0.7-2 m."""
    PIL = pytest.importorskip("PIL.Image")
    source = shared_fixture("nyu_hand/depth_1_0000001.png")
    shutil.copy(source, tmp_path / "depth_1_0000001.png")
    write_labels(tmp_path, random_uvd(np.random.default_rng(3)))

    raw = convert_one(
        open_format("nyu-hand", str(tmp_path), variant="real", no_depth=None), "depth_1_0000001"
    )["depth.png"]
    r, g, b = (np.asarray(c, np.int64) for c in PIL.open(source).convert("RGB").split())
    np.testing.assert_array_equal(raw, (g << 8) | b)  # DeepPrior's reader, through PIL's RGB
    assert raw.shape == (480, 640) and not r.any()
    assert raw.min() >= 300 and raw.max() == 2001  # 2001: NYU's no-measurement marker

    depth = convert_one(open_format("nyu-hand", str(tmp_path), variant="real"), "depth_1_0000001")[
        "depth.png"
    ]
    measured = depth[depth > 0]
    stats = (int(measured.min()), float(np.median(measured)), int(measured.max()))
    print(f"real NYU frame, measured pixels: min/median/max = {stats} mm")
    assert stats[0] >= 300 and stats[2] <= 2000 and 700 <= stats[1] <= 1500
    assert 0.3 < measured.size / depth.size < 0.6  # the rest was 2001 (now 0)


def test_label_json_is_plain_and_deterministic(tree):
    root, _, _ = tree
    fmt = open_format("nyu-hand", str(root), crop=32)
    item = fmt.items()[0]
    first, second = (
        fmt.convert(item)[0],
        open_format("nyu-hand", str(root), crop=32).convert(item)[0],
    )
    assert first["json"] == second["json"] and first["depth.png"] == second["depth.png"]
    assert json.loads(first["json"])["domain"] == "hand"


def test_ingest_end_to_end_gives_valid_hand_shards(tree, tmp_path):
    from refinery.ingest import ingest
    from refinery.shards import read

    root, _, _ = tree
    summary = ingest("nyu-hand", str(root), str(tmp_path / "out"), progress=False)
    samples = list(read(str(tmp_path / "out"), "hand"))
    assert summary.samples_written == len(samples) == 3  # the three synthdepth frames
    assert summary.items == summary.items_converted + summary.items_rejected == 3
    for sample in samples:
        assert sample["depth.png"].dtype == np.uint16
        assert (
            len(sample["json"]["joints_uvd"]) == 14
            and len(sample["json"]["nyu36"]["joints_uvd"]) == 36
        )
