"""Benchmarks run (tiny sizes) and the README table agrees with the recorded results."""

from __future__ import annotations

import json

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
