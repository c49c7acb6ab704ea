"""What the four YOLO detectors share around their networks: square network inputs, boxes moved
between image and network coordinates, and the final non-maximum suppression (greedy, or
YOLOv4's DIoU-NMS).

Every YOLO resizes the whole image to a square network input (YOLOv1 Sec. 2: 448 x 448; YOLOv2
Sec. 2: 416; YOLOv3/v4: 416-608), so a detector in this package receives the readers' images at
their own sizes (`replicate.data.detection`), resizes each with `to_network_input`, predicts in
network pixels and maps its boxes back with `to_image_boxes`. The resize ignores the aspect ratio
as the papers' Darknet code of v1 and v2 does (no letterbox padding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

__all__ = ["to_network_input", "to_network_targets", "to_image_boxes", "diou_nms", "select_detections",
           "per_class_detections", "paired_iou", "cxcywh_to_xyxy", "one_per_key"]


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes a[..., 4] and b[..., 4] (xyxy) taken pair by pair (torchvision's box_iou
    compares every box with every box)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


def cxcywh_to_xyxy(cx: Tensor, cy: Tensor, w: Tensor, h: Tensor) -> Tensor:
    """Centres and sizes, given apart, stacked as (x1, y1, x2, y2) boxes."""
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def one_per_key(keys: Tensor, keep: str = "last") -> Tensor:
    """Indices of the first or last occurrence (`keep`) of each distinct value of `keys` (1-D)."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    order = torch.arange(keys.numel(), device=keys.device)
    out = torch.full((unique.numel(),), -1 if keep == "last" else keys.numel(), dtype=torch.long, device=keys.device)
    return out.scatter_reduce(0, inverse, order, reduce="amax" if keep == "last" else "amin")


def to_network_input(images: Sequence[Tensor], size: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize every image [C, H_i, W_i] (bilinear) to `size` and stack them: [B, C, h, w].
    Returns the batch and the per-image scale factors [B, 2] = (w / W_i, h / H_i)."""
    h, w = (size, size) if isinstance(size, int) else size
    batch, scales = [], []
    for image in images:
        image = torch.as_tensor(image).float()
        height, width = image.shape[-2:]
        if (height, width) != (h, w):
            image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        batch.append(image)
        scales.append((w / width, h / height))
    return torch.stack(batch), torch.tensor(scales, dtype=torch.float32, device=batch[0].device)


def to_network_targets(targets: Sequence[Mapping], scales: Tensor) -> list[dict]:
    """The targets with boxes in network pixels (`scales` from `to_network_input`); difficult
    objects are kept (the papers train on them) and the other fields pass through."""
    out = []
    for target, (sx, sy) in zip(targets, scales.tolist()):
        boxes = torch.as_tensor(target["boxes"]).as_subclass(Tensor).float()
        factor = boxes.new_tensor([sx, sy, sx, sy])
        out.append({**target, "boxes": boxes * factor})
    return out


def to_image_boxes(boxes: Tensor, scale: Tensor) -> Tensor:
    """Boxes [N, 4] in network pixels back to the image's pixels (`scale` = one row of scales)."""
    sx, sy = scale.tolist()
    return boxes / boxes.new_tensor([sx, sy, sx, sy])


def diou_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, beta: float = 1.0) -> Tensor:
    """DIoU-NMS (Zheng et al. 2020, Eq. 9; YOLOv4 Sec. 3.4 "bag of specials"): a box is removed
    when IoU - (d^2 / c^2)^beta with a higher-scored box exceeds the threshold, d the distance of
    their centres, c the diagonal of the smallest box enclosing both. Boxes that overlap but whose
    centres lie apart (occluded neighbours) survive where greedy NMS would drop them.
    Returns the kept indices by decreasing score, as `torchvision.ops.nms`."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.argsort(descending=True)
    boxes = boxes[order].float()
    iou = box_iou(boxes, boxes)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    distance = torch.cdist(centres, centres).pow(2)
    corner_min = torch.minimum(boxes[:, None, :2], boxes[None, :, :2])
    corner_max = torch.maximum(boxes[:, None, 2:], boxes[None, :, 2:])
    diagonal = (corner_max - corner_min).pow(2).sum(-1).clamp_min(1e-9)
    suppress = (iou - (distance / diagonal).pow(beta)) > iou_threshold
    n = boxes.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    # Greedy in score order: a kept box suppresses the lower-scored ones it overlaps.
    suppress_cpu, keep_cpu = suppress.cpu(), keep.cpu()
    for i in range(n):
        if keep_cpu[i]:
            keep_cpu[i + 1:] &= ~suppress_cpu[i, i + 1:]
    return order[keep_cpu.to(boxes.device)]


def select_detections(boxes: Tensor, scores: Tensor, labels: Tensor, *, score_threshold: float,
                      nms_threshold: float, max_detections: int, nms: str = "greedy",
                      diou_beta: float = 1.0) -> dict[str, Tensor]:
    """One image's final detections: candidates above `score_threshold`, per-class NMS
    (`"greedy"`: torchvision's; `"diou"`: `diou_nms`), the `max_detections` best."""
    keep = scores > score_threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if nms == "greedy":
        kept = batched_nms(boxes, scores, labels, nms_threshold)
    elif nms == "diou":
        parts = [torch.nonzero(labels == c).flatten() for c in labels.unique()]
        kept_parts = [idx[diou_nms(boxes[idx], scores[idx], nms_threshold, diou_beta)] for idx in parts]
        kept = torch.cat(kept_parts) if kept_parts else torch.empty(0, dtype=torch.int64, device=boxes.device)
        kept = kept[scores[kept].argsort(descending=True)]
    else:
        raise ValueError(f"nms={nms!r}: allowed 'greedy' or 'diou'")
    kept = kept[:max_detections]
    return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}


def per_class_detections(boxes: Tensor, scores: Tensor, scale: Tensor, image_hw: tuple[int, int], *,
                         score_threshold: float, nms_threshold: float, max_detections: int) -> dict[str, Tensor]:
    """One image's detections from boxes [..., 4] in network pixels and per-class scores
    [..., C] of the same leading shape (YOLOv1/v2: each box is a candidate for every class,
    scored by its class-specific confidence): `select_detections` with greedy NMS, then the boxes
    in the image's pixels, clipped to it (`image_hw` = (H, W))."""
    c = scores.shape[-1]
    labels = torch.arange(1, c + 1, device=scores.device).expand(scores.shape)
    kept = select_detections(boxes[..., None, :].expand(*scores.shape, 4).reshape(-1, 4), scores.reshape(-1),
                             labels.reshape(-1), score_threshold=score_threshold, nms_threshold=nms_threshold,
                             max_detections=max_detections)
    h, w = image_hw
    image_boxes = to_image_boxes(kept["boxes"], scale)
    image_boxes[:, 0::2] = image_boxes[:, 0::2].clamp(0, w)
    image_boxes[:, 1::2] = image_boxes[:, 1::2].clamp(0, h)
    return {"boxes": image_boxes, "scores": kept["scores"], "labels": kept["labels"]}
