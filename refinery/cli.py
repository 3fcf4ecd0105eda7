"""The ``refinery`` command: argument parsing only; the work is done by the packages."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from refinery import __version__
from refinery.progress import say
from refinery.samples import SampleError


class _Parser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class UsageError(ValueError):
    """An argument combination the parser cannot check by itself; exits with status 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


# train.evaluation.downstream.TASKS, without importing torch
TASK_DOMAINS = ("gaze", "hand", "scene")


def _task_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--network", help="registered task network (default: the small one)")
    parser.add_argument("--epochs", type=positive_int, help="default: the task's own")
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--lr", type=float, help="peak learning rate (Adam, one-cycle)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--scratch",
        metavar="DIR",
        help="where the sets are decoded to and read back from a batch at a time (8-bit; "
        "default: $TMPDIR); removed at the end",
    )


def _synth(args: argparse.Namespace) -> int:
    from refinery import sim
    from refinery.samples import encode_sample
    from refinery.shards import write_shards

    start = time.perf_counter()
    options = {**_size_options(args.domain, args.size), **domain_options(args.domain, args.option)}
    samples = (
        encode_sample(s, args.domain)
        for s in sim.generate(args.domain, args.variant, args.n, seed=args.seed, **options)
    )
    pattern = f"{args.out.rstrip('/')}/{args.domain}-{args.variant}-s{args.seed}-%06d.tar"
    urls = write_shards(samples, pattern, shard_size=args.shard_size)
    seconds = time.perf_counter() - start
    print(
        f"wrote {args.n} {args.variant} {args.domain} samples in {len(urls)} "
        f"shard{'s' if len(urls) != 1 else ''} "
        f"to {args.out} ({args.n / seconds:.0f} samples/s)"
    )
    return 0


def _size_options(domain: str, size: str | None) -> dict[str, int]:
    if size is None:
        return {}
    try:
        parts = [int(p) for p in size.lower().split("x")]
    except ValueError:
        parts = []
    if domain == "hand" and len(parts) == 1:
        return {"size": parts[0]}
    if len(parts) == 2 and domain != "hand":
        return {"height": parts[0], "width": parts[1]}
    want = "N (a square crop)" if domain == "hand" else "HxW"
    raise UsageError(f"--size {size!r}: expected {want} for the {domain} domain")


