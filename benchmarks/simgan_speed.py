"""SimGAN training speed: images/s of adversarial iterations at the paper's eye sizes.

The ``gaze`` preset's networks (``simgan-refiner-gaze`` + ``simgan-discriminator-gaze``, 35×55
crops) driven through the trainer's own step functions, ``train.simgan.refiner_step`` and
``discriminator_step``, with the preset's optimisers, λ, ψ and history buffer. One adversarial
iteration is Algorithm 1's inner loop: K_g refiner updates, then K_d discriminator updates;
it processes ``K_g·B + K_d·2B`` images (the count ``SimGAN.images_per_iteration`` reports, so
the figure is comparable with the ``speed/images_per_s`` the trainer logs).

Data loading is left out (batches are rendered eye crops held in memory): this is the compute
ceiling of the trainer. Each case warms up, then times ``--repeats`` runs of ``--iterations``
iterations (synchronising the GPU before reading the clock) and records the median.

Cases: CPU at batch 32 (float32); on CUDA, batch 32 and the paper's 512 with float16 autocast
and gradient scaling (the preset's ``amp: true``). Run: ``python -m benchmarks.simgan_speed``
(under 2 minutes on 2 CPU cores); ``--quick`` for a smoke run; ``--out DIR``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import common
from refinery import sim
from refinery.history import HistoryBuffer
from refinery.losses import make_psi
from refinery.registry import build_network
from train import simgan
from train.config import to_dict

NAME = "simgan_speed"
CPU_THREADS = 2


def _images(n: int, seed: int, variant: str) -> torch.Tensor:
    pixels = np.stack([s["png"] for s in sim.generate("gaze", variant, n, seed=seed)])
    return torch.from_numpy(pixels.astype(np.float32)[:, None] / 127.5 - 1)  # (n, 1, 35, 55)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # CPU-GPU sync: the clock must see finished work


def measure(
    config: simgan.SimGANConfig,
    *,
    device: torch.device,
    batch_size: int,
    amp: bool,
    warmup: int,
    iterations: int,
    repeats: int,
) -> dict[str, Any]:
    """Median images/s of ``iterations`` adversarial iterations, over ``repeats`` runs."""
    torch.manual_seed(0)
    refiner = build_network(config.refiner, channels=config.channels).to(device)
    discriminator = build_network(config.discriminator, channels=config.channels).to(device)
    optimisers = {
        "refiner": simgan.make_optimiser(refiner.parameters(), config.refiner_optimiser),
        "discriminator": simgan.make_optimiser(
            discriminator.parameters(), config.discriminator_optimiser
        ),
    }
    enabled = amp and device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=enabled)
    scalers = {k: torch.amp.GradScaler(device.type, enabled=enabled) for k in optimisers}
    psi = make_psi(config.psi)
    buffer = HistoryBuffer(capacity=config.buffer_size, seed=0)
    # a few distinct batches, cycled, so every step sees new pixels
    pool = 4
    synthetic = _images(pool * batch_size, seed=1, variant="synthetic").to(device)
    real = _images(pool * batch_size, seed=2, variant="real").to(device)
    count = 0

    def batch(images: torch.Tensor) -> torch.Tensor:
        i = count % pool
        return images[i * batch_size : (i + 1) * batch_size]

    def iteration() -> None:
        nonlocal count
        for _ in range(config.k_g):
            simgan.refiner_step(
                refiner, discriminator, optimisers["refiner"], batch(synthetic),
                psi=psi, weight=config.self_reg_weight, adversarial=True,
                scaler=scalers["refiner"], autocast=autocast,
            )  # fmt: skip
            count += 1
        for _ in range(config.k_d):
            simgan.discriminator_step(
                refiner, discriminator, optimisers["discriminator"], batch(synthetic), batch(real),
                buffer, scaler=scalers["discriminator"], autocast=autocast,
            )  # fmt: skip
            count += 1

    for _ in range(warmup):
        iteration()
    _sync(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            iteration()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    per_iteration = config.k_g * batch_size + config.k_d * 2 * batch_size
    median = statistics.median(seconds)
    return {
        "images_per_s": round(per_iteration * iterations / median, 1),
        "iterations_per_s": round(iterations / median, 3),
        "ms_per_iteration": round(1000 * median / iterations, 2),
        "images_per_iteration": per_iteration,
        "batch_size": batch_size,
        "amp_float16": enabled,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "warmup_iterations": warmup,
        "timed_iterations": iterations,
        "repeats": repeats,
        "all_images_per_s": [round(per_iteration * iterations / s, 1) for s in seconds],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations: a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write DIR/simgan_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(CPU_THREADS)
    config = simgan.load_config(preset="gaze")
    cases: list[tuple[str, torch.device, int, bool, int, int]] = [
        # (name, device, batch, amp, warm-up iterations, timed iterations)
        ("cpu_b32_fp32", torch.device("cpu"), 32, False, 3, 8),
    ]
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        cases += [
            ("cuda_b32_amp", cuda, 32, True, 20, 100),
            ("cuda_b512_amp", cuda, 512, True, 10, 50),
        ]
    figures: dict[str, Any] = {}
    for name, device, batch_size, amp, warmup, iterations in cases:
        if args.quick:
            warmup, iterations = 1, 2
        figures[name] = measure(
            config,
            device=device,
            batch_size=batch_size,
            amp=amp,
            warmup=warmup,
            iterations=iterations,
            repeats=1 if args.quick else args.repeats,
        )
        print(name, figures[name], flush=True)
    settings = {
        "preset": "gaze",
        "refiner": config.refiner,
        "discriminator": config.discriminator,
        "input": "1×35×55 rendered eye crops in [-1, 1], held in memory (no data loading)",
        "iteration": f"K_g={config.k_g} refiner steps + K_d={config.k_d} discriminator steps",
        "simgan_config": to_dict(config),
        "cpu_threads": CPU_THREADS,
        "cuda_available": torch.cuda.is_available(),
        "quick": args.quick,
    }
    common.write_result(NAME, figures, settings, results=args.out or common.RESULTS)
    return figures


if __name__ == "__main__":
    main()
