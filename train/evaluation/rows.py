"""Decoded samples kept on disk and read back a batch at a time, so that ``evaluate`` and
``train-task`` hold a fixed amount of memory however many samples their sets have.

A set is decoded once (PNG, depth, labels) into compact rows, the stored form (8-bit pixels,
class maps), written to a file in a scratch directory. ``Rows`` reads any rows back by index
with ``os.pread`` (no memory map: the pages stay in the kernel's page cache, not in the
process) and turns them into what the network takes (``transform``: e.g. 8-bit pixels to
float32 in [-1, 1], channels first). It indexes like a tensor's first axis::

    writer = RowWriter(scratch / "inputs", transform=to_network)
    for image in decoded:
        writer.append(image)                   # (H, W, 3) uint8, one per sample
    inputs = writer.finish()                   # Rows; RowWriter(None, ...) gives a tensor
    inputs[torch.tensor([7, 2, 9])]            # (3, 3, H, W) float32, read from disk
    inputs[0:256], inputs.take(index)          # a range; a view of other rows (no reading)

``ahead(fn, items)`` computes ``fn`` of the next item on a background thread while the caller
works on the current one (one batch read while the network trains on the last).

The disk a set takes is its stored form: a 256×512 RGB frame with its class map is 512 KiB.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from train.data import map_ahead

Transform = Callable[[np.ndarray], np.ndarray]
T = TypeVar("T")
R = TypeVar("R")


def _identity(x: np.ndarray) -> np.ndarray:
    return x


class Rows:
    """``len`` rows of one shape and dtype in a file; ``rows[key]`` reads them as a tensor.

    ``key``: an int, a slice with step 1, or a sequence / 1-D tensor of indices (any order,
    repeats allowed). ``shape`` and ``dtype`` are those of the transformed rows.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        dtype: np.dtype,
        count: int,
        transform: Transform = _identity,
        index: np.ndarray | None = None,
        fd: int | None = None,
    ):
        self.path = Path(path)
        self.row_shape = tuple(shape)
        self.stored = np.dtype(dtype)
        self.row_bytes = int(np.prod(shape, dtype=np.int64)) * self.stored.itemsize
        self.count = count  # rows in the file
        self.transform = transform
        self.index = index  # None: every row of the file, in order
        self.fd = os.open(self.path, os.O_RDONLY) if fd is None else fd
        self._owner = fd is None
        probe = transform(np.zeros((1, *self.row_shape), self.stored))
        self.shape = (len(self), *probe.shape[1:])
        self.dtype = torch.from_numpy(np.ascontiguousarray(probe)).dtype

    def __len__(self) -> int:
        return self.count if self.index is None else len(self.index)

    def __del__(self) -> None:
        if getattr(self, "_owner", False):
            with suppress(OSError):
                os.close(self.fd)

    def _file_rows(self, key: Any) -> np.ndarray | slice:
        """``key`` as rows of the file: a slice when they are one run, else an index array."""
        n = len(self)
        if isinstance(key, int | np.integer):
            if not -n <= key < n:
                raise IndexError(f"row {key} of {n}")
            key = np.array([key % n])
        elif isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise IndexError("Rows take slices with step 1")
            if self.index is None:
                return slice(start, max(start, stop))
            key = np.arange(start, max(start, stop))
        else:
            key = np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key, np.int64)
            if key.ndim != 1:
                raise IndexError(f"Rows take a 1-D index, got shape {key.shape}")
            if key.size and (key.min() < -n or key.max() >= n):
                raise IndexError(f"index out of range for {n} rows")
            key = key % n if key.size else key
        rows = key if self.index is None else self.index[key]
        if len(rows) > 1 and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            return slice(int(rows[0]), int(rows[-1]) + 1)  # one run: one read
        return rows

    def read(self, key: Any) -> np.ndarray:
        """The stored rows of ``key`` (untransformed), as a numpy array."""
        rows = self._file_rows(key)
        if isinstance(rows, slice):
            out = np.empty((rows.stop - rows.start, *self.row_shape), self.stored)
            self._pread(out, rows.start)
            return out
        out = np.empty((len(rows), *self.row_shape), self.stored)
        for i, row in enumerate(rows.tolist()):
            self._pread(out[i : i + 1], row)
        return out

    def _pread(self, out: np.ndarray, row: int) -> None:
        view = memoryview(out.reshape(-1).view(np.uint8))
        offset, done = row * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read at row {row}")
            done += got

    def __getitem__(self, key: Any) -> torch.Tensor:
        single = isinstance(key, int | np.integer)
        out = torch.from_numpy(np.ascontiguousarray(self.transform(self.read(key))))
        return out[0] if single else out

    def take(self, index: Iterable[int]) -> Rows:
        """A view of the rows at ``index``, in that order; nothing is read."""
        picked = np.asarray(list(index), np.int64)
        rows = np.arange(self.count) if self.index is None else self.index
        return Rows(
            self.path,
            self.row_shape,
            self.stored,
            self.count,
            self.transform,
            rows[picked],
            fd=self.fd,
        )._keep(self)

    def _keep(self, parent: Rows) -> Rows:
        self._parent = parent  # the file stays open while a view of it lives
        return self


