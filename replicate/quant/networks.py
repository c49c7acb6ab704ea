"""Building the networks the Quant-Noise tables count, on the meta device: a registry name
(e.g. `efficientnet_b3`, replicate/models/efficientnet.py) or `torchvision:<builder>`."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from ..models import build


def build_meta(name: str, **kwargs) -> nn.Module:
    """`name` built on the meta device (shapes only): `torchvision:<builder>` or a registry name."""
    with torch.device("meta"):
        if name.startswith("torchvision:"):
            return getattr(torchvision.models, name.split(":", 1)[1])(weights=None, **kwargs)
        return build(name, **kwargs)
