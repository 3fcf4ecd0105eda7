"""The `refinery evaluate` report: every section present, self-contained, numbers, JSON, NaN."""

from __future__ import annotations

import base64
import copy
import json
import math
import re

import cv2
import matplotlib
import numpy as np
import pytest

from train.evaluation import report as rp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _stat(runs):
    return {"mean": float(np.mean(runs)), "std": float(np.std(runs)), "runs": list(runs)}


def _base(domain, metric, metrics, *, real=True):
    rng = np.random.default_rng(7)
    sets = ("synthetic", "refined", "real") if real else ("synthetic", "refined")
    return {
        "format": rp.FORMAT,
        "domain": domain,
        "title": f"Refinement report: {domain}",
        "task": {"network": f"{domain}-net-small", "metric": metric, "description": "a test task"},
        "inputs": {
            "synthetic": [f"/data/{domain}/syn-{i:03d}.tar" for i in range(2)],
            "refined": [f"s3://bucket/{domain}/ref-000.tar"],
            "real_train": [f"https://example.org/{domain}/real-000.tar"] if real else None,
            "real_test": [f"/data/{domain}/test-000.tar"],
        },
        "counts": {
            "synthetic": 1000,
            "refined": 998,
            "real_train": 1000 if real else None,
            "real_test": 300,
        },
        "seeds": [0, 1, 2],
        "settings": {"epochs": 4, "batch_size": 32, "lr": 1e-3, "input_size": [64, 64]},
        "results": {s: {"metrics": {k: _stat(v[s]) for k, v in metrics.items()}} for s in sets},
        "gap_closed": {
            "of_means": 0.42,
            "mean_over_seeds": 0.425,
            "runs": [0.4, 0.45, None],
            "note": "(E_syn - E_ref) / ...",
        }
        if real
        else None,
        "label_drift": {
            "label": "displacement between predictions on synthetic and refined images",
            "unit": metric["unit"],
            "mean": 1.2,
            "std": 0.1,
            "runs": [1.1, 1.3, 1.2],
            "description": "how far refinement moves what the network sees",
        },
        "labels": {
            "paired": 998,
            "identical": 998,
            "unpaired_refined": 0,
            "missing_from_refined": 2,
            "differing_keys": [],
        },
        "distributions": {
            "label": f"error on the real test set ({metric['unit']})",
            "values": {
                s: (rng.gamma(2.0, (3.0, 2.6, 2.0)[i], 900)).tolist() for i, s in enumerate(sets)
            },
        },
        "pck": None,
        "per_class_iou": None,
        "machine": {"hostname": "test", "cpu_count": 2},
        "versions": {"refinery": "0.0.0", "numpy": np.__version__},
        "created": "2026-11-21T10:00:00Z",
        "seconds": {"total": 123.4},
    }


def hand_report():
    metric = {
        "key": "mean_joint_error_px",
        "label": "mean joint error",
        "unit": "px",
        "higher_is_better": False,
    }
    report = _base(
        "hand",
        metric,
        {
            "mean_joint_error_px": {
                "synthetic": [5.9, 6.4, 6.0],
                "refined": [5.1, 5.3, 5.2],
                "real": [4.0, 4.1, 3.9],
            },
            "median_joint_error_px": {
                "synthetic": [5.0, 5.5, 5.2],
                "refined": [4.4, 4.5, 4.6],
                "real": [3.5, 3.6, 3.4],
            },
        },
    )
    thresholds = list(range(21))
    curves = {}
    for i, s in enumerate(("synthetic", "refined", "real")):
        mean = 1 - np.exp(-np.array(thresholds) / (6 - i))
        curves[s] = {
            "mean": mean.tolist(),
            "min": np.clip(mean - 0.03, 0, 1).tolist(),
            "max": np.clip(mean + 0.03, 0, 1).tolist(),
        }
    report["pck"] = {"thresholds": thresholds, "unit": "px", "curves": curves}
    report["labels"]["differing_keys"] = ["<b>x</b>", "sample-0001"]
    report["labels"]["identical"] = 996
    return report


def scene_report():
    metric = {"key": "miou", "label": "mean IoU", "unit": "", "higher_is_better": True}
    report = _base(
        "scene",
        metric,
        {
            "miou": {
                "synthetic": [0.10, 0.11, 0.105],
                "refined": [0.18, 0.19, 0.185],
                "real": [0.30, 0.31, 0.29],
            },
            "pixel_accuracy": {
                "synthetic": [0.6, 0.61, 0.62],
                "refined": [0.7, 0.71, 0.72],
                "real": [0.8, 0.8, 0.81],
            },
        },
    )
    classes = ["road", "sidewalk", "building", "wall", "fence"]
    report["per_class_iou"] = {
        "classes": classes,
        "values": {
            "synthetic": [0.8, 0.2, 0.5, None, 0.05],
            "refined": [0.85, 0.3, 0.55, None, 0.1],
            "real": [0.9, 0.5, 0.7, None, 0.2],
        },
    }
    report["distributions"] = None
    return report


