"""GoogLeNet, the Inception network of Szegedy et al. (CVPR 2015, arXiv 1409.4842).

As Table 1, Fig. 3 and Sec. 5 describe it:

* stem: 7x7/2 convolution, 3x3/2 max-pool, local response normalisation, 1x1 reduction (64) and
  3x3 convolution (192), local response normalisation, 3x3/2 max-pool (Fig. 3);
* nine Inception modules (3a-5b) with Table 1's widths: a 1x1 branch, a 1x1 reduction followed by
  a 3x3 convolution, a 1x1 reduction followed by a **5x5** convolution, and a 3x3 max-pool
  followed by a 1x1 projection; every convolution is followed by a ReLU (Table 1's note);
  3x3/2 max-pools after 3b and 4e;
* 7x7 average pooling, dropout 40%, a linear classifier (Table 1);
* two auxiliary classifiers on the outputs of 4a and 4d, used in training only (Sec. 5): 5x5/3
  average pooling, 1x1 convolution with 128 filters + ReLU, fully connected 1024 + ReLU, dropout
  70%, linear classifier. In training mode `forward` returns `(main, aux1, aux2)`; the recipe's
  `aux_loss_weight` (0.3, Sec. 5) weights the auxiliary losses. `aux_logits=False` builds the
  inference network that Table 1 counts.

Where this differs from torchvision's `googlenet`: torchvision adds batch norm after every
convolution (the paper predates batch norm), uses a 3x3 convolution in the "5x5" branch, has no
local response normalisation, and its auxiliary pooling is adaptive. Here there is no batch norm,
the 5x5 branch convolves with 5x5 kernels, and the LRN layers stand where Fig. 3 has them.

Inputs other than 224 px: the final 7x7/1 average pool is global average pooling (the same
operation on the 7x7 map of a 224 input), and the auxiliary heads fall back to adaptive pooling
to their 4x4 grid when the map is smaller than the 5x5 window (4a/4d maps are 14x14 at 224 px,
2x2 at 32 px), so the layer sizes, and the parameter counts, stay the paper's.

`width_mult` scales every width of Table 1 and of the auxiliary heads (default 1.0: the paper's
network); it exists for the reduced profile, which trains on two CPU cores.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register


class InceptionSpec(NamedTuple):
    """One row of Table 1: the filters of each branch."""

    n1x1: int
    n3x3_reduce: int
    n3x3: int
    n5x5_reduce: int
    n5x5: int
    pool_proj: int


# Table 1, columns "#1x1", "#3x3 reduce", "#3x3", "#5x5 reduce", "#5x5", "pool proj".
INCEPTION: dict[str, InceptionSpec] = {
    "3a": InceptionSpec(64, 96, 128, 16, 32, 32),
    "3b": InceptionSpec(128, 128, 192, 32, 96, 64),
    "4a": InceptionSpec(192, 96, 208, 16, 48, 64),
    "4b": InceptionSpec(160, 112, 224, 24, 64, 64),
    "4c": InceptionSpec(128, 128, 256, 24, 64, 64),
    "4d": InceptionSpec(112, 144, 288, 32, 64, 64),
    "4e": InceptionSpec(256, 160, 320, 32, 128, 128),
    "5a": InceptionSpec(256, 160, 320, 32, 128, 128),
    "5b": InceptionSpec(384, 192, 384, 48, 128, 128),
}


def _conv_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """A convolution with rectified linear activation ("All the convolutions ... use rectified
    linear activation", Table 1's note); padded so that stride 1 keeps the map size."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2), nn.ReLU(inplace=True))


def _max_pool(stride: int) -> nn.MaxPool2d:
    # Table 1's "3x3/2" pools halve 112 -> 56 -> 28 -> 14 -> 7; ceil mode does so without padding,
    # as the Caffe replication by the paper's co-authors does.
    return nn.MaxPool2d(3, stride=stride, ceil_mode=True)


def _lrn() -> nn.LocalResponseNorm:
    # Fig. 3's "LocalRespNorm". The paper gives no constants; these are Krizhevsky et al.'s window
    # and exponents (n=5, alpha=1e-4, beta=0.75) with k=1, as in the Caffe replication (bvlc_googlenet).
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)


