"""R-CNN (Girshick et al. 2014): the AlexNet features' sizes (Sec. 3.1), the warp with 16 pixels
of context (Appendix A), a fine-tuning step, the SVMs with hard negative mining and the box
regressors on worked cases, and the detections' format."""

import pytest
import torch

from replicate.models import build
from replicate.models.rcnn import fit_svm, dilate
from tests.fakes import proposal_batch


def tiny(**kw):
    torch.manual_seed(0)
    return build("rcnn_alexnet", num_classes=3, width_mult=0.125, warp_size=99, **kw)


def test_alexnet_feature_sizes_match_section_3_1():
    with torch.device("meta"):
        model = build("rcnn_alexnet", num_classes=20)
        vgg = build("rcnn_vgg16", num_classes=20)
    assert model.pool5_shape == (256, 6, 6)  # "6 x 6 x 256 = 9216-dimensional"
    assert model.fc6.weight.shape == (4096, 9216) and model.fc7.weight.shape == (4096, 4096)
    assert sum(p.numel() for p in model.fc7.parameters()) == 16781312  # "about 16.8 million"
    # Caffe's reference AlexNet conv layers (conv2, 4, 5 in two groups): 2,334,080 parameters.
    assert sum(p.numel() for p in model.features.parameters()) == 2334080
    assert vgg.pool5_shape == (512, 7, 7) and vgg.fc6.in_features == 25088
    assert model.cls_score.out_features == 21  # fine-tuning's N + 1 classes


def test_warp_keeps_16_pixels_of_context():
    box = torch.tensor([[40.0, 20.0, 80.0, 100.0]])
    grown = dilate(box, 227, 16)
    # The box fills 227 - 32 = 195 of the 227 warped pixels, in both directions.
    torch.testing.assert_close((box[0, 2:] - box[0, :2]) / (grown[0, 2:] - grown[0, :2]), torch.tensor([195 / 227] * 2))
    image = torch.zeros(3, 160, 160)
    image[:, 20:100, 40:80] = 1.0
    model = build("rcnn_alexnet", num_classes=3, width_mult=0.125, warp_size=227)
    window = model.warp(image, box)[0, 0]
    inside = torch.nonzero(window > 0.5)
    assert inside[:, 0].min().item() in (15, 16, 17) and inside[:, 0].max().item() in (209, 210, 211)
    assert inside[:, 1].min().item() in (15, 16, 17) and inside[:, 1].max().item() in (209, 210, 211)


def test_fine_tuning_step_reaches_the_first_layer():
    model = tiny().train()
    images, targets = proposal_batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_cls"} and torch.isfinite(losses["loss_cls"])
    losses["loss_cls"].backward()
    assert model.features[0].weight.grad.abs().sum() > 0


def test_svm_with_hard_negative_mining_separates_a_toy_set():
    generator = torch.Generator().manual_seed(0)
    positives = torch.randn(20, 5, generator=generator, dtype=torch.float64) + torch.tensor([3.0, 0, 0, 0, 0]).double()
    negatives = torch.randn(400, 5, generator=generator, dtype=torch.float64) - torch.tensor([3.0, 0, 0, 0, 0]).double()
    w, b = fit_svm(positives, negatives, c=1.0, positive_weight=2.0, w=torch.zeros(5, dtype=torch.float64),
                    b=torch.zeros((), dtype=torch.float64))
    assert ((positives @ w + b) > 0).all() and ((negatives @ w + b) < 0).float().mean() > 0.99
    model = tiny(svm_c=1.0)  # the paper's C = 0.001 suits thousands of 4096-d fc7 features, not this toy set
    w, b, hard = model._svm(positives, negatives, generator)
    assert ((positives @ w + b) > 0).float().mean() > 0.9 and hard >= 0


def test_post_hoc_stages_and_detections():
    model = tiny(score_threshold=-1e9, detections_per_image=4)
    images, targets = proposal_batch()
    model.fit_post_hoc([(images, targets)])
    assert model.svm_weight.abs().sum() > 0
    assert model.bbox_weight[1].abs().sum() > 0 and model.bbox_weight[0].abs().sum() == 0  # only class 2 has boxes
    model.eval()
    proposals = [t["proposals"] for t in targets]
    out = model(images, proposals=proposals)
    assert len(out) == 2 and all(len(d["boxes"]) <= 4 for d in out)
    assert set(out[0]["labels"].tolist()) <= {1, 2, 3}
    model.box_regression = False
    plain = model(images, proposals=proposals)
    # Without stage 3 the detections are proposals (clipped to the image).
    for d, p in zip(plain, proposals):
        assert all(any(torch.allclose(box, q) for q in p) for box in d["boxes"])
    with pytest.raises(ValueError, match="proposals"):
        model(images)


def test_svms_and_regressors_see_features_at_norm_20_whatever_the_network_scale():
    """The released code's convention: C and lambda hold at an average feature norm of 20, so a
    network whose fc7 (or pool5) is k times larger gives the same detections."""
    images, targets = proposal_batch()
    proposals = [t["proposals"] for t in targets]
    detections, stats = [], []
    for k in (1.0, 7.0):
        model = tiny(score_threshold=-1e9, detections_per_image=4)
        with torch.no_grad():  # ReLU layers are positively homogeneous: fc7 and pool5 both scale by k
            model.fc7.weight.mul_(k), model.fc7.bias.mul_(k)
            conv5 = [m for m in model.features if isinstance(m, torch.nn.Conv2d)][-1]
            conv5.weight.mul_(k), conv5.bias.mul_(k)
            model.fc6.weight.div_(k)
        stats.append(model.fit_post_hoc([(images, targets)]))
        detections.append(model.eval()(images, proposals=proposals))
    assert stats[1]["svm_feature_norm"] == pytest.approx(7 * stats[0]["svm_feature_norm"], rel=1e-5)
    assert stats[1]["bbox_feature_norm"] == pytest.approx(7 * stats[0]["bbox_feature_norm"], rel=1e-5)
    for a, b in zip(*detections):
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
