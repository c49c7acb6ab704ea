"""Faster R-CNN (Ren et al. 2015): a training step, the detections' format, the anchor count of a
1000 x 600 image, the RPN's parameter counts against Sec. 3.1.1, the RPN's labelling and
sampling on a worked case, and the RPN-only and detector-only steps of the alternating scheme."""

import math

import pytest
import torch

from replicate.models import build
from replicate.models.faster_rcnn import rpn_loss, rpn_targets, select_proposals
from replicate.ops import IGNORE


def _weights(module):
    return sum(p.numel() for p in module.parameters() if p.ndim >= 2)


def _params(module):
    return sum(p.numel() for p in module.parameters())


def tiny(**kw):
    torch.manual_seed(0)
    return build("faster_rcnn_vgg16", num_classes=3, width_mult=0.0625, anchor_scale_factor=0.25, **kw)


def _batch():
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 64)]
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0], [50.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([1, 3])},
        # Every box of an image may be difficult (dropped in training): no box at all.
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets


def test_training_step_losses_are_finite_and_reach_the_trunk():
    model = tiny().train()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    # Before any training: two-class log loss ln 2 for the RPN, (K + 1)-way ~ ln 4 for the head.
    assert losses["loss_rpn_cls"].item() == pytest.approx(math.log(2), abs=0.05)
    assert losses["loss_cls"].item() == pytest.approx(math.log(4), abs=0.1)
    sum(losses.values()).backward()
    first_conv = model.trunk[0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    for layer in (model.rpn.cls, model.rpn.reg, model.head.cls_score, model.head.bbox_pred, model.head.fc6):
        assert layer.weight.grad.abs().sum() > 0


def _grad(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_rpn_stage_trains_the_rpn_and_the_trunk_only():
    """Step 1 of the alternating scheme (Sec. 3.2): the RPN's losses alone."""
    model = tiny().train()
    model.train_stage = "rpn"
    losses = model(*_batch())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    sum(losses.values()).backward()
    assert _grad(model.rpn) > 0 and _grad(model.trunk) > 0 and _grad(model.head) == 0


def test_detector_stage_learns_on_a_fixed_networks_proposals():
    """Step 2: Fast R-CNN's losses on another network's proposals; neither that network nor
    the own RPN learns, and the proposer is not part of the model's state."""
    proposer = tiny().train()
    model = tiny().train()
    model.train_stage = "detector"
    model.use_proposer(proposer)
    assert not any(k.startswith("_proposer") for k in model.state_dict())
    assert not proposer.training and not any(p.requires_grad for p in proposer.parameters())
    losses = model(*_batch())
    assert set(losses) == {"loss_cls", "loss_box"}
    sum(losses.values()).backward()
    assert _grad(model.head) > 0 and _grad(model.trunk) > 0 and _grad(model.rpn) == 0
    assert _grad(proposer) == 0
    # Step 4: the own (frozen) RPN proposes; the detector is trained on its training-time selection.
    model.use_proposer(None)
    model.zero_grad()
    sum(model(*_batch()).values()).backward()
    assert _grad(model.head) > 0 and _grad(model.rpn) == 0


def test_an_unknown_train_stage_is_refused():
    with pytest.raises(ValueError, match="joint, rpn, detector"):
        tiny().train_stage = "alternating"


def test_evaluation_returns_one_detection_dict_per_image():
    model = tiny(detections_per_image=7, score_threshold=0.0).eval()
    images, _ = _batch()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for detections, image in zip(out, images):
        n = detections["boxes"].shape[0]
        assert detections["boxes"].shape == (n, 4) and detections["scores"].shape == (n,) and n <= 7
        assert detections["labels"].dtype == torch.int64 and set(detections["labels"].tolist()) <= {1, 2, 3}
        h, w = image.shape[-2:]
        boxes = detections["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


def test_anchor_count_of_a_1000_by_600_image():
    with torch.device("meta"):
        model = build("faster_rcnn_vgg16")
    # Sec. 3.3: "roughly 20000 (~ 60 x 40 x 9)"; conv5_3 of a 600 x 1000 image is 37 x 62 here.
    assert model.anchors.num_anchors == 9
    assert model.num_anchors((600, 1000)) == 37 * 62 * 9 == 20646
    assert abs(model.num_anchors((600, 1000)) - 20000) / 20000 < 0.05


def test_rpn_parameter_counts_match_section_3_1_1():
    with torch.device("meta"):
        model = build("faster_rcnn_vgg16")
    rpn = model.rpn
    # "our output layer has 2.8 x 10^4 parameters (512 x (4 + 2) x 9 for VGG-16)"
    assert _weights(rpn.cls) + _weights(rpn.reg) == 512 * (4 + 2) * 9 == 27648
    # footnote: "3 x 3 x 512 x 512 + 512 x 6 x 9 = 2.4 x 10^6"
    assert _weights(rpn) == 3 * 3 * 512 * 512 + 512 * 6 * 9 == 2386944
    assert _params(rpn) == 2386944 + 512 + 18 + 36


def test_the_detector_shares_the_vgg16_trunk():
    with torch.device("meta"):
        faster = build("faster_rcnn_vgg16", num_classes=20)
        vgg = build("vgg16")
    convs = sum(_params(m) for m in vgg.features)
    assert _params(faster.trunk) == convs == 14714688  # VGG-16's 13 conv layers
    # The head is Fast R-CNN's: fc6 on 7 x 7 x 512 RoI features, 21-way softmax, 4 x 20 offsets.
    assert faster.head.fc6.weight.shape == (4096, 25088) and faster.head.bbox_pred.out_features == 80


def test_rpn_labels_and_sampling_on_a_worked_case():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 11.0],    # IoU 100/110 = 0.91 > 0.7: positive
        [0.0, 0.0, 10.0, 20.0],    # IoU 0.5: neither (ignored)
        [5.0, 0.0, 15.0, 10.0],    # IoU 50/150 = 0.33: neither
        [8.0, 0.0, 18.0, 10.0],    # IoU 20/180 = 0.11 < 0.3: negative
        [20.0, 20.0, 30.0, 30.0],  # IoU 0: negative
        [-2.0, 0.0, 9.0, 10.0],    # IoU 90/120 = 0.75 but crosses the border: ignored in training
    ])
    labels, targets = rpn_targets(anchors, gt, (40, 40))
    assert labels.tolist() == [1, IGNORE, IGNORE, 0, 0, IGNORE]
    torch.testing.assert_close(targets[0], torch.tensor([0.0, -0.5 / 11, 0.0, math.log(10 / 11)]))
    # No anchor above 0.7: the best one is positive (Sec. 3.1.2, condition (i)).
    labels, _ = rpn_targets(anchors[1:5], gt, (40, 40))
    assert labels.tolist() == [1, IGNORE, 0, 0]
    # Sampling: 4 anchors, up to half positive; a box-free image gives only negatives.
    many = torch.cat([anchors[:1].repeat(5, 1), anchors[4:5].repeat(20, 1)])
    labels, _ = rpn_targets(many, gt, (40, 40), batch_size=4)
    assert (labels == 1).sum() == 2 and (labels == 0).sum() == 2 and (labels == IGNORE).sum() == 21
    labels, _ = rpn_targets(many, torch.zeros(0, 4), (40, 40), batch_size=4)
    assert (labels == 1).sum() == 0 and (labels == 0).sum() == 4


