"""EfficientNet-B3 (Tan & Le, ICML 2019, arXiv 1905.11946), the network Quant-Noise compresses.

EfficientNet is not one of this workbook's papers: as the Quant-Noise issue asks, torchvision's
definition is used unchanged (`torchvision.models.efficientnet_b3`: 12,233,232 parameters with
1000 classes, the count torchvision documents for its ImageNet weights; dropout 0.3 before the
classifier and stochastic depth 0.2, as in the EfficientNet paper's B3). `in_channels` other
than 3 replaces the stem convolution's input, for the reduced profile's grey images.
"""

from __future__ import annotations

import torchvision
from torch import nn

from ._registry import register


@register(input_size=(3, 300, 300))
def efficientnet_b3(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.3) -> nn.Module:
    """torchvision's EfficientNet-B3 (300 px, Tan & Le 2019, Table 1 scaled by phi = 3)."""
    model = torchvision.models.efficientnet_b3(weights=None, num_classes=num_classes, dropout=dropout)
    if in_channels != 3:
        stem = model.features[0][0]
        model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride,
                                         stem.padding, bias=False)
    return model
