"""The experiments (benchmarks/experiments/, `make experiments`) run at tiny sizes and record what
they measured."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from refinery import sim
from refinery.shards import read


def _finite_numbers(value) -> bool:
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def test_evaluate_trains_each_experiment_over_its_own_seeds_unless_told(monkeypatch, tmp_path):
    """The SPIGAN pair at 750 frames runs six GANs per arm, every other experiment three;
    --seeds overrides both and --quick runs one."""
    from benchmarks.experiments import evaluate

    asked = []

    class Stop(Exception):
        pass

    def record_seeds(experiment, workdir, *, seeds, device):
        asked.append((experiment.name, tuple(seeds)))
        raise Stop

    monkeypatch.setattr(evaluate, "run_experiment", record_seeds)
    for argv in (
        ["--experiments", "streets-spigan-750"],
        ["--experiments", "streets-spigan-nopi-750"],
        ["--experiments", "streets-spigan"],
        ["--experiments", "streets-spigan-750", "--seeds", "4"],
        ["--experiments", "streets-spigan-750", "--quick"],
    ):
        with pytest.raises(Stop):
            evaluate.main([*argv, "--out", str(tmp_path)])
    six = (0, 1, 2, 3, 4, 5)
    assert asked == [
        ("streets-spigan-750", six),
        ("streets-spigan-nopi-750", six),
        ("streets-spigan", (0, 1, 2)),
        ("streets-spigan-750", (4,)),
        ("streets-spigan-750", (0,)),
    ]


def test_every_evaluate_experiment_resolves_into_its_trainer_config():
    """A typo in an experiment's overrides fails here, not hours into ``make bench``."""
    import importlib

    from benchmarks.experiments import evaluate

    for name, experiment in {**evaluate.FULL, **evaluate.QUICK}.items():
        trainer = importlib.import_module(f"train.{experiment.method}")
        config = trainer.load_config(preset=experiment.preset, **experiment.overrides)
        for key, value in experiment.overrides.items():
            assert getattr(config, key) == value or isinstance(value, dict), (name, key)
    # the DiffAugment ablation varies that one key of gaze-simgan
    base, augmented = evaluate.FULL["gaze-simgan"], evaluate.FULL["gaze-simgan-diffaugment"]
    policy = "brightness,contrast,translation,cutout"
    assert augmented.overrides == {**base.overrides, "discriminator_augment": policy}
    assert replace(augmented, name=base.name, overrides=base.overrides, cpu_scale="") == replace(
        base, cpu_scale=""
    )


# SPIGAN with privileged information (γ > 0) against the same without (issue 15)
PI_PAIRS = (
    ("streets-spigan", "streets-spigan-nopi"),
    ("streets-spigan-750", "streets-spigan-nopi-750"),
    ("streets-spigan-750-pretrain-task", "streets-spigan-nopi-750-pretrain-task"),
    ("streets-spigan-750-pretrain-task-gamma3", "streets-spigan-nopi-750-pretrain-task"),
    ("streets-spigan-selfreg", "streets-spigan-nopi-selfreg"),
    ("streets-spigan-selfreg-gamma3", "streets-spigan-nopi-selfreg"),
    ("streets-spigan-selfreg1", "streets-spigan-nopi-selfreg1"),
)


def test_every_experiment_is_in_docs_and_each_pi_pair_differs_in_gamma_alone():
    """An experiment ``make experiments`` runs but docs/experiments.md leaves out fails here."""
    from benchmarks.experiments import evaluate

    docs = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    assert [name for name in evaluate.FULL if f"`{name}`" not in docs] == []
    for with_name, without_name in PI_PAIRS:
        with_pi, without = evaluate.FULL[with_name], evaluate.FULL[without_name]
        assert without.overrides.get("gamma") == 0.0, without_name
        assert with_pi.overrides.get("gamma", 0.1) > 0, with_name
        rest = {k: v for k, v in with_pi.overrides.items() if k != "gamma"}
        assert rest == {k: v for k, v in without.overrides.items() if k != "gamma"}, with_name
        assert (with_pi.sizes, with_pi.seeds) == (without.sizes, without.seeds), with_name


