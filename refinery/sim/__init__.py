"""Procedural mini-simulators: labeled data for every domain, with no external dataset.

Each domain is rendered in two variants (``VARIANTS``):

| domain  | module    | "synthetic" stands in for   | "real" stands in for   |
|---------|-----------|-----------------------------|------------------------|
| `gaze`  | `eyes`    | UnityEyes eye crops         | MPIIGaze eye crops     |
| `hand`  | `hands`   | NYU synthetic hand depth    | NYU real Kinect depth  |
| `scene` | `streets` | GTA-V / SYNTHIA street views| Cityscapes             |

The "real" variant differs from the synthetic one the way the real dataset differs from its
simulator: sensor noise, blur, texture, palette, illumination, depth holes. The differences are
mostly local (per pixel or a few pixels wide), so a fully convolutional refiner can learn them,
and large enough that a task network trained on synthetic data loses accuracy on real data
(``benchmarks/domain_gap.py`` measures by how much).

Every sample follows contract 1 (``refinery.samples``): ``{"__key__", <image components>,
"json"}``, already decoded (numpy arrays and a dict of plain Python values).

Determinism and pairing. Sample ``(domain, variant, index, seed, options)`` draws from two
generators, each seeded by ``np.random.default_rng([seed, stream, index])``:

- the geometry stream, which does not depend on the variant, fixes the scene and every label;
- the appearance stream, one per variant, fixes colours, textures, noise and background.

So a sample never depends on how many others were generated before it, and the synthetic and
the real sample with the same seed and index show the same labeled geometry (paired data, for
tests that labels survive refinement). For unpaired training data, which is what SimGAN-style
training assumes, give the two variants different seeds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from refinery.samples import DOMAINS
from refinery.sim import eyes, hands, streets

VARIANTS = ("synthetic", "real")


_MODULES: dict[str, ModuleType] = {"gaze": eyes, "hand": hands, "scene": streets}

# Stream ids for default_rng([seed, stream, index]): 16 per domain, so that gaze, hand and scene
# samples with the same seed and index are unrelated; within a domain 0 is geometry and
# 1 + VARIANTS.index(variant) the appearance of that variant.
_STREAMS_PER_DOMAIN = 16
_GEOMETRY = 0

LABEL_DECIMALS = 5


def _check_domain_variant(domain: str, variant: str) -> None:
    if domain not in _MODULES:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def key_for(domain: str, variant: str, index: int, *, seed: int) -> str:
    """The sample key, e.g. ``gaze-syn-s0-00000042`` (no dots: WebDataset splits at the first)."""
    _check_domain_variant(domain, variant)
    _check_count("index", index)
    _check_count("seed", seed)
    return f"{domain}-{variant[:3]}-s{int(seed)}-{int(index):08d}"


def options_for(domain: str, **options: Any) -> Any:
    """The domain's frozen options dataclass; unknown options raise TypeError naming them."""
    _check_domain_variant(domain, VARIANTS[0])
    cls = _MODULES[domain].Options
    known = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for domain {domain!r}; "
            f"it takes {', '.join(known)}"
        )
    return cls(**options)


def _streams(domain: str, variant: str, index: int, seed: int) -> tuple[np.random.Generator, ...]:
    base = _STREAMS_PER_DOMAIN * DOMAINS.index(domain)
    geometry = np.random.default_rng([int(seed), base + _GEOMETRY, int(index)])
    appearance = np.random.default_rng([int(seed), base + 1 + VARIANTS.index(variant), int(index)])
    return geometry, appearance


def render(
    domain: str, variant: str, index: int, *, seed: int = 0, **options: Any
) -> dict[str, Any]:
    """One decoded sample of `domain` in `variant`; see the module docstring for determinism."""
    key = key_for(domain, variant, index, seed=seed)
    module = _MODULES[domain]
    resolved = options_for(domain, **options)
    geometry, appearance = _streams(domain, variant, index, seed)
    images, labels = module.render(geometry, appearance, real=variant == "real", options=resolved)
    label = {
        "domain": domain,
        "variant": variant,
        "source": {"simulator": module.__name__, "seed": int(seed), "index": int(index)},
        **_plain(labels),
    }
    return {"__key__": key, **images, "json": label}


def generate(
    domain: str, variant: str, n: int, *, seed: int = 0, start: int = 0, **options: Any
) -> Iterator[dict[str, Any]]:
    """``render(domain, variant, i, seed=seed, **options)`` for i in ``range(start, start + n)``."""
    _check_domain_variant(domain, variant)
    _check_count("n", n)
    _check_count("start", start)
    options_for(domain, **options)  # fail on a bad option before the first sample, not at it
    for index in range(start, start + n):
        yield render(domain, variant, index, seed=seed, **options)


def _plain(value: Any) -> Any:
    """Labels as plain Python: lists for arrays, floats rounded so the JSON bytes are stable."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        if not np.isfinite(value).all():
            raise ValueError(f"non-finite label values in {value!r}")
        return (np.round(value.astype(np.float64), LABEL_DECIMALS) + 0.0).tolist()  # + 0.0: no -0.0
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"non-finite label value {number}")
        return round(number, LABEL_DECIMALS) + 0.0
    if isinstance(value, Mapping):
        return _plain(dict(value))
    return value
