"""SimGAN losses (Shrivastava et al., CVPR 2017, §2): local adversarial loss, self-regularisation.

Code (paper): ``local_adversarial_loss(D(R(x)), REAL)`` is ℓ_real of Eq. 4, i.e. -log D(R(x))
summed over patches in the paper; ``local_adversarial_loss(D(y), REAL) +
local_adversarial_loss(D(R(x)), REFINED)`` is L_D of Eq. 2; ``self_regularisation(R(x), x, psi=ψ,
weight=λ)`` is λ‖ψ(R(x)) − ψ(x)‖₁ of Eq. 4.

Class indices of the discriminator's (B, 2, h, w) logits: ``REFINED = 0``, ``REAL = 1``.

Sums in the paper, means here. The paper sums the cross-entropy over the patches of the local
adversarial loss (§2.2) and the L1 over the pixels of ℓ_reg (Eq. 4); carpedm20/simulated-
unsupervised-tensorflow follows that (reduce_sum per image, then the batch mean), while
mjdietzx/SimGAN and AlexHex7/SimGAN_pytorch average the cross-entropy over patches and batch.
We average both terms, over the batch and over patches resp. pixels, so that λ and the learning
rate do not change with the image or patch-map size. With P = h·w patches and N = C·H·W image
values, the paper's  Σ_P CE + λ_sum Σ_N |·|  equals  P · (mean_P CE + λ_mean mean_N |·|)  for

    λ_mean = λ_sum · N / P,

e.g. a 35×55 crop (N = 1925) with the 9×14 gaze discriminator map (P = 126): λ_mean ≈ 15.3 λ_sum.
The overall factor P only rescales the gradient (absorbed by Adam, or by SGD's learning rate).

Every loss is differentiable and computes in float32 with autocast off, so it can be called on
float16 / bfloat16 activations inside ``torch.autocast``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

REFINED = 0  # discriminator class index: a refined (fake) image
REAL = 1  # discriminator class index: a real image

PSI_NAMES = ("identity", "mean-colour", "gradients", "low-pass")
LOW_PASS = 4  # the "low-pass" ψ averages LOW_PASS × LOW_PASS blocks

Psi = Callable[[torch.Tensor], torch.Tensor]


def _no_autocast(tensor: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _patch_targets(logits: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    """(B, h, w) int64 class map for (B, 2, h, w) logits from REAL / REFINED or a (B,) tensor."""
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise ValueError(f"expected (B, 2, h, w) logits, got shape {tuple(logits.shape)}")
    batch, _, height, width = logits.shape
    if isinstance(target, torch.Tensor):
        if target.shape != (batch,):
            raise ValueError(f"target tensor must have shape ({batch},), got {tuple(target.shape)}")
        return target.to(logits.device, torch.long)[:, None, None].expand(batch, height, width)
    if target not in (REAL, REFINED):
        raise ValueError(f"target must be REAL ({REAL}) or REFINED ({REFINED}), got {target!r}")
    return torch.full((batch, height, width), target, dtype=torch.long, device=logits.device)


def local_adversarial_loss(logits: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every patch's decision against `target`, averaged over patches and batch.

    `logits` (B, 2, h, w) from a ``LocalDiscriminator``; `target` is ``REAL`` or ``REFINED`` for
    the whole batch, or a (B,) tensor of those for a mixed batch. Returns a float32 scalar.
    The paper sums over patches; see the module docstring for the equivalent λ.
    """
    targets = _patch_targets(logits, target)
    with _no_autocast(logits):
        return F.cross_entropy(logits.float(), targets)