def gaze_report():
    metric = {
        "key": "mean_angular_error_deg",
        "label": "mean angular error",
        "unit": "°",
        "higher_is_better": False,
    }
    return _base(
        "gaze",
        metric,
        {"mean_angular_error_deg": {"synthetic": [12.1, 12.5, 11.9], "refined": [9.8, 10.2, 10.0]}},
        real=False,
    )


BUILDERS = {"hand": hand_report, "scene": scene_report, "gaze": gaze_report}


def _sections(page):
    return re.findall(r'<section id="([^"]+)"', page)


def _section(page, sid):
    return re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S).group(1)


@pytest.mark.parametrize("domain", list(BUILDERS))
def test_every_section_self_contained(tmp_path, domain):
    report = BUILDERS[domain]()
    path = rp.write_report(report, tmp_path)
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    assert _sections(page) == list(rp.SECTIONS)

    # nothing fetched from anywhere: no script, no remote src/href/url()/@import
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"url\(|@import", page, re.I)
    # the https input URL is shown as text, escaped, not linked
    if report["inputs"]["real_train"]:
        assert "https://example.org" in page and "<a " not in page

    record = json.loads((tmp_path / "report.json").read_text())
    written = list(record["files"]["plots"].values())
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(sources) == len(written)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(PNG_SIGNATURE)
    for rel in written:
        data = (tmp_path / rel).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
        assert base64.b64encode(data).decode() in page


def test_plots_follow_the_data(tmp_path):
    plots = {
        d: set(
            json.loads((rp.write_report(b(), tmp_path / d).parent / "report.json").read_text())[
                "files"
            ]["plots"]
        )
        for d, b in BUILDERS.items()
    }
    assert plots["hand"] == {"errors", "pck", "seeds"}
    assert plots["scene"] == {"per_class_iou", "seeds"}
    assert plots["gaze"] == {"errors", "seeds"}
    page = (tmp_path / "gaze" / "report.html").read_text()
    assert "PCK is measured for the hand domain only" in _section(page, "plots")
    assert "no real training data given" in _section(page, "gap").lower()
    assert "no real training data given" in _section(page, "summary").lower()


def test_numbers_appear(tmp_path):
    page = rp.write_report(hand_report(), tmp_path).read_text()
    results = _section(page, "results")
    for runs in ([5.9, 6.4, 6.0], [5.1, 5.3, 5.2], [4.0, 4.1, 3.9]):
        expected = f"{np.mean(runs):.2f} ± {np.std(runs):.2f}"
        assert expected in results
        assert expected in _section(page, "summary")
    assert "6.40" in results  # a per-seed run
    assert "lower is better" in results
    # the real row is best (lowest error) and highlighted
    best = re.findall(r'<tr class="best"><td>([^<]+)</td>', results)
    assert best == ["real"]
    assert "42.0%" in _section(page, "summary") and "42.0%" in _section(page, "gap")
    assert "1.20 ± 0.10 px" in _section(page, "drift")
    assert "996 of 998" in _section(page, "summary")

    page = rp.write_report(scene_report(), tmp_path / "scene").read_text()
    best = re.findall(r'<tr class="best"><td>([^<]+)</td>', _section(page, "results"))
    assert best == ["real"]  # higher mIoU is better
    assert "higher is better" in _section(page, "results")
    iou = _section(page, "plots")
    assert '<td>wall</td><td class="num">–</td>' in iou


def test_negative_gap_is_reported_not_clamped(tmp_path):
    report = hand_report()
    report["gap_closed"] = {
        "of_means": -0.15,
        "mean_over_seeds": -0.15,
        "runs": [-0.1, -0.2, -0.15],
        "note": "worse",
    }
    page = rp.write_report(report, tmp_path).read_text()
    assert "-15.0%" in _section(page, "summary")
    assert "worse" in _section(page, "summary")
    assert "-20.0%" in _section(page, "gap")


