"""Does a capture statistic give refined eyes away? The two-sample test after post-hoc transforms.

``realism_cues`` found refined eyes told from real MPIIGaze crops about as often from their
texture alone as from the whole image. Texture there is everything finer than a 2-px blur: the
camera's and the pipeline's statistics (MPIIGaze's crops are JPEG at libjpeg quality 75, soft
from the normalising warp, with sensor noise and skin grain) as well as small shapes (lid and
lash contours, iris edges). The first kind a refiner could be handed (a simulator option or a
stage after the engine); the second it has to draw. This benchmark tells them apart: it applies
each capture statistic to every GAN's refined eyes as they are and reruns
``refinery evaluate``'s two-sample test (``train.evaluation.realism.two_sample_test``, seed K for
``refined-sK``, as evaluate scores it). A statistic the refined eyes lack moves them towards
real when added; one they already match, or overdo, moves them away.

- ``as-refined``: the refined eyes unchanged (the baseline, with the same classifiers);
- ``jpeg-75``: JPEG at quality 75 on the 35×55 eye;
- ``jpeg-75-mpiigaze``: MPIIGaze's path: resized to 36×57, padded to the published 36×60, JPEG
  at quality 75, then cropped and area-resized to 35×55 as ``refinery ingest images`` does;
- ``blur-0.5``: a Gaussian blur of sigma 0.5 px (a softer warp);
- ``sharpen-0.3``: an unsharp mask, 0.3 × (image − its 1-px blur) added;
- ``noise-2``: Gaussian noise of sigma 2 grey levels;
- ``skin-grain``: the simulator's real-variant skin texture (``refinery.sim.eyes``), fine grain
  (7.5 %) and few-pixel mottling (5 %) multiplied in.

It reads ``benchmarks/experiments/real_gaze.py`` work directories (``--run DIR``) and trains no GAN;
skipped (exit 0, nothing written) when none exists, as on a fresh clone.

    python -m benchmarks.experiments.capture_cues --run out/bench-real-gaze-local-hold-dlr [--quick]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import numpy as np

from benchmarks.common import exit_on_sigterm, write_result
from benchmarks.experiments.realism_cues import (
    EPOCHS,
    refined_sets,
    run_key,
    work_directories,
    work_directory_parser,
)

QUALITY = 75  # MPIIGaze's crops: libjpeg's quality-75 luminance table (tests check the fixture)
PUBLISHED = (36, 60)  # (H, W) of MPIIGaze's normalised eye images
CROPPED = (36, 57)  # the centre crop of them with the 35×55 aspect ratio (ingest images)


def _jpeg(image: np.ndarray, quality: int = QUALITY) -> np.ndarray:
    import cv2

    _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


def _jpeg_mpiigaze(image: np.ndarray) -> np.ndarray:
    """JPEG on MPIIGaze's grid: the eye as the centre of a published 36×60 image, compressed,
    then cropped and resized back as ``refinery ingest images`` reads the real crops."""
    import cv2

    height, width = image.shape
    (ch, cw), (ph, pw) = CROPPED, PUBLISHED
    big = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_LINEAR)
    left = (pw - cw) // 2
    big = cv2.copyMakeBorder(big, 0, ph - ch, left, pw - cw - left, cv2.BORDER_REFLECT)
    back = _jpeg(big)[:ch, left : left + cw]
    return cv2.resize(back, (width, height), interpolation=cv2.INTER_AREA)


def _blur(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(image, (0, 0), 0.5, borderType=cv2.BORDER_REFLECT)


def _sharpen(image: np.ndarray) -> np.ndarray:
    import cv2

    x = image.astype(np.float32)
    return _u8(x + 0.3 * (x - cv2.GaussianBlur(x, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)))


def _noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _u8(image + rng.normal(0.0, 2.0, image.shape))


def _skin_grain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from refinery.sim.eyes import skin_texture

    grain, mottle = skin_texture(rng, image.shape)
    return _u8(image * (1.0 + 0.075 * grain + 0.05 * mottle))


def _u8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# name -> (what it does, transform of one (H, W) uint8 eye); those taking a generator draw from it
TRANSFORMS: dict[str, tuple[str, Callable[..., np.ndarray]]] = {
    "as-refined": ("the refined eyes unchanged", lambda image: image),
    "jpeg-75": (f"JPEG at quality {QUALITY} on the 35×55 eye", _jpeg),
    "jpeg-75-mpiigaze": (
        f"resized to {CROPPED[0]}×{CROPPED[1]}, padded to {PUBLISHED[0]}×{PUBLISHED[1]}, JPEG "
        f"at quality {QUALITY}, cropped and area-resized back, as MPIIGaze publishes and ingest "
        "reads the real crops",
        _jpeg_mpiigaze,
    ),
    "blur-0.5": ("Gaussian blur, sigma 0.5 px", _blur),
    "sharpen-0.3": ("image + 0.3 × (image − its 1-px Gaussian blur)", _sharpen),
    "noise-2": ("Gaussian noise, sigma 2 grey levels", _noise),
    "skin-grain": (
        "the real variant's skin texture: × (1 + 7.5 % fine grain + 5 % mottling)",
        _skin_grain,
    ),
}
RANDOM = ("noise-2", "skin-grain")


def transformed(pixels: np.ndarray, name: str, *, seed: int) -> np.ndarray:
    """(N, H, W) uint8 eyes through transform ``name``; random ones draw from ``seed``."""
    _, transform = TRANSFORMS[name]
    if name in RANDOM:
        rng = np.random.default_rng([seed, list(TRANSFORMS).index(name)])
        return np.stack([transform(image, rng) for image in pixels])
    return np.stack([transform(image) for image in pixels])


def capture_cues(
    real: np.ndarray,
    refined: list[np.ndarray],
    seeds: list[int],
    *,
    epochs: int,
    names: tuple[str, ...] = tuple(TRANSFORMS),
) -> dict[str, dict]:
    """Per transform (``names``, as-refined among them): the C2ST of every refined set
    (``refined[i]`` scored with ``seeds[i]``) against ``real`` after it, and its paired change
    from ``as-refined`` (the same classifiers)."""
    from benchmarks.experiments.real_gaze import unit
    from train.evaluation.evaluate import summary
    from train.evaluation.realism import two_sample_test

    real_unit = unit(real)
    accuracy: dict[str, list[float]] = {}
    for name in names:
        accuracy[name] = [
            two_sample_test(
                real_unit, unit(transformed(pixels, name, seed=seed)), seed=seed, epochs=epochs
            )["accuracy"]
            for pixels, seed in zip(refined, seeds, strict=True)
        ]
    base = accuracy["as-refined"]
    return {
        name: {
            "c2st_accuracy": summary(values),
            "change": summary([v - b for v, b in zip(values, base, strict=True)]),
        }
        for name, values in accuracy.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = work_directory_parser(__doc__.split("\n")[0])
    args = parser.parse_args(argv)
    present = work_directories(parser, args, "capture_cues")
    if not present:
        return 0
    from benchmarks.experiments.real_gaze import _pixels

    epochs = 1 if args.quick else EPOCHS
    limit = 200 if args.quick else None
    real = _pixels(str(present[0] / "real"))[:limit]
    figures: dict[str, dict] = {}
    for run in present:
        sets = refined_sets(run)
        seeds = list(sets)
        refined = [_pixels(str(p))[:limit] for p in sets.values()]
        key = run_key(run)
        figures[key] = {
            "seeds": seeds,
            "transforms": capture_cues(real, refined, seeds, epochs=epochs),
        }
        print(json.dumps({key: figures[key]}, indent=1), flush=True)
    settings = {
        "transforms": {name: what for name, (what, _) in TRANSFORMS.items()},
        "order": list(TRANSFORMS),  # the record's keys are sorted; the table keeps this order
        "test": "train.evaluation.realism.two_sample_test (refinery evaluate's C2ST), "
        f"{epochs} epochs, against the run's real crops; refined-sK scored with seed K after "
        "each transform; change: the paired difference from as-refined, per GAN",
        "runs": [str(run) for run in present],
        "quick": args.quick,
    }
    write_result("capture_cues", figures, settings, results=args.results)
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
