"""ResNet and its plain counterparts, as He et al. describe them (CVPR 2016, arXiv 1512.03385).

Two families share the blocks below:

* ImageNet networks (Sec. 3.4, Table 1): a 7x7/2 stem, a 3x3/2 max-pool, four stages of basic
  blocks (18/34 layers) or bottleneck blocks (50/101/152), global average pooling, one FC layer.
* CIFAR-10 networks (Sec. 4.2): 6n+2 layers, a 3x3 stem with 16 filters, three stages of n basic
  blocks with 16/32/64 filters on 32/16/8 maps, global average pooling, one FC layer.

Where this differs from torchvision: the bottleneck downsamples with stride 2 on its *first* 1x1
convolution, as in the paper and its released Caffe models (torchvision's "v1.5" strides the
3x3 instead, which costs 4.1 instead of 3.9 GFLOPs for ResNet-50). Shortcut options follow
Sec. 3.3: (A) zero-padding identity, parameter-free; (B) projections only where dimensions
increase; (C) projections everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register

Shortcut = Literal["A", "B", "C"]


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution followed by batch norm (Sec. 3.4: BN right after each convolution)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    )


class ZeroPadShortcut(nn.Module):
    """Option A (Sec. 3.3): identity with stride-s subsampling and zero channels appended."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.extra, self.stride = out_ch - in_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def make_shortcut(in_ch: int, out_ch: int, stride: int, option: Shortcut) -> nn.Module:
    """The shortcut of one block for option A, B or C (Sec. 3.3, 'Identity vs. Projection')."""
    if option not in ("A", "B", "C"):
        raise ValueError(f"shortcut must be 'A', 'B' or 'C', not {option!r}")
    changes_shape = stride != 1 or in_ch != out_ch
    if option == "C" or (option == "B" and changes_shape):
        return _conv_bn(in_ch, out_ch, 1, stride)  # Eq. (2): y = F(x) + W_s x
    if changes_shape:
        return ZeroPadShortcut(in_ch, out_ch, stride)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (Fig. 5 left); `residual=False` gives the plain-net block."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: Shortcut, residual: bool = True):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = _conv_bn(in_ch, width, 3, stride)
        self.conv2 = _conv_bn(width, out_ch, 3)
        self.shortcut = make_shortcut(in_ch, out_ch, stride, shortcut) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place where autograd allows (batch norm's backward does not need its output): fewer
        # allocations, measurably faster on CPU (benchmarks/versus.py).
        out = self.conv2(F.relu(self.conv1(x), inplace=True))
        if self.shortcut is not None:
            out += self.shortcut(x)
        return F.relu(out, inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 restore with 4x expansion (Fig. 5 right).

    The stride sits on the first 1x1 convolution, as in the paper's models; that placement is
    what gives Table 1's 3.8 / 7.6 / 11.3 GFLOPs. `downsample_on="3x3"` gives torchvision's
    "v1.5" layout instead, for comparison only.
    """

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: Shortcut, residual: bool = True,
                 downsample_on: Literal["1x1", "3x3"] = "1x1"):
        super().__init__()
        if downsample_on not in ("1x1", "3x3"):
            raise ValueError(f"downsample_on must be '1x1' (the paper) or '3x3' (torchvision v1.5), not {downsample_on!r}")
        out_ch = width * self.expansion
        first = stride if downsample_on == "1x1" else 1
        self.conv1 = _conv_bn(in_ch, width, 1, first)
        self.conv2 = _conv_bn(width, width, 3, stride // first)
        self.conv3 = _conv_bn(width, out_ch, 1)
        self.shortcut = make_shortcut(in_ch, out_ch, stride, shortcut) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x), inplace=True)), inplace=True))
        if self.shortcut is not None:
            out += self.shortcut(x)
        return F.relu(out, inplace=True)


class ResNet(nn.Module):
    """A stem, stages of blocks, global average pooling and a fully-connected classifier."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        widths: Sequence[int],
        stem: nn.Module,
        stem_channels: int,
        num_classes: int,
        shortcut: Shortcut,
        residual: bool,
        **block_kwargs,
    ):
        super().__init__()
        self.stem = stem
        stages, in_ch = [], stem_channels
        for index, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            blocks = []
            for i in range(depth):
                stride = 2 if (i == 0 and index > 0) else 1  # Sec. 3.3: downsample at each stage's start
                blocks.append(block(in_ch, width, stride, shortcut, residual, **block_kwargs))
                in_ch = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # Sec. 3.4: "We initialize the weights as in [13]" (He et al. 2015, std sqrt(2/n)).
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def imagenet_resnet(block, depths, *, residual: bool, num_classes: int = 1000, in_channels: int = 3,
                  shortcut: Shortcut = "B", **block_kwargs) -> ResNet:
    """Table 1: conv1 7x7/2 with 64 filters, 3x3/2 max-pool, conv2_x..conv5_x with 64..512 widths."""
    stem = nn.Sequential(
        nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    return ResNet(block, depths, (64, 128, 256, 512), stem, 64, num_classes, shortcut, residual, **block_kwargs)


def cifar_net(depth: int, *, residual: bool, num_classes: int = 10, in_channels: int = 3,
              shortcut: Shortcut = "A") -> ResNet:
    """Sec. 4.2: 6n+2 layers; 3x3 stem with 16 filters, then 2n layers on each of 32/16/8 maps."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNets have 6n+2 layers; {depth} is not of that form")
    n = (depth - 2) // 6
    stem = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
    )
    return ResNet(BasicBlock, (n, n, n), (16, 32, 64), stem, 16, num_classes, shortcut, residual)


# ImageNet networks, Table 1. Option B shortcuts by default (Table 3, used for 50/101/152).
@register
def resnet18(**kw) -> ResNet:
    return imagenet_resnet(BasicBlock, (2, 2, 2, 2), residual=True, **kw)


@register
def resnet34(**kw) -> ResNet:
    return imagenet_resnet(BasicBlock, (3, 4, 6, 3), residual=True, **kw)


@register
def resnet50(**kw) -> ResNet:
    return imagenet_resnet(Bottleneck, (3, 4, 6, 3), residual=True, **kw)


@register
def resnet101(**kw) -> ResNet:
    return imagenet_resnet(Bottleneck, (3, 4, 23, 3), residual=True, **kw)


@register
def resnet152(**kw) -> ResNet:
    return imagenet_resnet(Bottleneck, (3, 8, 36, 3), residual=True, **kw)


# Plain baselines of Table 2: the same layers without shortcuts.
@register
def plain18(**kw) -> ResNet:
    return imagenet_resnet(BasicBlock, (2, 2, 2, 2), residual=False, **kw)


@register
def plain34(**kw) -> ResNet:
    return imagenet_resnet(BasicBlock, (3, 4, 6, 3), residual=False, **kw)


# CIFAR-10 networks of Table 6 and Fig. 6 (option A shortcuts, Sec. 4.2).
@register(input_size=(3, 32, 32))
def resnet20(**kw) -> ResNet:
    return cifar_net(20, residual=True, **kw)


@register(input_size=(3, 32, 32))
def resnet32(**kw) -> ResNet:
    return cifar_net(32, residual=True, **kw)


@register(input_size=(3, 32, 32))
def resnet44(**kw) -> ResNet:
    return cifar_net(44, residual=True, **kw)


@register(input_size=(3, 32, 32))
def resnet56(**kw) -> ResNet:
    return cifar_net(56, residual=True, **kw)


@register(input_size=(3, 32, 32))
def resnet110(**kw) -> ResNet:
    return cifar_net(110, residual=True, **kw)


@register(input_size=(3, 32, 32))
def resnet1202(**kw) -> ResNet:
    return cifar_net(1202, residual=True, **kw)


@register(input_size=(3, 32, 32))
def plain20(**kw) -> ResNet:
    return cifar_net(20, residual=False, **kw)


@register(input_size=(3, 32, 32))
def plain32(**kw) -> ResNet:
    return cifar_net(32, residual=False, **kw)


@register(input_size=(3, 32, 32))
def plain44(**kw) -> ResNet:
    return cifar_net(44, residual=False, **kw)


@register(input_size=(3, 32, 32))
def plain56(**kw) -> ResNet:
    return cifar_net(56, residual=False, **kw)
