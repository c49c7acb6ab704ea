"""Anchors of the Region Proposal Network (Ren et al. 2015, Sec. 3.1.1 and 3.3).

At each position of a feature map of stride `stride` (16 for VGG-16's conv5_3, Sec. 3.3), k
reference boxes ("anchors") are centred: by default 3 scales of box area 128^2, 256^2, 512^2
pixels times 3 aspect ratios 1:1, 1:2, 2:1, k = 9. A W x H feature map has W*H*k anchors: for
a 1000 x 600 image "roughly 20000 (~ 60 x 40 x 9)" (Sec. 3.3). With our VGG-16 trunk (four
2x2 max-pools rounding down, as torch's pooling does) conv5_3 is 62 x 37, hence 20,646 anchors;
Caffe's pooling rounds up (63 x 38, 21,546), `feature_size(..., ceil_mode=True)`.

Conventions (each one a choice the paper leaves open):
* an anchor's aspect ratio is height / width, and the areas are exact (s^2): w = s / sqrt(r),
  h = s * sqrt(r). The original Caffe code rounds widths to whole pixels; sizes here are exact.
* anchor centres sit at the centres of the stride x stride cells, ((i + 0.5) * stride), in the
  continuous coordinates of `replicate.ops.boxes`;
* anchors are listed position by position (row-major over the map), the k anchors of one
  position together, ratio-major within them, which is the layout of a 1x1 convolution's
  [k * 4, H, W] output permuted to [H, W, k, 4].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

PAPER_SCALES = (128, 256, 512)
PAPER_RATIOS = (0.5, 1.0, 2.0)  # height / width: 1:2, 1:1, 2:1
PAPER_STRIDE = 16


def base_anchors(scales: Sequence[float] = PAPER_SCALES, ratios: Sequence[float] = PAPER_RATIOS,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """The k = len(ratios) * len(scales) anchors [k, 4] centred at (0, 0), ratio-major."""
    rows = []
    for r in ratios:
        for s in scales:
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            rows.append((-w / 2, -h / 2, w / 2, h / 2))
    return torch.tensor(rows, dtype=dtype, device=device)


def feature_size(image_size: tuple[int, int], num_pools: int = 4, ceil_mode: bool = False) -> tuple[int, int]:
    """(H, W) of the map after `num_pools` 2x2 stride-2 max-pools of size-preserving 3x3
    convolutions: VGG-16's conv5_3 (four pools, stride 16) for `image_size` (H, W)."""
    h, w = image_size
    for _ in range(num_pools):
        h, w = ((h + 1) // 2, (w + 1) // 2) if ceil_mode else (h // 2, w // 2)
    return h, w


def grid_anchors(feature_hw: tuple[int, int], stride: float, base: Tensor, offset: float = 0.5) -> Tensor:
    """All anchors [H * W * k, 4] of an H x W feature map: `base` [k, 4] shifted to each
    position's centre ((x + offset) * stride, (y + offset) * stride)."""
    h, w = feature_hw
    ys = (torch.arange(h, dtype=base.dtype, device=base.device) + offset) * stride
    xs = (torch.arange(w, dtype=base.dtype, device=base.device) + offset) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
    return (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)


def inside_image(anchors: Tensor, image_size: tuple[int, int], border: float = 0.0) -> Tensor:
    """Boolean mask of the anchors lying inside an (H, W) image, up to `border` pixels beyond
    it. Sec. 3.3 ignores cross-boundary anchors in training and says "about 6000" remain for a
    1000 x 600 image; counted with the paper's anchors, 8,044 of 20,646 do (8,151 with the
    Caffe code's rounded anchors); 5,834 remain for an 800 x 600 image (a 4:3 PASCAL image
    rescaled to a 600-pixel shorter side), which is probably what "about 6000" refers to."""
    h, w = image_size
    return (
        (anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)
        & (anchors[:, 2] <= w + border) & (anchors[:, 3] <= h + border)
    )


class AnchorGrid:
    """The anchors of one feature map, cached per (size, device, dtype).

    >>> grid = AnchorGrid()              # Sec. 3.3: 3 scales x 3 ratios, stride 16
    >>> grid((37, 62)).shape             # conv5_3 of a 600 x 1000 image
    torch.Size([20646, 4])
    """

    def __init__(self, scales: Sequence[float] = PAPER_SCALES, ratios: Sequence[float] = PAPER_RATIOS,
                 stride: float = PAPER_STRIDE, offset: float = 0.5):
        self.scales = tuple(float(s) for s in scales)
        self.ratios = tuple(float(r) for r in ratios)
        self.stride = float(stride)
        self.offset = float(offset)
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors(self) -> int:
        """k, the anchors per position."""
        return len(self.scales) * len(self.ratios)

    def __call__(self, feature_hw: tuple[int, int], device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
        key = (int(feature_hw[0]), int(feature_hw[1]), str(device), dtype)
        if key not in self._cache:
            if len(self._cache) > 32:  # multi-scale training: bound the cache
                self._cache.clear()
            base = base_anchors(self.scales, self.ratios, dtype=dtype, device=device)
            self._cache[key] = grid_anchors(key[:2], self.stride, base, self.offset)
        return self._cache[key]
