"""SimGAN against real eyes: the README's "with real eyes" walk-through, timed and recorded.

The 2,000 real MPIIGaze eye crops of ``../shared/fixtures/real/mpiigaze_unlabeled/`` (a folder
of 60x36 JPEGs, no labels) go through the commands a user types, each in a process of its own:

    refinery ingest images FIXTURE --domain gaze --out W/real          (unlabeled real shards)
    refinery synth gaze --variant synthetic --n 2000 --out W/synthetic (procedural eyes)
    refinery train simgan --preset small --steps S --synthetic ... --real W/real --out W/run
    refinery export W/run --out W/engine
    refinery refine --engine W/engine --input W/synthetic --output W/refined
    refinery inspect W/synthetic W/refined W/real --sheet W/contact-sheet.png
    refinery evaluate gaze --synthetic ... --refined ... --real-test W/real   (realism, drift)

and the record holds what each step did (counts, rejects, seconds), the discriminator's last
accuracies on real and refined images (TensorBoard scalars of the run), the realism that
``evaluate`` measures without labels (a classifier two-sample test and KID of synthetic and
refined against the real crops, over 3 seeds) with the label drift of the refined eyes, and a
crude look at tone: mean and standard deviation of pixel intensity and the 1-D Wasserstein
distance between the intensity histograms of synthetic vs real and refined vs real. The
contact sheet (synthetic | refined | real) stays in the work directory
(``out/bench-real-gaze/contact-sheet.png``): open it.

Skipped (exit 0, nothing written) when the fixture is absent, as on a fresh clone.

    python -m benchmarks.real_gaze [--steps 600] [--quick] [--out DIR]
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

from benchmarks.common import RESULTS, write_result
from refinery.shards import read

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "real" / "mpiigaze_unlabeled"


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
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr}")
    return time.perf_counter() - began


def _pixels(url: str) -> np.ndarray:
    return np.stack([s["png"] for s in read(url, "gaze", labels=False)])


def _histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 between the two sets' 8-bit intensity distributions, in grey levels."""
    pa = np.bincount(a.ravel(), minlength=256) / a.size
    pb = np.bincount(b.ravel(), minlength=256) / b.size
    return float(np.abs(np.cumsum(pa) - np.cumsum(pb)).sum())


def _last_scalars(run: Path, names: tuple[str, ...]) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    have = set(events.Tags()["scalars"])
    return {name: float(events.Scalars(name)[-1].value) for name in names if name in have}


