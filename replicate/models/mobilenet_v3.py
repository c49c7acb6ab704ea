"""MobileNetV3-Large and -Small, as Howard et al. describe them (ICCV 2019, arXiv 1905.02244).

Tables 1 and 2 (the final arXiv version, v5, which is the ICCV paper's): a 3x3/2 convolution with
16 filters and h-swish (Sec. 5.1), a stack of MobileNetV2 bottlenecks (1x1 expansion, k x k
depthwise, linear 1x1 projection, shortcut when shapes agree; Sec. 3) with the table's expansion
size, kernel, squeeze-and-excite (SE), non-linearity (ReLU or h-swish) and stride, then the
efficient last stage of Fig. 5: a 1x1 convolution, global average pooling, and two 1x1
convolutions *without batch norm* ("NBN") on the pooled 1x1 map: to 1280 channels (Large) or
1024 (Small) with h-swish, then to the classes. Everything else is followed by batch norm (Sec. 6.1.1, average decay 0.99:
PyTorch momentum 0.01).

* h-swish(x) = x ReLU6(x + 3) / 6 and the hard sigmoid ReLU6(x + 3) / 6 (Sec. 5.2).
* SE sits after the depthwise convolution, on the expanded representation (Sec. 3, Fig. 4); its
  bottleneck is 1/4 of the expansion channels (Sec. 5.3), with ReLU inside and the hard sigmoid as
  the gate (Sec. 3: both SE and swish use the sigmoid, replaced by its hard version).
* Widths: `width_mult` scales every width of the tables, each rounded to a multiple of 8 with the
  same rule as MobileNetV2's reference code; the SE bottleneck is rounded the same way (18 -> 24
  channels for an expansion of 72). The paper says neither; the authors' TF-Slim code does both.

Points where the paper's tables and the popular implementations disagree, and what we do:

* Small's head. Table 2 of the final text gives the pooled 1x1 convolution 1024 channels, as the
  authors' TF-Slim code and torchvision do: 2,542,856 parameters and 56.5 M multiply-adds, Table
  3's "2.5 M" and "56 M". arXiv v1 printed 66 M / 2.9 M for an earlier Small with a 1280-channel
  head (`last_channels=1280`: 2,946,568 parameters).
* Table 2 also ticks SE on Small's final 1x1 convolution (576 channels, before pooling). Neither
  the authors' code nor torchvision has it, and with it the count would be 2.7 M, not Table 3's
  2.5 M: we leave it out (`se_last_conv=True` adds it).
* An earlier arXiv version of Table 1 placed Large's last stride-2 block one row later; we follow
  the final version (stride 2 on the first 5x5 block with 160 outputs), as the TF-Slim code does.
* Dropout: Sec. 6.1.1 says "dropout of 0.8", a TF keep probability: rate 0.2, before the classifier
  as in the reference code.

Our networks are torchvision's `mobilenet_v3_large` / `mobilenet_v3_small` layer for layer
(Large: 5,483,032 parameters, 216.6 M multiply-adds; Small: 2,542,856, 56.5 M).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register
from .mobilenet_v2 import make_divisible


class Bneck(NamedTuple):
    """One row of Tables 1-2: kernel, expansion size, output channels, SE, h-swish, stride."""

    kernel: int
    expand: int
    out: int
    se: bool
    hswish: bool
    stride: int


# Table 1 (v5): MobileNetV3-Large. RE = ReLU (hswish False), HS = h-swish.
LARGE: tuple[Bneck, ...] = (
    Bneck(3, 16, 16, False, False, 1),
    Bneck(3, 64, 24, False, False, 2),
    Bneck(3, 72, 24, False, False, 1),
    Bneck(5, 72, 40, True, False, 2),
    Bneck(5, 120, 40, True, False, 1),
    Bneck(5, 120, 40, True, False, 1),
    Bneck(3, 240, 80, False, True, 2),
    Bneck(3, 200, 80, False, True, 1),
    Bneck(3, 184, 80, False, True, 1),
    Bneck(3, 184, 80, False, True, 1),
    Bneck(3, 480, 112, True, True, 1),
    Bneck(3, 672, 112, True, True, 1),
    Bneck(5, 672, 160, True, True, 2),
    Bneck(5, 960, 160, True, True, 1),
    Bneck(5, 960, 160, True, True, 1),
)
# Table 2: MobileNetV3-Small.
SMALL: tuple[Bneck, ...] = (
    Bneck(3, 16, 16, True, False, 2),
    Bneck(3, 72, 24, False, False, 2),
    Bneck(3, 88, 24, False, False, 1),
    Bneck(5, 96, 40, True, True, 2),
    Bneck(5, 240, 40, True, True, 1),
    Bneck(5, 240, 40, True, True, 1),
    Bneck(5, 120, 48, True, True, 1),
    Bneck(5, 144, 48, True, True, 1),
    Bneck(5, 288, 96, True, True, 2),
    Bneck(5, 576, 96, True, True, 1),
    Bneck(5, 576, 96, True, True, 1),
)
# (stem, last 1x1 convolution before pooling, pooled 1x1 convolution) of each table.
HEADS = {"large": (16, 960, 1280), "small": (16, 576, 1024)}

# Sec. 6.1.1: batch norm with average decay 0.99 (PyTorch momentum 0.01); eps is TensorFlow's
# default (the paper's framework).
BN_MOMENTUM, BN_EPS = 0.01, 1e-3


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite with a bottleneck of 1/4 the channels (Sec. 5.3) and a hard-sigmoid gate."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = make_divisible(channels / 4)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.expand(F.relu(self.reduce(scale))))
        return x * scale


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int, activation: type[nn.Module] | None,
                 groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """MobileNetV2's inverted residual with SE after the depthwise convolution (Fig. 4)."""

    def __init__(self, in_ch: int, expand: int, out_ch: int, kernel: int, stride: int, se: bool, hswish: bool):
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        # An "expansion" to as many channels as the input is no expansion: no 1x1 layer (as the
        # reference code; Large's first bottleneck and Small's first have exp size = input).
        self.expand = _conv_bn_act(in_ch, expand, 1, 1, act) if expand != in_ch else nn.Identity()
        self.depthwise = _conv_bn_act(expand, expand, kernel, stride, act, groups=expand)
        self.se = SqueezeExcite(expand) if se else nn.Identity()
        self.project = _conv_bn_act(expand, out_ch, 1, 1, None)  # linear bottleneck
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return out + x if self.residual else out


