"""Darknet-19 and YOLOv2 (Redmon & Farhadi 2017): Table 6's 5.58 billion operations, the 125-filter
VOC head and the passthrough of Sec. 2, direct location prediction, the region loss on hand-made
predictions, multi-scale training, dimension clusters, a training step and the detections."""

import math

import pytest
import torch
from torch import nn

from replicate.measure.complexity import count
from replicate.models import build, default_input_size
from replicate.models.yolov2 import (
    VOC_ANCHORS, YOLOv2, multiscale_size, yolov2_loss,
)
from replicate.ops.kmeans_anchors import average_iou, wh_iou


pytestmark = pytest.mark.usefixtures("one_thread")


def on_meta(name, **kw):
    with torch.device("meta"):
        return build(name, **kw)


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def logit(p):
    return math.log(p / (1 - p))


# -- Darknet-19 and the detector's layout --------------------------------------------------------

def test_darknet19_operations_match_table_6_and_yolov3_table_2():
    model = on_meta("darknet19")
    assert default_input_size("darknet19") == (3, 224, 224)
    # YOLO9000 Sec. 3: "Darknet-19 only requires 5.58 billion operations" (two per multiply-add).
    assert round(count(model, (3, 224, 224)).gops, 2) == 5.58
    # YOLOv3 Table 2 compares backbones at 256 x 256: Darknet-19, 7.29 Bn operations.
    assert round(count(model, (3, 256, 256)).gops, 2) == 7.29
    assert count(model, (3, 224, 224)).params == 20_842_376


def test_darknet19_has_19_convolutions_and_5_max_pools_with_batch_norm():
    model = on_meta("darknet19")
    layers = convs(model)
    assert len(layers) == 19
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 18  # all but the classifier
    assert [m.out_channels for m in layers if m.kernel_size == (1, 1)] == [64, 128, 256, 256, 512, 512, 1000]
    assert model(torch.zeros(2, 3, 224, 224, device="meta")).shape == (2, 1000)


def test_voc_head_has_125_filters_and_a_13_by_13_grid_at_416():
    model = on_meta("yolov2")
    assert default_input_size("yolov2") == (3, 416, 416)
    assert model.network.output.out_channels == 125  # Sec. 3: 5 boxes x (5 coordinates + 20 classes)
    assert model(torch.zeros(1, 3, 416, 416, device="meta")).shape == (1, 13, 13, 5, 25)
    assert on_meta("yolov2", num_classes=80).network.output.out_channels == 425


def test_three_3x3x1024_convolutions_and_the_passthrough():
    net = on_meta("yolov2").network
    # Darknet-19 minus its classifier, then three 3x3x1024 layers (the last after the passthrough).
    assert len(convs(net)) == 18 + 3 + 1
    fine, deep = net.backbone(torch.zeros(1, 3, 416, 416, device="meta"))
    assert deep.shape == (1, 1024, 13, 13)
    assert fine.shape == (1, 512, 26, 26)
    assert net.reorg(fine).shape == (1, 2048, 13, 13)  # Sec. 2: 26 x 26 x 512 -> 13 x 13 x 2048
    assert net.fuse[0].in_channels == 2048 + 1024 and net.fuse[0].out_channels == 1024
    # The later released cfg reduces to 64 channels first: 4 x 64 + 1024.
    assert on_meta("yolov2", passthrough_channels=64).network.fuse[0].in_channels == 256 + 1024


def test_passthrough_can_be_switched_off_for_table_2():
    net = on_meta("yolov2", passthrough=False).network
    assert net.fuse[0].in_channels == 1024
    assert net(torch.zeros(1, 3, 416, 416, device="meta")).shape == (1, 13, 13, 5, 25)


def test_detector_counts_at_416():
    paper = count(on_meta("yolov2"), (3, 416, 416))
    assert paper.params == 67_137_565 and round(paper.gops, 2) == 34.90
    released = count(on_meta("yolov2", passthrough_channels=64), (3, 416, 416))
    assert released.params == 50_655_389 and round(released.gops, 2) == 29.36


