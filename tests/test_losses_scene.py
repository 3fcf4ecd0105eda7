"""refinery.losses_scene against hand-computed values; SPIGAN's weights; pools keep maps aligned."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refinery import history
from refinery.history import HistoryBuffer
from refinery.losses_scene import (
    CYCLE_WEIGHT,
    GRADIENT_WEIGHT,
    SPIGAN_WEIGHTS,
    cycle_loss,
    gradient_sensitive_loss,
    gradient_weights,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    semantic_boundaries,
    sobel,
    spigan_discriminator_loss,
    spigan_generator_objective,
)
from refinery.ontology import IGNORE

# -- the hand-computed tiny case --------------------------------------------------------------
# A 1×1×4×4 image with a vertical edge between columns 1 and 2; Sobel with zero padding.
EDGE = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4)[None, None]  # (1, 1, 4, 4)
# |G_x|: per row, x(j+1) − x(j−1) = [0, 1, 1, -1] (the last one steps down to the zero pad),
# summed over rows with weights (1, 2, 1): 4× inside, 3× on the top and bottom rows.
ABS_GX = [[0, 3, 3, 3], [0, 4, 4, 4], [0, 4, 4, 4], [0, 3, 3, 3]]
# |G_y|: columns are constant, so only the top and bottom rows (stepping to the zero pad) respond:
# x(j−1) + 2x(j) + x(j+1) = [0, 1, 3, 3].
ABS_GY = [[0, 1, 3, 3], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 3, 3]]
# Classes 0 | 1 split between columns 1 and 2: central differences (reflection padded) are
# non-zero in columns 1 and 2 only.
SEG = torch.tensor([[0, 0, 1, 1]] * 4)[None]  # (1, 4, 4)
BOUNDARY = [[0, 1, 1, 0]] * 4


def test_sobel_matches_the_hand_computed_responses():
    responses = sobel(EDGE)
    assert responses.shape == (1, 1, 2, 4, 4) and responses.dtype == torch.float32
    assert responses[0, 0, 0].abs().tolist() == ABS_GX
    assert responses[0, 0, 1].abs().tolist() == ABS_GY
    assert responses[0, 0, 0, 1, 1] == 4  # G_x is right minus left
    # per channel: a second channel gets its own responses
    two = sobel(torch.cat([EDGE, 2 * EDGE], dim=1))
    torch.testing.assert_close(two[:, 1], 2 * two[:, 0])


def test_semantic_boundaries_of_the_tiny_case():
    assert semantic_boundaries(SEG).tolist() == [[BOUNDARY]]
    across_rows = [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert semantic_boundaries(SEG.transpose(1, 2)).tolist() == [[across_rows]]
    onehot = F.one_hot(SEG, 2).permute(0, 3, 1, 2).float()  # (1, 2, 4, 4)
    assert semantic_boundaries(onehot).tolist() == [[BOUNDARY]]
    assert semantic_boundaries(torch.zeros(1, 4, 4, dtype=torch.long)).sum() == 0


def sg_gan_boundaries(onehot: torch.Tensor) -> torch.Tensor:
    """SG-GAN model.py, literally: reflect pad, Eq. 10 filters per channel, |sgn(Σ |·|)|."""
    kernels = torch.tensor(
        [[[0.0, 0, 0], [-1, 0, 1], [0, 0, 0]], [[0.0, -1, 0], [0, 0, 0], [0, 1, 0]]]
    )
    k = onehot.shape[1]
    weight = kernels[:, None].repeat(k, 1, 1, 1)  # (2K, 1, 3, 3), depthwise
    conved = F.conv2d(F.pad(onehot, (1, 1, 1, 1), mode="reflect"), weight, groups=k)
    return conved.abs().sum(dim=1, keepdim=True).sign().abs()


def test_semantic_boundaries_equal_sg_gans_filters_on_one_hot_maps():
    generator = torch.Generator().manual_seed(0)
    seg = torch.randint(0, 8, (2, 9, 11), generator=generator)
    seg[0, 2:5, 3:8] = IGNORE
    seg[1, :, 6] = 9  # outside the 8 groups: "no class", like IGNORE
    onehot = F.one_hot(torch.where(seg < 8, seg, 8), 9)[..., :8].permute(0, 3, 1, 2).float()
    expected = sg_gan_boundaries(onehot)
    torch.testing.assert_close(semantic_boundaries(seg, num_groups=8), expected)
    torch.testing.assert_close(semantic_boundaries(onehot, num_groups=8), expected)


def test_unlabelled_ids_are_one_region_and_stripes_follow_eq_10():
    seg = torch.tensor([[[3, 3, IGNORE, 9, 9, 9]]]).expand(1, 3, 6)
    collapsed = semantic_boundaries(seg, num_groups=8)[0, 0, 0].tolist()
    assert collapsed == [0, 1, 1, 0, 0, 0]  # 3 | no-class only; 255 | 9 is no boundary
    distinct = semantic_boundaries(seg, num_groups=None)[0, 0, 0].tolist()
    assert distinct == [0, 1, 1, 1, 0, 0]  # the 255 pixel now also sits between 3 and 9
    stripe = torch.tensor([[[0, 0, 1, 0, 0]]]).expand(1, 3, 5)
    # the stripe's own pixel has equal neighbours: central differences skip it
    assert semantic_boundaries(stripe)[0, 0, 0].tolist() == [0, 1, 0, 1, 0]


def per_pixel(a, b):
    return [[x + y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)]


def test_gradient_sensitive_loss_on_the_hand_computed_case():
    flat = torch.zeros_like(EDGE)  # a translation that lost the edge: zero Sobel responses
    both = per_pixel(ABS_GX, ABS_GY)  # Σ_d |C_i ⊛ x| per pixel
    on_boundary = int((torch.tensor(both) * torch.tensor(BOUNDARY)).sum())
    everywhere = int(torch.tensor(both).sum())
    assert (on_boundary, everywhere) == (36, 56)
    # mean over 16 pixels of w · mean over (C = 1) × (2 directions)
    hard = gradient_sensitive_loss(EDGE, flat, SEG, alpha=1.0, beta=0.0)
    assert hard.dtype == torch.float32 and hard.item() == pytest.approx(36 / 32)  # 1.125
    soft = gradient_sensitive_loss(EDGE, flat, SEG, alpha=0.9, beta=0.1)
    assert soft.item() == pytest.approx((0.9 * 36 + 0.1 * 56) / 32)  # 1.1875
    assert gradient_sensitive_loss(EDGE, EDGE.clone(), SEG, alpha=0.9, beta=0.1).item() == 0
    # a one-hot map gives the same loss as the ids
    onehot = F.one_hot(SEG, 2).permute(0, 3, 1, 2).float()
    assert gradient_sensitive_loss(EDGE, flat, onehot, alpha=1.0, beta=0.0, num_groups=2) == hard


@pytest.mark.parametrize(
    ("columns", "counted", "expected"),
    [
        ([0, 1, 1, 1], [1], (4 + 4 + 4 + 4) / 32),  # edge at the image border: reflection
        ([0, 0, 0, 1], [2], (6 + 4 + 4 + 6) / 32),
        ([0, 0, 0, 0], [], 0.0),
    ],
)
def test_moving_the_label_boundary_moves_the_pixels_that_count(columns, counted, expected):
    seg = torch.tensor([columns] * 4)[None]
    mask = semantic_boundaries(seg)[0, 0]
    assert mask.tolist() == [[1.0 if j in counted else 0.0 for j in range(4)]] * 4
    loss = gradient_sensitive_loss(EDGE, torch.zeros_like(EDGE), seg, alpha=1.0, beta=0.0)
    assert loss.item() == pytest.approx(expected)


def test_gradient_sensitive_loss_gradient_and_autocast():
    generator = torch.Generator().manual_seed(1)
    source = torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1
    translated = (torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1).requires_grad_()
    seg = torch.randint(0, 8, (2, 8, 8), generator=generator)
    loss = gradient_sensitive_loss(source, translated, seg, alpha=0.9, beta=0.1)
    loss.backward()
    assert translated.grad is not None and torch.isfinite(translated.grad).all()
    assert translated.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = gradient_sensitive_loss(
            source.bfloat16(), translated.bfloat16(), seg, alpha=0.9, beta=0.1
        )
    assert low.dtype == torch.float32
    with pytest.raises(ValueError, match="does not match"):
        gradient_sensitive_loss(source, translated, seg[:, :4], alpha=1.0, beta=0.0)


@pytest.mark.parametrize(
    ("epoch", "weights"), [(0, (1.0, 0.0)), (2, (1.0, 0.0)), (3, (0.9, 0.1)), (10, (0.9, 0.1))]
)
def test_gradient_weights_schedule(epoch, weights):
    assert gradient_weights(epoch) == weights


def test_gradient_weights_rejects_bad_epochs():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            gradient_weights(bad)


def test_sg_gan_constants():
    assert (CYCLE_WEIGHT, GRADIENT_WEIGHT) == (10.0, 5.0)


# -- least squares and cycle ------------------------------------------------------------------


def test_lsgan_losses_on_constants():
    full = torch.full((2, 1, 3, 5), 1.0)
    empty = torch.zeros(2, 1, 3, 5)
    assert lsgan_discriminator_loss(full, empty).item() == 0.0  # a perfect D
    assert lsgan_discriminator_loss(empty, full).item() == 1.0  # ½ (1 + 1)
    real, fake = torch.full((2, 1, 4, 4), 0.5), torch.full((3, 1, 2, 2), 0.25)
    assert lsgan_discriminator_loss(real, fake).item() == 0.5 * (0.25 + 0.0625)
    assert lsgan_generator_loss(fake).item() == 0.5625  # (0.25 − 1)², no ½
    assert lsgan_generator_loss(full).item() == 0.0
    assert spigan_discriminator_loss(real, fake) == lsgan_discriminator_loss(real, fake)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lsgan_generator_loss(fake.bfloat16()).dtype == torch.float32


def test_cycle_loss():
    assert cycle_loss(torch.full((2, 3, 4, 4), 0.5), torch.zeros(2, 3, 4, 4)).item() == 0.5
    generator = torch.Generator().manual_seed(2)
    a, b = (
        torch.randn(2, 3, 5, 5, generator=generator),
        torch.randn(2, 3, 5, 5, generator=generator),
    )
    torch.testing.assert_close(cycle_loss(a, b), (a - b).abs().mean())
    with pytest.raises(ValueError, match="differ in shape"):
        cycle_loss(a, b[:1])


# -- SPIGAN -----------------------------------------------------------------------------------

TERMS = {"alpha": "gan", "beta": "task", "gamma": "privileged", "delta": "perceptual"}
INPUTS = {
    "gan": ("d_fake_logits",),
    "task": ("task_logits_synthetic", "task_logits_generated", "labels"),
    "privileged": ("depth_pred_synthetic", "depth_pred_generated", "depth"),
    "perceptual": ("features_synthetic", "features_generated"),
}


def spigan_inputs() -> dict:
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 5, (2, 6, 6), generator=g)
    labels[0, :2] = IGNORE
    valid = torch.rand(2, 6, 6, generator=g) > 0.3
    return {
        "d_fake_logits": torch.randn(2, 1, 3, 3, generator=g, requires_grad=True),
        "task_logits_synthetic": torch.randn(2, 5, 6, 6, generator=g, requires_grad=True),
        "task_logits_generated": torch.randn(2, 5, 6, 6, generator=g, requires_grad=True),
        "labels": labels,
        "depth_pred_synthetic": torch.rand(2, 1, 6, 6, generator=g, requires_grad=True),
        "depth_pred_generated": torch.rand(2, 1, 6, 6, generator=g, requires_grad=True),
        "depth": torch.rand(2, 6, 6, generator=g),
        "depth_valid": valid,
        "features_synthetic": [
            torch.randn(2, 4, 6, 6, generator=g),
            torch.randn(2, 8, 3, 3, generator=g),
        ],
        "features_generated": [
            torch.randn(2, 4, 6, 6, generator=g, requires_grad=True),
            torch.randn(2, 8, 3, 3, generator=g, requires_grad=True),
        ],
    }  # fmt: skip


def test_spigan_terms_from_their_definitions():
    x = spigan_inputs()
    out = spigan_generator_objective(**x)
    assert set(out) == {"total", "gan", "task", "privileged", "perceptual"}
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in out.values())
    torch.testing.assert_close(out["gan"], (x["d_fake_logits"] - 1).square().mean())
    ce = sum(
        F.cross_entropy(x[k], x["labels"], ignore_index=IGNORE)
        for k in ("task_logits_synthetic", "task_logits_generated")
    )
    torch.testing.assert_close(out["task"], ce)
    valid = x["depth_valid"]
    l1 = sum(
        (x[k][:, 0] - x["depth"]).abs()[valid].mean()
        for k in ("depth_pred_synthetic", "depth_pred_generated")
    )
    torch.testing.assert_close(out["privileged"], l1)
    perc = sum(
        (s - g).abs().mean()
        for s, g in zip(x["features_synthetic"], x["features_generated"], strict=True)
    )
    torch.testing.assert_close(out["perceptual"], perc)
    w = SPIGAN_WEIGHTS
    expected = (
        w["alpha"] * out["gan"]
        + w["beta"] * out["task"]
        + w["gamma"] * out["privileged"]
        + w["delta"] * out["perceptual"]
    )
    torch.testing.assert_close(out["total"], expected)
    out["total"].backward()
    for k in ("d_fake_logits", "task_logits_generated", "depth_pred_generated"):
        assert x[k].grad is not None and x[k].grad.abs().sum() > 0
    assert all(f.grad.abs().sum() > 0 for f in x["features_generated"])


@pytest.mark.parametrize("zeroed", list(TERMS))
def test_spigan_zero_weight_drops_exactly_that_term(zeroed):
    x = spigan_inputs()
    full = spigan_generator_objective(**x)
    name = TERMS[zeroed]
    for arg in INPUTS[name]:
        x[arg] = None  # a zero weight's inputs are never looked at
    less = spigan_generator_objective(**x, **{zeroed: 0.0})
    assert name not in less
    assert set(less) == set(full) - {name}
    for other in set(less) - {"total"}:
        assert torch.equal(less[other], full[other])
    weight = SPIGAN_WEIGHTS[zeroed]
    torch.testing.assert_close(full["total"] - less["total"], weight * full[name])


def test_spigan_rejects_missing_inputs_and_empty_objectives():
    x = spigan_inputs()
    x["depth"] = None
    with pytest.raises(ValueError, match=r"privileged.*depth"):
        spigan_generator_objective(**x)
    with pytest.raises(ValueError, match="no term"):
        spigan_generator_objective(**spigan_inputs(), alpha=0, beta=0, gamma=0, delta=0)


def test_spigan_all_ignored_labels_and_autocast():
    x = spigan_inputs()
    x["labels"] = torch.full_like(x["labels"], IGNORE)
    out = spigan_generator_objective(**x)
    assert out["task"].item() == 0.0 and torch.isfinite(out["total"])
    y = spigan_inputs()
    low = {
        k: v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in y.items()
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = spigan_generator_objective(**low)
    assert all(v.dtype == torch.float32 for v in out.values())


# -- pools: semantic maps stay with their images ----------------------------------------------


@pytest.mark.parametrize("policy", getattr(history, "POLICIES", ("half",)))
def test_history_keeps_semantic_maps_aligned_with_images(policy):
    kwargs = {} if policy == "half" else {"policy": policy}
    pool = HistoryBuffer(capacity=12, seed=4, **kwargs)
    served_old = 0
    for step in range(60):
        ids = torch.arange(step * 4, step * 4 + 4)  # image i has value i, its map value i
        images = ids.float()[:, None, None, None].expand(4, 3, 5, 5).clone()
        seg = ids[:, None, None].expand(4, 5, 5).clone()
        depth = ids.float()[:, None, None, None].expand(4, 1, 5, 5).clone() * 0.5
        out_images, out_seg, out_depth = pool.mix(images, seg, depth)
        assert out_images.shape == images.shape and out_seg.shape == seg.shape
        for row in range(4):
            value = out_images[row, 0, 0, 0]
            assert (out_images[row] == value).all()
            assert (out_seg[row] == value.long()).all()
            assert (out_depth[row] == value * 0.5).all()
        served_old += int((out_seg[:, 0, 0] < step * 4).sum())
    assert served_old > 20  # the history really was drawn from
