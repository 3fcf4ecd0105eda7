"""Downstream task networks: loading each domain, the networks, training, run dirs, repeatability."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from refinery import sim
from refinery.formats.nyu_hand import EVAL14
from refinery.nets.gaze import pitchyaw_to_vector
from refinery.samples import encode_sample
from refinery.shards import write_shards
from train.evaluation import downstream
from train.evaluation.downstream import TaskConfig, get_task
from train.evaluation.rows import Rows

SIZES = {"gaze": {}, "hand": {"size": 64}, "scene": {"height": 64, "width": 128}}


def _write(root, domain, variant, n, seed, **options):
    samples = sim.generate(domain, variant, n, seed=seed, **(options or SIZES[domain]))
    return write_shards(
        (encode_sample(s, domain) for s in samples), str(root / "%03d.tar"), shard_size=100
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Per domain: a synthetic training set and a real evaluation set, different seeds."""
    root = tmp_path_factory.mktemp("downstream")
    sizes = {"gaze": (400, 100), "hand": (64, 32), "scene": (16, 8)}
    urls = {}
    for domain, (n_train, n_eval) in sizes.items():
        urls[domain] = {
            "train": _write(root / domain / "train", domain, "synthetic", n_train, 31),
            "eval": _write(root / domain / "eval", domain, "real", n_eval, 32),
        }
    return urls


class Constant(nn.Module):
    """A 'model' that predicts the same look vector for every image."""

    def __init__(self, vector):
        super().__init__()
        self.vector = nn.Parameter(torch.tensor(vector, dtype=torch.float32))

    def forward(self, x):
        return self.vector.expand(len(x), 3)


# -- loading ----------------------------------------------------------------------------------


def test_gaze_set_scales_pixels_and_normalises_look_vectors(shards):
    data = get_task("gaze").load(shards["gaze"]["eval"])
    assert data.inputs.shape == (100, 1, 35, 55) and data.inputs.dtype == torch.float32
    assert data.inputs.min() >= -1 and data.inputs.max() <= 1
    assert torch.allclose(data.targets.norm(dim=1), torch.ones(100), atol=1e-6)
    first = next(sim.generate("gaze", "real", 1, seed=32))
    assert data.keys[0] == first["__key__"]
    expected = torch.tensor(first["png"], dtype=torch.float32) / 127.5 - 1
    assert torch.allclose(data.inputs[0, 0], expected)
    look = torch.tensor(first["json"]["look_vec"])
    assert torch.allclose(data.targets[0], look / look.norm(), atol=1e-6)
    assert data.info["scaling"] == {"low": 0.0, "high": 255.0}


def test_hand_set_centres_depth_on_the_hand_and_keeps_crop_pixels(shards):
    data = get_task("hand").load(shards["hand"]["eval"], input_size=32)
    assert data.inputs.shape == (32, 1, 32, 32) and data.targets.shape == (32, 14, 2)
    assert data.inputs.min() >= -1 and data.inputs.max() <= 1
    first = next(sim.generate("hand", "real", 1, seed=32, size=64))
    uv = np.array(first["json"]["joints_uvd"])[:, :2]
    np.testing.assert_allclose(data.targets[0].numpy(), uv, atol=1e-4)  # crop, not input, px
    assert data.info["crop"] == [64, 64] and data.info["size"] == [32, 32]
    # no measurement reads as far (+1); the hand's front is near -1, its joints in front of +1
    holes = first["depth.png"][::2, ::2] == 0
    assert holes.any() and bool((data.inputs[0, 0][torch.from_numpy(holes)] == 1).all())
    assert float(data.inputs[0].min()) == pytest.approx(-1.0, abs=0.05)
    palm = np.round((uv[-1] + 0.5) / 2 - 0.5).astype(int)  # the wrist, in input pixels
    assert float(data.inputs[0, 0, palm[1], palm[0]]) < 0.5


def test_hand_labels_with_36_joints_use_the_nyu_14_subset(tmp_path):
    sample = next(sim.generate("hand", "synthetic", 1, seed=5, size=64))
    fourteen = np.array(sample["json"]["joints_uvd"])
    all36 = np.zeros((36, 3))
    all36[list(EVAL14)] = fourteen
    all36[[i for i in range(36) if i not in EVAL14]] = 999.0  # would be far off if used
    sample["json"]["joints_uvd"] = all36.tolist()
    sample["json"]["joints_xyz"] = (all36 + 500.0).tolist()
    write_shards([encode_sample(sample, "hand")], str(tmp_path / "%03d.tar"), shard_size=1)
    data = get_task("hand").load(str(tmp_path / "000.tar"))
    np.testing.assert_allclose(data.targets[0].numpy(), fourteen[:, :2], atol=1e-5)


