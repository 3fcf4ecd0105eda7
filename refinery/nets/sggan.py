"""SG-GAN's generators and semantic-aware discriminator (Li et al., "Semantic-aware Grad-GAN for
Virtual-to-Real Urban Scene Adaption", BMVC 2018, §3), after the official TensorFlow code
(Peilun-Li/SG-GAN ``module.py``, ``model.py``, ``utils.py``).

Code (paper): ``UNetGenerator`` (G_{V→R} and G_{R→V}: two instances), ``PatchDiscriminator``
with one logit map per semantic group + ``semantic_select`` (the semantic-aware discriminator
SD_R / SD_V). The losses (adversarial, cycle, semantic-aware gradient) are in
``refinery.losses``; the trainer judges a translated image with its *source* image's semantic
map (``model.py``: ``discriminator(fake_B, mask_A)``).

Generator. The official default (``--use_resnet`` off) is pix2pix's U-Net: 8 stride-2 convs
4×4 (64, 128, 256, 512, 512, 512, 512, 512 maps; LeakyReLU 0.2 before each but the first,
instance norm after each), then 8 stride-2 transposed convs 4×4 (ReLU before each; dropout 0.5
on the first three, then instance norm, then the skip concatenation with the mirror encoder
map), the last to the image's channels and tanh. So H and W must be multiples of 2**8 = 256
(``size_multiple``); the paper trains on 256×512. One departure: the innermost encoder conv (e8)
has no instance norm, as in pix2pix's ``UnetGenerator`` innermost block. SG-GAN normalises it,
but there it is 1×2 at 256×512 and 1×1 at 256×256, where instance norm reduces every map to the
sign of a difference or to its offset, so the bottleneck passes nothing (PyTorch also refuses
instance norm over one value in training). The option ``sggan-generator-resnet`` is SG-GAN's
``generator_resnet``: CycleGAN's ResNet generator (``refinery.nets.spigan.ResnetGenerator``)
with affine instance norm, as its TF ops define it. ``upsample="resize"`` (ours,
``sggan-generator-small-resize``) replaces each 4×4/2 transposed conv by nearest ×2, reflect-pad
1 and a 3×3 conv (``refinery.nets.spigan.resize_conv``, as the small ResNet G): SPIGAN's frames
refined by the transposed-conv U-Net at CPU scale carry a dotted lattice of the strides' period.
Every norm here is affine, like SG-GAN's ``instance_norm`` (scale N(1, 0.02), offset 0); convs
are initialised N(0, 0.02).

Discriminator. SG-GAN's ``discriminator``: conv 4×4/2 → 64, LeakyReLU 0.2; conv 4×4/2 → 128,
→ 256 and conv 4×4/1 → 512, each + instance norm + LeakyReLU; conv 4×4/1 → K maps, one per
semantic group (``--segment_class``, 8 for SG-GAN's groups: the ``sggan-8`` ontology of
``refinery.ontology``). Its convs pad like TensorFlow's "SAME", so a 256×512 image gives a
32×64 map (H/8 × W/8): ``PatchDiscriminatorConfig(padding="same")``. The network returns the K
raw logit maps (B, K, h, w); ``semantic_select(logits, seg)`` then reads, at each output pixel,
the logit of that pixel's group: the one-hot semantic map, resized to (h, w) with nearest
neighbour, times the logits, summed over K (``tf.reduce_sum(tf.multiply(h4, mask), axis=-1)``).
Group ids outside [0, K) (e.g. 255, ignore) select nothing: 0 there. The official
``load_train_data`` shrinks the one-hot with ``scipy.ndimage.zoom(..., mode="nearest")``, whose
``mode`` is the boundary rule: its interpolation is zoom's default cubic spline (order 3), which
mixes neighbouring groups and even goes negative. We resize with nearest neighbour, as labels
must be (``nearest_labels``: the pixel nearest each output pixel's centre, as
``F.interpolate(mode="nearest-exact")``).

Inputs are images in [-1, 1]; the generators' tanh outputs are in the same range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from refinery.nets.spigan import (
    UPSAMPLES,
    PatchDiscriminator,
    PatchDiscriminatorConfig,
    ResnetGenerator,
    ResnetGeneratorConfig,
    check_size_multiple,
    init_gan_weights,
    resize_conv,
)
from refinery.ontology import SGGAN_GROUPS
from refinery.registry import register_network

GROUPS = len(SGGAN_GROUPS)  # 8: other, vehicle, pedestrian, cyclist, road, building, sky, tree


# -- generator --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    channels: int = 3  # image channels in and out
    features: int = 64  # maps of the outermost conv; doubled per level up to 8×
    downs: int = 8  # stride-2 levels; H and W must be multiples of 2**downs
    dropout: float = 0.5  # on the innermost decoder layers (SG-GAN: keep_prob 0.5 in training)
    dropout_layers: int = 3  # how many decoder layers, from the innermost, have dropout
    upsample: str = "transpose"  # "transpose" (SG-GAN's 4×4/2) or "resize"; module docstring

    def __post_init__(self) -> None:
        for name in ("channels", "features", "downs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        if self.downs < 2:
            raise ValueError(f"UNetConfig.downs must be at least 2, got {self.downs}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.dropout_layers, int) or self.dropout_layers < 0:
            raise ValueError(f"UNetConfig.dropout_layers must be >= 0, got {self.dropout_layers!r}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(
                f"UNetConfig.upsample must be one of {UPSAMPLES}, got {self.upsample!r}"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        """Maps of e1 ... e_downs: 64, 128, 256, 512, 512, ... for features=64."""
        return tuple(min(self.features * 2**i, self.features * 8) for i in range(self.downs))


class UNetGenerator(nn.Module):
    """G: (B, C, H, W) in [-1, 1], H and W multiples of 2**downs -> (B, C, H, W) in [-1, 1]."""

    value_range = (-1.0, 1.0)

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.size_multiple = 2**config.downs
        n, widths = config.downs, config.widths
        self.down = nn.ModuleList()
        c_in = config.channels
        for i, c in enumerate(widths):  # e1 ... en, each (B, c, H / 2**(i+1), W / 2**(i+1))
            innermost = i == n - 1
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(c_in, c, 4, 2, 1, bias=innermost))
            if not innermost:  # see the module docstring
                layers.append(nn.InstanceNorm2d(c, affine=True))
            self.down.append(nn.Sequential(*layers))
            c_in = c

        def up(c_in: int, c_out: int, bias: bool) -> nn.Module:  # ×2
            if config.upsample == "transpose":
                return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)
            return resize_conv(c_in, c_out, bias=bias)

        self.up = nn.ModuleList()
        for j in range(n):  # d1 ... dn; d_j is concatenated with e_{n-j} (same maps) for j < n
            c_in = widths[-1] if j == 0 else 2 * widths[n - 1 - j]
            layers = [nn.ReLU()]
            if j == n - 1:
                layers += [up(c_in, config.channels, True), nn.Tanh()]
            else:
                c_out = widths[n - 2 - j]
                layers.append(up(c_in, c_out, False))
                if j < config.dropout_layers and config.dropout > 0:
                    layers.append(nn.Dropout(config.dropout))  # before the norm, as SG-GAN
                layers.append(nn.InstanceNorm2d(c_out, affine=True))
            self.up.append(nn.Sequential(*layers))
        init_gan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_size_multiple(self, x)
        skips: list[torch.Tensor] = []
        y = x
        for down in self.down:
            y = down(y)
            skips.append(y)
        y = skips.pop()  # e_n: (B, 8F, H / 2**n, W / 2**n)
        for up in self.up:
            y = up(y)
            if skips:
                y = torch.cat([y, skips.pop()], dim=1)  # (B, 2 c, h, w)
        return y  # (B, C, H, W)


@register_network("sggan-generator", role="refiner", input_size=(256, 512))
def sggan_generator(*, channels: int = 3, dropout: float = 0.5) -> UNetGenerator:
    """SG-GAN's G (official default): 8-level U-Net, 64 maps, instance norm, tanh (~54M params)."""
    return UNetGenerator(UNetConfig(channels=channels, features=64, downs=8, dropout=dropout))


