"""Unlabeled real pools in all three trainers: real samples that are their image alone, or whose
json says ``"labeled": false``, train SimGAN (gaze), SG-GAN and SPIGAN (scene); SG-GAN judges
semantic-agnostically then and exactly as before with a labeled real pool."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from refinery import sim
from refinery.losses_scene import gradient_sensitive_loss, semantic_boundaries
from refinery.ontology import IGNORE
from refinery.samples import SampleError, encode_sample, image_component, is_labeled
from refinery.shards import write_shards
from train import sggan, simgan, spigan
from train.data import ImageStream, SceneStream

CPU = torch.device("cpu")
VARIANTS = ("image-only", "json-unlabeled")


def _strip(sample: dict, domain: str, variant: str) -> dict:
    """The sample's image alone, or with a json that only says it is unlabeled."""
    name = image_component(sample, domain)
    out = {"__key__": sample["__key__"], name: sample[name]}
    if variant == "json-unlabeled":
        out["json"] = {"domain": domain, "labeled": False}
    return out


def _write(root, name: str, samples, domain: str) -> str:
    write_shards((encode_sample(s, domain) for s in samples), str(root / f"{name}-%03d.tar"),
                 shard_size=1000)  # fmt: skip
    return str(root / f"{name}-000.tar")


def _pools(root, domain: str, count: int, **options) -> dict[str, str]:
    """Shards: synthetic (labeled), real labeled, real in each unlabeled variant, and a real
    pool whose samples alternate between labeled and image-only."""
    synthetic = list(sim.generate(domain, "synthetic", count, seed=41, **options))
    real = list(sim.generate(domain, "real", count, seed=42, **options))
    pools = {
        "synthetic": _write(root, "synthetic", synthetic, domain),
        "labeled": _write(root, "labeled", real, domain),
        "mixed": _write(root, "mixed", [s if i % 2 else _strip(s, domain, "image-only")
                                        for i, s in enumerate(real)], domain),
    }  # fmt: skip
    for variant in VARIANTS:
        pools[variant] = _write(root, variant, [_strip(s, domain, variant) for s in real], domain)
    return pools


@pytest.fixture(scope="module")
def eyes(tmp_path_factory):
    return _pools(tmp_path_factory.mktemp("eyes"), "gaze", 16)


@pytest.fixture(scope="module")
def streets(tmp_path_factory):
    return _pools(tmp_path_factory.mktemp("streets"), "scene", 6, height=64, width=128)


def _finite(values: dict[str, torch.Tensor]) -> bool:
    return all(math.isfinite(float(v)) for v in values.values())


# -- streams ----------------------------------------------------------------------------------


def test_a_labeled_stream_rejects_an_image_only_sample_and_a_real_one_reads_it(eyes):
    labeled = ImageStream(eyes["image-only"], domain="gaze", batch_size=2, seed=0)
    with pytest.raises(SampleError, match="json") as caught:
        labeled.next_batch()
    assert caught.value.component == "json"
    for variant in ("image-only", "json-unlabeled", "labeled"):
        real = ImageStream(eyes[variant], domain="gaze", batch_size=4, seed=0, labels=False)
        images, samples = real.next_batch()
        assert images.shape == (4, 1, 35, 55) and images.abs().max() <= 1.0
        assert all(is_labeled(s) == (variant == "labeled") for s in samples)


@pytest.mark.parametrize("variant", VARIANTS)
def test_scene_stream_gives_unlabeled_samples_ignore_maps_cropped_and_resumable(streets, variant):
    def stream(urls, **extra):
        return SceneStream(urls, batch_size=3, seed=5, ontology="sggan-8", shuffle_buffer=4,
                           fine_ontology="cityscapes-19", crop=(32, 48), **extra)  # fmt: skip

    # a synthetic (labels=True) stream needs labels
    refused = SampleError if variant == "image-only" else ValueError
    with pytest.raises(refused, match="'json'" if variant == "image-only" else "unlabeled"):
        stream(streets[variant]).next_batch()
    torch.manual_seed(0)
    first = stream(streets[variant], labels=False)
    batch = first.next_batch()
    assert batch["image"].shape == (3, 3, 32, 48)
    assert batch["labeled"].dtype == torch.bool and batch["labeled"].shape == (3,)
    assert not batch["labeled"].any()
    for key in ("seg", "seg_fine"):
        assert batch[key].shape == (3, 32, 48) and (batch[key] == IGNORE).all()
    state, rng = first.state_dict(), torch.get_rng_state()
    assert state == {"epoch": 0, "position": 3}
    after = first.next_batch()
    resumed = stream(streets[variant], labels=False)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    again = resumed.next_batch()
    assert after.keys() == again.keys()
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_a_mixed_scene_batch_says_which_samples_are_labeled(streets):
    stream = SceneStream(streets["mixed"], batch_size=6, seed=1, ontology="sggan-8",
                         shuffle_buffer=6, labels=False)  # fmt: skip
    batch = stream.next_batch()
    labeled = batch["labeled"]
    assert 0 < int(labeled.sum()) < 6
    for i in range(6):  # sggan-8 has no ignore pixels in a labeled map: IGNORE becomes "other"
        assert bool((batch["seg"][i] != IGNORE).all()) == bool(labeled[i])
        assert bool((batch["seg"][i] == IGNORE).all()) == (not labeled[i])


