"""Does refinement help the task? The whole experiment, through the ``refinery`` command.

For each experiment below, exactly what a user runs (``python -m refinery ...`` as
subprocesses, each command line recorded with the work directory written ``$WORK``):

1. ``refinery synth`` four sets, each from its own seed so that no two share geometry:
   synthetic (labeled: the GAN's synthetic domain, refined, and the "synthetic" training set),
   real unlabeled (the GAN's real domain), real train (labeled: the "real" upper bound) and
   real test;
then, for each seed s (0 1 2; 0-5 for the SPIGAN pairs at 750 frames and with self_reg, see below):

2. ``refinery train <method>`` on synthetic + real unlabeled with ``--config`` giving
   ``seed: s`` and the experiment's overrides (where the preset alone does not fit two CPU
   cores), all recorded;
3. ``refinery export`` the generator, ``refinery refine`` the synthetic shards with it (keys,
   labels and file names kept; refinery.json and stats added);
4. ``refinery evaluate DOMAIN --seeds s`` trains the domain's default task network on
   synthetic, refined and real train, tests each on real test, and writes ``report.json`` and
   ``report.html``.

So run s is a GAN trained with seed s, scored by task networks trained with seed s, and the
mean ± std over runs holds the GAN's variance as well as the task network's. A GAN trained
once (as before) hid the larger of the two. The record keeps every run's figures; the sample
report is run 0's.

| experiment       | domain | refiner                          | task network          |
|------------------|--------|----------------------------------|-----------------------|
| ``gaze-simgan``    | gaze   | SimGAN, ``--preset small``        | gaze-estimator-small  |
| ``hand-simgan``    | hand   | SimGAN, ``--preset hand`` reduced | hand-hourglass-small  |
| ``streets-sggan``  | scene  | SG-GAN, ``--preset small``        | fcn8s-small           |
| ``streets-spigan`` | scene  | SPIGAN, ``--preset small``        | fcn8s-small           |

Ablations vary one setting each, with the same data seeds and task schedule. Eight keep the
data and budget: ``gaze-simgan-zeros`` pads the refiner with zeros (the paper's TF "SAME")
instead of the recipes' reflect, ``gaze-simgan-noise`` adds a noise channel the gaze recipe
lacks, ``gaze-simgan-ema`` exports a moving average of the refiner's weights (β = 0.995)
instead of its last iterate, ``gaze-simgan-diffaugment`` shows the discriminator every image
through DiffAugment's random transforms (``discriminator_augment``), ``gaze-simgan-r1``
penalises the discriminator's gradient on real eyes (``discriminator_r1: 0.01``, the weight
``real_gaze`` measured on MPIIGaze), ``hand-simgan-nonoise``
drops the noise channel the hand recipe has, ``streets-spigan-nopi`` trains SPIGAN with γ = 0
(no privileged depth network) and ``streets-spigan-gamma1`` with γ = 1 (ten times the paper's
weight on it).
``gaze-simgan-1200`` doubles the adversarial iterations, and ``gaze-simgan-1200-ema`` exports
its moving average as well. Five change how much data there is
(each larger set starts with the smaller one's samples): ``gaze-simgan-2k`` has 2,000 eyes in
every set (1,000 test), ``gaze-simgan-2k-real`` 2,000 real eyes for the discriminator alone,
``gaze-simgan-2k-synthetic`` 2,000 synthetic eyes alone,
and ``streets-spigan-750`` / ``streets-spigan-nopi-750`` are SPIGAN with and without
privileged information at 750 frames per set (375 test). ``streets-spigan-750-pretrain-task`` /
``streets-spigan-nopi-750-pretrain-task`` are that pair again with T (and P) trained alone on
the synthetic labels (and depth) for 300 iterations before G starts (``pretrain_task_steps``),
and ``streets-spigan-750-pretrain-task-gamma3`` is the first of them with γ = 3, where P pulls on
G about as hard as T (``benchmarks/experiments/spigan_terms``). ``streets-spigan-selfreg`` /
``streets-spigan-nopi-selfreg`` are SPIGAN with and without privileged information at 300 frames
whose G is SG-GAN's small U-Net, held to the synthetic frame's 4×4 block means
(``self_reg_weight`` 10, ``psi: low-pass``), six GANs each, and ``streets-spigan-selfreg-gamma3``
the first of them with γ = 3, and ``streets-spigan-nopi-selfreg-resize`` the second with its U-Net
upsampling by resize and convolution. ``streets-spigan-selfreg1`` / ``streets-spigan-nopi-selfreg1``
are the held-scene pair with G held ten times less (``self_reg_weight`` 1), where P's depth, not
the self-regularisation, would have to keep the scene.

SPIGAN's own task network T is not what is scored here: its generator refines the synthetic
shards like SG-GAN's does and a fresh ``fcn8s-small`` is trained on them, so both scene
experiments answer the same question (``train.spigan.evaluate_task`` scores T itself). The two scene
experiments use the same data seeds, so their synthetic and real rows are the same networks
trained on the same frames (equal on one machine; a check on the run).

Each writes ``benchmarks/experiments/results/evaluate_<experiment>.json`` (a compact summary of the report:
no per-sample values) and copies the self-contained ``report.html`` (images embedded) to
``benchmarks/experiments/results/reports/<experiment>.html``, the sample report the README links.

Sizes (FULL), planned for about 40 minutes on an otherwise idle 2-core CPU for all four with
one GAN and 3 evaluate seeds; with one GAN per seed each GAN trains three times (the evaluate
work is the same: 3 sets × 3 seeds), about 100 minutes for the first six experiments; the
ablations (two SPIGAN pairs at 750 frames with six GANs each, ~65 min a pair, a third arm of
six, and six held-scene arms at 300 frames, ~18 min each) bring ``make bench``'s run of this
module to about nine hours (the size
ablations' task networks train on 2.5× the samples). The machine they were planned on was
shared, so wall times there meant little; costs were taken as single-thread CPU time
(``time.process_time`` under ``torch.set_num_threads(1)``: what an idle core takes), and two
threads on an idle machine are taken to need 1/1.5 of it (a retired SimGAN benchmark measured
0.55 s per SimGAN-small iteration with two threads against 0.78 s of one-thread CPU):

| work (1 thread)                                       | CPU time                        |
|-------------------------------------------------------|---------------------------------|
| SimGAN small, gaze 35×55, batch 32                    | 0.78 s per iteration            |
| SimGAN small refiner + discriminator, hand 64×64, b16 | 1.55 s per iteration            |
| SG-GAN small, 64×128, batch 4                         | 0.12 s per iteration            |
| SPIGAN small, 64×64 crops, batch 4                    | 0.48 s per iteration            |
| gaze-estimator-small, batch 32                        | 5.0 ms per sample-epoch (2.3 ms with 2 threads) |
| hand-hourglass-small, 64×64, batch 32                 | 6.9 ms per sample-epoch         |
| fcn8s-small, 64×128, batch 8                          | 14.4 ms per frame-epoch         |
| every command: interpreter and torch start-up         | ~4 s (8 commands)               |
| ``refinery export`` (ONNX dynamo export and check)    | ~10 s                           |

From the ``--quick`` runs the fixed part is about 50 s per experiment. Per experiment
(evaluate = 3 sets × 3 seeds × samples × epochs × cost, plus predictions):

- gaze-simgan (~9.5 min): SimGAN small, 100 + 50 pretraining updates and the preset's own
  600 iterations (~6 min; 300 took ~3.3 min and closed 20% of the gap against 42%); 800
  samples per training set, 400 real test; the estimator's own 8 epochs: 9 × 800 × 8 × 2.3 ms
  ≈ 2.2 min.
- hand-simgan (~14 min): crops rendered at 64 px, not the simulator's 128: the task network
  sees a 64×64 input whatever the crop (nearest resize), so a 128-px refiner would cost 4×
  per update and only a quarter of its refined pixels would survive the resize. Errors and
  PCK are therefore in pixels of the 64-px crop (a 20-px threshold is a third of the crop).
  The paper recipe (10 ResNet blocks of 7×7 convs at 224 px, ~1.8 s per forward) is reduced
  with ``--config``: the small refiner and discriminator (a 16×16 patch map at 64 px), batch
  16, Adam 2e-4 (the paper's SGD 1e-3 barely moves in a few hundred CPU updates), λ by the
  recipe's own rule 0.5·(H·W)/(h·w) = 8, 100 + 50 pretraining updates and 300 iterations
  (~6 min). 800 samples per training set, 400 real test, the hourglass's own 12 epochs:
  9 × 800 × 12 × 4.6 ms ≈ 6.6 min.
- streets-sggan (~6 min), streets-spigan (~7 min): 64×128 frames (FCN8s needs sides that are
  multiples of 32); SG-GAN small for 600 iterations (~50 s: cheap, so more than its 400),
  SPIGAN small for its 300 (~1.6 min); 300 frames per training set, 150 real test. The task's
  15 epochs at batch 32 would give 150 updates in 9 × 300 × 15 × 10 ms ≈ 7 min; 8 epochs at
  batch 8 give 304 updates in ≈ 3.6 min. An earlier measurement of fcn8s-small with two
  threads on the shared machine gave ~25 ms per frame-epoch: at that cost each scene
  experiment takes ~12 min and the four together ~44 min instead of ~34.

CPU scale, stated in every record: small presets, few iterations, small sets, untrained VGG19
features for SPIGAN's perceptual loss (no weights can be downloaded here). The numbers are
recorded whatever they show.

    python -m benchmarks.experiments.evaluate [--quick] [--experiments gaze-simgan,hand-simgan,...]
                                  [--out DIR] [--keep DIR] [--seeds 0 1 2] [--device DEV]

``--quick`` is a smoke run (tiny sets, a few updates, one seed): well under a minute per
experiment, most of it the start-up of eight commands. ``--out DIR`` writes the records and
reports under DIR instead of ``benchmarks/experiments/results``; ``--keep DIR`` keeps every shard, run,
engine, log and the full report there.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common
from benchmarks.common import SEEDS
from train.evaluation.evaluate import gap_closed, summary

SETS = ("synthetic", "refined", "real")
PCK_AT = (5, 10, 20)  # crop pixels
SHARD_SIZE = 500
LOG_TAIL = 40  # lines of a failed command's output to show
REPORT_LIMIT = 1_000_000  # bytes: the sample reports are committed and linked from the README


@dataclass(frozen=True)
class Sizes:
    """Samples per set; the four sets come from four data seeds."""

    synthetic: int
    real_unlabeled: int
    real_train: int
    real_test: int


@dataclass(frozen=True)
class Experiment:
    name: str
    domain: str
    method: str  # simgan | sggan | spigan
    preset: str
    image_size: str | None  # refinery synth --size (None: the simulator's default)
    sizes: Sizes
    data_seeds: tuple[int, int, int, int]  # synthetic, real unlabeled, real train, real test
    steps: int
    overrides: dict[str, Any] = field(default_factory=dict)  # --config YAML on the preset
    epochs: int | None = None  # None: the task's own
    batch_size: int | None = None  # None: the task's own
    cpu_scale: str = ""
    seeds: tuple[int, ...] = SEEDS  # one GAN per seed when --seeds is not given


FULL: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            name="gaze-simgan",
            domain="gaze",
            method="simgan",
            preset="small",
            image_size=None,  # 35x55
            sizes=Sizes(synthetic=800, real_unlabeled=800, real_train=800, real_test=400),
            data_seeds=(6101, 6102, 6103, 6104),
            steps=600,
            # 800 samples at batch 64 or 32 leave some seeds on the mean-direction plateau
            # (~23°, chance) after 8 epochs; at 16 none of 0-2 stayed there (6.8° real -> real)
            batch_size=16,
            cpu_scale=(
                "SimGAN small preset (32-map refiner, 3 ResNet blocks) for its 600 "
                "iterations; 800 samples per training set (the paper: 1.2M synthetic, "
                "214k real); the gaze estimator at batch 16 instead of 64 (more updates on 800)"
            ),
        ),
        Experiment(
            name="hand-simgan",
            domain="hand",
            method="simgan",
            preset="hand",
            image_size="64",
            sizes=Sizes(synthetic=800, real_unlabeled=800, real_train=800, real_test=400),
            data_seeds=(6201, 6202, 6203, 6204),
            steps=300,
            overrides={
                "refiner": "simgan-refiner-small",
                "discriminator": "simgan-discriminator-small",
                "batch_size": 16,
                "pretrain_refiner_steps": 100,
                "pretrain_discriminator_steps": 50,
                # the recipe's rule, 0.5·(H·W)/(h·w): 64×64 crops, a 16×16 patch map
                "self_reg_weight": 8.0,
                "buffer_size": 1600,
                "refiner_optimiser": {"name": "adam", "lr": 0.0002, "betas": [0.5, 0.999]},
                "discriminator_optimiser": {"name": "adam", "lr": 0.0002, "betas": [0.5, 0.999]},
                "shuffle_buffer": 400,
                "checkpoint_every": 250,
                "sample_every": 250,
            },
            cpu_scale=(
                "hand preset reduced to train on 2 CPU cores: the small refiner and "
                "discriminator instead of the paper's (10 blocks of 7x7 convs at 224 px), 64-px "
                "crops instead of 128 (the task network's input is 64x64), batch 16, Adam 2e-4 "
                "instead of SGD 1e-3, 100 + 50 pretraining updates and 300 iterations instead "
                "of 1000 + 200 and 10,000; 800 samples per training set"
            ),
        ),
        Experiment(
            name="streets-sggan",
            domain="scene",
            method="sggan",
            preset="small",
            image_size="64x128",
            sizes=Sizes(synthetic=300, real_unlabeled=300, real_train=300, real_test=150),
            data_seeds=(6301, 6302, 6303, 6304),
            steps=600,
            epochs=8,
            batch_size=8,
            cpu_scale=(
                "SG-GAN small preset (16-map U-Net, batch 4) for 600 iterations on 64x128 "
                "frames (the paper: 256x512, 100k+); 300 frames per training set; fcn8s-small "
                "for 8 epochs (batch 8) instead of the task's 15"
            ),
        ),
        Experiment(
            name="streets-spigan",
            domain="scene",
            method="spigan",
            preset="small",
            image_size="64x128",
            sizes=Sizes(synthetic=300, real_unlabeled=300, real_train=300, real_test=150),
            data_seeds=(6301, 6302, 6303, 6304),  # the same frames as streets-sggan
            steps=300,
            epochs=8,
            batch_size=8,
            cpu_scale=(
                "SPIGAN small preset (64x64 crops, batch 4) for its 300 iterations on 64x128 "
                "frames, untrained VGG19 features for the perceptual loss (no weights can be "
                "downloaded here); 300 frames per training set; fcn8s-small for 8 epochs at "
                "batch 8 instead of the task's 15"
            ),
        ),
    )
}

# Ablations: an experiment with one change, on the same data, seeds and budget, so its row
# sits beside the experiment it varies.
FULL["gaze-simgan-zeros"] = replace(
    FULL["gaze-simgan"],
    name="gaze-simgan-zeros",
    overrides={"refiner_padding": "zeros"},
    cpu_scale=FULL["gaze-simgan"].cpu_scale
    + "; ablation: the refiner pads with zeros (the paper's TF SAME), not the recipe's reflect",
)
FULL["gaze-simgan-noise"] = replace(
    FULL["gaze-simgan"],
    name="gaze-simgan-noise",
    overrides={"refiner_noise": 1},
    cpu_scale=FULL["gaze-simgan"].cpu_scale
    + "; ablation: one input channel of seeded N(0,1) noise the refiner modulates",
)
FULL["gaze-simgan-ema"] = replace(
    FULL["gaze-simgan"],
    name="gaze-simgan-ema",
    overrides={"refiner_ema": 0.995},
    cpu_scale=FULL["gaze-simgan"].cpu_scale
    + "; ablation: the exported refiner is a moving average of its weights (beta 0.995, "
    "a horizon of ~200 of its 1,200 adversarial updates), not the last iterate",
)
FULL["gaze-simgan-diffaugment"] = replace(
    FULL["gaze-simgan"],
    name="gaze-simgan-diffaugment",
    overrides={"discriminator_augment": "brightness,contrast,translation,cutout"},
    cpu_scale=FULL["gaze-simgan"].cpu_scale
    + "; ablation: DiffAugment, every image the discriminator sees (real and refined) "
    "randomly brightened, contrast-scaled, shifted and cut out, differentiably",
)
FULL["gaze-simgan-r1"] = replace(
    FULL["gaze-simgan"],
    name="gaze-simgan-r1",
    overrides={"discriminator_r1": 0.01},
    cpu_scale=FULL["gaze-simgan"].cpu_scale
    + "; ablation: an R1 penalty on the discriminator (discriminator_r1: 0.01, the weight "
    "measured on real MPIIGaze eyes by real_gaze)",
)
FULL["gaze-simgan-2k"] = replace(
    FULL["gaze-simgan"],
    name="gaze-simgan-2k",
    sizes=Sizes(synthetic=2000, real_unlabeled=2000, real_train=2000, real_test=1000),
    cpu_scale=(
        "SimGAN small preset (32-map refiner, 3 ResNet blocks) for its 600 iterations; 2,000 "
        "samples per training set and 1,000 test eyes (the paper: 1.2M synthetic, 214k real); "
        "the gaze estimator at batch 16 instead of 64; ablation: 2.5x the samples of "
        "gaze-simgan in every set (its 800 are the first 800 of these), the same GAN budget "
        "and task schedule: how much of the per-seed spread is the task network's"
    ),
)
FULL["gaze-simgan-2k-real"] = replace(
    FULL["gaze-simgan"],
    name="gaze-simgan-2k-real",
    sizes=Sizes(synthetic=800, real_unlabeled=2000, real_train=800, real_test=400),
    cpu_scale=FULL["gaze-simgan"].cpu_scale
    + "; ablation: 2,000 unlabeled real eyes for the discriminator instead of 800 (the first "
    "800 are gaze-simgan's), every other set as gaze-simgan: how much of gaze-simgan-2k's "
    "gain is the real pool's",
)
FULL["gaze-simgan-2k-synthetic"] = replace(
    FULL["gaze-simgan"],
    name="gaze-simgan-2k-synthetic",
    sizes=Sizes(synthetic=2000, real_unlabeled=800, real_train=800, real_test=400),
    cpu_scale=FULL["gaze-simgan"].cpu_scale
    + "; ablation: 2,000 synthetic eyes (the GAN's synthetic pool, refined and scored, the first "
    "800 are gaze-simgan's) instead of 800, every real set as gaze-simgan: how much of "
    "gaze-simgan-2k's gain is the synthetic set's",
)
FULL["gaze-simgan-1200"] = replace(
    FULL["gaze-simgan"],
    name="gaze-simgan-1200",
    steps=1200,
    cpu_scale=FULL["gaze-simgan"].cpu_scale.replace(
        "for its 600 iterations", "for 1,200 iterations"
    )
    + "; ablation: twice the adversarial iterations (the recipe's 600), as real_gaze --steps 1200",
)
# The two changes that lifted gaze-simgan's weakest GAN most, together: twice the iterations (its
# seeds 49%, 47%, 67% of the gap) and the exported moving average (seed 0 from 16% to 25%).
FULL["gaze-simgan-1200-ema"] = replace(
    FULL["gaze-simgan-1200"],
    name="gaze-simgan-1200-ema",
    overrides={"refiner_ema": 0.995},
    cpu_scale=FULL["gaze-simgan-1200"].cpu_scale
    + "; and the exported refiner is a moving average of its weights (beta 0.995), not the last "
    "iterate",
)
FULL["hand-simgan-nonoise"] = replace(
    FULL["hand-simgan"],
    name="hand-simgan-nonoise",
    overrides={**FULL["hand-simgan"].overrides, "refiner_noise": 0},
    cpu_scale=FULL["hand-simgan"].cpu_scale
    + "; ablation: no noise channel (the paper's refiner), not the hand recipe's one",
)
FULL["streets-spigan-nopi"] = replace(
    FULL["streets-spigan"],
    name="streets-spigan-nopi",
    overrides={"gamma": 0.0},
    cpu_scale=FULL["streets-spigan"].cpu_scale
    + "; ablation: gamma 0, no privileged depth network (SPIGAN without PI)",
)
FULL["streets-spigan-gamma1"] = replace(
    FULL["streets-spigan"],
    name="streets-spigan-gamma1",
    overrides={"gamma": 1.0},
    cpu_scale=FULL["streets-spigan"].cpu_scale
    + "; ablation: gamma 1.0 instead of the paper's 0.1 (with depth scaled to [0, 1] over "
    "100 m, gamma 0.1 makes the privileged term ~2% of the generator's objective)",
)
# The privileged-information comparison: three GANs per arm left the two arms 0.007 mIoU apart,
# inside the spread of either, so these two train six (seeds 0-5; 0-2 are the runs before).
FULL["streets-spigan-750"] = replace(
    FULL["streets-spigan"],
    name="streets-spigan-750",
    sizes=Sizes(synthetic=750, real_unlabeled=750, real_train=750, real_test=375),
    seeds=(0, 1, 2, 3, 4, 5),
    cpu_scale=FULL["streets-spigan"].cpu_scale.replace(
        "300 frames per training set", "750 frames per training set"
    )
    + "; ablation: 2.5x the frames of streets-spigan in every set (375 test frames; its 300 "
    "are the first 300 of these), the same GAN budget and task schedule, six GANs (seeds "
    "0-5) instead of three",
)
FULL["streets-spigan-nopi-750"] = replace(
    FULL["streets-spigan-750"],
    name="streets-spigan-nopi-750",
    overrides={"gamma": 0.0},
    cpu_scale=FULL["streets-spigan-750"].cpu_scale
    + "; and gamma 0, no privileged depth network (SPIGAN without PI)",
)
# Both arms again with T and P trained alone on the synthetic labels and depth for 300 iterations
# before G starts: without ImageNet weights they start random, and G follows them from step 1.
FULL["streets-spigan-750-pretrain-task"] = replace(
    FULL["streets-spigan-750"],
    name="streets-spigan-750-pretrain-task",
    overrides={"pretrain_task_steps": 300},
    cpu_scale=FULL["streets-spigan-750"].cpu_scale
    + "; and 300 iterations of T and P alone on the synthetic labels and depth first "
    "(pretrain_task_steps: 300)",
)
FULL["streets-spigan-nopi-750-pretrain-task"] = replace(
    FULL["streets-spigan-nopi-750"],
    name="streets-spigan-nopi-750-pretrain-task",
    overrides={"gamma": 0.0, "pretrain_task_steps": 300},
    cpu_scale=FULL["streets-spigan-nopi-750"].cpu_scale
    + "; and 300 iterations of T alone on the synthetic labels first (pretrain_task_steps: 300)",
)
# The pretrained P again with 30 times the paper's weight: benchmarks/spigan_terms measures the
# gradient each weighted term sends into G, and with T and P pretrained, P's at γ = 0.1 is 1-5% of
# T's over the run (γ 2 to 8 would make them equal, 3.2 at the end); streets-spigan-gamma1 tried
# γ = 1 with a P that had not learned depth yet.
FULL["streets-spigan-750-pretrain-task-gamma3"] = replace(
    FULL["streets-spigan-750-pretrain-task"],
    name="streets-spigan-750-pretrain-task-gamma3",
    overrides={"pretrain_task_steps": 300, "gamma": 3.0},
    cpu_scale=FULL["streets-spigan-750-pretrain-task"].cpu_scale
    + "; and gamma 3.0 instead of the paper's 0.1 (P's pull on the generator of one size with "
    "T's, as benchmarks/spigan_terms measures it)",
)

# SPIGAN with its scene held (train/spigan.py): every arm above refines street frames into haze
# and stripes, since L_perc on untrained VGG19 features holds nothing against the adversarial
# term. These two give G SG-GAN's small U-Net and a self-regularisation on 4x4 block means (λ 10),
# with and without P, six GANs each at streets-spigan's 300 frames.
HELD_SCENE = {"generator": "sggan-generator-small", "self_reg_weight": 10.0, "psi": "low-pass"}


def _held_scene(weight: float) -> str:
    """What a held-scene arm adds to ``streets-spigan``'s CPU scale, at self_reg_weight ``weight``."""
    return (
        "; ablation: G is SG-GAN's small U-Net (sggan-generator-small) and its objective adds "
        f"{weight:g} |psi(G(x)) - psi(x)|_1 with psi the 4x4 block means (self_reg_weight "
        f"{weight:g}, psi low-pass); six GANs (seeds 0-5) instead of three"
    )