class RowWriter:
    """Rows appended one by one: into ``path`` (``finish`` gives ``Rows``), or, with ``path``
    None, into memory (``finish`` gives the transformed tensor of all of them)."""

    def __init__(self, path: Path | None, *, transform: Transform = _identity):
        self.path = None if path is None else Path(path)
        self.transform = transform
        self.rows: list[np.ndarray] = []
        self.file = None if self.path is None else open(self.path, "wb")  # noqa: SIM115
        self.first: np.ndarray | None = None
        self.count = 0

    def append(self, row: np.ndarray) -> None:
        row = np.ascontiguousarray(row)
        if self.first is None:
            self.first = row
        elif row.shape != self.first.shape or row.dtype != self.first.dtype:
            raise ValueError(
                f"row {self.count} is {row.dtype}{row.shape}, the first was "
                f"{self.first.dtype}{self.first.shape}"
            )
        if self.file is None:
            self.rows.append(row)
        else:
            self.file.write(row.tobytes())
        self.count += 1

    def finish(self) -> torch.Tensor | Rows:
        if self.first is None:
            raise ValueError("no rows were written")
        if self.file is None:
            return torch.from_numpy(np.ascontiguousarray(self.transform(np.stack(self.rows))))
        self.file.close()
        return Rows(self.path, self.first.shape, self.first.dtype, self.count, self.transform)


INFERENCE_PIXELS = 2**20  # pixels per inference batch: its activations, not the set, set the peak


def inference_batch(shape: tuple[int, ...], *, most: int = 256) -> int:
    """Images per inference batch for images of ``shape`` (..., H, W): ``INFERENCE_PIXELS``
    pixels, at least 1 and at most ``most`` images (256 for 35×55 eyes, 128 for 64×128
    frames, 8 for 256×512 ones)."""
    return max(1, min(most, INFERENCE_PIXELS // (int(shape[-2]) * int(shape[-1]))))


def take(x: torch.Tensor | Rows, index: Iterable[int]) -> torch.Tensor | Rows:
    """The rows of ``x`` at ``index``: a view of ``Rows``, a copy of a tensor."""
    if isinstance(x, Rows):
        return x.take(index)
    return x[torch.as_tensor(list(index), dtype=torch.long)]


def ahead(fn: Callable[[T], R], items: Iterable[T], depth: int = 1) -> Iterator[R]:
    """``fn(item)`` for each item in order, the next ``depth`` computed on a background thread
    while the caller uses the current one."""
    with ThreadPoolExecutor(1, thread_name_prefix="refinery-rows") as pool:
        yield from map_ahead(pool, fn, items, depth)


@contextmanager
def scratch_directory(parent: str | Path | None, purpose: str) -> Iterator[Path]:
    """A new directory for decoded sets under ``parent`` (default: the system's temporary
    directory, ``$TMPDIR``), removed with everything in it at the end."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"refinery-{purpose}-", dir=parent) as where:
        yield Path(where)


def scratch_file(scratch: Path | None, name: str) -> Path | None:
    """A new, empty file in ``scratch`` for one set's ``name`` rows; None (rows kept in memory)
    without a scratch directory."""
    if scratch is None:
        return None
    handle, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".rows", dir=scratch)
    os.close(handle)
    return Path(path)