def test_an_ignore_map_has_no_boundaries_so_the_gradient_loss_weighs_beta_only():
    seg = torch.full((2, 16, 16), IGNORE, dtype=torch.int64)
    assert semantic_boundaries(seg).sum() == 0
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    kwargs = dict(num_groups=None)
    assert gradient_sensitive_loss(x, y, seg, alpha=1.0, beta=0.0, **kwargs) == 0
    beta = gradient_sensitive_loss(x, y, seg, alpha=0.9, beta=0.1, **kwargs)
    plain = gradient_sensitive_loss(x, y, seg, alpha=0.0, beta=1.0, **kwargs)
    assert beta > 0 and torch.allclose(beta, 0.1 * plain)


# -- SimGAN -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_simgan_trains_on_an_unlabeled_real_pool(eyes, variant):
    config = simgan.load_config(preset="small", batch_size=4, shuffle_buffer=4, buffer_size=8)
    method = simgan.SimGAN(config, synthetic=eyes["synthetic"], real=eyes[variant], device=CPU)
    for _ in range(2):
        assert _finite(method.generator_step(pretrain=False).losses)
        assert _finite(method.discriminator_step().losses)
    sheet = method.sample_sheet(count=2)
    assert sheet.ndim in (2, 3) and sheet.size


# -- SG-GAN -----------------------------------------------------------------------------------


def _sggan(streets, real: str) -> sggan.SGGAN:
    config = sggan.load_config(preset="small", batch_size=2, pool_size=3, shuffle_buffer=4)
    return sggan.SGGAN(config, synthetic=streets["synthetic"], real=real, device=CPU)


def _sggan_losses(method: sggan.SGGAN, iterations: int = 2) -> list[dict[str, float]]:
    out = []
    for _ in range(iterations):
        generated = method.generator_step(pretrain=False)
        values = {**generated.losses, **method.discriminator_step(generated.carry).losses}
        out.append({k: float(v) for k, v in values.items()})
    return out


@pytest.fixture
def selections(monkeypatch):
    """Counts the trainer's calls of semantic_select."""
    calls = []

    def counting(logits, seg):
        calls.append(tuple(seg.shape))
        return original(logits, seg)

    original = sggan.semantic_select
    monkeypatch.setattr(sggan, "semantic_select", counting)
    return calls


@pytest.mark.parametrize("variant", VARIANTS)
def test_sggan_with_unlabeled_real_judges_semantic_agnostically(streets, variant, selections):
    method = _sggan(streets, streets[variant])
    losses = _sggan_losses(method)
    assert all(math.isfinite(v) for step in losses for v in step.values())
    assert [step["discriminator/semantic"] for step in losses] == [0.0, 0.0]
    assert not selections  # the mean over the K groups, for every judged image
    maps = method.pool_ba.state_dict()["tensors"]["companion.0"]  # F(real)'s source maps
    assert (maps == IGNORE).all()
    assert method.sample_sheet(count=2).size


def test_sggan_picks_the_mode_per_step_from_the_real_batch(streets, selections):
    method = _sggan(streets, streets["mixed"])
    modes = [step["discriminator/semantic"] for step in _sggan_losses(method, iterations=3)]
    assert set(modes) == {0.0, 1.0}  # this seed draws an all-labeled batch and a mixed one
    assert len(selections) == 6 * modes.count(1.0)  # 2 generator + 4 discriminator judgements


def test_sggan_with_a_labeled_real_pool_is_semantic_and_as_before(streets, selections):
    method = _sggan(streets, streets["labeled"])
    losses = _sggan_losses(method)
    assert [step["discriminator/semantic"] for step in losses] == [1.0, 1.0]
    assert len(selections) == 2 * 6  # per iteration 2 generator and 4 discriminator judgements
    # the labeled-only reading a real pool had before unlabeled ones were allowed
    reference = _sggan(streets, streets["labeled"])
    old = reference.real
    reference.real = SceneStream(old.shards, batch_size=2, seed=old.images.seed, ontology="sggan-8",
                                 fine_ontology="cityscapes-19", shuffle_buffer=4)  # fmt: skip
    assert reference.real.labels and not old.labels
    assert _sggan_losses(reference) == losses  # bit-identical, not approximately equal
    unlabeled = _sggan_losses(_sggan(streets, streets["json-unlabeled"]))
    assert unlabeled[0]["generator/adversarial_ba"] != losses[0]["generator/adversarial_ba"]


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    return {
        f"{p.stem}.{k}": v
        for p in sorted(checkpoint.glob("*.safetensors"))
        for k, v in load_file(str(p)).items()
    }  # the state too: pools (with their IGNORE maps) and RNGs


def test_sggan_on_an_unlabeled_pool_resumes_exactly(streets, tmp_path):
    config = sggan.load_config(preset="small", batch_size=2, pool_size=3, shuffle_buffer=4,
                               steps=2, checkpoint_every=1, log_every=1, sample_every=2)  # fmt: skip
    pools = dict(synthetic=streets["synthetic"], real=streets["image-only"])
    straight = sggan.train(config, **pools, out=tmp_path / "a")
    sggan.train(config, **pools, out=tmp_path / "b", stop_after=1)
    resumed = sggan.train(config, **pools, out=tmp_path / "b", resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list((tmp_path / "a" / "samples").glob("*.png"))


# -- SPIGAN -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_spigan_trains_on_an_unlabeled_real_pool(streets, variant):
    config = spigan.load_config(preset="small", batch_size=2, crop=(32, 32), shuffle_buffer=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained VGG features
        method = spigan.SPIGAN(config, synthetic=streets["synthetic"], real=streets[variant],
                               device=CPU)  # fmt: skip
    for _ in range(2):
        assert _finite(method.generator_step(pretrain=False).losses)
        judged = method.discriminator_step()
        assert _finite(judged.losses) and _finite(method.task_step(judged.carry).losses)
    sheet = method.sample_sheet(count=2)
    assert isinstance(sheet, np.ndarray) and sheet.size
