"""refinery.history.HistoryBuffer: fills (unlike the np.append ports), replaces b/2 per step,
mixes half current / half history, keeps companions aligned, resumes with identical draws.

Images carry their own id: image k is a (1, 2, 3) tensor filled with k, its companions are k
as an int64 scalar and a (2, 3) mask of k, so any misalignment shows as unequal ids.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from refinery.history import HistoryBuffer


def batch_of(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    idx = torch.tensor(ids, dtype=torch.int64)
    images = idx.float()[:, None, None, None].expand(-1, 1, 2, 3).clone()
    masks = idx[:, None, None].expand(-1, 2, 3).clone().to(torch.int16)
    return images, idx, masks


def image_ids(images: torch.Tensor) -> list[int]:
    return images[:, 0, 0, 0].long().tolist()


def stored_ids(buffer: HistoryBuffer) -> list[int]:
    state = buffer.state_dict()["tensors"]
    return image_ids(state["images"]) if "images" in state else []


def run(buffer: HistoryBuffer, steps: int, batch: int, start: int = 0):
    """`steps` mix calls with fresh ids; yields (ids in, mixed tensors) per step."""
    next_id = start
    for _ in range(steps):
        ids = list(range(next_id, next_id + batch))
        next_id += batch
        yield ids, buffer.mix(*batch_of(ids))


def test_buffer_fills_unlike_the_np_append_ports():
    buffer = HistoryBuffer(capacity=10, seed=0)
    sizes = [len(buffer) for _ in run(buffer, 7, batch=4)]
    assert sizes == [2, 4, 6, 8, 10, 10, 10]
    assert len(stored_ids(buffer)) == 10


def test_each_step_replaces_exactly_half_a_batch():
    buffer = HistoryBuffer(capacity=7, seed=1)
    before = []
    for ids, _ in run(buffer, 12, batch=6):
        after = stored_ids(buffer)
        kept = before + [None] * (len(after) - len(before))
        changed = [i for i, (a, b) in enumerate(zip(kept, after, strict=True)) if a != b]
        assert len(changed) == 3  # b/2, also on the step where the buffer becomes full (6 -> 7)
        assert sorted(after[i] for i in changed) == ids[:3]  # the current half is what is stored
        before = after
    assert len(buffer) == 7


def test_mixed_batch_is_half_current_half_history():
    buffer = HistoryBuffer(capacity=100, seed=2)
    seen: set[int] = set()
    for step, (ids, (images, *_)) in enumerate(run(buffer, 10, batch=8)):
        got = image_ids(images)
        if step == 0:
            assert got == ids  # empty buffer: all current
        else:
            assert got[:4] == ids[:4]
            history = got[4:]
            assert len(set(history)) == 4  # drawn without replacement
            assert set(history) <= seen  # only images stored by earlier steps
        seen |= set(ids[:4])
        assert images.shape == (8, 1, 2, 3)


def test_companions_stay_aligned_with_their_images():
    buffer = HistoryBuffer(capacity=9, seed=3)
    for _, (images, idx, masks) in run(buffer, 20, batch=6):
        assert image_ids(images) == idx.tolist()
        assert (masks == idx[:, None, None].to(masks.dtype)).all()
        assert idx.dtype == torch.int64 and masks.dtype == torch.int16


def test_odd_batches_and_batch_of_one():
    buffer = HistoryBuffer(capacity=4, seed=4)
    (ids, (images, *_)), *_ = list(run(buffer, 1, batch=1))
    assert image_ids(images) == ids and len(buffer) == 1
    buffer = HistoryBuffer(capacity=50, seed=4)
    for step, (ids, (images, *_)) in enumerate(run(buffer, 3, batch=5)):
        got = image_ids(images)
        n_history = 0 if step == 0 else 2
        assert got[: 5 - n_history] == ids[: 5 - n_history]
        assert len(buffer) == 3 * (step + 1)  # ceil(5 / 2) stored per step


def test_output_is_detached_and_on_the_input_device():
    buffer = HistoryBuffer(capacity=8)
    refined = torch.rand(4, 1, 2, 3, requires_grad=True)
    for _ in range(3):
        (mixed,) = buffer.mix(refined * 2)
        assert not mixed.requires_grad and mixed.device == refined.device
        assert mixed.shape == refined.shape


def test_state_round_trip_through_safetensors_draws_the_same(tmp_path):
    uninterrupted = HistoryBuffer(capacity=12, seed=5)
    list(run(uninterrupted, 6, batch=4))
    state = uninterrupted.state_dict()
    save_file(state["tensors"], tmp_path / "history.safetensors")
    (tmp_path / "history.json").write_text(json.dumps(state["meta"]))

    resumed = HistoryBuffer(capacity=12, seed=999)  # the state's generator wins
    resumed.load_state_dict(
        {
            "tensors": load_file(tmp_path / "history.safetensors"),
            "meta": json.loads((tmp_path / "history.json").read_text()),
        }
    )
    assert len(resumed) == len(uninterrupted) == 12
    assert stored_ids(resumed) == stored_ids(uninterrupted)
    for (_, a), (_, b) in zip(
        run(uninterrupted, 5, batch=4, start=1000),
        run(resumed, 5, batch=4, start=1000),
        strict=True,
    ):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    assert stored_ids(resumed) == stored_ids(uninterrupted)


def test_empty_state_round_trip_and_seeds():
    empty = HistoryBuffer(capacity=3, seed=7).state_dict()
    assert set(empty["tensors"]) == {"rng_state"} and empty["meta"]["size"] == 0
    json.dumps(empty["meta"])
    buffer = HistoryBuffer(capacity=3, seed=0)
    buffer.load_state_dict(empty)
    assert len(buffer) == 0 and buffer.seed == 7

    def draws(seed: int) -> list[list[int]]:
        buffer = HistoryBuffer(capacity=40, seed=seed)
        return [image_ids(m[0]) for _, m in run(buffer, 8, batch=8)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


def test_mismatches_raise():
    buffer = HistoryBuffer(capacity=4)
    buffer.mix(*batch_of([0, 1]))
    with pytest.raises(ValueError, match="companion"):
        buffer.mix(batch_of([2, 3])[0])
    with pytest.raises(ValueError, match="shape"):
        buffer.mix(torch.zeros(2, 1, 4, 4), *batch_of([2, 3])[1:])
    with pytest.raises(ValueError, match="batch size"):
        buffer.mix(batch_of([2, 3])[0], torch.zeros(3), torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="capacity"):
        HistoryBuffer(capacity=5).load_state_dict(buffer.state_dict())
    with pytest.raises(ValueError, match="capacity"):
        HistoryBuffer(capacity=0)
    with pytest.raises(ValueError, match="non-empty"):
        buffer.mix(torch.zeros(0, 1, 2, 3))


def test_swap_policy_keeps_companions_aligned_and_works_for_batch_one():
    pool = HistoryBuffer(capacity=4, seed=3, policy="swap")
    returned_history = 0
    for step in range(60):
        image = torch.full((1, 3, 2, 2), float(step))
        mask = torch.full((1, 2, 2), step, dtype=torch.long)
        out, out_mask = pool.mix(image, mask)
        assert torch.equal(out[:, 0, 0, 0].long(), out_mask[:, 0, 0])  # image i with mask i
        returned_history += int(out[0, 0, 0, 0] != step)
    assert len(pool) == 4 and 15 < returned_history < 45  # about half once full
    with pytest.raises(ValueError, match="policy"):
        HistoryBuffer(capacity=2, policy="random")
