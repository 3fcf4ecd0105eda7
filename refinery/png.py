"""Lossless PNG writing near the codec's floor, a batch at a time.

The refine job re-encodes every image it refines; for a 35x55 eye crop OpenCV's PNG encoder
(libpng + zlib, level 3) costs ~75 us, more than decoding it, most of it zlib's per-call set-up
(a 256 KiB deflate state allocated and cleared for 2 KB of pixels). Here the scanlines of a
whole batch are filtered in one NumPy operation (PNG filter type 1, Sub, on every row: each byte
minus the one ``bpp`` bytes to its left) and each image's rows go to libdeflate (the ``deflate``
package), which keeps no streaming state: ~30 us per crop, files within a few percent of
OpenCV's.

PNG is lossless whatever the encoder: ``cv2.imdecode`` of these bytes gives back the exact
pixels (tests check every kind), only the bytes differ from OpenCV's. ``ENCODER`` names the
setting, which the refine job records in every shard's stats.

    blobs = encode_pngs(pixels, "gray8")   # (B, H, W) uint8 -> B PNG byte strings
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from deflate import zlib_compress

GRAY8, RGB8, DEPTH16 = "gray8", "rgb8", "depth16"  # refinery.samples kinds
LEVEL = 1  # libdeflate level: the fastest, and files about as small as OpenCV's at 3
ENCODER = f"libdeflate-{LEVEL}-sub"

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# kind -> (bit depth, colour type, bytes per pixel)
_FORMAT = {GRAY8: (8, 0, 1), RGB8: (8, 2, 3), DEPTH16: (16, 0, 2)}


def _chunk(tag: bytes, data: bytes) -> bytes:
    return b"".join(
        (
            struct.pack(">I", len(data)),
            tag,
            data,
            struct.pack(">I", zlib.crc32(data, zlib.crc32(tag))),
        )
    )


_IEND = _chunk(b"IEND", b"")


def scanlines(pixels: np.ndarray, kind: str) -> np.ndarray:
    """(B, H, W[, C]) pixels -> (B, H, 1 + W * bpp) uint8 PNG scanlines, every row Sub-filtered
    (big-endian samples for 16-bit, as PNG stores them)."""
    depth, _, bpp = _FORMAT[kind]
    batch, height = pixels.shape[:2]
    raw = pixels.astype(">u2") if depth == 16 else pixels
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(batch, height, -1)  # (B, H, W*bpp)
    rows = np.empty((batch, height, 1 + raw.shape[2]), np.uint8)
    rows[:, :, 0] = 1  # filter type Sub
    rows[:, :, 1 : 1 + bpp] = raw[:, :, :bpp]
    np.subtract(raw[:, :, bpp:], raw[:, :, :-bpp], out=rows[:, :, 1 + bpp :])  # mod 256
    return rows


def _check(pixels: np.ndarray, kind: str) -> None:
    if kind not in _FORMAT:
        raise ValueError(f"no PNG format for kind {kind!r}; expected one of {', '.join(_FORMAT)}")
    dtype = np.uint16 if kind == DEPTH16 else np.uint8
    ndim = 4 if kind == RGB8 else 3
    if pixels.dtype != dtype or pixels.ndim != ndim or (kind == RGB8 and pixels.shape[3] != 3):
        raise ValueError(
            f"{kind} PNGs need a (B, H, W{', 3' if kind == RGB8 else ''}) {np.dtype(dtype)} "
            f"batch, got shape {tuple(pixels.shape)} dtype {pixels.dtype}"
        )
    if pixels.size == 0 and pixels.shape[0] != 0:
        raise ValueError(f"cannot encode empty images of shape {tuple(pixels.shape[1:])}")


def encode_pngs(pixels: np.ndarray, kind: str, *, level: int = LEVEL) -> list[bytes]:
    """One PNG per image of a (B, H, W[, C]) batch of one size."""
    _check(pixels, kind)
    if len(pixels) == 0:
        return []
    depth, colour, _ = _FORMAT[kind]
    height, width = pixels.shape[1:3]
    head = _SIGNATURE + _chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    )
    return [
        b"".join((head, _chunk(b"IDAT", zlib_compress(rows.tobytes(), level)), _IEND))
        for rows in scanlines(pixels, kind)
    ]


def encode_png(image: np.ndarray, kind: str, *, level: int = LEVEL) -> bytes:
    """One (H, W[, C]) image."""
    return encode_pngs(image[None], kind, level=level)[0]
