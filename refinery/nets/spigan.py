"""SPIGAN's four networks (Lee et al., "SPIGAN: Privileged Adversarial Learning from
Simulation", ICLR 2019, §3 and §4.1), and CycleGAN's generator and PatchGAN that SG-GAN shares.

Code (paper): ``ResnetGenerator`` (G), ``PatchDiscriminator`` (D), ``FCN8s`` with
``out_channels=num_classes`` (T, the task network: semantic segmentation) and with
``out_channels=1`` (P, the privileged network: depth). The losses (L_GAN, L_task, L_PI, L_perc)
are in ``refinery.losses``; L_perc's VGG19 is ``refinery.nets.vgg.VGG19Features``.

G and D are CycleGAN's (Zhu et al. 2017; junyanz/pytorch-CycleGAN-and-pix2pix
``models/networks.py``), which SPIGAN adopts:

- ``ResnetGenerator`` (Johnson et al.'s, "c7s1-64, d128, d256, R256 ×9, u128, u64, c7s1-3"):
  reflection pad 3 + conv 7×7 → F, two 3×3 stride-2 convs → 2F, 4F, nine ResNet blocks
  (reflect-pad, conv 3×3, IN, ReLU, reflect-pad, conv 3×3, IN, + input), two 3×3 stride-2
  transposed convs (output padding 1) → 2F, F, reflection pad 3 + conv 7×7 → C, tanh. Instance
  norm and ReLU after every conv but the last. Two stride-2 stages: H and W must be multiples of
  4 (``size_multiple``), then the output has the input's size. SG-GAN's ``generator_resnet``
  (Peilun-Li/SG-GAN ``module.py``) is the same network, with affine instance norm as in its
  TensorFlow ops; CycleGAN's PyTorch code uses non-affine instance norm, which SPIGAN keeps.
  ``upsample="resize"`` replaces each transposed conv by nearest ×2 then reflect-pad 1 and conv
  3×3 (Odena et al., "Deconvolution and Checkerboard Artifacts", Distill 2016): the small
  generator uses it, because with transposed convs its refined street frames at CPU scale were
  covered by a coloured lattice of the strides' period; the paper-size generators keep
  CycleGAN's transposed convs.
- ``PatchDiscriminator``: CycleGAN's ``NLayerDiscriminator`` with ``n_layers=3`` (the paper's
  "PatchGAN with three layers"; the 70×70 PatchGAN): conv 4×4/2 → 64, LeakyReLU 0.2; conv
  4×4/2 → 128 and → 256, each + IN + LeakyReLU; conv 4×4/1 → 512 + IN + LeakyReLU; conv 4×4/1 →
  1 logit per patch (no activation: the losses take logits). ``padding="pix2pix"`` pads every
  conv by 1 (320×320 → 38×38 patches); ``padding="same"`` pads like TensorFlow's "SAME"
  (stride 2: 1 each side; stride 1: 1 before, 2 after), as SG-GAN's discriminator does, so a
  multiple of 8 gives exactly H/8 × W/8.

Task and privileged networks: FCN8s (Long et al., "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015), the paper's choice for both T and P. Backbone: VGG16's 13 convs and 5
max-pools (``features``, torchvision's indexing, so ImageNet VGG16 weights from a local file load
with ``refinery.nets.vgg.load_vgg_weights``; SPIGAN starts T and P from ImageNet VGG16), then
fc6 as a 7×7 conv → 4096 and fc7 as a 1×1 conv → 4096 (ReLU, dropout 0.5; torchvision's
``classifier.0``/``classifier.3`` load into them reshaped, FCN's "convolutionalisation"), then the
FCN8s head: ``score_fr`` (1×1 on fc7), ``upscore2`` (×2), + ``score_pool4`` (1×1 on pool4),
``upscore_pool4`` (×2), + ``score_pool3`` (1×1 on pool3), ×8 to the input size.

Two departures from the Caffe FCN, both so that any size that is a multiple of 32
(``size_multiple``) maps to an output of exactly the input's size with no crop offsets (and
exports to ONNX with dynamic H, W): conv1_1 pads 1, not 100, and fc6 pads 3 ("same"), so pool3,
pool4 and fc7 are exactly H/8, H/16, H/32 and the sums need no crop; other sizes raise
ValueError (pad the image yourself). Upsampling: ``upscore2`` and ``upscore_pool4`` are
learnable 4×4/2 transposed convs initialised to bilinear interpolation (FCN's staged training
learns them); the fixed ×8 of FCN's ``upscore8`` (a bilinear deconvolution it never trains) is
``F.interpolate(mode="bilinear")``, the same weights away from the border. Score layers keep
PyTorch's default init (FCN zero-initialises them; it reports no difference, and an untrained
net whose output ignores its input would make the ONNX parity checks vacuous). FCN8s "at once"
also scales pool3 and pool4 by 1e-4 and 0.01; we do not (the staged FCN8s did not either).

Inputs of every network here are images in [-1, 1]; FCN8s normalises them to ImageNet
statistics itself (``refinery.nets.vgg.ImageNetInput``). Outputs: G in [-1, 1] (tanh), D
logits (B, 1, h, w), T logits (B, num_classes, H, W), P depth (B, 1, H, W), unbounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from refinery.nets.vgg import ImageNetInput, vgg_layer_channels, vgg_layer_index, vgg_layers
from refinery.registry import register_network

PADDINGS = ("pix2pix", "same")
UPSAMPLES = ("transpose", "resize")


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


def check_size_multiple(net: nn.Module, x: torch.Tensor) -> None:
    """Raise ValueError unless x's H and W are multiples of ``net.size_multiple``."""
    m = net.size_multiple
    if x.shape[-2] % m or x.shape[-1] % m:
        raise ValueError(
            f"{type(net).__name__} needs H and W that are multiples of {m} (its strides); "
            f"got {x.shape[-2]}×{x.shape[-1]}: resize, crop or pad the images"
        )


