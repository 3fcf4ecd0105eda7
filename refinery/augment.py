"""Differentiable augmentation of what a discriminator sees (DiffAugment: Zhao et al.,
"Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS 2020).

With a couple of thousand real images (the MPIIGaze fixture has 2,000) a discriminator can learn
the real set by heart, and its verdicts then teach the refiner that set's particulars rather than
what real images share. DiffAugment's answer: draw random transforms and apply them to every
image the discriminator is shown, real and refined alike, in the discriminator's updates and in
the refiner's adversarial term. The transforms are differentiable, so the refiner learns through
them; what the refiner produces is never augmented (sample sheets, ``refinery export`` and the
refine job see R(x) as it is).

A policy is a comma-separated list of the operations below, applied in its order; every image
of a batch gets its own draw. Images are (B, C, H, W) in [-1, 1] (0: mid-grey), as DiffAugment's
are, so its ranges carry over unchanged:

- ``brightness``: x + b, b ~ U(-0.5, 0.5) (a quarter of the range either way);
- ``contrast``: (x − m)·c + m, c ~ U(0.5, 1.5), m the image's mean;
- ``translation``: shifted by whole pixels, up to 1/8 of each side either way, the uncovered
  border filled with 0;
- ``cutout``: a rectangle of half of each side, at a random centre, set to 0.

DiffAugment's third colour operation, saturation, is left out: it is meaningless for the
one-channel eyes this is for, and the four above are what its paper pairs for small sets
("color,translation,cutout" with colour = brightness, saturation, contrast).

Measured (README, SimGAN section): on the real-eye benchmark the discriminators were not
memorising the crops, and both policies tried made the refined eyes less real, so the recipes
leave it off (``discriminator_augment: ""``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TRANSLATION_RATIO = 1 / 8  # of each side, the largest shift either way (DiffAugment's)
CUTOUT_RATIO = 1 / 2  # of each side, the rectangle set to 0 (DiffAugment's)


def _uniform(x: torch.Tensor, generator: torch.Generator, low: float, high: float):
    """One draw per image, shaped to broadcast over (C, H, W)."""
    u = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype)
    return low + (high - low) * u


def _offsets(x: torch.Tensor, generator: torch.Generator, low: int, high: int) -> torch.Tensor:
    """One integer per image in [low, high]."""
    return torch.randint(low, high + 1, (x.shape[0],), generator=generator, device=x.device)


def brightness(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x + _uniform(x, generator, -0.5, 0.5)


def contrast(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, generator, 0.5, 1.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """out[i, j] = x[i + dy, j + dx] where that lies inside the image, else 0."""
    b, c, h, w = x.shape
    sy, sx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy, dx = _offsets(x, generator, -sy, sy), _offsets(x, generator, -sx, sx)
    rows = torch.arange(h, device=x.device)[None, :] + dy[:, None]  # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] + dx[:, None]  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    source = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    moved = x.flatten(2).gather(2, source.view(b, 1, h * w).expand(b, c, h * w))
    return moved.view(b, c, h, w) * inside[:, None].to(x.dtype)


def cutout(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A (H/2 × W/2) rectangle centred anywhere in the image (clipped at its edges) set to 0."""
    h, w = x.shape[-2:]
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    top = _offsets(x, generator, 0, h - 1) - ch // 2
    left = _offsets(x, generator, 0, w - 1) - cw // 2
    rows = torch.arange(h, device=x.device)[None, :] - top[:, None]  # (B, H), 0..ch-1 inside
    cols = torch.arange(w, device=x.device)[None, :] - left[:, None]
    hole = ((rows >= 0) & (rows < ch))[:, :, None] & ((cols >= 0) & (cols < cw))[:, None, :]
    return x * (~hole)[:, None].to(x.dtype)


OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "brightness": brightness,
    "contrast": contrast,
    "translation": translation,
    "cutout": cutout,
}


def parse_policy(policy: str, *, key: str = "discriminator_augment") -> tuple[str, ...]:
    """``"brightness,cutout"`` → ("brightness", "cutout"); "" → () (no augmentation).

    Unknown or repeated names are errors that name ``key`` and the known operations.
    """
    names = tuple(n.strip() for n in policy.split(",") if n.strip())
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown:
        raise ValueError(
            f"{key}: unknown operation(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(OPERATIONS)} (comma-separated, e.g. 'brightness,contrast,translation')"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{key}: {', '.join(map(repr, repeated))} named more than once")
    return names


class Augment:
    """A policy with its own seeded random stream, saved and restored with a run's state so a
    resumed run draws what a straight one would. An empty policy returns images untouched and
    draws nothing."""

    def __init__(self, policy: str, *, seed: int, device: torch.device | str = "cpu"):
        self.operations = parse_policy(policy)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __bool__(self) -> bool:
        return bool(self.operations)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for name in self.operations:
            images = OPERATIONS[name](images, self.generator)
        return images

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.cpu())
