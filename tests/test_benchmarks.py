"""Benchmarks run (tiny sizes) and the README table agrees with the recorded results."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import shard_io, table


def test_readme_results_table_matches_recorded_results():
    assert table.main(["--check"]) == 0


@pytest.mark.slow
def test_shard_io_quick_run_writes_figures(tmp_path):
    shard_io.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "shard_io.json").read_text())
    assert record["machine"]["cpu_count"] >= 1 and record["versions"]["webdataset"]
    for domain in ("gaze", "scene"):
        figures = record["figures"][domain]
        for key in ("write_samples_per_s", "read_raw_samples_per_s", "read_decoded_samples_per_s"):
            assert figures[key] > 0
        assert figures["read_raw_vs_webdataset"] > 0


@pytest.mark.slow
def test_engines_quick_run_compares_backends_side_by_side(tmp_path):
    from benchmarks import engines

    engines.main(["--quick", "--batch", "8", "--out", str(tmp_path)])
    figures = json.loads((tmp_path / "engines.json").read_text())["figures"]
    small = figures["simgan-refiner-small"]
    assert small["torch_eager_cpu"]["images_per_s"] > 0
    assert small["onnxruntime_vs_torch"] == pytest.approx(
        small["onnxruntime_cpu"]["images_per_s"] / small["torch_eager_cpu"]["images_per_s"]
    )


@pytest.mark.slow
def test_ingest_quick_run_measures_both_sources(tmp_path):
    from benchmarks import ingest

    ingest.main(["--quick", "--out", str(tmp_path)])
    figures = json.loads((tmp_path / "ingest.json").read_text())["figures"]
    for source in ("unityeyes", "gta5"):
        run = figures[f"{source}_workers1"]
        assert run["files_per_s"] > 0 and run["items"] > 0


@pytest.mark.slow
def test_refine_quick_run_records_all_three_comparisons(tmp_path):
    from benchmarks import refine

    refine.main(["--quick", "--out", str(tmp_path)])
    figures = json.loads((tmp_path / "refine.json").read_text())["figures"]
    t = figures["throughput"]
    assert t["job_vs_engine_only"] == pytest.approx(
        t["job_samples_per_s"] / t["engine_only_samples_per_s"]
    )
    assert t["naive_loop_samples_per_s"] > 0 and set(figures["memory"]) == {"300", "600", "growth"}


@pytest.mark.slow
def test_scene_uda_quick_run_scores_every_arm(tmp_path):
    from benchmarks import scene_uda

    scene_uda.main(["--quick", "--out", str(tmp_path)])
    figures = json.loads((tmp_path / "scene_uda.json").read_text())["figures"]
    arms = ("synthetic_only", "synthetic_only_matched", "spigan_no_pi", "spigan", "sggan_refined")
    for arm in arms:
        assert 0.0 <= figures[arm]["miou"] <= 1.0
    gains = figures["gain_over_synthetic_only"]
    assert gains["spigan"] == pytest.approx(
        figures["spigan"]["miou"] - figures["synthetic_only_matched"]["miou"]
    )
    assert gains["sggan_refined"] == pytest.approx(
        figures["sggan_refined"]["miou"] - figures["synthetic_only"]["miou"]
    )


def _finite_numbers(value) -> bool:
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


@pytest.mark.slow
def test_evaluate_quick_run_records_the_report_and_keeps_labels(tmp_path):
    from benchmarks import evaluate

    evaluate.main(["--quick", "--experiments", "gaze-simgan", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "evaluate_gaze-simgan.json").read_text())
    figures, settings = record["figures"], record["settings"]
    assert figures["task"]["key"] == "mean_angular_error_deg"
    for name in ("synthetic", "refined", "real"):
        assert set(figures["metric"][name]) == {"mean", "std", "runs"}
        assert len(figures["metric"][name]["runs"]) == len(settings["evaluate_seeds"])
    assert _finite_numbers(figures)
    assert figures["gap_closed"]["mean"] is not None and figures["label_drift"]["unit"] == "deg"
    labels = figures["labels"]
    assert labels["identical"] == labels["paired"] == settings["sizes"]["synthetic"]
    assert figures["refine_job"]["written"] == settings["sizes"]["synthetic"]
    assert figures["refine_job"]["rejected"] == 0
    for step in ("synth", "train", "export", "refine", "evaluate", "total"):
        assert figures["seconds"][step] > 0
    assert [c.split()[3] for c in settings["commands"]] == ["synth"] * 4 + [
        "train",
        "export",
        "refine",
        "evaluate",
    ]
    html = tmp_path / "reports" / "gaze-simgan.html"
    assert html.stat().st_size == settings["report"]["bytes"] > 0
    assert "<html" in html.read_text()[:500].lower()
    assert not (tmp_path / "distributions").exists() and "distributions" not in figures


def _evaluate_record(experiment: str, domain: str, *, higher: bool) -> dict:
    runs = {"synthetic": [0.4, 0.5], "refined": [0.3, 0.35], "real": [0.2, 0.2]}
    return {
        "benchmark": f"evaluate_{experiment}",
        "date": "2026-11-21T10:00:00+0000",
        "machine": {"cpu": "Test CPU", "cpu_count": 2, "gpu": None},
        "versions": {"refinery": "0.1.0", "torch": "2.13.0"},
        "figures": {
            "task": {
                "network": "net",
                "key": "m",
                "label": "mIoU" if higher else "mean angular error",
                "unit": "IoU" if higher else "deg",
                "higher_is_better": higher,
            },
            "metric": {
                name: {"mean": sum(v) / 2, "std": 0.05, "runs": v} for name, v in runs.items()
            },
            "gap_closed": {"mean": 0.5, "runs": [0.5, 0.5]},
            "label_drift": {"label": "drift", "unit": "1 - IoU", "mean": 0.25, "std": 0.0},
            "labels": {"paired": 300, "identical": 300, "differing": 0},
            "seconds": {"train": 61.0, "evaluate": 402.0, "total": 600.0},
        },
        "settings": {
            "experiment": experiment,
            "domain": domain,
            "method": "sggan",
            "preset": "small",
            "steps": 400,
            "config_overrides": {},
            "sizes": {"synthetic": 300, "real_unlabeled": 300, "real_train": 300, "real_test": 150},
            "image_size": "64x128",
            "task_network": "fcn8s-small",
            "task_settings": {"epochs": 6},
            "evaluate_seeds": [0, 1, 2],
            "report": {"path": f"reports/{experiment}.html", "bytes": 1000},
        },
    }


def test_evaluate_records_render_as_one_table(tmp_path):
    for experiment, domain, higher in (
        ("streets-sggan", "scene", True),
        ("gaze-simgan", "gaze", False),
    ):
        record = _evaluate_record(experiment, domain, higher=higher)
        (tmp_path / f"evaluate_{experiment}.json").write_text(json.dumps(record))
    text = table.render(tmp_path)
    assert text.count("#### evaluate") == 1 and text.count("| experiment |") == 1
    rows = [line for line in text.splitlines() if line.startswith(("| gaze", "| streets"))]
    assert [row.split(" | ")[0] for row in rows] == ["| gaze-simgan", "| streets-sggan"]
    assert rows[1].split(" | ")[1:8] == [
        "mIoU ↑", "0.45 ± 0.05", "0.325 ± 0.05", "0.2 ± 0.05", "50%", "0.25 (1 - IoU)", "300/300"
    ]  # fmt: skip
    assert "mean angular error (deg) ↓" in rows[0]
    for experiment in ("gaze-simgan", "streets-sggan"):
        assert f"(benchmarks/results/reports/{experiment}.html)" in text
