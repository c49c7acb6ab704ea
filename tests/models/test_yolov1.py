"""YOLO v1 (Redmon et al. 2016): the 7 x 7 x 30 output and the layer counts of Sec. 2.1 / Fig. 3,
the pre-training network's operations against YOLO9000 Sec. 3, Eq. 3 on hand-made predictions,
decoding, a training step and the detections' format."""

import math

import pytest
import torch
from torch import nn

from replicate.measure.complexity import count
from replicate.models import build, default_input_size
from replicate.models.yolov1 import YOLOv1, yolov1_loss


pytestmark = pytest.mark.usefixtures("one_thread")


def on_meta(name, **kw):
    with torch.device("meta"):
        return build(name, **kw)


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def tiny(name="yolov1", **kw):
    torch.manual_seed(0)
    return build(name, num_classes=3, width_mult=0.0625, input_size=128, **kw)


# -- architecture and counts ---------------------------------------------------------------------

def test_output_is_the_papers_7x7x30_tensor_for_voc():
    # Sec. 2: S = 7, B = 2, C = 20 -> "a 7 x 7 x 30 tensor"; counting runs the raw network.
    model = on_meta("yolov1")
    assert default_input_size("yolov1") == (3, 448, 448)
    assert model.network(torch.zeros(1, 3, 448, 448, device="meta")).shape == (1, 7, 7, 30)
    assert model(torch.zeros(2, 3, 448, 448, device="meta")).shape == (2, 7, 7, 30)
    assert on_meta("yolov1", grid_size=5, boxes_per_cell=3, num_classes=80).network(
        torch.zeros(1, 3, 448, 448, device="meta")).shape == (1, 5, 5, 95)


def test_24_convolutions_and_2_fully_connected_layers():
    model = on_meta("yolov1")
    layers = convs(model)
    assert len(layers) == 24  # Sec. 2.1
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(7 * 7 * 1024, 4096), (4096, 7 * 7 * 30)]
    # Fig. 3: the first layer is 7x7x64-s-2, one 3x3x1024 has stride 2, the rest stride 1.
    assert (layers[0].kernel_size, layers[0].out_channels, layers[0].stride) == ((7, 7), 64, (2, 2))
    assert sum(m.stride == (2, 2) for m in layers) == 2
    assert sum(m.kernel_size == (1, 1) for m in layers) == 9
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    # Sec. 2.2: leaky ReLU 0.1, dropout .5 after the first connected layer, no batch norm.
    assert {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)} == {0.1}
    head = list(model.network.head)
    assert isinstance(head[3], nn.Dropout) and head[3].p == 0.5 and isinstance(head[1], nn.Linear)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in on_meta("yolov1", batch_norm=True).modules()) == 24


def test_parameter_and_operation_counts_at_448():
    c = count(on_meta("yolov1"), (3, 448, 448))
    assert (c.params, c.macs) == (271_703_550, 20_285_153_280)
    assert round(c.gops, 2) == 40.57


def test_fast_yolo_has_nine_convolutions_with_fewer_filters():
    model = on_meta("yolov1_fast")
    layers = convs(model)
    assert len(layers) == 9  # Sec. 2.1: "9 instead of 24"
    assert [m.out_channels for m in layers] == [16, 32, 64, 128, 256, 512, 1024, 1024, 1024]
    assert model.network(torch.zeros(1, 3, 448, 448, device="meta")).shape == (1, 7, 7, 30)
    c = count(model, (3, 448, 448))
    assert (c.params, c.macs) == (45_089_374, 2_418_728_960)
    # Without yolo-tiny.cfg's 256-wide linear layer it has YOLO's two fully-connected layers.
    assert len([m for m in on_meta("yolov1_fast", fc_bottleneck=None).modules() if isinstance(m, nn.Linear)]) == 2


def test_pretraining_network_is_the_first_20_convolutions_at_224():
    classifier = on_meta("yolov1_darknet_imagenet")
    assert default_input_size("yolov1_darknet_imagenet") == (3, 224, 224)
    assert len(convs(classifier)) == 20
    assert classifier(torch.zeros(1, 3, 224, 224, device="meta")).shape == (1, 1000)
    # Its layers carry the detector's names: ImageNet weights load into `network.backbone`.
    detector = on_meta("yolov1")
    ours = {k: v.shape for k, v in classifier.state_dict().items() if k.startswith("backbone.")}
    assert ours == {f"backbone.{k}": v.shape for k, v in detector.network.backbone.state_dict().items()}


