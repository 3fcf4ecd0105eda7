"""Render benchmarks/results/*.json as the README's results table (between its markers).

``python -m benchmarks.table`` rewrites the README section; ``--check`` exits 1 when the README
is out of date with the recorded results (the test suite runs that check).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        rows = []
        for key, sub in value.items():
            rows.extend(_flatten(f"{prefix}.{key}" if prefix else key, sub))
        return rows
    return [(prefix, value)]


def _shard_io(record: dict) -> list[str]:
    cols = [
        ("write_samples_per_s", "write"),
        ("read_raw_samples_per_s", "read (refinery)"),
        ("read_raw_webdataset_samples_per_s", "read (webdataset)"),
        ("read_decoded_samples_per_s", "read + decode + validate"),
        ("encode_samples_per_s", "encode"),
    ]
    lines = [
        "| domain | " + " | ".join(title for _, title in cols) + " | bytes/sample |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for domain, figures in record["figures"].items():
        cells = [_fmt(figures[key]) for key, _ in cols]
        lines.append(
            f"| {domain} | " + " | ".join(cells) + f" | {_fmt(figures['bytes_per_sample'])} |"
        )
    lines.append("")
    lines.append("samples/s, one thread, median of repeats; local disk.")
    return lines


def _domain_gap(record: dict) -> list[str]:
    lines = [
        "| domain | metric | train syn → test syn | train syn → test real | "
        "train real → test real | drop |",
        "|---|---|---|---|---|---|",
    ]
    for domain, f in record["figures"].items():
        lines.append(
            f"| {domain} | {f['metric']} | {_fmt(f['train_synthetic_test_synthetic'])} | "
            f"{_fmt(f['train_synthetic_test_real'])} | {_fmt(f['train_real_test_real'])} | "
            f"{_fmt(f['drop_abs'])} |"
        )
    lines.append("")
    lines.append(
        "A task network trained on procedural synthetic data, tested on held-out synthetic and "
        "on 'real' data; the same network trained on real data is the reference."
    )
    return lines


def _real_gaze(record: dict) -> list[str]:
    """``benchmarks/real_gaze.py``: the "with real eyes" walk-through on MPIIGaze crops."""
    f = record["figures"]
    ingest, train, refine = f["ingest"], f["train"], f["refine"]
    tone, distance = f["intensity"], f["histogram_distance_grey_levels"]
    last = train.get("last", {})
    seeds = _seeds(record)
    lasts = last if isinstance(last, list) else [last]  # one per GAN (a dict: one GAN)

    def accuracy(key: str) -> str:
        return ", ".join(_fmt(x.get(key)) for x in lasts)

    centres = f.get("dark_centre_px") or {}

    def row(name: str, label: str) -> str:
        d = distance.get(f"{name}_vs_real")
        c = centres.get(name)
        where = (
            f" {_fmt(c['x_mean'])} ± {_fmt(c['x_std'])}, {_fmt(c['y_mean'])} ± {_fmt(c['y_std'])} |"
            if c
            else ""
        )
        return (
            f"| {label} | {_fmt(tone[name]['mean'])} | {_fmt(tone[name]['std'])} | "
            f"{_fmt(d) if d is not None else '—'} |{where}"
        )

    padding = record["settings"].get("refiner_padding", "reflect")  # the recipes' since 79ab41d
    overrides = record["settings"].get("recipe_overrides") or {}
    options = record["settings"].get("synth_options") or {}
    hold = record["settings"].get("hold_gaze")
    holdout = record["settings"].get("holdout")
    return [
        f"Refiner padding: `{padding}`"
        + (" (the ablation of the recipes' reflect)" if padding != "reflect" else "")
        + (
            "; recipe changed: " + ", ".join(f"`{k}: {v}`" for k, v in overrides.items())
            if overrides
            else ""
        )
        + (
            "; procedural eyes drawn with "
            + ", ".join(f"`{k}={v}`" for k, v in options.items())
            + " (`synth --option`)"
            if options
            else ""
        )
        + (
            f"; geometry term μ = {_fmt(hold['task_reg_weight'])} (`--hold-gaze`): every refiner "
            f"charged for what it changes in a frozen gaze network ({hold['network']}; its error "
            f"on those eyes {_fmt(hold['error_on_synthetic_deg'])}°)"
            if hold
            else ""
        )
        + (f"; `--holdout`: {holdout}" if holdout else "")
        + ".",
        *_selection_lines(f.get("selection")),
        "",
        f"`ingest images`: {ingest['files']} real MPIIGaze crops → {ingest['written']} samples, "
        f"{ingest['rejected']} rejected, {_fmt(ingest['seconds'])} s. `train simgan` (small "
        f"preset), {len(seeds)} GAN{'s' if len(seeds) > 1 else ''} (seed"
        f"{'s' if len(seeds) > 1 else ''} {', '.join(str(x) for x in seeds)}): "
        f"{train['steps']} steps each, {_fmt(train['seconds'])} s in all; last discriminator "
        f"accuracy on real {accuracy('discriminator/accuracy_real')}, on refined "
        f"{accuracy('discriminator/accuracy_refined')}. `refine`: {refine['read']} read = "
        f"{refine['written']} written + {refine['rejected']} rejected, "
        f"{_fmt(refine['seconds'])} s.",
        "",
        "| eyes | mean grey level | std | intensity-histogram distance to real (W1, grey levels) |"
        + (" dark-blob centre x, y (px; mean ± std over eyes) |" if centres else ""),
        "|---|---|---|---|" + ("---|" if centres else ""),
        row("synthetic", "procedural synthetic"),
        row("refined", "refined"),
        row("real", "real MPIIGaze"),
        "",
        "The histogram distance sees tone only, not content."
        + (
            " The dark-blob centre (the centroid of each eye's darkest 8% of pixels) is where "
            "the iris sits, read without labels."
            if centres
            else ""
        )
        + " Contact sheet: "
        f"`{record['settings'].get('contact_sheet', 'out/bench-real-gaze/contact-sheet.png')}`.",
        *_realism_rows(f, record["settings"].get("robust_epochs")),
        *_all_crops_lines(f.get("realism_all_crops"), f.get("realism")),
    ]


def _selection_lines(selection: dict | None) -> list[str]:
    """``real_gaze --select-every``: which checkpoint validation chose for each GAN, and the
    held-out two-sample accuracy of the chosen, the last and the best checkpoint in hindsight."""
    if not selection:
        return []

    def step(name: str) -> str:
        return str(int(name.split("-")[1]))

    def pm(key: str) -> str:
        stat = selection[f"heldout_c2st_{key}"]
        return f"{_fmt(stat['mean'])} ± {_fmt(stat['std'])}"

    gans = []
    for gan in selection["per_gan"]:
        scores = ", ".join(
            f"{step(c['checkpoint'])}: {_fmt(c['validation_c2st'])} / {_fmt(c['heldout_c2st'])}"
            for c in gan["checkpoints"]
        )
        gans.append(f"GAN {gan['seed']} chose iteration {step(gan['chosen'])} ({scores})")
    return [
        "",
        "Checkpoint chosen by validation (`--select-every`; iteration: two-sample accuracy on "
        "the validation eyes against the training half / on the refined eyes against the "
        f"held-out half): {'; '.join(gans)}. Held-out accuracy over GANs: chosen {pm('chosen')}, "
        f"last checkpoint {pm('last')}, best in hindsight {pm('best_in_hindsight')} (read after "
        "the choice, not used for it).",
    ]


def _all_crops_lines(control: dict | None, realism: dict | None) -> list[str]:
    """``real_gaze --holdout``'s control: the same eyes against all the real crops, the scale
    of the records without a held-out half."""
    if not control or not realism:
        return []
    synthetic, refined = control["synthetic"], control["refined"]
    gap = synthetic["mean"] - refined["mean"]
    held = (
        realism["synthetic"]["c2st_accuracy"]["mean"] - realism["refined"]["c2st_accuracy"]["mean"]
    )
    return [
        "",
        f"Scale check: the same eyes against all {control['real_images']} real crops (both "
        "halves, as records without `--holdout` measure; the test's classifier then learns from "
        "twice the real eyes, so the two are not on one scale): synthetic "
        f"{_fmt(synthetic['mean'])}, refined {_fmt(refined['mean'])} ± {_fmt(refined['std'])} "
        f"(per GAN {', '.join(_fmt(x) for x in refined['runs'])}), {100 * gap:.1f} points below "
        f"synthetic (issue 15's {100 * REALISM_TARGET:.0f}: {_met(gap >= REALISM_TARGET)}), "
        f"against {100 * held:.1f} on the held-out half.",
    ]


# issue 15's targets on real MPIIGaze: refined at least this much two-sample accuracy below
# synthetic, and the refined eyes' gaze drift under this many degrees
REALISM_TARGET = 0.20
DRIFT_TARGET_DEG = 3.0


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _realism_rows(f: dict, robust_epochs: int | None = None) -> list[str]:
    """The realism ``refinery evaluate`` measures with the unlabeled crops as real test set."""
    realism = f.get("realism")
    if not realism:
        return []

    def pm(stat: dict) -> str:
        return f"{_fmt(stat['mean'])} ± {_fmt(stat['std'])}"

    rows = [
        "",
        "| against real MPIIGaze | two-sample test accuracy (0.5 = indistinguishable) | "
        "per seed | KID |",
        "|---|---|---|---|",
    ]
    for name, entry in realism.items():
        c2st = entry["c2st_accuracy"]
        runs = ", ".join(_fmt(r) for r in c2st["runs"])
        rows.append(f"| {name} | {pm(c2st)} | {runs} | {pm(entry['kid'])} |")
    variants = f.get("procedural_variants") or {}
    labels = {"synthetic": "procedural synthetic variant", "real": 'procedural "real" variant'}
    for name, entry in variants.items():
        c2st = entry["c2st_accuracy"]
        runs = ", ".join(_fmt(r) for r in c2st["runs"])
        rows.append(f"| {labels.get(name, name)} (unrefined) | {pm(c2st)} | {runs} | — |")
    drift = f.get("label_drift_deg") or {}
    robust = f.get("label_drift_robust_deg") or {}
    target = robust if robust.get("mean") is not None else drift  # the issue's: robust
    trained = f", trained {robust_epochs} epochs" if robust_epochs else ""  # else the task's
    if "refined" in realism and "synthetic" in realism:
        refined, synthetic = realism["refined"]["c2st_accuracy"], realism["synthetic"]
        gap = synthetic["c2st_accuracy"]["mean"] - refined["mean"]
        runs = synthetic["c2st_accuracy"]["runs"]
        per = ", ".join(f"{100 * (s - r):.0f}" for s, r in zip(runs, refined["runs"], strict=False))
        rows += [
            "",
            f"Issue 15's targets on real MPIIGaze: refined at least {100 * REALISM_TARGET:.0f} points of two-sample "
            f"accuracy below synthetic: {100 * gap:.1f} points on the mean (per GAN: {per}), "
            f"{_met(gap >= REALISM_TARGET)}; label drift under {DRIFT_TARGET_DEG:g}° "
            f"({f'appearance-robust estimator{trained}' if target is robust else 'synthetic-trained estimator'}): "
            f"{_fmt(target.get('mean'))}°, "
            f"{_met(target.get('mean') is not None and target['mean'] < DRIFT_TARGET_DEG)}.",
        ]
    if drift.get("mean") is not None:
        rows += [
            "",
            f"Label drift of the refined eyes: {pm(drift)}° (the gaze estimator trained on "
            "the synthetic eyes, applied to each synthetic eye and its refined version; mean ± "
            "std over seeds)"
            + (
                f"; {pm(robust)}° for the same estimator trained appearance-robust (random tone, "
                f"contrast, shading, blur and noise on standardised eyes{trained}), which "
                "answers to where the eye looks rather than to its tone"
                if robust.get("mean") is not None
                else ""
            )
            + ". Refined rows: mean ± std over the GANs, each scored with its own "
            "seed. Two-sample null band: ±"
            f"{_fmt(next(iter(realism.values()))['c2st_null_band'])}.",
        ]
    return rows


# settings that differ between two real_gaze records of one setting: where the contact sheet
# went, which seed the KID feature network was trained with, how long the frozen network took
_POOL_IGNORED = ("contact_sheet", "realism")


def _pool_key(record: dict) -> str:
    settings = {k: v for k, v in record["settings"].items() if k not in _POOL_IGNORED}
    if settings.get("hold_gaze"):
        settings["hold_gaze"] = {k: v for k, v in settings["hold_gaze"].items() if k != "seconds"}
    return json.dumps(settings, sort_keys=True)


def _seeds(record: dict) -> list[int]:
    return record["figures"].get("seeds") or [0]  # a record without the key: one GAN, seed 0


def _runs_of(records: list[dict], *keys: str) -> list[float]:
    """The per-GAN values (``runs``) at figures[keys...] of every record, one after another."""
    found: list[float] = []
    for record in records:
        value = record["figures"]
        for key in keys:
            value = value.get(key) or {}
        found += value.get("runs", [])
    return found


def _real_gaze_pools(records: list[tuple[Path, dict]]) -> dict[str, list[str]]:
    """Lines pooling the GANs of real_gaze records that share every setting but their seeds
    (``real_gaze --seeds 3 4 5`` adding GANs to a setting's first three), keyed by the record
    that renders them: the one whose seeds come last. Records whose seeds overlap are reruns,
    not more GANs, and are left alone. KID is not pooled: each record's feature network is
    trained with its own first seed, so KIDs of two records are on different scales."""
    pools: dict[str, list[dict]] = {}
    for _, record in records:
        if record["benchmark"].startswith("real_gaze") and record["figures"].get("realism"):
            pools.setdefault(_pool_key(record), []).append(record)
    lines: dict[str, list[str]] = {}
    for members in pools.values():
        members = sorted(members, key=lambda r: min(_seeds(r)))
        seeds = [s for r in members for s in _seeds(r)]
        if len(members) < 2 or len(set(seeds)) < len(seeds):
            continue
        refined = _runs_of(members, "realism", "refined", "c2st_accuracy")
        synthetic = _runs_of(members, "realism", "synthetic", "c2st_accuracy")
        drift = _runs_of(members, "label_drift_robust_deg")
        gap = float(np.mean(synthetic) - np.mean(refined))
        others = ", ".join(f"`{r['benchmark']}`" for r in members[:-1])
        text = (
            f"Pooled with {others} (the same settings, other GAN seeds): {len(refined)} GANs "
            f"(seeds {', '.join(str(s) for s in sorted(seeds))}), refined vs real two-sample "
            f"accuracy {_fmt(np.mean(refined))} ± {_fmt(np.std(refined, ddof=1))} (per GAN "
            f"{', '.join(_fmt(x) for x in refined)}), {100 * gap:.1f} points below synthetic "
            f"(issue 15's {100 * REALISM_TARGET:.0f}: {_met(gap >= REALISM_TARGET)})"
        )
        if len(drift) == len(refined):
            text += (
                f"; appearance-robust label drift {_fmt(np.mean(drift))}° "
                f"({_fmt(min(drift))} to {_fmt(max(drift))}; under {DRIFT_TARGET_DEG:g}°: "
                f"{_met(np.mean(drift) < DRIFT_TARGET_DEG)})"
            )
        lines[members[-1]["benchmark"]] = [
            "",
            text + ". KID is not pooled: each record's feature network is trained with its "
            "first seed.",
        ]
    return lines


def _engines(record: dict) -> list[str]:
    labels = {
        "torch_eager_cpu": "torch eager, CPU",
        "onnxruntime_cpu": "ONNX Runtime, CPU",
        "torch_fp32_cuda": "torch FP32, CUDA",
        "torch_fp16_cuda": "torch FP16 autocast, CUDA",
        "onnxruntime_cuda": "ONNX Runtime, CUDA",
    }
    batch = record["settings"]["batch"]
    lines = [
        f"| refiner | backend | images/s (batch {batch}) | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    notes = []
    for network, f in record["figures"].items():
        for key, label in labels.items():
            if key in f:
                r = f[key]
                lines.append(
                    f"| {network} | {label} | {_fmt(r['images_per_s'])} | "
                    f"{_fmt(r['latency_ms_p50'])} | {_fmt(r['latency_ms_p99'])} |"
                )
        notes.append(f"{network}: ONNX Runtime / torch eager = {f['onnxruntime_vs_torch']:.2f}×")
        if "torch_fp16_vs_fp32" in f:
            notes.append(f"{network}: torch FP16 / FP32 on CUDA = {f['torch_fp16_vs_fp32']:.2f}×")
    lines.append("")
    lines.append(
        "; ".join(notes) + ". Median over alternating rounds, random weights, each refiner's "
        "design size; target ≥ 1.5× for the gaze refiner on CPU."
    )
    return lines


def _ingest(record: dict) -> list[str]:
    lines = ["| source | workers | items | files/s | samples/s |", "|---|---|---|---|---|"]
    for key, f in record["figures"].items():
        source, _, workers = key.rpartition("_workers")
        lines.append(
            f"| {source} | {workers} | {_fmt(f['items'])} | {_fmt(f['files_per_s'])} | "
            f"{_fmt(f['samples_per_s'])} |"
        )
    settings = record["settings"]
    lines += ["", f"unityeyes: {settings['unityeyes']}; gta5: {settings['gta5']}."]
    return lines


def _refine(record: dict) -> list[str]:
    t, m = record["figures"]["throughput"], record["figures"]["memory"]
    sizes = record["settings"]["memory_sizes"]
    lines = [
        "| measurement | samples/s | ratio | target |",
        "|---|---|---|---|",
        f"| engine alone (ONNX Runtime, batch {record['settings']['batch']}) | "
        f"{_fmt(t['engine_only_samples_per_s'])} | | |",
        f"| `refinery refine` (read, decode, engine, encode, write) | "
        f"{_fmt(t['job_samples_per_s'])} | {t['job_vs_engine_only']:.0%} of the engine | ≥ 90% |",
        f"| naive loop (cv2, torch eager one image at a time, tarfile) | "
        f"{_fmt(t['naive_loop_samples_per_s'])} | job = {t['job_vs_naive']:.2f}× naive | ≥ 3× |",
    ]
    stages = record["figures"].get("stages")
    if stages:
        lines.append(
            f"| the stages alone: the job with a pass-through engine ({stages['decode_workers']} "
            f"decode, {stages['encode_workers']} encode workers) | "
            f"{_fmt(stages['samples_per_s'])} | | |"
        )
    lines += [
        "",
        "| samples | peak RSS (MiB) | samples/s |",
        "|---|---|---|",
    ]
    for n in sizes:
        r = m[str(n)]
        lines.append(f"| {n:,} | {_fmt(r['peak_rss_mib'])} | {_fmt(r['samples_per_s'])} |")
    lines += [
        "",
        f"Peak memory from {sizes[0]:,} to {sizes[-1]:,} samples: {m['growth']:+.1%} (target "
        "within 10%). Gaze refiner (paper size, random weights) for throughput, the small "
        "refiner for the memory runs; a fresh process per memory run.",
    ]
    return lines


def _unit(unit: str, label: str = "") -> str:
    """' (deg)' after a label; nothing when the label names it already (mIoU, IoU)."""
    if unit in label:
        return ""
    return f" ({unit})" if label or " " in unit else f" {unit}".rstrip()


def _runs(settings: dict) -> str:
    """ "3 GANs × " when the record trained one GAN per seed."""
    seeds = settings.get("seeds")
    return f"{len(seeds)} GANs × " if seeds and len(seeds) > 1 else ""


def _realism_note(realism: dict | None) -> str:
    """ ", realism vs real test: two-sample accuracy synthetic 1.0, refined 0.97" or ""."""
    if not realism:
        return ""
    parts = [
        f"{name} {_fmt(entry['c2st_accuracy']['mean'])}"
        for name, entry in realism.items()
        if entry.get("c2st_accuracy")
    ]
    return f"; two-sample accuracy against the real test set: {', '.join(parts)}" if parts else ""


def _mean_std(metric: dict, key: str) -> str:
    if key not in metric:
        return "—"
    return f"{_fmt(metric[key]['mean'])} ± {_fmt(metric[key]['std'])}"


def _evaluate(records: list[tuple[Path, dict]]) -> list[str]:
    """One table for every ``evaluate_<experiment>.json`` (``benchmarks/evaluate.py``)."""
    lines = [
        "| experiment | task metric | trained on synthetic | refined | real | gap closed, of "
        "the means | gap closed, mean of per-seed gaps (per seed) | label drift | label drift, "
        "appearance-robust | labels kept | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for _, record in records:
        f, settings = record["figures"], record["settings"]
        task, metric = f["task"], f["metric"]
        name = settings["experiment"]
        arrow = "↑" if task["higher_is_better"] else "↓"
        gaps = f.get("gap_closed") or {}
        gap = gaps.get("of_means", gaps.get("mean"))  # "mean": the name before it was honest
        per_seed = [g for g in gaps.get("runs") or [] if g is not None]
        drift = f.get("label_drift")
        robust = f.get("label_drift_robust")
        labels = f["labels"]
        cells = [
            name,
            f"{task['label']}{_unit(task['unit'], task['label'])} {arrow}",
            *(_mean_std(metric, key) for key in ("synthetic", "refined", "real")),
            "—" if gap is None else f"{gap:.0%}",
            "—"
            if not per_seed
            else f"{sum(per_seed) / len(per_seed):.0%} ({', '.join(f'{g:.0%}' for g in per_seed)})",
            "—" if drift is None else f"{_fmt(drift['mean'])}{_unit(drift['unit'])}",
            "—" if robust is None else f"{_fmt(robust['mean'])}{_unit(robust['unit'])}",
            f"{labels['identical']:,}/{labels['paired']:,}",
            " ".join(str(s) for s in settings.get("seeds") or settings["evaluate_seeds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        sizes = settings["sizes"]
        epochs = settings["task_settings"].get("epochs")
        seconds = f["seconds"]
        notes.append(
            f"- {name}: {settings['method']} `--preset {settings['preset']}`"
            f"{' + `--config` overrides' if settings['config_overrides'] else ''}, "
            f"{_runs(settings)}{settings['steps']:,} iterations ({_fmt(seconds['train'])} s); "
            f"{sizes['synthetic']:,} synthetic / {sizes['real_unlabeled']:,} real unlabeled / "
            f"{sizes['real_train']:,} real train / {sizes['real_test']:,} real test samples "
            f"({settings['image_size']} px); `{settings['task_network']}`, {epochs} "
            f"epoch{'' if epochs == 1 else 's'} "
            f"({_fmt(seconds['evaluate'])} s)"
            f"{_realism_note(f.get('realism'))}; "
            f"[report](benchmarks/results/{settings['report']['path']})"
        )
    lines += [
        "",
        "Mean ± std over seeds, each tested on held-out real data. Seed s trains the GAN "
        "with seed s and the task networks (on synthetic, refined and real) with seed s, so "
        "the spread holds the GAN's variance, not only the task network's (records from "
        "before the GAN was trained per seed say `evaluate_seeds` and vary the task network "
        "only). Gap closed = (E_syn − E_ref) / (E_syn − E_real): 100% = refined as good as "
        'real, negative = worse than synthetic; "of the means" puts each set\'s mean error in '
        'that formula, "mean of per-seed gaps" averages the formula over seeds (the two differ '
        "when one seed's gap is small). Label drift: the synthetic-trained network's "
        "disagreement between each synthetic sample and its refined version. Labels kept: "
        "refined samples whose labels are identical to their synthetic source's, of those "
        "paired by key. CPU scale (small presets, few iterations, small sets; each record "
        "states how):",
        "",
        *notes,
        *_targets_and_ablations({r["settings"]["experiment"]: r["figures"] for _, r in records}),
    ]
    return lines


GAP_TARGETS = {  # issue 15
    "gaze-simgan": 0.50,
    "gaze-simgan-1200": 0.50,
    "gaze-simgan-1200-ema": 0.50,
    "gaze-simgan-2k": 0.50,
    "gaze-simgan-2k-synthetic": 0.50,
    "hand-simgan": 0.30,
    "streets-sggan": 0.60,
}
PI_PAIRS = (  # issue 15: SPIGAN with privileged information (γ > 0) against the same without
    ("streets-spigan", "streets-spigan-nopi"),
    ("streets-spigan-750", "streets-spigan-nopi-750"),
    ("streets-spigan-750-pretrain-task", "streets-spigan-nopi-750-pretrain-task"),
    ("streets-spigan-750-pretrain-task-gamma3", "streets-spigan-nopi-750-pretrain-task"),
    ("streets-spigan-selfreg", "streets-spigan-nopi-selfreg"),
    ("streets-spigan-selfreg-gamma3", "streets-spigan-nopi-selfreg"),
    ("streets-spigan-selfreg1", "streets-spigan-nopi-selfreg1"),
)
ABLATIONS = {  # experiment -> (the experiment it varies, what it changes)
    "gaze-simgan-zeros": ("gaze-simgan", "the refiner padded with zeros instead of reflection"),
    "gaze-simgan-noise": (
        "gaze-simgan",
        "a noise channel the refiner modulates (refiner_noise: 1)",
    ),
    "gaze-simgan-ema": (
        "gaze-simgan",
        "a moving average of the refiner's weights exported (refiner_ema: 0.995)",
    ),
    "gaze-simgan-diffaugment": (
        "gaze-simgan",
        "DiffAugment on what the discriminator sees (discriminator_augment: brightness, "
        "contrast, translation, cutout)",
    ),
    "gaze-simgan-r1": (
        "gaze-simgan",
        "an R1 penalty on the discriminator (discriminator_r1: 0.01)",
    ),
    "gaze-simgan-2k": (
        "gaze-simgan",
        "2,000 samples in every training set and 1,000 test eyes instead of 800 and 400",
    ),
    "gaze-simgan-2k-real": (
        "gaze-simgan",
        "2,000 unlabeled real eyes for the discriminator instead of 800, every other set as is",
    ),
    "gaze-simgan-2k-synthetic": (
        "gaze-simgan",
        "2,000 synthetic eyes instead of 800, every real set as is",
    ),
    "gaze-simgan-1200": ("gaze-simgan", "1,200 adversarial iterations instead of the recipe's 600"),
    "gaze-simgan-1200-ema": (
        "gaze-simgan-1200",
        "a moving average of the refiner's weights exported (refiner_ema: 0.995), at 1,200 "
        "iterations",
    ),
    "hand-simgan-nonoise": (
        "hand-simgan",
        "no noise channel (refiner_noise: 0, the paper's refiner; the hand recipe has one)",
    ),
    "streets-spigan-nopi": ("streets-spigan", "SPIGAN without privileged information (γ = 0)"),
    "streets-spigan-gamma1": ("streets-spigan", "SPIGAN with γ = 1 instead of the paper's 0.1"),
    "streets-spigan-750": (
        "streets-spigan",
        "750 frames in every training set and 375 test frames instead of 300 and 150",
    ),
    "streets-spigan-nopi-750": (
        "streets-spigan-750",
        "SPIGAN without privileged information (γ = 0), at 750 frames per set",
    ),
    "streets-spigan-750-pretrain-task": (
        "streets-spigan-750",
        "T and P trained alone on the synthetic labels and depth for 300 iterations first",
    ),
    "streets-spigan-750-pretrain-task-gamma3": (
        "streets-spigan-750-pretrain-task",
        "γ = 3 instead of the paper's 0.1, with T and P trained alone first",
    ),
    "streets-spigan-nopi-750-pretrain-task": (
        "streets-spigan-nopi-750",
        "T trained alone on the synthetic labels for 300 iterations first, without P (γ = 0)",
    ),
    "streets-spigan-selfreg": (
        "streets-spigan",
        "G is SG-GAN's small U-Net, held to the synthetic frame's 4×4 block means (λ 10)",
    ),
    "streets-spigan-nopi-selfreg": (
        "streets-spigan-selfreg",
        "SPIGAN without privileged information (γ = 0), with the U-Net G held by self_reg",
    ),
    "streets-spigan-selfreg-gamma3": (
        "streets-spigan-selfreg",
        "γ = 3 instead of the paper's 0.1, with the U-Net G held by self_reg",
    ),
    "streets-spigan-nopi-selfreg-resize": (
        "streets-spigan-nopi-selfreg",
        "the held U-Net G upsampling by resize and convolution, not transposed convolutions",
    ),
    "streets-spigan-selfreg1": (
        "streets-spigan-selfreg",
        "the U-Net G held ten times less (self_reg_weight 1 instead of 10)",
    ),
    "streets-spigan-nopi-selfreg1": (
        "streets-spigan-selfreg1",
        "SPIGAN without privileged information (γ = 0), with the U-Net G held at λ 1",
    ),
}


def _targets_and_ablations(figures: dict[str, dict]) -> list[str]:
    """Issue 15's targets (every seed) and each ablation beside the experiment it varies."""
    lines = ["", "Targets (gap closed on every seed) and ablations, from these records:", ""]
    for name, target in GAP_TARGETS.items():
        gaps = ((figures.get(name) or {}).get("gap_closed") or {}).get("runs") or []
        if not gaps:
            continue
        low = min(g for g in gaps if g is not None) if any(g is not None for g in gaps) else None
        met = low is not None and all(g is not None and g >= target for g in gaps)
        lines.append(
            f"- {name}: target ≥ {target:.0%} on every seed: {'met' if met else 'not met'} "
            f"(lowest seed {'—' if low is None else f'{low:.0%}'})"
        )
    for name, (base, change) in ABLATIONS.items():
        a, b = figures.get(name), figures.get(base)
        if not a or not b:
            continue

        def cells(f: dict) -> str:
            gap = (f.get("gap_closed") or {}).get("of_means")
            drift = f.get("label_drift") or {}
            robust = f.get("label_drift_robust") or {}
            c2st = ((f.get("realism") or {}).get("refined") or {}).get("c2st_accuracy") or {}
            refined = f["metric"]["refined"]
            return (
                f"refined {_fmt(refined['mean'])} ± {_fmt(refined['std'])}, gap closed "
                f"{'—' if gap is None else f'{gap:.0%}'}, drift "
                f"{_fmt(drift.get('mean'))}{_unit(drift.get('unit', ''))}"
                + (
                    f" (appearance-robust {_fmt(robust['mean'])})"
                    if robust.get("mean") is not None
                    else ""
                )
                + ", two-sample accuracy "
                f"{_fmt(c2st.get('mean'))}"
            )

        lines.append(f"- {name}, {change}: {cells(a)}; {base}: {cells(b)}")
    for with_name, without_name in PI_PAIRS:
        if not (figures.get(with_name) and figures.get(without_name)):
            continue
        with_pi = figures[with_name]["metric"]["refined"]
        without = figures[without_name]["metric"]["refined"]
        ahead = sum(a >= b for a, b in zip(with_pi["runs"], without["runs"], strict=True))
        lines.append(
            f"- SPIGAN with privileged information ≥ without (refined mIoU, {with_name} vs "
            f"{without_name}): {'met' if with_pi['mean'] >= without['mean'] else 'not met'} "
            f"({_fmt(with_pi['mean'])} vs {_fmt(without['mean'])}; ahead on {ahead} of "
            f"{len(with_pi['runs'])} seeds)"
        )
    return lines if len(lines) > 3 else []


GPU_TARGETS = {  # issue 13: FP16 engine-only and whole-job frames/s on one H200
    "gaze-refiner": ("≥ 100,000", "≥ 50,000"),
    "sggan-unet": ("≥ 100", "≥ 50 (JPEG out)"),
    "spigan-resnet9": ("≥ 100", ""),
}


def _against(value: float, target: str) -> str:
    """A "≥ N ..." target cell with whether ``value`` meets it; empty targets stay empty."""
    if not target:
        return ""
    number = float(target.removeprefix("≥").split()[0].replace(",", ""))
    return f"{target}: {'met' if value >= number else 'not met'}"


def _gpu_check(record: dict) -> list[str]:
    """``make gpu-check``: what ran on the GPU, engine by engine, then the whole job."""
    steps, settings = record["figures"]["steps"], record["settings"]
    peak = steps.get("environment", {}).get("peak", {})
    tests = steps.get("pytest", {})
    counts = tests.get("counts", {})
    lines = [
        f"Device {settings['device']}; `pytest -m gpu`: {tests.get('status', 'not run')} "
        f"({counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
        f"{counts.get('skipped', 0)} skipped); measured matrix peak "
        f"{_fmt(peak.get('tflops', float('nan')))} TFLOP/s ({peak.get('matmul', '?')}).",
        "",
        "| network (size, batch) | engine | frames/s on the device | host to host | "
        "TFLOP/s | share of peak | peak MiB | vs FP32 (grey levels) | FP16 target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, net in steps.get("engines", {}).items():
        if not isinstance(net, dict) or "variants" not in net:
            continue
        name = f"{net['network']} ({net['size'][0]}x{net['size'][1]}, {net['batch']})"
        for label, row in net["variants"].items():
            if row["status"] != "passed":
                lines.append(f"| {name} | {label} | not run: {row.get('reason', '')} |||||||")
                continue
            target = GPU_TARGETS.get(key, ("", ""))[0] if "fp16" in label else ""
            lines.append(
                f"| {name} | {label} | {_fmt(row['frames_per_s'])} | "
                f"{_fmt(row['frames_per_s_host_to_host'])} | {_fmt(row['achieved_tflops'])} | "
                f"{row['share_of_measured_peak']:.0%} | {_fmt(row.get('peak_device_memory_mib', ''))} | "
                f"{row.get('max_grey_levels_vs_fp32_eager', '')} | "
                f"{_against(row['frames_per_s'], target)} |"
            )
    job = steps.get("job", {})
    lines += ["", "| whole job | engine | frames | frames/s | target |", "|---|---|---|---|---|"]
    for key, label, target in (
        ("gaze", "gaze PNG, in-process (`deploy.run`)", GPU_TARGETS["gaze-refiner"][1]),
        ("gaze_engine_alone", "gaze, the engine alone on decoded frames (host to host)", ""),
        ("gaze_identity", "gaze PNG, the CPU side alone (`--engine identity`)", ""),
        ("gaze_cli", "gaze PNG, `refinery refine`, 1 process", ""),
        ("gaze_cli_processes", "gaze PNG, `refinery refine`, processes sharing the GPU", ""),
        ("scene", "scene JPEG {size}, in-process", GPU_TARGETS["sggan-unet"][1]),
    ):
        row = job.get(key)
        if row:
            label = label.format(size="x".join(str(v) for v in row.get("size", ())))
            procs = f" ({row['processes']} processes)" if row.get("processes", 1) > 1 else ""
            lines.append(
                f"| {label}{procs} | {row.get('engine', '')} | {_fmt(row['frames'])} | "
                f"{_fmt(row['frames_per_s'])} | {_against(row['frames_per_s'], target)} |"
            )
    lines += _training_rows(steps.get("train", {}))
    earlier = record["figures"].get("earlier", {}).get("train")
    if earlier:
        lines += _training_rows(earlier, "training, an earlier call")
    lines += _evaluate_rows(steps.get("evaluate", {}))
    failed = [
        f"{n}: {t['detail']}" for n, t in tests.get("tests", {}).items() if t["outcome"] == "failed"
    ]
    if failed:
        lines += ["", "Failed on the device: " + "; ".join(failed) + "."]
    not_run = record["figures"].get("not_run", [])
    if not_run:
        lines += ["", "Not run: " + "; ".join(not_run) + "."]
    lines += [
        "",
        "FLOP are direct-convolution counts (2 x multiply-adds); Winograd or FFT kernels can "
        "exceed 100% of the measured matrix peak.",
    ]
    return lines


def _training_rows(found: dict, title: str = "training (real loop)") -> list[str]:
    """Training through the real loop: images/s and the share of time waiting for data."""
    rows = {k: v for k, v in found.items() if isinstance(v, dict) and "images_per_s" in v}
    if not rows:
        return []
    lines = [""]
    if found.get("call"):
        lines += [f"{title[0].upper()}{title[1:]}: {found['call']}.", ""]
    lines += [
        f"| {title} | batch | AMP | decoding workers | images/s | waiting for data |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        lines.append(
            f"| {key} | {r['batch_size']} | {'yes' if r['amp'] else 'no'} | "
            f"{r['decode_workers']} | {_fmt(r['images_per_s'])} | {r['data_wait_share']:.1%} |"
        )
    targets = found.get("targets")
    amp = [r for k, r in rows.items() if k.startswith("simgan_gaze") and r["amp"]]
    if targets and amp:
        best = max(amp, key=lambda r: r["images_per_s"])
        rate, wait = targets["simgan_gaze_amp_images_per_s"], targets["data_wait_share"]
        lines += [
            "",
            f"Targets ({targets['note']}): ≥ {rate:,} images/s, "
            f"{'met' if best['images_per_s'] >= rate else 'not met'} "
            f"({_fmt(best['images_per_s'])} at best); waiting for data ≤ {wait:.0%}, "
            f"{'met' if best['data_wait_share'] <= wait else 'not met'} "
            f"({best['data_wait_share']:.1%} in that run).",
        ]
    return lines


def _evaluate_rows(found: dict) -> list[str]:
    """``refinery evaluate scene`` on the device: seconds and peak memory per set size."""
    rows = [v for v in found.values() if isinstance(v, dict) and "frames_per_set" in v]
    if not rows:
        return []
    lines = [
        "",
        "| `evaluate scene` (one seed, one epoch) | frames per set | seconds | peak host MiB | "
        "peak device MiB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {'x'.join(str(v) for v in r['size'])} on {r['device']} | "
            f"{r['frames_per_set']:,} | {_fmt(r['seconds'])} | {_fmt(r['peak_host_rss_mib'])} | "
            f"{_fmt(r['peak_device_mib']) if r['peak_device_mib'] is not None else '—'} |"
        )
    return lines


def _train_speed(record: dict) -> list[str]:
    """``benchmarks/train_speed.py``: the CPU loop with decoding inline and in the background."""
    lines = [
        "| method | decoding | images/s | waiting for data (target ≤ 10%) |",
        "|---|---|---|---|",
    ]
    for method, f in record["figures"].items():
        if method not in record["settings"]["cases"]:
            continue
        for name in ("decode_workers_0", "decode_workers_2", "cache"):
            if name not in f:  # records from before the decoded cache
                continue
            r = f[name]
            workers = r["decode_workers"]
            where = "on the loop's thread" if workers == 0 else f"{workers} decoding processes"
            if name == "cache":
                where = "from the decoded cache (`train.cache`)"
            lines.append(
                f"| {method} `--preset {record['settings']['cases'][method]['preset']}` | "
                f"{where} | {_fmt(r['images_per_s'])} | {r['data_wait_share']:.1%} |"
            )
    lines += [
        "",
        "Measured through `train.loop` (shards read, decoded and batched by the method's "
        "streams; the loop's `time/data_wait_share`), means over the logged intervals of the "
        "adversarial phase after the first; both cases side by side in one run.",
    ]
    feed = record["figures"].get("feed")
    if feed:
        lines += [
            "",
            "| gaze data feed (batch 512) | heap | samples/s here | CPU per sample on the "
            "loop's process | its ceiling (a core per worker) |",
            "|---|---|---|---|---|",
        ]
        for r in [*feed.values(), *record["figures"].get("feed_cache", {}).values()]:
            where = f"{r['decoders']} decoding processes" if r["decoders"] else "on its thread"
            if r.get("cache"):
                where = "decoded cache, " + ("stored pixels" if r["stored"] else "scaled floats")
            lines.append(
                f"| {where} | {'frozen (as `train.loop`)' if r['frozen_heap'] else 'as it is'} | "
                f"{_fmt(r['samples_per_s'])} | {_fmt(r['cpu_us_per_sample'])} µs | "
                f"{_fmt(r['ceiling_samples_per_s'])} samples/s |"
            )
        lines += [
            "",
            f"{record['settings'].get('feed', '')}. SimGAN's paper preset draws 2,048 samples "
            "per iteration, so on a GPU the loop's images/s cannot pass the feed's ceiling.",
        ]
    return lines


def _evaluate_memory(record: dict) -> list[str]:
    """``benchmarks/evaluate_memory.py``: evaluate's peak host memory against its set sizes."""
    f = record["figures"]
    lines = [
        "| frames per set | real test frames | peak host memory (MiB) | seconds |",
        "|---|---|---|---|",
    ]
    for r in f["runs"].values():
        lines.append(
            f"| {r['frames_per_set']:,} | {r['real_test_frames']:,} | "
            f"{_fmt(r['peak_host_rss_mib'])} | {_fmt(r['seconds'])} |"
        )
    lines += [
        "",
        f"`refinery evaluate scene` at {'x'.join(str(v) for v in record['settings']['size'])}, "
        f"one seed, one epoch: the peak changes by {f['growth']:+.0%} from the smaller set to the "
        f"larger (target: within {f['target_growth']:.0%}, "
        f"{'met' if f['met'] else 'not met'}). The sets are decoded to a scratch directory "
        "and read back a batch at a time, so the peak is that of a batch's activations.",
    ]
    return lines


def _drift_floor(record: dict) -> list[str]:
    """``benchmarks/drift_floor.py``: label drift on a change of appearance alone."""
    figures = record["figures"]
    long = next((f["robust_long"]["epochs"] for f in figures.values() if "robust_long" in f), None)
    kinds = ["plain", "robust"] + (["robust_long"] if long else [])
    names = {
        "plain": "plain network",
        "robust": "appearance-robust network",
        "robust_long": f"appearance-robust, {long} epochs",
    }
    lines = [
        "| domain | pairs | "
        + " | ".join(f"drift, {names[k]}" for k in kinds)
        + f" | per seed ({'; '.join(k.replace('_', ' ') for k in kinds)}) | "
        "error on the twins' labels |",
        "|---|---|" + "---|" * len(kinds) + "---|---|",
    ]
    for domain, f in figures.items():
        unit = _unit(f["unit"])
        have = [k for k in kinds if k in f]
        cells = [
            f"{_fmt(f[k]['mean'])} ± {_fmt(f[k]['std'])}{unit}" if k in f else "—" for k in kinds
        ]
        runs = "; ".join(", ".join(_fmt(x) for x in f[k]["runs"]) for k in have)
        metric = f.get("twin_metric")
        errors = (
            ", ".join(
                f"{k.replace('_', ' ')} {_fmt(metric[k]['mean'])}{_unit(metric['unit'])}"
                for k in have
            )
            + f" ({metric['key']})"
            if metric
            else "—"
        )
        lines.append(f"| {domain} | {f['pairs']:,} | {' | '.join(cells)} | {runs} | {errors} |")
    lines += [
        "",
        "Each synthetic sample against the simulator's real-variant rendering of the same "
        "geometry (identical labels: "
        + ", ".join(
            f"{d} {'verified' if f['labels_identical'] else 'NOT identical'}"
            for d, f in record["figures"].items()
        )
        + "), read by the networks `evaluate` measures drift with, trained on the synthetic "
        "set (seeds "
        + ", ".join(str(s) for s in record["settings"]["seeds"])
        + "); the sets are `real_gaze`'s synthetic eyes and the street experiments' synthetic "
        "frames. Nothing the labels describe changed, so this is what the instrument reads on "
        "appearance alone: a refiner's drift near or under it says nothing about changed "
        "content.",
    ]
    return lines


def _with_runs(stat: dict) -> str:
    """A summary (``common.summary``) as "mean ± std (run, run, ...)"."""
    per = ", ".join(_fmt(x) for x in stat["runs"])
    return f"{_fmt(stat['mean'])} ± {_fmt(stat['std'])} ({per})"


def _realism_cues(record: dict) -> list[str]:
    """``benchmarks/realism_cues.py``: the two-sample test on coarse and fine image content."""
    bands = ("full", "coarse", "fine")
    lines = [
        "| run | set | " + " | ".join(f"two-sample accuracy, {b}" for b in bands) + " |",
        "|---|---|" + "---|" * len(bands),
    ]
    for run, f in record["figures"].items():
        for name in ("synthetic", "refined"):
            cells = [_with_runs(f[name][band]["c2st_accuracy"]) for band in bands]
            lines.append(f"| `{run}` | {name} | {' | '.join(cells)} |")
    settings = record["settings"]
    lines += [
        "",
        "The test: "
        + settings["test"]
        + ". Bands: "
        + "; ".join(f"{band}: {settings['bands'][band]}" for band in bands)
        + ". 0.5 = indistinguishable, 1.0 = told apart every time.",
    ]
    return lines


def _capture_cues(record: dict) -> list[str]:
    """``benchmarks/capture_cues.py``: the two-sample test after capture statistics are added."""
    settings = record["settings"]
    lines = [
        "| run | transform | two-sample accuracy, refined vs real (per GAN) | change (per GAN) |",
        "|---|---|---|---|",
    ]
    for run, f in record["figures"].items():
        for name in settings["order"]:
            found = f["transforms"][name]
            lines.append(
                f"| `{run}` | {name} | {_with_runs(found['c2st_accuracy'])} | "
                f"{_with_runs(found['change'])} |"
            )
    lines += [
        "",
        "The test: "
        + settings["test"]
        + ". Transforms: "
        + "; ".join(f"{name}: {settings['transforms'][name]}" for name in settings["order"])
        + ". A negative change moves the refined eyes towards real.",
    ]
    return lines


def _c2st_noise(record: dict) -> list[str]:
    """``benchmarks/c2st_noise.py``: the two-sample test's own spread against the GANs'."""
    figures, settings = record["figures"], record["settings"]
    protocols = list(settings["protocols"])
    lines = [
        "| refined set | "
        + " | ".join(f"two-sample accuracy, {p} (per classifier seed)" for p in protocols)
        + " |",
        "|---|" + "---|" * len(protocols),
    ]
    for name, entry in figures["sets"].items():
        cells = [_with_runs(entry[protocol]) for protocol in protocols]
        lines.append(f"| `{name}` | {' | '.join(cells)} |")
    for protocol in protocols:
        p = figures["protocols"][protocol]
        lines.append(
            f"| **{protocol}**: mean, spread within a set / between GANs | "
            + " | ".join(
                f"{_fmt(p['mean'])}, {_fmt(p['within_set_std'])} / {_fmt(p['between_gan_std'])}"
                if other == protocol
                else ""
                for other in protocols
            )
            + " |"
        )
    lines += [
        "",
        "The test: "
        + settings["test"]
        + ". Protocols: "
        + "; ".join(f"{p}: {settings['protocols'][p]}" for p in protocols)
        + ". Spread within a set: the classifiers' standard deviation on one set of images "
        "(pooled); between GANs: that of the sets' means.",
    ]
    return lines


def _real_gaze_sweep(record: dict) -> list[str]:
    """``make gpu-sweep``: real_gaze variants side by side on a GPU machine, one GAN per run."""
    figures, settings = record["figures"], record["settings"]
    seeds = [str(s) for s in settings["seeds"]]
    lines = [
        "| variant | arguments beyond the 4× pair | "
        + " | ".join(f"GAN {s}: refined vs real (drift °)" for s in seeds)
        + " | mean refined vs real (GANs) |",
        "|---" * (len(seeds) + 3) + "|",
    ]
    pair = settings["variants"].get("pair", [])
    for variant, arguments in settings["variants"].items():
        entry = figures["summary"].get(variant, {"seeds": {}})
        extra = arguments[len(pair) :] if arguments[: len(pair)] == pair else arguments
        cells = []
        for seed in seeds:
            run = entry["seeds"].get(seed, {})
            done = "refined_c2st" in run
            cells.append(
                f"{_fmt(run['refined_c2st'])} ({_fmt(run['drift_robust_deg'])})" if done else "—"
            )
        count = sum("refined_c2st" in run for run in entry["seeds"].values())
        mean = f"{_fmt(entry['mean_refined_c2st'])} ({count})" if count else "—"
        shown = " ".join(extra) if extra else "(the pair itself)"
        lines.append(f"| `{variant}` | `{shown}` | {' | '.join(cells)} | {mean} |")
    unfinished = figures["unfinished"]
    synthetic = [
        run["synthetic_c2st"]
        for entry in figures["summary"].values()
        for run in entry["seeds"].values()
        if "synthetic_c2st" in run
    ]
    span = f"{_fmt(min(synthetic))} to {_fmt(max(synthetic))}" if synthetic else "—"
    lines += [
        "",
        f"One run: {settings['run']}. The 4× pair: `{' '.join(pair)}`. Synthetic vs real reads "
        f"{span} over the finished runs. "
        + (f"Not finished ({len(unfinished)}): {', '.join(unfinished)}. " if unfinished else "")
        + "A search, not a result: a setting counts once `make bench` reruns it on the CPU.",
    ]
    return lines


def _spigan_terms(record: dict) -> list[str]:
    """``benchmarks/spigan_terms.py``: the gradient each weighted term of SPIGAN's objective
    sends into G, during the runs."""
    figures, settings = record["figures"], record["settings"]
    lines = [
        "| pretrain_task_steps | adversarial iteration | ‖∇ α·L_GAN‖ | ‖∇ β·L_T‖ | ‖∇ γ·L_P‖ | "
        "‖∇ δ·L_perc‖ | P's pull / T's (per GAN seed) | P's share of the four | γ where P pulls "
        "as T |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, probes in figures.items():
        pretrain = config.rsplit("_", 1)[-1]
        for iteration, probe in sorted(probes.items(), key=lambda item: int(item[0])):
            pull = probe["pull"]
            runs = ", ".join(_fmt(r) for r in probe["privileged_over_task_runs"])
            lines.append(
                f"| {pretrain} | {iteration} | {_fmt(pull['gan'])} | {_fmt(pull['task'])} | "
                f"{_fmt(pull['privileged'])} | {_fmt(pull['perceptual'])} | "
                f"{_fmt(probe['privileged_over_task'])} ({runs}) | "
                f"{probe['privileged_share']:.1%} | {_fmt(probe['gamma_equal_to_task'])} |"
            )
    lines += [
        "",
        f"SPIGAN `--preset small` (γ = {_fmt(settings['gamma'])}), {settings['frames']} synthetic "
        f"and {settings['frames']} real {settings['image_size']} frames (data seeds "
        f"{', '.join(str(s) for s in settings['data_seeds'])}), {settings['steps']} iterations, "
        f"GAN seeds {', '.join(str(s) for s in settings['seeds'])}; pull: "
        f"{settings['measure']}, {settings['batches_per_probe']} batches a probe, a probe every "
        f"{settings['probe_every']} iterations; {settings['seconds']:,.0f} s.",
    ]
    return lines


def _generic(record: dict) -> list[str]:
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in _flatten("", record["figures"])]
    return lines


RENDERERS = {
    "shard_io": _shard_io,
    "domain_gap": _domain_gap,
    "engines": _engines,
    "ingest": _ingest,
    "refine": _refine,
    "gpu-check": _gpu_check,
    "real_gaze": _real_gaze,
    "real_gaze_sweep": _real_gaze_sweep,
    "train_speed": _train_speed,
    "evaluate_memory": _evaluate_memory,
    "drift_floor": _drift_floor,
    "realism_cues": _realism_cues,
    "c2st_noise": _c2st_noise,
    "capture_cues": _capture_cues,
    "spigan_terms": _spigan_terms,
}


# records named <prefix><anything> that each render alone with one renderer: the variants
VARIANTS = {"real_gaze_": _real_gaze}

# records named <prefix><anything> that render as one table, where the first of them sorts
GROUPS = {"evaluate_": _evaluate}


def _own_renderer(name: str):
    """The renderer of a record that renders alone (its own or its variants'), else None."""
    if name in RENDERERS:
        return RENDERERS[name]
    return next((r for prefix, r in VARIANTS.items() if name.startswith(prefix)), None)


def _group(name: str) -> str | None:
    """The group a record renders in; a record with a renderer of its own renders alone."""
    if _own_renderer(name) is not None:
        return None
    return next((prefix for prefix in GROUPS if name.startswith(prefix)), None)


def _provenance(records: list[dict]) -> str:
    """Date, machine and versions; one line per distinct machine and versions."""
    seen: dict[str, list[str]] = {}
    for record in records:
        machine, versions = record["machine"], record["versions"]
        line = (
            f"{machine['cpu']} × {machine['cpu_count']}"
            f"{', GPU ' + machine['gpu'] if machine.get('gpu') else ''}, "
            f"refinery {versions.get('refinery')}, torch {versions.get('torch')}"
        )
        seen.setdefault(line, []).append(record["date"][:10])
    return "; ".join(
        f"{min(dates)}{'' if min(dates) == max(dates) else ' to ' + max(dates)}, {line}"
        for line, dates in seen.items()
    )


def render(results: Path = RESULTS) -> str:
    records = [(path, json.loads(path.read_text())) for path in sorted(results.glob("*.json"))]
    parts = []
    pooled = _real_gaze_pools(records)
    done: set[str] = set()
    for path, record in records:
        name = record["benchmark"]
        group = _group(name)
        if group in done:
            continue
        if group is None:
            members, title = [(path, record)], f"#### {name} (`benchmarks/results/{path.name}`)"
        else:
            done.add(group)
            members = [(p, r) for p, r in records if _group(r["benchmark"]) == group]
            title = f"#### {group.rstrip('_')} (`benchmarks/results/{group}*.json`)"
        parts += [title, "", _provenance([r for _, r in members]), ""]
        if group is None:
            parts.extend((_own_renderer(name) or _generic)(record))
            parts.extend(pooled.get(name, []))
        else:
            parts.extend(GROUPS[group](members))
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


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
