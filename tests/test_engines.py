"""Engines: export of every registered generator, backend parity, FP16 graphs, refusals."""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import engines
from engines import EngineError, EngineMismatch, PixelIO, Profile, Shape
from engines.base import Engine
from engines.export import export_module
from engines.fp16 import to_fp16
from engines.spec import EngineSpec, read_spec, write_spec
from engines.tensorrt_backend import (
    check_plan,
    check_profile_within,
    import_tensorrt,
    network_flags,
    profile_shapes,
    tensorrt_major,
)
from refinery import sim
from refinery.cli import main
from refinery.registry import build_network, list_networks, network_info
from refinery.samples import encode_sample
from refinery.shards import write_shards
from train import simgan

SMALL = Profile(Shape(1, 8, 8), Shape(2, 24, 32), Shape(8, 64, 64))
GRAY = PixelIO(image_component="png", pixel_kind="gray8", channels=1, low=0.0, high=255.0)


def _pixels(channels: int) -> PixelIO:
    kind = "gray8" if channels == 1 else "rgb8"
    return PixelIO(image_component="png", pixel_kind=kind, channels=channels, low=0.0, high=255.0)


def _export(module: nn.Module, out, *, network: str, channels: int, profile=SMALL, **kw):
    return export_module(
        module,
        out,
        network=network,
        kwargs={"channels": channels},
        method="test",
        domain="gaze" if channels == 1 else "scene",
        pixels=_pixels(channels),
        profile=profile,
        source={"run": None, "checkpoint": None, "checkpoint_sha256": None, "recipe": {}},
        **kw,
    )


@pytest.fixture(scope="module")
def run_engine(tmp_path_factory):
    """A real (tiny) SimGAN run, exported: the path every user takes."""
    root = tmp_path_factory.mktemp("engine")
    for variant, seed in (("synthetic", 21), ("real", 22)):
        samples = (encode_sample(s, "gaze") for s in sim.generate("gaze", variant, 32, seed=seed))
        write_shards(samples, str(root / f"{variant}-%03d.tar"), shard_size=16)
    config = simgan.load_config(
        preset="small",
        batch_size=8,
        pretrain_refiner_steps=2,
        pretrain_discriminator_steps=1,
        steps=2,
        buffer_size=16,
        shuffle_buffer=8,
        checkpoint_every=100,
        log_every=100,
        sample_every=100,
    )
    simgan.train(
        config,
        synthetic=str(root / "synthetic-{000..001}.tar"),
        real=str(root / "real-{000..001}.tar"),
        out=root / "run",
    )
    spec = engines.export_run(root / "run", root / "engine")
    return root, spec