def _variants(real: np.ndarray, *, count: int, seeds: list[int], quick: bool) -> dict[str, dict]:
    """The two procedural variants against the real crops: the two-sample test over seeds
    (how far the built-in "real" variant is from real MPIIGaze, next to the synthetic one)."""
    import torch

    from refinery import sim
    from train.evaluate import summary
    from train.realism import null_band, two_sample_test

    def unit(pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pixels.astype(np.float32)[:, None] / 127.5 - 1.0)

    crops = unit(real)
    out = {}
    for variant in ("synthetic", "real"):
        rendered = unit(np.stack([s["png"] for s in sim.generate("gaze", variant, count, seed=11)]))
        runs = [
            two_sample_test(crops, rendered, seed=seed, epochs=2 if quick else 10) for seed in seeds
        ]
        out[variant] = {
            "c2st_accuracy": summary([r["accuracy"] for r in runs]),
            "c2st_null_band": null_band(runs[0]["test"]),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="adversarial iterations")
    parser.add_argument("--synthetic", type=int, default=2000, help="procedural eyes to refine")
    parser.add_argument("--quick", action="store_true", help="a tiny run to test the script")
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-real-gaze")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.fixture.is_dir():
        print(f"real_gaze: skipped: no fixture at {args.fixture}")
        return 0
    steps, count = (4, 64) if args.quick else (args.steps, args.synthetic)
    work = args.out
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    real, synthetic = work / "real", work / "synthetic"
    run, engine, refined = work / "run", work / "engine", work / "refined"

    seconds = {}
    seconds["ingest"] = _refinery(
        "ingest", "images", str(args.fixture), "--domain", "gaze", "--out", str(real),
        "--workers", "2",
    )  # fmt: skip
    ingested = json.loads((real / "ingest.json").read_text())
    seconds["synth"] = _refinery(
        "synth", "gaze", "--variant", "synthetic", "--n", str(count), "--seed", "1",
        "--shard-size", "500", "--out", str(synthetic),
    )  # fmt: skip
    tiny = []  # --quick: the same commands with a few small steps, to test this script
    if args.quick:
        (work / "tiny.yaml").write_text(QUICK_RECIPE)
        tiny = ["--config", str(work / "tiny.yaml")]
    seconds["train"] = _refinery(
        "train", "simgan", "--preset", "small", "--steps", str(steps), *tiny,
        "--synthetic", str(synthetic), "--real", str(real), "--out", str(run),
    )  # fmt: skip
    seconds["export"] = _refinery("export", str(run), "--out", str(engine))
    seconds["refine"] = _refinery(
        "refine", "--engine", str(engine), "--input", str(synthetic), "--output", str(refined)
    )
    sheet = work / "contact-sheet.png"
    _refinery("inspect", str(synthetic), str(refined), str(real), "--sheet", str(sheet))
    # the real crops have no labels: evaluate reports realism and label drift only
    seeds = ["0"] if args.quick else ["0", "1", "2"]
    seconds["evaluate"] = _refinery(
        "evaluate", "gaze", "--synthetic", str(synthetic), "--refined", str(refined),
        "--real-test", str(real), "--out", str(work / "report"), "--seeds", *seeds,
        *(["--epochs", "1"] if args.quick else []),
    )  # fmt: skip
    report = json.loads((work / "report" / "report.json").read_text())

    stats = [json.loads(p.read_text()) for p in sorted(refined.glob("*.stats.json"))]
    pixels = {
        "synthetic": _pixels(str(synthetic)),
        "refined": _pixels(str(refined)),
        "real": _pixels(str(real)),
    }
    variants = _variants(
        pixels["real"], count=count, seeds=[int(s) for s in seeds], quick=args.quick
    )
    appearance = {
        name: {"mean": float(p.mean()), "std": float(p.std())} for name, p in pixels.items()
    }
    distance = {
        f"{name}_vs_real": _histogram_distance(pixels[name], pixels["real"])
        for name in ("synthetic", "refined")
    }
    scalars = _last_scalars(run, ("discriminator/accuracy_real", "discriminator/accuracy_refined"))
    figures = {
        "ingest": {
            "files": ingested["items"],
            "written": ingested["samples_written"],
            "rejected": ingested["items_rejected"] + ingested["samples_rejected"],
            "seconds": round(seconds["ingest"], 2),
        },
        "train": {
            "steps": steps,
            "seconds": round(seconds["train"], 1),
            "last": scalars,
        },
        "refine": {
            "read": sum(s["read"] for s in stats),
            "written": sum(s["written"] for s in stats),
            "rejected": sum(s["rejected"] for s in stats),
            "seconds": round(seconds["refine"], 2),
        },
        "intensity": appearance,
        "histogram_distance_grey_levels": distance,
        "refined_closer_to_real": distance["refined_vs_real"] < distance["synthetic_vs_real"],
        "realism": {
            name: {
                "c2st_accuracy": entry["c2st_accuracy"],
                "c2st_null_band": entry["c2st_null_band"],
                "kid": entry["kid"],
            }
            for name, entry in report["realism"]["sets"].items()
        },
        "label_drift_deg": report["label_drift"],
        "procedural_variants": variants,
        "evaluate_seconds": round(seconds["evaluate"], 1),
    }
    settings = {
        "fixture": "shared/fixtures/real/mpiigaze_unlabeled (2,000 MPIIGaze 60x36 JPEG crops)",
        "preset": "small",
        "steps": steps,
        "synthetic": count,
        "ingest": "images --domain gaze (35x55 gray, centre crop)",
        "backend": "onnxruntime (refine's default)",
        "quick": args.quick,
        "contact_sheet": str(sheet.relative_to(ROOT)) if sheet.is_relative_to(ROOT) else str(sheet),
        "realism": "refinery evaluate with the unlabeled real crops as --real-test, seeds "
        + " ".join(seeds)
        + ": "
        + report["realism"]["note"]
        + "; "
        + report["realism"]["kid_note"],
    }
    write_result("real_gaze", figures, settings, results=args.results)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
