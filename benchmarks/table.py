"""Render the README's one results table (between its markers) from the benchmark records.

One row per figure, each linking to the record it comes from: the product's speed figures
(``benchmarks/results/*.json``, written by ``make bench`` and ``make gpu-check``) and the
headline quality figures (``benchmarks/experiments/results/``, written by ``make experiments``;
``docs/experiments.md`` tells their story). A record that is absent leaves its rows out.

``python -m benchmarks.table`` rewrites the README section; ``--check`` exits 1 when the README
is out of date with the records (the test suite runs that check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import EXPERIMENT_RESULTS, RESULTS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

Row = tuple[str, str]  # (what was measured, the figure)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def shard_io_rows(record: dict) -> list[Row]:
    g = record["figures"]["gaze"]
    return [
        (
            "shard write / read + decode + validate, 35×55 gaze, one thread",
            f"{_fmt(g['write_samples_per_s'])} / {_fmt(g['read_decoded_samples_per_s'])} samples/s",
        )
    ]


def ingest_rows(record: dict) -> list[Row]:
    f = record["figures"]
    best = max((k for k in f if k.startswith("unityeyes_")), key=lambda k: f[k]["files_per_s"])
    workers = best.rpartition("_workers")[2]
    return [
        (
            f"`refinery ingest unityeyes` (800×600 JPEG + JSON → crops), {workers} workers",
            f"{_fmt(f[best]['samples_per_s'])} samples/s",
        )
    ]


def engines_rows(record: dict) -> list[Row]:
    f = record["figures"]["simgan-refiner-gaze"]
    batch = record["settings"]["batch"]
    return [
        (
            f"gaze refiner (paper size), ONNX Runtime CPU, batch {batch}",
            f"{_fmt(f['onnxruntime_cpu']['images_per_s'])} images/s "
            f"({f['onnxruntime_vs_torch']:.2f}× torch eager)",
        )
    ]


def refine_rows(record: dict) -> list[Row]:
    """``benchmarks/refine.py``: the CPU side against the codec, over cores, with an engine."""
    f = record["figures"]
    t, m, floor = f["throughput"], f["memory"], f["codec_floor"]
    sizes = record["settings"]["memory_sizes"]
    rows = []
    identity = f.get("identity")
    if identity:
        rows += [
            (
                f"`refinery refine --engine identity`, gaze, {identity['workers']} workers "
                "(the CPU side alone)",
                f"{_fmt(identity['frames_per_s'])} frames/s ({identity['scaling']:.2f}× one "
                f"worker; CPU busy {identity['cpu_busy']:.2f} of {identity['workers']} cores)",
            ),
            (
                "… its CPU per frame against OpenCV decode + encode in a tight loop",
                f"{_fmt(identity['cpu_us_per_frame'])} µs vs "
                f"{_fmt(floor['opencv_us_per_frame'])} µs: {identity['vs_codec_floor']:.2f}× "
                "(target ≤ 1.5×)",
            ),
        ]
    rows += [
        (
            "`refinery refine`, gaze refiner on ONNX Runtime CPU (read → engine → write)",
            f"{_fmt(t['job_samples_per_s'])} samples/s, {t['job_vs_engine_only']:.0%} of the "
            f"engine alone, {t['job_vs_naive']:.2f}× a naive loop",
        ),
        (
            f"`refinery refine` peak memory, {sizes[0]:,} → {sizes[-1]:,} samples",
            f"{m['growth']:+.1%}",
        ),
    ]
    return rows


def simgan_speed_rows(record: dict) -> list[Row]:
    name, r = next(iter(record["figures"].items()))
    return [
        (
            f"SimGAN gaze preset, adversarial compute ceiling ({name.replace('_', ', ')})",
            f"{_fmt(r['images_per_s'])} images/s",
        )
    ]


def train_speed_rows(record: dict) -> list[Row]:
    """``benchmarks/train_speed.py``: the real loop decoding as it reads and from the decoded
    cache, and the cache's loader alone."""
    f = record["figures"]
    rows = []
    for method, case in record["settings"]["cases"].items():
        runs = f[method]
        best = max(
            (v for k, v in runs.items() if k.startswith("decode_workers_")),
            key=lambda r: r["images_per_s"],
        )
        line = f"{_fmt(best['images_per_s'])} images/s, {best['data_wait_share']:.0%} waiting"
        if "cache" in runs:
            cached = runs["cache"]
            line += (
                f"; from the decoded cache {_fmt(cached['images_per_s'])} images/s, "
                f"{cached['data_wait_share']:.0%} waiting"
            )
        rows.append((f"`refinery train {method} --preset {case['preset']}`, the real loop", line))
    targets = f.get("cache_targets")
    if targets:
        rows.append(
            (
                "training loader alone, from the decoded cache (gaze, batch 512)",
                f"{targets['loader_over_training']:.0f}× the trainer's images/s, "
                f"{targets['cpu_us_per_sample']:.1f} µs CPU per sample (targets ≥ 20×, ≤ 5 µs)",
            )
        )
    return rows


