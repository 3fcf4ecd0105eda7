"""The adversarial training loop and its one driver, shared by SimGAN, SG-GAN and SPIGAN.

A method supplies its networks, optimisers and its step functions (see ``Method``); the loop
owns everything around them: the schedule (task-network pretraining for a method that has
one, generator pretraining, discriminator pretraining, then K_g generator steps per K_d
discriminator steps, as Shrivastava et al. Algorithm 1), the
non-finite guard, TensorBoard scalars, sample sheets, checkpoints and exact resume. ``fit`` is
the one driver: one process, or N under ``torchrun --nproc_per_node N`` (every method).

Steps. Each step returns a ``Step``: its named losses and a ``carry``, what the next step
needs. The loop hands the last generator step's carry to the first discriminator step (SG-GAN's
translations; None for SimGAN, whose discriminator refines a fresh batch as Algorithm 1 does),
and a discriminator step's carry to the method's ``task_step`` when it has one (SPIGAN's T and
P update on the batch its discriminator step generated).

Several processes (data parallel). Every rank builds the same networks, takes its own slice of
the shards (``rank::world_size``; of the samples within them where shards are fewer than
ranks, see ``train.data``) and, after each backward, averages its gradients with the
others' (``Ranks.average_gradients``: one flattened all-reduce per update, called by
``update``), so every rank's weights and optimiser stay identical. What differs per rank is
saved per rank: each writes its history buffer or pools, stream positions and RNG into the
checkpoint (``state.json`` for rank 0, ``state.rankR.json`` for the others), and each resumes
its own, so N iterations straight equal N/2 + resume + N/2 on any number of ranks. A resume
must use the world size the checkpoint was written with. A stop request (SIGTERM, SIGINT, a
method's early stop) and a non-finite loss on any rank are agreed by all ranks with one
all-reduce at every iteration boundary, so all ranks checkpoint the same iteration, or all
raise, and none waits forever for another. Rank 0 writes weights, optimisers, TensorBoard and
sheets.

Run directory::

    RUN/config.yaml                     resolved config
    RUN/checkpoints/iter-NNNNNNNN/      one checkpoint (written to a temp name, then renamed)
        <module>.safetensors            weights of each network
        optimisers.pt                   optimiser (and grad-scaler) states, loaded weights_only
        state.safetensors, state.json   method state: history buffer, stream positions, RNGs
        state.rankR.{safetensors,json}  the same for rank R > 0 of a multi-process run
        generator.json, config.yaml     what ``refinery export`` needs: the generator to deploy
    RUN/checkpoints/latest              name of the newest complete checkpoint
    RUN/tb/                             TensorBoard events
    RUN/samples/iter-NNNNNNNN.png       synthetic / refined / real sheets
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
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
    """Iterations 0.. of one run: pretrain the task networks (SPIGAN's T and P, on the
    synthetic labels alone), pretrain G, pretrain D, then alternating steps."""

    pretrain_generator: int
    pretrain_discriminator: int
    steps: int  # alternating iterations, each K_g generator + K_d discriminator updates
    k_g: int = 1
    k_d: int = 1
    pretrain_task: int = 0  # iterations of the method's ``task_pretrain_step`` alone, first

    @property
    def pretrain(self) -> int:
        """Iterations before the first adversarial one."""
        return self.pretrain_task + self.pretrain_generator + self.pretrain_discriminator

    @property
    def total(self) -> int:
        return self.pretrain + self.steps

    def phase(self, iteration: int) -> str:
        if iteration < self.pretrain_task:
            return "pretrain-task"
        if iteration < self.pretrain_task + self.pretrain_generator:
            return "pretrain-generator"
        if iteration < self.pretrain:
            return "pretrain-discriminator"
        return "adversarial"


@dataclass
class Step:
    """One update's named scalar losses, and what the next step needs from it (``carry``)."""

    losses: dict[str, torch.Tensor]
    carry: Any = None


