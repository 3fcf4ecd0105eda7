"""The output store (``refinery.store``, ``deploy.output``): atomic writes, stale temporaries
(zombies included, in the output and the ``--stats`` directory), one owner per output whatever
``--stats`` says, and a rerun with nothing to do that writes nothing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import RefineConfig, run
from deploy.output import OUTPUT_FILE, OutputConflict
from engines.spec import Profile, Shape
from refinery import sim, store
from refinery.samples import encode_sample
from refinery.shards import ShardWriter, write_shards
from tests.test_refine_job import _engine

PROFILE = Profile(Shape(1, 16, 16), Shape(8, 35, 55), Shape(64, 70, 110))


def gaze_engine(out: Path, *, seed: int = 0) -> Path:
    kwargs = dict(domain="gaze", channels=1, kind="gray8", component="png", profile=PROFILE)
    return _engine(out, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 24, seed=5))
    urls = write_shards(samples, str(root / "in" / "g-%06d.tar"), shard_size=4)
    return gaze_engine(root / "a", seed=0), gaze_engine(root / "b", seed=1), urls


def _zombie() -> subprocess.Popen:
    """A child that has exited and is not reaped yet: ``os.kill(pid, 0)`` still succeeds."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state == "Z":
            return child
        time.sleep(0.01)
    raise AssertionError("the child did not exit")


def _host() -> str:
    return store.temp_tag().rsplit("-", 1)[0]


# -- refinery.store ---------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_zombie_writer_is_gone_and_its_temporary_is_stale():
    child = _zombie()
    try:
        os.kill(child.pid, 0)  # what the old check asked: it succeeds for a zombie
        assert not store.pid_alive(child.pid)
        assert store.stale_temp(f".a.tar.tmp-{_host()}-{child.pid}-0123abcd")
        assert store.pid_alive(os.getppid())
    finally:
        child.wait()


def test_a_failed_atomic_write_leaves_no_temporary_and_names_the_path(tmp_path):
    target = tmp_path / "a.stats.json"
    target.mkdir()  # the rename onto it fails
    with pytest.raises(OSError, match=r"while writing the stats of x to .*a\.stats\.json"):
        store.write_atomic(str(target), b"{}", what="the stats of x")
    assert [p.name for p in tmp_path.iterdir()] == ["a.stats.json"]


def test_a_full_disk_names_the_shard_and_the_path_being_written(tmp_path, monkeypatch):
    import refinery.shards as shards

    full = open("/dev/full", "wb", buffering=0)  # noqa: SIM115 (the writer closes it)
    monkeypatch.setattr(shards, "open_url", lambda url, mode="rb": full)
    writer = ShardWriter(str(tmp_path / "data-000003.tar"))
    with pytest.raises(OSError) as caught:
        writer.write({"__key__": "k", "png": b"x" * 100})
        writer.close()
    assert caught.value.errno == errno.ENOSPC
    message = str(caught.value)
    assert (
        "shard 'data-000003.tar'" in message and str(tmp_path / ".data-000003.tar.tmp-") in message
    )


def test_create_once_lets_exactly_one_writer_win(tmp_path):
    url = str(tmp_path / "owner.json")
    assert store.create_once(url, b"first") and not store.create_once(url, b"second")
    assert Path(url).read_bytes() == b"first" and os.listdir(tmp_path) == ["owner.json"]


# -- deploy.output through the job -------------------------------------------------------------


def test_two_engines_with_separate_stats_directories_cannot_mix_one_output(data, tmp_path):
    a, b, urls = data
    out = tmp_path / "out"
    run(RefineConfig(engine=str(a), output=str(out), stats=str(tmp_path / "s1")), urls[3:])
    assert json.loads((out / OUTPUT_FILE).read_text())["engine_hash"]  # the output says whose
    with pytest.raises(OutputConflict, match="holds shards refined by engine"):
        run(RefineConfig(engine=str(b), output=str(out), stats=str(tmp_path / "s2")), urls[:3])
    assert sorted(p.name for p in out.glob("*.tar")) == [Path(u).name for u in urls[3:]]
    assert not (tmp_path / "s2").exists() or not list((tmp_path / "s2").glob("*.stats.json"))


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every entry's (mtime, size), and each folder's own mtime (a file created and removed
    again changes it)."""
    seen = {}
    for folder in folders:
        seen[str(folder)] = (folder.stat().st_mtime_ns, 0)
        for path in folder.iterdir():
            seen[str(path)] = (path.stat().st_mtime_ns, path.stat().st_size)
    return seen


@pytest.mark.parametrize("separate_stats", [False, True], ids=["stats-beside", "stats-apart"])
def test_a_rerun_of_a_finished_output_writes_nothing(data, tmp_path, separate_stats):
    a, _, urls = data
    out, stats = tmp_path / "out", tmp_path / "stats"
    config = RefineConfig(
        engine=str(a), output=str(out), stats=str(stats) if separate_stats else None
    )
    first = run(config, urls)
    folders = (out, stats) if separate_stats else (out,)
    before = _snapshot(*folders)
    time.sleep(0.02)
    again = run(config, urls)
    assert _snapshot(*folders) == before  # no claim temp file, no stats rewritten
    assert all(s.skipped for s in again.shards) and again.read == first.read


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_temporaries_of_killed_writers_go_from_the_output_and_the_stats_directory(data, tmp_path):
    a, _, urls = data
    out, stats = tmp_path / "out", tmp_path / "stats"
    config = RefineConfig(engine=str(a), output=str(out), stats=str(stats))
    run(config, urls[:1])
    child = _zombie()
    try:
        host, live = _host(), os.getppid()
        gone = [
            out / f".g-000001.tar.tmp-{host}-{child.pid}-0123abcd",  # a killed writer, unreaped
            stats / f".g-000001.tar.stats.json.tmp-{host}-{child.pid}-89abcdef",
        ]
        kept = [stats / f".g-000002.tar.stats.json.tmp-{host}-{live}-fedcba98"]  # a live one
        for path in gone + kept:
            path.write_bytes(b"partial")
        run(config, urls)
        assert [p for p in gone if p.exists()] == [] and all(p.exists() for p in kept)
    finally:
        child.wait()


def test_a_failed_stats_write_in_a_separate_directory_leaves_no_temporary(data, tmp_path):
    a, _, urls = data
    stats = tmp_path / "stats"
    name = Path(urls[0]).name
    (stats / f"{name}.stats.json").mkdir(parents=True)  # the rename onto it fails
    config = RefineConfig(engine=str(a), output=str(tmp_path / "out"), stats=str(stats))
    with pytest.raises(OSError, match=f"stats of shard '{name}'"):
        run(config, urls[:1])
    assert {p.name for p in stats.iterdir()} == {OUTPUT_FILE, f"{name}.stats.json"}
