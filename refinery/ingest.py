"""The ingest driver: any registered format's source tree → shards of contract 1, resumably.

    ingest("unityeyes", "UnityEyes/", "shards/unityeyes", options={"size": (36, 60)})

is a pipeline of small stages::

    open_format(...).items()  ->  plan shards (items i*shard_size ... (i+1)*shard_size - 1)
        ->  skip finished shards  ->  convert the other items (in-process or a spawn pool, in
        order)  ->  check each sample  ->  ShardWriter + stats file per shard
        ->  ingest.json + rejects.jsonl

Shards. Items are grouped by *position*, not by what survived, so a rerun maps the same items to
the same shard whatever was rejected. Shard ``i`` is ``{out}/{prefix}-{i:06d}.tar`` with its
stats ``{prefix}-{i:06d}.stats.json``; both appear atomically (temporary name, rename), the stats
file after the shard. A shard is finished when both exist, the stats parse and their hash of
the shard's item names matches the current source tree: finished shards are skipped on a rerun,
any other shard is redone from scratch, so a killed ingest resumes and writes each key once.
An ``out`` that holds shards written with another format, other options or another shard size,
or shards past this ingest's last one, is refused rather than mixed with this one.

Rejects. ``convert`` raising ``SampleError`` (or any other exception, wrapped into one that
names the item's file) rejects the item; a sample whose key was already written by this ingest
is rejected as ``duplicate-key`` (keys of shards finished by an earlier run are read back from
their stats; all keys are held in memory, ~100 bytes each). Nothing disappears silently: per shard,
``items = items_converted + items_rejected + items_filtered`` and
``samples_converted = samples_written + samples_rejected``, and every reject is listed with
url, key, component, reason and detail. With ``strict=True`` the first reject raises and the
shard being written is dropped (no partial shard appears).

Settings. ``shard_size`` counts items; a format may set a class attribute
``default_shard_size`` (MPIIGaze: 2 day files) used when none is given, else 1000. Stats and
``ingest.json`` record the format's options with its defaults filled in.

Filtering. A format option that selects data (UnityEyes' head-pose range) is not an error: the
format raises ``Filtered(reason, detail)`` from ``convert`` and the item is counted under
``filtered`` by reason, never as a reject, also with ``strict=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import multiprocessing
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from refinery import __version__, store
from refinery.formats import Format, Item, domain_of, format_info, open_format
from refinery.samples import (
    DUPLICATE,
    MALFORMED,
    MISSING,
    UNDECODABLE,
    SampleError,
    missing_components,
)

# refinery.shards (webdataset, which imports torch) and fsspec are imported where they are used:
# spawned workers import this module and need neither, and torch alone takes seconds to load.

DEFAULT_SHARD_SIZE = 1000  # items per shard for formats that do not say otherwise
SUMMARY_FILE = "ingest.json"
REJECTS_FILE = "rejects.jsonl"


class Filtered(Exception):
    """Raised by a format's ``convert`` for an item its options leave out (not an error).

    ``reason`` names the filter (e.g. ``"head-pose"``); reports count filtered items by it.
    """

    def __init__(self, reason: str, detail: str, *, key: str | None = None, url: str | None = None):
        self.reason = reason
        self.detail = detail
        self.key = key
        self.url = url
        super().__init__(f"{url or '<item>'}: filtered ({reason}): {detail}")

    def __reduce__(self):  # keyword arguments survive pickling (worker processes)
        return (_filtered, (self.reason, self.detail, self.key, self.url))

    def as_record(self) -> dict[str, Any]:
        return {"url": self.url, "key": self.key, "reason": self.reason, "detail": self.detail}


def _filtered(reason: str, detail: str, key: str | None, url: str | None) -> Filtered:
    return Filtered(reason, detail, key=key, url=url)


# -- the summary ------------------------------------------------------------------------------


@dataclass
class IngestSummary:
    """What an ingest did, over all its shards (skipped finished ones included)."""

    format: str
    src: str
    out: str
    options: dict[str, Any]
    shard_size: int
    shards: list[str] = field(default_factory=list)  # shard file names, in order
    shards_skipped: int = 0  # finished by an earlier run
    items: int = 0
    items_converted: int = 0
    items_rejected: int = 0
    items_filtered: int = 0
    samples_converted: int = 0
    samples_written: int = 0
    samples_rejected: int = 0  # duplicate keys
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> rejects
    filtered: Counter[str] = field(default_factory=Counter)  # reason -> filtered items
    rejects: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def add(self, stats: Mapping[str, Any]) -> None:
        """Fold one shard's stats into the totals."""
        for name in (
            "items",
            "items_converted",
            "items_rejected",
            "items_filtered",
            "samples_converted",
            "samples_written",
            "samples_rejected",
        ):
            setattr(self, name, getattr(self, name) + int(stats[name]))
        self.rejected.update(stats["rejected"])
        self.filtered.update(stats["filtered"])
        self.rejects.extend(stats["rejects"])

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "src": self.src,
            "options": self.options,
            "shard_size": self.shard_size,
            "shards": self.shards,
            "shards_skipped": self.shards_skipped,
            "items": self.items,
            "items_converted": self.items_converted,
            "items_rejected": self.items_rejected,
            "items_filtered": self.items_filtered,
            "samples_converted": self.samples_converted,
            "samples_written": self.samples_written,
            "samples_rejected": self.samples_rejected,
            "rejected": dict(sorted(self.rejected.items())),
            "filtered": dict(sorted(self.filtered.items())),
            "seconds": round(self.seconds, 3),
            "refinery": __version__,
        }

    def lines(self) -> list[str]:
        n = len(self.shards)
        skipped = f" ({self.shards_skipped} already finished)" if self.shards_skipped else ""
        out = [
            f"ingest {self.format}: {self.src} -> {self.out}",
            f"  {n} shard{'s' if n != 1 else ''}{skipped}",
            f"  items: {self.items} read = {self.items_converted} converted + "
            f"{self.items_rejected} rejected + {self.items_filtered} filtered",
            f"  samples: {self.samples_written} written"
            + (f", {self.samples_rejected} rejected" if self.samples_rejected else ""),
        ]
        if self.filtered:
            parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.filtered.items()))
            out.append(f"  filtered: {parts}")
        if self.rejected:
            parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.rejected.items()))
            out.append(f"  rejected: {self.total_rejected} ({parts})")
            for record in self.rejects[:5]:
                out.append(f"    {_describe(record)}")
            if len(self.rejects) > 5:
                out.append(f"    ... {len(self.rejects) - 5} more in {REJECTS_FILE}")
        else:
            out.append("  rejected: none")
        return out


