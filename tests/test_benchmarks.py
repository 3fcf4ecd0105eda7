"""The product benchmarks (`make bench`) run at tiny sizes, and the README's results table agrees
with the recorded results."""

from __future__ import annotations

import json
from pathlib import Path

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
    # the CPU side against the codec's floor, measured in the same run
    identity, floor = figures["identity"], figures["codec_floor"]
    assert identity["vs_codec_floor"] == pytest.approx(
        identity["cpu_us_per_frame"] / floor["opencv_us_per_frame"]
    )
    assert identity["scaling"] == pytest.approx(
        identity["frames_per_s"] / identity["frames_per_s_one_worker"]
    )
    assert floor["encode_libdeflate_us"] > 0 and identity["cpu_busy"] > 0
    # the workers' CPU is counted (they fork from a fork server, not from this process): every
    # frame is decoded by some worker, so the job costs at least OpenCV's decode alone
    assert identity["cpu_us_per_frame"] > 0.8 * floor["decode_us"], (identity, floor)


@pytest.mark.slow
def test_train_speed_quick_run_measures_the_loop_with_and_without_background_decoding(tmp_path):
    from benchmarks import train_speed

    figures = train_speed.main(["--quick", "--out", str(tmp_path)])
    runs = figures["simgan"]
    assert {
        runs["decode_workers_0"]["decode_workers"],
        runs["decode_workers_2"]["decode_workers"],
    } == {0, 2}
    for r in (runs["decode_workers_0"], runs["decode_workers_2"]):
        assert r["images_per_s"] > 0 and 0 < r["data_wait_share"] < 1 and r["intervals"] >= 1
    assert runs["speedup"] == pytest.approx(
        runs["decode_workers_2"]["images_per_s"] / runs["decode_workers_0"]["images_per_s"]
    )
    feed = figures["feed"]
    assert set(feed) == {
        f"{heap}_heap_decoders_{n}" for heap in ("default", "frozen") for n in (0, 2)
    }
    for row in feed.values():
        assert row["samples_per_s"] > 0 and row["cpu_us_per_sample"] > 0
        assert row["ceiling_samples_per_s"] == pytest.approx(1e6 / row["cpu_us_per_sample"])
    record = json.loads((tmp_path / "train_speed.json").read_text())
    (what, figure), *_ = table.train_speed_rows(record)
    best = max(runs["decode_workers_0"]["images_per_s"], runs["decode_workers_2"]["images_per_s"])
    assert what.startswith("`refinery train simgan --preset ")
    assert figure.startswith(f"{best:,.0f} images/s" if best >= 100 else f"{best:,.3g} images/s")


@pytest.mark.slow
def test_gpu_check_runs_every_step_end_to_end_on_the_cpu(tmp_path):
    """The prepared GPU check, dry-run at CPU sizes: the first GPU run needs no fixing."""
    from benchmarks import gpu

    assert gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu-check.json").read_text())
    steps = record["figures"]["steps"]
    assert {k: v["status"] for k, v in steps.items()} == {
        "environment": "passed",
        "pytest": "not run",  # every GPU test skips here: never counted as passed
        "engines": "passed",
        "job": "passed",
        "train": "passed",
        "evaluate": "passed",
    }
    evaluate = steps["evaluate"]
    assert evaluate["16"]["frames_per_set"] == 16 and evaluate["8"]["device"] == "cpu"
    assert evaluate["16"]["peak_host_rss_mib"] > 50 and evaluate["16"]["peak_device_mib"] is None
    assert "host_growth" in evaluate
    train = steps["train"]
    assert set(train) >= {"simgan_gaze_fp32_decode2", "simgan_gaze_amp_decode2", "sggan_fp32"}
    for key in ("simgan_gaze_fp32_decode2", "simgan_gaze_amp_decode2", "sggan_fp32", "sggan_amp"):
        assert train[key]["images_per_s"] > 0 and 0 <= train[key]["data_wait_share"] < 1
        assert train[key]["amp"] is False  # autocast is CUDA-only
    for key in ("simgan_gaze_amp_cache", "sggan_amp_cache"):  # from the decoded cache
        assert train[key]["cache"] and train[key]["images_per_s"] > 0
    assert not train["simgan_gaze_amp_decode2"]["cache"]
    tests = steps["pytest"]["tests"]
    assert steps["pytest"]["counts"]["skipped"] == len(tests) >= 10
    assert all("not available" in t["detail"] for t in tests.values())
    engines = steps["engines"]
    assert set(engines) >= set(gpu.NETWORKS)
    gaze = engines["gaze-refiner"]
    assert gaze["gflop_per_frame"] == pytest.approx(1.1378752)  # the 1.14 GFLOP
    for key in gpu.NETWORKS:
        row = engines[key]["variants"]["torch fp32 eager"]
        assert row["status"] == "passed" and row["frames_per_s"] > 0
        assert row["frames_per_s_host_to_host"] > 0
    job = steps["job"]
    assert job["gaze"]["frames"] == job["gaze_cli"]["frames"] == 40
    assert job["gaze"]["share_of_engine"] == pytest.approx(
        job["gaze"]["frames_per_s"] / job["gaze_engine_alone"]["frames_per_s"]
    )
    assert job["gaze_identity"]["frames"] == 40 and job["gaze_identity"]["cpu_us_per_frame"] > 0
    assert job["gaze_codec_floor"]["opencv_us_per_frame"] > 0
    assert job["gaze_cli_processes"]["processes"] == 2 and job["gaze_cli_processes"]["frames"] == 40
    assert job["scene"]["frames"] == 2 and job["scene"]["frames_per_s"] > 0
    not_run = record["figures"]["not_run"]
    assert any("GPU JPEG encoding" in line for line in not_run)
    assert sum("gpu test: cuda" in line for line in not_run) == len(tests)
    rows = dict(table.gpu_check_rows(record))
    assert any(what.startswith("gaze refiner on ") for what in rows)
    assert any(what.endswith(", 2 processes") for what in rows)