@pytest.mark.slow
def test_evaluate_quick_run_records_the_report_and_keeps_labels(tmp_path):
    from benchmarks.experiments import evaluate

    evaluate.main(
        ["--quick", "--experiments", "gaze-simgan", "--out", str(tmp_path), "--seeds", "0", "1"]
    )
    record = json.loads((tmp_path / "evaluate_gaze-simgan.json").read_text())
    figures, settings = record["figures"], record["settings"]
    assert figures["task"]["key"] == "mean_angular_error_deg"
    assert settings["seeds"] == figures["seeds"] == [0, 1]
    for name in ("synthetic", "refined", "real"):
        assert set(figures["metric"][name]) == {"mean", "std", "runs"}
        assert len(figures["metric"][name]["runs"]) == 2
    assert _finite_numbers(figures)
    gap = figures["gap_closed"]
    assert gap["of_means"] is not None and len(gap["runs"]) == 2
    assert figures["label_drift"]["unit"] == "deg" and len(figures["label_drift"]["runs"]) == 2
    assert set(figures["realism"]) == {"synthetic", "refined"}
    assert len(figures["realism"]["refined"]["c2st_accuracy"]["runs"]) == 2
    # one GAN per seed: two refined sets, every label kept in both
    labels = figures["labels"]
    assert labels["identical"] == labels["paired"] == 2 * settings["sizes"]["synthetic"]
    assert figures["refine_job"]["written"] == 2 * settings["sizes"]["synthetic"]
    assert figures["refine_job"]["rejected"] == 0 and figures["refine_job"]["refined_sets"] == 2
    for step in ("synth", "train", "export", "refine", "evaluate", "total"):
        assert figures["seconds"][step] > 0
    per_seed = ["train", "export", "refine", "evaluate"]
    assert [c.split()[3] for c in settings["commands"]] == ["synth"] * 4 + per_seed * 2
    trains = [c for c in settings["commands"] if c.split()[3] == "train"]
    assert [c.split("--config ")[1].split()[0] for c in trains] == [
        "$WORK/overrides-s0.yaml",
        "$WORK/overrides-s1.yaml",
    ]
    evaluates = [c for c in settings["commands"] if c.split()[3] == "evaluate"]
    assert [c.split("--seeds ")[1].split()[0] for c in evaluates] == ["0", "1"]
    # the two GANs differ (their seeds do): different refined sets, different figures
    assert figures["metric"]["refined"]["runs"][0] != figures["metric"]["refined"]["runs"][1]
    html = tmp_path / "reports" / "gaze-simgan.html"
    assert html.stat().st_size == settings["report"]["bytes"] > 0
    assert "<html" in html.read_text()[:500].lower()
    assert not (tmp_path / "distributions").exists() and "distributions" not in figures


