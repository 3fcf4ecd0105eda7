"""TensorRT backend: build a serialised plan with one optimisation profile, and run it.

Written for TensorRT 10 and 11 (the name-based tensor API: ``num_io_tensors``,
``get_tensor_name``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).
TensorRT 11 removed ``BuilderFlag.FP16`` and weak typing altogether, so FP16 comes from the
graph: ``refinery build --fp16`` first writes ``model.fp16.onnx`` (``engines.fp16``: FP16
compute, FP32 normalisation statistics and I/O) and builds it as a strongly typed network. On
TensorRT 10 the ``STRONGLY_TYPED`` creation flag asks for exactly that; on 11 the flag is
accepted and ignored (every network is strongly typed) or absent, and both cases work here.

A plan only runs on the GPU model and TensorRT version it was built with: the build records
both in ``engine.json`` and loading refuses a plan on anything else, before deserialising it.

``tensorrt`` is imported inside the functions that need it: this module imports, and
everything that does not touch TensorRT itself is testable, on machines without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engines.base import Engine, cuda_index
from engines.fp16 import ensure_fp16_graph
from engines.spec import (
    DEFAULT_BATCH,
    PLAN_FILE,
    EngineError,
    EngineMismatch,
    EngineSpec,
    Profile,
    read_spec,
    sha256_file,
    verify_file,
    write_atomic,
    write_spec,
)

SUPPORTED_MAJOR = (10, 11)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(
            "the tensorrt backend needs TensorRT 10 or 11 (pip install 'refinery[gpu]' with "
            f"NVIDIA's package index on a CUDA machine): {exc}"
        ) from None
    major = tensorrt_major(tensorrt.__version__)
    if major not in SUPPORTED_MAJOR:
        raise EngineError(f"TensorRT {tensorrt.__version__} found; Refinery supports 10.x and 11.x")
    return tensorrt


def tensorrt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise EngineError(f"cannot read TensorRT version {version!r}") from None


def network_flags(trt: Any) -> int:
    """Creation flags for a strongly typed network: STRONGLY_TYPED where the enum has it
    (10.x: required for FP16 from the graph; 11.x: accepted, every network is typed)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def profile_shapes(profile: Profile, channels: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) NCHW shapes for ``IOptimizationProfile.set_shape``."""
    return tuple(
        (s.batch, channels, s.height, s.width) for s in (profile.min, profile.opt, profile.max)
    )


def check_profile_within(profile: Profile, exported: Profile) -> None:
    """A plan's profile must lie inside the range the graph was exported and checked for."""
    problems = []
    for dim in ("batch", "height", "width"):
        low, high = getattr(profile.min, dim), getattr(profile.max, dim)
        elow, ehigh = getattr(exported.min, dim), getattr(exported.max, dim)
        if low < elow or high > ehigh:
            problems.append(f"{dim} [{low}, {high}] outside the exported [{elow}, {ehigh}]")
    if profile.multiple % exported.multiple:
        problems.append(f"sizes must stay multiples of {exported.multiple}")
    if problems:
        raise EngineMismatch(f"--shapes {profile}: " + "; ".join(problems))


def check_plan(record: dict[str, Any], *, gpu: str, tensorrt_version: str) -> None:
    """Refuse a plan built for another GPU model or TensorRT version (plans are not portable)."""
    problems = []
    if record.get("gpu") != gpu:
        problems.append(f"built on GPU {record.get('gpu')!r}, this is {gpu!r}")
    if record.get("tensorrt_version") != tensorrt_version:
        problems.append(
            f"built with TensorRT {record.get('tensorrt_version')}, this is {tensorrt_version}"
        )
    if problems:
        raise EngineMismatch(
            "TensorRT plan does not fit this machine: "
            + "; ".join(problems)
            + ". Rebuild it here: refinery build ENGINE_DIR --backend tensorrt --fp16"
        )