def domain_options(domain: str, items: list[str]) -> dict[str, int | float]:
    """``--option KEY=NUMBER`` items as the domain simulator's options, checked against it."""
    from refinery import sim

    options: dict[str, int | float] = {}
    for item in items:
        key, sep, text = item.partition("=")
        try:
            if not (key and sep):
                raise ValueError
            value: int | float = int(text) if text.strip().lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise UsageError(f"--option {item!r}: expected KEY=NUMBER") from None
        options[key] = value
    try:
        sim.options_for(domain, **options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--option: {exc}") from None
    return options


def _inspect(args: argparse.Namespace) -> int:
    from refinery.inspection import inspect

    report = inspect(args.urls, domain=args.domain, labels=args.labels, sheet=args.sheet)
    print("\n".join(report.lines()))
    return 1 if report.rejects.total else 0


def _cache(args: argparse.Namespace) -> int:
    from train.cache import open_cache

    domain = args.domain
    if domain is None:
        from refinery.inspection import guess_domain
        from refinery.shards import expand_urls, tar_samples

        domain = guess_domain(next(tar_samples(expand_urls(args.urls)[0]), {}))
        if domain is None:
            raise UsageError("cannot tell the domain from the first sample: pass --domain")
    cache = open_cache(args.urls, domain=domain, labels=not args.real, image_key=args.image_key)
    print(cache.summary())
    for reject in cache.meta["rejects"][:20]:
        print(f"  rejected {reject['url']} key {reject['key']!r}: {reject['reason']}: "
              f"{reject['detail']}")  # fmt: skip
    return 1 if cache.meta["rejects"] else 0


def _add_cache(commands) -> None:
    cache = commands.add_parser(
        "cache",
        help="decode a shard set's small images once into the training cache",
        description="Decode every sample of local shards into the memory-mapped cache the "
        "trainers read (train/cache.py: $REFINERY_CACHE, or .refinery-cache/ beside the "
        "shards), or check and reuse the one there. Reports its size, build time and the "
        "rejected samples; exit status 1 when any was rejected.",
    )
    cache.add_argument("urls", nargs="+", help="local shard paths, dirs or {a..b} ranges")
    cache.add_argument("--domain", help="gaze, hand or scene (default: from the first sample)")
    cache.add_argument("--real", action="store_true", help="a real pool: samples may be unlabeled")
    cache.add_argument("--image-key", help="the image component (default: the domain's)")
    cache.set_defaults(run=_cache)


# --flag -> (format keyword, parser of its text); passed only when given, checked per format.
_INGEST_OPTIONS = {
    "size": "size",
    "ontology": "ontology",
    "crop": "crop",
    "variant": "variant",
    "head_pose_range": "head_pose_range",
    "kinect": "kinect",
    "cube": "cube",
    "split": "split",
    "labels": "labels",
    "depth": "depth",
    "domain": "domain",
}
# Options whose values are words for some formats (``--crop`` is a size for nyu-hand).
_INGEST_CHOICES = {("images", "crop"): ("center", "none")}


def _ingest_flag(name: str) -> str:
    return "--no-depth" if name == "depth" else f"--{name.replace('_', '-')}"


def _ingest_option(name: str, text: str, format_name: str):
    flag = _ingest_flag(name)
    choices = _INGEST_CHOICES.get((format_name, name))
    if choices is not None:
        if text not in choices:
            raise UsageError(
                f"{flag} {text!r}: expected {' or '.join(choices)} for format {format_name!r}"
            )
        return text
    if name == "size":
        parts = text.lower().split("x")
        if len(parts) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
            return (int(parts[0]), int(parts[1]))
        raise UsageError(f"{flag} {text!r}: expected HxW in pixels, e.g. 35x55")
    if name == "head_pose_range":
        try:
            pitch, yaw = (float(p) for p in text.split(","))
        except ValueError:
            raise UsageError(
                f"{flag} {text!r}: expected PITCH,YAW in degrees, e.g. 20,20"
            ) from None
        if not (pitch >= 0 and yaw >= 0):
            raise UsageError(f"{flag} {text!r}: expected non-negative degrees")
        return (pitch, yaw)
    if name == "depth":
        return text  # a real bool from --no-depth
    if name == "cube":
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise UsageError(f"{flag} {text!r}: expected a positive size in millimetres")
        return value
    if name in ("crop", "kinect"):
        try:
            return positive_int(text)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{flag}: {exc}") from None
    return text


def _ingest(args: argparse.Namespace) -> int:
    from refinery.formats import format_info
    from refinery.ingest import accepted_options, ingest

    accepted = accepted_options(args.format)
    options = {}
    for name, keyword in _INGEST_OPTIONS.items():
        text = getattr(args, name)
        if text is None:
            continue
        if accepted is not None and keyword not in accepted:
            takes = ", ".join(_ingest_flag(k) for k in _INGEST_OPTIONS.values() if k in accepted)
            raise UsageError(
                f"{_ingest_flag(name)} does not apply to format {args.format!r} "
                f"(it takes: {takes or 'no options'})"
            )
        options[keyword] = _ingest_option(name, text, args.format)
    if format_info(args.format).domain is None and "domain" not in options:
        raise UsageError(f"format {args.format!r} needs --domain (gaze, hand or scene)")
    summary = ingest(
        args.format,
        args.src,
        args.out,
        shard_size=args.shard_size,
        strict=args.strict,
        workers=args.workers,
        prefix=args.prefix,
        options=options,
    )
    print("\n".join(summary.lines()))
    return 1 if summary.total_rejected else 0


def _train_adversarial(args: argparse.Namespace) -> int:
    from refinery.progress import Progress
    from train import methods
    from train.loop import NonFiniteLoss, RunDir

    # the method's own flags (--image-key, --vgg-weights), each a config key; None: not given
    flags = {"steps": args.steps, **{k: getattr(args, k) for k in _METHOD_FLAGS[args.method]}}
    config = methods.load_config(
        args.method,
        preset=args.preset,
        config_file=args.config,
        resume_from=args.out if args.resume else None,
        settings=args.set,
        **flags,
    )
    total = config.schedule.total
    rank = int(os.environ.get("RANK", 0))  # under torchrun only rank 0 shows progress
    world = int(os.environ.get("WORLD_SIZE", 1))
    if rank == 0:
        print(f"train {args.method}: world size {world}", flush=True)
    with Progress(
        total, what=f"train {args.method} {config.domain}", unit="iterations", enabled=rank == 0
    ) as bar:

        def progress(done: int, values: dict[str, float]) -> None:
            shown = {
                k.split("/")[-1]: float(v)
                for k, v in values.items()
                if k.endswith(("total", "speed/images_per_s"))
            }
            bar.set(**shown)
            bar.moveto(done)

        try:
            latest = methods.train(
                args.method,
                config,
                synthetic=args.synthetic,
                real=args.real,
                out=args.out,
                resume=args.resume,
                device=args.device,
                progress=progress,
            )
        except NonFiniteLoss as exc:
            kept = RunDir(args.out).latest()
            say(f"refinery train: error: {exc}; last good checkpoint: {kept}")
            return 1
    if rank == 0:
        print(
            f"run {args.out}: checkpoint {latest}; TensorBoard: tensorboard --logdir {args.out}/tb"
        )
    return 0


def _task_settings(args: argparse.Namespace) -> dict:
    """The task-network flags the user gave (the rest stay the task's defaults)."""
    names = ("epochs", "network", "batch_size", "lr")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def _train_task(args: argparse.Namespace) -> int:
    import json

    from train.evaluation.downstream import train_task

    options = _task_settings(args)
    metrics = train_task(
        args.domain,
        train=args.train,
        eval=args.eval,
        out=args.out,
        seed=args.seed,
        device=args.device,
        scratch=args.scratch,
        appearance=args.appearance,
        **options,
    )
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from train.evaluation.evaluate import evaluate

    options = _task_settings(args)
    report = evaluate(
        args.domain,
        synthetic=args.synthetic,
        refined=args.refined,
        real_train=args.real_train,
        real_test=args.real_test,
        out=args.out,
        seeds=args.seeds,
        robust_epochs=args.robust_epochs or 0,
        c2st_repeats=args.c2st_repeats,
        device=args.device,
        scratch=args.scratch,
        **options,
    )
    metric = report["task"]["metric"]
    for name, result in report["results"].items():
        value = result["metrics"][metric["key"]]
        print(
            f"trained on {name:9s} {metric['label']} on real test: "
            f"{value['mean']:.4f} ± {value['std']:.4f} {metric['unit']}"
        )
    gap = report["gap_closed"]
    if gap is not None and gap["of_means"] is not None:
        over = gap["mean_over_seeds"]
        print(
            f"gap closed by refinement: {100 * gap['of_means']:.1f}% of the means"
            + (f", {100 * over:.1f}% mean over seeds" if over is not None else "")
        )
    if report["label_drift"] is not None:
        drift = report["label_drift"]
        print(f"label drift: {drift['mean']:.4f} {drift['unit']} ({drift['label']})")
    labels = report["labels"]
    print(f"labels identical for {labels['identical']} of {labels['paired']} paired keys")
    if not report["real_test_labeled"]:
        print("real test set unlabeled: task networks not scored, realism only")
    for name, entry in report["realism"]["sets"].items():
        c2st, kid = entry["c2st_accuracy"], entry["kid"]
        print(
            f"realism, {name:9s} vs real: two-sample test accuracy {c2st['mean']:.3f} ± "
            f"{c2st['std']:.3f} (0.5 = indistinguishable, null band ±"
            f"{entry['c2st_null_band']:.3f}; learned from {entry['c2st_train_images']} images, "
            f"scored on {entry['c2st_test_images']}), KID {kid['mean']:.4f}"
            + (
                f"; {entry['c2st_classifiers_per_seed']} classifiers per seed, "
                f"± {entry['c2st_classifier_std']:.3f} between them"
                if "c2st_classifier_std" in entry
                else ""
            )
        )
    print(f"report: {args.out}/report.html")
    return 0


def _profile(text: str | None):
    if text is None:
        return None
    from engines import Profile

    try:
        return Profile.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _export(args: argparse.Namespace) -> int:
    import engines

    spec = engines.export_run(
        args.run_dir, args.out, checkpoint=args.checkpoint, profile=_profile(args.shapes)
    )
    print(
        f"exported {spec.name} ({spec.method}, {spec.domain}) from "
        f"{spec.source['checkpoint']} to {args.out}: model.onnx opset {spec.model['opset']}, "
        f"profile {spec.profile}, ONNX Runtime vs torch max |diff| "
        f"{spec.validation['onnxruntime_vs_torch_max_abs']:.2g}"
    )
    return 0


def _build(args: argparse.Namespace) -> int:
    import engines

    spec = engines.build(
        args.engine,
        backend=args.backend,
        fp16=args.fp16,
        profile=_profile(args.shapes),
        batch=args.batch,
        workspace_gib=args.workspace,
    )
    record = spec.builds["tensorrt" if args.backend == "tensorrt" else "onnx-fp16"]
    where = (
        f" for {record['gpu']}, TensorRT {record['tensorrt_version']}" if "gpu" in record else ""
    )
    print(f"built {args.engine}/{record['file']} ({record['precision']}){where}")
    return 0


def _bench_engine(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from engines.bench import bench_engine
    from refinery.records import write_record

    size = _size_options("scene", args.size)
    options = {"device": args.device} if args.device else {}
    if args.precision:
        options["precision"] = args.precision
    result = bench_engine(
        args.engine,
        backend=args.backend,
        batch=args.batch,
        size=(size["height"], size["width"]),
        iterations=args.iterations,
        warmup=args.warmup,
        **options,
    )
    settings = result["settings"]
    device = (args.device or "default").replace(":", "")
    name = f"engine-{settings['network']}-{args.backend}-{device}-b{args.batch}-{args.size}"
    path = write_record(
        Path(args.out) / f"{name}.json", "bench_engine", result["figures"], settings
    )
    print(json.dumps(result["figures"], indent=2))
    print(f"wrote {path}")
    return 0


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate between 0 and 1")
    return value


def _refine(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from deploy import launch
    from deploy.job import JobStopped, RefineConfig, RejectRateExceeded, run
    from refinery.progress import Progress
    from refinery.shards import expand_urls

    config = RefineConfig(
        engine=args.engine,
        output=args.output,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        batch=args.batch,
        keep_original=args.keep_original,
        max_reject_rate=args.max_reject_rate,
        stats=args.stats,
        decoder=args.decoder,
        decode_workers=args.decode_workers,
        encode_workers=args.encode_workers,
        workers=args.workers,
        domain=args.domain,
        png_encoder=args.png_encoder,
    )
    urls = expand_urls(args.input)
    if args.distributor == "ray":
        if args.rank is not None or args.world_size is not None:
            raise UsageError("--rank/--world-size and --distributor ray exclude each other")
        where = f"Ray cluster {args.address or '(local)'}"
        mine = launch.partition(urls, 0, 1)  # checks names; Ray spreads the groups
    else:
        if args.address is not None:
            raise UsageError("--address needs --distributor ray")
        try:  # a misconfigured launcher is a usage error (exit 2: job managers do not retry)
            place = launch.placement(rank=args.rank, world_size=args.world_size)
            mine = launch.partition(urls, place.rank, place.world_size)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        where = f"rank {place.rank} of {place.world_size} ({place.source})"
        local = os.environ.get("LOCAL_RANK")
        if args.device == "cuda" and local is not None and "torchrun" in place.source:
            config = replace(config, device=f"cuda:{int(local)}")  # one GPU per torchrun worker
    say(f"refine: {len(mine)} of {len(urls)} shards on {where} -> {args.output}")
    with Progress(len(mine), what="refine", unit="shards", rate_of="samples") as bar:
        counts = {"samples": 0, "rejected": 0}

        def progress(stats) -> None:
            counts["samples"] += stats.read
            counts["rejected"] += stats.rejected
            bar.set(**counts)
            bar.update(1)

        try:
            if args.distributor == "ray":
                from deploy.distributed import run_on_ray

                summary = run_on_ray(config, mine, address=args.address, progress=progress)
            else:
                summary = run(config, mine, progress=progress)
        except JobStopped as exc:  # SIGINT / SIGTERM: finished shards stay, a rerun goes on
            say(f"refinery refine: {exc}")
            return 128 + exc.signal
        except RejectRateExceeded as exc:  # every shard was refined: say what happened
            if exc.summary is not None:
                say("\n".join(exc.summary.lines()), sys.stdout)  # each rank its own, whole
            say(f"refinery refine: error: {exc}")
            return 1
        except RuntimeError as exc:  # incl. a failed Ray shard group
            say(f"refinery refine: error: {exc}")
            return 1
    say("\n".join(summary.lines()), sys.stdout)  # each rank its own, whole
    return 0


def _add_synth(commands) -> None:
    from refinery.samples import DOMAINS
    from refinery.sim import VARIANTS

    synth = commands.add_parser(
        "synth",
        help="write procedural labeled shards (synthetic or 'real' variant) for a domain",
        description="Render labeled samples with the procedural mini-simulators and write "
        "them as shards DIR/<domain>-<variant>-s<seed>-NNNNNN.tar. The same seed gives "
        "byte-identical shards; synthetic and real with the same seed share geometry "
        "and labels (paired), so use different seeds for unpaired training data.",
    )
    synth.add_argument("domain", choices=DOMAINS)
    synth.add_argument("--variant", choices=VARIANTS, default="synthetic")
    synth.add_argument("--n", type=positive_int, required=True, help="number of samples")
    synth.add_argument("--out", required=True, help="output directory (or fsspec URL)")
    synth.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--size", help="image size: HxW for gaze and scene (35x55, 256x512), N for hand (128)"
    )
    synth.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=NUMBER",
        help="a simulator option of the domain (repeatable), e.g. gaze's iris_scale=1.15 and "
        "opening=0.85 (anatomy scales, 1.0 by default)",
    )
    synth.set_defaults(run=_synth)


def _add_inspect(commands) -> None:
    from refinery.samples import DOMAINS

    inspect = commands.add_parser(
        "inspect",
        help="components and counts per shard, a few labels, and a PNG contact sheet",
        description="Read every sample of the shards, validate it against its domain's "
        "contract and report counts per shard, rejects with key and reason, a few "
        "decoded labels, and optionally a contact sheet (one block of rows per URL spec). "
        "Exit status 1 when any sample was rejected.",
    )
    inspect.add_argument(
        "urls", nargs="+", help="shard URL specs: paths, dirs, {a..b} ranges, pipe:, fsspec URLs"
    )
    inspect.add_argument("--domain", choices=DOMAINS, help="default: from the first sample")
    inspect.add_argument("--labels", type=int, default=3, help="how many labels to print")
    inspect.add_argument("--sheet", help="write a PNG contact sheet here")
    inspect.set_defaults(run=_inspect)


def _add_ingest(commands) -> None:
    from refinery.formats import list_formats
    from refinery.samples import DOMAINS

    ingest = commands.add_parser(
        "ingest",
        help="turn simulator output, a real dataset or any folder of images into shards "
        "(unityeyes, mpiigaze, images...)",
        description="Read a dataset in its own on-disk layout and write shards of contract 1 to "
        "OUT/<prefix>-NNNNNN.tar, each with a .stats.json (items, samples written, rejects "
        "with reasons), plus OUT/ingest.json and OUT/rejects.jsonl. A bad file is listed as a "
        "reject and the ingest goes on, unless --strict. A rerun skips finished shards and "
        "redoes the others. Format options apply only to formats that take them. 'images' "
        "takes any folder of PNG/JPEG files (recursively) as unlabeled real samples of "
        "--domain gaze, hand (16-bit depth PNG) or scene. Exit status 1 when anything was "
        "rejected.",
    )
    ingest.add_argument(
        "format", metavar="FORMAT", choices=list_formats(), help=", ".join(list_formats())
    )
    ingest.add_argument("src", metavar="SRC", help="the dataset's root directory")
    ingest.add_argument("--out", required=True, help="output directory (or fsspec URL)")
    ingest.add_argument(
        "--shard-size",
        type=positive_int,
        help="items per shard (unityeyes, images: images, default 1000; mpiigaze: day files, "
        "default 2)",
    )
    ingest.add_argument("--strict", action="store_true", help="stop at the first reject")
    ingest.add_argument(
        "--workers", type=positive_int, default=1, help="processes converting items (default 1)"
    )
    ingest.add_argument("--prefix", help="shard name prefix (default: the format name)")
    ingest.add_argument(
        "--size",
        help="output image size HxW (unityeyes, mpiigaze: 35x55; images: 35x55 for gaze, each "
        "image's own for hand and scene)",
    )
    ingest.add_argument(
        "--domain", choices=DOMAINS, help="images: the domain of the samples (required)"
    )
    ingest.add_argument("--ontology", help="class id space of seg labels (scene formats)")
    ingest.add_argument(
        "--crop",
        help="nyu-hand: square crop size N in pixels; images: center (default: the largest "
        "centred region of --size's aspect ratio) or none (resize the whole image)",
    )
    ingest.add_argument("--variant", help="which images of the dataset (e.g. nyu-hand: real)")
    ingest.add_argument(
        "--head-pose-range",
        metavar="P,Y",
        help="keep |head pitch| <= P and |yaw| <= Y degrees (unityeyes; GazeML uses 20,20)",
    )
    ingest.add_argument("--kinect", help="nyu-hand: one camera view, 1-3 (default: all)")
    ingest.add_argument("--cube", help="nyu-hand: crop cube side in mm (default 300)")
    ingest.add_argument("--split", help="cityscapes: train, val or test (default: all)")
    ingest.add_argument(
        "--labels", help="cityscapes: labelIds (default), color, or none (unlabeled real)"
    )
    ingest.add_argument(
        "--no-depth",
        dest="depth",
        action="store_const",
        const=False,
        help="synthia: ingest without Depth/Depth",
    )
    ingest.set_defaults(run=_ingest)


# Per method: its one-line help, its description, what --synthetic/--real/--steps mean to it.
_METHOD_HELP = {
    "simgan": (
        "SimGAN (Shrivastava et al. 2017) on synthetic and unlabeled real shards",
        "Train a SimGAN refiner. The preset picks train/recipes/simgan-<preset>.yaml "
        "(paper values with their sources; real-eyes: the best setting found on real eye "
        "crops); --config FILE overrides any of its keys, --set KEY=VALUE one key. "
        "Checkpoints, TensorBoard events and sample sheets go to the run directory; "
        "--resume continues exactly where the run stopped, with the run's own config.",
        ("synthetic shard URLs", "real shard URLs (unlabeled)"),
        "adversarial iterations (after pretraining)",
    ),
    "sggan": (
        "SG-GAN (Li et al. 2018): semantic-aware Grad-GAN on labeled synthetic and real scenes",
        "Train SG-GAN's two generators and semantic-aware discriminators; both domains need "
        "seg.png (converted to SG-GAN's 8 groups). Presets: train/recipes/sggan-<preset>.yaml.",
        ("synthetic scene shards", "real scene shards"),
        "training iterations",
    ),
    "spigan": (
        "SPIGAN (Lee et al. 2019): privileged adversarial learning with a task and a depth net",
        "Train SPIGAN's generator, discriminator, task network T (segmentation) and privileged "
        "network P (depth from depth.png); T is a downstream segmentation model. Presets: "
        "train/recipes/spigan-<preset>.yaml; --vgg-weights names local VGG19 weights for the "
        "perceptual loss (without them it runs on untrained features, with a warning).",
        ("synthetic scene shards", "real scene shards"),
        "training iterations",
    ),
}
# Per method: its own flags, each a config key of the same name (help text).
_METHOD_FLAGS = {
    "simgan": {"image_key": "image component (default: the domain's)"},
    "sggan": {},
    "spigan": {"vgg_weights": "local VGG19 weights file (torchvision format)"},
}


def _add_train(commands) -> None:
    from train.methods import METHODS

    train = commands.add_parser("train", help="train a refiner: simgan, sggan, spigan")
    methods = train.add_subparsers(dest="method", metavar="METHOD", required=True)
    for name in METHODS:
        _add_method(methods, name)


def _add_method(methods, name: str) -> None:
    from train.methods import entry, presets

    summary, description, (synthetic, real), steps = _METHOD_HELP[name]
    sub = methods.add_parser(name, help=summary, description=description)
    sub.add_argument("--synthetic", nargs="+", required=True, help=synthetic)
    sub.add_argument("--real", nargs="+", required=True, help=real)
    sub.add_argument("--out", required=True, help="run directory")
    default = entry(name).default_preset
    sub.add_argument(
        "--preset", choices=presets(name), default=default, help=f"recipe (default: {default})"
    )
    sub.add_argument("--config", help="YAML file overriding recipe keys")
    sub.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one recipe key (repeatable), read as its config field's type, after --config: "
        "e.g. seed=3, discriminator_optimiser.lr=0.0008 (one field of a nested key); unknown "
        "keys are refused; the run's config.yaml records the result",
    )
    sub.add_argument("--steps", type=positive_int, help=steps)
    for key, text in _METHOD_FLAGS[name].items():
        sub.add_argument(f"--{key.replace('_', '-')}", help=text)
    sub.add_argument("--resume", action="store_true", help="continue the run in --out")
    sub.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    sub.set_defaults(run=_train_adversarial)


