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


@pytest.fixture(scope="session")
def exported_tiny_run():
    """``make(root, seeds=(s, r), **recipe)``: a real (tiny) SimGAN run of the small preset on
    32 procedural eyes of each variant, exported to ``root/engine`` (the path every user
    takes); returns (root, engine spec). Recipe keys override the tiny schedule."""

    def make(root: Path, *, seeds: tuple[int, int] = (21, 22), **recipe):
        import engines
        from refinery import sim
        from refinery.samples import encode_sample
        from refinery.shards import write_shards
        from train import simgan

        for variant, seed in zip(("synthetic", "real"), seeds, strict=True):
            made = sim.generate("gaze", variant, 32, seed=seed)
            write_shards(
                (encode_sample(s, "gaze") for s in made),
                str(root / f"{variant}-%03d.tar"),
                shard_size=16,
            )
        tiny = dict(
            batch_size=8,
            pretrain_refiner_steps=2,
            pretrain_discriminator_steps=1,
            steps=2,
            buffer_size=16,
            shuffle_buffer=8,
            checkpoint_every=100,
            log_every=100,
            sample_every=100,
        )
        simgan.train(
            simgan.load_config(preset="small", **{**tiny, **recipe}),
            synthetic=str(root / "synthetic-{000..001}.tar"),
            real=str(root / "real-{000..001}.tar"),
            out=root / "run",
        )
        return root, engines.export_run(root / "run", root / "engine")

    return make
