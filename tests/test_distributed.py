"""Ray distribution (issue 5): a run on a local Ray instance equals a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deploy import distributed, job
from deploy.distributed import ShardGroupFailed, run_on_ray
from deploy.job import RefineConfig
from engines import PixelIO, Profile, Shape
from engines.export import export_module
from refinery import sim
from refinery.registry import build_network
from refinery.samples import encode_sample
from refinery.shards import shard_name, write_shards

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]

GRAY = PixelIO(image_component="png", pixel_kind="gray8", channels=1, low=0.0, high=255.0)
PROFILE = Profile(Shape(1, 8, 8), Shape(8, 35, 55), Shape(16, 64, 64))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A random-weights gaze refiner exported as an engine, and 4 input shards of 12 samples."""
    root = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    export_module(
        build_network("simgan-refiner-small", channels=1),
        root / "engine",
        network="simgan-refiner-small",
        kwargs={"channels": 1},
        method="test",
        domain="gaze",
        pixels=GRAY,
        profile=PROFILE,
        source={"run": None, "checkpoint": None, "checkpoint_sha256": None, "recipe": {}},
    )
    samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 48, seed=5))
    urls = write_shards(samples, str(root / "in" / "gaze-%03d.tar"), shard_size=12)
    job.run(_config(root, "single"), urls)  # the reference: one process, no Ray
    return root, urls


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _config(root, out: str) -> RefineConfig:
    return RefineConfig(engine=str(root / "engine"), output=str(root / out), batch=8)


def _same_as_single_process(root, out: str, urls) -> None:
    names = [shard_name(u) for u in urls]
    single, other = root / "single", root / out
    assert sorted(p.name for p in other.iterdir()) == sorted(p.name for p in single.iterdir())
    for name in names:
        assert (other / name).read_bytes() == (single / name).read_bytes()
        stats = name + job.STATS_SUFFIX
        assert _stats(other / stats) == _stats(single / stats)


def _stats(path) -> dict:
    data = json.loads(path.read_text())
    data.pop("seconds")
    data.pop("output")  # the destination directory differs
    return data


def test_an_unreachable_cluster_is_named_without_ray_s_long_retries():
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1"):
        distributed.connect("127.0.0.1:1")
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.connect("no-port")
    assert not ray.is_initialized()


def test_inputs_sharing_a_name_and_missing_ray_are_refused(tmp_path, monkeypatch):
    config = RefineConfig(engine=str(tmp_path), output=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"a\.tar"):
        run_on_ray(config, [str(tmp_path / "x" / "a.tar"), str(tmp_path / "y" / "a.tar")])
    with pytest.raises(ValueError, match="GPU Ray gives it"):
        run_on_ray(RefineConfig(engine="e", output="o", device="cuda:1"), ["a.tar"])
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RuntimeError, match=r"refinery\[ray\]"):
        run_on_ray(config, [])


def test_a_ray_run_equals_a_single_process_run_and_a_rerun_skips_it(data, local_ray):
    root, urls = data
    seen = []
    backwards = urls[::-1]
    summary = run_on_ray(_config(root, "ray"), backwards, tasks=2, progress=seen.append)

    names = [shard_name(u) for u in urls]
    assert [s.shard for s in summary.shards] == names[::-1]  # input order, not finishing order
    assert sorted(s.shard for s in seen) == names
    assert summary.read == summary.written == 48
    _same_as_single_process(root, "ray", urls)

    before = {p.name: p.stat().st_mtime_ns for p in (root / "ray").iterdir()}
    again = []
    rerun = run_on_ray(_config(root, "ray"), urls, tasks=2, progress=again.append)
    assert again == [] and all(s.skipped for s in rerun.shards)
    assert [s.shard for s in rerun.shards] == names and rerun.read == 48
    assert {p.name: p.stat().st_mtime_ns for p in (root / "ray").iterdir()} == before


def test_a_failing_task_names_its_shards_and_a_rerun_redoes_only_the_rest(data, local_ray):
    root, urls = data
    # a shard the engine does not fit: job.run's preflight raises EngineMismatch in its task
    (bad,) = write_shards(
        [{"__key__": "k0", "json": b"{}"}], str(root / "bad-%03d.tar"), shard_size=1
    )
    with pytest.raises(ShardGroupFailed, match=r"bad-000\.tar failed: EngineMismatch") as failed:
        run_on_ray(_config(root, "failed"), [*urls, bad], tasks=len(urls) + 1)
    assert failed.value.shards == ["bad-000.tar"]
    # what finished before the failure stopped the job is complete and kept
    kept = {p.name for p in (root / "failed").glob("*.tar")}
    stats = (root / "failed").glob("*" + job.STATS_SUFFIX)
    assert {p.name.removesuffix(job.STATS_SUFFIX) for p in stats} == kept
    rerun = run_on_ray(_config(root, "failed"), urls, tasks=2)
    assert {s.shard for s in rerun.shards if s.skipped} == kept and rerun.written == 48


def test_a_failure_returns_only_once_the_cancelled_tasks_have_ended(tmp_path, local_ray):
    # ray.cancel only asks for the kill; a task still running after the driver reports can
    # finish a shard under a rerun that started at once (CI saw it: a shard appeared after
    # the failure). This task ticks into a file until it is killed.
    ticks = tmp_path / "ticks"

    def busy():
        with open(ticks, "a") as out:
            out.write(f"{os.getpid()}\n")
            out.flush()
            while True:
                out.write("t\n")
                out.flush()
                time.sleep(0.002)
        yield

    def fails():
        while not ticks.exists():
            time.sleep(0.01)
        time.sleep(0.5)
        raise ValueError("boom")
        yield

    running = {
        ray.remote(busy).options(num_cpus=1).remote(): ["/x/busy-000.tar"],
        ray.remote(fails).options(num_cpus=1).remote(): ["/x/fails-000.tar"],
    }
    with pytest.raises(ShardGroupFailed, match=r"fails-000\.tar failed: ValueError: boom"):
        distributed._collect(ray, None, running, None)
    size, pid = ticks.stat().st_size, int(ticks.read_text().split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    time.sleep(0.3)
    assert ticks.stat().st_size == size


def test_the_reject_rate_limit_stops_a_ray_run(data, local_ray):
    root, urls = data
    missing = str(root / "in" / "gaze-999.tar")  # unreadable: one reject, not an error
    config = RefineConfig(
        engine=str(root / "engine"), output=str(root / "limited"), batch=8, max_reject_rate=0.0
    )
    with pytest.raises(job.RejectRateExceeded, match="rejected"):
        run_on_ray(config, [*urls, missing], tasks=2)


@pytest.mark.slow
def test_a_driver_on_another_process_joins_the_cluster_at_its_address(data, local_ray):
    """``--address ADDR``: a second driver process sends tasks to this process's Ray instance."""
    root, urls = data
    driver = (
        "import sys\n"
        "from deploy.distributed import run_on_ray\n"
        "from deploy.job import RefineConfig\n"
        "engine, output, address, *urls = sys.argv[1:]\n"
        "config = RefineConfig(engine=engine, output=output, batch=8)\n"
        "print(run_on_ray(config, urls, address=address, tasks=2).written)\n"
    )
    address = ray.get_runtime_context().gcs_address
    args = [str(root / "engine"), str(root / "joined"), address, *urls]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # local instances use a token since Ray 2.59
    done = subprocess.run(
        [sys.executable, "-c", driver, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "48"
    _same_as_single_process(root, "joined", urls)