# -- export -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n == "sggan-generator" else n  # 54M, 512²
        for n in list_networks(role="refiner")
    ],
)
def test_every_registered_generator_exports_with_parity_at_two_sizes(name, tmp_path):
    info = network_info(name)
    torch.manual_seed(0)
    module = build_network(name, channels=info.channels).eval()
    # Strided generators take H, W that are multiples of `size_multiple` (m): SMALL's sizes
    # rounded up to multiples, from 16 (at 8 a ResNet generator's instance norms see 2×2 maps).
    # The example the exporter traces (opt) is at least 2 m: torch.export specialises a
    # dimension m * Dim whose example value is m (Dim = 1).
    m = getattr(module, "size_multiple", 1)

    def up(v: int) -> int:
        return -(-v // m) * m

    profile = SMALL
    if m > 1:
        big = m >= 256  # the paper-sized U-Net: keep batches small
        high = max(up(64), 2 * m)
        profile = Profile(
            Shape(1, up(16), up(16)),
            Shape(1 if big else 2, max(up(24), 2 * m), max(up(32), 2 * m)),
            Shape(2 if big else 8, high, high),
            multiple=m,
        )
    spec = _export(module, tmp_path, network=name, channels=info.channels, profile=profile)
    # parity is judged against torch's FP32 output, itself ~1e-5 off the exact (FP64) result
    # for deep instance-norm generators: the export allows 4x that noise where it exceeds 1e-5
    validation = spec.validation
    tolerance = validation["tolerance"]
    assert tolerance == max(1e-5, 4 * validation["torch_fp32_vs_fp64_max_abs"])
    if "simgan" in name:
        assert tolerance == 1e-5
    model = onnx.load(str(tmp_path / "model.onnx"))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == info.channels and all(isinstance(d, str) for d in (dims[0], *dims[2:]))
    assert len(spec.validation["shapes"]) == 2
    assert spec.validation["onnxruntime_vs_torch_max_abs"] <= tolerance
    # and through the public interface, at sizes the export did not check
    ort = engines.load(tmp_path, backend="onnxruntime")
    ref = engines.load(tmp_path, backend="torch")
    rng = np.random.default_rng(1)
    lo, hi = profile.min.height, profile.max.height
    for shape in ((1, lo, lo), (min(3, profile.max.batch), min(up(40), hi), max(up(21), lo))):
        x = rng.uniform(-1, 1, (shape[0], info.channels, *shape[1:])).astype(np.float32)
        assert np.abs(ort(x) - ref(x)).max() <= tolerance


def test_export_from_a_run_records_contract_2(run_engine):
    root, spec = run_engine
    on_disk = json.loads((root / "engine" / "engine.json").read_text())
    assert on_disk["format"] == "refinery-engine" and on_disk["format_version"] == 1
    assert on_disk["domain"] == "gaze" and on_disk["io"]["channels"] == 1
    assert on_disk["io"]["pixel_dtype"] == "uint8" and on_disk["io"]["model_range"] == [-1.0, 1.0]
    assert (on_disk["io"]["low"], on_disk["io"]["high"]) == (0.0, 255.0)
    assert on_disk["profile"]["opt"] == {"batch": 64, "height": 35, "width": 55}
    assert on_disk["precision"] == "fp32" and on_disk["refinery_version"]
    assert on_disk["source"]["recipe"]["refiner"] == "simgan-refiner-small"
    checkpoint = root / "run" / "checkpoints" / on_disk["source"]["checkpoint"]
    from engines.spec import sha256_file

    assert on_disk["source"]["checkpoint_sha256"] == sha256_file(checkpoint / "refiner.safetensors")
    assert on_disk["model"]["sha256"] == sha256_file(root / "engine" / "model.onnx")
    assert read_spec(root / "engine") == spec


def test_backends_agree_on_the_exported_run(run_engine):
    root, _ = run_engine
    ort = engines.load(root / "engine", backend="onnxruntime")
    ref = engines.load(root / "engine", backend="torch")
    rng = np.random.default_rng(2)
    for shape in ((5, 35, 55), (2, 36, 60)):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        x = GRAY.to_model(pixels)
        assert np.abs(ort(x) - ref(x)).max() <= 1e-5
        a, b = ort.refine(pixels), ref.refine(pixels)
        assert a.pixels.dtype == np.uint8 and a.pixels.shape == shape and a.finite.all()
        assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).max() <= 1


def test_export_refuses_a_run_without_checkpoints(tmp_path):
    with pytest.raises(EngineError, match="checkpoints/latest"):
        engines.export_run(tmp_path, tmp_path / "e")


# -- pixel scaling, batching, non-finite outputs --------------------------------------------


class _Fake(Engine):
    backend = "fake"

    def __init__(self, spec, fn):
        super().__init__(spec, ".")
        self.fn, self.calls = fn, []

    def _run(self, x):
        self.calls.append(len(x))
        return self.fn(x)


def _spec(io: PixelIO = GRAY, profile: Profile = SMALL) -> EngineSpec:
    return EngineSpec(
        name="simgan-refiner-small",
        method="test",
        domain="gaze",
        io=io,
        profile=profile,
        model={"file": "model.onnx", "sha256": "0" * 64},
        weights={},
        source={},
        refinery_version="0",
    )


@pytest.mark.parametrize(
    ("io", "dtype", "top"),
    [
        (GRAY, np.uint8, 255),
        (PixelIO("depth.png", "depth16", 1, low=0.0, high=2000.0), np.uint16, 2000),
        (PixelIO("png", "rgb8", 3, low=0.0, high=255.0), np.uint8, 255),
    ],
)
def test_identity_engine_round_trips_pixels_exactly(io, dtype, top):
    engine = _Fake(_spec(io), lambda x: x)
    shape = (4, 20, 30) + ((3,) if io.channels == 3 else ())
    pixels = np.random.default_rng(3).integers(0, top + 1, shape).astype(dtype)
    refined = engine.refine(pixels)
    assert refined.pixels.dtype == dtype and np.array_equal(refined.pixels, pixels)


