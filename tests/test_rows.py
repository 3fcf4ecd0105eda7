"""train.evaluation.rows: decoded sets on disk, read back by index, the same as in memory."""

from __future__ import annotations

import resource
import threading

import numpy as np
import pytest
import torch

from train.data import Scaling, unit_channels_first
from train.evaluation import rows as R


def _written(tmp_path, data, transform=None):
    options = {} if transform is None else {"transform": transform}
    on_disk = R.RowWriter(tmp_path / "x.rows", **options)
    in_memory = R.RowWriter(None, **options)
    for row in data:
        on_disk.append(row)
        in_memory.append(row)
    return on_disk.finish(), in_memory.finish()


def test_rows_read_back_what_was_written_by_any_index(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (10, 4, 6, 3), dtype=np.uint8)
    rows, tensor = _written(tmp_path, data)
    assert isinstance(rows, R.Rows) and isinstance(tensor, torch.Tensor)
    assert rows.shape == (10, 4, 6, 3) and rows.dtype == torch.uint8 and len(rows) == 10
    assert torch.equal(rows[:], torch.from_numpy(data))
    for key in (3, -1, slice(2, 7), slice(8, 20), slice(5, 5), [9, 0, 0, 4], torch.tensor([2, 3])):
        assert torch.equal(rows[key], tensor[key]), key
    assert rows[[]].shape == (0, 4, 6, 3)
    with pytest.raises(IndexError):
        rows[10]
    with pytest.raises(IndexError):
        rows[[0, 11]]
    with pytest.raises(IndexError):
        rows[::2]


def test_views_read_only_their_rows_in_their_order(tmp_path):
    data = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
    rows, tensor = _written(tmp_path, data)
    view = R.take(rows, [5, 1, 7, 8, 9])
    assert isinstance(view, R.Rows) and len(view) == 5 and view.shape == (5, 3)
    assert torch.equal(view[:], tensor[[5, 1, 7, 8, 9]])
    assert torch.equal(view[2:5], tensor[7:10])  # a run of the file: one read
    again = view.take([4, 0])
    assert torch.equal(again[:], tensor[[9, 5]])
    del rows, view  # the file stays open while a view of it lives
    assert torch.equal(again[[1]], tensor[[5]])
    assert torch.equal(R.take(tensor, [3, 2]), tensor[[3, 2]])


def test_transform_matches_the_in_memory_set(tmp_path):
    """8-bit pixels stored, float32 channels-first read: exactly the in-memory conversion."""
    transform = unit_channels_first(Scaling(0.0, 255.0))
    data = np.random.default_rng(1).integers(0, 256, (6, 8, 10, 3), dtype=np.uint8)
    rows, tensor = _written(tmp_path, data, transform)
    assert rows.shape == (6, 3, 8, 10) and rows.dtype == torch.float32
    assert torch.equal(rows[[4, 1]], tensor[[4, 1]])
    assert float(tensor.min()) >= -1 and float(tensor.max()) <= 1
    assert (tmp_path / "x.rows").stat().st_size == data.nbytes  # stored 8-bit, not float32
    grey = np.zeros((2, 5, 7), np.uint8)
    assert _written(tmp_path, grey, transform)[0].shape == (2, 1, 5, 7)


def test_rows_of_another_shape_or_none_are_refused(tmp_path):
    writer = R.RowWriter(tmp_path / "a.rows")
    writer.append(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"row 1 is uint8\(3, 2\), the first was uint8\(2, 2\)"):
        writer.append(np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="no rows"):
        R.RowWriter(tmp_path / "b.rows").finish()


def test_reading_rows_does_not_grow_the_process(tmp_path):
    """pread, not a memory map: reading a 128 MiB file a batch at a time leaves the peak
    resident memory about where it was (a map would count every page touched)."""
    writer = R.RowWriter(tmp_path / "big.rows")
    row = np.ones((1024, 1024), np.uint8)
    for _ in range(128):
        writer.append(row)
    rows = writer.finish()
    total = int(rows[0:4].sum())  # warm up torch's kernels first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for start in range(4, 128, 4):
        total += int(rows[start : start + 4].sum())
    assert total == 128 * 2**20
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 48, grown_mib


def test_ahead_keeps_the_order_and_works_off_the_caller_thread():
    threads = set()

    def work(x):
        threads.add(threading.get_ident())
        return x * x

    assert list(R.ahead(work, range(7))) == [x * x for x in range(7)]
    assert threading.get_ident() not in threads
    assert list(R.ahead(work, [])) == []


def test_scratch_directory_is_removed_with_its_files(tmp_path):
    with R.scratch_directory(tmp_path / "parent", "test") as where:
        path = R.scratch_file(where, "inputs")
        assert path.parent == where and path.name.startswith("inputs-")
        path.write_bytes(b"x")
    assert not where.exists() and (tmp_path / "parent").is_dir()
    assert R.scratch_file(None, "inputs") is None
