"""Detection mean average precision under the three protocols the papers report.

`evaluate_detections(predictions, targets, protocol)` takes torchvision-style lists, one dict
per image: predictions `{"boxes": [N, 4] xyxy, "scores": [N], "labels": [N]}`, targets
`{"boxes": [M, 4] xyxy, "labels": [M]}` with optional `difficult` [M] (bool; VOC) and, for the
COCO protocol, optional `iscrowd` [M] and `area` [M]. Boxes are in the continuous coordinates of
`replicate.ops.boxes` (the readers convert VOC's inclusive pixel indices, so IoUs equal the
devkit's). APs are fractions in [0, 1].

* `"voc07"`: the PASCAL VOC2007 devkit (the R-CNN and YOLO papers' VOC2007 test numbers):
  detections of a class sorted by decreasing score, each matched to the ground-truth box of
  its image with the highest IoU; IoU >= 0.5 with a box not yet taken is a true positive, with
  a `difficult` box neither true nor false positive, anything else a false positive; the
  recall denominator counts non-difficult boxes; AP is the 11-point interpolated average
  precision (mean over recall r in {0, 0.1, ..., 1} of the best precision at recall >= r).
* `"voc"`: the same matching, with AP the area under the monotone (interpolated)
  precision-recall curve, as the devkit computes it from VOC2010 on.
* `"coco"`: pycocotools' COCOeval on boxes: AP averaged over IoU 0.50:0.05:0.95 (`map`), AP at
  0.5 (`map_50`) and 0.75 (`map_75`), and by object area (`map_small`, `map_medium`,
  `map_large`: below 32^2, up to 96^2, above), at most 100 detections per image; NaN where
  there is nothing to measure (no ground-truth box of that size).

The result holds `map` (the mean over classes with at least one ground-truth box that counts),
`per_class` ({class name: AP}, the same classes) and `protocol`. A class without such a box
has no AP (the devkit's would be NaN) and is left out of both.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError, choices

PROTOCOLS = ("voc07", "voc", "coco")
VOC_IOU = 0.5  # Everingham et al. 2010, Sec. 4.4: overlap must exceed 50 %

__all__ = ["PROTOCOLS", "evaluate_detections", "average_precision_voc07", "average_precision_area"]


def _array(value, dtype, shape_tail=()) -> np.ndarray:
    if value is None:
        return np.zeros((0, *shape_tail), dtype=dtype)
    if isinstance(value, torch.Tensor):
        # Under bf16 autocast (the full profile on GPUs) scores come out in bfloat16, which numpy lacks.
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value, dtype=dtype).reshape(-1, *shape_tail)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with boxes [M, 4] (continuous coordinates)."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, np.finfo(np.float64).tiny)


def average_precision_voc07(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007's 11-point interpolated AP: mean over r in {0, 0.1, ..., 1} of max precision at
    recall >= r (0 where recall never reaches r)."""
    points = []
    for r in np.linspace(0.0, 1.0, 11):
        reached = precision[recall >= r]
        points.append(float(reached.max()) if reached.size else 0.0)
    return float(np.mean(points))


def average_precision_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+'s AP: the area under the precision-recall curve made monotone decreasing
    (each precision replaced by the best precision at any higher recall)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0] + 1
    return float(np.sum((r[steps] - r[steps - 1]) * p[steps]))


def _voc_class_ap(cls: int, predictions: list[dict], targets: list[dict], iou_threshold: float,
                  interpolation: str) -> float | None:
    gt_boxes, gt_difficult, taken = [], [], []
    npos = 0
    for t in targets:
        keep = t["labels"] == cls
        gt_boxes.append(t["boxes"][keep])
        gt_difficult.append(t["difficult"][keep])
        taken.append(np.zeros(int(keep.sum()), dtype=bool))
        npos += int((~t["difficult"][keep]).sum())
    if npos == 0:
        return None
    image_index, scores, boxes = [], [], []
    for i, p in enumerate(predictions):
        keep = p["labels"] == cls
        image_index.append(np.full(int(keep.sum()), i))
        scores.append(p["scores"][keep])
        boxes.append(p["boxes"][keep])
    image_index = np.concatenate(image_index)
    scores = np.concatenate(scores)
    boxes = np.concatenate(boxes).reshape(-1, 4)
    # Stable: equal scores keep image order, as the devkit's MATLAB sort does.
    order = np.argsort(-scores, kind="stable")
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for d, k in enumerate(order):
        i = image_index[k]
        candidates = gt_boxes[i]
        if len(candidates) == 0:
            fp[d] = 1
            continue
        overlaps = _iou(boxes[k], candidates)
        j = int(np.argmax(overlaps))
        if overlaps[j] >= iou_threshold:
            if gt_difficult[i][j]:
                continue  # neither true nor false positive
            if not taken[i][j]:
                tp[d] = 1
                taken[i][j] = True
            else:
                fp[d] = 1  # a duplicate detection
        else:
            fp[d] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if interpolation == "11point":
        return average_precision_voc07(recall, precision)
    return average_precision_area(recall, precision)


