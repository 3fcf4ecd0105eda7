"""The method table: every adversarial trainer by name, and the one ``load_config``/``train``.

``METHODS`` maps a method name to the module that implements it and its default preset (the
one the README's examples use). A module is imported only when its method is used (each pulls
in torch), so ``refinery --help`` reads this table alone. Each module defines
``METHOD = Method(config=..., trainer=...)``: its frozen config dataclass and the class that
builds one run's networks, optimisers and streams for the shared loop (``train.loop.Method``).
Recipes are ``train/recipes/<method>-<preset>.yaml``; a new method is one module, one row here
and its recipes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.config import RECIPES, load_run_config, parse_settings


@dataclass(frozen=True)
class Entry:
    module: str
    default_preset: str


METHODS: dict[str, Entry] = {
    "simgan": Entry("train.simgan", default_preset="small"),
    "sggan": Entry("train.sggan", default_preset="paper"),
    "spigan": Entry("train.spigan", default_preset="paper"),
}


@dataclass(frozen=True)
class Method:
    """What the table needs of a method's module."""

    config: type  # the frozen dataclass its recipes fill
    trainer: Callable[..., Any]  # (config, *, synthetic, real, device, ranks) -> loop.Method
    # Optional work before the trainer is built, on every rank once the run directory is
    # claimed: (config, *, synthetic, out, resume, device, ranks) -> the config it trains with
    # (e.g. SimGAN trains the geometry term's frozen network its recipe asks for). The run's
    # config.yaml keeps the config as resolved, so a moved run directory still resumes.
    prepare: Callable[..., Any] | None = None


def entry(name: str) -> Entry:
    if name not in METHODS:
        raise ValueError(f"no method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def presets(name: str) -> tuple[str, ...]:
    """The presets of method ``name``: its ``train/recipes/<name>-<preset>.yaml`` files."""
    entry(name)
    return tuple(sorted(p.stem[len(name) + 1 :] for p in RECIPES.glob(f"{name}-*.yaml")))


def method(name: str) -> Method:
    return importlib.import_module(entry(name).module).METHOD


def load_config(
    name: str,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    resume_from: str | Path | None = None,
    settings: Sequence[str] = (),
    **overrides: Any,
) -> Any:
    """Recipe ``<name>-<preset>`` (default: the method's default preset), then the user's YAML
    ``config_file``, then ``settings`` (``KEY=VALUE`` items, typed by the config's fields), then
    ``overrides`` (keyword values; ``None`` means not given). Resuming (``resume_from`` a run
    directory with its ``config.yaml``) returns the run's own config: only ``steps`` may be
    raised to train longer, and ``settings`` are refused, so a resume never silently changes
    what is trained."""
    config_cls = method(name).config
    return load_run_config(
        config_cls,
        recipe=f"{name}-{preset or entry(name).default_preset}",
        config_file=config_file,
        resume_from=resume_from,
        overrides=overrides,
        settings=parse_settings(config_cls, list(settings)),
    )


def train(
    name: str,
    config: Any,
    *,
    synthetic: str | list[str],
    real: str | list[str],
    out: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    device: str | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train method ``name`` into the run directory ``out`` (under torchrun: data parallel, see
    ``train.loop.fit``); returns the newest checkpoint's path."""
    from train.loop import fit

    chosen = method(name)

    def make(dev, ranks):
        trains = config
        if chosen.prepare is not None:
            trains = chosen.prepare(
                config, synthetic=synthetic, out=Path(out), resume=resume, device=dev, ranks=ranks
            )
        return chosen.trainer(trains, synthetic=synthetic, real=real, device=dev, ranks=ranks)

    return fit(
        make,
        config,
        out=out,
        resume=resume,
        stop_after=stop_after,
        device=device,
        progress=progress,
    )