def _add_train_task(commands) -> None:
    task = commands.add_parser(
        "train-task",
        help="train a downstream task network on shards and evaluate it (gaze, hand, scene)",
        description="Train the domain's task network (gaze: the SimGAN paper's gaze CNN; hand: "
        "a stacked hourglass on depth crops; scene: FCN8s; small presets by default) on --train "
        "shards and report its metrics on --eval shards.",
    )
    task.add_argument("domain", choices=TASK_DOMAINS)
    task.add_argument("--train", nargs="+", required=True, help="labeled training shard URLs")
    task.add_argument("--eval", nargs="+", required=True, help="labeled evaluation shard URLs")
    task.add_argument("--out", help="write model.safetensors, metrics.json, config.json here")
    _task_options(task)
    task.add_argument("--seed", type=int, default=0)
    task.add_argument(
        "--appearance",
        action="store_true",
        help="train with random appearance changes (tone, contrast, shading, blur, noise; not "
        "geometry) for an appearance-robust network (gaze, scene)",
    )
    task.set_defaults(run=_train_task)


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="does training on refined data beat synthetic on real data? HTML + JSON report",
        description="Train the domain's task network on --synthetic, on --refined and (given "
        "--real-train) on real shards, for each seed; test each on --real-test; report errors "
        "(mean and spread over seeds), the share of the synthetic-to-real gap refinement closed, "
        "label drift, label preservation and realism (a classifier two-sample test and a kernel "
        "distance of synthetic and refined against real images, no labels needed) in "
        "REPORT_DIR/report.html and report.json. An unlabeled --real-test (image only, or "
        "'labeled': false) gives realism and label drift without task scores.",
    )
    evaluate.add_argument("domain", choices=TASK_DOMAINS)
    evaluate.add_argument("--synthetic", nargs="+", required=True, help="synthetic shard URLs")
    evaluate.add_argument(
        "--refined", nargs="+", required=True, help="the same samples refined (same keys)"
    )
    evaluate.add_argument("--real-train", nargs="+", help="labeled real training shard URLs")
    evaluate.add_argument(
        "--real-test",
        nargs="+",
        required=True,
        help="real test URLs (labeled: task scores and realism; unlabeled: realism)",
    )
    evaluate.add_argument("--out", required=True, metavar="REPORT_DIR", help="report directory")
    evaluate.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="task network seeds (0 1 2)"
    )
    evaluate.add_argument(
        "--robust-epochs",
        type=positive_int,
        help="epochs of the appearance-robust drift network (gaze, scene; default: --epochs): "
        "its random appearance changes make the task harder, and trained longer it reads less "
        "drift on appearance alone (benchmarks/experiments/drift_floor.py)",
    )
    evaluate.add_argument(
        "--c2st-repeats",
        type=positive_int,
        default=1,
        metavar="N",
        help="two-sample classifiers per seed, their mean the seed's realism (default 1): one "
        "classifier's draw moves the accuracy by about 0.03 on the same images "
        "(benchmarks/experiments/c2st_noise.py)",
    )
    _task_options(evaluate)
    evaluate.set_defaults(run=_evaluate)


