"""The refine job (contract 3): input shards -> engine -> output shards, 1:1, exactly once.

The CPU side runs in worker processes (``deploy.workers``), sized from this process's affinity
mask: each worker takes one shard at a time and does everything a shard needs on a CPU::

    worker (one per core)                                   main process
    tar_samples -> label check -> OpenCV decode  ──batch──▶ engine (one per device)
    libdeflate PNG encode -> ShardWriter (temp, rename) ◀── refined pixels, in place
                                      ──stats──▶ <name>.stats.json (rename), progress

Workers never import torch; pixels cross in shared memory and only small messages in pipes. A
worker writes its shard in input order, so the output does not depend on how many workers ran:
the same engine and encoder give the same bytes. ``--engine identity`` (``engines.identity``)
runs the same job with pixels passed through, never leaving the workers: validate or re-shard
a dataset, or measure the CPU side alone. Sizing: as many workers as cores for the identity;
one core fewer with an engine, whose device (or, on a CPU, whose threads) the main process
drives.

DALI. Where DALI really decodes on the GPU (JPEG images, a CUDA engine, ``--decoder auto``) or
is asked for (``--decoder dali``), one in-process pipeline of threads serves the job instead
(``deploy.stages``)::

    read_batches -> DaliDecoder -> decode_item pool -> refine_batches -> encode_item pool

fed the encoded bytes the tar reader read; an image that fails a cheap integrity check (PNG
chunk CRCs, JPEG markers), or a DALI batch that fails anyway, is decoded by OpenCV, where a
corrupt image is one reject.

Exactly once. A shard is finished when its output and its stats file both exist; the output is
renamed into place first, the stats file last, so a kill at any moment leaves either a finished
shard or one that a rerun redoes from scratch. Conservation: per shard, written + rejected =
read, and every reject is listed with key, component and reason.

Bad input never stops a job: a bad sample is one reject wherever it stands (the first of the
job too; ``preflight`` refuses only an engine that none of the first samples fits), and the
``--max-reject-rate`` verdict is given once every shard is refined, over the stats of all the
job's shards, so a rerun gives the same verdict. An output belongs to one engine
(``refinery-output.json`` in the output itself, created atomically by the first job:
``deploy.output``): another engine's job is refused, naming both, whatever its ``--stats``,
and a finished shard is finished only for the engine that wrote it. A rerun with nothing to do
writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from deploy.dali import DaliDecoder, have_dali
from deploy.launch import ranks_on_this_node
from deploy.output import (
    OUTPUT_FILE,
    STATS_SUFFIX,
    OutputConflict,
    check_owner,
    claim,
    clean_temps,
    finished,
    output_url,
    same_engine,
    stats_url,
    write_stats,
)
from deploy.output import read_stats as _read_stats
from deploy.stages import (
    NON_FINITE,
    SIZE,
    Batch,
    Item,
    decode_item,
    encode_item,
    fit_problem,
    in_pool,
    machine_threads,
    prefetch,
    read_batches,
    refine_batches,
    shard_items,
    upstream,
)
from deploy.workers import (
    PNG_ENCODERS,
    ShardPlan,
    assemble_sample,
    png_encoder_name,
    run_workers,
)
from engines.base import cuda_index
from engines.identity import IDENTITY, IdentityEngine
from engines.spec import DEFAULT_BATCH
from refinery import __version__
from refinery.samples import MALFORMED, MISSING, SampleError, encode_json
from refinery.shards import ShardWriter, expand_urls, shard_name
from refinery.stopping import stop_requests

__all__ = [
    "NON_FINITE",
    "OUTPUT_FILE",
    "SIZE",
    "STATS_SUFFIX",
    "JobStopped",
    "JobSummary",
    "OutputConflict",
    "RefineConfig",
    "RejectRateExceeded",
    "ShardStats",
    "run",
]

DECODERS = ("auto", "dali", "opencv")


class RejectRateExceeded(RuntimeError):
    """More samples were rejected than ``--max-reject-rate`` allows, over all the job's shards
    (finished by this run or an earlier one); ``summary`` is the job's, when it ran."""

    def __init__(self, message: str, summary: JobSummary | None = None):
        super().__init__(message)
        self.summary = summary


