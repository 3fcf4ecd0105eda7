"""What every benchmark records next to its figures (the machine, the versions, the settings),
and the procedural shards several of them train or evaluate on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refinery.records import machine, versions, write_record

RESULTS = Path(__file__).resolve().parent / "results"

__all__ = ["RESULTS", "machine", "procedural_shards", "versions", "write_result"]


def write_result(
    name: str, figures: dict[str, Any], settings: dict[str, Any], *, results: Path = RESULTS
) -> Path:
    """Write <results>/<name>.json with figures, settings, machine and versions."""
    path = write_record(Path(results) / f"{name}.json", name, figures, settings)
    print(f"wrote {path}")
    return path


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
