"""The refine job: input shards -> engine -> refined shards (contract 3), and in-process streams.

``deploy.run(config, urls)`` runs the job on one process's shards (``deploy.job``);
``deploy.launch`` places a process among its peers (torchrun, Slurm, Kubernetes) and
partitions shards; ``deploy.stream(engine, urls)`` yields refined samples for a DataLoader.
"""

from __future__ import annotations

from deploy.job import JobSummary, RefineConfig, RejectRateExceeded, ShardStats, run
from deploy.stream import RefinedStream, stream

__all__ = [
    "JobSummary",
    "RefineConfig",
    "RefinedStream",
    "RejectRateExceeded",
    "ShardStats",
    "run",
    "stream",
]
