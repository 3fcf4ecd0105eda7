"""SimGAN against real eyes: the README's "with real eyes" walk-through, timed and recorded.

The 2,000 real MPIIGaze eye crops of ``../shared/fixtures/real/mpiigaze_unlabeled/`` (a folder
of 60x36 JPEGs, no labels) go through the commands a user types, each in a process of its own:

    refinery ingest images FIXTURE --domain gaze --out W/real          (unlabeled real shards)
    refinery synth gaze --variant synthetic --n 2000 --out W/synthetic (procedural eyes)
    for seed s in 0 1 2 (one GAN per seed):
    refinery train simgan --preset small --steps S --config seed-s.yaml --synthetic ...
                          --real W/real --out W/run-s
    refinery export W/run-s --out W/engine-s
    refinery refine --engine W/engine-s --input W/synthetic --output W/refined-s
    refinery evaluate gaze --synthetic ... --refined W/refined-s --real-test W/real --seeds s
    then
    refinery inspect W/synthetic W/refined-s0 W/real --sheet W/contact-sheet.png   (first seed)

and the record holds what each step did (counts, rejects, seconds), the discriminator's last
accuracies on real and refined images (TensorBoard scalars of the run), the realism that
``evaluate`` measures without labels (a classifier two-sample test and KID of synthetic and
refined against the real crops) with the label drift of the refined eyes, mean ± std over the
three runs, and a
crude look at tone: mean and standard deviation of pixel intensity and the 1-D Wasserstein
distance between the intensity histograms of synthetic vs real and refined vs real. The
contact sheet (synthetic | refined | real) stays in the work directory
(``out/bench-real-gaze/contact-sheet.png``): open it.

Skipped (exit 0, nothing written) when the fixture is absent, as on a fresh clone.

    python -m benchmarks.experiments.real_gaze [--steps 600] [--quick] [--out DIR] [--padding zeros]

``--padding zeros`` is the ablation of the recipes' reflect padding: the same runs with the
paper's zero padding, recorded as ``real_gaze_zeros.json`` (its table sits under this one).
``--set KEY=VALUE`` (repeatable, recipe keys) or ``--steps`` other than 600, with ``--tag
NAME``, runs another variant of the recipe or its budget, recorded as ``real_gaze_NAME.json``:
e.g. ``--set psi=gradients --set self_reg_weight=1.0 --tag psi-gradients``, ``--steps 1200
--tag steps-1200``. ``--robust-epochs N`` (``evaluate --robust-epochs``) measures the label drift
with an appearance-robust estimator trained N epochs instead of the task's 8, likewise under a
tag: the GANs are seeded, so the same runs, read with a finer instrument
(``benchmarks/experiments/drift_floor.py`` measures its floor). ``--synth-option KEY=NUMBER`` draws the
procedural eyes with a simulator option (``synth --option``), e.g. ``--synth-option
iris_scale=1.15 --synth-option opening=0.85 --tag anatomy``: larger irises in narrower
openings, as UnityEyes and MPIIGaze have them. ``--hold-gaze MU`` adds the geometry term
(``SimGANConfig.task_reg_weight``): an appearance-robust gaze network trained once on the
synthetic eyes, frozen, and each refiner charged MU·‖g(R(x)) − g(x)‖₁ for what it changes in
that network's reading, e.g. the recorded run ``--hold-gaze 20 --robust-epochs 48 --tag
hold-gaze-20``. ``--seeds S [S ...]`` trains one GAN per seed instead of seeds 0 1 2 (under a tag
too), e.g. ``--seeds 0 1 2 3 4 5`` when three GANs spread wider than the settings differ.

``--preset NAME`` (under a tag) starts every GAN from another recipe than ``small``: ``--preset
real-eyes --robust-epochs 48 --tag real-eyes`` checks the recipe that holds the best setting
found here (each of its GANs trains its own frozen gaze network, as ``--hold-gaze 5`` trains one
for all).

``--holdout`` (under a tag) splits the real crops in two by a seeded draw: the GANs train on
one half and ``evaluate`` scores realism on the other, which no discriminator saw (without it
both read all 2,000, as every earlier record did). ``--select-every N`` (with ``--holdout``)
keeps a checkpoint every N iterations and chooses among the adversarial ones by realism on a
validation set: each refines fresh procedural eyes (``synth --seed 2``), a two-sample test
scores them against the GAN's own training half, and the lowest accuracy is exported, refines
the set and is evaluated on the held-out half; every checkpoint's accuracy on the held-out half
is recorded beside it (read after the choice, never used for it), so the record shows what
choosing by validation gave against the last checkpoint and against the best one in hindsight.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import EXPERIMENT_RESULTS as RESULTS
from benchmarks.common import SEEDS, exit_on_sigterm, write_result
from refinery.cli import UsageError, domain_options, positive_int
from refinery.shards import read

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "real" / "mpiigaze_unlabeled"
DEFAULT_SEEDS = " ".join(map(str, SEEDS))  # --seeds' default, as its help and error print it


SYNTHETIC = 2000  # procedural eyes to train on and refine
STEPS = 600  # the walk-through's budget: the README's "with real eyes" commands
# --hold-gaze's frozen network: as long as evaluate's 48-epoch drift estimator, on a seed none
# of evaluate's runs (0, 1, 2) uses, so the network the refiner answers to is not the one read
HOLD_EPOCHS, HOLD_SEED = 48, 10
# --holdout: the draw that splits the real crops; --select-every: the seed of the fresh
# procedural eyes checkpoints are chosen on (the refined set is drawn with seed 1)
HOLDOUT_SEED, VALIDATION_SEED = 0, 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what ingest images reads
# the eyes' (H, W): ingest's and synth's, so realism reads them as evaluate does
EYE_SIZE = (35, 55)

QUICK_RECIPE = """\
pretrain_refiner_steps: 2
pretrain_discriminator_steps: 2
batch_size: 8
buffer_size: 64
shuffle_buffer: 64
checkpoint_every: 4
sample_every: 4
log_every: 1
"""


def _refinery(*args: str) -> float:
    """Run one ``refinery`` command as a user would; its seconds (it must succeed)."""
    began = time.perf_counter()
    command = [sys.executable, "-m", "refinery", *args]
    # the repo first, then what the caller put on the path (the GPU machine's carried wheels)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr}")
    return time.perf_counter() - began


def _pixels(url: str) -> np.ndarray:
    return np.stack([s["png"] for s in read(url, "gaze", labels=False)])


def unit(pixels: np.ndarray):
    """(N, H, W) uint8 eyes as the two-sample test reads them: (N, 1, H, W) float32 in [-1, 1]."""
    import torch

    return torch.from_numpy(pixels.astype(np.float32)[:, None] / 127.5 - 1.0)


def _histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 between the two sets' 8-bit intensity distributions, in grey levels."""
    pa = np.bincount(a.ravel(), minlength=256) / a.size
    pb = np.bincount(b.ravel(), minlength=256) / b.size
    return float(np.abs(np.cumsum(pa) - np.cumsum(pb)).sum())


