"""MobileNetV2, as Sandler et al. describe it (CVPR 2018, arXiv 1801.04381).

Table 2: a 3x3/2 convolution with 32 filters, 17 inverted-residual bottlenecks in seven
sequences (t, c, n, s) (Sec. 4's text says 19; Table 2's n column adds up to 17, as in the
authors' code), a 1x1 convolution to 1280 channels, global average pooling and a 1x1
convolution (a fully-connected layer) to the classes. Each bottleneck (Table 1) is a 1x1
expansion to t*k channels with ReLU6, a 3x3 depthwise convolution of stride s with ReLU6, and a
*linear* 1x1 projection to k' channels (Sec. 3.2); the shortcut joins the thin bottlenecks when
input and output shapes agree (Sec. 3.3). Batch norm follows every convolution (Sec. 6.1).

Widths. The width multiplier scales every layer, except that for multipliers below one the last
convolution keeps its 1280 channels (Sec. 4, "Trade-off hyper parameters"). Every scaled width is
rounded to a multiple of 8, as the authors' TF-Slim implementation does (the paper does not say
so; at width 1.0 and 1.4 every width of Table 2 is already a multiple of 8, so it only matters for
other multipliers). The first sequence (t = 1) has no expansion convolution: expanding k channels
to 1*k would be a plain extra 1x1 layer, which neither Table 2's count of layers nor the reference
implementation has.

Ablation knobs of Fig. 6: `linear_bottleneck=False` puts a ReLU6 after the projection (Fig. 6a,
"Impact of non-linearity in the bottleneck layer"); `shortcut` chooses where the residual
connection goes (Fig. 6b): "bottleneck" (the paper's), "expansion" or "none". The paper does not
draw the "between expansions" variant; here it adds the block's expanded input (after the
expansion's ReLU6) to the depthwise output, the one pair of expanded tensors of equal shape inside
a block, in the same blocks that get the bottleneck shortcut.

Where this differs from torchvision's `mobilenet_v2`: nothing in the layers (same widths, the same
rounding, dropout 0.2 before the classifier as the TF-Slim reference's keep probability 0.8), so
the counts are equal: 3,504,872 parameters and 300.8 M multiply-adds at 224 px. The paper's
Table 4 prints 3.4 M: the authors count without batch norm (their README lists 3.47 M for the
released model: our count less batch norm's 34,112 scale and shift parameters) and truncate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ._registry import register

Shortcut = Literal["bottleneck", "expansion", "none"]

# Table 2: expansion factor t, output channels c, repeats n, stride of the first repeat s.
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """`value` rounded to the nearest multiple of `divisor`, at least `divisor`, and never more than
    10% below `value` (the channel rounding of the authors' TF-Slim MobileNet code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: type[nn.Module] | None = nn.ReLU6, **bn_kwargs) -> nn.Sequential:
    """Convolution, batch norm and (optionally) an activation: one "layer" of Tables 1-2."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch, **bn_kwargs),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Table 1: 1x1 expansion + ReLU6, 3x3 depthwise (stride s) + ReLU6, linear 1x1 projection."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: float,
                 linear_bottleneck: bool = True, shortcut: Shortcut = "bottleneck"):
        super().__init__()
        if shortcut not in ("bottleneck", "expansion", "none"):
            raise ValueError(f"shortcut must be 'bottleneck' (the paper), 'expansion' or 'none', not {shortcut!r}")
        hidden = int(round(in_ch * expand_ratio))
        self.expand = conv_bn(in_ch, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        # Sec. 3.2: no non-linearity in the narrow layer; Fig. 6a's variant puts ReLU6 back.
        self.project = conv_bn(hidden, out_ch, 1, activation=None if linear_bottleneck else nn.ReLU6)
        residual = stride == 1 and in_ch == out_ch
        self.shortcut: Shortcut = shortcut if residual else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expanded = self.expand(x)
        filtered = self.depthwise(expanded)
        if self.shortcut == "expansion":
            filtered = filtered + expanded
        out = self.project(filtered)
        return out + x if self.shortcut == "bottleneck" else out


class MobileNetV2(nn.Module):
    """Stem, the bottleneck sequences of Table 2, a 1x1 convolution, pooling and the classifier."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 settings: Sequence[tuple[int, int, int, int]] = SETTINGS, dropout: float = 0.2,
                 linear_bottleneck: bool = True, shortcut: Shortcut = "bottleneck"):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult}")
        channels = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [conv_bn(in_channels, channels, 3, stride=2)]
        for t, c, n, s in settings:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out_ch, s if i == 0 else 1, t,
                                               linear_bottleneck=linear_bottleneck, shortcut=shortcut))
                channels = out_ch
        # Sec. 4: below width 1 the last convolution keeps its width; above it, it widens too.
        self.num_features = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers.append(conv_bn(channels, self.num_features, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # Table 2's last "conv2d 1x1, k" acts on a 1x1 map: a fully-connected layer. Sec. 4:
        # "we ... utilize dropout"; the rate is the reference implementation's (keep 0.8).
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        # The paper gives no initialisation; He-normal convolutions, as common for ReLU networks.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register
def mobilenet_v2(**kw) -> MobileNetV2:
    """MobileNetV2 (Table 2); `width_mult` 0.35-1.4, `linear_bottleneck`, `shortcut` (Fig. 6)."""
    return MobileNetV2(**kw)
