"""Refined samples in-process: an iterable a torch DataLoader can use, no shards written.

    dataset = deploy.stream("engines/gaze", "data/gaze/synthetic")
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)

Each DataLoader worker takes every ``num_workers``-th shard and loads its own engine (an
engine is not shared across processes); with ``num_workers=0`` the calling process does all.
Samples come out in shard order with the refined image in place of the synthetic one and the
labels untouched; with ``decode=True`` (default) components are decoded by the sample contract
(images to arrays, ``json`` to dicts), otherwise they stay bytes as in a refined shard. A bad
sample goes to ``handler``: ``reraise`` by default, or ``refinery.shards.Rejects()`` to skip
and count it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from deploy.job import assemble, image_components, read_items, refine_items
from refinery.samples import decode_component
from refinery.shards import Handler, expand_urls, reraise


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
        decoder: str = "dali",
        handler: Handler = reraise,
    ):
        super().__init__()
        self.engine = engine
        self.urls = expand_urls(urls)
        self.backend, self.device = backend, device
        self.batch, self.decode, self.decoder, self.handler = batch, decode, decoder, handler

    def _engine(self):
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
        provenance = b'{"stream": true}'
        for url in urls:
            chunk = []
            items = read_items(url, components=components, kind=kind, decoder=self.decoder)
            for item in items:
                chunk.append(item)
                if len(chunk) >= self.batch:
                    yield from self._finish(engine, chunk, kind, provenance, url)
                    chunk = []
            yield from self._finish(engine, chunk, kind, provenance, url)

    def _finish(self, engine, chunk, kind, provenance, url) -> Iterator[dict[str, Any]]:
        refine_items(engine, chunk)
        for item in chunk:
            if item.error is not None:
                self.handler(item.error.with_url(url))
                continue
            if not self.decode:
                sample = assemble(item, kind=kind, provenance=provenance, keep_original=False)
                del sample["refinery.json"]
                yield sample
                continue
            sample = {"__key__": item.key, "__url__": url}
            domain = engine.spec.domain
            for name, value in item.sample.items():
                if name.startswith("__"):
                    continue
                if name == item.component:
                    sample[name] = item.refined
                else:
                    sample[name] = decode_component(name, value, domain)
            yield sample


def stream(engine: str | Path | Any, urls: str | Sequence[str], **options: Any) -> RefinedStream:
    """Refined samples of ``urls`` through ``engine`` (a directory or a loaded engine)."""
    return RefinedStream(engine, urls, **options)
