"""replicate.ops: the R-CNN box parameterisation, torchvision.ops wrappers, anchors (Faster
R-CNN Sec. 3.1.1 / 3.3) and IoU-based labelling and sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.ops as tvops

from replicate.ops import (
    BACKGROUND, IGNORE, AnchorGrid, base_anchors, box_iou, decode, encode, feature_size, grid_anchors, inside_image,
    label_by_iou, nms, roi_pool, sample_labels,
)


def random_boxes(n: int, seed: int = 0, size: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


# -- encode / decode --------------------------------------------------------------------------
def test_encode_matches_the_paper_equation_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), w 10, h 20
    box = torch.tensor([[2.0, 4.0, 22.0, 14.0]])  # centre (12, 9), w 20, h 10
    t = encode(anchor, box)
    expected = torch.tensor([[(12 - 5) / 10, (9 - 10) / 20, math.log(20 / 10), math.log(10 / 20)]])
    torch.testing.assert_close(t, expected)
    # Fast R-CNN's normalised targets: weights multiply each coordinate.
    torch.testing.assert_close(encode(anchor, box, (10, 10, 5, 5)), expected * torch.tensor([10, 10, 5, 5.0]))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(weights):
    reference, target = random_boxes(50, 1), random_boxes(50, 2)
    torch.testing.assert_close(decode(reference, encode(reference, target, weights), weights), target,
                               rtol=1e-5, atol=1e-4)


def test_decode_per_class_deltas_and_zero_deltas():
    reference = random_boxes(6, 3)
    deltas = torch.zeros(6, 4 * 3)
    deltas[:, 4:8] = encode(reference, reference + 5.0)  # class 1 shifts every box by 5 px
    out = decode(reference, deltas)
    assert out.shape == (6, 12)
    torch.testing.assert_close(out[:, 0:4], reference)
    torch.testing.assert_close(out[:, 4:8], reference + 5.0, rtol=1e-5, atol=1e-4)


def test_decode_clamps_huge_scales():
    out = decode(torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([[0.0, 0.0, 100.0, 100.0]]))
    assert torch.isfinite(out).all() and (out[0, 2] - out[0, 0]).item() == pytest.approx(1000.0, rel=1e-4)


# -- torchvision.ops wrappers -----------------------------------------------------------------
def test_iou_by_hand_and_against_torchvision():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50.0 / 150.0, 0.0]]))
    x, y = random_boxes(30, 4), random_boxes(20, 5)
    torch.testing.assert_close(box_iou(x, y), tvops.box_iou(x, y))


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.8, 0.9, 0.7])
    # IoU of the first two: 90 / 110 = 0.82 -> the 0.9 one suppresses the 0.8 one at 0.7.
    assert nms(boxes, scores, 0.7).tolist() == [1, 2]
    assert nms(boxes, scores, 0.85).tolist() == [1, 0, 2]
    x, s = random_boxes(200, 6), torch.rand(200, generator=torch.Generator().manual_seed(7))
    assert torch.equal(nms(x, s, 0.7), tvops.nms(x, s, 0.7))


def test_roi_pool_max_pools_each_bin():
    # Fast R-CNN Sec. 2.1: a region split into an H x W grid, each cell max-pooled.
    features = torch.arange(64.0).reshape(1, 1, 8, 8)
    # Caffe's convention (torchvision follows it): corners rounded after scaling, the end cell
    # included, so (0, 0, 56, 56) at 1/8 covers cells 0..7, the whole map.
    rois = torch.tensor([[0.0, 0.0, 0.0, 56.0, 56.0]])
    out = roi_pool(features, rois, output_size=2, spatial_scale=1 / 8)
    assert out.shape == (1, 1, 2, 2)
    assert out.flatten().tolist() == [27.0, 31.0, 59.0, 63.0]  # bottom-right of each 4x4 quarter
    rois = torch.tensor([[0.0, 3.0, 5.0, 40.0, 60.0], [0.0, 10.0, 10.0, 20.0, 20.0]])
    f = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(roi_pool(f, rois, 7, 1 / 8), tvops.roi_pool(f, rois, 7, 1 / 8))
    # One [K, 4] tensor per image works too.
    torch.testing.assert_close(roi_pool(f, [rois[:, 1:]], 7, 1 / 8), tvops.roi_pool(f, rois, 7, 1 / 8))


# -- anchors ----------------------------------------------------------------------------------
def test_base_anchors_have_the_papers_areas_and_ratios():
    anchors = base_anchors()  # Sec. 3.3: areas 128^2, 256^2, 512^2 x ratios 1:2, 1:1, 2:1
    assert anchors.shape == (9, 4)
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    torch.testing.assert_close(w * h, torch.tensor([128.0**2, 256**2, 512**2] * 3))
    torch.testing.assert_close(h / w, torch.tensor([0.5] * 3 + [1.0] * 3 + [2.0] * 3))
    torch.testing.assert_close((anchors[:, :2] + anchors[:, 2:]) / 2, torch.zeros(9, 2))


def test_anchor_count_for_a_1000x600_image_with_the_vgg16_trunk():
    from replicate.models.vgg import CONFIGS, make_features

    # VGG-16 up to conv5_3 (configuration D without its last max-pool): stride 16.
    with torch.device("meta"):
        trunk = make_features(CONFIGS["D"])[:-1]
        out = trunk(torch.empty(1, 3, 600, 1000))
    assert tuple(out.shape[-2:]) == (37, 62) == feature_size((600, 1000))
    assert feature_size((600, 1000), ceil_mode=True) == (38, 63)  # Caffe's pooling rounds up
    anchors = AnchorGrid()(feature_size((600, 1000)))
    assert anchors.shape[0] == 62 * 37 * 9 == 20646
    # Sec. 3.3: "roughly 20000 (~ 60 x 40 x 9) anchors in total".
    assert abs(anchors.shape[0] - 20000) / 20000 < 0.05


def test_grid_anchor_layout_and_inside_mask():
    base = base_anchors(scales=(16,), ratios=(1.0,))
    anchors = grid_anchors((2, 3), 16, base)
    # Position-major, row by row; centres at the cells' centres.
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres.tolist() == [[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]]
    assert inside_image(anchors, (32, 48)).all()
    big = grid_anchors((2, 3), 16, base_anchors(scales=(32,), ratios=(1.0,)))
    assert inside_image(big, (32, 48)).sum() == 0 and inside_image(big, (32, 48), border=8).sum() == 6
    k = AnchorGrid().num_anchors
    two = AnchorGrid()((2, 2))
    assert two.shape == (4 * k, 4)
    torch.testing.assert_close(two[k:2 * k] - two[:k], torch.tensor([[16.0, 0, 16, 0]]).expand(k, 4))


# -- labelling and sampling -------------------------------------------------------------------
def test_label_by_iou_thresholds_and_best_match():
    iou = torch.tensor([
        [0.80, 0.10],  # fg (>= 0.7)
        [0.50, 0.20],  # between: ignored
        [0.20, 0.25],  # bg (< 0.3)
        [0.10, 0.60],  # best anchor of gt 1: fg only with best_match
    ])
    matched, labels = label_by_iou(iou, 0.7, (0.0, 0.3))
    assert labels.tolist() == [1, IGNORE, BACKGROUND, IGNORE] and matched.tolist() == [0, 0, 1, 1]
    matched, labels = label_by_iou(iou, 0.7, (0.0, 0.3), best_match=True)
    assert labels.tolist() == [1, IGNORE, BACKGROUND, 1] and matched[3] == 1
    # Fast R-CNN: fg >= 0.5, bg in [0.1, 0.5).
    _, labels = label_by_iou(torch.tensor([[0.5], [0.49], [0.1], [0.05]]), 0.5, (0.1, 0.5))
    assert labels.tolist() == [1, BACKGROUND, BACKGROUND, IGNORE]
    _, labels = label_by_iou(torch.zeros(3, 0), 0.7, (0.0, 0.3), best_match=True)
    assert labels.tolist() == [BACKGROUND] * 3


def test_sample_labels_caps_the_foreground_share():
    labels = torch.tensor([1] * 40 + [BACKGROUND] * 200 + [IGNORE] * 10)
    out = sample_labels(labels, 64, 0.25, torch.Generator().manual_seed(0))  # Fast R-CNN: 64 RoIs, 25 % fg
    assert (out == 1).sum() == 16 and (out == BACKGROUND).sum() == 48
    out = sample_labels(torch.tensor([1] * 5 + [BACKGROUND] * 500), 256, 0.5)  # RPN: pad with negatives
    assert (out == 1).sum() == 5 and (out == BACKGROUND).sum() == 251
    assert ((out != IGNORE) <= (torch.tensor([1] * 5 + [BACKGROUND] * 500) != IGNORE)).all()