def test_gpu_check_reads_pytest_outcomes_and_refuses_to_run_without_cuda(tmp_path):
    from benchmarks import gpu

    (tmp_path / "r.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_ok" time="0.1"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_b" name="test_gpu">'
        '<skipped type="pytest.skip" message="gpu test: cuda not available"/></testcase>'
        "</testsuite></testsuites>"
    )
    result = gpu.parse_junit(tmp_path / "r.xml")
    assert result["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert result["tests"]["tests.test_b::test_gpu"] == {
        "outcome": "skipped",
        "detail": "gpu test: cuda not available",
    }
    import torch

    if not torch.cuda.is_available():
        assert gpu.main(["--device", "cuda", "--out", str(tmp_path)]) == 2


def test_gpu_check_runs_the_chosen_steps_first_and_records_the_rest_as_not_run(
    tmp_path, monkeypatch
):
    """--steps orders the run (environment always first, for the peak the engines are shared
    by); a step left out or past the budget is recorded as not run, never as passed."""
    from benchmarks import gpu

    ran = []

    def step(name, fail=False):
        def run(ctx):
            ran.append(name)
            if fail:
                raise ValueError("boom")
            return {"value": name}

        return run

    steps = {n: step(n, fail=n == "job") for n in gpu.STEPS}
    monkeypatch.setattr(gpu, "STEPS", steps)
    args = ["--device", "cpu", "--out", str(tmp_path), "--steps", "train", "job", "environment"]
    assert gpu.main(args) == 1  # the job failed
    assert ran == ["environment", "train", "job"]
    figures = json.loads((tmp_path / "gpu-check.json").read_text())["figures"]
    statuses = {k: v["status"] for k, v in figures["steps"].items()}
    assert statuses == {
        "environment": "passed",
        "train": "passed",
        "job": "failed",
        "pytest": "not run",
        "engines": "not run",
        "evaluate": "not run",
    }
    assert figures["steps"]["engines"]["reason"] == "not in --steps"
    assert "ValueError: boom" in figures["steps"]["job"]["error"]
    ran.clear()
    assert gpu.main(["--device", "cpu", "--out", str(tmp_path), "--budget", "0"]) == 0
    assert ran == []  # nothing starts once the budget is spent
    figures = json.loads((tmp_path / "gpu-check.json").read_text())["figures"]
    assert {v["status"] for v in figures["steps"].values()} == {"not run"}


def test_gpu_check_needs_its_wheels_where_modules_are_missing(tmp_path, monkeypatch):
    from benchmarks import gpu

    assert gpu.install_wheels(tmp_path) == []  # everything importable here
    monkeypatch.setattr(gpu, "NEEDED", {"refinery_no_such_module": "x"})
    with pytest.raises(RuntimeError, match="make gpu-wheels"):
        gpu.install_wheels(tmp_path / "none")


