"""What a refine job's output is (contract 3): its shards, their stats, and the engine it is for.

An output is the directory (or fsspec URL, or ``pipe:`` command) given as ``--output``, with
the per-shard stats files beside its shards or in ``--stats``. This module decides, for
``deploy.job``:

- where a shard and its stats go (``output_url``, ``stats_url``); a shard is *finished* when
  both exist (``finished``): the shard is renamed into place first, its stats last.
- who owns the output (``claim``, ``check_owner``): ``refinery-output.json`` (engine id and
  hash) is created atomically in the output itself, and in the ``--stats`` directory too when
  that is another place (a ``pipe:`` output can hold no file: there it is the stats
  directory's alone). Another engine's job is refused, naming both, whatever ``--stats`` it
  gives, so two engines never mix one output.
- what a rerun writes: nothing when it has nothing to do. ``check_owner`` only reads, and
  ``claim`` creates a record only where none is, so a finished output on read-only storage can
  be rerun for its verdict.
- what a killed run left: ``clean_temps`` removes stale temporaries (``refinery.store``) in the
  output and in the stats directory.

Every file is written with ``refinery.store.write_atomic`` (temporary name, rename).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from refinery import __version__, store
from refinery.samples import encode_json

if TYPE_CHECKING:  # deploy.job imports this module
    from deploy.job import RefineConfig

OUTPUT_FILE = "refinery-output.json"  # which engine an output belongs to
STATS_SUFFIX = ".stats.json"


class OutputConflict(ValueError):
    """The output already holds shards another engine refined: mixing them would give one
    dataset refined by two models."""


def output_url(config: RefineConfig, name: str) -> str:
    if config.output.startswith("pipe:"):
        return config.output.replace("{name}", name)
    return store.join(config.output, name)


def stats_dir(config: RefineConfig) -> str:
    return config.stats or config.output


def stats_url(config: RefineConfig, name: str) -> str:
    return store.join(stats_dir(config), name + STATS_SUFFIX)


def finished(config: RefineConfig, name: str) -> bool:
    """Both the shard and (written after it) its stats file are in place."""
    return store.exists(stats_url(config, name)) and store.exists(output_url(config, name))


def read_stats(config: RefineConfig, name: str) -> dict[str, Any]:
    return json.loads(store.read_bytes(stats_url(config, name)))


def write_stats(config: RefineConfig, name: str, data: bytes) -> None:
    store.write_atomic(stats_url(config, name), data, what=f"the stats of shard {name!r}")


# -- the owner ---------------------------------------------------------------------------------


def owner_urls(config: RefineConfig) -> list[str]:
    """Where the owner record lives: in the output itself (the authority), then in the stats
    directory when that is another place."""
    places = [] if config.output.startswith("pipe:") else [config.output]
    if config.stats is not None and config.stats.rstrip("/") != config.output.rstrip("/"):
        places.append(config.stats)
    return [store.join(place, OUTPUT_FILE) for place in places]


def same_engine(
    config: RefineConfig, spec, their_hash: str | None, theirs: Any, where: str
) -> None:
    if their_hash != spec.engine_hash:
        raise OutputConflict(
            f"{config.output} holds shards refined by engine {theirs} (see {where}); this job's "
            f"engine is {spec.engine_id}: refine into another --output, or delete "
            f"{config.output} to start over"
        )


def check_owner(config: RefineConfig, spec) -> None:
    """Refuse an output that another engine owns; reads, never writes."""
    for url in owner_urls(config):
        if store.exists(url):
            owner = json.loads(store.read_bytes(url))
            same_engine(config, spec, owner.get("engine_hash"), owner.get("engine"), url)


def claim(config: RefineConfig, spec) -> None:
    """Make the output this engine's, or refuse it. The first job creates each owner record
    (``store.create_once``: of two jobs started at once with different engines one is
    refused); a record already there is only read."""
    record = encode_json(
        {"engine": spec.engine_id, "engine_hash": spec.engine_hash, "refinery_version": __version__}
    )
    for url in owner_urls(config):
        if not store.exists(url):
            store.create_once(url, record)
        owner = json.loads(store.read_bytes(url))
        same_engine(config, spec, owner.get("engine_hash"), owner.get("engine"), url)


def clean_temps(config: RefineConfig) -> None:
    """Temp files of killed runs on this host, in the output and in the stats directory (local
    directories only; other hosts' files are theirs to clean)."""
    places = {p for p in (config.output, stats_dir(config)) if not p.startswith("pipe:")}
    for place in sorted(places):
        store.remove_stale_temps(place)
