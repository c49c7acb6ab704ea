"""Product quantization (PQ) of weight matrices and convolution kernels.

Fan, Stock et al. (ICLR 2021), Sec. 3.2, after Stock et al. 2020 ("And the Bit Goes Down"):
each weight matrix is split into blocks (subvectors) of `block_size` consecutive entries along
its input dimension, and every block is replaced by the nearest of K = 256 codewords learned by
k-means on the layer's own blocks. A layer is then stored as one index per block (log2 K = 8
bits) plus its codebook (K x block_size values).

Blocks: a fully connected weight (out, in) and a 1x1 convolution (out, in, 1, 1) are cut along
`in`; a k x k convolution (out, in, k, k) is cut into whole kernels (block size k*k, or a
multiple of it to span several input channels), as in "And the Bit Goes Down" (Sec. 3.1), so a
3x3 kernel is one block of 9 and a depthwise 5x5 kernel one block of 25. Both are what
`weight.reshape(out, -1)` gives when read `block_size` entries at a time.

Default block sizes (conf/quant/none.yaml: `pq.block_sizes`): 8 for fully connected layers and
4 for 1x1 convolutions, the values the authors' code suggests and uses in its example
configurations (fairseq `examples/quant_noise`: "8 for FFN, 4 for ATTN"; conv 1x1: 4, 3x3: 9);
the paper's text available to us does not list them per layer of EfficientNet-B3. A fully
connected or 1x1 layer whose input width is not a multiple of its block size takes the largest
block size that divides it (2 for EfficientNet's squeeze-excitation layers reading 34 or 58
channels); one that only 1 divides stays in fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_BLOCK_SIZES = {"linear": 8, "pointwise": 4, "spatial": "kernel"}


def block_size_for(module: nn.Module, block_sizes: Mapping | None = None) -> int | None:
    """The PQ block size of `module`'s weight, or None when it is not product-quantized
    (not a Conv2d/Linear, or its row length is not a multiple of the block size)."""
    sizes = {**DEFAULT_BLOCK_SIZES, **dict(block_sizes or {})}
    if isinstance(module, nn.Linear):
        size = sizes["linear"]
    elif isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        if kernel == 1:
            size = sizes["pointwise"]
        else:
            spatial = sizes["spatial"]
            size = kernel if spatial == "kernel" else int(spatial)
            if size % kernel:
                return None
    else:
        return None
    if size is None:
        return None
    size, row = int(size), module.weight.shape[1:].numel()
    if row % size == 0:
        return size
    if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
        return None
    # A row shorter than or not a multiple of the block size (EfficientNet's squeeze-excitation
    # expansions read 6, 10, 34 or 58 channels) takes the largest block size that divides it.
    fallback = max(d for d in range(1, size + 1) if row % d == 0)
    return fallback if fallback > 1 else None


def to_blocks(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n_blocks, block_size): consecutive entries of each output row (see the module docstring)."""
    row = w.shape[1:].numel()
    if row % block_size:
        raise ValueError(f"a weight of shape {tuple(w.shape)} does not split into blocks of {block_size}")
    return w.reshape(-1, block_size)


def from_blocks(blocks: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return blocks.reshape(shape)


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on the rows of `x`: (centroids [k, d], assignments [n]).

    Initialised by k-means++ (Arthur & Vassilvitskii 2007: each new codeword drawn with
    probability proportional to the squared distance to the nearest one chosen) with `seed`; a
    codeword left empty is moved to the row farthest from its codeword, so that all k stay in use.
    """
    x = x.detach().float()
    n = x.shape[0]
    k = min(k, n)
    centroids = _kmeans_plus_plus(x, k, torch.Generator().manual_seed(seed))
    assignments = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iters):
        distances = torch.cdist(x, centroids)
        assignments = distances.argmin(1)
        counts = torch.bincount(assignments, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        filled = counts > 0
        new = torch.where(filled[:, None], sums / counts.clamp_min(1)[:, None], centroids)
        empty = (~filled).nonzero().flatten()
        if len(empty):
            error = distances.gather(1, assignments[:, None]).flatten()
            new[empty] = x[error.topk(len(empty)).indices]
        if torch.equal(new, centroids):
            break
        centroids = new
    assignments = torch.cdist(x, centroids).argmin(1)
    return centroids, assignments


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:  # fewer distinct rows than k: any unused row will do
            unused = torch.ones(n, dtype=torch.bool)
            unused[chosen] = False
            chosen.append(int(unused.nonzero()[0]))
        else:
            chosen.append(int(torch.multinomial((nearest / total).cpu(), 1, generator=generator)))
        nearest = torch.minimum(nearest, ((x - x[chosen[-1]]) ** 2).sum(1))
    return x[chosen].clone()


@dataclass
class Codebook:
    """A product-quantized weight: `centroids[assignments]` read back into `shape`."""

    centroids: torch.Tensor  # [k, block_size]
    assignments: torch.Tensor  # [n_blocks], long
    shape: torch.Size

    @property
    def block_size(self) -> int:
        return int(self.centroids.shape[1])

    def weight(self) -> torch.Tensor:
        return from_blocks(self.centroids[self.assignments], self.shape)


def quantize(w: torch.Tensor, block_size: int, n_centroids: int = 256, iters: int = 20, seed: int = 0) -> Codebook:
    """PQ of one weight tensor: k-means with `n_centroids` codewords (fewer if it has fewer blocks)."""
    centroids, assignments = kmeans(to_blocks(w, block_size), n_centroids, iters, seed)
    return Codebook(centroids.to(w.dtype), assignments, w.shape)


def nearest(w: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Each block of `w` replaced by its nearest codeword (the PQ of w under a fixed codebook)."""
    blocks = to_blocks(w.detach(), centroids.shape[1])
    return from_blocks(centroids[torch.cdist(blocks.float(), centroids.float()).argmin(1)].to(w.dtype), w.shape)
