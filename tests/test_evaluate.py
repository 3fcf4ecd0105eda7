"""`refinery evaluate`: the experiment, its figures and the report it writes, from tiny runs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from refinery import cli, sim
from refinery.samples import encode_sample
from refinery.shards import read, write_shards
from train.evaluation import evaluate as ev
from train.evaluation.report import SECTIONS


def _write(root, samples, domain):
    return write_shards(
        (encode_sample(s, domain) for s in samples), str(root / "%03d.tar"), shard_size=100
    )


def _refined_stand_in(samples, domain):
    """What a refiner's output looks like to the evaluator: other pixels, the same labels."""
    out = []
    for s in samples:
        s = dict(s)
        image = "png" if domain in ("gaze", "scene") else "depth.png"
        s[image] = cv2.GaussianBlur(s[image], (3, 3), 0)
        out.append(s)
    return out


@pytest.fixture(scope="module")
def gaze(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-gaze")
    synthetic = list(sim.generate("gaze", "synthetic", 48, seed=1))
    refined = _refined_stand_in(synthetic, "gaze")
    refined[5]["json"] = {**refined[5]["json"], "look_vec": [0.0, 0.0, -1.0]}  # a label changed
    del refined[7]  # a sample the refine job rejected
    return {
        "synthetic": _write(root / "syn", synthetic, "gaze"),
        "refined": _write(root / "ref", refined, "gaze"),
        "real_train": _write(root / "real", sim.generate("gaze", "real", 48, seed=2), "gaze"),
        "real_test": _write(root / "test", sim.generate("gaze", "real", 24, seed=3), "gaze"),
        "changed": synthetic[5]["__key__"],
    }


def test_gap_closed_and_summary_by_hand():
    assert ev.gap_closed(10.0, 7.0, 4.0) == pytest.approx(0.5)  # errors: lower is better
    assert ev.gap_closed(0.2, 0.3, 0.6) == pytest.approx(0.25)  # mIoU: higher is better
    assert ev.gap_closed(10.0, 12.0, 4.0) == pytest.approx(-1 / 3)  # worse: negative, kept
    assert ev.gap_closed(5.0, 4.0, 5.0) is None
    assert ev.summary([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "runs": [1.0, 2.0, 3.0]}
    assert ev.summary([4.0])["std"] == 0.0


def test_tiny_gaze_run_reports_every_section(gaze, tmp_path):
    out = tmp_path / "report"
    report = ev.evaluate(
        "gaze",
        synthetic=gaze["synthetic"],
        refined=gaze["refined"],
        real_train=gaze["real_train"],
        real_test=gaze["real_test"],
        out=out,
        seeds=(0, 1),
        epochs=1,
        batch_size=16,
        log=None,
    )
    html = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}"' in html
    assert (out / "plots" / "errors.png").is_file() and (out / "plots" / "seeds.png").is_file()
    assert (out / "samples.png").is_file() and "data:image/png;base64," in html
    assert json.loads((out / "report.json").read_text())["results"] == report["results"]

    assert report["counts"] == {"synthetic": 48, "refined": 47, "real_train": 48, "real_test": 24}
    assert report["labels"] == {
        "paired": 47,
        "identical": 46,
        "unpaired_refined": 0,
        "missing_from_refined": 1,
        "differing_keys": [gaze["changed"]],
        "differing": 1,
    }
    assert list(report["results"]) == ["synthetic", "refined", "real"]
    key = report["task"]["metric"]["key"]
    for result in report["results"].values():
        runs = [run[key] for run in result["runs"]]
        assert [run["seed"] for run in result["runs"]] == [0, 1]
        assert result["metrics"][key]["runs"] == runs
        assert result["metrics"][key]["mean"] == pytest.approx(np.mean(runs))
    means = {name: r["metrics"][key]["mean"] for name, r in report["results"].items()}
    assert report["gap_closed"]["of_means"] == pytest.approx(
        (means["synthetic"] - means["refined"]) / (means["synthetic"] - means["real"])
    )
    assert len(report["gap_closed"]["runs"]) == 2
    assert report["gap_closed"]["mean_over_seeds"] == pytest.approx(
        np.mean(report["gap_closed"]["runs"])
    )
    drift = report["label_drift"]
    assert drift["unit"] == "deg" and drift["pairs"] == 47 and len(drift["runs"]) == 2
    assert all(0 < d < 90 for d in drift["runs"])  # blurred pixels move the predictions a bit
    robust = report["label_drift_robust"]
    assert robust["unit"] == "deg" and robust["pairs"] == 47 and len(robust["runs"]) == 2
    assert robust["runs"] != drift["runs"] and "appearance" in robust["description"]
    assert "the same, appearance-robust" in html and "Of an appearance-robust network" in html
    assert {k: len(v) for k, v in report["distributions"]["values"].items()} == {
        "synthetic": 48,
        "refined": 48,
        "real": 48,
    }  # 24 test images x 2 seeds
    assert report["pck"] is None and report["per_class_iou"] is None
    assert (
        report["memory"]["peak_host_rss_mib"] > 50 and report["memory"]["peak_device_mib"] is None
    )
    assert "<dt>Peak memory (MiB)</dt>" in html


def test_same_images_give_zero_drift(gaze, tmp_path):
    report = ev.evaluate(
        "gaze",
        synthetic=gaze["synthetic"],
        refined=gaze["synthetic"],
        real_test=gaze["real_test"],
        seeds=(3,),
        epochs=1,
        log=None,
    )
    assert report["label_drift"]["mean"] == pytest.approx(0.0, abs=1e-3)
    assert report["labels"]["identical"] == report["labels"]["paired"] == 48
    assert report["gap_closed"] is None and "real" not in report["results"]
    # the same data and seed train the same model: refined scores exactly like synthetic
    key = report["task"]["metric"]["key"]
    results = report["results"]
    assert results["refined"]["metrics"][key] == results["synthetic"]["metrics"][key]


def test_robust_epochs_train_only_the_robust_network_longer(gaze, tmp_path, monkeypatch, capsys):
    """``evaluate --robust-epochs``: the appearance-robust drift network alone trains that long;
    the task networks keep --epochs, and the report's settings say both."""
    trained = []

    def recording_fit(task, data, config, **kwargs):
        trained.append((config.appearance, config.epochs))
        return fit(task, data, config, **kwargs)

    fit = ev.fit
    monkeypatch.setattr(ev, "fit", recording_fit)
    out = tmp_path / "report"
    argv = ["evaluate", "gaze", "--synthetic", *gaze["synthetic"], "--refined"]
    argv += [*gaze["refined"], "--real-test", *gaze["real_test"], "--out", str(out)]
    argv += ["--seeds", "0", "--epochs", "1", "--robust-epochs", "2", "--batch-size", "16"]
    assert cli.main(argv) == 0
    assert sorted(trained) == [(False, 1), (False, 1), (True, 2)]  # synthetic, refined; robust
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["epochs"] == 1 and settings["robust_epochs"] == 2
    trained.clear()
    report = ev.evaluate(
        "gaze",
        synthetic=gaze["synthetic"],
        refined=gaze["refined"],
        real_test=gaze["real_test"],
        seeds=(0,),
        epochs=1,
        batch_size=16,
        log=None,
    )
    assert sorted(trained) == [(False, 1), (False, 1), (True, 1)]  # default: --epochs
    assert report["settings"]["robust_epochs"] == 1
    with pytest.raises(SystemExit):
        cli.main([*argv[:-4], "--robust-epochs", "0"])
    assert "--robust-epochs" in capsys.readouterr().err


def test_bad_seeds_fail_before_reading_data():
    with pytest.raises(ValueError, match="distinct"):
        ev.evaluate("gaze", synthetic="x", refined="y", real_test="z", seeds=(1, 1))
    with pytest.raises(ValueError, match="supported"):
        ev.evaluate("eyes", synthetic="x", refined="y", real_test="z")


@pytest.mark.slow
def test_cli_hand_report_has_pck_curves(tmp_path, capsys):
    synthetic = list(sim.generate("hand", "synthetic", 24, seed=1, size=64))
    urls = {
        "synthetic": _write(tmp_path / "syn", synthetic, "hand"),
        "refined": _write(tmp_path / "ref", _refined_stand_in(synthetic, "hand"), "hand"),
        "test": _write(tmp_path / "test", sim.generate("hand", "real", 8, seed=3, size=64), "hand"),
    }
    out = tmp_path / "report"
    argv = ["evaluate", "hand", "--synthetic", *urls["synthetic"], "--refined", *urls["refined"]]
    argv += ["--real-test", *urls["test"], "--out", str(out), "--seeds", "0", "--epochs", "1"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "trained on synthetic" in printed and "mean joint error" in printed
    assert "labels identical for 24 of 24 paired keys" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["pck"]["thresholds"] == list(range(21))
    assert set(report["pck"]["curves"]) == {"synthetic", "refined"}
    assert report["label_drift"]["unit"] == "px"
    assert report["label_drift_robust"] is None  # depth: its values are the geometry
    assert (out / "plots" / "pck.png").is_file()
    assert len(report["distributions"]["values"]["synthetic"]) == 8 * 14  # joints


@pytest.mark.slow
def test_scene_report_has_per_class_iou(tmp_path):
    synthetic = list(sim.generate("scene", "synthetic", 6, seed=1, height=64, width=128))
    urls = {
        "synthetic": _write(tmp_path / "syn", synthetic, "scene"),
        "refined": _write(tmp_path / "ref", _refined_stand_in(synthetic, "scene"), "scene"),
        "test": _write(
            tmp_path / "test",
            sim.generate("scene", "real", 4, seed=3, height=64, width=128),
            "scene",
        ),
    }
    report = ev.evaluate(
        "scene",
        synthetic=urls["synthetic"],
        refined=urls["refined"],
        real_test=urls["test"],
        out=tmp_path / "report",
        seeds=(0,),
        epochs=1,
        batch_size=3,
        log=None,
    )
    classes = report["per_class_iou"]["classes"]
    assert len(classes) == 19 and classes[0] == "road"
    assert len(report["per_class_iou"]["values"]["refined"]) == 19
    assert report["task"]["metric"] == {
        "key": "miou",
        "label": "mIoU",
        "unit": "IoU",
        "higher_is_better": True,
    }
    assert 0.0 <= report["label_drift"]["mean"] <= 1.0
    assert (tmp_path / "report" / "plots" / "per_class_iou.png").is_file()
    sheet = cv2.imread(str(tmp_path / "report" / "samples.png"))
    assert sheet is not None and sheet.shape[0] > 3 * 64  # three rows of tiles
    assert sum(1 for _ in read(urls["refined"], "scene")) == 6
