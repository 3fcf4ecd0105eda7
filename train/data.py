"""Training inputs: endless, shuffled, resumable batches of images from shards, scaled to [-1, 1].

``ImageStream`` reads shards by URL (anything ``refinery.shards`` reads), decodes and validates
each sample against its domain, takes its image component and scales it to [-1, 1] to match the
refiner's tanh: 8-bit pixels by /127.5 - 1, 16-bit depth linearly from a declared
``depth_range`` (millimetres; values outside it are clipped, 0 = no measurement maps to -1).

Order is a pure function of (seed, epoch): each epoch shuffles the shard list and then draws
samples through a shuffle buffer, both from ``numpy.random.default_rng([seed, epoch])``. The
stream's position is just (epoch, samples drawn in the epoch), so ``state_dict()`` is two
integers and a resumed stream replays the epoch's reading (without decoding) up to that
position: the batches after a resume are exactly the batches the uninterrupted run would see.

Decoding in the background. With ``decoders=N`` (N > 0) N worker processes decode and validate
the samples ahead of the loop (``lookahead`` of them, two batches by default, sent in chunks of
up to ``CHUNK``) while the network trains; the loop takes them in the order above, so batches,
positions and resume are the same as with ``decoders=0`` (decoding on the caller's thread), and
a rejected sample reaches ``handler`` in the caller's process, in order. Processes, not
threads: for small images most of the work per sample is Python (reading the label JSON,
checking it), which holds the GIL, and on one H200 two decoding threads fed SimGAN's gaze
preset 3,500 images/s with the loop waiting 84% of the time, eight threads less
(README, GPU server). The workers are spawned once per process and shared by every stream
with the same N; they import ``refinery.samples`` only. ``waited`` adds up the
seconds ``next_batch`` kept its caller waiting: the training loop logs its share of the wall
time as ``time/data_wait_share``. ``pin=True`` returns batches in page-locked memory, so a
CUDA copy with ``non_blocking=True`` overlaps the next step's work.

Real images are unlabeled by nature: a real pool is read with ``labels=False``, where a sample
may be its image alone or carry a ``json`` that says ``"labeled": false``
(``refinery.samples``); synthetic pools keep ``labels=True`` and need their labels:
``check_labeled()`` (called by ``train.loop.fit`` before training) refuses a sample marked
unlabeled, naming its shard and key.

From the decoded cache. With ``cache=True`` (the trainers' default: their configs' ``cache: true``,
``cache: false`` in a recipe or ``--config`` file turns it off) a set of small images on local disk is decoded once into memory-mapped arrays
(``train.cache``) and every batch is one slice of them: the epoch's order is computed from the
same generator as above, as indices (the shuffle buffer's picks drawn at once), so batches,
positions, rejects reaching ``handler`` and resume are exactly those of decoding. Sets the
cache does not take (remote, images over 1 MiB, ``REFINERY_CACHE=off``) are decoded as read;
large JPEG frames then decode on the GPU with ``decode_device`` a CUDA device
(``train.jpeg``). ``next_stored()`` gives the stored pixels (uint8/uint16) and
``next_batch_on(device)`` sends them pinned, non-blocking, and scales them on the device.

Ranks. Each of ``world_size`` ranks reads its own shards (``rank::world_size``); where shards
are fewer than ranks (real pools are small), each reads every shard but only the samples whose
place in the set is its rank modulo ``world_size``, so the ranks' samples are disjoint and any
set of at least ``world_size`` samples trains on any number of ranks, with exact resume as
above. A smaller set is refused by every rank with the same error, before training.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from refinery.ontology import IGNORE
from refinery.samples import (
    DEPTH16,
    MISSING,
    SampleError,
    decode_draws,
    decode_or_error,
    image_component,
    is_labeled,
    spec,
)
from refinery.shards import Handler, expand_urls, reraise, tar_samples
from train.cache import DecodedCache, NotCacheable, caching_disabled, open_cache
from train.jpeg import EncodedImage, decode_on, deferring, gpu_jpeg_available

CHUNK = 64  # samples per task sent to a decoding process: amortises the pipe's overhead
_POOLS: dict[tuple[int, int], ProcessPoolExecutor] = {}


def decoding_pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` spawned decoding processes (spawn: safe next to
    CUDA and threads); made on first use, shared by the streams that ask for the same size."""
    key = (os.getpid(), workers)  # a forked child must not use its parent's pool
    if key not in _POOLS:
        _POOLS[key] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return _POOLS[key]


