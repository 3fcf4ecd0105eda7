"""Shard I/O: WebDataset tar shards by URL, written atomically and read strictly.

URLs are local paths, ``file://`` URLs, ``pipe:<command>`` (opened through webdataset's
``gopen``, so they behave exactly as in ``wds.WebDataset``) or any fsspec URL (``s3://``,
``gs://``, ``memory://``...). Lists are brace-expanded (``data-{000..099}.tar``) and may be
joined with ``::`` as in webdataset; a local directory stands for the ``*.tar`` files in it.

Reading is a pipeline of small stages (see ``read``)::

    expand_urls(urls) -> tar_samples(url) per shard -> decoded(samples, domain)

Each stage takes an error ``handler``. The default, ``reraise``, fails on the first bad sample;
``Rejects()`` skips bad samples and records each with its shard, key, component and reason.
Either way a bad sample is never silently dropped. Members are handed on as bytes: nothing is
unpickled (a ``.pyd`` member stays bytes) and nothing from a label is evaluated.

Python's ``tarfile`` accepts a stream that stops at a header boundary or inside a header as a
complete archive; ``_StrictTarInfo`` turns those into errors, so a truncated shard is always
reported.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import urlparse

import braceexpand
import numpy as np

from refinery.samples import (
    BAD_KEY,
    BAD_MEMBER,
    DUPLICATE,
    TRUNCATED,
    UNREADABLE,
    SampleError,
    decode_or_error,
)
from refinery.store import filesystem as _fs
from refinery.store import is_local as _is_local
from refinery.store import local_path as _local_path
from refinery.store import stale_temp as stale_temp  # importable from here, as before
from refinery.store import temp_name, write_failure
from refinery.store import temp_tag as temp_tag

Handler = Callable[[SampleError], None]
Sample = dict[str, Any]


# -- URLs -------------------------------------------------------------------------------------


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace-expand a URL spec (or a list of them) into shard URLs, in order.

    ``a-{00..02}.tar::b.tar`` gives four URLs; a local directory gives its ``*.tar`` files
    sorted by name.
    """
    specs = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for spec in specs:
        for part in spec.split("::"):
            if not part:
                continue
            for url in braceexpand.braceexpand(part):
                if _is_local(url) and os.path.isdir(_local_path(url)):
                    out.extend(str(p) for p in sorted(Path(_local_path(url)).glob("*.tar")))
                else:
                    out.append(url)
    if not out:
        raise ValueError(f"no shards in {urls!r}")
    return out


def shard_name(url: str) -> str:
    """The file name of a shard URL (``pipe:`` commands have none; their full text is used)."""
    if url.startswith("pipe:"):
        return url
    return os.path.basename(urlparse(url).path if "://" in url else url)


def open_url(url: str, mode: str = "rb") -> IO[bytes]:
    """Open a shard URL for reading or writing bytes."""
    if mode not in ("rb", "wb"):
        raise ValueError(f"mode must be 'rb' or 'wb', not {mode!r}")
    if url.startswith("pipe:"):
        # webdataset imports torch (seconds): only a pipe needs it, not a refine worker
        from webdataset.gopen import gopen

        return gopen(url, mode)
    if _is_local(url):
        return open(_local_path(url), mode)
    import fsspec  # a remote URL only: its import (with asyncio) is half a worker's start-up

    return fsspec.open(url, mode).open()


_KEY_AND_COMPONENT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def base_plus_ext(name: str) -> tuple[str | None, str | None]:
    """``<key>.<component>`` split at the first dot of the last path part, as webdataset's
    ``tariterators.base_plus_ext`` splits it: ``a/b.seg.png`` -> (``a/b``, ``seg.png``)."""
    match = _KEY_AND_COMPONENT.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


# -- writing ----------------------------------------------------------------------------------


_PLAIN_KEY = re.compile(r"[\w-]+(?:/[\w-]+)*", re.ASCII)  # what every check below passes


