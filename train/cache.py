"""The decoded cache: a shard set's small images decoded once into memory-mapped arrays.

Training reads the same few thousand small images (eye crops, depth crops, small street frames)
thousands of times. Decoding them once, ``refinery cache SHARDS`` or the first training run on
a set, turns every later batch into one slice of a memory-mapped array: no tar member read, no
JSON parsed, no image decoded, no per-sample Python (FFCV's idea, for WebDataset shards).

Where it lives. ``$REFINERY_CACHE`` when that is set (a folder; any path), otherwise
``.refinery-cache/`` in the folder of the set's first shard, so a cache sits beside its data
(add ``.refinery-cache/`` to an ignore list if the shards live in a repository). One folder per
(shard set, domain, label mode, image component)::

    ROOT/<domain>-<labels|images>-<key>/   key: sha256 of the shards' names, sizes and contents
        meta.json       format, key, shards (url, name, size, sha256, first index, count),
                        image shape and dtype, the rejects (key, reason, detail), build seconds,
                        bytes on disk
        image.bin       (N, H, W[, C]) uint8/uint16, raw; N counts every sample the shards
                        hold, rejected ones as zeros (they keep their place in the order)
        valid.npy       (N,) bool: decoded and checked
        labeled.npy     (N,) bool: carries labels (``refinery.samples.is_labeled``)
        seg.bin, depth.bin + seg.present.npy, depth.present.npy   scenes' per-pixel labels
        keys.json, labels.json   each sample's key and decoded ``json`` (None when absent)
    ROOT/<name>.lock    held while one process builds it (the others wait, then reuse it)

A cache is written under a temporary name and renamed last, so a folder with the final name is
complete; on opening, its ``meta.json`` key and format and every array's size are checked
against the shards as they are now, and anything that does not match (a shard rewritten, a
file cut short) is rebuilt, never trusted. The key hashes every shard's bytes, so opening costs
one read of the set (hundreds of MB/s), far less than decoding it.

Only small images are cached (``SMALL_IMAGE_BYTES`` per image, 1 MiB: a 256x512 RGB frame
fits, a 1024x2048 scene does not) and only local shards (``open_cache`` returns None
otherwise, and the stream decodes as before). Rejected samples (undecodable, malformed, a size
other than the set's first image) are found and counted at build time, with key and reason;
the stream hands each to its handler when the order reaches it, as decoding it would.

Set ``REFINERY_CACHE=off`` to never cache (every stream decodes as it reads).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refinery.samples import (
    MALFORMED,
    SampleError,
    decode_component,
    decode_draws,
    image_component,
    is_labeled,
)
from refinery.shards import (
    Handler,
    _is_local,
    _local_path,
    expand_urls,
    in_batches,
    read,
    reraise,
    shard_name,
    tar_samples,
)

FORMAT = 2
SMALL_IMAGE_BYTES = 1 << 20
EXTRAS = {"seg.png": "seg", "depth.png": "depth"}  # per-pixel labels kept beside the image
CHUNK = 64


class NotCacheable(Exception):
    """The set cannot be cached (not local, or its images are not small); stream it instead."""


def cache_root(shards: Sequence[str]) -> Path:
    """``$REFINERY_CACHE``, or ``.refinery-cache`` in the folder of the first shard."""
    where = os.environ.get("REFINERY_CACHE")
    if where:
        return Path(where)
    return Path(_local_path(shards[0])).parent / ".refinery-cache"


def caching_disabled() -> bool:
    return os.environ.get("REFINERY_CACHE", "").lower() in ("off", "0", "no", "false")


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def describe_shards(shards: Sequence[str]) -> list[dict[str, Any]]:
    """Name, size and sha256 of each local shard, in the listed order (what the key hashes)."""
    out = []
    for url in shards:
        path = _local_path(url)
        out.append(
            {"url": url, "name": shard_name(url), "size": os.path.getsize(path),
             "sha256": _file_sha256(path)}
        )  # fmt: skip
    return out


def set_key(
    described: Sequence[dict[str, Any]], *, domain: str, labels: bool, image_key: str | None
) -> str:
    what = {
        "format": FORMAT,
        "domain": domain,
        "labels": labels,
        "image_key": image_key,
        "shards": [(d["name"], d["size"], d["sha256"]) for d in described],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class DecodedCache:
    """An opened cache: arrays indexed by the sample's place in the set (shards in the listed
    order, samples in shard order), rejected places included."""

    path: Path
    meta: dict[str, Any]
    image: np.ndarray  # (N, H, W[, C]) memory-mapped
    valid: np.ndarray  # (N,) bool
    labeled: np.ndarray  # (N,) bool
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # "seg.png": (N, H, W) mmap
    present: dict[str, np.ndarray] = field(default_factory=dict)  # "seg.png": (N,) bool
    built: bool = False  # built by this call (else reused)
    _keys: list[str] | None = None
    _labels: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.valid)

    @property
    def shard_ranges(self) -> list[tuple[int, int]]:
        """(first index, count) of each shard, in the listed order."""
        return [(s["start"], s["count"]) for s in self.meta["shards"]]

    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = json.loads((self.path / "keys.json").read_text())
        return self._keys

    @property
    def labels(self) -> list[Any]:
        if self._labels is None:
            self._labels = json.loads((self.path / "labels.json").read_text())
        return self._labels

    def url_of(self, index: int) -> str:
        for shard in self.meta["shards"]:
            if shard["start"] <= index < shard["start"] + shard["count"]:
                return shard["url"]
        raise IndexError(index)

    def rejects(self) -> dict[int, SampleError]:
        """Rejected samples by index (decoding and checking); tar-level ones have index -1."""
        return {
            int(r["index"]): SampleError(
                r["reason"], r["detail"], key=r["key"], component=r["component"], url=r["url"]
            )
            for r in self.meta["rejects"]
            if r["index"] >= 0
        }

    def tar_rejects(self) -> dict[int, list[SampleError]]:
        """Samples a shard's tar itself rejected (truncated, duplicate key...), by shard."""
        out: dict[int, list[SampleError]] = {}
        for r in self.meta["rejects"]:
            if r["index"] < 0:
                error = SampleError(
                    r["reason"], r["detail"], key=r["key"], component=r["component"], url=r["url"]
                )
                out.setdefault(int(r["shard"]), []).append(error)
        return out

    def sample(self, index: int) -> dict[str, Any]:
        """A decoded-sample-like dict (key, shard, json, image, per-pixel labels) for one index."""
        out: dict[str, Any] = {"__key__": self.keys[index], "__url__": self.url_of(index)}
        label = self.labels[index]
        if label is not None:
            out["json"] = label
        out[self.meta["image_component"]] = self.image[index]
        for name, array in self.extras.items():
            if self.present[name][index]:
                out[name] = array[index]
        return out

    @property
    def complete(self) -> bool:
        """Whether ``sample`` gives every component the shards hold (the image, json and the
        per-pixel labels it keeps), so a reader sees what decoding would give it."""
        kept = {self.meta["image_component"], "json", *self.extras}
        return set(self.meta["components"]) <= kept

    def summary(self) -> str:
        m = self.meta
        verb = "built" if self.built else "reused"
        return (
            f"cache {self.path}: {verb}; {len(self)} samples ({len(m['rejects'])} rejected) "
            f"from {len(m['shards'])} shards, images {tuple(m['shape'])} {m['dtype']}, "
            f"{m['bytes'] / 2**20:.1f} MiB on disk, built in {m['build_seconds']:.1f} s"
        )


