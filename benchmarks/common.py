"""What every benchmark records next to its figures: the machine, the versions, the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refinery.records import machine, versions, write_record

RESULTS = Path(__file__).resolve().parent / "results"

__all__ = ["RESULTS", "machine", "versions", "write_result"]


def write_result(
    name: str, figures: dict[str, Any], settings: dict[str, Any], *, results: Path = RESULTS
) -> Path:
    """Write <results>/<name>.json with figures, settings, machine and versions."""
    path = write_record(Path(results) / f"{name}.json", name, figures, settings)
    print(f"wrote {path}")
    return path
