"""The stages of a refine job: small iterators over batches, composed in order (STYLE 6).

    batches = read_batches(urls, size=64, components=("png",), kind="gray8")  # tar -> Batch
    batches = prefetch(batches, 2)                                             # its own thread
    batches = in_pool(batches, decode_item(kind), pool)                        # OpenCV, N threads
    batches = refine_batches(batches, engine)                                  # the engine
    batches = in_pool(batches, encode_item(kind), pool)                        # OpenCV, N threads

A ``Batch`` holds up to ``size`` consecutive ``Item``s of one input shard, in shard order, and
says whether it is its shard's first and last; an empty shard is one empty batch that is both.
Every stage hands batches on in the order it got them and changes only their items, so the
output of a job does not depend on how many threads or workers ran which stage.

``prefetch(iterator, depth)`` runs an iterator in a thread of its own, up to ``depth`` values
ahead of its consumer; an exception in it is raised in the consumer, and a consumer that stops
early (an error downstream, ``close()``) stops the thread and closes the iterator it was
running. ``in_pool`` runs one function on every item in a thread pool (OpenCV releases the GIL
while it decodes and encodes), up to ``ahead`` batches in flight, yielding each batch once all
of its items are done.

An item that cannot be refined carries a ``SampleError`` (``item.error``) from the stage that
found it on to the writer, which counts it as a reject: nothing is dropped on the way.
"""

from __future__ import annotations

import contextlib
import os
import queue
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where a device tensor is made: refine workers have none
    import torch

from refinery import samples
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
)
from refinery.shards import tar_samples

SIZE = "size-outside-engine"  # reject reasons the job adds to refinery.samples.REASONS
NON_FINITE = "non-finite-output"


