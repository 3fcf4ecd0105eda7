"""Scale-out: placement from flags and launcher environments, shard partitions, job manifests."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.launch import WORLD_SIZE_ENV, Placement, groups, partition, placement

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"

LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
    "JOB_COMPLETION_INDEX",
    WORLD_SIZE_ENV,
)


def torchrun(rank: int, world: int, local_world: int | None = None) -> dict[str, str]:
    local_world = world if local_world is None else local_world
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank % local_world),
        "LOCAL_WORLD_SIZE": str(local_world),
    }


def slurm_array(task: int, low: int, high: int, step: int = 1) -> dict[str, str]:
    """What sbatch --array=low-high:step sets in each array task."""
    return {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(low),
        "SLURM_ARRAY_TASK_MAX": str(high),
        "SLURM_ARRAY_TASK_STEP": str(step),
        "SLURM_ARRAY_TASK_COUNT": str(len(range(low, high + 1, step))),
    }


def srun_task(procid: int, ntasks: int) -> dict[str, str]:
    return {
        "SLURM_PROCID": str(procid),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_STEP_NUM_TASKS": str(ntasks),
    }


def indexed_job(index: int, completions: int | None) -> dict[str, str]:
    env = {"JOB_COMPLETION_INDEX": str(index)}
    if completions is not None:
        env[WORLD_SIZE_ENV] = str(completions)
    return env


# -- placement: one launcher --------------------------------------------------------------


def test_no_launcher_is_a_single_worker():
    assert placement(environ={}) == Placement(0, 1, "single")


def test_reads_os_environ_by_default(monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert placement() == Placement(0, 1, "single")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert placement() == Placement(1, 2, "torchrun")


def test_torchrun():
    assert placement(environ=torchrun(3, 8)) == Placement(3, 8, "torchrun")


@pytest.mark.parametrize(("low", "high"), [(0, 7), (1, 8), (100, 107)])
def test_slurm_array_ranks_start_at_zero_whatever_the_first_index(low, high):
    placements = [placement(environ=slurm_array(t, low, high)) for t in range(low, high + 1)]
    assert [p.rank for p in placements] == list(range(8))
    assert {(p.world_size, p.source) for p in placements} == {(8, "slurm-array")}


def test_slurm_array_with_a_step():
    placements = [placement(environ=slurm_array(t, 1, 15, step=2)) for t in range(1, 16, 2)]
    assert [(p.rank, p.world_size) for p in placements] == [(r, 8) for r in range(8)]


def test_slurm_array_without_count_uses_min_max_step():
    env = slurm_array(5, 1, 8)
    del env["SLURM_ARRAY_TASK_COUNT"]
    assert placement(environ=env) == Placement(4, 8, "slurm-array")


def test_slurm_array_of_unknown_size_is_refused():
    with pytest.raises(ValueError, match=r"size is unknown \(SLURM_ARRAY_TASK_ID=3\)"):
        placement(environ={"SLURM_ARRAY_TASK_ID": "3"})


def test_slurm_array_index_list_that_is_not_a_range_is_refused():
    # sbatch --array=1,2,9: three tasks, MIN 1, MAX 9; task 9 has no derivable rank.
    env = slurm_array(9, 1, 9)
    env["SLURM_ARRAY_TASK_COUNT"] = "3"
    with pytest.raises(ValueError, match="not an evenly spaced range") as error:
        placement(environ=env)
    assert "SLURM_ARRAY_TASK_MAX=9" in str(error.value)
    assert "SLURM_ARRAY_TASK_COUNT=3" in str(error.value)


def test_srun_tasks():
    assert placement(environ=srun_task(2, 4)) == Placement(2, 4, "slurm-tasks")


def test_the_batch_script_of_several_tasks_is_not_a_task():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}  # sbatch --ntasks=4, no srun
    with pytest.raises(ValueError, match="SLURM_NTASKS=4 but SLURM_STEP_NUM_TASKS is not set"):
        placement(environ=env)
    assert placement(environ={"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == Placement(
        0, 1, "slurm-tasks"
    )


def test_kubernetes_indexed_job():
    assert placement(environ=indexed_job(3, 8)) == Placement(3, 8, "kubernetes-indexed-job")


def test_kubernetes_without_a_world_size_says_how_to_set_one():
    with pytest.raises(ValueError, match="world size is unknown") as error:
        placement(environ=indexed_job(3, None))
    message = str(error.value)
    assert "JOB_COMPLETION_INDEX=3" in message
    assert WORLD_SIZE_ENV in message and "--world-size" in message


def test_kubernetes_world_size_from_the_flag():
    found = placement(world_size=8, environ=indexed_job(3, None))
    assert found == Placement(3, 8, "kubernetes-indexed-job")


def test_world_size_variable_outside_an_indexed_job_is_refused():
    with pytest.raises(ValueError, match=f"{WORLD_SIZE_ENV}=8 is set but JOB_COMPLETION_INDEX"):
        placement(environ={WORLD_SIZE_ENV: "8", **torchrun(1, 2)})


# -- placement: precedence and nesting ----------------------------------------------------


def test_flags_win_over_every_environment():
    env = {**torchrun(3, 8), **slurm_array(2, 0, 7), **indexed_job(1, 4)}
    assert placement(rank=1, world_size=2, environ=env) == Placement(1, 2, "flags")


def test_torchrun_wins_over_a_slurm_step_it_spans():
    env = {**srun_task(1, 2), **torchrun(9, 16, local_world=8)}  # srun torchrun --nnodes 2
    assert placement(environ=env) == Placement(9, 16, "torchrun")


def test_slurm_array_wins_over_kubernetes():
    env = {**slurm_array(2, 0, 7), **indexed_job(1, 4)}
    assert placement(environ=env) == Placement(2, 8, "slurm-array")


def test_srun_tasks_inside_an_array_task_compose():
    ranks = {
        placement(environ={**slurm_array(task, 0, 3), **srun_task(proc, 2)}).rank
        for task in range(4)
        for proc in range(2)
    }
    assert ranks == set(range(8))
    found = placement(environ={**slurm_array(1, 0, 3), **srun_task(1, 2)})
    assert found == Placement(3, 8, "slurm-array+slurm-tasks")


def test_one_task_srun_inside_an_array_task_is_the_array_task():
    found = placement(environ={**slurm_array(4, 1, 8), **srun_task(0, 1)})
    assert found == Placement(3, 8, "slurm-array")


def test_batch_script_inside_an_array_task_is_the_array_task():
    env = {**slurm_array(2, 0, 7), "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}
    assert placement(environ=env) == Placement(2, 8, "slurm-array")


def test_one_node_torchrun_in_every_pod_composes_with_the_index():
    ranks = sorted(
        placement(environ={**indexed_job(pod, 4), **torchrun(local, 8)}).rank
        for pod in range(4)
        for local in range(8)
    )
    assert ranks == list(range(32))
    found = placement(environ={**indexed_job(1, 4), **torchrun(6, 8)})
    assert found == Placement(14, 32, "kubernetes-indexed-job+torchrun")


def test_one_node_torchrun_in_a_pod_without_world_size_takes_the_total_from_the_flag():
    found = placement(world_size=32, environ={**indexed_job(1, None), **torchrun(6, 8)})
    assert found == Placement(14, 32, "kubernetes-indexed-job+torchrun")


def test_multi_node_torchrun_across_pods_is_global():
    env = {**indexed_job(1, 2), **torchrun(11, 16, local_world=8)}
    assert placement(environ=env) == Placement(11, 16, "torchrun")


def test_torchrun_inside_an_array_task_composes_even_across_nodes():
    env = {**slurm_array(3, 0, 3), **torchrun(5, 16, local_world=8)}
    assert placement(environ=env) == Placement(53, 64, "slurm-array+torchrun")


def test_torchrun_from_a_batch_script_of_several_tasks():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", **torchrun(5, 8)}
    assert placement(environ=env) == Placement(5, 8, "torchrun")


# -- placement: one flag, conflicts, invalid values ---------------------------------------


@pytest.mark.parametrize("flags", [{"rank": 1}, {"world_size": 4}])
def test_one_flag_without_a_launcher_is_refused(flags):
    with pytest.raises(ValueError, match="given alone"):
        placement(environ={}, **flags)


def test_one_flag_that_agrees_with_the_environment():
    assert placement(rank=2, environ=slurm_array(2, 0, 7)) == Placement(2, 8, "slurm-array")
    assert placement(world_size=8, environ=torchrun(2, 8)) == Placement(2, 8, "torchrun")


def test_a_flag_that_disagrees_with_the_environment_is_refused():
    with pytest.raises(ValueError, match=r"--world-size 4 disagrees .* 8 .*WORLD_SIZE=8"):
        placement(world_size=4, environ=torchrun(2, 8))
    with pytest.raises(ValueError, match=r"--rank 1 disagrees .*SLURM_ARRAY_TASK_ID=2"):
        placement(rank=1, environ=slurm_array(2, 0, 7))


def test_a_world_size_flag_below_the_index_is_refused():
    with pytest.raises(ValueError, match=r"rank 5 is not below world size 4 \(--world-size 4"):
        placement(world_size=4, environ=indexed_job(5, None))


@pytest.mark.parametrize("text", ["abc", "-1", "1.5", "", "٣", "0x1"])
def test_a_variable_that_is_not_an_integer_is_named_with_its_value(text):
    with pytest.raises(ValueError, match=re.escape(f"RANK={text!r} is not a non-negative")):
        placement(environ={"RANK": text, "WORLD_SIZE": "4"})


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"RANK": "0", "WORLD_SIZE": "0"}, ["WORLD_SIZE='0' is not a positive integer"]),
        (torchrun(8, 8), ["RANK=8", "WORLD_SIZE=8"]),
        (indexed_job(8, 8), ["JOB_COMPLETION_INDEX=8", f"{WORLD_SIZE_ENV}=8"]),
        (srun_task(4, 4), ["SLURM_PROCID=4", "SLURM_STEP_NUM_TASKS=4"]),
        (slurm_array(8, 1, 7), ["SLURM_ARRAY_TASK_ID=8", "SLURM_ARRAY_TASK_MAX=7"]),
        ({"RANK": "0"}, ["RANK=0 is set but WORLD_SIZE is not"]),
        ({"WORLD_SIZE": "2"}, ["WORLD_SIZE=2 is set but RANK is not"]),
        ({"JOB_COMPLETION_INDEX": " 2", WORLD_SIZE_ENV: "two"}, [f"{WORLD_SIZE_ENV}='two'"]),
    ],
)
def test_invalid_environments_name_the_variables(env, names):
    with pytest.raises(ValueError) as error:
        placement(environ=env)
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"rank": -1, "world_size": 2}, "--rank -1 is not a non-negative integer"),
        ({"rank": 0, "world_size": 0}, "--world-size 0 is not a positive integer"),
        ({"rank": 2, "world_size": 2}, "--rank 2 is not below --world-size 2"),
        ({"rank": True, "world_size": 2}, "--rank True is not"),
        ({"rank": "1", "world_size": 2}, "--rank '1' is not"),
    ],
)
def test_invalid_flags(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        placement(environ={}, **flags)


def test_a_placement_checks_itself():
    with pytest.raises(ValueError, match="rank 4 is not below world_size 4"):
        Placement(4, 4, "flags")


# -- partition and groups -----------------------------------------------------------------


def shard_urls(n: int) -> list[str]:
    """Shards spread over places and schemes, listed out of name order."""
    places = ["/data/a", "s3://bucket/b", "file:///data/c"]
    order = list(range(n))
    random.Random(n).shuffle(order)
    return [f"{places[i % 3]}/syn-{j:06d}.tar" for i, j in enumerate(order)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 8, 13, 40])
def test_ranks_cover_every_shard_exactly_once(world_size):
    urls = shard_urls(37)
    shares = [partition(urls, rank, world_size) for rank in range(world_size)]
    taken = [url for share in shares for url in share]
    assert sorted(taken) == sorted(urls)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_two_ranks_split_by_file_name_round_robin():
    urls = ["s3://b/x/s-000002.tar", "/a/s-000000.tar", "/z/s-000001.tar", "/a/s-000003.tar"]
    assert partition(urls, 0, 2) == ["/a/s-000000.tar", "s3://b/x/s-000002.tar"]
    assert partition(urls, 1, 2) == ["/z/s-000001.tar", "/a/s-000003.tar"]


def test_partition_ignores_the_order_of_the_inputs():
    urls = shard_urls(25)
    expected = [partition(urls, rank, 4) for rank in range(4)]
    shuffler = random.Random(0)
    for _ in range(5):
        shuffled = urls[:]
        shuffler.shuffle(shuffled)
        assert [partition(shuffled, rank, 4) for rank in range(4)] == expected


def test_two_inputs_with_one_file_name_are_refused():
    urls = ["/data/a/syn-000001.tar", "/data/a/syn-000002.tar", "s3://bucket/syn-000001.tar"]
    with pytest.raises(ValueError, match=r"share the shard name 'syn-000001\.tar'") as error:
        partition(urls, 0, 2)
    assert "/data/a/syn-000001.tar" in str(error.value)
    assert "s3://bucket/syn-000001.tar" in str(error.value)
    with pytest.raises(ValueError, match="share the shard name"):
        groups(["/a/x.tar", "/a/x.tar"], 2)


def test_partition_refuses_a_bare_string_and_nameless_urls():
    with pytest.raises(TypeError, match="expand_urls"):
        partition("/data/syn-{000000..000009}.tar", 0, 1)
    with pytest.raises(ValueError, match="no shard file name"):
        partition(["s3://bucket/dir/"], 0, 1)


@pytest.mark.parametrize(("rank", "world_size"), [(2, 2), (-1, 2), (0, 0)])
def test_partition_checks_rank_and_world_size(rank, world_size):
    with pytest.raises(ValueError):
        partition(shard_urls(4), rank, world_size)


@pytest.mark.parametrize("n", [1, 3, 5, 9])
def test_groups_are_the_partitions_of_every_rank(n):
    urls = shard_urls(7)
    found = groups(urls, n)
    assert len(found) == n
    assert found == [partition(urls, rank, n) for rank in range(n)]
    assert sum(map(len, found)) == 7  # n = 9: two groups are empty


def test_groups_needs_a_positive_count():
    with pytest.raises(ValueError, match="n 0 is not a positive integer"):
        groups(shard_urls(3), 0)


# -- job manifests ------------------------------------------------------------------------


def test_kubernetes_manifest_is_an_indexed_job_whose_world_size_is_its_completions():
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "refine-job.yaml").read_text()) if d]
    (job,) = docs
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by backoffLimitPerIndex
    (container,) = pod["containers"]
    command = [*container.get("command", []), *container["args"]]
    assert command[:1] == ["refine"] or command[:2] == ["refinery", "refine"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env[WORLD_SIZE_ENV]) == spec["completions"]

    ranks = [
        placement(environ={"JOB_COMPLETION_INDEX": str(i), WORLD_SIZE_ENV: env[WORLD_SIZE_ENV]})
        for i in range(spec["completions"])
    ]
    assert [(p.rank, p.world_size) for p in ranks] == [
        (i, spec["completions"]) for i in range(spec["completions"])
    ]


def test_slurm_script_is_an_array_that_runs_refinery_refine():
    script = (DEPLOY / "slurm" / "refine.sbatch").read_text()
    directives = re.findall(r"^#SBATCH\s+(\S+)", script, flags=re.MULTILINE)
    array = next(d for d in directives if d.startswith("--array="))
    assert any(d.startswith(("--gpus-per-task=", "--gres=gpu")) for d in directives)
    assert re.search(r"^\s*refinery refine\b", script, flags=re.MULTILINE)  # not a comment

    low, high = map(int, re.fullmatch(r"--array=(\d+)-(\d+)", array).groups())
    ranks = [placement(environ=slurm_array(t, low, high)).rank for t in range(low, high + 1)]
    assert ranks == list(range(high - low + 1))


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_slurm_script_parses():
    subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "refine.sbatch")], check=True)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", "")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_installs_dali_and_the_project_and_runs_refinery():
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "ARG" and any(op == "FROM" for op, _ in instructions)
    args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
    assert args["DALI_PACKAGE"].startswith("nvidia-dali-cuda")
    assert args["BASE_IMAGE"].startswith("nvcr.io/nvidia/")
    runs = " ".join(a for op, a in instructions if op == "RUN")
    assert '"${DALI_PACKAGE}"' in runs and "pip install --no-deps ." in runs
    assert json.loads(dict(instructions)["ENTRYPOINT"]) == ["refinery"]
    users = [a for op, a in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_dockerfile_requirements_are_the_projects_less_its_dali_pin_and_tensorrt():
    """The base image ships TensorRT; the image's DALI is the one pyproject names by default."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as in the image
    runs = " ".join(a for op, a in dockerfile_instructions() if op == "RUN")
    code = re.search(r'python -c "(import tomllib.*?)" > /tmp/requirements.txt', runs).group(1)
    listed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["gpu"]
    assert listed == [r for r in wanted if not r.startswith(("nvidia-dali", "tensorrt"))]
    [dali] = [r for r in project["dependencies"] if r.startswith("nvidia-dali")]
    args = dict(a.split("=", 1) for op, a in dockerfile_instructions() if op == "ARG" and "=" in a)
    assert dali.startswith(args["DALI_PACKAGE"] + ">=")
