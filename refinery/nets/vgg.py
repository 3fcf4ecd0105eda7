"""VGG16 / VGG19 convolutional layers, built here with torchvision's layer indexing.

Two users: SPIGAN's perceptual loss (VGG19 activations, ``VGG19Features``) and the VGG16
backbone of the FCN8s task and privileged networks (``refinery.nets.spigan``). Neither needs
torchvision: ``vgg_layers`` builds the same ``nn.Sequential`` as torchvision's
``vgg16().features`` / ``vgg19().features`` (conv 3×3 pad 1, ReLU, max-pool 2×2/2, in the same
order), so a torchvision state dict loads key for key (``features.0.weight``, ...). Nothing
is ever downloaded: pretrained weights come from a local file the user names,
``load_vgg_weights(module, path)`` (``.pth``/``.pt`` read with ``weights_only=True``, or
``.safetensors``). Without a file every call warns (``UntrainedWeightsWarning``) that the VGG
layers are random, which for a perceptual loss means a random-feature loss.

Layer names follow the VGG paper and Caffe: ``conv{block}_{i}``, ``relu{block}_{i}``,
``pool{block}``; ``vgg_layer_index(depth)`` maps them to torchvision indices (VGG19 conv1_2 is
``features.2``, its ReLU ``features.3``). A tapped ``conv`` name is the pre-activation; the
perceptual layers are read after their ReLU (``PERCEPTUAL_LAYERS``): see
``vgg19_perceptual_layers``.

Inputs are images in [-1, 1] (the generators' tanh range); ``forward`` maps them to [0, 1] and
applies ImageNet normalisation (torchvision's mean/std) itself, so callers never do.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Channels per block (the "D" and "E" columns of Simonyan & Zisserman's Table 1).
BLOCKS: dict[int, tuple[tuple[int, ...], ...]] = {
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's, for RGB in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

# SPIGAN's perceptual layers (Lee et al. §3.2, after Chen & Koltun's CRN): VGG19 conv1_2 ...
# conv5_2, read after their ReLU as CRN's code does (its build_net('conv') returns relu(conv + b))
# and as Caffe's in-place ReLU leaves the blob named "conv1_2".
PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
# Johnson et al.'s VGG16 perceptual layers, the default of VGG16Features.
VGG16_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


class UntrainedWeightsWarning(UserWarning):
    """A network that should start from pretrained VGG weights runs with random ones."""


def vgg19_perceptual_layers() -> tuple[str, ...]:
    """SPIGAN's L_perc layers: VGG19 conv1_2 ... conv5_2 (after ReLU); 64/128/256/512/512 maps."""
    return PERCEPTUAL_LAYERS


def _check_depth(depth: int) -> None:
    if depth not in BLOCKS:
        raise ValueError(f"VGG depth must be one of {sorted(BLOCKS)}, got {depth!r}")


def vgg_layer_index(depth: int) -> dict[str, int]:
    """{'conv1_1': 0, 'relu1_1': 1, ..., 'pool5': 30 (VGG16) or 36 (VGG19)}: torchvision's indices."""
    _check_depth(depth)
    names: dict[str, int] = {}
    index = 0
    for b, block in enumerate(BLOCKS[depth], start=1):
        for i in range(1, len(block) + 1):
            names[f"conv{b}_{i}"], names[f"relu{b}_{i}"] = index, index + 1
            index += 2
        names[f"pool{b}"] = index
        index += 1
    return names


def vgg_layer_channels(depth: int, width: int = 64) -> dict[str, int]:
    """Output channels of every named layer, for a net whose first block has `width` maps."""
    _check_depth(depth)
    channels: dict[str, int] = {}
    for b, block in enumerate(BLOCKS[depth], start=1):
        for i, c in enumerate(block, start=1):
            channels[f"conv{b}_{i}"] = channels[f"relu{b}_{i}"] = c * width // 64
        channels[f"pool{b}"] = block[-1] * width // 64
    return channels


