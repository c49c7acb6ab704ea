"""replicate.metrics.evaluate_detections: the VOC07 11-point and VOC area protocols against
small cases worked by hand (the devkit's matching rules), COCO against pycocotools itself."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from replicate.errors import ConfigError
from replicate.metrics import evaluate_detections


def det(boxes, scores, labels) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def gt(boxes, labels, difficult=None) -> dict:
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return out


# Class 1: image 0 holds g1, g2; image 1 holds g3 and a difficult g4. Class 2: one box in image 1,
# never detected. Class 3: a detection but no ground truth.
TARGETS = [
    gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [False, False]),
    gt([[0, 0, 10, 10], [50, 50, 60, 60], [70, 70, 90, 90]], [1, 1, 2], [False, True, False]),
]
PREDICTIONS = [
    det([[0, 0, 10, 10], [1, 0, 11, 10], [100, 100, 110, 110]], [0.9, 0.8, 0.5], [1, 1, 1]),
    det([[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 5, 5]], [0.7, 0.6, 0.95], [1, 1, 3]),
]
# By score: 0.9 TP (g1); 0.8 IoU 90/110 with the taken g1: FP (duplicate); 0.7 on difficult g4:
# ignored; 0.6 TP (g3); 0.5 FP. npos = 3 (g4 does not count).
# cum TP 1 1 1 2 2, cum FP 0 1 1 1 2 -> recall 1/3 1/3 1/3 2/3 2/3, precision 1 .5 .5 2/3 .5.
# 11-point: r = 0, .1, .2, .3 -> 1; r = .4, .5, .6 -> 2/3; r >= .7 -> 0: AP = 6/11.
# Area: envelope 1 up to recall 1/3, 2/3 up to 2/3, then 0: AP = 1/3 + 2/9 = 5/9.
AP07_CLASS1 = 6 / 11
AREA_CLASS1 = 5 / 9


def test_voc07_11_point_by_hand():
    result = evaluate_detections(PREDICTIONS, TARGETS, "voc07")
    assert result["per_class"]["1"] == pytest.approx(AP07_CLASS1)
    assert result["per_class"]["2"] == 0.0
    assert "3" not in result["per_class"]  # no ground truth: no AP (the devkit's would be NaN)
    assert result["map"] == pytest.approx(AP07_CLASS1 / 2)


def test_voc_area_by_hand():
    result = evaluate_detections(PREDICTIONS, TARGETS, "voc", class_names=["one", "two", "three"])
    assert result["per_class"] == pytest.approx({"one": AREA_CLASS1, "two": 0.0})
    assert result["map"] == pytest.approx(AREA_CLASS1 / 2)


def test_without_difficult_every_box_counts():
    targets = [{k: v for k, v in t.items() if k != "difficult"} for t in TARGETS]
    # Now g4 is a positive and the 0.7 detection a TP; npos = 4.
    # cum TP 1 1 2 3 3, FP 0 1 1 1 2 -> recall .25 .25 .5 .75 .75, precision 1 .5 2/3 .75 .6.
    # 11-point: r <= .2 -> 1 (3 points); .3 .. .7 -> .75 (5 points); >= .8 -> 0: AP = 6.75 / 11.
    # Area: .25 x 1 + .5 x .75 = .625.
    assert evaluate_detections(PREDICTIONS, targets, "voc07")["per_class"]["1"] == pytest.approx(6.75 / 11)
    assert evaluate_detections(PREDICTIONS, targets, "voc")["per_class"]["1"] == pytest.approx(0.625)


def test_devkit_matching_rules():
    # IoU exactly 0.5 counts (the devkit tests ovmax >= minoverlap).
    half = evaluate_detections([det([[0, 0, 10, 20]], [1.0], [1])], [gt([[0, 0, 10, 10]], [1])], "voc07")
    assert half["map"] == pytest.approx(1.0)
    # A detection whose best ground truth is taken is a false positive, even if it overlaps
    # another free box by more than 0.5: the devkit looks at the best overlap only.
    targets = [gt([[0, 0, 10, 10], [2, 0, 12, 10]], [1, 1])]
    # The second detection: IoU .905 with the first (taken) box, .739 with the second (free) one.
    preds = [det([[0, 0, 10, 10], [0.5, 0, 10.5, 10]], [0.9, 0.8], [1, 1])]
    # recall .5 .5, precision 1 .5 -> 11-point: r <= .5 -> 1 (6 points): 6/11.
    assert evaluate_detections(preds, targets, "voc07")["map"] == pytest.approx(6 / 11)
    # Perfect detections: AP 1 under both.
    assert evaluate_detections([dict(TARGETS[0], scores=torch.ones(2))], TARGETS[:1], "voc")["map"] == 1.0


def test_coco_by_hand():
    # One box, detected with IoU 0.72: a true positive at thresholds .50 .. .70 (5 of 10).
    targets = [gt([[0, 0, 100, 100]], [1])]
    preds = [det([[0, 0, 100, 72]], [0.9], [1])]
    result = evaluate_detections(preds, targets, "coco")
    assert result["map"] == pytest.approx(0.5)
    assert result["map_50"] == pytest.approx(1.0) and result["map_75"] == pytest.approx(0.0)
    assert result["map_large"] == pytest.approx(0.5)  # area 10^4 > 96^2
    assert math.isnan(result["map_small"]) and math.isnan(result["map_medium"])
    # No detection at all scores 0, not an error.
    assert evaluate_detections([det([], [], [])], targets, "coco")["map"] == 0.0


def _random_case(seed: int, n_images: int = 6, n_classes: int = 3):
    rng = np.random.default_rng(seed)
    targets, predictions = [], []
    for _ in range(n_images):
        m = int(rng.integers(1, 5))
        xy = rng.uniform(0, 200, (m, 2))
        wh = rng.uniform(8, 120, (m, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, n_classes + 1, m)
        crowd = rng.uniform(size=m) < 0.1
        area = wh.prod(1) * rng.uniform(0.5, 1.0, m)  # segment areas below the box areas
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels),
                        "iscrowd": torch.tensor(crowd), "area": torch.tensor(area)})
        k = int(rng.integers(0, 8))
        jitter = rng.normal(0, 6, (k, 4))
        source = boxes[rng.integers(0, m, k)] + jitter
        source[:, 2:] = np.maximum(source[:, 2:], source[:, :2] + 1)
        plabels = np.where(rng.uniform(size=k) < 0.8, labels[rng.integers(0, m, k)], rng.integers(1, n_classes + 1, k))
        predictions.append(det(source.tolist(), rng.uniform(size=k).tolist(), plabels.tolist()))
    return predictions, targets


def _pycocotools_reference(tmp_path, predictions, targets):
    """pycocotools on JSON files, the way its own examples use it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (p, t) in enumerate(zip(predictions, targets)):
        images.append({"id": 100 + i, "width": 400, "height": 400, "file_name": f"{i}.jpg"})
        for b, lab, c, a in zip(t["boxes"].tolist(), t["labels"].tolist(), t["iscrowd"].tolist(), t["area"].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": lab, "iscrowd": int(c),
                                "area": a, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
        for b, s, lab in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
            results.append({"image_id": 100 + i, "category_id": lab, "score": s,
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}))
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO(str(path))
        evaluator = COCOeval(ground, ground.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    per_class = {}
    for k, c in enumerate(evaluator.params.catIds):
        v = evaluator.eval["precision"][:, :, k, 0, -1]
        if (v > -1).any():
            per_class[f"c{c}"] = float(v[v > -1].mean())
    return evaluator.stats[:6], per_class


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_agrees_with_pycocotools(tmp_path, seed):
    predictions, targets = _random_case(seed)
    ours = evaluate_detections(predictions, targets, "coco", class_names=["c1", "c2", "c3"])
    stats, per_class = _pycocotools_reference(tmp_path, predictions, targets)
    keys = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
    for key, value in zip(keys, stats):
        assert (math.isnan(ours[key]) and value == -1) or ours[key] == pytest.approx(value, abs=1e-12), key
    assert ours["map"] > 0.05  # the case is not degenerate
    assert ours["per_class"] == pytest.approx(per_class, abs=1e-12)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="voc07"):
        evaluate_detections([], [], "voc2007")
    with pytest.raises(ValueError, match="2 images"):
        evaluate_detections(PREDICTIONS[:1], TARGETS, "voc")
    with pytest.raises(ValueError, match="different lengths"):
        evaluate_detections([det([[0, 0, 1, 1]], [0.5, 0.4], [1])], TARGETS[:1], "voc")


def test_bfloat16_detections_are_scored_like_float32():
    """The full profile's bf16 autocast hands scores and boxes over in bfloat16."""
    from replicate.metrics import evaluate_detections

    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([1])}
    pred = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    half = {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in pred.items()}
    assert evaluate_detections([half], [target], "voc07", num_classes=1)["map"] == pytest.approx(
        evaluate_detections([pred], [target], "voc07", num_classes=1)["map"]) == pytest.approx(1.0)