_SHAPES_HELP = "optimisation profile MIN/OPT/MAX, each BxHxW (e.g. 1x35x55/64x35x55/256x140x220)"


def _add_export(commands) -> None:
    export = commands.add_parser(
        "export",
        help="export a run's generator as an engine directory (model.onnx + engine.json)",
        description="Export the generator of a training run with torch.onnx.export(dynamo=True): "
        "dynamic batch, height and width, checked with the ONNX checker and against torch with "
        "ONNX Runtime; engine.json records the pixel scaling, profile, checkpoint sha256 and "
        "recipe.",
    )
    export.add_argument("run_dir", metavar="RUN", help="training run directory")
    export.add_argument("--out", required=True, help="engine directory to write")
    export.add_argument("--checkpoint", help="checkpoint name (default: the run's latest)")
    export.add_argument("--shapes", help=_SHAPES_HELP + "; default: around the training size")
    export.set_defaults(run=_export)


def _add_build(commands) -> None:
    build = commands.add_parser(
        "build",
        help="add a backend artifact to an engine: TensorRT plan, FP16 ONNX graph",
        description="--backend tensorrt builds a serialised plan for this GPU and TensorRT "
        "version (FP16 from an FP16 graph, strongly typed); --backend onnxruntime --fp16 writes "
        "the FP16 graph only.",
    )
    build.add_argument("engine", help="engine directory")
    build.add_argument("--backend", required=True, choices=("tensorrt", "onnxruntime"))
    build.add_argument("--fp16", action="store_true", help="FP16 compute (FP32 normalisation)")
    build.add_argument(
        "--shapes",
        help=_SHAPES_HELP + "; default: batches up to --batch at up to 2x the training size",
    )
    build.add_argument(
        "--batch",
        type=positive_int,
        help="a plan's largest batch: the refine job's --batch (default 64); the plan's "
        "context allocates for it",
    )
    build.add_argument("--workspace", type=float, default=4.0, help="TensorRT workspace, GiB")
    build.set_defaults(run=_build)


