"""The refine job's stages: prefetch threads, ordered pools, shard-aligned batches, DALI fed
from the tar reader, and a job whose bytes do not depend on how many workers ran it."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from deploy import RefineConfig, run
from deploy.dali import DaliDecoder
from deploy.stages import (
    Batch,
    Item,
    decode_item,
    image_intact,
    in_pool,
    machine_threads,
    prefetch,
    prepare,
    read_batches,
    refine_batches,
)
from engines.base import Engine
from engines.spec import EngineSpec, PixelIO, Profile, Shape
from refinery import sim
from refinery.samples import encode_sample
from refinery.shards import ShardWriter, shard_samples, write_shards
from tests.test_refine_job import _engine, _png_with_bad_pixels

# -- prefetch ---------------------------------------------------------------------------------


def test_prefetch_yields_everything_in_order_from_another_thread():
    seen_in = []

    def source():
        for i in range(50):
            seen_in.append(threading.current_thread().name)
            yield i

    assert list(prefetch(source(), 3, name="reader")) == list(range(50))
    assert set(seen_in) == {"reader"}


def test_prefetch_runs_ahead_by_at_most_depth():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    stream = prefetch(source(), 2)
    assert next(stream) == 0
    time.sleep(0.2)
    # one handed out, two queued, one waiting to be queued
    assert len(produced) <= 1 + 2 + 1
    stream.close()


def test_prefetch_raises_the_producers_error_in_the_consumer():
    def source():
        yield 1
        raise KeyError("bad shard")

    stream = prefetch(source(), 2)
    assert next(stream) == 1
    with pytest.raises(KeyError, match="bad shard"):
        next(stream)


def test_a_consumer_that_stops_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    before = threading.active_count()
    stream = prefetch(source(), 2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed.wait(2)
    assert threading.active_count() == before


def test_stopping_a_chain_stops_every_stage():
    closed = []

    def source(name):
        try:
            yield from range(1000)
        finally:
            closed.append(name)

    def double(values):
        try:
            for v in values:
                yield 2 * v
        finally:
            closed.append("double")

    chain = prefetch(double(prefetch(source("source"), 2)), 2)
    assert next(chain) == 0
    chain.close()
    assert sorted(closed) == ["double", "source"]


# -- pools ------------------------------------------------------------------------------------


def _batches(n_batches: int, size: int) -> list[Batch]:
    return [
        Batch("u", [Item({"__key__": f"{b}-{i}"}) for i in range(size)]) for b in range(n_batches)
    ]


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_in_pool_keeps_batch_and_item_order_whatever_the_workers(workers):
    def work(item):
        time.sleep(np.random.default_rng(hash(item.key) % 2**32).uniform(0, 0.002))
        item.decoder = f"done:{item.key}"

    with ThreadPoolExecutor(workers) as pool:
        out = list(in_pool(_batches(6, 7), work, pool, workers=workers, ahead=2))
    keys = [it.key for b in out for it in b.items]
    assert keys == [f"{b}-{i}" for b in range(6) for i in range(7)]
    assert all(it.decoder == f"done:{it.key}" for b in out for it in b.items)


def test_in_pool_skips_unselected_items_and_raises_unexpected_errors():
    def work(item):
        if item.key == "2-3":
            raise RuntimeError("disk on fire")
        item.decoder = "x"

    with ThreadPoolExecutor(2) as pool:
        done = in_pool(_batches(2, 5), work, pool, workers=2, select=lambda it: it.key < "1")
        assert [it.decoder for b in done for it in b.items] == ["x"] * 5 + [""] * 5
        with pytest.raises(RuntimeError, match="disk on fire"):
            list(in_pool(_batches(4, 5), work, pool, workers=2))


def test_in_pool_keeps_at_most_ahead_batches_in_flight():
    pulled = []

    def source():
        for batch in _batches(20, 2):
            pulled.append(batch)
            yield batch

    with ThreadPoolExecutor(2) as pool:
        stream = in_pool(source(), lambda item: None, pool, workers=2, ahead=3)
        next(stream)
        assert len(pulled) == 4  # the one handed out and three in flight
        stream.close()


def test_machine_threads_is_the_affinity_mask():
    assert machine_threads() == len(os.sched_getaffinity(0)) >= 1


# -- read, decode -----------------------------------------------------------------------------


def test_batches_never_span_shards_and_mark_first_and_last(tmp_path):
    made = (encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 10, seed=1))
    urls = write_shards(made, str(tmp_path / "g-%03d.tar"), shard_size=7)
    with ShardWriter(str(tmp_path / "z-empty.tar")):
        pass
    urls.append(str(tmp_path / "z-empty.tar"))
    batches = list(read_batches(urls, size=3, components=("png",), kind="gray8"))
    shape = [(Path(b.url).name, len(b.items), b.first, b.last) for b in batches]
    assert shape == [
        ("g-000.tar", 3, True, False),
        ("g-000.tar", 3, False, False),
        ("g-000.tar", 1, False, True),
        ("g-001.tar", 3, True, True),
        ("z-empty.tar", 0, True, True),
    ]
    keys = [it.key for b in batches for it in b.items]
    assert keys == [s["__key__"] for s in shard_samples(urls)]
    assert all(it.component == "png" and it.pending for b in batches for it in b.items)


def test_prepare_rejects_missing_ambiguous_and_wrong_depth_images():
    eye = encode_sample(next(iter(sim.generate("gaze", "synthetic", 1, seed=1))), "gaze")
    depth = encode_sample(next(iter(sim.generate("hand", "synthetic", 1, seed=1, size=32))), "hand")
    none = prepare(Item({"__key__": "a", "json": b"{}"}), ("png",), "gray8")
    assert none.error.reason == "missing-component"
    both = prepare(Item({"__key__": "b", "jpg": b"", "png": b""}), ("jpg", "png"), "rgb8")
    assert both.error.reason == "malformed" and "more than one" in both.error.detail
    eight = prepare(Item({"__key__": "c", "depth.png": eye["png"]}), ("depth.png",), "depth16")
    assert eight.error.reason == "malformed" and "8-bit" in eight.error.detail
    fine = prepare(
        Item({"__key__": "d", "depth.png": depth["depth.png"]}), ("depth.png",), "depth16"
    )
    assert fine.error is None and fine.component == "depth.png"


def test_opencv_decoding_turns_every_bad_image_into_a_reject():
    eye = encode_sample(next(iter(sim.generate("gaze", "synthetic", 1, seed=1))), "gaze")["png"]
    decode = decode_item("gray8")
    items = {
        "good": eye,
        "zero-bytes": b"",  # OpenCV asserts on an empty buffer instead of returning None
        "garbage": b"not an image at all",
        "cut": eye[: len(eye) // 2],
    }
    out = {}
    for key, data in items.items():
        item = Item({"__key__": key, "png": data}, component="png")
        decode(item)
        out[key] = item
    assert out["good"].error is None and out["good"].image.shape == (35, 55)
    for key in ("zero-bytes", "garbage", "cut"):
        assert out[key].error.reason == "undecodable" and out[key].image is None, key
        assert out[key].decoder == "opencv"


def test_integrity_check_catches_cut_and_corrupt_images():
    eye = encode_sample(next(iter(sim.generate("gaze", "synthetic", 1, seed=1))), "gaze")["png"]
    assert image_intact(eye)
    assert not image_intact(eye[:-1])
    flipped = bytearray(eye)
    flipped[60] ^= 0xFF
    assert not image_intact(bytes(flipped))
    assert image_intact(b"\xff\xd8 body \xff\xd9\0\0") and not image_intact(b"\xff\xd8 body")


@pytest.mark.parametrize(
    ("kind", "domain", "ext"), [("gray8", "gaze", "png"), ("rgb8", "scene", "jpg")]
)
def test_one_dali_pipeline_decodes_batch_after_batch_like_opencv(kind, domain, ext):
    """The job's DALI stage in CPU mode: the same code as on a GPU but the output copy."""
    pytest.importorskip("nvidia.dali")
    import cv2

    options = {"height": 32, "width": 64} if domain == "scene" else {}
    made = [
        encode_sample(s, domain) for s in sim.generate(domain, "synthetic", 9, seed=5, **options)
    ]
    items = []
    for sample in made:
        data = sample["png"]
        if ext == "jpg":
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            data = cv2.imencode(".jpg", image)[1].tobytes()
        items.append(Item({"__key__": sample["__key__"], ext: data}, component=ext))
    items[4].sample[ext] = items[4].sample[ext][:-20]  # cut: never given to DALI
    dali = DaliDecoder(kind, batch=4, threads=1, device_id=None, everything=ext == "png")
    batches = [Batch("u", items[i : i + 3]) for i in range(0, 9, 3)]
    out = list(dali(batches))
    assert [it for b in out for it in b.items] == items
    assert [it.decoder for it in items] == ["dali"] * 4 + [""] + ["dali"] * 4
    assert items[4].pending  # left for the OpenCV pool
    decode = decode_item(kind)
    for item in items:
        if item.decoder == "dali":
            reference = Item(dict(item.sample), component=ext)
            decode(reference)
            assert np.array_equal(item.image, reference.image)
    assert dali.rebuilds == 0


