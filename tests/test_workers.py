"""The refine job's worker processes, its PNG encoder and the identity engine: the same bytes
whatever the number of workers, pixels identical through the encoder, failures named."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from deploy import RefineConfig, run
from deploy.job import job_workers
from deploy.stages import machine_threads
from deploy.workers import WorkerFailed, clean_stale_buffers
from engines.export import export_module
from engines.identity import IdentityEngine
from engines.spec import PixelIO, Profile, Shape
from refinery import png, sim
from refinery.cli import main
from refinery.registry import build_network
from refinery.samples import encode_sample
from refinery.shards import shard_samples, temp_tag, write_shards

ROOT = Path(__file__).resolve().parents[1]


def _decode(data: bytes, kind: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if kind == "rgb8" else image


@pytest.mark.parametrize(
    ("kind", "shape", "dtype"),
    [
        ("gray8", (5, 35, 55), np.uint8),
        ("gray8", (2, 1, 1), np.uint8),
        ("rgb8", (3, 17, 31, 3), np.uint8),
        ("depth16", (4, 23, 19), np.uint16),
    ],
)
def test_libdeflate_pngs_decode_to_exactly_the_pixels_encoded(kind, shape, dtype):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)
    ramp = np.linspace(0, np.iinfo(dtype).max, shape[2]).astype(dtype)  # along each row
    smooth = np.broadcast_to(ramp.reshape(1, 1, -1, *([1] * (len(shape) - 3))), shape).copy()
    for pixels in (
        noise,
        smooth,
        np.zeros(shape, dtype),
        np.full(shape, np.iinfo(dtype).max, dtype),
    ):
        blobs = png.encode_pngs(pixels, kind)
        assert len(blobs) == len(pixels)
        for blob, image in zip(blobs, pixels, strict=True):
            decoded = _decode(blob, kind)
            assert decoded.dtype == image.dtype and np.array_equal(decoded, image)


def test_libdeflate_pngs_are_about_the_size_of_opencvs_on_eyes():
    eyes = np.stack([s["png"] for s in sim.generate("gaze", "synthetic", 20, seed=1)])
    ours = sum(len(b) for b in png.encode_pngs(eyes, "gray8"))
    opencv = sum(len(cv2.imencode(".png", e, [cv2.IMWRITE_PNG_COMPRESSION, 3])[1]) for e in eyes)
    assert 0.9 * opencv < ours < 1.05 * opencv


def test_the_png_encoder_refuses_what_it_cannot_store():
    with pytest.raises(ValueError, match=r"gray8 PNGs need a \(B, H, W\) uint8 batch"):
        png.encode_pngs(np.zeros((2, 4, 4), np.uint16), "gray8")
    with pytest.raises(ValueError, match="rgb8 PNGs need"):
        png.encode_pngs(np.zeros((2, 4, 4, 4), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="no PNG format for kind 'seg9'"):
        png.encode_pngs(np.zeros((2, 4, 4), np.uint8), "seg9")


def test_refine_workers_never_import_torch():
    code = "import sys, deploy.workers; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    torch.manual_seed(0)
    engine = root / "engine"
    export_module(
        build_network("simgan-refiner-small", channels=1),
        engine,
        network="simgan-refiner-small",
        kwargs={"channels": 1},
        method="test",
        domain="gaze",
        pixels=PixelIO("png", "gray8", 1, low=0.0, high=255.0),
        profile=Profile(Shape(1, 16, 16), Shape(8, 35, 55), Shape(64, 70, 110)),
        source={"run": None, "checkpoint": None, "recipe": {"test": True}},
    )
    samples = [encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 90, seed=4)]
    samples[7]["png"] = b"\x89PNG\r\n\x1a\n junk"  # one reject, wherever the workers are
    urls = write_shards(iter(samples), str(root / "in" / "gaze-%03d.tar"), shard_size=30)
    return root, engine, urls


def _tree(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["identity", "onnx"])
def test_outputs_are_byte_identical_whatever_the_number_of_workers(shards, tmp_path, engine):
    _, engine_dir, urls = shards
    name = "identity" if engine == "identity" else str(engine_dir)
    trees, stats = [], []
    for workers in (0, 1, 3):
        out = tmp_path / f"out-{workers}"
        summary = run(RefineConfig(engine=name, output=str(out), batch=8, workers=workers), urls)
        assert (summary.read, summary.written, summary.rejected) == (90, 89, 1)
        trees.append(_tree(out))
        stats.append([json.loads((out / f"{n}.stats.json").read_text()) for n in trees[-1]])
    assert trees[0] == trees[1] == trees[2] and len(trees[0]) == 3
    for per_run in stats:
        assert [s["encoder"] for s in per_run] == [png.ENCODER] * 3
        assert per_run[0]["reasons"] == {"undecodable": 1}
        assert per_run[0]["rejects"][0]["key"] == "gaze-syn-s4-00000007"


@pytest.mark.slow
def test_the_identity_engine_passes_pixels_and_labels_through_unchanged(shards, tmp_path):
    _, _, urls = shards
    out = tmp_path / "out"
    args = ["refine", "--engine", "identity", "--input", *urls, "--output", str(out)]
    assert main(args) == 0  # the domain comes from the labels
    before = {
        s["__key__"]: s for s in shard_samples(urls) if s["__key__"] != "gaze-syn-s4-00000007"
    }
    after = {s["__key__"]: s for s in shard_samples(sorted(str(p) for p in out.glob("*.tar")))}
    assert sorted(after) == sorted(before)
    for key, sample in after.items():
        assert sample["json"] == before[key]["json"]
        assert np.array_equal(_decode(sample["png"], "gray8"), _decode(before[key]["png"], "gray8"))
        provenance = json.loads(sample["refinery.json"])
        assert provenance["engine"].startswith("identity@") and provenance["backend"] == "identity"
    stats = json.loads((out / "gaze-000.tar.stats.json").read_text())
    assert stats["backend"] == "identity" and stats["decoder"] == "opencv"
    # an identity output belongs to the identity: a trained engine is refused there
    with pytest.raises(ValueError, match="identity"):
        run(RefineConfig(engine=str(shards[1]), output=str(out)), urls)


def test_the_identity_engine_is_exact_for_every_kind():
    for domain, pixels in (
        ("gaze", np.arange(12, dtype=np.uint8).reshape(1, 3, 4)),
        ("hand", np.array([[[0, 1, 65535, 40000]]], np.uint16)),
        ("scene", np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3)),
    ):
        result = IdentityEngine(domain).refine(pixels)
        assert np.array_equal(result.pixels, pixels) and result.finite.all()


def test_workers_are_sized_from_the_affinity_mask_and_the_shards():
    cores = machine_threads()
    identity, onnx = IdentityEngine("gaze"), type("E", (), {"backend": "onnxruntime"})()
    config = RefineConfig(engine="e", output="out")
    assert job_workers(config, identity, 100) == cores
    assert job_workers(config, onnx, 100) == max(1, cores - 1)
    assert job_workers(config, identity, 1) == 1
    assert job_workers(RefineConfig(engine="e", output="out", workers=5), identity, 3) == 3
    assert job_workers(RefineConfig(engine="e", output="out", workers=0), identity, 3) == 0
    assert job_workers(RefineConfig(engine="e", output="memory://x"), identity, 3) == 0
    with pytest.raises(ValueError, match="workers must be >= 0"):
        RefineConfig(engine="e", output="out", workers=-1)


def test_ranks_on_one_machine_share_its_cores(monkeypatch):
    """torchrun --nproc_per_node 8 on 16 cores: one worker a rank, not fifteen; ranks pinned
    to their own cores (a mask smaller than the machine) keep their masks."""
    import deploy.job

    identity, config = IdentityEngine("gaze"), RefineConfig(engine="e", output="out")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(deploy.job, "machine_threads", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    assert job_workers(config, identity, 100) == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert job_workers(config, identity, 100) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert job_workers(config, identity, 100) == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    assert job_workers(config, identity, 100) == 4
    monkeypatch.setattr(deploy.job, "machine_threads", lambda: 4)  # pinned by the launcher
    assert job_workers(config, identity, 100) == 4


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_named_and_the_rerun_finishes_exactly_once(shards, tmp_path):
    _, engine_dir, urls = shards
    out = tmp_path / "out"
    config = RefineConfig(engine=str(engine_dir), output=str(out), batch=2, workers=1)

    def kill_a_worker(stats) -> None:
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)

    with pytest.raises(WorkerFailed, match=r"refine worker \d+ died \(exit code -9\)"):
        run(config, urls, progress=kill_a_worker)
    assert len(list(out.glob("*.stats.json"))) == 1  # the first shard, then the kill
    summary = run(config, urls)
    assert summary.read == 90 and summary.written + summary.rejected == 90
    keys = [s["__key__"] for s in shard_samples(sorted(str(p) for p in out.glob("*.tar")))]
    assert len(keys) == len(set(keys)) == 89
    assert not list(out.glob(".*tmp*")), "the killed worker's temporary shard was cleaned"


def test_shared_buffers_of_dead_workers_are_removed(tmp_path):
    directory = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    if directory is None:
        pytest.skip("no /dev/shm")
    host = temp_tag().rsplit("-", 1)[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = directory / f".refine-buffer.tmp-{host}-{dead}-0123abcd"
    alive = directory / f".refine-buffer.tmp-{temp_tag()}-0123abcd"
    for path in (stale, alive):
        path.write_bytes(b"x")
    try:
        clean_stale_buffers()
        assert not stale.exists() and alive.exists()
    finally:
        stale.unlink(missing_ok=True)
        alive.unlink(missing_ok=True)


def _descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (its workers, the fork server, theirs), from /proc."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (
                (task / "children").read_text().split() if (task / "children").exists() else []
            )
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie has ended; its new parent may never reap it


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
def test_a_job_killed_with_9_takes_its_workers_and_fork_server_with_it(tmp_path):
    """kill -9 of the job's process: its workers (forked from a fork server, whose death
    signal is the server's exit) end too, and the rerun gives every key exactly once."""
    samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 6000, seed=4))
    urls = write_shards(samples, str(tmp_path / "in" / "g-%03d.tar"), shard_size=300)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "refinery", "refine", "--engine", "identity", "--domain", "gaze",
        "--input", *urls, "--output", str(out), "--workers", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.stats.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    under = _descendants(job.pid)
    job.kill()
    job.wait(timeout=30)
    assert len(under) >= 3, f"expected two workers and a fork server under the job: {under}"
    assert 1 <= len(list(out.glob("*.stats.json"))) < len(urls), "the kill must land mid-job"
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in under) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in under), "a worker outlived the killed job"
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    keys = [s["__key__"] for s in shard_samples(sorted(str(p) for p in out.glob("*.tar")))]
    assert len(keys) == len(set(keys)) == 6000
    assert not list(out.glob(".*tmp*"))


def test_workers_work_in_the_jobs_directory_and_environment(tmp_path, monkeypatch):
    """The fork server outlives a job; each job's workers still see that job's working
    directory (relative paths) and environment, as spawned workers would."""
    samples = [encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 8, seed=2)]
    for name in ("first", "second"):
        place = tmp_path / name
        place.mkdir()
        monkeypatch.chdir(place)
        monkeypatch.setenv("TMPDIR", str(place))
        write_shards(iter(samples), "in/g-%03d.tar", shard_size=4)
        config = RefineConfig(engine="identity", domain="gaze", output="out", workers=2)
        summary = run(config, ["in/g-000.tar", "in/g-001.tar"])
        assert summary.written == 8
        assert sorted(p.name for p in (place / "out").glob("*.tar")) == ["g-000.tar", "g-001.tar"]
