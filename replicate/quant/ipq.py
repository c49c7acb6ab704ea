"""Iterative product quantization (iPQ) and its int8 variant.

Fan, Stock et al. (ICLR 2021), Sec. 3.2, after Stock et al. 2020: the layers are product-quantized
group after group; after each group is quantized, the network is fine-tuned: the layers not yet
quantized keep training as usual and each quantized layer trains its codebook only, every
codeword receiving the average of the gradients of the blocks assigned to it (the assignments
are fixed). "iPQ & int8" (Sec. 5) then stores the codewords as int8 (min-max per layer,
`replicate.quant.scalar`), which the paper reports costs little accuracy with Quant-Noise.

A quantized layer is a `torch.nn.utils.parametrize` parametrization whose stored tensor is the
codebook itself (`parametrizations.weight.original`, shape [K, block_size]): the model's
parameters are then exactly what the compressed model stores, and any training loop (here the
standard ClassificationTask) fine-tunes the codewords without knowing about PQ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import pq, scalar


class _GatherMean(torch.autograd.Function):
    """centroids[assignments]; backward: each codeword gets the mean gradient of its blocks."""

    @staticmethod
    def forward(ctx, centroids, assignments, counts):
        ctx.save_for_backward(assignments, counts)
        ctx.k = centroids.shape[0]
        return centroids[assignments]

    @staticmethod
    def backward(ctx, grad):
        assignments, counts = ctx.saved_tensors
        total = torch.zeros(ctx.k, grad.shape[1], dtype=grad.dtype, device=grad.device).index_add_(0, assignments, grad)
        return total / counts.clamp_min(1)[:, None].to(grad.dtype), None, None


class ProductQuantized(nn.Module):
    """Parametrization of a weight by a codebook and fixed assignments (`pq.Codebook`)."""

    def __init__(self, codebook: pq.Codebook):
        super().__init__()
        self.shape = tuple(codebook.shape)
        self.register_buffer("assignments", codebook.assignments.clone())
        self.register_buffer("counts", torch.bincount(codebook.assignments, minlength=codebook.centroids.shape[0]))
        self._initial = codebook.centroids.detach().clone()

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        # What parametrize stores as the parameter: the codebook found by k-means.
        return self._initial.to(weight.device, weight.dtype)

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        return _GatherMean.apply(centroids, self.assignments, self.counts).reshape(self.shape)

    def extra_repr(self) -> str:
        return f"k={self._initial.shape[0]}, block_size={self._initial.shape[1]}, shape={self.shape}"


def is_quantized(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, ProductQuantized) for p in module.parametrizations.weight)


def codebook_of(module: nn.Module) -> torch.Tensor:
    return module.parametrizations.weight.original


def quantize_layer(module: nn.Module, block_size: int, n_centroids: int = 256, iters: int = 20, seed: int = 0) -> None:
    """Replace `module.weight` by its product quantization (k-means on its current value)."""
    with torch.no_grad():
        codebook = pq.quantize(module.weight.detach(), block_size, n_centroids, iters, seed)
    parametrize.register_parametrization(module, "weight", ProductQuantized(codebook), unsafe=True)
    # The k-means codebook is kept as the parameter (right_inverse); drop the init copy.
    module.parametrizations.weight[0]._initial = torch.empty(0)


def layer_groups(model: nn.Module, block_sizes: Mapping | None, n_groups: int) -> list[list[str]]:
    """The PQ-able layers in module order, cut into `n_groups` consecutive groups of about equal
    numbers of layers: the network is quantized from its first layers to its last."""
    names = [name for name, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) and pq.block_size_for(m, block_sizes) is not None]
    n_groups = max(1, min(int(n_groups), len(names)))
    return [list(chunk) for chunk in np.array_split(np.array(names, dtype=object), n_groups) if len(chunk)]


def ipq(model: nn.Module, groups: Sequence[Sequence[str]], finetune: Callable[[nn.Module, int], None] | None,
        *, block_sizes: Mapping | None = None, n_centroids: int = 256, iters: int = 20, seed: int = 0) -> nn.Module:
    """Quantize `groups` one after the other, calling `finetune(model, group_index)` after each."""
    modules = dict(model.named_modules())
    for index, group in enumerate(groups):
        for offset, name in enumerate(group):
            module = modules[name]
            quantize_layer(module, pq.block_size_for(module, block_sizes), n_centroids, iters, seed + offset)
        if finetune is not None:
            finetune(model, index)
    return model


@torch.no_grad()
def int8_codebooks(model: nn.Module, granularity: str = "layer") -> int:
    """'iPQ & int8': every codebook replaced by its int8 min-max value; returns how many."""
    n = 0
    for module in model.modules():
        if is_quantized(module):
            codebook = codebook_of(module)
            codebook.copy_(scalar.fake_quantize(codebook, 8, granularity))
            n += 1
    return n


@torch.no_grad()
def fake_quantize_weights(model: nn.Module, bits: int, granularity: str = "channel") -> int:
    """Post-training intN: every Conv2d/Linear weight replaced by its intN value; returns how many."""
    n = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not parametrize.is_parametrized(module, "weight"):
            module.weight.copy_(scalar.fake_quantize(module.weight, bits, granularity))
            n += 1
    return n