def test_real_gaze_quick_run_goes_through_every_command(tmp_path, shared_fixture):
    """The README's "with real eyes" walk-through: ingest images -> train -> export -> refine ->
    inspect, on the real MPIIGaze crops (skipped without ../shared)."""
    from benchmarks.experiments import real_gaze

    fixture = shared_fixture("mpiigaze_unlabeled")
    work, results = tmp_path / "work", tmp_path / "results"
    assert real_gaze.main(["--quick", "--fixture", str(fixture), "--out", str(work),
                           "--results", str(results)]) == 0  # fmt: skip
    figures = json.loads((results / "real_gaze.json").read_text())["figures"]
    assert figures["ingest"] == {**figures["ingest"], "files": 2000, "written": 2000, "rejected": 0}
    assert figures["refine"]["read"] == figures["refine"]["written"] == 64
    assert figures["seeds"] == [0] and len(figures["train"]["last"]) == 1
    assert set(figures["train"]["last"][0]) == {
        "discriminator/accuracy_real",
        "discriminator/accuracy_refined",
    }
    assert set(figures["procedural_variants"]) == {"synthetic", "real"}
    assert set(figures["realism"]) == {"synthetic", "refined"}
    assert figures["realism"]["refined"]["c2st_accuracy"]["runs"]
    assert set(figures["dark_centre_px"]) == {"synthetic", "real", "refined"}
    assert 20 < figures["dark_centre_px"]["real"]["x_mean"] < 35  # the irises of the crops
    assert (work / "config-s0.yaml").read_text().startswith("seed: 0\n")
    assert (work / "contact-sheet.png").stat().st_size > 0
    assert real_gaze.main(["--fixture", str(tmp_path / "absent"), "--results", str(results)]) == 0
    # the padding ablation: the same commands with zero padding, its own record
    assert real_gaze.main(["--quick", "--fixture", str(fixture), "--out", str(tmp_path / "z"),
                           "--results", str(results), "--padding", "zeros"]) == 0  # fmt: skip
    zeros = json.loads((results / "real_gaze_zeros.json").read_text())
    assert zeros["settings"]["refiner_padding"] == "zeros"
    assert "refiner_padding: zeros" in (tmp_path / "z" / "config-s0.yaml").read_text()
    # the same runs read with a longer-trained drift estimator: evaluate --robust-epochs
    assert real_gaze.main(["--quick", "--fixture", str(fixture), "--out", str(tmp_path / "r"),
                           "--results", str(results), "--robust-epochs", "2",
                           "--tag", "robust-2"]) == 0  # fmt: skip
    longer = json.loads((results / "real_gaze_robust-2.json").read_text())
    assert longer["settings"]["robust_epochs"] == 2 and not longer["figures"]["procedural_variants"]
    report = json.loads((tmp_path / "r" / "report-s0" / "report.json").read_text())
    assert report["settings"]["robust_epochs"] == 2 and report["settings"]["epochs"] == 1
    # other procedural eyes (synth --option): the GAN refines them, the variants are drawn so
    assert real_gaze.main(["--quick", "--fixture", str(fixture), "--out", str(tmp_path / "a"),
                           "--results", str(results), "--synth-option", "iris_scale=1.2",
                           "--tag", "big-iris"]) == 0  # fmt: skip
    anatomy = json.loads((results / "real_gaze_big-iris.json").read_text())
    assert anatomy["settings"]["synth_options"] == {"iris_scale": 1.2}
    assert set(anatomy["figures"]["procedural_variants"]) == {"synthetic", "real"}
    drawn = next(read(str(tmp_path / "a" / "synthetic"), "gaze"))["json"]["eyeball"]
    plain = sim.render("gaze", "synthetic", 0, seed=1)["json"]["eyeball"]
    assert drawn["iris_radius"] == pytest.approx(1.2 * plain["iris_radius"], rel=1e-4)
    # the geometry term: a frozen gaze network, trained once, that every refiner answers to
    assert real_gaze.main(["--quick", "--fixture", str(fixture), "--out", str(tmp_path / "h"),
                           "--results", str(results), "--hold-gaze", "5", "--seeds", "3",
                           "--tag", "hold"]) == 0  # fmt: skip
    held = json.loads((results / "real_gaze_hold.json").read_text())
    assert held["settings"]["hold_gaze"]["task_reg_weight"] == 5.0
    assert "--appearance --epochs 1 --seed 10" in held["settings"]["hold_gaze"]["network"]
    assert held["figures"]["seeds"] == [3] and len(held["figures"]["train"]["last"]) == 1
    recipe = (tmp_path / "h" / "config-s3.yaml").read_text()  # --seeds: the GAN's own seed
    assert recipe.startswith("seed: 3\n") and (tmp_path / "h" / "contact-sheet.png").exists()
    assert f"task_reg_weight: 5.0\ntask_reg_network: {tmp_path / 'h' / 'gaze-hold'}\n" in recipe
    assert held["figures"]["train"]["last"][0]["refiner/task_reg"] > 0
    # half the crops held out for evaluate, the checkpoint chosen on fresh eyes and the other half
    assert real_gaze.main(["--quick", "--fixture", str(fixture), "--out", str(tmp_path / "s"),
                           "--results", str(results), "--holdout", "--select-every", "2",
                           "--tag", "select"]) == 0  # fmt: skip
    chose = json.loads((results / "real_gaze_select.json").read_text())
    assert chose["figures"]["ingest"] == {
        **chose["figures"]["ingest"],
        "files": 2000,
        "written": 2000,
        "held_out": 1000,
    }
    report = json.loads((tmp_path / "s" / "report-s0" / "report.json").read_text())
    assert report["realism"]["real_images"] == 1000  # evaluate read the held-out half alone
    gan = chose["figures"]["selection"]["per_gan"][0]
    # quick: 2 + 2 pretraining iterations, then 4 adversarial; a checkpoint every 2
    assert [c["iteration"] for c in gan["checkpoints"]] == [6, 8] and gan["last"] == "iter-00000008"
    picked = next(c for c in gan["checkpoints"] if c["checkpoint"] == gan["chosen"])
    assert picked["validation_c2st"] == min(c["validation_c2st"] for c in gan["checkpoints"])
    # the held-out accuracy recorded per checkpoint is evaluate's own measure of the same eyes
    refined_c2st = chose["figures"]["realism"]["refined"]["c2st_accuracy"]["runs"][0]
    assert picked["heldout_c2st"] == pytest.approx(refined_c2st, abs=1e-6)
    engine = json.loads((tmp_path / "s" / "engine-s0" / "engine.json").read_text())
    assert engine["source"]["checkpoint"] == gan["chosen"]
    assert "checkpoint_every: 2\n" in (tmp_path / "s" / "config-s0.yaml").read_text()
    control = chose["figures"]["realism_all_crops"]  # the halves together: the older scale
    assert control["real_images"] == 2000 and len(control["refined"]["runs"]) == 1
    assert 0 <= control["synthetic"]["mean"] <= 1 and 0 <= control["refined"]["mean"] <= 1
    with pytest.raises(SystemExit):  # a variant needs its name
        real_gaze.main(["--synth-option", "iris_scale=1.2", "--results", str(results)])
    with pytest.raises(SystemExit):
        real_gaze.main(["--hold-gaze", "5", "--results", str(results)])
    with pytest.raises(SystemExit):  # and a number
        real_gaze.main(
            ["--synth-option", "iris_scale=big", "--tag", "x", "--results", str(results)]
        )


