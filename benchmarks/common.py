"""What every benchmark records next to its figures (the machine, the versions, the settings),
and the procedural shards several of them train or evaluate on."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

from refinery.records import machine, versions, write_record

RESULTS = Path(__file__).resolve().parent / "results"  # the product benchmarks' records
# the experiments' (benchmarks/experiments/: ablations and studies, `make experiments`)
EXPERIMENT_RESULTS = RESULTS.parent / "experiments" / "results"
# One run per seed unless told otherwise: a GAN trained with it and evaluate --seeds s (issue 15:
# the GAN's variance is the larger one, so quality figures are mean ± std over these runs)
SEEDS = (0, 1, 2)

__all__ = [
    "EXPERIMENT_RESULTS",
    "RESULTS",
    "SEEDS",
    "copied_shards",
    "exit_on_sigterm",
    "gaze_shards",
    "machine",
    "procedural_shards",
    "versions",
    "write_result",
]


def write_result(
    name: str, figures: dict[str, Any], settings: dict[str, Any], *, results: Path = RESULTS
) -> Path:
    """Write <results>/<name>.json with figures, settings, machine and versions."""
    path = write_record(Path(results) / f"{name}.json", name, figures, settings)
    print(f"wrote {path}")
    return path


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a batch scheduler's time limit) raise ``SystemExit(143)`` in the
    main thread, as Ctrl-C raises KeyboardInterrupt: the benchmark unwinds, ``subprocess.run``
    kills the ``refinery`` command it is waiting on and temporary directories are removed.
    Python's default action ends the benchmark alone and leaves that command (a GAN training
    for minutes) running on the machine. Call it from ``__main__``, not from library code."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def procedural_shards(
    root: Path,
    domain: str,
    variant: str,
    count: int,
    *,
    seed: int,
    size: tuple[int, int] | None = None,
    shard_size: int = 500,
) -> list[str]:
    """``count`` samples of the procedural ``domain`` simulator, ``variant``, written as shards
    of up to ``shard_size`` under ``root``; their paths."""
    from refinery import sim
    from refinery.samples import encode_sample
    from refinery.shards import write_shards

    options = {} if size is None else {"height": size[0], "width": size[1]}
    made = sim.generate(domain, variant, count, seed=seed, **options)
    return write_shards(
        (encode_sample(s, domain) for s in made),
        str(Path(root) / f"{domain}-{variant}-s{seed}-%06d.tar"),
        shard_size=min(shard_size, count),
    )


def gaze_shards(root: Path, count: int, *, shard_size: int = 1000) -> list[str]:
    """``count`` procedural synthetic eyes (seed 7) as PNG + JSON shards of up to
    ``shard_size`` under ``root``; their paths."""
    from refinery import sim
    from refinery.samples import encode_sample
    from refinery.shards import write_shards

    made = (encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", count, seed=7))
    return write_shards(made, str(Path(root) / "gaze-%06d.tar"), shard_size=shard_size)


def copied_shards(urls: list[str], root: Path, shards: int) -> list[str]:
    """``shards`` shards under ``root``: copies of ``urls`` in turn, under new names. A job
    reads each as its own shard (keys are compared within a shard, not across), so a large
    input costs a copy, not a rendering: procedural eyes take about 1 ms each on this machine,
    the identity job 0.1 ms."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    copies = [str(root / f"copy-{i:06d}.tar") for i in range(shards)]
    for i, target in enumerate(copies):
        shutil.copyfile(urls[i % len(urls)], target)
    return copies
