"""DenseNet, as Huang, Liu, van der Maaten and Weinberger describe it (CVPR 2017, arXiv 1608.06993).

Every layer of a dense block takes the concatenation of all the feature-maps before it in the
block, x_l = H_l([x_0, ..., x_{l-1}]) (Eq. 2), and adds k new ones (k: the growth rate).

* H_l is BN-ReLU-Conv(3x3) (Sec. 3, "Composite function"); with bottleneck layers (DenseNet-B)
  it is BN-ReLU-Conv(1x1, 4k filters)-BN-ReLU-Conv(3x3) ("Bottleneck layers").
* Transition layers between blocks: BN-ReLU, a 1x1 convolution to floor(theta * m) channels,
  2x2 average pooling (Sec. 3, "Pooling layers" and "Compression"; Table 1 notes that every
  "conv" stands for BN-ReLU-Conv). theta = 0.5 gives DenseNet-C, with bottlenecks DenseNet-BC.
* CIFAR networks (Sec. 3, "Implementation Details"): a 3x3 convolution with 16 channels (2k for
  DenseNet-BC), three blocks with the same number of layers on 32/16/8 maps, global average
  pooling, a linear classifier. Depth L counts the convolutions and the classifier, so a block
  has (L - 4) / 3 layers, or (L - 4) / 6 with bottlenecks (each has two convolutions).
* ImageNet networks (Table 1): DenseNet-BC with k = 32, a 7x7/2 convolution with 2k channels, a
  3x3/2 max-pool, four blocks on 56/28/14/7 maps, global average pooling, a 1000-way classifier.
* Without data augmentation the paper adds dropout 0.2 after every convolution but the first
  (Sec. 4.2).

Knobs (keyword arguments of every builder, `None` keeping the paper's value): `growth_rate` (k),
`compression` (theta), `bottleneck`, `drop_rate`, `block_config` (layers per block), `depth` (L,
CIFAR networks), plus `num_classes` and `in_channels`. The CIFAR stem has 2k channels only when
both B and C are on, as Sec. 3 says for DenseNet-BC; otherwise 16.

Choices the paper leaves open, taken from the authors' released Torch code
(github.com/liuzhuang13/DenseNet, models/densenet.lua): convolutions have no bias; a last BN-ReLU
sits before the global pooling (the layers are pre-activation, so the block's output has not
been normalised yet); the ImageNet stem is Conv-BN-ReLU before the max-pool; the He et al.
initialisation [10] uses std sqrt(2/n) with n = k*k*out_channels. The parameter counts of
Table 2 (1.0M, 7.0M, 27.2M, 0.8M, 15.3M, 25.6M) come out of exactly this layout.

Where this differs from popular implementations: torchvision's DenseNet-121/169/201 are this
same architecture (7,978,856 parameters for DenseNet-121) but initialise with fan-in and have no
CIFAR variants. timm's `densenet264d` uses growth rate 48 and a deep stem; the paper's
DenseNet-264 (Table 1) has k = 32 (and 265 weighted layers counted as above; the paper calls it
264).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register


class DenseLayer(nn.Module):
    """H_l: BN-ReLU-Conv(3x3) producing `growth_rate` maps, with an optional BN-ReLU-Conv(1x1)
    bottleneck of `bottleneck_width` x growth_rate maps in front (DenseNet-B, Sec. 3)."""

    def __init__(self, in_ch: int, growth_rate: int, *, bottleneck: bool, drop_rate: float,
                 bottleneck_width: int = 4):
        super().__init__()
        self.drop_rate = drop_rate
        if bottleneck:
            width = bottleneck_width * growth_rate  # "we let each 1x1 convolution produce 4k feature-maps"
            self.norm1 = nn.BatchNorm2d(in_ch)
            self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
            in_ch = width
        else:
            self.norm1 = self.conv1 = None
        self.norm2 = nn.BatchNorm2d(in_ch)
        self.conv2 = nn.Conv2d(in_ch, growth_rate, 3, padding=1, bias=False)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        # Sec. 4.2: "a dropout layer after each convolutional layer (except the first one)".
        return F.dropout(x, self.drop_rate, self.training) if self.drop_rate > 0 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU in place on batch norm's fresh output (its backward does not need it): one
        # allocation less per layer, which a CPU feels across 58-120 thin layers.
        if self.conv1 is not None:
            x = self._drop(self.conv1(F.relu(self.norm1(x), inplace=True)))
        return self._drop(self.conv2(F.relu(self.norm2(x), inplace=True)))


class DenseBlock(nn.Module):
    """`num_layers` dense layers; each sees the concatenation of the block input and all earlier
    layers' outputs (Eq. 2). The output has in_ch + num_layers * growth_rate channels."""

    def __init__(self, num_layers: int, in_ch: int, growth_rate: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_ch + i * growth_rate, growth_rate, **layer_kwargs) for i in range(num_layers))
        self.out_channels = in_ch + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Module):
    """BN-ReLU-Conv(1x1) to `out_ch` channels, then 2x2 average pooling with stride 2 (Sec. 3)."""

    def __init__(self, in_ch: int, out_ch: int, drop_rate: float):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.relu(self.norm(x), inplace=True))
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        # ceil_mode changes nothing at the paper's even sizes (32/16, 56/28/14) and lets odd
        # maps through (the reduced profile's 14 px gives 14/7/4, like the CIFAR ResNets there).
        return F.avg_pool2d(x, 2, ceil_mode=True)