def vgg_layers(depth: int, *, channels: int = 3, width: int = 64, upto: int | None = None):
    """torchvision's ``vgg{depth}().features`` (optionally narrower, or cut after `upto`).

    `width` scales every block (64 is VGG; 8 gives 1/8 of the maps, for CPU-sized nets). The
    ReLUs are not in-place (torchvision's are) so that tapped activations stay intact; that
    changes no key of the state dict.
    """
    _check_depth(depth)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"VGG width must be a positive integer, got {width!r}")
    layers: list[nn.Module] = []
    c_in = channels
    for block in BLOCKS[depth]:
        for c in block:
            c_out = c * width // 64
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            c_in = c_out
        layers.append(nn.MaxPool2d(2, 2))
    if upto is not None:
        layers = layers[: upto + 1]
    for m in layers:  # torchvision's VGG init
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class ImageNetInput(nn.Module):
    """[-1, 1] images -> ImageNet-normalised ones (what VGG weights trained on ImageNet expect).

    RGB uses torchvision's mean/std per channel; any other channel count uses their averages.
    The constants are non-persistent buffers: not in the state dict, so torchvision files load.
    """

    def __init__(self, channels: int = 3):
        super().__init__()
        if channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean = (sum(IMAGENET_MEAN) / 3,) * channels
            std = (sum(IMAGENET_STD) / 3,) * channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) * 0.5 - self.mean) / self.std


# -- feature extractor ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VGGConfig:
    depth: int = 19  # 16 or 19
    channels: int = 3
    width: int = 64  # maps in the first block; 64 is VGG (pretrained files need it)
    layers: tuple[str, ...] = PERCEPTUAL_LAYERS  # activations returned, in network order

    def __post_init__(self) -> None:
        index = vgg_layer_index(self.depth)
        if not self.layers:
            raise ValueError("VGGConfig.layers must name at least one layer")
        unknown = [name for name in self.layers if name not in index]
        if unknown:
            raise ValueError(
                f"unknown VGG{self.depth} layer(s) {unknown}; expected names like "
                f"'conv1_2', 'relu3_2', 'pool4' (see vgg_layer_index)"
            )
        order = [index[name] for name in self.layers]
        if order != sorted(set(order)):
            raise ValueError(
                f"VGGConfig.layers must be distinct and in network order: {self.layers}"
            )
        if self.channels < 1:
            raise ValueError(f"VGGConfig.channels must be positive, got {self.channels}")


