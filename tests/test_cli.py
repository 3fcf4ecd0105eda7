"""The `refinery` entry point: help, one-line usage errors (exit 2), synth and inspect."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from refinery import sim
from refinery.cli import main

REFINERY = Path(sys.executable).with_name("refinery")


def run(*args: str) -> subprocess.CompletedProcess:
    command = [str(REFINERY)] if REFINERY.exists() else [sys.executable, "-m", "refinery"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for command in ("synth", "inspect", "train", "train-task"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["synth", "gaze", "--out", "x"],
        ["synth", "gaze", "--n", "-3", "--out", "x"],
        ["synth", "faces", "--n", "3", "--out", "x"],
        ["synth", "hand", "--n", "3", "--out", "x", "--size", "12x34"],
        ["inspect"],
    ],
)
def test_bad_arguments_give_one_line_and_status_2(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err


def test_bad_arguments_through_the_installed_entry_point():
    result = run("synth", "gaze")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def _digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.tar"))
    }


def test_synth_same_seed_gives_byte_identical_shards(tmp_path, capsys):
    for out, seed in (("a", 3), ("b", 3), ("c", 4)):
        args = f"synth gaze --n 25 --shard-size 10 --seed {seed} --out {tmp_path / out}"
        assert main(args.split()) == 0
    a, b, c = (_digests(tmp_path / d) for d in "abc")
    assert list(a) == [f"gaze-synthetic-s3-{i:06d}.tar" for i in range(3)]
    assert a == b
    assert list(a.values()) != list(c.values())
    assert "wrote 25 synthetic gaze samples in 3 shards" in capsys.readouterr().out


def test_synth_passes_simulator_options_and_refuses_bad_ones(tmp_path, capsys):
    from refinery.shards import read

    out = tmp_path / "eyes"
    assert (
        main(f"synth gaze --n 4 --option iris_scale=1.15 --option opening=0.85 --out {out}".split())
        == 0
    )
    drawn = [s["json"]["eyeball"]["iris_radius"] for s in read(str(out), "gaze")]
    plain = [s["json"]["eyeball"]["iris_radius"] for s in sim.generate("gaze", "synthetic", 4)]
    assert np.allclose(drawn, np.array(plain) * 1.15, rtol=1e-4)
    for option, message in (
        (
            "iris=1.1",
            "unknown option(s) 'iris' for domain 'gaze'; it takes height, width, iris_scale",
        ),
        ("opening=3", "gaze opening must be a number in [0.5, 1.5], got 3"),
        ("opening", "--option 'opening': expected KEY=NUMBER"),
        ("opening=wide", "--option 'opening=wide': expected KEY=NUMBER"),
    ):
        with pytest.raises(SystemExit) as exit:
            main(["synth", "gaze", "--n", "2", "--option", option, "--out", str(tmp_path / "x")])
        assert exit.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_inspect_reports_counts_labels_rejects_and_writes_a_sheet(tmp_path, capsys):
    for variant, seed in (("synthetic", 1), ("real", 2)):
        args = f"synth hand --variant {variant} --n 6 --size 64 --seed {seed} --out {tmp_path / variant}"
        assert main(args.split()) == 0
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert (
        main(
            ["inspect", str(tmp_path / "synthetic"), str(tmp_path / "real"), "--sheet", str(sheet)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "hand-synthetic-s1-000000.tar: 6 samples; components: depth.png 6, json 6" in out
    assert "total: 12 good samples in 2 shards (domain hand); no rejects" in out
    assert out.count("label hand-") == 3 and "joints_uvd" in out
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[0] > 64 and image.shape[1] > 64

    # a damaged copy: the reject is listed with its shard, key and reason, and the status is 1
    shard = tmp_path / "synthetic" / "hand-synthetic-s1-000000.tar"
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(shard.read_bytes()[:6000])
    assert main(["inspect", str(damaged)]) == 1
    out = capsys.readouterr().out
    assert "truncated-tar" in out and "key 'hand-syn-s1-" in out and str(damaged) in out


def test_synth_writes_to_an_fsspec_url_and_inspect_reads_it(capsys):
    args = "synth scene --n 3 --size 32x64 --out memory://cli-test/streets"
    assert main(args.split()) == 0
    assert main(["inspect", "memory://cli-test/streets/scene-synthetic-s0-000000.tar"]) == 0
    out = capsys.readouterr().out
    assert "3 samples; components: depth.png 3, json 3, png 3, seg.png 3" in out


def test_train_simgan_help_and_missing_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "simgan", "--synthetic", "x"])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    result = run("train", "simgan", "--help")
    assert result.returncode == 0 and "--resume" in result.stdout and "--preset" in result.stdout


def test_train_defaults_to_the_documented_preset_and_lists_the_recipes():
    from refinery.cli import build_parser

    parser = build_parser()
    base = ["--synthetic", "s", "--real", "r", "--out", "o"]
    assert parser.parse_args(["train", "simgan", *base]).preset == "small"
    assert parser.parse_args(["train", "simgan", *base, "--preset", "real-eyes"]).preset == (
        "real-eyes"
    )
    for method in ("sggan", "spigan"):
        args = parser.parse_args(["train", method, *base, "--set", "seed=1", "--set", "steps=2"])
        assert (args.preset, args.set) == ("paper", ["seed=1", "steps=2"])


def test_train_set_is_typed_recorded_in_the_run_and_refuses_unknown_keys(tmp_path, capsys):
    import yaml

    for variant, seed in (("synthetic", 31), ("real", 32)):
        args = f"synth gaze --variant {variant} --n 24 --seed {seed} --out {tmp_path / variant}"
        assert main(args.split()) == 0
    data = ["--synthetic", str(tmp_path / "synthetic"), "--real", str(tmp_path / "real")]
    tiny = [
        "batch_size=4", "buffer_size=8", "shuffle_buffer=4", "pretrain_refiner_steps=1",
        "pretrain_discriminator_steps=1", "checkpoint_every=2", "sample_every=2", "log_every=1",
        "decode_workers=0", "discriminator_r1=1e-2", "discriminator_optimiser.lr=0.0008",
    ]  # fmt: skip
    sets = [f"--set={item}" for item in tiny]
    run = tmp_path / "run"
    assert main(["train", "simgan", *data, "--out", str(run), "--steps", "2", *sets]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["discriminator_r1"] == 0.01 and saved["batch_size"] == 4 and saved["steps"] == 2
    assert saved["discriminator_optimiser"] == {
        "name": "adam",
        "lr": 0.0008,
        "momentum": 0.0,
        "betas": [0.5, 0.999],
        "weight_decay": 0.0,
    }
    capsys.readouterr()
    typo = ["--set", "discriminator_rl=0.01", "--out", str(tmp_path / "typo")]
    assert main(["train", "simgan", *data, *typo]) == 1
    err = capsys.readouterr().err
    assert "refinery train: error: --set 'discriminator_rl=0.01': unknown key" in err
    assert "known: " in err and "discriminator_r1" in err
    assert not (tmp_path / "typo").exists()


def test_train_task_gaze_prints_metrics_and_writes_the_model(tmp_path, capsys):
    for variant, seed in (("synthetic", 21), ("real", 22)):
        args = f"synth gaze --variant {variant} --n 64 --seed {seed} --out {tmp_path / variant}"
        assert main(args.split()) == 0
    capsys.readouterr()
    args = f"train-task gaze --train {tmp_path / 'synthetic'} --eval {tmp_path / 'real'} --epochs 1 --out {tmp_path / 'task'}"
    assert main(args.split()) == 0
    out = capsys.readouterr().out
    assert '"mean_angular_error_deg"' in out and '"n_eval": 64' in out
    assert (tmp_path / "task" / "model.safetensors").exists()
