"""DALI decoding for a refine job: one pipeline for the whole job, fed from the tar reader.

The job reads each shard once, with Refinery's strict tar reader; the encoded images of a batch
go into DALI through ``fn.external_source`` and come out decoded, on the GPU with ``mixed``
decoding (nvJPEG, and the hardware JPEG decoder where the GPU has one) or on the CPU with
``device_id=None``. That is what DALI is used for by default: JPEG scenes on a GPU. PNG is
decoded on the CPU in either mode, so the job's OpenCV pool takes it unless ``--decoder dali``
asks for DALI everywhere (CPU mode without a GPU; it gives byte-identical pixels).

DALI stops a pipeline at the first image it cannot decode ("Current pipeline object is no
longer valid"), so an image goes to DALI only after ``image_intact`` (PNG chunk CRCs, JPEG
markers) and the PNG header check; one that still fails there costs a rebuilt pipeline, and
that batch's images are left to the OpenCV pool, which rejects the bad one alone.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from deploy.stages import Batch, Item, image_intact, upstream
from refinery.samples import DEPTH16, GRAY8, RGB8


def have_dali() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


class DaliDecoder:
    """Decode the items it ``takes`` with one DALI pipeline of batch size ``batch``."""

    def __init__(
        self,
        kind: str,
        *,
        batch: int,
        threads: int,
        device_id: int | None,
        everything: bool = False,
    ):
        if kind not in (GRAY8, RGB8, DEPTH16):
            raise ValueError(f"DALI cannot decode pixel kind {kind!r}")
        self.kind, self.batch, self.threads, self.device_id = kind, batch, threads, device_id
        self.everything = everything  # PNG too (--decoder dali), not only JPEG
        self.device = torch.device("cpu" if device_id is None else f"cuda:{device_id}")
        self.rebuilds = 0
        self._pipe = self._build()

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        # one batch in, the same batch out: no prefetching of inputs that were never fed
        @pipeline_def(
            batch_size=self.batch,
            num_threads=self.threads,
            device_id=self.device_id,
            exec_async=False,
            exec_pipelined=False,
        )
        def decode():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            device = "cpu" if self.device_id is None else "mixed"
            if self.kind == DEPTH16:
                return fn.decoders.image(
                    encoded, device=device, output_type=types.ANY_DATA, dtype=types.UINT16
                )
            output = types.GRAY if self.kind == GRAY8 else types.RGB
            return fn.decoders.image(encoded, device=device, output_type=output)

        pipe = decode()
        pipe.build()
        return pipe

    def takes(self, item: Item) -> bool:
        if not item.pending:
            return False
        data = item.sample[item.component]
        return (self.everything or item.component == "jpg") and image_intact(data)

    def decode(self, items: list[Item]) -> None:
        """Decode ``items`` (at most ``batch``); on a DALI failure they stay pending."""
        self._pipe.feed_input(
            "encoded", [np.frombuffer(it.sample[it.component], np.uint8) for it in items]
        )
        try:
            (images,) = self._pipe.run()
        except RuntimeError:
            self._pipe = self._build()  # the failed one is no longer valid; the pool decodes
            self.rebuilds += 1
            return
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        dtype = torch.uint16 if self.kind == DEPTH16 else torch.uint8
        for j, item in enumerate(items):
            decoded = images[j]  # (H, W, C), host or device memory
            image = torch.empty(decoded.shape(), dtype=dtype, device=self.device)
            # DALI's own feed_ndarray knows no uint16; this is the copy it makes
            target = ctypes.c_void_p(image.data_ptr())
            if stream is None:
                decoded.copy_to_external(target)
            else:
                decoded.copy_to_external(
                    target, cuda_stream=ctypes.c_void_p(stream.cuda_stream), non_blocking=True
                )
            if self.kind != RGB8:
                image = image[..., 0]
            item.image = image.numpy() if stream is None else image
            item.decoder = "dali"
        if stream is not None:
            stream.synchronize()  # CPU-GPU sync: the engine, on another thread, reads these

    def __call__(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        with upstream(batches) as batches:
            for batch in batches:
                chosen = [item for item in batch.items if self.takes(item)]
                for start in range(0, len(chosen), self.batch):
                    self.decode(chosen[start : start + self.batch])
                yield batch