class VGGFeatures(nn.Module):
    """(B, C, H, W) images in [-1, 1] -> [activation of each of ``config.layers``].

    Only the layers up to the last requested one are built. ``requires_grad=False`` (the
    default of the VGG16/VGG19 classes) freezes the weights; gradients still reach the input,
    which is what a perceptual loss needs.
    """

    untrained_note = "; a perceptual loss computed on them is a random-feature loss"

    def __init__(
        self,
        config: VGGConfig,
        *,
        weights: str | os.PathLike | None = None,
        requires_grad: bool = False,
    ):
        super().__init__()
        self.config = config
        self.vgg_depth = config.depth
        index = vgg_layer_index(config.depth)
        self._taps = [index[name] for name in config.layers]
        self.input = ImageNetInput(config.channels)
        self.features = vgg_layers(
            config.depth, channels=config.channels, width=config.width, upto=self._taps[-1]
        )
        load_vgg_weights(self, weights)
        self.requires_grad_(requires_grad)

    @property
    def out_channels(self) -> tuple[int, ...]:
        channels = vgg_layer_channels(self.config.depth, self.config.width)
        return tuple(channels[name] for name in self.config.layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.input(x)
        out: list[torch.Tensor] = []
        taps = iter(self._taps)
        tap = next(taps)
        for i, layer in enumerate(self.features):
            y = layer(y)
            if i == tap:
                out.append(y)  # (B, C_l, H / 2**pools, W / 2**pools)
                tap = next(taps, -1)
        return out


class VGG19Features(VGGFeatures):
    """VGG19 activations; by default SPIGAN's perceptual layers conv1_2 ... conv5_2 (post-ReLU)."""

    def __init__(
        self,
        *,
        layers: tuple[str, ...] = PERCEPTUAL_LAYERS,
        weights: str | os.PathLike | None = None,
        requires_grad: bool = False,
        channels: int = 3,
    ):
        super().__init__(
            VGGConfig(depth=19, channels=channels, layers=tuple(layers)),
            weights=weights,
            requires_grad=requires_grad,
        )


class VGG16Features(VGGFeatures):
    """VGG16 activations; by default Johnson et al.'s relu1_2, relu2_2, relu3_3, relu4_3."""

    def __init__(
        self,
        *,
        layers: tuple[str, ...] = VGG16_LAYERS,
        weights: str | os.PathLike | None = None,
        requires_grad: bool = False,
        channels: int = 3,
    ):
        super().__init__(
            VGGConfig(depth=16, channels=channels, layers=tuple(layers)),
            weights=weights,
            requires_grad=requires_grad,
        )


# -- weights ----------------------------------------------------------------------------------


def untrained_message(module: nn.Module) -> str:
    """The text of the warning ``load_vgg_weights(module, None)`` gives."""
    depth = getattr(module, "vgg_depth", "")
    note = getattr(module, "untrained_note", "")
    return (
        f"{type(module).__name__}: no VGG{depth} weights file was given, so its VGG layers are "
        f"untrained (random init){note}. Pass a local torchvision-format state dict "
        f"(.pth or .safetensors, e.g. torchvision's vgg{depth}-*.pth); nothing is downloaded."
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local ``.safetensors`` or ``.pth``/``.pt`` file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # a training checkpoint that wraps its state dict
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


# FCN's "convolutionalised" classifier: torchvision classifier.0 / .3 are fc6 / fc7.
_FC_KEYS = {"fc6": "classifier.0", "fc7": "classifier.3"}


def load_vgg_weights(module: nn.Module, path: str | os.PathLike | None) -> list[str]:
    """Load VGG weights from a local file into `module`; returns the keys of `module` it set.

    `module` holds the VGG layers as ``module.features`` with torchvision's indexing (any
    ``VGGFeatures``, or an FCN8s); a torchvision ``vgg16``/``vgg19`` state dict, or one saved
    from such a module, loads into them (extra keys, e.g. beyond a truncated ``features``, are
    ignored). A module with ``fc6``/``fc7`` convs (FCN8s) also takes torchvision's
    ``classifier.0``/``classifier.3`` reshaped into 7×7 and 1×1 convs (FCN's
    convolutionalisation), or ``fc6.*``/``fc7.*`` keys as they are. A missing key or a shape
    that differs raises ValueError. ``path=None`` loads nothing and warns
    (``UntrainedWeightsWarning``, text from ``untrained_message``).
    """
    if path is None:
        warnings.warn(untrained_message(module), UntrainedWeightsWarning, stacklevel=2)
        return []
    source = read_state_dict(path)
    own = module.state_dict()
    chosen: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, target in own.items():
        prefix = key.split(".", 1)[0]
        if prefix == "features":
            value = source.get(key)
        elif prefix in _FC_KEYS and hasattr(module, prefix):
            value = source.get(key)
            if value is None:
                value = source.get(key.replace(prefix, _FC_KEYS[prefix], 1))
                if value is not None and value.ndim == 2 and value.numel() == target.numel():
                    value = value.reshape(target.shape)  # (4096, 512 * 7 * 7) -> (4096, 512, 7, 7)
        else:
            continue
        if value is None:
            missing.append(key)
            continue
        if value.shape != target.shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)} in the file but "
                f"{tuple(target.shape)} in {type(module).__name__} (is the file for another VGG "
                "depth? pretrained VGG weights also need the full-width net with 3 input channels)"
            )
        chosen[key] = value
    if missing:
        raise ValueError(
            f"{path}: no VGG weights for {', '.join(missing[:6])}"
            + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            + " (is it a torchvision vgg16/vgg19 state dict of the right depth?)"
        )
    with torch.no_grad():
        for key, value in chosen.items():
            own[key].copy_(value.to(own[key].dtype))
    return sorted(chosen)
