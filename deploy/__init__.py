"""The refine job: input shards -> engine -> refined shards (contract 3), and in-process streams.

``deploy.run(config, urls)`` runs the job on one process's shards (``deploy.job``);
``deploy.launch`` places a process among its peers (torchrun, Slurm, Kubernetes) and
partitions shards; ``deploy.run_on_ray`` runs one task per shard group on a Ray cluster;
``deploy.stream(engine, urls)`` yields refined samples for a DataLoader.

The names below load on first use: a refine worker process imports ``deploy.workers`` alone
(NumPy, OpenCV, libdeflate), not torch and the engines behind ``deploy.job``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ShardGroupFailed": "deploy.distributed",
    "run_on_ray": "deploy.distributed",
    "JobStopped": "deploy.job",
    "JobSummary": "deploy.job",
    "RefineConfig": "deploy.job",
    "RejectRateExceeded": "deploy.job",
    "ShardStats": "deploy.job",
    "run": "deploy.job",
    "RefinedStream": "deploy.stream",
    "stream": "deploy.stream",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    # kept here, also over the submodule that importing deploy.stream binds to ``stream``
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
