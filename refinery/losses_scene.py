"""Losses of the scene refiners: SG-GAN (Li et al., BMVC 2018) and SPIGAN (Lee et al., ICLR 2019).

Code (paper). SG-GAN, "Semantic-aware Grad-GAN for Virtual-to-Real Urban Scene Adaption":
``lsgan_generator_loss`` / ``lsgan_discriminator_loss`` are its least-squares adversarial terms,
``cycle_loss(F(G(x)), x)`` its cycle consistency (weight λ_c = ``CYCLE_WEIGHT``),
``gradient_sensitive_loss(x, G(x), s_x, alpha=α, beta=β)`` its soft gradient-sensitive
objective l_grad (weight λ_g = ``GRADIENT_WEIGHT``): C_i, the image filter, is ``sobel``; C_s, the
central-difference filters of its Eq. 10, and |sgn(·)| are ``semantic_boundaries``; α, β come from
``gradient_weights(epoch)``. The semantic-aware discriminator picks, at each pixel, the channel of
that pixel's class (``refinery.nets.sggan.semantic_select``); the adversarial losses here take
those already-selected (B, 1, h, w) maps.

SPIGAN, "Privileged Adversarial Learning from Simulation": ``spigan_generator_objective`` is the
generator side of  min_{G,T,P} max_D  α L_GAN + β L_T + γ L_P + δ L_perc  (its §3), each term
returned unweighted next to the weighted total; ``spigan_discriminator_loss`` is D's side of
α L_GAN.

Official code followed (references are repo:path):
- Peilun-Li/SG-GAN:module.py ``tf_deriv`` + ``gradloss_criterion``: Sobel G_x, G_y applied to
  every image channel separately (a depthwise conv, 'SAME' = zero padding); the loss is the
  mean over pixels of  w · mean_{channels, directions} | |C_i ⊛ x| − |C_i ⊛ G(x)| |  — absolute
  responses per direction, never a gradient magnitude sqrt(G_x² + G_y²).
- Peilun-Li/SG-GAN:model.py: the semantic map is 'REFLECT'-padded, convolved per channel with
  [[0,0,0],[-1,0,1],[0,0,0]] and [[0,-1,0],[0,0,0],[0,1,0]], and
  w = |sgn(Σ_{channels, directions} |·|)| — a pixel is a boundary if any channel changes across
  it in either direction; the soft form 0.9·w + 0.1 is the commented-out alternative there.
  Its ``abs_criterion`` (mean L1) for the cycle with L1_lambda = 10, Lg_lambda = 5 (main.py),
  ``mae_criterion`` (mean squared error, misnamed) for LSGAN with targets 1 / 0, and
  d_loss = (real + fake) / 2 while g_loss has no 1/2.
- SPIGAN has no official code. masataka46/SPIGAN:train_GAN.py (TensorFlow re-implementation)
  uses α, β, γ, δ = 1, 0.5, 0.1, 0.33, L_T = CE(T(x_s)) + CE(T(G(x_s))), L_P = mean L1 of both,
  and L_perc = Σ over conv1_2 … conv5_2 of the per-layer mean L1; we do the same (with a
  standard per-pixel cross-entropy instead of its mean over pixels *and* classes).

Means, not sums, everywhere: the papers write ‖·‖₁ norms, SG-GAN's code reduces every term with
a mean and sets λ_c, λ_g for those means; for SPIGAN's α … δ we follow the re-implementation's
means as well.

Every loss computes in float32 with autocast off, so it can be called on float16 / bfloat16
activations inside ``torch.autocast``; everything is differentiable (the boundary mask |sgn(·)|
has zero gradient by definition and is computed without one).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F

from refinery.losses import _no_autocast
from refinery.ontology import IGNORE

CYCLE_WEIGHT = 10.0  # SG-GAN λ_c (Peilun-Li/SG-GAN:main.py --L1_lambda)
GRADIENT_WEIGHT = 5.0  # SG-GAN λ_g (Peilun-Li/SG-GAN:main.py --Lg_lambda)
HARD_BOUNDARY_EPOCHS = 3  # SG-GAN: (α, β) = (1, 0) for the first three epochs, then (0.9, 0.1)
SOFT_BOUNDARY_WEIGHTS = (0.9, 0.1)
# SPIGAN's α, β, γ, δ (its experiments; masataka46/SPIGAN:train_GAN.py uses the same)
SPIGAN_WEIGHTS = MappingProxyType({"alpha": 1.0, "beta": 0.5, "gamma": 0.1, "delta": 0.33})

# C_i: Sobel as cross-correlation (F.conv2d, like TF's depthwise_conv2d): right−left, bottom−top
_SOBEL = torch.tensor(
    [
        [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],  # G_x
        [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]],  # G_y
    ]
)  # (2, 3, 3)


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        first, second = (name.strip() for name in names.split(","))
        raise ValueError(f"{first} {tuple(a.shape)} and {second} {tuple(b.shape)} differ in shape")


# -- least squares (Mao et al., ICCV 2017), as SG-GAN and SPIGAN use it ----------------------------


def lsgan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """½ (mean (D(y) − 1)² + mean D(G(x))²): targets 1 for real, 0 for fake.

    Any shapes (patch maps, or SG-GAN's semantic-aware maps already reduced to (B, 1, h, w) by
    ``semantic_select``); each half is a mean over its own elements. The ½ is LSGAN's (Mao et al.)
    and SG-GAN's (model.py: ``d_loss = (d_loss_real + d_loss_fake) / 2``, as CycleGAN);
    it only rescales D's gradient, which Adam undoes. Returns a float32 scalar.
    """
    with _no_autocast(real_logits):
        real = (real_logits.float() - 1.0).square().mean()
        fake = fake_logits.float().square().mean()
        return 0.5 * (real + fake)


def lsgan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """mean (D(G(x)) − 1)²: the generator pushes its images towards the real target 1.

    No ½ here (Mao et al. write one): SG-GAN's g_loss and masataka46/SPIGAN's generator loss have
    none, and this is the scale their code puts next to λ_c, λ_g resp. β, γ, δ. Returns a float32
    scalar.
    """
    with _no_autocast(fake_logits):
        return (fake_logits.float() - 1.0).square().mean()


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """mean |F(G(x)) − x|: SG-GAN's (and CycleGAN's) cycle consistency, without λ_c.

    Mean over batch, channels and pixels (SG-GAN's ``abs_criterion``). Returns a float32 scalar.
    """
    _check_same_shape(reconstructed, original, "reconstructed, original")
    with _no_autocast(reconstructed):
        return F.l1_loss(reconstructed.float(), original.float())


# -- SG-GAN: soft gradient-sensitive objective ----------------------------------------------------


def sobel(images: torch.Tensor) -> torch.Tensor:
    """C_i ⊛ x: signed Sobel responses of every channel, (B, C, H, W) -> (B, C, 2, H, W).

    Index 0 of dim 2 is G_x (right minus left), 1 is G_y (bottom minus top). Per channel, not on
    grayscale, and zero padding ('SAME'), exactly as SG-GAN's ``tf_deriv``: border pixels see the
    step to 0, in source and translation alike. The two directions stay separate because SG-GAN
    compares |G_x| and |G_y| one by one; it never forms a magnitude. Returns float32.
    """
    if images.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    with _no_autocast(images):
        kernel = _SOBEL.to(images.device)[:, None]  # (2, 1, 3, 3)
        flat = images.float().reshape(batch * channels, 1, height, width)
        responses = F.conv2d(flat, kernel, padding=1)  # (B·C, 2, H, W)
    return responses.reshape(batch, channels, 2, height, width)


def _reflect_pad1(x: torch.Tensor) -> torch.Tensor:
    """Pad the last two dims by 1 with reflection (tf.pad 'REFLECT'); any dtype, H, W >= 2."""
    x = torch.cat([x[..., 1:2, :], x, x[..., -2:-1, :]], dim=-2)
    return torch.cat([x[..., :, 1:2], x, x[..., :, -2:-1]], dim=-1)


def semantic_boundaries(semantic: torch.Tensor, *, num_groups: int | None = None) -> torch.Tensor:
    """|sgn(C_s ⊛ s)| summed over classes: 1 on semantic boundary pixels, 0 inside regions.

    C_s are SG-GAN's central differences (its Eq. 10): s(y, x+1) − s(y, x−1) and
    s(y+1, x) − s(y−1, x), with reflection padding; a pixel is on a boundary if either is
    non-zero in any class channel (model.py: |sgn(Σ |·|)|). So both pixels next to a class
    change are marked (a two-pixel band), a pixel in a one-pixel-wide stripe is not (its two
    neighbours agree), and at the image edge reflection marks only the inner pixel.

    `semantic` is either
    - (B, H, W) integer class ids. Equivalent to SG-GAN's formula on the one-hot encoding, without
      building it: a pixel is a boundary iff its left and right (or upper and lower) neighbours
      have different ids. With `num_groups`, every id outside 0..num_groups−1 (``IGNORE`` = 255
      included) is "no class", one region together, exactly the all-zero one-hot vector: the edge
      between a class and unlabelled pixels is a boundary, the inside of an unlabelled area is
      not, and neither is an edge between two unlabelled ids. Without `num_groups` every distinct
      id is a region of its own.
    - (B, K, H, W) floating maps (one-hot, soft, or SG-GAN's colour label image), used as they
      are; `num_groups`, if given, must equal K.

    SG-GAN computes boundaries on its colour label image (every Cityscapes class its own colour),
    so e.g. road | sidewalk counts there although both are its group "road"; pass the finer ids
    (and ``num_groups=None``) to reproduce that. Returns (B, 1, H, W) float32, no gradient.
    """
    with torch.no_grad():
        if semantic.is_floating_point():
            if semantic.ndim != 4:
                raise ValueError(f"expected (B, K, H, W) maps, got shape {tuple(semantic.shape)}")
            if num_groups is not None and semantic.shape[1] != num_groups:
                raise ValueError(f"{semantic.shape[1]} channels, but num_groups={num_groups}")
            padded = _reflect_pad1(semantic.float())  # (B, K, H+2, W+2)
            dx = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]  # (B, K, H, W)
            dy = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
            change = (dx.abs() + dy.abs()).sum(dim=1, keepdim=True)  # (B, 1, H, W)
            return (change != 0).float()
        if semantic.ndim != 3:
            raise ValueError(f"expected (B, H, W) class ids, got shape {tuple(semantic.shape)}")
        seg = semantic.long()
        if num_groups is not None:
            seg = torch.where((seg >= 0) & (seg < num_groups), seg, -1)  # "no class" region
        padded = _reflect_pad1(seg)  # (B, H+2, W+2)
        dx = padded[:, 1:-1, 2:] != padded[:, 1:-1, :-2]  # (B, H, W)
        dy = padded[:, 2:, 1:-1] != padded[:, :-2, 1:-1]
        return (dx | dy).float()[:, None]


def gradient_weights(epoch: int) -> tuple[float, float]:
    """SG-GAN's (α, β) of the boundary weight α·|sgn(·)| + β for a 0-based epoch.

    (1, 0) for epochs 0, 1, 2 (only boundary pixels count), (0.9, 0.1) from epoch 3 on (the
    soft objective: every pixel counts a little). The code ships the hard form with the soft one
    commented out (model.py "change weighted_seg from (1.0, 0.0) to (0.9, 0.1)").
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
    return (1.0, 0.0) if epoch < HARD_BOUNDARY_EPOCHS else SOFT_BOUNDARY_WEIGHTS


def gradient_sensitive_loss(
    source: torch.Tensor,
    translated: torch.Tensor,
    seg: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    num_groups: int | None = 8,
) -> torch.Tensor:
    """SG-GAN's soft l_grad without λ_g: mean_pixels w · mean_{c,d} | |C_i ⊛ x| − |C_i ⊛ G(x)| |.

    `source` x and `translated` G(x) are (B, C, H, W); `seg` is the semantic map of the *source*,
    (B, H, W) ids or (B, K, H, W) maps at the same H, W (see ``semantic_boundaries`` for
    `num_groups` and unlabelled ids). w = α·|sgn(C_s ⊛ s_x)| + β, (B, 1, H, W); C_i is
    ``sobel``, d runs over its two directions. The mean over B·H·W of w times the mean over C·2
    is SG-GAN's ``gradloss_criterion`` exactly. Returns a float32 scalar.
    """
    _check_same_shape(source, translated, "source, translated")
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be non-negative, got {alpha}, {beta}")
    if seg.shape[-2:] != source.shape[-2:] or seg.shape[0] != source.shape[0]:
        raise ValueError(
            f"seg {tuple(seg.shape)} does not match the images {tuple(source.shape)} in B, H, W"
        )
    weight = alpha * semantic_boundaries(seg, num_groups=num_groups).to(source.device) + beta
    with _no_autocast(translated):
        difference = (sobel(source).abs() - sobel(translated).abs()).abs()  # (B, C, 2, H, W)
        return (weight[:, :, None] * difference).mean()  # weight (B, 1, 1, H, W)


# -- SPIGAN -----------------------------------------------------------------------------------


def spigan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's side of α L_GAN (least squares): ``lsgan_discriminator_loss``, targets 1 / 0, with ½.

    α is left out: D's objective has no other term, so α only rescales it (Adam undoes that).
    """
    return lsgan_discriminator_loss(real_logits, fake_logits)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean per-pixel CE over labelled pixels; 0 (not NaN) where every pixel is ignored."""
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected (B, K, H, W) logits and (B, H, W) labels, got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    labels = labels.long()
    with _no_autocast(logits):
        total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)


def _masked_l1(
    prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    """Mean |prediction − target| over valid elements; 0 where none is valid."""
    if target.ndim == prediction.ndim - 1:
        target = target[:, None]  # (B, H, W) depth for (B, 1, H, W) predictions
    _check_same_shape(prediction, target, "depth prediction, depth")
    with _no_autocast(prediction):
        difference = (prediction.float() - target.float()).abs()
    if valid is None:
        return difference.mean()
    if valid.ndim == prediction.ndim - 1:
        valid = valid[:, None]
    valid = valid.to(torch.bool).expand_as(difference)
    return torch.where(valid, difference, 0.0).sum() / valid.sum().clamp_min(1)


def _perceptual(
    synthetic: Sequence[torch.Tensor], generated: Sequence[torch.Tensor]
) -> torch.Tensor:
    if len(synthetic) != len(generated) or not synthetic:
        raise ValueError(
            f"need the same non-zero number of feature maps, got {len(synthetic)} synthetic and "
            f"{len(generated)} generated"
        )
    total = torch.zeros((), device=generated[0].device)
    for layer, (phi_s, phi_g) in enumerate(zip(synthetic, generated, strict=True)):
        _check_same_shape(phi_s, phi_g, f"synthetic layer {layer}, generated layer {layer}")
        with _no_autocast(phi_g):
            total = total + F.l1_loss(phi_g.float(), phi_s.detach().float())
    return total


def spigan_generator_objective(
    *,
    d_fake_logits: torch.Tensor | None = None,
    task_logits_synthetic: torch.Tensor | None = None,
    task_logits_generated: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    depth_pred_synthetic: torch.Tensor | None = None,
    depth_pred_generated: torch.Tensor | None = None,
    depth: torch.Tensor | None = None,
    features_synthetic: Sequence[torch.Tensor] | None = None,
    features_generated: Sequence[torch.Tensor] | None = None,
    alpha: float = 1.0,
    beta: float = 0.5,
    gamma: float = 0.1,
    delta: float = 0.33,
    ignore_index: int = IGNORE,
    depth_valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """α L_GAN + β L_T + γ L_P + δ L_perc, the G, T, P side of SPIGAN's objective (its §3).

    Terms, each a float32 scalar, returned *unweighted* under its name; "total" is the weighted
    sum. A weight of exactly 0 skips its term: nothing of it is computed, its key is absent, and
    its inputs may be None (γ = 0: no P at all).
    - "gan": L_GAN for G, least squares, mean (D(G(x_s)) − 1)²; `d_fake_logits` any shape.
    - "task": L_T = CE(T(x_s), y_s) + CE(T(G(x_s)), y_s), each the mean per-pixel cross-entropy
      over pixels whose label is not `ignore_index`; logits (B, K, H, W), `labels` (B, H, W).
    - "privileged": L_P = |P(x_s) − z_s| + |P(G(x_s)) − z_s|, each a mean L1 over the pixels
      where `depth_valid` (bool, (B, H, W) or like the predictions) holds, all if None;
      predictions (B, 1, H, W), `depth` (B, 1, H, W) or (B, H, W).
    - "perceptual": L_perc = Σ_layers mean |φ_l(x_s) − φ_l(G(x_s))|, φ_l the VGG19 features
      conv1_2, conv2_2, conv3_2, conv4_2, conv5_2 (the caller computes them; any list of
      equal-shaped pairs works). The synthetic features are targets: detached here.
    Weights default to the paper's α, β, γ, δ = 1, 0.5, 0.1, 0.33.
    """
    weights = {"gan": alpha, "task": beta, "privileged": gamma, "perceptual": delta}
    for name, weight in weights.items():
        if weight < 0:
            raise ValueError(f"the {name} weight must be non-negative, got {weight}")
    if not any(weights.values()):
        raise ValueError("every weight is 0: the objective has no term")
    needs = {
        "gan": {"d_fake_logits": d_fake_logits},
        "task": {
            "task_logits_synthetic": task_logits_synthetic,
            "task_logits_generated": task_logits_generated,
            "labels": labels,
        },
        "privileged": {
            "depth_pred_synthetic": depth_pred_synthetic,
            "depth_pred_generated": depth_pred_generated,
            "depth": depth,
        },
        "perceptual": {
            "features_synthetic": features_synthetic,
            "features_generated": features_generated,
        },
    }
    for name, inputs in needs.items():
        missing = [arg for arg, value in inputs.items() if value is None]
        if weights[name] and missing:
            raise ValueError(
                f"the {name} term has weight {weights[name]} but no {', '.join(missing)}"
            )

    terms: dict[str, torch.Tensor] = {}
    if alpha:
        terms["gan"] = lsgan_generator_loss(d_fake_logits)
    if beta:
        on_synthetic = _cross_entropy(task_logits_synthetic, labels, ignore_index)
        on_generated = _cross_entropy(task_logits_generated, labels, ignore_index)
        terms["task"] = on_synthetic + on_generated
    if gamma:
        on_synthetic = _masked_l1(depth_pred_synthetic, depth, depth_valid)
        on_generated = _masked_l1(depth_pred_generated, depth, depth_valid)
        terms["privileged"] = on_synthetic + on_generated
    if delta:
        terms["perceptual"] = _perceptual(features_synthetic, features_generated)
    total = sum(weights[name] * term for name, term in terms.items())
    return {"total": total, **terms}
