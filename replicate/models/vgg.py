"""The VGG ConvNet configurations A-E of Simonyan & Zisserman (ICLR 2015, arXiv 1409.1556).

Table 1 of the paper, column by column: stacks of 3x3 convolutions (stride 1, padding 1, ReLU)
separated by five 2x2 max-pools, then FC-4096, FC-4096 (dropout 0.5 on both, Sec. 3.1) and the
classifier. No batch norm: it postdates the paper. Configuration A-LRN adds local response
normalisation after the first convolution; C adds a 1x1 convolution at the end of blocks 3-5.

`width_mult` scales every convolution's filters and the two hidden fully-connected layers
(default 1.0: the paper's widths and Table 2's parameter counts). It exists for the reduced
profile, which trains these configurations at 32x32 on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._registry import register
from .layers import scaled

# Table 1. An int is a 3x3 convolution with that many filters, "1x1-N" a 1x1 convolution,
# "M" a max-pool, "LRN" local response normalisation.
CONFIGS: dict[str, list] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "1x1-256", "M", 512, 512, "1x1-512", "M",
          512, 512, "1x1-512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}


def make_features(config: Sequence, in_channels: int = 3, width_mult: float = 1.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
        elif item == "LRN":
            # Sec. 2.1: the normalisation of Krizhevsky et al. 2012 (n=5, alpha=1e-4, beta=0.75, k=2).
            layers.append(nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0))
        else:
            kernel, width = (1, int(item.split("-")[1])) if isinstance(item, str) else (3, item)
            width = scaled(width, width_mult)
            layers += [nn.Conv2d(channels, width, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
            channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Convolutional stacks, then three fully-connected layers (Sec. 2.1, Table 1)."""

    def __init__(self, config: Sequence, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5,
                 width_mult: float = 1.0):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult!r}")
        self.features = make_features(config, in_channels, width_mult)
        channels, hidden = scaled(512, width_mult), scaled(4096, width_mult)
        # 224 px in, five 2x2 pools: 7x7 maps; other sizes are pooled to 7x7 so the FC sizes stay the paper's.
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            # Sec. 3.1: "the random initialisation procedure of Glorot & Bengio (2010)" trains the
            # deep configurations without initialising them from configuration A.
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register
def vgg11(**kw) -> VGG:
    """Configuration A (11 weight layers)."""
    return VGG(CONFIGS["A"], **kw)


@register
def vgg11_lrn(**kw) -> VGG:
    """Configuration A-LRN."""
    return VGG(CONFIGS["A-LRN"], **kw)


@register
def vgg13(**kw) -> VGG:
    """Configuration B (13 weight layers)."""
    return VGG(CONFIGS["B"], **kw)


@register
def vgg16_c(**kw) -> VGG:
    """Configuration C (16 weight layers, three of them 1x1)."""
    return VGG(CONFIGS["C"], **kw)


@register
def vgg16(**kw) -> VGG:
    """Configuration D (16 weight layers)."""
    return VGG(CONFIGS["D"], **kw)


@register
def vgg19(**kw) -> VGG:
    """Configuration E (19 weight layers)."""
    return VGG(CONFIGS["E"], **kw)
