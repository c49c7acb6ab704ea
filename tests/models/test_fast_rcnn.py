"""Fast R-CNN (Girshick 2015): a training step on proposals, the detections' format, RoI
sampling and the multi-task loss on worked cases, the head's parameter counts and truncated SVD
(Sec. 3.1) in exact cells and numerically, and the selective search proposals."""

import math

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from replicate.data.detection import proposals as P
from replicate.models import build
from replicate.models.fast_rcnn import FastRCNNHead, fast_rcnn_loss, sample_rois, truncated_svd
from tests.fakes import proposal_batch


def _weights(module):
    return sum(p.numel() for p in module.parameters() if p.ndim >= 2)


def _params(module):
    return sum(p.numel() for p in module.parameters())


def tiny(**kw):
    torch.manual_seed(0)
    return build("fast_rcnn_vgg16", num_classes=3, width_mult=0.0625, **kw)


def test_training_step_losses_are_finite_and_reach_the_trunk():
    model = tiny().train()
    images, targets = proposal_batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_box"} and all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_cls"].item() == pytest.approx(math.log(4), abs=0.1)  # 4-way softmax, untrained
    sum(losses.values()).backward()
    assert model.trunk[0].weight.grad.abs().sum() > 0
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0


def test_evaluation_needs_proposals_and_returns_detections():
    model = tiny(score_threshold=0.0, detections_per_image=5).eval()
    images, targets = proposal_batch()
    with pytest.raises(ValueError, match="proposals"):
        model(images)
    with torch.no_grad():
        out = model(images, proposals=[t["proposals"] for t in targets])
    assert len(out) == 2
    for detections in out:
        n = len(detections["scores"])
        assert detections["boxes"].shape == (n, 4) and 0 < n <= 5
        assert set(detections["labels"].tolist()) <= {1, 2, 3}


def test_roi_sampling_on_a_worked_case():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor([
        [0.0, 0.0, 10.0, 12.0],    # IoU 0.83: foreground
        [0.0, 0.0, 10.0, 20.0],    # IoU 0.5: foreground (>= 0.5)
        [5.0, 0.0, 15.0, 10.0],    # IoU 0.33: background
        [9.0, 0.0, 19.0, 10.0],    # IoU 0.05: below 0.1, neither
        [30.0, 30.0, 40.0, 40.0],  # IoU 0: neither
    ])
    rois, labels, targets = sample_rois(proposals, gt, torch.tensor([3]), rois_per_image=8, fg_fraction=0.25)
    # 8 RoIs, at most 2 foreground among the 3 candidates (2 proposals + the ground truth box).
    assert (labels == 3).sum() == 2 and (labels == 0).sum() == 1 and len(rois) == 3
    fg = labels > 0
    torch.testing.assert_close(targets[~fg], torch.zeros(1, 4))
    assert torch.equal(rois[~fg][0], proposals[2])
    # The same with a lot of foreground: the quarter of the mini-batch caps it.
    rois, labels, _ = sample_rois(proposals[:3].repeat(10, 1), gt, torch.tensor([3]), rois_per_image=8)
    assert (labels > 0).sum() == 2 and (labels == 0).sum() == 6
    # An image without objects: its proposals are background.
    _, labels, _ = sample_rois(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), rois_per_image=8)
    assert labels.tolist() == [0] * 5


def test_multi_task_loss_uses_the_true_class_offsets_only():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])   # K = 2
    deltas = torch.tensor([[5.0] * 8, [9.0, 9.0, 9.0, 9.0, 0.5, 0.0, 0.0, 2.0]])
    labels = torch.tensor([0, 2])
    targets = torch.zeros(2, 4)
    losses = fast_rcnn_loss(logits, deltas, labels, targets)
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = math.e / (math.e + 2)
    assert losses["loss_cls"].item() == pytest.approx(-(math.log(p0) + math.log(p1)) / 2)
    # Background RoIs have no box loss; class 2's slot (0.5, 0, 0, 2): 0.125 + 1.5, over 2 RoIs.
    assert losses["loss_box"].item() == pytest.approx((0.125 + 1.5) / 2)