def patch_accuracy(logits: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    """Share of patches whose argmax is `target` (REAL, REFINED or a (B,) tensor), as a 0-d
    tensor on the logits' device (no CPU-GPU sync: the loop reads every loss at once)."""
    targets = _patch_targets(logits, target)
    with torch.no_grad():
        return (logits.argmax(dim=1) == targets).float().mean()


def r1_penalty(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al., "Which Training Methods for GANs do actually Converge?", ICML
    2018): E‖∇ₓ D(x)‖² over real images x, D's log-odds of REAL, so that a discriminator whose
    decision changes sharply around the real images pays for it and the refiner is not led by
    edges that only exist in D. For a local D the log-odds are each patch's logit[REAL] −
    logit[REFINED], and the penalty is per patch: ‖∇ₓ Σ_p D_p(x)‖² / P over the P = h·w patches,
    which is the mean of the patches' own ‖∇ₓ D_p(x)‖² where their windows do not overlap (one
    backward pass instead of P), so γ does not change with the patch-map size; it sums over the
    image and averages over the batch.

    `logits` (B, 2, h, w) must come from `images` (B, C, H, W) with ``requires_grad`` set, in a
    graph that is kept: the penalty is differentiated again, into D's weights (StyleGAN2 weights
    it γ/2). Returns a float32 scalar.
    """
    with _no_autocast(logits):
        log_odds = (logits[:, REAL] - logits[:, REFINED]).float()  # (B, h, w)
        (gradient,) = torch.autograd.grad(log_odds.sum(), images, create_graph=True)
        patches = log_odds[0].numel()
        return gradient.float().pow(2).flatten(1).sum(dim=1).mean() / patches


def discriminator_accuracy(logits: torch.Tensor, target: int | torch.Tensor) -> float:
    """``patch_accuracy`` as a Python float (a CPU-GPU sync)."""
    return float(patch_accuracy(logits, target))


# -- self-regularisation ----------------------------------------------------------------------


def _identity(image: torch.Tensor) -> torch.Tensor:
    return image


def _mean_colour(image: torch.Tensor) -> torch.Tensor:
    return image.mean(dim=1, keepdim=True)  # (B, 1, H, W)


def _gradients(image: torch.Tensor) -> torch.Tensor:
    dx = image[..., :, 1:] - image[..., :, :-1]  # (B, C, H, W-1)
    dy = image[..., 1:, :] - image[..., :-1, :]  # (B, C, H-1, W)
    return torch.cat([dx.flatten(1), dy.flatten(1)], dim=1)  # (B, C(H(W-1) + (H-1)W))


def _low_pass(image: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(image, LOW_PASS)  # (B, C, H // 4, W // 4): layout and colour, no texture


_PSI: dict[str, Psi] = {
    "identity": _identity,
    "mean-colour": _mean_colour,
    "gradients": _gradients,
    "low-pass": _low_pass,
}


class FeaturePsi(nn.Module):
    """ψ as a frozen feature network: parameters never train and it stays in eval mode.

    Gradients still flow through it to the refined image. ``.train()`` on a parent module
    leaves it in eval mode (no dropout, no BatchNorm statistics updates).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FeaturePsi:
        super().train(False)
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.module(image)


def make_psi(psi: str | nn.Module | Psi) -> Psi:
    """ψ from a name in ``PSI_NAMES``, an nn.Module (frozen in a ``FeaturePsi``) or a callable.

    The paper (§2.1) lists the identity, image derivatives, the mean of colour channels and a
    learned transformation: "identity" is the image, "gradients" its horizontal and vertical
    finite differences, "mean-colour" the mean over channels, a module a frozen feature net.
    "low-pass" (ours) is the mean of each 4×4 block: it holds a scene's layout and colours and
    leaves the texture and noise that make an image look real free to change.
    """
    if isinstance(psi, str):
        try:
            return _PSI[psi]
        except KeyError:
            raise ValueError(
                f"unknown psi {psi!r}; expected one of {', '.join(PSI_NAMES)}"
            ) from None
    if isinstance(psi, FeaturePsi):
        return psi
    if isinstance(psi, nn.Module):
        return FeaturePsi(psi)
    if callable(psi):
        return psi
    raise TypeError(f"psi must be a name, an nn.Module or a callable, got {type(psi).__name__}")


def self_regularisation(
    refined: torch.Tensor,
    source: torch.Tensor,
    *,
    psi: str | nn.Module | Psi = "identity",
    weight: float,
) -> torch.Tensor:
    """weight · mean |ψ(refined) − ψ(source)|, the paper's λ‖ψ(R(x)) − ψ(x)‖₁ as a mean.

    The mean runs over the batch and every element of ψ's output (the paper sums over pixels;
    see the module docstring for the equivalent λ). `source`, the synthetic image, is a
    constant: no gradient flows into it or through ψ(source). Returns a float32 scalar.
    """
    if refined.shape != source.shape:
        raise ValueError(
            f"refined {tuple(refined.shape)} and source {tuple(source.shape)} differ in shape"
        )
    feature = make_psi(psi)
    with torch.no_grad():
        target = feature(source.detach())
    mapped = feature(refined)
    with _no_autocast(mapped):
        return weight * F.l1_loss(mapped.float(), target.float())