class DenseNet(nn.Module):
    """A stem, dense blocks joined by transition layers, BN-ReLU, global average pooling and a
    linear classifier."""

    def __init__(self, stem: nn.Module, stem_channels: int, block_config: Sequence[int], *, growth_rate: int,
                 compression: float, bottleneck: bool, drop_rate: float, num_classes: int):
        super().__init__()
        if not 0 < compression <= 1:
            raise ValueError(f"compression (theta) must be in (0, 1], not {compression}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), not {drop_rate}")
        self.stem = stem
        stages: list[nn.Module] = []
        channels = stem_channels
        for index, num_layers in enumerate(block_config):
            block = DenseBlock(int(num_layers), channels, growth_rate, bottleneck=bottleneck, drop_rate=drop_rate)
            stages.append(block)
            channels = block.out_channels
            if index < len(block_config) - 1:
                out = math.floor(compression * channels)  # Sec. 3: floor(theta * m) output maps
                stages.append(Transition(channels, out, drop_rate))
                channels = out
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(channels)  # the pre-activation layers' last BN-ReLU, before pooling
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # Sec. 4.2: "the weight initialization introduced by [10]" (He et al. 2015), with
                # n = k*k*out_channels as in the authors' code.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.features(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1))


def _cifar_densenet(depth: int, growth_rate: int, *, bottleneck: bool, compression: float, num_classes: int = 10,
                    in_channels: int = 3, drop_rate: float = 0.0,
                    block_config: Sequence[int] | None = None) -> DenseNet:
    """Sec. 3, "Implementation Details": three equal blocks of (L-4)/3 layers, or (L-4)/6 with
    bottlenecks; a 3x3 stem with 16 channels, or 2k for DenseNet-BC. `block_config` overrides the
    depth (e.g. a small DenseNet-BC for the reduced profile)."""
    if block_config is None:
        per_layer = 2 if bottleneck else 1
        if (depth - 4) % (3 * per_layer):
            raise ValueError(f"a CIFAR DenseNet{'-B' if bottleneck else ''} has L = {3 * per_layer}n + 4 layers; "
                             f"{depth} is not of that form")
        block_config = [(depth - 4) // (3 * per_layer)] * 3
    stem_channels = 2 * growth_rate if (bottleneck and compression < 1) else 16
    stem = nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False)
    return DenseNet(stem, stem_channels, block_config, growth_rate=growth_rate, compression=compression,
                    bottleneck=bottleneck, drop_rate=drop_rate, num_classes=num_classes)


def _imagenet_densenet(block_config: Sequence[int], *, num_classes: int = 1000, in_channels: int = 3,
                       growth_rate: int = 32, compression: float = 0.5, bottleneck: bool = True,
                       drop_rate: float = 0.0) -> DenseNet:
    """Table 1: DenseNet-BC, k = 32; a 7x7/2 convolution with 2k channels and a 3x3/2 max-pool,
    then four dense blocks (56, 28, 14, 7 px at 224 px input)."""
    stem_channels = 2 * growth_rate
    stem = nn.Sequential(
        nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(stem_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    return DenseNet(stem, stem_channels, block_config, growth_rate=growth_rate, compression=compression,
                    bottleneck=bottleneck, drop_rate=drop_rate, num_classes=num_classes)


def _given(kw: dict) -> dict:
    """Keyword arguments without the None values: a config's `null` means "the paper's value"."""
    return {k: v for k, v in kw.items() if v is not None}


def _cifar(row_depth: int, row_k: int, row_bc: bool, **kw) -> DenseNet:
    """One row of Table 2 by default (L, k, and B/C); every knob can be overridden by keyword,
    `depth` (L) included."""
    kw = {"depth": row_depth, "growth_rate": row_k, "bottleneck": row_bc, "compression": 0.5 if row_bc else 1.0,
          **_given(kw)}
    return _cifar_densenet(**kw)


# ImageNet networks, Table 1 (all DenseNet-BC, k = 32).
@register
def densenet121(block_config: Sequence[int] | None = None, **kw) -> DenseNet:
    return _imagenet_densenet(block_config or (6, 12, 24, 16), **_given(kw))


@register
def densenet169(block_config: Sequence[int] | None = None, **kw) -> DenseNet:
    return _imagenet_densenet(block_config or (6, 12, 32, 32), **_given(kw))


@register
def densenet201(block_config: Sequence[int] | None = None, **kw) -> DenseNet:
    return _imagenet_densenet(block_config or (6, 12, 48, 32), **_given(kw))


@register
def densenet264(block_config: Sequence[int] | None = None, **kw) -> DenseNet:
    return _imagenet_densenet(block_config or (6, 12, 64, 48), **_given(kw))


# CIFAR networks of Table 2: DenseNet (theta = 1, no bottleneck) and DenseNet-BC (theta = 0.5).
@register(input_size=(3, 32, 32))
def densenet40_k12(**kw) -> DenseNet:
    return _cifar(40, 12, False, **kw)


@register(input_size=(3, 32, 32))
def densenet100_k12(**kw) -> DenseNet:
    return _cifar(100, 12, False, **kw)


@register(input_size=(3, 32, 32))
def densenet100_k24(**kw) -> DenseNet:
    return _cifar(100, 24, False, **kw)


@register(input_size=(3, 32, 32))
def densenet_bc100_k12(**kw) -> DenseNet:
    return _cifar(100, 12, True, **kw)


@register(input_size=(3, 32, 32))
def densenet_bc250_k24(**kw) -> DenseNet:
    return _cifar(250, 24, True, **kw)


@register(input_size=(3, 32, 32))
def densenet_bc190_k40(**kw) -> DenseNet:
    return _cifar(190, 40, True, **kw)