def resize_conv(c_in: int, c_out: int, *, bias: bool = False) -> nn.Module:
    """×2 by nearest resize, reflect-pad 1 and a 3×3 conv: upsampling without the checkerboard
    of a strided transposed conv (Odena et al., Distill 2016); the ``upsample="resize"`` option."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.ReflectionPad2d(1),
        nn.Conv2d(c_in, c_out, 3, bias=bias),
    )


def init_gan_weights(net: nn.Module, std: float = 0.02) -> nn.Module:
    """pix2pix/CycleGAN's ``init_weights('normal', 0.02)``, as SG-GAN's TF ops: conv weights
    N(0, 0.02), biases 0, affine instance-norm scales N(1, 0.02) and offsets 0."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.InstanceNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return net


# -- generator --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ResnetGeneratorConfig:
    channels: int = 3  # image channels in and out
    features: int = 64  # F: maps of the first and last 7×7 convs; the blocks have 4F
    blocks: int = 9  # ResNet blocks at 1/4 resolution
    affine: bool = False  # instance norm with a learned scale and offset (SG-GAN: True)
    upsample: str = "transpose"  # "transpose" (CycleGAN's) or "resize"; module docstring

    def __post_init__(self) -> None:
        _check_positive(
            "ResnetGeneratorConfig",
            channels=self.channels,
            features=self.features,
            blocks=self.blocks,
        )
        if self.upsample not in UPSAMPLES:
            raise ValueError(
                f"ResnetGeneratorConfig.upsample must be one of {UPSAMPLES}, got {self.upsample!r}"
            )


class ResnetBlock(nn.Module):
    """x + IN(conv3×3(pad(ReLU(IN(conv3×3(pad(x))))))), reflection padding, no ReLU after the sum."""

    def __init__(self, features: int, affine: bool):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(features, features, 3, bias=False),
            nn.InstanceNorm2d(features, affine=affine),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(features, features, 3, bias=False),
            nn.InstanceNorm2d(features, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 4F, H/4, W/4)
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """G: (B, C, H, W) in [-1, 1], H and W multiples of 4 -> (B, C, H, W) in [-1, 1].

    Convs followed by instance norm have no bias (the norm's mean subtraction cancels it).
    """

    value_range = (-1.0, 1.0)
    size_multiple = 4  # two stride-2 convs

    def __init__(self, config: ResnetGeneratorConfig):
        super().__init__()
        self.config = config
        c, f, affine = config.channels, config.features, config.affine

        def stage(conv: nn.Module, out: int) -> list[nn.Module]:
            return [conv, nn.InstanceNorm2d(out, affine=affine), nn.ReLU()]

        def up(c_in: int, c_out: int) -> nn.Module:  # ×2, as u2F and uF
            if config.upsample == "transpose":
                return nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, 1, bias=False)
            return resize_conv(c_in, c_out)

        self.model = nn.Sequential(
            nn.ReflectionPad2d(3),
            *stage(nn.Conv2d(c, f, 7, bias=False), f),  # c7s1-F: (B, F, H, W)
            *stage(nn.Conv2d(f, 2 * f, 3, 2, 1, bias=False), 2 * f),  # d2F: (B, 2F, H/2, W/2)
            *stage(nn.Conv2d(2 * f, 4 * f, 3, 2, 1, bias=False), 4 * f),  # d4F: (B, 4F, H/4, W/4)
            *(ResnetBlock(4 * f, affine) for _ in range(config.blocks)),
            *stage(up(4 * f, 2 * f), 2 * f),  # u2F: (B, 2F, H/2, W/2)
            *stage(up(2 * f, f), f),  # uF: (B, F, H, W)
            nn.ReflectionPad2d(3),
            nn.Conv2d(f, c, 7),  # c7s1-C
            nn.Tanh(),
        )
        init_gan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_size_multiple(self, x)
        return self.model(x)  # (B, C, H, W)