def _coco_eval(classes: list[int], predictions: list[dict], targets: list[dict],
               raw_targets: Sequence[Mapping]) -> tuple[dict[str, float], dict[int, float]]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, detections = [], [], []
    for i, (p, t, raw) in enumerate(zip(predictions, targets, raw_targets)):
        images.append({"id": i + 1})
        crowd = _array(raw.get("iscrowd"), bool) if raw.get("iscrowd") is not None else np.zeros(len(t["labels"]), bool)
        area = _array(raw.get("area"), np.float64) if raw.get("area") is not None else None
        for j, (box, label) in enumerate(zip(t["boxes"], t["labels"])):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label),
                "bbox": [float(box[0]), float(box[1]), w, h],
                "area": float(area[j]) if area is not None else w * h, "iscrowd": int(crowd[j]),
            })
        for box, score, label in zip(p["boxes"], p["scores"], p["labels"]):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            detections.append({"id": len(detections) + 1, "image_id": i + 1, "category_id": int(label),
                               "score": float(score), "bbox": [float(box[0]), float(box[1]), w, h],
                               "area": w * h, "iscrowd": 0})
    keys = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
    categories = [{"id": c, "name": str(c)} for c in classes]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        # Both sides built in memory (COCO.loadRes would do the same to the detections, but
        # refuses an empty list: a model that detects nothing scores 0, not an error).
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        dt.dataset = {"images": list(images), "annotations": detections, "categories": categories}
        gt.createIndex()
        dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.catIds = classes
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # pycocotools writes -1 where nothing can be measured (no ground-truth box of that size).
    stats = {k: (float(v) if v > -1 else float("nan")) for k, v in zip(keys, evaluator.stats[:6])}
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    per_class = {}
    for k, c in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        if values.size:
            per_class[c] = float(values.mean())
    return stats, per_class


def evaluate_detections(predictions: Sequence[Mapping], targets: Sequence[Mapping], protocol: str = "voc07",
                        *, class_names: Sequence[str] | None = None, num_classes: int | None = None,
                        iou_threshold: float = VOC_IOU) -> dict:
    """mAP of `predictions` against `targets` (one dict per image, same order) under `protocol`.

    Classes are the labels 1..K of `class_names` (or of `num_classes`), or, when neither is
    given, every label that occurs in `targets`. `iou_threshold` applies to the VOC protocols.
    Returns `{"protocol", "map", "per_class": {name: AP}}` plus, for "coco", `map_50`,
    `map_75`, `map_small`, `map_medium`, `map_large`.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"detection protocol {protocol!r} is not supported.{choices(str(protocol), PROTOCOLS)}")
    if len(predictions) != len(targets):
        raise ValueError(f"evaluate_detections: {len(predictions)} predictions for {len(targets)} images.")
    preds = [{"boxes": _array(p.get("boxes"), np.float64, (4,)), "scores": _array(p.get("scores"), np.float64),
              "labels": _array(p.get("labels"), np.int64)} for p in predictions]
    gts = []
    for t in targets:
        labels = _array(t.get("labels"), np.int64)
        difficult = t.get("difficult")
        gts.append({"boxes": _array(t.get("boxes"), np.float64, (4,)), "labels": labels,
                    "difficult": np.zeros(len(labels), bool) if difficult is None else _array(difficult, bool)})
    for kind, items in (("prediction", preds), ("target", gts)):
        for i, item in enumerate(items):
            lengths = {k: len(v) for k, v in item.items()}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"evaluate_detections: {kind} {i} has fields of different lengths {lengths}.")

    if class_names is not None:
        classes = list(range(1, len(class_names) + 1))
    elif num_classes is not None:
        classes = list(range(1, int(num_classes) + 1))
    else:
        classes = sorted({int(c) for t in gts for c in t["labels"]})
    names = {c: (class_names[c - 1] if class_names is not None else str(c)) for c in classes}

    result: dict = {"protocol": protocol}
    if protocol == "coco":
        stats, per_class = _coco_eval(classes, preds, gts, targets)
        result.update(stats)
    else:
        interpolation = "11point" if protocol == "voc07" else "area"
        per_class = {}
        for c in classes:
            ap = _voc_class_ap(c, preds, gts, iou_threshold, interpolation)
            if ap is not None:
                per_class[c] = ap
        result["map"] = float(np.mean(list(per_class.values()))) if per_class else 0.0
    result["per_class"] = {names[c]: ap for c, ap in per_class.items()}
    return result