def test_non_finite_outputs_are_flagged_per_sample_and_never_passed_on():
    def broken(x):
        y = x.copy()
        y[1, 0, 3, 4] = np.nan
        y[3] = np.inf
        return y

    refined = _Fake(_spec(), broken).refine(np.full((4, 16, 16), 100, np.uint8))
    assert refined.finite.tolist() == [True, False, True, False] and refined.bad == [1, 3]
    assert not refined.pixels[[1, 3]].any()
    assert (refined.pixels[[0, 2]] == 100).all()


def test_non_finite_weights_are_caught_on_a_real_backend(tmp_path):
    module = build_network("simgan-refiner-small", channels=1)
    with torch.no_grad():
        module.head.bias.fill_(float("nan"))
    _export(module, tmp_path, network="simgan-refiner-small", channels=1, tolerance=float("inf"))
    refined = engines.load(tmp_path, backend="onnxruntime").refine(np.zeros((2, 8, 8), np.uint8))
    assert not refined.finite.any()


def test_batches_beyond_the_profile_are_split():
    engine = _Fake(_spec(), lambda x: x)
    out = engine(np.zeros((19, 1, 16, 16), np.float32))
    assert out.shape == (19, 1, 16, 16) and engine.calls == [8, 8, 3]


# -- refusals ---------------------------------------------------------------------------------


def test_mismatched_data_is_refused_with_every_reason():
    spec = _spec(profile=Profile(Shape(1, 8, 8), Shape(2, 24, 32), Shape(8, 64, 64), multiple=4))
    with pytest.raises(EngineMismatch) as err:
        spec.check_fits(
            domain="scene",
            image_component="jpg",
            channels=3,
            pixel_dtype="uint16",
            size=(70, 30),
        )
    message = str(err.value)
    for part in (
        "domain 'scene'",
        "image component 'jpg'",
        "3 channels",
        "pixel dtype uint16",
        "height 70 is outside",
        "width 30 is not a multiple of 4",
    ):
        assert part in message
    spec.check_fits(domain="gaze", channels=1, pixel_dtype=np.uint8, size=(32, 32))


