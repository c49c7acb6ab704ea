"""Boxes as the R-CNN papers treat them, on torchvision.ops where it has the operation.

Boxes are float tensors [N, 4] in (x1, y1, x2, y2) *continuous* coordinates: a box covers the
area from x1 to x2, so its width is x2 - x1 (no "+1"). The readers convert VOC's 1-based,
inclusive pixel indices into these coordinates (x1 = xmin - 1, x2 = xmax), which makes widths,
areas and IoUs equal to the VOC devkit's "+1" ones.

* `encode` / `decode`: the box regression parameterisation of R-CNN (Girshick et al. 2014,
  Appendix C), used unchanged by Fast R-CNN (Sec. 2.3) and Faster R-CNN (Ren et al. 2015,
  Eq. 2): t_x = (x - x_a) / w_a, t_y = (y - y_a) / h_a, t_w = log(w / w_a), t_h = log(h / h_a)
  for centres (x, y) and sizes (w, h) of a box relative to a reference box (proposal or anchor).
  `weights` multiplies the targets: Fast R-CNN (Sec. 2.3) normalises them to unit variance, and
  (10, 10, 5, 5), i.e. standard deviations (0.1, 0.1, 0.2, 0.2), is the usual fixed choice.
* `label_by_iou` / `sample_labels`: foreground/background assignment by IoU and the sampling of
  a fixed-size mini-batch with a bounded foreground share (Fast R-CNN Sec. 2.3: 64 RoIs, 25 %
  with IoU >= 0.5, background in [0.1, 0.5); Faster R-CNN Sec. 3.1.2-3.1.3: 256 anchors, up to
  1:1, positive above 0.7 or the best anchor of a ground-truth box, negative below 0.3).
* IoU, NMS, clipping, small-box removal and RoI max pooling (Fast R-CNN Sec. 2.1) are
  torchvision.ops', re-exported here so that the detectors import every box op from one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_area, box_iou, clip_boxes_to_image, nms, remove_small_boxes
from torchvision.ops import roi_pool as _roi_pool

__all__ = [
    "BACKGROUND", "IGNORE", "encode", "decode", "box_iou", "box_area", "nms", "batched_nms", "clip_boxes_to_image",
    "remove_small_boxes", "roi_pool", "label_by_iou", "sample_labels", "plain_tensor",
]

# A numerical guard, not a paper choice: exp() of a wild early prediction would overflow.
_MAX_LOG_SCALE = math.log(1000.0 / 16)

def plain_tensor(boxes) -> Tensor:
    """`boxes` as a plain tensor: torchvision's `BoundingBoxes` (a Tensor subclass the readers
    return) would carry its metadata through every operation and slow them."""
    return boxes.as_subclass(Tensor) if isinstance(boxes, Tensor) else torch.as_tensor(boxes)


BACKGROUND = 0  # label_by_iou's label for a negative (background) box
IGNORE = -1  # ...for a box that takes no part in the loss


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(reference: Tensor, target: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets [N, 4] (t_x, t_y, t_w, t_h) taking `reference` boxes [N, 4] to `target`
    boxes [N, 4] (Faster R-CNN Eq. 2), each multiplied by its `weights` entry."""
    if reference.shape != target.shape:
        raise ValueError(f"encode: reference {tuple(reference.shape)} and target {tuple(target.shape)} differ.")
    xa, ya, wa, ha = _centre_size(reference)
    x, y, w, h = _centre_size(target)
    wx, wy, ww, wh = (float(v) for v in weights)
    return torch.stack(
        [wx * (x - xa) / wa, wy * (y - ya) / ha, ww * torch.log(w / wa), wh * torch.log(h / ha)], dim=-1
    )


