"""CSPResNeXt-50 (Wang et al. 2020, "CSPNet", arXiv 1911.11929), the second backbone of YOLOv4's
comparisons (Bochkovskiy, Wang & Liao 2020: Table 1, the classifier ablation of Table 2, the
detector ablations of Tables 4-6 as "CSPResNeXt50-PANet-SPP").

ResNeXt-50's four stages made cross-stage partial. The paper prints no layer table; the widths
and depths are those of the authors' released csresnext50.cfg (the backbone of
csresnext50-panet-spp.cfg is the same network):

* stem: 7x7/2 convolution to 64 channels, 2x2/2 max-pooling (stride 4);
* four stages with 3, 3, 5 and 2 ResNeXt blocks (ResNeXt-50's 3, 4, 6, 3, one block of each of the
  last three stages traded for a grouped 3x3/2 downsampling convolution before the split), output
  widths 256, 512, 1024 and 2048 at strides 4, 8, 16 and 32;
* each stage: a 1x1 "cross" part that bypasses the blocks and a 1x1 "main" part through them, each
  half the output width; a 1x1 transition after the blocks; concatenation; a 1x1 fusion;
* a ResNeXt block keeps its width (no 4x expansion: the other half of ResNeXt's width is the
  cross part): 1x1, 3x3 with 32 groups, 1x1 without activation, plus the input, then the
  activation. The first block of stage 1 widens 64 to 128 channels; Darknet adds its 64-channel
  input to the first 64 of the 128 ("partial shortcut"), as here.

Batch norm follows every convolution; leaky ReLU (0.1) everywhere, except the blocks' last 1x1 and
the part 1x1s of stages 2 and 3, which are linear in the cfg. Table 1: 20.6 M parameters, 16 3x3
convolutions, 425 x 425 receptive field, 31 BFLOPs (15.5 billion FMA) at 512 x 512. Counted here:
20,557,480 parameters with the 1000-way classifier (20.50 M without batch norm's scales and
shifts, CSPNet's own figure), 16 3x3 convolutions, 15.85 billion multiply-adds at 512 (31.7
BFLOPs; 7.93 BFLOPs at 256, CSPNet's figure for the same cfg).

`activation` replaces leaky ReLU everywhere it appears (Table 2's Swish and Mish rows). At
`width_mult` < 1 the cardinality shrinks with the widths (32 x width_mult groups), so each group
keeps the full network's width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._registry import register
from .layers import ConvBN, FiveStageBackbone, make_activation, scaled

# (output width, ResNeXt blocks, downsampling convolution) per stage: csresnext50.cfg.
STAGES = ((256, 3, False), (512, 3, True), (1024, 5, True), (2048, 2, True))
CARDINALITY = 32  # ResNeXt's groups in every 3x3
STEM_WIDTH = 64


class ResNeXtBlock(nn.Module):
    """1x1, grouped 3x3, linear 1x1, plus the input (on its first channels when the block widens),
    then the activation."""

    def __init__(self, in_ch: int, width: int, groups: int, activation: str):
        super().__init__()
        if in_ch > width:
            raise ValueError(f"a ResNeXt block cannot narrow {in_ch} channels to {width}")
        self.in_ch = in_ch
        self.reduce = ConvBN(in_ch, width, 1, activation=activation)
        self.conv = ConvBN(width, width, 3, activation=activation, groups=groups)
        self.expand = ConvBN(width, width, 1, activation="linear")
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(self.conv(self.reduce(x)))
        if self.in_ch == y.shape[1]:
            return self.act(y + x)
        # Darknet's [shortcut] between layers of different widths adds where both exist.
        return self.act(torch.cat([y[:, :self.in_ch] + x, y[:, self.in_ch:]], 1))


class CSPResNeXtStage(nn.Module):
    """[grouped 3x3/2 down], then cross 1x1 (bypass) and main 1x1 -> ResNeXt blocks -> 1x1
    transition, concatenated [transition, cross] and fused by a 1x1."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, downsample: bool, groups: int, activation: str,
                 part_activation: str):
        super().__init__()
        part = out_ch // 2
        # Stage 1's main part keeps the stem's width; the others start at the blocks' width.
        main = in_ch if not downsample else part
        self.down = ConvBN(in_ch, in_ch, 3, 2, activation, groups=groups) if downsample else nn.Identity()
        self.cross = ConvBN(in_ch, part, 1, activation=part_activation)
        self.main = ConvBN(in_ch, main, 1, activation=part_activation)
        self.blocks = nn.Sequential(*[ResNeXtBlock(main if i == 0 else part, part, groups, activation)
                                      for i in range(blocks)])
        self.transition = ConvBN(part, part, 1, activation=activation)
        self.fuse = ConvBN(2 * part, out_ch, 1, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return self.fuse(torch.cat([self.transition(self.blocks(self.main(x))), self.cross(x)], 1))


class CSPResNeXt50(FiveStageBackbone):
    """CSPResNeXt-50 (YOLOv4 Table 1); `forward_features` gives the stride-8/16/32 maps (512, 1024,
    2048 channels at width 1), `forward` the logits (global average pooling, 1000-way layer);
    `num_classes=None` drops the classifier (a detector's backbone)."""

    def __init__(self, num_classes: int | None = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 activation: str = "leaky"):
        super().__init__()
        groups = max(1, round(CARDINALITY * width_mult))
        width = scaled(STEM_WIDTH, width_mult)
        self.stem = nn.Sequential(ConvBN(in_channels, width, 7, 2, activation), nn.MaxPool2d(2, 2))
        stages = []
        for index, (channels, blocks, downsample) in enumerate(STAGES):
            channels = scaled(channels, width_mult)
            for name, n in (("stage width", channels // 2), ("input width", width)):
                if n % groups:
                    raise ValueError(f"width_mult={width_mult}: stage {index + 1}'s {name} {n} is not a multiple "
                                     f"of its {groups} groups")
            # The cfg's part 1x1s are linear in stages 2 and 3 only.
            part_activation = "linear" if index in (1, 2) else activation
            stages.append(CSPResNeXtStage(width, channels, blocks, downsample, groups, activation, part_activation))
            width = channels
        self.stages = nn.Sequential(*stages)
        self.out_channels = tuple(scaled(c, width_mult) for c, _, _ in STAGES[1:])
        self.fc = nn.Linear(width, num_classes) if num_classes is not None else None

    def forward_features(self, x: Tensor) -> list[Tensor]:
        c3 = self.stages[1](self.stages[0](self.stem(x)))
        c4 = self.stages[2](c3)
        return [c3, c4, self.stages[3](c4)]


@register(input_size=(3, 512, 512))
def cspresnext50(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 activation: str = "leaky") -> CSPResNeXt50:
    """CSPResNeXt-50 (YOLOv4 Table 1, counted at 512 x 512) with leaky ReLU (Table 2's baseline)."""
    if not math.isfinite(width_mult) or width_mult <= 0:
        raise ValueError(f"width_mult={width_mult}: a positive number")
    return CSPResNeXt50(num_classes, in_channels, width_mult, activation)