def machine_threads() -> int:
    """CPU threads this process may use (its affinity mask, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- what travels between stages --------------------------------------------------------------


@dataclass
class Item:
    """One sample read from an input shard: its bytes, then its image, its refined image and
    that image encoded, or the reason it was rejected."""

    sample: dict[str, Any]  # "__key__", "__url__" and component bytes, in shard order
    component: str = ""  # which image component it has ("jpg" or "png" for scenes)
    image: np.ndarray | torch.Tensor | None = None  # decoded: a host array, or a device tensor
    decoder: str = ""  # what decoded it: "opencv" or "dali"
    refined: np.ndarray | None = None  # (H, W[, C]) stored pixels
    encoded: bytes | None = None  # the refined image in the component's own format
    error: SampleError | None = None

    @property
    def key(self) -> str:
        return self.sample["__key__"]

    @property
    def pending(self) -> bool:
        """Still to be decoded."""
        return self.error is None and self.image is None and self.refined is None


@dataclass
class Batch:
    url: str  # the input shard
    items: list[Item] = field(default_factory=list)
    first: bool = False  # the shard's first batch
    last: bool = False  # the shard's last batch (an empty shard: one batch, first and last)


# -- prefetch and pools -----------------------------------------------------------------------


@contextlib.contextmanager
def upstream(iterable: Iterable[Any]) -> Iterator[Iterator[Any]]:
    """Iterate ``iterable`` and close it however the stage ends: an error or a stop passes up
    the chain at once (every stage's threads and pools stop), not when the garbage collector
    gets to a generator that a traceback still holds."""
    iterator = iter(iterable)
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


_VALUE, _END, _ERROR = "value", "end", "error"


def prefetch(iterable: Iterable[Any], depth: int = 2, *, name: str = "prefetch") -> Iterator[Any]:
    """Iterate ``iterable`` in a background thread, at most ``depth`` values ahead."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    values: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                values.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with upstream(iterable) as values_in:
                for value in values_in:
                    if not put((_VALUE, value)):
                        return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((_ERROR, exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = values.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def in_pool(
    batches: Iterable[Batch],
    work: Callable[[Item], None],
    pool: Executor,
    *,
    workers: int,
    ahead: int = 2,
    select: Callable[[Item], bool] = lambda item: True,
) -> Iterator[Batch]:
    """``work(item)`` for every selected item, in ``pool``; up to ``ahead`` batches in flight.
    Items go to the pool in at most ``workers`` contiguous chunks per batch (one task per
    chunk: a task per 35x55 eye would cost more than its decode). Batches come out in order."""
    pending: deque[tuple[Batch, list[Future]]] = deque()

    def run(chunk: Sequence[Item]) -> None:
        for item in chunk:
            work(item)

    def finish(batch: Batch, futures: list[Future]) -> Batch:
        for future in futures:
            future.result()  # an unexpected error in work() is raised here
        return batch

    try:
        with upstream(batches) as batches:
            for batch in batches:
                chosen = [item for item in batch.items if select(item)]
                step = -(-len(chosen) // max(1, workers)) if chosen else 1
                futures = [
                    pool.submit(run, chosen[i : i + step]) for i in range(0, len(chosen), step)
                ]
                pending.append((batch, futures))
                if len(pending) > ahead:
                    yield finish(*pending.popleft())
        while pending:
            yield finish(*pending.popleft())
    finally:
        for _, futures in pending:
            for future in futures:
                future.cancel()


# -- read -------------------------------------------------------------------------------------

_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_EXPECT = {GRAY8: ((8,), (0,)), RGB8: ((8,), (2, 6)), DEPTH16: ((16,), (0,))}


def header_problem(data: bytes, kind: str) -> str | None:
    """What a decoder would silently convert: the wrong PNG bit depth or colour type. Only a
    PNG whose IHDR chunk is whole (its CRC right) is judged: junk behind a PNG signature says
    nothing about depth, and its decode rejects it as ``undecodable``."""
    if not data.startswith(_PNG) or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        return None
    depth, colour = data[24], data[25]
    depths, colours = _PNG_EXPECT[kind]
    if depth not in depths or colour not in colours:
        return f"PNG is {depth}-bit colour type {colour}; a {kind} image needs {depths[0]}-bit"
    return None


def image_intact(data: bytes) -> bool:
    """A cheap integrity check of an encoded image: every PNG chunk's CRC and the IEND chunk,
    or a JPEG's start and end markers. DALI cannot skip an undecodable image (it stops the
    pipeline), so an image that fails this is decoded by OpenCV, which rejects it alone."""
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


def label_problem(sample: dict[str, Any], domain: str) -> SampleError | None:
    """A sample's labels, checked as ``refinery inspect`` checks them (``refinery.samples.
    label_problem`` on the raw ``json``, parsed once): a json is required, and one that claims
    labels (``{}``, ``{"domain": "gaze"}``) must carry the domain's fields. A json that says
    ``"labeled": false`` (``refinery ingest images``: your own images) is refined as it is, its
    json passed through, since it has no labels to break."""
    return samples.label_problem(sample, domain, labeled=False, wanted="the engine refines")


def sample_problem(
    sample: dict[str, Any], components: tuple[str, ...], kind: str, domain: str | None = None
) -> tuple[str | None, SampleError | None]:
    """A raw sample's image component (None when it has none, or more than one) and why it
    cannot be refined, or None: a missing or doubled image, a PNG header that does not match
    ``kind``; with a ``domain``, a missing or foreign label (``label_problem``)."""
    key = sample["__key__"]
    found = [c for c in components if c in sample]
    if len(found) != 1:
        have = ", ".join(k for k in sample if not k.startswith("__")) or "nothing"
        want = " or ".join(repr(c) for c in components)
        return None, SampleError(
            MISSING if not found else MALFORMED,
            f"{'no' if not found else 'more than one'} {want} to refine (has: {have})",
            key=key,
            component=components[0],
        )
    component = found[0]
    # first: a foreign label explains a foreign image best
    error = label_problem(sample, domain) if domain is not None else None
    problem = header_problem(sample[component], kind)
    if problem and error is None:
        error = SampleError(MALFORMED, problem, key=key, component=component)
    return component, error


def prepare(item: Item, components: tuple[str, ...], kind: str, domain: str | None = None) -> Item:
    """Pick the item's image component, or reject it (``sample_problem``)."""
    component, item.error = sample_problem(item.sample, components, kind, domain)
    item.component = component or ""
    return item


def shard_items(
    url: str, *, components: tuple[str, ...], kind: str, domain: str | None = None
) -> Iterator[Item]:
    """Every sample of one shard, in order, each with its component picked or its reject; what
    the strict tar reader rejects (duplicate key, bad member, truncation) comes as an item
    with its error, where it was found."""
    broken: list[SampleError] = []
    for sample in tar_samples(url, handler=broken.append):
        while broken:
            yield _rejected(broken.pop(0), url)
        yield prepare(Item(sample), components, kind, domain)
    for error in broken:
        yield _rejected(error, url)


def _rejected(error: SampleError, url: str) -> Item:
    return Item({"__key__": error.key, "__url__": url}, error=error.with_url(url))


def read_batches(
    urls: Iterable[str],
    *,
    size: int,
    components: tuple[str, ...],
    kind: str,
    domain: str | None = None,
) -> Iterator[Batch]:
    """The shards' items in batches of up to ``size``; a batch never spans two shards."""
    for url in urls:
        batch = Batch(url, first=True)
        for item in shard_items(url, components=components, kind=kind, domain=domain):
            if len(batch.items) == size:
                yield batch
                batch = Batch(url)
            batch.items.append(item)
        batch.last = True
        yield batch


# -- decode, refine, encode -------------------------------------------------------------------


def decode_item(kind: str) -> Callable[[Item], None]:
    """OpenCV decoding of one item's image (``in_pool`` work); a bad image is its reject."""

    def decode(item: Item) -> None:
        if not item.pending:
            return
        data = item.sample[item.component]
        item.decoder = "opencv"  # it decides this item, decoded or rejected
        try:
            item.image = decode_image(data, kind)
        except Undecodable as exc:
            item.error = SampleError(UNDECODABLE, str(exc), key=item.key, component=item.component)
        except ValueError as exc:
            item.error = SampleError(MALFORMED, str(exc), key=item.key, component=item.component)

    return decode


def encode_item(kind: str, png_encoder: str = "libdeflate") -> Callable[[Item], None]:
    """The refined image in its component's own format (PNG stays lossless PNG, written by
    libdeflate unless ``png_encoder="opencv"``; JPEG stays JPEG), as ``in_pool`` work."""
    from refinery.png import encode_png

    def encode(item: Item) -> None:
        if item.error is None:
            ext = item.component.rsplit(".", 1)[-1]
            if ext == "png" and png_encoder == "libdeflate":
                item.encoded = encode_png(np.ascontiguousarray(item.refined), kind)
            else:
                item.encoded = encode_image(item.refined, kind, ext)

    return encode


def fit_problem(engine, image: np.ndarray | torch.Tensor) -> str | None:
    """Why a decoded image does not fit the engine (channels, size outside its profile)."""
    height, width = image.shape[:2]
    problems = engine.profile.problems(None, height, width)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != engine.spec.io.channels:
        problems.insert(0, f"{channels} channels, the engine takes {engine.spec.io.channels}")
    return "; ".join(problems) or None


def launch(engine, items: Sequence[Item]) -> list[tuple[list[Item], Any]]:
    """Queue the engine on the items without errors, one call per image shape (an item that
    does not fit the engine is rejected here); the pending results, to ``collect``."""
    by_shape: dict[tuple[int, ...], list[Item]] = {}
    for item in items:
        if item.error is not None:
            continue
        problem = fit_problem(engine, item.image)
        if problem:
            item.error = SampleError(SIZE, problem, key=item.key)
            continue
        by_shape.setdefault(tuple(item.image.shape), []).append(item)
    launched = []
    for group in by_shape.values():
        images = [it.image for it in group]
        if all(isinstance(im, np.ndarray) for im in images):
            pixels = np.stack(images)  # (B, H, W[, C]): one host buffer, one upload
        else:  # decoded on the device (DALI mixed): stacked there
            import torch

            pixels = torch.stack([torch.as_tensor(im).to(engine.device) for im in images])
        launched.append((group, engine.submit(pixels)))
        for item in group:
            item.image = None  # a decoded frame is not needed past here
    return launched


def collect(launched: list[tuple[list[Item], Any]]) -> None:
    """Wait for ``launch``'s results: refined pixels (NumPy), or a non-finite reject."""
    for group, pending in launched:
        result = pending.result()
        for i, item in enumerate(group):
            if result.finite[i]:
                item.refined = result.pixels[i]
            else:
                item.error = SampleError(NON_FINITE, "the engine produced NaN or inf", key=item.key)


def refine_batches(batches: Iterable[Batch], engine) -> Iterator[Batch]:
    """The engine on every batch; batch n+1 is queued on the device before batch n's results
    are collected, so the device computes while the host hands results on and stacks the
    next batch (on the CPU every call completes at once, and the order is the same)."""
    with upstream(batches) as batches:
        previous = None
        for batch in batches:
            current = (batch, launch(engine, batch.items))
            if previous is not None:
                collect(previous[1])
                yield previous[0]
            previous = current
        if previous is not None:
            collect(previous[1])
            yield previous[0]