def test_pretraining_network_operations_match_yolo9000():
    # YOLO9000 Sec. 3: YOLO's custom network uses "8.52 billion operations for a forward pass"
    # (two per multiply-add), counted with the released classifier layout (1x1 convolution to the
    # classes before the average pool). Sec. 2.2's pool-then-fully-connected layout: 8.42.
    conv = count(on_meta("yolov1_darknet_imagenet", classifier="conv"), (3, 224, 224))
    fc = count(on_meta("yolov1_darknet_imagenet"), (3, 224, 224))
    assert round(conv.gops, 2) == 8.52
    assert round(fc.gops, 2) == 8.42
    assert conv.params == fc.params == 23_428_136


def test_smaller_input_keeps_the_s_by_s_output():
    # The reduced profile: 128 px in, a 2 x 2 map before the FC layer, still 7 x 7 x (5B + C).
    model = on_meta("yolov1", num_classes=10, input_size=128, width_mult=0.125)
    assert model.network.head[1].in_features == 2 * 2 * 128
    assert model.network(torch.zeros(3, 3, 128, 128, device="meta")).shape == (3, 7, 7, 20)


# -- Eq. 3 on hand-made predictions ---------------------------------------------------------------

S, B, C, SIZE = 7, 2, 3, 448
CELL = SIZE / S  # 64 px


def perfect(box_xyxy, label, cell, predictor=0):
    """raw [1, S, S, 5B + C] that predicts `box_xyxy` (network pixels) exactly with `predictor`
    of `cell` = (row, col), confidence 1 there, 0 elsewhere, class `label` (1..C) with p = 1."""
    raw = torch.zeros(1, S, S, 5 * B + C)
    x1, y1, x2, y2 = box_xyxy
    row, col = cell
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    p = 5 * predictor
    raw[0, row, col, p:p + 5] = torch.tensor([cx / CELL - col, cy / CELL - row, math.sqrt(w / SIZE),
                                              math.sqrt(h / SIZE), 1.0])
    raw[0, row, col, 5 * B + label - 1] = 1.0
    return raw


BOX = (150.0, 170.0, 250.0, 330.0)  # centre (200, 250): cell row 3, col 3
TARGET = [{"boxes": torch.tensor([BOX]), "labels": torch.tensor([2])}]


def approx(value):
    return pytest.approx(value, abs=1e-6)  # float32 arithmetic


def loss(raw, targets=TARGET):
    return yolov1_loss(raw, targets, boxes_per_cell=B, input_size=SIZE, lambda_coord=5.0, lambda_noobj=0.5)


def test_a_perfect_prediction_costs_nothing():
    terms = loss(perfect(BOX, 2, (3, 3)))
    assert set(terms) == {"loss_xy", "loss_wh", "loss_obj", "loss_noobj", "loss_cls"}
    assert all(v.item() == approx(0) for v in terms.values())


def test_no_object_confidences_cost_lambda_noobj_times_their_square():
    raw = perfect(BOX, 2, (3, 3))
    raw[0, 3, 3, 5 + 4] = 0.4  # the other predictor of the object's cell is not responsible
    raw[0, 0, 6, 4] = 0.2  # a predictor of an empty cell
    terms = loss(raw)
    assert terms["loss_noobj"].item() == approx(0.5 * (0.4 ** 2 + 0.2 ** 2))
    assert [terms[k].item() for k in ("loss_xy", "loss_wh", "loss_cls")] == approx([0, 0, 0])


def test_coordinates_cost_lambda_coord_on_offsets_and_square_roots():
    raw = perfect(BOX, 2, (3, 3))
    raw[0, 3, 3, 0] += 0.1  # x offset in the cell
    raw[0, 3, 3, 3] += 0.05  # sqrt(h)
    terms = loss(raw)
    assert terms["loss_xy"].item() == approx(5 * 0.1 ** 2)
    assert terms["loss_wh"].item() == approx(5 * 0.05 ** 2)
    # The confidence target is the IoU of the moved box with the truth (Sec. 2), by hand:
    x_shift = 0.1 * CELL
    h = (math.sqrt(160 / SIZE) + 0.05) ** 2 * SIZE
    inter = (100 - x_shift) * min(h, 160.0)
    iou = inter / (100 * 160 + 100 * h - inter)
    assert terms["loss_obj"].item() == approx((1 - iou) ** 2)