def _describe(record: Mapping[str, Any]) -> str:
    error = SampleError(
        record["reason"],
        record["detail"],
        key=record.get("key"),
        component=record.get("component"),
        url=record.get("url"),
    )
    return str(error)


# -- converting one item (in this process or a worker) -----------------------------------------

# An outcome travels from a worker as plain data: ("ok", samples), ("rejected", record) or
# ("filtered", record). SampleError itself does not survive pickling (its __init__ takes more
# than the message).
Outcome = tuple[str, Any]


def _reject_record(error: SampleError, item: Item) -> dict[str, Any]:
    if error.url is None:
        error.url = item.paths[0] if item.paths else item.name
    return error.as_record()


def _wrap(exc: Exception, item: Item) -> SampleError:
    """Any exception from reading an item, as a reject naming its file and a reason."""
    if isinstance(exc, FileNotFoundError):
        reason = MISSING
    elif isinstance(exc, OSError):
        reason = UNDECODABLE
    else:
        reason = MALFORMED
    url = exc.filename if isinstance(exc, OSError) and exc.filename else None
    return SampleError(
        reason,
        f"{type(exc).__name__}: {exc}",
        url=str(url) if url else (item.paths[0] if item.paths else item.name),
    )


def _check_sample(sample: Any, domain: str) -> None:
    """A format's output must be writable: the domain's components, as bytes (the key is
    checked where the shard is written)."""
    if not isinstance(sample, Mapping):
        raise SampleError(MALFORMED, f"convert gave a {type(sample).__name__}, not a sample")
    key = sample.get("__key__")
    missing_components(sample, domain, key=key if isinstance(key, str) else None)
    for name, value in sample.items():
        if not name.startswith("__") and not isinstance(value, bytes):
            raise SampleError(
                MALFORMED,
                f"component is {type(value).__name__}, not encoded bytes",
                key=key,
                component=name,
            )


