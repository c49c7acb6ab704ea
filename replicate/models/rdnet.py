"""RDNet, the revitalised DenseNet of Kim, Heo & Han (ECCV 2024, arXiv 2403.19588).

The paper keeps DenseNet's concatenation, X_{l+1} = [X_l, f(X_l W)] (Sec. 3.1), and modernises
everything around it (Sec. 3.2, Fig. 1):

* **Stem**: a 4x4 / stride-4 "patchification" convolution followed by layer norm.
* **Feature mixer** f: a 7x7 depthwise convolution, layer norm, a 1x1 expansion to 4x the mixer's
  *input* width, GELU, and a 1x1 projection to the growth rate (GR) channels that are concatenated
  to the input ("larger intermediate channel dimensions": the expansion follows the input, not
  the GR). Post-activation, one norm and one activation per mixer, as in ConvNeXt's block. The
  mixers of stages 3-4 end with channel re-scaling: an effective squeeze-excitation module (one
  1x1 convolution and a hard-sigmoid gate), as in the released models.
  Each new feature is multiplied by a learnable layer scale (init 1e-6) and dropped by stochastic
  depth before it is concatenated.
* **Mixing block**: three feature mixers with one growth rate; a stage is a row of mixing blocks,
  each followed by a transition layer except the network's last (Fig. 1).
* **Transition layer**: layer norm and a convolution that halves the channels (compression 0.5,
  rounded down to a multiple of 8); between stages it is a 2x2 / stride-2 convolution (patch
  merging), inside a stage a 1x1 convolution ("more transition layers").
* **Head**: global average pooling, layer norm, one fully-connected layer.

The four sizes (the per-block growth rates, stem widths and mixing blocks per stage) are those of
the authors' released models (the paper's Fig. 1 draws the layout, not the numbers). Counted with
torch's FLOP counter they give the paper's table (Table 8a) to its printed digits: RDNet-T/S/B/L
23.9/50.4/87.5/186 M parameters and 5.0/8.7/15.4/34.7 G multiply-adds at 224 px, RDNet-L 101.9 G at
384 px. The one exception is RDNet-B's 86.2 M, which is our count without the channel re-scaling
modules (86.18 M); with them, as released, it has 87.45 M (the authors' README and model card say
87 M). See tests/models/test_rdnet.py.

`mix="add"` builds the additive counterpart of the pilot study (Sec. 3.1: concatenation vs
additive shortcuts, X_{l+1} = [X_l, f(X_l W)] vs X_l + f(X_l W)): the same stem, stages,
transitions, mixer design and head, but each mixing block keeps one width W, and its mixers map
W -> W and are added to their input. The paper compares the two at similar budgets; the text at our
disposal does not say how its additive networks were sized, so ours is this: each block's W first
gives it the parameters of the concatenating block it replaces, then one common factor on all W
makes the whole network's parameters equal (to the multiple of 8 on the widths; the multiply-adds
then come out 2-10% lower, see the tests).

Knobs for small-scale runs (not in the paper): `width_mult` scales the stem width and every growth
rate (multiples of 8), `mixers_per_block` replaces the three mixers per block, `kernel_size` the
7x7 depthwise kernel and `patch_size` the 4x4 stem. `channel_rescaling=False` drops the effective
SE modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from ._registry import register

Mix = Literal["concat", "add"]

EXPANSION = 4          # Sec. 3.2, "larger intermediate channel dimensions": 4x the mixer's input
COMPRESSION = 0.5      # transition layers halve the channels, as DenseNet-BC
LAYER_SCALE_INIT = 1e-6
KERNEL = 7             # depthwise kernel of the feature mixer
EPS = 1e-6


def _round8(x: float) -> int:
    """Round down to a multiple of 8 (the released models' rule), never below 8."""
    return max(8, int(x / 8) * 8)


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of an NCHW map (Sec. 3.2: LN instead of BN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class EffectiveSE(nn.Module):
    """Channel re-scaling: global pooling, one 1x1 convolution, a hard-sigmoid gate (effective SE)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class FeatureMixer(nn.Module):
    """f in X_{l+1} = [X_l, f(X_l W)]: depthwise 7x7, LN, 1x1 expand, GELU, 1x1 to `out_ch` (Fig. 1)."""

    def __init__(self, in_ch: int, out_ch: int, se: bool, drop_path: float, kernel: int = KERNEL):
        super().__init__()
        hidden = _round8(in_ch * EXPANSION)
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, in_ch, kernel, padding=kernel // 2, groups=in_ch),
            LayerNorm2d(in_ch, eps=EPS),
            nn.Conv2d(in_ch, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, out_ch, 1),
        ]
        if se:
            layers.append(EffectiveSE(out_ch))
        self.layers = nn.Sequential(*layers)
        self.gamma = nn.Parameter(torch.full((out_ch,), LAYER_SCALE_INIT))
        self.drop_path = StochasticDepth(drop_path, mode="row")  # the identity outside training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.layers(x) * self.gamma.view(1, -1, 1, 1))


def mixer_params(in_ch: int, out_ch: int, se: bool, kernel: int = KERNEL) -> int:
    """Parameters of one `FeatureMixer` (used to size the additive counterpart)."""
    hidden = _round8(in_ch * EXPANSION)
    count = in_ch * kernel * kernel + in_ch      # depthwise conv
    count += 2 * in_ch                           # layer norm
    count += in_ch * hidden + hidden             # 1x1 expansion
    count += hidden * out_ch + out_ch            # 1x1 projection
    count += out_ch * out_ch + out_ch if se else 0
    return count + out_ch                        # layer scale


@dataclass(frozen=True)
class BlockPlan:
    """One mixing block's widths: (input, output) channels of each mixer, and how they combine."""

    mix: Mix
    in_channels: int
    mixers: tuple[tuple[int, int], ...]
    se: bool
    downsample: bool  # its transition layer (if any) halves the resolution

    @property
    def out_channels(self) -> int:
        return self.in_channels + sum(o for _, o in self.mixers) if self.mix == "concat" else self.in_channels


class MixingBlock(nn.Module):
    """Feature mixers whose outputs are concatenated (or, `mix="add"`, added) to their input."""

    def __init__(self, block: BlockPlan, drop_paths: Sequence[float], kernel: int):
        super().__init__()
        self.mix = block.mix
        self.mixers = nn.ModuleList(FeatureMixer(i, o, block.se, p, kernel)
                                    for (i, o), p in zip(block.mixers, drop_paths, strict=True))
        self.out_channels = block.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mix == "add":
            for mixer in self.mixers:
                x = x + mixer(x)
            return x
        features = [x]
        for mixer in self.mixers:
            features.append(mixer(torch.cat(features, 1)))
        return torch.cat(features, 1)


def transition(in_ch: int, out_ch: int, downsample: bool) -> nn.Sequential:
    """LN then a 2x2/2 convolution between stages (patch merging) or a 1x1 one inside a stage."""
    k = 2 if downsample else 1
    return nn.Sequential(LayerNorm2d(in_ch, eps=EPS), nn.Conv2d(in_ch, out_ch, k, stride=k))


def concat_plan(stem: int, growths: Sequence[int], se: Sequence[bool], downsample: Sequence[bool],
                mixers: int) -> list[BlockPlan]:
    """RDNet's widths: each block starts from the previous output compressed by half (Sec. 3.2)."""
    plan, ch = [], stem
    for b, (g, s, d) in enumerate(zip(growths, se, downsample, strict=True)):
        ch = ch if b == 0 else _round8(plan[-1].out_channels * COMPRESSION)
        plan.append(BlockPlan("concat", ch, tuple((ch + i * g, g) for i in range(mixers)), s, d))
    return plan


def add_plan(widths: Sequence[int], se: Sequence[bool], downsample: Sequence[bool], mixers: int) -> list[BlockPlan]:
    """The additive counterpart: block b keeps width widths[b]; its mixers map it to itself."""
    return [BlockPlan("add", w, ((w, w),) * mixers, s, d) for w, s, d in zip(widths, se, downsample, strict=True)]


def plan_params(plan: Sequence[BlockPlan], in_channels: int, num_classes: int, patch: int, kernel: int) -> int:
    """Parameters of the network a plan builds, in closed form (stem, blocks, transitions, head)."""
    first, last = plan[0].in_channels, plan[-1].out_channels
    total = in_channels * first * patch * patch + 3 * first              # patch conv + its LN
    total += 2 * last + last * num_classes + num_classes                 # LN + FC head
    for b, block in enumerate(plan):
        total += sum(mixer_params(i, o, block.se, kernel) for i, o in block.mixers)
        if b > 0:
            k = 2 if block.downsample else 1
            prev = plan[b - 1].out_channels
            total += 2 * prev + prev * block.in_channels * k * k + block.in_channels
    return total


def additive_widths(concat: Sequence[BlockPlan], in_channels: int, num_classes: int, patch: int,
                    kernel: int) -> list[int]:
    """Widths (multiples of 8) of the additive counterpart with the concatenating network's parameters.

    Each block's width first gives its mixers the parameters of the concatenating block it
    replaces; one common factor then makes up for the narrower transitions and head, so that the
    two networks have the same total, to within what widths in multiples of 8 allow.
    """
    def block_params(block: BlockPlan) -> int:
        return sum(mixer_params(i, o, block.se, kernel) for i, o in block.mixers)

    def matched(block: BlockPlan) -> int:
        n, target = len(block.mixers), block_params(block)
        limit = 8 * (int((target / n) ** 0.5) // 8 + 2)
        return min(range(8, limit + 1, 8), key=lambda w: abs(n * mixer_params(w, w, block.se, kernel) - target))

    se, down, n = [b.se for b in concat], [b.downsample for b in concat], len(concat[0].mixers)
    base = [matched(block) for block in concat]
    target = plan_params(concat, in_channels, num_classes, patch, kernel)
    candidates = ([_round8(w * (1 + f / 200)) for w in base] for f in range(101))  # factors 1.0 ... 1.5

    def mismatch(widths: list[int]) -> int:
        return abs(plan_params(add_plan(widths, se, down, n), in_channels, num_classes, patch, kernel) - target)

    return min(candidates, key=mismatch)


class RDNet(nn.Module):
    """Patch stem, stages of mixing blocks joined by transition layers, pooled LN + FC head (Fig. 1)."""

    def __init__(
        self,
        stages: Sequence[Sequence[int]],
        stem_channels: int,
        num_classes: int = 1000,
        in_channels: int = 3,
        mixers_per_block: int = 3,
        channel_rescaling: bool = True,
        drop_path_rate: float = 0.0,
        mix: Mix = "concat",
        patch_size: int = 4,
        kernel_size: int = KERNEL,
    ):
        super().__init__()
        if mix not in ("concat", "add"):
            raise ValueError(f"mix must be 'concat' (the paper's RDNet) or 'add' (the pilot study's additive "
                             f"counterpart), not {mix!r}")
        if mixers_per_block < 1:
            raise ValueError(f"mixers_per_block must be >= 1, not {mixers_per_block}")
        stage_of = [s for s, stage in enumerate(stages) for _ in stage]
        growths = [g for stage in stages for g in stage]
        downsample = [b > 0 and stage_of[b] != stage_of[b - 1] for b in range(len(growths))]
        se = [channel_rescaling and s >= 2 for s in stage_of]  # effective SE in stages 3 and 4
        plan = concat_plan(stem_channels, growths, se, downsample, mixers_per_block)
        if mix == "add":
            widths = additive_widths(plan, in_channels, num_classes, patch_size, kernel_size)
            plan = add_plan(widths, se, downsample, mixers_per_block)
        self.plan = plan
        total = len(plan) * mixers_per_block
        # The linear rule of stochastic depth: 0 for the first mixer, drop_path_rate for the last
        # (plain Python, so that the model can be built on the meta device).
        rates = [drop_path_rate * i / max(1, total - 1) for i in range(total)]

        first = plan[0].in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, first, patch_size, stride=patch_size),
                                  LayerNorm2d(first, eps=EPS))
        layers: list[nn.Module] = []
        for b, block in enumerate(plan):
            if b > 0:
                layers.append(transition(plan[b - 1].out_channels, block.in_channels, block.downsample))
            layers.append(MixingBlock(block, rates[b * mixers_per_block:(b + 1) * mixers_per_block], kernel_size))
        self.features = nn.Sequential(*layers)
        self.num_features = plan[-1].out_channels
        self.norm = nn.LayerNorm(self.num_features, eps=EPS)
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)  # as the released models
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.forward_features(x).mean((2, 3))))


