"""Squeeze-and-Excitation networks, as Hu et al. describe them (CVPR 2018 / TPAMI, arXiv 1709.01507).

The SE block (Sec. 3, Fig. 1) recalibrates the channels of a feature map U (C x H x W):

* squeeze (Eq. 2): global average pooling gives one statistic per channel, z in R^C;
* excitation (Eq. 3): s = sigmoid(W2 relu(W1 z)), a bottleneck of two fully-connected layers,
  C -> C/r -> C, with reduction ratio r (16 unless stated otherwise, Sec. 5.1);
* scale (Eq. 4): each channel of U is multiplied by its s_c.

In an SE-ResNet module (Sec. 3.3, Fig. 3) the block recalibrates the residual branch, before
the addition with the identity branch. The networks here are:

* SE-ResNet-50/101/152 (Table 1, middle column): He et al.'s ImageNet ResNets with an SE block in
  every bottleneck; the bottleneck downsamples on its first 1x1 convolution, as in the paper's
  models (resnet.py), which gives Table 2's 3.86 GFLOPs for ResNet-50;
* SE versions of the CIFAR ResNet-20/32/56/110 of He et al. 2016 (6n+2 layers, option A);
* the pre-activation ResNet-110 and ResNet-164 of He et al., "Identity Mappings in Deep Residual
  Networks" (ECCV 2016, arXiv 1603.05027), which is what Tables 4 and 5 cite as ResNet-110 [14] and
  ResNet-164 [14] (their "original" 6.37 and 5.46 are that paper's pre-activation results), and
  their SE versions.

Where this differs from popular implementations: timm's `seresnet50` strides the bottleneck's 3x3
convolution (4.1 GFLOPs); ours strides the first 1x1, as the paper's ResNets do (Table 2: 3.87).
timm writes the two FC layers as 1x1 convolutions, the same operation. The excitation layers carry
biases, as in the authors' released Caffe models and timm (Eq. 3 writes them without; Sec. 4 calls
their cost negligible).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register
from .resnet import BasicBlock, Bottleneck, ResNet, Shortcut, ZeroPadShortcut, imagenet_resnet

# -- the SE block ----------------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    """Squeeze (Eq. 2), excitation (Eq. 3) and scale (Eq. 4) for a map of `channels` channels.

    Adds `2 * channels**2 / reduction` weights (one block's share of Eq. 5) plus, with `bias=True`,
    `channels / reduction + channels` biases.
    """

    def __init__(self, channels: int, reduction: int = 16, bias: bool = True):
        super().__init__()
        if reduction < 1 or channels % reduction:
            raise ValueError(f"reduction={reduction} must divide the {channels} channels of the SE block")
        hidden = channels // reduction
        self.reduce = nn.Linear(channels, hidden, bias=bias)  # W1 in R^{C/r x C}
        self.expand = nn.Linear(hidden, channels, bias=bias)  # W2 in R^{C x C/r}
        for fc in (self.reduce, self.expand):
            # Sec. 5.1: every layer initialised as in He et al. 2015 [66].
            nn.init.kaiming_normal_(fc.weight, mode="fan_in", nonlinearity="relu")
            if fc.bias is not None:
                nn.init.zeros_(fc.bias)

    def excitation(self, u: torch.Tensor) -> torch.Tensor:
        """The channel weights s in (0, 1), shape (N, C)."""
        z = u.mean(dim=(2, 3))
        return torch.sigmoid(self.expand(F.relu(self.reduce(z))))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.excitation(u)[:, :, None, None]


# -- SE-ResNet modules (Fig. 3): the SE block on the residual branch, before the addition -------------


class SEBasicBlock(BasicBlock):
    """Two 3x3 convolutions (He et al. 2016, Fig. 5 left) with an SE block on their output."""

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: Shortcut, residual: bool = True,
                 reduction: int = 16):
        super().__init__(in_ch, width, stride, shortcut, residual)
        self.se = SqueezeExcitation(width * self.expansion, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.conv2(F.relu(self.conv1(x))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class SEBottleneck(Bottleneck):
    """Table 1 (middle): conv 1x1, 3x3, 1x1, then `fc, [C/16, C]` on the 4x-expanded output."""

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: Shortcut, residual: bool = True,
                 reduction: int = 16, downsample_on: Literal["1x1", "3x3"] = "1x1"):
        super().__init__(in_ch, width, stride, shortcut, residual, downsample_on)
        self.se = SqueezeExcitation(width * self.expansion, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


# -- pre-activation residual units (He et al., Identity Mappings, Fig. 4(e) and appendix) -------------


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


class _PreActUnit(nn.Module):
    """BN-ReLU before every weight layer, an identity after the addition (Identity Mappings, Eq. 9).

    Shortcuts: identity where the shape is kept; where it changes, option A (zero padding, on the
    un-activated input, as in He et al. 2016's CIFAR nets) or a 1x1 projection that "is also with
    pre-activation" (appendix): the unit's BN-ReLU is then shared by both paths. The network's very
    first unit shares it too ("the first activation right after conv1 and before splitting into two
    paths"); `PreActResNet` sets `shares_activation` on it.
    """

    expansion = 1

    def _init_shortcut(self, in_ch: int, out_ch: int, stride: int, shortcut: Shortcut) -> None:
        if shortcut not in ("A", "B", "C"):
            raise ValueError(f"shortcut must be 'A', 'B' or 'C', not {shortcut!r}")
        changes_shape = stride != 1 or in_ch != out_ch
        projection = shortcut == "C" or (shortcut == "B" and changes_shape)
        if projection:
            self.shortcut: nn.Module = _conv(in_ch, out_ch, 1, stride)  # no BN: the sum stays un-normalised
        elif changes_shape:
            self.shortcut = ZeroPadShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Identity()
        self.shares_activation = projection

    def branch(self, activated: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = self.branch(activated)
        if self.se is not None:
            out = self.se(out)
        return out + self.shortcut(activated if self.shares_activation else x)


class PreActBasicBlock(_PreActUnit):
    """[BN-ReLU-conv3x3] x 2 (Fig. 4(e)); ResNet-110's unit."""

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: Shortcut, residual: bool = True,
                 reduction: int | None = None):
        super().__init__()
        if not residual:
            raise ValueError("pre-activation units are residual by construction")
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv(in_ch, width, 3, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3)
        self.se = SqueezeExcitation(width, reduction) if reduction else None
        self._init_shortcut(in_ch, width, stride, shortcut)

    def branch(self, a: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn2(self.conv1(a))))


class PreActBottleneck(_PreActUnit):
    """[BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1], 4x expansion; ResNet-164's unit.

    Built "following [1]" (appendix): the stride sits on the first 1x1, as in the authors' released
    ResNet-164/1001 code.
    """

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: Shortcut, residual: bool = True,
                 reduction: int | None = None):
        super().__init__()
        if not residual:
            raise ValueError("pre-activation units are residual by construction")
        out_ch = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv(in_ch, width, 1, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, out_ch, 1)
        self.se = SqueezeExcitation(out_ch, reduction) if reduction else None
        self._init_shortcut(in_ch, out_ch, stride, shortcut)

    def branch(self, a: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.relu(self.bn3(self.conv2(F.relu(self.bn2(self.conv1(a)))))))