@register_network("sggan-generator-resnet", role="refiner", input_size=(256, 512))
def sggan_generator_resnet(*, channels: int = 3) -> ResnetGenerator:
    """SG-GAN's ResNet option: CycleGAN's generator, 64 maps, 9 blocks, affine IN (~11.4M)."""
    return ResnetGenerator(
        ResnetGeneratorConfig(channels=channels, features=64, blocks=9, affine=True)
    )


@register_network("sggan-generator-small", role="refiner", input_size=(64, 128))
def sggan_generator_small(*, channels: int = 3, dropout: float = 0.5) -> UNetGenerator:
    """A CPU-sized G: 5-level U-Net with 16 maps (H, W multiples of 32)."""
    return UNetGenerator(UNetConfig(channels=channels, features=16, downs=5, dropout=dropout))


@register_network("sggan-generator-small-resize", role="refiner", input_size=(64, 128))
def sggan_generator_small_resize(*, channels: int = 3, dropout: float = 0.5) -> UNetGenerator:
    """The small U-Net upsampling by nearest resize and a 3×3 convolution instead of transposed
    convolutions (the module docstring says why)."""
    return UNetGenerator(
        UNetConfig(channels=channels, features=16, downs=5, dropout=dropout, upsample="resize")
    )


# -- discriminator ----------------------------------------------------------------------------


