"""The refine job (contract 3): input shards -> engine -> output shards, 1:1, exactly once.

One process runs three stages over its shards, joined by bounded queues so memory stays flat
whatever the dataset size (STYLE 6)::

    reader thread:  tar members (pass-through bytes, in order)  ┐
                    DALI webdataset reader -> image decode       ┘ joined by key -> batches
    main thread:    engine.refine(batch)                         (batch n)
    writer thread:  encode -> ShardWriter (temp name, rename) -> <name>.stats.json (rename)

so batch n+1 is decoded and batch n-1 encoded and written while the engine runs batch n.

Decoding. DALI's webdataset reader (CPU mode, ``device_id=None``, without a GPU; ``mixed``
decoding with one) decodes the image component; every other component is taken byte for byte
from Refinery's strict tar reader, which also reports truncated tars, duplicate keys and bad
members. DALI stops a whole pipeline at the first undecodable image, so when it fails on a
shard the rest of that shard is decoded with OpenCV sample by sample, where a corrupt image is
one reject; shards the strict reader found structurally broken go to OpenCV directly. PNG
headers are checked before a DALI decode is accepted (DALI would quietly convert an 8-bit PNG
in a 16-bit depth slot), so both paths refuse the same inputs.

Exactly once. A shard is finished when its output and its stats file both exist; the output is
renamed into place first, the stats file last, so a kill at any moment leaves either a finished
shard or one that a rerun redoes from scratch. Conservation: per shard, written + rejected =
read, and every reject is listed with key, component and reason.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import re
import struct
import tarfile
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import fsspec
import numpy as np
from webdataset.tariterators import base_plus_ext

from refinery import __version__
from refinery.samples import (
    DEPTH16,
    GRAY8,
    MALFORMED,
    MISSING,
    RGB8,
    UNDECODABLE,
    SampleError,
    Undecodable,
    decode_image,
    encode_image,
    encode_json,
)
from refinery.shards import (
    ShardWriter,
    _is_local,
    _local_path,
    expand_urls,
    open_url,
    shard_name,
    tar_samples,
    temp_tag,
)

SIZE = "size-outside-engine"  # reject reasons the job adds to refinery.samples.REASONS
NON_FINITE = "non-finite-output"
STATS_SUFFIX = ".stats.json"


class RejectRateExceeded(RuntimeError):
    """More samples were rejected than ``--max-reject-rate`` allows."""


@dataclass(frozen=True, kw_only=True)
class RefineConfig:
    engine: str  # engine directory
    output: str  # directory, fsspec URL, or "pipe:<command with {name}>"
    backend: str = "onnxruntime"
    device: str | None = None
    batch: int = 64
    keep_original: bool = False
    max_reject_rate: float | None = None  # None: no limit
    stats: str | None = None  # where stats files go (default: beside the output shards)
    decoder: str = "dali"  # "dali" or "opencv"
    threads: int = 2  # DALI decode threads
    queue_depth: int = 2  # batches in flight between stages

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.decoder not in ("dali", "opencv"):
            raise ValueError(f"decoder must be 'dali' or 'opencv', got {self.decoder!r}")
        if self.max_reject_rate is not None and not 0 <= self.max_reject_rate <= 1:
            raise ValueError(f"max_reject_rate must be in [0, 1], got {self.max_reject_rate}")
        if self.output.startswith("pipe:") and "{name}" not in self.output:
            raise ValueError("a pipe: output needs '{name}' where the shard's file name goes")
        if self.output.startswith("pipe:") and self.stats is None:
            raise ValueError("a pipe: output needs --stats DIR for the per-shard stats files")


@dataclass
class ShardStats:
    shard: str
    input: str
    output: str
    read: int = 0
    written: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    decoder: str = ""
    engine: str = ""
    engine_hash: str = ""
    backend: str = ""
    refinery_version: str = __version__
    skipped: bool = False  # finished by an earlier run

    def to_json(self) -> bytes:
        data = asdict(self)
        data.pop("skipped")
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


@dataclass
class JobSummary:
    shards: list[ShardStats]
    seconds: float

    @property
    def read(self) -> int:
        return sum(s.read for s in self.shards)

    @property
    def written(self) -> int:
        return sum(s.written for s in self.shards)

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.shards)

    def lines(self) -> list[str]:
        reasons: Counter[str] = Counter()
        for s in self.shards:
            reasons.update(s.reasons)
        done = [s for s in self.shards if not s.skipped]
        fresh = sum(s.read for s in done)
        rate = fresh / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{len(done)} shards refined, {len(self.shards) - len(done)} already finished; "
            f"read {self.read} = written {self.written} + rejected {self.rejected}",
            f"{fresh} samples this run in {self.seconds:.1f} s ({rate:.0f} samples/s)",
        ]
        if reasons:
            lines.append("rejected: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
        return lines


# -- destinations ---------------------------------------------------------------------------


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def output_url(config: RefineConfig, name: str) -> str:
    if config.output.startswith("pipe:"):
        return config.output.replace("{name}", name)
    return _join(config.output, name)


def stats_url(config: RefineConfig, name: str) -> str:
    return _join(config.stats or config.output, name + STATS_SUFFIX)


def _exists(url: str) -> bool:
    if url.startswith("pipe:"):
        return True  # a pipe's target cannot be checked; the stats file decides
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def _write_atomic(url: str, data: bytes) -> None:
    if _is_local(url):
        path = Path(_local_path(url))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{temp_tag()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    fs, path = fsspec.core.url_to_fs(url)
    parent, name = path.rsplit("/", 1)
    tmp = f"{parent}/.{name}.tmp-{temp_tag()}"
    fs.makedirs(parent, exist_ok=True)
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def finished(config: RefineConfig, name: str) -> bool:
    return _exists(stats_url(config, name)) and _exists(output_url(config, name))


def _clean_stale_temps(config: RefineConfig) -> None:
    """Temp files of killed runs on this host (``.<name>.tmp-<host>-<pid>...`` whose pid is
    gone), local directories only; other hosts' files are theirs to clean."""
    if config.output.startswith("pipe:") or "://" in config.output:
        return
    root = Path(config.output)
    if not root.is_dir():
        return
    for path in root.glob(".*.tmp-*"):
        host = temp_tag().rsplit("-", 1)[0]
        match = re.search(rf"\.tmp-{re.escape(host)}-(\d+)", path.name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass


# -- reading: pass-through bytes joined with decoded images ---------------------------------


@dataclass
class Item:
    """One sample read from an input shard: its bytes, and its image once decoded."""

    sample: dict[str, Any]  # "__key__", "__url__" and component bytes, in shard order
    component: str = ""  # which image component it has ("jpg" or "png" for scenes)
    image: np.ndarray | None = None
    refined: np.ndarray | None = None
    error: SampleError | None = None

    @property
    def key(self) -> str:
        return self.sample["__key__"]


_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_EXPECT = {GRAY8: ((8,), (0,)), RGB8: ((8,), (2, 6)), DEPTH16: ((16,), (0,))}


def _header_problem(data: bytes, kind: str) -> str | None:
    """What DALI would silently convert: the wrong PNG bit depth or colour type."""
    if not data.startswith(_PNG) or len(data) < 26:
        return None
    depth, colour = data[24], data[25]
    depths, colours = _PNG_EXPECT[kind]
    if depth not in depths or colour not in colours:
        return f"PNG is {depth}-bit colour type {colour}; a {kind} image needs {depths[0]}-bit"
    return None


def image_intact(data: bytes) -> bool:
    """A cheap integrity check of an encoded image: every PNG chunk's CRC and the IEND chunk,
    or a JPEG's start and end markers. DALI cannot skip an undecodable image (it stops the
    pipeline), so a shard whose images fail this goes to OpenCV, which rejects them one by one."""
    if data.startswith(_PNG):
        at = len(_PNG)
        while at + 12 <= len(data):
            (length,) = struct.unpack(">I", data[at : at + 4])
            end = at + 8 + length
            if end + 4 > len(data):
                return False
            (crc,) = struct.unpack(">I", data[end : end + 4])
            if zlib.crc32(data[at + 4 : end]) != crc:
                return False
            if data[at + 4 : at + 8] == b"IEND":
                return True
            at = end + 4
        return False
    if data.startswith(b"\xff\xd8"):
        return data.rstrip(b"\0").endswith(b"\xff\xd9")
    return False


def dali_index(path: str, index: str, components: tuple[str, ...] = ()) -> bool:
    """Write DALI's webdataset index (wds2idx format v1.2) for a local tar after checking its
    structure and the integrity of its ``components`` images; False when the tar is not one
    DALI should be given (truncated, corrupt, empty): DALI's own index inference can crash the
    process on a truncated tar, and its decoders stop the pipeline at a corrupt image."""
    try:
        size = os.path.getsize(path)
        samples: list[list[str]] = []
        last = None
        with tarfile.open(path, "r:") as tf, open(path, "rb") as raw:
            for member in tf:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    return False
                if member.name.endswith(tuple(f".{c}" for c in components)):
                    raw.seek(member.offset_data)
                    if not image_intact(raw.read(member.size)):
                        return False
                base = member.name.rsplit("/", 1)[-1]
                dot = member.name.find(".", len(member.name) - len(base))
                if dot <= 0:
                    continue
                key, ext = member.name[:dot], member.name[dot + 1 :]
                entry = f"{ext} {member.offset_data} {member.size} {member.name}"
                if key != last:
                    samples.append([entry])
                    last = key
                else:
                    samples[-1].append(entry)
    except (OSError, tarfile.TarError, EOFError):
        return False
    if not samples:
        return False
    with open(index, "w") as f:
        f.write(f"v1.2 {len(samples)}\n")
        f.writelines(" ".join(sample) + "\n" for sample in samples)
    return True


_PARKED: list[Any] = []  # DALI pipelines that failed; see _dali_run


@functools.cache
def have_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _dali_images(
    url: str,
    components: tuple[str, ...],
    kind: str,
    *,
    batch: int,
    threads: int,
    device_id: int | None,
) -> Iterator[tuple[str, np.ndarray]] | None:
    """(key, image) for every sample of the shard with one of ``components``, in shard order;
    None where DALI cannot take the shard (not installed, not a local file, not a sound tar)."""
    if not have_dali() or not _is_local(url):
        return None
    path = _local_path(url)
    index = f"{tempfile.gettempdir()}/refinery-{os.getpid()}-{threading.get_ident()}.idx"
    if not dali_index(path, index, components):
        return None

    def images() -> Iterator[tuple[str, np.ndarray]]:
        try:
            yield from _dali_run(path, index, components, kind, batch, threads, device_id)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(index)

    return images()


def _dali_run(path, index, components, kind, batch, threads, device_id):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=device_id)
    def pipeline():
        encoded = fn.readers.webdataset(
            paths=[path],
            index_paths=[index],
            ext=[";".join(components)],  # "jpg;png": either one is the image
            missing_component_behavior="skip",
            pad_last_batch=True,
            name="Reader",
        )
        device = "mixed" if device_id is not None else "cpu"
        if kind == DEPTH16:
            image = fn.decoders.image(
                encoded, device=device, output_type=types.ANY_DATA, dtype=types.UINT16
            )
        else:
            kind_type = types.GRAY if kind == GRAY8 else types.RGB
            image = fn.decoders.image(encoded, device=device, output_type=kind_type)
        return image, fn.get_property(encoded, key="source_info")

    pipe = pipeline()
    pipe.build()
    total = pipe.epoch_size("Reader")
    produced = 0
    while produced < total:
        try:
            images, sources = pipe.run()
        except Exception:
            # "Current pipeline object is no longer valid": deleting it can crash the process
            # (DALI 2.4), so it is parked for the life of the process. Rare: shards are
            # integrity-checked (image_intact) before DALI sees them.
            _PARKED.append(pipe)
            raise
        if hasattr(images, "as_cpu"):
            images = images.as_cpu()  # CPU-GPU sync: engines take host arrays
        for j in range(len(sources)):
            if produced >= total:
                break
            produced += 1
            source = bytes(np.array(sources.at(j))).decode()  # "<shard>:<offset>:<key>.<ext>"
            key = base_plus_ext(source.rsplit(":", 1)[1])[0]
            image = np.array(images.at(j))
            yield key, image[..., 0] if kind != RGB8 else image


