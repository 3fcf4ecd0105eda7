"""FP32 ONNX graph -> mixed-precision FP16 graph for strongly typed TensorRT builds.

TensorRT 11 removed the FP16 builder flag: precision comes from the graph's own types and the
network is strongly typed (TensorRT 10 takes the same graph with the STRONGLY_TYPED flag). This
pass writes that graph, the way ModelOpt's AutoCast does for the common case, without a new
dependency:

- the graph's inputs and outputs stay FP32 (a Cast after each input and before each output),
  so every backend has the same interface and the job never handles half floats;
- every FLOAT tensor becomes FLOAT16: weights, constants, Cast targets;
- ops whose arithmetic overflows or loses too much in FP16 run in FP32 between Casts:
  normalisation (its mean and variance statistics), reductions, pow/sqrt/div/exp/log/softmax
  (``KEEP_FP32``); their weights (e.g. InstanceNorm scale and bias) stay FP32 initializers;
- inputs the ONNX spec requires to be FP32 whatever the data type (Resize's roi and scales)
  stay FP32.

Graphs with subgraphs (If, Loop, Scan) are refused: the refiners have none.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.spec import FP16_FILE, MODEL_FILE, EngineSpec, sha256_file, verify_file, write_spec

KEEP_FP32 = frozenset(
    {
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceL2",
        "ReduceLogSumExp",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "Div",
        "Exp",
        "Log",
        "Softmax",
        "LogSoftmax",
    }
)
# (op_type, input position) that the ONNX spec types as float32 regardless of T
FP32_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        types[value.name] = value.type.tensor_type.elem_type
    return types


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Constant nodes holding FLOAT tensors become initializers, handled like weights."""
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1:
            attr = node.attribute[0]
            value = None
            if attr.name == "value" and attr.t.data_type == FLOAT:
                value = numpy_helper.to_array(attr.t)
            elif attr.name == "value_float":
                value = np.array(attr.f, dtype=np.float32)
            elif attr.name == "value_floats":
                value = np.array(list(attr.floats), dtype=np.float32)
            if value is not None:
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def to_fp16(model: onnx.ModelProto, *, keep_fp32: frozenset[str] = KEEP_FP32) -> onnx.ModelProto:
    """A new model computing in FP16 except ``keep_fp32`` ops; FP32 inputs and outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    graph = model.graph
    _refuse_subgraphs(graph)
    _constants_to_initializers(graph)
    types = _types(model)
    initializers = {t.name: t for t in graph.initializer}
    rename, head, tail = _boundary_casts(graph, initializers, types)
    wants32, wants16 = _halve_initializers(graph, initializers, keep_fp32)
    body = _rewrite_nodes(graph, initializers, rename, wants32, wants16, types, keep_fp32)
    del graph.node[:]
    graph.node.extend([*head, *body, *tail])
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def _refuse_subgraphs(graph: onnx.GraphProto) -> None:
    """A node with a subgraph (If, Loop, Scan) is not converted: fail on it."""
    for node in graph.node:
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            raise ValueError(
                f"to_fp16: node {node.name or node.op_type} has a subgraph; unsupported"
            )


def _is_float(types: dict[str, int], name: str) -> bool:
    if name not in types:
        raise ValueError(f"to_fp16: no type known for tensor {name!r}; run shape inference")
    return types[name] == FLOAT


def _boundary_casts(
    graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], types: dict[str, int]
) -> tuple[dict[str, str], list[onnx.NodeProto], list[onnx.NodeProto]]:
    """The graph keeps FP32 inputs and outputs: a Cast to FP16 after each float input and a
    Cast back before each float output; the renames that route the body through them."""
    rename: dict[str, str] = {}
    head: list[onnx.NodeProto] = []
    for value in graph.input:
        if value.name not in initializers and _is_float(types, value.name):
            rename[value.name] = f"{value.name}__fp16"
            head.append(
                helper.make_node(
                    "Cast",
                    [value.name],
                    [rename[value.name]],
                    to=FLOAT16,
                    name=f"{value.name}__to_fp16",
                )
            )
    tail: list[onnx.NodeProto] = []
    for value in graph.output:
        if _is_float(types, value.name):
            rename[value.name] = f"{value.name}__fp16"
            tail.append(
                helper.make_node(
                    "Cast",
                    [rename[value.name]],
                    [value.name],
                    to=FLOAT,
                    name=f"{value.name}__to_fp32",
                )
            )
    return rename, head, tail


def _halve_initializers(
    graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], keep_fp32: frozenset[str]
) -> tuple[dict[str, bool], dict[str, bool]]:
    """Float initializers to FP16 where a consumer wants FP16; one wanted in both precisions
    keeps its FP32 tensor and gains an FP16 copy named ``<name>__fp16``."""
    # which precision each consumer of a float initializer wants
    wants32: dict[str, bool] = defaultdict(bool)
    wants16: dict[str, bool] = defaultdict(bool)
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in initializers and initializers[name].data_type == FLOAT:
                if node.op_type in keep_fp32 or (node.op_type, position) in FP32_INPUTS:
                    wants32[name] = True
                else:
                    wants16[name] = True
    for name, tensor in list(initializers.items()):
        if tensor.data_type != FLOAT or not wants16[name]:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), name)
        if wants32[name]:
            half.name = f"{name}__fp16"
            graph.initializer.append(half)
        else:
            tensor.CopyFrom(half)
    return wants32, wants16


def _rewrite_nodes(
    graph: onnx.GraphProto,
    initializers: dict[str, onnx.TensorProto],
    rename: dict[str, str],
    wants32: dict[str, bool],
    wants16: dict[str, bool],
    types: dict[str, int],
    keep_fp32: frozenset[str],
) -> list[onnx.NodeProto]:
    """The body in FP16: each node rewired to its inputs' FP16 names, with Casts around the
    ops (and inputs) kept in FP32, and float Cast targets and constants made FP16."""
    body: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        tag = node.name or f"{node.op_type}_{index}"
        fp32_node = node.op_type in keep_fp32
        for position, name in enumerate(node.input):
            if not name:
                continue
            wants_fp32 = fp32_node or (node.op_type, position) in FP32_INPUTS
            if name in initializers and initializers[name].data_type in (FLOAT, FLOAT16):
                if not wants_fp32 and wants32[name] and wants16[name]:
                    node.input[position] = f"{name}__fp16"
                continue
            source = rename.get(name, name)
            node.input[position] = source
            if wants_fp32 and _is_float(types, name):
                cast = f"{source}__to_fp32__{tag}"
                body.append(
                    helper.make_node(
                        "Cast", [source], [cast], to=FLOAT, name=f"{tag}__in{position}"
                    )
                )
                node.input[position] = cast
        after = []
        for position, name in enumerate(node.output):
            target = rename.get(name, name)
            node.output[position] = target
            if fp32_node and name and _is_float(types, name):
                node.output[position] = f"{target}__fp32"
                after.append(
                    helper.make_node(
                        "Cast",
                        [f"{target}__fp32"],
                        [target],
                        to=FLOAT16,
                        name=f"{tag}__out{position}",
                    )
                )
        _halve_attributes(node)
        body.append(node)
        body.extend(after)
    return body


def _halve_attributes(node: onnx.NodeProto) -> None:
    """A Cast to FLOAT now casts to FLOAT16; a ConstantOfShape's FLOAT value becomes FLOAT16."""
    if node.op_type == "Cast":
        for attr in node.attribute:
            if attr.name == "to" and attr.i == FLOAT:
                attr.i = FLOAT16
    if node.op_type in ("ConstantOfShape",) and node.attribute:
        tensor = node.attribute[0].t
        if tensor.data_type == FLOAT:
            node.attribute[0].t.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16))
            )


def convert_file(source: str, target: str) -> onnx.ModelProto:
    model = to_fp16(onnx.load(source))
    onnx.save(model, target)
    return model


def ensure_fp16_graph(engine_dir: str | Path, spec: EngineSpec) -> EngineSpec:
    """Write ``model.fp16.onnx`` from ``model.onnx`` (once) and record it in the spec."""
    engine_dir = Path(engine_dir)
    record = spec.builds.get("onnx-fp16")
    if record and (engine_dir / record["file"]).exists():
        verify_file(engine_dir, record)
        return spec
    source = verify_file(engine_dir, spec.model)
    target = engine_dir / FP16_FILE
    tmp = engine_dir / f".{FP16_FILE}.tmp"
    convert_file(str(source), str(tmp))
    tmp.replace(target)
    spec = spec.with_build(
        "onnx-fp16",
        {
            "file": FP16_FILE,
            "sha256": sha256_file(target),
            "from": MODEL_FILE,
            "precision": "fp16",
            "keep_fp32": sorted(KEEP_FP32),
            "io_dtype": "float32",
        },
    )
    write_spec(engine_dir, spec)
    return spec
