"""``refinery evaluate``: does a task network trained on refined data do better on real data,
and were the labels kept?

The experiment of SimGAN (Shrivastava et al., CVPR 2017, Table 2 and Fig. 7) and SG-GAN /
SPIGAN (segmentation mIoU), for any domain with a task in ``train.evaluation.downstream``:

1. train the domain's task network on the synthetic set, on the refined set (the same keys
   and labels, refined images) and, when labeled real training data is given, on that; each
   with every seed;
2. test each on the real test set: the primary metric (angular error, joint error, mIoU) and
   the rest, mean and spread over seeds;
3. the share of the synthetic-to-real gap that refinement closed, per seed and on the means:
   ``(E_syn - E_ref) / (E_syn - E_real)`` on the primary metric: 1 = refined data as good as
   real, 0 = no better than synthetic, negative = worse (reported as it is);
4. label drift: the synthetic-trained model applied to each synthetic image and to its refined
   version (paired by key): the mean disagreement in degrees, pixels or 1 - IoU. A refiner
   that moves the pupil, a joint or a class boundary shows up here; so does one that changes
   only tone, since that network never saw other tones. For gaze and scenes the report also
   gives the drift of an appearance-robust network (the same one trained with random changes
   of tone, contrast, shading, blur and noise, ``downstream.vary_appearance``), which answers
   to geometry: the drift of what the labels describe;
5. labels kept: every refined sample's label components, decoded, against its synthetic
   source's, by key (refined shards keep them byte-identical by contract 1).

``evaluate(...)`` returns the report as a dict and, with ``out``, writes the self-contained
HTML page, its JSON and plots through ``train.evaluation.report.write_report``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refinery import __version__, sheets
from refinery.records import machine, versions
from refinery.samples import decode_component, is_labeled
from refinery.shards import read, shard_samples
from train.evaluation import realism
from train.evaluation.downstream import LabeledSet, TaskConfig, fit, get_task
from train.evaluation.rows import scratch_directory

FORMAT = "refinery-evaluate/1"
SETS = ("synthetic", "refined", "real")
SEEDS = (0, 1, 2)
SHEET_SAMPLES = {"gaze": 10, "hand": 8, "scene": 4}  # scene tiles are wide: keep the page < 1 MB
GAP_NOTE = (
    "(E_syn - E_ref) / (E_syn - E_real) on the primary metric: 1 = refined as good as real, "
    "0 = no better than synthetic, negative = worse than synthetic; 'of the means' puts each "
    "training set's mean over seeds in the formula, 'mean over seeds' averages the per-seed "
    "values"
)

DATA_NOTE = (
    "every set decoded once into a scratch directory on disk (8-bit images, class maps) and "
    "read back a batch at a time: memory does not grow with the sets"
)

DRIFT_NOTE = (
    "the model trained on synthetic data (each seed) applied to each synthetic image and to its "
    "refined version, paired by key: mean disagreement"
)
ROBUST_NOTE = (
    "the same network trained on the synthetic set (each seed) with random appearance changes "
    "(tone curve, contrast, brightness, colour gains, shading ramp, blur, noise; no geometric "
    "change) for the settings' robust_epochs, so it answers to where things are rather than "
    "to tone, applied to each synthetic image and its refined version: mean disagreement. "
    "Refinement is meant to change appearance, so this is the drift of what the labels "
    "describe"
)

Log = Callable[[str], None]


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one run) and the runs."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "runs": values,
    }


def gap_closed(synthetic: float, refined: float, real: float) -> float | None:
    """(E_syn - E_ref) / (E_syn - E_real); None when synthetic and real score the same."""
    gap = synthetic - real
    return None if abs(gap) < 1e-12 else (synthetic - refined) / gap


def label_check(synthetic: LabeledSet, refined: LabeledSet) -> dict[str, Any]:
    """Refined samples against their synthetic sources, by key."""
    source = dict(zip(synthetic.keys, synthetic.fingerprints, strict=True))
    paired = [k for k in refined.keys if k in source]
    prints = dict(zip(refined.keys, refined.fingerprints, strict=True))
    differing = [k for k in paired if prints[k] != source[k]]
    return {
        "paired": len(paired),
        "identical": len(paired) - len(differing),
        "unpaired_refined": len(refined) - len(paired),
        "missing_from_refined": len(set(source) - set(paired)),
        "differing_keys": differing[:20],
        "differing": len(differing),
    }


def _paired(synthetic: LabeledSet, refined: LabeledSet) -> tuple[LabeledSet, LabeledSet]:
    where = {k: i for i, k in enumerate(synthetic.keys)}
    pairs = [(where[k], j) for j, k in enumerate(refined.keys) if k in where]
    return synthetic.take([i for i, _ in pairs]), refined.take([j for _, j in pairs])


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and k not in ("n_eval", "n_joints", "seed")
    }


def evaluate(
    domain: str,
    *,
    synthetic: str | Sequence[str],
    refined: str | Sequence[str],
    real_test: str | Sequence[str],
    real_train: str | Sequence[str] | None = None,
    out: str | Path | None = None,
    seeds: Sequence[int] = SEEDS,
    network: str = "",
    epochs: int = 0,
    batch_size: int = 0,
    lr: float = 0.0,
    robust_epochs: int = 0,
    c2st_repeats: int = 1,
    device: str | None = None,
    log: Log | None = print,
    scratch: str | Path | None = None,
) -> dict[str, Any]:
    """Run the experiment above; return the report (and write it under ``out``).

    Every set is decoded once into a temporary directory under ``scratch`` (default: the
    system's temporary directory), removed at the end, and read back a batch at a time
    (``train.evaluation.rows``): memory does not grow with the sets, the disk holds them (8-bit).

    ``robust_epochs`` trains the appearance-robust drift network (gaze, scene) that long
    instead of ``epochs``: its random appearance changes make the task harder, and a network
    trained longer reads less drift on appearance alone (``benchmarks/experiments/drift_floor.py``).

    ``c2st_repeats`` scores each seed's realism with that many two-sample classifiers and
    takes their mean (``train.evaluation.realism.realism``'s ``repeats``; 1, one classifier per
    seed,
    is what every record used)."""
    with scratch_directory(scratch, "evaluate") as where:
        return _evaluate(
            domain,
            synthetic=synthetic,
            refined=refined,
            real_test=real_test,
            real_train=real_train,
            out=out,
            seeds=seeds,
            network=network,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            robust_epochs=robust_epochs,
            c2st_repeats=c2st_repeats,
            device=device,
            log=log,
            scratch=where,
        )


def _evaluate(
    domain: str,
    *,
    synthetic: str | Sequence[str],
    refined: str | Sequence[str],
    real_test: str | Sequence[str],
    real_train: str | Sequence[str] | None,
    out: str | Path | None,
    seeds: Sequence[int],
    network: str,
    epochs: int,
    batch_size: int,
    lr: float,
    robust_epochs: int,
    c2st_repeats: int,
    device: str | None,
    log: Log | None,
    scratch: Path,
) -> dict[str, Any]:
    task = get_task(domain)
    base = TaskConfig(domain=domain, network=network, epochs=epochs, batch_size=batch_size, lr=lr)
    if isinstance(robust_epochs, bool) or not isinstance(robust_epochs, int) or robust_epochs < 0:
        raise ValueError(f"robust_epochs must be a positive integer or 0, got {robust_epochs!r}")
    robust_base = replace(base, epochs=robust_epochs or base.epochs, appearance=task.appearance)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, at least one, got {seeds!r}")
    say = log or (lambda _: None)
    seconds: dict[str, float] = {}
    began = time.perf_counter()

    data = _load(task, domain, synthetic, refined, real_test, real_train, scratch)
    seconds["load"] = time.perf_counter() - began
    labels = label_check(data.sets["synthetic"], data.refined)
    paired_synthetic, paired_refined = _paired(data.sets["synthetic"], data.refined)
    say(
        f"{domain}: {', '.join(f'{k} {len(v)}' for k, v in data.sets.items())}, real test "
        f"{len(data.real_images)}{'' if data.labeled_test else ' (unlabeled: realism only)'}; "
        f"labels identical for {labels['identical']} of {labels['paired']} paired keys"
    )

    started = time.perf_counter()
    trained = _train_and_test(
        task, data, (paired_synthetic, paired_refined), seeds, base, robust_base, device, say
    )
    seconds["train_and_test"] = time.perf_counter() - started

    # realism needs no labels; it runs after the task networks, which keep their RNG streams
    started = time.perf_counter()
    realism_report = _realism(task, base, data, seeds, trained.feature_model, c2st_repeats, device)
    for name, entry in realism_report["sets"].items():
        say(
            f"realism, {name} vs real: two-sample accuracy "
            f"{entry['c2st_accuracy']['mean']:.3f} ± {entry['c2st_accuracy']['std']:.3f}, "
            f"KID {entry['kid']['mean']:.4f}"
        )
    seconds["realism"] = time.perf_counter() - started

    report = _report(
        task,
        domain,
        base,
        robust_base,
        data,
        trained,
        inputs=(synthetic, refined, real_train, real_test),
        seeds=seeds,
        labels=labels,
        pairs=len(paired_synthetic),
        realism_report=realism_report,
        device=device,
    )
    seconds["total"] = time.perf_counter() - began
    report["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    report["memory"] = peak_memory(device)
    if out is not None:
        from train.evaluation.report import write_report

        sheet = contact_sheet(
            domain,
            synthetic,
            refined,
            real_test,
            paired_refined.keys[: SHEET_SAMPLES[domain]],
            real_labeled=data.labeled_test,
        )
        path = write_report(report, out, sheet=sheet)
        say(f"report: {path}")
    return report


@dataclass(frozen=True)
class _Data:
    """The sets ``_evaluate`` works on, each decoded once into its scratch directory."""

    sets: dict[str, LabeledSet]  # the training sets: synthetic, and refined, real when scored
    refined: LabeledSet
    test: LabeledSet | None  # None: the real test set is unlabeled, no task scores
    real_images: Any  # the real test set's inputs, for realism
    labeled_test: bool


def _load(
    task,
    domain: str,
    synthetic: str | Sequence[str],
    refined: str | Sequence[str],
    real_test: str | Sequence[str],
    real_train: str | Sequence[str] | None,
    scratch: Path,
) -> _Data:
    """Data: decode every set once; a labeled real test set gets task networks trained on every
    training set, an unlabeled one only realism and label drift."""
    labeled_test = all_labeled(real_test, domain)
    if not labeled_test and real_train is not None:
        raise ValueError(
            "the real test set is unlabeled: a network trained on --real-train could not be "
            "scored on it (give a labeled --real-test, or leave out --real-train)"
        )
    sets: dict[str, LabeledSet] = {"synthetic": task.load(synthetic, scratch=scratch)}
    options = {"scratch": scratch, **task.options(sets["synthetic"])}
    refined_set = task.load(refined, **options)
    if labeled_test:  # task networks on every training set, scored on the real test set
        sets["refined"] = refined_set
        if real_train is not None:
            sets["real"] = task.load(real_train, **options)
        test = task.load(real_test, **options)
        real_images = test.inputs
    else:  # only realism and label drift: the synthetic-trained network, no task scores
        test = None
        info = sets["synthetic"].info
        real_images = realism.images(
            real_test, domain, size=info["size"], depth_input=info["size"][0], scratch=scratch
        )
    return _Data(sets, refined_set, test, real_images, labeled_test)


@dataclass(frozen=True)
class _Trained:
    """What the task networks measured, over seeds."""

    runs: dict[str, list[dict[str, Any]]]  # per training set: each seed's metrics on real test
    per_sample: dict[str, list[np.ndarray]]
    drift: list[float]
    robust_drift: list[float]  # of an appearance-robust network (gaze, scene)
    feature_model: Any  # the synthetic-trained network of the first seed: realism's features


def _train_and_test(
    task,
    data: _Data,
    paired: tuple[LabeledSet, LabeledSet],
    seeds: list[int],
    base: TaskConfig,
    robust_base: TaskConfig,
    device: str | None,
    say: Log,
) -> _Trained:
    """Train and test: a task network per seed and training set, scored on the real test set;
    the synthetic-trained one (and its appearance-robust twin) also measures label drift."""
    paired_synthetic, paired_refined = paired
    test = data.test
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in data.sets}
    per_sample: dict[str, list[np.ndarray]] = {name: [] for name in data.sets}
    drift: list[float] = []
    robust_drift: list[float] = []
    feature_model = None
    for seed in seeds:
        for name, sample_set in data.sets.items():
            fit_began = time.perf_counter()
            model = fit(task, sample_set, replace(base, seed=seed), device=device)
            if name == "synthetic" and feature_model is None:
                feature_model = model
            if test is not None:
                metrics, values = task.test(model, test)
                runs[name].append({"seed": seed, **metrics})
                per_sample[name].append(values)
            if name == "synthetic" and len(paired_synthetic):
                drift.append(task.label_drift(model, paired_synthetic, paired_refined))
                if task.appearance:
                    robust = fit(task, sample_set, replace(robust_base, seed=seed), device=device)
                    robust_drift.append(task.label_drift(robust, paired_synthetic, paired_refined))
                    say(
                        f"seed {seed}, label drift {drift[-1]:.4f} {task.drift.unit}, "
                        f"appearance-robust {robust_drift[-1]:.4f} {task.drift.unit}"
                    )
            scored = (
                f"{task.metric.label} on real test {metrics[task.metric.key]:.4f} "
                f"{task.metric.unit}"
                if test is not None
                else "not scored (unlabeled real test)"
            )
            say(
                f"seed {seed}, trained on {name}: {scored} ({time.perf_counter() - fit_began:.0f} s)"
            )
    return _Trained(runs, per_sample, drift, robust_drift, feature_model)


def _realism(
    task,
    base: TaskConfig,
    data: _Data,
    seeds: list[int],
    feature_model,
    c2st_repeats: int,
    device: str | None,
) -> dict[str, Any]:
    """Realism: synthetic and refined against the real test set, no labels needed."""
    network = base.network or task.network
    return realism.realism(
        data.real_images,
        {"synthetic": data.sets["synthetic"].inputs, "refined": data.refined.inputs},
        seeds=seeds,
        feature_model=feature_model,
        feature_network=(
            f"{network} trained on the synthetic set (seed {seeds[0]}; the input of its last "
            "layer, averaged over space)"
        ),
        repeats=c2st_repeats,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),  # as fit's default
    )


def _gap(task, sets: dict[str, LabeledSet], runs, results) -> dict[str, Any] | None:
    """The share of the synthetic-to-real gap closed, per seed and on the means; None without
    a real training set."""
    if "real" not in sets:
        return None
    key = task.metric.key
    means = {name: results[name]["metrics"][key]["mean"] for name in sets}
    per_seed = [
        gap_closed(s[key], r[key], e[key])
        for s, r, e in zip(runs["synthetic"], runs["refined"], runs["real"], strict=True)
    ]
    defined = [g for g in per_seed if g is not None]
    return {
        # two aggregates, named for what they are: the formula on the mean errors, and
        # the mean of the per-seed values (they differ when one seed's gap is small)
        "of_means": gap_closed(means["synthetic"], means["refined"], means["real"]),
        "mean_over_seeds": statistics.fmean(defined) if defined else None,
        "runs": per_seed,
        "note": GAP_NOTE,
    }


def _report(
    task,
    domain: str,
    base: TaskConfig,
    robust_base: TaskConfig,
    data: _Data,
    trained: _Trained,
    *,
    inputs: tuple,
    seeds: list[int],
    labels: dict[str, Any],
    pairs: int,
    realism_report: dict[str, Any],
    device: str | None,
) -> dict[str, Any]:
    """The report: every measure with its settings, inputs, machine and versions."""
    synthetic, refined, real_train, real_test = inputs
    sets, runs = data.sets, trained.runs
    results = {
        name: {
            "metrics": {
                metric: summary([run[metric] for run in runs[name]])
                for metric in _scalars(runs[name][0])
            },
            "runs": runs[name],
        }
        for name in sets
        if runs[name]
    }
    return {
        "format": FORMAT,
        "domain": domain,
        "title": f"Refinement report: {domain}",
        "task": {
            "network": base.network,
            "metric": asdict(task.metric),
            "description": _DESCRIPTIONS[domain],
        },
        "inputs": {
            "synthetic": _list(synthetic),
            "refined": _list(refined),
            "real_train": None if real_train is None else _list(real_train),
            "real_test": _list(real_test),
        },
        "counts": {
            "synthetic": len(sets["synthetic"]),
            "refined": len(data.refined),
            "real_train": len(sets["real"]) if "real" in sets else None,
            "real_test": len(data.real_images),
        },
        "real_test_labeled": data.labeled_test,
        "seeds": seeds,
        "settings": {
            **{k: v for k, v in asdict(base).items() if k != "seed"},
            "robust_epochs": robust_base.epochs if task.appearance else None,
            "input": sets["synthetic"].info,
            "device": device or "auto",
            "data": DATA_NOTE,
        },
        "results": results,
        "gap_closed": _gap(task, sets, runs, results),
        "label_drift": _drift_entry(task, trained.drift, pairs, DRIFT_NOTE),
        "label_drift_robust": _drift_entry(task, trained.robust_drift, pairs, ROBUST_NOTE),
        "labels": labels,
        "realism": realism_report,
        "distributions": {
            "label": _DISTRIBUTION_LABELS[domain],
            "values": {
                name: np.round(np.concatenate(values), 4).tolist()
                for name, values in trained.per_sample.items()
                if values
            },
        },
        "pck": _pck(runs) if domain == "hand" else None,
        "per_class_iou": _per_class(runs) if domain == "scene" else None,
        "sheet_caption": (
            f"rows: synthetic, refined (the same {SHEET_SAMPLES[domain]} keys), real test; "
            "labels drawn on every tile"
        ),
        "machine": machine(),
        "versions": {"refinery": __version__, **versions()},
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


_DESCRIPTIONS = {
    "gaze": "gaze estimator regressing the 3-D look vector from an eye crop",
    "hand": "stacked-hourglass heatmap network locating 14 hand joints in a depth crop",
    "scene": "FCN8s segmentation network, class per pixel",
}
_DISTRIBUTION_LABELS = {
    "gaze": "angular error per real test image (deg), all seeds",
    "hand": "error per joint on the real test set (crop px), all seeds",
    "scene": "mIoU per real test frame, all seeds",
}


def _drift_entry(task, runs: list[float], pairs: int, note: str) -> dict[str, Any] | None:
    """A label drift's report entry: its runs over seeds, what it is; None if not measured."""
    if not runs:
        return None
    return {
        "label": task.drift.label,
        "unit": task.drift.unit,
        **summary(runs),
        "pairs": pairs,
        "description": note,
    }


def peak_memory(device: str | None = None) -> dict[str, Any]:
    """This process's peak resident memory and, on CUDA, the peak memory torch allocated on
    the device, in MiB; the report states it."""
    import resource

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    on_cuda = torch.cuda.is_available() and str(device or "cuda").startswith("cuda")
    return {
        "peak_host_rss_mib": round(host, 1),
        "peak_device_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_cuda else None,
        "note": DATA_NOTE,
    }


def all_labeled(urls: str | Sequence[str], domain: str) -> bool:
    """Whether every sample of a set carries labels (a real set may be unlabeled: image only,
    or ``"labeled": false``). Only labels are decoded, not images; it stops at the first
    unlabeled sample."""
    return all(
        "json" in s and is_labeled({"json": decode_component("json", s["json"], domain)})
        for s in shard_samples(urls)
    )


def _list(urls: str | Sequence[str]) -> list[str]:
    return [urls] if isinstance(urls, str) else list(urls)


def _pck(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    first = next(iter(runs.values()))[0]["pck"]
    curves = {}
    for name, seeds in runs.items():
        shares = np.array([run["pck"]["share"] for run in seeds])  # (seeds, thresholds)
        curves[name] = {
            "mean": shares.mean(0).round(5).tolist(),
            "min": shares.min(0).round(5).tolist(),
            "max": shares.max(0).round(5).tolist(),
        }
    return {"thresholds": first["thresholds"], "unit": "px", "curves": curves}


def _per_class(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    classes = list(next(iter(runs.values()))[0]["per_class_iou"])
    values = {}
    for name, seeds in runs.items():
        row = []
        for c in classes:
            seen = [run["per_class_iou"][c] for run in seeds if run["per_class_iou"][c] is not None]
            row.append(statistics.fmean(seen) if seen else None)
        values[name] = row
    return {"classes": classes, "values": values}


def _samples(
    urls, domain: str, keys: Sequence[str] | None, count: int, *, labels: bool = True
) -> list[dict[str, Any]]:
    """The decoded samples of ``keys`` in that order (or the first ``count``), reading no further
    than needed."""
    wanted = None if keys is None else set(keys)
    found: dict[str, dict[str, Any]] = {}
    for sample in read(urls, domain, labels=labels):
        if wanted is None or sample["__key__"] in wanted:
            found[sample["__key__"]] = sample
        if len(found) >= (count if wanted is None else len(wanted)):
            break
    return list(found.values()) if keys is None else [found[k] for k in keys if k in found]


def contact_sheet(
    domain: str,
    synthetic,
    refined,
    real_test,
    keys: Sequence[str],
    *,
    height: int = 96,
    real_labeled: bool = True,
) -> np.ndarray | None:
    """Rows: synthetic and refined samples of ``keys``, then real test samples; RGB uint8."""
    if not keys:
        return None
    rows = [
        _samples(synthetic, domain, keys, len(keys)),
        _samples(refined, domain, keys, len(keys)),
        _samples(real_test, domain, None, len(keys), labels=real_labeled),
    ]
    tiles = [[sheets.tile(s, domain, height=height) for s in row] for row in rows]
    return sheets.grid(tiles, titles=["synthetic", "refined", "real (test)"])