class Ranks:
    """The processes of one run (torchrun's ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``; one
    process when they are absent) and the collectives the loop and the methods use. With one
    process every collective is a no-op, so a single-process run never touches
    ``torch.distributed``."""

    def __init__(self, rank: int = 0, local_rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not among {world_size} processes")
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.device = torch.device("cpu")  # where collectives' tensors live (cuda for nccl)

    @classmethod
    def from_environment(cls) -> Ranks:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def average_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        """Replace each gradient by its mean over the ranks: one all-reduce of them flattened."""
        if not self.distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        for grad, mean in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(mean)

    def broadcast(self, modules: Iterable[nn.Module]) -> None:
        """Give every rank rank 0's weights and buffers."""
        if not self.distributed:
            return
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true if it is true on any rank (one all-reduce)."""
        if not self.distributed:
            return tuple(bool(f) for f in flags)
        agreed = torch.tensor([float(f) for f in flags], device=self.device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
        return tuple(bool(v) for v in agreed.tolist())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


SINGLE = Ranks()


def update(
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss: torch.Tensor,
    ranks: Ranks = SINGLE,
) -> None:
    """One optimiser update on ``loss``: backward (scaled), gradients averaged over the ranks,
    step (skipped by the scaler on inf/NaN, on every rank alike: the mean of a non-finite
    gradient is non-finite everywhere) and the scaler's update."""
    optimiser.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    ranks.average_gradients(p for group in optimiser.param_groups for p in group["params"])
    scaler.step(optimiser)
    scaler.update()


class Method(Protocol):
    """What a trainer gives the loop (``task_step`` and ``task_pretrain_step`` are optional:
    SPIGAN's T and P; the second is needed only by a schedule with ``pretrain_task``)."""

    modules: dict[str, nn.Module]
    optimisers: dict[str, torch.optim.Optimizer]

    def generator_step(self, *, pretrain: bool) -> Step: ...

    def discriminator_step(self, carry: Any = None) -> Step: ...

    def images_per_iteration(self, phase: str) -> int: ...

    def sample_sheet(self) -> np.ndarray: ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...

    def generator_info(self) -> dict[str, Any]:
        """The deployable generator, written to each checkpoint as ``generator.json``:
        method, module key, registered network and its keyword arguments, domain, image
        component, pixel kind and range (the ``engines`` package exports from this alone)."""
        ...


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _state_stem(rank: int) -> str:
    """Rank 0's method state is ``state.*`` (the one-process layout); rank R's ``state.rankR.*``."""
    return "state" if rank == 0 else f"state.rank{rank}"


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

    def save(self, method: Method, iteration: int, config: Any, ranks: Ranks = SINGLE) -> Path:
        """Write checkpoint ``iter-NNNNNNNN`` under a temp name and rename it: every rank writes
        its own method state into the temp directory, rank 0 the rest, then renames."""
        name = f"iter-{iteration:08d}"
        final = self.checkpoints / name
        tmp = self.checkpoints / f".{name}.tmp"
        if ranks.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        ranks.barrier()
        tensors, meta = method.state()
        stem = _state_stem(ranks.rank)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp / f"{stem}.safetensors"),
        )
        (tmp / f"{stem}.json").write_text(
            json.dumps(
                {
                    "iteration": iteration,
                    "rank": ranks.rank,
                    "world_size": ranks.world_size,
                    "rng": _rng_state(),
                    "method": meta,
                }
            )
        )
        ranks.barrier()
        if ranks.is_main:
            for key, module in method.modules.items():
                weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
                save_file(weights, str(tmp / f"{key}.safetensors"))
            torch.save(
                {k: opt.state_dict() for k, opt in method.optimisers.items()},
                tmp / "optimisers.pt",
            )
            write_yaml(tmp / "config.yaml", config)
            (tmp / "generator.json").write_text(json.dumps(method.generator_info(), indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            marker_tmp = self.checkpoints / ".latest.tmp"
            marker_tmp.write_text(name)
            os.replace(marker_tmp, self.checkpoints / "latest")
        ranks.barrier()  # no rank goes on before the checkpoint is complete
        return final

    def load(self, method: Method, checkpoint: Path, ranks: Ranks = SINGLE) -> int:
        """Restore a checkpoint into the method, this rank's own state included; returns the
        iteration to continue from. The world size must be the one it was written with."""
        written_by = int(json.loads((checkpoint / "state.json").read_text()).get("world_size", 1))
        if written_by != ranks.world_size:
            raise ValueError(
                f"{checkpoint} was written by {written_by} process(es); resume it with "
                f"{written_by} (torchrun --nproc_per_node {written_by}), not "
                f"{ranks.world_size}: each rank resumes its own buffers, streams and RNG"
            )
        for key, module in method.modules.items():
            module.load_state_dict(load_file(str(checkpoint / f"{key}.safetensors")))
        states = torch.load(checkpoint / "optimisers.pt", weights_only=True)
        for key, opt in method.optimisers.items():
            opt.load_state_dict(states[key])
        stem = _state_stem(ranks.rank)
        info = json.loads((checkpoint / f"{stem}.json").read_text())
        method.load_state(load_file(str(checkpoint / f"{stem}.safetensors")), info["method"])
        _set_rng_state(info["rng"])
        return int(info["iteration"])

    def save_sheet(self, iteration: int, sheet: np.ndarray) -> Path:
        return sheets.save_png(self.path / "samples" / f"iter-{iteration:08d}.png", sheet)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _values(losses: dict[str, torch.Tensor]) -> tuple[dict[str, float], list[str]]:
    """The losses as floats and the non-finite ones, ``name=value``: one CPU-GPU sync per
    iteration (the losses of each device stacked and copied at once), not one per loss."""
    kept = {k: v.detach() for k, v in losses.items() if v is not None}
    devices: dict[torch.device, list[str]] = {}
    for key, value in kept.items():
        devices.setdefault(value.device, []).append(key)
    read: dict[str, float] = {}
    for keys in devices.values():
        stacked = torch.stack([kept[k].float().reshape(()) for k in keys])
        read.update(zip(keys, stacked.tolist(), strict=True))
    values = {k: read[k] for k in kept}
    return values, [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]


def _wants_to_stop(method: Method, values: dict[str, float]) -> bool:
    """A method may end training early (SPIGAN's rule) by defining ``should_stop(values)``."""
    should_stop = getattr(method, "should_stop", None)
    return bool(should_stop(values)) if callable(should_stop) else False


def data_wait(method: Method) -> float:
    """Seconds the method's streams have kept the loop waiting for batches (``waited``)."""
    return sum(getattr(s, "waited", 0.0) for s in getattr(method, "streams", ()))


@contextlib.contextmanager
def frozen_heap():
    """Leave the objects alive when training starts (torch, the modules, the streams) out of the
    garbage collector's passes until it ends (``gc.freeze``). Every batch makes thousands of
    small label objects, and the collections they set off otherwise walk that whole heap again
    and again: frozen, the gaze data feed spends 40% less CPU per sample on the loop's process
    (``benchmarks.train_speed``, feed: 61 µs against 103 with two decoding processes). Already
    frozen (a caller's choice): left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.collect()  # garbage left from setting up is collected, not frozen with the rest
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _iteration(method: Method, schedule: Schedule, phase: str) -> dict[str, torch.Tensor]:
    """The updates of one iteration, in order; each step's carry goes to the step that needs it."""
    losses: dict[str, torch.Tensor] = {}
    task_step = getattr(method, "task_step", None)

    def discriminate(carry: Any) -> None:
        step = method.discriminator_step(carry)
        losses.update(step.losses)
        if task_step is not None:  # SPIGAN: T and P on what the discriminator step generated
            losses.update(task_step(step.carry).losses)

    if phase == "pretrain-task":
        losses.update(method.task_pretrain_step().losses)
    elif phase == "pretrain-generator":
        losses.update(method.generator_step(pretrain=True).losses)
    elif phase == "pretrain-discriminator":
        discriminate(None)
    else:
        carry = None
        for _ in range(schedule.k_g):
            step = method.generator_step(pretrain=False)
            losses.update(step.losses)
            carry = step.carry
        for i in range(schedule.k_d):
            discriminate(carry if i == 0 else None)  # later D steps draw their own batches
    return losses


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
    ranks: Ranks = SINGLE,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> int:
    """Run iterations ``start .. schedule.total`` (or stop after ``stop_after`` of them).

    Checkpoints every ``checkpoint_every`` iterations and at the end; a non-finite loss raises
    ``NonFiniteLoss`` before anything is written for that iteration, so the newest checkpoint
    is the last good one. Stops and non-finite losses are agreed by all ranks. Logs
    ``time/data_wait_share``: the share of the wall time the streams kept the loop waiting.
    Returns the iteration it stopped at.
    """
    end = schedule.total if stop_after is None else min(schedule.total, start + stop_after)
    timer, images, waited = time.perf_counter(), 0, data_wait(method)
    is_main = ranks.is_main
    with stop_requests() as stop, frozen_heap():
        for iteration in range(start, end):
            phase = schedule.phase(iteration)
            losses = _iteration(method, schedule, phase)
            values, bad = _values(losses)
            images += method.images_per_iteration(phase)
            done = iteration + 1
            if not bad and (done % log_every == 0 or done == end):
                seconds = max(time.perf_counter() - timer, 1e-9)
                values["speed/images_per_s"] = images / seconds
                values["time/data_wait_share"] = (data_wait(method) - waited) / seconds
                for name, opt in method.optimisers.items():
                    values[f"lr/{name}"] = opt.param_groups[0]["lr"]
                if is_main and run.writer is not None:
                    for key, value in values.items():
                        run.writer.add_scalar(key, value, done)
                if progress is not None:
                    progress(done, values)
                timer, images, waited = time.perf_counter(), 0, data_wait(method)
            # one all-reduce: does any rank have a non-finite loss, or want to stop?
            wants = bool(stop["signal"]) or _wants_to_stop(method, values)
            any_bad, any_stop = ranks.any(bool(bad), wants)
            if any_bad:  # before anything of this iteration is saved
                where = ", ".join(bad) if bad else "on another rank"
                raise NonFiniteLoss(f"iteration {iteration} ({phase}): non-finite loss {where}")
            if is_main and done % sample_every == 0:
                run.save_sheet(done, method.sample_sheet())
            if done % checkpoint_every == 0 and done != end:
                run.save(method, done, config, ranks)
            if any_stop:
                end = done  # checkpoint below and return; --resume continues from here
                break
    if end > start:
        run.save(method, end, config, ranks)
        if is_main:
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
    make_method: Callable[[torch.device, Ranks], Method],
    config: Any,
    *,
    out: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    device: str | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train a method into the run directory ``out``: one process, or one of N started by
    ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``; gloo on CPU, NCCL on CUDA, one GPU
    per local rank). Refuses to overwrite a run unless resuming, restores the newest checkpoint
    (each rank its own state), writes the resolved config, runs the loop. Returns the newest
    checkpoint's path."""
    ranks = Ranks.from_environment()
    if device is None:
        device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    owns_group = ranks.distributed and not torch.distributed.is_initialized()
    if owns_group:
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        ranks.device = dev
    run = RunDir(out, writer=ranks.is_main)
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        latest = run.latest()
        if latest is not None and not resume:
            raise FileExistsError(
                f"{out} already holds a run (checkpoint {latest.name}); pass --resume"
            )
        method = make_method(dev, ranks)
        for stream in getattr(method, "streams", ()):
            # an unlabeled synthetic set is refused here, before training, the same on every
            # rank (each checks the whole set), so no rank is left waiting in the broadcast
            check = getattr(stream, "check_labeled", None)
            if check is not None:
                check()
        ranks.broadcast(method.modules.values())
        if ranks.rank:  # rank 0 keeps the one-process stream; the others draw their own
            torch.manual_seed(int(getattr(config, "seed", 0)) + 1_000_003 * ranks.rank)
        start = run.load(method, latest, ranks) if resume and latest is not None else 0
        if ranks.is_main:
            write_yaml(run.path / "config.yaml", config)
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
            ranks=ranks,
            progress=progress,
        )
    finally:
        run.close()
        if owns_group:
            torch.distributed.destroy_process_group()
    return run.latest()
