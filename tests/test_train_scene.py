"""SG-GAN and SPIGAN on the shared loop: small CPU runs on the procedural street domain with
finite losses, exact resume and exported generators; SPIGAN's early stopping; mIoU."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import engines
from refinery import sim
from refinery.samples import encode_sample
from refinery.shards import write_shards
from train import sggan, spigan
from train.loop import RunDir, Schedule

TINY = dict(
    batch_size=2,
    steps=4,
    checkpoint_every=2,
    log_every=1,
    sample_every=4,
    shuffle_buffer=4,
)


@pytest.fixture(scope="module")
def streets(tmp_path_factory):
    root = tmp_path_factory.mktemp("streets")
    for variant, seed in (("synthetic", 31), ("real", 32)):
        made = sim.generate("scene", variant, 8, seed=seed, height=64, width=128)
        write_shards((encode_sample(s, "scene") for s in made), str(root / f"{variant}-%03d.tar"),
                     shard_size=8)  # fmt: skip
    return str(root / "synthetic-000.tar"), str(root / "real-000.tar")


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    return {
        f"{p.stem}.{k}": v
        for p in sorted(checkpoint.glob("*.safetensors"))
        if p.stem != "state"
        for k, v in load_file(str(p)).items()
    }


def _resume_is_exact(module, config, streets, tmp_path):
    synthetic, real = streets
    straight = module.train(config, synthetic=synthetic, real=real, out=tmp_path / "a")
    module.train(config, synthetic=synthetic, real=real, out=tmp_path / "b", stop_after=2)
    resumed = module.train(config, synthetic=synthetic, real=real, out=tmp_path / "b", resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    return straight


def test_sggan_small_run_is_finite_resumes_exactly_and_exports(streets, tmp_path):
    config = sggan.load_config(preset="small", pool_size=3, **TINY)
    latest = _resume_is_exact(sggan, config, streets, tmp_path)
    assert sorted(p.name for p in latest.glob("*.safetensors")) == [
        "discriminator_a.safetensors",
        "discriminator_b.safetensors",
        "generator_ab.safetensors",
        "generator_ba.safetensors",
        "state.safetensors",
    ]
    assert list((tmp_path / "a" / "samples").glob("*.png"))
    spec = engines.export_run(tmp_path / "a", tmp_path / "engine")
    assert spec.method == "sggan" and spec.domain == "scene" and spec.io.channels == 3
    assert spec.profile.multiple > 1 and spec.validation["onnxruntime_vs_torch_max_abs"] <= 1e-5
    refined = engines.load(tmp_path / "engine").refine(np.zeros((1, 64, 128, 3), np.uint8))
    assert refined.pixels.shape == (1, 64, 128, 3) and refined.finite.all()


def test_sggan_recipes_hold_the_paper_values():
    config = sggan.load_config(preset="paper")
    assert (config.cycle_weight, config.gradient_weight) == (10.0, 5.0)
    assert config.generator_optimiser.lr == 2e-4 and config.generator_optimiser.betas == (
        0.5,
        0.999,
    )
    assert config.ontology == "sggan-8" and config.groups == 8 and config.batch_size == 1


def test_spigan_small_run_is_finite_resumes_exactly_and_exports(streets, tmp_path):
    config = spigan.load_config(preset="small", crop=(32, 32), **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained VGG features: warned about, on purpose
        latest = _resume_is_exact(spigan, config, streets, tmp_path)
    assert {p.stem for p in latest.glob("*.safetensors")} >= {
        "generator", "discriminator", "task", "privileged",
    }  # fmt: skip
    spec = engines.export_run(tmp_path / "a", tmp_path / "engine")
    assert spec.method == "spigan" and spec.validation["onnxruntime_vs_torch_max_abs"] <= 1e-5
    metrics = _evaluate(latest, config, streets[1])
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["images"] == 8


def _evaluate(checkpoint, config, urls):
    from refinery.registry import build_network

    task = build_network(config.task, num_classes=config.num_classes)
    task.load_state_dict(load_file(str(checkpoint / "task.safetensors")))
    return spigan.evaluate_task(task, urls, ontology=config.ontology)


def test_spigan_without_privileged_information_builds_no_p(streets, tmp_path):
    config = spigan.load_config(preset="small", crop=(32, 32), gamma=0.0, **{**TINY, "steps": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latest = spigan.train(config, synthetic=streets[0], real=streets[1], out=tmp_path / "r")
    assert not (latest / "privileged.safetensors").exists()
    assert (latest / "task.safetensors").exists()


def test_schedule_pretrains_the_task_networks_first():
    schedule = Schedule(pretrain_generator=1, pretrain_discriminator=1, steps=2, pretrain_task=2)
    assert schedule.total == 6 and schedule.pretrain == 4
    assert [schedule.phase(i) for i in range(6)] == [
        "pretrain-task", "pretrain-task", "pretrain-generator", "pretrain-discriminator",
        "adversarial", "adversarial",
    ]  # fmt: skip


def test_spigan_task_pretraining_moves_t_and_p_alone_and_resumes_exactly(streets, tmp_path):
    config = spigan.load_config(preset="small", crop=(32, 32), pretrain_task_steps=2, **TINY)
    synthetic, real = streets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = spigan.SPIGAN(config, synthetic=synthetic, real=real, device=torch.device("cpu"))
        straight = spigan.train(config, synthetic=synthetic, real=real, out=tmp_path / "a")
        spigan.train(config, synthetic=synthetic, real=real, out=tmp_path / "b", stop_after=1)
        resumed = spigan.train(config, synthetic=synthetic, real=real, out=tmp_path / "b",
                               resume=True)  # fmt: skip
    assert straight.name == "iter-00000006"  # 2 pretraining + 4 adversarial iterations
    pretrained = _weights(tmp_path / "a" / "checkpoints" / "iter-00000002")
    for name, module in fresh.modules.items():
        moved = any(
            not torch.equal(pretrained[f"{name}.{k}"], v) for k, v in module.state_dict().items()
        )
        assert moved == (name in ("task", "privileged")), name
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_spigan_warns_when_features_are_untrained(streets):
    config = spigan.load_config(preset="small", crop=(32, 32), **TINY)
    with pytest.warns(UserWarning, match="untrained"):
        spigan.SPIGAN(config, synthetic=streets[0], real=streets[1], device=torch.device("cpu"))


def test_spigan_early_stopping_rule(streets):
    config = spigan.load_config(
        preset="small", early_stop=True, early_stop_warmup=3, early_stop_patience=4, **TINY
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = spigan.SPIGAN(
            config, synthetic=streets[0], real=streets[1], device=torch.device("cpu")
        )
    balanced = {"discriminator/total": 0.5, "generator/gan": 0.6}
    assert not any(method.should_stop(balanced) for _ in range(20))
    low = {"discriminator/total": 0.01, "generator/gan": 0.9}
    stops = [method.should_stop(low) for _ in range(400)]
    assert stops[-1] and not stops[0]  # significantly and consistently below, not at once
    state = method.state()[1]["early_stop"]
    assert state["below"] >= 4


def test_miou_counts_only_present_classes():
    target = np.array([[0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 2]])
    matrix = spigan.confusion(pred, target, 3)
    miou, per_class = spigan.iou_from_confusion(matrix)
    assert per_class == [0.5, 0.5, None] and miou == pytest.approx(0.5)  # class 2: absent


def test_paper_run_directory_layout_is_simgans(streets, tmp_path):
    config = sggan.load_config(preset="small", **{**TINY, "steps": 1})
    sggan.train(config, synthetic=streets[0], real=streets[1], out=tmp_path / "run")
    run = RunDir(tmp_path / "run")
    assert run.latest().name == "iter-00000001"
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "tb").is_dir()


def test_cli_trains_both_scene_methods(streets, tmp_path, capsys):
    from refinery.cli import main

    small = tmp_path / "small.yaml"
    small.write_text("batch_size: 2\ncheckpoint_every: 1\nlog_every: 1\nsample_every: 1\n")
    for method in ("sggan", "spigan"):
        args = ["train", method, "--synthetic", streets[0], "--real", streets[1]]
        args += ["--out", str(tmp_path / method), "--preset", "small", "--steps", "1"]
        assert main([*args, "--config", str(small)]) == 0, method
        assert (tmp_path / method / "checkpoints" / "latest").exists()
    assert "TensorBoard" in capsys.readouterr().out
    missing = ["train", "spigan", "--synthetic", streets[0], "--real", streets[1], "--preset",
               "small", "--out", str(tmp_path / "w"), "--vgg-weights", str(tmp_path / "no.pth")]  # fmt: skip
    assert main(missing) == 1
    assert "no.pth" in capsys.readouterr().err


def test_spigan_self_regularisation_is_the_low_pass_l1_and_a_unet_generator_exports(
    streets, tmp_path
):
    """self_reg_weight λ adds λ·mean|pool4(G(x)) − pool4(x)| to G's total as "self_reg" (absent
    at λ = 0); a run with SG-GAN's U-Net as G trains and exports like the ResNet G."""
    held = dict(generator="sggan-generator-small", self_reg_weight=10.0, psi="low-pass")
    config = spigan.load_config(preset="small", crop=(32, 32), **held, **TINY)
    synthetic, real = streets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = spigan.SPIGAN(config, synthetic=synthetic, real=real, device=torch.device("cpu"))
        plain = spigan.SPIGAN(
            spigan.load_config(preset="small", crop=(32, 32), **{**held, "self_reg_weight": 0}),
            synthetic=synthetic,
            real=real,
            device=torch.device("cpu"),
        )
    batch = run._synthetic()
    with torch.no_grad():
        generated = run.modules["generator"](batch["image"])
        d_fake = run.modules["discriminator"](generated)
        terms = run.generator_objective(batch, generated, d_fake)
    pool = torch.nn.functional.avg_pool2d
    expected = (pool(generated, 4) - pool(batch["image"], 4)).abs().mean()
    assert terms["self_reg"].item() == pytest.approx(expected.item(), rel=1e-5)
    without = sum(
        w * terms[k]
        for k, w in (("gan", 1.0), ("task", 0.5), ("privileged", 0.1), ("perceptual", 0.33))
    )
    assert terms["total"].item() == pytest.approx((without + 10.0 * expected).item(), rel=1e-5)
    plain.modules = run.modules
    plain.perceptual = run.perceptual
    assert "self_reg" not in plain.generator_objective(batch, generated, d_fake)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latest = spigan.train(config, synthetic=synthetic, real=real, out=tmp_path / "r")
    spec = engines.export_run(tmp_path / "r", tmp_path / "engine")
    assert spec.method == "spigan" and spec.name == "sggan-generator-small"
    assert spec.validation["onnxruntime_vs_torch_max_abs"] <= 1e-5
    assert latest.name == "iter-00000004"


@pytest.mark.parametrize(
    ("override", "message"),
    [({"self_reg_weight": -1.0}, "self_reg_weight"), ({"psi": "vgg"}, "psi must be one of")],
)
def test_spigan_rejects_a_bad_self_regularisation(override, message):
    with pytest.raises(ValueError, match=message):
        spigan.load_config(preset="small", **override)