def test_engines_refuse_wrong_inputs_before_running():
    engine = _Fake(_spec(), lambda x: x)
    with pytest.raises(EngineMismatch, match="3 channels"):
        engine(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(EngineMismatch, match="width 100 is outside"):
        engine(np.zeros((2, 1, 16, 100), np.float32))
    with pytest.raises(EngineMismatch, match="takes uint8 pixels"):
        engine.refine(np.zeros((2, 16, 16), np.uint16))
    assert engine.calls == []


def test_changed_artifacts_and_unknown_versions_are_refused(run_engine, tmp_path):
    root, _ = run_engine
    copy = tmp_path / "engine"
    shutil.copytree(root / "engine", copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EngineMismatch, match="sha256"):
        engines.load(copy, backend="onnxruntime")
    data = json.loads((copy / "engine.json").read_text())
    data["format_version"] = 99
    (copy / "engine.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match="format version 99"):
        engines.load(copy)
    with pytest.raises(EngineError, match=r"no engine\.json"):
        engines.load(tmp_path)


def test_unknown_backend_and_options_are_errors(run_engine):
    root, _ = run_engine
    with pytest.raises(EngineError, match="unknown backend"):
        engines.load(root / "engine", backend="tflite")
    with pytest.raises(EngineError, match="threads"):
        engines.load(root / "engine", backend="torch", threads=2)
    with pytest.raises(EngineError, match="needs a CUDA device"):
        engines.load(root / "engine", backend="torch", device="cpu", precision="fp16")


def test_onnxruntime_never_falls_back_silently_to_the_cpu(run_engine):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    root, _ = run_engine
    with pytest.raises(EngineError, match="CUDAExecutionProvider is not available"):
        engines.load(root / "engine", backend="onnxruntime", device="cuda")


# -- FP16 graph -------------------------------------------------------------------------------


class _Normed(nn.Module):
    """Conv, InstanceNorm (statistics must stay FP32), Resize (scales must stay FP32)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.InstanceNorm2d(8, affine=True),
            nn.ReLU(),
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 1, 1),
            nn.Tanh(),
        )

    def forward(self, x):
        return self.body(x)


def test_fp16_graph_keeps_io_normalisation_and_resize_scales_in_fp32(tmp_path):
    torch.manual_seed(0)
    module = _Normed()
    with torch.no_grad():
        module.body[1].weight.uniform_(0.5, 1.5)
        module.body[1].bias.uniform_(-0.5, 0.5)
    _export(module, tmp_path, network="simgan-refiner-small", channels=1)
    half = to_fp16(onnx.load(str(tmp_path / "model.onnx")))
    graph = half.graph
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert graph.input[0].type.tensor_type.elem_type == f32
    assert graph.output[0].type.tensor_type.elem_type == f32
    types = {t.name: t.data_type for t in graph.initializer}
    nodes = {n.op_type: n for n in graph.node}
    conv = next(n for n in graph.node if n.op_type == "Conv")
    assert types[conv.input[1]] == f16
    norm = nodes["InstanceNormalization"]
    assert types[norm.input[1]] == f32 and types[norm.input[2]] == f32
    producer = {o: n for n in graph.node for o in n.output}
    assert producer[norm.input[0]].op_type == "Cast"  # statistics computed on FP32 input
    resize = nodes["Resize"]
    assert types[resize.input[2]] == f32
    # numerically: the FP16 path within 1e-2 of torch FP32 on [-1, 1] outputs
    engines.build(tmp_path, backend="onnxruntime", fp16=True)
    spec = read_spec(tmp_path)
    assert spec.builds["onnx-fp16"]["precision"] == "fp16"
    half_engine = engines.load(tmp_path, backend="onnxruntime", precision="fp16")
    assert spec.model == read_spec(tmp_path).model  # the FP32 graph is untouched
    x = np.random.default_rng(4).uniform(-1, 1, (3, 1, 24, 32)).astype(np.float32)
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(half_engine(x) - expected).max() <= 1e-2


def test_fp16_pass_refuses_subgraphs():
    then = onnx.helper.make_graph([], "then", [], [])
    node = onnx.helper.make_node("If", ["c"], [], then_branch=then, else_branch=then)
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])], []
    )
    with pytest.raises(ValueError, match="subgraph"):
        to_fp16(onnx.helper.make_model(graph))


# -- TensorRT: everything that runs without it ----------------------------------------------


def test_strongly_typed_flag_for_tensorrt_10_and_11():
    class Flags:
        STRONGLY_TYPED = 1

    assert network_flags(types.SimpleNamespace(NetworkDefinitionCreationFlag=Flags)) == 2
    assert network_flags(types.SimpleNamespace(NetworkDefinitionCreationFlag=object())) == 0
    assert tensorrt_major("10.13.2.6") == 10 and tensorrt_major("11.4.1") == 11


def test_tensorrt_profile_shapes_and_limits():
    assert profile_shapes(SMALL, 3) == ((1, 3, 8, 8), (2, 3, 24, 32), (8, 3, 64, 64))
    check_profile_within(Profile.parse("1x8x8/4x32x32/8x64x64"), SMALL)
    with pytest.raises(EngineMismatch, match="height \\[8, 128\\] outside"):
        check_profile_within(Profile.parse("1x8x8/4x32x32/8x128x64"), SMALL)


def test_a_plan_is_refused_on_another_gpu_or_tensorrt_version():
    record = {"gpu": "NVIDIA H100 80GB HBM3", "tensorrt_version": "10.13.2.6"}
    check_plan(record, gpu="NVIDIA H100 80GB HBM3", tensorrt_version="10.13.2.6")
    with pytest.raises(EngineMismatch, match=r"built on GPU 'NVIDIA H100 80GB HBM3'.*NVIDIA L4"):
        check_plan(record, gpu="NVIDIA L4", tensorrt_version="10.13.2.6")
    with pytest.raises(EngineMismatch, match=r"TensorRT 10\.13\.2\.6, this is 11\.4\.1"):
        check_plan(record, gpu="NVIDIA H100 80GB HBM3", tensorrt_version="11.4.1")


def test_tensorrt_backend_without_a_plan_or_tensorrt_says_what_to_do(run_engine):
    root, _ = run_engine
    with pytest.raises(EngineError, match=r"refinery build .* --backend tensorrt"):
        engines.load(root / "engine", backend="tensorrt")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(EngineError, match="TensorRT 10 or 11"):
            import_tensorrt()


def test_shapes_parse_and_profile_validation():
    assert str(Profile.parse("1x35x55/64x35x55/256x140x220")) == "1x35x55/64x35x55/256x140x220"
    for bad in ("1x35x55/64x35x55", "1x35/2x35x55/3x35x55", "0x1x1/1x1x1/1x1x1"):
        with pytest.raises(ValueError):
            Profile.parse(bad)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        Profile.parse("4x35x55/2x35x55/8x35x55")
    assert Profile.around(35, 55) == Profile(
        Shape(1, 16, 16), Shape(64, 35, 55), Shape(256, 140, 220)
    )


# -- CLI --------------------------------------------------------------------------------------


def test_cli_export_build_and_bench(run_engine, tmp_path, capsys):
    root, _ = run_engine
    out = tmp_path / "e"
    assert (
        main(
            ["export", str(root / "run"), "--out", str(out), "--shapes", "1x8x8/16x35x55/32x70x110"]
        )
        == 0
    )
    assert "max |diff|" in capsys.readouterr().out
    assert read_spec(out).profile == Profile.parse("1x8x8/16x35x55/32x70x110")
    assert main(["build", str(out), "--backend", "onnxruntime", "--fp16"]) == 0
    assert (out / "model.fp16.onnx").exists()
    results = tmp_path / "results"
    args = ["bench-engine", str(out), "--batch", "4", "--size", "35x55", "--iterations", "2"]
    assert main([*args, "--out", str(results), "--warmup", "1"]) == 0
    (record,) = [json.loads(p.read_text()) for p in results.glob("*.json")]
    assert record["figures"]["images_per_s"] > 0 and record["figures"]["outputs_finite"]
    assert set(record["figures"]["latency_ms"]) == {"p50", "p90", "p99"}
    assert record["settings"]["batch"] == 4 and record["machine"]["cpu_count"] >= 1
    assert main([*args[:-2], "--size", "200x55", "--out", str(results)]) == 1
    assert "height 200 is outside the engine's profile [8, 70]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", str(root / "run"), "--out", str(out), "--shapes", "1x8"])
    assert exc.value.code == 2


# -- GPU --------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_torch_fp16_on_cuda_within_1e_2_of_fp32(run_engine):
    root, _ = run_engine
    fp32 = engines.load(root / "engine", backend="torch", device="cuda")
    fp16 = engines.load(root / "engine", backend="torch", device="cuda", precision="fp16")
    x = np.random.default_rng(5).uniform(-1, 1, (16, 1, 35, 55)).astype(np.float32)
    assert np.abs(fp16(x) - fp32(x)).max() <= 1e-2


@pytest.mark.gpu("onnxruntime")
def test_onnxruntime_cuda_provider_matches_torch(run_engine):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("ONNX Runtime here has no CUDA provider")
    root, _ = run_engine
    gpu = engines.load(root / "engine", backend="onnxruntime", device="cuda")
    ref = engines.load(root / "engine", backend="torch", device="cpu")
    x = np.random.default_rng(6).uniform(-1, 1, (8, 1, 35, 55)).astype(np.float32)
    assert np.abs(gpu(x) - ref(x)).max() <= 1e-4  # cuDNN algorithms differ from MKL-DNN's


@pytest.mark.gpu("tensorrt")
def test_tensorrt_fp16_plan_matches_torch(run_engine, tmp_path):
    root, _ = run_engine
    copy = tmp_path / "engine"
    shutil.copytree(root / "engine", copy)
    spec = engines.build(
        copy, backend="tensorrt", fp16=True, profile=Profile.parse("1x16x16/16x35x55/32x70x110")
    )
    record = spec.builds["tensorrt"]
    assert record["precision"] == "fp16" and record["tensorrt_version"] and record["gpu"]
    plan = engines.load(copy, backend="tensorrt")
    ref = engines.load(copy, backend="torch", device="cpu")
    x = np.random.default_rng(7).uniform(-1, 1, (8, 1, 35, 55)).astype(np.float32)
    assert np.abs(plan(x) - ref(x)).max() <= 1e-2
    with pytest.raises(EngineMismatch, match="outside the engine's profile"):
        plan(np.zeros((8, 1, 35, 200), np.float32))
    data = read_spec(copy).as_dict()
    data["builds"]["tensorrt"]["gpu"] = "another GPU"
    write_spec(copy, EngineSpec.from_dict(data))
    with pytest.raises(EngineMismatch, match="another GPU"):
        engines.load(copy, backend="tensorrt")