def test_a_dali_failure_leaves_its_batch_to_opencv_and_rebuilds_the_pipeline():
    pytest.importorskip("nvidia.dali")
    made = [encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 8, seed=6)]
    items = [Item({"__key__": s["__key__"], "png": s["png"]}, component="png") for s in made]
    items[1].sample["png"] = _png_with_bad_pixels(items[1].sample["png"])  # passes the check
    dali = DaliDecoder("gray8", batch=4, threads=1, device_id=None, everything=True)
    list(dali([Batch("u", items[:4]), Batch("u", items[4:])]))
    assert dali.rebuilds == 1
    assert all(it.pending for it in items[:4]), "the failed batch is left to OpenCV"
    assert all(it.decoder == "dali" for it in items[4:]), "the rebuilt pipeline goes on"


def test_dali_refuses_a_kind_it_cannot_decode():
    with pytest.raises(ValueError, match="cannot decode"):
        DaliDecoder("float32", batch=1, threads=1, device_id=None)


# -- the engine stage -----------------------------------------------------------------------------


class _Recording(Engine):
    """A pass-through engine that logs when a batch is queued and when it is collected."""

    backend = "recording"

    def __init__(self, spec):
        super().__init__(spec, ".")
        self.log = []

    def _run_tensor(self, x):
        return x

    def submit(self, pixels):
        pending, n = super().submit(pixels), sum(e[0] == "submit" for e in self.log)
        self.log.append(("submit", n))
        result = pending.result
        pending.result = lambda: (self.log.append(("collect", n)), result())[1]
        return pending


