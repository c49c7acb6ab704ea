"""Darknet-53 and YOLOv3 (Redmon & Farhadi 2018, arXiv 1804.02767) against the paper."""

import math

import pytest
import torch
from torch import nn

from replicate import models
from replicate.measure.complexity import count
from replicate.models.darknet53 import Residual
from replicate.models.yolov3 import COCO_ANCHORS


pytestmark = pytest.mark.usefixtures("one_thread")


def on_meta(name, **kw):
    with torch.device("meta"):  # counting needs shapes only
        return models.build(name, **kw)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# -- Darknet-53 ------------------------------------------------------------------------------------

def test_darknet53_is_table_1():
    model = on_meta("darknet53")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # 52 convolutions + the connected layer = 53 layers (Sec. 2.4).
    assert len(convs) == 52 and isinstance(model.fc, nn.Linear) and model.fc.out_features == 1000
    assert [sum(isinstance(m, Residual) for m in stage) for stage in model.stages] == [1, 2, 8, 8, 4]
    assert [stage[0][0].out_channels for stage in model.stages] == [64, 128, 256, 512, 1024]
    assert all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1
               for m in model.modules() if isinstance(m, (nn.LeakyReLU, nn.ReLU, nn.Mish)))


def test_darknet53_operations_table_2():
    # Table 2: 18.7 Bn Ops at 256 x 256 (two per multiply-add). With the 1000-way layer applied at
    # the 8 x 8 positions before pooling (as Darknet-19's classifier), 18.70; Table 1's order
    # (pool, then connected) gives 18.57, i.e. 0.131 Bn = 2 x 1024 x 1000 x 63 less.
    before = count(on_meta("darknet53", classifier_before_pool=True), (3, 256, 256))
    after = count(on_meta("darknet53"), (3, 256, 256))
    assert round(before.gops, 1) == 18.7
    assert before.macs == 9_349_627_904 and after.macs == 9_285_115_904
    assert before.macs - after.macs == 1024 * 1000 * 63
    assert before.params == after.params == 41_609_928