def convert_item(reader: Format, item: Item, domain: str) -> Outcome:
    """Convert one item; never raises for bad data (only for KeyboardInterrupt and the like)."""
    try:
        samples = reader.convert(item)
        if not isinstance(samples, list):
            raise SampleError(MALFORMED, f"convert gave a {type(samples).__name__}, not a list")
        for sample in samples:
            _check_sample(sample, domain)
    except Filtered as exc:
        if exc.url is None:
            exc.url = item.paths[0] if item.paths else item.name
        return ("filtered", exc.as_record())
    except SampleError as error:
        return ("rejected", _reject_record(error, item))
    except Exception as exc:
        return ("rejected", _reject_record(_wrap(exc, item), item))
    return ("ok", samples)


_WORKER: tuple[Format, str] | None = None


def _init_worker(format_name: str, src: str, options: dict[str, Any]) -> None:
    # Spawned workers rebuild the reader from its name, root and options (its domain with it:
    # the ``images`` format takes it from an option).
    global _WORKER
    reader = open_format(format_name, src, **options)
    _WORKER = (reader, domain_of(reader, format_info(format_name)))


def _work(item: Item) -> Outcome:
    assert _WORKER is not None, "worker used before _init_worker"
    return convert_item(_WORKER[0], item, _WORKER[1])


# -- files in out ------------------------------------------------------------------------------


def _read_text(url: str) -> str:
    return store.read_bytes(url).decode("utf-8")


def _write_text(url: str, text: str) -> None:
    """Write a small text file atomically (``refinery.store.write_atomic``)."""
    store.write_atomic(url, text.encode("utf-8"))


def _remove_stale_temporaries(out: str, prefix: str) -> None:
    """Drop temporary files a killed ingest left in a local ``out`` (their writer is gone:
    ``refinery.store.stale_temp``, this process's own included, as nothing is written yet).
    Only this ingest's files (its shards, stats, ``ingest.json`` and ``rejects.jsonl``), no one
    else's; one named for another host (a node sharing ``out``) is left alone."""
    owners = (
        rf"{re.escape(prefix)}-\d{{6}}\.(?:tar|stats\.json)"
        rf"|{re.escape(SUMMARY_FILE)}|{re.escape(REJECTS_FILE)}"
    )
    ours = re.compile(rf"^\.(?:{owners})\.tmp-")
    store.remove_stale_temps(out, ours=lambda name: ours.match(name) is not None, this_process=True)


# -- planning ---------------------------------------------------------------------------------


@dataclass
class _Shard:
    index: int
    name: str  # "<prefix>-000007.tar"
    url: str
    stats_url: str
    items: list[Item]
    item_hash: str
    stats: dict[str, Any] | None = None  # set when finished by an earlier run


def _item_hash(items: Iterable[Item]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.name.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as they read back from JSON (tuples become lists), for comparing runs."""
    return json.loads(json.dumps(dict(options), sort_keys=True))


def _finished_stats(shard: _Shard, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The earlier run's stats if this shard is finished; raises if it used other settings."""
    if not (store.exists(shard.stats_url) and store.exists(shard.url)):
        return None
    try:
        stats = json.loads(_read_text(shard.stats_url))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # a stats file we cannot read is as good as none: redo the shard
    if not isinstance(stats, dict):
        return None
    theirs = {name: stats.get(name) for name in settings}
    if theirs != dict(settings):
        raise ValueError(
            f"{shard.stats_url} was written by an ingest with other settings "
            f"({json.dumps(theirs, sort_keys=True)}; now {json.dumps(dict(settings), sort_keys=True)}); "
            "use another --out (or --prefix), or remove the old shards"
        )
    if stats.get("item_hash") != shard.item_hash:
        return None  # the source tree changed under this shard: redo it
    return stats


def _plan(
    items: list[Item], out: str, prefix: str, shard_size: int, settings: Mapping[str, Any]
) -> list[_Shard]:
    names = store.listing(out)
    count = math.ceil(len(items) / shard_size)
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d{{6}})\.(?:tar|stats\.json)$")
    stale = sorted(n for n in names if (m := pattern.match(n)) and int(m.group(1)) >= count)
    if stale:
        raise ValueError(
            f"{out} holds {', '.join(stale[:3])}{' ...' if len(stale) > 3 else ''} past this "
            f"ingest's {count} shard{'s' if count != 1 else ''}: they come from an earlier ingest "
            "of another source tree or shard size; remove them or use another --out"
        )
    _remove_stale_temporaries(out, prefix)
    shards = []
    for index in range(count):
        chunk = items[index * shard_size : (index + 1) * shard_size]
        name = f"{prefix}-{index:06d}.tar"
        shard = _Shard(
            index=index,
            name=name,
            url=store.join(out, name),
            stats_url=store.join(out, f"{prefix}-{index:06d}.stats.json"),
            items=chunk,
            item_hash=_item_hash(chunk),
        )
        shard.stats = _finished_stats(shard, settings)
        shards.append(shard)
    return shards