class Inception(nn.Module):
    """The Inception module with dimension reductions (Fig. 2b): four branches, concatenated."""

    def __init__(self, in_ch: int, spec: InceptionSpec):
        super().__init__()
        self.branch1 = _conv_relu(in_ch, spec.n1x1, 1)
        self.branch3 = nn.Sequential(_conv_relu(in_ch, spec.n3x3_reduce, 1), _conv_relu(spec.n3x3_reduce, spec.n3x3, 3))
        self.branch5 = nn.Sequential(_conv_relu(in_ch, spec.n5x5_reduce, 1), _conv_relu(spec.n5x5_reduce, spec.n5x5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv_relu(in_ch, spec.pool_proj, 1))
        self.out_channels = spec.n1x1 + spec.n3x3 + spec.n5x5 + spec.pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class AuxPool(nn.Module):
    """Sec. 5's "average pooling layer with 5x5 filter size and stride 3" (14x14 -> 4x4 at 224 px).

    Maps smaller than the window (small inputs) are pooled adaptively to the same 4x4 grid; on a
    map the 5x5/3 pool already brings to 4x4 the adaptive step changes nothing.
    """

    grid = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, 5, stride=3)
        return F.adaptive_avg_pool2d(x, self.grid)


class AuxClassifier(nn.Module):
    """The "extra network on the side" of Sec. 5, on the output of 4a or 4d."""

    def __init__(self, in_ch: int, num_classes: int, reduce: int = 128, hidden: int = 1024, dropout: float = 0.7):
        super().__init__()
        self.pool = AuxPool()
        self.conv = _conv_relu(in_ch, reduce, 1)
        self.fc = nn.Sequential(nn.Linear(reduce * AuxPool.grid ** 2, hidden), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)  # "70% ratio of dropped outputs"
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pool(x))
        return self.classifier(self.dropout(self.fc(torch.flatten(x, 1))))


class GoogLeNet(nn.Module):
    """Table 1 top to bottom; submodule names follow its rows (`conv1`, `conv2`, `inception3a`...,
    `fc`), so each row's parameters and multiply-adds can be counted on its own."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                 dropout: float = 0.4, aux_dropout: float = 0.7, width_mult: float = 1.0):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult!r}")

        def w(channels: int) -> int:
            return max(1, round(channels * width_mult))

        self.aux_logits = aux_logits
        # Row "convolution 7x7/2", then "max pool 3x3/2" and Fig. 3's LocalRespNorm.
        self.conv1 = _conv_relu(in_channels, w(64), 7, stride=2)
        self.pool1 = _max_pool(2)
        self.norm1 = _lrn()
        # Row "convolution 3x3/1" (depth 2): its 1x1 reduction ("#3x3 reduce" 64) and the 3x3 (192).
        self.conv2 = nn.Sequential(_conv_relu(w(64), w(64), 1), _conv_relu(w(64), w(192), 3))
        self.norm2 = _lrn()
        self.pool2 = _max_pool(2)

        channels = w(192)
        blocks: dict[str, nn.Module] = {}
        for name, spec in INCEPTION.items():
            block = Inception(channels, InceptionSpec(*(w(c) for c in spec)))
            blocks[name] = block
            channels = block.out_channels
            if name == "4a":
                aux1_in = channels
            if name == "4d":
                aux2_in = channels
        self.inception3a, self.inception3b = blocks["3a"], blocks["3b"]
        self.pool3 = _max_pool(2)
        self.inception4a, self.inception4b, self.inception4c = blocks["4a"], blocks["4b"], blocks["4c"]
        self.inception4d, self.inception4e = blocks["4d"], blocks["4e"]
        self.pool4 = _max_pool(2)
        self.inception5a, self.inception5b = blocks["5a"], blocks["5b"]

        if aux_logits:
            self.aux1 = AuxClassifier(aux1_in, num_classes, w(128), w(1024), aux_dropout)
            self.aux2 = AuxClassifier(aux2_in, num_classes, w(128), w(1024), aux_dropout)
        else:
            self.aux1 = self.aux2 = None
        # Rows "avg pool 7x7/1" (global on the 7x7 map of a 224 input), "dropout (40%)", "linear".
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

        for m in self.modules():
            # The paper does not say how it initialises; Glorot's uniform initialisation (as the
            # Caffe replication's "xavier") with zero biases trains this BN-free network from scratch.
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor):
        x = self.pool2(self.norm2(self.conv2(self.norm1(self.pool1(self.conv1(x))))))
        x = self.pool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.pool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if aux1 is not None:
            return logits, aux1, aux2
        return logits


@register
def googlenet(**kw) -> GoogLeNet:
    """GoogLeNet (Table 1), with the auxiliary classifiers of Sec. 5 unless `aux_logits=False`."""
    return GoogLeNet(**kw)