def _open(path: Path, key: str) -> DecodedCache | None:
    """The cache at ``path`` when it is complete and matches ``key``; None otherwise."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT or meta.get("key") != key:
            return None
        n, shape, dtype = meta["samples"], tuple(meta["shape"]), np.dtype(meta["dtype"])

        def mapped(name: str, dt: np.dtype, tail: tuple[int, ...]) -> np.ndarray:
            file = path / name
            if file.stat().st_size != n * int(np.prod(tail, dtype=np.int64)) * dt.itemsize:
                raise ValueError(f"{file} has the wrong size")
            return np.memmap(file, dtype=dt, mode="r", shape=(n, *tail))

        def flags(name: str) -> np.ndarray:
            array = np.load(path / name)
            if array.shape != (n,) or array.dtype != np.bool_:
                raise ValueError(f"{path / name} has the wrong shape")
            return array

        cache = DecodedCache(
            path, meta, mapped("image.bin", dtype, shape), flags("valid.npy"), flags("labeled.npy")
        )
        for name, stem in EXTRAS.items():
            if stem in meta["extras"]:
                extra = meta["extras"][stem]
                cache.extras[name] = mapped(f"{stem}.bin", np.dtype(extra["dtype"]), shape[:2])
                cache.present[name] = flags(f"{stem}.present.npy")
        return cache
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_cache(
    urls: str | Sequence[str],
    *,
    domain: str,
    labels: bool = True,
    image_key: str | None = None,
    decode: Callable[[Iterator[list], Callable], Iterator[list]] | None = None,
    root: Path | None = None,
) -> DecodedCache:
    """The decoded cache of a shard set, built on first use (under a lock, so concurrent ranks
    build it once). Raises ``NotCacheable`` for a set it cannot cache. ``decode`` maps decoding
    work over chunks (e.g. in worker processes; in this thread by default)."""
    shards = expand_urls(urls)
    if not shards:
        raise ValueError(f"no shards in {urls!r}")
    if not all(_is_local(u) for u in shards):
        raise NotCacheable("only local shards are cached")
    _check_small(shards[0], domain, image_key)  # before hashing a set of large frames
    described = describe_shards(shards)
    key = set_key(described, domain=domain, labels=labels, image_key=image_key)
    root = Path(root) if root is not None else cache_root(shards)
    name = f"{domain}-{'labels' if labels else 'images'}-{key}"
    final = root / name
    cache = _open(final, key)
    if cache is not None:
        return cache
    with _locked(root / f"{name}.lock"):
        cache = _open(final, key)  # built by another process while this one waited
        if cache is not None:
            return cache
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # a killed build's leftovers (the lock is ours)
        shutil.rmtree(final, ignore_errors=True)  # stale or partial: rebuilt, never trusted
        try:
            _build(tmp, described, key=key, domain=domain, labels=labels,
                   image_key=image_key, decode=decode)  # fmt: skip
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.replace(tmp, final)
    cache = _open(final, key)
    if cache is None:
        raise RuntimeError(f"{final}: the cache just built does not open")
    cache.built = True
    return cache


def _check_small(url: str, domain: str, image_key: str | None) -> None:
    """Raise NotCacheable when the first decodable image of the shard is not small."""
    for sample in tar_samples(url, handler=lambda error: None):
        try:
            name = image_key or image_component(sample, domain)
        except SampleError:
            continue
        if name not in sample:
            continue
        with contextlib.suppress(ValueError):
            array = decode_component(name, sample[name], domain)
            if isinstance(array, np.ndarray) and array.nbytes > SMALL_IMAGE_BYTES:
                raise NotCacheable(
                    f"images of {array.shape} are not small (> {SMALL_IMAGE_BYTES} bytes): "
                    "streamed, not cached"
                )
            return


class _Writer:
    """Appends one array per sample to a raw file, padding missing places with zeros."""

    def __init__(self, path: Path, dtype: np.dtype, tail: tuple[int, ...]):
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.zero = np.zeros(tail, dtype).tobytes()
        self.dtype, self.tail, self.count = dtype, tail, 0

    def put(self, index: int, array: np.ndarray | None) -> None:
        while self.count < index:
            self.file.write(self.zero)
            self.count += 1
        self.file.write(self.zero if array is None else np.ascontiguousarray(array).tobytes())
        self.count += 1

    def close(self, total: int) -> None:
        while self.count < total:
            self.file.write(self.zero)
            self.count += 1
        self.file.close()


def _inline(chunks: Iterator[list], work: Callable) -> Iterator[list]:
    return (work(chunk) for chunk in chunks)


def _build(
    tmp: Path,
    described: list[dict[str, Any]],
    *,
    key: str,
    domain: str,
    labels: bool,
    image_key: str | None,
    decode: Callable | None,
) -> None:
    began = time.perf_counter()
    tmp.mkdir(parents=True)
    rejects: list[dict[str, Any]] = []
    shard_of: list[int] = []
    work = functools.partial(decode_draws, domain=domain, labels=labels)  # picklable
    columns = _Columns(tmp, component=image_key)
    raw = _raw_samples(described, rejects, shard_of)
    for chunk in (decode or _inline)(in_batches(raw, CHUNK), work):
        for index, sample in chunk:
            sample, array = columns.image_of(sample, domain, image_key)
            if isinstance(sample, SampleError):
                rejects.append({**sample.as_record(), "index": index, "shard": shard_of[index]})
                columns.reject(index, sample)
            else:
                columns.add(index, sample, array)
    if columns.image is None:
        raise ValueError(
            f"no usable {domain} samples in {len(described)} shards "
            f"({described[0]['url']}...): {len(rejects)} rejected"
            + (f", first: {rejects[0]['key']!r}: {rejects[0]['detail']}" if rejects else "")
        )
    columns.save()
    meta = {
        "format": FORMAT,
        "key": key,
        "domain": domain,
        "labels": labels,
        "image_component": columns.component,
        "components": sorted(columns.components),
        "samples": len(columns.valid),
        "shape": list(columns.shape),
        "dtype": columns.image.dtype.str,
        "extras": {
            EXTRAS[n]: {"dtype": w.dtype.str, "samples": int(sum(columns.present[n]))}
            for n, w in columns.extras.items()
        },
        "shards": described,
        "rejects": rejects,
        "build_seconds": time.perf_counter() - began,
    }
    meta["bytes"] = sum(p.stat().st_size for p in tmp.iterdir())
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks it complete


def _raw_samples(
    described: list[dict[str, Any]], rejects: list[dict[str, Any]], shard_of: list[int]
) -> Iterator[tuple[int, dict]]:
    """Every tar sample of the shards in order with its index; notes each shard's first index
    and count in ``described``, each sample's shard in ``shard_of`` and each unreadable tar
    member in ``rejects``."""
    index = 0
    for s, shard in enumerate(described):
        shard["start"] = index

        def tar_reject(error: SampleError, s: int = s) -> None:
            rejects.append({**error.as_record(), "index": -1, "shard": s})

        for sample in tar_samples(shard["url"], handler=tar_reject):
            shard_of.append(s)
            yield index, sample
            index += 1
        shard["count"] = index - shard["start"]


class _Columns:
    """The cache's per-sample columns as ``_build`` fills them in sample order: key, label,
    valid, labeled, the image (the set's first image fixes shape and dtype) and the extras."""

    def __init__(self, tmp: Path, component: str | None):
        self.tmp = tmp
        self.keys: list[str] = []
        self.components: set[str] = set()
        self.labels: list[Any] = []
        self.valid: list[bool] = []
        self.labeled: list[bool] = []
        self.image: _Writer | None = None
        self.shape: tuple[int, ...] | None = None
        self.extras: dict[str, _Writer] = {}
        self.present: dict[str, list[bool]] = {name: [] for name in EXTRAS}
        self.component = component

    def image_of(
        self, sample: dict | SampleError, domain: str, image_key: str | None
    ) -> tuple[dict | SampleError, np.ndarray | None]:
        """The sample and its image; a SampleError instead of the sample when it has no image
        or one of another size than the set's first (NotCacheable if that one is not small)."""
        if isinstance(sample, SampleError):
            return sample, None
        name = image_key or image_component(sample, domain)
        if name not in sample:
            error = SampleError(
                MALFORMED, f"no component {name!r}", key=sample["__key__"],
                url=sample.get("__url__"),
            )  # fmt: skip
            return error, None
        array = sample[name]
        self.component = self.component or name
        if self.shape is None:
            if array.nbytes > SMALL_IMAGE_BYTES:
                raise NotCacheable(
                    f"images of {array.shape} are not small (> {SMALL_IMAGE_BYTES} "
                    "bytes): streamed, not cached"
                )
            self.shape = array.shape
            self.image = _Writer(self.tmp / "image.bin", array.dtype, self.shape)
        elif array.shape != self.shape or array.dtype != self.image.dtype:
            error = SampleError(
                MALFORMED,
                f"image {array.shape} {array.dtype} differs from the set's first "
                f"{self.shape} {self.image.dtype}: one cache holds one size",
                key=sample["__key__"], component=name, url=sample.get("__url__"),
            )  # fmt: skip
            return error, None
        return sample, array

    def reject(self, index: int, error: SampleError) -> None:
        """A rejected sample keeps its place: its key, no label, zeros for its arrays."""
        self.keys.append(error.key or "")
        self.labels.append(None)
        self.valid.append(False)
        self.labeled.append(False)
        for name in EXTRAS:
            self.present[name].append(False)
        if self.image is not None:
            self.image.put(index, None)

    def add(self, index: int, sample: dict, array: np.ndarray) -> None:
        """A valid sample: its key, label, image and the extras of the image's height and width."""
        self.components.update(k for k in sample if not k.startswith("__"))
        self.keys.append(sample["__key__"])
        self.labels.append(sample.get("json"))
        self.valid.append(True)
        self.labeled.append(is_labeled(sample))
        self.image.put(index, array)
        for name, stem in EXTRAS.items():
            extra = sample.get(name) if name != self.component else None  # hand: the image
            ok = isinstance(extra, np.ndarray) and extra.shape[:2] == self.shape[:2]
            self.present[name].append(ok)
            if ok:
                if name not in self.extras:
                    self.extras[name] = _Writer(
                        self.tmp / f"{stem}.bin", extra.dtype, self.shape[:2]
                    )
                self.extras[name].put(index, extra)

    def save(self) -> None:
        """Pads and closes the raw files; writes the flags, keys and labels beside them."""
        total = len(self.valid)
        self.image.close(total)
        for writer in self.extras.values():
            writer.close(total)
        np.save(self.tmp / "valid.npy", np.array(self.valid, bool))
        np.save(self.tmp / "labeled.npy", np.array(self.labeled, bool))
        for name in self.extras:
            np.save(self.tmp / f"{EXTRAS[name]}.present.npy", np.array(self.present[name], bool))
        (self.tmp / "keys.json").write_text(json.dumps(self.keys))
        (self.tmp / "labels.json").write_text(json.dumps(self.labels))


def read_cached(
    urls: str | Sequence[str],
    domain: str | None = None,
    *,
    handler: Handler = reraise,
    labels: bool = True,
) -> Iterator[dict[str, Any]]:
    """``refinery.shards.read`` through the decoded cache: the same decoded samples in the same
    order, from the memory-mapped arrays (``evaluate`` and ``train-task`` load their sets so).
    A set the cache cannot give exactly as decoding would (not local, not small, a component
    the cache does not keep, or any rejected sample, whose error the reading reports as it
    always has) is read and decoded as before."""
    if domain is None or caching_disabled():
        return read(urls, domain, handler=handler, labels=labels)
    try:
        cache = open_cache(urls, domain=domain, labels=labels)
    except (NotCacheable, OSError):
        return read(urls, domain, handler=handler, labels=labels)
    if cache.meta["rejects"] or not cache.complete:
        return read(urls, domain, handler=handler, labels=labels)
    return (cache.sample(i) for i in range(len(cache)))
