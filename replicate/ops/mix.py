"""Batch-level mixing augmentations of YOLOv4 (Bochkovskiy, Wang & Liao 2020, arXiv 2004.10934):
Mosaic (Sec. 3.3) and CutMix (Sec. 2.2, after Yun et al. 2019), applied to a detector's
training batch inside its forward pass (images of any size, boxes in their pixels).

Mosaic (Sec. 3.3): "mixes 4 training images. Thus 4 different contexts are mixed, while CutMix
mixes only 2 input images. This allows detection of objects outside their normal context. In
addition, batch normalization calculates activation statistics from 4 different images on each
layer." The paper gives no geometry; ours, close to the authors' Darknet code:
* each output image is a `size` x `size` canvas split into four quadrants at a random centre
  point (cx, cy), each coordinate uniform in [0.2, 0.8] x size (Darknet's `min_offset = 0.2`);
* output i takes image i of the batch and three others drawn at random without replacement
  (with replacement when the batch has fewer than 4 images), in random quadrant order;
* each of the four is resized to `size` x `size` ignoring its aspect ratio (as
  `replicate.ops.yolo.to_network_input` resizes every YOLO input) and a window of its
  quadrant's size, at a uniformly random position inside it, fills the quadrant: the quadrants
  are always covered, no padding is needed;
* boxes move with their pixels and are clipped to their quadrant; a clipped box is dropped when
  its width or height is below `min_size` (2 px) or less than `min_visible` (20 %) of its area
  (after the resize) is left. The pixels of a dropped object stay in the image (unlabelled), as in
  every implementation we know of.

CutMix for detection: CutMix "is to cover the cropped image to rectangle region of other images,
and adjusts the label according to the size of the mix area" (Sec. 2.2). The paper lists CutMix
among the backbone's (classifier's) freebies only (Sec. 3.4, Table 2); its Darknet code refuses
`cutmix=1` for detectors. Ours, for detection:
* image i (H x W) receives a rectangle from another image j of the batch, resized to H x W
  (aspect ignored), at the same place: the CutMix paper's box, area fraction 1 - lambda with
  lambda ~ U(0, 1) (its alpha = 1), centre uniform over the image, clipped to it;
* image j's boxes are clipped to the rectangle and kept under the same rule as Mosaic's
  (>= `min_size` px wide and high, >= `min_visible` of their area visible);
* image i's boxes keep their visible part (outside the rectangle): a box with less than
  `min_visible` of its area visible is dropped; when the rectangle covers a whole side strip of
  it the box shrinks to the visible part (the bounding box of what is left), otherwise it is kept
  whole (its visible part is then an L-shape or a frame whose bounding box is the box).

Targets are dicts with `boxes` (Tensor or tv_tensors.BoundingBoxes, xyxy in the image's pixels)
and `labels`; the per-box fields `labels`, `difficult`, `iscrowd` and `area` (recomputed as the
new box's area) follow their boxes; every other field (image_id, orig_size, ...) is the base
image's, unchanged. Output boxes are BoundingBoxes (canvas = the output image) where the input's
were. All randomness comes from the `torch.Generator` passed in (a CPU generator): the same
generator state gives the same output.

This module imports only torch and torchvision, so that a detector importing it stays importable
without the training stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors

__all__ = ["PER_BOX_FIELDS", "mosaic", "cutmix"]

PER_BOX_FIELDS = ("labels", "difficult", "iscrowd", "area")
MIN_SIZE = 2.0  # px: a thinner clipped box is dropped
MIN_VISIBLE = 0.2  # a box keeping less of its area is dropped
CENTRE_RANGE = (0.2, 0.8)  # Mosaic's centre point, as fractions of the output side (Darknet's min_offset)


class Piece(NamedTuple):
    """The boxes of image `source` placed into output `output`: rescaled from `from_hw` to
    `to_hw`, shifted by `shift` (dx, dy), clipped to `window` (x0, y0, x1, y1)."""
    output: int
    source: int
    from_hw: tuple[int, int]
    to_hw: tuple[int, int]
    shift: tuple[int, int]
    window: tuple[int, int, int, int]


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    if high <= low:
        return int(low)
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _plain_boxes(target: Mapping) -> Tensor:
    return torch.as_tensor(target["boxes"]).as_subclass(Tensor).reshape(-1, 4).float()


def _hw(image: Tensor) -> tuple[int, int]:
    return int(image.shape[-2]), int(image.shape[-1])


def _resize(image: Tensor, hw: tuple[int, int], mode: str) -> Tensor:
    if _hw(image) == tuple(hw):
        return image
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(image[None].float(), size=hw, mode=mode, **kwargs)[0].to(image.dtype)


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


def _keep_rule(clipped: Tensor, full_area: Tensor, min_size: float, min_visible: float) -> Tensor:
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    return (w >= min_size) & (h >= min_size) & (w * h >= min_visible * full_area)


# -- box bookkeeping, on the CPU and vectorised over the batch ------------------------------------
# On a GPU every small masked selection would synchronise the device, and per-box Python loops
# cost more than the pixel copies: the boxes and their fields come to the CPU in one copy per
# field, are placed for the whole batch at once, and go back in one copy per field.
def _to_host(targets: Sequence[Mapping]) -> list[dict[str, Tensor]]:
    """Each target's boxes (float32) and per-box fields on the CPU."""
    boxes = [_plain_boxes(t) for t in targets]
    counts = [b.shape[0] for b in boxes]
    host: list[dict[str, Tensor]] = [{} for _ in targets]
    for key in ("boxes",) + PER_BOX_FIELDS:
        values = {i: (boxes[i] if key == "boxes" else torch.as_tensor(t[key]).reshape(-1))
                  for i, t in enumerate(targets) if key == "boxes" or key in t}
        if not values:
            continue
        try:
            parts = torch.cat(list(values.values())).cpu().split([counts[i] for i in values])
        except RuntimeError:  # on different devices
            parts = [v.cpu() for v in values.values()]
        for i, part in zip(values, parts):
            host[i][key] = part
    return host


