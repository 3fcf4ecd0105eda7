"""The shared loop and the SimGAN trainer: recipes, streams, exact resume, non-finite guard, logs."""

from __future__ import annotations

import copy
import importlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from refinery import sim
from refinery.samples import encode_sample
from refinery.shards import expand_urls, write_shards
from train import methods, simgan
from train.config import RECIPES, OptimiserConfig, from_dict, parse_settings, resolve
from train.data import ImageStream, scaling_for
from train.loop import NonFiniteLoss, RunDir

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments" / "results"

TINY = dict(
    batch_size=8,
    pretrain_refiner_steps=3,
    pretrain_discriminator_steps=2,
    steps=5,
    buffer_size=32,
    shuffle_buffer=16,
    checkpoint_every=4,
    log_every=2,
    sample_every=5,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("gaze")
    for variant, seed in (("synthetic", 11), ("real", 12)):
        samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", variant, 48, seed=seed))
        write_shards(samples, str(root / f"{variant}-%03d.tar"), shard_size=16)
    return str(root / "synthetic-{000..002}.tar"), str(root / "real-{000..002}.tar")


def tiny_config(**extra) -> simgan.SimGANConfig:
    return simgan.load_config(preset="small", **{**TINY, **extra})


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["gaze", "hand", "small", "real-eyes"])
def test_every_recipe_resolves(preset):
    config = simgan.load_config(preset=preset)
    assert config.k_g >= 1 and config.refiner.startswith("simgan-refiner")


def test_paper_values_in_the_gaze_recipe():
    config = simgan.load_config(preset="gaze")
    assert (config.pretrain_refiner_steps, config.pretrain_discriminator_steps) == (1000, 200)
    assert (config.k_g, config.k_d) == (2, 1)
    assert config.refiner_optimiser == OptimiserConfig(name="sgd", lr=0.001)


def test_unknown_recipe_keys_are_errors(tmp_path):
    override = tmp_path / "typo.yaml"
    override.write_text("self_reg_wieght: 0.1\n")
    with pytest.raises(ValueError, match="self_reg_wieght"):
        resolve(simgan.SimGANConfig, recipe="simgan-small", config_file=override)
    with pytest.raises(ValueError, match="lr"):
        from_dict(OptimiserConfig, {"lr": "fast"})


def test_user_yaml_and_overrides_apply_in_order(tmp_path):
    override = tmp_path / "o.yaml"
    override.write_text(yaml.safe_dump({"steps": 7, "refiner_optimiser": {"lr": 0.01}}))
    config = simgan.load_config(preset="small", config_file=str(override), steps=9)
    assert config.steps == 9
    assert config.refiner_optimiser.lr == 0.01 and config.refiner_optimiser.name == "adam"


def test_set_items_are_read_as_their_fields_types():
    settings = parse_settings(
        simgan.SimGANConfig,
        [
            "refiner=123",  # a name, though YAML would read a number
            "discriminator_r1=1e-2",  # a float, though YAML 1.1 would read a string
            "amp=false",
            "image_key=none",
            "steps=7",
            "discriminator_optimiser.lr=0.0008",
            "refiner_optimiser={name: sgd, lr: 0.1}",
            "depth_range=[0, 1000]",
        ],
    )
    assert settings == {
        "refiner": "123",
        "discriminator_r1": 0.01,
        "amp": False,
        "image_key": None,
        "steps": 7,
        "discriminator_optimiser": {"lr": 0.0008},
        "refiner_optimiser": {"name": "sgd", "lr": 0.1},
        "depth_range": [0, 1000],
    }
    # after the recipe and --config, before the flags; a nested key changes that field alone
    config = simgan.load_config(
        preset="small", settings=["discriminator_optimiser.lr=0.0008", "steps=7"], steps=9
    )
    assert config.discriminator_optimiser == OptimiserConfig(
        name="adam", lr=0.0008, betas=(0.5, 0.999)
    )
    assert config.steps == 9
    # None is a value here (the recipe's image_key is replaced), not "not given"
    assert simgan.load_config(preset="small", settings=["image_key=jpg"]).image_key == "jpg"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("self_reg_wieght=0.1", r"unknown key 'self_reg_wieght'; known: .*self_reg_weight"),
        ("discriminator_optimiser.rate=1", r"'rate' of discriminator_optimiser; known: betas, lr"),
        ("steps=many", "expected an int, got 'many'"),
        ("amp=maybe", "expected true or false"),
        ("self_reg_weight=", "expected a float"),
        ("depth_range=[1]", "expected 2 values"),
        ("refiner_optimiser={name", "not a YAML value"),
        ("seed.low=1", "seed has no fields"),
        ("steps", "expected KEY=VALUE"),
    ],
)
def test_set_refuses_unknown_keys_and_values_of_the_wrong_type(item, message):
    with pytest.raises(ValueError, match=message) as info:
        simgan.load_config(preset="small", settings=[item])
    assert f"--set {item!r}" in str(info.value)


