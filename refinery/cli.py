"""The ``refinery`` command: argument parsing only; the work is done by the packages."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from refinery import __version__
from refinery.samples import SampleError


class _Parser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class UsageError(ValueError):
    """An argument combination the parser cannot check by itself; exits with status 2."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _synth(args: argparse.Namespace) -> int:
    from refinery import sim
    from refinery.samples import encode_sample
    from refinery.shards import write_shards

    start = time.perf_counter()
    options = dict(_size_options(args.domain, args.size))
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


def _inspect(args: argparse.Namespace) -> int:
    from refinery.inspection import inspect

    report = inspect(args.urls, domain=args.domain, labels=args.labels, sheet=args.sheet)
    print("\n".join(report.lines()))
    return 1 if report.rejects.total else 0


def _train_simgan(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from train import simgan
    from train.loop import NonFiniteLoss, RunDir

    config = simgan.load_config(
        preset=args.preset,
        config_file=args.config,
        resume_from=args.out if args.resume else None,
        steps=args.steps,
        image_key=args.image_key,
    )
    total = config.schedule.total
    rank = int(os.environ.get("RANK", 0))  # under torchrun only rank 0 shows progress
    with tqdm(
        total=total,
        desc=f"simgan {config.domain}",
        unit="it",
        dynamic_ncols=True,
        disable=rank != 0,
    ) as bar:

        def progress(done: int, values: dict[str, float]) -> None:
            bar.n = done
            shown = {
                k.split("/")[-1]: v
                for k, v in values.items()
                if k.endswith(("total", "speed/images_per_s"))
            }
            bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=True)

        try:
            latest = simgan.train(
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
            print(f"refinery train: error: {exc}; last good checkpoint: {kept}", file=sys.stderr)
            return 1
    if rank == 0:
        print(
            f"run {args.out}: checkpoint {latest}; TensorBoard: tensorboard --logdir {args.out}/tb"
        )
    return 0


def _train_task(args: argparse.Namespace) -> int:
    import json

    from train.downstream import train_task

    options = {
        k: v for k, v in (("epochs", args.epochs), ("network", args.network)) if v is not None
    }
    metrics = train_task(
        args.domain, train=args.train, eval=args.eval, out=args.out, seed=args.seed, **options
    )
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from refinery.samples import DOMAINS
    from refinery.sim import VARIANTS

    parser = _Parser(
        prog="refinery",
        description="Refine labeled synthetic datasets into realistic ones (WebDataset shards).",
    )
    parser.add_argument("--version", action="version", version=f"refinery {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    synth.add_argument("--n", type=_positive, required=True, help="number of samples")
    synth.add_argument("--out", required=True, help="output directory (or fsspec URL)")
    synth.add_argument("--shard-size", type=_positive, default=1000, help="samples per shard")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--size", help="image size: HxW for gaze and scene (35x55, 256x512), N for hand (128)"
    )
    synth.set_defaults(run=_synth)

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

    train = commands.add_parser("train", help="train a refiner: simgan")
    methods = train.add_subparsers(dest="method", metavar="METHOD", required=True)
    simgan = methods.add_parser(
        "simgan",
        help="SimGAN (Shrivastava et al. 2017) on synthetic and unlabeled real shards",
        description="Train a SimGAN refiner. The preset picks train/recipes/simgan-<preset>.yaml "
        "(paper values with their sources); --config FILE overrides any of its keys. "
        "Checkpoints, TensorBoard events and sample sheets go to the run directory; "
        "--resume continues exactly where the run stopped, with the run's own config.",
    )
    simgan.add_argument("--synthetic", nargs="+", required=True, help="synthetic shard URLs")
    simgan.add_argument("--real", nargs="+", required=True, help="real shard URLs (unlabeled)")
    simgan.add_argument("--out", required=True, help="run directory")
    simgan.add_argument("--preset", choices=("gaze", "hand", "small"), default="gaze")
    simgan.add_argument("--config", help="YAML file overriding recipe keys")
    simgan.add_argument(
        "--steps", type=_positive, help="adversarial iterations (after pretraining)"
    )
    simgan.add_argument("--image-key", help="image component (default: the domain's)")
    simgan.add_argument("--resume", action="store_true", help="continue the run in --out")
    simgan.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    simgan.set_defaults(run=_train_simgan)

    task = commands.add_parser(
        "train-task",
        help="train a downstream task network on shards and evaluate it (gaze)",
        description="Train the domain's task network (gaze: the SimGAN paper's gaze CNN, small "
        "preset by default) on --train shards and report its error on --eval shards.",
    )
    task.add_argument("domain", choices=("gaze",))
    task.add_argument("--train", nargs="+", required=True, help="labeled training shard URLs")
    task.add_argument("--eval", nargs="+", required=True, help="labeled evaluation shard URLs")
    task.add_argument("--out", help="write model.safetensors, metrics.json, config.json here")
    task.add_argument("--epochs", type=_positive)
    task.add_argument("--network", help="registered task network (default: the small one)")
    task.add_argument("--seed", type=int, default=0)
    task.set_defaults(run=_train_task)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as exc:
        parser.exit(2, f"refinery {args.command}: error: {exc}\n")
    except (SampleError, ValueError, OSError) as exc:
        print(f"refinery {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
