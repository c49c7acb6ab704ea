"""MobileNet V1 of Howard et al. (2017, arXiv 1704.04861): depthwise separable convolutions.

Table 1, row by row: a full 3x3 convolution with stride 2, thirteen depthwise separable
blocks (a 3x3 depthwise convolution, then a 1x1 "pointwise" convolution, each followed by batch
norm and ReLU, Fig. 3 right), global average pooling, one fully-connected layer and the softmax
(applied by the loss). Counting depthwise and pointwise convolutions as separate layers, 28
layers (Sec. 3.2). Down-sampling is done by the stride of the depthwise convolutions and of the
first layer; there is no pooling inside the body.

The paper's two knobs (Secs. 3.3-3.4):

* the width multiplier alpha (`width_mult`) thins every layer uniformly, the first
  convolution and the classifier's input included: M input and N output channels become
  alpha*M and alpha*N;
* the resolution multiplier rho is the input size (224/192/160/128): nothing in the model
  changes, the final average pool covers whatever map is left (7x7 at 224, 4x4 at 128).

Two more knobs build Sec. 4.1's comparison models: `separable=False` replaces each depthwise
separable block by a full 3x3 convolution ("Conv MobileNet", Table 4) and `shallow=True` drops
the five 14x14x512 separable blocks ("Shallow MobileNet", Table 5).

Where the paper, its Table 1 and popular implementations part ways:

* ReLU, as Sec. 3.2 and Fig. 3 say; TensorFlow-slim's and Keras' MobileNet V1 use ReLU6.
* Table 1 prints the thirteenth depthwise convolution as "Conv dw / s2" on a 7x7x1024 input,
  but its output feeds a 7x7x1024 1x1 convolution and the 7x7 average pool, so the stride is 1
  (as in TensorFlow-slim's definition). Stride 1 is also what gives Table 6's 569 M mult-adds.
* No dropout: the paper mentions none (TF-slim keeps 99.9% of the activations before the
  classifier, which is no regularisation to speak of).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._registry import register

STEM = 32
# Table 1: (output channels of the pointwise convolution, stride of the depthwise convolution)
# for the thirteen depthwise separable blocks.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2), (128, 1),
    (256, 2), (256, 1),
    (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),  # the "5x" 14x14x512 rows
    (1024, 2), (1024, 1),
)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution, batch norm, ReLU (Sec. 3.2: "all layers are followed by a batchnorm and ReLU")."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DepthwiseSeparable(nn.Module):
    """A 3x3 depthwise convolution (one filter per input channel), then a 1x1 convolution that
    combines the channels (Sec. 3.1, Fig. 2 (b)-(c), Fig. 3 right)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.depthwise = _conv_bn_relu(in_ch, in_ch, 3, stride, groups=in_ch)
        self.pointwise = _conv_bn_relu(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _thin(channels: int, width_mult: float) -> int:
    """alpha * channels (Sec. 3.3); exact for the paper's alphas 1, 0.75, 0.5 and 0.25."""
    return max(1, int(round(channels * width_mult)))


class MobileNetV1(nn.Module):
    """Table 1's body, global average pooling and the classifier."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 separable: bool = True, shallow: bool = False, blocks: Sequence[tuple[int, int]] = BLOCKS):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult}")
        if shallow:
            # Sec. 4.1: "the 5 layers of separable filters with feature size 14x14x512 are removed".
            repeats = [i for i, (out, stride) in enumerate(blocks) if (out, stride) == (512, 1)]
            blocks = [b for i, b in enumerate(blocks) if i not in repeats[:5]]
        channels = _thin(STEM, width_mult)
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, channels, 3, stride=2)]
        for out, stride in blocks:
            out = _thin(out, width_mult)
            layers.append(DepthwiseSeparable(channels, out, stride) if separable
                          else _conv_bn_relu(channels, out, 3, stride))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        # The paper gives no initialisation; He initialisation for the ReLU convolutions.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register
def mobilenet_v1(**kw) -> MobileNetV1:
    """MobileNet V1 (Table 1); `width_mult` is the width multiplier alpha of Sec. 3.3."""
    return MobileNetV1(**kw)
