"""Anchor priors from the training boxes: YOLOv2's "Dimension Clusters" (Redmon & Farhadi,
YOLO9000, CVPR 2017, arXiv 1612.08242, Sec. 2 and Table 1).

Instead of hand-picking the anchor shapes (Faster R-CNN's 3 scales x 3 aspect ratios), YOLOv2
runs k-means on the (width, height) of the training set's boxes with the distance

    d(box, centroid) = 1 - IoU(box, centroid)

where the IoU compares the two shapes as if they shared a centre (only width and height count).
"If we use standard k-means with Euclidean distance larger boxes generate more error than
smaller boxes" (Sec. 2): `distance="sse"` is that standard k-means, the "Cluster SSE" row of
Table 1. The table's measure is the average over all boxes of the best IoU with any prior
(`average_iou`); on VOC 2007 the paper reports (Table 1)

    Cluster SSE        5 priors   58.7
    Cluster IOU        5 priors   61.0
    Anchor Boxes [15]  9 priors   60.9   (Faster R-CNN's hand-picked anchors)
    Cluster IOU        9 priors   67.2

`table1_rows` regenerates these four rows on whatever boxes it is given.

Choices the paper leaves open (each one ours, stated here):
* initialisation: k-means++ (Arthur & Vassilvitskii 2007) under the clustering's own distance:
  the first centroid is a box drawn uniformly, each next one a box drawn with probability
  proportional to the squared distance to its nearest centroid so far. All draws come from a
  `torch.Generator` seeded with `seed`, so the result is a function of (sizes, k, distance, seed).
  `n_init > 1` keeps the best of several initialisations (lowest mean distance).
* update: the centroid is the mean width and height of its members (Lloyd's k-means); a
  centroid left without members moves to the box farthest from its own centroid.
* stop: when no assignment changes, or after `iterations` rounds.
* boxes without area (zero width or height) are left out: their IoU with anything is 0.
* the YOLO convention measures sizes relative to the image (Darknet's labels are fractions of the
  width and height; YOLOv2's priors are these times the 13 x 13 grid): `box_sizes(...,
  relative=True)`. Faster R-CNN's anchors are pixels of an image rescaled to a 600-pixel shorter
  side (Ren et al. 2015, Sec. 3.3): `box_sizes(..., min_size=600, max_size=1000)` gives the boxes
  in those units for the "Anchor Boxes" row (`table1_rows(..., hand_picked_sizes=...)`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .anchors import PAPER_RATIOS, PAPER_SCALES, base_anchors

__all__ = [
    "PAPER_TABLE1", "box_sizes", "wh_iou", "kmeans_anchors", "average_iou", "hand_picked_anchors", "table1_rows",
]

# YOLOv2 Table 1 ("Average IOU of boxes to closest priors on VOC 2007"): (row, number of priors, Avg IOU %).
PAPER_TABLE1 = (
    ("Cluster SSE", 5, 58.7),
    ("Cluster IOU", 5, 61.0),
    ("Anchor Boxes", 9, 60.9),
    ("Cluster IOU", 9, 67.2),
)
DISTANCES = ("iou", "sse")


# -- the boxes' sizes --------------------------------------------------------------------------
def _targets(source: Any) -> Iterable[Mapping]:
    """The target dicts of a detection data set (without reading its images where it can), a
    torch `Subset` of one, or an iterable of targets or (image, target) pairs."""
    dataset, indices = source, None
    if hasattr(source, "dataset") and hasattr(source, "indices"):  # torch.utils.data.Subset
        dataset, indices = source.dataset, list(source.indices)
    if hasattr(dataset, "target") and hasattr(dataset, "__len__"):  # replicate.data.detection.DetectionDataset
        for i in (range(len(dataset)) if indices is None else indices):
            yield dataset.target(i)
        return
    for item in source:
        yield item if isinstance(item, Mapping) else item[1]


def _image_hw(target: Mapping) -> tuple[float, float]:
    boxes = target["boxes"]
    canvas = getattr(boxes, "canvas_size", None)
    if canvas is not None:
        return float(canvas[0]), float(canvas[1])
    if target.get("orig_size") is not None:
        h, w = (float(v) for v in torch.as_tensor(target["orig_size"]).tolist())
        return h, w
    raise ValueError("relative or rescaled sizes need the image size: give the targets an 'orig_size' (H, W) "
                     "or tv_tensors.BoundingBoxes with a canvas_size.")


def box_sizes(source: Any, *, relative: bool = False, min_size: float | None = None, max_size: float | None = None,
              skip_difficult: bool = False) -> Tensor:
    """Widths and heights [N, 2] (float32) of every box of `source` (a detection data set, a
    `Subset` of one, or an iterable of targets / (image, target) pairs; boxes xyxy in pixels).

    `relative=True`: as fractions of the image's width and height (YOLO's convention).
    `min_size` (with optional `max_size`): in pixels of the image rescaled so that its shorter side
    is `min_size` unless the longer one would exceed `max_size` (Faster R-CNN's 600 / 1000).
    `skip_difficult`: leave out boxes flagged `difficult`. Boxes without area are left out."""
    if relative and min_size is not None:
        raise ValueError("choose relative=True or min_size=..., not both")
    parts = []
    for target in _targets(source):
        boxes = torch.as_tensor(target["boxes"]).as_subclass(Tensor).reshape(-1, 4).float().cpu()
        wh = boxes[:, 2:] - boxes[:, :2]
        if skip_difficult and target.get("difficult") is not None:
            wh = wh[~torch.as_tensor(target["difficult"]).bool().cpu()]
        if relative:
            h, w = _image_hw(target)
            wh = wh / wh.new_tensor([w, h])
        elif min_size is not None:
            h, w = _image_hw(target)
            scale = float(min_size) / min(h, w)
            if max_size is not None and scale * max(h, w) > float(max_size):
                scale = float(max_size) / max(h, w)
            wh = wh * scale
        parts.append(wh)
    sizes = torch.cat(parts) if parts else torch.zeros(0, 2)
    return sizes[(sizes > 0).all(dim=1)]


# -- IoU of shapes, k-means -----------------------------------------------------------------------
def wh_iou(sizes: Tensor, anchors: Tensor) -> Tensor:
    """IoU [N, K] of boxes [N, 2] and anchors [K, 2] given as (width, height), each pair compared
    as if the two boxes shared a centre (YOLOv2 Sec. 2)."""
    sizes, anchors = torch.as_tensor(sizes), torch.as_tensor(anchors).to(torch.as_tensor(sizes).dtype)
    inter = torch.minimum(sizes[:, None, :], anchors[None, :, :]).prod(dim=-1)
    union = sizes.prod(dim=-1)[:, None] + anchors.prod(dim=-1)[None, :] - inter
    return inter / union


def _distance(sizes: Tensor, centroids: Tensor, distance: str) -> Tensor:
    if distance == "iou":
        return 1.0 - wh_iou(sizes, centroids)
    return torch.cdist(sizes, centroids).pow(2)  # SSE: squared Euclidean distance


def _kmeans_pp(sizes: Tensor, k: int, distance: str, generator: torch.Generator) -> Tensor:
    n = sizes.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = _distance(sizes, sizes[chosen], distance).squeeze(1)
    for _ in range(1, k):
        weights = nearest.clamp_min(0).pow(2) if distance == "iou" else nearest.clamp_min(0)  # D(x)^2 either way
        if float(weights.sum()) <= 0:  # fewer distinct shapes than k: any box will do
            weights = torch.ones_like(weights)
        index = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, _distance(sizes, sizes[index:index + 1], distance).squeeze(1))
    return sizes[chosen].clone()


def _lloyd(sizes: Tensor, centroids: Tensor, distance: str, iterations: int) -> tuple[Tensor, float]:
    k = centroids.shape[0]
    assignment = None
    for _ in range(max(1, iterations)):
        dist = _distance(sizes, centroids, distance)
        new_assignment = dist.argmin(dim=1)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, sizes)
        centroids = sums / counts.clamp_min(1)[:, None].to(sizes.dtype)
        own = dist.gather(1, assignment[:, None]).squeeze(1)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = int(own.argmax())  # the worst-served box becomes the empty cluster's centroid
            centroids[empty] = sizes[far]
            own[far] = -1.0
    dist = _distance(sizes, centroids, distance)
    return centroids, float(dist.min(dim=1).values.mean())


def kmeans_anchors(sizes: Tensor, k: int, distance: str = "iou", seed: int = 0, iterations: int = 300,
                   n_init: int = 1) -> Tensor:
    """`k` priors [k, 2] (width, height) clustered from `sizes` [N, 2], sorted by area.

    `distance="iou"`: YOLOv2's 1 - IoU; `"sse"`: standard k-means (squared Euclidean distance).
    k-means++ initialisation drawn from `torch.Generator().manual_seed(seed)`; the best of `n_init`
    runs (lowest mean distance to the nearest centroid) is returned. Deterministic given `seed`."""
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r}: allowed {', '.join(map(repr, DISTANCES))}")
    sizes = torch.as_tensor(sizes).detach().to("cpu", torch.float64).reshape(-1, 2)
    if k < 1 or sizes.shape[0] < k:
        raise ValueError(f"k={k} needs at least k boxes and k >= 1; got {sizes.shape[0]} boxes")
    if not bool((sizes > 0).all()):
        raise ValueError("every width and height must be positive (box_sizes drops boxes without area)")
    generator = torch.Generator().manual_seed(int(seed))
    best, best_cost = None, float("inf")
    for _ in range(max(1, int(n_init))):
        centroids, cost = _lloyd(sizes, _kmeans_pp(sizes, k, distance, generator), distance, iterations)
        if cost < best_cost:
            best, best_cost = centroids, cost
    order = torch.sort(best.prod(dim=1), stable=True).indices
    return best[order].to(torch.float32)


def average_iou(sizes: Tensor, anchors: Tensor) -> float:
    """Mean over the boxes of their best IoU with any anchor (shapes only): Table 1's "Avg IOU"
    as a fraction (the paper prints percent)."""
    sizes = torch.as_tensor(sizes).to(torch.float64).reshape(-1, 2)
    if sizes.shape[0] == 0:
        raise ValueError("no boxes")
    return float(wh_iou(sizes, torch.as_tensor(anchors).to(torch.float64).reshape(-1, 2)).max(dim=1).values.mean())


def hand_picked_anchors(scales: Sequence[float] = PAPER_SCALES, ratios: Sequence[float] = PAPER_RATIOS) -> Tensor:
    """Faster R-CNN's hand-picked anchors (Ren et al. 2015, Sec. 3.1.1: areas 128^2, 256^2,
    512^2 times aspect ratios 1:1, 1:2, 2:1; `replicate.ops.anchors`) as (width, height) [9, 2],
    sorted by area, in pixels of the image rescaled to a 600-pixel shorter side."""
    boxes = base_anchors(scales, ratios, dtype=torch.float64)
    wh = boxes[:, 2:] - boxes[:, :2]
    order = torch.sort(wh.prod(dim=1), stable=True).indices
    return wh[order].to(torch.float32)


def table1_rows(sizes: Tensor, hand_picked: Tensor, *, hand_picked_sizes: Tensor | None = None, seed: int = 0,
                iterations: int = 300, n_init: int = 1) -> list[dict]:
    """YOLOv2 Table 1 on the boxes `sizes` [N, 2]: k-means with SSE (k = 5), with 1 - IoU (k = 5),
    the hand-picked anchors `hand_picked` [K, 2] (Faster R-CNN's 9: `hand_picked_anchors()`), and
    1 - IoU with k = 9. `hand_picked_sizes`: the same boxes in the hand-picked anchors' units
    (e.g. `box_sizes(ds, min_size=600, max_size=1000)`), if they differ from `sizes`' units.

    Each row: {"row", "num_priors", "avg_iou" (percent), "paper" (percent), "anchors" [k, 2]}."""
    sizes = torch.as_tensor(sizes).float().reshape(-1, 2)
    hand_picked = torch.as_tensor(hand_picked).float().reshape(-1, 2)
    rows = []
    for (name, k, paper) in PAPER_TABLE1:
        if name == "Anchor Boxes":
            anchors = hand_picked
            on = sizes if hand_picked_sizes is None else torch.as_tensor(hand_picked_sizes).float().reshape(-1, 2)
        else:
            distance = "sse" if name == "Cluster SSE" else "iou"
            anchors = kmeans_anchors(sizes, k, distance, seed=seed, iterations=iterations, n_init=n_init)
            on = sizes
        rows.append({"row": name, "num_priors": int(anchors.shape[0]), "avg_iou": 100.0 * average_iou(on, anchors),
                     "paper": paper, "anchors": anchors})
    return rows