def _fields(host: list[dict[str, Tensor]], sources: Sequence[int], counts: Sequence[int]) -> dict[str, Tensor]:
    """The per-box fields of the concatenated boxes of images `sources`; an image without a
    field that another one has contributes zeros (False)."""
    out = {}
    for key in PER_BOX_FIELDS:
        present = [host[s][key] for s in sources if key in host[s]]
        if not present or key == "area":
            continue
        dtype = present[0].dtype
        out[key] = torch.cat([host[s][key] if key in host[s] else torch.zeros(c, dtype=dtype)
                              for s, c in zip(sources, counts)]).to(dtype)
    return out


def _place(host: list[dict[str, Tensor]], pieces: Sequence[Piece], min_size: float,
           min_visible: float) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """All pieces' boxes moved and clipped at once; returns the kept boxes, the output each
    belongs to and their per-box fields, in piece order."""
    counts = [len(host[p.source]["boxes"]) for p in pieces]
    if not pieces or sum(counts) == 0:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), {}
    boxes = torch.cat([host[p.source]["boxes"] for p in pieces])
    params = torch.tensor([[p.to_hw[1], p.to_hw[0], p.from_hw[1], p.from_hw[0], *p.shift, *p.window] for p in pieces],
                          dtype=torch.float32).repeat_interleave(torch.tensor(counts), dim=0)
    # Multiplied before dividing, so that whole-pixel corners stay exact where they can.
    scaled = boxes * params[:, [0, 1, 0, 1]] / params[:, [2, 3, 2, 3]]
    moved = scaled + params[:, [4, 5, 4, 5]]
    clipped = torch.minimum(torch.maximum(moved, params[:, [6, 7, 6, 7]]), params[:, [8, 9, 8, 9]])
    keep = _keep_rule(clipped, _area(scaled), min_size, min_visible)
    owner = torch.tensor([p.output for p in pieces]).repeat_interleave(torch.tensor(counts))
    fields = _fields(host, [p.source for p in pieces], counts)
    return clipped[keep], owner[keep], {k: v[keep] for k, v in fields.items()}


