"""replicate.ops.yolo: square network inputs, boxes between image and network pixels, and the
final NMS (greedy through torchvision, DIoU-NMS of YOLOv4 Sec. 3.4 on a worked case)."""

import pytest
import torch
from torchvision.ops import nms

from replicate.ops.yolo import diou_nms, select_detections, to_image_boxes, to_network_input, to_network_targets


def test_images_are_resized_to_the_network_input_and_boxes_follow():
    images = [torch.rand(3, 100, 200), torch.rand(3, 50, 50)]
    batch, scales = to_network_input(images, 64)
    assert batch.shape == (2, 3, 64, 64)
    assert scales.flatten().tolist() == pytest.approx([64 / 200, 64 / 100, 64 / 50, 64 / 50])
    targets = [{"boxes": torch.tensor([[20.0, 10.0, 120.0, 90.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    moved = to_network_targets(targets, scales)
    assert moved[0]["boxes"].flatten().tolist() == pytest.approx([6.4, 6.4, 38.4, 57.6])
    assert moved[0]["labels"].tolist() == [3] and moved[1]["boxes"].shape == (0, 4)
    assert to_image_boxes(moved[0]["boxes"], scales[0]).flatten().tolist() == pytest.approx([20.0, 10.0, 120.0, 90.0])


def test_diou_nms_keeps_an_overlapping_box_whose_centre_lies_apart():
    # Two 10 x 10 boxes side by side, overlapping by 4 x 10: IoU 40 / 160 = 0.25; their
    # centres 6 apart, the enclosing box 16 x 10 (diagonal^2 356): DIoU = 0.25 - 36 / 356 = 0.149.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [6.0, 0.0, 16.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # Greedy NMS at 0.2 drops the side-by-side box (IoU 0.25 > 0.2); DIoU-NMS keeps it (0.149).
    assert nms(boxes, scores, 0.2).tolist() == [0]
    assert diou_nms(boxes, scores, 0.2).tolist() == [0, 1]
    # The third box (IoU 0.818 with the first, centres 1 apart) goes either way.
    assert 2 not in diou_nms(boxes, scores, 0.5).tolist()
    # With the centre term switched off by a huge beta exponent on a ratio below 1, DIoU-NMS is greedy NMS.
    assert diou_nms(boxes, scores, 0.2, beta=50.0).tolist() == nms(boxes, scores, 0.2).tolist()
    assert diou_nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_select_detections_thresholds_suppresses_per_class_and_caps():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.6, 0.01])
    labels = torch.tensor([1, 1, 2, 1])
    for kind in ("greedy", "diou"):
        out = select_detections(boxes, scores, labels, score_threshold=0.05, nms_threshold=0.5, max_detections=10,
                                nms=kind)
        assert out["scores"].tolist() == pytest.approx([0.9, 0.6])  # the 0.8 box overlaps a better one of its class
        assert out["labels"].tolist() == [1, 2]
    capped = select_detections(boxes, scores, labels, score_threshold=0.0, nms_threshold=0.5, max_detections=1)
    assert capped["scores"].tolist() == pytest.approx([0.9])
    with pytest.raises(ValueError, match="greedy"):
        select_detections(boxes, scores, labels, score_threshold=0.0, nms_threshold=0.5, max_detections=1, nms="soft")