def evaluate_memory_rows(record: dict) -> list[Row]:
    f = record["figures"]
    sizes = [r["frames_per_set"] for r in f["runs"].values()]
    return [
        (
            f"`refinery evaluate scene` peak memory, {min(sizes):,} → {max(sizes):,} frames/set",
            f"{f['growth']:+.0%} (target within {f['target_growth']:.0%})",
        )
    ]


def domain_gap_rows(record: dict) -> list[Row]:
    g = record["figures"]["gaze"]
    return [
        (
            "built-in gaze data: estimator error trained synthetic → tested real (real → real)",
            f"{_fmt(g['train_synthetic_test_real'])}° ({_fmt(g['train_real_test_real'])}°)",
        )
    ]


def gpu_check_rows(record: dict) -> list[Row]:
    """``make gpu-check``: the fastest passed engine variant and the whole job, gaze."""
    steps = record["figures"]["steps"]
    device = (record["machine"].get("gpu") or "GPU").split(",")[0]  # the name, not the driver
    variants = steps.get("engines", {}).get("gaze-refiner", {}).get("variants", {})
    passed = {k: v for k, v in variants.items() if v.get("status") == "passed"}
    rows = []
    if passed:
        label, best = max(passed.items(), key=lambda kv: kv[1]["frames_per_s"])
        rows.append(
            (f"gaze refiner on {device}, {label}", f"{_fmt(best['frames_per_s'])} frames/s")
        )
    gaze = steps.get("job", {}).get("gaze", {})
    if "share_of_engine" in gaze:
        rows.append(
            (
                f"refine job, gaze, in-process on {device}",
                f"{_fmt(gaze['frames_per_s'])} frames/s, {gaze['share_of_engine']:.0%} of the "
                "engine alone (target ≥ 50,000 and ≥ 35%)",
            )
        )
    job = steps.get("job", {}).get("gaze_cli_processes")
    if job:
        rows.append(
            (
                f"`refinery refine` gaze on {device}, {job.get('processes', 1)} processes",
                f"{_fmt(job['frames_per_s'])} frames/s",
            )
        )
    return rows


def evaluate_rows(record: dict) -> list[Row]:
    """A ``benchmarks/experiments/evaluate.py`` record: the task metric and the gap closed."""
    f = record["figures"]
    task, metric, gap = f["task"], f["metric"], f["gap_closed"]
    name = record["benchmark"].removeprefix("evaluate_")
    return [
        (
            f"`{name}`: {task['label']} of a {task['network']} trained on synthetic → refined "
            f"(real), {len(f['seeds'])} GANs",
            f"{_fmt(metric['synthetic']['mean'])} → {_fmt(metric['refined']['mean'])} "
            f"({_fmt(metric['real']['mean'])}); {gap['of_means']:.0%} of the gap closed",
        )
    ]


