"""Shared fixtures; `gpu` tests skip cleanly where CUDA, TensorRT or torchvision is missing.

Mark a test ``@pytest.mark.gpu`` (needs CUDA) or ``@pytest.mark.gpu("torchvision", ...)`` to name
what else it needs: any of "cuda", "torchvision", "tensorrt", "dali-gpu".
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@functools.cache
def _available(requirement: str) -> bool:
    if requirement == "cuda":
        import torch

        return torch.cuda.is_available()
    if requirement == "dali-gpu":
        return _available("cuda") and _importable("nvidia.dali")
    return _importable(requirement)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # torchvision next to a CPU torch raises RuntimeError, not ImportError
        return False
    return True


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is None:
            continue
        needs = ("cuda", *marker.args)
        missing = [r for r in needs if not _available(r)]
        if missing:
            item.add_marker(
                pytest.mark.skip(reason=f"gpu test: {', '.join(missing)} not available")
            )


@pytest.fixture
def shared_fixture():
    """Path to a file under ../shared/fixtures/real; skips the test when it is absent."""

    def get(relative: str) -> Path:
        path = SHARED / "fixtures" / "real" / relative
        if not path.exists():
            pytest.skip(f"shared fixture {relative} not present")
        return path

    return get
