"""The identity engine: ``refinery refine --engine identity`` copies images through the job.

Every stage runs as with a trained engine (tar read, label check, decode, re-encode as the job
encodes, tar write, stats, exactly once), only the pixels come out as they went in. A user
validates and re-shards a dataset with it, and it measures the job's CPU side alone. Its spec
is made for the domain of the data (``--domain``, or the first sample's); its hash names the
domain, so an output refined by the identity belongs to it as to any other engine.
"""

from __future__ import annotations

import hashlib

import torch

from engines.base import Engine
from engines.spec import MAX_BATCH, EngineSpec, PixelIO, Profile, Shape
from refinery import __version__
from refinery.samples import DEPTH16, RGB8
from refinery.samples import spec as domain_spec

IDENTITY = "identity"
_LARGEST = 1 << 16  # PNG and JPEG sizes stay far below this


def identity_spec(domain: str) -> EngineSpec:
    """An engine spec that fits every image of ``domain``: any size, its own pixel kind."""
    images = domain_spec(domain)
    kind = images.image_kind
    io = PixelIO(
        image_component=images.default_image,
        pixel_kind=kind,
        channels=3 if kind == RGB8 else 1,
        low=0.0,
        high=65535.0 if kind == DEPTH16 else 255.0,
    )
    profile = Profile(Shape(1, 1, 1), Shape(64, 64, 64), Shape(MAX_BATCH, _LARGEST, _LARGEST))
    digest = hashlib.sha256(f"refinery-identity:{domain}".encode()).hexdigest()
    return EngineSpec(
        name=IDENTITY,
        method=IDENTITY,
        domain=domain,
        io=io,
        profile=profile,
        model={"file": None, "sha256": digest},
        weights={},
        source={},
        refinery_version=__version__,
    )


class IdentityEngine(Engine):
    """Refined pixels are the input pixels, exactly (no scaling round trip), all finite."""

    backend = IDENTITY

    def __init__(self, domain: str):
        super().__init__(identity_spec(domain), engine_dir=IDENTITY)

    def _run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.inference_mode()
    def refine_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pixels, torch.ones(len(pixels), dtype=torch.bool, device=pixels.device)
