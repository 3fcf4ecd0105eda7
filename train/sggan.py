"""SG-GAN (Li et al., "Semantic-aware Grad-GAN for Virtual-to-Real Urban Scene Adaption",
BMVC 2018) on the shared loop of ``train.loop``.

Code (paper): ``generator_ab`` (G: virtual → real), ``generator_ba`` (F: real → virtual),
``discriminator_b`` (D_real, judges images of the real domain), ``discriminator_a`` (D_virtual);
``semantic_select`` is the semantic-aware discriminator's per-pixel channel choice (§3.3);
``gradient_sensitive_loss`` is the soft gradient-sensitive objective (§3.2, eq. 9-11) with
weight λ_g; ``cycle_loss`` the cycle consistency with λ_c (§3.1); adversarial terms are least
squares. A translated image is judged with its *source* image's semantic map; real images with
their own. The discriminators' maps are SG-GAN's 8 groups (``sggan-8``) for both domains; the
gradient loss's boundaries come from the finer class map (``boundary_ontology``); the α, β of the
boundary weight follow the synthetic stream's epoch (``gradient_weights``). The image pools are
CycleGAN's (``HistoryBuffer(policy="swap")``), storing each translated image with its map.

One generator step updates both generators on one synthetic and one real batch and returns
its ``Translations``; the discriminator step that follows updates both discriminators on them,
drawn through the pools (a discriminator step given none, as in a discriminator-first
schedule, translates batches of its own). The generator that ``refinery export`` deploys is
``generator_ab``.

Unlabeled real images. Real images are unlabeled by nature, so the real pool is read with
``labels=False``: a real sample may be its image alone (or say ``"labeled": false``), and its
maps are all ``IGNORE``. The semantic-aware discriminators need a map for every image they
judge, and F(real) is judged with its source's map, so each step picks one mode for all four
judgements (real and translated, both domains, so that D cannot tell the modes apart): when
every real sample of the step's batch is labeled, ``semantic_select`` as above (bit-identical to
a run on a labeled pool); otherwise the mean of the K group logits, semantic-agnostic
(``judge``). So with an unlabeled real pool SG-GAN trains as a semantic-agnostic Grad-GAN
(CycleGAN with the gradient-sensitive loss). The real→virtual gradient-sensitive loss then
weighs an unlabeled image with β alone (an all-``IGNORE`` map has no boundaries: in the first
``HARD_BOUNDARY_EPOCHS`` epochs, where β = 0, that term is 0). The pools store each translated
image with its source's map as before (all ``IGNORE`` for an unlabeled source). The scalar
``discriminator/semantic`` logs the mode: 1 semantic-aware, 0 semantic-agnostic.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from refinery import sheets
from refinery.history import HistoryBuffer
from refinery.losses_scene import (
    cycle_loss,
    gradient_sensitive_loss,
    gradient_weights,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)
from refinery.nets.sggan import semantic_select
from refinery.registry import build_network, network_info
from train import methods
from train.config import OptimiserConfig, make_optimiser
from train.data import SceneStream
from train.loop import SINGLE, Ranks, Schedule, Step, image_tile, update
from train.methods import Method


def judge(logits: torch.Tensor, seg: torch.Tensor, *, semantic: bool) -> torch.Tensor:
    """A discriminator's verdict (B, 1, h, w) from its K group logits (B, K, h, w): SG-GAN's
    ``semantic_select`` with the judged image's map (B, H, W), or, in a step whose real batch is
    not all labeled, the mean over the K groups (semantic-agnostic; `seg` unused)."""
    if semantic:
        return semantic_select(logits, seg)
    return logits.mean(dim=1, keepdim=True)


@dataclass(frozen=True)
class Translations:
    """What a generator step gives the discriminator step: both batches with their group maps,
    their translations (detached, float32) and the step's judging mode."""

    a: torch.Tensor  # (B, 3, H, W) synthetic (virtual)
    seg_a: torch.Tensor  # (B, H, W) its groups
    b: torch.Tensor  # (B, 3, H, W) real
    seg_b: torch.Tensor  # (B, H, W) its groups (all IGNORE where unlabeled)
    fake_b: torch.Tensor  # G(a): virtual translated to real
    fake_a: torch.Tensor  # F(b): real translated to virtual
    semantic: bool  # every real sample labeled: semantic-aware judgements