def test_real_gaze_dark_centre_finds_a_dark_disc_where_it_was_drawn():
    import numpy as np

    from benchmarks.experiments import real_gaze

    y, x = np.mgrid[:35, :55]
    eyes = []
    for cx, cy in ((20, 14), (30, 18), (34, 16)):
        eye = np.full((35, 55), 180, np.uint8)
        eye[np.hypot(x - cx, y - cy) < 5] = 30
        eyes.append(eye)
    centre = real_gaze._dark_centre(np.stack(eyes))
    assert centre["x_mean"] == pytest.approx(28.0, abs=0.3)
    assert centre["y_mean"] == pytest.approx(16.0, abs=0.3)
    assert centre["x_std"] == pytest.approx(np.std([20, 30, 34]), abs=0.3)


def test_real_gaze_recipe_variants_need_a_tag():
    from benchmarks.experiments import real_gaze

    for argv in (
        ["--set", "psi=gradients"],
        ["--steps", "1200"],
        ["--synthetic", "4000"],  # more eyes would overwrite the default record untagged
        ["--synthetic", "0", "--tag", "x"],
        ["--robust-epochs", "48"],
        ["--robust-epochs", "0", "--tag", "x"],
        ["--tag", "x"],
        ["--set", "psi", "--tag", "x"],
        ["--seeds", "0", "1", "2", "3"],
        ["--seeds", "1", "1", "--tag", "x"],
        ["--seeds", "-1", "--tag", "x"],
        ["--holdout"],
        ["--select-every", "150", "--tag", "x"],  # choosing needs crops it does not score on
        ["--holdout", "--select-every", "0", "--tag", "x"],
    ):
        with pytest.raises(SystemExit):
            real_gaze.main(argv)


def test_real_gaze_holdout_splits_the_crops_in_two_disjoint_halves_by_a_seeded_draw(tmp_path):
    from benchmarks.experiments.real_gaze import split_fixture

    fixture = tmp_path / "crops"
    names = [f"p0{i % 2}/{i:04d}.jpg" for i in range(10)] + ["x.PNG"]
    for name in [*names, ".hidden.jpg", "notes.txt", ".cache/a.jpg"]:
        (fixture / name).parent.mkdir(parents=True, exist_ok=True)
        (fixture / name).write_bytes(name.encode())
    halves = split_fixture(fixture, tmp_path / "a")
    listed = {
        part: sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        for part, folder in halves.items()
    }
    assert len(listed["train"]) == 5 and len(listed["test"]) == 6
    assert sorted(listed["train"] + listed["test"]) == sorted(names)  # each image once
    for part, folder in halves.items():  # links to the originals, folders kept
        for name in listed[part]:
            assert (folder / name).read_bytes() == name.encode()
    again = split_fixture(fixture, tmp_path / "b")
    assert {
        p: sorted(str(x.relative_to(f)) for x in f.rglob("*.*")) for p, f in again.items()
    } == listed
    other = split_fixture(fixture, tmp_path / "c", seed=1)
    assert (
        sorted(str(x.relative_to(other["test"])) for x in other["test"].rglob("*.*"))
        != listed["test"]
    )
    with pytest.raises(ValueError, match="too few"):
        split_fixture(fixture / "p00", tmp_path / "d")


def test_real_gaze_chooses_the_checkpoint_by_validation_not_by_the_held_out_crops(
    tmp_path, monkeypatch
):
    from benchmarks.experiments import real_gaze

    run = tmp_path / "run"
    (run / "config.yaml").parent.mkdir()
    (run / "config.yaml").write_text(
        "pretrain_refiner_steps: 100\npretrain_discriminator_steps: 50\n"
    )
    for step in (150, 300, 450, 600, 750):
        (run / "checkpoints" / f"iter-{step:08d}").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("iter-00000750")
    commands = []
    monkeypatch.setattr(real_gaze, "_refinery", lambda *args: commands.append(args) or 0.0)
    # validation prefers 450 (tied with 600: the earlier wins); the held-out half prefers 750
    scores = {
        ("train", 300): 0.9, ("train", 450): 0.8, ("train", 600): 0.8, ("train", 750): 0.85,
        ("test", 300): 0.95, ("test", 450): 0.9, ("test", 600): 0.88, ("test", 750): 0.7,
    }  # fmt: skip

    def c2st(real, url, seed):
        assert seed == 4
        return scores[(real, int(url.rsplit("-", 1)[1]))]

    monkeypatch.setattr(real_gaze, "_c2st", c2st)
    chosen = real_gaze.select_checkpoint(
        run, tmp_path / "w", seed=4, validation=tmp_path / "val", synthetic=tmp_path / "syn",
        real_train="train", real_test="test",
    )  # fmt: skip
    assert chosen["chosen"] == "iter-00000450" and chosen["last"] == "iter-00000750"
    assert chosen["best_in_hindsight"] == "iter-00000750"
    assert [c["iteration"] for c in chosen["checkpoints"]] == [300, 450, 600, 750]  # not 150
    exports = [c for c in commands if c[0] == "export"]
    assert [c[c.index("--checkpoint") + 1] for c in exports] == [
        f"iter-{s:08d}" for s in (300, 450, 600, 750)
    ]
    refines = [c for c in commands if c[0] == "refine"]
    assert {c[c.index("--input") + 1] for c in refines} == {
        str(tmp_path / "val"),
        str(tmp_path / "syn"),
    }
    figures = real_gaze._selection_figures([{"seed": 4, "selection": chosen}])
    assert figures["heldout_c2st_chosen"]["mean"] == 0.9
    assert (
        figures["heldout_c2st_last"]["mean"]
        == figures["heldout_c2st_best_in_hindsight"]["mean"]
        == 0.7
    )


