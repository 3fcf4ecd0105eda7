"""SimGAN refiner and local discriminator (Shrivastava et al., CVPR 2017, §2 and §3).

Code (paper): ``SimGANRefiner`` (R_θ), ``LocalDiscriminator`` (D_φ). The losses that tie them
together (ℓ_real, ℓ_reg, the local adversarial loss) are in ``refinery.losses`` and the image
history of §2.3 in ``refinery.history``.

Refiner. A ResNet without striding or pooling (§3.1 "Implementation details"; the ResNet block
is Fig. 6 of arXiv v1): a k×k conv to F feature maps and ReLU, N ResNet blocks (conv k×k, ReLU,
conv k×k, add the block's input, ReLU), a 1×1 conv back to the image's channels and tanh. Every conv
pads k//2, so the output has the input's H×W for any H, W and the network exports to ONNX with
dynamic height and width. ``padding="zeros"`` is TensorFlow's "SAME", as the paper's TF-era ports
do; ``padding="reflect"`` mirrors the image instead (CycleGAN's generators): with zeros every
layer sees a black frame around the crop, and refiners learn to draw lines along the borders,
which reflection does not invite. The recipes choose reflect; a config without the key (runs
recorded before it existed) builds zeros, as those weights were trained. Inputs and outputs are in
[-1, 1] (``value_range``): the tanh can only produce that range, so the synthetic images must be
scaled into it too, or the self-regularisation term compares images on different scales.

Normalisation. The paper names none. Of the public ports, carpedm20/simulated-unsupervised-
tensorflow (slim.conv2d, no normalizer_fn) and mjdietzx/SimGAN (= wayaai/SimGAN, Keras) use
none; AlexHex7/SimGAN_pytorch and ajdillhoff/simgan-pytorch add BatchNorm after every conv.
We follow the paper and the first two: ``norm="none"`` by default, so a refined image never
depends on the other images of its batch, in training or in inference, and the exported graph
is pure conv/ReLU/tanh. ``norm="instance"`` (per image, batch-independent, affine) is available
for experiments; BatchNorm is not offered because a refiner's output would then depend on its
batch during training and on training-set statistics at inference.

Discriminator. Fully convolutional, so its output is a map of per-patch decisions (the local
adversarial loss, §2.2): (B, 2, h, w) unbounded logits. Class index convention, used by every
loss and trainer: channel ``REFINED = 0`` is "refined / fake", channel ``REAL = 1`` is "real"
(the constants live in ``refinery.losses``; carpedm20 and ajdillhoff use this order, mjdietzx
and AlexHex7 the opposite one). The last layer is a plain 1×1 conv: no ReLU, no softmax (the
losses apply log-softmax themselves). mjdietzx/SimGAN and carpedm20 (whose last slim.conv2d
keeps its default ReLU) end in a ReLU, AlexHex7 and ajdillhoff in a LeakyReLU: that clips or
squashes every negative logit, so a patch's decision can only move by raising one logit, and
where both are clipped to 0 the softmax is stuck at 50/50 with no gradient.

Layouts, from the paper's implementation details; every conv but the last is followed by ReLU,
and convs and pools pad k//2 ("SAME", as mjdietzx/SimGAN's Keras ``border_mode='same'``):

- gaze (35×55 eye crops, §3.1): conv3×3/2 → 96, conv3×3/2 → 64, maxpool 3×3/1, conv3×3 → 32,
  conv1×1 → 32, conv1×1 → 2. A 35×55 crop gives a 9×14 map; each logit sees a 23×23 patch.
- hand (224×224 NYU depth, §3.2): conv7×7/4 → 96, conv5×5/2 → 64, maxpool 3×3/2, conv3×3/2 →
  32, conv1×1 → 32, conv1×1 → 2 (the same list appears in ajdillhoff/simgan-pytorch, which
  uses unpadded convs). 224×224 gives a 7×7 map.
- small: the gaze layout with 32/32/16/16 maps, for CPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from refinery.noise import with_noise
from refinery.registry import register_network

NORMS = ("none", "instance")
PADDINGS = ("zeros", "reflect")


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


# -- refiner ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RefinerConfig:
    channels: int = 1  # image channels in and out
    features: int = 64  # F, feature maps in every ResNet block
    kernel_size: int = 3  # k; odd, so that padding k // 2 keeps H x W
    blocks: int = 4  # N ResNet blocks
    norm: str = "none"  # "none" (paper) or "instance"; see the module docstring
    padding: str = "zeros"  # "zeros" (paper, TF "SAME") or "reflect"; see the module docstring
    noise: int = 0  # extra input channels of seeded N(0, 1) noise (refinery.noise); not the paper

    def __post_init__(self) -> None:
        if isinstance(self.noise, bool) or not isinstance(self.noise, int) or self.noise < 0:
            raise ValueError(f"RefinerConfig.noise must be an integer >= 0, got {self.noise!r}")
        _check_positive(
            "RefinerConfig",
            channels=self.channels,
            features=self.features,
            kernel_size=self.kernel_size,
            blocks=self.blocks,
        )
        if self.kernel_size % 2 == 0:
            raise ValueError(f"RefinerConfig.kernel_size must be odd, got {self.kernel_size}")
        if self.norm not in NORMS:
            raise ValueError(f"RefinerConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.padding not in PADDINGS:
            raise ValueError(
                f"RefinerConfig.padding must be one of {PADDINGS}, got {self.padding!r}"
            )


def _norm(kind: str, features: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(features, affine=True)
    return nn.Identity()


class ResnetBlock(nn.Module):
    """conv k×k, ReLU, conv k×k, + input, ReLU (the paper's Fig. 6, after He et al.)."""

    def __init__(self, features: int, kernel_size: int, norm: str = "none", padding: str = "zeros"):
        super().__init__()
        same = dict(padding=kernel_size // 2, padding_mode=padding)
        self.conv1 = nn.Conv2d(features, features, kernel_size, **same)
        self.norm1 = _norm(norm, features)
        self.conv2 = nn.Conv2d(features, features, kernel_size, **same)
        self.norm2 = _norm(norm, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, H, W) -> (B, F, H, W)
        y = torch.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return torch.relu(x + y)


class SimGANRefiner(nn.Module):
    """R_θ: (B, C, H, W) in [-1, 1] -> (B, C, H, W) in [-1, 1], any H, W.

    With ``noise=N`` the first conv takes C + N channels: given the C image channels alone the
    refiner appends their seeded noise itself (``refinery.noise.with_noise``; training, sample
    sheets), given C + N it takes them as they are (the exported graph: engines append the
    same noise outside it, so an engine refines exactly as the trained module does)."""

    value_range = (-1.0, 1.0)

    def __init__(self, config: RefinerConfig):
        super().__init__()
        self.config = config
        k, f = config.kernel_size, config.features
        pad = config.padding
        inputs = config.channels + config.noise
        self.stem = nn.Conv2d(inputs, f, k, padding=k // 2, padding_mode=pad)
        self.blocks = nn.Sequential(
            *(ResnetBlock(f, k, config.norm, pad) for _ in range(config.blocks))
        )
        self.head = nn.Conv2d(f, config.channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.noise and x.shape[1] == self.config.channels:
            x = with_noise(x, self.config.noise)  # (B, C + N, H, W)
        y = torch.relu(self.stem(x))  # (B, F, H, W)
        y = self.blocks(y)
        return torch.tanh(self.head(y))  # (B, C, H, W)


@register_network("simgan-refiner-gaze", role="refiner", input_size=(35, 55))
def simgan_refiner_gaze(
    *, channels: int = 1, norm: str = "none", padding: str = "zeros", noise: int = 0
) -> SimGANRefiner:
    """The paper's eye refiner (§3.1): 3×3 convs, 64 maps, 4 ResNet blocks; 35×55 crops."""
    return SimGANRefiner(
        RefinerConfig(
            channels=channels,
            features=64,
            kernel_size=3,
            blocks=4,
            norm=norm,
            padding=padding,
            noise=noise,
        )
    )


@register_network("simgan-refiner-hand", role="refiner", input_size=(224, 224))
def simgan_refiner_hand(
    *, channels: int = 1, norm: str = "none", padding: str = "zeros", noise: int = 0
) -> SimGANRefiner:
    """The paper's hand-depth refiner (§3.2): 7×7 convs, 64 maps, 10 ResNet blocks; 224×224."""
    return SimGANRefiner(
        RefinerConfig(
            channels=channels,
            features=64,
            kernel_size=7,
            blocks=10,
            norm=norm,
            padding=padding,
            noise=noise,
        )
    )


@register_network("simgan-refiner-small", role="refiner", input_size=(35, 55))
def simgan_refiner_small(
    *, channels: int = 1, norm: str = "none", padding: str = "zeros", noise: int = 0
) -> SimGANRefiner:
    """A CPU-sized refiner: 3×3 convs, 32 maps, 3 ResNet blocks (~56k parameters)."""
    return SimGANRefiner(
        RefinerConfig(
            channels=channels,
            features=32,
            kernel_size=3,
            blocks=3,
            norm=norm,
            padding=padding,
            noise=noise,
        )
    )


# -- discriminator ----------------------------------------------------------------------------

# A layer is ("conv", kernel, stride, out_channels) or ("maxpool", kernel, stride).
Layer = tuple[str, int, int] | tuple[str, int, int, int]

GAZE_LAYERS: tuple[Layer, ...] = (
    ("conv", 3, 2, 96),
    ("conv", 3, 2, 64),
    ("maxpool", 3, 1),
    ("conv", 3, 1, 32),
    ("conv", 1, 1, 32),
    ("conv", 1, 1, 2),
)
HAND_LAYERS: tuple[Layer, ...] = (
    ("conv", 7, 4, 96),
    ("conv", 5, 2, 64),
    ("maxpool", 3, 2),
    ("conv", 3, 2, 32),
    ("conv", 1, 1, 32),
    ("conv", 1, 1, 2),
)
SMALL_LAYERS: tuple[Layer, ...] = (
    ("conv", 3, 2, 32),
    ("conv", 3, 2, 32),
    ("maxpool", 3, 1),
    ("conv", 3, 1, 16),
    ("conv", 1, 1, 16),
    ("conv", 1, 1, 2),
)

# The small maps with an 11×11 receptive field (SMALL_LAYERS: 23×23): no second stride and no
# max-pool, so each logit judges texture, edges and tone in a window the size of an iris's
# half, not the iris and both lids at once; 35×55 -> 18×28 patches.
LOCAL_LAYERS: tuple[Layer, ...] = (
    ("conv", 3, 2, 32),
    ("conv", 3, 1, 32),
    ("conv", 3, 1, 16),
    ("conv", 1, 1, 16),
    ("conv", 1, 1, 2),
)
# The local window with twice the maps (64/64/32/32): a sharper judge of the same 11×11 patches.
LOCAL_WIDE_LAYERS: tuple[Layer, ...] = (
    ("conv", 3, 2, 64),
    ("conv", 3, 1, 64),
    ("conv", 3, 1, 32),
    ("conv", 1, 1, 32),
    ("conv", 1, 1, 2),
)


def receptive_field(layers: tuple[Layer, ...]) -> int:
    """The side, in input pixels, of the window one output logit of ``layers`` sees."""
    side, step = 1, 1
    for _, kernel, stride, *_ in layers:
        side += (kernel - 1) * step
        step *= stride
    return side


@dataclass(frozen=True, kw_only=True)
class DiscriminatorConfig:
    channels: int = 1
    layers: tuple[Layer, ...] = GAZE_LAYERS

    def __post_init__(self) -> None:
        _check_positive("DiscriminatorConfig", channels=self.channels)
        for layer in self.layers:
            ok = (layer[0] == "conv" and len(layer) == 4) or (
                layer[0] == "maxpool" and len(layer) == 3
            )
            if not ok:
                raise ValueError(
                    f"bad discriminator layer {layer!r}: expected ('conv', kernel, stride, out) "
                    "or ('maxpool', kernel, stride)"
                )
            sizes = dict(zip(("kernel", "stride", "out_channels"), layer[1:], strict=False))
            _check_positive(f"DiscriminatorConfig layer {layer!r}", **sizes)
        if not self.layers or self.layers[-1][0] != "conv" or self.layers[-1][3] != 2:
            raise ValueError("the last discriminator layer must be a conv with 2 outputs")


class LocalDiscriminator(nn.Module):
    """D_φ: (B, C, H, W) -> (B, 2, h, w) logits, channel 0 = refined, 1 = real."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = config.channels
        last = len(config.layers) - 1
        for i, (kind, kernel, stride, *out) in enumerate(config.layers):
            if kind == "maxpool":
                layers.append(nn.MaxPool2d(kernel, stride, padding=kernel // 2))
                continue
            layers.append(nn.Conv2d(channels, out[0], kernel, stride, padding=kernel // 2))
            channels = out[0]
            if i != last:  # logits: no activation on the last conv
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, 2, h, w)


class TwoScaleDiscriminator(nn.Module):
    """Two local discriminators on the same image, a fine one and a coarse one (the multi-scale
    judges of pix2pixHD, Wang et al., CVPR 2018), as one D_φ: (B, C, H, W) -> (B, 2, 2h, w).

    The coarse branch's logit map is resized (nearest) to the fine one's h×w and stacked under it,
    so the local adversarial loss, a mean over patches, weighs the two scales equally whatever
    their patch counts, and every caller still reads one (B, 2, h', w') map of decisions."""

    def __init__(self, fine: DiscriminatorConfig, coarse: DiscriminatorConfig):
        super().__init__()
        self.fine = LocalDiscriminator(fine)
        self.coarse = LocalDiscriminator(coarse)

    @property
    def branches(self) -> tuple[LocalDiscriminator, LocalDiscriminator]:
        return self.fine, self.coarse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fine(x)
        coarse = nn.functional.interpolate(self.coarse(x), size=fine.shape[-2:], mode="nearest")
        return torch.cat([fine, coarse], dim=2)  # (B, 2, 2h, w)


@register_network("simgan-discriminator-gaze", role="discriminator", input_size=(35, 55))
def simgan_discriminator_gaze(*, channels: int = 1) -> LocalDiscriminator:
    """The paper's eye discriminator (§3.1): 5 convs, 1 max-pool; 35×55 -> 9×14 patches."""
    return LocalDiscriminator(DiscriminatorConfig(channels=channels, layers=GAZE_LAYERS))


@register_network("simgan-discriminator-hand", role="discriminator", input_size=(224, 224))
def simgan_discriminator_hand(*, channels: int = 1) -> LocalDiscriminator:
    """The paper's hand-depth discriminator (§3.2): 7×7/4 first conv; 224×224 -> 7×7 patches."""
    return LocalDiscriminator(DiscriminatorConfig(channels=channels, layers=HAND_LAYERS))


@register_network("simgan-discriminator-small", role="discriminator", input_size=(35, 55))
def simgan_discriminator_small(*, channels: int = 1) -> LocalDiscriminator:
    """A CPU-sized discriminator: the gaze layout with 32/32/16/16 maps."""
    return LocalDiscriminator(DiscriminatorConfig(channels=channels, layers=SMALL_LAYERS))


@register_network("simgan-discriminator-local", role="discriminator", input_size=(35, 55))
def simgan_discriminator_local(*, channels: int = 1) -> LocalDiscriminator:
    """The small discriminator's maps on 11×11 windows instead of 23×23 (``LOCAL_LAYERS``)."""
    return LocalDiscriminator(DiscriminatorConfig(channels=channels, layers=LOCAL_LAYERS))


@register_network("simgan-discriminator-local-wide", role="discriminator", input_size=(35, 55))
def simgan_discriminator_local_wide(*, channels: int = 1) -> LocalDiscriminator:
    """The local discriminator's 11×11 windows with twice its maps (``LOCAL_WIDE_LAYERS``)."""
    return LocalDiscriminator(DiscriminatorConfig(channels=channels, layers=LOCAL_WIDE_LAYERS))


@register_network("simgan-discriminator-two-scale", role="discriminator", input_size=(35, 55))
def simgan_discriminator_two_scale(*, channels: int = 1) -> TwoScaleDiscriminator:
    """The local discriminator (11×11 windows: texture, edges, tone) and the small one (23×23:
    the iris and both lids at once) on the same eye, weighed equally; 35×55 -> 36×28 patches."""
    return TwoScaleDiscriminator(
        DiscriminatorConfig(channels=channels, layers=LOCAL_LAYERS),
        DiscriminatorConfig(channels=channels, layers=SMALL_LAYERS),
    )