FULL["streets-spigan-selfreg"] = replace(
    FULL["streets-spigan"],
    name="streets-spigan-selfreg",
    overrides=dict(HELD_SCENE),
    seeds=(0, 1, 2, 3, 4, 5),
    cpu_scale=FULL["streets-spigan"].cpu_scale + _held_scene(HELD_SCENE["self_reg_weight"]),
)
FULL["streets-spigan-nopi-selfreg"] = replace(
    FULL["streets-spigan-selfreg"],
    name="streets-spigan-nopi-selfreg",
    overrides={**HELD_SCENE, "gamma": 0.0},
    cpu_scale=FULL["streets-spigan-selfreg"].cpu_scale
    + "; and gamma 0, no privileged depth network (SPIGAN without PI)",
)

# The held-scene arm with P again at γ = 3, where spigan_terms measured P's pull on G of one size
# with T's (γ = 0.1 leaves it at 3-6% of T's without pretraining).
FULL["streets-spigan-selfreg-gamma3"] = replace(
    FULL["streets-spigan-selfreg"],
    name="streets-spigan-selfreg-gamma3",
    overrides={**HELD_SCENE, "gamma": 3.0},
    cpu_scale=FULL["streets-spigan-selfreg"].cpu_scale
    + "; and gamma 3.0 instead of the paper's 0.1 (P's pull on G of one size with T's)",
)

