"""Shard I/O: atomic deterministic writing, every URL form, strict reading with reported rejects."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import webdataset as wds

from refinery import samples as S
from refinery import shards as H


def gaze(i: int) -> dict:
    rng = np.random.default_rng(i)
    return S.encode_sample(
        {
            "__key__": f"eye-{i:05d}",
            "png": rng.integers(0, 256, (35, 55), dtype=np.uint8),
            "json": {"gaze": {"pitch": 0.01 * i, "yaw": -0.02 * i}, "look_vec": [0.0, 0.0, -1.0]},
        },
        "gaze",
    )


def write(path, samples) -> str:
    with H.ShardWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def strip(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k != "__url__"}


# -- writing ----------------------------------------------------------------------------------


def test_writer_is_deterministic_with_fixed_member_metadata(tmp_path):
    items = [gaze(i) for i in range(4)]
    a = write(tmp_path / "a.tar", items)
    b = write(tmp_path / "b.tar", items)
    assert Path(a).read_bytes() == Path(b).read_bytes()
    with tarfile.open(a) as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == [
        f"eye-{i:05d}.{c}" for i in range(4) for c in ("png", "json")
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }


def test_write_all_gives_the_bytes_and_refusals_of_write_one_by_one(tmp_path):
    """The refine job writes a batch at once (``write_all``, headers made together): the same
    bytes as ``write`` per sample, for empty, block-sized, long and non-ASCII members, and the
    same refusal at the first bad sample, after the good ones before it."""
    items = [gaze(i) for i in range(7)]
    items[1]["empty.bin"] = b""
    items[2]["block.bin"] = bytes(range(256)) * 2
    items[3]["__key__"] = "d/" * 50 + "long"  # over 100 bytes with its component: PAX headers
    items[4]["__key__"] = "straße-4"
    one = write(tmp_path / "one.tar", items)
    with H.ShardWriter(str(tmp_path / "all.tar")) as writer:
        writer.write_all(items[:2])
        writer.write_all([])
        writer.write_all(items[2:])
    assert Path(one).read_bytes() == (tmp_path / "all.tar").read_bytes()
    for bad, error in (
        ({**gaze(9), "json": {"not": "bytes"}}, TypeError),
        ({**gaze(9), "__key__": "../up"}, ValueError),
        (gaze(0), ValueError),  # a key twice
    ):
        with H.ShardWriter(str(tmp_path / "x.tar")) as writer, pytest.raises(error) as batch:
            writer.write_all([gaze(0), gaze(1), bad, gaze(2)])
        with H.ShardWriter(str(tmp_path / "y.tar")) as writer, pytest.raises(error) as single:
            for item in [gaze(0), gaze(1), bad, gaze(2)]:
                writer.write(item)
        assert str(batch.value) == str(single.value).replace("y.tar", "x.tar")
        assert (tmp_path / "x.tar").read_bytes() == (tmp_path / "y.tar").read_bytes()


def test_writer_is_atomic(tmp_path):
    final = tmp_path / "shard.tar"
    with pytest.raises(RuntimeError), H.ShardWriter(str(final)) as writer:
        writer.write(gaze(0))
        assert not final.exists()  # only a temporary name exists while writing
        assert len(os.listdir(tmp_path)) == 1
        raise RuntimeError("killed mid-shard")
    assert os.listdir(tmp_path) == []


def test_writer_refuses_bad_keys_and_unencoded_values(tmp_path):
    with H.ShardWriter(str(tmp_path / "x.tar")) as writer:
        with pytest.raises(ValueError, match=r"'\.'"):
            writer.write({"__key__": "a.b", "png": b"x"})
        with pytest.raises(TypeError, match="encode it first"):
            writer.write({"__key__": "a", "png": np.zeros(3)})
        writer.write({"__key__": "dir/a", "png": b"x"})
        with pytest.raises(ValueError, match="twice"):
            writer.write({"__key__": "dir/a", "png": b"y"})


def test_write_shards_splits_by_size(tmp_path):
    urls = H.write_shards((gaze(i) for i in range(7)), str(tmp_path / "d-%03d.tar"), shard_size=3)
    assert [os.path.basename(u) for u in urls] == ["d-000.tar", "d-001.tar", "d-002.tar"]
    keys = [s["__key__"] for s in H.shard_samples(str(tmp_path / "d-{000..002}.tar"))]
    assert keys == [f"eye-{i:05d}" for i in range(7)]


# -- URLs -------------------------------------------------------------------------------------


def test_expand_urls_braces_lists_and_directories(tmp_path):
    assert H.expand_urls("s-{0..2}.tar::t.tar") == ["s-0.tar", "s-1.tar", "s-2.tar", "t.tar"]
    assert H.expand_urls(["a-{a,b}.tar", "pipe:cat x.tar"]) == [
        "a-a.tar",
        "a-b.tar",
        "pipe:cat x.tar",
    ]
    for name in ("b.tar", "a.tar"):
        write(tmp_path / name, [gaze(0)])
    (tmp_path / "notes.txt").write_text("x")
    assert H.expand_urls(str(tmp_path)) == [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]


def test_read_local_file_url_pipe_and_fsspec(tmp_path):
    items = [gaze(i) for i in range(3)]
    path = write(tmp_path / "s.tar", items)
    for url in (path, f"file://{path}", f"pipe:cat {path}"):
        assert [strip(s) for s in H.shard_samples(url)] == items, url
    # write and read through fsspec (memory://) and through a pipe: command
    write("memory://bucket/m.tar", items)
    assert fsspec.filesystem("memory").exists("/bucket/m.tar")
    assert [s for s in fsspec.filesystem("memory").ls("/bucket") if "tmp" in s["name"]] == []
    assert [strip(s) for s in H.shard_samples("memory://bucket/m.tar")] == items
    piped = tmp_path / "piped.tar"
    write(f"pipe:cat > {piped}", items)
    assert [strip(s) for s in H.shard_samples(str(piped))] == items


def test_webdataset_reads_our_shards_and_we_read_its_shards(tmp_path):
    items = [gaze(i) for i in range(5)]
    ours = write(tmp_path / "ours.tar", items)
    theirs = [
        {k: s[k] for k in ("__key__", "png", "json")}
        for s in wds.WebDataset(ours, shardshuffle=False, empty_check=False)
    ]
    assert theirs == items
    with wds.TarWriter(str(tmp_path / "wds.tar")) as sink:
        for s in items:
            sink.write(s)
    assert [strip(s) for s in H.shard_samples(str(tmp_path / "wds.tar"))] == items


# -- bad input --------------------------------------------------------------------------------


def test_truncated_tar_raises_by_default_naming_the_key(tmp_path):
    data = Path(write(tmp_path / "full.tar", [gaze(i) for i in range(6)])).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(S.SampleError) as info:
        list(H.read(str(cut), "gaze"))
    error = info.value
    assert error.reason == S.TRUNCATED and error.url == str(cut)
    assert error.key is not None and error.key.startswith("eye-")


@pytest.mark.parametrize("cut", [100, 512, 700, 1536, 2048, 5000, 9000, 10240])
def test_truncation_anywhere_is_counted_and_nothing_is_lost(tmp_path, cut):
    items = [gaze(i) for i in range(6)]
    data = Path(write(tmp_path / "full.tar", items)).read_bytes()
    path = tmp_path / "cut.tar"
    path.write_bytes(data[:cut])
    rejects = H.Rejects()
    good = list(H.read(str(path), "gaze", handler=rejects))
    assert rejects.counts == {S.TRUNCATED: 1}
    record = rejects.records[0]
    assert record["url"] == str(path)
    # every sample the shard started is either yielded intact or is the one rejected
    started = {m.rsplit(".", 1)[0] for m in _names_before(data, cut)}
    assert {s["__key__"] for s in good} | ({record["key"]} - {None}) == started
    for s in good:
        assert s["png"].shape == (35, 55)


def _names_before(data: bytes, cut: int) -> list[str]:
    names = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf.getmembers():
            if m.offset_data <= cut:  # its header was read whole, so its key is known
                names.append(m.name.split(".")[0])
    return names


def test_corrupt_png_and_missing_label_are_reported_with_key_and_reason(tmp_path):
    items = [gaze(i) for i in range(5)]
    items[1]["png"] = items[1]["png"][:50]
    del items[3]["json"]
    path = write(tmp_path / "bad.tar", items)
    with pytest.raises(S.SampleError, match="eye-00001"):
        list(H.read(path, "gaze"))
    rejects = H.Rejects()
    good = list(H.read(path, "gaze", handler=rejects))
    assert [s["__key__"] for s in good] == ["eye-00000", "eye-00002", "eye-00004"]
    assert rejects.counts == {S.UNDECODABLE: 1, S.MISSING: 1}
    by_key = {r["key"]: r for r in rejects.records}
    assert by_key["eye-00001"]["component"] == "png" and by_key["eye-00001"]["url"] == path
    assert by_key["eye-00003"]["component"] == "json"
    assert by_key["eye-00003"]["reason"] == S.MISSING


def test_duplicate_keys_and_bad_member_names_are_rejected(tmp_path):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tf:
        for name in ("a.png", "a.json", "b.png", "a.png", "README"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    rejects = H.Rejects()
    keys = [s["__key__"] for s in H.shard_samples(str(path), handler=rejects)]
    assert keys == ["a", "b"]
    assert rejects.counts == {S.DUPLICATE: 1, S.BAD_MEMBER: 1}


def test_missing_shard_is_unreadable(tmp_path):
    with pytest.raises(S.SampleError, match=S.UNREADABLE):
        list(H.shard_samples(str(tmp_path / "nope.tar")))
    rejects = H.Rejects()
    assert list(H.shard_samples(f"pipe:cat {tmp_path}/nope.tar", handler=rejects)) == []
    assert rejects.total >= 1


class _Boom:
    """Unpickling this creates a directory: the test fails if anything unpickles it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pyd_member_is_passed_through_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Boom(str(marker)))
    sample = gaze(0)
    sample["pyd"] = payload
    path = write(tmp_path / "p.tar", [sample])
    (got,) = list(H.read(path, "gaze"))
    assert got["pyd"] == payload
    assert not marker.exists()
    from refinery.inspection import inspect

    report = inspect([path], labels=1, sheet=tmp_path / "sheet.png")
    assert report.samples == 1 and report.shards[0].components["pyd"] == 1
    assert not marker.exists()


