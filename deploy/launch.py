"""Where a refine worker stands in a scaled-out job, and which shards it takes.

A shard is the unit of work, retry and distribution (contract 3 in ARCHITECTURE.md), so
scaling out needs two things only: each worker learns its ``(rank, world_size)``, and takes a
deterministic, disjoint share of the shard list (``partition``) such that the shares of ranks
``0..world_size-1`` cover every shard. Nothing else travels between workers.

``placement()`` reads the rank and world size from the flags or from the launcher's
environment:

=========================  ==================================================================
source                     variables read
=========================  ==================================================================
``flags``                  ``--rank`` and ``--world-size`` (both given: the environment is
                           not read at all)
``torchrun``               ``RANK``, ``WORLD_SIZE`` (and ``LOCAL_WORLD_SIZE``, to tell a
                           one-node torchrun from one that spans nodes)
``slurm-array``            ``SLURM_ARRAY_TASK_ID`` with ``SLURM_ARRAY_TASK_COUNT``,
                           ``_MIN``, ``_MAX``, ``_STEP``: rank = (ID - MIN) / STEP, so
                           ``--array=1-8``, ``0-7`` and ``0-14:2`` all give ranks 0..7 of 8
``slurm-tasks``            ``SLURM_PROCID`` with ``SLURM_STEP_NUM_TASKS`` (the tasks of one
                           ``srun`` step)
``kubernetes-indexed-job`` ``JOB_COMPLETION_INDEX`` with ``REFINERY_WORLD_SIZE``
``single``                 none of the above: rank 0 of 1
=========================  ==================================================================

Decisions (and the documentation they rest on):

- One flag without the other is completed from the environment: ``--world-size 8`` in a
  Kubernetes pod takes the rank from ``JOB_COMPLETION_INDEX``. Where the environment also
  supplies the flagged value and disagrees, that is an error, never a silent override: two
  workers that disagree on the world size skip or repeat shards. One flag with no launcher
  environment at all is an error too.
- Kubernetes sets ``JOB_COMPLETION_INDEX`` in every pod of an Indexed Job but puts
  ``spec.completions`` nowhere in the pod (kubernetes.io, "Indexed Job for Parallel Processing
  with Static Work Assignment"), so the manifest must set ``REFINERY_WORLD_SIZE`` to
  ``spec.completions`` (``deploy/k8s/refine-job.yaml`` does), or the command passes
  ``--world-size``. ``REFINERY_WORLD_SIZE`` is read only next to ``JOB_COMPLETION_INDEX``;
  set anywhere else, it is refused rather than ignored.
- Slurm arrays (sbatch(1), OUTPUT ENVIRONMENT VARIABLES; slurm.schedmd.com/job_array.html):
  ``SLURM_ARRAY_TASK_ID`` is the task's index, ``_COUNT`` the number of tasks, ``_MIN``/``_MAX``
  the lowest/highest index and ``_STEP`` the index step. An index list that is not an evenly
  spaced range (``--array=1,2,9``) has no rank derivable from the index alone and is refused;
  a ``%`` throttle (``--array=0-7%2``) changes nothing.
- The Slurm batch script itself has ``SLURM_PROCID=0`` and ``SLURM_NTASKS`` = ``--ntasks``
  but is one process; only ``srun`` starts the tasks, and only ``srun`` sets
  ``SLURM_STEP_NUM_TASKS``. So without ``SLURM_STEP_NUM_TASKS`` the Slurm task variables are
  not a placement: rank 0 of ``SLURM_NTASKS`` would silently refine 1/N of the shards. A
  batch script with ``SLURM_NTASKS`` above 1 and no other launcher is refused (did you mean
  ``srun refinery refine``?); with ``--ntasks=1`` it is ``slurm-tasks`` rank 0 of 1.
- Launchers nest, and then their ranks compose (outer rank × inner size + inner rank):
  ``srun`` tasks inside a Slurm array task, or a one-node torchrun (``LOCAL_WORLD_SIZE ==
  WORLD_SIZE``, e.g. ``torchrun --standalone --nproc-per-node 8``) inside an array task, an
  ``srun`` step or an indexed-job pod. Reading only the innermost launcher would give every
  array task or pod the same shards. A torchrun that spans nodes already numbers its workers
  across them (across the step's nodes under ``srun``, across the pods in Kubernetes), so
  its ranks replace those of the step or the indexed job; a Slurm array task is a separate
  allocation that no torchrun spans, so the array still composes with it. The world size of
  a nested placement, and ``--world-size``, always count workers (processes);
  ``REFINERY_WORLD_SIZE`` counts pods (``spec.completions``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from refinery.shards import shard_name

WORLD_SIZE_ENV = "REFINERY_WORLD_SIZE"

FLAGS = "flags"
TORCHRUN = "torchrun"
SLURM_ARRAY = "slurm-array"
SLURM_TASKS = "slurm-tasks"
KUBERNETES = "kubernetes-indexed-job"
SINGLE = "single"


@dataclass(frozen=True)
class Placement:
    """This worker's rank among ``world_size`` workers, and where that was read (``source``)."""

    rank: int
    world_size: int
    source: str

    def __post_init__(self) -> None:
        _check_rank_world(self.rank, self.world_size, "rank", "world_size")