# The held-scene arm without P, its U-Net upsampling by resize and convolution: the transposed
# convolutions' strides leave a dotted lattice on the refined frames (the reports' sheets).
FULL["streets-spigan-nopi-selfreg-resize"] = replace(
    FULL["streets-spigan-nopi-selfreg"],
    name="streets-spigan-nopi-selfreg-resize",
    overrides={**HELD_SCENE, "gamma": 0.0, "generator": "sggan-generator-small-resize"},
    cpu_scale=FULL["streets-spigan-nopi-selfreg"].cpu_scale
    + "; and the U-Net upsamples by nearest resize and 3x3 convolution "
    "(sggan-generator-small-resize), not transposed convolutions",
)

# The held-scene pair with G held ten times less (λ 1): at λ 10 the self-regularisation alone keeps
# the synthetic layout, which leaves P nothing to hold; here G has room to move the scene, and P's
# depth is what would keep it.
LOOSE_SCENE = {**HELD_SCENE, "self_reg_weight": 1.0}
FULL["streets-spigan-selfreg1"] = replace(
    FULL["streets-spigan-selfreg"],
    name="streets-spigan-selfreg1",
    overrides=dict(LOOSE_SCENE),
    cpu_scale=FULL["streets-spigan"].cpu_scale + _held_scene(LOOSE_SCENE["self_reg_weight"]),
)
FULL["streets-spigan-nopi-selfreg1"] = replace(
    FULL["streets-spigan-selfreg1"],
    name="streets-spigan-nopi-selfreg1",
    overrides={**LOOSE_SCENE, "gamma": 0.0},
    cpu_scale=FULL["streets-spigan-selfreg1"].cpu_scale
    + "; and gamma 0, no privileged depth network (SPIGAN without PI)",
)

