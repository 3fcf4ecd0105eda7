"""Noise channels for refiners: standard-normal noise that is a function of the image alone.

A deterministic refiner cannot add sensor noise: the same synthetic eye always refines to the
same smooth image, while real crops are grainy. StyleGAN-style generators fix this with noise
inputs the network learns to scale; a SimGAN refiner built with ``noise=N`` takes N extra input
channels of N(0, 1) noise next to the image and its convolutions modulate them.

Where the noise comes from decides what a refined dataset is. Drawn from a random generator it
would make a refine job irreproducible: a sample refined twice (a retried shard, a resumed
job, the ONNX Runtime engine against the torch reference) would come out different.
``seeded_noise`` instead derives it from the image itself, with integer arithmetic that gives
the same bits on every device and in every batch:

1. the image is quantised to 8 bits (the model range [-1, 1] to 0..255, so an 8-bit image and
   its float version give the same integers) and hashed into a 32-bit seed per image (a
   position-weighted sum, kept below 2^55 so no int64 ever wraps);
2. each noise value (image n, channel c, row u, column v) mixes the seed with its own index
   through the lowbias32 integer hash (Wellons' hash-prospector) into two uniform numbers;
3. Box–Muller turns the two into one N(0, 1) value.

So a sample's noise depends on its pixels only: not on its batch, the batch size, the backend
or the device (the integers are the same bits everywhere; the float step, Box–Muller, is the
same few float32 operations, whose results a GPU's math library may put a few ulps apart).
Two identical images get identical noise, as they would get identical refined images without
it. Training uses the same function, so the refiner the trainer sees in its samples is exactly
the one the engine runs.

Engines apply it outside the graph (``engines.base.Engine.run_tensor``): ONNX has no integer
hash TensorRT can run, and the graph then stays plain conv/ReLU/tanh with C + N input channels.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF
_WEIGHT_BITS = 20  # pixel weights < 2^20: 255 * 2^20 * (pixels < 2^27) < 2^55, no int64 wraps


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2^32 for int64 x in [0, 2^32), in halves so no product passes 2^48."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (Chris Wellons, hash-prospector): int64 in [0, 2^32) -> mixed, same range."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def image_seeds(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] -> (B,) int64 seeds in [0, 2^32), one per image."""
    levels = ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.int64)
    flat = levels.flatten(1)  # (B, N)
    if flat.shape[1] >= 1 << 27:
        raise ValueError(f"image of {flat.shape[1]} values is too large to seed noise from")
    index = torch.arange(flat.shape[1], device=x.device, dtype=torch.int64)
    weights = _hash32(index) >> (32 - _WEIGHT_BITS)  # in [0, 2^20)
    total = (flat * (weights + 1)).sum(dim=1)  # < 2^55
    return _hash32((total ^ (total >> 32)) & _MASK32)


def seeded_noise(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] -> (B, channels, H, W) float32 N(0, 1) noise, on x's
    device, a function of each image's pixels alone (see the module docstring)."""
    batch, _, height, width = x.shape
    seeds = image_seeds(x).view(batch, 1)
    count = channels * height * width
    index = torch.arange(count, device=x.device, dtype=torch.int64).view(1, count)
    key = _hash32(seeds ^ _hash32(index))  # (B, count)
    first = _hash32(key ^ 0x9E3779B9)
    second = _hash32(key ^ 0x85EBCA6B)
    # 24-bit uniforms, exact in float32; (0, 1) open so the logarithm stays finite
    u1 = ((first >> 8).to(torch.float32) + 0.5) / float(1 << 24)
    u2 = ((second >> 8).to(torch.float32) + 0.5) / float(1 << 24)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.view(batch, channels, height, width)


def with_noise(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) images -> (B, C + channels, H, W): the images and their seeded noise."""
    if channels == 0:
        return x
    return torch.cat([x, seeded_noise(x, channels).to(x.dtype)], dim=1)
