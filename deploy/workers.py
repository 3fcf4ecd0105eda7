"""The refine job's CPU side in worker processes: read, check, decode, encode, write a shard.

The per-frame work a job does on the CPU (tar parsing, the label check, PNG decode and encode,
tar writing) is Python around C calls; in one process the interpreter lock serialises it, so a
16-core server did what two cores do. Here each of ``workers`` processes (forked from a fork
server that imported NumPy, OpenCV and libdeflate once, never torch; one thread each) takes a
whole shard at a time from the main process and writes its output shard itself, in input
order, so the bytes of a shard do not depend on how many workers ran or which one took it::

    main process                                  worker process (one per core)
    ------------                                  -----------------------------
    hands out shard URLs  ───────── shard ──────▶ tar_samples -> label check -> decode
    engine.submit(batch)  ◀──── batch in shm ──── (B, H, W[, C]) pixels, one buffer per size
    refined pixels, back into the same buffer ──▶ encode (libdeflate PNG) -> ShardWriter
    writes <name>.stats.json ◀────── stats ────── output renamed into place

The engine stays in the main process, one per device, fed the workers' batches whole: pixels
cross in a file in ``/dev/shm`` that both processes map (a worker's buffer, grown when a batch
needs more), and only small messages go through the pipes. With ``--engine identity`` no pixel
leaves the worker. A worker ignores SIGINT/SIGTERM (the main process decides: it sets ``stop``
and each worker drops its shard at the next batch) and dies with the main process
(``PR_SET_PDEATHSIG`` on the fork server, which exits with it), so a kill -9 of the job leaves
only temporary files, which the next run removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import signal
import sys
import tempfile
import time
import traceback
import types
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import cv2
import numpy as np

from deploy.stages import sample_problem
from refinery.png import ENCODER, encode_pngs
from refinery.samples import (
    MALFORMED,
    UNDECODABLE,
    SampleError,
    Undecodable,
    decode_image,
    encode_image,
    encode_json,
)
from refinery.shards import ShardWriter, in_batches, shard_name, tar_samples, temp_tag

PNG_ENCODERS = ("libdeflate", "opencv")


def png_encoder_name(png_encoder: str) -> str:
    """What a shard's stats say wrote its PNGs: ``refinery.png.ENCODER`` or ``opencv``."""
    return ENCODER if png_encoder == "libdeflate" else "opencv"


@dataclass(frozen=True)
class ShardPlan:
    """What a worker needs to refine any shard of a job (picklable; no engine, no torch)."""

    components: tuple[str, ...]  # accepted image components (one per sample)
    kind: str  # gray8 | rgb8 | depth16
    domain: str
    batch: int
    keep_original: bool
    identity: bool  # no engine: pixels go from decoder to encoder unchanged
    provenance: dict[str, Any]  # refinery.json without its source_shard
    png_encoder: str = "libdeflate"

    @property
    def encoder(self) -> str:
        return png_encoder_name(self.png_encoder)


class Stopped(Exception):
    """The main process asked the workers to stop; the shard being written was dropped."""


# -- one shard ---------------------------------------------------------------------------------

Refine = Callable[[list[np.ndarray]], list[Any]]  # batch groups -> finite flags | problem text


def entries(url: str, plan: ShardPlan) -> Iterator[tuple[dict, str] | SampleError]:
    """Every sample of one shard in order: ``(sample, image component)``, or its reject (what
    the strict tar reader, the component pick, the label or the PNG header refused)."""
    broken: list[SampleError] = []
    for sample in tar_samples(url, handler=broken.append):
        while broken:
            yield broken.pop(0).with_url(url)
        component, error = sample_problem(sample, plan.components, plan.kind, plan.domain)
        yield (sample, component) if error is None else error.with_url(url)
    for error in broken:
        yield error.with_url(url)