@register_network("spigan-generator", role="refiner", input_size=(320, 320))
def spigan_generator(*, channels: int = 3) -> ResnetGenerator:
    """SPIGAN's G: CycleGAN's ResNet generator, 64 maps, 9 blocks (~11.4M parameters)."""
    return ResnetGenerator(ResnetGeneratorConfig(channels=channels, features=64, blocks=9))


@register_network("spigan-generator-small", role="refiner", input_size=(64, 64))
def spigan_generator_small(*, channels: int = 3) -> ResnetGenerator:
    """A CPU-sized G: the same layout with 16 maps and 3 ResNet blocks, upsampling by resize
    and convolution (the module docstring says why)."""
    return ResnetGenerator(
        ResnetGeneratorConfig(channels=channels, features=16, blocks=3, upsample="resize")
    )


# -- discriminator ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PatchDiscriminatorConfig:
    channels: int = 3
    features: int = 64  # maps of the first conv; doubled per stride-2 layer, at most 8×
    layers: int = 3  # stride-2 convs (CycleGAN's n_layers)
    out_channels: int = 1  # logits per patch (SG-GAN: one per semantic group)
    padding: str = "pix2pix"  # "pix2pix" (pad 1) or "same" (TensorFlow's); module docstring
    affine: bool = False  # instance norm with a learned scale and offset

    def __post_init__(self) -> None:
        _check_positive(
            "PatchDiscriminatorConfig",
            channels=self.channels,
            features=self.features,
            layers=self.layers,
            out_channels=self.out_channels,
        )
        if self.padding not in PADDINGS:
            raise ValueError(
                f"PatchDiscriminatorConfig.padding must be one of {PADDINGS}, got {self.padding!r}"
            )


class PatchDiscriminator(nn.Module):
    """D: (B, C, H, W) in [-1, 1] -> (B, out_channels, h, w) logits, one per overlapping patch.

    Any H, W the strides leave at least 1×1 of (``size_multiple`` is 1); with
    ``padding="same"`` and H, W multiples of 2**layers, (h, w) = (H, W) / 2**layers exactly.
    """

    size_multiple = 1

    def __init__(self, config: PatchDiscriminatorConfig):
        super().__init__()
        self.config = config
        f, same = config.features, config.padding == "same"

        def conv(c_in: int, c_out: int, stride: int, bias: bool) -> list[nn.Module]:
            if stride == 1 and same:  # TF "SAME" for an even kernel: 1 before, 2 after
                return [nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(c_in, c_out, 4, 1, 0, bias=bias)]
            return [nn.Conv2d(c_in, c_out, 4, stride, 1, bias=bias)]

        layers = [*conv(config.channels, f, 2, True), nn.LeakyReLU(0.2)]  # (B, F, H/2, W/2)
        c_in = f
        for n in range(1, config.layers + 1):
            c_out = f * min(2**n, 8)
            stride = 2 if n < config.layers else 1  # the last of these keeps the resolution
            layers += [
                *conv(c_in, c_out, stride, False),
                nn.InstanceNorm2d(c_out, affine=config.affine),
                nn.LeakyReLU(0.2),
            ]
            c_in = c_out
        layers += conv(c_in, config.out_channels, 1, True)  # logits: no activation
        self.model = nn.Sequential(*layers)
        init_gan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, out_channels, h, w)


@register_network("spigan-discriminator", role="discriminator", input_size=(320, 320))
def spigan_discriminator(*, channels: int = 3) -> PatchDiscriminator:
    """SPIGAN's D: CycleGAN's 3-layer (70×70) PatchGAN, 64 maps; 320×320 -> 38×38 logits."""
    return PatchDiscriminator(PatchDiscriminatorConfig(channels=channels, features=64, layers=3))


@register_network("spigan-discriminator-small", role="discriminator", input_size=(64, 64))
def spigan_discriminator_small(*, channels: int = 3) -> PatchDiscriminator:
    """A CPU-sized D: the 3-layer PatchGAN with 16 maps."""
    return PatchDiscriminator(PatchDiscriminatorConfig(channels=channels, features=16, layers=3))


