"""Realism without labels: the classifier two-sample test, the kernel distance, and `evaluate`
with an unlabeled real test set."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from refinery import cli, sim
from refinery.samples import encode_json, encode_sample
from refinery.shards import write_shards
from train.data import Scaling, unit_channels_first
from train.evaluation import evaluate as ev
from train.evaluation import realism as R
from train.evaluation import report as report_html
from train.evaluation.rows import Rows, RowWriter


def _write(root, samples, domain="gaze"):
    return write_shards(
        (encode_sample(s, domain) for s in samples), str(root / "%03d.tar"), shard_size=200
    )


def _unlabeled(root, samples):
    """Real samples as `ingest images` writes them: the image and {"labeled": false}."""
    out = []
    for s in samples:
        image = encode_sample(s, "gaze")["png"]
        label = encode_json({"domain": "gaze", "labeled": False, "source": s["__key__"]})
        out.append({"__key__": s["__key__"], "png": image, "json": label})
    return write_shards(out, str(root / "%03d.tar"), shard_size=200)


@pytest.fixture(scope="module")
def eyes(tmp_path_factory):
    root = tmp_path_factory.mktemp("realism")
    synthetic = list(sim.generate("gaze", "synthetic", 400, seed=1))
    real = list(sim.generate("gaze", "real", 400, seed=2))
    return {
        "synthetic": _write(root / "syn", synthetic),
        "real": _write(root / "real", real),
        "real_unlabeled": _unlabeled(root / "unlabeled", real),
        "blurred": _write(
            root / "blurred",
            ({**s, "png": cv2.GaussianBlur(s["png"], (3, 3), 0)} for s in synthetic),
        ),
        "x_synthetic": R.images(_write(root / "syn2", synthetic), "gaze", size=(35, 55)),
        "x_real": R.images(_write(root / "real2", real), "gaze", size=(35, 55)),
    }


def test_two_sample_test_tells_different_sets_apart_and_not_one_set_from_itself(eyes):
    apart = R.two_sample_test(eyes["x_real"], eyes["x_synthetic"], seed=0, epochs=4)
    assert apart["accuracy"] > 0.8 and apart["test"] == 400 and apart["train"] == 400
    # the smaller set sets the scale: half of each set's draw trains, the other half scores
    small = R.two_sample_test(eyes["x_real"][:101], eyes["x_synthetic"], seed=0, epochs=1)
    assert small["train"] == small["test"] == 100
    synthetic = eyes["x_synthetic"]
    same = R.two_sample_test(synthetic[::2], synthetic[1::2], seed=0, epochs=4)
    assert abs(same["accuracy"] - 0.5) < 2 * R.null_band(same["test"])
    with pytest.raises(ValueError, match="differ in shape"):
        R.two_sample_test(synthetic, synthetic[:, :, :20])


def test_a_cosine_decayed_two_sample_test_is_a_test_of_its_own(eyes):
    synthetic = eyes["x_synthetic"]
    apart = R.two_sample_test(eyes["x_real"], synthetic, seed=0, epochs=4, schedule="cosine")
    assert apart["accuracy"] > 0.8
    constant = R.two_sample_test(eyes["x_real"], synthetic, seed=0, epochs=4)
    assert apart["accuracy"] != constant["accuracy"]  # the schedule is used, not ignored
    same = R.two_sample_test(synthetic[::2], synthetic[1::2], seed=0, epochs=4, schedule="cosine")
    assert abs(same["accuracy"] - 0.5) < 2 * R.null_band(same["test"])
    with pytest.raises(ValueError, match="schedule 'step'"):
        R.two_sample_test(synthetic, synthetic, schedule="step")


def test_realism_scores_each_seed_with_the_mean_of_several_classifiers(eyes):
    real, synthetic = eyes["x_real"][:120], eyes["x_synthetic"][:120]
    single = R.realism(real, {"synthetic": synthetic}, seeds=(0, 1), epochs=1)["sets"]["synthetic"]
    assert single["c2st_classifiers_per_seed"] == 1 and "c2st_per_seed" not in single
    found = R.realism(real, {"synthetic": synthetic}, seeds=(0, 1), epochs=1, repeats=2)
    entry = found["sets"]["synthetic"]
    accuracy = {
        s: R.two_sample_test(real, synthetic, seed=s, epochs=1)["accuracy"]
        for s in (0, 1, R.C2ST_REPEAT_STRIDE, 1 + R.C2ST_REPEAT_STRIDE)
    }
    # seed s: classifiers s and s + stride; the first is the one-classifier figure
    assert [p["runs"] for p in entry["c2st_per_seed"]] == [
        [accuracy[0], accuracy[R.C2ST_REPEAT_STRIDE]],
        [accuracy[1], accuracy[1 + R.C2ST_REPEAT_STRIDE]],
    ]
    assert single["c2st_accuracy"]["runs"] == [accuracy[0], accuracy[1]]
    means = [(accuracy[s] + accuracy[s + R.C2ST_REPEAT_STRIDE]) / 2 for s in (0, 1)]
    assert entry["c2st_accuracy"]["runs"] == pytest.approx(means)
    within = [abs(accuracy[s] - accuracy[s + R.C2ST_REPEAT_STRIDE]) / 2**0.5 for s in (0, 1)]
    assert entry["c2st_classifier_std"] == pytest.approx(np.sqrt(np.mean(np.square(within))))
    html = report_html._realism({"realism": found, "seeds": [0, 1]})
    assert "mean of 2 classifiers" in html and "synthetic ± " in html
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        R.realism(real, {"synthetic": synthetic}, seeds=(0,), repeats=0)


def test_kernel_distance_is_zero_for_one_distribution_and_grows_with_a_shift():
    rng = torch.Generator().manual_seed(0)
    a, b = torch.randn(600, 16, generator=rng), torch.randn(600, 16, generator=rng)
    same = R.kernel_distance(a, b, subset_size=300)
    shifted = R.kernel_distance(a, b + 0.5, subset_size=300)
    further = R.kernel_distance(a, b + 1.0, subset_size=300)
    assert abs(same["mean"]) < 3 * max(same["std"], 1e-3)
    assert further["mean"] > shifted["mean"] > 10 * abs(same["mean"]) > 0


def test_features_are_the_input_of_the_last_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    assert torch.allclose(R.features(model, x), torch.relu(model[0](x)))
    conv = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1))
    images = torch.randn(3, 1, 8, 8)
    expected = torch.relu(conv[0](images)).mean(dim=(2, 3))
    assert torch.allclose(R.features(conv, images), expected, atol=1e-6)


def test_images_reads_unlabeled_sets_and_resizes_them(eyes, tmp_path):
    x = R.images(eyes["real_unlabeled"], "gaze", size=(35, 55))
    assert x.shape == (400, 1, 35, 55) and torch.equal(x, eyes["x_real"])
    assert R.images(eyes["real_unlabeled"], "gaze", size=(36, 60), limit=7).shape == (
        7,
        1,
        36,
        60,
    )


def test_measures_read_sets_on_disk_exactly_as_in_memory(eyes, tmp_path):
    """Rows on disk (read a batch at a time) give the C2ST and the features of tensors."""
    real = R.images(eyes["real_unlabeled"], "gaze", size=(35, 55), scratch=tmp_path)
    assert isinstance(real, Rows) and torch.equal(real[:], eyes["x_real"])
    synthetic = eyes["x_synthetic"]
    assert R.two_sample_test(real, synthetic, seed=3, epochs=1) == R.two_sample_test(
        eyes["x_real"], synthetic, seed=3, epochs=1
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    assert torch.equal(R.features(model, real), R.features(model, eyes["x_real"]))
    # frames taller than the C2ST's 64 pixels are shrunk a batch at a time, as all at once
    rng = np.random.default_rng(0)
    tall = [
        RowWriter(tmp_path / f"tall{i}.rows", transform=unit_channels_first(Scaling(0, 255)))
        for i in range(2)
    ]
    for writer in tall:
        for _ in range(24):
            writer.append(rng.integers(0, 256, (130, 40, 3), dtype=np.uint8))
    a, b = (w.finish() for w in tall)
    assert R.two_sample_test(a, b, seed=1, epochs=2, batch_size=8) == R.two_sample_test(
        a[:], b[:], seed=1, epochs=2, batch_size=8
    )


def test_evaluate_with_an_unlabeled_real_test_reports_realism_and_drift(eyes, tmp_path):
    out = tmp_path / "report"
    scratch = tmp_path / "scratch"
    on_disk = []  # the decoded sets while evaluate runs: files in its scratch directory

    def log(_line):
        on_disk.append(sorted(p.name.split("-")[0] for p in scratch.rglob("*.rows")))

    report = ev.evaluate(
        "gaze",
        synthetic=eyes["synthetic"],
        refined=eyes["blurred"],  # stands in for refined images: same keys and labels
        real_test=eyes["real_unlabeled"],
        out=out,
        seeds=(0,),
        epochs=1,
        batch_size=32,
        log=log,
        scratch=scratch,
    )
    assert on_disk[0] == ["inputs", "inputs", "realism"]  # synthetic, refined; real test
    assert scratch.is_dir() and not any(scratch.iterdir())  # removed at the end
    assert "scratch directory" in report["settings"]["data"]
    assert report["real_test_labeled"] is False and report["results"] == {}
    assert report["gap_closed"] is None
    sets = report["realism"]["sets"]
    assert set(sets) == {"synthetic", "refined"}
    assert sets["synthetic"]["c2st_accuracy"]["mean"] > 0.8
    assert sets["synthetic"]["kid"]["mean"] > 0
    assert "gaze-estimator" in report["realism"]["kid_note"]
    assert report["label_drift"]["pairs"] == 400  # drift needs no real labels
    html = (out / "report.html").read_text()
    assert "has no labels" in html and 'id="realism"' in html
    assert json.loads((out / "report.json").read_text())["realism"]["sets"].keys() == sets.keys()
    with pytest.raises(ValueError, match="unlabeled"):
        ev.evaluate(
            "gaze",
            synthetic=eyes["synthetic"],
            refined=eyes["real"],
            real_train=eyes["real"],
            real_test=eyes["real_unlabeled"],
            seeds=(0,),
            epochs=1,
            log=None,
        )


def test_evaluate_cli_prints_realism_for_a_labeled_real_test(eyes, tmp_path, capsys):
    code = cli.main(
        [
            "evaluate", "gaze", "--synthetic", *eyes["synthetic"], "--refined", *eyes["real"],
            "--real-test", *eyes["real"], "--out", str(tmp_path / "r"), "--seeds", "0",
            "--epochs", "1", "--c2st-repeats", "2",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 classifiers per seed, ± " in printed
    assert "realism, synthetic vs real: two-sample test accuracy" in printed
    assert "realism, refined   vs real" in printed
    # the scale of the test is part of its figure: how many images its classifier learned from
    assert "learned from 400 images, scored on 400" in printed
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["real_test_labeled"] is True and set(report["results"]) == {
        "synthetic",
        "refined",
    }
    # the "refined" set is the real test set's own images: not told apart beyond chance
    sets = report["realism"]["sets"]
    assert sets["synthetic"]["c2st_accuracy"]["mean"] > 0.8
    band = sets["refined"]["c2st_null_band"]
    assert abs(sets["refined"]["c2st_accuracy"]["mean"] - 0.5) < 2 * band
    assert sets["refined"]["kid"]["mean"] < sets["synthetic"]["kid"]["mean"]
    assert sets["refined"]["c2st_train_images"] == sets["refined"]["c2st_test_images"] == 400
    assert [len(p["runs"]) for p in sets["refined"]["c2st_per_seed"]] == [2]
    html = (tmp_path / "r" / "report.html").read_text()
    assert "classifier learned from 400 images" in html and "mean of 2 classifiers" in html
