"""Engines: export of every registered generator, backend parity, FP16 graphs, refusals."""

from __future__ import annotations

import enum
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
from engines.base import Engine, cuda_index
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
    torch_dtype,
)
from engines.torch_backend import GraphCache
from refinery.cli import main
from refinery.registry import build_network, list_networks, network_info

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
def run_engine(tmp_path_factory, exported_tiny_run):
    """A real (tiny) SimGAN run, exported: the path every user takes."""
    return exported_tiny_run(tmp_path_factory.mktemp("engine"))


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


def test_the_recipes_reflect_padding_reaches_the_exported_graph(run_engine):
    """The small recipe trains with reflect padding; export must rebuild it so (a graph with
    zero padding would load the same weights and refine differently at every border)."""
    root, spec = run_engine
    import onnx

    assert spec.weights["kwargs"]["padding"] == "reflect"
    graph = onnx.load(str(root / "engine" / "model.onnx"), load_external_data=False).graph
    modes = {
        a.s.decode()
        for node in graph.node
        if node.op_type == "Pad"
        for a in node.attribute
        if a.name == "mode"
    }
    assert modes == {"reflect"}


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

    def _run_tensor(self, x):
        self.calls.append(len(x))
        return torch.from_numpy(self.fn(x.numpy()))


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
        Shape(1, 16, 16), Shape(64, 35, 55), Shape(4096, 140, 220)
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


# -- device-resident calls, CUDA graphs, plan profiles, TensorRT with a stand-in ------------


def test_cuda_index_reads_device_strings():
    assert [cuda_index(d) for d in (None, "cpu", "cuda", "cuda:3")] == [None, None, 0, 3]


@pytest.mark.parametrize(
    ("io", "dtype", "top"),
    [(GRAY, np.uint8, 255), (PixelIO("depth.png", "depth16", 1, 300.0, 1800.0), np.uint16, 65535)],
)
def test_refine_tensor_scales_and_quantises_like_the_numpy_formula(io, dtype, top):
    """The device path (torch ops) against the formula of engine.json written in NumPy."""
    engine = _Fake(_spec(io), lambda x: np.tanh(1.7 * x + 0.3))
    pixels = np.random.default_rng(4).integers(0, top + 1, (6, 20, 30)).astype(dtype)
    refined, finite = engine.refine_tensor(torch.from_numpy(pixels))
    assert refined.dtype == io.torch_dtype and refined.device.type == "cpu" and finite.all()
    unit = np.clip((pixels.astype(np.float32) - io.low) / (io.high - io.low), 0, 1)
    y = np.tanh(1.7 * (unit * 2 - 1) + 0.3)
    want = np.rint((np.clip(y, -1, 1) + 1) / 2 * (io.high - io.low) + io.low).astype(dtype)
    assert np.array_equal(refined.numpy(), want)
    assert np.array_equal(engine.refine(pixels).pixels, want)


def test_non_finite_samples_come_out_zero_in_sixteen_bit_too():
    io = PixelIO("depth.png", "depth16", 1, low=500.0, high=2000.0)

    def broken(x):
        y = x.copy()
        y[0, 0, 1, 1] = np.inf
        return y

    refined = _Fake(_spec(io), broken).refine(np.full((2, 16, 16), 900, np.uint16))
    assert refined.finite.tolist() == [False, True]
    assert not refined.pixels[0].any() and (refined.pixels[1] == 900).all()


def _graph_cache(max_batch=64, max_graphs=8):
    """A GraphCache whose 'capture' runs the forward eagerly on every replay (the CPU stand-in
    for a CUDA graph: same static input and output buffers, same bucketing)."""

    def forward(x):
        return x * 2.0 + x.sum(dim=(1, 2, 3), keepdim=True) * 0.0  # per-sample, like the nets

    def capture(fn, static_input):
        static_output = fn(static_input)

        def replay():
            static_output.copy_(fn(static_input))

        return replay, static_output

    return GraphCache(forward, max_batch=max_batch, capture=capture, max_graphs=max_graphs)


def test_graph_cache_pads_batches_to_power_of_two_buckets():
    cache = _graph_cache(max_batch=100)
    assert [cache.bucket(b) for b in (1, 2, 3, 5, 64, 65, 100)] == [1, 2, 4, 8, 64, 100, 100]
    with pytest.raises(ValueError):
        cache.bucket(101)
    rng = torch.Generator().manual_seed(0)
    for batch in (3, 4, 2, 3, 70):
        x = torch.rand((batch, 1, 6, 7), generator=rng)
        y = cache(x)
        assert y.shape == x.shape and torch.equal(y, x * 2.0)
    assert cache.captures == 3  # buckets 4, 2 and 100 for 1x6x7
    assert len(cache.graphs[(4, 1, 6, 7)][0]) == 4
    assert not cache.graphs[(100, 1, 6, 7)][0][70:].any(), "padding rows are zeros"