_QUICK_GAN = {
    "simgan": {
        "batch_size": 8,
        "pretrain_refiner_steps": 2,
        "pretrain_discriminator_steps": 2,
        "buffer_size": 64,
        "shuffle_buffer": 16,
        "checkpoint_every": 1000,
        "log_every": 1,
        "sample_every": 1000,
    },
    "sggan": {
        "batch_size": 2,
        "pool_size": 4,
        "shuffle_buffer": 8,
        "checkpoint_every": 1000,
        "log_every": 1,
        "sample_every": 1000,
    },
    "spigan": {
        "batch_size": 2,
        "shuffle_buffer": 8,
        "checkpoint_every": 1000,
        "log_every": 1,
        "sample_every": 1000,
    },
}
QUICK: dict[str, Experiment] = {
    name: replace(
        e,
        sizes=Sizes(synthetic=24, real_unlabeled=24, real_train=24, real_test=12),
        steps=2,
        overrides={**e.overrides, **_QUICK_GAN[e.method]},
        epochs=1,
        batch_size=8,
        cpu_scale="quick smoke run: tiny sets, 2 GAN iterations, 1 epoch; figures meaningless",
        seeds=(0,),
    )
    for name, e in FULL.items()
}


# -- running commands -------------------------------------------------------------------------


