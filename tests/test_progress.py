"""Progress lines where no terminal is watching (Slurm, Kubernetes, nohup): every N seconds."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from refinery import sim
from refinery.progress import Progress
from refinery.samples import encode_sample
from refinery.shards import write_shards

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_plain_line_every_n_seconds_with_rate_rejects_and_eta():
    stream, clock = io.StringIO(), Clock()
    with Progress(40, what="refine", unit="shards", rate_of="samples", every=30, stream=stream,
                  clock=clock) as bar:  # fmt: skip
        for i in range(10):
            clock.now += 10.0
            bar.set(samples=100 * (i + 1), rejected=i // 5)
            bar.update(1)
    lines = stream.getvalue().splitlines()
    # at 30, 60 and 90 s, then the final line
    assert len(lines) == 4
    assert lines[0] == "refine: 3/40 shards (8%), 300 samples, 0 rejected, 10 samples/s, ETA 6m10s"
    assert lines[-1].startswith("refine: 10/40 shards (25%), 1,000 samples, 1 rejected")


def test_no_lines_on_a_terminal_or_when_turned_off():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    with Progress(3, what="x", unit="items", stream=terminal, every=0.0) as bar:
        bar.update(3)
    assert "x: 3/3" not in terminal.getvalue()  # a tqdm bar, not plain lines
    quiet = io.StringIO()
    with Progress(3, what="x", unit="items", stream=quiet, every=0) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_refine_writes_progress_lines_into_a_log(tmp_path):
    from tests.test_bad_inputs import gaze_engine

    gaze_engine(tmp_path / "engine")
    samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 30, seed=1))
    write_shards(samples, str(tmp_path / "in" / "g-%03d.tar"), shard_size=10)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REFINERY_PROGRESS_EVERY": "0.001"}
    done = subprocess.run(
        [sys.executable, "-m", "refinery", "refine", "--engine", str(tmp_path / "engine"),
         "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.startswith("refine: ")]
    assert any("1/3 shards" in line and "samples/s" in line for line in lines), done.stderr
    assert lines[-1].startswith("refine: 3/3 shards (100%), 30 samples, 0 rejected")
    assert json.loads((tmp_path / "out" / "g-000.tar.stats.json").read_text())["read"] == 10


def _refinery(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REFINERY_PROGRESS_EVERY": "0.001"}
    command = [sys.executable, "-m", "refinery", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True)


def test_ingest_and_train_write_progress_lines_into_a_log(tmp_path):
    import cv2
    import numpy as np

    from benchmarks.experiments.real_gaze import QUICK_RECIPE

    folder = tmp_path / "crops"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        cv2.imwrite(str(folder / f"{i:02d}.png"), rng.integers(0, 256, (36, 60), np.uint8))
    lines = _refinery(
        "ingest", "images", str(folder), "--domain", "gaze", "--out", str(tmp_path / "real")
    ).stderr.splitlines()
    assert lines[-1].startswith("ingest images: 12/12 items (100%)"), lines
    samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 16, seed=1))
    write_shards(samples, str(tmp_path / "syn" / "g-%03d.tar"), shard_size=16)
    (tmp_path / "tiny.yaml").write_text(QUICK_RECIPE)
    lines = _refinery(
        "train", "simgan", "--preset", "small", "--steps", "2", "--config",
        str(tmp_path / "tiny.yaml"), "--synthetic", str(tmp_path / "syn"), "--real",
        str(tmp_path / "real"), "--out", str(tmp_path / "run"),
    ).stderr.splitlines()  # fmt: skip
    progress = [line for line in lines if line.startswith("train simgan gaze: ")]
    assert progress and progress[-1].startswith("train simgan gaze: 6/6 iterations (100%)")
    assert "iterations/s" in progress[-1]


class Writes(io.StringIO):
    """A stream that keeps each ``write`` call's text."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_stderr_line_is_one_write_so_ranks_cannot_split_it(monkeypatch, tmp_path):
    """torchrun starts each rank with ``python -u``: a line written as text, then newline, is two
    writes to the pipe every rank shares, and another rank's line can land between them."""
    from refinery.cli import main

    stream = Writes()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("REFINERY_PROGRESS_EVERY", "30")
    missing = str(tmp_path / "missing-000.tar")
    run = ["train", "simgan", "--synthetic", missing, "--real", missing, "--preset", "small"]
    assert main([*run, "--out", str(tmp_path / "run")]) == 1
    assert any(c.startswith("train simgan gaze: 0/") for c in stream.calls)  # the progress line
    assert any(c.startswith("refinery train: error: ") for c in stream.calls)
    assert all(c.endswith("\n") and c.count("\n") == 1 for c in stream.calls), stream.calls