def test_graph_cache_output_survives_the_next_replay_and_drops_old_graphs():
    cache = _graph_cache(max_graphs=2)
    a = cache(torch.ones((2, 1, 4, 4)))
    cache(torch.zeros((2, 1, 4, 4)))
    assert (a == 2).all(), "callers get a copy, not the static output"
    for size in (5, 6, 7):
        cache(torch.ones((1, 1, size, size)))
    assert list(cache.graphs) == [(1, 1, 6, 6), (1, 1, 7, 7)]


def test_torch_backend_refuses_graphs_without_cuda_and_with_compile(run_engine):
    root, _ = run_engine
    with pytest.raises(EngineError, match="CUDA graphs need a CUDA device"):
        engines.load(root / "engine", backend="torch", device="cpu", graphs=True)
    engine = engines.load(root / "engine", backend="torch", device="cpu")
    assert engine.graphs is None and engine.stream is None
    assert engine.device == torch.device("cpu")


def test_onnxruntime_cpu_takes_and_returns_tensors(run_engine):
    root, _ = run_engine
    engine = engines.load(root / "engine", backend="onnxruntime")
    x = torch.rand((3, 1, 35, 55)) * 2 - 1
    y = engine.run_tensor(x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == x.shape
    assert np.array_equal(y.numpy(), engine(x.numpy()))


def test_a_plans_default_profile_is_the_jobs_batch_at_twice_the_training_size():
    exported = Profile.around(35, 55)
    assert str(exported.for_plan(64)) == "1x16x16/64x35x55/64x70x110"
    assert str(exported.for_plan(1024)) == "1x16x16/1024x35x55/1024x70x110"
    unet = Profile.around(256, 512, multiple=256)
    assert str(unet.for_plan(4)) == "1x256x256/4x256x512/4x512x1024"
    tight = Profile(Shape(1, 8, 8), Shape(2, 24, 32), Shape(8, 40, 64), multiple=4)
    assert str(tight.for_plan(64)) == "1x8x8/8x24x32/8x40x64"  # inside the exported range
    check_profile_within(exported.for_plan(64), exported)
    with pytest.raises(ValueError):
        exported.for_plan(0)


def test_build_takes_shapes_or_batch_not_both(run_engine):
    root, _ = run_engine
    with pytest.raises(EngineError, match="--shapes or --batch"):
        engines.build(root / "engine", backend="tensorrt", profile=SMALL, batch=8)
    with pytest.raises(EngineError, match="apply to TensorRT plans"):
        engines.build(root / "engine", backend="onnxruntime", fp16=True, batch=8)


class _FakeStream:
    handles = iter(range(1000, 2000))

    def __init__(self, device=None):
        self.device, self.cuda_stream = device, next(self.handles)

    def wait_stream(self, other):
        pass


class _FakeTensorRT:
    """Enough of the TensorRT 10 Python API for TensorRTEngine: a 'plan' that halves its
    input, reading and writing the raw addresses it is given, as execute_async_v3 does."""

    __version__ = "10.13.2.6"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1

    def __init__(self, *, context=True, output_dtype="HALF", max_batch=8):
        self.calls, self.make_context = [], context
        self.output_dtype, self.max_batch = output_dtype, max_batch
        fake = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                fake.calls.append(("deserialize", fake.current_device))
                return fake

        self.Runtime = Runtime
        self.current_device = None

    # the plan
    num_io_tensors = 2

    def get_tensor_name(self, i):
        return ("images", "refined")[i]

    def get_tensor_mode(self, name):
        return self.TensorIOMode.INPUT if name == "images" else self.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.DataType.FLOAT if name == "images" else self.DataType[self.output_dtype]

    def create_execution_context(self):
        self.calls.append(("context", self.current_device))
        return self if self.make_context else None

    # the context
    def set_input_shape(self, name, shape):
        self.shape = shape
        return shape[0] <= self.max_batch

    def get_tensor_shape(self, name):
        return self.shape

    def set_tensor_address(self, name, address):
        setattr(self, f"address_{name}", address)
        return True

    def execute_async_v3(self, stream):
        import ctypes

        count = int(np.prod(self.shape))
        source = (ctypes.c_float * count).from_address(self.address_images)
        x = np.frombuffer(source, np.float32).copy()
        out_type = np.float16 if self.output_dtype == "HALF" else np.float32
        target = np.ctypeslib.as_array(
            (ctypes.c_byte * (count * np.dtype(out_type).itemsize)).from_address(
                self.address_refined
            )
        )
        target[:] = (x * 0.5).astype(out_type).view(np.int8)
        self.calls.append(("execute", stream))
        return True


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's device and stream calls recorded instead of made."""
    import contextlib

    import engines.tensorrt_backend as trt_backend

    state = {"set_device": [], "device": []}
    fake = _FakeTensorRT()

    @contextlib.contextmanager
    def device(d):
        state["device"].append(torch.device(d))
        previous, fake.current_device = fake.current_device, torch.device(d)
        yield
        fake.current_device = previous

    def set_device(d):
        state["set_device"].append(torch.device(d))
        fake.current_device = torch.device(d)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: _FakeStream(d))
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda index: {"gpu": f"Fake GPU {index}"})
    return state, fake