def read_items(
    url: str,
    *,
    components: tuple[str, ...],
    kind: str,
    decoder: str = "dali",
    batch: int = 64,
    threads: int = 2,
    device_id: int | None = None,
    on_decoder: Callable[[str], None] | None = None,
) -> Iterator[Item]:
    """Every sample of one shard, in order, with its image decoded or its reject attached."""
    broken: list[SampleError] = []
    passthrough = tar_samples(url, handler=broken.append)

    def samples() -> Iterator[Item | SampleError]:
        for sample in passthrough:
            while broken:
                yield broken.pop(0)
            yield Item(sample)
        yield from broken

    def opencv(item: Item, component: str) -> None:
        try:
            item.image = decode_image(item.sample[component], kind)
        except Undecodable as exc:
            item.error = SampleError(UNDECODABLE, str(exc), key=item.key, component=component)
        except ValueError as exc:
            item.error = SampleError(MALFORMED, str(exc), key=item.key, component=component)

    decoded: dict[str, np.ndarray] = {}
    dali = None
    if decoder == "dali":
        dali = _dali_images(
            url, components, kind, batch=batch, threads=threads, device_id=device_id
        )
    use_dali = dali is not None
    used = "dali" if use_dali else "opencv"
    for entry in samples():
        if isinstance(entry, SampleError):
            yield Item({"__key__": entry.key, "__url__": url}, error=entry.with_url(url))
            use_dali = False  # a structurally broken shard: DALI's own reader may not cope
            continue
        item = entry
        found = [c for c in components if c in item.sample]
        if len(found) != 1:
            have = ", ".join(k for k in item.sample if not k.startswith("__")) or "nothing"
            want = " or ".join(repr(c) for c in components)
            item.error = SampleError(
                MISSING if not found else MALFORMED,
                f"{'no' if not found else 'more than one'} {want} to refine (has: {have})",
                key=item.key,
                component=components[0],
            )
            yield item
            continue
        component = item.component = found[0]
        problem = _header_problem(item.sample[component], kind)
        if problem:
            item.error = SampleError(MALFORMED, problem, key=item.key, component=component)
            yield item
            continue
        while use_dali and item.key not in decoded:
            try:
                key, image = next(dali)
                decoded[key] = image
            except StopIteration:
                break
            except Exception:  # DALI stops the whole pipeline at a corrupt image
                use_dali = False
                used = "dali+opencv"
        if item.key in decoded:
            item.image = decoded.pop(item.key)
        else:
            opencv(item, component)
        yield item
    if on_decoder is not None:
        on_decoder(used)