class ShardCounts:
    """A shard's stats as the worker counts them (the main process adds the engine's part)."""

    def __init__(self, url: str):
        self.url = url
        self.read = self.written = self.rejected = 0
        self.decoded = False  # some image reached the decoder
        self.reasons: dict[str, int] = {}
        self.rejects: list[dict[str, Any]] = []

    def reject(self, error: SampleError) -> None:
        record = error.with_url(self.url).as_record()
        self.rejects.append(record)
        self.reasons[record["reason"]] = self.reasons.get(record["reason"], 0) + 1
        self.rejected += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "written": self.written,
            "rejected": self.rejected,
            "reasons": self.reasons,
            "rejects": self.rejects,
        }


class Buffers:
    """Where a worker puts a batch's pixels: plain arrays, or (``shared``) a file in
    ``/dev/shm`` that the main process maps too, grown when a batch needs more."""

    def __init__(self, *, shared: bool):
        self.shared = shared
        self.path: str | None = None
        self.size = 0
        self.map: mmap.mmap | None = None
        self.seen = False  # the main process has mapped the current file: it can be unlinked

    def arrays(self, shapes: Sequence[tuple[int, ...]], dtype: np.dtype) -> list[np.ndarray]:
        if not self.shared:
            return [np.empty(shape, dtype) for shape in shapes]
        sizes = [int(np.prod(shape)) * dtype.itemsize for shape in shapes]
        if sum(sizes) > self.size:
            self._grow(sum(sizes))
        arrays, offset = [], 0
        for shape, size in zip(shapes, sizes, strict=True):
            arrays.append(np.ndarray(shape, dtype, buffer=self.map, offset=offset))
            offset += size
        return arrays

    def layout(self, arrays: Sequence[np.ndarray]) -> list[tuple[int, tuple[int, ...], str]]:
        """(offset, shape, dtype) of each array in the file, for the main process."""
        base = np.frombuffer(self.map, np.uint8).ctypes.data
        return [(a.ctypes.data - base, a.shape, a.dtype.str) for a in arrays]

    def _grow(self, need: int) -> None:
        self.close()
        self.size = max(need, 2 * self.size)
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        name = f".refine-buffer.tmp-{temp_tag()}-{uuid.uuid4().hex[:8]}"  # stale_temp's form
        self.path = os.path.join(directory, name)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, self.size)
            self.map = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        self.seen = False

    def mapped(self) -> None:
        """The main process has the file open: its name is no longer needed."""
        if self.path is not None and not self.seen:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.seen = True

    def close(self) -> None:
        if self.path is not None and not self.seen:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.path, self.map, self.size = None, None, 0  # a view still held keeps the map alive


def _decode(sample: dict, component: str, kind: str) -> np.ndarray | SampleError:
    try:
        return decode_image(sample[component], kind)
    except Undecodable as exc:
        reason, detail = UNDECODABLE, str(exc)
    except ValueError as exc:
        reason, detail = MALFORMED, str(exc)
    return SampleError(reason, detail, key=sample["__key__"], component=component)


def _encode(pixels: np.ndarray, kind: str, component: str, png_encoder: str) -> list[bytes]:
    ext = component.rsplit(".", 1)[-1]
    if ext == "png" and png_encoder == "libdeflate":
        return encode_pngs(pixels, kind)
    return [encode_image(image, kind, ext) for image in pixels]