def test_bad_hand_label_names_the_sample(tmp_path):
    sample = next(sim.generate("hand", "synthetic", 1, seed=5, size=64))
    sample["json"]["joints_uvd"] = sample["json"]["joints_xyz"] = [[1.0, 2.0, 3.0]] * 5
    write_shards([encode_sample(sample, "hand")], str(tmp_path / "%03d.tar"), shard_size=1)
    with pytest.raises(ValueError, match=rf"{sample['__key__']}.*000.tar.*14 or 36 joints"):
        get_task("hand").load(str(tmp_path / "000.tar"))


def test_scene_set_resizes_to_multiples_of_32_and_keeps_ignore(tmp_path):
    urls = _write(tmp_path, "scene", "real", 3, 7, height=72, width=140)
    data = get_task("scene").load(urls)
    assert data.inputs.shape == (3, 3, 64, 128) and data.targets.shape == (3, 64, 128)
    assert data.info["frames"] == [72, 140] and data.info["ontology"] == "cityscapes-19"
    assert len(data.info["classes"]) == 19
    ids = set(np.unique(data.targets.numpy()).tolist())
    assert ids <= set(range(19)) | {255}  # nearest resize: no blended ids
    coarse = get_task("scene").load(urls, ontology="cityscapes-7")
    assert len(coarse.info["classes"]) == 7
    assert set(np.unique(coarse.targets.numpy()).tolist()) <= set(range(7)) | {255}


def test_mixed_sizes_in_one_set_are_refused(tmp_path):
    a = _write(tmp_path / "a", "gaze", "synthetic", 1, 1)
    b = _write(tmp_path / "b", "gaze", "synthetic", 1, 2, height=36, width=60)
    with pytest.raises(ValueError, match="one size per set"):
        get_task("gaze").load([*a, *b])


@pytest.mark.parametrize("domain", downstream.TASKS)
def test_a_set_on_disk_trains_and_scores_exactly_as_in_memory(domain, shards, tmp_path):
    """``scratch``: the images stored (8-bit) in files, read a batch at a time; the same
    inputs, the same trained weights and the same metrics as the set held in memory."""
    task = get_task(domain)
    urls = shards[domain]["train"]
    memory = task.load(urls).take(range(16))
    whole = task.load(urls, scratch=tmp_path)
    disk = whole.take(range(16))
    assert isinstance(disk.inputs, Rows) and not isinstance(memory.inputs, Rows)
    assert torch.equal(disk.inputs[:], memory.inputs)
    assert torch.equal(disk.targets[:], memory.targets)
    assert disk.keys == memory.keys and disk.fingerprints == memory.fingerprints
    assert disk.info == memory.info
    if domain != "hand":  # 8-bit on disk, one byte per input value (hand: float32 depth)
        (stored,) = tmp_path.glob("inputs-*.rows")
        assert stored.stat().st_size == len(whole) * memory.inputs[0].numel()
    config = TaskConfig(domain=domain, epochs=1, batch_size=4)
    a, b = (downstream.fit(task, d, config, device="cpu") for d in (memory, disk))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    ma, va = task.test(a, memory)
    mb, vb = task.test(b, disk)
    assert ma == mb and np.array_equal(va, vb)
    assert ma == task.score(task.predict(a, memory), memory)[0]  # batches = all at once
    drift = task.label_drift(a, disk, disk)
    assert drift == pytest.approx(0.0, abs=1e-9)
    assert task.label_drift(a, memory, memory.take(range(15, -1, -1))) > 0


def test_vary_appearance_changes_tone_not_geometry():
    """Each image gets its own tone, contrast, shading, blur and noise; where its content is
    stays: the darkest blob of an image is where it was."""
    x = torch.full((6, 1, 36, 60), 0.6)
    x[:, :, 14:22, 20:28] = -0.9  # a dark 'pupil'
    rng = torch.Generator().manual_seed(0)
    y = downstream.vary_appearance(x, rng)
    assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= -1 and y.max() <= 1
    assert not torch.equal(y[0], y[1])  # drawn per image
    ring = torch.zeros(36, 60, dtype=torch.bool)
    ring[10:26, 16:32] = True
    ring[14:22, 20:28] = False
    for image in y[:, 0]:  # the pupil still darker than what surrounds it, by a margin
        assert float(image[14:22, 20:28].mean()) < float(image[ring].mean()) - 0.2
    colour = downstream.vary_appearance(torch.zeros(4, 3, 32, 32), rng)
    assert colour.shape == (4, 3, 32, 32) and torch.isfinite(colour).all()
    again = downstream.vary_appearance(x, torch.Generator().manual_seed(0))
    assert torch.equal(again, y)  # from the generator alone