@dataclass(frozen=True)
class _Found:
    """One launcher's view of this process: rank, size (None: not known) and what was read."""

    rank: int
    size: int | None
    source: str
    evidence: str  # "SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_TASK_COUNT=8", for messages


def placement(
    *,
    rank: int | None = None,
    world_size: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Placement:
    """This worker's placement: from ``--rank``/``--world-size``, else the launcher's environment.

    See the module docstring for the variables read, how nested launchers compose and which
    combinations are refused. Every refusal is a ``ValueError`` naming the flags or variables
    and their values.
    """
    env = os.environ if environ is None else environ
    if rank is not None:
        _check_int("--rank", rank, minimum=0)
    if world_size is not None:
        _check_int("--world-size", world_size, minimum=1)
    if rank is not None and world_size is not None:
        _check_rank_world(rank, world_size, "--rank", "--world-size")
        return Placement(rank, world_size, FLAGS)

    if WORLD_SIZE_ENV in env and "JOB_COMPLETION_INDEX" not in env:
        raise ValueError(
            f"{WORLD_SIZE_ENV}={env[WORLD_SIZE_ENV]} is set but JOB_COMPLETION_INDEX is not: "
            f"{WORLD_SIZE_ENV} is read only in a Kubernetes indexed job; elsewhere pass "
            "--rank and --world-size"
        )
    found = _from_environment(env)
    if found is None:
        if rank is not None or world_size is not None:
            given = f"--rank {rank}" if rank is not None else f"--world-size {world_size}"
            raise ValueError(
                f"{given} was given alone and no launcher environment (torchrun, Slurm, a "
                "Kubernetes indexed job) supplies the other value: pass both --rank and "
                "--world-size"
            )
        return Placement(0, 1, SINGLE)

    if rank is not None and rank != found.rank:
        raise ValueError(
            f"--rank {rank} disagrees with the rank {found.rank} of this {found.source} "
            f"worker ({found.evidence})"
        )
    if world_size is not None and found.size is not None and world_size != found.size:
        raise ValueError(
            f"--world-size {world_size} disagrees with the world size {found.size} of this "
            f"{found.source} job ({found.evidence})"
        )
    size = world_size if world_size is not None else found.size
    if size is None:
        raise ValueError(
            f"the world size is unknown ({found.evidence}): Kubernetes gives each pod of an "
            "indexed job its JOB_COMPLETION_INDEX but not spec.completions; set "
            f"{WORLD_SIZE_ENV} to spec.completions in the manifest, or pass --world-size"
        )
    if found.rank >= size:
        where = f"--world-size {world_size}; " if world_size is not None else ""
        raise ValueError(
            f"rank {found.rank} is not below world size {size} ({where}{found.evidence})"
        )
    return Placement(found.rank, size, found.source)


def partition(urls: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The shards of worker ``rank`` out of ``world_size``: a deterministic, disjoint share.

    Shards are ordered by file name (not by the order or the directories they were listed
    in), and worker r takes every ``world_size``-th one starting at r, so neighbouring shards,
    which tend to be of similar size, go to different workers. Two inputs with the same file
    name are refused: their outputs would collide in the destination.
    """
    _check_rank_world(rank, world_size, "rank", "world_size")
    return _by_name(urls)[rank::world_size]


def groups(urls: Sequence[str], n: int) -> list[list[str]]:
    """``partition`` for every rank at once: ``groups(urls, n)[r] == partition(urls, r, n)``.

    Exactly ``n`` groups, some of them empty when there are fewer than ``n`` shards.
    """
    _check_int("n", n, minimum=1)
    ordered = _by_name(urls)
    return [ordered[r::n] for r in range(n)]


# -- the environment ----------------------------------------------------------------------


def _from_environment(env: Mapping[str, str]) -> _Found | None:
    torch = _torchrun(env)
    torch_spans_nodes = torch is not None and _spans_nodes(env, torch)
    # A multi-node torchrun numbers its workers across the srun step's nodes, or across the
    # pods of an indexed job: its ranks are global there. A one-node torchrun is one level.
    within = torch if torch_spans_nodes else _nest(_slurm_step(env), torch)
    outer = _slurm_array(env)
    if outer is None and not torch_spans_nodes:
        outer = _kubernetes(env)
    found = _nest(outer, within)
    if found is None and "SLURM_PROCID" in env:
        return _slurm_batch_script(env)
    return found


def _nest(outer: _Found | None, inner: _Found | None) -> _Found | None:
    if outer is None or (inner is not None and outer.size == 1):
        return inner
    if inner is None or inner.size == 1:
        return outer
    assert inner.size is not None  # only an indexed job's size can be unknown, and it is outer
    return _Found(
        rank=outer.rank * inner.size + inner.rank,
        size=None if outer.size is None else outer.size * inner.size,
        source=f"{outer.source}+{inner.source}",
        evidence=f"{outer.evidence}; {inner.evidence}",
    )


def _torchrun(env: Mapping[str, str]) -> _Found | None:
    names = ("RANK", "WORLD_SIZE")
    if not any(n in env for n in names):
        return None
    missing = [n for n in names if n not in env]
    if missing:
        present = next(n for n in names if n in env)
        raise ValueError(
            f"{present}={env[present]} is set but {missing[0]} is not (torchrun sets both): "
            "unset it or pass --rank and --world-size"
        )
    return _found(env, TORCHRUN, _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE", 1), names)


def _spans_nodes(env: Mapping[str, str], torch: _Found) -> bool:
    if "LOCAL_WORLD_SIZE" not in env:
        return True  # not torchrun's full set: take RANK/WORLD_SIZE as global
    return _env_int(env, "LOCAL_WORLD_SIZE", 1) < (torch.size or 0)


def _slurm_step(env: Mapping[str, str]) -> _Found | None:
    if "SLURM_PROCID" not in env or "SLURM_STEP_NUM_TASKS" not in env:
        return None  # no srun step; the batch script is one process, whatever --ntasks says
    names = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS")
    procid = _env_int(env, "SLURM_PROCID")
    return _found(env, SLURM_TASKS, procid, _env_int(env, "SLURM_STEP_NUM_TASKS", 1), names)


def _slurm_batch_script(env: Mapping[str, str]) -> _Found:
    ntasks = _env_int(env, "SLURM_NTASKS", 1) if "SLURM_NTASKS" in env else 1
    if ntasks > 1:
        raise ValueError(
            f"SLURM_NTASKS={env['SLURM_NTASKS']} but SLURM_STEP_NUM_TASKS is not set: this is "
            "the batch script itself, one process, not one of the tasks that srun starts; run "
            "`srun refinery refine ...`, or use a job array, or pass --rank and --world-size"
        )
    return _found(env, SLURM_TASKS, _env_int(env, "SLURM_PROCID"), 1, ("SLURM_PROCID",))


def _slurm_array(env: Mapping[str, str]) -> _Found | None:
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    names = (
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_MAX",
        "SLURM_ARRAY_TASK_STEP",
        "SLURM_ARRAY_TASK_COUNT",
    )
    evidence = _evidence(env, names)
    task = _env_int(env, "SLURM_ARRAY_TASK_ID")
    low = _env_int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP", 1) if "SLURM_ARRAY_TASK_STEP" in env else 1
    high = _env_int(env, "SLURM_ARRAY_TASK_MAX") if "SLURM_ARRAY_TASK_MAX" in env else None
    if "SLURM_ARRAY_TASK_COUNT" in env:
        count = _env_int(env, "SLURM_ARRAY_TASK_COUNT", 1)
    elif high is not None and high >= low:
        count = (high - low) // step + 1
    else:
        raise ValueError(
            f"the Slurm array's size is unknown ({evidence}): SLURM_ARRAY_TASK_COUNT is not "
            "set; pass --world-size"
        )
    offset = task - low
    if (high is not None and high != low + step * (count - 1)) or offset < 0 or offset % step:
        raise ValueError(
            f"the Slurm array's indices are not an evenly spaced range ({evidence}), so this "
            "task's rank cannot be derived from SLURM_ARRAY_TASK_ID: submit --array=A-B or "
            "--array=A-B:S, or pass --rank and --world-size"
        )
    return _found(env, SLURM_ARRAY, offset // step, count, names)


def _kubernetes(env: Mapping[str, str]) -> _Found | None:
    if "JOB_COMPLETION_INDEX" not in env:
        return None
    index = _env_int(env, "JOB_COMPLETION_INDEX")
    size = _env_int(env, WORLD_SIZE_ENV, 1) if WORLD_SIZE_ENV in env else None
    return _found(env, KUBERNETES, index, size, ("JOB_COMPLETION_INDEX", WORLD_SIZE_ENV))


def _found(
    env: Mapping[str, str], source: str, rank: int, size: int | None, names: Sequence[str]
) -> _Found:
    evidence = _evidence(env, names)
    if size is not None and rank >= size:
        raise ValueError(f"{source}: rank {rank} is not below world size {size} ({evidence})")
    return _Found(rank, size, source, evidence)


def _evidence(env: Mapping[str, str], names: Sequence[str]) -> str:
    return ", ".join(f"{n}={env[n]}" for n in names if n in env)


_DIGITS = re.compile(r"[0-9]+")


def ranks_on_this_node(env: Mapping[str, str] | None = None) -> int:
    """How many ranks a launcher put on this machine: torchrun's ``LOCAL_WORLD_SIZE``, Slurm's
    ``SLURM_NTASKS_PER_NODE``; 1 where neither says (one rank per pod, machine or array task).
    The refine job shares the machine's cores among them (``deploy.job.job_workers``)."""
    env = os.environ if env is None else env
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        if name in env and _DIGITS.fullmatch(env[name].strip()):
            return max(1, int(env[name]))
    return 1


def _env_int(env: Mapping[str, str], name: str, minimum: int = 0) -> int:
    text = env[name]
    if not _DIGITS.fullmatch(text.strip()) or int(text) < minimum:
        want = "a positive integer" if minimum >= 1 else "a non-negative integer"
        raise ValueError(f"{name}={text!r} is not {want}")
    return int(text)


# -- checks and ordering ------------------------------------------------------------------


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        want = "a positive integer" if minimum >= 1 else "a non-negative integer"
        raise ValueError(f"{name} {value!r} is not {want}")


def _check_rank_world(rank: object, world_size: object, rank_name: str, world_name: str) -> None:
    _check_int(rank_name, rank, minimum=0)
    _check_int(world_name, world_size, minimum=1)
    if rank >= world_size:  # type: ignore[operator]
        raise ValueError(f"{rank_name} {rank} is not below {world_name} {world_size}")


def _by_name(urls: Sequence[str]) -> list[str]:
    """The URLs sorted by shard file name; two URLs with one name are refused."""
    if isinstance(urls, str):
        raise TypeError(
            "expected a list of shard URLs, not one string (expand a spec first with "
            "refinery.shards.expand_urls)"
        )
    by_name: dict[str, str] = {}
    for url in urls:
        name = shard_name(url)
        if not name:
            raise ValueError(f"input {url!r} has no shard file name")
        if name in by_name:
            raise ValueError(
                f"inputs {by_name[name]!r} and {url!r} share the shard name {name!r}: their "
                "outputs would collide in the destination"
            )
        by_name[name] = url
    return [by_name[name] for name in sorted(by_name)]