def _semantic_discriminator(channels: int, groups: int, features: int) -> PatchDiscriminator:
    return PatchDiscriminator(
        PatchDiscriminatorConfig(
            channels=channels,
            features=features,
            layers=3,
            out_channels=groups,
            padding="same",
            affine=True,
        )
    )


@register_network("sggan-discriminator", role="discriminator", input_size=(256, 512))
def sggan_discriminator(*, channels: int = 3, groups: int = GROUPS) -> PatchDiscriminator:
    """SG-GAN's D: PatchGAN, 64 maps, one logit map per group; 256×512 -> (8, 32, 64)."""
    return _semantic_discriminator(channels, groups, 64)


@register_network("sggan-discriminator-small", role="discriminator", input_size=(64, 128))
def sggan_discriminator_small(*, channels: int = 3, groups: int = GROUPS) -> PatchDiscriminator:
    """A CPU-sized D: SG-GAN's layout with 16 maps; 64×128 -> (groups, 8, 16)."""
    return _semantic_discriminator(channels, groups, 16)


# -- semantic selection -----------------------------------------------------------------------


def nearest_labels(seg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, h, w): each output pixel takes the label of the input
    pixel nearest its centre, row floor((i + 1/2) H / h), as ``F.interpolate(mode=
    "nearest-exact")``, in integer arithmetic (labels are never converted to float)."""
    big_h, big_w = seg.shape[-2:]
    h, w = size
    rows = (torch.arange(h, device=seg.device) * 2 + 1) * big_h // (2 * h)
    cols = (torch.arange(w, device=seg.device) * 2 + 1) * big_w // (2 * w)
    return seg.index_select(-2, rows).index_select(-1, cols)


def semantic_mask(seg: torch.Tensor, groups: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) group ids -> (B, groups, h, w) one-hot at (h, w), nearest neighbour; an id
    outside [0, groups) (255 = ignore, or negative) is all zeros."""
    small = nearest_labels(seg, size)  # (B, h, w)
    ids = torch.arange(groups, device=seg.device).view(1, groups, 1, 1)
    return (small.unsqueeze(1) == ids).float()  # (B, K, h, w)


def semantic_select(logits: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """SG-GAN's semantic-aware output: per pixel, the logit of that pixel's semantic group.

    logits: (B, K, h, w) from an SG-GAN discriminator; seg: (B, H, W) integer group ids in
    [0, K) at image resolution (ids outside select nothing and give 0). The one-hot of `seg` is
    resized to (h, w) with nearest neighbour (``semantic_mask``), multiplied with the logits and
    summed over K: returns (B, 1, h, w). Gradients reach `logits` only.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, K, h, w), got shape {tuple(logits.shape)}")
    if seg.ndim != 3 or seg.shape[0] != logits.shape[0]:
        raise ValueError(
            f"seg must be (B, H, W) group ids with B = {logits.shape[0]}, "
            f"got shape {tuple(seg.shape)}"
        )
    if seg.dtype.is_floating_point or seg.dtype.is_complex or seg.dtype == torch.bool:
        raise TypeError(
            f"seg must hold integer group ids, got {seg.dtype} (labels resized with bilinear "
            "interpolation are not labels: resize them with nearest neighbour)"
        )
    mask = semantic_mask(seg, logits.shape[1], tuple(logits.shape[-2:])).to(logits.dtype)
    return (logits * mask).sum(dim=1, keepdim=True)  # (B, 1, h, w)