def test_darknet19_weights_load_into_the_detector():
    classifier, detector = build("darknet19", width_mult=0.125), build("yolov2", num_classes=3, width_mult=0.125)
    detector.network.backbone.load_state_dict(classifier.backbone.state_dict())  # strict: same names
    assert torch.equal(detector.network.backbone.stage1[0][0].weight, classifier.backbone.stage1[0][0].weight)


def test_voc_anchors_are_five_priors_in_grid_cells():
    assert len(VOC_ANCHORS) == 5 and all(0 < w < 20 and 0 < h < 20 for w, h in VOC_ANCHORS)
    assert torch.equal(YOLOv2(width_mult=0.0625).anchors, torch.tensor(VOC_ANCHORS))


# -- direct location prediction and decoding -----------------------------------------------------

ANCHORS = [[2.0, 2.0], [1.0, 3.0]]
SIZE = 128  # a 4 x 4 grid of 32-pixel cells


def tiny(**kw):
    torch.manual_seed(0)
    kw = {"num_classes": 3, "width_mult": 0.0625, "input_size": SIZE, "anchors": ANCHORS, **kw}
    return build("yolov2", **kw)


def empty_raw(n=1):
    raw = torch.zeros(n, 4, 4, 2, 8)
    raw[..., 4] = -20.0  # no objectness anywhere
    return raw


def test_decoding_follows_the_direct_location_equations():
    model = tiny(score_threshold=0.3).eval()
    raw = empty_raw()
    # Cell (c_x, c_y) = (2, 1), prior 0 (2 x 2 cells).
    raw[0, 1, 2, 0] = torch.tensor([logit(0.25), logit(0.75), math.log(1.5), 0.0, logit(0.8), 0.0, math.log(3), 0.0])
    out = model.decode(raw, torch.tensor([[1.0, 1.0]]), [(SIZE, SIZE)])[0]
    # b_x = sigma(t_x) + c_x = 2.25, b_y = 1.75, b_w = 2 e^{ln 1.5} = 3, b_h = 2 cells of 32 px.
    assert out["boxes"].tolist() == [pytest.approx([24.0, 24.0, 120.0, 88.0], abs=1e-4)]
    # score = sigma(t_o) x softmax: 0.8 x 3 / 5.
    assert out["labels"].tolist() == [2] and out["scores"].tolist() == pytest.approx([0.48])


def test_region_proposal_style_offsets_when_direct_location_is_off():
    # x = x_a + t_x w_a with the anchor centred in its cell: t = (0.25, -0.5) moves prior 0
    # (2 x 2 cells) of cell (2, 1) from (2.5, 1.5) to (3.0, 0.5).
    model = tiny(score_threshold=0.3, direct_location=False).eval()
    raw = empty_raw()
    raw[0, 1, 2, 0] = torch.tensor([0.25, -0.5, 0.0, 0.0, 20.0, 0.0, 20.0, 0.0])
    out = model.decode(raw, torch.tensor([[1.0, 1.0]]), [(SIZE, SIZE)])[0]
    assert out["boxes"].tolist() == [pytest.approx([64.0, 0.0, 128.0, 48.0], abs=1e-4)]  # clipped at y = 0
    # The same truth as below costs nothing with t = 0 at its cell's centre ...
    raw = perfect()
    assert [v.item() for v in loss(raw, direct_location=False).values()] == approx([0.0] * 6)
    # ... and t_x = 0.1 is 0.1 x 2 cells off: squared error on t_x itself.
    raw[0, 1, 2, 0, 0] = 0.1
    weight = 2 - (2 / 4) * (2 / 4)
    assert loss(raw, direct_location=False)["loss_xy"].item() == approx(0.5 * weight * 0.1 ** 2)