# -- the engine stage -----------------------------------------------------------------------


def refine_items(engine, items: list[Item]) -> None:
    """Run the engine on the items without errors, one call per image shape."""
    spec = engine.spec
    by_shape: dict[tuple[int, ...], list[Item]] = {}
    for item in items:
        if item.error is not None:
            continue
        height, width = item.image.shape[:2]
        problems = engine.profile.problems(None, height, width)
        channels = 1 if item.image.ndim == 2 else item.image.shape[2]
        if channels != spec.io.channels:
            problems.insert(0, f"{channels} channels, the engine takes {spec.io.channels}")
        if problems:
            item.error = SampleError(SIZE, "; ".join(problems), key=item.key)
            continue
        by_shape.setdefault(item.image.shape, []).append(item)
    for group in by_shape.values():
        result = engine.refine(np.stack([it.image for it in group]))
        for i, item in enumerate(group):
            if result.finite[i]:
                item.refined = result.pixels[i]
            else:
                item.error = SampleError(NON_FINITE, "the engine produced NaN or inf", key=item.key)


def assemble(item: Item, *, kind: str, provenance: bytes, keep_original: bool) -> dict[str, Any]:
    """The output sample: every input component byte-identical except the refined image,
    re-encoded in its own format (PNG stays lossless PNG, JPEG stays JPEG)."""
    component = item.component
    ext = component.rsplit(".", 1)[-1]
    out: dict[str, Any] = {"__key__": item.key}
    for name, value in item.sample.items():
        if name.startswith("__"):
            continue
        out[name] = encode_image(item.refined, kind, ext) if name == component else value
    if keep_original:
        out[f"orig.{component}"] = item.sample[component]
    out["refinery.json"] = provenance
    return out