def _adam() -> OptimiserConfig:
    return OptimiserConfig(name="adam", lr=2e-4, betas=(0.5, 0.999))


@dataclass(frozen=True)
class SGGANConfig:
    domain: str = "scene"
    generator: str = "sggan-generator"
    discriminator: str = "sggan-discriminator"
    ontology: str = "sggan-8"  # the discriminators' semantic groups
    boundary_ontology: str = "cityscapes-19"  # the classes whose edges the gradient loss weighs
    groups: int = 8
    batch_size: int = 1
    crop: tuple[int, int] | None = None  # paper: whole 256×512 frames (ingest with --size)
    steps: int = 100000
    k_g: int = 1
    k_d: int = 1
    cycle_weight: float = 10.0  # λ_c
    gradient_weight: float = 5.0  # λ_g
    pool_size: int = 50
    generator_optimiser: OptimiserConfig = field(default_factory=_adam)
    discriminator_optimiser: OptimiserConfig = field(default_factory=_adam)
    shuffle_buffer: int = 200
    checkpoint_every: int = 1000
    log_every: int = 50
    sample_every: int = 500
    seed: int = 0
    decode_workers: int = 2  # processes decoding samples ahead of the loop (0: on its own thread)
    cache: bool = True  # small images decoded once into a memory-mapped cache (train.cache)
    amp: bool = True  # float16 autocast on CUDA only

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            pretrain_generator=0,
            pretrain_discriminator=0,
            steps=self.steps,
            k_g=self.k_g,
            k_d=self.k_d,
        )


