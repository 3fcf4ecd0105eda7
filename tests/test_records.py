"""The commit a record names: dirty for changed code, not for the records being written."""

import shutil
import subprocess

import pytest

from refinery.records import commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "refinery").mkdir()
    (tmp_path / "refinery" / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "reports").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "speed.json").write_text("{}\n")
    (tmp_path / "benchmarks" / "results" / "reports" / "run.html").write_text("<p>\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return tmp_path


def test_clean_checkout_names_head(checkout):
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert commit(checkout) == head


def test_rewritten_records_and_reports_leave_it_clean(checkout):
    (checkout / "benchmarks" / "results" / "speed.json").write_text('{"new": 1}\n')
    (checkout / "benchmarks" / "results" / "reports" / "run.html").write_text("<p>new\n")
    (checkout / "untracked.txt").write_text("scratch\n")
    assert not commit(checkout).endswith("+dirty")


def test_changed_code_is_dirty(checkout):
    (checkout / "benchmarks" / "results" / "speed.json").write_text('{"new": 1}\n')
    (checkout / "refinery" / "code.py").write_text("x = 2\n")
    assert commit(checkout).endswith("+dirty")


def test_not_a_checkout(tmp_path):
    assert commit(tmp_path) is None