@pytest.mark.slow
def test_drift_floor_quick_run_reads_drift_on_twins_with_the_same_labels(tmp_path):
    from benchmarks.experiments import drift_floor

    figures = drift_floor.main(["--quick", "--domains", "gaze", "--results", str(tmp_path)])
    record = json.loads((tmp_path / "drift_floor.json").read_text())
    assert record["figures"] == json.loads(json.dumps(figures))
    gaze = figures["gaze"]
    assert gaze["labels_identical"] and gaze["pairs"] == 16 and gaze["unit"] == "deg"
    for kind in ("plain", "robust", "robust_long"):
        assert len(gaze[kind]["runs"]) == 1 and gaze[kind]["mean"] > 0  # the looks differ
        assert 0 < gaze["twin_metric"][kind]["mean"] < 180  # degrees against the twins' labels
    assert [gaze[k]["epochs"] for k in ("plain", "robust", "robust_long")] == [1, 1, 2]
    assert gaze["twin_metric"]["key"] == "mean_angular_error_deg"


def test_drift_floor_refuses_twins_whose_labels_differ(tmp_path, monkeypatch):
    from benchmarks.experiments import drift_floor
    from refinery import sim

    generate = sim.generate

    def moved(domain, variant, n, **kw):
        for sample in generate(domain, variant, n, **kw):
            if variant == "real":
                sample["json"]["gaze"]["pitch"] += 0.01
            yield sample

    monkeypatch.setattr(sim, "generate", moved)
    with pytest.raises(RuntimeError, match="gaze-syn-s1-00000000: the real variant's json differs"):
        drift_floor.twins(tmp_path, "gaze", 2, seed=1, size=None)


def test_a_benchmark_stopped_with_sigterm_takes_its_running_command_with_it(tmp_path):
    """``kill`` or a scheduler's time limit on ``python -m benchmarks.experiments.evaluate`` must not leave
    the ``refinery`` command it waits on (a GAN training) running without it."""
    pidfile = tmp_path / "child.pid"
    child = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys\n"
            "from benchmarks.common import exit_on_sigterm\n"
            "exit_on_sigterm()\n"
            f"subprocess.run([sys.executable, '-c', {child!r}])\n",
        ],
        cwd=Path(__file__).resolve().parents[1],
    )
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=20) == 128 + signal.SIGTERM  # unwound, not killed by the signal
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass  # the command went with it
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the command the benchmark ran outlived it")
    for name in ("evaluate", "real_gaze", "drift_floor"):  # each benchmark's __main__ sets it
        source = (
            Path(__file__).resolve().parents[1] / "benchmarks" / "experiments" / f"{name}.py"
        ).read_text()
        assert "exit_on_sigterm()" in source.split('if __name__ == "__main__":')[-1], name


def test_realism_cues_tells_a_change_of_tone_from_a_change_of_texture():
    """A brighter set differs from real in the coarse band only, a noisier one in the fine."""
    import cv2
    import numpy as np

    from benchmarks.experiments import realism_cues

    rng = np.random.default_rng(0)

    def fields(n: int) -> np.ndarray:
        smooth = [cv2.GaussianBlur(rng.normal(size=(35, 55)), (0, 0), 4.0) for _ in range(n)]
        return np.stack([100 + 40 * f / f.std() for f in smooth]).clip(0, 215)

    real = fields(300).astype(np.uint8)
    bands = realism_cues.bands(real[:2])
    assert np.allclose(bands["coarse"] + bands["fine"], bands["full"], atol=1e-6)
    brighter = (fields(300) + 40).astype(np.uint8)
    noisier = (fields(300) + rng.normal(0, 20, (300, 35, 55))).clip(0, 255).astype(np.uint8)
    tone = realism_cues.cues(real, [brighter], [0], epochs=3)
    texture = realism_cues.cues(real, [noisier], [0], epochs=3)
    accuracy = {
        (name, band): found[band]["c2st_accuracy"]["mean"]
        for name, found in (("tone", tone), ("texture", texture))
        for band in realism_cues.BANDS
    }
    assert accuracy["tone", "coarse"] > 0.9 and accuracy["tone", "full"] > 0.9
    assert accuracy["tone", "fine"] < 0.5 + 2 * tone["fine"]["c2st_null_band"]
    assert accuracy["texture", "fine"] > 0.9 and accuracy["texture", "full"] > 0.9


