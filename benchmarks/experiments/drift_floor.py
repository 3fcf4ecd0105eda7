"""What label drift reads on a change of appearance alone: the floor of the drift instrument.

``refinery evaluate`` measures label drift with a task network trained on the synthetic set:
its disagreement between a synthetic image and the refined one. Refinement is meant to change
appearance only, so drift is meant to show changed content. But the instrument also answers to
appearance it never saw in training, and how much it does is measurable here: the procedural
simulators render the *same* geometry (the same labels) in two looks, the synthetic and the
"real" one (``refinery.sim``: one geometry stream for both variants). A refiner that turned
each synthetic sample into exactly its real-variant twin would have changed nothing the labels
describe, and the drift the instrument reads on those pairs is its floor: no refiner can be
shown to drift less than it with this instrument.

For each domain with an appearance-robust instrument (gaze, scene) and each seed 0 1 2, the
synthetic-trained network (plain) and the appearance-robust one (trained with
``downstream.vary_appearance``), the very networks ``evaluate`` trains, are fit on the synthetic
set and read on (synthetic, real-variant twin) pairs. For gaze the appearance-robust network is
also trained ``ROBUST_EPOCHS`` epochs (``evaluate --robust-epochs``, as ``real_gaze_robust-48``
reads real MPIIGaze with): random looks make its task harder, and an under-trained estimator's
own error is read as drift. Beside each floor, each network's error against the twins' labels
(the task's primary metric): the instrument still reads geometry on the other look. Sets and
sizes follow the records they explain: gaze as ``real_gaze`` (2,000 35x55 eyes, the task's own
epochs), scene as the street experiments of ``benchmarks/experiments/evaluate.py`` (300 frames at 64x128,
fcn8s-small, 8 epochs, batch 8).

    python -m benchmarks.experiments.drift_floor [--quick] [--domains gaze,scene] [--results DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import EXPERIMENT_RESULTS as RESULTS
from benchmarks.common import SEEDS, exit_on_sigterm, write_result

ROBUST_EPOCHS = 48  # the longer-trained appearance-robust gaze estimator (6x the task's 8)
DOMAINS: dict[str, dict[str, Any]] = {
    # as real_gaze: 2,000 procedural eyes (data seed 1), evaluate's defaults for the task
    "gaze": {
        "count": 2000, "data_seed": 1, "size": None, "epochs": 0, "batch_size": 0,
        "robust_epochs": ROBUST_EPOCHS,
    },
    # as streets-sggan / streets-spigan: their synthetic frames (data seed 6301), 64x128
    "scene": {
        "count": 300, "data_seed": 6301, "size": (64, 128), "epochs": 8, "batch_size": 8,
        "robust_epochs": None,
    },
}  # fmt: skip
QUICK = {"count": 16, "epochs": 1}  # and robust_epochs 2 where a domain has them


def twins(root: Path, domain: str, count: int, *, seed: int, size) -> tuple[list[str], list[str]]:
    """``count`` synthetic samples and their real-variant twins (same geometry, same labels),
    written as shards under ``root``, the twins under the synthetic keys so they pair. Every
    label component is compared first (the JSON but for its ``variant``): a twin whose labels
    differ is an error, not a pair."""
    from refinery import sim
    from refinery.samples import encode_sample, spec
    from refinery.shards import write_shards

    options = {} if size is None else {"height": size[0], "width": size[1]}
    synthetic = sim.generate(domain, "synthetic", count, seed=seed, **options)
    real = sim.generate(domain, "real", count, seed=seed, **options)
    pairs = [(s, r) for s, r in zip(synthetic, real, strict=True)]
    images = spec(domain).images
    for s, r in pairs:
        for component, value in s.items():
            if component == "__key__" or component in images:
                continue
            theirs = r[component]
            same = (
                {k: v for k, v in value.items() if k != "variant"}
                == {k: v for k, v in theirs.items() if k != "variant"}
                if component == "json"
                else np.array_equal(value, theirs)
            )
            if not same:
                raise RuntimeError(
                    f"{domain} {s['__key__']}: the real variant's {component} differs"
                )
        r["__key__"], r["json"] = s["__key__"], s["json"]  # the synthetic sample's, now verified
    synthetic_urls, twin_urls = (
        write_shards(
            (encode_sample(pair[index], domain) for pair in pairs),
            str(root / f"{domain}-{name}-%06d.tar"),
            shard_size=min(500, count),
        )
        for index, name in enumerate(("synthetic", "twins"))
    )
    return synthetic_urls, twin_urls


def floor(domain: str, settings: dict[str, Any], seeds, work: Path) -> dict[str, Any]:
    from train.evaluation import downstream

    began = time.perf_counter()
    synthetic_urls, twin_urls = twins(
        work, domain, settings["count"], seed=settings["data_seed"], size=settings["size"]
    )
    task = downstream.get_task(domain)
    synthetic = task.load(synthetic_urls)
    twin = task.load(twin_urls, **task.options(synthetic))
    base = downstream.TaskConfig(
        domain=domain, epochs=settings["epochs"], batch_size=settings["batch_size"]
    )
    kinds = {"plain": base, "robust": replace(base, appearance=True)}
    if settings["robust_epochs"]:
        kinds["robust_long"] = replace(base, appearance=True, epochs=settings["robust_epochs"])
    drift: dict[str, list[float]] = {kind: [] for kind in kinds}
    error: dict[str, list[float]] = {kind: [] for kind in kinds}
    for seed in seeds:
        for kind, config in kinds.items():
            model = downstream.fit(task, synthetic, replace(config, seed=seed), device="cpu")
            drift[kind].append(task.label_drift(model, synthetic, twin))
            error[kind].append(float(task.test(model, twin)[0][task.metric.key]))
            print(
                f"{domain} seed {seed}: {kind} drift {drift[kind][-1]:.4f} {task.drift.unit}, "
                f"{task.metric.label} on the twins {error[kind][-1]:.4f}"
            )

    def summary(values: list[float]) -> dict[str, Any]:
        return {"mean": float(np.mean(values)), "std": float(np.std(values)), "runs": values}

    return {
        "unit": task.drift.unit,
        "pairs": len(synthetic),
        "labels_identical": synthetic.fingerprints == twin.fingerprints,  # checked when made
        **{kind: {**summary(drift[kind]), "epochs": kinds[kind].epochs} for kind in kinds},
        "twin_metric": {
            "key": task.metric.key,
            "unit": task.metric.unit,
            **{kind: summary(error[kind]) for kind in kinds},
        },
        "seconds": round(time.perf_counter() - began, 1),
    }


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sets: a smoke run")
    parser.add_argument("--domains", default=",".join(DOMAINS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [d.strip() for d in args.domains.split(",") if d.strip()]
    unknown = sorted(set(names) - set(DOMAINS))
    if unknown or not names:
        parser.error(f"unknown domain(s) {unknown or names}; known: {', '.join(DOMAINS)}")
    seeds = (0,) if args.quick else SEEDS
    figures, chosen = {}, {}
    for name in names:
        settings = {**DOMAINS[name], **(QUICK if args.quick else {})}
        if args.quick and settings["robust_epochs"]:
            settings["robust_epochs"] = 2
        chosen[name] = settings
        with tempfile.TemporaryDirectory(prefix=f"drift-floor-{name}-") as tmp:
            figures[name] = floor(name, settings, seeds, Path(tmp))
    write_result(
        "drift_floor",
        figures,
        {
            "seeds": list(seeds),
            "quick": args.quick,
            "domains": {k: {**v, "size": v["size"] and list(v["size"])} for k, v in chosen.items()},
            "measure": (
                "evaluate's label drift (gaze: mean angle between predictions, deg; scene: "
                "1 - mean IoU between predicted segmentations) of the synthetic-trained task "
                "network, plain and appearance-robust (and for gaze the appearance-robust one "
                "trained robust_epochs), between each synthetic sample and the simulator's "
                "real-variant rendering of the same geometry (identical labels); twin_metric: "
                "each network's primary metric on the twins against their labels"
            ),
        },
        results=args.results,
    )
    return figures


if __name__ == "__main__":
    exit_on_sigterm()
    main()