class JobStopped(RuntimeError):
    """SIGINT or SIGTERM stopped the job at a batch boundary; finished shards stay finished,
    the shard being written was dropped, a rerun goes on from there."""

    def __init__(self, signum: int, finished: int):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after {finished} shards; rerun to finish the rest")
        self.signal = signum


@dataclass(frozen=True, kw_only=True)
class RefineConfig:
    engine: str  # engine directory
    output: str  # directory, fsspec URL, or "pipe:<command with {name}>"
    backend: str = "onnxruntime"
    device: str | None = None
    precision: str | None = None  # torch: fp32 | fp16 (autocast); onnxruntime: the FP16 graph
    batch: int = DEFAULT_BATCH
    keep_original: bool = False
    max_reject_rate: float | None = None  # None: no limit
    stats: str | None = None  # where stats files go (default: beside the output shards)
    decoder: str = "auto"  # "auto" (DALI for JPEG on a GPU, else OpenCV), "dali", "opencv"
    decode_workers: int | None = None  # OpenCV decode threads (and DALI's); None: the machine's
    encode_workers: int | None = None  # OpenCV encode threads; None: the machine's
    queue_depth: int = 2  # batches in flight between stages
    workers: int | None = None  # CPU worker processes; None: from the affinity mask; 0: none
    domain: str | None = None  # --engine identity: the data's domain (None: the first sample's)
    png_encoder: str = "libdeflate"  # or "opencv" (OpenCV's bytes, ~2x slower to write)

    def __post_init__(self) -> None:
        if self.png_encoder not in PNG_ENCODERS:
            raise ValueError(
                f"png_encoder must be one of {', '.join(PNG_ENCODERS)}, got {self.png_encoder!r}"
            )
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        for name in ("decode_workers", "encode_workers", "queue_depth"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: in this process), got {self.workers}")
        if self.max_reject_rate is not None and not 0 <= self.max_reject_rate <= 1:
            raise ValueError(f"max_reject_rate must be in [0, 1], got {self.max_reject_rate}")
        if self.output.startswith("pipe:") and "{name}" not in self.output:
            raise ValueError("a pipe: output needs '{name}' where the shard's file name goes")
        if self.output.startswith("pipe:") and self.stats is None:
            raise ValueError("a pipe: output needs --stats DIR for the per-shard stats files")


@dataclass
class ShardStats:
    shard: str
    input: str
    output: str
    read: int = 0
    written: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    decoder: str = ""
    encoder: str = ""  # how refined images were encoded (refinery.png.ENCODER, or "opencv")
    engine: str = ""
    engine_hash: str = ""
    backend: str = ""
    refinery_version: str = __version__
    skipped: bool = False  # finished by an earlier run

    def to_json(self) -> bytes:
        data = asdict(self)
        data.pop("skipped")
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