def _add_bench_engine(commands) -> None:
    bench = commands.add_parser(
        "bench-engine",
        help="images/s, latency percentiles and peak memory of an engine",
        description="Time an engine on random inputs at one batch shape and write the figures, "
        "machine and versions to OUT/engine-<network>-<backend>-<device>-b<N>-<HxW>.json.",
    )
    bench.add_argument("engine", help="engine directory")
    bench.add_argument(
        "--backend", default="onnxruntime", choices=("onnxruntime", "torch", "tensorrt")
    )
    bench.add_argument("--batch", type=positive_int, default=64)
    bench.add_argument("--size", required=True, help="HxW, e.g. 35x55")
    bench.add_argument("--device", help="cpu, cuda or cuda:N (default: the backend's)")
    bench.add_argument("--precision", choices=("fp32", "fp16"))
    bench.add_argument("--iterations", type=positive_int, default=30)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--out", default="benchmarks/results", help="results directory")
    bench.set_defaults(run=_bench_engine)


def _add_refine(commands) -> None:
    from refinery.samples import DOMAINS

    refine = commands.add_parser(
        "refine",
        help="the main job: refine input shards into output shards through an engine",
        description="Read input shards, decode (OpenCV in worker processes, one per core; DALI "
        "for JPEG on a GPU), run the engine on the image component, encode (libdeflate PNG) and "
        "write output shards 1:1 "
        "under the input file names: every other "
        "component byte-identical, refinery.json provenance added, <name>.stats.json beside "
        "each. A rerun skips finished shards; kill it at any moment and the rerun yields each "
        "key exactly once. Rank and world size come from the flags or from torchrun, Slurm "
        "arrays or Kubernetes indexed jobs.",
    )
    refine.add_argument(
        "--engine",
        required=True,
        help="engine directory (refinery export), or 'identity': images pass through the whole "
        "job unchanged (re-encoded as the job encodes), to validate or re-shard a dataset or to "
        "measure the CPU side alone",
    )
    refine.add_argument(
        "--domain", choices=DOMAINS, help="--engine identity: the data's (default: from its labels)"
    )
    refine.add_argument("--input", nargs="+", required=True, help="input shard URL specs")
    refine.add_argument(
        "--output",
        required=True,
        help="output directory, fsspec URL, or 'pipe:COMMAND' with {name} for the shard name",
    )
    refine.add_argument(
        "--backend", default="onnxruntime", choices=("onnxruntime", "torch", "tensorrt")
    )
    refine.add_argument("--device", help="cpu, cuda or cuda:N (default: the backend's)")
    refine.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        help="torch: FP16 autocast on CUDA; onnxruntime: the FP16 graph (refinery build --fp16); "
        "a TensorRT plan has the precision it was built with",
    )
    refine.add_argument("--batch", type=positive_int, default=64)
    refine.add_argument("--keep-original", action="store_true", help="also keep orig.<ext>")
    refine.add_argument(
        "--max-reject-rate", type=_rate, help="fail when more than this share is rejected"
    )
    refine.add_argument("--stats", help="directory for stats files (default: beside outputs)")
    refine.add_argument(
        "--decoder",
        default="auto",
        choices=("auto", "dali", "opencv"),
        help="auto: DALI (nvJPEG) for JPEG images on a CUDA engine, OpenCV otherwise; dali: "
        "every image through DALI (CPU mode without a GPU); opencv: none",
    )
    refine.add_argument(
        "--workers",
        type=int,
        help="CPU worker processes that read, check, decode, encode and write shards (default: "
        "one per CPU of this process's affinity mask, one fewer with an engine; 0: none, all in "
        "this process)",
    )
    refine.add_argument(
        "--png-encoder",
        default="libdeflate",
        choices=("libdeflate", "opencv"),
        help="how refined PNGs are written: libdeflate (default, ~2x faster, smaller files) or "
        "OpenCV; lossless either way, only the bytes differ",
    )
    refine.add_argument(
        "--decode-workers",
        type=positive_int,
        help="the DALI job (--decoder dali, or JPEG on a GPU): decoding threads (default: CPUs)",
    )
    refine.add_argument(
        "--encode-workers",
        type=positive_int,
        help="the DALI job: encoding threads (default: this machine's CPUs)",
    )
    refine.add_argument("--rank", type=int, help="this worker's rank (default: from launcher)")
    refine.add_argument("--world-size", type=positive_int, help="number of workers")
    refine.add_argument("--distributor", default="local", choices=("local", "ray"))
    refine.add_argument("--address", help="Ray cluster address (with --distributor ray)")
    refine.set_defaults(run=_refine)


_COMMANDS = (
    _add_synth,
    _add_inspect,
    _add_cache,
    _add_ingest,
    _add_train,
    _add_train_task,
    _add_evaluate,
    _add_export,
    _add_build,
    _add_bench_engine,
    _add_refine,
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="refinery",
        description="Refine labeled synthetic datasets into realistic ones (WebDataset shards).",
    )
    parser.add_argument("--version", action="version", version=f"refinery {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from engines.spec import EngineError

    try:
        return args.run(args)
    except UsageError as exc:
        parser.exit(2, f"refinery {args.command}: error: {exc}\n")
    except (SampleError, ValueError, OSError, EngineError) as exc:
        say(f"refinery {args.command}: error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
