"""The history of refined images (Shrivastava et al., CVPR 2017, §2.3, Algorithm 2).

Each discriminator update sees b/2 images refined by the current refiner and b/2 drawn at
random from a buffer of earlier refined images, so the discriminator keeps penalising artifacts
the refiner produced before and the two do not chase each other in circles. After each update,
b/2 buffer entries are replaced with new refined images: the paper replaces b/2 random samples;
until the buffer holds ``capacity`` images we fill it first. ``mix`` does both in one call::

    history = HistoryBuffer(capacity=512 * 100, seed=0)
    fake, fake_seg = history.mix(refined, seg)  # (B, C, H, W), (B, H, W): aligned rows
    loss_d = local_adversarial_loss(D(real), REAL) + local_adversarial_loss(D(fake), REFINED)

Companions. Any number of tensors aligned with the images on dim 0 (semantic masks for
SG-GAN, labels) are stored in the same slots and drawn with the same indices, so row i of every
returned tensor belongs to the same image.

Details the paper leaves open, and what we do:
- Returned tensors are detached: the discriminator batch carries no gradient into the refiner.
  Row order is the current images first, then the history draw.
- For a batch of b, ``b // 2`` rows come from the history (without replacement; fewer while it
  holds fewer, none while it is empty, the rest current) and the first ``b - b // 2`` current
  images are stored, so an odd batch or b = 1 still fills the buffer. The draw happens before
  the store, so the history half never contains this batch.
- Storage is allocated once, for ``capacity`` rows of the first batch's shapes and dtypes,
  on ``device`` if given, else on the device of the first refined batch (the GPU in training:
  no host round trip per step). Draws use a CPU ``torch.Generator`` seeded with ``seed``, so the
  sequence of indices is the same on every device.

Checkpoints. ``state_dict()`` returns ``{"tensors": {...}, "meta": {...}}``: CPU tensors that
``safetensors.torch.save_file`` accepts (the filled rows as "images", "companion.0", ..., and the
generator state as "rng_state", uint8) and a JSON-able dict (capacity, seed, size, number of
companions). ``load_state_dict`` of that restores the buffer and its generator, so a resumed run
draws exactly the entries an uninterrupted one would have drawn.

Two public ports (mjdietzx/SimGAN, whose buffer AlexHex7/SimGAN_pytorch copies) call
``np.append`` and drop its result, so their buffer never fills and training runs without any
history; ``tests/test_history.py`` checks that this one fills.
"""

from __future__ import annotations

from typing import Any

import torch

STATE_FORMAT = "refinery.history/1"
POLICIES = ("half", "swap")  # SimGAN's b/2 history draw; CycleGAN's per-image 50% swap