def check_key(key: Any) -> str:
    """A key must name files `<key>.<component>` that webdataset splits back the same way."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return key  # letters, digits, _ and - in relative path parts: the common key, at once
    if not isinstance(key, str) or not key:
        raise ValueError(f"sample key must be a non-empty string, got {key!r}")
    base = key.rsplit("/", 1)[-1]
    problem = None
    if "." in base:
        problem = "has a '.' in its last path part (webdataset splits key and component there)"
    elif key.startswith("/") or ".." in key.split("/") or not base:
        problem = "is not a relative path"
    elif any(c in key for c in "\0\n\r"):
        problem = "contains a control character"
    if problem:
        raise ValueError(f"sample key {key!r} {problem}")
    return key


_BLOCK = 512
_MODE, _UID = 0o644, 0
_MTIME_MAX = _SIZE_MAX = 8**11 - 1  # what an 11-digit octal field holds


@functools.lru_cache(maxsize=8)
def _ustar_tail(mtime: int) -> tuple[bytes, bytes, bytes, int]:
    """Bytes 100-511 of a regular file's ustar header around its two per-member fields (size,
    checksum): mode to gid, mtime, type to end; with the sum of the whole tail counting the
    checksum field as spaces (as the checksum does). All a member's header shares with every
    other of the shard."""
    tail = bytearray(_BLOCK - 100)
    tail[0:8] = b"%07o\0" % _MODE
    tail[8:16] = tail[16:24] = b"%07o\0" % _UID  # uid, gid
    tail[24:36] = bytes(12)  # size: per member
    tail[36:48] = b"%011o\0" % mtime
    tail[48:56] = b" " * 8
    tail[56:57] = tarfile.REGTYPE
    tail[157:165] = tarfile.POSIX_MAGIC
    return bytes(tail[:24]), bytes(tail[36:48]), bytes(tail[56:]), sum(tail)


_ZERO_RUNS = [bytes(n) for n in range(_BLOCK)]  # name fill and data padding, made once


def _tar_member(name: str, data: bytes, mtime: int) -> bytes:
    """One regular-file member (header + data + padding), as ``tarfile`` would write it.

    A plain ustar header is assembled from the shard's shared part (``_ustar_tail``), its name
    and its size, the checksum summed over those alone (10x faster than ``TarInfo.tobuf``, and
    the writer's busiest Python); names that do not fit one (over 100 bytes, non-ASCII) fall
    back to tarfile's PAX headers.
    """
    raw = name.encode("utf-8")
    if len(raw) <= 100 and raw.isascii():
        owner, when, rest, shared = _ustar_tail(mtime)
        size = b"%011o\0" % len(data)
        checksum = b"%06o\0 " % (shared + sum(raw) + sum(size))
        padding = _ZERO_RUNS[-len(data) % _BLOCK]
        fill = _ZERO_RUNS[100 - len(raw)]
        return b"".join((raw, fill, owner, size, when, checksum, rest, data, padding))
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, _MODE
    info.uid = info.gid = _UID
    info.uname = info.gname = ""
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return b"".join((header, data, _ZERO_RUNS[-len(data) % _BLOCK]))


_OCTAL_SHIFTS = np.arange(30, -1, -3)  # 11 octal digits, most significant first


def _ustar_headers(names: Sequence[bytes], sizes: Sequence[int], mtime: int) -> bytes:
    """The ustar headers ``_tar_member`` makes for these (ASCII, <= 100-byte) names and sizes,
    all at once: one (members, 512) array, name and size fields filled, checksums summed by
    row. The same bytes, a tenth of the Python per member."""
    owner, when, rest, _ = _ustar_tail(mtime)
    count = len(names)
    headers = np.empty((count, _BLOCK), np.uint8)
    headers[:, :100] = np.frombuffer(
        b"".join(n.ljust(100, b"\0") for n in names), np.uint8
    ).reshape(count, 100)
    tail = np.frombuffer(owner + bytes(12) + when + b" " * 8 + rest, np.uint8)
    headers[:, 100:] = tail
    digits = (np.asarray(sizes, np.int64)[:, None] >> _OCTAL_SHIFTS) & 7
    headers[:, 124:135] = digits + ord("0")
    headers[:, 135] = 0
    checksum = headers.sum(axis=1, dtype=np.int64)  # the checksum field counted as spaces
    headers[:, 148:154] = ((checksum[:, None] >> _OCTAL_SHIFTS[-6:]) & 7) + ord("0")
    headers[:, 154], headers[:, 155] = 0, ord(" ")
    return headers.tobytes()


class ShardWriter:
    """Write one shard atomically, with deterministic tar members.

    Members are written in the order given (samples in call order, components in each sample's
    own order) with a fixed mtime, owner and mode, so the same samples give the same bytes. A
    local or fsspec shard is written under a temporary name and renamed on ``close()``; if the
    ``with`` block fails the temporary file is removed and no shard appears. A ``pipe:``
    destination gets the stream directly (its command decides what is atomic); an aborted
    one ends without the end-of-archive blocks, so its reader sees a truncated tar.
    """

    def __init__(self, url: str, *, mtime: int = 0, name: str | None = None):
        if not 0 <= mtime <= _MTIME_MAX:
            raise ValueError(f"mtime {mtime} does not fit a tar header")
        self.url = url
        self.name = name or shard_name(url)  # for messages: a pipe's URL is its command
        self.mtime = int(mtime)
        self.count = 0
        self._keys: set[str] = set()
        if url.startswith("pipe:"):
            self._tmp = None
        else:
            name = shard_name(url)
            self._tmp = url[: len(url) - len(name)] + temp_name(name)
            if _is_local(url):
                Path(_local_path(url)).parent.mkdir(parents=True, exist_ok=True)
        self._stream = open_url(self._tmp or url, "wb")
        self._closed = False

    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one sample: ``__key__`` plus components whose values are bytes."""
        key, members = self._members(sample)
        self._keys.add(key)
        self._put(
            b"".join(
                _tar_member(f"{key}.{name}", bytes(value), self.mtime) for name, value in members
            )
        )
        self.count += 1

    def write_all(self, samples: Sequence[Mapping[str, Any]]) -> None:
        """Append samples in order, as ``write`` each would (the same bytes, the same refusal
        at the first bad one, after the good ones before it), with the tar headers of all
        their members made at once (``_ustar_headers``): the refine job's writer."""
        keys: dict[str, None] = {}  # in order
        names: list[bytes] = []
        blobs: list[bytes] = []
        try:
            for sample in samples:
                key, members = self._members(sample)
                if key in keys:
                    raise ValueError(f"{self.url}: key {key!r} written twice")
                keys[key] = None
                for name, value in members:
                    names.append(f"{key}.{name}".encode())
                    blobs.append(bytes(value))
        except (ValueError, TypeError):
            for sample in samples:  # the good ones, then the bad one's refusal
                self.write(sample)
            raise AssertionError("unreachable: write refuses what _members refused") from None
        if not keys:
            return
        plain = all(len(name) <= 100 and name.isascii() for name in names)
        if not plain or max(len(blob) for blob in blobs) > _SIZE_MAX:
            for sample in samples:  # a long or non-ASCII name, a huge member: one by one
                self.write(sample)
            return
        headers = _ustar_headers(names, [len(blob) for blob in blobs], self.mtime)
        parts = []
        for i, blob in enumerate(blobs):
            parts += (headers[i * _BLOCK : (i + 1) * _BLOCK], blob, _ZERO_RUNS[-len(blob) % _BLOCK])
        self._put(b"".join(parts))
        self._keys.update(keys)
        self.count += len(keys)

    def _members(self, sample: Mapping[str, Any]) -> tuple[str, list[tuple[str, Any]]]:
        """A sample's key and ``(component, bytes)`` members, or why it cannot be written."""
        key = check_key(sample.get("__key__"))
        if key in self._keys:
            raise ValueError(f"{self.url}: key {key!r} written twice")
        members = [(name, value) for name, value in sample.items() if not name.startswith("__")]
        if not members:
            raise ValueError(f"{self.url}: sample {key!r} has no components")
        for name, value in members:
            if not isinstance(value, bytes | bytearray | memoryview):
                raise TypeError(
                    f"{self.url}: sample {key!r} component {name!r} is "
                    f"{type(value).__name__}; encode it first (refinery.samples.encode_sample)"
                )
            if not name or "/" in name:
                raise ValueError(f"{self.url}: sample {key!r} has a bad component name {name!r}")
        return key, members

    def _put(self, data: bytes) -> None:
        try:
            self._stream.write(data)
        except OSError as exc:
            if self._tmp is None:  # a pipe: say which command failed
                raise self._pipe_failure(exc) from exc
            raise self._write_failure(exc) from exc

    def close(self) -> None:
        """Finish the tar and make the shard appear under its final name; if that fails
        part way (a full disk, an interrupt), the temporary file goes and nothing appears."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finish_stream()
            if self._tmp is None:
                return
            if _is_local(self.url):
                os.replace(_local_path(self._tmp), _local_path(self.url))
            else:
                fs, tmp_path = _fs(self._tmp)
                fs.mv(tmp_path, _fs(self.url)[1])
        except BaseException:
            self._discard()
            raise

    def _finish_stream(self) -> None:
        try:
            self._stream.write(b"\0" * (2 * _BLOCK))  # end-of-archive
            if self._tmp is not None and _is_local(self.url):
                self._stream.flush()
                os.fsync(self._stream.fileno())
            self._stream.close()
        except OSError as exc:
            if self._tmp is None:
                raise self._pipe_failure(exc) from exc
            raise self._write_failure(exc) from exc

    def _write_failure(self, exc: OSError) -> OSError:
        """A full disk or a failing store, said with the shard and the path being written."""
        return write_failure(exc, f"shard {self.name!r}", _local_path(self._tmp or self.url))

    def _pipe_failure(self, exc: OSError) -> OSError:
        """A ``pipe:`` command that failed, said as such (webdataset reports any pipe's exit
        as ``exit N (read)``): which command, while writing which shard, with what status."""
        process = getattr(self._stream, "proc", None)
        status = None
        if process is not None:
            with contextlib.suppress(Exception):
                status = process.wait(timeout=10)
        how = f"exited with status {status}" if status is not None else f"failed ({exc})"
        command = self.url[len("pipe:") :]
        return OSError(f"pipe: command {command!r} {how} while writing shard {self.name!r}")

    def abort(self) -> None:
        """Drop a partly written shard: nothing appears under the final name."""
        if self._closed:
            return
        self._closed = True
        self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.close()
        if self._tmp is None:
            return
        with contextlib.suppress(OSError):
            if _is_local(self._tmp):
                Path(_local_path(self._tmp)).unlink(missing_ok=True)
            else:
                fs, path = _fs(self._tmp)
                if fs.exists(path):
                    fs.rm(path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shards(
    samples: Iterable[Mapping[str, Any]], pattern: str, *, shard_size: int
) -> list[str]:
    """Write samples (bytes components) into shards named ``pattern % index``; return their URLs.

    Each shard is complete and renamed into place before the next one starts.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if "%" not in pattern:
        raise ValueError(f"shard pattern {pattern!r} needs a %d-style field, e.g. 'data-%06d.tar'")
    urls: list[str] = []
    writer: ShardWriter | None = None
    try:
        for sample in samples:
            if writer is None:
                writer = ShardWriter(pattern % len(urls))
            writer.write(sample)
            if writer.count >= shard_size:
                writer.close()
                urls.append(writer.url)
                writer = None
        if writer is not None:
            writer.close()
            urls.append(writer.url)
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return urls


# -- error handlers ---------------------------------------------------------------------------


def reraise(error: SampleError) -> None:
    """The default handler: a bad sample stops the read."""
    raise error


class Rejects:
    """A handler that skips bad samples and keeps each one's shard, key and reason.

    >>> rejects = Rejects()
    >>> good = list(read(urls, "gaze", handler=rejects))
    >>> rejects.counts            # Counter({'undecodable': 2, 'missing-component': 1})
    """

    def __init__(self, *, keep: int | None = 10_000):
        self.counts: Counter[str] = Counter()
        self.records: list[dict[str, Any]] = []
        self.keep = keep

    def __call__(self, error: SampleError) -> None:
        self.counts[error.reason] += 1
        if self.keep is None or len(self.records) < self.keep:
            self.records.append(error.as_record())

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no rejects"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"{self.total} rejected ({parts})"


# -- reading ----------------------------------------------------------------------------------


class _TarEnded(Exception):
    """The stream ended (or broke) where the tar format does not allow it."""

    def __init__(self, message: str, member: str | None = None):
        super().__init__(message)
        self.member = member


class _StrictTarInfo(tarfile.TarInfo):
    """A TarInfo whose header reader refuses what ``TarFile.next`` would quietly accept.

    ``TarFile.next`` treats an empty header (stream cut at a block boundary), a short header
    and, after the first member, an invalid header as the end of the archive. Only a zero block
    is a real end; the rest are raised as ``_TarEnded``.
    """

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.EmptyHeaderError:
            raise _TarEnded("stream ends without the tar end-of-archive blocks") from None
        except tarfile.TruncatedHeaderError:
            raise _TarEnded("stream ends inside a member header") from None
        except tarfile.InvalidHeaderError as exc:
            raise _TarEnded(f"invalid member header ({exc})") from None


def _members(stream: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular file in the tar stream, in order.

    An uncompressed POSIX or GNU tar (what shards are) is parsed here, block by block, with
    the same strictness as ``tarfile`` under ``_StrictTarInfo`` and about five times faster (the
    tar reader is the job's busiest Python code); anything else, compressed tars and member
    types beyond files, directories, links, PAX and GNU long names, goes to ``tarfile``.
    """
    first = stream.read(_BLOCK)
    if len(first) == _BLOCK and first[257:262] == b"ustar":
        rest = stream.read(_WHOLE)
        more = stream.read(1) if len(rest) == _WHOLE else b""
        plain = None if more else _plain_shard(first + rest)
        if plain is not None:
            yield from plain
        else:
            yield from _plain_members(first, _Prefixed(rest + more, stream))
    else:
        yield from _tarfile_members(_Prefixed(first, stream))


_WHOLE = 64 << 20  # a shard up to this size is read at once and parsed by _plain_shard


def _plain_shard(data: bytes) -> list[tuple[str, bytes]] | None:
    """(name, data) of every member of a whole shard in memory when all of them are what our
    own writer makes (ustar regular files, short names, 11-digit octal sizes, ``%06o\\0 ``
    unsigned checksums, the end-of-archive block); None for anything else, which
    ``_plain_members`` then reads with its every rule and message. Only the sizes are read one
    header at a time (each says where the next one is); the fields are checked and the
    checksums summed over all headers at once (NumPy)."""
    starts: list[int] = []
    sizes: list[int] = []
    at, end = 0, len(data)
    while True:
        if at + _BLOCK > end:
            return None  # cut short: _plain_members names where
        if data[at] == 0 and data[at : at + _BLOCK] == _ZEROS:
            break
        try:
            size = int(data[at + 124 : at + 135], 8)  # digits checked below
        except ValueError:
            return None
        if at + _BLOCK + size > end:
            return None
        starts.append(at)
        sizes.append(size)
        at += _BLOCK + size + (-size % _BLOCK)
    if not starts:
        return []
    headers = np.frombuffer(data, np.uint8, count=at).reshape(-1, _BLOCK)[
        np.asarray(starts) // _BLOCK
    ]
    digits = np.concatenate((headers[:, 124:135], headers[:, 148:154]), axis=1)
    plain = (
        ((headers[:, 156] == 0x30) | (headers[:, 156] == 0)).all()  # regular files
        and not headers[:, 345].any()  # no POSIX prefix
        and ((digits >= 0x30) & (digits <= 0x37)).all()  # octal digits only
        and (headers[:, 135] == 0).all()
        and (headers[:, 154] == 0).all()
        and (headers[:, 155] == 0x20).all()
    )
    if not plain:
        return None
    stored = (headers[:, 148:154].astype(np.int64) - 0x30) @ (8 ** np.arange(5, -1, -1))
    sums = headers.sum(axis=1, dtype=np.int64) - headers[:, 148:156].sum(axis=1, dtype=np.int64)
    if not np.array_equal(sums + 256, stored):
        return None  # a bad (or signed) checksum
    members = []
    for start, size in zip(starts, sizes, strict=True):
        name = data[start : start + 100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        members.append((name, data[start + _BLOCK : start + _BLOCK + size]))
    if any(name.endswith("/") for name, _ in members):
        return None  # an old-style directory
    return members


def _tarfile_members(stream: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_StrictTarInfo) as tf:
        for info in tf:
            if info.isfile():
                try:
                    data = tf.extractfile(info).read()
                except (tarfile.TarError, EOFError, OSError) as exc:
                    raise _TarEnded(
                        f"member {info.name!r} is cut short: {exc}", info.name
                    ) from None
                yield info.name, data
            elif not info.isdir():  # a link or a device: reported, never followed
                yield info.name, NotAFile(info.type, info.linkname)
            tf.members = []  # streaming mode would otherwise keep every header of the shard


class _Prefixed:
    """A read-only stream: ``head`` (bytes already read), then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: IO[bytes]):
        self.head, self.stream = io.BytesIO(head), stream

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.head.read() + self.stream.read()
        data = self.head.read(size)
        if len(data) < size:
            data += self.stream.read(size - len(data))
        return data


class NotAFile(NamedTuple):
    """A tar member that is not a regular file (a symbolic or hard link, a device, a FIFO):
    it stands in for the member's data, so its sample is rejected rather than dropped."""

    type: bytes
    target: str

    def describe(self) -> str:
        what = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link"}
        kind = what.get(self.type, f"not a regular file (tar type {self.type!r})")
        to = f" to {self.target!r}" if self.target else ""
        return f"{kind}{to}; links are never followed"


_ZEROS = bytes(_BLOCK)
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_NO_DATA_TYPES = (  # not files, and tarfile reads no data blocks for them
    tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
    tarfile.FIFOTYPE,
)  # fmt: skip
_HEADER_TYPES = (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (tarfile.nti)."""
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return n - (1 << (8 * len(field) - 8)) * (field[0] == 0o377)
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise _TarEnded("invalid member header (invalid header)") from None  # tarfile words


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header[148:156])
    # the byte sum less the checksum field (counted as 8 spaces: 256); runs of trailing zeros
    # (the ends of name, linkname and the whole tail of a ustar header) are stripped first,
    # since they add nothing and summing bytes one by one is this reader's costliest step
    unsigned = 256 + sum(header[:100].rstrip(b"\0")) + sum(header[100:148])
    unsigned += sum(header[156:157]) + sum(header[157:257].rstrip(b"\0"))
    unsigned += sum(header[257:].rstrip(b"\0"))
    if stored == unsigned:
        return True
    signed = 256 + sum(b - 256 * (b > 127) for b in header[:148] + header[156:])
    return stored == signed


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records of a PAX extended header, read as tarfile reads them."""
    records, at = {}, 0
    while at < len(data) and data[at] != 0:
        match = _PAX_RECORD.match(data, at)
        if match is None or int(match.group(1)) == 0:
            raise _TarEnded("invalid member header (invalid header)")
        length, key = int(match.group(1)), match.group(2)
        value = data[match.end(2) + 1 : match.start(1) + length - 1]
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        at += length
    return records


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _plain_members(header: bytes, stream: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    extended: dict[str, str] = {}  # PAX / GNU long-name values for the next member
    pending = b""  # the raw blocks of those headers, should tarfile have to take over
    while True:
        if len(header) < _BLOCK:
            if not header:
                raise _TarEnded("stream ends without the tar end-of-archive blocks")
            raise _TarEnded("stream ends inside a member header")
        if header == _ZEROS:
            return  # the end-of-archive block
        if not _checksum_ok(header):
            raise _TarEnded("invalid member header (bad checksum)")
        kind = header[156:157]
        name = _text(header[0:100])
        if kind == tarfile.AREGTYPE and name.endswith("/"):
            kind = tarfile.DIRTYPE  # an old-style directory, as tarfile reads it
        sparse = any(key.startswith("GNU.sparse") for key in extended)
        if kind not in _FILE_TYPES + _NO_DATA_TYPES + _HEADER_TYPES or sparse:
            # GNU sparse files, global PAX headers, vendor types: tarfile reads the rest
            yield from _tarfile_members(_Prefixed(pending + header, stream))
            return
        if header[257:263] == b"ustar\0" and header[345] != 0:  # the POSIX prefix field
            name = _text(header[345:500]) + "/" + name
        name = extended.get("path", name)
        size = 0
        if kind not in _NO_DATA_TYPES:
            size = int(extended["size"]) if "size" in extended else _number(header[124:136])
        padding = -size % _BLOCK
        if kind in _HEADER_TYPES:  # read whole, as tarfile does; a cut shows at the next header
            block = _read_exactly(stream, size + padding)
            if len(block) < size + padding:
                raise _TarEnded("stream ends without the tar end-of-archive blocks")
            if kind == tarfile.XHDTYPE:
                extended.update(_pax_records(block[:size]))
            elif kind == tarfile.GNUTYPE_LONGNAME:
                extended["path"] = _text(block[:size])
            pending += header + block
        else:
            data = _read_exactly(stream, size)
            if len(data) < size:
                raise _TarEnded(f"member {name!r} is cut short: unexpected end of data", name)
            if kind in _FILE_TYPES:
                yield name, data
            elif kind != tarfile.DIRTYPE:
                target = extended.get("linkpath", _text(header[157:257]))
                yield name, NotAFile(kind, target)
            extended, pending = {}, b""
            if padding and len(_read_exactly(stream, padding)) < padding:
                raise tarfile.ReadError("unexpected end of data")  # what tarfile says here
        header = _read_exactly(stream, _BLOCK)


def tar_samples(url: str, *, handler: Handler = reraise) -> Iterator[Sample]:
    """Samples of one shard as dicts of bytes, with ``__key__`` and ``__url__``.

    Consecutive members sharing a key form a sample. A key seen twice in the shard, a component
    given twice, or a member name without ``<key>.<component>`` form rejects that sample; a
    truncated or corrupt tar rejects the sample it was reading and ends the shard.
    """
    seen: set[str] = set()
    current: Sample | None = None
    problem: SampleError | None = None
    last_key: str | None = None

    def finish() -> Iterator[Sample]:
        nonlocal current, problem
        if current is not None:
            if problem is not None:
                handler(problem.with_url(url))
            else:
                yield current
        current, problem = None, None

    try:
        stream = open_url(url, "rb")
    except (OSError, ValueError) as exc:
        handler(SampleError(UNREADABLE, f"cannot open shard: {exc}", url=url))
        return
    try:
        for name, data in _members(stream):
            key, component = base_plus_ext(name)
            if key is None:
                handler(
                    SampleError(
                        BAD_MEMBER,
                        f"member {name!r} is not named <key>.<component>",
                        url=url,
                    )
                )
                continue
            if current is None or key != current["__key__"]:
                if current is not None:  # finish(), inline: once per sample
                    if problem is None:
                        yield current
                    else:
                        handler(problem.with_url(url))
                current = {"__key__": key, "__url__": url}
                if key in seen:
                    problem = SampleError(
                        DUPLICATE, "key appears twice in the shard", key=key, url=url
                    )
                else:
                    problem = _key_problem(key, url)
                seen.add(key)
                last_key = key
            if isinstance(data, NotAFile):
                if problem is None:
                    problem = SampleError(
                        BAD_MEMBER,
                        f"member {name!r} is {data.describe()}",
                        key=key,
                        component=component,
                        url=url,
                    )
                continue
            if component in current and problem is None:
                problem = SampleError(
                    BAD_MEMBER, "component appears twice", key=key, component=component, url=url
                )
            current[component] = data
        yield from finish()
    except (tarfile.TarError, _TarEnded, EOFError, OSError) as exc:
        # The shard cannot be read past this point; the sample being read is rejected.
        member_key = base_plus_ext(exc.member)[0] if getattr(exc, "member", None) else None
        if current is not None and member_key not in (None, current["__key__"]):
            yield from finish()  # the cut is in the next sample; this one is complete
            current = {"__key__": member_key, "__url__": url}
        elif current is None and member_key is not None:
            current = {"__key__": member_key, "__url__": url}
        if current is not None:
            have = ", ".join(k for k in current if not k.startswith("__")) or "none"
            error = SampleError(
                TRUNCATED,
                f"shard is truncated or corrupt inside this sample ({exc}); components read: {have}",
                key=current["__key__"],
                url=url,
            )
        else:
            after = f" after key {last_key!r}" if last_key else " before the first sample"
            error = SampleError(TRUNCATED, f"shard is truncated or corrupt{after} ({exc})", url=url)
        current = None
        handler(error)
    finally:
        try:
            stream.close()
        except OSError as exc:  # a pipe: command that failed reports here (SIGPIPE is ignored)
            handler(SampleError(UNREADABLE, f"the shard stream failed: {exc}", url=url))


def _key_problem(key: str, url: str) -> SampleError | None:
    """A key that is not a safe relative path (``../x``, ``/abs``, a control character) is its
    sample's reject: written out, it would name files outside the shard's own tree."""
    try:
        check_key(key)
    except ValueError as exc:
        return SampleError(BAD_KEY, str(exc), key=key, url=url)
    return None


def in_batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last may be shorter), in order."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def shard_samples(urls: str | Sequence[str], *, handler: Handler = reraise) -> Iterator[Sample]:
    """Samples of every shard in ``urls``, shard after shard."""
    for url in expand_urls(urls):
        yield from tar_samples(url, handler=handler)


def decoded(
    samples: Iterable[Sample],
    domain: str | None = None,
    *,
    handler: Handler = reraise,
    labels: bool = True,
) -> Iterator[Sample]:
    """Decode and validate each sample against ``domain``'s contract; bad ones go to handler.
    ``labels=False``: a real pool, where a sample may be its image alone."""
    for sample in samples:
        result = decode_or_error(sample, domain, labels=labels)
        if isinstance(result, SampleError):
            handler(result)
        else:
            yield result


def read(
    urls: str | Sequence[str],
    domain: str | None = None,
    *,
    handler: Handler = reraise,
    labels: bool = True,
) -> Iterator[Sample]:
    """Decoded, validated samples from shards: the whole reading pipeline."""
    samples = shard_samples(urls, handler=handler)
    return decoded(samples, domain, handler=handler, labels=labels)