def decode(reference: Tensor, deltas: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """The boxes [N, 4] that `deltas` [N, 4] (or [N, 4 * C], one set per class) describe relative
    to `reference` [N, 4]; the inverse of `encode` with the same `weights`."""
    xa, ya, wa, ha = (v.unsqueeze(-1) for v in _centre_size(reference))
    wx, wy, ww, wh = (float(v) for v in weights)
    d = deltas.reshape(*deltas.shape[:-1], -1, 4)
    dx, dy = d[..., 0] / wx, d[..., 1] / wy
    dw = (d[..., 2] / ww).clamp(max=_MAX_LOG_SCALE)
    dh = (d[..., 3] / wh).clamp(max=_MAX_LOG_SCALE)
    x, y = xa + dx * wa, ya + dy * ha
    w, h = wa * torch.exp(dw), ha * torch.exp(dh)
    boxes = torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)
    return boxes.reshape(deltas.shape)


def roi_pool(features: Tensor, rois: Tensor | list[Tensor], output_size: int | tuple[int, int] = 7,
             spatial_scale: float = 1.0 / 16) -> Tensor:
    """RoI max pooling (Fast R-CNN Sec. 2.1): each region, projected on the feature map by
    `spatial_scale` (1/16 for VGG-16's conv5_3), divided into an H x W grid (7 x 7 for VGG-16)
    of sub-windows, each max-pooled. `rois` is one [K_i, 4] tensor per image in the batch, or a
    [K, 5] tensor whose first column is the image index. Returns [K, C, H, W]."""
    return _roi_pool(features, rois, output_size, spatial_scale)


def label_by_iou(iou: Tensor, fg_threshold: float, bg_range: tuple[float, float],
                 best_match: bool = False) -> tuple[Tensor, Tensor]:
    """Assign boxes to ground truth by IoU.

    `iou` is [N_boxes, N_gt]. Returns (`matched`, `labels`): `matched` [N_boxes] is the index of
    each box's best ground-truth box (0 where there is none), `labels` [N_boxes] is 1 for a
    foreground box (best IoU >= `fg_threshold`), `BACKGROUND` (0) where the best IoU lies in
    [`bg_range[0]`, `bg_range[1]`) and `IGNORE` (-1) otherwise. `best_match=True` also makes
    foreground the box(es) with the highest IoU for each ground-truth box (Faster R-CNN
    Sec. 3.1.2's first condition, which matters when no anchor reaches the threshold).
    """
    n_boxes = iou.shape[0]
    if iou.shape[1] == 0:
        best = iou.new_zeros(n_boxes)
        matched = torch.zeros(n_boxes, dtype=torch.int64, device=iou.device)
    else:
        best, matched = iou.max(dim=1)
    labels = torch.full((n_boxes,), IGNORE, dtype=torch.int64, device=iou.device)
    lo, hi = bg_range
    labels[(best >= lo) & (best < hi)] = BACKGROUND
    labels[best >= fg_threshold] = 1
    if best_match and iou.shape[1] > 0 and n_boxes > 0:
        per_gt_best = iou.max(dim=0).values
        # Ties count: every box that reaches a ground-truth box's best overlap is kept.
        is_best = (iou == per_gt_best[None, :]) & (per_gt_best[None, :] > 0)
        box_index, gt_index = torch.nonzero(is_best, as_tuple=True)
        labels[box_index] = 1
        matched[box_index] = gt_index
    return matched, labels


def sample_labels(labels: Tensor, batch_size: int, positive_fraction: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """A random mini-batch of at most `batch_size` boxes from `labels` (1 foreground,
    `BACKGROUND`, `IGNORE`): up to round(`batch_size` * `positive_fraction`) foreground boxes,
    filled up with background ones. Returns a copy of `labels` with the boxes left out set to
    `IGNORE`."""
    out = labels.clone()
    positive = torch.nonzero(labels > 0).flatten()
    negative = torch.nonzero(labels == BACKGROUND).flatten()
    n_pos = min(positive.numel(), int(round(batch_size * positive_fraction)))
    n_neg = min(negative.numel(), batch_size - n_pos)

    def drop(indices: Tensor, keep: int) -> None:
        order = torch.randperm(indices.numel(), generator=generator, device="cpu").to(indices.device)
        out[indices[order[keep:]]] = IGNORE

    drop(positive, n_pos)
    drop(negative, n_neg)
    return out
