"""What the two-sample test sees: realism split into coarse and fine image content.

``refinery evaluate``'s classifier two-sample test (``train.evaluation.realism.two_sample_test``)
says how
often a small CNN tells a candidate set from real images, not why. This benchmark reruns it on
three versions of the same images:

- ``full``: the images as evaluate reads them;
- ``coarse``: blurred with a Gaussian of sigma 2 px, which keeps tone, shading and the shapes of
  iris, pupil and lids (anything wider than about 5 px) and removes texture, lashes, noise,
  JPEG artefacts and sharp edges;
- ``fine``: the residual (image minus its blur), which keeps exactly what ``coarse`` removes.

If a refined set is told from real eyes as often in ``coarse`` as in ``full``, what gives it
away is shape and tone; if ``fine`` does it, the texture. The sets are those of
``benchmarks/experiments/real_gaze.py`` work directories (``--run DIR``, repeatable, e.g.
``out/bench-real-gaze-r48``): their real crops, their procedural eyes and each GAN's refined
eyes (``refined-sK``, scored with C2ST seed K, as evaluate scores them), so no GAN is trained
here. Skipped (exit 0, nothing written) when no run directory exists, as on a fresh clone.

    python -m benchmarks.experiments.realism_cues --run out/bench-real-gaze-r48 [--run ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import EXPERIMENT_RESULTS as RESULTS
from benchmarks.common import exit_on_sigterm, write_result

ROOT = Path(__file__).resolve().parents[2]
SIGMA = 2.0  # px: the boundary between "coarse" and "fine" content, on 35x55 eye crops
BANDS = ("full", "coarse", "fine")
EPOCHS = 10  # evaluate's C2ST epochs


def bands(pixels: np.ndarray, sigma: float = SIGMA) -> dict[str, np.ndarray]:
    """(N, H, W) uint8 images as the C2ST's input, (N, 1, H, W) float32: the full image in
    [-1, 1], its Gaussian blur (``coarse``) and the residual (``fine``, full minus coarse)."""
    import cv2

    full = pixels.astype(np.float32) / 127.5 - 1.0
    coarse = np.stack(
        [cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for image in full]
    )
    return {"full": full[:, None], "coarse": coarse[:, None], "fine": (full - coarse)[:, None]}


def cues(
    real: np.ndarray, candidates: list[np.ndarray], seeds: list[int], *, epochs: int
) -> dict[str, dict]:
    """The C2ST of each candidate set (``candidates[i]`` scored with ``seeds[i]``) against
    ``real`` in every band: accuracy mean ± std over the sets."""
    import torch

    from train.evaluation.evaluate import summary
    from train.evaluation.realism import null_band, two_sample_test

    real_bands = bands(real)
    runs = {band: [] for band in BANDS}
    for candidate, seed in zip(candidates, seeds, strict=True):
        for band, images in bands(candidate).items():
            result = two_sample_test(
                torch.from_numpy(real_bands[band]), torch.from_numpy(images), seed=seed,
                epochs=epochs,
            )  # fmt: skip
            runs[band].append(result)
    return {
        band: {
            "c2st_accuracy": summary([r["accuracy"] for r in results]),
            "c2st_null_band": null_band(results[0]["test"]),
        }
        for band, results in runs.items()
    }


def run_key(run: Path) -> str:
    """The record's key for a work directory: its path from the repository root when it lies
    inside it (however it was named on the command line), else the path as given."""
    resolved = run.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(run)


def work_directory_parser(description: str) -> argparse.ArgumentParser:
    """The options of a benchmark that reads ``benchmarks.experiments.real_gaze`` work directories."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--run",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a benchmarks.experiments.real_gaze work directory (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run to test the script")
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser


def work_directories(
    parser: argparse.ArgumentParser, args: argparse.Namespace, benchmark: str
) -> list[Path]:
    """The ``--run`` directories that hold a real_gaze run; none (said) on a fresh clone."""
    if not args.run:
        parser.error("name at least one real_gaze work directory with --run DIR")
    present = [run for run in args.run if (run / "real").is_dir()]
    if not present:
        print(f"{benchmark}: skipped: no real_gaze work directory among {args.run}")
    return present


def refined_sets(run: Path) -> dict[int, Path]:
    """A real_gaze work directory's refined sets by GAN seed (``refined-sK``), in seed order."""
    found = {int(p.name.removeprefix("refined-s")): p for p in run.glob("refined-s*")}
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    parser = work_directory_parser(__doc__.split("\n")[0])
    args = parser.parse_args(argv)
    present = work_directories(parser, args, "realism_cues")
    if not present:
        return 0
    from benchmarks.experiments.real_gaze import _pixels

    epochs = 1 if args.quick else EPOCHS
    real = _pixels(str(present[0] / "real"))
    figures: dict[str, dict] = {}
    for run in present:
        refined = refined_sets(run)
        seeds = list(refined)
        synthetic = _pixels(str(run / "synthetic"))
        key = run_key(run)
        figures[key] = {
            "seeds": seeds,
            "synthetic": cues(real, [synthetic] * len(seeds), seeds, epochs=epochs),
            "refined": cues(
                real, [_pixels(str(p)) for p in refined.values()], seeds, epochs=epochs
            ),
        }
        print(json.dumps({key: figures[key]}, indent=1), flush=True)
    settings = {
        "bands": {
            "full": "the images in [-1, 1], as refinery evaluate's two-sample test reads them",
            "coarse": f"Gaussian blur, sigma {SIGMA} px (tone, shading, shapes wider than ~5 px)",
            "fine": "the image minus its blur (texture, lashes, noise, sharp edges)",
        },
        "test": "train.evaluation.realism.two_sample_test (refinery evaluate's C2ST), "
        f"{epochs} epochs, against the run's real crops; refined-sK scored with seed K, the "
        "synthetic set with the same seeds; mean ± std over them",
        "runs": [str(run) for run in present],
        "quick": args.quick,
    }
    write_result("realism_cues", figures, settings, results=args.results)
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
