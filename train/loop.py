"""The adversarial training loop shared by every method (SimGAN now; SG-GAN and SPIGAN next).

A method supplies its networks, optimisers and two step functions (see ``Method``); the loop
owns everything around them: the schedule (generator pretraining, discriminator pretraining,
then K_g generator steps per K_d discriminator steps, as Shrivastava et al. Algorithm 1), the
non-finite guard, TensorBoard scalars, sample sheets, checkpoints and exact resume.

Run directory::

    RUN/config.yaml                     resolved config
    RUN/checkpoints/iter-NNNNNNNN/      one checkpoint (written to a temp name, then renamed)
        <module>.safetensors            weights of each network
        optimisers.pt                   optimiser (and grad-scaler) states, loaded weights_only
        state.safetensors, state.json   method state: history buffer, stream positions, RNGs
        generator.json, config.yaml     what ``refinery export`` needs: the generator to deploy
    RUN/checkpoints/latest              name of the newest complete checkpoint
    RUN/tb/                             TensorBoard events
    RUN/samples/iter-NNNNNNNN.png       synthetic / refined / real sheets
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from refinery import sheets
from refinery.stopping import stop_requests
from train.config import write_yaml


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


@dataclass(frozen=True)
class Schedule:
    """Iterations 0.. of one run: pretrain G, pretrain D, then alternating steps."""

    pretrain_generator: int
    pretrain_discriminator: int
    steps: int  # alternating iterations, each K_g generator + K_d discriminator updates
    k_g: int = 1
    k_d: int = 1

    @property
    def total(self) -> int:
        return self.pretrain_generator + self.pretrain_discriminator + self.steps

    def phase(self, iteration: int) -> str:
        if iteration < self.pretrain_generator:
            return "pretrain-generator"
        if iteration < self.pretrain_generator + self.pretrain_discriminator:
            return "pretrain-discriminator"
        return "adversarial"


class Method(Protocol):
    """What a trainer gives the loop. Step functions return a dict of named scalar losses."""

    modules: dict[str, nn.Module]
    optimisers: dict[str, torch.optim.Optimizer]

    def generator_step(self, *, pretrain: bool) -> dict[str, torch.Tensor]: ...

    def discriminator_step(self) -> dict[str, torch.Tensor]: ...

    def images_per_iteration(self, phase: str) -> int: ...

    def sample_sheet(self) -> np.ndarray: ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...

    def generator_info(self) -> dict[str, Any]:
        """The deployable generator, written to each checkpoint as ``generator.json``:
        method, module key, registered network and its keyword arguments, domain, image
        component, pixel kind and range (the ``engines`` package exports from this alone)."""
        ...


def bare(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if hasattr(module, "module") else module


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


class RunDir:
    """Checkpoints, TensorBoard and sample sheets of one run (written by rank 0 only)."""

    def __init__(self, path: str | Path, *, writer: bool = True):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self._writer = None
        self._want_writer = writer

    @property
    def writer(self):
        if self._writer is None and self._want_writer:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path / "tb"))
        return self._writer

    def latest(self) -> Path | None:
        marker = self.checkpoints / "latest"
        if not marker.exists():
            return None
        return self.checkpoints / marker.read_text().strip()

    def save(self, method: Method, iteration: int, config: Any) -> Path:
        name = f"iter-{iteration:08d}"
        final = self.checkpoints / name
        tmp = self.checkpoints / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for key, module in method.modules.items():
            weights = {
                k: v.detach().cpu().contiguous() for k, v in bare(module).state_dict().items()
            }
            save_file(weights, str(tmp / f"{key}.safetensors"))
        torch.save(
            {k: opt.state_dict() for k, opt in method.optimisers.items()}, tmp / "optimisers.pt"
        )
        tensors, meta = method.state()
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp / "state.safetensors"),
        )
        (tmp / "state.json").write_text(
            json.dumps({"iteration": iteration, "rng": _rng_state(), "method": meta})
        )
        write_yaml(tmp / "config.yaml", config)
        (tmp / "generator.json").write_text(json.dumps(method.generator_info(), indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        marker_tmp = self.checkpoints / ".latest.tmp"
        marker_tmp.write_text(name)
        os.replace(marker_tmp, self.checkpoints / "latest")
        return final

    def load(self, method: Method, checkpoint: Path) -> int:
        """Restore a checkpoint into the method; returns the iteration to continue from."""
        for key, module in method.modules.items():
            bare(module).load_state_dict(load_file(str(checkpoint / f"{key}.safetensors")))
        states = torch.load(checkpoint / "optimisers.pt", weights_only=True)
        for key, opt in method.optimisers.items():
            opt.load_state_dict(states[key])
        info = json.loads((checkpoint / "state.json").read_text())
        method.load_state(load_file(str(checkpoint / "state.safetensors")), info["method"])
        _set_rng_state(info["rng"])
        return int(info["iteration"])

    def save_sheet(self, iteration: int, sheet: np.ndarray) -> Path:
        return sheets.save_png(self.path / "samples" / f"iter-{iteration:08d}.png", sheet)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _check_finite(losses: dict[str, torch.Tensor], iteration: int, phase: str) -> dict[str, float]:
    values = {k: float(v.detach()) for k, v in losses.items() if v is not None}  # CPU-GPU sync
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLoss(
            f"iteration {iteration} ({phase}): non-finite loss "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
        )
    return values


def _wants_to_stop(method: Method, values: dict[str, float]) -> bool:
    """A method may end training early (SPIGAN's rule) by defining ``should_stop(values)``."""
    should_stop = getattr(method, "should_stop", None)
    return bool(should_stop(values)) if callable(should_stop) else False


def train_loop(
    method: Method,
    schedule: Schedule,
    run: RunDir,
    *,
    config: Any,
    start: int = 0,
    stop_after: int | None = None,
    checkpoint_every: int = 500,
    log_every: int = 20,
    sample_every: int = 200,
    is_main: bool = True,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> int:
    """Run iterations ``start .. schedule.total`` (or stop after ``stop_after`` of them).

    Checkpoints every ``checkpoint_every`` iterations and at the end; a non-finite loss raises
    ``NonFiniteLoss`` before anything is written for that iteration, so the newest checkpoint
    is the last good one. Returns the iteration it stopped at.
    """
    end = schedule.total if stop_after is None else min(schedule.total, start + stop_after)
    timer, images = time.perf_counter(), 0
    with stop_requests() as stop:
        for iteration in range(start, end):
            phase = schedule.phase(iteration)
            losses: dict[str, torch.Tensor] = {}
            if phase == "pretrain-generator":
                losses.update(method.generator_step(pretrain=True))
            elif phase == "pretrain-discriminator":
                losses.update(method.discriminator_step())
            else:
                for _ in range(schedule.k_g):
                    losses.update(method.generator_step(pretrain=False))
                for _ in range(schedule.k_d):
                    losses.update(method.discriminator_step())
            values = _check_finite(losses, iteration, phase)  # before anything of it is saved
            images += method.images_per_iteration(phase)
            done = iteration + 1
            if done % log_every == 0 or done == end:
                seconds = time.perf_counter() - timer
                values["speed/images_per_s"] = images / max(seconds, 1e-9)
                for name, opt in method.optimisers.items():
                    values[f"lr/{name}"] = opt.param_groups[0]["lr"]
                if is_main and run.writer is not None:
                    for key, value in values.items():
                        run.writer.add_scalar(key, value, done)
                if progress is not None:
                    progress(done, values)
                timer, images = time.perf_counter(), 0
            if is_main and done % sample_every == 0:
                run.save_sheet(done, method.sample_sheet())
            if is_main and done % checkpoint_every == 0 and done != end:
                run.save(method, done, config)
            if stop["signal"] or _wants_to_stop(method, values):
                end = done  # checkpoint below and return; --resume continues from here
                break
    if is_main and end > start:
        run.save(method, end, config)
        run.save_sheet(end, method.sample_sheet())
    return max(end, start)


def image_tile(image: torch.Tensor, *, height: int | None = 96) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> an RGB uint8 tile for sample sheets (one channel as grey),
    enlarged by a whole factor to about ``height`` px so small crops stay visible (None: as is)."""
    unit = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    if unit.shape[0] == 1:
        rgb = np.repeat(unit[0][..., None], 3, axis=2)
    else:
        rgb = unit[:3].transpose(1, 2, 0)
    scale = max(1, height // rgb.shape[0]) if height else 1
    return np.ascontiguousarray(rgb.repeat(scale, 0).repeat(scale, 1))


def fit(
    make_method: Callable[[torch.device], Method],
    config: Any,
    *,
    out: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    device: str | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train a method (single process) into the run directory ``out``: refuse to overwrite a
    run unless resuming, restore the newest checkpoint, write the resolved config, run the
    loop. Returns the newest checkpoint's path."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = RunDir(out)
    run.path.mkdir(parents=True, exist_ok=True)
    latest = run.latest()
    if latest is not None and not resume:
        raise FileExistsError(
            f"{out} already holds a run (checkpoint {latest.name}); pass --resume"
        )
    method = make_method(dev)
    start = run.load(method, latest) if resume and latest is not None else 0
    write_yaml(run.path / "config.yaml", config)
    try:
        train_loop(
            method,
            config.schedule,
            run,
            config=config,
            start=start,
            stop_after=stop_after,
            checkpoint_every=config.checkpoint_every,
            log_every=config.log_every,
            sample_every=config.sample_every,
            progress=progress,
        )
    finally:
        run.close()
    return run.latest()
