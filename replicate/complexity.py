"""Parameter and multiply-add counts, measured by running the model under torch's FLOP counter.

The papers count one multiply-add once (ResNet's "FLOPs", MobileNet's "Mult-Adds");
`torch.utils.flop_counter` counts two FLOPs per multiply-add, so `macs = flops / 2`. Only
convolutions and matrix products are counted, as in the papers: batch norm, activations,
pooling and additions are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int
    macs_by_module: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count(model: nn.Module, input_size: Sequence[int], *, depth: int = 2) -> Complexity:
    """Parameters and multiply-adds of one forward pass on a single input of `input_size` (C, H, W).

    `depth` sets how deep the per-module breakdown (`macs_by_module`) goes.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_size, device=next(model.parameters()).device)
        counter = FlopCounterMode(display=False, depth=depth)
        with counter:
            model(x)
    finally:
        model.train(was_training)
    by_module = {name: int(sum(ops.values())) // 2 for name, ops in counter.get_flop_counts().items()}
    return Complexity(count_params(model), counter.get_total_flops() // 2, by_module)