def _dark_centre(pixels: np.ndarray) -> dict[str, float]:
    """Where the iris sits, read without labels: the centroid of each eye's darkest 8% of pixels
    (lightly blurred, 4 px border dropped), as mean and std over the set, in pixels (x right,
    y down). It places the drawn eyes against the real crops (`synth --option`) and shows how
    far a refiner moved the irises."""
    import cv2

    centres = []
    for image in pixels:
        inner = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0)[4:-4, 4:-4]
        ys, xs = np.nonzero(inner <= np.percentile(inner, 8))
        centres.append((xs.mean() + 4, ys.mean() + 4))
    xy = np.array(centres)
    return {
        "x_mean": float(xy[:, 0].mean()),
        "x_std": float(xy[:, 0].std()),
        "y_mean": float(xy[:, 1].mean()),
        "y_std": float(xy[:, 1].std()),
    }


def _last_scalars(run: Path, names: tuple[str, ...]) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    have = set(events.Tags()["scalars"])
    return {name: float(events.Scalars(name)[-1].value) for name in names if name in have}


def split_fixture(fixture: Path, work: Path, *, seed: int = HOLDOUT_SEED) -> dict[str, Path]:
    """Two folders of links to the fixture's images, as ``ingest images`` lists them (sorted
    relative paths, hidden names left out), split by a seeded permutation: ``train`` (the first
    half of the draw, the GANs' real set) and ``test`` (the rest, held out for ``evaluate``)."""
    files = sorted(
        path.relative_to(fixture)
        for path in fixture.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(fixture).parts)
    )
    if len(files) < 8:
        raise ValueError(f"{fixture}: {len(files)} images, too few to hold half out")
    order = np.random.default_rng(seed).permutation(len(files))
    parts = {"train": order[: len(files) // 2], "test": order[len(files) // 2 :]}
    folders = {}
    for part, rows in parts.items():
        folders[part] = work / f"fixture-{part}"
        for row in sorted(rows):
            copy = folders[part] / files[row]  # a copy: ingest never follows links
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fixture / files[row], copy)
    return folders


def _c2st(real, url: str, seed: int) -> float:
    """``evaluate``'s two-sample accuracy (seed ``seed``, 10 epochs) of the eyes at ``url``
    against ``real`` (``train.evaluation.realism.images`` at ``EYE_SIZE``)."""
    from train.evaluation.realism import images, two_sample_test

    candidate = images(url, "gaze", size=EYE_SIZE)
    return two_sample_test(real, candidate, seed=seed, epochs=10)["accuracy"]


def select_checkpoint(
    run: Path, work: Path, *, seed: int, validation: Path, synthetic: Path, real_train, real_test
) -> dict:
    """Choose among the adversarial checkpoints of ``run`` (those after pretraining): each is
    exported and refines the ``validation`` eyes, which a two-sample test scores against the
    GAN's own real half (``real_train``); the lowest accuracy wins (the earlier on a tie). Each
    also refines ``synthetic`` and is scored against the held-out half, for the record only.
    Returns the choice and every checkpoint's two accuracies."""
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    pretraining = config["pretrain_refiner_steps"] + config["pretrain_discriminator_steps"]
    names = sorted(p.name for p in (run / "checkpoints").glob("iter-*") if p.is_dir())
    candidates = [n for n in names if int(n.split("-")[1]) > pretraining]
    scored = []
    for name in candidates:
        engine, where = work / f"engine-{name}", {}
        _refinery("export", str(run), "--checkpoint", name, "--out", str(engine))
        for part, source in (("validation", validation), ("test", synthetic)):
            where[part] = work / f"refined-{part}-{name}"
            _refinery("refine", "--engine", str(engine), "--input", str(source),
                      "--output", str(where[part]))  # fmt: skip
        scored.append(
            {
                "checkpoint": name,
                "iteration": int(name.split("-")[1]),
                "validation_c2st": _c2st(real_train, str(where["validation"]), seed),
                "heldout_c2st": _c2st(real_test, str(where["test"]), seed),
            }
        )
    chosen = min(scored, key=lambda c: (c["validation_c2st"], c["iteration"]))
    hindsight = min(scored, key=lambda c: (c["heldout_c2st"], c["iteration"]))
    return {
        "chosen": chosen["checkpoint"],
        "last": scored[-1]["checkpoint"],
        "best_in_hindsight": hindsight["checkpoint"],
        "pretraining_iterations": pretraining,
        "checkpoints": scored,
    }


def _variants(
    real: np.ndarray, *, count: int, seeds: list[int], quick: bool, options: dict[str, int | float]
) -> dict[str, dict]:
    """The two procedural variants (drawn with the simulator `options`) against the real crops:
    the two-sample test over seeds (how far the built-in "real" variant is from real MPIIGaze,
    next to the synthetic one)."""
    from refinery import sim
    from train.evaluation.evaluate import summary
    from train.evaluation.realism import null_band, two_sample_test

    crops = unit(real)
    out = {}
    for variant in ("synthetic", "real"):
        drawn = sim.generate("gaze", variant, count, seed=11, **options)
        rendered = unit(np.stack([s["png"] for s in drawn]))
        runs = [
            two_sample_test(crops, rendered, seed=seed, epochs=2 if quick else 10) for seed in seeds
        ]
        out[variant] = {
            "c2st_accuracy": summary([r["accuracy"] for r in runs]),
            "c2st_null_band": null_band(runs[0]["test"]),
        }
    return out


def _all_crops(real: Path, real_test: Path, synthetic: Path, work: Path, seeds: list[int]) -> dict:
    """``--holdout``'s control: the two-sample test of the synthetic and of each GAN's refined
    eyes against both halves together, as a record without ``--holdout`` measures it. The
    test's classifier learns from as many real eyes as it is given, so accuracies against
    1,000 held-out crops and against all 2,000 are not on one scale; this puts the held-out
    record's GANs on the earlier records' scale (half of these crops the GANs saw)."""
    import torch

    from train.evaluation.evaluate import summary
    from train.evaluation.realism import images

    halves = [images(str(url), "gaze", size=EYE_SIZE) for url in (real, real_test)]
    crops = torch.cat(halves)  # images() without scratch: tensors in memory
    out = {"real_images": len(crops)}
    for name in ("synthetic", "refined"):
        out[name] = summary(
            [
                _c2st(crops, str(synthetic if name == "synthetic" else work / f"refined-s{s}"), s)
                for s in seeds
            ]
        )
    return out


def _selection_figures(runs: list[dict]) -> dict:
    """Per GAN: the checkpoint chosen by validation, the last and the best on the held-out half
    in hindsight, each with its held-out two-sample accuracy; and the three over GANs."""
    from train.evaluation.evaluate import summary

    def heldout(selection: dict, key: str) -> float:
        return next(
            c["heldout_c2st"] for c in selection["checkpoints"] if c["checkpoint"] == selection[key]
        )

    per_gan = [{"seed": r["seed"], **r["selection"]} for r in runs]
    return {
        "per_gan": per_gan,
        **{
            f"heldout_c2st_{key}": summary([heldout(s, key) for s in per_gan])
            for key in ("chosen", "last", "best_in_hindsight")
        },
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="adversarial iterations")
    parser.add_argument(
        "--synthetic", type=positive_int, default=SYNTHETIC, help="procedural eyes to refine"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run to test the script")
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-real-gaze")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--padding",
        choices=("reflect", "zeros"),
        default="reflect",
        help="the refiner's padding; zeros (the ablation) records real_gaze_zeros.json, without "
        "the procedural variants (they do not depend on it)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe key for every GAN (repeatable; needs --tag)",
    )
    parser.add_argument(
        "--robust-epochs",
        type=positive_int,
        help="evaluate's --robust-epochs: the appearance-robust drift estimator's epochs "
        "(default: the task's; needs --tag)",
    )
    parser.add_argument(
        "--synth-option",
        action="append",
        default=[],
        metavar="KEY=NUMBER",
        help="a gaze simulator option for the procedural eyes (synth --option; repeatable; "
        "needs --tag), e.g. iris_scale=1.15",
    )
    parser.add_argument(
        "--hold-gaze",
        type=float,
        default=0.0,
        metavar="MU",
        help="the geometry term: an appearance-robust gaze network trained on the synthetic "
        f"eyes (train-task --appearance, {HOLD_EPOCHS} epochs, seed {HOLD_SEED}) held frozen, "
        "and every refiner charged MU times the change in its reading (recipe keys "
        "task_reg_weight, task_reg_network; needs --tag)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="S",
        help=f"one GAN per seed (default: {DEFAULT_SEEDS}; others need --tag)",
    )
    parser.add_argument(
        "--holdout",
        action="store_true",
        help="the GANs train on half the real crops (a seeded draw) and evaluate scores on the "
        "other half (needs --tag)",
    )
    parser.add_argument(
        "--select-every",
        type=positive_int,
        metavar="N",
        help="with --holdout: a checkpoint every N iterations; the one whose refined "
        "validation eyes look most real against the training half is evaluated",
    )
    parser.add_argument(
        "--preset",
        default="small",
        help="the recipe every GAN starts from (train simgan --preset; others need --tag), "
        "e.g. real-eyes, which trains its own frozen gaze network per GAN",
    )
    parser.add_argument("--tag", help="names the variant: records real_gaze_TAG.json")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict, dict]:
    """Refuse a bad command line before minutes of work; the recipe overrides and the
    simulator options it asks for."""
    # a variant of the recipe, its budget, its eyes or its instrument records under its own name
    variant = (
        bool(args.set or args.synth_option or args.hold_gaze)
        or args.steps != STEPS
        or args.synthetic != SYNTHETIC
        or args.robust_epochs is not None
        or args.seeds not in (None, list(SEEDS))
        or args.holdout
        or args.preset != "small"
    )
    if any("=" not in item for item in args.set) or variant != bool(args.tag):
        parser.error(
            f"--set KEY=VALUE, --synth-option KEY=NUMBER, --hold-gaze, --steps other than "
            f"{STEPS}, --synthetic other than {SYNTHETIC}, --robust-epochs, --seeds other than "
            f"{DEFAULT_SEEDS}, --holdout or --preset other than small make a variant, which --tag "
            "NAME names (and --tag needs one)"
        )
    if args.seeds is not None and (len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0):
        parser.error(f"--seeds must be distinct and >= 0, got {' '.join(map(str, args.seeds))}")
    if args.select_every and not args.holdout:
        parser.error("--select-every needs --holdout: choosing on the test crops would flatter it")
    if args.hold_gaze < 0:
        parser.error(f"--hold-gaze must be >= 0, got {args.hold_gaze}")
    overrides = dict(item.split("=", 1) for item in args.set)
    try:  # checked as synth --option checks them, before minutes of work
        options = domain_options("gaze", args.synth_option)
    except UsageError as exc:
        parser.error(str(exc).replace("--option", "--synth-option"))
    return overrides, options


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    overrides, options = _check(parser, args)
    name = "real_gaze" if args.padding == "reflect" else f"real_gaze_{args.padding}"
    if args.tag:
        name = f"real_gaze_{args.tag}"
    if not args.fixture.is_dir():
        print(f"real_gaze: skipped: no fixture at {args.fixture}")
        return 0
    steps, count = (4, 64) if args.quick else (args.steps, args.synthetic)
    work = args.out
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    real, synthetic = work / "real", work / "synthetic"
    # --holdout: the GANs' half in `real`, evaluate's in `real-test`; else both read `real`
    real_test = work / "real-test" if args.holdout else real
    validation = work / "synthetic-validation"
    ingested = _ingest(args, work, real, real_test)
    real_halves = _draw_eyes(args, count, synthetic, validation, real, real_test)
    hold, holder = _hold_network(args, work, synthetic)
    # One GAN per seed, each refining the same synthetic eyes and scored by evaluate with that
    # seed; the contact sheet is the first run's.
    seeds = args.seeds or ([0] if args.quick else list(SEEDS))
    runs = [
        _gan_run(
            args,
            work,
            seed,
            steps=steps,
            overrides=overrides,
            holder=holder,
            synthetic=synthetic,
            real=real,
            real_test=real_test,
            validation=validation,
            real_halves=real_halves,
        )
        for seed in seeds
    ]
    sheet = work / "contact-sheet.png"
    first = work / f"refined-s{seeds[0]}"
    _refinery("inspect", str(synthetic), str(first), str(real), "--sheet", str(sheet))
    figures = _figures(
        args, runs, seeds=seeds, steps=steps, count=count, ingested=ingested, options=options,
        overrides=overrides, work=work, synthetic=synthetic, real=real, real_test=real_test,
    )  # fmt: skip
    settings = _settings(
        args, runs[0]["report"], figures, steps=steps, count=count, sheet=sheet,
        overrides=overrides, options=options, hold=hold,
    )  # fmt: skip
    write_result(name, figures, settings, results=args.results)
    print(json.dumps(figures, indent=1))
    return 0


