"""How much of a two-sample accuracy is the classifier's own draw, and how much the GAN's.

``refinery evaluate`` scores GAN seed K's refined eyes with one two-sample test
(``train.evaluation.realism.two_sample_test``) of seed K: its split, draw and initialisation. So the
spread over GANs every ``real_gaze`` record shows mixes two things: how differently the GANs
refine, and how differently one classifier run lands from another on the same images. This
benchmark separates them. For each refined set of ``benchmarks/experiments/real_gaze.py`` work directories
(``--run DIR``, repeatable; ``refined-sK``), it reruns the test with classifier seeds
0..``--repeats``-1 on the same images, with the learning-rate schedule every record uses
(``constant``) and with a cosine decay to 0 (``cosine``), and reports per protocol:

- ``within_set_std``: the classifiers' spread on one set of images (pooled over the sets);
- ``between_gan_std``: the spread of the sets' means (each over ``--repeats`` classifiers);
- ``as_evaluate``: the accuracies evaluate records (classifier seed = GAN seed), for reference.

No GAN is trained here. Skipped (exit 0, nothing written) when no run directory exists, as on
a fresh clone.

    python -m benchmarks.experiments.c2st_noise --run out/bench-real-gaze-local-hold-dlr [--repeats 4]
"""

from __future__ import annotations

import json
import statistics
import sys

import numpy as np

from benchmarks.common import exit_on_sigterm, write_result
from benchmarks.experiments.real_gaze import _pixels, unit
from benchmarks.experiments.realism_cues import (
    EPOCHS,
    refined_sets,
    run_key,
    work_directories,
    work_directory_parser,
)
from train.evaluation.realism import SCHEDULES, pooled_std

PROTOCOLS = SCHEDULES  # the learning-rate schedules, in the order they are reported


def noise(
    real: np.ndarray, sets: dict[str, tuple[int, np.ndarray]], *, repeats: int, epochs: int
) -> dict[str, dict]:
    """Every set (name -> (GAN seed, pixels)) against ``real``, with classifier seeds
    0..repeats-1 under each protocol; then the spreads within and between sets."""
    from train.evaluation.evaluate import summary
    from train.evaluation.realism import two_sample_test

    real_images = unit(real)
    figures: dict[str, dict] = {"sets": {}, "protocols": {}}
    for name, (gan_seed, pixels) in sets.items():
        images = unit(pixels)
        entry: dict = {"gan_seed": gan_seed}
        for protocol in PROTOCOLS:
            runs = [
                two_sample_test(real_images, images, seed=s, epochs=epochs, schedule=protocol)
                for s in range(repeats)
            ]
            entry[protocol] = summary([r["accuracy"] for r in runs])
            print(json.dumps({name: {protocol: entry[protocol]}}), flush=True)
        figures["sets"][name] = entry
    for protocol in PROTOCOLS:
        per_set = [entry[protocol] for entry in figures["sets"].values()]
        means = [s["mean"] for s in per_set]
        figures["protocols"][protocol] = {
            "mean": statistics.fmean(means),
            "within_set_std": pooled_std(per_set),
            "between_gan_std": statistics.stdev(means) if len(means) > 1 else 0.0,
            "as_evaluate": [
                s["runs"][e["gan_seed"]]
                for s, e in zip(per_set, figures["sets"].values(), strict=True)
                if e["gan_seed"] < repeats
            ],
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = work_directory_parser(__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=4, help="classifier seeds per set")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2 (a spread needs two classifiers)")
    present = work_directories(parser, args, "c2st_noise")
    if not present:
        return 0
    epochs = 1 if args.quick else EPOCHS
    real = _pixels(str(present[0] / "real"))
    sets = {}
    for run in present:
        for seed, path in refined_sets(run).items():
            sets[f"{run_key(run)}/refined-s{seed}"] = (seed, _pixels(str(path)))
    figures = noise(real, sets, repeats=args.repeats, epochs=epochs)
    settings = {
        "test": "train.evaluation.realism.two_sample_test (refinery evaluate's C2ST), "
        f"{epochs} epochs, against the first run's real crops; classifier seeds "
        f"0..{args.repeats - 1} (split, draw, initialisation) on each refined set",
        "protocols": {
            "constant": "Adam at 1e-3 throughout, as refinery evaluate and every record",
            "cosine": "Adam from 1e-3 decayed to 0 by a cosine over the epochs",
        },
        "runs": [str(run) for run in present],
        "repeats": args.repeats,
        "quick": args.quick,
    }
    write_result("c2st_noise", figures, settings, results=args.results)
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