# -- the job ---------------------------------------------------------------------------------

_END = object()


def _provenance(spec, backend: str, url: str) -> bytes:
    return encode_json(
        {
            "engine": spec.engine_id,
            "engine_hash": spec.engine_hash,
            "method": spec.method,
            "network": spec.name,
            "backend": backend,
            "recipe": spec.source.get("recipe"),
            "checkpoint": spec.source.get("checkpoint"),
            "source_shard": shard_name(url),
            "refinery_version": __version__,
        }
    )


def _device_id(config: RefineConfig) -> int | None:
    device = config.device or ""
    if not device.startswith("cuda"):
        return None
    return int(device.partition(":")[2] or 0)


def image_components(spec) -> tuple[str, ...]:
    """The components a job refines: the engine's own, or either image of a scene."""
    from refinery.samples import spec as domain_spec

    accepted = domain_spec(spec.domain).images
    return accepted if spec.io.image_component in accepted else (spec.io.image_component,)


def preflight(engine, urls: Sequence[str], *, probe: int = 16) -> None:
    """Refuse an engine that does not fit the data before any shard is processed: the first
    decodable sample of the inputs is checked for image component, channels, dtype and size
    (``probe`` samples at most are looked at; bad ones are left for the job to reject)."""
    from engines import EngineMismatch

    spec = engine.spec
    components = image_components(spec)
    looked = 0
    for url in urls:
        for sample in tar_samples(url, handler=lambda error: None):
            looked += 1
            found = [c for c in components if c in sample]
            if found:
                label = sample.get("json")
                try:
                    domain = json.loads(label).get("domain") if label else None
                except (ValueError, AttributeError):
                    domain = None
                if domain is not None:
                    spec.check_fits(domain=domain)
                native = cv2.imdecode(
                    np.frombuffer(sample[found[0]], np.uint8), cv2.IMREAD_UNCHANGED
                )
                if native is not None:
                    channels = 1 if native.ndim == 2 else min(native.shape[2], 3)
                    spec.check_fits(channels=channels, pixel_dtype=native.dtype)
                    problems = engine.profile.problems(None, *native.shape[:2])
                    if problems:
                        raise EngineMismatch(
                            f"engine {spec.engine_id} does not fit {shard_name(url)}: "
                            + "; ".join(problems)
                        )
                    return
            elif not found and looked == 1:
                present = ", ".join(k for k in sample if not k.startswith("__"))
                raise EngineMismatch(
                    f"engine {spec.engine_id} refines {' or '.join(components)} images, but "
                    f"{shard_name(url)}'s first sample has {present}"
                )
            if looked >= probe:
                return


