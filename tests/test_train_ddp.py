"""One driver, data parallel for every method: ``torchrun --nproc_per_node 2 -m refinery train
simgan|sggan|spigan`` on CPU with gloo. N iterations straight equal N/2 + resume + N/2 (each
rank resumes its own buffers, streams and RNG), a stop requested on one rank is agreed by all,
and a checkpoint resumes only with the world size that wrote it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from refinery import sim
from refinery.samples import encode_sample
from refinery.shards import write_shards
from train import simgan
from train.loop import RunDir

pytestmark = pytest.mark.slow

# per method: tiny overrides, adversarial steps straight, steps of the first half
METHODS = {
    "simgan": (
        dict(batch_size=4, pretrain_refiner_steps=2, pretrain_discriminator_steps=2,
             buffer_size=16, shuffle_buffer=8, checkpoint_every=3, log_every=1, sample_every=100),
        4, 1,  # 2 + 2 + 4 iterations; the first half stops in the adversarial phase (buffer full)
    ),
    "sggan": (
        dict(batch_size=2, pool_size=3, shuffle_buffer=4, checkpoint_every=3, log_every=1,
             sample_every=100),
        4, 2,
    ),
    "spigan": (
        dict(batch_size=2, crop=[32, 32], shuffle_buffer=4, checkpoint_every=3, log_every=1,
             sample_every=100),
        4, 2,
    ),
}  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two shards per pool, so each of two ranks reads one of its own."""
    root = tmp_path_factory.mktemp("ddp")
    for variant, seed in (("synthetic", 41), ("real", 42)):
        eyes = sim.generate("gaze", variant, 32, seed=seed)
        write_shards((encode_sample(s, "gaze") for s in eyes),
                     str(root / f"gaze-{variant}-%03d.tar"), shard_size=16)  # fmt: skip
        frames = sim.generate("scene", variant, 8, seed=seed, height=64, width=128)
        write_shards((encode_sample(s, "scene") for s in frames),
                     str(root / f"scene-{variant}-%03d.tar"), shard_size=4)  # fmt: skip
    return root


def _pools(data: Path, method: str) -> list[str]:
    domain = "gaze" if method == "simgan" else "scene"
    return [
        *("--synthetic", str(data / f"{domain}-synthetic-{{000..001}}.tar")),
        *("--real", str(data / f"{domain}-real-{{000..001}}.tar")),
    ]


def _torchrun(
    data: Path,
    method: str,
    out: Path,
    steps: int,
    *extra: str,
    pools: list[str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    overrides, _, _ = METHODS[method]
    config = out.parent / f"{method}.yaml"
    config.write_text(yaml.safe_dump(overrides))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "refinery", "train", method, "--preset", "small", "--config", str(config),
        *(pools or _pools(data, method)), "--out", str(out), "--steps", str(steps),
        "--device", "cpu", *extra,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {
        f"{p.stem}.{k}": v
        for p in sorted(checkpoint.glob("*.safetensors"))
        if not p.stem.startswith("state")
        for k, v in load_file(str(p)).items()
    }


@pytest.mark.parametrize("method", list(METHODS))
def test_two_ranks_straight_equal_half_resume_half(method, data, tmp_path):
    _, steps, half = METHODS[method]
    _torchrun(data, method, tmp_path / "straight", steps)
    _torchrun(data, method, tmp_path / "split", half)
    first = RunDir(tmp_path / "split").latest()
    # every rank wrote its own state: rank 1 resumes rank 1's buffers, streams and RNG
    ranks = {
        json.loads((first / n).read_text())["rank"] for n in ("state.json", "state.rank1.json")
    }
    assert ranks == {0, 1}
    _torchrun(data, method, tmp_path / "split", steps, "--resume")
    a = _weights(RunDir(tmp_path / "straight").latest())
    b = _weights(RunDir(tmp_path / "split").latest())
    assert RunDir(tmp_path / "split").latest().name == RunDir(tmp_path / "straight").latest().name
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_checkpoint_resumes_only_with_the_world_size_that_wrote_it(data, tmp_path):
    _, _, half = METHODS["simgan"]
    _torchrun(data, "simgan", tmp_path / "run", half)
    overrides, _, _ = METHODS["simgan"]
    config = simgan.load_config(preset="small", steps=4, **overrides)
    synthetic, real = _pools(data, "simgan")[1], _pools(data, "simgan")[3]
    with pytest.raises(ValueError, match="written by 2 process"):
        simgan.train(config, synthetic=synthetic, real=real, out=tmp_path / "run", resume=True)


WORKER = textwrap.dedent(
    """
    import os, signal, sys, json
    from train import simgan
    overrides, synthetic, real, out = json.loads(sys.argv[1])
    config = simgan.load_config(preset="small", steps=6, **overrides)
    rank = int(os.environ["RANK"])

    def progress(done, values):
        if rank == 1 and done == 5:  # one rank only, as when a node's scheduler signals
            os.kill(os.getpid(), signal.SIGTERM)

    latest = simgan.train(config, synthetic=synthetic, real=real, out=out, progress=progress)
    print(json.dumps({"rank": rank, "latest": latest.name}))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stop_on_one_rank_is_agreed_by_all(data, tmp_path):
    """SIGTERM reaches rank 1 alone at iteration 5: both ranks checkpoint iteration 5 and return
    (neither waits forever in the other's next all-reduce), and --resume finishes the run."""
    overrides, _, _ = METHODS["simgan"]
    pools = _pools(data, "simgan")
    args = json.dumps([overrides, pools[1], pools[3], str(tmp_path / "run")])
    group = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, args],
            env={**ENV, **group, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["latest"] for r in results] == ["iter-00000005", "iter-00000005"]
    assert RunDir(tmp_path / "run").latest().name == "iter-00000005"


def test_two_ranks_on_one_shard_read_disjoint_samples_and_resume_exactly(data, tmp_path):
    """Fewer shards than ranks (issue 52): each rank reads every other sample of the one shard,
    and N iterations straight still equal N/2 + resume + N/2."""
    _, steps, half = METHODS["simgan"]
    one = ["--synthetic", str(data / "gaze-synthetic-000.tar"),
           "--real", str(data / "gaze-real-000.tar")]  # fmt: skip
    straight = _torchrun(data, "simgan", tmp_path / "straight", steps, pools=one)
    assert straight.stdout.splitlines()[0] == "train simgan: world size 2"
    _torchrun(data, "simgan", tmp_path / "split", half, pools=one)
    _torchrun(data, "simgan", tmp_path / "split", steps, "--resume", pools=one)
    a = _weights(RunDir(tmp_path / "straight").latest())
    b = _weights(RunDir(tmp_path / "split").latest())
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_set_that_cannot_be_split_stops_every_rank_with_one_line(data, tmp_path):
    lone = tmp_path / "lone-000.tar"
    write_shards((encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 1, seed=1)),
                 str(tmp_path / "lone-%03d.tar"), shard_size=1)  # fmt: skip
    pools = ["--synthetic", str(lone), "--real", str(data / "gaze-real-000.tar")]
    done = _torchrun(data, "simgan", tmp_path / "run", 2, pools=pools, check=False)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "refinery train: error:" in line]
    assert len(errors) == 2 and len(set(errors)) == 1, done.stderr[-3000:]
    assert "cannot be split among 2 ranks" in errors[0]
    # no rank's traceback (torchrun's own report of the failed children follows the errors)
    assert "broadcast" not in done.stderr and "train/loop.py" not in done.stderr