def real_gaze_work_directory(root: Path, seeds: tuple[int, ...], refined: str = "real") -> Path:
    """A tiny ``benchmarks.experiments.real_gaze`` work directory: procedural "real" crops, synthetic eyes
    and one ``refined-sK`` set of variant ``refined`` per GAN seed."""
    from benchmarks.common import procedural_shards

    run = root / "bench-real-gaze"
    procedural_shards(run / "real", "gaze", "real", 24, seed=1)
    procedural_shards(run / "synthetic", "gaze", "synthetic", 24, seed=2)
    for seed in seeds:
        procedural_shards(run / f"refined-s{seed}", "gaze", refined, 24, seed=3 + seed)
    return run


def test_realism_cues_quick_run_reads_real_gaze_work_directories(tmp_path):
    from benchmarks.experiments import realism_cues

    run, results = real_gaze_work_directory(tmp_path, (0, 1)), tmp_path / "results"
    assert realism_cues.main(["--run", str(run), "--quick", "--results", str(results)]) == 0
    record = json.loads((results / "realism_cues.json").read_text())
    found = record["figures"][str(run)]
    assert found["seeds"] == [0, 1]
    for name in ("synthetic", "refined"):
        for band in realism_cues.BANDS:
            assert len(found[name][band]["c2st_accuracy"]["runs"]) == 2
    # nothing to read (a fresh clone): skipped, no record
    assert realism_cues.main(["--run", str(tmp_path / "absent"), "--results", str(tmp_path)]) == 0
    assert not (tmp_path / "realism_cues.json").exists()


def test_c2st_noise_reruns_each_refined_set_with_several_classifiers(tmp_path):
    from benchmarks.experiments import c2st_noise

    run = real_gaze_work_directory(tmp_path, (0, 2), refined="synthetic")
    results = tmp_path / "results"
    argv = ["--run", str(run), "--quick", "--repeats", "2", "--results", str(results)]
    assert c2st_noise.main(argv) == 0
    record = json.loads((results / "c2st_noise.json").read_text())
    sets = record["figures"]["sets"]
    assert list(sets) == [f"{run}/refined-s0", f"{run}/refined-s2"]
    for protocol in c2st_noise.PROTOCOLS:
        per_set = [entry[protocol] for entry in sets.values()]
        assert all(len(s["runs"]) == 2 for s in per_set)
        spread = record["figures"]["protocols"][protocol]
        means = [s["mean"] for s in per_set]
        assert spread["mean"] == pytest.approx(sum(means) / 2)
        assert spread["between_gan_std"] == pytest.approx(abs(means[0] - means[1]) / 2**0.5)
        # evaluate scores GAN seed K with classifier seed K: seed 2 has no classifier 2 here
        assert spread["as_evaluate"] == [per_set[0]["runs"][0]]
    # nothing to read (a fresh clone): skipped, no record
    assert c2st_noise.main(["--run", str(tmp_path / "absent"), "--results", str(tmp_path)]) == 0
    assert not (tmp_path / "c2st_noise.json").exists()


def test_capture_cues_transforms_keep_the_eye_and_draw_from_their_seed():
    import numpy as np

    from benchmarks.experiments import capture_cues

    rng = np.random.default_rng(0)
    eyes = rng.integers(40, 220, (3, 35, 55)).astype(np.uint8)
    for name in capture_cues.TRANSFORMS:
        out = capture_cues.transformed(eyes, name, seed=5)
        assert out.shape == eyes.shape and out.dtype == np.uint8, name
        # each keeps the eye: the mean grey level hardly moves
        assert abs(float(out.mean()) - float(eyes.mean())) < 3, name
        if name == "as-refined":
            assert np.array_equal(out, eyes)
        else:
            assert not np.array_equal(out, eyes), name
    for name in capture_cues.RANDOM:
        again = capture_cues.transformed(eyes, name, seed=5)
        assert np.array_equal(again, capture_cues.transformed(eyes, name, seed=5)), name
        assert not np.array_equal(again, capture_cues.transformed(eyes, name, seed=6)), name


