"""``refinery ingest images``: any folder of images → unlabeled real samples of one domain.

Keys and listing, per-domain conversion (gray for gaze, 16-bit nearest-neighbour depth for hand,
passthrough JPEG for scene), centre crop, rejects naming the file, resume, worker pools, the CLI,
and the real MPIIGaze eye crops in ``shared/fixtures``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from refinery import shards as S
from refinery.cli import main
from refinery.formats import format_info, open_format
from refinery.formats.images import image_key
from refinery.ingest import REJECTS_FILE, ingest
from refinery.samples import DUPLICATE, MALFORMED, UNDECODABLE, decode_sample

FIXTURE = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real" / "mpiigaze_unlabeled"
)


def write(path: Path, image: np.ndarray, ext: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext or path.suffix.lower(), image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def noise(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def run(src, out, domain: str, **kwargs):
    kwargs.setdefault("progress", False)
    options = {"domain": domain, **kwargs.pop("options", {})}
    return ingest("images", str(src), str(out), options=options, **kwargs)


def samples(out: Path) -> list[dict]:
    return list(S.shard_samples(sorted(str(p) for p in out.glob("*.tar"))))


def test_the_format_takes_its_domain_from_its_option():
    assert format_info("images").domain is None
    assert format_info("images").factory.default_shard_size == 1000
    with pytest.raises(ValueError, match="needs a domain"):
        open_format("images", ".")
    with pytest.raises(ValueError, match="crop must be"):
        open_format("images", ".", domain="gaze", crop="middle")


@pytest.mark.parametrize(
    ("relative", "key"),
    [
        ("p00/day01/0001.jpg", "p00/day01/0001"),
        ("a b/c.d.PNG", "a_b/c_d-a4d325b9"),  # made safe: a hash of the original name
        ("v1.2/x-y_z.jpeg", "v1_2/x-y_z-fc64d1ab"),
        ("été.png", "_t_-bd010c64"),
    ],
)
def test_keys_come_from_the_relative_path(relative, key):
    assert image_key(relative) == key
    assert S.check_key(key) == key


def test_a_tree_of_images_becomes_gaze_samples(tmp_path):
    src = tmp_path / "src"
    write(src / "p00" / "day01" / "0001.png", noise((40, 60)))
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[:] = (10, 200, 50)  # uniform: resizing keeps the value, the gray weights decide it
    write(src / "p00" / "day01" / "0002.jpg", bgr)
    write(src / "p00" / "day02" / "0001.JPEG", noise((36, 60), seed=1))
    write(src / "p01" / "img 3.PNG", bgr, ext=".png")
    (src / "p01" / "notes.txt").write_text("not an image")
    write(src / "p01" / ".hidden.png", noise((5, 5)))
    write(src / ".cache" / "thumb.png", noise((5, 5)))

    out = tmp_path / "out"
    summary = run(src, out, "gaze")
    assert (summary.items, summary.samples_written, summary.total_rejected) == (4, 4, 0)
    assert summary.options == {"domain": "gaze", "size": [35, 55], "crop": "center"}
    got = samples(out)
    assert [s["__key__"] for s in got] == [
        "p00/day01/0001",
        "p00/day01/0002",
        "p00/day02/0001",
        "p01/img_3-7aaf7922",  # "img 3" made safe, with a hash of the original name
    ]
    sources = ["p00/day01/0001.png", "p00/day01/0002.jpg", "p00/day02/0001.JPEG", "p01/img 3.PNG"]
    gray = int(cv2.cvtColor(bgr[:1, :1], cv2.COLOR_BGR2GRAY)[0, 0])
    for sample, source in zip(got, sources, strict=True):
        assert sorted(k for k in sample if not k.startswith("__")) == ["json", "png"]
        assert json.loads(sample["json"]) == {"domain": "gaze", "labeled": False, "source": source}
        decoded = decode_sample(sample, "gaze", labels=False)
        assert decode_sample(sample, "gaze", labels=True)["json"]["labeled"] is False
        image = decoded["png"]
        assert image.shape == (35, 55) and image.dtype == np.uint8
    assert np.all(np.abs(decode_sample(got[3], "gaze")["png"].astype(int) - gray) <= 1)


def test_center_crop_keeps_the_centre_and_none_squeezes_the_whole_image(tmp_path):
    image = np.zeros((40, 120), np.uint8)
    image[:, 40:80] = 255  # the centred 40x40 square is white, the sides black
    write(tmp_path / "src" / "wide.png", image)
    results = {}
    for crop in ("center", "none"):
        out = tmp_path / crop
        run(tmp_path / "src", out, "gaze", options={"size": (20, 20), "crop": crop})
        (sample,) = samples(out)
        results[crop] = decode_sample(sample, "gaze")["png"]
        assert results[crop].shape == (20, 20)
    assert results["center"].min() >= 250  # only the white centre is left
    squeezed = results["none"]
    assert squeezed[:, :5].max() <= 5 and squeezed[:, -5:].max() <= 5
    assert squeezed[:, 8:12].min() >= 250


def test_hand_depth_is_resized_with_nearest_and_8_bit_is_refused(tmp_path):
    src = tmp_path / "src"
    levels = np.array([0, 500, 1000, 2345, 65535], np.uint16)
    depth = levels[np.random.default_rng(0).integers(0, len(levels), (30, 40))]
    write(src / "a" / "depth.png", depth)
    write(src / "b" / "gray8.png", noise((30, 40)))
    write(src / "c" / "eye.jpg", noise((30, 40)))
    for size in ((60, 80), (15, 20), (20, 20)):  # enlarge, shrink, crop + shrink
        out = tmp_path / f"out-{size[0]}x{size[1]}"
        summary = run(src, out, "hand", options={"size": size})
        (sample,) = samples(out)
        assert sample["__key__"] == "a/depth" and "depth.png" in sample
        result = decode_sample(sample, "hand")["depth.png"]
        assert result.shape == size and result.dtype == np.uint16
        assert set(np.unique(result)) <= set(levels.tolist())
        assert summary.rejected == {MALFORMED: 2}
        assert {r["key"] for r in summary.rejects} == {"b/gray8", "c/eye"}
        assert all("needs 16-bit depth" in r["detail"] for r in summary.rejects)
    # no size: the depth as it was, bit for bit
    (sample,) = samples(tmp_path / "out-60x80")
    out = tmp_path / "same"
    run(src, out, "hand")
    (sample,) = samples(out)
    assert np.array_equal(decode_sample(sample, "hand")["depth.png"], depth)


def test_16_bit_input_is_refused_for_gaze(tmp_path):
    write(tmp_path / "src" / "d.png", np.full((36, 60), 1000, np.uint16))
    summary = run(tmp_path / "src", tmp_path / "out", "gaze")
    (record,) = summary.rejects
    assert record["reason"] == MALFORMED and record["key"] == "d"
    assert "needs an 8-bit image, got 16-bit" in record["detail"]


def test_scene_keeps_jpeg_bytes_when_nothing_changes(tmp_path):
    src = tmp_path / "src"
    colour = cv2.GaussianBlur(noise((48, 64, 3)), (0, 0), 2)
    jpeg = write(src / "street.jpg", colour)
    png = write(src / "frame.png", colour)
    write(src / "gray.png", noise((48, 64), seed=2))
    out = tmp_path / "out"
    run(src, out, "scene")
    got = {s["__key__"]: s for s in samples(out)}
    assert got["street"]["jpg"] == jpeg.read_bytes()
    assert got["frame"]["png"] == png.read_bytes()
    rgb = decode_sample(got["gray"], "scene")["png"]
    assert rgb.shape == (48, 64, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    for sample in got.values():
        decoded = decode_sample(sample, "scene", labels=True)  # labeled false: no seg needed
        assert decoded["json"] == {
            "domain": "scene",
            "labeled": False,
            "source": sample["__key__"] + (".jpg" if "jpg" in sample else ".png"),
        }
    assert np.array_equal(decode_sample(got["frame"], "scene")["png"], colour[..., ::-1])

    resized = tmp_path / "resized"
    run(src, resized, "scene", options={"size": (24, 24)})
    got = {s["__key__"]: s for s in samples(resized)}
    assert got["street"]["jpg"] != jpeg.read_bytes()
    assert decode_sample(got["street"], "scene")["jpg"].shape == (24, 24, 3)


def test_bad_files_are_rejects_naming_file_key_and_reason(tmp_path, monkeypatch):
    src = tmp_path / "src"
    good = write(src / "good.png", noise((36, 60)))
    (src / "sub").mkdir()
    (src / "sub" / "empty.png").write_bytes(b"")
    jpeg = cv2.imencode(".jpg", noise((36, 60)))[1].tobytes()
    (src / "sub" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (src / "sub" / "cut.png").write_bytes(good.read_bytes()[:100])
    (src / "sub" / "text.png").write_bytes(b"hello")
    write(src / "twice.png", noise((36, 60)))
    write(src / "twice.jpg", noise((36, 60)))
    out = tmp_path / "out"
    summary = run(src, out, "gaze")
    assert summary.samples_written == 2  # good, twice (the png after the jpg is a duplicate)
    by_key = {r["key"]: r for r in summary.rejects}
    assert set(by_key) == {"sub/empty", "sub/cut", "sub/text", "twice"}
    empty = by_key["sub/empty"]
    assert empty["url"].endswith("sub/empty.png") and empty["reason"] == UNDECODABLE
    assert empty["detail"] == "not a decodable image (0 bytes)"
    cut = {Path(r["url"]).name: r for r in summary.rejects if r["key"] == "sub/cut"}
    assert sorted(cut) == ["cut.jpg", "cut.png"]
    assert all(r["reason"] == UNDECODABLE for r in cut.values())
    assert cut["cut.jpg"]["detail"].startswith("truncated JPEG: no end-of-image marker")
    assert cut["cut.png"]["detail"] == "not a decodable image (100 bytes)"
    assert by_key["twice"]["reason"] == DUPLICATE
    assert summary.rejected == {UNDECODABLE: 4, DUPLICATE: 1}
    assert by_key["sub/text"]["detail"] == "not a decodable image (5 bytes)"
    lines = (out / REJECTS_FILE).read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["key"] for line in lines)

    # OpenCV raising (not returning None) is a reject with its message, not a crash
    import refinery.formats.images as images

    def raises(*args, **kwargs):
        raise cv2.error("OpenCV(5.0.0) loadsave.cpp: error: (-215:Assertion failed) boom")

    monkeypatch.setattr(images.cv2, "imdecode", raises)
    alone = tmp_path / "alone"
    write(alone / "good.png", noise((36, 60)))
    (record,) = run(alone, tmp_path / "raised", "gaze").rejects
    assert record["reason"] == UNDECODABLE and "boom" in record["detail"]
    assert record["key"] == "good" and record["url"].endswith("good.png")


def test_a_rerun_skips_finished_shards(tmp_path):
    src = tmp_path / "src"
    for i in range(5):
        write(src / f"{i:02d}.png", noise((36, 60), seed=i))
    out = tmp_path / "out"
    first = run(src, out, "gaze", shard_size=2)
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == [f"images-00000{i}.tar" for i in range(3)] and first.shards_skipped == 0
    stamps = {n: (out / n).stat().st_mtime_ns for n in names}
    before = (out / "images-000001.tar").read_bytes()
    time.sleep(0.01)
    assert run(src, out, "gaze", shard_size=2).shards_skipped == 3
    assert {n: (out / n).stat().st_mtime_ns for n in names} == stamps
    (out / "images-000001.tar").unlink()
    again = run(src, out, "gaze", shard_size=2)
    assert again.shards_skipped == 2 and again.samples_written == 5
    assert (out / "images-000001.tar").read_bytes() == before
    with pytest.raises(ValueError, match="other settings"):
        run(src, out, "gaze", shard_size=2, options={"crop": "none"})
    # the gaze default size said out loud is the same setting
    assert run(src, out, "gaze", shard_size=2, options={"size": (35, 55)}).shards_skipped == 3


def test_workers_give_byte_identical_shards(tmp_path):
    src = tmp_path / "src"
    for i in range(7):
        write(src / f"d{i % 2}" / f"{i}.jpg", noise((40, 70, 3), seed=i))
    (src / "d0" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really")
    one, two = tmp_path / "one", tmp_path / "two"
    options = {"size": (30, 30), "crop": "none"}
    first = run(src, one, "gaze", shard_size=3, options=options)
    second = run(src, two, "gaze", shard_size=3, workers=2, options=options)
    names = sorted(p.name for p in one.glob("*.tar"))
    assert len(names) == 3 and names == sorted(p.name for p in two.glob("*.tar"))
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert first.rejects == second.rejects and len(first.rejects) == 1
    assert decode_sample(samples(two)[0], "gaze")["png"].shape == (30, 30)


def test_cli_end_to_end(tmp_path, capsys):
    src = tmp_path / "src"
    write(src / "a" / "1.png", noise((36, 60)))
    write(src / "a" / "2.jpg", noise((36, 60, 3)))
    out = tmp_path / "out"
    code = main(
        ["ingest", "images", str(src), "--domain", "gaze", "--out", str(out), "--size", "36x60",
         "--crop", "none", "--workers", "2"]
    )  # fmt: skip
    assert code == 0
    assert "2 written" in capsys.readouterr().out
    got = samples(out)
    assert [s["__key__"] for s in got] == ["a/1", "a/2"]
    assert decode_sample(got[0], "gaze")["png"].shape == (36, 60)
    summary = json.loads((out / "ingest.json").read_text())
    assert summary["options"] == {"crop": "none", "domain": "gaze", "size": [36, 60]}

    (src / "a" / "3.png").write_bytes(b"")
    assert main(["ingest", "images", str(src), "--domain", "gaze", "--out", str(out)]) == 1
    assert "other settings" in capsys.readouterr().err  # the same out with another --size
    other = str(tmp_path / "other")
    assert main(["ingest", "images", str(src), "--domain", "gaze", "--out", other]) == 1
    printed = capsys.readouterr().out
    assert "a/3.png, key 'a/3': undecodable: not a decodable image (0 bytes)" in printed


@pytest.mark.parametrize(
    ("format_name", "args", "message"),
    [
        ("images", [], "needs --domain"),
        ("images", ["--domain", "eyes"], "invalid choice"),
        ("images", ["--domain", "gaze", "--crop", "64"], "expected center or none"),
        ("unityeyes", ["--domain", "gaze"], "--domain does not apply to format 'unityeyes'"),
    ],
)
def test_cli_usage_errors(tmp_path, capsys, format_name, args, message):
    write(tmp_path / "src" / "1.png", noise((36, 60)))
    with pytest.raises(SystemExit) as caught:
        main(["ingest", format_name, str(tmp_path / "src"), "--out", str(tmp_path / "out"), *args])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_help_names_the_images_format(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["ingest", "--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    assert "images" in text and "--domain" in text


def test_real_mpiigaze_eye_crops(tmp_path):
    if not FIXTURE.is_dir():
        pytest.skip(f"no fixture at {FIXTURE}")
    count = len(list(FIXTURE.glob("*.jpg")))
    out = tmp_path / "out"
    summary = run(FIXTURE, out, "gaze", workers=2)
    assert (summary.samples_written, summary.total_rejected) == (count, 0)
    assert count == 2000
    got = samples(out)
    assert [s["__key__"] for s in got[:2]] == ["0000", "0001"]
    for sample in got[:: count // 50]:
        image = decode_sample(sample, "gaze", labels=False)["png"]
        assert image.shape == (35, 55) and image.dtype == np.uint8
        assert json.loads(sample["json"])["source"] == sample["__key__"] + ".jpg"