@pytest.mark.parametrize("name", ["eye-00001.png", "d/" * 60 + "long-key.json", "straße-1.png"])
def test_member_headers_match_what_tarfile_writes(name):
    data = b"x" * 700
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    info.uname = info.gname = ""
    expected = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    member = H._tar_member(name, data, 0)
    assert member[: len(expected)] == expected
    assert len(member) % 512 == 0 and member[len(expected) : len(expected) + 700] == data


def test_long_and_unicode_keys_round_trip(tmp_path):
    items = [dict(gaze(0), __key__="d/" * 60 + "long-key"), dict(gaze(1), __key__="straße-1")]
    path = write(tmp_path / "names.tar", items)
    assert [strip(s) for s in H.shard_samples(path)] == items
    with tarfile.open(path) as tf:
        assert tf.getnames()[0] == "d/" * 60 + "long-key.png"


def test_stopping_early_on_a_pipe_is_not_an_error(tmp_path):
    path = write(tmp_path / "big.tar", [gaze(i) for i in range(300)])
    stream = H.shard_samples(f"pipe:cat {path}")
    assert next(stream)["__key__"] == "eye-00000"
    stream.close()  # the pipe's command dies of SIGPIPE; that is not a bad shard


# -- the tar reader's fast path against tarfile --------------------------------------------------


