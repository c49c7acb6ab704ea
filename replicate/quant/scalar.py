"""Fixed-point scalar quantization (intN) of weights, min-max, per channel or per layer.

Fan, Stock et al. (ICLR 2021), Sec. 3.1: a weight w is stored as an N-bit integer with a scale s
and a zero point z computed from the range of the weights it shares them with,

    s = (max W - min W) / (2^N - 1),   z = round(-min W / s),
    q = clamp(round(w / s) + z, 0, 2^N - 1),   w_hat = (q - z) * s,

so that every w_hat lies within s/2 of w. `granularity="channel"` takes min and max over each
output channel (one row of a fully connected layer, one filter of a convolution);
`granularity="layer"` over the whole tensor. Only weights are quantized here: biases and
normalisation parameters stay in fp32, as in the authors' released code (fairseq's scalar
quantization "does not quantize the biases"); activations are not quantized (their precision
does not change the model's size, which is what the paper's tables compare).
"""

from __future__ import annotations

from typing import Literal

import torch

Granularity = Literal["channel", "layer"]
GRANULARITIES = ("channel", "layer")


def check_settings(bits: int, granularity: str) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits={bits!r} must be an integer in [1, 16] (4 and 8 in the paper).")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r} must be one of {', '.join(GRANULARITIES)}.")


def qparams(w: torch.Tensor, bits: int, granularity: Granularity = "channel") -> tuple[torch.Tensor, torch.Tensor]:
    """Scale s and zero point z of `w` (shaped to broadcast against it) for N = `bits`."""
    check_settings(bits, granularity)
    w = w.detach()
    if granularity == "channel" and w.ndim > 1:
        flat = w.reshape(w.shape[0], -1)
        lo, hi = flat.min(1).values, flat.max(1).values
        shape = (-1,) + (1,) * (w.ndim - 1)
        lo, hi = lo.reshape(shape), hi.reshape(shape)
    else:
        lo, hi = w.min(), w.max()
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    # A constant channel has no range: any positive scale represents it exactly (z absorbs it).
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-lo / scale)
    return scale, zero_point


def quantize(w: torch.Tensor, bits: int, granularity: Granularity = "channel"):
    """(integer codes in [0, 2^N - 1], scale, zero point)."""
    scale, zero_point = qparams(w, bits, granularity)
    q = torch.clamp(torch.round(w.detach() / scale) + zero_point, 0, 2**bits - 1)
    return q, scale, zero_point


def fake_quantize(w: torch.Tensor, bits: int, granularity: Granularity = "channel") -> torch.Tensor:
    """w_hat = (q - z) * s: the float tensor the N-bit weights stand for (no gradient)."""
    q, scale, zero_point = quantize(w, bits, granularity)
    return ((q - zero_point) * scale).to(w.dtype)


def n_scales(shape: torch.Size, granularity: Granularity) -> int:
    """How many (scale, zero point) pairs a tensor of `shape` stores."""
    return int(shape[0]) if granularity == "channel" and len(shape) > 1 else 1
