"""Quant-Noise: quantize a random subset of each weight's blocks during training.

Fan, Stock et al. (ICLR 2021), Sec. 4: at every training forward pass, each block b of a weight
is selected with probability p (the noise rate) and replaced by phi(b), the distortion the
target quantizer would give it; the other blocks stay in full precision. The gradient of a
distorted block is taken with the straight-through estimator (identity), so the unselected
blocks get unbiased gradients. p = 1 is quantization-aware training with STE over the whole
network; p = 0 is plain training. At test time the whole network is quantized (Sec. 4), which
`replicate.runs.compression` does after training: in eval mode the parametrizations below return
the full-precision weight.

The noise functions:

* scalar intN (`ScalarNoise`): blocks are single weights and phi is the min-max intN fake
  quantization of `replicate.quant.scalar` (per channel or per layer);
* PQ, exact (`PQNoise(mode="exact")`, conf/quant's default): phi(b) is b's nearest codeword in a
  k-means codebook of the current weight, re-learned every `refresh_every` training steps
  (k-means at every step would dominate the cost);
* PQ, proxy (`PQNoise(mode="proxy")`): phi(b) = 0, the selected blocks are dropped and the rest
  rescaled by 1/(1-p) like dropout (DropConnect on blocks). The authors' released code uses this
  form ("the simplest form of noise ... randomly dropping a proportion p of blocks, and that
  worked as well as assigning those blocks to their current centroid", fairseq
  examples/quant_noise); its gradient is the dropout one (dropped blocks get none). On the
  reduced profile it slowed the small ResNet's training markedly (36% vs 25% final training
  error after 160 iterations at p = 0.1), the exact form much less, hence the default.

Any registry model gets the noise through `torch.nn.utils.parametrize` on its Conv2d and Linear
weights (`add_quant_noise`), so the standard ClassificationTask trains it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import pq, scalar

SCALAR_METHODS = {"int8": 8, "int4": 4}
PQ_METHODS = ("ipq", "ipq_int8")
METHODS = ("none", *SCALAR_METHODS, *PQ_METHODS)


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"Quant-Noise rate p={p!r} must lie in [0, 1].")
    return p


def _straight_through(w: torch.Tensor, distorted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """w where mask is 0, distorted(w) where it is 1; gradient w.r.t. w is the identity (STE)."""
    return w + (mask * (distorted - w)).detach()


class ScalarNoise(nn.Module):
    """Parametrization: each weight replaced by its intN value with probability p (training only)."""

    def __init__(self, p: float, bits: int, granularity: str = "channel"):
        super().__init__()
        self.p, self.bits, self.granularity = _check_p(p), int(bits), granularity
        scalar.check_settings(self.bits, granularity)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return w
        mask = torch.ones_like(w) if self.p == 1.0 else torch.bernoulli(torch.full_like(w, self.p))
        return _straight_through(w, scalar.fake_quantize(w, self.bits, self.granularity), mask)

    def extra_repr(self) -> str:
        return f"p={self.p}, int{self.bits}, {self.granularity}"


class PQNoise(nn.Module):
    """Parametrization: each PQ block distorted with probability p (training only); see the module
    docstring for the `proxy` and `exact` noise functions."""

    def __init__(self, p: float, block_size: int, mode: str = "exact", n_centroids: int = 256,
                 refresh_every: int = 100, kmeans_iters: int = 10):
        super().__init__()
        if mode not in ("proxy", "exact"):
            raise ValueError(f"PQ noise mode={mode!r} must be 'proxy' or 'exact'.")
        self.p, self.block_size, self.mode = _check_p(p), int(block_size), mode
        if mode == "proxy" and self.p == 1.0:
            raise ValueError("proxy PQ noise drops the selected blocks: p=1 would drop every weight. "
                             "Use p < 1, or mode='exact'.")
        self.n_centroids, self.refresh_every, self.kmeans_iters = n_centroids, refresh_every, kmeans_iters
        self.codebook: torch.Tensor | None = None
        self._steps = 0

    def block_mask(self, w: torch.Tensor) -> torch.Tensor:
        n_blocks = w.numel() // self.block_size
        if self.p == 1.0:
            selected = torch.ones(n_blocks, 1, device=w.device, dtype=w.dtype)
        else:
            selected = torch.bernoulli(torch.full((n_blocks, 1), self.p, device=w.device, dtype=w.dtype))
        return pq.from_blocks(selected.expand(n_blocks, self.block_size), w.shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return w
        mask = self.block_mask(w)
        if self.mode == "proxy":
            return w * (1.0 - mask) / (1.0 - self.p)
        if self.codebook is None or self._steps % self.refresh_every == 0:
            self.codebook = pq.quantize(w.detach(), self.block_size, self.n_centroids, self.kmeans_iters,
                                        seed=self._steps).centroids
        self._steps += 1
        return _straight_through(w, pq.nearest(w, self.codebook), mask)

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}, mode={self.mode}"


def noisy_layers(model: nn.Module, method: str, block_sizes: Mapping | None = None) -> dict[str, int]:
    """The Conv2d/Linear layers a method quantizes, with their block size (1 for scalar)."""
    if method not in METHODS:
        raise ValueError(f"quantization method {method!r} is not one of {', '.join(METHODS)}.")
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if method in SCALAR_METHODS:
            layers[name] = 1
        elif method in PQ_METHODS:
            size = pq.block_size_for(module, block_sizes)
            if size is not None:
                layers[name] = size
    return layers


def add_quant_noise(model: nn.Module, method: str, p: float, *, granularity: str = "channel",
                    block_sizes: Mapping | None = None, pq_noise: str = "exact", n_centroids: int = 256,
                    refresh_every: int = 100) -> list[str]:
    """Register Quant-Noise for `method` (int8, int4, ipq, ipq_int8) on every layer it quantizes;
    returns the layer names. Nothing is registered for method 'none' or p = 0."""
    p = _check_p(p)
    if method == "none" or p == 0.0:
        noisy_layers(model, method, block_sizes)  # still validates the name
        return []
    layers = noisy_layers(model, method, block_sizes)
    modules = dict(model.named_modules())
    for name, size in layers.items():
        if method in SCALAR_METHODS:
            noise = ScalarNoise(p, SCALAR_METHODS[method], granularity)
        else:
            noise = PQNoise(p, size, pq_noise, n_centroids, refresh_every)
        parametrize.register_parametrization(modules[name], "weight", noise)
    return list(layers)


def strip_quant_noise(model: nn.Module) -> nn.Module:
    """Remove the noise parametrizations, leaving the trained full-precision weights in place."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and all(
                isinstance(p, (ScalarNoise, PQNoise)) for p in module.parametrizations.weight):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return model
