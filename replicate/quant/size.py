"""The size of a compressed model, counted the way Fan, Stock et al. (ICLR 2021) count it.

Sizes are in MB of 2^20 bytes, an uncompressed parameter taking 4 bytes (fp32); the compression
ratio is the fp32 size over the compressed one. What each method stores:

* `none`: every parameter in fp32.
* `int8` / `int4`: every Conv2d/Linear weight in N bits, plus one fp32 scale and one fp32 zero
  point per output channel (per layer with `granularity="layer"`); biases and normalisation
  parameters in fp32.
* `ipq`: every product-quantized layer as one index of ceil(log2 K) bits per block plus its
  codebook of k = min(K, n_blocks) codewords stored in fp16, the rest in fp32. fp16 codewords
  and int8 indices are what the authors' size tracker counts (fairseq
  `modules/quantization/pq/utils.py`, `SizeTracker`: "(1) Storing the centroids given by iPQ in
  fp16, (2) Storing the assignments of the blocks in int8, (3) Storing all non-compressed elements
  such as biases").
* `ipq_int8`: as `ipq` with int8 codewords and one fp32 scale and zero point per codebook.

Everything is computed from shapes, so a model built on the meta device is enough.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from . import pq, scalar
from .noise import METHODS, PQ_METHODS, SCALAR_METHODS

MB = 2**20
FP32_BYTES = 4


@dataclass(frozen=True)
class Size:
    """Bytes by kind of storage; `mb` is their sum in MB, `ratio` the compression over fp32."""

    fp32_bytes: float = 0.0       # parameters left in fp32
    int_bytes: float = 0.0        # intN weights
    scale_bytes: float = 0.0      # scales and zero points of intN tensors
    index_bytes: float = 0.0      # PQ assignments
    codebook_bytes: float = 0.0   # PQ codewords
    uncompressed_bytes: float = 0.0

    @property
    def total_bytes(self) -> float:
        return self.fp32_bytes + self.int_bytes + self.scale_bytes + self.index_bytes + self.codebook_bytes

    @property
    def mb(self) -> float:
        return self.total_bytes / MB

    @property
    def ratio(self) -> float:
        return self.uncompressed_bytes / self.total_bytes


def _layer_weights(model: nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            yield name, module


def model_size(model: nn.Module, method: str = "none", *, granularity: str = "channel",
               block_sizes: Mapping | None = None, n_centroids: int = 256, codeword_bytes: float = 2) -> Size:
    """The storage of `model` compressed with `method` (none, int8, int4, ipq, ipq_int8).

    `codeword_bytes` is the storage of one fp codeword entry for `ipq` (2: fp16, as the authors
    count); `ipq_int8` stores them in 1 byte.
    """
    if method not in METHODS:
        raise ValueError(f"quantization method {method!r} is not one of {', '.join(METHODS)}.")
    total = sum(p.numel() for p in model.parameters())
    uncompressed = FP32_BYTES * total
    if method == "none":
        return Size(fp32_bytes=uncompressed, uncompressed_bytes=uncompressed)
    compressed = int_bytes = scale_bytes = index_bytes = codebook_bytes = 0.0
    for _, module in _layer_weights(model):
        w = module.weight
        if method in SCALAR_METHODS:
            int_bytes += w.numel() * SCALAR_METHODS[method] / 8
            scale_bytes += 2 * FP32_BYTES * scalar.n_scales(w.shape, granularity)
        else:
            block = pq.block_size_for(module, block_sizes)
            if block is None:
                continue
            n_blocks = w.numel() // block
            k = min(n_centroids, n_blocks)
            index_bytes += n_blocks * math.ceil(math.log2(n_centroids)) / 8
            if method == "ipq_int8":
                codebook_bytes += k * block * 1 + 2 * FP32_BYTES
            else:
                codebook_bytes += k * block * codeword_bytes
        compressed += w.numel()
    return Size(fp32_bytes=FP32_BYTES * (total - compressed), int_bytes=int_bytes, scale_bytes=scale_bytes,
                index_bytes=index_bytes, codebook_bytes=codebook_bytes, uncompressed_bytes=uncompressed)


__all__ = ["MB", "Size", "model_size", "PQ_METHODS"]