def test_conv_flops_counts_the_gaze_refiner_as_the_paper_sizes_it():
    from benchmarks.gpu import conv_flops
    from refinery.registry import build_network

    module = build_network("simgan-refiner-gaze", channels=1)
    # 4 ResNet blocks of two 3x3 64->64 convolutions at 35x55 dominate: 8 x 2 x 35 x 55 x 64 x 576
    assert conv_flops(module, (1, 1, 35, 55)) == 1_137_875_200
    assert conv_flops(module, (2, 1, 35, 55)) == 2 * 1_137_875_200


def test_evaluate_memory_shards_divide_every_size():
    from benchmarks.evaluate_memory import shard_size

    assert shard_size([1000, 4000]) == 500
    assert shard_size([16, 64]) == 16
    assert shard_size([1200, 3600]) == 400
    assert shard_size([1000, 4001]) == 1


@pytest.mark.slow
def test_evaluate_memory_quick_run_records_the_peak_of_each_size(tmp_path):
    from benchmarks import evaluate_memory

    figures = evaluate_memory.main(["--quick", "--out", str(tmp_path)])
    runs = figures["runs"]
    assert set(runs) == {"16", "64"} and all(r["peak_host_rss_mib"] > 50 for r in runs.values())
    # each size reads its own number of frames from the one rendering; the real test set is shared
    assert [runs[s]["frames_per_set"] for s in ("16", "64")] == [16, 64]
    assert runs["16"]["real_test_frames"] == runs["64"]["real_test_frames"] == 8
    assert figures["growth"] == pytest.approx(
        runs["64"]["peak_host_rss_mib"] / runs["16"]["peak_host_rss_mib"] - 1
    )
    record = json.loads((tmp_path / "evaluate_memory.json").read_text())
    [(what, figure)] = table.evaluate_memory_rows(record)
    assert "16 → 64 frames/set" in what and figure.startswith(f"{figures['growth']:+.0%}")


def test_results_table_is_one_screen_and_links_every_figure_to_its_record():
    """The README's one table: each row names the record it comes from, and that file exists."""
    root = Path(__file__).resolve().parents[1]
    rows = [line for line in table.render().splitlines() if line.startswith("| ")][1:]
    assert 5 <= len(rows) <= 25
    for row in rows:
        link = row.rsplit("](", 1)[1].split(")", 1)[0]
        assert (root / link).is_file(), row


def test_results_table_leaves_out_absent_records_and_renders_a_gpu_check(tmp_path):
    """A record that is missing (a fresh clone before `make bench`) leaves its rows out; a
    gpu-check record renders its fastest passed engine variant and its multi-process job."""
    record = {
        "date": "2026-12-04T00:00:00+0000",
        "machine": {"cpu_count": 16, "gpu": "NVIDIA H200, 580.1"},
        "figures": {
            "steps": {
                "engines": {
                    "gaze-refiner": {
                        "variants": {
                            "tensorrt fp16": {"status": "not run"},
                            "torch fp16 graphs": {"status": "passed", "frames_per_s": 150_000.0},
                            "torch fp32 eager": {"status": "passed", "frames_per_s": 80_000.0},
                        }
                    }
                },
                "job": {"gaze_cli_processes": {"processes": 4, "frames_per_s": 9_000.0}},
            }
        },
    }
    (tmp_path / "gpu-check.json").write_text(json.dumps(record))
    rows = (
        (tmp_path / "absent.json", table.shard_io_rows),
        (tmp_path / "gpu-check.json", table.gpu_check_rows),
    )
    text = table.render(rows, root=tmp_path)
    assert text.splitlines()[2:] == [
        "| gaze refiner on NVIDIA H200, torch fp16 graphs | 150,000 frames/s | "
        "[gpu-check](gpu-check.json) (2026-12-04, 16 cores) |",
        "| `refinery refine` gaze on NVIDIA H200, 4 processes | 9,000 frames/s | "
        "[gpu-check](gpu-check.json) (2026-12-04, 16 cores) |",
    ]


def test_real_eyes_rows_pool_the_gans_of_both_records_of_the_setting():
    def record(refined, drift):
        def c2st(runs):
            return {"c2st_accuracy": {"runs": runs}}

        return {
            "figures": {
                "realism": {"refined": c2st(refined), "synthetic": c2st([1.0] * len(refined))},
                "label_drift_robust_deg": {"runs": drift},
            }
        }

    rows = table.real_gaze_rows(record([0.7, 0.8], [1.0, 2.0]), record([0.9], [3.0]))
    assert rows[0][0].endswith(", 3 GANs")
    assert rows[0][1] == "0.80 ± 0.10 (1.00) of the time"
    assert rows[1][1] == "2.00° ± 1.00"