class Runner:
    """Runs ``python -m refinery ...`` in ``workdir``, logging each command's output to a file,
    timing it, and keeping the command lines (with the work directory written ``$WORK``)."""

    def __init__(self, workdir: Path, device: str | None):
        self.workdir = workdir
        self.device = device
        self.commands: list[str] = []
        self.seconds: dict[str, float] = {}
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def shown(self, argv: Sequence[str]) -> str:
        text = shlex.join(["python", "-m", "refinery", *argv])
        return text.replace(str(self.workdir), "$WORK")

    def __call__(self, step: str, *argv: str, device: bool = False, tag: str = "") -> str:
        """Run one command; its seconds add up under ``step``, its log is ``step[-tag].log``."""
        argv = [*argv, *(["--device", self.device] if device and self.device else [])]
        self.commands.append(self.shown(argv))
        log = self.workdir / "logs" / f"{step}{'-' + tag if tag else ''}.log"
        began = time.perf_counter()
        with log.open("w") as out:
            done = subprocess.run(
                [sys.executable, "-m", "refinery", *argv],
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        seconds = time.perf_counter() - began
        self.seconds[step] = self.seconds.get(step, 0.0) + seconds
        text = log.read_text(errors="replace")
        if done.returncode != 0:
            tail = "\n".join(text.splitlines()[-LOG_TAIL:])
            raise RuntimeError(
                f"{step} failed with exit status {done.returncode}: {self.shown(argv)}\n{tail}"
            )
        last = [line.rsplit("\r", 1)[-1] for line in text.splitlines() if line.strip()]
        shown = f"{step} {tag}".strip()
        print(f"  {shown}: {seconds:.1f} s  {last[-1][:100] if last else ''}", flush=True)
        return text


def _tars(directory: Path) -> list[str]:
    found = sorted(str(p) for p in directory.glob("*.tar"))
    if not found:
        raise RuntimeError(f"no shards in {directory}")
    return found


# -- one experiment ---------------------------------------------------------------------------


def run_experiment(
    experiment: Experiment, workdir: Path, *, seeds: Sequence[int], device: str | None
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Run the commands; return (figures, settings, report.html)."""
    e = experiment
    if workdir.exists() and any(workdir.iterdir()):
        # a rerun would resume the refine job and train over an old run: start clean
        raise RuntimeError(f"{workdir} is not empty: remove it or keep elsewhere")
    workdir.mkdir(parents=True, exist_ok=True)
    run = Runner(workdir, device)
    began = time.perf_counter()
    print(f"{e.name}: work directory {workdir}", flush=True)

    data = workdir / "data"
    variants = {
        "synthetic": "synthetic",
        "real_unlabeled": "real",
        "real_train": "real",
        "real_test": "real",
    }
    shards: dict[str, list[str]] = {}
    for (name, variant), seed in zip(variants.items(), e.data_seeds, strict=True):
        run(
            "synth",
            *("synth", e.domain, "--variant", variant, "--n", str(getattr(e.sizes, name))),
            *("--seed", str(seed), "--out", str(data / name), "--shard-size", str(SHARD_SIZE)),
            *(["--size", e.image_size] if e.image_size else []),
        )
        shards[name] = _tars(data / name)

    # One run per seed: the GAN trains with seed s, and refinement is scored by task networks
    # trained with seed s, so the spread over runs holds the GAN's variance as well as the
    # task network's (the larger of the two: a GAN trained once hides it).
    runs: list[tuple[int, dict[str, Any], list[dict[str, Any]]]] = []
    for seed in seeds:
        tag = f"s{seed}"
        config_file = workdir / f"overrides-{tag}.yaml"
        config_file.write_text(yaml.safe_dump({**e.overrides, "seed": seed}, sort_keys=False))
        gan = workdir / f"run-{tag}"
        run(
            "train",
            *("train", e.method, "--synthetic", *shards["synthetic"]),
            *("--real", *shards["real_unlabeled"], "--out", str(gan), "--preset", e.preset),
            *("--steps", str(e.steps), "--config", str(config_file)),
            device=True,
            tag=tag,
        )
        engine, refined = workdir / f"engine-{tag}", workdir / f"refined-{tag}"
        run("export", "export", str(gan), "--out", str(engine), tag=tag)
        run(
            "refine",
            *("refine", "--engine", str(engine), "--input", *shards["synthetic"]),
            *("--output", str(refined)),
            tag=tag,
        )
        report_dir = workdir / f"report-{tag}"
        run(
            "evaluate",
            *("evaluate", e.domain, "--synthetic", *shards["synthetic"]),
            *("--refined", *_tars(refined), "--real-train", *shards["real_train"]),
            *("--real-test", *shards["real_test"], "--out", str(report_dir)),
            *("--seeds", str(seed)),
            *(["--epochs", str(e.epochs)] if e.epochs else []),
            *(["--batch-size", str(e.batch_size)] if e.batch_size else []),
            device=True,
            tag=tag,
        )
        report = json.loads((report_dir / "report.json").read_text())
        stats = [json.loads(p.read_text()) for p in sorted(refined.glob("*.stats.json"))]
        runs.append((seed, report, stats))
    run.seconds["total"] = time.perf_counter() - began

    figures = combine(runs, run.seconds)
    first = workdir / f"run-s{seeds[0]}"
    report = runs[0][1]
    settings = {
        "experiment": e.name,
        "domain": e.domain,
        "method": e.method,
        "preset": e.preset,
        "steps": e.steps,
        "config_overrides": dict(e.overrides),
        "resolved_gan_config": yaml.safe_load((first / "config.yaml").read_text()),
        "synth_size": e.image_size,  # refinery synth --size (None: the simulator's default)
        "image_size": _image_size(e, report),
        "sizes": asdict(e.sizes),
        "data_seeds": dict(zip(variants, e.data_seeds, strict=True)),
        "task_network": report["task"]["network"],
        "task_settings": {k: v for k, v in report["settings"].items() if k != "input"},
        "task_input": report["settings"]["input"],
        "seeds": list(seeds),
        "seeding": (
            "run s: the GAN trained with seed s (--config seed: s; resolved_gan_config is run "
            f"{seeds[0]}'s), its refined set scored by task networks trained with seed s "
            "(evaluate --seeds s) on synthetic, refined and real train; mean ± std over runs"
        ),
        "cpu_scale": e.cpu_scale,
        "commands": run.commands,
        "work_directory": "$WORK: a temporary directory (--keep DIR keeps it)",
    }
    return figures, settings, workdir / f"report-s{seeds[0]}" / "report.html"


def _image_size(e: Experiment, report: dict[str, Any]) -> str:
    """HxW of the stored samples."""
    if e.domain == "hand":
        return "x".join(str(s) for s in report["settings"]["input"]["crop"])
    return e.image_size or "x".join(str(s) for s in report["settings"]["input"]["size"])


def _round(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else value
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    return value


def over_runs(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Mean, std and the values of the runs that have one (None: no run has)."""
    defined = [float(v) for v in values if v is not None]
    if not defined:
        return None
    return {**summary(defined), "runs": [None if v is None else float(v) for v in values]}


def drift_over_runs(
    reports: Sequence[dict[str, Any]], key: str = "label_drift"
) -> dict[str, Any] | None:
    """The label drift (``key``: or ``label_drift_robust``, of the appearance-robust network)
    of each run's ``report.json``, over the runs (None if one has none)."""
    drifts = [r.get(key) for r in reports]
    if any(d is None for d in drifts):
        return None
    return {
        "label": drifts[0]["label"],
        "unit": drifts[0]["unit"],
        **over_runs([d["mean"] for d in drifts]),
    }


def realism_over_runs(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each set's two-sample accuracy and KID against real, over the runs' ``report.json``."""
    realism = [r.get("realism") or {} for r in reports]
    return {
        name: {
            "c2st_accuracy": over_runs([x["sets"][name]["c2st_accuracy"]["mean"] for x in realism]),
            "c2st_null_band": realism[0]["sets"][name].get("c2st_null_band"),
            "kid": over_runs([(x["sets"][name].get("kid") or {}).get("mean") for x in realism]),
        }
        for name in (realism[0].get("sets") or {})
        if all(name in (x.get("sets") or {}) for x in realism)
    }


def combine(
    runs: Sequence[tuple[int, dict[str, Any], list[dict[str, Any]]]], seconds: dict[str, float]
) -> dict[str, Any]:
    """The figures a reader compares, over the runs (one per seed: its GAN, its task networks),
    from each run's ``report.json`` and refine stats; no per-sample distributions."""
    reports = [report for _, report, _ in runs]
    first = reports[0]
    metric = first["task"]["metric"]
    key = metric["key"]
    names = [name for name in SETS if all(name in r["results"] for r in reports)]
    figures: dict[str, Any] = {
        "task": {"network": first["task"]["network"], **metric},
        "seeds": [seed for seed, _, _ in runs],
        "metric": {
            name: over_runs([r["results"][name]["metrics"][key]["mean"] for r in reports])
            for name in names
        },
        # "seed" is not a metric (report.json lists it among them)
        "other_metrics": {
            name: {
                m: statistics.fmean(r["results"][name]["metrics"][m]["mean"] for r in reports)
                for m in first["results"][name]["metrics"]
                if m not in (key, "seed") and not m.startswith("pck_")
            }
            for name in names
        },
    }
    gaps = [(r.get("gap_closed") or {}).get("runs", [None])[0] for r in reports]
    means = {name: figures["metric"][name]["mean"] for name in names}
    defined = [g for g in gaps if g is not None]
    figures["gap_closed"] = (
        None
        if "real" not in means
        else {
            # the formula on the mean errors, and the mean of the per-run values: they differ
            # when one run's gap is small
            "of_means": gap_closed(means["synthetic"], means["refined"], means["real"]),
            "mean_over_seeds": statistics.fmean(defined) if defined else None,
            "std_over_seeds": statistics.stdev(defined) if len(defined) > 1 else 0.0,
            "runs": gaps,
        }
    )
    figures["label_drift"] = drift_over_runs(reports)
    figures["label_drift_robust"] = drift_over_runs(reports, "label_drift_robust")
    figures["realism"] = realism_over_runs(reports)
    figures["labels"] = {
        k: sum(r["labels"][k] for r in reports)
        for k in ("paired", "identical", "differing", "unpaired_refined", "missing_from_refined")
        if all(k in r["labels"] for r in reports)
    }
    if first.get("pck"):
        thresholds = first["pck"]["thresholds"]
        figures["pck"] = {
            name: {
                f"{d}px": statistics.fmean(
                    r["pck"]["curves"][name]["mean"][thresholds.index(d)] for r in reports
                )
                for d in PCK_AT
                if d in thresholds
            }
            for name in first["pck"]["curves"]
        }
    if first.get("per_class_iou"):
        classes = first["per_class_iou"]["classes"]
        figures["per_class_iou"] = {
            name: {
                c: statistics.fmean(vals)
                for i, c in enumerate(classes)
                if (vals := [r["per_class_iou"]["values"][name][i] for r in reports])
                and all(v is not None for v in vals)
            }
            for name in first["per_class_iou"]["values"]
        }
    stats = [s for _, _, run_stats in runs for s in run_stats]
    written = sum(s["written"] for s in stats)
    job_seconds = sum(s["seconds"] for s in stats)
    figures["refine_job"] = {
        "read": sum(s["read"] for s in stats),
        "written": written,
        "rejected": sum(s["rejected"] for s in stats),
        "shards": len(stats),
        "refined_sets": len(runs),
        "samples_per_s": written / job_seconds if job_seconds > 0 else None,
    }
    figures["counts"] = first["counts"]
    inside: dict[str, float] = {}
    for r in reports:
        for k, v in (r.get("seconds") or {}).items():
            inside[k] = inside.get(k, 0.0) + v
    figures["seconds"] = {
        **{k: round(v, 1) for k, v in seconds.items()},
        "evaluate_inside": {k: round(v, 1) for k, v in inside.items()},
    }
    return _round(figures)


# -- the command ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--experiments",
        default=",".join(FULL),
        help=f"comma-separated, from {', '.join(FULL)} (default: all)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write records and reports under DIR, not results/"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep shards, runs, logs and reports in DIR"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="one run per seed: the GAN and the task networks trained with it (default: the "
        "experiment's own, 0 1 2; 0-5 for the SPIGAN arms at 750 frames and with self_reg)",
    )
    parser.add_argument("--device", default=None, help="torch device for train and evaluate")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    unknown = sorted(set(names) - set(FULL))
    if unknown or not names:
        parser.error(f"unknown experiment(s) {unknown or names}; known: {', '.join(FULL)}")
    chosen = QUICK if args.quick else FULL
    results = Path(args.out or common.EXPERIMENT_RESULTS)
    recorded: dict[str, dict[str, Any]] = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"evaluate-{name}-") as tmp:
            # absolute: every command runs inside the work directory
            workdir = (args.keep.resolve() / name) if args.keep else Path(tmp)
            figures, settings, html = run_experiment(
                chosen[name], workdir, seeds=args.seeds or chosen[name].seeds, device=args.device
            )
            sample = results / "reports" / f"{name}.html"
            sample.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(html, sample)
        if sample.stat().st_size > REPORT_LIMIT:
            print(
                f"warning: {sample} is {sample.stat().st_size:,} bytes, over "
                f"{REPORT_LIMIT:,} (the embedded contact sheet is most of it)",
                flush=True,
            )
        settings["quick"] = args.quick
        settings["report"] = {
            "path": f"reports/{name}.html",
            "bytes": sample.stat().st_size,
        }
        common.write_result(f"evaluate_{name}", figures, settings, results=results)
        recorded[name] = figures
        m = figures["metric"]
        unit = figures["task"]["unit"]
        print(
            f"{name}: {figures['task']['label']} ({unit}) synthetic {m['synthetic']['mean']:.4g}, "
            f"refined {m['refined']['mean']:.4g}, real {m['real']['mean']:.4g}; "
            f"{figures['seconds']['total']:.0f} s",
            flush=True,
        )
    return recorded


if __name__ == "__main__":
    common.exit_on_sigterm()
    main()
