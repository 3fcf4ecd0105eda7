"""A trained generator -> an engine directory: ``model.onnx`` + ``engine.json`` (+ weights).

``export_run`` reads what the trainer wrote into the checkpoint (``generator.json``: method,
module, network, pixel range; ``config.yaml``: the recipe) so every method (SimGAN, SG-GAN,
SPIGAN) exports the same way. ``export_module`` does the work for any registered generator:

1. the weights go to ``model.safetensors`` (the torch backend rebuilds the network from them);
2. ``torch.onnx.export(..., dynamo=True)`` with dynamic batch, height and width whose ranges
   are the profile's (a stride multiple becomes a derived dimension, ``multiple * Dim``);
3. ``onnx.checker`` with full type checking;
4. parity: ONNX Runtime against the eager module at the optimal shape and at a second size
   in the profile; the largest difference is recorded and anything over 1e-5 is an error;
5. ``engine.json`` is written last, atomically: an engine directory without it is not done.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from engines.spec import (
    MODEL_FILE,
    WEIGHTS_FILE,
    EngineError,
    EngineSpec,
    PixelIO,
    Profile,
    Shape,
    sha256_file,
    write_spec,
)
from refinery import __version__
from refinery.registry import build_network, network_info

PARITY_TOLERANCE = 1e-5  # max |ORT - torch| on [-1, 1] outputs, FP32
INPUT_NAME, OUTPUT_NAME = "images", "refined"


def _checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    checkpoints = run_dir / "checkpoints"
    if checkpoint is None:
        marker = checkpoints / "latest"
        if not marker.exists():
            raise EngineError(f"{run_dir}: no checkpoints/latest; is this a training run?")
        checkpoint = marker.read_text().strip()
    path = checkpoints / checkpoint
    if not path.is_dir():
        raise EngineError(f"{run_dir}: no checkpoint {checkpoint!r} under checkpoints/")
    return path


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str | None = None,
    profile: Profile | None = None,
    opset: int | None = None,
) -> EngineSpec:
    """Export the generator of a training run (its newest checkpoint unless named)."""
    run_dir = Path(run_dir)
    path = _checkpoint(run_dir, checkpoint)
    info_file = path / "generator.json"
    if not info_file.exists():
        raise EngineError(f"{path}: no generator.json (the trainer that wrote it is too old)")
    info = json.loads(info_file.read_text())
    weights = path / f"{info['module']}.safetensors"
    module = build_network(info["network"], **info["kwargs"])
    module.load_state_dict(load_file(str(weights)))
    recipe = (
        yaml.safe_load((path / "config.yaml").read_text())
        if (path / "config.yaml").exists()
        else {}
    )
    low, high = info["pixel_range"]
    pixels = PixelIO(
        image_component=info["image_component"],
        pixel_kind=info["pixel_kind"],
        channels=int(info["channels"]),
        low=float(low),
        high=float(high),
        noise_channels=int(info["kwargs"].get("noise", 0)),
    )
    multiple = int(info.get("size_multiple", 1))
    return export_module(
        module,
        out_dir,
        network=info["network"],
        kwargs=info["kwargs"],
        method=info["method"],
        domain=info["domain"],
        pixels=pixels,
        profile=profile or Profile.around(*info["input_size"], multiple=multiple),
        source={
            "run": str(run_dir.resolve()),
            "checkpoint": path.name,
            "checkpoint_sha256": sha256_file(weights),
            "recipe": recipe,
        },
        opset=opset,
    )


def _dims(profile: Profile) -> dict[int, Any]:
    """torch.export dimensions for (B, C, H, W); a fixed dimension is left static."""
    Dim = torch.export.Dim
    dims: dict[int, Any] = {}
    for axis, name in ((0, "batch"), (2, "height"), (3, "width")):
        low, high = getattr(profile.min, name), getattr(profile.max, name)
        if low == high:
            continue
        step = profile.multiple if axis else 1
        if step > 1:
            dims[axis] = step * Dim(f"{name}_over_{step}", min=low // step, max=high // step)
        else:
            dims[axis] = Dim(name, min=low, max=high)
    return dims


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress lines and warns about torchvision's absence."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _example_size(profile: Profile) -> tuple[int, int]:
    """The traced (H, W): the optimal size, but at least 2m for a stride multiple m, since
    torch.export fixes a dimension ``m * Dim`` whose example value is m."""
    m = profile.multiple
    sizes = []
    for dim in ("height", "width"):
        value = getattr(profile.opt, dim)
        if m > 1 and getattr(profile.min, dim) != getattr(profile.max, dim):
            value = min(max(value, 2 * m), getattr(profile.max, dim) // m * m)
        sizes.append(value)
    return sizes[0], sizes[1]


def _parity_sizes(profile: Profile) -> list[Shape]:
    """The optimal shape and a second, different one inside the profile."""
    m = profile.multiple

    def other(dim: str) -> int:
        opt, low, high = (getattr(s, dim) for s in (profile.opt, profile.min, profile.max))
        steps = (1,) if dim == "batch" else (m,)
        for value in (opt + 2 * steps[0], opt - steps[0], low, high):
            if low <= value <= high and value != opt:
                return value
        return opt

    first = Shape(
        max(profile.min.batch, min(profile.opt.batch, 4)), profile.opt.height, profile.opt.width
    )
    second = Shape(max(profile.min.batch, min(other("batch"), 5)), other("height"), other("width"))
    return [first] if second == first else [first, second]


def parity(
    module: nn.Module, onnx_path: str | Path, shapes: list[Shape], channels: int
) -> tuple[float, float]:
    """Largest |ONNX Runtime - torch| over random [-1, 1] inputs of the given shapes, and the
    largest |torch FP32 - torch FP64| on the same inputs: the float32 noise of the reference."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    exact = copy.deepcopy(module).double()
    rng = np.random.default_rng(0)
    worst = noise = 0.0
    for shape in shapes:
        x = rng.uniform(-1, 1, (shape.batch, channels, shape.height, shape.width))
        x = x.astype(np.float32)
        with torch.inference_mode():
            expected = module(torch.from_numpy(x)).numpy()
            reference = exact(torch.from_numpy(x).double()).numpy()
        (got,) = session.run(None, {INPUT_NAME: x})
        if got.shape != expected.shape:
            raise EngineError(f"exported graph gives shape {got.shape}, torch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
        noise = max(noise, float(np.abs(expected - reference).max()))
    return worst, noise


def export_module(
    module: nn.Module,
    out_dir: str | Path,
    *,
    network: str,
    kwargs: dict[str, Any],
    method: str,
    domain: str,
    pixels: PixelIO,
    profile: Profile,
    source: dict[str, Any],
    opset: int | None = None,
    tolerance: float | None = None,
) -> EngineSpec:
    """Write ``module`` (a registered ``network`` built with ``kwargs``) as an engine.

    Parity: ONNX Runtime must match torch within ``tolerance``; by default 1e-5, or 4x torch's
    own float32 error against float64 where that is larger (deep instance-norm generators:
    SPIGAN's 9 ResNet blocks are ~1e-5 off the exact result in float32 already). Both figures
    are recorded in ``engine.json``.
    """
    import onnx

    if not network_info(network).fully_convolutional and profile.min != profile.max:
        raise EngineError(f"{network} is not fully convolutional; give a static profile")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").unlink(missing_ok=True)  # incomplete until rewritten below
    module = module.eval().requires_grad_(False).cpu()
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(out / WEIGHTS_FILE))

    batch = 2 if profile.max.batch >= 2 else 1
    example = torch.zeros(batch, pixels.graph_channels, *_example_size(profile))
    tmp = out / f".{MODEL_FILE}.tmp-{os.getpid()}"
    with _quiet_exporter():
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            dynamo=True,
            dynamic_shapes=(_dims(profile),),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    model = onnx.load(str(tmp))
    onnx.checker.check_model(model, full_check=True)
    os.replace(tmp, out / MODEL_FILE)

    shapes = _parity_sizes(profile)
    worst, noise = parity(module, out / MODEL_FILE, shapes, pixels.graph_channels)
    if tolerance is None:
        tolerance = max(PARITY_TOLERANCE, 4 * noise)
    if worst > tolerance:
        raise EngineError(
            f"{network}: ONNX Runtime differs from torch by {worst:.3g} (> {tolerance:g}); "
            "the export is not faithful"
        )
    spec = EngineSpec(
        name=network,
        method=method,
        domain=domain,
        io=pixels,
        profile=profile,
        model={
            "file": MODEL_FILE,
            "sha256": sha256_file(out / MODEL_FILE),
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        },
        weights={
            "file": WEIGHTS_FILE,
            "sha256": sha256_file(out / WEIGHTS_FILE),
            "network": network,
            "kwargs": dict(kwargs),
        },
        source=source,
        refinery_version=__version__,
        validation={
            "onnxruntime_vs_torch_max_abs": worst,
            "torch_fp32_vs_fp64_max_abs": noise,
            "tolerance": tolerance,
            "shapes": [str(s) for s in shapes],
        },
    )
    write_spec(out, spec)
    return spec