def gpu_identity(device: int = 0) -> dict[str, str]:
    if not torch.cuda.is_available():
        raise EngineError("the tensorrt backend needs a CUDA GPU; none is visible")
    major, minor = torch.cuda.get_device_capability(device)
    return {"gpu": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def build_plan(
    engine_dir: str | Path,
    *,
    fp16: bool = True,
    profile: Profile | None = None,
    batch: int = DEFAULT_BATCH,
    workspace_gib: float = 4.0,
    device: int = 0,
) -> EngineSpec:
    """Build ``model.plan`` for this GPU and TensorRT version; record it in ``engine.json``.
    Without ``profile`` the plan takes batches up to ``batch`` (a refine job's ``--batch``) at
    up to twice the training size (``Profile.for_plan``)."""
    trt = import_tensorrt()
    spec = read_spec(engine_dir)
    profile = profile or spec.profile.for_plan(batch)
    check_profile_within(profile, spec.profile)
    identity = gpu_identity(device)
    if fp16:
        spec = ensure_fp16_graph(engine_dir, spec)
        graph = verify_file(engine_dir, spec.builds["onnx-fp16"])
    else:
        graph = verify_file(engine_dir, spec.model)

    with torch.cuda.device(device):  # the builder times kernels on the current device
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(graph)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT could not parse {graph}: {errors}")
        config = builder.create_builder_config()
        workspace = int(workspace_gib * (1 << 30))
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        optimisation = builder.create_optimization_profile()
        low, opt, high = profile_shapes(profile, spec.io.graph_channels)
        optimisation.set_shape(spec.model["input"], low, opt, high)
        config.add_optimization_profile(optimisation)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError("TensorRT failed to build the plan; its log above says why")
    plan = Path(engine_dir) / PLAN_FILE
    write_atomic(plan, bytes(serialized))
    spec = spec.with_build(
        "tensorrt",
        {
            "file": PLAN_FILE,
            "sha256": sha256_file(plan),
            "tensorrt_version": trt.__version__,
            **identity,
            "precision": "fp16" if fp16 else "fp32",
            "strongly_typed": True,
            "graph": graph.name,
            "profile": profile.as_dict(),
            "workspace_gib": workspace_gib,
        },
    )
    write_spec(engine_dir, spec)
    return spec


# TensorRT data types by enum name -> torch dtypes (``trt.DataType.HALF.name == "HALF"``)
TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype)).rsplit(".", 1)[-1]
    if name not in TORCH_DTYPES:
        raise EngineError(f"TensorRT tensor type {name} has no torch equivalent here")
    return TORCH_DTYPES[name]


class TensorRTEngine(Engine):
    """A deserialised plan on ``cuda:N``: the plan, its execution context and this engine's
    stream all belong to that device (``torch.cuda.set_device`` first, so a torchrun rank's
    plan never lands on GPU 0); input and output types are read from the plan."""

    backend = "tensorrt"

    def __init__(self, spec: EngineSpec, engine_dir: str | Path, *, device: str = "cuda"):
        super().__init__(spec, engine_dir)
        record = spec.builds.get("tensorrt")
        if record is None:
            raise EngineError(
                f"{engine_dir}: no TensorRT plan; run 'refinery build {engine_dir} "
                "--backend tensorrt --fp16' on this machine first"
            )
        trt = import_tensorrt()
        index = cuda_index(device)
        if index is None:
            raise EngineError(f"the tensorrt backend runs on a CUDA device, not {device!r}")
        check_plan(record, gpu=gpu_identity(index)["gpu"], tensorrt_version=trt.__version__)
        plan = verify_file(engine_dir, record)
        self.device = torch.device("cuda", index)
        self.profile = Profile.from_dict(record["profile"])
        self.precision = record["precision"]
        self.make_stream()  # sets the device: TensorRT allocates on the current one
        with torch.cuda.device(self.device):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.plan = runtime.deserialize_cuda_engine(plan.read_bytes())
            if self.plan is None:
                raise EngineError(f"{plan}: TensorRT could not deserialise the plan")
            self.context = self.plan.create_execution_context()
        if self.context is None:
            raise EngineError(
                f"{plan}: TensorRT could not create an execution context (out of device "
                f"memory on {self.device} for the profile's largest shape {self.profile.max}? "
                "rebuild with a smaller --batch or --shapes)"
            )
        names = [self.plan.get_tensor_name(i) for i in range(self.plan.num_io_tensors)]
        inputs = [n for n in names if self.plan.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"{plan}: expected one input and one output, got {names}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = torch_dtype(self.plan.get_tensor_dtype(self.input_name))
        self.output_dtype = torch_dtype(self.plan.get_tensor_dtype(self.output_name))

    def _run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) on this engine's device and stream (``run_tensor`` enters both)."""
        x = x.to(self.input_dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise EngineMismatch(
                f"TensorRT refused input shape {tuple(x.shape)} (plan profile {self.profile})"
            )
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        y = torch.empty(shape, dtype=self.output_dtype, device=self.device)
        for name, tensor in ((self.input_name, x), (self.output_name, y)):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise EngineError(f"TensorRT refused the address of tensor {name!r}")
        # on this engine's own stream, never the legacy default one (TensorRT would synchronise)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError("TensorRT execution failed; its log above says why")
        return y.float()