def test_capture_cues_sees_a_statistic_the_real_images_lack():
    """Candidates drawn as the real images are: unchanged they pass for real, sharpened they are
    told apart, and the change says by how much."""
    import cv2
    import numpy as np

    from benchmarks.experiments import capture_cues

    rng = np.random.default_rng(1)

    def fields(n: int) -> np.ndarray:
        smooth = [cv2.GaussianBlur(rng.normal(size=(35, 55)), (0, 0), 1.0) for _ in range(n)]
        return np.stack([120 + 40 * f / f.std() for f in smooth]).round().clip(0, 255)

    real, candidate = fields(600).astype(np.uint8), fields(600).astype(np.uint8)
    names = ("as-refined", "sharpen-0.3")
    found = capture_cues.capture_cues(real, [candidate], [0], epochs=6, names=names)
    assert list(found) == list(names)
    assert found["as-refined"]["c2st_accuracy"]["mean"] < 0.6
    assert found["as-refined"]["change"]["mean"] == 0.0
    assert found["sharpen-0.3"]["c2st_accuracy"]["mean"] > 0.9
    assert found["sharpen-0.3"]["change"]["mean"] > 0.3


def test_mpiigaze_crops_are_jpeg_at_libjpeg_quality_75(shared_fixture):
    """capture_cues.QUALITY: the fixture's luminance table is libjpeg's standard one scaled for
    quality 75 (scale 200 - 2 * 75 = 50 %)."""
    from PIL import Image

    from benchmarks.experiments import capture_cues

    standard = [  # ITU T.81 Annex K, table K.1, row by row as PIL reports it
        16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
    ]  # fmt: skip
    scale = 200 - 2 * capture_cues.QUALITY
    expected = [min(255, max(1, (q * scale + 50) // 100)) for q in standard]
    fixture = shared_fixture("mpiigaze_unlabeled")
    for path in sorted(fixture.glob("*.jpg"))[::400]:
        with Image.open(path) as image:
            assert image.size == capture_cues.PUBLISHED[::-1], path
            assert list(image.quantization[0]) == expected, path


def test_capture_cues_quick_run_reads_real_gaze_work_directories(tmp_path):
    from benchmarks.experiments import capture_cues

    run = real_gaze_work_directory(tmp_path, (0, 1), refined="synthetic")
    results = tmp_path / "results"
    assert capture_cues.main(["--run", str(run), "--quick", "--results", str(results)]) == 0
    record = json.loads((results / "capture_cues.json").read_text())
    found = record["figures"][str(run)]
    assert found["seeds"] == [0, 1]
    assert sorted(found["transforms"]) == sorted(capture_cues.TRANSFORMS)
    for entry in found["transforms"].values():
        assert len(entry["c2st_accuracy"]["runs"]) == 2 and len(entry["change"]["runs"]) == 2
    assert capture_cues.main(["--run", str(tmp_path / "absent"), "--results", str(tmp_path)]) == 0
    assert not (tmp_path / "capture_cues.json").exists()


def test_realism_cues_keys_a_run_by_its_path_from_the_repository_root(tmp_path, monkeypatch):
    from benchmarks.experiments import realism_cues

    # named relative to the working directory, as make bench names it
    monkeypatch.chdir(realism_cues.ROOT)
    assert realism_cues.run_key(Path("out/bench-real-gaze")) == "out/bench-real-gaze"
    monkeypatch.chdir(realism_cues.ROOT / "benchmarks")
    assert realism_cues.run_key(Path("../out/bench-real-gaze")) == "out/bench-real-gaze"
    assert realism_cues.run_key(tmp_path / "run") == str(tmp_path / "run")


def test_real_gaze_sweep_records_finished_and_killed_runs(tmp_path, shared_fixture, monkeypatch):
    """make gpu-sweep on the CPU at --quick sizes: one finished real_gaze run per (variant, seed)
    with its figures, read from that run's own record, and a run the budget cut short listed as
    killed, not counted (skipped without ../shared)."""
    from benchmarks.experiments import real_gaze_sweep

    fixture = shared_fixture("mpiigaze_unlabeled")
    results = tmp_path / "results"
    common = ["--fixture", str(fixture), "--results", str(results), "--quick", "--seeds", "0"]
    assert real_gaze_sweep.main([*common, "--out", str(tmp_path / "a"), "--workers", "1",
                                 "--variants", "pair", "--budget", "600"]) == 0  # fmt: skip
    record = json.loads((results / "real_gaze_sweep.json").read_text())
    (run,) = record["figures"]["runs"]
    assert run["variant"] == "pair" and run["seed"] == 0 and "error" not in run
    own = json.loads((tmp_path / "a" / "records" / "real_gaze_pair-s0.json").read_text())
    realism = own["figures"]["realism"]
    assert run["figures"]["refined_c2st"] == realism["refined"]["c2st_accuracy"]["runs"][0]
    assert own["settings"]["hold_gaze"]["task_reg_weight"] == 5.0
    assert own["settings"]["recipe_overrides"]["discriminator"] == "simgan-discriminator-local"
    summary = record["figures"]["summary"]["pair"]
    assert summary["mean_refined_c2st"] == run["figures"]["refined_c2st"]
    assert record["figures"]["unfinished"] == []

    assert real_gaze_sweep.main([*common, "--out", str(tmp_path / "b"), "--workers", "2",
                                 "--variants", "pair", "pair-wide-d", "--budget", "3"]) == 0  # fmt: skip
    record = json.loads((results / "real_gaze_sweep.json").read_text())
    runs = record["figures"]["runs"]
    assert [r["variant"] for r in runs] == ["pair", "pair-wide-d"]
    assert all(r["error"] == "killed unfinished when the 3-s budget was spent" for r in runs)
    assert record["figures"]["summary"]["pair"]["seeds"]["0"] == {"failed": runs[0]["error"]}
    assert "mean_refined_c2st" not in record["figures"]["summary"]["pair"]

    # stopped from outside (SIGTERM raises SystemExit under exit_on_sigterm): no run outlives it
    started = []
    popen = real_gaze_sweep.subprocess.Popen

    def spawn(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    def stop(seconds):
        raise SystemExit(143)

    monkeypatch.setattr(real_gaze_sweep.subprocess, "Popen", spawn)
    monkeypatch.setattr(real_gaze_sweep.time, "sleep", stop)
    with pytest.raises(SystemExit):
        real_gaze_sweep.main([*common, "--out", str(tmp_path / "c"), "--workers", "2",
                              "--variants", "pair", "pair-wide-d", "--budget", "600"])  # fmt: skip
    assert len(started) == 2 and all(p.poll() == -signal.SIGKILL for p in started)


def _tiny_spigan(tmp_path, **overrides):
    import torch

    from benchmarks.common import procedural_shards
    from train.spigan import SPIGAN, load_config

    synthetic = procedural_shards(tmp_path / "s", "scene", "synthetic", 4, seed=1, size=(64, 128))
    real = procedural_shards(tmp_path / "r", "scene", "real", 4, seed=2, size=(64, 128))
    config = load_config(
        preset="small", batch_size=2, shuffle_buffer=4, decode_workers=0, **overrides
    )
    return SPIGAN(config, synthetic=synthetic, real=real, device=torch.device("cpu"))


def test_spigan_terms_pull_is_each_weighted_terms_gradient_on_the_generator_alone(tmp_path):
    """A term's pull is the norm of what its weighted loss alone puts in G's .grad, linear in
    its weight, and measuring it leaves no gradient in D, T or P and their flags as they were."""
    import torch

    from benchmarks.experiments import spigan_terms

    method = _tiny_spigan(tmp_path, gamma=0.1)
    batch = method._synthetic()
    torch.manual_seed(5)  # T and P drop out at random: the same draws on both roads
    pulls = spigan_terms.term_pulls(method, batch)
    assert set(pulls) == {"gan", "task", "privileged", "perceptual"}
    for key, module in method.modules.items():
        assert all(p.requires_grad for p in module.parameters()), key
        assert all(p.grad is None for p in module.parameters()), key
    # the same figure by another road: backward of γ·L_P alone into G's .grad
    generator = method.modules["generator"]
    torch.manual_seed(5)
    generated = generator(batch["image"])
    terms = method.generator_objective(batch, generated, method.modules["discriminator"](generated))
    (0.1 * terms["privileged"]).backward()
    by_backward = torch.sqrt(sum((p.grad**2).sum() for p in generator.parameters()))
    assert pulls["privileged"] == pytest.approx(float(by_backward), rel=1e-4)
    assert pulls["privileged"] > 0
    # ten times the weight, ten times the pull; the other terms do not move
    method.config = replace(method.config, gamma=1.0)
    torch.manual_seed(5)
    tenfold = spigan_terms.term_pulls(method, batch)
    assert tenfold["privileged"] == pytest.approx(10 * pulls["privileged"], rel=1e-4)
    assert tenfold["task"] == pytest.approx(pulls["task"], rel=1e-5)


def test_spigan_terms_quick_run_records_every_probe_and_the_gamma_that_equals_t(tmp_path):
    from benchmarks.experiments import spigan_terms

    figures = spigan_terms.main(["--quick", "--seeds", "0", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "spigan_terms-quick.json").read_text())
    assert record["figures"] == figures
    for pretrain in ("pretrain_task_steps_0", "pretrain_task_steps_4"):
        probes = figures[pretrain]
        assert sorted(probes, key=int) == ["0", "2", "4"]  # every 2 of 4, and the end
        for probe in probes.values():
            assert set(probe["pull"]) == {"gan", "task", "privileged", "perceptual"}
            ratio = probe["pull"]["privileged"] / probe["pull"]["task"]
            assert probe["privileged_over_task"] == pytest.approx(ratio, rel=1e-2)
            assert probe["gamma_equal_to_task"] == pytest.approx(0.1 / ratio, rel=1e-2)
            assert 0 < probe["privileged_share"] < 1
