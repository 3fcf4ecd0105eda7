"""The refine job on a Ray cluster: one task per shard group, each running the whole chain.

What runs where::

    driver (the process calling run_on_ray, e.g. ``refinery refine --distributor ray``)
        connect to the cluster, split the shard URLs into groups, submit one task per group,
        collect per-shard stats as they arrive, check the reject rate over the whole job,
        rebuild a JobSummary in input order
    task (a Ray worker holding ``gpus_per_task`` GPUs and ``cpus_per_task`` CPUs)
        deploy.job.run(config, group): load the engine from ``config.engine``, then
        read -> decode -> engine -> encode -> write every shard of the group, exactly as a
        single-process job does, and stream back each shard's stats as it finishes

Only the frozen ``RefineConfig`` and shard URLs go to a task, and only ``ShardStats`` (as plain
dicts) come back: shard bytes never pass through the driver or Ray's object store. Each task
reads its inputs and writes its outputs where they live (a shared filesystem or an object
store every node can reach), so the driver's network link and memory are not the bottleneck
and a shard stays the unit of work and of retry (contract 3). Because a task runs
``deploy.job.run`` unchanged, the output shards are byte-identical to a single-process run's.

Failures. A task that raises stops the job: the other tasks are cancelled, the driver waits
until they have ended (so nothing writes after it reports), and the error names the group's
unfinished shards. Finished shards keep their outputs and stats files, so a rerun
redoes only the rest. A task whose worker or node dies is retried by Ray; the retry skips the
shards the first attempt finished.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from typing import Any

from deploy import job, launch
from deploy.job import JobSummary, RefineConfig, RejectRateExceeded, ShardStats
from refinery.shards import expand_urls, shard_name

_LOCAL = (None, "local")


class ShardGroupFailed(RuntimeError):
    """A Ray task failed; ``shards`` are the group's shards it had not finished."""

    def __init__(self, message: str, *, shards: list[str]):
        super().__init__(message)
        self.shards = shards


def run_on_ray(
    config: RefineConfig,
    urls: str | Sequence[str],
    *,
    address: str | None = None,
    tasks: int | None = None,
    gpus_per_task: float | None = None,
    cpus_per_task: float = 1,
    progress: Callable[[ShardStats], None] | None = None,
) -> JobSummary:
    """Refine ``urls`` with one Ray task per shard group; the result equals ``job.run``'s.

    ``address``: ``None`` joins ``RAY_ADDRESS`` or a cluster ``ray start`` runs on this
    machine, else starts a local instance; ``"local"`` always starts a local instance;
    ``"auto"`` joins a running cluster or fails; ``"HOST:PORT"`` (the head's GCS port, 6379 by
    default) or ``"ray://HOST:10001"`` (Ray Client) joins that cluster. If Ray is already initialised in this process it is used as it is and
    ``address`` is ignored; a Ray instance this call started is shut down when it returns.

    ``tasks``: how many shard groups (default: as many as the cluster runs at once, i.e. its
    GPUs / ``gpus_per_task``, or its CPUs / ``cpus_per_task`` without GPUs; never more than
    the shards). ``gpus_per_task``: default 1 on a cluster with GPUs, else 0; with a GPU the
    config's ``device`` ``"cuda"`` is the GPU Ray gives the task.

    Local paths are made absolute here; every node must see them at the same place (a
    shared filesystem), or use object-store URLs. The project must be importable on every
    node (the same installation or container image).
    """
    ray = _import_ray()
    urls = [_absolute(u) for u in expand_urls(urls)]
    launch.partition(urls, 0, 1)  # refuses two inputs with one name before connecting
    config = _absolute_paths(config)
    if config.device not in (None, "cpu", "cuda", "cuda:0"):
        raise ValueError(
            f"device {config.device!r}: on Ray each task uses the GPU Ray gives it; pass 'cuda'"
        )
    if tasks is not None and tasks < 1:
        raise ValueError(f"tasks must be >= 1, got {tasks}")

    started = connect(address)
    try:
        start = time.perf_counter()
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        if gpus_per_task is None:
            gpus_per_task = 1.0 if gpus else 0.0
        _check_resources(config, gpus, cpus, gpus_per_task, cpus_per_task)
        if tasks is None:
            slots = gpus / gpus_per_task if gpus_per_task else cpus / max(cpus_per_task, 1e-9)
            tasks = max(int(slots), 1)
        shard_groups = [g for g in launch.groups(urls, min(tasks, len(urls))) if g]

        remote = ray.remote(_refine_group).options(
            num_gpus=gpus_per_task, num_cpus=cpus_per_task, name="refinery-refine"
        )
        running = {remote.remote(config, group): group for group in shard_groups}
        collected = _collect(ray, config, running, progress)
        order = {shard_name(u): i for i, u in enumerate(urls)}
        shards = sorted(collected.values(), key=lambda s: order[s.shard])
        summary = JobSummary(shards, time.perf_counter() - start)
        job.check_reject_rate(config, summary)  # over the whole job, not one task's group
        return summary
    finally:
        if started:
            ray.shutdown()


