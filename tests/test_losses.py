"""refinery.losses against values computed by hand, each ψ, accuracy, and bfloat16 autocast."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from refinery.losses import (
    LOW_PASS,
    PSI_NAMES,
    REAL,
    REFINED,
    FeaturePsi,
    discriminator_accuracy,
    local_adversarial_loss,
    make_psi,
    r1_penalty,
    self_regularisation,
)
from refinery.registry import build_network


def ce(z_refined: float, z_real: float, target: int) -> float:
    """Two-class cross-entropy of one patch, from its definition."""
    z = (z_refined, z_real)
    return math.log(math.exp(z[0]) + math.exp(z[1])) - z[target]


# (B=2, 2 classes, h=1, w=2): patch (b, j) has logits (LOGITS[b][0][0][j], LOGITS[b][1][0][j]).
LOGITS = [
    [[[0.0, 2.0]], [[1.0, -1.0]]],
    [[[0.5, -3.0]], [[0.5, 0.25]]],
]
PATCHES = [(0.0, 1.0), (2.0, -1.0), (0.5, 0.5), (-3.0, 0.25)]


def test_constants():
    assert (REFINED, REAL) == (0, 1)


@pytest.mark.parametrize("target", [REAL, REFINED])
def test_local_adversarial_loss_is_the_mean_patch_cross_entropy(target):
    logits = torch.tensor(LOGITS)
    expected = sum(ce(z0, z1, target) for z0, z1 in PATCHES) / len(PATCHES)
    loss = local_adversarial_loss(logits, target)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_local_adversarial_loss_does_not_grow_with_the_patch_map():
    logits = torch.tensor(LOGITS)
    tiled = logits.repeat(3, 1, 4, 5)  # 3x the batch, 20x the patches
    torch.testing.assert_close(
        local_adversarial_loss(tiled, REAL), local_adversarial_loss(logits, REAL)
    )


def test_local_adversarial_loss_per_sample_targets_and_gradient():
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = local_adversarial_loss(logits, torch.tensor([REAL, REFINED]))
    expected = (
        ce(*PATCHES[0], REAL)
        + ce(*PATCHES[1], REAL)
        + ce(*PATCHES[2], REFINED)
        + ce(*PATCHES[3], REFINED)
    ) / 4
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    # d CE / d z_target = softmax(z)_target - 1, divided by the 4 patches averaged over.
    z0, z1 = PATCHES[0]
    p_real = math.exp(z1) / (math.exp(z0) + math.exp(z1))
    assert math.isclose(logits.grad[0, REAL, 0, 0].item(), (p_real - 1) / 4, rel_tol=1e-5)
    assert math.isclose(logits.grad[0, REFINED, 0, 0].item(), (1 - p_real) / 4, rel_tol=1e-5)


def test_local_adversarial_loss_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, 2, h, w\)"):
        local_adversarial_loss(torch.zeros(2, 3, 1, 1), REAL)
    with pytest.raises(ValueError, match="REAL"):
        local_adversarial_loss(torch.zeros(2, 2, 1, 1), 2)
    with pytest.raises(ValueError, match="shape"):
        local_adversarial_loss(torch.zeros(2, 2, 1, 1), torch.tensor([REAL]))


def test_discriminator_accuracy():
    # Sample 0: both patches say real; sample 1: the first says real, the second refined.
    logits = torch.tensor([[[[0.0, -1.0]], [[1.0, 2.0]]], [[[-2.0, 3.0]], [[0.5, 1.0]]]])
    assert discriminator_accuracy(logits, REAL) == pytest.approx(3 / 4)
    assert discriminator_accuracy(logits, REFINED) == pytest.approx(1 / 4)
    assert discriminator_accuracy(logits, torch.tensor([REAL, REFINED])) == pytest.approx(3 / 4)
    assert discriminator_accuracy(logits, torch.tensor([REFINED, REAL])) == pytest.approx(1 / 4)
    assert isinstance(discriminator_accuracy(logits, REAL), float)


# -- self-regularisation ----------------------------------------------------------------------

REFINED_IMAGE = [[[[0.5, -0.5, 1.0], [0.0, 0.25, -1.0]], [[0.0, 0.0, 0.5], [1.0, 1.0, 1.0]]]]
SOURCE_IMAGE = [[[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[1.0, -1.0, 0.5], [0.5, 0.0, 1.0]]]]


def flat(image: list) -> list[float]:
    return [v for channel in image[0] for row in channel for v in row]


def test_self_regularisation_identity():
    refined = torch.tensor(REFINED_IMAGE, requires_grad=True)
    source = torch.tensor(SOURCE_IMAGE)
    diffs = [abs(a - b) for a, b in zip(flat(REFINED_IMAGE), flat(SOURCE_IMAGE), strict=True)]
    loss = self_regularisation(refined, source, psi="identity", weight=0.5)
    assert math.isclose(loss.item(), 0.5 * sum(diffs) / 12, rel_tol=1e-6)
    loss.backward()
    signs = [
        math.copysign(1, a - b) if a != b else 0
        for a, b in zip(flat(REFINED_IMAGE), flat(SOURCE_IMAGE), strict=True)
    ]
    torch.testing.assert_close(refined.grad.flatten(), 0.5 * torch.tensor(signs) / 12)
    assert source.grad is None


def test_self_regularisation_mean_colour():
    refined, source = torch.tensor(REFINED_IMAGE), torch.tensor(SOURCE_IMAGE)
    mean = [
        [(REFINED_IMAGE[0][0][y][x] + REFINED_IMAGE[0][1][y][x]) / 2 for x in range(3)]
        for y in range(2)
    ]
    mean_src = [
        [(SOURCE_IMAGE[0][0][y][x] + SOURCE_IMAGE[0][1][y][x]) / 2 for x in range(3)]
        for y in range(2)
    ]
    expected = sum(abs(mean[y][x] - mean_src[y][x]) for y in range(2) for x in range(3)) / 6
    loss = self_regularisation(refined, source, psi="mean-colour", weight=2.0)
    assert math.isclose(loss.item(), 2.0 * expected, rel_tol=1e-6)


def test_self_regularisation_gradients():
    # One 2×3 channel: dx has 2×2 entries, dy 1×3.
    image = [[[[1.0, 3.0, 2.0], [0.0, 0.0, 4.0]]]]
    dx = [3 - 1, 2 - 3, 0 - 0, 4 - 0]
    dy = [0 - 1, 0 - 3, 4 - 2]
    features = torch.tensor(dx + dy, dtype=torch.float32)
    torch.testing.assert_close(make_psi("gradients")(torch.tensor(image))[0], features)
    # A constant offset has no gradients: ψ = "gradients" does not see it, "identity" does.
    offset = torch.tensor(image) + 0.75
    assert self_regularisation(offset, torch.tensor(image), psi="gradients", weight=1.0) == 0
    loss = self_regularisation(offset, torch.tensor(image), psi="identity", weight=1.0)
    assert math.isclose(loss.item(), 0.75, rel_tol=1e-6)


def test_self_regularisation_with_a_frozen_feature_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Dropout(0.5))
    psi = FeaturePsi(net)
    assert not any(p.requires_grad for p in net.parameters())
    nn.ModuleDict({"psi": psi}).train()  # a trainer switching its modules to train mode
    assert not psi.training and not net[1].training and not net[2].training
    running = net[1].running_mean.clone()

    refined = torch.tensor(REFINED_IMAGE, requires_grad=True)
    source = torch.tensor(SOURCE_IMAGE)
    loss = self_regularisation(refined, source, psi=psi, weight=1.0)
    with torch.no_grad():
        expected = (net(refined) - net(source)).abs().mean()
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-6)
    loss.backward()
    assert refined.grad is not None and refined.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    torch.testing.assert_close(net[1].running_mean, running)
    assert isinstance(make_psi(nn.Identity()), FeaturePsi)


def test_make_psi_names_and_errors():
    for name in PSI_NAMES:
        assert callable(make_psi(name))

    def halve(image):
        return image / 2

    assert make_psi(halve) is halve
    with pytest.raises(ValueError, match="identity, mean-colour, gradients"):
        make_psi("vgg")
    with pytest.raises(TypeError):
        make_psi(3)
    with pytest.raises(ValueError, match="shape"):
        self_regularisation(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3), weight=1.0)


# -- R1 ---------------------------------------------------------------------------------------


def test_r1_penalty_is_the_mean_patch_gradient_norm_and_trains_the_discriminator():
    """With windows that do not overlap (a 2x2 kernel at stride 2) the one-pass penalty equals
    the mean over images and patches of each patch's own ‖∇ₓ log-odds‖², computed patch by
    patch; it is differentiable into D's weights, and zero for a D that ignores its input."""
    torch.manual_seed(0)
    discriminator = nn.Sequential(nn.Conv2d(1, 4, 2, stride=2), nn.Tanh(), nn.Conv2d(4, 2, 1))
    images = (torch.rand(3, 1, 4, 6) * 2 - 1).requires_grad_(True)
    logits = discriminator(images)  # (3, 2, 2, 3): 6 patches
    penalty = r1_penalty(logits, images)
    by_hand = []
    for b in range(3):
        for i in range(2):
            for j in range(3):
                log_odds = logits[b, REAL, i, j] - logits[b, REFINED, i, j]
                (grad,) = torch.autograd.grad(log_odds, images, retain_graph=True)
                by_hand.append(float(grad.pow(2).sum()))
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)
    penalty.backward()
    weights = [p for p in discriminator.parameters() if p.dim() > 1]  # biases move no gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)

    blind = nn.Conv2d(1, 2, 2, stride=2)
    with torch.no_grad():
        blind.weight.zero_()
    images = torch.rand(2, 1, 4, 6).requires_grad_(True)
    assert r1_penalty(blind(images), images).item() == 0.0