# -- the region loss on hand-made predictions ------------------------------------------------------

BOX = [48.0, 16.0, 112.0, 80.0]  # centre (2.5, 1.5) cells, 2 x 2 cells: cell (row 1, col 2), prior 0
TARGET = [{"boxes": torch.tensor([BOX]), "labels": torch.tensor([2])}]


def perfect():
    raw = empty_raw()
    raw[0, 1, 2, 0, :5] = torch.tensor([0.0, 0.0, 0.0, 0.0, 20.0])
    raw[0, 1, 2, 0, 5:] = torch.tensor([-20.0, 20.0, -20.0])
    return raw


def loss(raw, targets=TARGET, anchors=ANCHORS, **kw):
    return yolov2_loss(raw, targets, torch.tensor(anchors), input_size=SIZE, **kw)


def approx(value):
    return pytest.approx(value, abs=1e-6)  # float32 arithmetic


def test_a_perfect_prediction_costs_nothing():
    terms = loss(perfect())
    assert set(terms) == {"loss_xy", "loss_wh", "loss_obj", "loss_noobj", "loss_cls", "loss_prior"}
    assert [v.item() for v in terms.values()] == approx([0.0] * 6)


def test_no_object_term_and_the_ignore_threshold():
    raw = perfect()
    raw[0, 3, 0, 1, 4] = 0.0  # a prediction far from the truth: sigma = 0.5
    assert loss(raw)["loss_noobj"].item() == approx(0.5 * 1.0 * 0.25)
    # Prior 1 of the truth's cell, 2 x 2.2 cells on the same centre: IoU 4 / 4.4 = 0.91 > 0.6,
    # so its objectness is left alone; with a threshold above 0.91 it is pushed to 0.
    anchors = [[2.0, 2.0], [2.0, 2.2]]
    raw = perfect()
    raw[0, 1, 2, 1, 4] = 0.0
    assert loss(raw, anchors=anchors)["loss_noobj"].item() == approx(0.0)
    assert loss(raw, anchors=anchors, ignore_threshold=0.95)["loss_noobj"].item() == approx(0.125)


def test_coordinate_terms_weigh_small_boxes_more_and_objectness_regresses_to_the_iou():
    raw = perfect()
    raw[0, 1, 2, 0, 0] = logit(0.6)  # centre 0.1 cell right of the truth's
    raw[0, 1, 2, 0, 2] = math.log(1.1)  # 10 % wider than the prior (and the truth)
    terms = loss(raw)
    weight = 2 - (2 / 4) * (2 / 4)  # 2 - w h, as fractions of the image
    assert terms["loss_xy"].item() == approx(0.5 * weight * 0.1 ** 2)
    assert terms["loss_wh"].item() == approx(0.5 * weight * math.log(1.1) ** 2)
    # Predicted x from 1.5 to 3.7 cells, truth 1.5 to 3.5: IoU = 4 / 4.4.
    assert terms["loss_obj"].item() == approx(0.5 * 5.0 * (1 - 4 / 4.4) ** 2)


def test_class_term_is_the_softmax_cross_entropy():
    raw = perfect()
    raw[0, 1, 2, 0, 5:] = 0.0
    assert loss(raw)["loss_cls"].item() == approx(math.log(3))
    assert loss(raw, class_scale=2.0)["loss_cls"].item() == approx(2 * math.log(3))


def test_prior_term_pulls_unassigned_predictions_to_their_anchors():
    raw = perfect()
    raw[0, 0, 0, 1, 2] = 0.3  # t_w of a free prediction
    raw[0, 1, 2, 0, 0] = logit(0.6)  # the assigned prediction is not pulled to its prior
    assert loss(raw)["loss_prior"].item() == 0.0
    assert loss(raw, prior_term=True)["loss_prior"].item() == approx(0.5 * 0.01 * 0.3 ** 2)