def connect(address: str | None = None) -> bool:
    """Initialise Ray for a job unless it already is; True when this call did it.

    A ``HOST:PORT`` or ``ray://HOST:PORT`` address is probed first, so an unreachable cluster
    is reported in seconds instead of after Ray's own minutes of retrying.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address not in (*_LOCAL, "auto"):
        _probe(address)
    try:
        if address in _LOCAL:
            ray.init(address=address, include_dashboard=False)
        else:
            ray.init(address=address)
    except Exception as exc:
        where = "a local Ray instance" if address in _LOCAL else f"the Ray cluster at {address!r}"
        raise ConnectionError(f"cannot connect to {where}: {exc}") from exc
    return True


# -- the task (runs on a Ray worker) ----------------------------------------------------------


def _refine_group(config: RefineConfig, urls: list[str]) -> Iterator[dict[str, Any]]:
    """Run ``deploy.job.run`` on one group and yield each shard's stats in group order.

    Group order (not finishing order) makes the output deterministic, which Ray needs to
    replay a generator task whose worker died: the n-th value of a retry is the same shard's
    stats (then skipped, because the first attempt finished it), so none is lost or doubled.
    """
    names = [shard_name(u) for u in urls]
    earlier = {n for n in names if job.finished(config, n)}  # what job.run will skip
    reported: queue.Queue[ShardStats | None] = queue.Queue()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            # the verdict on rejects is the driver's, over every group's shards
            job.run(replace(config, max_reject_rate=None), urls, progress=reported.put)
        except BaseException as exc:
            failure.append(exc)
        finally:
            reported.put(None)

    # job.run calls progress from its writer thread, so it runs beside this generator
    worker = threading.Thread(target=work, name="refine-group", daemon=True)
    worker.start()
    fresh: dict[str, ShardStats] = {}
    for name in names:
        if name in earlier:
            yield asdict(job.read_stats(config, name))
            continue
        while name not in fresh:
            stats = reported.get()
            if stats is None:
                worker.join()
                if failure:
                    raise failure[0]
                raise RuntimeError(f"the job ended without finishing {name}")
            fresh[stats.shard] = stats
        yield asdict(fresh.pop(name))
    worker.join()
    if failure:
        raise failure[0]


# -- the driver --------------------------------------------------------------------------------


def _collect(
    ray,
    config: RefineConfig,
    running: dict[Any, list[str]],
    progress: Callable[[ShardStats], None] | None,
) -> dict[str, ShardStats]:
    """Stats of every shard as the tasks stream them back; stops all tasks at a failure."""
    collected: dict[str, ShardStats] = {}
    pending = list(running)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for task in ready:
                try:
                    ref = next(task)
                except StopIteration:
                    continue  # the group is done
                try:
                    stats = ShardStats(**ray.get(ref))
                except Exception as exc:
                    raise _failure(exc, running[task], collected) from exc
                collected[stats.shard] = stats
                pending.append(task)
                if not stats.skipped and progress is not None:
                    progress(stats)
    except BaseException:
        for task in pending:
            ray.cancel(task, force=True)  # a killed task leaves finished shards or none
        _wait_ended(ray, pending)
        raise
    return collected


def _wait_ended(ray, tasks: list[Any]) -> None:
    """Block until each cancelled task has ended.

    ``ray.cancel`` only asks for the kill: until it lands, a task goes on refining and can
    finish a shard after the driver has reported the failure, racing a rerun that starts at
    once. A cancelled task's stream ends in an error once its worker is gone (or normally, if
    it finished first); shards it finished in the meantime are complete and a rerun skips them.
    """
    for task in tasks:
        try:
            for ref in task:
                ray.get(ref)
        except Exception:  # TaskCancelledError, WorkerCrashedError: the worker is gone
            continue


def _failure(exc: Exception, group: list[str], collected: dict[str, ShardStats]) -> Exception:
    cause = getattr(exc, "cause", None) or exc
    left = [shard_name(u) for u in group if shard_name(u) not in collected]
    message = (
        f"the Ray task refining {', '.join(left)} failed: {type(cause).__name__}: {cause} "
        "(finished shards are kept; a rerun redoes the rest)"
    )
    if isinstance(cause, RejectRateExceeded):
        return RejectRateExceeded(message)
    return ShardGroupFailed(message, shards=left)


def _check_resources(
    config: RefineConfig, gpus: float, cpus: float, gpus_per_task: float, cpus_per_task: float
) -> None:
    if gpus_per_task > gpus:
        raise ValueError(
            f"each task asks for {gpus_per_task:g} GPUs but the cluster has {gpus:g}; "
            "tasks would wait forever (gpus_per_task=0 runs on CPUs)"
        )
    if cpus_per_task > cpus:
        raise ValueError(f"each task asks for {cpus_per_task:g} CPUs; the cluster has {cpus:g}")
    if (config.device or "").startswith("cuda") and not gpus_per_task:
        raise ValueError(f"device {config.device!r} needs gpus_per_task > 0")


def _probe(address: str) -> None:
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ConnectionError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc


def _absolute(url: str) -> str:
    if url.startswith("pipe:") or "://" in url or os.path.isabs(url):
        return url
    return os.path.abspath(url)


def _absolute_paths(config: RefineConfig) -> RefineConfig:
    stats = _absolute(config.stats) if config.stats else None
    return replace(
        config, engine=_absolute(config.engine), output=_absolute(config.output), stats=stats
    )


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--distributor ray needs Ray: pip install 'refinery[ray]'") from None
    return ray
