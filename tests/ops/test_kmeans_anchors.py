"""YOLOv2's dimension clusters (Sec. 2, Table 1): k-means on box shapes with d = 1 - IoU versus
standard (SSE) k-means, the average IoU to the closest prior, and Table 1's rows."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision import tv_tensors

from replicate.ops.kmeans_anchors import (
    PAPER_TABLE1, average_iou, box_sizes, hand_picked_anchors, kmeans_anchors, table1_rows, wh_iou,
)

CLUSTERS = torch.tensor([[10.0, 20.0], [60.0, 30.0], [200.0, 180.0]])


def three_clusters(jitter: bool) -> torch.Tensor:
    """40 boxes of each of three shapes; with `jitter`, symmetric +-1 px variations whose mean is
    the shape exactly."""
    rows = []
    for w, h in CLUSTERS.tolist():
        for dw, dh in ([(0, 0)] * 4 if not jitter else [(1, 0), (-1, 0), (0, 1), (0, -1)]):
            rows += [[w + dw, h + dh]] * 10
    return torch.tensor(rows)


def skewed_sizes(n: int = 1500, seed: int = 0) -> torch.Tensor:
    """Log-normal box sizes over about two decades (many small boxes, a few large ones) with
    spread aspect ratios: where squared Euclidean k-means spends its centroids on large boxes."""
    g = torch.Generator().manual_seed(seed)
    scale = (torch.randn(n, generator=g) + 3.0).exp()
    ratio = (torch.randn(n, generator=g) * 0.4).exp()
    return torch.stack([scale * ratio.sqrt(), scale / ratio.sqrt()], dim=1)


def test_paper_table1_values():
    # YOLOv2 Table 1 (VOC 2007): Cluster SSE 5 -> 58.7, Cluster IOU 5 -> 61.0, Anchor Boxes 9 -> 60.9,
    # Cluster IOU 9 -> 67.2.
    assert PAPER_TABLE1 == (("Cluster SSE", 5, 58.7), ("Cluster IOU", 5, 61.0), ("Anchor Boxes", 9, 60.9),
                            ("Cluster IOU", 9, 67.2))


def test_wh_iou_by_hand():
    # (2, 2) vs (1, 4) sharing a centre: intersection 1 x 2 = 2, union 4 + 4 - 2 = 6.
    iou = wh_iou(torch.tensor([[2.0, 2.0], [4.0, 4.0]]), torch.tensor([[1.0, 4.0], [2.0, 2.0]]))
    torch.testing.assert_close(iou, torch.tensor([[1 / 3, 1.0], [4 / 16, 4 / 16]]))


@pytest.mark.parametrize("distance", ["iou", "sse"])
@pytest.mark.parametrize("jitter", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_three_separated_clusters_are_recovered_exactly(distance, jitter, seed):
    anchors = kmeans_anchors(three_clusters(jitter), 3, distance, seed=seed)
    assert anchors.shape == (3, 2)
    torch.testing.assert_close(anchors, CLUSTERS, rtol=0, atol=1e-5)  # sorted by area, as CLUSTERS


def test_average_iou_of_the_boxes_themselves_is_one():
    sizes = skewed_sizes(200)
    assert average_iou(sizes, sizes) == pytest.approx(1.0)
    assert average_iou(three_clusters(False), CLUSTERS) == pytest.approx(1.0)
    # One box against a single prior of half its width: IoU 1/2.
    assert average_iou(torch.tensor([[4.0, 4.0]]), torch.tensor([[2.0, 4.0]])) == pytest.approx(0.5)


@pytest.mark.parametrize("k", [5, 9])
def test_iou_clustering_beats_sse_on_skewed_sizes(k):
    sizes = skewed_sizes()
    by_iou = average_iou(sizes, kmeans_anchors(sizes, k, "iou"))
    by_sse = average_iou(sizes, kmeans_anchors(sizes, k, "sse"))
    assert by_iou > by_sse + 0.05, (by_iou, by_sse)


def test_kmeans_is_deterministic_and_sorted_by_area():
    sizes = skewed_sizes(800, seed=3)
    a = kmeans_anchors(sizes, 5, seed=4)
    assert torch.equal(a, kmeans_anchors(sizes, 5, seed=4))
    assert torch.equal(kmeans_anchors(sizes, 5, "sse", seed=4), kmeans_anchors(sizes, 5, "sse", seed=4))
    area = a.prod(dim=1)
    assert bool((area[1:] >= area[:-1]).all())
    # More restarts never do worse on the objective they keep (mean 1 - IoU = 1 - average IoU).
    assert average_iou(sizes, kmeans_anchors(sizes, 5, seed=4, n_init=4)) >= average_iou(sizes, a) - 1e-9


def test_kmeans_rejects_bad_arguments():
    with pytest.raises(ValueError):
        kmeans_anchors(CLUSTERS, 4)
    with pytest.raises(ValueError):
        kmeans_anchors(CLUSTERS, 2, distance="l1")


def test_box_sizes_from_targets_and_datasets():
    targets = [
        {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0.0, 50.0, 20.0], [10.0, 10.0, 10.0, 30.0]]),
                                           format="XYXY", canvas_size=(100, 200)),
         "labels": torch.tensor([1, 2]), "difficult": torch.tensor([False, False])},
        {"boxes": torch.tensor([[5.0, 5.0, 25.0, 45.0]]), "labels": torch.tensor([3]),
         "difficult": torch.tensor([True]), "orig_size": torch.tensor([400, 300])},
    ]
    # The zero-width box is left out.
    torch.testing.assert_close(box_sizes(targets), torch.tensor([[50.0, 20.0], [20.0, 40.0]]))
    torch.testing.assert_close(box_sizes(targets, relative=True), torch.tensor([[0.25, 0.2], [20 / 300, 0.1]]))
    torch.testing.assert_close(box_sizes(targets, skip_difficult=True), torch.tensor([[50.0, 20.0]]))
    # Faster R-CNN's scaling, shorter side 600 unless the longer one exceeds 1000: the 100 x 200
    # image is scaled x5 (x6 would make it 1200 wide), the 400 x 300 one x2.
    torch.testing.assert_close(box_sizes(targets, min_size=600, max_size=1000),
                               torch.tensor([[250.0, 100.0], [40.0, 80.0]]))

    class Dataset:  # the reader's interface: targets without reading images
        def __len__(self):
            return 2

        def target(self, i):
            return targets[i]

        def __getitem__(self, i):
            raise AssertionError("box_sizes must not read images")

    torch.testing.assert_close(box_sizes(Dataset()), box_sizes(targets))
    torch.testing.assert_close(box_sizes([(None, t) for t in targets]), box_sizes(targets))
    with pytest.raises(ValueError):
        box_sizes([{"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]])}], relative=True)


def test_hand_picked_anchors_are_faster_rcnn_s():
    wh = hand_picked_anchors()
    assert wh.shape == (9, 2)
    torch.testing.assert_close(wh.prod(dim=1), torch.tensor([128.0**2] * 3 + [256.0**2] * 3 + [512.0**2] * 3))
    assert sorted(round(w / h, 4) for w, h in wh[:3].tolist()) == [0.5, 1.0, 2.0]
    assert wh[0, 0].item() == pytest.approx(128 * math.sqrt(2))


def test_table1_rows():
    sizes = skewed_sizes(600, seed=1)
    hand = hand_picked_anchors() / 10
    rows = table1_rows(sizes, hand)
    assert [(r["row"], r["num_priors"], r["paper"]) for r in rows] == list(PAPER_TABLE1)
    assert rows[2]["avg_iou"] == pytest.approx(100 * average_iou(sizes, hand))
    assert torch.equal(rows[1]["anchors"], kmeans_anchors(sizes, 5, "iou"))
    # The paper's ordering holds on skewed sizes: SSE 5 < IoU 5 < IoU 9.
    assert rows[0]["avg_iou"] < rows[1]["avg_iou"] < rows[3]["avg_iou"]
    # The hand-picked row can be scored on the boxes in the anchors' own units.
    rows = table1_rows(sizes, hand, hand_picked_sizes=sizes * 10)
    assert rows[2]["avg_iou"] == pytest.approx(100 * average_iou(sizes * 10, hand))
