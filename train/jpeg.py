"""Large JPEG frames decoded on the GPU, a batch at a time (nvJPEG through torchvision).

A 1024x2048 street frame costs tens of milliseconds to decode on a CPU core; nvJPEG decodes a
batch of them on the device, where the network waits. With ``decode_device`` a CUDA device,
``train.data`` streams that decode as they read (frames too large for ``train.cache``) leave
each sample's ``jpg`` undecoded in their worker processes: the worker still decodes and checks
every other component (labels, ``seg.png``, ``depth.png``: PNG stays exact, on the CPU) and
the image's size, read from the JPEG header, against them; ``next_batch`` then decodes the
batch's JPEGs in one ``torchvision.io.decode_jpeg`` call on the device. Without CUDA or
torchvision (imported only here, only when asked) frames decode on the CPU pool as before.
nvJPEG's pixels may differ from libjpeg's by a grey level (IDCT rounding); labels never pass
through it.

``decode_draws_deferred`` is the worker's unit of work: it imports no torch, so a spawned
worker starts in a fraction of a second.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from refinery.samples import (
    SampleError,
    check_labels,
    decode_or_reject,
    missing_components,
)

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, channels) from a JPEG's frame header; None when it is not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF and i + 10 <= len(data):
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return height, width, data[i + 9]
        i += 2 + length
    return None


@dataclass(frozen=True)
class EncodedImage:
    """A JPEG left for the GPU: its bytes and the shape it decodes to (H, W, 3)."""

    data: bytes
    shape: tuple[int, int, int]


def decode_draws_deferred(
    draws: list[tuple[Any, Mapping[str, Any]]],
    domain: str,
    *,
    labels: bool = True,
    defer: str = "jpg",
) -> list[tuple[Any, dict[str, Any] | SampleError]]:
    """``refinery.samples.decode_draws`` that leaves an RGB JPEG ``defer`` component encoded
    (an ``EncodedImage``), after the same checks, with its size from the header."""
    return [(tag, _decode_deferring(s, domain, labels, defer)) for tag, s in draws]


def _decode_deferring(
    sample: Mapping[str, Any], domain: str, labels: bool, defer: str
) -> dict[str, Any] | SampleError:
    key = sample.get("__key__")
    url = sample.get("__url__", "<stream>")
    try:
        missing_components(sample, domain, key=key, labels=labels)
        out: dict[str, Any] = {}
        held = None
        for name, value in sample.items():
            if name.startswith("__"):
                out[name] = value
                continue
            if name == defer and isinstance(value, bytes):
                size = jpeg_size(value)
                if size is not None and size[2] == 3 and size[0] and size[1]:
                    held = EncodedImage(value, size)
                    # a view of the right shape for the size checks; no pixels are made
                    out[name] = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), size)
                    continue
            out[name] = decode_or_reject(name, value, domain, key)
        check_labels(out, domain)
        if held is not None:
            out[defer] = held
        return out
    except SampleError as error:
        return error.with_url(url)


def deferring(domain: str, labels: bool) -> functools.partial:
    return functools.partial(decode_draws_deferred, domain=domain, labels=labels)


@functools.cache
def gpu_jpeg_available() -> bool:
    """Whether torchvision can decode JPEG on a CUDA device here (imported only when asked)."""
    try:
        import torch
        import torchvision.io  # noqa: F401
    except Exception:  # torchvision beside a CPU torch raises RuntimeError, not ImportError
        return False
    return torch.cuda.is_available()


def decode_on(images: Sequence[EncodedImage], device):
    """(B, H, W, 3) uint8 on ``device``: the batch's JPEGs decoded by nvJPEG in one call."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(i.data), dtype=torch.uint8) for i in images]
    decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # [(3, H, W)]
    return torch.stack(decoded).permute(0, 2, 3, 1)
