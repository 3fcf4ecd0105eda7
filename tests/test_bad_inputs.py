"""No bad input ever stops a refine job: one shard per kind of bad sample, between good shards,
through the README's command (``refinery refine``) in a process of its own.

Each bad sample is a reject that names its key and reason, wherever it stands (a bad first
sample included); every shard is finished; per shard written + rejected = read; nothing is
written outside ``--output``; the exit status follows ``--max-reject-rate`` over all the job's
shards, on the first run and on every rerun.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.spec import Profile, Shape
from refinery import sim
from refinery.samples import encode_json, encode_sample
from refinery.shards import shard_samples
from tests.test_refine_job import _engine

ROOT = Path(__file__).resolve().parents[1]


def gaze_engine(out: Path, *, seed: int = 0) -> Path:
    """The small refiner with random weights of ``seed``, as a 35x55 gaze engine."""
    profile = Profile(Shape(1, 16, 16), Shape(8, 35, 55), Shape(64, 70, 110))
    return _engine(
        out, domain="gaze", channels=1, kind="gray8", component="png", profile=profile, seed=seed
    )


def _good(prefix: str, count: int, seed: int) -> list[tuple[str, bytes]]:
    members = []
    for i, sample in enumerate(sim.generate("gaze", "synthetic", count, seed=seed)):
        encoded = encode_sample(sample, "gaze")
        members += [(f"{prefix}-{i}.png", encoded["png"]), (f"{prefix}-{i}.json", encoded["json"])]
    return members


def _png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def _tar(path: Path, members, *, cut: int | None = None) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):  # (tar type, link target)
                info.type, info.linkname = data
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    path.write_bytes(data[:cut] if cut else data)


LABEL = encode_json({"gaze": {"pitch": 0.1, "yaw": 0.2}, "look_vec": [0.0, 0.0, -1.0]})
GRAY = np.full((35, 55), 120, np.uint8)


def bad_cases() -> dict[str, tuple[list, dict[str, int]]]:
    """Shard name -> (its bad members, placed FIRST, before good samples; expected reasons)."""
    return {
        "01-bad-keys": (
            [("../../evil.png", _png(GRAY)), ("../../evil.json", LABEL),
             ("/abs/path.png", _png(GRAY)), ("/abs/path.json", LABEL),
             ("new\nline.png", _png(GRAY)), ("new\nline.json", LABEL)],
            {"bad-key": 3},
        ),
        "02-zero-byte-png": ([("zero.png", b""), ("zero.json", LABEL)], {"undecodable": 1}),
        "03-first-missing-image": ([("noimage.json", LABEL)], {"missing-component": 1}),
        "04-first-16-bit": (
            [("deep.png", _png(np.full((35, 55), 900, np.uint16))), ("deep.json", LABEL)],
            {"malformed": 1},
        ),
        "05-first-rgb": (
            [("rgb.png", _png(np.full((35, 55, 3), 90, np.uint8))), ("rgb.json", LABEL)],
            {"malformed": 1},
        ),
        "06-first-out-of-profile": (
            [("huge.png", _png(np.full((200, 300), 90, np.uint8))), ("huge.json", LABEL)],
            {"size-outside-engine": 1},
        ),
        "07-first-foreign-label": (
            [("hand.png", _png(GRAY)), ("hand.json", encode_json({"domain": "hand"}))],
            {"malformed": 1},
        ),
        "08-no-json": ([("unlabeled.png", _png(GRAY))], {"missing-component": 1}),
        "09-label-not-json": (  # undecodable, as `refinery inspect` says (samples.label_problem)
            [("text.png", _png(GRAY)), ("text.json", b"pitch=0.1 yaw=0.2")],
            {"undecodable": 1},
        ),
        "10-symlink-only": ([("link.png", (tarfile.SYMTYPE, "/etc/passwd"))], {"bad-member": 1}),
        "11-corrupt-png": (
            [("corrupt.png", _png(GRAY)[:40] + b"garbage"), ("corrupt.json", LABEL)],
            {"undecodable": 1},
        ),
        "12-duplicate-key": (
            [("twice.png", _png(GRAY)), ("twice.json", LABEL),
             ("other.png", _png(GRAY)), ("other.json", LABEL),
             ("twice.png", _png(GRAY)), ("twice.json", LABEL)],
            {"duplicate-key": 1},
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    inputs = root / "in"
    inputs.mkdir()
    expected: dict[str, dict[str, int]] = {}
    _tar(inputs / "00-good.tar", _good("g0", 6, seed=1))
    expected["00-good.tar"] = {}
    for n, (name, (members, reasons)) in enumerate(bad_cases().items()):
        _tar(inputs / f"{name}.tar", members + _good(f"s{n}", 3, seed=10 + n))
        expected[f"{name}.tar"] = reasons
    # a shard cut inside its last sample's image
    members = _good("t", 4, seed=40)
    _tar(inputs / "13-truncated.tar", members)
    with tarfile.open(inputs / "13-truncated.tar") as tf:
        last_png = [m for m in tf.getmembers() if m.name.endswith(".png")][-1]
    _tar(inputs / "13-truncated.tar", members, cut=last_png.offset_data + 100)
    expected["13-truncated.tar"] = {"truncated-tar": 1}
    _tar(inputs / "14-good.tar", _good("g1", 6, seed=2))
    expected["14-good.tar"] = {}
    return root, gaze_engine(root / "engine"), expected


def _refine(root: Path, engine: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    private_tmp = root / "tmp"
    private_tmp.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(private_tmp)}
    command = [
        sys.executable, "-m", "refinery", "refine", "--engine", str(engine),
        "--input", str(root / "in"), "--output", str(out), "--batch", "4", *extra,
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=root, timeout=300)


# ONNX Runtime writes one file of its own under that name into $TMPDIR when it is imported
LIBRARY_FILES = {"tmp/.ses"}


def _files(root: Path, *, outside: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and outside not in p.parents
    } - LIBRARY_FILES


@pytest.mark.parametrize("limit, code", [("0.05", 1), ("0.5", 0)], ids=["over", "under"])
def test_every_bad_input_is_a_reject_and_the_job_finishes(dataset, limit, code):
    root, engine, expected = dataset
    out = root / f"out-{limit}"
    before = _files(root, outside=out)
    first = _refine(root, engine, out, "--max-reject-rate", limit)
    assert first.returncode == code, first.stderr
    assert "Traceback" not in first.stderr
    read = rejected = 0
    for name, reasons in expected.items():
        stats = json.loads((out / f"{name}.stats.json").read_text())  # every shard finished
        assert stats["written"] + stats["rejected"] == stats["read"], name
        assert stats["reasons"] == reasons, name
        for record in stats["rejects"]:
            assert record["reason"] and record["key"], (name, record)
            assert record["detail"], (name, record)
        written = [s["__key__"] for s in shard_samples(str(out / name))]
        assert len(written) == stats["written"] and all("/" not in k for k in written)
        read, rejected = read + stats["read"], rejected + stats["rejected"]
    assert rejected == sum(sum(r.values()) for r in expected.values())
    if code:
        assert f"{rejected} of {read} samples rejected" in first.stderr
    # nothing outside --output: no file beside it, none in the temporary directory
    assert _files(root, outside=out) == before
    # the rerun skips every finished shard and gives the same verdict
    again = _refine(root, engine, out, "--max-reject-rate", limit)
    assert again.returncode == code, again.stderr
    assert f"0 shards refined, {len(expected)} already finished" in (again.stdout + again.stderr)


def test_a_bad_first_sample_of_the_job_is_one_reject_not_a_refusal(dataset, tmp_path):
    root, engine, _ = dataset
    for name in ("03-first-missing-image", "04-first-16-bit", "06-first-out-of-profile"):
        case = tmp_path / name
        (case / "in").mkdir(parents=True)
        (case / "in" / f"{name}.tar").write_bytes((root / "in" / f"{name}.tar").read_bytes())
        done = _refine(case, engine, case / "out")
        assert done.returncode == 0, done.stderr
        stats = json.loads((case / "out" / f"{name}.tar.stats.json").read_text())
        assert (stats["read"], stats["written"], stats["rejected"]) == (4, 3, 1), name


def test_an_output_of_another_engine_is_refused_naming_both(dataset, tmp_path):
    root, engine, _ = dataset
    other = gaze_engine(tmp_path / "other", seed=1)
    out = tmp_path / "out"
    assert _refine(root, engine, out).returncode == 0
    refused = _refine(root, other, out)
    assert refused.returncode == 1
    mine = json.loads((engine / "engine.json").read_text())["model"]["sha256"][:12]
    theirs = json.loads((other / "engine.json").read_text())["model"]["sha256"][:12]
    assert mine in refused.stderr and theirs in refused.stderr, refused.stderr
    # a fresh output claimed by one engine refuses another before any shard is written
    claimed = tmp_path / "claimed"
    claimed.mkdir()
    (claimed / "refinery-output.json").write_text(
        json.dumps({"engine": "someone@0123456789ab", "engine_hash": "0123456789ab" * 5})
    )
    refused = _refine(root, engine, claimed)
    assert refused.returncode == 1 and "someone@0123456789ab" in refused.stderr
    assert sorted(p.name for p in claimed.iterdir()) == ["refinery-output.json"]


def test_two_engines_started_at_once_into_one_output_do_not_mix(dataset, tmp_path):
    root, engine, _ = dataset
    other = gaze_engine(tmp_path / "other", seed=2)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "refinery", "refine", "--engine", str(e), "--input",
             str(root / "in"), "--output", str(out), "--batch", "4"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for e in (engine, other)
    ]  # fmt: skip
    codes = sorted(job.wait(timeout=300) for job in jobs)
    assert codes == [0, 1]
    hashes = {json.loads(p.read_text())["engine_hash"] for p in out.glob("*.stats.json")}
    assert len(hashes) == 1 and len(list(out.glob("*.stats.json"))) == 15


def test_a_failing_pipe_names_its_command_and_shard(dataset, tmp_path):
    root, engine, _ = dataset
    failed = _refine(
        root,
        engine,
        Path("pipe:cat > /nonexistent-dir/{name}"),
        "--stats",
        str(tmp_path / "stats"),
    )
    assert failed.returncode == 1
    assert "cat > /nonexistent-dir/00-good.tar" in failed.stderr
    assert "while writing shard '00-good.tar'" in failed.stderr
    assert "(read)" not in failed.stderr