def _outcome(read, data: bytes) -> tuple[list[tuple[str, bytes]], str | None, str | None]:
    """Members read before the stream ended, and how it ended (message, member)."""
    got = []
    try:
        for member in read(io.BytesIO(data)):
            got.append(member)
    except H._TarEnded as exc:
        return got, str(exc), exc.member
    except (tarfile.TarError, EOFError, OSError) as exc:
        return got, f"{type(exc).__name__}", None
    return got, None, None


def _tar(fmt: int) -> bytes:
    """Every member kind a shard might hold, in one archive of the given tarfile format."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(fmt)
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tf:

        def add(name: str, data: bytes = b"", kind=tarfile.REGTYPE, **fields) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.type = (len(data) if kind == tarfile.REGTYPE else 0), kind
            for key, value in fields.items():
                setattr(info, key, value)
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("eye-00000.png", rng.bytes(700))
        add("eye-00000.json", b'{"gaze": 1}')
        add("dir", kind=tarfile.DIRTYPE)
        add("eye-00001.png", rng.bytes(512))  # no padding
        add("eye-00001.json", b"")  # empty
        add("link", kind=tarfile.SYMTYPE, linkname="eye-00001.png")
        add("hard", kind=tarfile.LNKTYPE, linkname="eye-00001.png")
        if fmt != tarfile.USTAR_FORMAT:  # long and non-ASCII names need GNU or PAX headers
            add("d/" * 70 + "long-key.png", rng.bytes(1500))
            add("straße-1.png", rng.bytes(3))
        add("prefix/" * 10 + "split.png", rng.bytes(5))  # ustar: name + prefix fields
        big = {"mtime": 8**12} if fmt == tarfile.GNU_FORMAT else {}  # a base-256 number
        add("eye-00002.png", rng.bytes(1200), **big)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "fmt",
    [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
    ids=["ustar", "gnu", "pax"],
)
def test_fast_tar_reader_agrees_with_tarfile_whole_cut_anywhere_or_corrupted(fmt):
    data = _tar(fmt)
    whole = _outcome(H._members, data)
    assert whole == _outcome(H._tarfile_members, data) and whole[1] is None
    assert [n for n, _ in whole[0]][:2] == ["eye-00000.png", "eye-00000.json"]
    # the stream cut at every block boundary and at many points inside blocks
    cuts = sorted({*range(0, len(data), 512), *range(1, len(data), 97)})
    for cut in cuts:
        assert _outcome(H._members, data[:cut]) == _outcome(H._tarfile_members, data[:cut]), cut
    # a flipped byte in each field of every block (a header's: a bad checksum, a bad number)
    fields = (0, 100, 124, 136, 148, 150, 156, 257, 345)
    for at in (block + field for block in range(0, len(data), 512) for field in fields):
        bad = bytearray(data)
        bad[at] ^= 0x55
        fast, slow = _outcome(H._members, bytes(bad)), _outcome(H._tarfile_members, bytes(bad))
        # the same, or stricter where tarfile (before Python 3.12) skips a garbled PAX record
        stricter = fast[1] == "invalid member header (invalid header)" and (
            slow[0][: len(fast[0])] == fast[0]
        )
        assert fast == slow or stricter, at


def test_a_whole_shard_of_our_own_is_parsed_at_once_and_anything_else_falls_back(tmp_path):
    """``_plain_shard`` (a whole shard in memory, checksums summed at once) takes the shards our
    writer makes; cut anywhere or with a byte flipped in any header field it gives way, and the
    reader says what tarfile says."""
    url = write(tmp_path / "s.tar", [gaze(i) for i in range(3)])
    data = Path(url).read_bytes()
    whole = _outcome(H._members, data)
    assert H._plain_shard(data) == whole[0] == _outcome(H._tarfile_members, data)[0]
    assert len(whole[0]) == 6 and whole[1] is None
    for cut in sorted({*range(0, len(data), 512), *range(1, len(data), 97)}):
        assert _outcome(H._members, data[:cut]) == _outcome(H._tarfile_members, data[:cut]), cut
    fields = (0, 99, 100, 124, 135, 136, 148, 150, 156, 257, 345, 511)
    starts = [0, *(at for at, _ in _member_offsets(data))]
    for at in (start + field for start in starts for field in fields):
        bad = bytearray(data)
        bad[at] ^= 0x55
        fast, slow = _outcome(H._members, bytes(bad)), _outcome(H._tarfile_members, bytes(bad))
        assert fast == slow, at


def _member_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset of the next header, size) of each member of a tar in memory."""
    out, at = [], 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for info in tf:
            at = info.offset_data + info.size + (-info.size % 512)
            out.append((at, info.size))
    return out[:-1]


