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
    pointwise_params: int = field(default=0, compare=False)
    pointwise_macs: int = field(default=0, compare=False)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mmacs(self) -> float:
        return self.macs / 1e6

    @property
    def gops(self) -> float:
        """Darknet's "Bn operations" (YOLO v2-v4): two operations per multiply-add, x10^9."""
        return 2 * self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    @property
    def kparams(self) -> float:
        return self.params / 1e3

    @property
    def mb_fp32(self) -> float:
        """Model size at 4 bytes per parameter, in MB of 2^20 bytes (Quant-Noise's convention)."""
        return 4 * self.params / 2**20

    @property
    def pointwise_macs_pct(self) -> float:
        """Share of the multiply-adds spent in 1x1 convolutions (MobileNet V1, Table 2), in %."""
        return 100.0 * self.pointwise_macs / self.macs

    @property
    def pointwise_params_pct(self) -> float:
        """Share of the parameters held by 1x1 convolutions (MobileNet V1, Table 2), in %."""
        return 100.0 * self.pointwise_params / self.params


QUANTITIES = ("params", "mparams", "kparams", "macs", "mmacs", "gmacs", "gops", "mb_fp32",
              "pointwise_macs_pct", "pointwise_params_pct")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _is_pointwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)


@torch.no_grad()
def count(model: nn.Module, input_size: Sequence[int], *, depth: int = 2, module: str | None = None) -> Complexity:
    """Parameters and multiply-adds of one forward pass on a single input of `input_size` (C, H, W).

    `depth` sets how deep the per-module breakdown (`macs_by_module`) goes. With `module` (a
    dotted submodule name, e.g. "inception3a"), the counts are that submodule's alone, as in a
    per-layer table (GoogLeNet's Table 1).
    """
    target = model.get_submodule(module) if module else model
    pointwise = [m for m in target.modules() if _is_pointwise(m)]
    pointwise_macs = [0]

    def add_pointwise(mod, inputs, output):
        # A 1x1 convolution costs one multiply-add per weight and output position.
        pointwise_macs[0] += mod.weight.numel() * output.shape[-1] * output.shape[-2] * output.shape[0]

    hooks = [m.register_forward_hook(add_pointwise) for m in pointwise]
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_size, device=next(model.parameters()).device)
        counter = FlopCounterMode(display=False, depth=module.count(".") + 2 if module else depth)
        with counter:
            model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    flops = counter.get_flop_counts()
    by_module = {name: int(sum(ops.values())) // 2 for name, ops in flops.items()}
    if module:
        key = f"{type(model).__name__}.{module}"
        if key not in flops:
            raise ValueError(f"module {module!r} ran no counted operation in {type(model).__name__}")
        total = int(sum(flops[key].values())) // 2
    else:
        total = counter.get_total_flops() // 2
    return Complexity(count_params(target), total, by_module,
                      pointwise_params=sum(p.numel() for m in pointwise for p in m.parameters()),
                      pointwise_macs=pointwise_macs[0])