def test_rpn_loss_follows_equation_1():
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    deltas = torch.tensor([[0.5, 0.0, 0.0, 2.0], [9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    labels = torch.tensor([1, 0, IGNORE])
    targets = torch.zeros(3, 4)
    cls, box = rpn_loss(logits, deltas, labels, targets, num_positions=4, reg_lambda=10.0)
    expected_cls = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2  # over the 2 sampled
    assert cls.item() == pytest.approx(expected_cls)
    # Only the positive counts: smooth L1 0.5 * 0.5^2 + (2 - 0.5), times lambda / N_reg.
    assert box.item() == pytest.approx(10.0 / 4 * (0.125 + 1.5))


def test_proposals_are_clipped_suppressed_and_capped():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [30.0, 30.0, 60.0, 60.0],
                            [-20.0, -20.0, 10.0, 10.0]])
    logits = torch.tensor([[0.0, 3.0], [0.0, 2.0], [0.0, 1.0], [0.0, 0.5]])
    boxes, scores = select_proposals(anchors, logits, torch.zeros(4, 4), (40, 50), pre_nms_top_n=10,
                                     post_nms_top_n=2, nms_threshold=0.7)
    # The second box overlaps the first at IoU 0.82: suppressed; the third is clipped to the image.
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 50.0, 40.0]]))
    assert scores[0] > scores[1]
