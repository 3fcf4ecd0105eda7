"""Names that survive and one symlink rule (issue 52, item 5): ``ingest images`` keeps distinct
file names distinct keys and the original name in the json; a full disk names the shard and the
path; a junk PNG is undecodable, not a bit depth; links are followed neither by ``ingest
images`` nor by ``refine``."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from deploy import RefineConfig, run
from deploy.stages import Item, decode_item, header_problem, prepare
from refinery import shards as S
from refinery.ingest import ingest
from refinery.samples import BAD_MEMBER, MALFORMED, UNDECODABLE, encode_json
from tests.test_output_store import gaze_engine


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (36, 60), dtype=np.uint8)
    path.write_bytes(cv2.imencode(".png", pixels)[1].tobytes())
    return path


def _ingest(src: Path, out: Path):
    return ingest("images", str(src), str(out), options={"domain": "gaze"}, progress=False)


def _samples(out: Path) -> list[dict]:
    return list(S.shard_samples(sorted(str(p) for p in out.glob("*.tar"))))


def test_names_that_make_the_same_slug_stay_distinct_keys_and_keep_their_name(tmp_path):
    src = tmp_path / "src"
    for i, name in enumerate(["眼.png", "目.png", "a b.png", "a_b.png", "plain.png"]):
        _image(src / name, seed=i)
    summary = _ingest(src, tmp_path / "out")
    assert summary.samples_written == 5 and summary.total_rejected == 0
    got = {json.loads(s["json"])["source"]: s["__key__"] for s in _samples(tmp_path / "out")}
    assert sorted(got) == sorted(["眼.png", "目.png", "a b.png", "a_b.png", "plain.png"])
    assert len(set(got.values())) == 5 and all(key.isascii() for key in got.values())
    assert got["plain.png"] == "plain" and got["a_b.png"] == "a_b"
    assert got["眼.png"].startswith("_-") and got["a b.png"].startswith("a_b-")
    for key in got.values():
        S.check_key(key)


def test_a_full_disk_during_ingest_names_the_shard_and_the_path(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _image(src / "a.png")
    full = open("/dev/full", "wb", buffering=0)  # noqa: SIM115 (the writer closes it)
    monkeypatch.setattr(S, "open_url", lambda url, mode="rb": full)
    with pytest.raises(OSError) as caught:
        _ingest(src, tmp_path / "out")
    assert caught.value.errno == errno.ENOSPC
    message = str(caught.value)
    assert "shard 'images-000000.tar'" in message
    assert str(tmp_path / "out" / ".images-000000.tar.tmp-") in message


def _junk_png() -> bytes:
    """A PNG signature, then junk whose IHDR bytes would read as a 114-bit image."""
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(8) + b"rubbish-rubbish-rubbish"


def test_a_junk_png_is_undecodable_not_a_bit_depth():
    junk = _junk_png()
    assert junk[24] == 114
    assert header_problem(junk, "gray8") is None
    item = prepare(Item({"__key__": "j", "png": junk, "json": b"{}"}), ("png",), "gray8")
    decode_item("gray8")(item)
    assert item.error.reason == UNDECODABLE
    # a whole IHDR (CRC right) of the wrong depth is still judged on its depth
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 55, 35, 16, 0, 0, 0, 0)
    deep = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    assert "16-bit" in header_problem(deep + b"junk", "gray8")
    item = prepare(Item({"__key__": "d", "png": deep}), ("png",), "gray8")
    assert item.error.reason == MALFORMED


def test_ingest_images_follows_no_link_as_refine_follows_none(tmp_path):
    outside = _image(tmp_path / "outside" / "secret.png", seed=7)
    src = tmp_path / "src"
    _image(src / "good.png")
    os.symlink(outside, src / "link.png")  # a file link out of the folder
    os.symlink(outside.parent, src / "linked")  # a folder link
    summary = _ingest(src, tmp_path / "out")
    assert summary.samples_written == 1
    by_key = {r["key"]: r for r in summary.rejects}
    assert set(by_key) == {"link", "linked"}
    for record in by_key.values():
        assert record["reason"] == BAD_MEMBER
        assert "links are never followed" in record["detail"]
        assert str(outside.parent) in record["detail"]
    assert [s["__key__"] for s in _samples(tmp_path / "out")] == ["good"]

    # refine: a link member of a shard is the same reject, with the same words
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo("link.png")
        info.type, info.linkname = tarfile.SYMTYPE, str(outside)
        tf.addfile(info)
        label = encode_json({"gaze": {"pitch": 0.1, "yaw": 0.2}, "look_vec": [0, 0, -1]})
        info = tarfile.TarInfo("link.json")
        info.size = len(label)
        tf.addfile(info, io.BytesIO(label))
    shard = tmp_path / "in" / "links.tar"
    shard.parent.mkdir()
    shard.write_bytes(buffer.getvalue())
    config = RefineConfig(engine=str(gaze_engine(tmp_path / "e")), output=str(tmp_path / "r"))
    (stats,) = run(config, [str(shard)]).shards
    (record,) = stats.rejects
    assert record["reason"] == BAD_MEMBER and "links are never followed" in record["detail"]