@dataclass(frozen=True)
class Scaling:
    """How stored pixels map to the [-1, 1] range a tanh refiner works in, and back."""

    low: float
    high: float

    def to_unit(self, pixels: np.ndarray) -> np.ndarray:
        # in place on one float32 copy: the arithmetic of ((x - low) / range).clip(0, 1) * 2 - 1
        # step by step, without a temporary per step (bit-identical; a 512-eye batch: 2.5 ms
        # instead of 3.4 here)
        unit = pixels.astype(np.float32)
        unit -= np.float32(self.low)
        unit /= np.float32(self.high - self.low)
        np.clip(unit, 0.0, 1.0, out=unit)
        unit *= np.float32(2.0)
        unit -= np.float32(1.0)
        return unit

    def from_unit(self, values: np.ndarray) -> np.ndarray:
        return (np.clip(values, -1.0, 1.0) + 1.0) / 2.0 * (self.high - self.low) + self.low

    def as_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}


def scaling_for(domain: str, depth_range: tuple[float, float] | None = None) -> Scaling:
    """8-bit images use [0, 255]; 16-bit depth needs its range declared (millimetres)."""
    if spec(domain).image_kind == DEPTH16:
        if depth_range is None:
            raise ValueError(f"{domain} images are 16-bit depth: declare depth_range (low, high)")
        low, high = depth_range
        if not 0 <= low < high <= 65535:
            raise ValueError(f"depth_range {depth_range} must satisfy 0 <= low < high <= 65535")
        return Scaling(float(low), float(high))
    return Scaling(0.0, 255.0)


def unit_channels_first(scaling: Scaling) -> Callable[[np.ndarray], np.ndarray]:
    """Stored images, (N, H, W) or (N, H, W, C), -> (N, C, H, W) float32 in [-1, 1]: how
    the task networks and the realism measures take a batch of them."""

    def transform(x: np.ndarray) -> np.ndarray:
        unit = scaling.to_unit(x)
        return unit[:, None] if unit.ndim == 3 else unit.transpose(0, 3, 1, 2)

    return transform