# -- task and privileged networks ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FCN8sConfig:
    channels: int = 3
    out_channels: int = 19  # T: classes (Cityscapes' 19 train ids); P: 1 (depth)
    width: int = 64  # VGG16's first-block maps (64 = VGG16; pretrained files need it)
    fc: int = 4096  # maps of fc6 and fc7
    dropout: float = 0.5  # after fc6 and fc7, as FCN's drop6 / drop7

    def __post_init__(self) -> None:
        _check_positive(
            "FCN8sConfig",
            channels=self.channels,
            out_channels=self.out_channels,
            width=self.width,
            fc=self.fc,
        )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FCN8sConfig.dropout must be in [0, 1), got {self.dropout!r}")


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """(C, C, k, k) weights that make a ConvTranspose2d upsample each channel bilinearly
    (FCN's ``surgery.upsample_filt``, on the diagonal)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt[:, None] * filt[None, :]
    return weight


class FCN8s(nn.Module):
    """T or P: (B, C, H, W) in [-1, 1], H and W multiples of 32 -> (B, out_channels, H, W)."""

    size_multiple = 32  # five 2×2 max-pools
    vgg_depth = 16
    untrained_note = (
        "; the task/privileged network then trains from scratch instead of from ImageNet VGG16 "
        "as FCN and SPIGAN do"
    )

    def __init__(self, config: FCN8sConfig):
        super().__init__()
        self.config = config
        index = vgg_layer_index(16)
        maps = vgg_layer_channels(16, config.width)
        self._pool3, self._pool4 = index["pool3"], index["pool4"]
        k, fc = config.out_channels, config.fc
        self.input = ImageNetInput(config.channels)
        self.features = vgg_layers(16, channels=config.channels, width=config.width)
        self.fc6 = nn.Conv2d(maps["pool5"], fc, 7, padding=3)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop = nn.Dropout(config.dropout)
        self.score_fr = nn.Conv2d(fc, k, 1)
        self.score_pool4 = nn.Conv2d(maps["pool4"], k, 1)
        self.score_pool3 = nn.Conv2d(maps["pool3"], k, 1)
        self.upscore2 = nn.ConvTranspose2d(k, k, 4, 2, 1, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(k, k, 4, 2, 1, bias=False)
        with torch.no_grad():
            self.upscore2.weight.copy_(bilinear_kernel(k, 4))
            self.upscore_pool4.weight.copy_(bilinear_kernel(k, 4))
            for fc_layer in (self.fc6, self.fc7):
                nn.init.kaiming_normal_(fc_layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(fc_layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_size_multiple(self, x)
        y = self.input(x)
        for i, layer in enumerate(self.features):
            y = layer(y)
            if i == self._pool3:
                pool3 = y  # (B, 4w, H/8, W/8)
            elif i == self._pool4:
                pool4 = y  # (B, 8w, H/16, W/16)
        y = self.drop(torch.relu(self.fc6(y)))  # (B, fc, H/32, W/32)
        y = self.drop(torch.relu(self.fc7(y)))
        y = self.upscore2(self.score_fr(y)) + self.score_pool4(pool4)  # (B, K, H/16, W/16)
        y = self.upscore_pool4(y) + self.score_pool3(pool3)  # (B, K, H/8, W/8)
        return F.interpolate(y, scale_factor=8.0, mode="bilinear", align_corners=False)


def _fcn8s(channels: int, out_channels: int, width: int, fc: int) -> FCN8s:
    return FCN8s(FCN8sConfig(channels=channels, out_channels=out_channels, width=width, fc=fc))


@register_network("fcn8s-vgg16", role="task", input_size=(320, 320))
def fcn8s_vgg16(*, channels: int = 3, num_classes: int = 19) -> FCN8s:
    """SPIGAN's T: FCN8s on VGG16 (fc6/fc7 as convs), segmentation logits (~134M parameters)."""
    return _fcn8s(channels, num_classes, 64, 4096)


@register_network("fcn8s-vgg16-depth", role="task", input_size=(320, 320))
def fcn8s_vgg16_depth(*, channels: int = 3) -> FCN8s:
    """SPIGAN's P: FCN8s on VGG16 with one output map, depth (~134M parameters)."""
    return _fcn8s(channels, 1, 64, 4096)


@register_network("fcn8s-small", role="task", input_size=(64, 64))
def fcn8s_small(*, channels: int = 3, num_classes: int = 19) -> FCN8s:
    """A CPU-sized T: FCN8s with 1/8 of VGG16's maps and fc6/fc7 of 512."""
    return _fcn8s(channels, num_classes, 8, 512)


@register_network("fcn8s-small-depth", role="task", input_size=(64, 64))
def fcn8s_small_depth(*, channels: int = 3) -> FCN8s:
    """A CPU-sized P: FCN8s with 1/8 of VGG16's maps and one output map."""
    return _fcn8s(channels, 1, 8, 512)
