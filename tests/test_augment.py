"""DiffAugment for the discriminator (``refinery.augment``): each operation does what it says
per image, gradients flow through, the stream is seeded and resumable, bad policies are named."""

from __future__ import annotations

import pytest
import torch

from refinery import augment


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_policy_is_parsed_in_order_and_bad_names_are_refused_by_key():
    assert augment.parse_policy("") == ()
    assert augment.parse_policy(" cutout , brightness") == ("cutout", "brightness")
    with pytest.raises(ValueError, match=r"discriminator_augment: unknown .*'color'.*brightness"):
        augment.parse_policy("color,cutout")
    with pytest.raises(ValueError, match="'cutout' named more than once"):
        augment.parse_policy("cutout,brightness,cutout")


def test_an_empty_policy_leaves_images_alone_and_draws_nothing():
    policy = augment.Augment("", seed=3)
    before = policy.generator.get_state()
    x = torch.randn(2, 1, 5, 7)
    assert not policy and policy(x) is x
    assert torch.equal(policy.generator.get_state(), before)


def test_brightness_adds_one_offset_per_image_within_a_quarter_of_the_range():
    x = torch.randn(64, 1, 6, 9)
    shift = augment.brightness(x, _gen()) - x
    per_image = shift[:, :, :1, :1]
    assert torch.allclose(shift, per_image.expand_as(shift), atol=1e-6)
    assert per_image.abs().max() <= 0.5 and per_image.std() > 0.15  # uniform on ±0.5: 0.29


def test_contrast_scales_each_image_about_its_own_mean():
    x = torch.randn(64, 1, 6, 9)
    y = augment.contrast(x, _gen())
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(y.mean(dim=(1, 2, 3), keepdim=True), mean, atol=1e-5)
    factor = ((y - mean).flatten(1).norm(dim=1)) / ((x - mean).flatten(1).norm(dim=1))
    assert factor.min() >= 0.5 - 1e-5 and factor.max() <= 1.5 + 1e-5
    assert factor.max() - factor.min() > 0.5  # each image its own draw


def test_translation_moves_each_image_by_whole_pixels_and_fills_with_zero():
    h, w = 35, 55  # the eyes: shifts of up to 4 rows and 7 columns
    x = torch.zeros(200, 1, h, w)
    x[:, :, 17, 27] = 1.0
    y = augment.translation(x + 0.0, _gen(1))
    where = [(img[0] == 1).nonzero().tolist() for img in y]
    assert all(len(p) == 1 for p in where)  # moved, not blurred or lost
    dy = [17 - p[0][0] for p in where]  # each image's shift, as the pixel moved
    dx = [27 - p[0][1] for p in where]
    assert set(dy) == set(range(-4, 5)) and set(dx) == set(range(-7, 8))
    # content from outside the image is 0, never a copy of the border
    ones = augment.translation(torch.ones(200, 1, h, w), _gen(1))
    zero_rows = (ones[:, 0] == 0).all(dim=2).sum(dim=1)
    zero_cols = (ones[:, 0] == 0).all(dim=1).sum(dim=1)
    assert torch.equal(zero_rows, torch.tensor(dy).abs())
    assert torch.equal(zero_cols, torch.tensor(dx).abs())


def test_cutout_zeroes_one_rectangle_of_half_each_side_clipped_at_the_edges():
    h, w = 35, 55
    y = augment.cutout(torch.ones(300, 1, h, w), _gen(2))
    holes = y[:, 0] == 0
    rows, cols = holes.any(dim=2).sum(dim=1), holes.any(dim=1).sum(dim=1)
    assert torch.equal(holes.sum(dim=(1, 2)), rows * cols)  # one rectangle each
    assert rows.max() == 18 and cols.max() == 28  # half of each side, rounded
    assert rows.min() < 18 and cols.min() < 28  # clipped where its centre is near an edge
    assert (rows >= 9).all() and (cols >= 14).all()  # the centre is always inside


def test_gradients_flow_through_every_operation():
    x = torch.randn(4, 1, 35, 55, requires_grad=True)
    policy = augment.Augment("brightness,contrast,translation,cutout", seed=0)
    policy(x).square().sum().backward()
    assert x.grad is not None and (x.grad != 0).all()  # contrast's mean reaches every pixel
    # without it, pixels cut out or shifted off the image get no gradient; the rest do
    x.grad = None
    augment.Augment("translation,cutout", seed=0)(x).square().sum().backward()
    assert (x.grad == 0).any() and (x.grad != 0).float().mean() > 0.3


def test_the_stream_is_seeded_and_resumes_where_it_was_saved():
    x = torch.randn(8, 1, 12, 20)
    policy = "brightness,contrast,translation,cutout"
    a, b = augment.Augment(policy, seed=5), augment.Augment(policy, seed=5)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), augment.Augment(policy, seed=6)(x))
    saved = a.state_dict()
    expected = a(x)
    resumed = augment.Augment(policy, seed=0)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed(x), expected)