def test_a_later_truth_in_the_same_cell_and_prior_overwrites_an_earlier_one():
    raw = perfect()
    targets = [{"boxes": torch.tensor([BOX, BOX]), "labels": torch.tensor([1, 2])}]
    assert loss(raw, targets)["loss_cls"].item() == approx(0.0)  # label 2, the later one, counts
    targets = [{"boxes": torch.tensor([BOX, BOX]), "labels": torch.tensor([2, 1])}]
    assert loss(raw, targets)["loss_cls"].item() == approx(40.0)


def test_losses_are_averaged_over_the_batch_and_empty_images_count():
    raw = perfect()
    raw[0, 3, 0, 1, 4] = 0.0
    raw[0, 1, 2, 0, 0] = logit(0.7)
    one = loss(raw)
    two = loss(torch.cat([raw, raw]), TARGET * 2)
    assert all(two[k].item() == approx(one[k].item()) for k in one)
    nothing = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    terms = loss(raw, nothing)
    assert terms["loss_xy"].item() == 0.0 and terms["loss_noobj"].item() > 0


# -- multi-scale training ---------------------------------------------------------------------------

def test_multiscale_draws_multiples_of_32_every_10_batches_reproducibly():
    sizes = (320, 352, 384, 416, 448, 480, 512, 544, 576, 608)  # Sec. 2: {320, 352, ..., 608}
    model = YOLOv2(width_mult=0.0625)
    assert model.multiscale_sizes == sizes and model.multiscale_every == 10
    drawn = [multiscale_size(b, sizes, 10, seed=0) for b in range(400)]
    assert all(d in sizes for d in drawn)
    assert all(len(set(drawn[p:p + 10])) == 1 for p in range(0, 400, 10))  # constant within a period
    assert len(set(drawn)) >= 5
    assert drawn == [multiscale_size(b, sizes, 10, seed=0) for b in range(400)]
    assert drawn != [multiscale_size(b, sizes, 10, seed=1) for b in range(400)]
    with pytest.raises(ValueError):
        YOLOv2(width_mult=0.0625, multiscale=[300, 608])


def test_training_uses_the_drawn_size_and_evaluation_the_input_size():
    model = tiny(multiscale=[64, 160], multiscale_every=1)
    seen = []
    model.network.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[-1]))
    images = [torch.rand(3, 100, 120)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])}]
    expected = []
    model.train()
    for _ in range(6):
        expected.append(model.training_size())
        model(images, targets)
    assert seen == expected and int(model.batches_seen) == 6 and int(model.images_seen) == 6
    assert set(expected) <= {64, 96, 128, 160}
    model.eval()
    with torch.no_grad():
        model(images)
    assert seen[-1] == SIZE
    assert tiny(multiscale=None).training_size() == SIZE


def test_prior_term_stops_after_12800_images():
    model = tiny().train()
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    assert model(images, targets)["loss_prior"].item() > 0
    model.images_seen.fill_(12800)
    assert model(images, targets)["loss_prior"].item() == 0.0


# -- dimension clusters --------------------------------------------------------------------------

def test_average_iou_is_the_mean_best_wh_iou():
    # A 2 x 2 box around a 1 x 1 prior on the same centre: IoU 1/4.
    wh = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    assert wh_iou(wh, torch.tensor([[1.0, 1.0]])).flatten().tolist() == [1.0, 0.25]
    assert average_iou(wh, torch.tensor([[1.0, 1.0]])) == pytest.approx(0.625)
    assert average_iou(wh, torch.tensor([[1.0, 1.0], [2.0, 2.0]])) == pytest.approx(1.0)


# -- training and evaluation -------------------------------------------------------------------------

def _batch():
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 160)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 64.0, 120.0, 110.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return images, targets


def test_training_step_is_finite_and_reaches_the_first_layer():
    model = tiny(multiscale=[96, 160]).train()
    losses = model(*_batch())
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    first = convs(model)[0]
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    assert model.network.output.weight.grad.abs().sum() > 0


