"""What every benchmark records next to its figures (the machine, the versions, the settings),
and the procedural shards several of them train or evaluate on."""

from __future__ import annotations

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
    "exit_on_sigterm",
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
) -> list[str]:
    """``count`` samples of the procedural ``domain`` simulator, ``variant``, written as shards
    of up to 500 under ``root``; their paths."""
    from refinery import sim
    from refinery.samples import encode_sample
    from refinery.shards import write_shards

    options = {} if size is None else {"height": size[0], "width": size[1]}
    made = sim.generate(domain, variant, count, seed=seed, **options)
    return write_shards(
        (encode_sample(s, domain) for s in made),
        str(Path(root) / f"{domain}-{variant}-s{seed}-%06d.tar"),
        shard_size=min(500, count),
    )
