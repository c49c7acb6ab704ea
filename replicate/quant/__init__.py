"""Quant-Noise (Fan, Stock et al., ICLR 2021, arXiv 2004.07320): scalar intN and product
quantization of weights, Quant-Noise during training, iterative PQ, and model sizes.

    scalar.py   min-max intN fake quantization, per channel or per layer (Sec. 3.1)
    pq.py       blocks, k-means codebooks, product quantization of one weight (Sec. 3.2)
    noise.py    Quant-Noise as parametrizations on any model's Conv2d/Linear weights (Sec. 4)
    ipq.py      iterative PQ with codebook fine-tuning, int8 codebooks (Sec. 3.2, 5)
    size.py     sizes in MB (2^20 bytes) and compression ratios, as the paper counts them
    (its runs, train / compress / evaluate, are replicate.runs.compression; its tables and
    plots replicate.report.compression)
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..errors import ConfigError
from .noise import METHODS, add_quant_noise, strip_quant_noise
from .size import model_size


def apply_training_noise(model: nn.Module, quant_cfg: Mapping | None) -> nn.Module:
    """`model` with the Quant-Noise that `cfg.quant` (conf/quant/) asks for during training;
    unchanged for `quant=none` or a noise rate of 0."""
    if not quant_cfg or not quant_cfg.get("noise", 0.0):
        return model
    if quant_cfg.get("method", "none") == "none":
        raise ConfigError(f"quant.noise={quant_cfg['noise']} needs a quantizer to mimic: choose quant=int8, int4, "
                          "ipq or ipq_int8 (conf/quant/).")
    pq = quant_cfg.get("pq") or {}
    add_quant_noise(model, quant_cfg["method"], float(quant_cfg["noise"]),
                    granularity=(quant_cfg.get("scalar") or {}).get("granularity", "channel"),
                    block_sizes=pq.get("block_sizes"), pq_noise=pq.get("noise_mode", "exact"),
                    n_centroids=pq.get("n_centroids", 256), refresh_every=pq.get("refresh_every", 100))
    return model


__all__ = ["METHODS", "add_quant_noise", "strip_quant_noise", "apply_training_noise", "model_size"]
