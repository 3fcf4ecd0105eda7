"""One label check (``refinery.samples.label_problem``) for ``refinery inspect`` and the refine
job: a sample that claims labels and has none (``{}``, ``{"domain": "gaze"}``) is refused with a
reason, the job says what inspect says, and an honestly unlabeled image (``"labeled": false``)
is refined as inspect reads it: an image without labels."""

from __future__ import annotations

import json

import pytest

from deploy import RefineConfig, run
from deploy.stages import label_problem as job_label_problem
from refinery import sim
from refinery.inspection import inspect
from refinery.samples import (
    MALFORMED,
    MISSING,
    UNDECODABLE,
    SampleError,
    decode_sample,
    encode_json,
    encode_sample,
    label_problem,
)
from refinery.shards import shard_samples, write_shards
from tests.test_output_store import gaze_engine

UNLABELED = [
    ("empty", b"{}", MALFORMED),
    ("domain-only", encode_json({"domain": "gaze"}), MALFORMED),
    (
        "says-unlabeled",
        encode_json({"domain": "gaze", "labeled": False, "source": "a.jpg"}),
        MISSING,
    ),
]
OTHER_BAD = [
    ("not-json", b"pitch=0.1", UNDECODABLE),
    ("a-list", b"[1, 2]", MALFORMED),
    ("nan-gaze", b'{"gaze": {"pitch": NaN, "yaw": 0}, "look_vec": [0, 0, -1]}', MALFORMED),
    ("foreign", encode_json({"domain": "hand"}), MALFORMED),
    ("not-a-bool", encode_json({"labeled": "no"}), MALFORMED),
]


def _sample(key: str, label: bytes) -> dict:
    good = encode_sample(next(iter(sim.generate("gaze", "synthetic", 1, seed=1))), "gaze")
    return {"__key__": key, "png": good["png"], "json": label}


@pytest.mark.parametrize(("key", "label", "reason"), UNLABELED + OTHER_BAD)
def test_a_labeled_set_refuses_a_sample_without_labels_with_a_reason(key, label, reason):
    error = label_problem(_sample(key, label), "gaze")
    assert isinstance(error, SampleError)
    assert (error.reason, error.key, error.component) == (reason, key, "json")
    assert error.detail


@pytest.mark.parametrize(("key", "label", "reason"), UNLABELED[:2] + OTHER_BAD)
def test_the_raw_check_says_what_decoding_says(key, label, reason):
    """``inspect`` decodes (``decode_sample``); the job checks raw bytes: the same verdict."""
    sample = _sample(key, label)
    with pytest.raises(SampleError) as decoded:
        decode_sample(sample, "gaze")
    raw = label_problem(sample, "gaze", labeled=False)
    assert (raw.reason, raw.detail, raw.component) == (
        decoded.value.reason,
        decoded.value.detail,
        decoded.value.component,
    )


def test_good_labels_and_a_real_pool_pass():
    sample = _sample(
        "ok", encode_sample(next(sim.generate("gaze", "synthetic", 1)), "gaze")["json"]
    )
    assert label_problem(sample, "gaze") is None and job_label_problem(sample, "gaze") is None
    real = _sample("real", UNLABELED[2][1])
    assert label_problem(real, "gaze", labeled=False) is None  # a real pool is unlabeled
    decode_sample(real, "gaze")  # and reads as such


def test_the_refine_job_rejects_label_less_samples_as_inspect_does(tmp_path):
    """The job rejects what inspect rejects, and refines what inspect reads as unlabeled."""
    good = [encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 4, seed=2)]
    bad = [_sample(key, label) for key, label, _ in UNLABELED]
    (url,) = write_shards([*bad, *good], str(tmp_path / "in" / "g-%06d.tar"), shard_size=10)
    out = tmp_path / "out"
    summary = run(RefineConfig(engine=str(gaze_engine(tmp_path / "e")), output=str(out)), [url])
    (stats,) = summary.shards
    assert (stats.read, stats.written, stats.rejected) == (7, 5, 2)
    assert stats.reasons == {MALFORMED: 2}
    by_key = {r["key"]: r for r in stats.rejects}
    assert set(by_key) == {"empty", "domain-only"}
    written = json.loads((out / "g-000000.tar.stats.json").read_text())
    assert written["rejected"] == 2
    refined = {s["__key__"]: s for s in shard_samples(str(out / "g-000000.tar"))}
    assert refined["says-unlabeled"]["json"] == UNLABELED[2][1]  # passed through as it came
    # inspect on the input rejects the two label-less samples with the same words
    seen = inspect([url], domain="gaze", labels=0)
    inspected = {r["key"]: (r["reason"], r["detail"]) for r in seen.rejects.records}
    for key in ("empty", "domain-only"):
        assert inspected[key] == (by_key[key]["reason"], by_key[key]["detail"])
    # the honest unlabeled one reads as such (a real pool), and inspect says so
    assert "says-unlabeled" not in inspected and seen.samples == 5
    assert '1 of them unlabeled (no json, or "labeled": false)' in "\n".join(seen.lines())


def test_a_sample_without_json_is_missing_it_in_the_same_words():
    sample = _sample("bare", b"{}")
    del sample["json"]
    with pytest.raises(SampleError) as decoded:
        decode_sample(sample, "gaze")
    raw = label_problem(sample, "gaze")
    assert (raw.reason, raw.detail, raw.component) == (MISSING, decoded.value.detail, "json")


EDGE_LABELS = [
    b'{"gaze": {"pitch": 0.1, "yaw": 0}, "look_vec": [0, 0, -1]}',
    b'{"gaze": {"pitch": 1e999, "yaw": 0}, "look_vec": [0, 0, -1]}',  # inf to json
    b'{"gaze": {"pitch": Infinity, "yaw": 0}, "look_vec": [0, 0, -1]}',
    b'{"gaze": {"pitch": 123456789012345678901234567890, "yaw": 0}, "look_vec": [0, 0, -1]}',
    b'{"gaze": {"pitch": 0.1, "yaw": 0}, "look_vec": [0, 0, -1], "x": "\\ud800"}',
    b'\xef\xbb\xbf{"gaze": {"pitch": 0.1, "yaw": 0}, "look_vec": [0, 0, -1]}',  # a BOM
    b'{"gaze": {"pitch": 0.1, "yaw": 0}, "gaze": 3, "look_vec": [0, 0, -1]}',  # twice: last
    '{"gaze": {"pitch": 0.1, "yaw": 0}, "look_vec": [0, 0, -1]}'.encode("utf-16"),
    b'{"gaze": {"pitch": true, "yaw": 0}, "look_vec": [0, 0, -1]}',
    b'"a string"',
    b"",
    b"\xff\xfe",
]


@pytest.mark.parametrize("label", EDGE_LABELS)
def test_the_quick_parser_changes_no_verdict(label, monkeypatch):
    """orjson parses the job's labels (``_quick_label``); on edge bytes (NaN, inf, big ints,
    lone surrogates, a BOM, UTF-16, duplicate keys) its verdict is the ``json`` path's."""
    from refinery import samples

    sample = _sample("edge", label)
    quick = label_problem(sample, "gaze", labeled=False)
    monkeypatch.setattr(samples, "_quick_label", lambda data: None)
    slow = label_problem(sample, "gaze", labeled=False)
    assert (quick is None) == (slow is None)
    if quick is not None:
        assert (quick.reason, quick.detail, quick.component) == (
            slow.reason,
            slow.detail,
            slow.component,
        )