class MobileNetV3(nn.Module):
    """Stem, bottlenecks, the efficient last stage (Fig. 5) and the classifier."""

    def __init__(self, blocks: Sequence[Bneck], stem: int, last_conv: int, last_channels: int,
                 num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2, se_last_conv: bool = False, bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult}")

        def width(c: int) -> int:
            return make_divisible(c * width_mult)

        channels = width(stem)
        layers: list[nn.Module] = [_conv_bn_act(in_channels, channels, 3, 2, nn.Hardswish)]
        for b in blocks:
            layers.append(Bottleneck(channels, width(b.expand), width(b.out), b.kernel, b.stride, b.se, b.hswish))
            channels = width(b.out)
        last = width(last_conv)
        layers.append(_conv_bn_act(channels, last, 1, 1, nn.Hardswish))
        if se_last_conv:
            layers.append(SqueezeExcite(last))
        self.features = nn.Sequential(*layers)
        self.num_features = width(last_channels)
        # Fig. 5 / Tables 1-2: after pooling, 1x1 convolutions on a 1x1 map without batch norm
        # ("NBN"), so with biases: fully-connected layers.
        self.classifier = nn.Sequential(
            nn.Linear(last, self.num_features), nn.Hardswish(inplace=True), nn.Dropout(dropout),
            nn.Linear(self.num_features, num_classes),
        )
        # The paper gives no initialisation; He-normal convolutions, as for MobileNetV2 here.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                # Decay 0.99 averages the statistics over the last ~100 steps: right when the
                # weights move slowly, too slow for a run of a few hundred steps (the reduced
                # profile), where they would lag the weights: hence the knob.
                m.momentum = bn_momentum
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def _build(variant: str, blocks: Sequence[Bneck], last_channels: int | None = None, **kw) -> MobileNetV3:
    stem, last_conv, head = HEADS[variant]
    return MobileNetV3(blocks, stem, last_conv, head if last_channels is None else last_channels, **kw)


@register
def mobilenet_v3_large(**kw) -> MobileNetV3:
    """MobileNetV3-Large (Table 1); `width_mult`, `last_channels`, `dropout`, `bn_momentum`."""
    return _build("large", LARGE, **kw)


@register
def mobilenet_v3_small(**kw) -> MobileNetV3:
    """MobileNetV3-Small (Table 2: a 1024-channel head); `last_channels=1280` is arXiv v1's earlier Small."""
    return _build("small", SMALL, **kw)