class SGGAN:
    """Networks, optimisers, streams and pools of one SG-GAN run."""

    def __init__(
        self,
        config: SGGANConfig,
        *,
        synthetic: str | list[str],
        real: str | list[str],
        device: torch.device,
        ranks: Ranks = SINGLE,
    ):
        self.config, self.device, self.ranks = config, device, ranks
        torch.manual_seed(config.seed)
        generators = [build_network(config.generator, channels=3).to(device) for _ in range(2)]
        discriminators = [
            build_network(config.discriminator, channels=3, groups=config.groups).to(device)
            for _ in range(2)
        ]
        self.modules = {
            "generator_ab": generators[0],
            "generator_ba": generators[1],
            "discriminator_a": discriminators[0],
            "discriminator_b": discriminators[1],
        }
        self.optimisers = {
            "generators": make_optimiser(
                itertools.chain(*(g.parameters() for g in generators)), config.generator_optimiser
            ),
            "discriminators": make_optimiser(
                itertools.chain(*(d.parameters() for d in discriminators)),
                config.discriminator_optimiser,
            ),
        }
        amp = config.amp and device.type == "cuda"
        self.autocast = torch.autocast(device.type, dtype=torch.float16, enabled=amp)
        self.scalers = {k: torch.amp.GradScaler(device.type, enabled=amp) for k in self.optimisers}
        own = config.seed + 7919 * ranks.rank  # each rank's pools draw their own
        self.pool_ab = HistoryBuffer(capacity=config.pool_size, seed=own + 1, policy="swap")
        self.pool_ba = HistoryBuffer(capacity=config.pool_size, seed=own + 2, policy="swap")
        stream = dict(
            batch_size=config.batch_size,
            ontology=config.ontology,
            fine_ontology=config.boundary_ontology,
            crop=config.crop,
            shuffle_buffer=config.shuffle_buffer,
            rank=ranks.rank,
            world_size=ranks.world_size,
            decoders=config.decode_workers,
            cache=config.cache,
            decode_device=device,  # large JPEG frames: nvJPEG where CUDA is (train.jpeg)
            pin=device.type == "cuda",
        )
        self.synthetic = SceneStream(synthetic, seed=config.seed * 2 + 1, **stream)
        self.real = SceneStream(real, seed=config.seed * 2 + 2, labels=False, **stream)
        self.streams = (self.synthetic, self.real)
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None

    def _batch(self, stream: SceneStream) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Image, the discriminator's group map, the map whose edges are boundaries, and
        whether every sample is labeled (unlabeled ones' maps are all IGNORE)."""
        batch = stream.next_batch()
        device = self.device
        labeled = bool(batch["labeled"].all())  # a CPU tensor: no device sync
        return (
            batch["image"].to(device, non_blocking=True),
            batch["seg"].to(device, non_blocking=True),
            batch["seg_fine"].to(device, non_blocking=True),
            labeled,
        )

    def _update(self, name: str, loss: torch.Tensor) -> None:
        update(self.optimisers[name], self.scalers[name], loss, self.ranks)

    def generator_step(self, *, pretrain: bool) -> Step:
        """Both generators: LSGAN + λ_c cycle + λ_g gradient-sensitive terms (eq. 12); carries
        the ``Translations`` to the discriminator step."""
        config = self.config
        a, seg_a, edges_a, _ = self._batch(self.synthetic)  # (B, 3, H, W), (B, H, W), (B, H, W)
        b, seg_b, edges_b, semantic = self._batch(self.real)  # semantic: all of b labeled
        alpha, beta = gradient_weights(self.synthetic.epoch)
        g_ab, g_ba = self.modules["generator_ab"], self.modules["generator_ba"]
        d_a, d_b = self.modules["discriminator_a"], self.modules["discriminator_b"]
        with self.autocast:
            fake_b, fake_a = g_ab(a), g_ba(b)  # translations
            rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)  # cycles
            for d in (d_a, d_b):
                d.requires_grad_(False)
            # a translated image is judged with its source's semantic map
            adv_ab = lsgan_generator_loss(judge(d_b(fake_b), seg_a, semantic=semantic))
            adv_ba = lsgan_generator_loss(judge(d_a(fake_a), seg_b, semantic=semantic))
            for d in (d_a, d_b):
                d.requires_grad_(True)
            cycle = config.cycle_weight * (cycle_loss(rec_a, a) + cycle_loss(rec_b, b))
            # boundaries from the class map (SG-GAN filters its colour label images, where every
            # Cityscapes class has its own colour), not from the 8 groups; an unlabeled real
            # image's all-IGNORE map has none, so its pixels weigh β alone
            grad = config.gradient_weight * (
                gradient_sensitive_loss(a, fake_b, edges_a, alpha=alpha, beta=beta, num_groups=None)
                + gradient_sensitive_loss(
                    b, fake_a, edges_b, alpha=alpha, beta=beta, num_groups=None
                )
            )
            total = adv_ab + adv_ba + cycle + grad
        self._update("generators", total)
        losses = {
            "generator/adversarial_ab": adv_ab.detach(),
            "generator/adversarial_ba": adv_ba.detach(),
            "generator/cycle": cycle.detach(),
            "generator/gradient": grad.detach(),
            "generator/total": total.detach(),
            "generator/alpha": torch.tensor(alpha),
        }
        translated = Translations(
            a, seg_a, b, seg_b, fake_b.detach().float(), fake_a.detach().float(), semantic
        )
        return Step(losses, translated)

    def _translate(self) -> Translations:
        """Fresh batches and their translations, for a discriminator step without a carry."""
        a, seg_a, _, _ = self._batch(self.synthetic)
        b, seg_b, _, semantic = self._batch(self.real)
        with torch.no_grad(), self.autocast:
            fake_b = self.modules["generator_ab"](a).float()
            fake_a = self.modules["generator_ba"](b).float()
        return Translations(a, seg_a, b, seg_b, fake_b, fake_a, semantic)

    def discriminator_step(self, carry: Translations | None = None) -> Step:
        """Both discriminators: real with its own map vs pooled translations with their
        sources' maps (least squares); semantic-agnostic when the step's real batch is not
        all labeled (see the module docstring)."""
        t = carry if carry is not None else self._translate()
        fake_b, fake_b_seg = self.pool_ab.mix(t.fake_b, t.seg_a)
        fake_a, fake_a_seg = self.pool_ba.mix(t.fake_a, t.seg_b)
        d_a, d_b = self.modules["discriminator_a"], self.modules["discriminator_b"]
        semantic = t.semantic  # one mode for all four judgements
        with self.autocast:
            loss_b = lsgan_discriminator_loss(
                judge(d_b(t.b), t.seg_b, semantic=semantic),
                judge(d_b(fake_b), fake_b_seg, semantic=semantic),
            )
            loss_a = lsgan_discriminator_loss(
                judge(d_a(t.a), t.seg_a, semantic=semantic),
                judge(d_a(fake_a), fake_a_seg, semantic=semantic),
            )
            total = loss_a + loss_b
        self._update("discriminators", total)
        return Step(
            {
                "discriminator/real_domain": loss_b.detach(),
                "discriminator/virtual_domain": loss_a.detach(),
                "discriminator/total": total.detach(),
                "discriminator/semantic": torch.tensor(float(semantic)),
            }
        )

    def images_per_iteration(self, phase: str) -> int:
        b = self.config.batch_size
        return (self.config.k_g + self.config.k_d) * 2 * b

    def sample_sheet(self, count: int = 4) -> np.ndarray:
        """Rows: synthetic, translated to real, real, translated to virtual."""
        if self._fixed is None:
            streams = [
                SceneStream(s.shards, batch_size=count, seed=0, ontology=self.config.ontology,
                            crop=self.config.crop, shuffle_buffer=1, labels=s.labels)
                for s in (self.synthetic, self.real)
            ]  # fmt: skip
            rng = torch.get_rng_state()  # crops must not move the training generator
            self._fixed = tuple(s.next_batch()["image"] for s in streams)
            torch.set_rng_state(rng)
        a, b = self._fixed
        rows = [a]
        with torch.no_grad():
            for name, x in (("generator_ab", a), ("generator_ba", b)):
                g = self.modules[name]
                was = g.training
                g.eval()
                rows.append(g(x.to(self.device)).float().cpu())
                g.train(was)
        rows = [rows[0], rows[1], b, rows[2]]
        tiles = [[image_tile(img, height=None) for img in row] for row in rows]
        return sheets.grid(tiles, titles=["synthetic", "to real", "real", "to virtual"])

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        pools = {}
        for name, pool in (("pool_ab", self.pool_ab), ("pool_ba", self.pool_ba)):
            state = pool.state_dict()
            tensors.update({f"{name}.{k}": v for k, v in state["tensors"].items()})
            pools[name] = state["meta"]
        meta = {
            "pools": pools,
            "synthetic": self.synthetic.state_dict(),
            "real": self.real.state_dict(),
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        for name, pool in (("pool_ab", self.pool_ab), ("pool_ba", self.pool_ba)):
            prefix = f"{name}."
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            pool.load_state_dict({"tensors": own, "meta": meta["pools"][name]})
        self.synthetic.load_state_dict(meta["synthetic"])
        self.real.load_state_dict(meta["real"])
        for key, state in meta.get("scalers", {}).items():
            if state:
                self.scalers[key].load_state_dict(state)

    def generator_info(self) -> dict[str, Any]:
        generator = self.modules["generator_ab"]
        return {
            "method": "sggan",
            "module": "generator_ab",
            "network": self.config.generator,
            "kwargs": {"channels": 3},
            "domain": "scene",
            "image_component": "png",
            "pixel_kind": "rgb8",
            "channels": 3,
            "pixel_range": [0.0, 255.0],
            "input_size": list(network_info(self.config.generator).input_size),
            "size_multiple": int(getattr(generator, "size_multiple", 1)),
        }


# -- the method table's row (train.methods) ---------------------------------------------------

METHOD = Method(config=SGGANConfig, trainer=SGGAN)
# the table's load_config and train for this method (recipe ``sggan-<preset>``)
load_config = partial(methods.load_config, "sggan")
train = partial(methods.train, "sggan")