def test_class_probabilities_are_sum_squared_per_cell_with_an_object():
    raw = perfect(BOX, 2, (3, 3))
    raw[0, 3, 3, 10:13] = torch.tensor([0.1, 0.8, 0.3])
    raw[0, 0, 0, 10:13] = 5.0  # a cell without object: its class outputs are free
    assert loss(raw)["loss_cls"].item() == approx(0.1 ** 2 + 0.2 ** 2 + 0.3 ** 2)


def test_the_predictor_with_the_highest_current_iou_is_responsible():
    raw = perfect(BOX, 2, (3, 3), predictor=1)  # predictor 1 is exact ...
    raw[0, 3, 3, 0:5] = torch.tensor([0.2, 0.9, 0.1, 0.1, 0.7])  # ... predictor 0 is far off
    terms = loss(raw)
    assert [terms[k].item() for k in ("loss_xy", "loss_wh", "loss_obj")] == approx([0, 0, 0])
    assert terms["loss_noobj"].item() == approx(0.5 * 0.7 ** 2)


def test_a_cell_holds_the_first_of_the_objects_centred_in_it():
    other = (180.0, 200.0, 230.0, 290.0)  # also centred in cell (3, 3), class 1
    raw = perfect(BOX, 2, (3, 3))
    first = [{"boxes": torch.tensor([BOX, other]), "labels": torch.tensor([2, 1])}]
    assert [v.item() for v in loss(raw, first).values()] == approx([0.0] * 5)
    second = [{"boxes": torch.tensor([other, BOX]), "labels": torch.tensor([1, 2])}]
    assert loss(raw, second)["loss_cls"].item() == approx(2.0)


def test_losses_are_averaged_over_the_images_of_a_batch():
    raw = perfect(BOX, 2, (3, 3))
    raw[0, 3, 3, 0] += 0.2
    one = loss(raw)
    two = loss(torch.cat([raw, raw]), TARGET * 2)
    assert all(two[k].item() == pytest.approx(one[k].item()) for k in one)


# -- decoding, training, evaluation ----------------------------------------------------------------

def test_decoding_multiplies_class_probability_and_confidence_and_maps_to_the_image():
    model = YOLOv1(num_classes=C, width_mult=0.0625, input_size=SIZE, score_threshold=0.05).eval()
    raw = perfect(BOX, 2, (3, 3))
    raw[0, 3, 3, 4] = 0.9  # confidence
    raw[0, 3, 3, 10:13] = torch.tensor([0.0, 0.5, 0.0])
    # The image was 896 x 224 (W x H): network pixels scale by (0.5, 2).
    out = model.decode(raw, torch.tensor([[0.5, 2.0]]), [(224, 896)])[0]
    assert out["labels"].tolist() == [2] and out["labels"].dtype == torch.int64
    assert out["scores"].tolist() == pytest.approx([0.45])
    assert out["boxes"][0].tolist() == pytest.approx([300.0, 85.0, 500.0, 165.0], abs=1e-3)


def test_training_step_is_finite_and_reaches_the_first_layer():
    model = tiny().train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 160)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 64.0, 120.0, 110.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images, targets)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    first = convs(model)[0]
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


def test_loss_decreases_on_one_fixed_image():
    model = tiny("yolov1_fast").train()
    model.network.head[4].p = 0.0  # no dropout noise in a 20-step check
    images = [torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 80.0, 100.0]]), "labels": torch.tensor([2])}]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    history = []
    for _ in range(20):
        loss_value = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss_value.backward()
        optimizer.step()
        history.append(loss_value.item())
    assert history[-1] < 0.5 * history[0]


def test_evaluation_returns_one_detection_dict_per_image():
    model = tiny(detections_per_image=7, score_threshold=0.0).eval()
    images = [torch.rand(3, 128, 128), torch.rand(3, 80, 200)]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, image in zip(out, images):
        n = det["boxes"].shape[0]
        assert 0 < n <= 7 and det["boxes"].shape == (n, 4) and det["scores"].shape == (n,)
        assert det["labels"].dtype == torch.int64 and set(det["labels"].tolist()) <= {1, 2, 3}
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        h, w = image.shape[-2:]
        assert (det["boxes"] >= 0).all() and (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()
