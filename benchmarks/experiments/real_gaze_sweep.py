"""Many ``real_gaze`` variants at once on a large machine: a search for the setting worth a CPU run.

A ``real_gaze`` run of three GANs takes 30 to 80 minutes on the 2-core CPU, so settings there are
tried one at a time. On a GPU machine (16 cores, one H200) this script runs one ``real_gaze``
process per (variant, GAN seed) side by side, ``--workers`` at a time, seeds in turn (every
variant's seed 0 first), launching a run only while the budget left exceeds a typical run's
seconds and killing what still runs when ``--budget`` is spent. What each run measured goes to
``benchmarks/experiments/results/real_gaze_sweep.json`` (``--results``) after every run, so a sweep cut
short keeps what it measured; a run that failed or was killed is listed with its reason.

    python -m benchmarks.experiments.real_gaze_sweep [--fixture DIR] [--workers 12] [--budget 570]
        [--variants NAME ...] [--seeds 0 1 2] [--quick]      (make gpu-sweep)

Each run is ``benchmarks.experiments.real_gaze --seeds S --tag NAME-sS --robust-epochs 48`` with the
variant's arguments (``VARIANTS``): the same commands, recipe and scoring as the CPU records,
one GAN per seed, each process with ``cpu_count // workers`` torch threads. Its figures are a
search, not results: GAN training does not repeat to the digit across kinds of machine, and a
setting found here counts once ``make bench`` has rerun it on the CPU as a ``real_gaze`` record.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import EXPERIMENT_RESULTS as RESULTS
from benchmarks.common import SEEDS, exit_on_sigterm, write_result
from benchmarks.experiments.real_gaze import FIXTURE, ROOT
from refinery.cli import positive_int

D_4X = "discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}"
# the 4x pair (README: real_gaze_local-d-hold-gaze-5-d-lr-4x), the best setting on the CPU
PAIR = ["--set", "discriminator=simgan-discriminator-local", "--set", D_4X, "--hold-gaze", "5"]
VARIANTS: dict[str, list[str]] = {
    "pair": PAIR,
    "pair-wide-d": [*PAIR, "--set", "discriminator=simgan-discriminator-local-wide"],
    "pair-two-scale-d": [*PAIR, "--set", "discriminator=simgan-discriminator-two-scale"],
    "pair-batch-64": [*PAIR, "--set", "batch_size=64"],
    "pair-batch-128": [*PAIR, "--set", "batch_size=128"],
    "pair-k-g-1": [*PAIR, "--set", "k_g=1"],
    "pair-both-lr-2x": [
        *PAIR,
        *("--set", "refiner_optimiser={name: adam, lr: 0.0004, betas: [0.5, 0.999]}"),
        *("--set", "discriminator_optimiser={name: adam, lr: 0.0016, betas: [0.5, 0.999]}"),
    ],
    "pair-selfreg-0.25": [*PAIR, "--set", "self_reg_weight=0.25"],
}


def _figures(record: dict) -> dict:
    f = record["figures"]
    realism, drift = f["realism"], f["label_drift_robust_deg"]
    return {
        "refined_c2st": realism["refined"]["c2st_accuracy"]["runs"][0],
        "synthetic_c2st": realism["synthetic"]["c2st_accuracy"]["runs"][0],
        "refined_kid": realism["refined"]["kid"]["runs"][0],
        "drift_robust_deg": drift["runs"][0],
        "train_seconds": f["train"]["seconds"],
        "last": f["train"]["last"][0],
    }


def _summary(runs: list[dict]) -> dict:
    """Per variant: each finished seed's figures and the mean of the two-sample accuracies."""
    out: dict[str, dict] = {}
    for run in runs:
        entry = out.setdefault(run["variant"], {"seeds": {}})
        entry["seeds"][str(run["seed"])] = run.get("figures") or {"failed": run.get("error")}
    for entry in out.values():
        done = [s for s in entry["seeds"].values() if "refined_c2st" in s]
        if done:
            for key in ("refined_c2st", "synthetic_c2st", "drift_robust_deg"):
                entry[f"mean_{key}"] = sum(s[key] for s in done) / len(done)
            entry["points_below_synthetic"] = 100 * (
                entry["mean_synthetic_c2st"] - entry["mean_refined_c2st"]
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "real-gaze-sweep")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--workers", type=positive_int, default=12)
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for the whole sweep")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--robust-epochs", type=int, default=48)
    parser.add_argument("--quick", action="store_true", help="real_gaze --quick: tests the script")
    args = parser.parse_args(argv)
    if not args.fixture.is_dir():
        print(f"real_gaze_sweep: skipped: no fixture at {args.fixture}")
        return 0
    began = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 2) // args.workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    queue = [(v, s) for s in args.seeds for v in args.variants]  # every variant's seed 0 first
    running: dict[tuple[str, int], tuple[subprocess.Popen, float, Path]] = {}
    runs: list[dict] = []
    durations: list[float] = []

    def write() -> None:
        figures = {
            "seconds": round(time.monotonic() - began, 1),
            "unfinished": [f"{v}-s{s}" for v, s in [*running, *queue]],
            "summary": _summary(runs),
            "runs": runs,
        }
        settings = {
            "variants": {v: VARIANTS[v] for v in args.variants},
            "seeds": args.seeds,
            "workers": args.workers,
            "torch_threads_per_run": threads,
            "budget_s": args.budget,
            "robust_epochs": args.robust_epochs,
            "quick": args.quick,
            "run": "python -m benchmarks.experiments.real_gaze VARIANT-ARGS --seeds S --tag VARIANT-sS "
            f"--robust-epochs {args.robust_epochs}: one GAN, its refine and evaluate",
        }
        write_result("real_gaze_sweep", figures, settings, results=args.results)

    try:
        while queue or running:
            left = args.budget - (time.monotonic() - began)
            typical = sorted(durations)[len(durations) // 2] if durations else 0.0
            while queue and len(running) < args.workers and left > typical:
                variant, seed = queue.pop(0)
                name = f"{variant}-s{seed}"
                log = args.out / f"{name}.log"
                command = [
                    sys.executable, "-m", "benchmarks.experiments.real_gaze", *VARIANTS[variant],
                    "--seeds", str(seed), "--tag", name, "--robust-epochs", str(args.robust_epochs),
                    "--fixture", str(args.fixture), "--out", str(args.out / "work" / name),
                    "--results", str(args.out / "records"), *(["--quick"] if args.quick else []),
                ]  # fmt: skip
                with log.open("w") as output:  # the run holds its own copy of the file
                    process = subprocess.Popen(
                        command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                running[(variant, seed)] = (process, time.monotonic(), log)
            if not running:
                break  # too little budget left for another run
            time.sleep(1.0)
            for key, (process, start, log) in list(running.items()):
                over = time.monotonic() - began > args.budget
                if process.poll() is None and not over:
                    continue
                killed = process.poll() is None
                if killed:  # out of budget: the run and its refinery commands go
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                del running[key]
                variant, seed = key
                run = {
                    "variant": variant,
                    "seed": seed,
                    "seconds": round(time.monotonic() - start, 1),
                }
                record = args.out / "records" / f"real_gaze_{variant}-s{seed}.json"
                if process.returncode == 0 and record.exists():
                    run["figures"] = _figures(json.loads(record.read_text()))
                    durations.append(run["seconds"])
                elif killed:
                    run["error"] = f"killed unfinished when the {args.budget:g}-s budget was spent"
                else:
                    run["error"] = f"exit {process.returncode}: " + log.read_text()[-600:]
                runs.append(run)
                write()
    finally:
        # the sweep stopped (SIGTERM, Ctrl-C, an error): its runs, each in a session of its own
        # that a signal to the sweep does not reach, are killed with it
        for process, _, _ in running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    write()
    print(json.dumps(_summary(runs), indent=1))
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