class PreActResNet(ResNet):
    """A ResNet of pre-activation units, with "an extra activation right after [the last unit's]
    element-wise addition" (Identity Mappings, appendix) before the pooling."""

    def __init__(self, block, depths, widths, stem, stem_channels, num_classes, shortcut, **block_kwargs):
        super().__init__(block, depths, widths, stem, stem_channels, num_classes, shortcut, True, **block_kwargs)
        self.stages[0][0].shares_activation = True
        self.final_bn = nn.BatchNorm2d(self.num_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.final_bn(self.stages(self.stem(x))))


# -- builders --------------------------------------------------------------------------------------


def _se_imagenet_net(depths, *, reduction: int = 16, **kw) -> ResNet:
    """Table 1 (middle): ResNet's layout (conv1 7x7/2, max-pool, four stages) with SE bottlenecks."""
    return imagenet_resnet(SEBottleneck, depths, residual=True, reduction=reduction, **kw)


def _cifar_stem(in_channels: int) -> nn.Sequential:
    # He et al. 2016, Sec. 4.2: "The first layer is 3x3 convolutions" with 16 filters.
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
    )


def se_cifar_net(depth: int, *, reduction: int = 16, num_classes: int = 10, in_channels: int = 3,
                 shortcut: Shortcut = "A") -> ResNet:
    """He et al. 2016's 6n+2-layer CIFAR ResNet (16/32/64 filters, option A) with SE basic blocks."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNets have 6n+2 layers; {depth} is not of that form")
    n = (depth - 2) // 6
    return ResNet(SEBasicBlock, (n, n, n), (16, 32, 64), _cifar_stem(in_channels), 16, num_classes, shortcut,
                  True, reduction=reduction)


def preact_cifar_net(depth: int, bottleneck: bool, *, reduction: int | None, num_classes: int = 10,
                     in_channels: int = 3, shortcut: Shortcut | None = None) -> PreActResNet:
    """Identity Mappings' CIFAR nets: a 3x3 conv with 16 filters (no BN-ReLU of its own: that is the
    first unit's pre-activation), three stages on 32/16/8 maps, BN-ReLU, pooling, FC.

    Basic units: 6n+2 layers, widths 16/32/64, option A shortcuts as in He et al. 2016. Bottleneck
    units: 9n+2 layers, widths 16/32/64 expanded to 64/128/256, projection shortcuts where the
    dimensions increase (appendix).
    """
    per_unit = 9 if bottleneck else 6
    if (depth - 2) % per_unit:
        raise ValueError(f"this network has {per_unit}n+2 layers; {depth} is not of that form")
    n = (depth - 2) // per_unit
    block = PreActBottleneck if bottleneck else PreActBasicBlock
    shortcut = shortcut or ("B" if bottleneck else "A")
    stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
    return PreActResNet(block, (n, n, n), (16, 32, 64), stem, 16, num_classes, shortcut, reduction=reduction)


# ImageNet, Table 2: SE-ResNet-50/101/152 (option B shortcuts, as resnet50/101/152).
@register
def se_resnet50(**kw) -> ResNet:
    return _se_imagenet_net((3, 4, 6, 3), **kw)


@register
def se_resnet101(**kw) -> ResNet:
    return _se_imagenet_net((3, 4, 23, 3), **kw)


@register
def se_resnet152(**kw) -> ResNet:
    return _se_imagenet_net((3, 8, 36, 3), **kw)


# He et al. 2016's CIFAR ResNets with SE blocks (the reduced-scale comparisons).
@register(input_size=(3, 32, 32))
def se_resnet20(**kw) -> ResNet:
    return se_cifar_net(20, **kw)


@register(input_size=(3, 32, 32))
def se_resnet32(**kw) -> ResNet:
    return se_cifar_net(32, **kw)


@register(input_size=(3, 32, 32))
def se_resnet56(**kw) -> ResNet:
    return se_cifar_net(56, **kw)


@register(input_size=(3, 32, 32))
def se_resnet110(**kw) -> ResNet:
    return se_cifar_net(110, **kw)


# Tables 4-5: the pre-activation ResNet-110 and ResNet-164 of Identity Mappings [14], plain and SE.
@register(input_size=(3, 32, 32))
def preact_resnet110(**kw) -> PreActResNet:
    return preact_cifar_net(110, bottleneck=False, reduction=None, **kw)


@register(input_size=(3, 32, 32))
def se_preact_resnet110(reduction: int = 16, **kw) -> PreActResNet:
    return preact_cifar_net(110, bottleneck=False, reduction=reduction, **kw)


@register(input_size=(3, 32, 32))
def resnet164(**kw) -> PreActResNet:
    return preact_cifar_net(164, bottleneck=True, reduction=None, **kw)


@register(input_size=(3, 32, 32))
def se_resnet164(reduction: int = 16, **kw) -> PreActResNet:
    return preact_cifar_net(164, bottleneck=True, reduction=reduction, **kw)
