"""Refined samples in-process: an iterable a torch DataLoader can use, no shards written.

    dataset = deploy.stream("engines/gaze", "data/gaze/synthetic")
    loader = dataset.loader(num_workers=2)  # a DataLoader: spawn where the engine needs CUDA
    for sample in loader:  # {"__key__", "png": refined (35, 55) uint8, "json": labels}
        ...

Each DataLoader worker takes every ``num_workers``-th shard and loads its own engine (an
engine is not shared across processes); with ``num_workers=0`` the calling process does all.
A worker that runs a CUDA engine must not be forked from a process that has initialised CUDA:
``loader()`` starts workers with the ``spawn`` method whenever the engine runs on CUDA (a
``cuda`` device, or the ``tensorrt`` backend), and a worker forked after CUDA was initialised
stops with an error that says so instead of CUDA's own.

Samples come out in shard order with the refined image in place of the synthetic one and the
labels untouched; with ``decode=True`` (default) components are decoded by the sample contract
(images to arrays, ``json`` to dicts), otherwise they stay bytes as in a refined shard. A bad
sample goes to ``handler``: ``reraise`` by default, or ``refinery.shards.Rejects()`` to skip
and count it. The stages are the refine job's (``deploy.stages``), in the calling thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from deploy.job import assemble, image_components
from deploy.stages import (
    Item,
    decode_item,
    encode_item,
    read_batches,
    refine_batches,
    upstream,
)
from refinery.samples import decode_component
from refinery.shards import Handler, expand_urls, reraise

_PROVENANCE = b'{"stream": true}'


class RefinedStream(torch.utils.data.IterableDataset):
    def __init__(
        self,
        engine: str | Path | Any,
        urls: str | Sequence[str],
        *,
        backend: str = "onnxruntime",
        device: str | None = None,
        batch: int = 64,
        decode: bool = True,
        handler: Handler = reraise,
    ):
        super().__init__()
        self.engine = engine
        self.urls = expand_urls(urls)
        self.backend, self.device = backend, device
        self.batch, self.decode, self.handler = batch, decode, handler

    @property
    def needs_cuda(self) -> bool:
        if not isinstance(self.engine, str | Path):
            return getattr(self.engine, "device", torch.device("cpu")).type == "cuda"
        return self.backend == "tensorrt" or str(self.device or "").startswith("cuda")

    def start_method(self, num_workers: int) -> str | None:
        """How DataLoader workers must start: ``spawn`` for a CUDA engine (CUDA cannot be
        initialised again in a forked child), None (the platform's default) otherwise."""
        return "spawn" if num_workers > 0 and self.needs_cuda else None

    def loader(self, num_workers: int = 0, **options: Any) -> torch.utils.data.DataLoader:
        """A DataLoader over this stream, one sample at a time, workers started safely."""
        options.setdefault("multiprocessing_context", self.start_method(num_workers))
        return torch.utils.data.DataLoader(
            self, batch_size=None, num_workers=num_workers, **options
        )

    def _engine(self):
        info = torch.utils.data.get_worker_info()
        in_bad_fork = getattr(torch.cuda, "_is_in_bad_fork", lambda: False)
        if info is not None and self.needs_cuda and in_bad_fork():
            raise RuntimeError(
                "deploy.stream: this DataLoader worker was forked from a process that had "
                "already initialised CUDA, so it cannot run a CUDA engine; start the workers "
                "with spawn: stream(...).loader(num_workers=N), or DataLoader(..., "
                "multiprocessing_context='spawn')"
            )
        if not isinstance(self.engine, str | Path):
            return self.engine
        import engines

        options = {"device": self.device} if self.device else {}
        return engines.load(self.engine, backend=self.backend, **options)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        urls = self.urls if info is None else self.urls[info.id :: info.num_workers]
        if not urls:
            return
        engine = self._engine()
        kind, components = engine.spec.io.pixel_kind, image_components(engine.spec)
        decode, encode = decode_item(kind), encode_item(kind)
        batches = read_batches(urls, size=self.batch, components=components, kind=kind)
        for batch in refine_batches(_each(batches, decode), engine):
            for item in batch.items:
                if item.error is not None:
                    self.handler(item.error.with_url(batch.url))
                    continue
                yield self._sample(item, batch.url, engine.spec.domain, encode)

    def _sample(self, item: Item, url: str, domain: str, encode) -> dict[str, Any]:
        if not self.decode:
            encode(item)
            sample = assemble(item, provenance=_PROVENANCE, keep_original=False)
            del sample["refinery.json"]
            return sample
        sample: dict[str, Any] = {"__key__": item.key, "__url__": url}
        for name, value in item.sample.items():
            if name == item.component:
                sample[name] = item.refined
            elif not name.startswith("__"):
                sample[name] = decode_component(name, value, domain)
        return sample


def _each(batches, work):
    with upstream(batches) as batches:
        for batch in batches:
            for item in batch.items:
                work(item)
            yield batch


def stream(engine: str | Path | Any, urls: str | Sequence[str], **options: Any) -> RefinedStream:
    """Refined samples of ``urls`` through ``engine`` (a directory or a loaded engine)."""
    return RefinedStream(engine, urls, **options)
