"""Contract 1: every component round-trips exactly; bad components are named with the reason."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from refinery import samples as S

RNG = np.random.default_rng(0)


def gaze_sample(key: str = "eye-0001") -> dict:
    return {
        "__key__": key,
        "png": RNG.integers(0, 256, (35, 55), dtype=np.uint8),
        "json": {
            "domain": "gaze",
            "gaze": {"pitch": 0.125, "yaw": -0.25},
            "look_vec": [0.24, -0.12, -0.96],
            "head_pose": [0.0, 0.1, 0.0],
        },
    }


def hand_sample(key: str = "hand-0001") -> dict:
    depth = RNG.integers(0, 65536, (64, 48), dtype=np.uint16)
    depth[0, :4] = [0, 255, 256, 65535]  # 8-bit squeezing would break exactly these
    return {
        "__key__": key,
        "depth.png": depth,
        "json": {"joints_uvd": [[10.5, 12.25, 812.0]] * 14, "joints_xyz": [[1.0, 2.0, 812.0]] * 14},
    }


def scene_sample(key: str = "street-0001", image: str = "png") -> dict:
    seg = RNG.integers(0, 19, (32, 64), dtype=np.uint8)
    seg[0, :3] = [0, 254, 255]
    return {
        "__key__": key,
        image: RNG.integers(0, 256, (32, 64, 3), dtype=np.uint8),
        "seg.png": seg,
        "depth.png": RNG.integers(0, 65536, (32, 64), dtype=np.uint16),
        "json": {"ontology": "cityscapes-19", "classes": list(range(19))},
    }


@pytest.mark.parametrize(
    ("domain", "make"), [("gaze", gaze_sample), ("hand", hand_sample), ("scene", scene_sample)]
)
def test_lossless_components_round_trip_exactly(domain, make):
    sample = make()
    encoded = S.encode_sample(sample, domain)
    assert all(isinstance(v, bytes) for k, v in encoded.items() if k != "__key__")
    assert list(encoded) == list(sample)  # component order kept
    decoded = S.decode_sample(encoded, domain)
    assert decoded["__key__"] == sample["__key__"]
    for name, value in sample.items():
        if isinstance(value, np.ndarray):
            assert decoded[name].dtype == value.dtype, name
            np.testing.assert_array_equal(decoded[name], value, err_msg=name)
        else:
            assert decoded[name] == value
    # encoding is deterministic: the same sample gives the same bytes
    assert S.encode_sample(sample, domain) == encoded


def test_json_label_bytes_are_stable_and_numpy_friendly():
    label = {"b": np.float32(0.5), "a": np.arange(3), "c": np.int64(7)}
    data = S.encode_json(label)
    assert data == b'{"a":[0,1,2],"b":0.5,"c":7}'
    with pytest.raises(ValueError):
        S.encode_json({"x": float("nan")})


def test_jpeg_scene_image_decodes_as_rgb_close_to_source():
    sample = scene_sample(image="jpg")
    smooth = cv2.GaussianBlur(sample["jpg"], (9, 9), 3)  # JPEG is lossy: compare a smooth image
    sample["jpg"] = smooth
    decoded = S.decode_sample(S.encode_sample(sample, "scene"), "scene")
    assert decoded["jpg"].shape == (32, 64, 3)
    assert np.abs(decoded["jpg"].astype(int) - smooth).mean() < 3.0


def test_rgb_channel_order_is_rgb_not_bgr():
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    data = S.encode_image(red, S.RGB8)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[0, 0].tolist() == [
        0,
        0,
        255,
    ]
    np.testing.assert_array_equal(S.decode_image(data, S.RGB8), red)


def test_unknown_components_pass_through_as_bytes():
    sample = S.encode_sample(gaze_sample(), "gaze")
    sample["pyd"] = b"\x80\x04not really a pickle"
    sample["txt"] = b"hello"
    decoded = S.decode_sample(sample, "gaze")
    assert decoded["pyd"] == sample["pyd"]
    assert decoded["txt"] == b"hello"


def _error(sample, domain) -> S.SampleError:
    with pytest.raises(S.SampleError) as info:
        S.decode_sample(sample, domain)
    return info.value


def test_missing_label_is_named():
    sample = S.encode_sample(gaze_sample("eye-7"), "gaze")
    del sample["json"]
    error = _error(sample, "gaze")
    assert (error.reason, error.key, error.component) == (S.MISSING, "eye-7", "json")
    assert "eye-7" in str(error) and "json" in str(error)


def test_scene_without_seg_must_say_it_is_unlabeled():
    labeled = S.encode_sample(scene_sample(), "scene")
    del labeled["seg.png"]
    with pytest.raises(S.SampleError) as err:
        S.decode_sample(labeled, "scene")
    assert (err.value.reason, err.value.component) == (S.MISSING, "seg.png")
    unlabeled = {**labeled, "json": S.encode_json({"labeled": False, "dataset": "cityscapes"})}
    assert S.decode_sample(unlabeled, "scene")["json"]["labeled"] is False


def test_raw_id_components_decode_as_8bit_ids_of_the_image_size():
    sample = scene_sample()
    sample["labelids.png"] = RNG.integers(0, 34, (32, 64), dtype=np.uint8)
    decoded = S.decode_sample(S.encode_sample(sample, "scene"), "scene")
    assert np.array_equal(decoded["labelids.png"], sample["labelids.png"])
    sample["labelids.png"] = sample["labelids.png"][:16]
    with pytest.raises(S.SampleError, match="differs from the image"):
        S.decode_sample(S.encode_sample(sample, "scene"), "scene")


def test_missing_image_is_named():
    sample = S.encode_sample(scene_sample("st-1"), "scene")
    del sample["png"]
    error = _error(sample, "scene")
    assert error.reason == S.MISSING and error.key == "st-1"
    assert "jpg" in error.detail and "png" in error.detail


def test_corrupt_png_is_undecodable():
    sample = S.encode_sample(gaze_sample("eye-8"), "gaze")
    sample["png"] = sample["png"][:40]
    error = _error(sample, "gaze")
    assert (error.reason, error.key, error.component) == (S.UNDECODABLE, "eye-8", "png")


def test_eight_bit_depth_is_refused():
    sample = S.encode_sample(hand_sample("h-1"), "hand")
    sample["depth.png"] = S.encode_image(np.zeros((4, 4), np.uint8), S.GRAY8)
    error = _error(sample, "hand")
    assert (error.reason, error.component) == (S.MALFORMED, "depth.png")
    assert "16-bit" in error.detail


def test_colour_seg_is_refused():
    sample = S.encode_sample(scene_sample("st-2"), "scene")
    sample["seg.png"] = S.encode_image(np.zeros((32, 64, 3), np.uint8), S.RGB8)
    error = _error(sample, "scene")
    assert (error.reason, error.component) == (S.MALFORMED, "seg.png")


def test_seg_of_another_size_is_refused():
    sample = scene_sample("st-3")
    sample["seg.png"] = sample["seg.png"][:16]
    error = _error(S.encode_sample(sample, "scene"), "scene")
    assert (error.reason, error.component) == (S.MALFORMED, "seg.png")


@pytest.mark.parametrize(
    ("domain", "make", "label", "fragment"),
    [
        ("gaze", gaze_sample, {"look_vec": [0, 0, -1]}, "'gaze'"),
        (
            "gaze",
            gaze_sample,
            {"gaze": {"pitch": 0, "yaw": "0.1"}, "look_vec": [0, 0, -1]},
            "'gaze'",
        ),
        ("gaze", gaze_sample, {"gaze": {"pitch": 0, "yaw": 0}, "look_vec": [0, 1]}, "look_vec"),
        ("hand", hand_sample, {"joints_uvd": []}, "joints_uvd"),
        ("hand", hand_sample, {"joints_uvd": [[1, 2, 3]], "joints_xyz": [[1, 2]]}, "joints_xyz"),
        ("scene", scene_sample, {"classes": [0]}, "ontology"),
        ("scene", scene_sample, {"ontology": "x", "domain": "gaze"}, "domain"),
    ],
)
def test_malformed_labels_are_named(domain, make, label, fragment):
    sample = make("k-1")
    sample["json"] = label
    error = _error(S.encode_sample(sample, domain), domain)
    assert (error.reason, error.key, error.component) == (S.MALFORMED, "k-1", "json")
    assert fragment in error.detail


def test_label_that_is_not_json_is_undecodable():
    sample = S.encode_sample(gaze_sample("eye-9"), "gaze")
    sample["json"] = b"{'gaze': __import__('os')}"
    error = _error(sample, "gaze")
    assert (error.reason, error.component) == (S.UNDECODABLE, "json")


def test_unknown_domain_is_refused():
    with pytest.raises(ValueError, match="unknown domain"):
        S.spec("faces")


@pytest.mark.gpu("torchvision")
def test_torchvision_decodes_our_depth_and_seg_pngs_identically():
    import torch
    from torchvision.io import ImageReadMode, decode_png

    sample = scene_sample("tv-1")
    encoded = S.encode_sample(sample, "scene")
    for name in ("depth.png", "seg.png"):
        data = torch.frombuffer(bytearray(encoded[name]), dtype=torch.uint8)
        decoded = decode_png(data, mode=ImageReadMode.UNCHANGED)[0].numpy()
        np.testing.assert_array_equal(decoded.astype(sample[name].dtype), sample[name])
