"""Noise channels: seeded noise is N(0, 1), a function of each image alone, and an engine with
a noise refiner refines exactly as the trained module, on every backend, in any batch, twice."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file

import engines
from deploy.job import RefineConfig, run
from refinery.noise import _hash32, image_seeds, seeded_noise, with_noise
from refinery.registry import build_network


def _lowbias32(x: int) -> int:
    """The published hash in plain Python integers (the reference ``_hash32`` must equal)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 1, 35, 55))
    return torch.from_numpy(pixels / 127.5 - 1.0).float()


def test_the_integer_hash_is_lowbias32_over_the_whole_32_bit_range():
    values = [0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
    got = _hash32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [_lowbias32(v) for v in values]


def test_seeded_noise_is_standard_normal_and_uncorrelated():
    noise = seeded_noise(_images(64), 2)
    assert noise.shape == (64, 2, 35, 55) and noise.dtype == torch.float32
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1.0) < 0.01
    # neighbours, channels and images are independent
    flat = noise.numpy()
    for a, b in (
        (flat[..., 1:], flat[..., :-1]),
        (flat[:, 0], flat[:, 1]),
        (flat[1:], flat[:-1]),
    ):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01
    # the tails of a normal: 0.27% beyond 3 sigma
    assert 0.0015 < float((noise.abs() > 3).float().mean()) < 0.0040


def test_seeded_noise_depends_on_the_image_alone():
    x = _images(9)
    noise = seeded_noise(x, 1)
    assert torch.equal(seeded_noise(x, 1), noise)  # deterministic
    assert torch.equal(seeded_noise(x[4:7], 1), noise[4:7])  # not on the batch
    assert torch.equal(seeded_noise(x.flip(0), 1), noise.flip(0))
    # float noise of an 8-bit image's own grey levels: ulps do not move the seed
    assert torch.equal(seeded_noise(x + 1e-6, 1), noise)
    # one grey level at one pixel is another image, with other noise
    y = x.clone()
    y[0, 0, 17, 20] += 2 / 255
    assert not torch.equal(image_seeds(y)[:1], image_seeds(x)[:1])
    assert float((seeded_noise(y, 1)[0] - noise[0]).abs().mean()) > 0.5
    assert torch.equal(seeded_noise(y, 1)[1:], noise[1:])
    # two identical images share their noise, as they share their refined image
    same = torch.cat([x[:1], x[:1]])
    a, b = seeded_noise(same, 1)
    assert torch.equal(a, b)


def test_with_noise_appends_channels_and_zero_is_the_identity():
    x = _images(2)
    assert with_noise(x, 0) is x
    y = with_noise(x, 1)
    assert y.shape == (2, 2, 35, 55) and torch.equal(y[:, :1], x)


def test_a_noise_refiner_appends_its_noise_or_takes_it_given():
    torch.manual_seed(0)
    refiner = build_network("simgan-refiner-small", channels=1, noise=1).eval()
    assert refiner.stem.in_channels == 2
    x = _images(3)
    with torch.no_grad():
        own = refiner(x)
        given = refiner(with_noise(x, 1))
        silent = refiner(torch.cat([x, torch.zeros_like(x)], 1))
    assert own.shape == x.shape and torch.equal(own, given)
    assert float((own - silent).abs().max()) > 1e-3  # the noise reaches the output
    with pytest.raises(ValueError, match="noise must be an integer >= 0"):
        build_network("simgan-refiner-small", channels=1, noise=-1)


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory, exported_tiny_run):
    """A tiny SimGAN run whose refiner takes one noise channel, exported."""
    return exported_tiny_run(tmp_path_factory.mktemp("noise"), seeds=(31, 32), refiner_noise=1)


def test_the_noise_channel_reaches_engine_json_and_the_graph(noise_run):
    root, spec = noise_run
    assert spec.weights["kwargs"]["noise"] == 1
    assert spec.io.channels == 1 and spec.io.noise_channels == 1 and spec.io.graph_channels == 2
    on_disk = json.loads((root / "engine" / "engine.json").read_text())
    assert on_disk["io"]["noise_channels"] == 1
    graph = onnx.load(str(root / "engine" / "model.onnx")).graph
    (tensor,) = graph.input
    assert tensor.type.tensor_type.shape.dim[1].dim_value == 2
    (out,) = graph.output
    assert out.type.tensor_type.shape.dim[1].dim_value == 1


def test_noise_engines_refine_as_the_trained_module_in_any_batch(noise_run):
    root, spec = noise_run
    checkpoints = root / "run" / "checkpoints"
    latest = checkpoints / (checkpoints / "latest").read_text().strip()
    info = json.loads((latest / "generator.json").read_text())
    trained = build_network(info["network"], **info["kwargs"]).eval()
    trained.load_state_dict(load_file(str(latest / "refiner.safetensors")))
    ort = engines.load(root / "engine", backend="onnxruntime")
    ref = engines.load(root / "engine", backend="torch")
    pixels = np.random.default_rng(4).integers(0, 256, (6, 35, 55), dtype=np.uint8)
    x = spec.io.to_model(pixels)
    with torch.no_grad():
        expected = trained(torch.from_numpy(x)).numpy()  # the module appends its own noise
    assert np.abs(ort(x) - expected).max() <= 1e-5
    assert np.abs(ref(x) - expected).max() <= 1e-5
    whole = ort.refine(pixels).pixels
    alone = np.concatenate([ort.refine(pixels[i : i + 1]).pixels for i in range(6)])
    assert np.array_equal(whole, alone)
    assert np.abs(whole.astype(int) - ref.refine(pixels).pixels.astype(int)).max() <= 1


def test_a_noise_engines_job_writes_the_same_bytes_twice(noise_run, tmp_path):
    root, _ = noise_run
    urls = [str(root / "synthetic-000.tar")]

    def images(out: Path) -> dict[str, bytes]:
        with tarfile.open(out / "synthetic-000.tar") as tf:
            return {
                m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith("png")
            }

    first, second = tmp_path / "a", tmp_path / "b"
    for out, batch in ((first, 16), (second, 5)):
        summary = run(RefineConfig(engine=str(root / "engine"), output=str(out), batch=batch), urls)
        assert summary.written == 16
    assert images(first) == images(second) and len(images(first)) == 16


def test_a_noise_engines_fp16_graph_takes_the_noise_too(noise_run, tmp_path):
    root, spec = noise_run
    engine = tmp_path / "engine"
    shutil.copytree(root / "engine", engine)
    engines.build(engine, backend="onnxruntime", fp16=True)
    full = engines.load(engine, backend="onnxruntime")
    half = engines.load(engine, backend="onnxruntime", precision="fp16")
    x = spec.io.to_model(np.random.default_rng(5).integers(0, 256, (3, 35, 55), dtype=np.uint8))
    assert np.abs(half(x) - full(x)).max() < 1e-2


@pytest.mark.gpu
def test_seeded_noise_on_cuda_is_the_cpus():
    x = _images(16)
    on_gpu = x.cuda()
    assert torch.equal(image_seeds(on_gpu).cpu(), image_seeds(x))  # integers: every bit
    # Box-Muller's log, sqrt and cos: float32 on both, an ulp or so apart
    assert float((seeded_noise(on_gpu, 2).cpu() - seeded_noise(x, 2)).abs().max()) < 1e-5
