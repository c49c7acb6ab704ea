"""Darknet-19, the classifier of Redmon & Farhadi, "YOLO9000: Better, Faster, Stronger" (CVPR
2017, arXiv 1612.08242), Sec. 3 and Table 6: 19 convolutional layers and 5 max-pools, mostly 3x3
filters doubling after each pool with 1x1 compressions between them, batch norm and leaky ReLU
(0.1) after every convolution but the last, a 1x1 convolution to the classes, global average
pooling and softmax (in the loss). 5.58 billion operations at 224 x 224 (Darknet counts two per
multiply-add). YOLOv2 (`yolov2.py`) is built on its backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._registry import register
from .layers import LEAKY_SLOPE
from .yolov1 import make_layers

# Table 6, (kernel, filters) or "M". Stage 1 ends with the last 3x3x512 layer (26 x 26 at 416),
# where the passthrough starts; stage 2 is the last pool and the 1024-filter layers.
STAGE1: tuple = ((3, 32), "M", (3, 64), "M", (3, 128), (1, 64), (3, 128), "M", (3, 256), (1, 128), (3, 256), "M",
                 (3, 512), (1, 256), (3, 512), (1, 256), (3, 512))
STAGE2: tuple = ("M", (3, 1024), (1, 512), (3, 1024), (1, 512), (3, 1024))


def make_stage(spec: Sequence, in_channels: int, width_mult: float) -> tuple[nn.Sequential, int]:
    """Convolution + batch norm + leaky ReLU blocks (stride 1) and max-pools; returns them and their
    width. Table 6's layers are YOLOv1's with batch norm (`yolov1.make_layers`)."""
    return make_layers([item if item == "M" else (*item, 1) for item in spec], in_channels, width_mult,
                       batch_norm=True)


def init_darknet(module: nn.Module) -> None:
    """He initialisation for the leaky ReLU (slope 0.1) of every convolution, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Darknet19Backbone(nn.Module):
    """Table 6 without its classifier: `stage1` (to the last 3x3x512 layer, stride 16) and
    `stage2` (the last max-pool and the 1024-filter layers, stride 32). Returns both maps, the
    finer one for YOLOv2's passthrough."""

    def __init__(self, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult!r}")
        self.stage1, self.fine_channels = make_stage(STAGE1, in_channels, width_mult)
        self.stage2, self.out_channels = make_stage(STAGE2, self.fine_channels, width_mult)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fine = self.stage1(x)
        return fine, self.stage2(fine)


class Darknet19(nn.Module):
    """Table 6: the backbone, the 1x1 classifier convolution, global average pooling. The
    detector's `network.backbone` has the same module names, so the classifier's trained weights
    load into it (`detector.network.backbone.load_state_dict(classifier.backbone.state_dict())`)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        self.backbone = Darknet19Backbone(in_channels, width_mult)
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1)  # linear, no batch norm
        self.pool = nn.AdaptiveAvgPool2d(1)
        init_darknet(self)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.classifier(self.backbone(x)[1])), 1)


@register(input_size=(3, 224, 224))
def darknet19(**kw) -> Darknet19:
    """Darknet-19 (Table 6): 19 convolutions, 5 max-pools, 5.58 B operations at 224."""
    return Darknet19(**kw)
