"""How much say each term of SPIGAN's objective has over the generator: the gradient each
weighted term sends into G's weights, during the runs ``benchmarks/experiments/evaluate.py`` makes.

Issue 15's target "SPIGAN with privileged information ≥ SPIGAN without it" has not been met at
CPU scale: with and without P, six GANs an arm read within each other's spread. Before another
weight is tried, this measures whether the privileged term moves G at all. SPIGAN's generator
minimises α·L_GAN + β·L_T + γ·L_P + δ·L_perc (``train.spigan``); each weighted term's gradient
with respect to G's parameters is taken alone (``torch.autograd.grad``, D, T and P held fixed, as
in G's step), and its L2 norm, averaged over ``BATCHES`` synthetic batches, is that term's pull
on G. A term whose pull is a few percent of the others' cannot change what G learns, whatever
its loss value says. Since the pull is linear in the weight, the record also gives the γ at
which P would pull as hard as T: γ_equal = γ · |∇β·L_T| / |∇γ·L_P|.

Runs: the street experiments' SPIGAN (``--preset small``, 64x128 frames, 300 synthetic and
300 real, the data seeds of ``streets-spigan``), trained ``STEPS`` iterations through the
loop's own iteration (``train.loop``) with the recipe's γ = 0.1, measured before the first
adversarial iteration and every ``EVERY`` after, for each GAN seed, without and with
``pretrain_task_steps: 300`` (T and P trained alone first, as
``streets-spigan-750-pretrain-task``).

    python -m benchmarks.experiments.spigan_terms [--quick] [--seeds 0 1 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import EXPERIMENT_RESULTS as RESULTS
from benchmarks.common import SEEDS, exit_on_sigterm, procedural_shards, write_result

NAME = "spigan_terms"
DATA_SEEDS = (6301, 6302)  # streets-spigan's synthetic and unlabeled real frames
SIZE = (64, 128)
FRAMES = 300
STEPS = 300
EVERY = 100
BATCHES = 4
PRETRAIN = (0, 300)
TERMS = ("gan", "task", "privileged", "perceptual")


def term_pulls(spigan, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """‖∇_G (weight · term)‖₂ of each weighted term of G's objective on one synthetic batch, D,
    T and P held fixed (G's step without its update); terms with weight 0 are left out."""
    c = spigan.config
    weights = {"gan": c.alpha, "task": c.beta, "privileged": c.gamma, "perceptual": c.delta}
    generator = spigan.modules["generator"]
    params = [p for p in generator.parameters() if p.requires_grad]
    pulls = {}
    with spigan.holding_others():
        generated = generator(batch["image"])
        d = spigan.modules["discriminator"](generated)
        terms = spigan.generator_objective(batch, generated, d)
        for name, weight in weights.items():
            if weight and name in terms:
                grads = torch.autograd.grad(weight * terms[name], params, retain_graph=True)
                pulls[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads)))
    return pulls


def mean_pulls(spigan, batches: int) -> dict[str, float]:
    """``term_pulls`` averaged over ``batches`` fresh synthetic batches."""
    runs = [term_pulls(spigan, spigan._synthetic()) for _ in range(batches)]
    return {k: sum(r[k] for r in runs) / batches for k in runs[0]}


def run(
    synthetic: list[str],
    real: list[str],
    *,
    seed: int,
    pretrain: int,
    steps: int,
    every: int,
    batches: int,
) -> list[dict[str, Any]]:
    """Train one SPIGAN for ``pretrain`` + ``steps`` iterations; the pulls at each probe."""
    from train.loop import _iteration
    from train.spigan import SPIGAN, load_config

    config = load_config(
        preset="small", seed=seed, steps=steps, pretrain_task_steps=pretrain, decode_workers=0
    )
    spigan = SPIGAN(config, synthetic=synthetic, real=real, device=torch.device("cpu"))
    schedule = config.schedule
    probes = []
    for iteration in range(schedule.total):
        adversarial = iteration - schedule.pretrain
        if adversarial >= 0 and adversarial % every == 0:
            probes.append({"iteration": adversarial, **mean_pulls(spigan, batches)})
        _iteration(spigan, schedule, schedule.phase(iteration))
    probes.append({"iteration": steps, **mean_pulls(spigan, batches)})
    return probes


def summarise(probes: list[dict[str, Any]], gamma: float) -> dict[str, Any]:
    """Per probe iteration, each term's pull (mean over runs) and P's pull as a share of T's."""
    out: dict[str, Any] = {}
    for iteration in sorted({p["iteration"] for p in probes}):
        at = [p for p in probes if p["iteration"] == iteration]
        pulls = {t: float(np.mean([p[t] for p in at])) for t in TERMS if t in at[0]}
        ratios = [p["privileged"] / p["task"] for p in at if p["task"] > 0]
        out[str(iteration)] = {
            "pull": {t: round(v, 5) for t, v in pulls.items()},
            "privileged_over_task": round(float(np.mean(ratios)), 4),
            "privileged_over_task_runs": [round(r, 4) for r in ratios],
            "privileged_share": round(pulls["privileged"] / sum(pulls.values()), 4),
            "gamma_equal_to_task": round(gamma / float(np.mean(ratios)), 3),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=RESULTS, help="records go to DIR")
    args = parser.parse_args(argv)
    frames, steps, every, batches = (24, 4, 2, 1) if args.quick else (FRAMES, STEPS, EVERY, BATCHES)
    pretrains = (0, 4) if args.quick else PRETRAIN
    from train.spigan import load_config

    gamma = load_config(preset="small").gamma
    started = time.perf_counter()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="spigan-terms-") as tmp:
        synthetic = procedural_shards(
            Path(tmp) / "syn", "scene", "synthetic", frames, seed=DATA_SEEDS[0], size=SIZE
        )
        real = procedural_shards(
            Path(tmp) / "real", "scene", "real", frames, seed=DATA_SEEDS[1], size=SIZE
        )
        for pretrain in pretrains:
            probes = []
            for seed in args.seeds:
                t0 = time.perf_counter()
                probes += run(
                    synthetic,
                    real,
                    seed=seed,
                    pretrain=pretrain,
                    steps=steps,
                    every=every,
                    batches=batches,
                )
                print(
                    f"pretrain_task_steps {pretrain}, seed {seed}: {time.perf_counter() - t0:.0f} s"
                )
            figures[f"pretrain_task_steps_{pretrain}"] = summarise(probes, gamma)
            print(figures[f"pretrain_task_steps_{pretrain}"])
    settings = {
        "preset": "small",
        "gamma": gamma,
        "frames": frames,
        "image_size": f"{SIZE[0]}x{SIZE[1]}",
        "data_seeds": list(DATA_SEEDS),
        "steps": steps,
        "probe_every": every,
        "batches_per_probe": batches,
        "pretrain_task_steps": list(pretrains),
        "seeds": args.seeds,
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "measure": "mean over batches of the L2 norm of d(weight * term)/d(generator weights), "
        "D, T and P held fixed; pulls averaged over GAN seeds",
    }
    write_result(NAME + ("-quick" if args.quick else ""), figures, settings, results=args.out)
    return figures


if __name__ == "__main__":
    exit_on_sigterm()
    main()