def test_darknet53_classifier_order_is_the_same_function():
    torch.manual_seed(0)
    model = models.build("darknet53", width_mult=0.0625, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled_first = model(x)
        model.classifier_before_pool = True
        assert torch.allclose(model(x), pooled_first, atol=1e-5)
    assert pooled_first.shape == (2, 7)


# -- YOLOv3: architecture and counts ------------------------------------------------------------------

@pytest.mark.parametrize("size", [416, 608])
def test_output_tensors_at_416_and_608(size):
    # Sec. 2.3: N x N x [3 x (4 + 1 + 80)] at three scales (strides 8, 16, 32).
    outputs = on_meta("yolov3", num_classes=80)(torch.zeros(1, 3, size, size, device="meta"))
    assert [tuple(o.shape) for o in outputs] == [(1, 255, size // s, size // s) for s in (8, 16, 32)]
    voc = on_meta("yolov3")(torch.zeros(2, 3, size, size, device="meta"))
    assert [o.shape[1] for o in voc] == [3 * (4 + 1 + 20)] * 3


def test_yolov3_counts():
    # Exact counts of this model (the released yolov3.cfg's widths, 80 classes): 61,949,149
    # parameters and 65.864 billion operations at 416, Darknet's own printout for yolov3.cfg.
    c = count(on_meta("yolov3", num_classes=80), (3, 416, 416))
    assert c.params == 61_949_149
    assert c.macs == 32_932_037_632 and round(c.gops, 3) == 65.864
    assert count(on_meta("yolov3", num_classes=80), (3, 608, 608)).macs == 70_345_950_208
    # The backbone is Darknet-53 without its classifier.
    body = on_meta("yolov3").network.backbone
    assert sum(p.numel() for p in body.parameters()) == 41_609_928 - 1024 * 1000 - 1000


def test_anchors_are_the_papers_nine_clusters():
    model = models.build("yolov3", width_mult=0.0625)
    assert model.anchors.tolist() == [list(map(float, a)) for a in COCO_ANCHORS]
    assert COCO_ANCHORS[0] == (10, 13) and COCO_ANCHORS[-1] == (373, 326)
    half = models.build("yolov3", width_mult=0.0625, anchor_scale=0.5)
    assert half.anchors[-1].tolist() == [186.5, 163.0]
    # Three per scale, small priors at stride 8.
    assert half.scale_anchors(0).tolist() == [[5.0, 6.5], [8.0, 15.0], [16.5, 11.5]]


# -- YOLOv3: loss --------------------------------------------------------------------------------------

def tiny(**kw):
    torch.manual_seed(0)
    kw = {"num_classes": 3, "width_mult": 0.0625, "input_size": 128, **kw}
    return models.build("yolov3", **kw)


def perfect_outputs(model, box, label, *, size=128, confident=20.0):
    """Raw maps whose decoded prediction at the assigned prior is exactly `box` (network pixels)."""
    outputs = [torch.full((1, 3 * (5 + model.num_classes), size // s, size // s), -confident) for s in (8, 16, 32)]
    [(scale, a, j, i)] = [(s, int(a[0]), int(j[0]), int(i[0]))
                          for s, (n, a, j, i) in enumerate(model.assign(box[None], [o.shape[-2:] for o in outputs]))
                          if n.numel()]
    stride, (pw, ph) = model.strides[scale], model.scale_anchors(scale)[a].tolist()
    cx, cy = (box[0] + box[2]).item() / 2 / stride, (box[1] + box[3]).item() / 2 / stride
    w, h = (box[2] - box[0]).item(), (box[3] - box[1]).item()
    values = [logit(cx - i), logit(cy - j), math.log(w / pw), math.log(h / ph), confident]
    values += [confident if c == label - 1 else -confident for c in range(model.num_classes)]
    outputs[scale].view(1, 3, -1, *outputs[scale].shape[-2:])[0, a, :, j, i] = torch.tensor(values)
    return outputs, (scale, a, j, i)


def test_perfect_prediction_costs_nothing():
    model = tiny()
    box = torch.tensor([40.0, 30.0, 75.0, 90.0])  # 35 x 60: best prior (30, 61) at stride 16
    outputs, (scale, a, j, i) = perfect_outputs(model, box, 2)
    assert (scale, a, j, i) == (1, 0, 3, 3)
    losses = model.compute_loss(outputs, [{"boxes": box[None], "labels": torch.tensor([2])}])
    assert losses["loss_box"].item() == pytest.approx(0.0, abs=1e-10)
    # Objectness and classes are logistic: at logits +-20 each output costs at most log(1 + e^-20).
    per_output = math.log1p(math.exp(-20.0))
    assert losses["loss_cls"].item() <= 3 * per_output * 1.0001
    assert losses["loss_obj"].item() <= 3 * (16 * 16 + 8 * 8 + 4 * 4) * per_output * 1.0001


def test_coordinate_loss_is_squared_error_of_the_inverted_equations():
    # Sec. 2.1: all outputs t = 0 -> sigma = 0.5 and e^0 = 1 prior; the SSE is worked by hand.
    model = tiny()
    box = torch.tensor([40.0, 30.0, 75.0, 90.0])  # centre (57.5, 60) -> stride-16 cell (3, 3)
    outputs = [torch.zeros(1, 24, 128 // s, 128 // s) for s in (8, 16, 32)]
    losses = model.compute_loss(outputs, [{"boxes": box[None], "labels": torch.tensor([1])}])
    ox, oy = 57.5 / 16 - 3, 60 / 16 - 3
    expected = (0.5 - ox) ** 2 + (0.5 - oy) ** 2 + math.log(35 / 30) ** 2 + math.log(60 / 61) ** 2
    assert losses["loss_box"].item() == pytest.approx(expected, rel=1e-5)
    # Three independent logistic classifiers at 0: 3 log 2 (binary cross-entropy, Sec. 2.2).
    assert losses["loss_cls"].item() == pytest.approx(3 * math.log(2), rel=1e-5)


def test_losses_divide_by_the_number_of_images():
    model = tiny()
    box = torch.tensor([[40.0, 30.0, 75.0, 90.0]])
    outputs = [torch.zeros(1, 24, 128 // s, 128 // s) for s in (8, 16, 32)]
    one = model.compute_loss(outputs, [{"boxes": box, "labels": torch.tensor([1])}])
    two = model.compute_loss([torch.cat([o, o]) for o in outputs], [{"boxes": box, "labels": torch.tensor([1])}] * 2)
    for key in one:
        assert two[key].item() == pytest.approx(one[key].item(), rel=1e-6)


def test_ignore_threshold_drops_objectness_of_good_but_not_best_priors():
    # Sec. 2.1: a prior that is not the best but overlaps a ground truth by more than 0.5 costs no
    # objectness loss. Truth 30 x 61 at the centre of stride-16 cell (3, 3): its best prior is
    # (30, 61) there; the (33, 23) prior at stride 8 does not overlap it by 0.5, but the (59, 119)
    # prior at stride 16 in the same cell overlaps it by 30*61 / (59*119) = 0.26: nothing is
    # ignored at 0.5, and (59, 119) is ignored with a 0.2 threshold.
    box = torch.tensor([[41.0, 25.5, 71.0, 86.5]])
    target = [{"boxes": box, "labels": torch.tensor([1])}]
    outputs = [torch.zeros(1, 24, 128 // s, 128 // s) for s in (8, 16, 32)]
    strict, loose = tiny(ignore_thresh=0.5), tiny(ignore_thresh=0.2)
    raised = [o.clone() for o in outputs]
    raised[1].view(1, 3, 8, 8, 8)[0, 1, 4, 3, 3] = 5.0  # objectness of prior (59, 119), cell (3, 3)
    delta = lambda m: (m.compute_loss(raised, target)["loss_obj"] - m.compute_loss(outputs, target)["loss_obj"]).item()
    assert delta(strict) == pytest.approx(math.log1p(math.exp(5.0)) - math.log(2), rel=1e-5)
    assert delta(loose) == pytest.approx(0.0, abs=1e-5)


def test_ignore_on_predictions_uses_the_predicted_boxes():
    # Darknet's variant: a prediction moved onto the truth is ignored, whatever its prior.
    model = tiny(ignore_iou_of="prediction")
    box = torch.tensor([40.0, 30.0, 75.0, 90.0])
    outputs, (scale, a, j, i) = perfect_outputs(model, box, 1, confident=0.0)
    # Copy the assigned prediction's box onto a neighbouring prior of the same cell.
    view = outputs[scale].view(1, 3, 8, *outputs[scale].shape[-2:])
    other = (a + 1) % 3
    cx, cy = 57.5 / 16 - i, 60 / 16 - j
    w_o, h_o = model.scale_anchors(scale)[other].tolist()
    view[0, other, :4, j, i] = torch.tensor([logit(cx), logit(cy), math.log(35 / w_o), math.log(60 / h_o)])
    target = [{"boxes": box[None], "labels": torch.tensor([1])}]
    base = model.compute_loss(outputs, target)["loss_obj"]
    view[0, other, 4, j, i] = 6.0
    assert model.compute_loss(outputs, target)["loss_obj"].item() == pytest.approx(base.item(), abs=1e-5)


def test_images_without_objects_cost_only_objectness():
    model = tiny()
    outputs = [torch.zeros(2, 24, 128 // s, 128 // s) for s in (8, 16, 32)]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model.compute_loss(outputs, [empty, empty])
    assert losses["loss_box"].item() == 0.0 and losses["loss_cls"].item() == 0.0
    assert losses["loss_obj"].item() == pytest.approx(3 * (256 + 64 + 16) * math.log(2), rel=1e-5)


# -- YOLOv3: training and evaluation ----------------------------------------------------------------

def fixed_batch(n=4):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 50.0, 70.0], [60.0, 64.0, 120.0, 100.0]]),
                "labels": torch.tensor([1, 3]), "difficult": torch.tensor([False, False])} for _ in range(n)]
    return images, targets


def test_training_step_tiny_width():
    model = tiny(anchor_scale=128 / 416).train()
    images, targets = fixed_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    history = []
    for _ in range(8):
        losses = model(images, targets)
        assert set(losses) == {"loss_box", "loss_obj", "loss_cls"}
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        assert model.network.backbone.stem[0].weight.grad.abs().sum() > 0
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0]


def test_eval_returns_detections_in_image_pixels():
    model = tiny(anchor_scale=128 / 416).eval()
    images = [torch.rand(3, 100, 150), torch.rand(3, 128, 128)]
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det, image in zip(detections, images):
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert 0 < n <= 100 and det["scores"].shape == (n,) and det["labels"].dtype == torch.int64
        assert det["labels"].min() >= 1 and det["labels"].max() <= 3
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all()) and det["scores"].min() > 0.005
        h, w = image.shape[-2:]
        assert det["boxes"][:, 2].max() <= w + 1e-3 and det["boxes"][:, 3].max() <= h + 1e-3
        assert det["boxes"].min() >= -1e-3


def test_multiscale_training_changes_the_input_every_n_batches():
    model = tiny(multiscale_sizes=[64, 96, 128], multiscale_every=2)
    torch.manual_seed(3)
    sizes = [model._next_train_size() for _ in range(12)]
    assert all(s in (64, 96, 128) for s in sizes) and len(set(sizes)) > 1
    assert all(sizes[k] == sizes[k + 1] for k in range(0, 12, 2))


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        models.build("yolov3", width_mult=0.0625, input_size=100)
    with pytest.raises(ValueError, match="ignore_iou_of"):
        models.build("yolov3", width_mult=0.0625, ignore_iou_of="anchor")


def test_the_full_profile_trains_table_2s_classifiers_and_starts_the_detector_from_darknet53():
    from replicate.config import compose

    detector = compose("yolov3", "full", ["experiment=yolov3_coco"])
    assert detector.model.backbone_from == "darknet53_256"
    classifier = compose("yolov3", "full", ["experiment=darknet53_256"])
    assert classifier.model.name == "darknet53" and classifier.data.image_size == 256 and classifier.data.eval_crops == 1
    assert {compose("yolov3", "full", [f"experiment={n}"]).model.name
            for n in ("darknet19_256", "resnet101_256", "resnet152_256")} == {"darknet19", "resnet101", "resnet152"}
    assert compose("yolov3", "reduced", ["experiment=yolov3_coco"]).model.backbone_from is None
    # The classifier's layers carry the detector backbone's names (its 1000-way layer is left over).
    trained = models.build("darknet53", width_mult=1 / 16).state_dict()
    backbone = models.build("yolov3", num_classes=3, width_mult=1 / 16).network.backbone.state_dict()
    assert set(backbone) < set(trained) and all(trained[k].shape == v.shape for k, v in backbone.items())
