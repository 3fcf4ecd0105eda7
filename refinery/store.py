"""Files of an output directory, local or fsspec: join, exists, read, atomic writes, temp names.

Every writer of Refinery (the refine job's shards, stats and owner record, ``refinery ingest``'s
shards, stats and summaries) puts a file in place the same way::

    write_atomic(join(out, "a.stats.json"), data)   # .a.stats.json.tmp-<host>-<pid>-<hex8>
                                                    #   -> fsync -> rename to a.stats.json

so a reader sees the whole file or none of it. A temporary name says which process on which
machine writes it (``temp_name``); ``remove_stale_temps`` drops the temporaries of writers that
are gone: a process of this host that no longer runs, or that is a zombie (killed, not yet
reaped by its parent: ``os.kill(pid, 0)`` still succeeds for it, ``/proc/<pid>/stat`` says
``Z``). Another host's temporary is never touched, its pid means nothing here.

Nothing is written unless asked: ``remove_stale_temps`` deletes only what it finds, so a rerun
on read-only storage that has nothing to do writes nothing.

This module imports only the standard library (fsspec where a URL is remote): spawned ingest
workers import it, and neither torch nor webdataset.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "create_once",
    "exists",
    "is_local",
    "join",
    "listing",
    "local_path",
    "pid_alive",
    "read_bytes",
    "remove_stale_temps",
    "stale_temp",
    "temp_name",
    "temp_tag",
    "write_atomic",
    "write_failure",
]


def is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme in ("", "file") and not url.startswith("pipe:")


def local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file://") else url


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path) of a URL; fsspec is imported here, when a URL is remote."""
    import fsspec

    return fsspec.core.url_to_fs(url)


def exists(url: str) -> bool:
    """Whether a file is there; a ``pipe:`` target cannot be checked and counts as there."""
    if url.startswith("pipe:"):
        return True
    if is_local(url):
        return os.path.exists(local_path(url))
    fs, path = filesystem(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    if is_local(url):
        return Path(local_path(url)).read_bytes()
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return f.read()


def listing(base: str) -> list[str]:
    """File names directly in ``base``, sorted (empty when it does not exist yet)."""
    if is_local(base):
        path = Path(local_path(base))
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    fs, path = filesystem(base)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


# -- temporary names ---------------------------------------------------------------------------


def temp_tag() -> str:
    """``<host>-<pid>``: which process on which machine owns a temporary file, so cleaning up
    after a killed run never touches a live writer on another node sharing the directory."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def temp_name(name: str) -> str:
    """The temporary file name under which ``name`` is written: ``.<name>.tmp-<host>-<pid>-<hex8>``."""
    return f".{name}.tmp-{temp_tag()}-{uuid.uuid4().hex[:8]}"


_TEMPS = (  # temporary names: "-<pid>-<hex8>" (no host, older ingests), "-<host>-<pid>[-<hex8>]"
    re.compile(r"\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$"),
    re.compile(r"\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)(?:-[0-9a-f]{8})?$"),
)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs. A zombie (exited, not yet reaped) does
    not: ``os.kill(pid, 0)`` succeeds for it, so its state is read from ``/proc`` too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux), or the process just went: treat it as live
    state = stat.rsplit(")", 1)[-1].split()[:1]  # "pid (comm) S ...": comm may hold spaces
    return state not in (["Z"], ["X"])


def stale_temp(name: str, *, this_process: bool = False) -> bool:
    """Whether ``name`` is a temporary file (``.<name>.tmp-<host>-<pid>[-<hex8>]``, or
    ``.tmp-<pid>-<hex8>`` without a host) left by a writer that is gone: a process of this
    host that no longer runs or is a zombie (``this_process``: count this process's own files
    as left over too, for a caller that cleans up before it writes anything). Another host's
    file is never stale here, since its pid means nothing on this one."""
    match = next((m for m in (p.search(name) for p in _TEMPS) if m), None)
    host = match.groupdict().get("host") if match else None
    if match is None or host not in (None, temp_tag().rsplit("-", 1)[0]):
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return this_process
    return not pid_alive(pid)


def remove_stale_temps(
    base: str, *, ours: Callable[[str], bool] = lambda name: True, this_process: bool = False
) -> list[str]:
    """Delete the stale temporaries (``stale_temp``) in a local directory ``base`` whose names
    ``ours`` accepts; returns their names. Remote directories are left alone (no pids there)
    and so is what cannot be deleted (read-only storage: nothing to do there anyway)."""
    if not is_local(base) or not os.path.isdir(local_path(base)):
        return []
    removed = []
    for name in sorted(os.listdir(local_path(base))):
        if name.startswith(".") and ours(name) and stale_temp(name, this_process=this_process):
            with contextlib.suppress(FileNotFoundError, PermissionError, OSError):
                os.unlink(os.path.join(local_path(base), name))
                removed.append(name)
    return removed


# -- writing ----------------------------------------------------------------------------------


def write_failure(exc: OSError, what: str, path: str) -> OSError:
    """``exc`` (a full disk, a read-only file system) said with what was being written where."""
    message = f"{exc.strerror or exc} while writing {what} to {path}"
    return OSError(exc.errno, message) if exc.errno is not None else OSError(message)


def write_atomic(url: str, data: bytes, *, what: str | None = None) -> None:
    """Write ``data`` to ``url`` so that it appears whole or not at all: a temporary name
    (``temp_name``), flushed to disk, then renamed. A failure removes the temporary and says
    what was written where (``what``: e.g. ``"stats of shard 'a.tar'"``)."""
    name = url.rsplit("/", 1)[-1]
    tmp = url[: len(url) - len(name)] + temp_name(name)
    what = what or repr(name)
    if is_local(url):
        path, tmp_path = local_path(url), local_path(tmp)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(tmp_path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            if isinstance(exc, OSError):
                raise write_failure(exc, what, path) from exc
            raise
        return
    fs, tmp_path = filesystem(tmp)
    fs.makedirs(tmp_path.rsplit("/", 1)[0], exist_ok=True)
    try:
        with fs.open(tmp_path, "wb") as f:
            f.write(data)
        fs.mv(tmp_path, filesystem(url)[1])
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(tmp_path):
                fs.rm(tmp_path)
        raise


def create_once(url: str, data: bytes) -> bool:
    """Create ``url`` with ``data`` unless it exists; True if this call created it. Locally the
    file is written under a temporary name and hard-linked into place, which fails when another
    process got there first, so of two writers exactly one wins; elsewhere it is a check, then
    an atomic write."""
    if not is_local(url):
        if exists(url):
            return False
        write_atomic(url, data)
        return True
    path = Path(local_path(url))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    try:
        tmp.write_bytes(data)
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True