def test_appearance_training_is_refused_for_depth():
    assert TaskConfig(domain="gaze", appearance=True).appearance
    with pytest.raises(ValueError, match="hand has no appearance changes"):
        TaskConfig(domain="hand", appearance=True)


@pytest.mark.slow
def test_an_appearance_robust_estimator_ignores_tone_but_not_geometry(tmp_path):
    """Trained with vary_appearance on standardised images, the gaze network moves far less
    than the plain one when the eyes' tone changes (gamma, blur, noise), and as much when the
    eyes move (flipped left-right: the look vector's x flips), and it still estimates gaze."""
    task = get_task("gaze")
    data = task.load(_write(tmp_path / "train", "gaze", "synthetic", 1500, 41))
    held = task.load(_write(tmp_path / "held", "gaze", "synthetic", 300, 42))
    plain = downstream.fit(task, data, TaskConfig(domain="gaze"))
    robust = downstream.fit(task, data, TaskConfig(domain="gaze", appearance=True))
    assert isinstance(robust, downstream.Standardised)
    x = ((held.inputs + 1) / 2) ** 0.6
    x = torch.from_numpy(np.stack([cv2.GaussianBlur(i[0].numpy(), (5, 5), 1.0)[None] for i in x]))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    toned = replace(held, inputs=(x + 0.04 * noise).clamp(0, 1) * 2 - 1)
    flipped = replace(held, inputs=held.inputs.flip(-1))
    models = {"plain": plain, "robust": robust}
    tone = {name: task.label_drift(m, held, toned) for name, m in models.items()}
    move = {name: task.label_drift(m, held, flipped) for name, m in models.items()}
    error = {name: task.test(m, held)[0]["mean_angular_error_deg"] for name, m in models.items()}
    assert tone["robust"] < 0.7 * tone["plain"], tone
    assert move["robust"] > 10 * tone["robust"] and move["robust"] > move["plain"] * 0.8, move
    assert error["robust"] < 1.5 * error["plain"], error


# -- networks: shapes, finite outputs, one-batch overfit -------------------------------------


@pytest.mark.parametrize("domain", downstream.TASKS)
def test_task_network_overfits_one_batch(domain, shards):
    """Each task network, through its task's loss and decoding, learns 4 samples by heart."""
    task = get_task(domain)
    data = task.load(shards[domain]["train"]).take(range(4))
    torch.manual_seed(0)
    model = task.build(task.network, data)
    output = model(data.inputs)
    expected = {"gaze": (4, 3), "hand": (4, 2, 14, 16, 16), "scene": (4, 19, 64, 128)}[domain]
    assert tuple(output.shape) == expected and torch.isfinite(output).all()
    optimiser = torch.optim.Adam(model.parameters(), lr={"scene": 2e-3}.get(domain, 3e-3))
    model.train()
    losses = []
    for _ in range(150):
        loss = task.loss(model(data.inputs), data.targets, data)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5
    metrics, _ = task.score(task.predict(model, data), data)
    if domain == "gaze":
        assert metrics["mean_angular_error_deg"] < 3
    elif domain == "hand":
        assert metrics["mean_joint_error_px"] < 4  # crop pixels, 64-px crops, 16-px heatmaps
    else:
        assert metrics["pixel_accuracy"] > 0.9


def test_gaze_scores_known_angles():
    task = get_task("gaze")
    straight = [0.0, 0.0, -1.0]  # looking at the camera
    # true gaze 0°, 90° (yaw), 30° (pitch) and 180° away from the constant prediction
    pitchyaw = torch.tensor([[0.0, 0.0], [0.0, math.pi / 2], [math.pi / 6, 0.0]])
    truth = torch.cat([pitchyaw_to_vector(pitchyaw), torch.tensor([[0.0, 0.0, 2.0]])])
    truth = truth / truth.norm(dim=1, keepdim=True)
    data = downstream.LabeledSet("gaze", list("abcd"), torch.zeros(4, 1, 35, 55), truth, [""] * 4)
    metrics = downstream.evaluate(task, Constant(straight), data)
    assert metrics["mean_angular_error_deg"] == pytest.approx((0 + 90 + 30 + 180) / 4, abs=1e-3)
    assert metrics["median_angular_error_deg"] == pytest.approx(60, abs=1e-3)  # (30 + 90) / 2
    assert metrics["n_eval"] == 4
    # predictions are unit vectors whatever the model's scale
    predicted = task.predict(Constant([0.0, 0.0, -5.0]), data)
    assert torch.allclose(predicted, torch.tensor([[0.0, 0.0, -1.0]] * 4))