# -- mixed precision --------------------------------------------------------------------------


@pytest.mark.parametrize("psi", PSI_NAMES)
def test_losses_under_bfloat16_autocast(psi):
    torch.manual_seed(0)
    refiner = build_network("simgan-refiner-small")
    discriminator = build_network("simgan-discriminator-small")
    synthetic = torch.rand(2, 1, 35, 55) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        refined = refiner(synthetic)
        logits = discriminator(refined)
        assert logits.dtype == torch.bfloat16
        adversarial = local_adversarial_loss(logits, REAL)
        regularisation = self_regularisation(refined, synthetic, psi=psi, weight=0.1)
        accuracy = discriminator_accuracy(logits, REAL)
    assert adversarial.dtype == regularisation.dtype == torch.float32
    assert math.isfinite(adversarial.item()) and math.isfinite(regularisation.item())
    assert 0.0 <= accuracy <= 1.0
    (adversarial + regularisation).backward()
    grads = [p.grad for p in refiner.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_low_pass_psi_holds_layout_and_colour_and_frees_texture():
    """ "low-pass" is the mean of each 4×4 block: a zero-mean pattern inside the blocks (texture)
    costs nothing, a shifted edge or a colour change does."""
    torch.manual_seed(0)
    scene = torch.zeros(2, 3, 16, 32)
    scene[..., 8:, :] = 0.5  # a horizon on a block boundary
    texture = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(8, 16) * 0.3  # zero mean per block
    assert self_regularisation(scene + texture, scene, psi="low-pass", weight=1.0).item() == 0.0
    torch.testing.assert_close(
        make_psi("low-pass")(scene), torch.nn.functional.avg_pool2d(scene, LOW_PASS)
    )
    shifted = torch.roll(scene, 2, dims=2)  # the horizon two rows lower
    assert self_regularisation(shifted, scene, psi="low-pass", weight=1.0).item() > 0.05
    tinted = scene.clone()
    tinted[:, 1] += 0.2  # greener
    loss = self_regularisation(tinted, scene, psi="low-pass", weight=1.0)
    assert loss.item() == pytest.approx(0.2 / 3, rel=1e-5)
