"""SPIGAN (Lee et al., "SPIGAN: Privileged Adversarial Learning from Simulation", ICLR 2019) on
the shared loop of ``train.loop``.

Code (paper): ``generator`` (G), ``discriminator`` (D), ``task`` (T, semantic segmentation),
``privileged`` (P, depth: the privileged information the simulator gives for free), frozen
VGG19 features (the perceptual regulariser). The objective (§3, eq. 1-5) is

    min_{G,T,P} max_D  α·L_GAN + β·L_T + γ·L_P + δ·L_perc,   (α, β, γ, δ) = (1, 0.5, 0.1, 0.33)

with L_T the cross-entropy of T on the synthetic *and* the generated image against the
synthetic label, L_P the L1 of P on both against the synthetic depth, L_perc the L1 between
VGG19 conv{1..5}_2 features of the synthetic and the generated image, L_GAN least squares
(``refinery.losses_scene.spigan_generator_objective``).

Updates. The paper alternates updates with five generator steps per step of the others; here
a *generator step* updates G on the whole objective (``generator_objective``: D, T and P held
fixed), a *discriminator step* updates D on real vs freshly generated images and carries that
batch to the *task step*, which updates T and P on the synthetic and the generated image
(``task_objective``). ``k_g`` / ``k_d`` set the ratio (recipe: 5 / 1). γ = 0 builds no P at all
(the "no privileged information" ablation). ``pretrain_task_steps`` iterations first update T
and P alone on synthetic batches (``task_pretrain_step``): the paper's T and P start from an
ImageNet VGG16, and without such weights (``backbone_weights``) they start random, so G's
L_T and L_P would otherwise follow untrained networks for the first part of the run.

Holding the scene without ImageNet features (``self_reg_weight``, ``psi``; not the paper).
L_perc is what keeps G's image the synthetic scene in the paper, and it needs VGG19's ImageNet
weights (``vgg_weights``). On random VGG features it holds nothing: at CPU scale the adversarial
term (~38 times L_perc's gradient at the start, ``benchmarks/experiments/spigan_terms``) turns G's street
frames into green haze and stripes within a few hundred updates, and nothing downstream can
use their labels. ``self_reg_weight`` λ > 0 adds SimGAN's self-regularisation λ·|ψ(G(x)) − ψ(x)|₁
to G's objective (the term "self_reg"); the default ψ, "low-pass" (4×4 block means), holds
layout and colour while texture and noise stay free. Any registered refiner can be G
(``generator``); SG-GAN's U-Net (``sggan-generator-small``) carries detail through its skips
where the small ResNet G, in 600 updates, does not.

Early stopping (optional, ``early_stop``): the paper stops once the discriminator loss is
significantly and consistently below the generator's adversarial loss; here: once the running
means satisfy D < ``early_stop_ratio`` · G_adv for ``early_stop_patience`` iterations in a row
(after ``early_stop_warmup``). ``refinery export`` deploys G; T is the downstream
segmentation model (``evaluate_task`` reports its mIoU).

Only the synthetic pool needs labels (and depth): the real images are seen by D alone, so the
real pool is read unlabeled (``labels=False``; image-only samples are fine).
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from refinery import ontology as ontologies
from refinery import sheets
from refinery.losses import PSI_NAMES, self_regularisation
from refinery.losses_scene import spigan_discriminator_loss, spigan_generator_objective
from refinery.metrics import confusion, iou_from_confusion
from refinery.registry import build_network, network_info
from train import methods
from train.config import OptimiserConfig, make_optimiser
from train.data import SceneStream, scene_labels
from train.loop import SINGLE, Ranks, Schedule, Step, image_tile, update
from train.methods import Method


@dataclass(frozen=True)
class Generated:
    """A discriminator step's synthetic batch and G's images of it, for the task step."""

    batch: dict[str, torch.Tensor]  # image, seg, depth, depth_valid of the synthetic batch
    images: torch.Tensor  # (B, 3, h, w) G(batch["image"]), float32, no gradient


def _adam() -> OptimiserConfig:
    return OptimiserConfig(name="adam", lr=2e-4, betas=(0.5, 0.999))


@dataclass(frozen=True)
class SPIGANConfig:
    domain: str = "scene"
    generator: str = "spigan-generator"
    discriminator: str = "spigan-discriminator"
    task: str = "fcn8s-vgg16"
    privileged: str = "fcn8s-vgg16-depth"
    ontology: str = "cityscapes-19"
    batch_size: int = 2
    crop: tuple[int, int] | None = (320, 320)  # from 320×640 frames at paper settings
    steps: int = 50000
    k_g: int = 5  # generator steps per step of the others (paper)
    k_d: int = 1
    alpha: float = 1.0  # L_GAN
    beta: float = 0.5  # L_T
    gamma: float = 0.1  # L_P (0: no privileged network)
    delta: float = 0.33  # L_perc
    depth_max: float = 10000.0  # depth.png units (cm for SYNTHIA and the street simulator)
    vgg_weights: str | None = None  # local torchvision-format VGG19 weights for L_perc
    perceptual_width: int = 64  # VGG19's maps in block 1; 64 is VGG19 (pretrained files need it)
    backbone_weights: str | None = None  # local torchvision-format VGG16 weights for T and P
    # iterations training T and P alone on the synthetic labels and depth before G starts, so
    # that L_T and L_P steer G from its first step (the paper's T and P start from ImageNet)
    pretrain_task_steps: int = 0
    # λ·|ψ(G(x)) − ψ(x)|₁ added to G's objective (SimGAN's self-regularisation; not the paper):
    # what holds the scene when L_perc's VGG19 is untrained (module docstring); 0: left out
    self_reg_weight: float = 0.0
    psi: str = "low-pass"  # a refinery.losses.PSI_NAMES name
    early_stop: bool = False
    early_stop_ratio: float = 0.5
    early_stop_patience: int = 200
    early_stop_warmup: int = 1000
    generator_optimiser: OptimiserConfig = field(default_factory=_adam)
    discriminator_optimiser: OptimiserConfig = field(default_factory=_adam)
    task_optimiser: OptimiserConfig = field(default_factory=_adam)
    shuffle_buffer: int = 200
    checkpoint_every: int = 1000
    log_every: int = 50
    sample_every: int = 500
    seed: int = 0
    decode_workers: int = 2  # processes decoding samples ahead of the loop (0: on its own thread)
    cache: bool = True  # small images decoded once into a memory-mapped cache (train.cache)
    amp: bool = True

    def __post_init__(self) -> None:
        if self.self_reg_weight < 0:
            raise ValueError(f"self_reg_weight must be >= 0, got {self.self_reg_weight}")
        if self.psi not in PSI_NAMES:
            raise ValueError(f"psi must be one of {', '.join(PSI_NAMES)}, got {self.psi!r}")

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            pretrain_generator=0,
            pretrain_discriminator=0,
            steps=self.steps,
            k_g=self.k_g,
            k_d=self.k_d,
            pretrain_task=self.pretrain_task_steps,
        )

    @property
    def num_classes(self) -> int:
        return len(ontologies.get(self.ontology).classes)


class SPIGAN:
    """Networks, optimisers and streams of one SPIGAN run."""

    def __init__(
        self,
        config: SPIGANConfig,
        *,
        synthetic: str | list[str],
        real: str | list[str],
        device: torch.device,
        ranks: Ranks = SINGLE,
    ):
        from refinery.nets.vgg import VGGConfig, VGGFeatures, load_vgg_weights

        self.config, self.device, self.ranks = config, device, ranks
        torch.manual_seed(config.seed)
        self.modules = {
            "generator": build_network(config.generator, channels=3).to(device),
            "discriminator": build_network(config.discriminator, channels=3).to(device),
            "task": build_network(config.task, num_classes=config.num_classes).to(device),
        }
        if config.gamma > 0:
            self.modules["privileged"] = build_network(config.privileged).to(device)
        for key in ("task", "privileged"):  # FCN8s starts from ImageNet VGG16 when given one
            if key in self.modules:
                load_vgg_weights(self.modules[key], config.backbone_weights)
        self.perceptual = None
        if config.delta > 0:
            with warnings.catch_warnings(record=not config.vgg_weights) as caught:
                vgg = VGGConfig(depth=19, width=config.perceptual_width)  # conv{1..5}_2
                self.perceptual = VGGFeatures(vgg, weights=config.vgg_weights).to(device).eval()
            if caught:
                warnings.warn(str(caught[0].message), stacklevel=2)
            self.perceptual.requires_grad_(False)
        others = [self.modules["task"].parameters()]
        if "privileged" in self.modules:
            others.append(self.modules["privileged"].parameters())
        self.optimisers = {
            "generator": make_optimiser(
                self.modules["generator"].parameters(), config.generator_optimiser
            ),
            "discriminator": make_optimiser(
                self.modules["discriminator"].parameters(), config.discriminator_optimiser
            ),
            "task": make_optimiser(itertools.chain(*others), config.task_optimiser),
        }
        amp = config.amp and device.type == "cuda"
        self.autocast = torch.autocast(device.type, dtype=torch.float16, enabled=amp)
        self.scalers = {k: torch.amp.GradScaler(device.type, enabled=amp) for k in self.optimisers}
        stream = dict(
            batch_size=config.batch_size,
            ontology=config.ontology,
            crop=config.crop,
            depth_max=config.depth_max,
            shuffle_buffer=config.shuffle_buffer,
            rank=ranks.rank,
            world_size=ranks.world_size,
            decoders=config.decode_workers,
            cache=config.cache,
            decode_device=device,  # large JPEG frames: nvJPEG where CUDA is (train.jpeg)
            pin=device.type == "cuda",
        )
        self.synthetic = SceneStream(synthetic, seed=config.seed * 2 + 1, **stream)
        # D sees only the real images: a real pool may be unlabeled (image-only samples)
        self.real = SceneStream(real, seed=config.seed * 2 + 2, labels=False, **stream)
        self.streams = (self.synthetic, self.real)
        self._running: dict[str, float] = {}
        self._below = 0
        self._iterations = 0
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None

    def _synthetic(self) -> dict[str, torch.Tensor]:
        batch = self.synthetic.next_batch()
        if self.config.gamma > 0 and "depth" not in batch:
            raise ValueError("SPIGAN with gamma > 0 needs depth.png in the synthetic shards")
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _update(self, name: str, loss: torch.Tensor) -> None:
        update(self.optimisers[name], self.scalers[name], loss, self.ranks)

    def _task_terms_inputs(
        self, batch: dict[str, torch.Tensor], generated: torch.Tensor
    ) -> dict[str, torch.Tensor | None]:
        """What L_T and L_P compare: T and P on the synthetic image and on G's version of it,
        against the synthetic labels and depth (P's are None without P, γ = 0)."""
        x = batch["image"]
        task, privileged = self.modules["task"], self.modules.get("privileged")
        return {
            "task_logits_synthetic": task(x),
            "task_logits_generated": task(generated),
            "labels": batch["seg"],
            "depth_pred_synthetic": privileged(x) if privileged is not None else None,
            "depth_pred_generated": privileged(generated) if privileged is not None else None,
            "depth": batch.get("depth"),
            "depth_valid": batch.get("depth_valid"),
        }

    def generator_objective(
        self, batch: dict[str, torch.Tensor], generated: torch.Tensor, d_fake: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """α·L_GAN + β·L_T + γ·L_P + δ·L_perc (+ λ·self_reg): the named terms, unweighted, and
        their weighted "total"."""
        c = self.config
        features = (None, None)
        if self.perceptual is not None:
            features = (self.perceptual(batch["image"]), self.perceptual(generated))
        terms = spigan_generator_objective(
            d_fake_logits=d_fake,
            **self._task_terms_inputs(batch, generated),
            features_synthetic=features[0],
            features_generated=features[1],
            alpha=c.alpha,
            beta=c.beta,
            gamma=c.gamma,
            delta=c.delta,
            ignore_index=ontologies.IGNORE,
        )
        if c.self_reg_weight > 0:
            terms["self_reg"] = self_regularisation(generated, batch["image"], psi=c.psi, weight=1)
            terms["total"] = terms["total"] + c.self_reg_weight * terms["self_reg"]
        return terms

    def task_objective(
        self, batch: dict[str, torch.Tensor], generated: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """β·L_T + γ·L_P, what T and P minimise (no adversarial or perceptual term)."""
        c = self.config
        return spigan_generator_objective(
            **self._task_terms_inputs(batch, generated),
            alpha=0.0,
            beta=c.beta,
            gamma=c.gamma,
            delta=0.0,
            ignore_index=ontologies.IGNORE,
        )

    @contextlib.contextmanager
    def holding_others(self) -> Iterator[None]:
        """D, T and P (every module but G) without gradients inside, as G's step needs them."""
        held = [m for name, m in self.modules.items() if name != "generator"]
        for module in held:
            module.requires_grad_(False)
        try:
            yield
        finally:
            for module in held:
                module.requires_grad_(True)

    def generator_step(self, *, pretrain: bool) -> Step:
        """G on the whole objective, with D, T and P held fixed for this update."""
        batch = self._synthetic()
        d = self.modules["discriminator"]
        with self.holding_others(), self.autocast:
            generated = self.modules["generator"](batch["image"])
            terms = self.generator_objective(batch, generated, d(generated))
        self._update("generator", terms["total"])
        return Step({f"generator/{k}": v.detach() for k, v in terms.items()})

    def discriminator_step(self, carry: None = None) -> Step:
        """D (least squares): real images vs G's images of a fresh synthetic batch, which it
        carries to the task step."""
        batch = self._synthetic()
        real = self.real.next_batch()["image"].to(self.device, non_blocking=True)
        with torch.no_grad(), self.autocast:
            generated = self.modules["generator"](batch["image"]).float()
        with self.autocast:
            d = self.modules["discriminator"]
            loss = spigan_discriminator_loss(d(real), d(generated))
        self._update("discriminator", loss)
        return Step({"discriminator/total": loss.detach()}, Generated(batch, generated))

    def task_step(self, carry: Generated) -> Step:
        """T and P on the discriminator step's synthetic batch and G's images of it."""
        with self.autocast:
            terms = self.task_objective(carry.batch, carry.images)
        self._update("task", terms["total"])
        return Step({f"task/{k}": v.detach() for k, v in terms.items()})

    def task_pretrain_step(self) -> Step:
        """T and P on a synthetic batch alone, before G exists for them (``pretrain_task_steps``):
        the task step with G taken as the identity."""
        batch = self._synthetic()
        return self.task_step(Generated(batch, batch["image"]))

    def should_stop(self, values: dict[str, float]) -> bool:
        """The paper's early-stopping rule, when ``early_stop`` is set (see module docstring)."""
        self._iterations += 1
        if not self.config.early_stop:
            return False
        for key in ("discriminator/total", "generator/gan"):
            if key in values:
                old = self._running.get(key, values[key])
                self._running[key] = 0.98 * old + 0.02 * values[key]
        if self._iterations < self.config.early_stop_warmup or len(self._running) < 2:
            return False
        below = self._running["discriminator/total"] < (
            self.config.early_stop_ratio * self._running["generator/gan"]
        )
        self._below = self._below + 1 if below else 0
        return self._below >= self.config.early_stop_patience

    def images_per_iteration(self, phase: str) -> int:
        b = self.config.batch_size
        if phase == "pretrain-task":
            return b
        return self.config.k_g * b + self.config.k_d * 2 * b

    def sample_sheet(self, count: int = 4) -> np.ndarray:
        """Rows: synthetic, generated, real, and T's segmentation of the generated images."""
        if self._fixed is None:
            streams = [
                SceneStream(s.shards, batch_size=count, seed=0, ontology=self.config.ontology,
                            crop=self.config.crop, shuffle_buffer=1, labels=s.labels)
                for s in (self.synthetic, self.real)
            ]  # fmt: skip
            rng = torch.get_rng_state()  # crops must not move the training generator
            self._fixed = tuple(s.next_batch()["image"] for s in streams)
            torch.set_rng_state(rng)
        synthetic, real = self._fixed
        g, t = self.modules["generator"], self.modules["task"]
        modes = (g.training, t.training)
        g.eval()
        t.eval()
        with torch.no_grad():
            generated = g(synthetic.to(self.device)).float()
            seg = t(generated).argmax(1).to(torch.uint8).cpu().numpy()
        g.train(modes[0])
        t.train(modes[1])
        palette = sheets.seg_palette()
        rows = [
            [image_tile(x, height=None) for x in synthetic],
            [image_tile(x, height=None) for x in generated.cpu()],
        ]
        rows += [[image_tile(x, height=None) for x in real], [palette[s] for s in seg]]
        return sheets.grid(rows, titles=["synthetic", "generated", "real", "T(generated)"])

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        meta = {
            "synthetic": self.synthetic.state_dict(),
            "real": self.real.state_dict(),
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "early_stop": {
                "running": self._running,
                "below": self._below,
                "iterations": self._iterations,
            },
        }
        return {}, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.synthetic.load_state_dict(meta["synthetic"])
        self.real.load_state_dict(meta["real"])
        for key, state in meta.get("scalers", {}).items():
            if state:
                self.scalers[key].load_state_dict(state)
        early = meta.get("early_stop", {})
        self._running = dict(early.get("running", {}))
        self._below = int(early.get("below", 0))
        self._iterations = int(early.get("iterations", 0))

    def generator_info(self) -> dict[str, Any]:
        generator = self.modules["generator"]
        return {
            "method": "spigan",
            "module": "generator",
            "network": self.config.generator,
            "kwargs": {"channels": 3},
            "domain": "scene",
            "image_component": "png",
            "pixel_kind": "rgb8",
            "channels": 3,
            "pixel_range": [0.0, 255.0],
            "input_size": list(self.config.crop or network_info(self.config.generator).input_size),
            "size_multiple": int(getattr(generator, "size_multiple", 1)),
        }


# -- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_task(task: torch.nn.Module, urls, *, ontology: str, device=None) -> dict[str, Any]:
    """mIoU (and per-class IoU) of a segmentation network on labeled scene shards, one pass."""
    from refinery.shards import read

    device = device or next(task.parameters()).device
    num_classes = len(ontologies.get(ontology).classes)
    matrix = np.zeros((num_classes, num_classes), np.int64)
    was = task.training
    task.eval()
    images = 0
    for sample in read(urls, "scene"):
        target = scene_labels(sample, ontology)
        x = torch.from_numpy(sample["png"] if "png" in sample else sample["jpg"])
        x = x.permute(2, 0, 1)[None].float().div(127.5).sub(1).to(device)  # (1, 3, H, W)
        pred = task(x).argmax(1)[0].cpu().numpy()
        matrix += confusion(pred, target, num_classes, ontologies.IGNORE)
        images += 1
    task.train(was)
    miou, per_class = iou_from_confusion(matrix)
    return {"miou": miou, "per_class": per_class, "images": images}


# -- the method table's row (train.methods) ---------------------------------------------------

METHOD = Method(config=SPIGANConfig, trainer=SPIGAN)
# the table's load_config and train for this method (recipe ``spigan-<preset>``)
load_config = partial(methods.load_config, "spigan")
train = partial(methods.train, "spigan")
