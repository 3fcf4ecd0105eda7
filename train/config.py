"""Trainer configs: frozen dataclasses filled from a YAML recipe, then CLI overrides.

A recipe (``train/recipes/<name>.yaml``) sets every field it knows; unknown keys are an error
(with the known ones listed), so a typo never silently falls back to a default. The resolved
config is written into the run directory and every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

RECIPES = Path(__file__).resolve().parent / "recipes"

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class OptimiserConfig:
    name: str = "sgd"  # "sgd" | "adam"
    lr: float = 1e-3
    momentum: float = 0.0  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    weight_decay: float = 0.0


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ValueError(f"{where}: expected int, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Build a (nested) frozen dataclass from a dict; unknown keys raise naming the known ones."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True}
_BOOLEANS.update({"false": False, "no": False, "off": False, "0": False})


def _typed(tp: Any, text: str, where: str) -> Any:
    """``text`` as a value of the field type ``tp``: the type says how to read it, so
    ``refiner=123`` stays a name and ``lr=1e-3`` a number (YAML alone reads it as a string)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in ("none", "null", "~"):
            return None
        return _typed(next(a for a in args if a is not type(None)), text, where)
    try:
        if tp is str:
            return text
        if tp is bool:
            return _BOOLEANS[text.strip().lower()]
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except (KeyError, ValueError):
        name = "true or false" if tp is bool else f"a{'n' if tp is int else ''} {tp.__name__}"
        raise ValueError(f"{where}: expected {name}, got {text!r}") from None
    # tuples and nested configs: a YAML flow value, e.g. [0.5, 0.999] or {name: adam, lr: 0.001}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = getattr(exc, "problem", None) or "unreadable"
        raise ValueError(f"{where}: not a YAML value ({reason})") from None
    _convert(tp, value, where)  # checked here, so the message names the setting
    return value


def parse_settings(cls: type, items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` items (``refinery train --set``) as config overrides, each value typed by its
    field in ``cls``. ``KEY.SUB=VALUE`` sets one field of a nested config (e.g.
    ``discriminator_optimiser.lr=0.0008``); unknown keys raise naming the known ones."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        where = f"--set {item!r}"
        if not (key and sep):
            raise ValueError(f"{where}: expected KEY=VALUE")
        target, owner, path = settings, cls, key.split(".")
        for depth, name in enumerate(path):
            known = {f.name for f in dataclasses.fields(owner)}
            if name not in known:
                inside = f" of {'.'.join(path[:depth])}" if depth else ""
                raise ValueError(
                    f"{where}: unknown key {name!r}{inside}; known: {', '.join(sorted(known))}"
                )
            tp = typing.get_type_hints(owner)[name]
            if depth == len(path) - 1:
                target[name] = _typed(tp, text, where)
            elif dataclasses.is_dataclass(tp):
                target, owner = target.setdefault(name, {}), tp
            else:
                raise ValueError(f"{where}: {'.'.join(path[: depth + 1])} has no fields")
    return settings


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge, everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of config keys")
    return data


def recipe_path(name: str) -> Path:
    path = RECIPES / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
        raise ValueError(f"no recipe {name!r}; available: {', '.join(names)}")
    return path


def resolve(
    cls: type[T],
    *,
    recipe: str,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> T:
    """Recipe, then a user YAML on top, then ``settings`` (``parse_settings``: ``--set``, where
    ``None`` is a value), then CLI overrides (``None`` values are ignored: a flag not given)."""
    data = load_yaml(recipe_path(recipe))
    if config_file is not None:
        data = merge(data, load_yaml(config_file))
    data = merge(data, settings or {})
    data = merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, data, where=f"recipe {recipe}")


def load_run_config(
    cls: type[T],
    *,
    recipe: str,
    config_file: str | Path | None = None,
    resume_from: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> T:
    """``resolve``; or, resuming a run that has its ``config.yaml``, that config, so a resume
    never silently changes what is trained (only ``steps`` may be raised to train longer)."""
    saved = Path(resume_from or "") / "config.yaml"
    if resume_from is not None and saved.exists():
        if settings:
            raise ValueError(
                f"{saved}: a resumed run keeps its own config; --set "
                f"{', '.join(sorted(settings))} would change it (start a new run instead)"
            )
        config = from_dict(cls, load_yaml(saved), where=str(saved))
        steps = (overrides or {}).get("steps")
        return config if steps is None else dataclasses.replace(config, steps=steps)
    return resolve(
        cls, recipe=recipe, config_file=config_file, overrides=overrides, settings=settings
    )


def make_optimiser(params, config: OptimiserConfig):
    import torch

    if config.name == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.name == "adam":
        return torch.optim.Adam(
            params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
    raise ValueError(f"unknown optimiser {config.name!r}; expected 'sgd' or 'adam'")


def write_yaml(path: str | Path, config: Any) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