def test_fast_tar_reader_hands_what_it_does_not_parse_to_tarfile():
    import gzip

    data = _tar(tarfile.PAX_FORMAT)
    packed = gzip.compress(data)  # compressed: tarfile from the first block
    assert _outcome(H._members, packed) == _outcome(H._tarfile_members, data)
    buffer = io.BytesIO()  # a global PAX header mid-archive: tarfile from that member on
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        first = tarfile.TarInfo("a.png")
        first.size = 3
        tf.addfile(first, io.BytesIO(b"abc"))
    head = buffer.getvalue()[:1024]  # a.png's header and data, no end-of-archive blocks
    tail = io.BytesIO()
    with tarfile.open(
        fileobj=tail, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"}
    ) as tf:
        second = tarfile.TarInfo("b.png")
        second.size = 2
        tf.addfile(second, io.BytesIO(b"de"))
    joined = head + tail.getvalue()
    assert _outcome(H._members, joined) == _outcome(H._tarfile_members, joined)
    assert [n for n, _ in _outcome(H._members, joined)[0]] == ["a.png", "b.png"]


def test_a_close_that_fails_part_way_leaves_no_temporary_file(tmp_path, monkeypatch):
    writer = H.ShardWriter(str(tmp_path / "s.tar"))
    writer.write(gaze(0))

    def interrupted(fd):
        raise KeyboardInterrupt  # Ctrl-C while the shard is flushed to disk

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    assert list(tmp_path.iterdir()) == []
    writer.abort()  # a no-op now