class ImageStream:
    """Endless shuffled batches ``(B, C, H, W)`` float32 in [-1, 1] from shards.

    ``labels=False`` reads a real pool: a sample needs only its image (see the module
    docstring); a label it does carry is still checked.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        domain: str,
        batch_size: int,
        seed: int,
        image_key: str | None = None,
        depth_range: tuple[float, float] | None = None,
        shuffle_buffer: int = 2000,
        rank: int = 0,
        world_size: int = 1,
        handler: Handler = reraise,
        labels: bool = True,
        decoders: int = 0,
        lookahead: int | None = None,
        pin: bool = False,
        cache: bool = False,
        decode_device: str | torch.device | None = None,
    ):
        if decoders < 0:
            raise ValueError(
                f"decoders must be 0 (decode on the caller's thread) or more, got {decoders}"
            )
        shards = expand_urls(urls)
        if not shards:
            raise ValueError(f"no shards in {urls!r}")
        self.rank, self.world_size = rank, world_size
        self.cache: DecodedCache | None = None
        if cache and not caching_disabled():
            with contextlib.suppress(NotCacheable, PermissionError):  # read-only: decode
                self.cache = open_cache(
                    shards, domain=domain, labels=labels, image_key=image_key,
                    decode=self._pooled(decoders, lookahead or 2 * batch_size),
                )  # fmt: skip
        # which raw samples are this rank's: whole shards (rank::world_size) when there are
        # enough of them, otherwise every world_size-th sample of the set (see _split)
        self._all_shards = shards
        self._split: dict[str, tuple[int, int]] | None = None
        if len(shards) >= world_size:
            self.shards = shards[rank::world_size]
        else:
            self.shards = shards
            self._split = _sample_split(shards, world_size, self.cache)
        self.domain = domain
        self.batch_size = batch_size
        self.seed = seed
        self.image_key = image_key
        self.scaling = scaling_for(domain, depth_range)
        self.shuffle_buffer = shuffle_buffer
        self.handler = handler
        self.labels = labels
        self.epoch = 0
        self.position = 0  # raw samples drawn in the current epoch (good or rejected)
        self._samples: Iterator[dict] | None = None
        self.decoders = decoders
        self.lookahead = lookahead if lookahead is not None else 2 * batch_size
        self.pin = pin
        self.waited = 0.0  # seconds next_batch kept its caller waiting
        # large JPEG frames (not cached) decode on the GPU where CUDA is present (train.jpeg)
        self.decode_device = None
        if decode_device is not None and self.cache is None:
            device = torch.device(decode_device)
            if device.type == "cuda" and gpu_jpeg_available():
                self.decode_device = device
        if self.cache is not None:
            self._own = self._cached_indices(shards)
            self._order: np.ndarray | None = None  # this epoch's draws: indices into the cache
            self._good: np.ndarray | None = None  # cumulative count of valid draws
            self._rejects = self.cache.rejects()
            self._tar_rejects = self.cache.tar_rejects()

    @staticmethod
    def _pooled(decoders: int, lookahead: int):
        """How the cache builds: chunks decoded in this stream's worker processes, if any."""
        if decoders == 0:
            return None
        return lambda chunks, work: _explained(
            map_ahead(decoding_pool(decoders), work, chunks, max(1, lookahead // CHUNK))
        )

    def _cached_indices(self, shards: list[str]) -> dict[int, np.ndarray]:
        """Per shard of ``self.shards`` (by position), this rank's indices into the cache."""
        ranges = self.cache.shard_ranges
        listed = {url: i for i, url in enumerate(shards)}
        own = {}
        for position, url in enumerate(self.shards):
            start, count = ranges[listed[url]]
            indices = np.arange(start, start + count)
            if self._split is not None:
                indices = indices[indices % self.world_size == self.rank]
            own[position] = indices
        return own

    def check_labeled(self) -> None:
        """Refuse, before training, a set this labeled stream cannot train on: a sample marked
        ``"labeled": false`` or otherwise without a usable label (a SampleError naming the shard
        and key). From the cache every sample is checked, the same on every rank (the cache
        holds the whole set); streamed, the first sample of each shard."""
        if not self.labels:
            return
        if self.cache is not None:
            if self.cache.meta["rejects"] and self.handler is reraise:
                first = self.cache.meta["rejects"][0]
                raise SampleError(
                    first["reason"], first["detail"], key=first["key"],
                    component=first["component"], url=first["url"],
                )  # fmt: skip
            unlabeled = np.flatnonzero(self.cache.valid & ~self.cache.labeled)
            if unlabeled.size:
                index = int(unlabeled[0])
                raise _unlabeled(self.cache.keys[index], self.cache.url_of(index), unlabeled.size)
            return
        for url in self._all_shards:
            for raw in tar_samples(url, handler=self.handler):
                sample = decode_or_error(raw, self.domain, labels=True)
                if isinstance(sample, SampleError):
                    self.handler(sample)
                elif not is_labeled(sample):
                    raise _unlabeled(sample["__key__"], url, None)
                break

    # -- order --------------------------------------------------------------------------------

    def _epoch_samples(self, epoch: int, skip: int) -> Iterator[dict]:
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.shards[i] for i in rng.permutation(len(self.shards))]
        raw = (s for url in order for s in self._own_samples(url))
        draws = (
            (emitted, chosen)
            for emitted, chosen in enumerate(_shuffled(raw, self.shuffle_buffer, rng), start=1)
            if emitted > skip  # skipped draws are replayed without decoding
        )
        if self.decode_device is not None:
            work = deferring(self.domain, self.labels)  # JPEG left for the GPU
        else:
            work = functools.partial(decode_draws, domain=self.domain, labels=self.labels)
        if self.decoders == 0:
            decoding = (done for draw in draws for done in work([draw]))
        else:
            chunk = max(1, min(CHUNK, self.lookahead // self.decoders))
            chunks = map_ahead(
                decoding_pool(self.decoders),
                work,
                _chunked(draws, chunk),
                max(1, self.lookahead // chunk),
            )
            decoding = (done for chunk in _explained(chunks) for done in chunk)
        for emitted, sample in decoding:
            rejected = isinstance(sample, SampleError)
            if rejected:
                self.handler(sample)  # raises (the default) or counts; in order, in this process
            self.position = emitted
            if not rejected:
                yield sample

    def _own_samples(self, url: str) -> Iterator[dict]:
        samples = tar_samples(url, handler=self.handler)
        if self._split is None:
            return samples
        offset, _ = self._split[url]
        return (s for i, s in enumerate(samples) if (offset + i) % self.world_size == self.rank)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The epoch's draws as indices into the cache: the shards permuted and the shuffle
        buffer drawn from the same generator as ``_epoch_samples`` (so the same order), the
        buffer's random picks drawn at once (``integers`` over an array of bounds gives what
        one call per draw gives)."""
        rng = np.random.default_rng([self.seed, epoch])
        permutation = rng.permutation(len(self.shards))
        for position in permutation:  # a shard's own tar-level rejects, when it is read
            for error in self._tar_rejects.get(self._listed(position), ()):
                self.handler(error)
        raw = np.concatenate([self._own[p] for p in permutation]).tolist()
        size, n = self.shuffle_buffer, len(raw)
        if n >= size:
            bounds = [size] * (n - size + 1) + list(range(size - 1, 0, -1))
        else:
            bounds = list(range(n, 0, -1))
        picks = rng.integers(np.array(bounds, dtype=np.int64)).tolist() if n else []
        order, buffer, draw = [], [], iter(picks)
        for item in raw:  # integers only: ~0.3 µs a sample, once per epoch
            buffer.append(item)
            if len(buffer) >= size:
                i = next(draw)
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                order.append(buffer.pop())
        while buffer:
            i = next(draw)
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            order.append(buffer.pop())
        return np.array(order, dtype=np.int64)

    def _listed(self, position: int) -> int:
        """The index in the whole set of ``self.shards[position]``."""
        if self._split is not None:
            return position
        return self.rank + position * self.world_size

    def _next_indices(self, count: int) -> np.ndarray:
        """The cache indices of the next ``count`` usable draws; rejected draws on the way go
        to the handler, in order, and count in the position, as when decoding."""
        taken: list[np.ndarray] = []
        for _ in range(count + 2):
            if self._order is None:
                self._order = self._epoch_order(self.epoch)
                self._good = np.cumsum(self.cache.valid[self._order])
            order, good, start = self._order, self._good, self.position
            before = int(good[start - 1]) if start else 0
            available = (int(good[-1]) if len(good) else 0) - before
            end = (
                len(order) if available < count else int(np.searchsorted(good, before + count)) + 1
            )
            drawn = order[start:end]
            ok = self.cache.valid[drawn]
            for index in drawn[~ok].tolist():
                self.handler(self._rejects[index])
            taken.append(drawn[ok])
            self.position = end
            count -= int(ok.sum())
            if count == 0:
                return np.concatenate(taken)
            if available == 0 and start == 0:
                break  # a whole epoch without one sample
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        raise ValueError(f"no usable {self.domain} samples in {len(self.shards)} shards")

    def _next_sample(self) -> dict:
        for _ in range(2):
            if self._samples is None:
                self._samples = self._epoch_samples(self.epoch, self.position)
            for sample in self._samples:
                return sample
            self._samples = None
            if self.position == 0:
                break  # a whole epoch without one sample
            self.epoch, self.position = self.epoch + 1, 0
        raise ValueError(f"no usable {self.domain} samples in {len(self.shards)} shards")

    # -- batches ------------------------------------------------------------------------------

    def image_of(self, sample: dict) -> np.ndarray:
        name = self.image_key or image_component(sample, self.domain)
        if name not in sample:
            raise KeyError(f"sample {sample['__key__']!r} has no component {name!r}")
        image = sample[name]
        return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)  # (C, H, W)

    def next_stored(self) -> tuple[np.ndarray, Sequence[dict]]:
        """The next batch as stored, (B, H, W[, C]) uint8/uint16, and its samples: from the
        cache one slice of the memory-mapped array (the samples made only when read)."""
        if self.cache is not None:
            indices = self._next_indices(self.batch_size)
            return self.cache.image[indices], CachedSamples(self.cache, indices)
        samples = [self._next_sample() for _ in range(self.batch_size)]
        return np.stack([self._stored_of(s) for s in samples]), samples

    def _stored_of(self, sample: dict) -> np.ndarray:
        name = self.image_key or image_component(sample, self.domain)
        if name not in sample:
            raise KeyError(f"sample {sample['__key__']!r} has no component {name!r}")
        return sample[name]

    def next_batch_on(self, device: torch.device) -> torch.Tensor:
        """The next batch's images on ``device``, (B, C, H, W) float32 in [-1, 1]. On CUDA the
        stored pixels cross (pinned, non-blocking) and are scaled there, next to the network;
        elsewhere as ``next_batch``. The same values either way."""
        if device.type != "cuda" or self.decode_device is not None:
            return self.next_batch()[0].to(device, non_blocking=True)
        began = time.perf_counter()
        stored, _ = self.next_stored()
        pixels = torch.from_numpy(np.ascontiguousarray(stored)).pin_memory()
        self.waited += time.perf_counter() - began
        pixels = pixels.to(device, non_blocking=True)
        return _to_unit_torch(pixels, self.scaling)

    def next_batch(self) -> tuple[torch.Tensor, Sequence[dict]]:
        """(B, C, H, W) float32 in [-1, 1], and the decoded samples (labels, keys)."""
        began = time.perf_counter()
        if self.cache is not None:
            stored, samples = self.next_stored()  # (B, H, W[, C])
            unit = self.scaling.to_unit(stored)
            images = torch.from_numpy(
                unit[:, None] if unit.ndim == 3 else unit.transpose(0, 3, 1, 2)
            )
            if self.pin:
                images = images.pin_memory()
            self.waited += time.perf_counter() - began
            return images, samples
        samples = [self._next_sample() for _ in range(self.batch_size)]
        if self.decode_device is not None:
            images = self._decoded_on_device(samples)
            self.waited += time.perf_counter() - began
            return images, samples
        # one conversion for the whole batch rather than one per image (the same arithmetic)
        images = torch.from_numpy(
            self.scaling.to_unit(np.stack([self.image_of(s) for s in samples]))
        )
        if self.pin:
            images = images.pin_memory()
        self.waited += time.perf_counter() - began
        return images, samples

    def _decoded_on_device(self, samples: list[dict]) -> torch.Tensor:
        """(B, C, H, W) float32 in [-1, 1] on ``decode_device``: the batch's JPEGs decoded
        there in one call (nvJPEG), any other image uploaded as decoded, scaled there."""
        stored = [self._stored_of(s) for s in samples]
        encoded = [i for i, x in enumerate(stored) if isinstance(x, EncodedImage)]
        on_device: list[torch.Tensor | None] = [None] * len(stored)
        if encoded:
            for i, image in zip(
                encoded, decode_on([stored[i] for i in encoded], self.decode_device), strict=True
            ):
                on_device[i] = image
        for i, x in enumerate(stored):
            if on_device[i] is None:
                on_device[i] = torch.from_numpy(np.ascontiguousarray(x)).to(self.decode_device)
        return _to_unit_torch(torch.stack(on_device), self.scaling)  # (B, H, W[, C]) in

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._samples = None
        self._order = None


class CachedSamples(Sequence):
    """A cached batch's samples (key, shard, json, image, per-pixel labels), each made only when
    read: SimGAN never reads them, so a batch costs no per-sample Python."""

    def __init__(self, cache: DecodedCache, indices: np.ndarray):
        self.cache, self.indices = cache, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.cache.sample(int(j)) for j in self.indices[i]]
        return self.cache.sample(int(self.indices[i]))


def _to_unit_torch(pixels: torch.Tensor, scaling: Scaling) -> torch.Tensor:
    """``Scaling.to_unit`` on a device, (B, H, W[, C]) -> (B, C, H, W): the same float32
    arithmetic in the same order, so the same values."""
    unit = pixels.float()
    unit -= scaling.low
    unit /= scaling.high - scaling.low
    unit.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)
    return unit[:, None] if unit.ndim == 3 else unit.permute(0, 3, 1, 2)


def _unlabeled(key: str, url: str, count: int | None) -> SampleError:
    many = f" ({count} such samples in the set)" if count and count > 1 else ""
    return SampleError(
        MISSING,
        "unlabeled (its json says \"labeled\": false or carries no label): a synthetic set "
        f"needs labels to train on{many}; unlabeled images belong in the real pool",
        key=key, component="json", url=url,
    )  # fmt: skip


def _ignore(error: SampleError) -> None:
    """Counting a shard's samples: its rejects are reported when it is read."""


def _sample_split(
    shards: list[str], world_size: int, cache: DecodedCache | None
) -> dict[str, tuple[int, int]]:
    """Fewer shards than ranks (real pools are small: 2,000 MPIIGaze crops are two shards,
    eight GPUs are common): rank r reads, from every shard, the samples whose place in the set
    (shards in the listed order, samples in shard order) is r modulo ``world_size``, disjoint
    across the ranks. {url: (place of its first sample, samples)}. Every rank counts the same
    set, so where it cannot be split (fewer samples than ranks) every rank raises the same
    error before training."""
    if cache is not None:
        counts = [count for _, count in cache.shard_ranges]
    else:
        counts = [sum(1 for _ in tar_samples(url, handler=_ignore)) for url in shards]
    total = sum(counts)
    if total < world_size:
        raise ValueError(
            f"{total} sample(s) in {len(shards)} shard(s) ({shards[0]}) cannot be split among "
            f"{world_size} ranks: each rank needs one of its own; train on at most {total}"
        )
    offsets = itertools.accumulate(counts, initial=0)
    return {
        url: (offset, count) for url, offset, count in zip(shards, offsets, counts, strict=False)
    }


T = TypeVar("T")
R = TypeVar("R")


def _explained(chunks: Iterator[R]) -> Iterator[R]:
    """The decoded chunks; a pool whose processes died says what usually kills them."""
    try:
        yield from chunks
    except BrokenProcessPool as error:
        raise RuntimeError(
            "train.data: a decoding process died. They are spawned, which imports the main "
            "script again: a script that trains must do so under `if __name__ == '__main__':`; "
            "otherwise look for the process killed for memory, or set decode_workers: 0 to "
            "decode on the loop's thread"
        ) from error


def _chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def map_ahead(
    pool: Executor, work: Callable[[T], R], items: Iterable[T], lookahead: int
) -> Iterator[R]:
    """``map(work, items)`` in order, with up to ``lookahead`` items submitted to ``pool``
    ahead of the one being taken (items are drawn lazily, on the caller's thread)."""
    pending: deque[Future[R]] = deque()
    items = iter(items)
    for item in items:
        pending.append(pool.submit(work, item))
        if len(pending) > lookahead:
            break
    while pending:
        result = pending.popleft().result()
        for item in items:  # keep the window full before handing this one out
            pending.append(pool.submit(work, item))
            break
        yield result


def _shuffled(items: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """A shuffle buffer: one draw per emitted item, so replaying it replays the same order."""
    buffer: list[dict] = []

    def draw() -> dict:
        index = int(rng.integers(len(buffer)))
        buffer[index], buffer[-1] = buffer[-1], buffer[index]
        return buffer.pop()

    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield draw()
    while buffer:
        yield draw()


def scene_labels(sample: dict, ontology: str) -> np.ndarray:
    """A decoded scene sample's seg.png in ``ontology`` ids (converted from cityscapes-19)."""
    from refinery import ontology as ontologies

    if "seg.png" not in sample:
        raise ValueError(f"sample {sample['__key__']!r} has no seg.png: scenes need labels")
    space = sample["json"].get("ontology")
    if space == ontology:
        return sample["seg.png"]
    if space == "cityscapes-19":
        return ontologies.from_train_ids(sample["seg.png"], ontology)
    raise ValueError(
        f"sample {sample['__key__']!r}: labels in {space!r} cannot become {ontology!r}; "
        f"ingest with --ontology {ontology}"
    )


class SceneStream:
    """Aligned scene batches for SG-GAN and SPIGAN: image, semantic map and depth, cropped alike.

    ``next_batch()`` gives ``{"image": (B, 3, h, w) float32 in [-1, 1], "seg": (B, h, w) int64
    ids of ``ontology`` (255 = ignore), "depth": (B, 1, h, w) float32 in [0, 1] (depth /
    ``depth_max``; absent without depth.png), "depth_valid": (B, 1, h, w) bool}``, and with
    ``fine_ontology`` also ``"seg_fine"`` (B, h, w) in those ids. Labels in
    ``cityscapes-19`` train ids (the street simulator, ingest's default) are converted to
    ``ontology``; other label spaces must already be ``ontology``. Depth 0 (no measurement) and
    65535 (sky in the street simulator) are invalid. With ``crop=(h, w)`` every sample is cut at
    one random offset for its image, seg and depth, drawn from torch's global generator, which
    the checkpoints save, so a resumed run cuts the same crops.

    ``"labeled"`` (B,) bool says which samples carry labels. With ``labels=False`` (a real pool)
    a sample may be unlabeled (its image alone, or ``"labeled": false``): its ``seg`` and
    ``seg_fine`` are all ``IGNORE``. With ``labels=True`` an unlabeled sample is an error.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        batch_size: int,
        seed: int,
        ontology: str = "cityscapes-19",
        fine_ontology: str | None = None,
        crop: tuple[int, int] | None = None,
        depth_max: float = 10000.0,
        shuffle_buffer: int = 2000,
        rank: int = 0,
        world_size: int = 1,
        labels: bool = True,
        decoders: int = 0,
        pin: bool = False,
        cache: bool = False,
        decode_device: str | torch.device | None = None,
    ):
        self.images = ImageStream(
            urls,
            domain="scene",
            batch_size=batch_size,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            rank=rank,
            world_size=world_size,
            labels=labels,
            decoders=decoders,
            cache=cache,
            decode_device=decode_device,
        )
        self.ontology, self.crop, self.depth_max = ontology, crop, depth_max
        self.pin = pin
        self.waited = 0.0  # seconds next_batch kept its caller waiting (see ImageStream)
        self.fine_ontology = fine_ontology  # a second map, e.g. classes finer than the groups

    @property
    def shards(self) -> list[str]:
        return self.images.shards

    @property
    def epoch(self) -> int:
        return self.images.epoch

    @property
    def labels(self) -> bool:
        return self.images.labels

    def _seg(self, sample: dict, ontology: str) -> np.ndarray:
        """(H, W) ids of ``ontology``; all ``IGNORE`` for an unlabeled sample."""
        if is_labeled(sample):
            return scene_labels(sample, ontology)
        if self.labels:
            raise ValueError(
                f"sample {sample['__key__']!r} is unlabeled, but this stream needs labels "
                "(only a real pool, labels=False, may hold unlabeled scenes)"
            )
        height, width = sample[image_component(sample, "scene")].shape[:2]
        return np.full((height, width), IGNORE, np.uint8)

    def next_batch(self) -> dict[str, torch.Tensor]:
        began = time.perf_counter()
        batch = self._next_batch()
        if self.pin:
            batch = {k: v.pin_memory() if v.device.type == "cpu" else v for k, v in batch.items()}
        self.waited += time.perf_counter() - began
        return batch

    def _next_batch(self) -> dict[str, torch.Tensor]:
        images, samples = self.images.next_batch()  # (B, 3, H, W)
        if isinstance(samples, CachedSamples):
            batch = self._cached_labels(samples)
            batch["image"] = images
            return self._cropped(batch) if self.crop is not None else batch
        seg = np.stack([self._seg(s, self.ontology) for s in samples])  # (B, H, W)
        batch = {
            "image": images,
            "seg": torch.from_numpy(seg.astype(np.int64)),
            "labeled": torch.tensor([is_labeled(s) for s in samples]),  # (B,) bool
        }
        if self.fine_ontology is not None:
            fine = np.stack([self._seg(s, self.fine_ontology) for s in samples])
            batch["seg_fine"] = torch.from_numpy(fine.astype(np.int64))
        if all("depth.png" in s for s in samples):
            raw = np.stack([s["depth.png"] for s in samples])[:, None].astype(np.float32)
            batch["depth_valid"] = torch.from_numpy((raw > 0) & (raw < 65535))
            batch["depth"] = torch.from_numpy(np.clip(raw / self.depth_max, 0.0, 1.0))
        if self.crop is not None:
            batch = self._cropped(batch)
        return batch

    def _cached_labels(self, samples: CachedSamples) -> dict[str, torch.Tensor]:
        """``_next_batch``'s labels from the cache's arrays, a batch at a time (the same
        values as sample by sample)."""
        cache, indices = samples.cache, samples.indices
        labeled = cache.labeled[indices]  # (B,)
        if self.labels and not labeled.all():
            key = cache.keys[int(indices[np.flatnonzero(~labeled)[0]])]
            raise ValueError(
                f"sample {key!r} is unlabeled, but this stream needs labels "
                "(only a real pool, labels=False, may hold unlabeled scenes)"
            )
        height, width = cache.image.shape[1:3]
        if "seg.png" in cache.extras:
            raw = cache.extras["seg.png"][indices]  # (B, H, W) uint8
        else:
            raw = np.full((len(indices), height, width), IGNORE, np.uint8)

        spaces = [cache.labels[int(i)]["ontology"] if ok else None
                  for i, ok in zip(indices.tolist(), labeled.tolist(), strict=True)]  # fmt: skip

        def seg(ontology: str) -> torch.Tensor:
            converted = np.array([space == "cityscapes-19" != ontology for space in spaces])
            for i, space in enumerate(spaces):
                if space not in (None, ontology, "cityscapes-19"):
                    raise ValueError(
                        f"sample {cache.keys[int(indices[i])]!r}: labels in {space!r} cannot "
                        f"become {ontology!r}; ingest with --ontology {ontology}"
                    )
            ids = raw
            if converted.any():
                from refinery import ontology as ontologies

                ids = np.where(
                    converted[:, None, None], ontologies.from_train_ids(raw, ontology), raw
                )
            ids = np.where(labeled[:, None, None], ids, np.uint8(IGNORE))
            return torch.from_numpy(ids.astype(np.int64))

        batch = {"seg": seg(self.ontology), "labeled": torch.from_numpy(labeled.copy())}
        if self.fine_ontology is not None:
            batch["seg_fine"] = seg(self.fine_ontology)
        if "depth.png" in cache.extras and cache.present["depth.png"][indices].all():
            raw_depth = cache.extras["depth.png"][indices][:, None].astype(np.float32)
            batch["depth_valid"] = torch.from_numpy((raw_depth > 0) & (raw_depth < 65535))
            batch["depth"] = torch.from_numpy(np.clip(raw_depth / self.depth_max, 0.0, 1.0))
        return batch

    def _cropped(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        height, width = batch["image"].shape[-2:]
        ch, cw = self.crop
        if ch > height or cw > width:
            raise ValueError(f"crop {self.crop} is larger than the images ({height}, {width})")
        out: dict[str, list[torch.Tensor]] = {k: [] for k in batch}
        for i in range(len(batch["image"])):
            top = int(torch.randint(0, height - ch + 1, ()))
            left = int(torch.randint(0, width - cw + 1, ()))
            for key, value in batch.items():
                if value.ndim < 3:  # per-sample values, e.g. "labeled" (B,)
                    out[key].append(value[i])
                else:
                    out[key].append(value[i, ..., top : top + ch, left : left + cw])
        return {k: torch.stack(v) for k, v in out.items()}

    def check_labeled(self) -> None:
        """See ``ImageStream.check_labeled``."""
        self.images.check_labeled()

    def state_dict(self) -> dict[str, int]:
        return self.images.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.images.load_state_dict(state)
