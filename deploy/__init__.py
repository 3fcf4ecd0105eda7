"""The refine job: input shards -> engine -> refined shards (contract 3), and in-process streams.

``deploy.run(config, urls)`` runs the job on one process's shards (``deploy.job``);
``deploy.launch`` places a process among its peers (torchrun, Slurm, Kubernetes) and
partitions shards; ``deploy.run_on_ray`` runs one task per shard group on a Ray cluster; ``deploy.stream(engine, urls)`` yields refined samples for a DataLoader.
"""

from __future__ import annotations

from deploy.distributed import ShardGroupFailed, run_on_ray
from deploy.job import (
    JobStopped,
    JobSummary,
    RefineConfig,
    RejectRateExceeded,
    ShardStats,
    run,
)
from deploy.stream import RefinedStream, stream

__all__ = [
    "JobStopped",
    "JobSummary",
    "RefineConfig",
    "RefinedStream",
    "RejectRateExceeded",
    "ShardGroupFailed",
    "ShardStats",
    "run",
    "run_on_ray",
    "stream",
]