def _raw_tar(path, members) -> str:
    """A tar of (name, data | (tar type, link target)) members, as any tool might write it."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = data
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture(params=["fast-reader", "tarfile"])
def reader(request, monkeypatch):
    """Each test twice: through the block parser, and the same shard through tarfile's."""
    if request.param == "tarfile":
        monkeypatch.setattr(H, "_plain_members", lambda h, s: H._tarfile_members(H._Prefixed(h, s)))
        monkeypatch.setattr(H, "_plain_shard", lambda data: None)
    return request.param


def test_unsafe_keys_are_bad_key_rejects_and_reading_goes_on(tmp_path, reader):
    good = gaze(1)
    url = _raw_tar(
        tmp_path / "keys.tar",
        [
            ("../../evil.png", good["png"]),
            ("/abs/path.png", good["png"]),
            ("new\nline.png", good["png"]),
            ("eye-00001.png", good["png"]),
            ("eye-00001.json", good["json"]),
        ],
    )
    rejects = H.Rejects()
    keys = [s["__key__"] for s in H.tar_samples(url, handler=rejects)]
    assert keys == ["eye-00001"]
    assert [(r["key"], r["reason"]) for r in rejects.records] == [
        ("../../evil", S.BAD_KEY),
        ("/abs/path", S.BAD_KEY),
        ("new\nline", S.BAD_KEY),
    ]


def test_link_members_reject_their_sample_instead_of_vanishing(tmp_path, reader):
    good = gaze(2)
    url = _raw_tar(
        tmp_path / "links.tar",
        [
            ("eye-00001.png", good["png"]),
            ("eye-00001.json", good["json"]),
            ("only-link.png", (tarfile.SYMTYPE, "/etc/passwd")),  # a sample that is one link
            ("half.png", good["png"]),
            ("half.json", (tarfile.LNKTYPE, "eye-00001.json")),
            ("folder", (tarfile.DIRTYPE, "")),  # directories are not samples: skipped
            ("eye-00002.png", good["png"]),
            ("eye-00002.json", good["json"]),
        ],
    )
    rejects = H.Rejects()
    keys = [s["__key__"] for s in H.tar_samples(url, handler=rejects)]
    assert keys == ["eye-00001", "eye-00002"]
    assert [(r["key"], r["component"], r["reason"]) for r in rejects.records] == [
        ("only-link", "png", S.BAD_MEMBER),
        ("half", "json", S.BAD_MEMBER),
    ]
    assert "symbolic link to '/etc/passwd'" in rejects.records[0]["detail"]
