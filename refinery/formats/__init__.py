"""Readers for the dataset formats users arrive with, turned into samples of contract 1.

A format is one module in this package that registers one class::

    @register_format("gta5", domain="scene", summary="GTA-V (Playing for Data) frames + labels")
    class GTA5:
        def __init__(self, root: str, *, ontology: str = "cityscapes-19"): ...
        def items(self) -> list[Item]: ...
        def convert(self, item: Item) -> list[dict[str, Any]]: ...

- ``__init__`` takes the source root and keyword-only options (the CLI maps ``--flag`` values
  onto them by name; an unknown option is a ``TypeError`` naming what the format takes).
- A format registered with ``domain=None`` (``images``: any folder of images) takes its domain
  from its ``domain`` option; its reader says which in a ``domain`` attribute, and ``domain_of``
  is what the ingest driver reads.
- ``items()`` lists every unit of input in a deterministic order (sorted), *including*
  incomplete ones (an image without its label): those are listed so ``convert`` can report
  them. It reads as little as it can (names, sizes; an index file when one holds the labels).
- ``convert(item)`` returns the encoded samples of one item (usually one; a MPIIGaze day file
  gives many) as dicts ``{"__key__": key, "<component>": bytes, ...}`` ready for a
  ``ShardWriter``, or raises ``SampleError`` naming the file (``url``), key, component and
  reason. Keys are unique across the dataset, stable across runs and contain no dots.

The ingest driver (``refinery.ingest``) owns everything else: grouping items into shards,
resuming, progress, the rejects list and the summary.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from refinery.samples import DOMAINS


@dataclass(frozen=True)
class Item:
    """One unit of source input. ``paths`` are the files it reads (for reports);
    ``data`` is format-specific (an index into a label file, the labels themselves)."""

    name: str  # a stable id for reports, e.g. "imgs/17"
    paths: tuple[str, ...]
    data: Any = field(default=None, compare=False)


class Format(Protocol):
    def items(self) -> list[Item]: ...

    def convert(self, item: Item) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class FormatInfo:
    name: str
    domain: str | None  # None: the reader's ``domain`` option decides (see ``domain_of``)
    summary: str
    factory: Callable[..., Format]


FORMATS: dict[str, FormatInfo] = {}
_MODULES = ("unityeyes", "mpiigaze", "nyu_hand", "scenes", "images")


def register_format(name: str, *, domain: str | None, summary: str) -> Callable[[type], type]:
    """Register a format class under ``name``; ``domain=None`` for one whose ``domain`` keyword
    option says which domain its samples are (the reader keeps it as ``reader.domain``)."""
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"format {name!r}: unknown domain {domain!r}")

    def add(cls: type) -> type:
        if name in FORMATS:
            raise ValueError(f"format {name!r} is already registered")
        if domain is None and "domain" not in inspect.signature(cls).parameters:
            raise ValueError(f"format {name!r} has no fixed domain and takes no domain option")
        FORMATS[name] = FormatInfo(name, domain, summary, cls)
        return cls

    return add


def domain_of(reader: Format, info: FormatInfo) -> str:
    """The domain of the samples ``reader`` makes: its own ``domain`` attribute, else the
    format's registered one."""
    domain = getattr(reader, "domain", None) or info.domain
    if domain not in DOMAINS:
        raise ValueError(f"format {info.name!r}: no domain (got {domain!r})")
    return domain


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")


def list_formats() -> list[str]:
    _load_all()
    return sorted(FORMATS)


def format_info(name: str) -> FormatInfo:
    _load_all()
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown format {name!r}; known: {', '.join(sorted(FORMATS))}") from None


def open_format(name: str, root: str, **options: Any) -> Format:
    """Build the reader for ``name`` over the tree at ``root`` with keyword options."""
    return format_info(name).factory(root, **options)