def test_the_engine_stage_queues_the_next_batch_before_collecting_the_last():
    spec = EngineSpec(
        name="x", method="test", domain="gaze", io=PixelIO("png", "gray8", 1, 0.0, 255.0),
        profile=Profile(Shape(1, 8, 8), Shape(4, 16, 16), Shape(8, 32, 32)), model={"sha256": ""},
        weights={}, source={}, refinery_version="0",
    )  # fmt: skip
    engine = _Recording(spec)
    rng = np.random.default_rng(0)
    batches = []
    for b in range(3):
        items = [Item({"__key__": f"{b}-{i}"}, image=rng.integers(0, 256, (16, 16), np.uint8))
                 for i in range(4)]  # fmt: skip
        items[1].image = rng.integers(0, 256, (64, 16), np.uint8)  # too tall: a reject
        batches.append(Batch("u", items))
    images = [[it.image for it in b.items] for b in batches]
    out = list(refine_batches(iter(batches), engine))
    assert out == batches
    assert engine.log == [
        ("submit", 0), ("submit", 1), ("collect", 0), ("submit", 2), ("collect", 1),
        ("collect", 2),
    ]  # fmt: skip
    for batch, originals in zip(out, images, strict=True):
        assert batch.items[1].error.reason == "size-outside-engine"
        for i in (0, 2, 3):
            assert np.array_equal(batch.items[i].refined, originals[i])
            assert batch.items[i].image is None  # the decoded frame is let go


# -- the composed job ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    _engine(
        root / "engine",
        domain="scene",
        channels=3,
        kind="rgb8",
        component="png",
        profile=Profile(Shape(1, 16, 16), Shape(4, 32, 64), Shape(16, 64, 128)),
    )
    made = (
        encode_sample(s, "scene")
        for s in sim.generate("scene", "synthetic", 30, seed=8, height=32, width=64)
    )
    urls = write_shards(made, str(root / "in" / "s-%03d.tar"), shard_size=7)
    return root, urls


def test_the_job_writes_the_same_bytes_whatever_the_workers_and_depth(scene_job, tmp_path):
    root, urls = scene_job
    outputs = []
    for workers, depth, batch in ((1, 1, 3), (4, 3, 3), (2, 2, 16)):
        out = tmp_path / f"w{workers}-d{depth}-b{batch}"
        config = RefineConfig(
            engine=str(root / "engine"),
            output=str(out),
            batch=batch,
            decode_workers=workers,
            encode_workers=workers,
            queue_depth=depth,
        )
        summary = run(config, urls)
        assert summary.read == summary.written == 30
        outputs.append({p.name: p.read_bytes() for p in out.glob("*.tar")})
    assert outputs[0] == outputs[1] == outputs[2] and len(outputs[0]) == 5


def test_an_engine_failure_mid_job_stops_every_stage_and_leaves_no_partial_shard(
    scene_job, tmp_path
):
    import engines

    root, urls = scene_job
    engine = engines.load(root / "engine")
    calls = []
    real = engine._run_tensor

    def failing(x):
        calls.append(len(x))
        if len(calls) == 4:
            raise RuntimeError("device lost")
        return real(x)

    engine._run_tensor = failing
    before = threading.active_count()
    out = tmp_path / "out"
    config = RefineConfig(engine=str(root / "engine"), output=str(out), batch=3)
    with pytest.raises(RuntimeError, match="device lost"):
        run(config, urls, engine=engine)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]
    # the engine failed on shard 1's first batch: shard 0 may have finished (its batches were
    # ahead of the error), nothing after it did, and nothing is half written
    finished = sorted(p.name for p in out.glob("*.stats.json"))
    assert finished in ([], ["s-000.tar.stats.json"])
    assert [f"{p.name}.stats.json" for p in sorted(out.glob("*.tar"))] == finished
    assert not list(out.glob(".*tmp*")), "the shard being written was aborted"


def test_config_refuses_bad_workers_and_decoders():
    with pytest.raises(ValueError, match="decode_workers"):
        RefineConfig(engine="e", output="o", decode_workers=0)
    with pytest.raises(ValueError, match="decoder must be one of auto, dali, opencv"):
        RefineConfig(engine="e", output="o", decoder="nvjpeg")