def refine_chunk(
    chunk: list[tuple[dict, str] | SampleError],
    plan: ShardPlan,
    buffers: Buffers,
    refine: Refine | None,
) -> list[bytes | SampleError]:
    """Decode a chunk, run it through ``refine`` (None: the identity) in groups of one size and
    component, and encode it: per entry its refined image's bytes, or its reject."""
    out: list[Any] = list(chunk)
    groups: dict[tuple, list[int]] = {}
    images: dict[int, np.ndarray] = {}
    for i, entry in enumerate(chunk):
        if isinstance(entry, SampleError):
            continue
        image = _decode(*entry, plan.kind)
        if isinstance(image, SampleError):
            out[i] = image.with_url(entry[0]["__url__"])
            continue
        images[i] = image
        groups.setdefault((image.shape, entry[1]), []).append(i)
    if not groups:
        return out
    dtype = np.dtype(np.uint16 if plan.kind == "depth16" else np.uint8)
    shapes = [(len(members), *shape) for (shape, _), members in groups.items()]
    arrays = buffers.arrays(shapes, dtype)
    for array, members in zip(arrays, groups.values(), strict=True):
        np.stack([images[i] for i in members], out=array)  # (B, H, W[, C])
    results = refine(arrays) if refine is not None else [None] * len(arrays)
    for array, ((_, component), members), result in zip(
        arrays, groups.items(), results, strict=True
    ):
        if isinstance(result, str):  # the engine does not take this size: each one's reject
            for i in members:
                sample = chunk[i][0]
                out[i] = SampleError("size-outside-engine", result, key=sample["__key__"])
            continue
        finite = np.ones(len(members), bool) if result is None else result
        keep = [i for i, ok in zip(members, finite, strict=True) if ok]
        for i, ok in zip(members, finite, strict=True):
            if not ok:
                sample = chunk[i][0]
                detail = "the engine produced NaN or inf"
                out[i] = SampleError("non-finite-output", detail, key=sample["__key__"])
        encoded = _encode(array[np.asarray(finite, bool)], plan.kind, component, plan.png_encoder)
        for i, data in zip(keep, encoded, strict=True):
            out[i] = data
    return out