def real_gaze_rows(record: dict, *more: dict) -> list[Row]:
    """``benchmarks/experiments/real_gaze.py`` records of one setting (its GANs 0-2, then 3-5
    in ``more``), pooled: realism and gaze drift on real eyes over all their GANs."""
    records = (record, *more)
    refined = [
        run for r in records for run in r["figures"]["realism"]["refined"]["c2st_accuracy"]["runs"]
    ]
    synthetic = [
        run
        for r in records
        for run in r["figures"]["realism"]["synthetic"]["c2st_accuracy"]["runs"]
    ]
    drift = [run for r in records for run in r["figures"]["label_drift_robust_deg"]["runs"]]
    return [
        (
            "real MPIIGaze eyes, `--preset real-eyes` setting: a classifier tells refined "
            f"(synthetic) from real, {len(refined)} GANs",
            f"{statistics.fmean(refined):.2f} ± {statistics.stdev(refined):.2f} "
            f"({statistics.fmean(synthetic):.2f}) of the time",
        ),
        (
            "the same: gaze moved by refinement (appearance-robust estimator)",
            f"{statistics.fmean(drift):.2f}° ± {statistics.stdev(drift):.2f}",
        ),
    ]


def _pooled(renderer: Callable[..., list[Row]], *paths: Path) -> Callable[[dict], list[Row]]:
    """``renderer`` over a record and the records at ``paths`` (those present)."""

    def rows(record: dict) -> list[Row]:
        more = [json.loads(p.read_text()) for p in paths if p.exists()]
        return renderer(record, *more)

    return rows


REAL_EYES = "real_gaze_local-d-hold-gaze-5-d-lr-4x-r1-0.01"

# (record file, its renderer) in the table's order: speed first, then quality
TABLE: tuple[tuple[Path, Callable[[dict], list[Row]]], ...] = (
    (RESULTS / "shard_io.json", shard_io_rows),
    (RESULTS / "ingest.json", ingest_rows),
    (RESULTS / "engines.json", engines_rows),
    (RESULTS / "refine.json", refine_rows),
    (RESULTS / "gpu-check.json", gpu_check_rows),
    (RESULTS / "simgan_speed.json", simgan_speed_rows),
    (RESULTS / "train_speed.json", train_speed_rows),
    (RESULTS / "evaluate_memory.json", evaluate_memory_rows),
    (RESULTS / "domain_gap.json", domain_gap_rows),
    (
        EXPERIMENT_RESULTS / f"{REAL_EYES}.json",
        _pooled(real_gaze_rows, EXPERIMENT_RESULTS / f"{REAL_EYES}-seeds-3-5.json"),
    ),
    (EXPERIMENT_RESULTS / "evaluate_gaze-simgan.json", evaluate_rows),
    (EXPERIMENT_RESULTS / "evaluate_hand-simgan.json", evaluate_rows),
    (EXPERIMENT_RESULTS / "evaluate_streets-sggan.json", evaluate_rows),
)


def _link(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return f"[{path.stem}]({rel.as_posix()})"


def render(table=TABLE, root: Path = ROOT) -> str:
    """The markdown table: one row per figure, the record's link and its date."""
    lines = ["| measured | figure | record (date) |", "|---|---|---|"]
    for path, rows_of in table:
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        cpu = record["machine"].get("cpu_count")
        for what, figure in rows_of(record):
            lines.append(
                f"| {what} | {figure} | {_link(path, root)} ({record['date'][:10]}, {cpu} cores) |"
            )
    return "\n".join(lines) + "\n"


def updated(readme: str, table: str) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"README lacks the {START} ... {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that README is current")
    args = parser.parse_args(argv)
    readme = README.read_text()
    new = updated(readme, render())
    if args.check:
        if new != readme:
            print("README results table is out of date: run `python -m benchmarks.table`")
            return 1
        return 0
    README.write_text(new)
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