def run(
    config: RefineConfig,
    urls: str | Sequence[str],
    *,
    progress: Callable[[ShardStats], None] | None = None,
    engine=None,
) -> JobSummary:
    """Refine the given input shards (all of them: partitioning happens before)."""
    import engines

    start = time.perf_counter()
    urls = expand_urls(urls)
    names = [shard_name(u) for u in urls]
    clashes = sorted(n for n, c in Counter(names).items() if c > 1)
    if clashes:
        raise ValueError(f"inputs share file names {clashes}: their outputs would collide")
    if engine is None:
        options = {"device": config.device} if config.device else {}
        engine = engines.load(config.engine, backend=config.backend, **options)
    spec = engine.spec
    components, kind = image_components(spec), spec.io.pixel_kind
    _clean_stale_temps(config)
    todo = [u for u in urls if not finished(config, shard_name(u))]
    done = [read_stats(config, shard_name(u)) for u in urls if u not in todo]
    if todo:
        preflight(engine, todo)

    batches: queue.Queue = queue.Queue(maxsize=config.queue_depth)
    refined: queue.Queue = queue.Queue(maxsize=config.queue_depth)
    failure: list[BaseException] = []
    stop = threading.Event()
    results: list[ShardStats] = []

    def put(q: queue.Queue, value: Any, *, consumer: threading.Thread | None = None) -> bool:
        """Put unless the job is stopping (or, for the end marker, the consumer is gone)."""
        while True:
            if consumer is None and stop.is_set():
                return False
            if consumer is not None and not consumer.is_alive():
                return False
            with contextlib.suppress(queue.Full):
                q.put(value, timeout=0.1)
                return True

    def get(q: queue.Queue) -> Any:
        while True:
            with contextlib.suppress(queue.Empty):
                return q.get(timeout=0.1)
            if stop.is_set():
                return _END

    def reader() -> None:
        try:
            for url in todo:
                name = shard_name(url)
                stats = ShardStats(shard=name, input=url, output=output_url(config, name))
                if not put(batches, ("start", stats)):
                    return
                chunk: list[Item] = []
                for item in read_items(
                    url,
                    components=components,
                    kind=kind,
                    decoder=config.decoder,
                    batch=config.batch,
                    threads=config.threads,
                    device_id=_device_id(config),
                    on_decoder=lambda used, s=stats: setattr(s, "decoder", used),
                ):
                    chunk.append(item)
                    if len(chunk) >= config.batch:
                        if not put(batches, ("items", chunk)):
                            return
                        chunk = []
                if chunk and not put(batches, ("items", chunk)):
                    return
                if not put(batches, ("end", stats)):
                    return
        except BaseException as exc:
            failure.append(exc)
            stop.set()
        finally:
            put(batches, _END)

    def writer() -> None:
        shard_writer: ShardWriter | None = None
        stats: ShardStats | None = None
        began = 0.0
        provenance = b""
        try:
            while True:
                message = get(refined)
                if message is _END:
                    return
                what, payload = message
                if what == "start":
                    stats, began = payload, time.perf_counter()
                    provenance = _provenance(spec, engine.backend, stats.input)
                    shard_writer = ShardWriter(stats.output)
                elif what == "items":
                    for item in payload:
                        stats.read += 1
                        if item.error is None:
                            sample = assemble(
                                item,
                                kind=kind,
                                provenance=provenance,
                                keep_original=config.keep_original,
                            )
                            shard_writer.write(sample)
                            stats.written += 1
                        else:
                            record = item.error.with_url(stats.input).as_record()
                            stats.rejects.append(record)
                            reason = record["reason"]
                            stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
                            stats.rejected += 1
                elif what == "end":
                    shard_writer.close()  # the output shard appears under its name ...
                    shard_writer = None
                    stats.seconds = time.perf_counter() - began
                    stats.engine, stats.engine_hash = spec.engine_id, spec.engine_hash
                    stats.backend = engine.backend
                    _write_atomic(stats_url(config, stats.shard), stats.to_json())  # ... then this
                    results.append(stats)
                    if progress is not None:
                        progress(stats)
                    check_reject_rate(config, done + results)
        except BaseException as exc:
            failure.append(exc)
            stop.set()
        finally:
            if shard_writer is not None:
                shard_writer.abort()

    reading = threading.Thread(target=reader, name="refine-reader", daemon=True)
    writing = threading.Thread(target=writer, name="refine-writer", daemon=True)
    reading.start()
    writing.start()
    try:
        while True:
            message = get(batches)
            if message is _END:
                break
            if message[0] == "items":
                refine_items(engine, message[1])  # batch n, while n+1 decodes and n-1 writes
            if not put(refined, message):
                break
    except BaseException as exc:
        failure.append(exc)
        stop.set()
    finally:
        put(refined, _END, consumer=writing)
        writing.join()
        stop.set()  # the reader, if still going, stops at its next put
        reading.join()
    if failure:
        raise failure[0]
    order = {name: i for i, name in enumerate(names)}
    shards = sorted(done + results, key=lambda s: order[s.shard])
    return JobSummary(shards, time.perf_counter() - start)


def check_reject_rate(config: RefineConfig, shards: list[ShardStats]) -> None:
    if config.max_reject_rate is None:
        return
    read = sum(s.read for s in shards)
    rejected = sum(s.rejected for s in shards)
    if read and rejected / read > config.max_reject_rate:
        raise RejectRateExceeded(
            f"{rejected} of {read} samples rejected ({rejected / read:.1%}), more than "
            f"--max-reject-rate {config.max_reject_rate:.1%}; see the stats files in "
            f"{config.stats or config.output}"
        )


def read_stats(config: RefineConfig, name: str) -> ShardStats:
    with open_url(stats_url(config, name)) as f:
        data = json.loads(f.read())
    known = {k: v for k, v in data.items() if k in ShardStats.__dataclass_fields__}
    return ShardStats(**known, skipped=True)