# -- the driver -------------------------------------------------------------------------------


def accepted_options(format_name: str) -> set[str] | None:
    """Keyword options the format's constructor takes (None: it takes any)."""
    parameters = inspect.signature(format_info(format_name).factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return {p.name for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def resolved_options(format_name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The format's keyword defaults updated with ``options``: what the shards were made with."""
    parameters = inspect.signature(format_info(format_name).factory).parameters
    defaults = {
        p.name: p.default
        for p in parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }
    return {**defaults, **options}


def _outcomes(
    pending: list[Item],
    *,
    reader: Format,
    domain: str,
    format_name: str,
    src: str,
    options: dict[str, Any],
    workers: int,
    stack: contextlib.ExitStack,
) -> Iterator[Outcome]:
    if workers <= 1 or len(pending) <= 1:
        return (convert_item(reader, item, domain) for item in pending)
    # spawn, not fork: the parent may hold threads (tqdm, OpenCV, torch) that fork would copy
    # in a locked state. Ordered imap keeps shards byte-identical to a one-process run.
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(
        min(workers, len(pending)), initializer=_init_worker, initargs=(format_name, src, options)
    )
    stack.callback(pool.terminate)
    chunksize = max(1, min(16, len(pending) // (workers * 8)))
    return pool.imap(_work, pending, chunksize=chunksize)


def ingest(
    format_name: str,
    src: str,
    out: str,
    *,
    shard_size: int | None = None,
    strict: bool = False,
    workers: int = 1,
    prefix: str | None = None,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,  # a bar on a terminal, else a plain line every 30 s
) -> IngestSummary:
    """Turn the source tree ``src`` of format ``format_name`` into shards under ``out``.

    ``shard_size`` counts items (UnityEyes: images; MPIIGaze: day files); by default the
    format's ``default_shard_size`` or 1000. ``options`` are the format's keyword options; an
    option it does not take raises ``TypeError`` naming it. Returns the summary; also writes
    ``{out}/ingest.json`` and ``{out}/rejects.jsonl``.
    """
    from refinery.progress import Progress

    start = time.perf_counter()
    options = dict(options or {})
    info = format_info(format_name)
    accepted = accepted_options(format_name)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise TypeError(
            f"format {format_name!r} does not take option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)} (it takes: {', '.join(sorted(accepted)) or 'none'})"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if out.startswith("pipe:"):
        raise ValueError("ingest writes a directory of shards and stats; pipe: is not one")
    prefix = prefix or format_name
    if not prefix or "/" in prefix or "." in prefix:
        raise ValueError(f"shard prefix {prefix!r} must be a non-empty name without '/' or '.'")

    reader = open_format(format_name, src, **options)
    domain = domain_of(reader, info)
    if shard_size is None:
        shard_size = int(getattr(reader, "default_shard_size", DEFAULT_SHARD_SIZE))
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    items = list(reader.items())
    if not items:
        raise ValueError(f"format {format_name!r} found nothing to ingest in {src!r}")
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        twice = sorted(n for n, c in Counter(names).items() if c > 1)
        raise ValueError(f"format {format_name!r} lists items twice: {', '.join(twice[:5])}")

    # Recorded with the defaults filled in, so "--size 35x55" and no --size are one setting.
    # a reader whose defaults depend on another option (images: --size by --domain) says what
    # it resolved them to
    resolved = {**resolved_options(format_name, options), **getattr(reader, "resolved", {})}
    json_options = _jsonable(resolved)
    settings = {"format": format_name, "options": json_options, "shard_size": shard_size}
    shards = _plan(items, out, prefix, shard_size, settings)
    summary = IngestSummary(
        format=format_name,
        src=str(src),
        out=out,
        options=json_options,
        shard_size=shard_size,
        shards=[s.name for s in shards],
    )

    # Keys of shards finished earlier count for duplicates in the shards written now.
    seen: dict[str, str] = {}
    for shard in shards:
        if shard.stats is not None:
            for key in shard.stats.get("keys", []):
                seen.setdefault(key, shard.name)
    todo = [s for s in shards if s.stats is None]
    pending = [item for shard in todo for item in shard.items]

    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            Progress(len(pending), what=f"ingest {format_name}", unit="items", enabled=progress)
        )
        outcomes = _outcomes(
            pending,
            reader=reader,
            domain=domain,
            format_name=format_name,
            src=src,
            options=options,
            workers=workers,
            stack=stack,
        )
        for shard in todo:
            shard.stats = _write_shard(
                shard, outcomes, settings=settings, seen=seen, strict=strict, bar=bar
            )

    for shard in shards:
        assert shard.stats is not None
        summary.add(shard.stats)
    summary.shards_skipped = len(shards) - len(todo)
    summary.seconds = time.perf_counter() - start
    _write_text(store.join(out, SUMMARY_FILE), json.dumps(summary.to_json(), indent=2) + "\n")
    _write_text(
        store.join(out, REJECTS_FILE),
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in summary.rejects),
    )
    return summary


def _write_shard(
    shard: _Shard,
    outcomes: Iterator[Outcome],
    *,
    settings: Mapping[str, Any],
    seen: dict[str, str],
    strict: bool,
    bar: Any,
) -> dict[str, Any]:
    """Write one shard from its items' outcomes, then its stats; returns the stats."""
    from refinery.shards import ShardWriter, check_key

    start = time.perf_counter()
    counts = Counter()
    rejected: Counter[str] = Counter()
    filtered: Counter[str] = Counter()
    rejects: list[dict[str, Any]] = []
    keys: list[str] = []
    added: list[str] = []  # keys this attempt put in `seen`, taken back if it fails

    def reject(record: dict[str, Any]) -> None:
        if strict:
            raise SampleError(
                record["reason"],
                record["detail"],
                key=record.get("key"),
                component=record.get("component"),
                url=record.get("url"),
            )
        rejected[record["reason"]] += 1
        rejects.append(record)
        bar.set(rejected=bar.fields.get("rejected", 0) + 1)

    try:
        with ShardWriter(shard.url) as writer:
            for item in shard.items:
                kind, value = next(outcomes)
                bar.update(1)
                if kind == "filtered":
                    counts["items_filtered"] += 1
                    filtered[value["reason"]] += 1
                    continue
                if kind == "rejected":
                    counts["items_rejected"] += 1
                    reject(value)
                    continue
                counts["items_converted"] += 1
                for sample in value:
                    counts["samples_converted"] += 1
                    key = sample["__key__"]
                    try:
                        check_key(key)
                    except ValueError as exc:
                        counts["samples_rejected"] += 1
                        reject(
                            {
                                "url": item.paths[0] if item.paths else item.name,
                                "key": None,
                                "component": None,
                                "reason": MALFORMED,
                                "detail": f"the format made a bad key: {exc}",
                            }
                        )
                        continue
                    if key in seen:
                        counts["samples_rejected"] += 1
                        where = "this shard" if seen[key] == shard.name else seen[key]
                        reject(
                            {
                                "url": item.paths[0] if item.paths else item.name,
                                "key": key,
                                "component": None,
                                "reason": DUPLICATE,
                                "detail": f"key already written to {where} by this ingest "
                                f"(item {item.name})",
                            }
                        )
                        continue
                    seen[key] = shard.name
                    added.append(key)
                    writer.write(sample)
                    keys.append(key)
                    counts["samples_written"] += 1
    except BaseException:
        for key in added:
            seen.pop(key, None)
        raise
    stats = {
        **settings,
        "shard": shard.name,
        "item_hash": shard.item_hash,
        "items": len(shard.items),
        "items_converted": counts["items_converted"],
        "items_rejected": counts["items_rejected"],
        "items_filtered": counts["items_filtered"],
        "samples_converted": counts["samples_converted"],
        "samples_written": counts["samples_written"],
        "samples_rejected": counts["samples_rejected"],
        "rejected": dict(sorted(rejected.items())),
        "filtered": dict(sorted(filtered.items())),
        "rejects": rejects,
        "keys": keys,
        "seconds": round(time.perf_counter() - start, 3),
        "refinery": __version__,
    }
    _write_text(shard.stats_url, json.dumps(stats, indent=1, sort_keys=True) + "\n")
    return stats