def refine_shard(
    url: str,
    output: str,
    plan: ShardPlan,
    *,
    refine: Refine | None = None,
    buffers: Buffers | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Refine one input shard into ``output`` (temporary name, renamed when complete); its
    counts, rejects and seconds. ``stopped()`` is asked at every batch: True drops the shard
    (nothing appears under its name) and raises ``Stopped``."""
    began = time.perf_counter()
    counts = ShardCounts(url)
    provenance = encode_json({**plan.provenance, "source_shard": shard_name(url)})
    buffers = buffers or Buffers(shared=False)
    with ShardWriter(output, name=shard_name(url)) as writer:
        for chunk in in_batches(entries(url, plan), plan.batch):
            if stopped():
                raise Stopped(url)
            counts.read += len(chunk)
            counts.decoded = counts.decoded or any(isinstance(e, tuple) for e in chunk)
            done = []
            for entry, result in zip(
                chunk, refine_chunk(chunk, plan, buffers, refine), strict=True
            ):
                if isinstance(result, SampleError):
                    counts.reject(result)
                    continue
                sample, component = entry
                done.append(
                    assemble_sample(sample, component, result, provenance, plan.keep_original)
                )
            writer.write_all(done)
            counts.written += len(done)
    stats = counts.as_dict()
    stats["seconds"] = time.perf_counter() - began
    stats["decoder"] = "opencv" if counts.decoded else "none"
    stats["encoder"] = plan.encoder
    return stats


def assemble_sample(
    sample: dict, component: str, encoded: bytes, provenance: bytes, keep_original: bool
) -> dict[str, Any]:
    """The output sample: every input component byte-identical except the refined image."""
    out: dict[str, Any] = {}
    for name, value in sample.items():
        if name.startswith("__") and name != "__key__":  # __url__: where it came from
            continue
        out[name] = encoded if name == component else value
    if keep_original:
        out[f"orig.{component}"] = sample[component]
    out["refinery.json"] = provenance
    return out


# -- the worker process ------------------------------------------------------------------------


def _die_with_parent(job: int) -> None:
    """SIGKILL this process when its parent dies (Linux), so no worker outlives a killed job.
    The parent is the fork server (``_start_method``), which exits when the job's process
    does; a spawned worker's parent is the job's process itself."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    try:
        os.kill(job, 0)
    except ProcessLookupError:  # the job died before prctl took effect
        os._exit(1)
    except PermissionError:
        pass  # there, under another user: alive


class RemoteEngine:
    """A worker's handle on the main process's engine: a batch's groups go over in the shared
    buffer, refined in place; back come finite flags or why a group does not fit."""

    def __init__(self, conn: Connection, buffers: Buffers):
        self.conn, self.buffers = conn, buffers

    def __call__(self, arrays: list[np.ndarray]) -> list[Any]:
        self.conn.send(("refine", (self.buffers.path, self.buffers.layout(arrays))))
        kind, results = self.conn.recv()
        if kind == "stop":
            raise Stopped("")
        self.buffers.mapped()
        return results


def worker_main(
    conn: Connection, plan: ShardPlan, stop, job: int, place: tuple[str, dict[str, str]]
) -> None:
    """A worker process: ask for a shard, refine it, report its stats, until told to exit.
    Messages to the main process: ``("next", None)``, ``("refine", (path, layout))``,
    ``("shard", (url, stats))``, ``("stopped", url)``, ``("error", (url, exception, text))``."""
    _die_with_parent(job)
    cwd, environ = place  # the job's, now: the fork server keeps those of the first job
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    for signum in (signal.SIGINT, signal.SIGTERM):  # the main process decides when to stop
        signal.signal(signum, signal.SIG_IGN)
    cv2.setNumThreads(1)
    buffers = Buffers(shared=not plan.identity)
    refine = None if plan.identity else RemoteEngine(conn, buffers)
    url = None
    try:
        conn.send(("next", None))
        while True:
            kind, task = conn.recv()
            if kind == "exit":
                return
            url, output = task
            stats = refine_shard(
                url, output, plan, refine=refine, buffers=buffers, stopped=stop.is_set
            )
            conn.send(("shard", (url, stats)))
            url = None
    except (Stopped, EOFError, BrokenPipeError):  # asked to stop, or the main process is gone
        with contextlib.suppress(OSError):
            conn.send(("stopped", url))
    except BaseException as exc:  # handed to the main process, raised there
        text = traceback.format_exc()
        with contextlib.suppress(OSError):
            try:
                conn.send(("error", (url, exc, text)))
            except OSError:
                raise
            except Exception:  # it does not pickle: its type and text go
                conn.send(("error", (url, RuntimeError(f"{type(exc).__name__}: {exc}"), text)))
    finally:
        buffers.close()


# -- the main process's side -------------------------------------------------------------------


class EngineServer:
    """The main process's engine, serving the workers' batches in their shared buffers. The
    batch just received is queued on the device before the previous one's results are
    collected, so a GPU computes while the host answers (on the CPU each call completes)."""

    def __init__(self, engine, fit: Callable[[Any, np.ndarray], str | None]):
        self.engine, self.fit = engine, fit
        self.maps: dict[Connection, tuple[str, mmap.mmap]] = {}
        self.pending: tuple | None = None

    def _buffer(self, conn: Connection, path: str) -> mmap.mmap:
        known = self.maps.get(conn)
        if known is None or known[0] != path:
            with open(path, "r+b") as f:
                self.maps[conn] = (path, mmap.mmap(f.fileno(), 0))
        return self.maps[conn][1]

    def submit(self, conn: Connection, path: str, layout: list) -> None:
        buffer = self._buffer(conn, path)
        arrays = [
            np.ndarray(shape, np.dtype(dt), buffer=buffer, offset=o) for o, shape, dt in layout
        ]
        launched = []
        for array in arrays:  # (B, H, W[, C]): one size per group
            problem = self.fit(self.engine, array[0])
            launched.append(problem if problem else self.engine.submit(array))
        previous, self.pending = self.pending, (conn, arrays, launched)
        if previous is not None:
            self._answer(*previous)

    def flush(self) -> None:
        if self.pending is not None:
            previous, self.pending = self.pending, None
            self._answer(*previous)

    def _answer(self, conn: Connection, arrays: list[np.ndarray], launched: list) -> None:
        results: list[Any] = []
        for array, pending in zip(arrays, launched, strict=True):
            if isinstance(pending, str):
                results.append(pending)
                continue
            refined = pending.result()
            np.copyto(array, refined.pixels)
            results.append(np.asarray(refined.finite, bool))
        with contextlib.suppress(OSError):  # a worker that died meanwhile: its sentinel says so
            conn.send(("refined", results))

    def forget(self, conn: Connection) -> None:
        if self.pending is not None and self.pending[0] is conn:
            self.pending = None
        self.maps.pop(conn, None)


class WorkerFailed(RuntimeError):
    """A worker process died without saying why (killed, out of memory)."""


class _RemoteTraceback(Exception):
    def __init__(self, url: str | None, text: str):
        super().__init__(url, text)

    def __str__(self) -> str:
        return f"in the refine worker, shard {self.args[0]}:\n{self.args[1]}"


def clean_stale_buffers() -> None:
    """Shared buffers of workers that were killed before the main process mapped them."""
    from refinery.shards import stale_temp

    directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.startswith(".refine-buffer.tmp-") and stale_temp(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


@contextlib.contextmanager
def _spawning() -> Iterator[None]:
    """While workers are spawned: one thread each for every numeric library (they inherit the
    environment), and no ``__main__`` for them to re-run. ``multiprocessing`` would otherwise
    import the caller's script in each worker (all of ``-m benchmarks.x`` and torch with it, or
    a script without ``if __name__ == "__main__"`` run again); a worker needs only this module."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _start_method():
    """Workers fork from a fork server that has imported this module once (numpy, OpenCV,
    libdeflate: about 0.25 CPU-s a process, the bulk of a worker's start-up); where there is
    no fork server (not POSIX, or it cannot start: a TMPDIR too long for its socket's path),
    each is spawned and imports them itself. Never a plain fork of the job's process: it may
    hold torch, CUDA and threads."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        from multiprocessing import forkserver

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        try:
            with _spawning():  # the server's environment is the workers'
                forkserver.ensure_running()
            return context
        except OSError:  # its socket's path (under TMPDIR) too long for AF_UNIX, say
            pass
    return multiprocessing.get_context("spawn")


def stop_fork_server() -> None:
    """End the workers' fork server and wait for it (a new job starts another): its CPU time,
    with its workers' (it reaps them), then counts in this process's ``RUSAGE_CHILDREN``, as
    spawned workers' did. For measurements: ``benchmarks/refine.py`` counts a job's whole CPU
    this way, the fork server's start-up included."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)  # CPython's own (its tests use it)
    if stop is not None:
        stop()


def _run_here(tasks, plan, *, engine, fit, stop_signal, on_shard) -> bool:
    """``run_workers`` with no worker: every shard refined in this process, one at a time."""

    def refine(arrays: list[np.ndarray]) -> list[Any]:
        results: list[Any] = []
        for array in arrays:
            problem = fit(engine, array[0])
            if problem:
                results.append(problem)
                continue
            refined = engine.refine(array)
            np.copyto(array, refined.pixels)
            results.append(np.asarray(refined.finite, bool))
        return results

    def stopped() -> bool:
        return stop_signal is not None and bool(stop_signal["signal"])

    for url, output in tasks:
        try:
            stats = refine_shard(
                url, output, plan, refine=None if plan.identity else refine, stopped=stopped
            )
        except Stopped:
            return False
        on_shard(url, stats)
    return not stopped()


def _start_workers(context, workers: int, plan: ShardPlan, stop) -> dict[Connection, Any]:
    """``workers`` started processes, by their end of a pipe each."""
    live = {}
    with _spawning():
        for i in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(theirs, plan, stop, os.getpid(), (os.getcwd(), dict(os.environ))),
                name=f"refine-worker-{i}",
                daemon=True,
            )
            process.start()
            theirs.close()
            live[ours] = process
    return live


def _end_workers(live: dict[Connection, Any]) -> None:
    """Close every pipe (a worker waiting on this process sees it close, and stops) and wait
    for the workers, killing one that does not end within 10 s."""
    for conn in live:
        conn.close()
    for process in live.values():
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()


def run_workers(
    tasks: Sequence[tuple[str, str]],
    plan: ShardPlan,
    *,
    workers: int,
    engine=None,
    fit: Callable[[Any, np.ndarray], str | None] | None = None,
    stop_signal: dict[str, int] | None = None,
    on_shard: Callable[[str, dict[str, Any]], None],
) -> bool:
    """Refine ``tasks`` (input URL, output URL) in ``workers`` processes (0: in this
    one), the engine (unless ``plan.identity``) serving them from this one. ``on_shard(url, stats)`` runs here
    once a shard is in place. Returns False when ``stop_signal["signal"]`` stopped the job
    (every worker dropped its shard and exited); a worker's error is raised here."""
    from collections import deque
    from multiprocessing.connection import wait

    if workers == 0:
        return _run_here(
            tasks, plan, engine=engine, fit=fit, stop_signal=stop_signal, on_shard=on_shard
        )
    clean_stale_buffers()
    context = _start_method()
    stop = context.Event()
    queue = deque(tasks)
    server = None if plan.identity else EngineServer(engine, fit)
    live: dict[Connection, Any] = {}  # connection -> its process
    current: dict[Connection, str | None] = {}
    leaving: set[Connection] = set()  # told to exit, stopped or failed: its end is expected
    ended: set[Connection] = set()  # its pipe is closed: nothing more to read
    failure: tuple[str | None, BaseException, str] | None = None
    live.update(_start_workers(context, workers, plan, stop))

    def send(conn: Connection, message: tuple) -> None:
        """A worker may die between its message and the answer: its sentinel says so below."""
        try:
            conn.send(message)
        except OSError:
            ended.add(conn)

    def hand_out(conn: Connection) -> None:
        if queue and not stop.is_set():
            current[conn] = queue[0][0]
            send(conn, ("shard", queue.popleft()))
        else:
            current[conn] = None
            send(conn, ("exit", None))
            leaving.add(conn)

    try:
        while live:
            if stop_signal is not None and stop_signal["signal"]:
                stop.set()
            idle = server is None or server.pending is None
            ready = wait([*live, *(p.sentinel for p in live.values())], 0.1 if idle else 0)
            if not ready and server is not None:
                server.flush()
            for conn in [c for c in ready if c in live]:
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    ended.add(conn)  # its process ended: seen below through its sentinel
                    continue
                if kind in ("next", "shard"):
                    if kind == "shard":
                        on_shard(*payload)
                    hand_out(conn)
                elif kind == "refine":
                    if stop.is_set():
                        send(conn, ("stop", None))
                    else:
                        server.submit(conn, *payload)
                elif kind == "stopped":
                    leaving.add(conn)
                elif kind == "error":
                    leaving.add(conn)
                    failure = failure or payload
                    stop.set()
            for conn, process in list(live.items()):
                if process.sentinel in ready or not process.is_alive():
                    if conn not in ended and conn.poll():
                        continue  # read what it said first
                    process.join()
                    if conn not in leaving and failure is None:
                        failure = (
                            current.get(conn),
                            WorkerFailed(
                                f"refine worker {process.pid} died (exit code {process.exitcode})"
                                f" while refining {current.get(conn) or 'nothing'}"
                            ),
                            "",
                        )
                        stop.set()
                    if server is not None:
                        server.forget(conn)
                    conn.close()
                    del live[conn]
    finally:
        stop.set()
        _end_workers(live)
    if failure is not None:
        url, exc, text = failure
        if text:
            raise exc from _RemoteTraceback(url, text)
        raise exc
    return not (stop_signal is not None and stop_signal["signal"])
