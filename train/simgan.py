"""SimGAN: Shrivastava et al., "Learning from Simulated and Unsupervised Images through
Adversarial Training" (CVPR 2017), on the shared loop (``train.loop``).

Code (paper): ``refiner`` (R_θ), ``discriminator`` (D_φ), ``self_regularisation`` (λ·‖ψ(R(x)) −
ψ(x)‖₁, eq. 4), ``local_adversarial_loss`` (eq. 2 and 3, over all patches), ``HistoryBuffer``
(§2.3), ``refiner_step`` / ``discriminator_step`` (Algorithm 1, lines 3-7 and 8-11).

Schedule (§3.1): R is pretrained on self-regularisation alone, then D alone on the pretrained
R's images, then each iteration makes K_g refiner updates and K_d discriminator updates.
The values per preset are in ``train/recipes/simgan-*.yaml`` with their sources.

The real pool is read unlabeled (``labels=False``): SimGAN never looks at a real label, so a
real sample may be its image alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from refinery import sheets
from refinery.augment import Augment
from refinery.history import HistoryBuffer
from refinery.losses import (
    REAL,
    REFINED,
    FeaturePsi,
    local_adversarial_loss,
    make_psi,
    patch_accuracy,
    r1_penalty,
    self_regularisation,
)
from refinery.registry import build_network, network_info
from refinery.samples import spec
from train import methods
from train.config import OptimiserConfig, make_optimiser
from train.data import ImageStream, scaling_for
from train.loop import SINGLE, Ranks, Schedule, Step, image_tile, update
from train.methods import Method


@dataclass(frozen=True)
class SimGANConfig:
    domain: str = "gaze"
    image_key: str | None = None  # default: the domain's image component
    depth_range: tuple[float, float] | None = None  # mm, for 16-bit depth domains
    refiner: str = "simgan-refiner-gaze"
    # zeros: the paper's TF "SAME"; reflect (the recipes): no black frame for the refiner to
    # draw along the borders (refinery.nets.simgan). Missing from old runs' config: zeros.
    refiner_padding: str = "zeros"
    # N: input channels of seeded N(0, 1) noise the refiner learns to modulate (refinery.noise),
    # so it can add sensor noise a deterministic refiner cannot; 0 (the paper) builds none
    refiner_noise: int = 0
    # β of an exponential moving average of the refiner's weights (Yazıcı et al., "The Unusual
    # Effectiveness of Averaging in GAN Training", ICLR 2019): 0 (the paper) keeps none; above
    # 0 the average, not the last iterate, is what sheets show and ``refinery export`` compiles.
    # It starts as the pretrained refiner and follows every adversarial refiner update.
    refiner_ema: float = 0.0
    discriminator: str = "simgan-discriminator-gaze"
    # DiffAugment (refinery.augment): a comma-separated policy, e.g. "brightness,contrast,
    # translation,cutout", of random differentiable transforms applied to every image D sees,
    # real and refined, in its updates and in R's adversarial term, so a D with few real
    # images cannot learn them by heart. "" (the paper, and runs from before it) applies none.
    discriminator_augment: str = ""
    # γ of the R1 penalty (refinery.losses.r1_penalty; Mescheder et al., ICML 2018): D's loss
    # gains γ/2·E‖∇ₓ D(x)‖² on the real images it sees, a D that is smooth around them. 0 (the
    # paper, and runs from before it) computes none.
    discriminator_r1: float = 0.0
    channels: int = 1
    batch_size: int = 512
    pretrain_refiner_steps: int = 1000
    pretrain_discriminator_steps: int = 200
    steps: int = 10000
    k_g: int = 2
    k_d: int = 1
    self_reg_weight: float = 0.5  # λ
    psi: str = "identity"  # identity | mean-colour | gradients
    # A geometry term beside the paper's: μ·‖g(R(x)) − g(x)‖₁, g the frozen network of a
    # ``refinery train-task`` run directory (gaze: its look vector), so R may change how an eye
    # looks but is charged for what a task network reads from it. 0 (the paper) loads none.
    task_reg_weight: float = 0.0  # μ
    task_reg_network: str | None = None  # train-task output dir (model.safetensors, config.json)
    # Or, with no task_reg_network: E > 0 epochs of an appearance-robust gaze network
    # (``refinery train-task gaze --appearance``) that the run trains itself on its synthetic
    # shards (seed task_reg_seed) into RUN/task-reg/ before pretraining R, and holds frozen
    # (``hold_network``). 0 (the paper, and runs from before it) trains none.
    task_reg_epochs: int = 0
    task_reg_seed: int = 10
    buffer_size: int = 25600  # B
    refiner_optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    discriminator_optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    shuffle_buffer: int = 2000
    checkpoint_every: int = 500
    log_every: int = 20
    sample_every: int = 200
    seed: int = 0
    decode_workers: int = 2  # processes decoding samples ahead of the loop (0: on its own thread)
    cache: bool = True  # small images decoded once into a memory-mapped cache (train.cache)
    amp: bool = True  # float16 autocast + grad scaling, on CUDA only

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            pretrain_generator=self.pretrain_refiner_steps,
            pretrain_discriminator=self.pretrain_discriminator_steps,
            steps=self.steps,
            k_g=self.k_g,
            k_d=self.k_d,
        )


# -- the two steps of Algorithm 1 -------------------------------------------------------------


def refiner_step(
    refiner: nn.Module,
    discriminator: nn.Module,
    optimiser: torch.optim.Optimizer,
    synthetic: torch.Tensor,
    *,
    psi,
    weight: float,
    adversarial: bool,
    scaler: torch.amp.GradScaler,
    autocast: torch.autocast,
    ranks: Ranks = SINGLE,
    task_psi=None,
    task_weight: float = 0.0,
    augment: Augment | None = None,
) -> dict[str, torch.Tensor]:
    """One R update: L_R = ℓ_real(D(R(x))) + λ‖ψ(R(x)) − ψ(x)‖₁ (pretraining: the second term),
    plus μ‖g(R(x)) − g(x)‖₁ when a task network g is given (``task_psi``, μ ``task_weight``).
    With ``augment``, D judges augment(R(x)) and R learns through the transforms."""
    with autocast:
        refined = refiner(synthetic)  # (B, C, H, W) in [-1, 1]
        reg = self_regularisation(refined, synthetic, psi=psi, weight=weight)
        losses = {"refiner/self_reg": reg}
        if task_psi is not None:
            held = self_regularisation(refined, synthetic, psi=task_psi, weight=task_weight)
            losses["refiner/task_reg"] = held
            reg = reg + held
        loss = reg
        if adversarial:
            discriminator.requires_grad_(False)  # D is fixed for this update
            seen = augment(refined) if augment else refined
            adv = local_adversarial_loss(discriminator(seen), REAL)
            discriminator.requires_grad_(True)
            losses["refiner/adversarial"] = adv
            loss = adv + reg
    update(optimiser, scaler, loss, ranks)
    losses["refiner/total"] = loss
    return {k: v.detach() for k, v in losses.items()}


def discriminator_step(
    refiner: nn.Module,
    discriminator: nn.Module,
    optimiser: torch.optim.Optimizer,
    synthetic: torch.Tensor,
    real: torch.Tensor,
    buffer: HistoryBuffer,
    *,
    scaler: torch.amp.GradScaler,
    autocast: torch.autocast,
    ranks: Ranks = SINGLE,
    augment: Augment | None = None,
    r1: float = 0.0,
) -> dict[str, torch.Tensor]:
    """One D update on real images and refined ones, half current and half from the history;
    with ``augment``, on the augmented images, each its own draw; with ``r1`` (γ), plus
    γ/2·E‖∇ₓ D(x)‖² on the real images (x before augmentation)."""
    with torch.no_grad(), autocast:
        refined = refiner(synthetic).float()
    (fake,) = buffer.mix(refined)  # (B, C, H, W): b/2 current, b/2 history (§2.3)
    if r1:
        real = real.detach().requires_grad_(True)
    with autocast:
        # one forward over both halves: one kernel launch per layer
        both = torch.cat([real, fake])
        logits = discriminator(augment(both) if augment else both)  # (2B, 2, h, w)
        logits_real, logits_fake = logits[: len(real)], logits[len(real) :]
        loss_real = local_adversarial_loss(logits_real, REAL)
        loss_fake = local_adversarial_loss(logits_fake, REFINED)
        loss = loss_real + loss_fake
        losses = {"discriminator/real": loss_real, "discriminator/refined": loss_fake}
        if r1:
            penalty = r1_penalty(logits_real, real)
            losses["discriminator/r1"] = penalty
            loss = loss + 0.5 * r1 * penalty
    update(optimiser, scaler, loss, ranks)
    losses["discriminator/total"] = loss
    return {
        **{k: v.detach() for k, v in losses.items()},
        "discriminator/accuracy_real": patch_accuracy(logits_real, REAL),
        "discriminator/accuracy_refined": patch_accuracy(logits_fake, REFINED),
    }


@torch.no_grad()
def average(target: nn.Module, source: nn.Module, beta: float) -> None:
    """target ← β·target + (1 − β)·source, over parameters and buffers alike (β = 0: a copy)."""
    for t, s in zip(target.state_dict().values(), source.state_dict().values(), strict=True):
        if t.is_floating_point():
            t.lerp_(s, 1.0 - beta)
        else:
            t.copy_(s)


# -- the method the loop drives ---------------------------------------------------------------


def task_psi(config: SimGANConfig, device: torch.device) -> TaskPsi | None:
    """The frozen task network of ``config.task_reg_network`` as a ψ, or None when μ is 0.

    Its input must be what the refiner sees: the same domain and image size, scaled to [-1, 1]
    like the refiner's images (gaze: ``train.data.scaling_for``), so R(x) goes in as it is.
    """
    if config.task_reg_weight < 0:
        raise ValueError(f"task_reg_weight must be >= 0, got {config.task_reg_weight}")
    if not config.task_reg_weight:
        return None
    if not config.task_reg_network:
        raise ValueError(
            "task_reg_weight > 0 needs task_reg_network: a `refinery train-task` output "
            "directory (model.safetensors, config.json), or task_reg_epochs > 0 for a network "
            "the run trains itself on its synthetic shards"
        )
    from train.evaluation.downstream import load_task_model

    run = Path(config.task_reg_network)
    if not (run / "model.safetensors").is_file() or not (run / "config.json").is_file():
        raise ValueError(
            f"task_reg_network {str(run)!r}: no model.safetensors and config.json there "
            "(write them with `refinery train-task ... --out DIR`)"
        )
    model, task, info = load_task_model(run, device=str(device))
    if task.domain != config.domain or task.domain != "gaze":
        raise ValueError(
            f"task_reg_network {str(run)!r}: a {task.domain} network; the geometry term needs "
            f"a gaze network for a gaze refiner, this run refines {config.domain}"
        )
    if info.get("range") != [-1.0, 1.0] or info.get("channels") != config.channels:
        raise ValueError(
            f"task_reg_network {str(run)!r}: its input (channels {info.get('channels')}, range "
            f"{info.get('range')}) is not the refiner's ({config.channels} channels in [-1, 1])"
        )
    return TaskPsi(model, size=tuple(info["size"]), source=str(run))


def hold_network(
    config: SimGANConfig,
    *,
    synthetic: str | list[str],
    out: Path,
    resume: bool,
    device: torch.device,
    ranks: Ranks = SINGLE,
) -> SimGANConfig:
    """The geometry term's frozen gaze network, trained by the run itself when its recipe asks
    (μ > 0, ``task_reg_epochs`` > 0, no ``task_reg_network``): ``train-task gaze --appearance``
    on the run's synthetic shards (trained and evaluated on them), seed ``task_reg_seed``, into
    ``out/task-reg/``; rank 0 trains it, the others wait. A resumed run keeps the one it has.
    Returns the config the trainer is built with: ``task_reg_network`` set to that directory.
    Any other config is returned as it is."""
    if config.task_reg_epochs < 0:
        raise ValueError(f"task_reg_epochs must be >= 0, got {config.task_reg_epochs}")
    if not (config.task_reg_weight > 0 and config.task_reg_epochs):
        return config
    if config.task_reg_network:
        raise ValueError(
            f"task_reg_network {config.task_reg_network!r} and task_reg_epochs "
            f"{config.task_reg_epochs} exclude each other: name a trained network, or let the "
            "run train one (task_reg_network: null)"
        )
    if config.domain != "gaze":
        raise ValueError(
            f"task_reg_epochs: the geometry term holds a gaze network; this run refines "
            f"{config.domain}"
        )
    where = out / "task-reg"
    if ranks.is_main and not (resume and (where / "model.safetensors").is_file()):
        from train.evaluation.downstream import train_task

        train_task(
            "gaze",
            train=synthetic,
            eval=synthetic,
            out=where,
            epochs=config.task_reg_epochs,
            seed=config.task_reg_seed,
            appearance=True,
            device=str(device),
        )
    ranks.barrier()  # the other ranks load what rank 0 wrote
    return replace(config, task_reg_network=str(where))


class TaskPsi(FeaturePsi):
    """A frozen task network as ψ, which names its run when an image is not its input size."""

    def __init__(self, module: nn.Module, *, size: tuple[int, ...], source: str):
        super().__init__(module)
        self.size, self.source = size, source

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) != self.size:
            raise ValueError(
                f"task_reg_network {self.source!r} was trained on {self.size} images; the "
                f"refiner's are {tuple(image.shape[-2:])}"
            )
        return self.module(image)


class SimGAN:
    """Networks, optimisers, data streams and history buffer of one SimGAN run."""

    def __init__(
        self,
        config: SimGANConfig,
        *,
        synthetic: str | list[str],
        real: str | list[str],
        device: torch.device,
        ranks: Ranks = SINGLE,
    ):
        self.config = config
        self.device = device
        self.ranks = ranks
        rank = ranks.rank
        torch.manual_seed(config.seed)
        refiner = build_network(config.refiner, **self.refiner_kwargs).to(device)
        discriminator = build_network(config.discriminator, channels=config.channels).to(device)
        self.modules = {"refiner": refiner, "discriminator": discriminator}
        if not 0.0 <= config.refiner_ema < 1.0:
            raise ValueError(f"refiner_ema must be in [0, 1), got {config.refiner_ema}")
        if config.discriminator_r1 < 0:
            raise ValueError(f"discriminator_r1 must be >= 0, got {config.discriminator_r1}")
        if config.refiner_ema:
            # saved and resumed with the other modules; never trained, only averaged into
            self.modules["refiner_ema"] = copy.deepcopy(refiner).requires_grad_(False).eval()
        self.optimisers = {
            "refiner": make_optimiser(refiner.parameters(), config.refiner_optimiser),
            "discriminator": make_optimiser(
                discriminator.parameters(), config.discriminator_optimiser
            ),
        }
        amp = config.amp and device.type == "cuda"
        self.autocast = torch.autocast(device.type, dtype=torch.float16, enabled=amp)
        self.scalers = {k: torch.amp.GradScaler(device.type, enabled=amp) for k in self.optimisers}
        self.psi = make_psi(config.psi)
        self.task_psi = task_psi(config, device)
        self.buffer = HistoryBuffer(capacity=config.buffer_size, seed=config.seed + 7919 * rank)
        self.augment = Augment(
            config.discriminator_augment, seed=config.seed + 7919 * rank + 104729, device=device
        )
        stream = dict(
            domain=config.domain,
            batch_size=config.batch_size,
            image_key=config.image_key,
            depth_range=config.depth_range,
            shuffle_buffer=config.shuffle_buffer,
            rank=rank,
            world_size=ranks.world_size,
            decoders=config.decode_workers,
            cache=config.cache,
            pin=device.type == "cuda",
        )
        self.synthetic = ImageStream(synthetic, seed=config.seed * 2 + 1, **stream)
        # real images are unlabeled by nature: a sample may be its image alone
        self.real = ImageStream(real, seed=config.seed * 2 + 2, labels=False, **stream)
        self.streams = (self.synthetic, self.real)
        self._fixed: torch.Tensor | None = None  # synthetic images shown on every sheet
        self._fixed_real: torch.Tensor | None = None

    def _batch(self, stream: ImageStream) -> torch.Tensor:
        return stream.next_batch_on(self.device)

    def generator_step(self, *, pretrain: bool) -> Step:
        step = Step(
            refiner_step(
                self.modules["refiner"],
                self.modules["discriminator"],
                self.optimisers["refiner"],
                self._batch(self.synthetic),
                psi=self.psi,
                weight=self.config.self_reg_weight,
                task_psi=self.task_psi,
                task_weight=self.config.task_reg_weight,
                augment=self.augment,
                adversarial=not pretrain,
                scaler=self.scalers["refiner"],
                autocast=self.autocast,
                ranks=self.ranks,
            )
        )
        if "refiner_ema" in self.modules:
            # during pretraining the average is the refiner itself (β = 0), so it starts from
            # the pretrained refiner rather than from random weights
            average(
                self.modules["refiner_ema"],
                self.modules["refiner"],
                0.0 if pretrain else self.config.refiner_ema,
            )
        return step

    def discriminator_step(self, carry: None = None) -> Step:
        """Algorithm 1 refines a fresh synthetic batch for D: nothing is carried over."""
        return Step(
            discriminator_step(
                self.modules["refiner"],
                self.modules["discriminator"],
                self.optimisers["discriminator"],
                self._batch(self.synthetic),
                self._batch(self.real),
                self.buffer,
                scaler=self.scalers["discriminator"],
                autocast=self.autocast,
                ranks=self.ranks,
                augment=self.augment,
                r1=self.config.discriminator_r1,
            )
        )

    def images_per_iteration(self, phase: str) -> int:
        b = self.config.batch_size
        if phase == "pretrain-generator":
            return b
        if phase == "pretrain-discriminator":
            return 2 * b
        return self.config.k_g * b + self.config.k_d * 2 * b

    def sample_sheet(self, count: int = 8) -> np.ndarray:
        """Rows: synthetic, refined, real (the same synthetic images on every sheet)."""
        if self._fixed is None:
            # separate streams, so drawing sheet images never moves the training streams
            self._fixed, self._fixed_real = (
                ImageStream(
                    stream.shards,
                    domain=self.config.domain,
                    batch_size=count,
                    seed=0,
                    image_key=self.config.image_key,
                    depth_range=self.config.depth_range,
                    shuffle_buffer=1,
                    labels=stream.labels,
                ).next_batch()[0]
                for stream in (self.synthetic, self.real)
            )
        refiner = self.modules[self.generator_module]
        was_training = refiner.training
        refiner.eval()
        with torch.no_grad():
            refined = refiner(self._fixed.to(self.device)).float().cpu()
        refiner.train(was_training)
        rows = [self._fixed, refined, self._fixed_real]
        tiles = [[image_tile(img) for img in row] for row in rows]
        return sheets.grid(tiles, titles=["synthetic", "refined", "real"])

    @property
    def generator_module(self) -> str:
        """The module that refines: the weight average when there is one."""
        return "refiner_ema" if "refiner_ema" in self.modules else "refiner"

    @property
    def refiner_kwargs(self) -> dict[str, Any]:
        """What the refiner is built with, here and by ``refinery export`` (generator.json)."""
        config = self.config
        kwargs: dict[str, Any] = {"channels": config.channels, "padding": config.refiner_padding}
        # "noise" only when used, so engines and runs from before it stay as they were
        if config.refiner_noise:
            kwargs["noise"] = config.refiner_noise
        return kwargs

    def generator_info(self) -> dict[str, Any]:
        config = self.config
        scaling = scaling_for(config.domain, config.depth_range)
        info = network_info(config.refiner)
        return {
            "method": "simgan",
            "module": self.generator_module,
            "network": config.refiner,
            "kwargs": self.refiner_kwargs,
            "domain": config.domain,
            "image_component": config.image_key or spec(config.domain).default_image,
            "pixel_kind": spec(config.domain).image_kind,
            "channels": config.channels,
            "pixel_range": [scaling.low, scaling.high],
            "input_size": list(info.input_size),
            "size_multiple": 1,  # stride-free: any H, W
        }

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        buffer = self.buffer.state_dict()
        scalers = {k: s.state_dict() for k, s in self.scalers.items()}
        meta = {
            "buffer": buffer["meta"],
            "synthetic": self.synthetic.state_dict(),
            "real": self.real.state_dict(),
            "scalers": scalers,
        }
        tensors = {f"buffer.{k}": v for k, v in buffer["tensors"].items()}
        if self.augment:
            tensors["augment.generator"] = self.augment.state_dict()
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.buffer.load_state_dict(
            {
                "tensors": {k[7:]: v for k, v in tensors.items() if k.startswith("buffer.")},
                "meta": meta["buffer"],
            }
        )
        if self.augment:
            self.augment.load_state_dict(tensors["augment.generator"])
        self.synthetic.load_state_dict(meta["synthetic"])
        self.real.load_state_dict(meta["real"])
        for key, state in meta.get("scalers", {}).items():
            if state:
                self.scalers[key].load_state_dict(state)


# -- the method table's row (train.methods) ---------------------------------------------------

METHOD = Method(config=SimGANConfig, trainer=SimGAN, prepare=hold_network)
# the table's load_config and train for this method (recipe ``simgan-<preset>``)
load_config = partial(methods.load_config, "simgan")
train = partial(methods.train, "simgan")
