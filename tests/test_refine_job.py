"""The refine job (contract 3): conservation, exactly once, byte-identical labels, refusals,
outputs readable by webdataset and DALI, rank partitioning, destinations, in-process streams."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

import engines
from deploy import RefineConfig, RejectRateExceeded, run, stream
from engines.export import export_module
from engines.spec import PixelIO, Profile, Shape
from refinery import sim
from refinery.cli import main
from refinery.registry import build_network
from refinery.samples import encode_sample
from refinery.shards import Rejects, ShardWriter, read, shard_samples, write_shards

ROOT = Path(__file__).resolve().parents[1]


def _engine(
    out: Path,
    *,
    domain: str,
    channels: int,
    kind: str,
    component: str,
    profile,
    high=255.0,
    seed: int = 0,
):
    """The small refiner with random weights (of ``seed``), exported as an engine for
    ``domain``."""
    torch.manual_seed(seed)
    export_module(
        build_network("simgan-refiner-small", channels=channels),
        out,
        network="simgan-refiner-small",
        kwargs={"channels": channels},
        method="test",
        domain=domain,
        pixels=PixelIO(component, kind, channels, low=0.0, high=high),
        profile=profile,
        source={"run": None, "checkpoint": None, "recipe": {"test": True}},
    )
    return out


@pytest.fixture(scope="module")
def gaze(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    engine = _engine(
        root / "engine",
        domain="gaze",
        channels=1,
        kind="gray8",
        component="png",
        profile=Profile(Shape(1, 16, 16), Shape(8, 35, 55), Shape(64, 70, 110)),
    )
    samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 60, seed=3))
    urls = write_shards(samples, str(root / "in" / "gaze-%06d.tar"), shard_size=20)
    return root, engine, urls


@pytest.fixture(scope="module")
def scene_engine(tmp_path_factory):
    return _engine(
        tmp_path_factory.mktemp("scene") / "engine",
        domain="scene",
        channels=3,
        kind="rgb8",
        component="png",
        profile=Profile(Shape(1, 16, 16), Shape(4, 32, 64), Shape(16, 64, 128)),
    )


def _members(url) -> list[tuple[str, bytes]]:
    with tarfile.open(url) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def _stats(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.stats.json").read_text())


# -- the happy path ---------------------------------------------------------------------------


def test_outputs_map_one_to_one_with_labels_byte_identical(gaze, tmp_path):
    _, engine, urls = gaze
    out = tmp_path / "out"
    summary = run(RefineConfig(engine=str(engine), output=str(out), batch=8), urls)
    assert summary.read == summary.written == 60 and summary.rejected == 0
    assert sorted(p.name for p in out.glob("*.tar")) == [Path(u).name for u in urls]
    for url in urls:
        source, refined = _members(url), _members(out / Path(url).name)
        # keys and their order kept; every component but the image byte-identical
        src_keys = [n.split(".", 1)[0] for n, _ in source]
        out_keys = [n.split(".", 1)[0] for n, _ in refined]
        assert list(dict.fromkeys(src_keys)) == list(dict.fromkeys(out_keys))
        dst = dict(refined)
        for name, data in source:
            if name.endswith(".json"):
                assert dst[name] == data
            else:
                assert name in dst and dst[name] != data  # the image was refined
        provenance = [json.loads(d) for n, d in refined if n.endswith(".refinery.json")]
        assert len(provenance) == 20
        spec = engines.read_spec(engine)
        assert provenance[0]["engine_hash"] == spec.engine_hash
        assert provenance[0]["source_shard"] == Path(url).name
        stats = _stats(out, Path(url).name)
        assert stats["read"] == stats["written"] == 20 and stats["engine"] == spec.engine_id
        assert stats["decoder"] == "opencv"  # auto: DALI only for JPEG on a GPU
    # the refined pixels are the engine's, and decode under the gaze contract
    first = next(read(str(out / Path(urls[0]).name), "gaze"))
    original = next(read(urls[0], "gaze"))
    expected = engines.load(engine).refine(original["png"][None]).pixels[0]
    assert np.array_equal(first["png"], expected)


def test_dali_and_opencv_decoders_give_identical_shards(gaze, tmp_path):
    _, engine, urls = gaze
    config = RefineConfig(engine=str(engine), output=str(tmp_path / "a"), batch=8, decoder="dali")
    (stats,) = run(config, urls[:1]).shards
    assert stats.decoder == "dali"
    config = RefineConfig(engine=str(engine), output=str(tmp_path / "b"), decoder="opencv")
    run(config, urls[:1])
    name = Path(urls[0]).name
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_output_is_readable_by_webdataset_and_by_dali(gaze, tmp_path):
    _, engine, urls = gaze
    out = tmp_path / "out"
    run(RefineConfig(engine=str(engine), output=str(out), keep_original=True), urls[:1])
    url = str(out / Path(urls[0]).name)
    samples = list(wds.WebDataset(url, shardshuffle=False).decode("l"))
    assert len(samples) == 20 and samples[0]["png"].shape == (35, 55)
    assert {"png", "orig.png", "json", "refinery.json"} <= set(samples[0])
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=20, num_threads=1, device_id=None)
    def pipe():
        image, label = fn.readers.webdataset(
            paths=[url], ext=["png", "json"], missing_component_behavior="error"
        )
        return fn.decoders.image(image, device="cpu", output_type=types.GRAY), label

    p = pipe()
    p.build()
    images, labels = p.run()
    assert len(images) == 20 and np.array(images.at(0)).shape == (35, 55, 1)
    assert json.loads(bytes(np.array(labels.at(0)))) == samples[0]["json"]


# -- conservation -----------------------------------------------------------------------------


def _scene_shards(root: Path) -> list[str]:
    """Scene shards with a corrupt PNG, a corrupt JPEG, a missing image, an empty shard and a
    truncated tar."""
    made = [encode_sample(s, "scene") for s in sim.generate("scene", "synthetic", 12, seed=4,
                                                            height=32, width=64)]  # fmt: skip
    jpeg = dict(made[5])
    jpeg["jpg"] = jpeg.pop("png")[:0] + b"\xff\xd8\xff\xe0 not really a jpeg"
    jpeg = {k: jpeg[k] for k in ("__key__", "jpg", "seg.png", "depth.png", "json")}
    made[2]["png"] = made[2]["png"][:40] + b"\0" * 10  # corrupt PNG (header kept)
    made[5] = jpeg
    del made[8]["png"]  # no image component at all
    root.mkdir(parents=True)
    with ShardWriter(str(root / "a.tar")) as w:
        for sample in made[:6]:
            w.write(sample)
    with ShardWriter(str(root / "b.tar")) as w:
        for sample in made[6:]:
            w.write(sample)
    with ShardWriter(str(root / "empty.tar")):
        pass
    good = (root / "b.tar").read_bytes()
    (root / "cut.tar").write_bytes(good[: len(good) // 2 + 100])
    return [str(root / n) for n in ("a.tar", "b.tar", "empty.tar", "cut.tar")]


@pytest.mark.parametrize("decoder", ["dali", "opencv"])
def test_conservation_with_corrupt_missing_empty_and_truncated_input(
    scene_engine, tmp_path, decoder
):
    urls = _scene_shards(tmp_path / "in")
    out = tmp_path / "out"
    config = RefineConfig(engine=str(scene_engine), output=str(out), batch=4, decoder=decoder)
    summary = run(config, urls)
    by_name = {s.shard: s for s in summary.shards}
    for stats in summary.shards:
        assert stats.read == stats.written + stats.rejected
        written = len(list(shard_samples(str(out / stats.shard))))
        assert written == stats.written
    a, b = by_name["a.tar"], by_name["b.tar"]
    assert a.read == 6 and a.rejected == 2
    assert {(r["key"], r["reason"]) for r in a.rejects} == {
        ("scene-syn-s4-00000002", "undecodable"),
        ("scene-syn-s4-00000005", "undecodable"),
    }
    # the two corrupt images fail the integrity check: DALI never sees them, OpenCV rejects them
    assert a.decoder == ("dali+opencv" if decoder == "dali" else "opencv")
    assert b.decoder == decoder
    assert [(r["key"], r["reason"], r["component"]) for r in b.rejects] == [
        ("scene-syn-s4-00000008", "missing-component", "jpg")
    ]
    assert by_name["empty.tar"].read == 0 and (out / "empty.tar").exists()
    assert by_name["empty.tar"].decoder == "none"
    cut = by_name["cut.tar"]
    assert cut.reasons["truncated-tar"] == 1 and cut.decoder == decoder
    # every reject is listed in the stats file with shard, key, component and reason
    assert _stats(out, "a.tar")["rejects"] == a.rejects
    assert all(r["url"].endswith("a.tar") for r in a.rejects)
    # the corrupt JPEG's sample kept nothing; good samples of the same shard were written
    kept = [s["__key__"] for s in shard_samples(str(out / "a.tar"))]
    assert kept == [f"scene-syn-s4-{i:08d}" for i in (0, 1, 3, 4)]


def _png_with_bad_pixels(png: bytes) -> bytes:
    """Valid chunk CRCs around an IDAT that is not a zlib stream: passes the integrity check,
    fails every decoder."""
    at, out = 8, [png[:8]]
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, body = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        if kind == b"IDAT":
            body = b"\x78\x9c" + bytes(range(7, 7 + min(len(body), 200)))
        out.append(struct.pack(">I", len(body)) + kind + body)
        out.append(struct.pack(">I", zlib.crc32(kind + body)))
        at += 12 + length
    return b"".join(out)


def test_dali_failing_mid_shard_hands_over_to_opencv(gaze, tmp_path):
    _, engine, urls = gaze
    samples = list(shard_samples(urls[0]))
    samples[7]["png"] = _png_with_bad_pixels(samples[7]["png"])
    with ShardWriter(str(tmp_path / "in.tar")) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k != "__url__"})
    summary = run(
        RefineConfig(engine=str(engine), output=str(tmp_path / "o"), batch=4, decoder="dali"),
        [str(tmp_path / "in.tar")],
    )
    (stats,) = summary.shards
    assert stats.decoder == "dali+opencv" and stats.written == 19
    assert [(r["key"], r["reason"]) for r in stats.rejects] == [
        (samples[7]["__key__"], "undecodable")
    ]
    # the same shard through OpenCV alone gives the same output bytes
    run(
        RefineConfig(engine=str(engine), output=str(tmp_path / "c"), decoder="opencv"),
        [str(tmp_path / "in.tar")],
    )
    assert (tmp_path / "o" / "in.tar").read_bytes() == (tmp_path / "c" / "in.tar").read_bytes()


def test_max_reject_rate_fails_the_job(scene_engine, tmp_path):
    urls = _scene_shards(tmp_path / "in")
    config = RefineConfig(engine=str(scene_engine), output=str(tmp_path / "o"), max_reject_rate=0.1)
    with pytest.raises(RejectRateExceeded, match=r"more than --max-reject-rate 10\.0%"):
        run(config, urls)


def test_non_finite_engine_output_is_rejected_never_written(tmp_path, gaze):
    _, _, urls = gaze
    module = build_network("simgan-refiner-small", channels=1)
    with torch.no_grad():
        module.head.bias.fill_(float("nan"))
    export_module(
        module,
        tmp_path / "nan",
        network="simgan-refiner-small",
        kwargs={"channels": 1},
        method="test",
        domain="gaze",
        pixels=PixelIO("png", "gray8", 1, low=0.0, high=255.0),
        profile=Profile.around(35, 55),
        source={},
        tolerance=float("inf"),
    )
    summary = run(RefineConfig(engine=str(tmp_path / "nan"), output=str(tmp_path / "o")), urls[:1])
    (stats,) = summary.shards
    assert stats.written == 0 and stats.reasons == {"non-finite-output": 20}


# -- refusals ---------------------------------------------------------------------------------


def test_a_mismatched_engine_is_refused_before_any_output(gaze, scene_engine, tmp_path):
    _, engine, urls = gaze
    with pytest.raises(engines.EngineMismatch, match=r"domain 'gaze', the engine refines 'scene'"):
        run(RefineConfig(engine=str(scene_engine), output=str(tmp_path / "o")), urls)
    assert not (tmp_path / "o").exists()
    scene = _scene_shards(tmp_path / "in")
    with pytest.raises(engines.EngineMismatch, match=r"domain 'scene', the engine refines 'gaze'"):
        run(RefineConfig(engine=str(engine), output=str(tmp_path / "o")), scene[:1])
    small = tmp_path / "small"
    _engine(
        small,
        domain="gaze",
        channels=1,
        kind="gray8",
        component="png",
        profile=Profile(Shape(1, 8, 8), Shape(2, 16, 16), Shape(4, 32, 32)),
    )
    with pytest.raises(engines.EngineMismatch, match="height 35 is outside"):
        run(RefineConfig(engine=str(small), output=str(tmp_path / "o")), urls)
    assert not (tmp_path / "o").exists()


def test_inputs_sharing_a_file_name_are_refused(gaze, tmp_path):
    _, engine, urls = gaze
    twin = tmp_path / "elsewhere" / Path(urls[0]).name
    twin.parent.mkdir()
    twin.write_bytes(Path(urls[0]).read_bytes())
    with pytest.raises(ValueError, match="share file names"):
        run(RefineConfig(engine=str(engine), output=str(tmp_path / "o")), [urls[0], str(twin)])


# -- exactly once -------------------------------------------------------------------------------


def test_rerun_skips_finished_shards_and_redoes_unfinished_ones(gaze, tmp_path):
    _, engine, urls = gaze
    out = tmp_path / "out"
    config = RefineConfig(engine=str(engine), output=str(out))
    run(config, urls)
    first = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    (out / f"{Path(urls[1]).name}.stats.json").unlink()  # as if killed before the stats file
    summary = run(config, urls)
    assert [s.skipped for s in summary.shards] == [True, False, True]
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == first


@pytest.mark.parametrize(
    "stop", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["kill-9", "ctrl-c", "sigterm"]
)
def test_killed_or_stopped_mid_shard_then_rerun_yields_every_key_exactly_once(tmp_path, stop):
    root = tmp_path
    engine = _engine(
        root / "engine",
        domain="gaze",
        channels=1,
        kind="gray8",
        component="png",
        profile=Profile(Shape(1, 16, 16), Shape(8, 35, 55), Shape(64, 70, 110)),
    )
    samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", "synthetic", 240, seed=9))
    urls = write_shards(samples, str(root / "in" / "g-%03d.tar"), shard_size=40)
    out = root / "out"
    command = [
        sys.executable, "-m", "refinery", "refine", "--engine", str(engine), "--input", *urls,
        "--output", str(out), "--batch", "4",
    ]  # fmt: skip
    if stop == signal.SIGKILL:  # DALI too: a killed run must leave nothing in the temp dir
        command += ["--decoder", "dali"]
    private_tmp = root / "tmp"
    private_tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(private_tmp)}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.stats.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)  # into the next shard
    job.send_signal(stop)
    code = job.wait(timeout=60)
    finished = len(list(out.glob("*.stats.json")))
    assert 1 <= finished < len(urls), "the kill must land mid-job for this test to mean anything"
    if stop != signal.SIGKILL:  # stopped at a batch: the shard being written is dropped
        assert code == 128 + stop and not list(out.glob(".*tmp*"))
        assert len(list(out.glob("*.tar"))) == finished
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    keys = [s["__key__"] for s in shard_samples(sorted(str(p) for p in out.glob("*.tar")))]
    assert len(keys) == len(set(keys)) == 240
    assert not list(out.glob(".*tmp*")), "temp files of the killed run are cleaned up"
    left = {p.name for p in private_tmp.iterdir()} - {".ses"}  # ONNX Runtime's, on import
    assert not left, f"files left in the temporary directory: {sorted(left)}"


# -- destinations, ranks, streams -----------------------------------------------------------


def test_fsspec_and_pipe_destinations(gaze, tmp_path):
    _, engine, urls = gaze
    import fsspec

    run(RefineConfig(engine=str(engine), output="memory://refined"), urls[:1])
    fs = fsspec.filesystem("memory")
    name = Path(urls[0]).name
    assert fs.exists(f"/refined/{name}") and fs.exists(f"/refined/{name}.stats.json")
    assert len(list(shard_samples(f"memory://refined/{name}"))) == 20
    piped = tmp_path / "piped"
    piped.mkdir()
    config = RefineConfig(
        engine=str(engine), output=f"pipe:cat > {piped}/{{name}}", stats=str(tmp_path / "stats")
    )
    run(config, urls[:1])
    assert fs.cat(f"/refined/{name}") == (piped / name).read_bytes()
    assert (tmp_path / "stats" / f"{name}.stats.json").exists()
    with pytest.raises(ValueError, match="needs --stats"):
        RefineConfig(engine=str(engine), output="pipe:cat > {name}")


def test_two_ranks_cover_all_shards_without_overlap(gaze, tmp_path, capsys):
    _, engine, urls = gaze
    out = tmp_path / "out"
    for rank in (0, 1):
        args = ["refine", "--engine", str(engine), "--input", *urls, "--output", str(out)]
        assert main([*args, "--rank", str(rank), "--world-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "2 of 3 shards on rank 0 of 2 (flags)" in err and "1 of 3 shards on rank 1" in err
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(Path(u).name for u in urls)
    keys = [s["__key__"] for s in shard_samples(sorted(str(p) for p in out.glob("*.tar")))]
    assert len(keys) == len(set(keys)) == 60
    # more workers than shards: a rank with none has nothing to do, and succeeds
    assert main([*args, "--rank", "3", "--world-size", "4"]) == 0
    assert "0 of 3 shards on rank 3 of 4" in capsys.readouterr().err


def test_stream_feeds_a_dataloader_with_refined_samples(gaze):
    _, engine, urls = gaze
    expected = {}
    for url in urls:
        for sample in read(url, "gaze"):
            expected[sample["__key__"]] = sample
    loaded = engines.load(engine)
    dataset = stream(str(engine), urls, batch=8)
    seen = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
        seen = {s["__key__"]: s for s in loader}
        assert sorted(seen) == sorted(expected)
    key = next(iter(expected))
    assert seen[key]["json"] == expected[key]["json"]
    assert np.array_equal(seen[key]["png"], loaded.refine(expected[key]["png"][None]).pixels[0])
    rejects = Rejects()
    scene_like = stream(str(engine), urls[:1], handler=rejects, decode=False)
    assert all(isinstance(s["png"], bytes) for s in scene_like) and rejects.total == 0


def test_stream_starts_workers_with_spawn_for_a_cuda_engine(gaze):
    _, engine, urls = gaze
    assert stream(str(engine), urls).start_method(2) is None  # CPU engine: the default
    for options in ({"device": "cuda"}, {"device": "cuda:1"}, {"backend": "tensorrt"}):
        dataset = stream(str(engine), urls, **options)
        assert dataset.start_method(0) is None and dataset.start_method(2) == "spawn"
        loader = dataset.loader(num_workers=2)  # no engine is loaded here, no CUDA touched
        assert loader.multiprocessing_context.get_start_method() == "spawn"


def test_spawned_workers_stream_the_same_samples(gaze):
    _, engine, urls = gaze
    dataset = stream(str(engine), urls, batch=8)
    inline = {s["__key__"]: s for s in dataset.loader()}
    spawned = dataset.loader(num_workers=2, multiprocessing_context="spawn")
    seen = {s["__key__"]: s for s in spawned}
    assert sorted(seen) == sorted(inline) and len(seen) == 60
    direct = {s["__key__"]: s["png"] for s in dataset}
    for key, sample in seen.items():
        # the DataLoader turns arrays into tensors (its default_convert), iterating does not:
        # the README says so, and the first GPU run failed on it in the test below
        assert isinstance(sample["png"], torch.Tensor) and sample["png"].dtype == torch.uint8
        assert isinstance(direct[key], np.ndarray)
        assert np.array_equal(sample["png"].numpy(), inline[key]["png"].numpy())
        assert np.array_equal(sample["png"].numpy(), direct[key])
        assert sample["json"] == inline[key]["json"]


def test_a_forked_worker_says_to_spawn_instead_of_failing_in_cuda(gaze, monkeypatch):
    _, engine, urls = gaze
    worker = types.SimpleNamespace(id=0, num_workers=2)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: worker)
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    with pytest.raises(RuntimeError, match="forked from a process that had already initialised"):
        next(iter(stream(str(engine), urls, device="cuda")))
    # a CPU engine in the same worker is fine
    assert next(iter(stream(str(engine), urls)))["png"].shape == (35, 55)


@pytest.mark.gpu
def test_stream_runs_a_cuda_engine_in_spawned_workers(gaze):
    _, engine, urls = gaze
    torch.cuda.init()  # the parent has CUDA: a fork would break, spawn must not
    reference = stream(str(engine), urls, backend="torch", device="cpu")
    cpu = {s["__key__"]: s["png"] for s in reference}
    dataset = stream(str(engine), urls, backend="torch", device="cuda")
    seen = {s["__key__"]: s["png"] for s in dataset.loader(num_workers=2)}
    assert sorted(seen) == sorted(cpu)
    for key, png in seen.items():  # a tensor from the DataLoader, an array from iterating
        assert np.abs(png.numpy().astype(int) - cpu[key].astype(int)).max() <= 1


@pytest.mark.gpu
def test_the_job_on_cuda_without_dali_matches_the_cpu_job(gaze, tmp_path):
    _, engine, urls = gaze
    cpu = RefineConfig(
        engine=str(engine), output=str(tmp_path / "cpu"), backend="torch", device="cpu"
    )
    run(cpu, urls)
    config = RefineConfig(
        engine=str(engine), output=str(tmp_path / "gpu"), backend="torch", device="cuda"
    )
    summary = run(config, urls)
    assert summary.written == 60 and {s.decoder for s in summary.shards} == {"opencv"}
    a = list(read(str(tmp_path / "cpu"), "gaze"))
    b = list(read(str(tmp_path / "gpu"), "gaze"))
    for x, y in zip(a, b, strict=True):
        assert x["json"] == y["json"]
        assert np.abs(x["png"].astype(int) - y["png"].astype(int)).max() <= 1


def test_cli_refine_summary_and_exit_status(gaze, tmp_path, capsys):
    _, engine, urls = gaze
    args = ["refine", "--engine", str(engine), "--input", urls[0], "--output", str(tmp_path / "o")]
    assert main(args) == 0
    assert "read 20 = written 20 + rejected 0" in capsys.readouterr().out
    assert main([*args[:-2], "--output", str(tmp_path / "p"), "--backend", "tensorrt"]) == 1
    assert "no TensorRT plan" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*args, "--max-reject-rate", "2"])
    assert exc.value.code == 2


def test_sixteen_bit_depth_is_refined_losslessly_through_dali(tmp_path):
    engine = _engine(
        tmp_path / "engine",
        domain="hand",
        channels=1,
        kind="depth16",
        component="depth.png",
        profile=Profile(Shape(1, 16, 16), Shape(4, 48, 48), Shape(16, 96, 96)),
        high=2000.0,
    )
    made = (
        encode_sample(s, "hand") for s in sim.generate("hand", "synthetic", 10, seed=2, size=48)
    )
    urls = write_shards(made, str(tmp_path / "in" / "hand-%03d.tar"), shard_size=10)
    out = tmp_path / "out"
    for decoder in ("dali", "opencv"):
        config = RefineConfig(engine=str(engine), output=str(out / decoder), decoder=decoder)
        (stats,) = run(config, urls).shards
        assert stats.decoder == decoder and stats.written == 10
    name = Path(urls[0]).name
    assert (out / "dali" / name).read_bytes() == (out / "opencv" / name).read_bytes()
    refined = list(read(str(out / "dali" / name), "hand"))
    source = list(read(urls, "hand"))
    expected = engines.load(engine).refine(np.stack([s["depth.png"] for s in source])).pixels
    for got, want, original in zip(refined, expected, source, strict=True):
        assert got["depth.png"].dtype == np.uint16 and np.array_equal(got["depth.png"], want)
        assert got["json"] == original["json"]
    assert expected.max() > 255  # really 16-bit values, not an 8-bit round trip


@pytest.mark.gpu("dali-gpu")
def test_mixed_dali_decoding_and_torch_on_cuda_match_the_cpu_job(gaze, tmp_path):
    _, engine, urls = gaze
    cpu = RefineConfig(engine=str(engine), output=str(tmp_path / "cpu"), backend="torch")
    gpu = RefineConfig(
        engine=str(engine),
        output=str(tmp_path / "gpu"),
        backend="torch",
        device="cuda",
        decoder="dali",
    )
    run(cpu, urls[:1])
    (stats,) = run(gpu, urls[:1]).shards
    assert stats.decoder == "dali" and stats.written == 20
    a = list(read(str(tmp_path / "cpu"), "gaze"))
    b = list(read(str(tmp_path / "gpu"), "gaze"))
    for x, y in zip(a, b, strict=True):  # cuDNN vs CPU kernels: at most one grey level apart
        assert np.abs(x["png"].astype(int) - y["png"].astype(int)).max() <= 1