def _split(host: list[dict[str, Tensor]], n: int, boxes: Tensor, owner: Tensor,
           fields: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """Per output i, its boxes (stable order) and the per-box fields its own target has."""
    order = torch.sort(owner, stable=True).indices
    counts = torch.bincount(owner, minlength=n).tolist() if owner.numel() else [0] * n
    per_box = {"boxes": boxes[order].split(counts)}
    per_box.update({k: v[order].split(counts) for k, v in fields.items()})
    outputs = []
    for i in range(n):
        out = {"boxes": per_box["boxes"][i]}
        for key in PER_BOX_FIELDS:
            if key not in host[i]:
                continue
            if key == "area":
                out[key] = _area(out["boxes"]).to(host[i][key].dtype)
            elif key in per_box:
                out[key] = per_box[key][i].to(host[i][key].dtype)
            else:
                out[key] = host[i][key].new_zeros(counts[i])
        outputs.append(out)
    return outputs


def _finish(targets: Sequence[Mapping], outputs: list[dict[str, Tensor]], hws: list[tuple[int, int]]) -> list[dict]:
    """The output targets: each base target's other fields unchanged, the new boxes and per-box
    fields on the base boxes' device, BoundingBoxes where the input had them."""
    results = [{k: v for k, v in t.items() if k != "boxes" and k not in PER_BOX_FIELDS} for t in targets]
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(targets):
        by_device.setdefault(torch.as_tensor(t["boxes"]).device, []).append(i)
    for device, indices in by_device.items():
        for key in ("boxes",) + PER_BOX_FIELDS:
            have = [i for i in indices if key in outputs[i]]
            if not have:
                continue
            values = [outputs[i][key] for i in have]
            try:
                moved = torch.cat(values).to(device).split([len(v) for v in values])
            except RuntimeError:  # different dtypes for the same field
                moved = [v.to(device) for v in values]
            for i, value in zip(have, moved):
                results[i][key] = value
    for i, t in enumerate(targets):
        if isinstance(t["boxes"], tv_tensors.BoundingBoxes):
            results[i]["boxes"] = tv_tensors.BoundingBoxes(results[i]["boxes"], format="XYXY",
                                                           canvas_size=tuple(hws[i]))
    return results


# -- Mosaic -------------------------------------------------------------------------------------
def mosaic(images: Sequence[Tensor], targets: Sequence[Mapping], size: int, generator: torch.Generator, *,
           min_size: float = MIN_SIZE, min_visible: float = MIN_VISIBLE,
           centre_range: tuple[float, float] = CENTRE_RANGE, mode: str = "bilinear") -> tuple[list[Tensor], list[dict]]:
    """YOLOv4's Mosaic (Sec. 3.3) on a batch: one `size` x `size` image per input image, made of
    that image and three others of the batch (see the module docstring for the geometry and the
    box rule). `images`: float [C, H_i, W_i]; `targets`: dicts with `boxes` xyxy in pixels.
    `mode`: the resize's interpolation (F.interpolate: "bilinear", "nearest", ...)."""
    n = len(images)
    if n != len(targets):
        raise ValueError(f"{n} images but {len(targets)} targets")
    size = int(size)
    lo, hi = int(round(centre_range[0] * size)), int(round(centre_range[1] * size))
    resized: dict[int, Tensor] = {}

    def source(index: int) -> Tensor:
        if index not in resized:
            resized[index] = _resize(images[index], (size, size), mode)
        return resized[index]

    out_images, pieces = [], []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        if len(others) >= 3:
            picks = [others[j] for j in torch.randperm(len(others), generator=generator)[:3].tolist()]
        else:
            pool = others or [i]
            picks = [pool[j] for j in torch.randint(len(pool), (3,), generator=generator).tolist()]
        chosen = [i] + picks
        chosen = [chosen[q] for q in torch.randperm(4, generator=generator).tolist()]
        cx, cy = _randint(lo, hi, generator), _randint(lo, hi, generator)
        quadrants = ((0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size))
        first = source(i)
        canvas = first.new_empty((first.shape[0], size, size))
        for index, (x0, y0, x1, y1) in zip(chosen, quadrants):
            w, h = x1 - x0, y1 - y0
            ox, oy = _randint(0, size - w, generator), _randint(0, size - h, generator)
            canvas[:, y0:y1, x0:x1] = source(index)[:, oy:oy + h, ox:ox + w]
            pieces.append(Piece(i, index, _hw(images[index]), (size, size), (x0 - ox, y0 - oy), (x0, y0, x1, y1)))
        out_images.append(canvas)
    host = _to_host(targets)
    outputs = _split(host, n, *_place(host, pieces, min_size, min_visible))
    return out_images, _finish(targets, outputs, [(size, size)] * n)


# -- CutMix -------------------------------------------------------------------------------------
def _rectangle(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """CutMix's box (Yun et al. 2019, Sec. 3.1): area fraction 1 - lambda, lambda ~ U(0, 1)
    (alpha = 1), the image's aspect ratio, centre uniform over the image, clipped to it."""
    lam = _uniform(generator)
    cut = (1.0 - lam) ** 0.5
    rw, rh = width * cut, height * cut
    cx, cy = _uniform(generator) * width, _uniform(generator) * height
    x0, x1 = int(round(max(cx - rw / 2, 0.0))), int(round(min(cx + rw / 2, float(width))))
    y0, y1 = int(round(max(cy - rh / 2, 0.0))), int(round(min(cy + rh / 2, float(height))))
    return x0, y0, x1, y1


def covered_part(boxes: Tensor, rects) -> tuple[Tensor, Tensor]:
    """Boxes [N, 4] under rectangles (one (x0, y0, x1, y1), or [N, 4] one per box): their
    visible area and the bounding box of their visible part (box minus rectangle)."""
    rects = torch.as_tensor(rects, dtype=boxes.dtype).reshape(-1, 4).expand(boxes.shape[0], 4)
    x0, y0, x1, y1 = rects.unbind(dim=1)
    inter = _area(torch.minimum(torch.maximum(boxes, rects[:, [0, 1, 0, 1]]), rects[:, [2, 3, 2, 3]]))
    visible_area = _area(boxes) - inter
    overlaps = inter > 0
    spans_y = (y0 <= boxes[:, 1]) & (y1 >= boxes[:, 3])  # the rectangle covers the box's whole height
    spans_x = (x0 <= boxes[:, 0]) & (x1 >= boxes[:, 2])
    # Covered on the left/right over the whole height: the box's x-extent shrinks; same for y.
    out = boxes.clone()
    out[:, 0] = torch.where(overlaps & spans_y & (x0 <= boxes[:, 0]), torch.maximum(boxes[:, 0], x1), boxes[:, 0])
    out[:, 2] = torch.where(overlaps & spans_y & (x1 >= boxes[:, 2]), torch.minimum(boxes[:, 2], x0), boxes[:, 2])
    out[:, 1] = torch.where(overlaps & spans_x & (y0 <= boxes[:, 1]), torch.maximum(boxes[:, 1], y1), boxes[:, 1])
    out[:, 3] = torch.where(overlaps & spans_x & (y1 >= boxes[:, 3]), torch.minimum(boxes[:, 3], y0), boxes[:, 3])
    return visible_area, out


def cutmix(images: Sequence[Tensor], targets: Sequence[Mapping], generator: torch.Generator, *,
           min_size: float = MIN_SIZE, min_visible: float = MIN_VISIBLE,
           mode: str = "bilinear") -> tuple[list[Tensor], list[dict]]:
    """CutMix for detection on a batch (YOLOv4 Sec. 2.2; rules in the module docstring): every
    image receives a random rectangle of another image of the batch, at its own size. A batch of
    one image comes back unchanged (copied)."""
    n = len(images)
    if n != len(targets):
        raise ValueError(f"{n} images but {len(targets)} targets")
    out_images, rects, pieces = [], [], []
    for i in range(n):
        image = images[i]
        height, width = _hw(image)
        rect = (0, 0, 0, 0)
        if n > 1:
            j = (i + 1 + int(torch.randint(n - 1, (1,), generator=generator))) % n  # any other image
            rect = _rectangle(height, width, generator)
        x0, y0, x1, y1 = rect
        out = image.clone()
        if x1 > x0 and y1 > y0:  # (else one image only, or an empty rectangle: unchanged)
            out[:, y0:y1, x0:x1] = _resize(images[j], (height, width), mode)[:, y0:y1, x0:x1]
            pieces.append(Piece(i, j, _hw(images[j]), (height, width), (0, 0), rect))
        out_images.append(out)
        rects.append(rect)

    host = _to_host(targets)
    # The base images' boxes: what the rectangle leaves visible.
    counts = [len(h["boxes"]) for h in host]
    base = torch.cat([h["boxes"] for h in host])
    per_box_rect = torch.tensor(rects, dtype=torch.float32).reshape(-1, 4).repeat_interleave(torch.tensor(counts),
                                                                                             dim=0)
    visible, shrunk = covered_part(base, per_box_rect)
    w, h = shrunk[:, 2] - shrunk[:, 0], shrunk[:, 3] - shrunk[:, 1]
    keep = (visible > 0) & (visible >= min_visible * _area(base)) & (w >= min_size) & (h >= min_size)
    owner = torch.arange(n).repeat_interleave(torch.tensor(counts))
    fields = _fields(host, range(n), counts)
    # The pasted boxes, after them.
    p_boxes, p_owner, p_fields = _place(host, pieces, min_size, min_visible)
    boxes = torch.cat([shrunk[keep], p_boxes])
    owners = torch.cat([owner[keep], p_owner])
    merged = {}
    for key in set(fields) | set(p_fields):
        a = fields[key][keep] if key in fields else None
        b = p_fields.get(key)
        dtype = (a if a is not None else b).dtype
        a = a if a is not None else torch.zeros(int(keep.sum()), dtype=dtype)
        b = b if b is not None else torch.zeros(len(p_boxes), dtype=dtype)
        merged[key] = torch.cat([a, b.to(dtype)])
    outputs = _split(host, n, boxes, owners, merged)
    return out_images, _finish(targets, outputs, [_hw(im) for im in images])