class HistoryBuffer:
    """A fixed-size buffer of refined images (and aligned companions) for the discriminator."""

    def __init__(
        self,
        *,
        capacity: int,
        seed: int = 0,
        device: str | torch.device | None = None,
        policy: str = "half",
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.capacity = capacity
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else None
        self._generator = torch.Generator(device="cpu").manual_seed(self.seed)
        self._stores: list[torch.Tensor] | None = None  # [images, *companions], (capacity, ...)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"HistoryBuffer(capacity={self.capacity}, size={self._size}, seed={self.seed})"

    # -- the step ------------------------------------------------------------------------------

    def mix(self, refined: torch.Tensor, *companions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The discriminator's refined batch: current half, then history half; then store.

        `refined` (B, ...) and each companion (B, ...) -> a tuple (images, *companions) of the
        same shapes, detached. See the module docstring for odd B and a filling buffer.
        """
        tensors = [refined.detach(), *(c.detach() for c in companions)]
        batch = refined.shape[0] if refined.ndim else 0
        if batch < 1:
            raise ValueError(f"refined must be a non-empty batch, got shape {tuple(refined.shape)}")
        for i, companion in enumerate(companions):
            if companion.ndim == 0 or companion.shape[0] != batch:
                raise ValueError(
                    f"companion {i} has shape {tuple(companion.shape)}; its first dim must be "
                    f"the batch size {batch}"
                )
        stores = self._storage_for(tensors)
        if self.policy == "swap":
            return self._swap(tensors, stores)

        # history half: see Shrivastava et al. §2.3 (drawn before this batch is stored)
        n_history = min(batch // 2, self._size)
        drawn = torch.randperm(self._size, generator=self._generator)[:n_history]
        n_current = batch - n_history
        mixed = tuple(
            torch.cat([t[:n_current], store[drawn.to(store.device)].to(t.device, t.dtype)])
            for t, store in zip(tensors, stores, strict=True)
        )

        # store the first ceil(B/2) current images: fill free rows, then replace random ones
        n_store = min(batch - batch // 2, self.capacity)
        n_fill = min(self.capacity - self._size, n_store)
        slots = torch.arange(self._size, self._size + n_fill)
        n_replace = n_store - n_fill
        if n_replace:
            replaced = torch.randperm(self._size, generator=self._generator)[:n_replace]
            slots = torch.cat([slots, replaced])
        for t, store in zip(tensors, stores, strict=True):
            store[slots.to(store.device)] = t[:n_store].to(store.device, store.dtype)
        self._size += n_fill
        return mixed

    def _swap(self, tensors: list[torch.Tensor], stores: list[torch.Tensor]) -> tuple:
        """CycleGAN's image pool (Shrivastava et al. §2.3 as CycleGAN implements it): each image
        fills a free slot and is returned while the pool fills; once full, with probability 1/2
        a random stored image (with its companions) is returned and the new one takes its slot,
        otherwise the new one is returned. Works for batch 1, SG-GAN's paper setting."""
        rows = []
        for i in range(tensors[0].shape[0]):
            filling = self._size < self.capacity
            if filling:
                slot, take = self._size, False
                self._size += 1
            else:
                coin = torch.rand((), generator=self._generator)
                slot = int(torch.randint(self.capacity, (), generator=self._generator))
                take = bool(coin < 0.5)
            current = [t[i : i + 1] for t in tensors]
            if take:
                rows.append([store[slot : slot + 1].to(t.device, t.dtype).clone()
                             for t, store in zip(tensors, stores, strict=True)])  # fmt: skip
            else:
                rows.append(current)
            if take or filling:  # CycleGAN stores only while filling or on a swap
                for t, store in zip(current, stores, strict=True):
                    store[slot : slot + 1] = t.to(store.device, store.dtype)
        return tuple(torch.cat([r[k] for r in rows]) for k in range(len(tensors)))

    def _storage_for(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The stores, allocated on first use, checked against `tensors`, on the right device."""
        if self._stores is None:
            self._stores = [
                torch.empty(
                    (self.capacity, *t.shape[1:]), dtype=t.dtype, device=self.device or t.device
                )
                for t in tensors
            ]
            return self._stores
        if len(tensors) != len(self._stores):
            raise ValueError(
                f"the buffer holds {len(self._stores) - 1} companion(s) per image, "
                f"got {len(tensors) - 1}"
            )
        for i, (t, store) in enumerate(zip(tensors, self._stores, strict=True)):
            if t.shape[1:] != store.shape[1:]:
                what = "images" if i == 0 else f"companion {i - 1}"
                raise ValueError(
                    f"{what}: the buffer stores rows of shape {tuple(store.shape[1:])}, "
                    f"got {tuple(t.shape[1:])}"
                )
        wanted = self.device or tensors[0].device
        if self._stores[0].device != wanted:  # e.g. loaded from a CPU checkpoint
            self._stores = [store.to(wanted) for store in self._stores]
        return self._stores

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"tensors": {name: CPU tensor}, "meta": JSON-able dict}``; see the module docstring."""
        tensors = {"rng_state": self._generator.get_state()}
        if self._stores is not None and self._size:
            for i, store in enumerate(self._stores):
                name = "images" if i == 0 else f"companion.{i - 1}"
                tensors[name] = store[: self._size].to("cpu", copy=True)
        meta = {
            "format": STATE_FORMAT,
            "capacity": self.capacity,
            "seed": self.seed,
            "size": self._size,
            "companions": 0 if self._stores is None else len(self._stores) - 1,
        }
        return {"tensors": tensors, "meta": meta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (possibly via safetensors + JSON)."""
        tensors, meta = state["tensors"], state["meta"]
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"not a history buffer state: format {meta.get('format')!r}")
        if meta["capacity"] != self.capacity:
            raise ValueError(f"state has capacity {meta['capacity']}, this buffer {self.capacity}")
        size = int(meta["size"])
        names = ["images", *(f"companion.{i}" for i in range(int(meta["companions"])))]
        stores = None
        if size:
            missing = [n for n in names if n not in tensors]
            if missing:
                raise ValueError(f"history state lacks tensor(s) {', '.join(missing)}")
            stores = []
            for name in names:
                rows = tensors[name]
                if rows.shape[0] != size:
                    raise ValueError(f"history state: {name} has {rows.shape[0]} rows, not {size}")
                device = self.device or rows.device
                store = torch.empty(
                    (self.capacity, *rows.shape[1:]), dtype=rows.dtype, device=device
                )
                store[:size] = rows.to(device)
                stores.append(store)
        self._generator.set_state(tensors["rng_state"].to("cpu", torch.uint8))
        self.seed = int(meta["seed"])
        self._stores = stores
        self._size = size