def test_a_resumed_run_refuses_set(shards, tmp_path):
    synthetic, real = shards
    simgan.train(tiny_config(), synthetic=synthetic, real=real, out=tmp_path / "r", stop_after=2)
    with pytest.raises(ValueError, match="keeps its own config; --set seed"):
        simgan.load_config(resume_from=tmp_path / "r", settings=["seed=3"])


def test_the_method_table_lists_each_method_with_its_presets_and_one_entry_point():
    assert list(methods.METHODS) == ["simgan", "sggan", "spigan"]
    for name, entry in methods.METHODS.items():
        module = importlib.import_module(entry.module)
        assert methods.method(name) is module.METHOD
        assert entry.default_preset in methods.presets(name)
        # the module's load_config and train are the table's, bound to the method
        assert module.load_config.func is methods.load_config and module.load_config.args == (name,)
        assert module.train.func is methods.train and module.train.args == (name,)
        config = module.load_config()
        assert config == module.load_config(preset=entry.default_preset)
    assert methods.presets("simgan") == ("gaze", "hand", "real-eyes", "small")
    assert methods.entry("simgan").default_preset == "small"  # the README's examples' preset
    with pytest.raises(ValueError, match="no method 'cyclegan'; available: simgan, sggan"):
        methods.method("cyclegan")


def test_the_real_eyes_preset_holds_the_records_best_setting():
    config = simgan.load_config(preset="real-eyes")
    small = simgan.load_config(preset="small")
    assert config.discriminator == "simgan-discriminator-local"
    assert config.discriminator_optimiser.lr == pytest.approx(4 * small.refiner_optimiser.lr)
    assert config.discriminator_r1 == 0.01
    # the gaze hold of the records' --hold-gaze 5: a network the run trains itself
    assert (config.task_reg_weight, config.task_reg_network) == (5.0, None)
    assert (config.task_reg_epochs, config.task_reg_seed) == (48, 10)
    assert config.steps == small.steps and config.refiner == small.refiner
    recipe = (RECIPES / "simgan-real-eyes.yaml").read_text()
    cited = set(re.findall(r"real_gaze[\w.-]*?\.json", recipe))
    assert cited and all((RESULTS / name).is_file() for name in cited), cited


def test_recipe_comments_cite_only_files_that_exist():
    root = RECIPES.parents[1]
    for recipe in RECIPES.glob("*.yaml"):
        for path in re.findall(
            r"\b((?:benchmarks|train|refinery|engines|deploy|docs)/[\w./-]+)", recipe.read_text()
        ):
            assert (root / path.rstrip(".")).exists(), f"{recipe.name} cites {path}"


# -- data -------------------------------------------------------------------------------------


def test_stream_scales_to_unit_range_and_resumes_exactly(shards):
    synthetic, _ = shards
    a = ImageStream(synthetic, domain="gaze", batch_size=10, seed=3, shuffle_buffer=8)
    batches = [a.next_batch() for _ in range(12)]  # crosses two epochs of 48
    images = batches[0][0]
    assert images.shape == (10, 1, 35, 55) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    first_epoch = [s["__key__"] for b in batches[:5] for s in b[1]][:48]
    assert len(set(first_epoch)) == 48  # an epoch sees every sample once

    b = ImageStream(synthetic, domain="gaze", batch_size=10, seed=3, shuffle_buffer=8)
    for _ in range(7):
        b.next_batch()
    c = ImageStream(synthetic, domain="gaze", batch_size=10, seed=3, shuffle_buffer=8)
    c.load_state_dict(b.state_dict())
    for expected in batches[7:]:
        images, samples = c.next_batch()
        assert [s["__key__"] for s in samples] == [s["__key__"] for s in expected[1]]
        assert torch.equal(images, expected[0])


