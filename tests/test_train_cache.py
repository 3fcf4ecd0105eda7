"""The decoded cache (train/cache.py): built once, reused, rebuilt when stale or partial, read in
the order, positions and resume of decoding; fewer shards than ranks; unlabeled synthetic sets
refused before training; ``refinery cache``."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch

from refinery import cli, sim
from refinery.samples import SampleError, encode_sample, image_component
from refinery.shards import expand_urls, write_shards
from train import cache as caching
from train import sggan, simgan
from train.data import ImageStream, SceneStream
from train.loop import RunDir

EYES = 48


def _write(root, name, samples, domain, shard_size=16) -> str:
    write_shards((encode_sample(s, domain) for s in samples), str(root / f"{name}-%03d.tar"),
                 shard_size=shard_size)  # fmt: skip
    count = len(list(root.glob(f"{name}-*.tar")))
    return str(root / f"{name}-{{000..{count - 1:03d}}}.tar")


@pytest.fixture
def eyes(tmp_path):
    return _write(tmp_path, "synthetic", sim.generate("gaze", "synthetic", EYES, seed=11), "gaze")


def _bad_shard(path) -> str:
    """One undecodable sample and one good one, whose key sorts after it."""
    good = encode_sample(next(iter(sim.generate("gaze", "synthetic", 1, seed=5))), "gaze")
    with tarfile.open(path, "w") as tar:
        members = [("broken.png", b"not a png"), ("broken.json", b"{}")]
        members += [(f"good.{k}", v) for k, v in good.items() if not k.startswith("__")]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _keys(stream, n):
    return [[s["__key__"] for s in stream.next_batch()[1]] for _ in range(n)]


def test_the_cache_reads_the_batches_of_decoding_across_epochs_rejects_and_resume(eyes, tmp_path):
    urls = [*expand_urls(eyes), _bad_shard(tmp_path / "bad-000.tar")]
    seen = {True: [], False: []}

    def stream(cached, **extra):
        return ImageStream(urls, domain="gaze", batch_size=7, seed=5, shuffle_buffer=8,
                           handler=seen[cached].append, cache=cached, **extra)  # fmt: skip

    decoded, cached = stream(False), stream(True)
    assert decoded.cache is None and cached.cache is not None
    for _ in range(17):  # 119 draws: more than two epochs of 49 good + 1 rejected
        a, b = decoded.next_batch(), cached.next_batch()
        assert [s["__key__"] for s in a[1]] == [s["__key__"] for s in b[1]]
        assert torch.equal(a[0], b[0])
        assert a[1][0]["json"] == b[1][0]["json"]
        assert decoded.state_dict() == cached.state_dict()
    # the reject reaches the handler when the order reaches it, whole, once per epoch
    assert [str(e) for e in seen[True]] == [str(e) for e in seen[False]] and len(seen[True]) == 2
    assert seen[True][0].key == "broken" and seen[True][0].url == urls[-1]
    half = stream(True)
    _keys(half, 9)
    resumed = stream(True)
    resumed.load_state_dict(half.state_dict())
    assert _keys(resumed, 8) == _keys(half, 8)


def test_the_cache_is_built_once_then_reused_and_reports_size_and_time(eyes, tmp_path):
    built = caching.open_cache(eyes, domain="gaze")
    assert built.built and built.path.parent == tmp_path / ".refinery-cache"
    assert built.image.shape == (EYES, 35, 55) and built.image.dtype == np.uint8
    assert built.meta["bytes"] >= EYES * 35 * 55 and built.meta["build_seconds"] > 0
    assert "built" in built.summary() and "MiB on disk" in built.summary()
    stamp = (built.path / "meta.json").stat().st_mtime_ns
    again = caching.open_cache(eyes, domain="gaze")
    assert not again.built and again.path == built.path
    assert (again.path / "meta.json").stat().st_mtime_ns == stamp
    # the label mode and the domain are part of the key: a real pool's cache is another
    assert caching.open_cache(eyes, domain="gaze", labels=False).path != built.path


def test_a_rewritten_shard_or_a_cut_file_is_rebuilt_never_trusted(eyes, tmp_path):
    first = caching.open_cache(eyes, domain="gaze")
    (first.path / "image.bin").write_bytes(b"\0" * 10)  # cut short
    repaired = caching.open_cache(eyes, domain="gaze")
    assert repaired.built and repaired.path == first.path
    assert repaired.image.shape == (EYES, 35, 55)
    # a shard rewritten with other content: another key, another cache, other pixels
    shard = expand_urls(eyes)[0]
    other = list(sim.generate("gaze", "synthetic", 16, seed=99))
    os.remove(shard)
    write_shards((encode_sample(s, "gaze") for s in other), shard.replace("000", "%03d"),
                 shard_size=16)  # fmt: skip
    changed = caching.open_cache(eyes, domain="gaze")
    assert changed.built and changed.path != first.path
    assert not np.array_equal(changed.image[:16], repaired.image[:16])
    # a build killed half-way leaves only a temp folder, which is not a cache
    name = changed.path.name
    os.rename(changed.path, changed.path.parent / f".{name}.tmp")
    assert caching.open_cache(eyes, domain="gaze").built


def test_the_cache_folder_comes_from_the_environment_and_off_streams(eyes, tmp_path, monkeypatch):
    monkeypatch.setenv("REFINERY_CACHE", str(tmp_path / "elsewhere"))
    assert caching.open_cache(eyes, domain="gaze").path.parent == tmp_path / "elsewhere"
    monkeypatch.setenv("REFINERY_CACHE", "off")
    stream = ImageStream(eyes, domain="gaze", batch_size=4, seed=0, cache=True)
    assert stream.cache is None and stream.next_batch()[0].shape == (4, 1, 35, 55)


def test_large_images_are_streamed_not_cached(eyes, monkeypatch):
    monkeypatch.setattr(caching, "SMALL_IMAGE_BYTES", 100)
    with pytest.raises(caching.NotCacheable, match="not small"):
        caching.open_cache(eyes, domain="gaze")
    stream = ImageStream(eyes, domain="gaze", batch_size=4, seed=0, cache=True)
    assert stream.cache is None and stream.next_batch()[0].shape == (4, 1, 35, 55)


def test_scene_batches_from_the_cache_equal_decoded_ones(tmp_path):
    frames = list(sim.generate("scene", "real", 12, seed=42, height=64, width=128))
    name = image_component(frames[0], "scene")
    mixed = [f if i % 2 else {"__key__": f["__key__"], name: f[name]} for i, f in enumerate(frames)]
    pools = {
        True: _write(tmp_path, "synthetic",
                     sim.generate("scene", "synthetic", 12, seed=41, height=64, width=128),
                     "scene", shard_size=4),
        False: _write(tmp_path, "mixed", mixed, "scene", shard_size=4),
    }  # fmt: skip
    for labels, urls in pools.items():
        streams = [
            SceneStream(urls, batch_size=3, seed=5, ontology="sggan-8", shuffle_buffer=4,
                        fine_ontology="cityscapes-19", crop=(32, 48), labels=labels, cache=c)
            for c in (False, True)
        ]  # fmt: skip
        assert streams[1].images.cache is not None
        for i in range(6):
            batches = []
            for s in streams:
                torch.manual_seed(i)
                batches.append(s.next_batch())
            assert batches[0].keys() == batches[1].keys()
            for key in batches[0]:
                assert torch.equal(batches[0][key], batches[1][key]), key


@pytest.mark.gpu
def test_a_cached_batch_scaled_on_the_gpu_equals_the_cpu_batch(eyes):
    streams = [ImageStream(eyes, domain="gaze", batch_size=8, seed=1, cache=True) for _ in "ab"]
    on_gpu = streams[0].next_batch_on(torch.device("cuda"))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), streams[1].next_batch()[0])


# -- fewer shards than ranks ------------------------------------------------------------------


@pytest.mark.parametrize("cached", [False, True])
def test_fewer_shards_than_ranks_split_samples_disjointly_and_resume(eyes, cached):
    one = expand_urls(eyes)[0]  # 16 eyes, one shard, 3 ranks

    def stream(rank):
        return ImageStream(one, domain="gaze", batch_size=2, seed=2, shuffle_buffer=4,
                           rank=rank, world_size=3, cache=cached)  # fmt: skip

    epochs = []
    for rank in range(3):
        s = stream(rank)
        keys = [k for batch in _keys(s, 3) for k in batch]  # 6 and 5 samples per rank
        epochs.append(set(keys[: 6 if rank == 0 else 5]))
        half = stream(rank)
        _keys(half, 2)
        resumed = stream(rank)
        resumed.load_state_dict(half.state_dict())
        assert _keys(resumed, 3) == _keys(half, 3)
    assert sum(len(e) for e in epochs) == 16 and len(set.union(*epochs)) == 16


def test_a_set_smaller_than_the_ranks_is_refused_alike_by_every_rank(tmp_path):
    tiny = _write(tmp_path, "tiny", sim.generate("gaze", "synthetic", 2, seed=1), "gaze")
    errors = set()
    for rank in range(3):
        with pytest.raises(ValueError, match="cannot be split among 3 ranks") as caught:
            ImageStream(tiny, domain="gaze", batch_size=1, seed=0, rank=rank, world_size=3)
        errors.add(str(caught.value))
    assert len(errors) == 1 and "\n" not in errors.pop()


# -- unlabeled synthetic sets -----------------------------------------------------------------


def _unlabeled(samples, domain):
    for s in samples:
        name = image_component(s, domain)
        yield {"__key__": s["__key__"], name: s[name], "json": {"domain": domain, "labeled": False}}


@pytest.mark.parametrize("cached", [False, True])
def test_training_refuses_an_unlabeled_synthetic_set_before_it_starts(tmp_path, cached):
    eyes = list(sim.generate("gaze", "synthetic", 8, seed=3))
    bad = _write(tmp_path, "unlabeled", _unlabeled(eyes, "gaze"), "gaze")
    real = _write(tmp_path, "real", sim.generate("gaze", "real", 8, seed=4), "gaze")
    config = simgan.load_config(preset="small", batch_size=4, steps=1, cache=cached,
                                decode_workers=0)  # fmt: skip
    with pytest.raises(SampleError, match="unlabeled") as caught:
        simgan.train(config, synthetic=bad, real=real, out=tmp_path / "run", device="cpu")
    assert caught.value.key == eyes[0]["__key__"] and caught.value.url.endswith("000.tar")
    assert RunDir(tmp_path / "run").latest() is None  # not one iteration ran
    # the same set is a fine real pool
    ImageStream(
        bad, domain="gaze", batch_size=4, seed=0, labels=False, cache=cached
    ).check_labeled()


def test_sggan_refuses_an_unlabeled_synthetic_scene_set_naming_shard_and_key(tmp_path):
    frames = list(sim.generate("scene", "synthetic", 4, seed=3, height=64, width=128))
    bad = _write(tmp_path, "unlabeled", _unlabeled(frames, "scene"), "scene")
    real = _write(tmp_path, "real", sim.generate("scene", "real", 4, seed=4, height=64,
                                                 width=128), "scene")  # fmt: skip
    config = sggan.load_config(preset="small", batch_size=2, steps=1, decode_workers=0)
    with pytest.raises(SampleError, match=r"unlabeled.*labels to train on") as caught:
        sggan.train(config, synthetic=bad, real=real, out=tmp_path / "run", device="cpu")
    assert caught.value.key == frames[0]["__key__"]
    assert RunDir(tmp_path / "run").latest() is None


def test_the_cli_refuses_it_in_one_line_after_naming_the_world_size(tmp_path, capsys):
    eyes = list(sim.generate("gaze", "synthetic", 8, seed=3))
    bad = _write(tmp_path, "unlabeled", _unlabeled(eyes, "gaze"), "gaze")
    real = _write(tmp_path, "real", sim.generate("gaze", "real", 8, seed=4), "gaze")
    rc = cli.main(["train", "simgan", "--preset", "small", "--synthetic", bad, "--real", real,
                   "--out", str(tmp_path / "run"), "--steps", "1", "--device", "cpu"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 1 and out.splitlines()[0] == "train simgan: world size 1"
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("refinery train: error: ")
    assert "unlabeled" in errors[0] and repr(eyes[0]["__key__"]) in errors[0]


# -- refinery cache ---------------------------------------------------------------------------


def test_the_cache_command_builds_then_reuses_and_lists_rejects(eyes, tmp_path, capsys):
    assert cli.main(["cache", eyes]) == 0
    assert ": built;" in capsys.readouterr().out
    assert cli.main(["cache", eyes, "--domain", "gaze"]) == 0
    out = capsys.readouterr().out
    assert ": reused;" in out and f"{EYES} samples (0 rejected) from 3 shards" in out
    bad = _bad_shard(tmp_path / "bad-000.tar")
    assert cli.main(["cache", bad, "--domain", "gaze"]) == 1
    out = capsys.readouterr().out
    assert "1 rejected" in out and "key 'broken': undecodable" in out
    meta = json.loads((caching.open_cache(bad, domain="gaze").path / "meta.json").read_text())
    assert meta["rejects"][0]["key"] == "broken"


# -- evaluate and train-task ------------------------------------------------------------------


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], np.ndarray):
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
        else:
            assert a[name] == b[name], name


@pytest.mark.parametrize("domain", ["gaze", "hand", "scene"])
def test_task_sets_read_through_the_cache_as_decoding_gives_them(tmp_path, domain):
    from refinery.shards import read
    from train.cache import read_cached

    options = {"height": 64, "width": 128} if domain == "scene" else {}
    urls = _write(tmp_path, domain, sim.generate(domain, "synthetic", 6, seed=2, **options),
                  domain, shard_size=4)  # fmt: skip
    decoded = list(read(urls, domain))
    assert not (tmp_path / ".refinery-cache").exists()
    through = list(read_cached(urls, domain))
    assert (tmp_path / ".refinery-cache").is_dir() and len(through) == len(decoded) == 6
    for a, b in zip(decoded, through, strict=True):
        _same(a, b)


def test_a_task_set_with_a_reject_is_decoded_and_reported_as_before(eyes, tmp_path):
    from refinery.shards import Rejects, read
    from train.cache import read_cached

    urls = [*expand_urls(eyes), _bad_shard(tmp_path / "bad-000.tar")]
    with pytest.raises(SampleError, match="broken"):
        list(read_cached(urls, "gaze"))
    counted, expected = Rejects(), Rejects()
    assert [s["__key__"] for s in read_cached(urls, "gaze", handler=counted)] == [
        s["__key__"] for s in read(urls, "gaze", handler=expected)
    ]
    assert counted.total == expected.total == 1