def _with_plan(root, tmp_path, gpu="Fake GPU 1"):
    copy = tmp_path / "engine"
    shutil.copytree(root / "engine", copy)
    (copy / "model.plan").write_bytes(b"plan")
    from engines.spec import sha256_file

    spec = read_spec(copy).with_build(
        "tensorrt",
        {
            "file": "model.plan",
            "sha256": sha256_file(copy / "model.plan"),
            "tensorrt_version": "10.13.2.6",
            "gpu": gpu,
            "precision": "fp16",
            "profile": Profile.parse("1x16x16/8x35x55/8x70x110").as_dict(),
        },
    )
    write_spec(copy, spec)
    return copy


def test_tensorrt_engine_loads_its_plan_on_its_own_device(run_engine, tmp_path, fake_cuda):
    state, fake = fake_cuda
    root, _ = run_engine
    engine = engines.load(_with_plan(root, tmp_path), backend="tensorrt", device="cuda:1")
    cuda1 = torch.device("cuda", 1)
    assert state["set_device"] == [cuda1], "a torchrun rank's plan must not land on GPU 0"
    assert fake.calls == [("deserialize", cuda1), ("context", cuda1)]
    assert engine.device == cuda1 and engine.stream.device == cuda1
    assert engine.input_dtype == torch.float32 and engine.output_dtype == torch.float16
    assert str(engine.profile) == "1x16x16/8x35x55/8x70x110"  # the plan's, not the graph's


def test_tensorrt_engine_runs_on_its_stream_and_checks_every_call(run_engine, tmp_path, fake_cuda):
    _, fake = fake_cuda
    root, _ = run_engine
    engine = engines.load(_with_plan(root, tmp_path), backend="tensorrt", device="cuda:1")
    engine.device = torch.device("cpu")  # the stand-in plan reads and writes host memory
    x = torch.linspace(-1, 1, 3 * 35 * 55).reshape(3, 1, 35, 55)
    y = engine.run_tensor(x)
    assert y.dtype == torch.float32 and torch.allclose(y, x * 0.5, atol=1e-3)  # HALF output
    assert fake.calls[-1] == ("execute", engine.stream.cuda_stream)
    refined = engine.refine(np.full((2, 35, 55), 255, np.uint8))
    assert (refined.pixels == 191).all()  # 1.0 -> 0.5 -> round(1.5 / 2 * 255) = 191
    with pytest.raises(EngineMismatch, match="outside the engine's profile"):
        engine.run_tensor(torch.zeros((2, 1, 35, 200)))
    fake.max_batch = 2  # the context itself refuses: set_input_shape's False is an error
    with pytest.raises(EngineMismatch, match="TensorRT refused input shape"):
        engine.run_tensor(torch.zeros((3, 1, 35, 55)))


def test_tensorrt_engine_says_when_no_context_fits_on_the_device(run_engine, tmp_path, fake_cuda):
    _, fake = fake_cuda
    fake.make_context = False
    root, _ = run_engine
    with pytest.raises(EngineError, match=r"execution context .* smaller --batch or --shapes"):
        engines.load(_with_plan(root, tmp_path), backend="tensorrt", device="cuda:1")
    with pytest.raises(EngineError, match="runs on a CUDA device"):
        engines.load(_with_plan(root, tmp_path / "b"), backend="tensorrt", device="cpu")
    assert torch_dtype(_FakeTensorRT.DataType.HALF) == torch.float16
    with pytest.raises(EngineError, match="no torch equivalent"):
        torch_dtype(types.SimpleNamespace(name="FP8"))


# -- GPU: device-resident calls, graphs ----------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graphs_match_eager_and_keep_pixels_on_the_device(run_engine, precision):
    root, _ = run_engine
    eager = engines.load(
        root / "engine", backend="torch", device="cuda", precision=precision, graphs=False
    )
    graphed = engines.load(root / "engine", backend="torch", device="cuda", precision=precision)
    assert graphed.graphs is not None and graphed.stream is not None
    rng = np.random.default_rng(8)
    for batch in (1, 3, 64, 100):
        pixels = torch.from_numpy(rng.integers(0, 256, (batch, 35, 55), dtype=np.uint8)).cuda()
        a, finite = graphed.refine_tensor(pixels)
        b, _ = eager.refine_tensor(pixels)
        assert a.device.type == "cuda" and a.dtype == torch.uint8 and finite.all()
        assert (a.int() - b.int()).abs().max() <= 1
    assert graphed.graphs.captures == 4  # buckets 1, 4, 64, 128


@pytest.mark.gpu
def test_sixteen_bit_pixels_cross_to_the_device_and_back(tmp_path):
    from tests.test_refine_job import _engine

    _engine(
        tmp_path,
        domain="hand",
        channels=1,
        kind="depth16",
        component="depth.png",
        profile=SMALL,
        high=2000.0,
    )
    cpu = engines.load(tmp_path, backend="torch", device="cpu")
    gpu = engines.load(tmp_path, backend="torch", device="cuda")
    depth = np.random.default_rng(9).integers(0, 2001, (4, 32, 32)).astype(np.uint16)
    a, b = cpu.refine(depth), gpu.refine(depth)
    assert b.pixels.dtype == np.uint16 and b.finite.all()
    assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).max() <= 2