def test_background_decoding_keeps_the_order_and_the_resume_position(shards, tmp_path):
    """Worker processes decode ahead, yet batches, positions and resume equal decoding on the
    caller's thread, across epochs and with a rejected sample in the stream."""
    synthetic, _ = shards
    bad = tmp_path / "bad-000.tar"
    with tarfile.open(bad, "w") as tar:  # one undecodable sample among the good shards
        for name, data in (("broken.png", b"not a png"), ("broken.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    urls = [*expand_urls(synthetic), str(bad)]
    rejected = []
    common = dict(domain="gaze", batch_size=7, seed=5, shuffle_buffer=8, handler=rejected.append)

    def keys(stream, n):
        return [[s["__key__"] for s in stream.next_batch()[1]] for _ in range(n)]

    inline = ImageStream(urls, decoders=0, **common)
    expected = keys(inline, 16)  # 112 samples: more than two epochs of 48 good + 1 rejected
    assert len(rejected) == 2 and rejected[0].key == "broken"
    threaded = ImageStream(urls, decoders=3, lookahead=5, **common)
    assert keys(threaded, 16) == expected
    # decoded in worker processes, the rejects still reach this process's handler, whole
    assert len(rejected) == 4 and rejected[2].key == "broken" and rejected[3].reason
    assert rejected[2].url == str(bad) and str(rejected[2]) == str(rejected[0])
    chunked = ImageStream(urls, decoders=2, lookahead=40, **common)  # chunks of 20 draws
    assert keys(chunked, 16) == expected
    half = ImageStream(urls, decoders=3, **common)
    keys(half, 9)
    resumed = ImageStream(urls, decoders=2, **common)
    resumed.load_state_dict(half.state_dict())
    assert keys(resumed, 7) == expected[9:]
    assert threaded.waited > 0 and threaded.state_dict() == inline.state_dict()
    with pytest.raises(ValueError, match="decoders"):
        ImageStream(urls, decoders=-1, **common)


def test_a_script_without_a_main_guard_is_told_why_its_decoding_processes_died(shards, tmp_path):
    """Decoding processes are spawned, which re-imports the main script: one that trains at
    its top level breaks them, and the error says what to change rather than only
    BrokenProcessPool."""
    import subprocess
    import sys
    from pathlib import Path

    synthetic, _ = shards
    script = tmp_path / "train_here.py"
    script.write_text(
        "from train.data import ImageStream\n"
        f"ImageStream({expand_urls(synthetic)!r}, domain='gaze', batch_size=4, seed=0, "
        "decoders=1).next_batch()\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode != 0
    assert "a decoding process died" in done.stderr
    assert "if __name__ == '__main__':" in done.stderr and "decode_workers: 0" in done.stderr


def test_the_loop_logs_the_share_of_time_spent_waiting_for_data_with_the_heap_frozen(
    shards, tmp_path
):
    import gc

    synthetic, real = shards
    seen, frozen = [], []

    def progress(done, values):
        seen.append(values["time/data_wait_share"])
        frozen.append(gc.get_freeze_count())

    simgan.train(
        tiny_config(decode_workers=0),
        synthetic=synthetic,
        real=real,
        out=tmp_path / "run",
        progress=progress,
    )
    assert seen and all(0 < share < 1 for share in seen)
    # the heap alive at the start is left out of collections while training, and only then
    assert all(count > 1000 for count in frozen) and gc.get_freeze_count() == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert "time/data_wait_share" in events.Tags()["scalars"]


def test_depth_needs_a_declared_range_and_maps_linearly():
    with pytest.raises(ValueError, match="depth_range"):
        scaling_for("hand")
    scaling = scaling_for("hand", (0, 2000))
    values = scaling.to_unit(np.array([0, 1000, 2000, 65535], dtype=np.uint16))
    np.testing.assert_allclose(values, [-1.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(scaling.from_unit(values[:3]), [0, 1000, 2000])


# -- training ---------------------------------------------------------------------------------


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    return {
        f"{m}.{k}": v
        for m in ("refiner", "discriminator")
        for k, v in load_file(str(checkpoint / f"{m}.safetensors")).items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("augment", ["", "brightness,contrast,translation,cutout"])
def test_straight_run_equals_half_plus_resume(shards, tmp_path, augment):
    synthetic, real = shards
    config = tiny_config(discriminator_augment=augment)
    total = config.schedule.total
    straight = simgan.train(config, synthetic=synthetic, real=real, out=tmp_path / "a")
    assert straight.name == f"iter-{total:08d}"

    half = total // 2 + 1  # stops in the adversarial phase, with a non-empty history buffer
    simgan.train(config, synthetic=synthetic, real=real, out=tmp_path / "b", stop_after=half)
    resumed_config = simgan.load_config(resume_from=tmp_path / "b")
    assert resumed_config == config
    resumed = simgan.train(
        resumed_config, synthetic=synthetic, real=real, out=tmp_path / "b", resume=True
    )
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class _Seen(torch.nn.Module):
    """A discriminator that keeps what it was shown."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.conv(x)


def test_discriminator_augment_transforms_what_d_sees_and_the_refiner_learns_through_it():
    from refinery.augment import Augment
    from refinery.history import HistoryBuffer

    torch.manual_seed(0)
    refiner = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Tanh())
    synthetic, real = torch.rand(4, 1, 12, 20) * 2 - 1, torch.rand(4, 1, 12, 20) * 2 - 1
    amp = dict(
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        autocast=torch.autocast("cpu", enabled=False),
    )

    def d_step(augment):
        seen = _Seen()
        optimiser = torch.optim.SGD(seen.parameters(), lr=0.1)
        buffer = HistoryBuffer(capacity=8, seed=0)
        simgan.discriminator_step(
            refiner, seen, optimiser, synthetic, real, buffer, augment=augment, **amp
        )
        return seen.inputs[0]

    def r_step(augment):
        seen = _Seen()
        optimiser = torch.optim.SGD(refiner.parameters(), lr=0.0)
        with torch.no_grad():
            refined = refiner(synthetic)
        simgan.refiner_step(
            refiner, seen, optimiser, synthetic, psi="identity", weight=0.0, adversarial=True,
            augment=augment, **amp,
        )  # fmt: skip
        grads = [p.grad.clone() for p in refiner.parameters()]
        refiner.zero_grad()
        return seen.inputs[0], refined, grads

    # without a policy D sees the images as they are
    plain = d_step(None)
    assert torch.equal(plain[:4], real)
    seen, refined, _ = r_step(None)
    assert torch.equal(seen, refined)
    # with one, every image D is shown, real or refined, gets its own cut-out hole
    shown = d_step(Augment("cutout", seed=1))
    holes = shown[:, 0] == 0
    assert torch.equal(shown[~(shown == 0)], plain[~(shown == 0)])
    assert (holes.flatten(1).sum(dim=1) >= 6 * 10 // 4).all()  # at least a quarter of 6x10
    assert len({tuple(h.nonzero()[0].tolist()) for h in holes}) > 1
    seen, refined, grads = r_step(Augment("cutout", seed=1))
    assert (seen == 0).any() and not torch.equal(seen, refined)
    assert all(g.abs().sum() > 0 for g in grads)


def test_discriminator_r1_adds_half_gamma_times_the_penalty_on_real_images():
    from refinery.history import HistoryBuffer
    from refinery.losses import r1_penalty

    torch.manual_seed(0)
    refiner = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Tanh())
    discriminator = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Tanh())
    discriminator.append(torch.nn.Conv2d(4, 2, 3))
    synthetic, real = torch.rand(4, 1, 12, 20) * 2 - 1, torch.rand(4, 1, 12, 20) * 2 - 1
    amp = dict(
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        autocast=torch.autocast("cpu", enabled=False),
    )

    def d_step(r1):
        d = copy.deepcopy(discriminator)
        optimiser = torch.optim.SGD(d.parameters(), lr=0.0)  # gradients kept, weights not moved
        losses = simgan.discriminator_step(
            refiner, d, optimiser, synthetic, real, HistoryBuffer(capacity=8, seed=0), r1=r1, **amp
        )
        return losses, [p.grad.clone() for p in d.parameters()]

    plain, plain_grads = d_step(0.0)
    assert "discriminator/r1" not in plain
    penalised, grads = d_step(4.0)
    images = real.clone().requires_grad_(True)
    expected = r1_penalty(discriminator(images), images).item()
    assert penalised["discriminator/r1"].item() == pytest.approx(expected, rel=1e-5)
    adversarial = penalised["discriminator/real"] + penalised["discriminator/refined"]
    assert torch.allclose(adversarial, plain["discriminator/total"])  # the same batches
    total = penalised["discriminator/total"].item()
    assert total == pytest.approx(adversarial.item() + 0.5 * 4.0 * expected, rel=1e-5)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, plain_grads, strict=True))
    assert not real.requires_grad  # the caller's batch is left as it was


@pytest.mark.gpu
def test_discriminator_r1_under_cuda_float16_autocast_reads_as_in_float32():
    """The penalty's inner backward runs on float16 activations unscaled by the GradScaler:
    it must neither underflow to 0 nor overflow, but read what float32 reads."""
    from refinery.history import HistoryBuffer
    from refinery.registry import build_network

    device = torch.device("cuda")
    torch.manual_seed(0)
    refiner = build_network("simgan-refiner-small").to(device)
    discriminator = build_network("simgan-discriminator-local").to(device)
    synthetic = torch.rand(16, 1, 35, 55, device=device) * 2 - 1
    real = torch.rand(16, 1, 35, 55, device=device) * 2 - 1

    def penalty(amp):
        d = copy.deepcopy(discriminator)
        losses = simgan.discriminator_step(
            refiner, d, torch.optim.SGD(d.parameters(), lr=0.0), synthetic, real,
            HistoryBuffer(capacity=32, seed=0), r1=1.0,
            scaler=torch.amp.GradScaler("cuda", enabled=amp),
            autocast=torch.autocast("cuda", dtype=torch.float16, enabled=amp),
        )  # fmt: skip
        return losses["discriminator/r1"].item()

    exact, half = penalty(False), penalty(True)
    assert exact > 0
    assert half == pytest.approx(exact, rel=0.05)


def test_discriminator_r1_must_not_be_negative(shards):
    with pytest.raises(ValueError, match="discriminator_r1"):
        simgan.SimGAN(
            tiny_config(discriminator_r1=-1.0),
            synthetic=shards[0],
            real=shards[1],
            device=torch.device("cpu"),
        )


def test_average_moves_floats_towards_the_source_and_copies_counters():
    target, source = torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2)
    with torch.no_grad():
        target.weight.fill_(1.0)
        source.weight.fill_(3.0)
    source.num_batches_tracked.fill_(7)
    simgan.average(target, source, 0.75)
    assert torch.allclose(target.weight, torch.full((2,), 1.5))  # 0.75·1 + 0.25·3
    assert int(target.num_batches_tracked) == 7
    simgan.average(target, source, 0.0)
    assert torch.equal(target.weight, source.weight)


def test_refiner_ema_must_be_below_one(shards):
    with pytest.raises(ValueError, match="refiner_ema"):
        simgan.SimGAN(
            tiny_config(refiner_ema=1.0),
            synthetic=shards[0],
            real=shards[1],
            device=torch.device("cpu"),
        )


@pytest.mark.slow
def test_refiner_ema_starts_pretrained_resumes_exactly_and_is_what_export_compiles(
    shards, tmp_path
):
    from engines import export_run
    from engines.spec import sha256_file

    synthetic, real = shards
    config = tiny_config(refiner_ema=0.5)

    def module(checkpoint, name):
        return load_file(str(checkpoint / f"{name}.safetensors"))

    # after pretraining, the average is the pretrained refiner itself
    pretrained = simgan.train(
        config,
        synthetic=synthetic,
        real=real,
        out=tmp_path / "p",
        stop_after=config.pretrain_refiner_steps,
    )
    ema, last = module(pretrained, "refiner_ema"), module(pretrained, "refiner")
    assert ema.keys() == last.keys() and all(torch.equal(ema[k], last[k]) for k in ema)

    # then it lags the refiner, and a resumed run averages exactly as a straight one
    straight = simgan.train(config, synthetic=synthetic, real=real, out=tmp_path / "a")
    ema, last = module(straight, "refiner_ema"), module(straight, "refiner")
    assert any(not torch.equal(ema[k], last[k]) for k in ema)
    half = config.schedule.total // 2 + 1
    simgan.train(config, synthetic=synthetic, real=real, out=tmp_path / "b", stop_after=half)
    resumed = simgan.train(config, synthetic=synthetic, real=real, out=tmp_path / "b", resume=True)
    for name in ("refiner", "refiner_ema"):
        a, b = module(straight, name), module(resumed, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name

    # the engine is built from the average, not from the last iterate
    assert json.loads((straight / "generator.json").read_text())["module"] == "refiner_ema"
    spec = export_run(tmp_path / "a", tmp_path / "engine")
    assert spec.source["checkpoint_sha256"] == sha256_file(straight / "refiner_ema.safetensors")


def test_run_directory_holds_config_events_sheets_and_checkpoints(shards, tmp_path):
    synthetic, real = shards
    config = tiny_config()
    latest = simgan.train(config, synthetic=synthetic, real=real, out=tmp_path / "run")
    run = tmp_path / "run"
    assert (
        from_dict(simgan.SimGANConfig, yaml.safe_load((run / "config.yaml").read_text())) == config
    )
    assert {p.name for p in (run / "checkpoints").iterdir()} >= {
        "latest",
        "iter-00000004",
        latest.name,
    }
    assert sorted(p.name for p in latest.iterdir()) == [
        "config.yaml",
        "discriminator.safetensors",
        "generator.json",
        "optimisers.pt",
        "refiner.safetensors",
        "state.json",
        "state.safetensors",
    ]
    generator = json.loads((latest / "generator.json").read_text())
    assert generator["module"] == "refiner" and generator["network"] == config.refiner
    assert generator["pixel_range"] == [0.0, 255.0] and generator["image_component"] == "png"
    assert list((run / "samples").glob("iter-*.png"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "refiner/self_reg",
        "refiner/adversarial",
        "discriminator/real",
        "discriminator/refined",
        "discriminator/accuracy_real",
        "discriminator/accuracy_refined",
        "lr/refiner",
        "lr/discriminator",
        "speed/images_per_s",
    } <= tags
    with pytest.raises(FileExistsError, match="--resume"):
        simgan.train(config, synthetic=synthetic, real=real, out=run)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    shards, tmp_path, monkeypatch
):
    synthetic, real = shards
    config = tiny_config()
    calls = {"n": 0}
    real_reg = simgan.self_regularisation

    def exploding(*args, **kwargs):
        calls["n"] += 1
        loss = real_reg(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 6 else loss

    monkeypatch.setattr(simgan, "self_regularisation", exploding)
    with pytest.raises(NonFiniteLoss, match="refiner/self_reg"):
        simgan.train(config, synthetic=synthetic, real=real, out=tmp_path / "nan")
    kept = RunDir(tmp_path / "nan").latest()
    assert kept is not None and kept.name == "iter-00000004"
    assert all(torch.isfinite(v).all() for v in _weights(kept).values())


def test_sigterm_finishes_the_iteration_checkpoints_and_resumes(shards, tmp_path):
    import os
    import signal

    synthetic, real = shards
    config = tiny_config()

    def progress(done, values):
        if done == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # what Slurm / Kubernetes send before a kill

    latest = simgan.train(
        config, synthetic=synthetic, real=real, out=tmp_path / "t", progress=progress
    )
    assert latest.name == "iter-00000006"
    resumed = simgan.train(config, synthetic=synthetic, real=real, out=tmp_path / "t", resume=True)
    assert resumed.name == f"iter-{config.schedule.total:08d}"


# -- the geometry term: a frozen task network as ψ --------------------------------------------


@pytest.fixture(scope="module")
def gaze_network(shards, tmp_path_factory):
    from train.evaluation.downstream import train_task

    out = tmp_path_factory.mktemp("gaze-net")
    train_task("gaze", train=shards[0], eval=shards[0], out=out, epochs=1, batch_size=16)
    return out


def test_task_term_charges_what_the_frozen_task_network_reads(shards, gaze_network):
    from train.evaluation.downstream import load_task_model

    trainer = simgan.SimGAN(
        tiny_config(self_reg_weight=0.0, task_reg_weight=3.0, task_reg_network=str(gaze_network)),
        synthetic=shards[0],
        real=shards[1],
        device=torch.device("cpu"),
    )
    assert not any(p.requires_grad for p in trainer.task_psi.parameters())
    network, _, _ = load_task_model(gaze_network, device="cpu")
    refiner = trainer.modules["refiner"]
    synthetic = trainer._batch(trainer.synthetic)
    before = [p.detach().clone() for p in refiner.parameters()]
    with torch.no_grad():  # the term before the step, computed here without the trainer
        expected = 3.0 * (network(refiner(synthetic)) - network(synthetic)).abs().mean()
    losses = simgan.refiner_step(
        refiner,
        trainer.modules["discriminator"],
        trainer.optimisers["refiner"],
        synthetic,
        psi=trainer.psi,
        weight=0.0,
        adversarial=False,
        scaler=trainer.scalers["refiner"],
        autocast=trainer.autocast,
        task_psi=trainer.task_psi,
        task_weight=3.0,
    )
    assert float(losses["refiner/task_reg"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) > 0  # an untrained refiner changes what the network reads
    # λ is 0: the refiner moved only because the task term charged it
    assert any(not torch.equal(a, b) for a, b in zip(before, refiner.parameters(), strict=True))
    # the trainer's own step logs it beside the paper's term
    assert "refiner/task_reg" in trainer.generator_step(pretrain=True).losses


def test_task_term_settings_are_checked_before_training(gaze_network, tmp_path):
    cpu = torch.device("cpu")
    assert simgan.task_psi(tiny_config(), cpu) is None  # μ 0: the paper, nothing loaded
    with pytest.raises(ValueError, match="needs task_reg_network"):
        simgan.task_psi(tiny_config(task_reg_weight=1.0), cpu)
    with pytest.raises(ValueError, match=r"task_reg_weight must be >= 0"):
        simgan.task_psi(tiny_config(task_reg_weight=-1.0), cpu)
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        simgan.task_psi(tiny_config(task_reg_weight=1.0, task_reg_network=str(tmp_path)), cpu)
    with pytest.raises(ValueError, match="this run refines hand"):
        simgan.task_psi(
            tiny_config(domain="hand", task_reg_weight=1.0, task_reg_network=str(gaze_network)),
            cpu,
        )
    psi = simgan.task_psi(tiny_config(task_reg_weight=1.0, task_reg_network=str(gaze_network)), cpu)
    with pytest.raises(ValueError, match=r"trained on \(35, 55\) images; the refiner's are"):
        psi(torch.zeros(2, 1, 36, 60))


def test_the_run_trains_its_own_frozen_gaze_network_when_the_recipe_asks(shards, tmp_path):
    from train.evaluation.downstream import load_task_model

    synthetic, real = shards
    config = tiny_config(task_reg_weight=2.0, task_reg_epochs=1, task_reg_seed=4)
    run = tmp_path / "run"
    simgan.train(config, synthetic=synthetic, real=real, out=run, stop_after=6)
    held = run / "task-reg"
    _, task, info = load_task_model(held, device="cpu")
    settings = json.loads((held / "config.json").read_text())
    assert task.domain == "gaze" and info["range"] == [-1.0, 1.0]
    assert (settings["epochs"], settings["seed"], settings["appearance"]) == (1, 4, True)
    # the config as resolved is what the run records: a moved run directory still resumes
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["task_reg_network"], saved["task_reg_epochs"]) == (None, 1)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert "refiner/task_reg" in events.Tags()["scalars"]
    # a resume keeps the network it has
    weights = (held / "model.safetensors").read_bytes()
    stamp = (held / "model.safetensors").stat().st_mtime_ns
    resumed = simgan.train(config, synthetic=synthetic, real=real, out=run, resume=True)
    assert resumed.name == f"iter-{config.schedule.total:08d}"
    assert (held / "model.safetensors").stat().st_mtime_ns == stamp
    assert (held / "model.safetensors").read_bytes() == weights


def test_a_network_of_its_own_is_checked_before_training(gaze_network, shards, tmp_path):
    cpu = torch.device("cpu")
    asked = dict(task_reg_weight=1.0, task_reg_epochs=1)
    with pytest.raises(ValueError, match="exclude each other"):
        simgan.hold_network(
            tiny_config(**asked, task_reg_network=str(gaze_network)),
            synthetic=shards[0],
            out=tmp_path,
            resume=False,
            device=cpu,
        )
    with pytest.raises(ValueError, match="this run refines hand"):
        simgan.hold_network(
            tiny_config(**asked, domain="hand"),
            synthetic=shards[0],
            out=tmp_path,
            resume=False,
            device=cpu,
        )
    with pytest.raises(ValueError, match="task_reg_epochs must be >= 0"):
        simgan.hold_network(
            tiny_config(task_reg_epochs=-1), synthetic=shards[0], out=tmp_path, resume=False,
            device=cpu,
        )  # fmt: skip
    # μ 0, or a named network: nothing to train, the config as it is
    for config in (tiny_config(task_reg_epochs=3), tiny_config()):
        kept = simgan.hold_network(
            config, synthetic=shards[0], out=tmp_path, resume=False, device=cpu
        )
        assert kept is config
    assert not (tmp_path / "task-reg").exists()
