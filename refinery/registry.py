"""One registry of networks by name: refiners, discriminators and task networks.

A network family lives in one module under ``refinery/nets/`` and registers a short builder per
preset::

    @register_network("simgan-refiner-gaze", role="refiner", input_size=(35, 55))
    def simgan_refiner_gaze(*, channels: int = 1) -> SimGANRefiner: ...

Everything else finds it by name: ``build_network("simgan-refiner-gaze", channels=3)``. A second
registration of a name raises (as torchvision's ``models/_api.py`` does); an unknown name raises
``KeyError`` listing the known ones; an unknown keyword raises ``TypeError`` naming what the
builder takes. Builders are keyword-only so a recipe's keys map onto them one to one (STYLE 3).

``build_network``, ``list_networks`` and ``network_info`` import ``refinery.nets`` on first use,
so ``import refinery.registry`` alone is enough to build any registered network.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

ROLES = ("refiner", "discriminator", "task")

Builder = Callable[..., nn.Module]


@dataclass(frozen=True, kw_only=True)
class NetworkInfo:
    """What a registered network is, without building it.

    ``channels`` is the builder's default for its ``channels`` keyword; ``input_size`` the
    (H, W) the preset was designed for (the paper's crop size). ``fully_convolutional`` nets
    take any H, W (and export to ONNX with dynamic H, W); the others take ``input_size`` or the
    size they were built for.
    """

    name: str
    role: str
    channels: int
    input_size: tuple[int, int]
    fully_convolutional: bool
    builder: Builder
    summary: str


class Registry:
    """Builders by name; refuses duplicates. The module keeps one, ``NETWORKS``."""

    def __init__(self, kind: str = "network"):
        self.kind = kind
        self._entries: dict[str, NetworkInfo] = {}

    def register(
        self,
        name: str,
        *,
        role: str,
        input_size: tuple[int, int],
        fully_convolutional: bool,
    ) -> Callable[[Builder], Builder]:
        """Decorator: register a keyword-only builder under `name`; a second `name` raises."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} for {name!r}; expected one of {ROLES}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")

        def decorate(builder: Builder) -> Builder:
            if name in self._entries:  # a second decoration of the same name
                raise ValueError(f"{self.kind} {name!r} is already registered")
            parameters = inspect.signature(builder).parameters.values()
            positional = [p.name for p in parameters if p.kind is not p.KEYWORD_ONLY]
            if positional:
                raise TypeError(
                    f"builder for {name!r} must take keyword-only arguments; "
                    f"{', '.join(positional)} {'is' if len(positional) == 1 else 'are'} not"
                )
            channels = inspect.signature(builder).parameters.get("channels")
            if channels is None or not isinstance(channels.default, int):
                raise TypeError(f"builder for {name!r} must take `channels: int = <default>`")
            summary = (inspect.getdoc(builder) or "").split("\n", 1)[0]
            self._entries[name] = NetworkInfo(
                name=name,
                role=role,
                channels=channels.default,
                input_size=(int(input_size[0]), int(input_size[1])),
                fully_convolutional=fully_convolutional,
                builder=builder,
                summary=summary,
            )
            return builder

        return decorate

    def names(self, role: str | None = None) -> list[str]:
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        return sorted(n for n, info in self._entries.items() if role in (None, info.role))

    def info(self, name: str) -> NetworkInfo:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def build(self, name: str, **kwargs: object) -> nn.Module:
        info = self.info(name)
        accepted = list(inspect.signature(info.builder).parameters)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"unknown argument(s) {', '.join(map(repr, unknown))} for {self.kind} {name!r}; "
                f"it takes {', '.join(accepted)}"
            )
        return info.builder(**kwargs)


NETWORKS = Registry("network")


def _load_networks() -> None:
    # The network modules import this one to register themselves, so import them lazily.
    importlib.import_module("refinery.nets")


def register_network(
    name: str,
    *,
    role: str,
    input_size: tuple[int, int],
    fully_convolutional: bool = True,
) -> Callable[[Builder], Builder]:
    """Decorator registering a keyword-only builder in ``NETWORKS``; duplicates raise ValueError."""
    return NETWORKS.register(
        name, role=role, input_size=input_size, fully_convolutional=fully_convolutional
    )


def build_network(name: str, **kwargs: object) -> nn.Module:
    """A new network `name` built with `kwargs` (keyword-only; unknown keys raise TypeError)."""
    _load_networks()
    return NETWORKS.build(name, **kwargs)


def list_networks(role: str | None = None) -> list[str]:
    """Registered names, sorted; only those of `role` ("refiner", "discriminator", "task")."""
    _load_networks()
    return NETWORKS.names(role)


def network_info(name: str) -> NetworkInfo:
    """Role, default channels, design input size and builder of `name`; KeyError if unknown."""
    _load_networks()
    return NETWORKS.info(name)