@dataclass
class JobSummary:
    shards: list[ShardStats]
    seconds: float

    @property
    def read(self) -> int:
        return sum(s.read for s in self.shards)

    @property
    def written(self) -> int:
        return sum(s.written for s in self.shards)

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.shards)

    def lines(self) -> list[str]:
        reasons: Counter[str] = Counter()
        for s in self.shards:
            reasons.update(s.reasons)
        done = [s for s in self.shards if not s.skipped]
        fresh = sum(s.read for s in done)
        rate = fresh / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{len(done)} shards refined, {len(self.shards) - len(done)} already finished; "
            f"read {self.read} = written {self.written} + rejected {self.rejected}",
            f"{fresh} samples this run in {self.seconds:.1f} s ({rate:.0f} samples/s)",
        ]
        if reasons:
            lines.append("rejected: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
        return lines


# -- the last stage: shards and their stats ----------------------------------------------------


def assemble(item: Item, *, provenance: bytes, keep_original: bool) -> dict[str, Any]:
    """The output sample of an item (``deploy.workers.assemble_sample``)."""
    return assemble_sample(item.sample, item.component, item.encoded, provenance, keep_original)


class ShardOutput:
    """One output shard being written: its samples in order, its rejects counted."""

    def __init__(self, config: RefineConfig, url: str, *, spec, backend: str):
        name = shard_name(url)
        self.config, self.spec = config, spec
        self.stats = _shard_stats(config, spec, backend, url)
        self.stats.encoder = png_encoder_name(config.png_encoder)
        self.provenance = _provenance(spec, backend, url)
        self.decoders: set[str] = set()
        self.began = time.perf_counter()
        self.writer = ShardWriter(self.stats.output, name=name)

    def add(self, item: Item) -> None:
        stats = self.stats
        stats.read += 1
        if item.decoder:
            self.decoders.add(item.decoder)
        if item.error is None:
            keep = self.config.keep_original
            self.writer.write(assemble(item, provenance=self.provenance, keep_original=keep))
            stats.written += 1
            return
        record = item.error.with_url(stats.input).as_record()
        stats.rejects.append(record)
        stats.reasons[record["reason"]] = stats.reasons.get(record["reason"], 0) + 1
        stats.rejected += 1

    def finish(self) -> ShardStats:
        self.writer.close()  # the output shard appears under its name (its stats: the caller)
        stats = self.stats
        stats.seconds = time.perf_counter() - self.began
        stats.decoder = "+".join(sorted(self.decoders)) or "none"
        return stats

    def abort(self) -> None:
        self.writer.abort()


def write_shards(
    batches: Iterable[Batch],
    *,
    config: RefineConfig,
    spec,
    backend: str,
    stop: dict[str, int] | None = None,
) -> Iterator[ShardStats]:
    """Write each shard's samples and count its rejects; yield its stats once the shard and
    then its stats file are in place. A shard cut short (an error upstream, a stop request:
    ``stop["signal"]``, checked at every batch) is aborted: nothing appears under its name."""
    shard: ShardOutput | None = None
    finished = 0
    try:
        with upstream(batches) as batches:
            for batch in batches:
                if stop is not None and stop["signal"]:
                    raise JobStopped(stop["signal"], finished)
                if batch.first:
                    shard = ShardOutput(config, batch.url, spec=spec, backend=backend)
                for item in batch.items:
                    shard.add(item)
                if batch.last:
                    stats, shard = shard.finish(), None
                    finished += 1
                    yield stats
    finally:
        if shard is not None:
            shard.abort()


# -- the job ---------------------------------------------------------------------------------


def _provenance_record(spec, backend: str) -> dict[str, Any]:
    """``refinery.json`` of every sample an engine refines, but for its ``source_shard``."""
    return {
        "engine": spec.engine_id,
        "engine_hash": spec.engine_hash,
        "method": spec.method,
        "network": spec.name,
        "backend": backend,
        "recipe": spec.source.get("recipe"),
        "checkpoint": spec.source.get("checkpoint"),
        "refinery_version": __version__,
    }


def _provenance(spec, backend: str, url: str) -> bytes:
    return encode_json({**_provenance_record(spec, backend), "source_shard": shard_name(url)})


def _shard_stats(config: RefineConfig, spec, backend: str, url: str) -> ShardStats:
    name = shard_name(url)
    stats = ShardStats(shard=name, input=url, output=output_url(config, name))
    stats.engine, stats.engine_hash, stats.backend = spec.engine_id, spec.engine_hash, backend
    return stats


def image_components(spec) -> tuple[str, ...]:
    """The components a job refines: the engine's own, or either image of a scene."""
    from refinery.samples import spec as domain_spec

    accepted = domain_spec(spec.domain).images
    return accepted if spec.io.image_component in accepted else (spec.io.image_component,)


# reasons that say the data is of another kind than the engine's (not a damaged sample)
_MISFITS = (MISSING, MALFORMED, SIZE)


def preflight(engine, urls: Sequence[str], *, probe: int = 64) -> None:
    """Refuse an engine that does not fit the data before any shard is processed. Up to
    ``probe`` samples from the start of the inputs go through the job's own checks (image
    component, PNG header, label, decode, channels, size): the first one that passes ends the
    check, and a bad sample is left for the job to reject, wherever it stands. Only when none
    of them fits, and some were of another kind than the engine's (not merely damaged), is the
    job refused, naming the engine and what did not fit."""
    from engines import EngineMismatch

    spec = engine.spec
    components, kind = image_components(spec), spec.io.pixel_kind
    decode = decode_item(kind)
    looked, misfits = 0, []
    for url in urls:
        for item in shard_items(url, components=components, kind=kind, domain=spec.domain):
            looked += 1
            decode(item)
            if item.error is None:
                problem = fit_problem(engine, item.image)
                if problem is None:
                    return
                item.error = SampleError(SIZE, problem, key=item.key)
            if item.error.reason in _MISFITS:
                misfits.append(item.error.with_url(url))
            if looked >= probe:
                break
        if looked >= probe:
            break
    if misfits:
        first = misfits[0]
        raise EngineMismatch(
            f"engine {spec.engine_id} ({spec.domain}, {' or '.join(components)}) does not fit "
            f"the data: none of the first {looked} samples fits it, {len(misfits)} of another "
            f"kind; {shard_name(first.url)}, key {first.key!r}: {first.reason}: {first.detail}"
        )


def dali_decoder(config: RefineConfig, engine, kind: str, workers: int) -> DaliDecoder | None:
    """The job's one DALI pipeline, where DALI is asked for (``--decoder dali``) or really
    decodes on the GPU (``auto``: JPEG components and a CUDA engine); None: OpenCV only."""
    if config.decoder == "opencv":
        return None
    device_id = cuda_index(engine.device)
    if config.decoder == "auto" and (
        device_id is None or "jpg" not in image_components(engine.spec) or not have_dali()
    ):
        return None
    if not have_dali():
        raise ValueError("--decoder dali: DALI is not installed (pip install nvidia-dali-cuda120)")
    return DaliDecoder(
        kind,
        batch=config.batch,
        threads=workers,
        device_id=device_id,
        everything=config.decoder == "dali",
    )


def job_workers(config: RefineConfig, engine, shards: int) -> int:
    """Worker processes for ``shards`` shards: ``--workers``, else one per core of this
    process's affinity mask, less the one the engine's driver (or CPU threads) uses; never
    more than there are shards. Ranks a launcher put on one machine unpinned (each one's mask
    the whole machine: ``torchrun --nproc_per_node 8``) share its cores, so eight ranks on 16
    cores start one worker each, not fifteen. None (0) for an in-memory output
    (``memory://``), which only this process can see."""
    if config.workers == 0 or config.output.startswith("memory://"):
        return 0
    cores = machine_threads()
    ranks = ranks_on_this_node()
    if ranks > 1 and cores >= (os.cpu_count() or cores):
        cores = max(1, cores // ranks)
    wanted = config.workers or (cores if engine.backend == IDENTITY else max(1, cores - 1))
    return max(1, min(wanted, shards))


def identity_domain(urls: Sequence[str]) -> str:
    """The domain of the first sample that names one (its label, else its components)."""
    from refinery.inspection import guess_domain
    from refinery.shards import tar_samples

    for url in urls:
        for sample in tar_samples(url, handler=lambda error: None):
            domain = guess_domain(sample)
            if domain is not None:
                return domain
    raise ValueError(
        "--engine identity: cannot tell the data's domain from its first samples; give --domain"
    )


def run(
    config: RefineConfig,
    urls: str | Sequence[str],
    *,
    progress: Callable[[ShardStats], None] | None = None,
    engine=None,
) -> JobSummary:
    """Refine the given input shards (all of them: partitioning happens before)."""
    import engines

    start = time.perf_counter()
    # a rank given no shards (more workers than shards) has nothing to do, and succeeds
    urls = expand_urls(urls) if isinstance(urls, str) or urls else []
    names = [shard_name(u) for u in urls]
    clashes = sorted(n for n, c in Counter(names).items() if c > 1)
    if clashes:
        raise ValueError(f"inputs share file names {clashes}: their outputs would collide")
    if engine is None and config.engine == IDENTITY:
        engine = IdentityEngine(config.domain or identity_domain(urls))
    elif engine is None:
        options = {"device": config.device, "precision": config.precision}
        options = {k: v for k, v in options.items() if v is not None}
        engine = engines.load(config.engine, backend=config.backend, **options)
    spec = engine.spec
    components, kind = image_components(spec), spec.io.pixel_kind
    clean_temps(config)
    todo = [u for u in urls if not finished(config, shard_name(u))]
    done = [read_stats(config, shard_name(u)) for u in urls if u not in todo]
    for stats in done:  # finished, but by this engine?
        same_engine(config, spec, stats.engine_hash, stats.engine, stats_url(config, stats.shard))
    check_owner(config, spec)  # reads only: a rerun with nothing to do writes nothing
    if todo:
        preflight(engine, todo)
        claim(config, spec)

    results: list[ShardStats] = []

    def finish(stats: ShardStats) -> None:
        write_stats(config, stats.shard, stats.to_json())  # after the shard
        results.append(stats)
        if progress is not None:
            progress(stats)

    with stop_requests() as stop:  # SIGINT/SIGTERM: stop at a batch
        decoders = config.decode_workers or machine_threads()
        dali = dali_decoder(config, engine, kind, decoders) if todo else None
        if dali is not None:
            _run_in_process(config, engine, todo, dali, stop=stop, finish=finish)
        elif todo:
            plan = ShardPlan(
                components=components,
                kind=kind,
                domain=spec.domain,
                batch=config.batch,
                keep_original=config.keep_original,
                identity=engine.backend == IDENTITY,
                provenance=_provenance_record(spec, engine.backend),
                png_encoder=config.png_encoder,
            )

            def shard_done(url: str, counts: dict[str, Any]) -> None:
                stats = _shard_stats(config, spec, engine.backend, url)
                for name, value in counts.items():
                    setattr(stats, name, value)
                finish(stats)

            tasks = [(url, output_url(config, shard_name(url))) for url in todo]
            completed = run_workers(
                tasks,
                plan,
                workers=job_workers(config, engine, len(todo)),
                engine=engine,
                fit=fit_problem,
                stop_signal=stop,
                on_shard=shard_done,
            )
            if not completed:
                raise JobStopped(stop["signal"], len(results))
    order = {name: i for i, name in enumerate(names)}
    shards = sorted(done + results, key=lambda s: order[s.shard])
    summary = JobSummary(shards, time.perf_counter() - start)
    check_reject_rate(config, summary)
    return summary


def _run_in_process(
    config: RefineConfig,
    engine,
    todo: list[str],
    dali: DaliDecoder,
    *,
    stop: dict[str, int],
    finish: Callable[[ShardStats], None],
) -> None:
    """The DALI job: one process, its stages in threads (see the module docstring)."""
    spec = engine.spec
    components, kind = image_components(spec), spec.io.pixel_kind
    decoders = config.decode_workers or machine_threads()
    encoders = config.encode_workers or machine_threads()
    depth = config.queue_depth
    with contextlib.ExitStack() as stack:
        decode_pool = ThreadPoolExecutor(decoders, thread_name_prefix="refine-decode")
        encode_pool = ThreadPoolExecutor(encoders, thread_name_prefix="refine-encode")
        for pool in (decode_pool, encode_pool):
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        batches = read_batches(
            todo, size=config.batch, components=components, kind=kind, domain=spec.domain
        )
        batches = prefetch(batches, depth, name="refine-read")
        batches = prefetch(dali(batches), depth, name="refine-dali")
        batches = in_pool(
            batches, decode_item(kind), decode_pool, workers=decoders, ahead=depth,
            select=lambda item: item.pending,
        )  # fmt: skip
        batches = prefetch(batches, depth, name="refine-decode")
        batches = prefetch(refine_batches(batches, engine), depth, name="refine-engine")
        batches = in_pool(
            batches, encode_item(kind, config.png_encoder), encode_pool, workers=encoders,
            ahead=depth, select=lambda item: item.error is None,
        )  # fmt: skip
        shards = write_shards(batches, config=config, spec=spec, backend=engine.backend, stop=stop)
        for stats in stack.enter_context(contextlib.closing(shards)):
            finish(stats)


def check_reject_rate(config: RefineConfig, summary: JobSummary) -> None:
    """The job's verdict, from the stats of all its shards (those an earlier run finished
    too), so a rerun of a job that failed it fails it again. Every shard is refined first:
    one bad shard does not stop the others."""
    if config.max_reject_rate is None:
        return
    read, rejected = summary.read, summary.rejected
    if read and rejected / read > config.max_reject_rate:
        raise RejectRateExceeded(
            f"{rejected} of {read} samples rejected ({rejected / read:.1%}), more than "
            f"--max-reject-rate {config.max_reject_rate:.1%}; see the stats files in "
            f"{config.stats or config.output}",
            summary,
        )


def read_stats(config: RefineConfig, name: str) -> ShardStats:
    data = _read_stats(config, name)
    known = {k: v for k, v in data.items() if k in ShardStats.__dataclass_fields__}
    return ShardStats(**known, skipped=True)