def _ingest(args: argparse.Namespace, work: Path, real: Path, real_test: Path) -> dict:
    """The real crops through ``ingest images`` (with ``--holdout``, each half on its own):
    files, samples written, rejected, seconds."""
    sources = split_fixture(args.fixture, work) if args.holdout else {"train": args.fixture}
    ingest_seconds, ingested = 0.0, {"items": 0, "samples_written": 0, "rejected": 0}
    for part, out in (("train", real), ("test", real_test)):
        if part in sources:
            ingest_seconds += _refinery(
                "ingest", "images", str(sources[part]), "--domain", "gaze", "--out", str(out),
                "--workers", "2",
            )  # fmt: skip
            done = json.loads((out / "ingest.json").read_text())
            ingested["items"] += done["items"]
            ingested["samples_written"] += done["samples_written"]
            ingested["rejected"] += done["items_rejected"] + done["samples_rejected"]
    return {
        "files": ingested["items"],
        "written": ingested["samples_written"],
        "rejected": ingested["rejected"],
        "seconds": round(ingest_seconds, 2),
    }


def _draw_eyes(
    args: argparse.Namespace,
    count: int,
    synthetic: Path,
    validation: Path,
    real: Path,
    real_test: Path,
) -> dict | None:
    """The procedural eyes (``synth``); with ``--select-every`` also the fresh validation eyes
    and the two halves of the real crops that the choice of checkpoint reads."""
    _refinery(
        "synth", "gaze", "--variant", "synthetic", "--n", str(count), "--seed", "1",
        "--shard-size", "500", "--out", str(synthetic),
        *(f"--option={item}" for item in args.synth_option),
    )  # fmt: skip
    if not args.select_every:
        return None
    # fresh eyes of the same kind, which the choice of checkpoint reads
    _refinery(
        "synth", "gaze", "--variant", "synthetic", "--n", str(count // 2),
        "--seed", str(VALIDATION_SEED), "--shard-size", "500", "--out", str(validation),
        *(f"--option={item}" for item in args.synth_option),
    )  # fmt: skip
    from train.evaluation.realism import images

    return {
        "train": images(str(real), "gaze", size=EYE_SIZE),
        "test": images(str(real_test), "gaze", size=EYE_SIZE),
    }


def _hold_network(
    args: argparse.Namespace, work: Path, synthetic: Path
) -> tuple[dict, Path | None]:
    """``--hold-gaze``: one frozen gaze network for every GAN, apart from evaluate's drift
    networks, trained on the synthetic eyes; its record entry and its folder ({}, None without)."""
    if not args.hold_gaze:
        return {}, None
    holder = work / "gaze-hold"
    epochs = 1 if args.quick else HOLD_EPOCHS
    seconds = _refinery(
        "train-task", "gaze", "--appearance", "--train", str(synthetic),
        "--eval", str(synthetic), "--epochs", str(epochs), "--seed", str(HOLD_SEED),
        "--out", str(holder),
    )  # fmt: skip
    metrics = json.loads((holder / "metrics.json").read_text())
    hold = {
        "task_reg_weight": args.hold_gaze,
        "network": f"refinery train-task gaze --appearance --epochs {epochs} --seed "
        f"{HOLD_SEED}, trained and evaluated on the synthetic eyes",
        "seconds": seconds,
        "error_on_synthetic_deg": metrics["mean_angular_error_deg"],
    }
    return hold, holder


def _recipe(
    args: argparse.Namespace, path: Path, seed: int, overrides: dict, holder: Path | None
) -> None:
    """The GAN's recipe overrides: its seed, padding, --set keys, the frozen gaze network,
    the checkpoint interval and, with --quick, a few small steps."""
    # --quick: the same commands with a few small steps, to test this script
    quick = QUICK_RECIPE if args.quick else ""
    if args.select_every:
        quick = "".join(
            line for line in quick.splitlines(True) if not line.startswith("checkpoint_every")
        )
    path.write_text(
        f"seed: {seed}\nrefiner_padding: {args.padding}\n"
        + "".join(f"{key}: {value}\n" for key, value in overrides.items())
        + (f"task_reg_weight: {args.hold_gaze}\ntask_reg_network: {holder}\n" if holder else "")
        + (f"checkpoint_every: {args.select_every}\n" if args.select_every else "")
        + quick
    )


def _gan_run(
    args: argparse.Namespace,
    work: Path,
    seed: int,
    *,
    steps: int,
    overrides: dict,
    holder: Path | None,
    synthetic: Path,
    real: Path,
    real_test: Path,
    validation: Path,
    real_halves: dict | None,
) -> dict:
    """One GAN: train, (choose a checkpoint,) export, refine the synthetic eyes and evaluate
    them with the GAN's seed; the seconds of each, evaluate's report, refine's stats, the
    refined pixels and the discriminator's last accuracies."""
    tag = f"s{seed}"
    run, engine = work / f"run-{tag}", work / f"engine-{tag}"
    refined, report_dir = work / f"refined-{tag}", work / f"report-{tag}"
    recipe = work / f"config-{tag}.yaml"
    _recipe(args, recipe, seed, overrides, holder)
    took = {}
    took["train"] = _refinery(
        "train", "simgan", "--preset", args.preset, "--steps", str(steps),
        "--config", str(recipe), "--synthetic", str(synthetic), "--real", str(real),
        "--out", str(run),
    )  # fmt: skip
    chosen: dict = {}
    if args.select_every:
        began = time.perf_counter()
        chosen = select_checkpoint(
            run, work / f"select-{tag}", seed=seed, validation=validation,
            synthetic=synthetic, real_train=real_halves["train"],
            real_test=real_halves["test"],
        )  # fmt: skip
        took["select"] = time.perf_counter() - began
    took["export"] = _refinery(
        "export", str(run), "--out", str(engine),
        *(["--checkpoint", chosen["chosen"]] if chosen else []),
    )  # fmt: skip
    took["refine"] = _refinery(
        "refine", "--engine", str(engine), "--input", str(synthetic), "--output", str(refined)
    )
    # the real crops have no labels: evaluate reports realism and label drift only
    took["evaluate"] = _refinery(
        "evaluate", "gaze", "--synthetic", str(synthetic), "--refined", str(refined),
        "--real-test", str(real_test), "--out", str(report_dir), "--seeds", str(seed),
        *(["--epochs", "1"] if args.quick else []),
        *(["--robust-epochs", str(args.robust_epochs)] if args.robust_epochs else []),
    )  # fmt: skip
    return {
        "seed": seed,
        "seconds": took,
        "report": json.loads((report_dir / "report.json").read_text()),
        "stats": [json.loads(p.read_text()) for p in sorted(refined.glob("*.stats.json"))],
        "pixels": _pixels(str(refined)),
        "selection": chosen,
        "last": _last_scalars(
            run,
            ("discriminator/accuracy_real", "discriminator/accuracy_refined")
            + (("refiner/task_reg",) if holder or args.preset != "small" else ()),
        ),
    }


def _tone(pixels: dict[str, np.ndarray], runs: list[dict]) -> tuple[dict, dict, dict]:
    """The crude look at tone and placement: each set's intensity mean and std, the histogram
    distances to the real crops, and where the dark iris sits (refined: mean over runs)."""
    from train.evaluation.evaluate import summary

    appearance = {
        name: {"mean": float(p.mean()), "std": float(p.std())} for name, p in pixels.items()
    }
    appearance["refined"] = {
        "mean": summary([float(r["pixels"].mean()) for r in runs])["mean"],
        "std": summary([float(r["pixels"].std()) for r in runs])["mean"],
    }
    distance = {
        "synthetic_vs_real": _histogram_distance(pixels["synthetic"], pixels["real"]),
        "refined_vs_real": summary(
            [_histogram_distance(r["pixels"], pixels["real"]) for r in runs]
        )["mean"],
    }
    placement = {name: _dark_centre(p) for name, p in pixels.items()}
    per_run = [_dark_centre(r["pixels"]) for r in runs]
    placement["refined"] = {
        key: summary([c[key] for c in per_run])["mean"] for key in placement["real"]
    }
    return appearance, distance, placement


def _figures(
    args: argparse.Namespace,
    runs: list[dict],
    *,
    seeds: list[int],
    steps: int,
    count: int,
    ingested: dict,
    options: dict,
    overrides: dict,
    work: Path,
    synthetic: Path,
    real: Path,
    real_test: Path,
) -> dict:
    """The record's figures: what each command did, tone, realism and label drift over the
    runs, the procedural variants and, with --holdout or --select-every, their controls."""
    from benchmarks.experiments.evaluate import drift_over_runs, realism_over_runs

    pixels = {"synthetic": _pixels(str(synthetic)), "real": _pixels(str(real_test))}
    variants = (
        _variants(pixels["real"], count=count, seeds=seeds, quick=args.quick, options=options)
        # they depend on the eyes drawn, not on the recipe or the drift instrument
        if args.padding == "reflect"
        and (args.synth_option or (not overrides and args.robust_epochs is None))
        else {}
    )
    appearance, distance, placement = _tone(pixels, runs)
    stats = [s for r in runs for s in r["stats"]]
    reports = [r["report"] for r in runs]
    figures = {
        "seeds": seeds,
        "ingest": ingested,
        "train": {
            "steps": steps,
            "seconds": round(sum(r["seconds"]["train"] for r in runs), 1),
            "last": [r["last"] for r in runs],
        },
        "refine": {
            "read": sum(s["read"] for s in stats),
            "written": sum(s["written"] for s in stats),
            "rejected": sum(s["rejected"] for s in stats),
            "refined_sets": len(runs),
            "seconds": round(sum(r["seconds"]["refine"] for r in runs), 2),
        },
        "intensity": appearance,
        "histogram_distance_grey_levels": distance,
        "refined_closer_to_real": distance["refined_vs_real"] < distance["synthetic_vs_real"],
        "dark_centre_px": placement,
        "realism": realism_over_runs(reports),
        "label_drift_deg": {
            **drift_over_runs(reports),
            "description": reports[0]["label_drift"]["description"],
        },
        "label_drift_robust_deg": {
            **drift_over_runs(reports, "label_drift_robust"),
            "description": reports[0]["label_drift_robust"]["description"],
        },
        "procedural_variants": variants,
        "evaluate_seconds": round(sum(r["seconds"]["evaluate"] for r in runs), 1),
    }
    if args.holdout:
        figures["ingest"]["held_out"] = len(pixels["real"])
        figures["realism_all_crops"] = _all_crops(real, real_test, synthetic, work, seeds)
    if args.select_every:
        figures["selection"] = _selection_figures(runs)
    return figures


def _settings(
    args: argparse.Namespace,
    report: dict,
    figures: dict,
    *,
    steps: int,
    count: int,
    sheet: Path,
    overrides: dict,
    options: dict,
    hold: dict,
) -> dict:
    """The record's settings: the fixture, the recipe and its variant, how runs are seeded,
    and what realism, --holdout and --select-every measure (``report``: the first run's)."""
    settings = {
        "fixture": "shared/fixtures/real/mpiigaze_unlabeled (2,000 MPIIGaze 60x36 JPEG crops)",
        "preset": args.preset,
        "steps": steps,
        "synthetic": count,
        "ingest": "images --domain gaze (35x55 gray, centre crop)",
        "backend": "onnxruntime (refine's default)",
        "quick": args.quick,
        "contact_sheet": str(sheet.relative_to(ROOT)) if sheet.is_relative_to(ROOT) else str(sheet),
        "seeding": "run s: SimGAN trained with --config seed: s, its refined eyes scored by "
        "refinery evaluate --seeds s; realism and drift are mean ± std over runs",
        "realism": "refinery evaluate with the unlabeled real crops as --real-test: "
        + report["realism"]["note"]
        + "; "
        + report["realism"]["kid_note"],
    }
    settings["refiner_padding"] = args.padding
    settings["recipe_overrides"] = overrides
    settings["synth_options"] = options
    if hold:
        settings["hold_gaze"] = hold
    if args.holdout:
        settings["holdout"] = (
            f"the real crops split by a seeded permutation (numpy default_rng({HOLDOUT_SEED})): "
            f"{figures['ingest']['written'] - figures['ingest']['held_out']} the GANs train on, "
            f"{figures['ingest']['held_out']} held out as evaluate's --real-test"
        )
    if args.select_every:
        settings["select_every"] = args.select_every
        settings["selection"] = (
            f"a checkpoint every {args.select_every} iterations; among those after pretraining, "
            f"each refines {count // 2} fresh procedural eyes (synth --seed {VALIDATION_SEED}) "
            "and the lowest two-sample accuracy (seed: the GAN's, 10 epochs) against the GANs' "
            "half of the real crops is exported, refines the set and is evaluated; each "
            "checkpoint's accuracy on the held-out half is recorded, not used"
        )
    settings["robust_epochs"] = report["settings"]["robust_epochs"]  # the drift estimator's
    return settings


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