def test_loss_decreases_on_one_fixed_image():
    model = tiny(multiscale=None).train()
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
    images, _ = _batch()
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


# -- Table 2's first columns: YOLOv1 with batch norm, anchor boxes on YOLOv1's and Darknet-19 -----

def test_anchor_box_column_on_yolov1s_network_has_a_13_by_13_grid_at_416():
    # Sec. 2: YOLOv1's network, one pooling layer fewer, 416 inputs; nine anchors per cell give
    # "more than a thousand" boxes (13 x 13 x 9 = 1,521).
    model = build("yolov2", trunk="yolov1", passthrough=False, hand_picked_anchors=True, width_mult=1 / 16)
    raw = model.network(torch.zeros(1, 3, 416, 416))
    assert tuple(raw.shape) == (1, 13, 13, 9, 25) and raw[0, ..., 0].numel() == 1521
    network = model.network
    assert sum(isinstance(m, nn.MaxPool2d) for m in network.modules()) == 3  # YOLOv1 has four
    assert len(convs(network.backbone)) == 20 and len(convs(network.head)) == 4
    assert sum(isinstance(m, nn.BatchNorm2d) for m in network.modules()) == 24
    # The pre-trained part keeps the names of YOLOv1's ImageNet trunk (with batch norm), so it loads.
    trunk = build("yolov1_darknet_imagenet", batch_norm=True, width_mult=1 / 16).backbone
    network.backbone.load_state_dict(trunk.state_dict())
    with pytest.raises(ValueError, match="passthrough"):
        build("yolov2", trunk="yolov1", width_mult=1 / 16)
    with pytest.raises(ValueError, match="trunk"):
        build("yolov2", trunk="resnet", width_mult=1 / 16)


def test_hand_picked_anchors_are_faster_rcnns_nine_in_grid_cells():
    from replicate.models.yolov2 import faster_rcnn_priors

    model = build("yolov2", hand_picked_anchors=True, width_mult=1 / 16, input_size=416)
    assert torch.equal(model.anchors, faster_rcnn_priors(416))
    # 128, 256 and 512 pixels of a 600-pixel side are the same fractions of the 13-cell grid.
    squares = model.anchors[model.anchors[:, 0] == model.anchors[:, 1], 0]
    torch.testing.assert_close(squares, torch.tensor([128.0, 256.0, 512.0]) / 600 * 13)
    assert sorted(torch.round(model.anchors[:, 0] / model.anchors[:, 1], decimals=3).tolist()) == [0.5] * 3 + [1.0] * 3 + [2.0] * 3


def test_table_2_columns_compose_with_their_models_own_reduced_scale():
    from replicate.config import compose

    bn = compose("yolov2", "reduced", ["experiment=batchnorm_column"])
    assert bn.model.name == "yolov1" and bn.model.batch_norm and bn.model.dropout == 0.0
    assert bn.recipe.max_steps == 800 and bn.model.input_size == 128  # the yolov1 paper's reduced scale
    anchors = compose("yolov2", "reduced", ["experiment=anchor_boxes_column"])
    assert anchors.model.trunk == "yolov1" and anchors.model.hand_picked_anchors and not anchors.model.direct_location
    assert not anchors.model.passthrough and not anchors.model.multiscale_enabled and anchors.recipe.max_steps == 500
    full = compose("yolov2", "full", ["experiment=new_network_column"])
    assert full.model.trunk == "darknet19" and full.model.input_size == 416 and full.recipe.max_steps == 41400
    # Each column starts from its own ImageNet trunk on the full profile, from scratch on the reduced one.
    trunks = {"yolo_v1_column": "yolov1_trunk_224", "batchnorm_column": "yolov1_bn_trunk_224",
              "hires_classifier_column": "yolov1_bn_trunk_448", "anchor_boxes_column": "yolov1_bn_trunk_448",
              "new_network_column": "darknet19_448"}
    for column, trunk in trunks.items():
        assert compose("yolov2", "full", [f"experiment={column}"]).model.backbone_from == trunk
        assert compose("yolov2", "reduced", [f"experiment={column}"]).model.backbone_from is None
    fine = compose("yolov2", "full", ["experiment=yolov1_bn_trunk_448"])
    assert fine.model.batch_norm and fine.data.image_size == 448 and fine.recipe.lr == 0.001
    assert fine.model.backbone_from == "yolov1_bn_trunk_224"