# -- settings ---------------------------------------------------------------------------------


def test_unsupported_domain_names_what_exists():
    with pytest.raises(ValueError, match="supported: gaze, hand, scene"):
        downstream.train_task("nope", train="x.tar", eval="y.tar")


def test_defaults_come_from_the_task_and_bad_settings_fail_before_reading_data():
    config = TaskConfig(domain="hand")
    assert config.network == "hand-hourglass-small" and config.epochs == get_task("hand").epochs
    with pytest.raises(ValueError, match="epochs"):
        downstream.train_task("gaze", train="x.tar", eval="y.tar", epochs=-1)
    with pytest.raises(ValueError, match="not a task network"):
        downstream.train_task("gaze", train="x.tar", eval="y.tar", network="simgan-refiner-small")


# -- training from shards ---------------------------------------------------------------------


@pytest.mark.slow
def test_gaze_training_beats_chance_and_writes_a_run_dir(shards, tmp_path):
    logged = []
    urls = shards["gaze"]
    common = dict(train=urls["train"], eval=urls["train"], epochs=6, batch_size=16, lr=2e-3)
    metrics = downstream.train_task(
        "gaze", **common, out=tmp_path, seed=3, progress=lambda e, v: logged.append((e, v))
    )
    # Chance (predicting the mean direction) is ~23° on this label distribution.
    assert metrics["mean_angular_error_deg"] < 12
    assert metrics["n_train"] == 400 and metrics["n_eval"] == 400 and metrics["epochs"] == 6
    assert metrics["network"] == "gaze-estimator-small" and metrics["seconds"] > 0
    assert [e for e, _ in logged] == [1, 2, 3, 4, 5, 6]
    assert logged[-1][1]["loss"] < logged[0][1]["loss"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "metrics.json",
        "model.safetensors",
    ]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["input"]["size"] == [35, 55] and config["input"]["range"] == [-1.0, 1.0]
    assert config["input"]["scaling"] == {"low": 0.0, "high": 255.0}
    assert config["seed"] == 3 and config["epochs"] == 6 and config["metric"]["unit"] == "deg"


@pytest.mark.slow
def test_hand_run_dir_restores_the_model_and_its_preprocessing(shards, tmp_path):
    urls = shards["hand"]
    metrics = downstream.train_task(
        "hand", train=urls["train"], eval=urls["eval"], out=tmp_path, epochs=2, batch_size=16
    )
    assert metrics["n_eval"] == 32 and metrics["n_joints"] == 32 * 14
    assert metrics["pck"]["thresholds"][0] == 0 and len(metrics["pck"]["share"]) == 21
    assert 0 <= metrics["pck_5px"] <= metrics["pck_10px"] <= 1
    model, config, info = downstream.load_task_model(tmp_path)
    assert config.domain == "hand" and info["size"] == [64, 64]
    task = get_task("hand")
    data = task.load(urls["eval"], **downstream.load_options(info, "hand"))
    again = downstream.evaluate(task, model, data)
    assert again["mean_joint_error_px"] == pytest.approx(metrics["mean_joint_error_px"])


def test_same_seed_same_model_and_global_rng_untouched(shards):
    task = get_task("scene")  # FCN8s has dropout: it must draw from the seed too
    data = task.load(shards["scene"]["eval"])
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    runs = [
        downstream.evaluate(
            task,
            downstream.fit(task, data, TaskConfig(domain="scene", epochs=1, batch_size=4, seed=s)),
            data,
        )["miou"]
        for s in (5, 5, 6)
    ]
    assert torch.rand(1) == before  # fitting did not draw from the global generator
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_fit_refuses_a_set_of_another_domain(shards):
    data = get_task("gaze").load(shards["gaze"]["eval"])
    with pytest.raises(ValueError, match="hand task"):
        downstream.fit(get_task("hand"), data)