def test_json_round_trips_with_files(tmp_path):
    report = hand_report()
    report["results"]["refined"]["metrics"]["mean_joint_error_px"]["runs"] = np.array(
        [5.1, 5.3, 5.2]
    )
    before = copy.deepcopy(report)
    sheet = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    rp.write_report(report, tmp_path, sheet=sheet)
    assert report.keys() == before.keys()  # the input dict is left as it was
    record = json.loads((tmp_path / "report.json").read_text())
    files = record.pop("files")
    assert files["html"] == "report.html" and files["samples"] == "samples.png"
    for rel in [files["html"], files["json"], files["samples"], *files["plots"].values()]:
        assert (tmp_path / rel).is_file()
    assert "nonfinite" not in record
    expected = json.loads(json.dumps({**before, "results": record["results"]}))
    assert record == expected
    assert record["results"]["refined"]["metrics"]["mean_joint_error_px"]["runs"] == [
        5.1,
        5.3,
        5.2,
    ]
    decoded = cv2.imdecode(np.frombuffer((tmp_path / "samples.png").read_bytes(), np.uint8), 1)
    np.testing.assert_array_equal(decoded[..., ::-1], sheet)
    samples = _section((tmp_path / "report.html").read_text(), "samples")
    assert rp.SHEET_CAPTION in samples and "data:image/png;base64," in samples


def test_nan_is_written_as_null_and_flagged(tmp_path):
    report = hand_report()
    metrics = report["results"]["refined"]["metrics"]["mean_joint_error_px"]
    metrics["runs"][1] = float("nan")
    metrics["mean"] = np.float64("nan")
    report["distributions"]["values"]["refined"][3] = float("inf")
    page = rp.write_report(report, tmp_path).read_text()

    def refuse(name):
        raise AssertionError(f"{name} in report.json")

    record = json.loads((tmp_path / "report.json").read_text(), parse_constant=refuse)
    runs = record["results"]["refined"]["metrics"]["mean_joint_error_px"]["runs"]
    assert (
        runs[1] is None
        and record["results"]["refined"]["metrics"]["mean_joint_error_px"]["mean"] is None
    )
    assert record["nonfinite"]["count"] == 3
    assert "results.refined.metrics.mean_joint_error_px.runs[1]" in record["nonfinite"]["first"]
    assert "non-finite" in _section(page, "summary")
    assert "nan" not in _section(page, "results").lower()
    assert math.isnan(report["results"]["refined"]["metrics"]["mean_joint_error_px"]["runs"][1])


def test_strings_are_escaped(tmp_path):
    report = hand_report()
    report["title"] = "<script>alert(1)</script>"
    page = rp.write_report(report, tmp_path).read_text()
    labels = _section(page, "labels")
    assert "&lt;b&gt;x&lt;/b&gt;" in labels and "<b>x</b>" not in page
    assert 'class="warn"' in labels
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_many_differing_keys_are_cut_short(tmp_path):
    report = hand_report()
    report["labels"]["differing_keys"] = [f"k{i:03d}" for i in range(50)]
    labels = _section(rp.write_report(report, tmp_path).read_text(), "labels")
    assert labels.count("<li>") == rp.MAX_LISTED and "and 30 more" in labels


def test_plots_are_deterministic_and_leave_the_backend(tmp_path):
    backend = matplotlib.get_backend()
    rp.write_report(hand_report(), tmp_path / "a")
    rp.write_report(hand_report(), tmp_path / "b")
    assert matplotlib.get_backend() == backend
    for name in ("errors", "pck", "seeds"):
        a = (tmp_path / "a" / "plots" / f"{name}.png").read_bytes()
        assert a == (tmp_path / "b" / "plots" / f"{name}.png").read_bytes()
        assert b"Matplotlib" not in a
    assert (tmp_path / "a" / "report.html").read_bytes() == (
        tmp_path / "b" / "report.html"
    ).read_bytes()


def test_stale_files_are_removed(tmp_path):
    sheet = np.zeros((10, 10, 3), np.uint8)
    rp.write_report(hand_report(), tmp_path, sheet=sheet)
    assert (tmp_path / "plots" / "pck.png").exists() and (tmp_path / "samples.png").exists()
    rp.write_report(gaze_report(), tmp_path)
    assert not (tmp_path / "plots" / "pck.png").exists()
    assert not (tmp_path / "samples.png").exists()


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="format"):
        rp.write_report({**hand_report(), "format": "refinery-evaluate/0"}, tmp_path)
    with pytest.raises(ValueError, match="sheet"):
        rp.write_report(hand_report(), tmp_path, sheet=np.zeros((10, 10), np.uint8))
    with pytest.raises(TypeError, match=r"report\.settings\.when"):
        rp.write_report({**hand_report(), "settings": {"when": object()}}, tmp_path)
