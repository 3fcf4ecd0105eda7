"""What a recorded measurement carries next to its figures: the machine, versions, settings.

Used by ``benchmarks/`` and by commands that write results themselves (``refinery
bench-engine``), so every record under ``benchmarks/results/`` has the same shape.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "refinery",
    "torch",
    "numpy",
    "opencv-python-headless",
    "webdataset",
    "nvidia-dali-cuda120",
    "onnxruntime",
    "onnx",
    "tensorrt",
)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        info["gpu"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


_OUTPUTS = (":(exclude)benchmarks/results", ":(exclude)benchmarks/experiments/results")


def commit(root: str | Path | None = None) -> str | None:
    """The git commit this code runs at (``+dirty`` with uncommitted changes), if it is a
    checkout: what a record was measured with. Changes under ``benchmarks/results`` do not count:
    they are what the benchmarks write (a benchmark that copies its report there before writing
    its record would otherwise mark its own record dirty)."""
    root = Path(__file__).resolve().parents[1] if root is None else Path(root)
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if head.returncode:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *_OUTPUTS],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def write_record(
    path: str | Path, name: str, figures: dict[str, Any], settings: dict[str, Any]
) -> Path:
    """Write one record (figures, settings, commit, machine, versions, date) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit(),
        "machine": machine(),
        "versions": versions(),
        "settings": settings,
        "figures": figures,
    }
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