def _scaled(stages: Sequence[Sequence[int]], stem: int, width_mult: float):
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, not {width_mult}")
    return [[_round8(g * width_mult) for g in stage] for stage in stages], _round8(stem * width_mult)


def _rdnet(stages: Sequence[Sequence[int]], stem: int, width_mult: float = 1.0, **kw) -> RDNet:
    stages, stem = _scaled(stages, stem, width_mult) if width_mult != 1.0 else (stages, stem)
    return RDNet(stages, stem, **kw)


# Growth rate of each mixing block, stage by stage (Fig. 1: stage-N holds L_N mixing blocks).
TINY = [[64], [104], [128] * 4, [224]]
SMALL = [[64], [128], [128] * 7, [240] * 2]
BASE = [[96], [128], [168] * 7, [336] * 2]
LARGE = [[128], [192], [256] * 8, [360] * 2]


@register
def rdnet_tiny(**kw) -> RDNet:
    """RDNet-T: stem 64, mixing blocks (1, 1, 4, 1); Table 8: 23.9 M, 5.0 G, 82.8% top-1."""
    return _rdnet(TINY, 64, **kw)


@register
def rdnet_small(**kw) -> RDNet:
    """RDNet-S: stem 72, mixing blocks (1, 1, 7, 2); Table 8: 50.4 M, 8.7 G, 83.7% top-1."""
    return _rdnet(SMALL, 72, **kw)


@register
def rdnet_base(**kw) -> RDNet:
    """RDNet-B: stem 120, mixing blocks (1, 1, 7, 2); Table 8: 86.2 M, 15.4 G, 84.4% top-1."""
    return _rdnet(BASE, 120, **kw)


@register
def rdnet_large(**kw) -> RDNet:
    """RDNet-L: stem 144, mixing blocks (1, 1, 8, 2); Table 8: 186 M, 34.7 G, 84.8% top-1."""
    return _rdnet(LARGE, 144, **kw)
