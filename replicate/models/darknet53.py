"""Darknet-53, the classifier of YOLOv3 (Redmon & Farhadi 2018, arXiv 1804.02767), Sec. 2.4 and
Table 1, and the backbone of its detector (`yolov3.py`).

Darknet-53 (Sec. 2.4, Table 1): a 3x3 convolution with 32 filters, then five stages, each a
3x3/2 convolution that doubles the width (64, 128, 256, 512, 1024) followed by 1, 2, 8, 8 and 4
residual blocks (1x1 convolution to half the width, 3x3 back, identity shortcut); global average
pooling and a 1000-way connected layer: 52 convolutions + 1 connected = 53 layers. Every
convolution is followed by batch norm and a leaky ReLU of slope 0.1 ("batch normalization, all the
standard stuff", Sec. 2.5; the slope is Darknet's `leaky`). Table 2 counts 18.7 billion operations
at 256 x 256 (two per multiply-add, Darknet's convention). Counted here: 18.57 with Table 1's order
(pool, then the connected layer); 18.70 with the 1000-way layer applied before pooling
(`classifier_before_pool=True`, an equivalent function), which is how Table 2's 18.7 arises.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register
from .layers import ConvBN, FiveStageBackbone, scaled

# Table 1: widths of the five stages and their numbers of residual blocks.
DARKNET53_STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


class Residual(nn.Module):
    """Table 1's residual block: 1x1 to `hidden` channels, 3x3 back to `channels`, plus the input."""

    def __init__(self, channels: int, hidden: int, activation: str = "leaky"):
        super().__init__()
        self.reduce = ConvBN(channels, hidden, 1, activation=activation)
        self.conv = ConvBN(hidden, channels, 3, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(self.reduce(x))


class Darknet53(FiveStageBackbone):
    """Darknet-53 (Table 1). `forward_features` returns the stride-8, -16 and -32 maps (256, 512,
    1024 channels at width 1) that the detector uses; `forward` classifies. `num_classes=None`
    leaves out the classifier (the detector's backbone).

    `classifier_before_pool=True` applies the 1000-way layer at every position of the last map and
    averages afterwards, as Darknet-19 is built (YOLO9000 Table 6): the same function (both steps
    are linear), but the layer then costs 64 x its multiply-adds at 256 x 256. Table 2's 18.7 Bn
    operations come out only that way (18.70); Table 1's order (pool, then connected) counts 18.57.
    """

    def __init__(self, num_classes: int | None = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 activation: str = "leaky", classifier_before_pool: bool = False):
        super().__init__()
        self.classifier_before_pool = bool(classifier_before_pool)
        width = scaled(32, width_mult)
        self.stem = ConvBN(in_channels, width, 3, activation=activation)
        stages = []
        for channels, blocks in DARKNET53_STAGES:
            channels = scaled(channels, width_mult)
            layers = [ConvBN(width, channels, 3, 2, activation)]
            layers += [Residual(channels, max(1, channels // 2), activation) for _ in range(blocks)]
            stages.append(nn.Sequential(*layers))
            width = channels
        self.stages = nn.Sequential(*stages)
        self.out_channels = tuple(scaled(c, width_mult) for c, _ in DARKNET53_STAGES[2:])
        self.fc = nn.Linear(width, num_classes) if num_classes is not None else None

    def classify(self, features: Tensor) -> Tensor:
        if self.classifier_before_pool:
            return F.conv2d(features, self.fc.weight[:, :, None, None], self.fc.bias).mean(dim=(2, 3))
        return self.fc(features.mean(dim=(2, 3)))



@register(input_size=(3, 256, 256))
def darknet53(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, activation: str = "leaky",
              classifier_before_pool: bool = False) -> Darknet53:
    """Darknet-53 (YOLOv3 Table 1), the classifier of Table 2 (tested at 256 x 256)."""
    return Darknet53(num_classes, in_channels, width_mult, activation, classifier_before_pool)