# -- Sec. 3: Darknet-19 on ImageNet at 224, fine-tuned at 448, starts the detectors ---------------

def test_darknet19_chain_from_224_to_448_to_the_detector(tmp_path):
    """The full profile's chain on a fake Fashion-MNIST: the 448 run starts from the whole 224
    network (runs.build_model loads it), and the detector's backbone from the 448 one
    (the classifier's `backbone` part)."""
    from pathlib import Path

    from replicate import runs
    from replicate.config import compose
    from replicate.runs import build_detector
    from tests.fakes import write_idx_fashion_mnist

    write_idx_fashion_mnist(tmp_path / "data", n_train=64, n_test=16)
    overrides = [f"paths.data_dir={tmp_path / 'data'}", f"paths.run_dir={tmp_path / 'runs'}", "model.width_mult=0.0625",
                 "recipe.max_steps=2", "recipe.batch_size=16", "recipe.checkpoint_every_steps=2",
                 "data.train_subset=64", "data.test_subset=16", "data.channels=1"]
    full = compose("yolov2", "full", ["experiment=yolov2_voc0712"])
    assert full.model.backbone_from == "darknet19_448"
    assert compose("yolov2", "full", ["experiment=darknet19_448"]).model.backbone_from == "darknet19_224"
    fine = compose("yolov2", "reduced", ["experiment=darknet19_448", *overrides])
    fine = runs.with_backbone_from(fine, "yolov2", "reduced", overrides)  # trains darknet19_224 (2 steps)
    first = torch.load(fine.model.backbone_weights, weights_only=True)
    classifier = runs.build_model(fine)
    assert all(torch.equal(v, first[k]) for k, v in classifier.state_dict().items())
    result = runs.run(fine)
    assert result["steps"] == 2 and Path(result["run_dir"]).parent.name == "darknet19_448"
    detector_cfg = compose("yolov2", "reduced", ["experiment=yolov2_voc0712", *overrides,
                                                 "model.backbone_from=darknet19_448"])
    detector = build_detector(runs.with_backbone_from(detector_cfg, "yolov2", "reduced", overrides))
    trained = torch.load(Path(result["run_dir"]) / "backbone_weights.pt", weights_only=True)
    backbone = detector.network.backbone.state_dict()
    assert all(torch.equal(v, trained[f"backbone.{k}"]) for k, v in backbone.items())
    assert not torch.equal(trained["backbone.stage1.0.0.weight"], first["backbone.stage1.0.0.weight"])
    from replicate.errors import ConfigError

    circular = [*overrides, "model.backbone_from=darknet19_448"]
    with pytest.raises(ConfigError, match="circle"):
        runs.with_backbone_from(compose("yolov2", "reduced", ["experiment=darknet19_224", *circular]),
                                      "yolov2", "reduced", circular)
    with pytest.raises(ConfigError, match="no such file"):
        runs.build_model(compose("yolov2", "reduced", ["experiment=darknet19_448", *overrides,
                                                             f"model.backbone_weights={tmp_path / 'none.pt'}"]))
    torch.save({"classifier.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not a state dict of this darknet19"):
        runs.build_model(compose("yolov2", "reduced", ["experiment=darknet19_448", *overrides,
                                                             f"model.backbone_weights={tmp_path / 'other.pt'}"]))