def test_head_and_truncated_svd_parameter_counts():
    with torch.device("meta"):
        model = build("fast_rcnn_vgg16", num_classes=20)
        compressed = truncated_svd(model.head, 1024, 256)
    head = model.head
    # Sec. 3.1 / 4.4: fc6 is 25088 x 4096 (7 x 7 x 512 RoI features), fc7 4096 x 4096.
    assert head.fc6.weight.shape == (4096, 25088) and _params(head.fc6) == 102764544
    assert _params(head.fc7) == 16781312
    assert _params(head.cls_score) == 4096 * 21 + 21 and _params(head.bbox_pred) == 4096 * 80 + 80
    # uv -> t(u + v): 1024 x (25088 + 4096) and 256 x (4096 + 4096) weights; biases stay.
    assert _weights(compressed.fc6) == 1024 * (25088 + 4096) == 29884416
    assert _weights(compressed.fc7) == 256 * (4096 + 4096) == 2097152
    assert _params(compressed.fc6) == 29884416 + 4096 and _params(compressed.fc7) == 2097152 + 4096


def test_truncated_svd_is_the_best_rank_t_approximation():
    torch.manual_seed(0)
    head = FastRCNNHead(in_channels=2, num_classes=3, hidden=16, pool_size=2).eval()
    x = torch.randn(5, 8)
    exact = truncated_svd(head, 16, 16)
    torch.testing.assert_close(exact.fc6(x), head.fc6(x), rtol=1e-4, atol=1e-5)
    low = truncated_svd(head, 3, 2)
    w = head.fc6.weight.detach().double()
    approx = (low.fc6[1].weight @ low.fc6[0].weight).double()
    s = torch.linalg.svdvals(w)
    # Eckart-Young: the Frobenius error of the best rank-3 approximation is the discarded spectrum.
    assert torch.linalg.norm(w - approx).item() == pytest.approx(s[3:].pow(2).sum().sqrt().item(), rel=1e-5)
    torch.testing.assert_close(low.fc6[1].bias, head.fc6.bias)


def _blobs(h=96, w=128):
    """Two flat coloured rectangles on a grey background."""
    image = np.full((h, w, 3), 128, np.uint8)
    image[10:50, 12:60] = (220, 30, 30)
    image[40:90, 70:120] = (30, 30, 220)
    return image


def test_selective_search_finds_the_objects():
    boxes = P.selective_search(_blobs(), "fast", max_proposals=500)
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and 0 < len(boxes) <= 500
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
    truth = torch.tensor([[12.0, 10.0, 60.0, 50.0], [70.0, 40.0, 120.0, 90.0]])
    from torchvision.ops import box_iou
    assert (box_iou(truth, boxes).max(1).values > 0.8).all()
    assert len(P.selective_search(_blobs(), "fast", max_proposals=3)) == 3
    assert torch.equal(boxes, P.selective_search(_blobs(), "fast", max_proposals=500))  # deterministic
    with pytest.raises(Exception, match="mode"):
        P.selective_search(_blobs(), "slowest")


def test_proposals_are_cached_and_move_with_the_image(tmp_path):
    from PIL import Image

    from replicate.data.detection import DetectionDataset, Record, make_target

    paths = []
    for i in range(2):
        path = tmp_path / "JPEGImages" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(_blobs()).save(path)
        paths.append(path)
    records = [Record(path=p, target=make_target(torch.zeros(0, 4), torch.zeros(0), (96, 128), i))
               for i, p in enumerate(paths)]
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.ToDtype(torch.float32, scale=True)])
    dataset = P.attach_proposals(DetectionDataset(records, ["a"], transforms=flip), tmp_path / "data", workers=1)
    cached = list((tmp_path / "data" / "proposals").glob("*.pt"))
    assert len(cached) == 1
    raw = P.selective_search(_blobs(), "fast")
    image, target = dataset[1]
    assert isinstance(target["proposals"], tv_tensors.BoundingBoxes) and len(target["proposals"]) == len(raw)
    flipped = target["proposals"].as_subclass(torch.Tensor)
    torch.testing.assert_close(flipped[:, 0], 128 - raw[:, 2])
    # A second data set over the same files reads the cache instead of searching again.
    P.compute = None  # would fail if called
    try:
        again = P.attach_proposals(DetectionDataset(records, ["a"]), tmp_path / "data")
    finally:
        import importlib
        importlib.reload(P)
    assert len(again[0][1]["proposals"]) == len(raw)
