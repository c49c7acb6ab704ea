"""YOLO (v1) of Redmon, Divvala, Girshick & Farhadi (CVPR 2016, arXiv 1506.02640).

One network looks at the whole image once: it divides the input into an S x S grid, and each
cell predicts B boxes (x, y, w, h, confidence) and one set of C conditional class probabilities
Pr(class | object): an S x S x (5B + C) tensor, 7 x 7 x 30 for VOC (S = 7, B = 2, C = 20, Sec. 2).

Network (Sec. 2.1, Fig. 3): 24 convolutional layers, alternating 1x1 reductions and 3x3
convolutions, then two fully-connected layers (4096, then S*S*(5B + C)); leaky ReLU with slope
0.1 everywhere but the final, linear layer (Sec. 2.2); dropout 0.5 after the first
fully-connected layer (Sec. 2.2). Input 448 x 448. The first 20 convolutions are pre-trained on
ImageNet at 224 x 224 with an average pool and one fully-connected layer (Sec. 2.2:
`yolov1_darknet_imagenet`; its `backbone` has the names of the detector's `network.backbone`, so
its weights load into it); the detector adds four convolutions (`network.extra`) and the two
fully-connected layers (`network.head`).
No batch norm: YOLOv2 adds it (Redmon & Farhadi 2017, Sec. 2, Table 2's first column);
`batch_norm=True` builds that variant.

Fast YOLO (`yolov1_fast`, Sec. 2.1): "fewer convolutional layers (9 instead of 24) and fewer
filters in those layers"; the paper gives no layout. We follow the authors' released
`yolo-tiny.cfg` of that time: nine 3x3 convolutions of 16, 32, 64, 128, 256, 512 filters, each
followed by a 2x2 max-pool, then 1024, 1024, 1024 at 7 x 7, and the fully-connected layers
256 (linear), 4096 (leaky, dropout 0.5) and S*S*(5B + C). `fc_bottleneck=None` drops the
256-wide layer, which gives Fast YOLO YOLO's own two fully-connected layers.

Loss (Sec. 2.2, Eq. 3), sum-squared error summed over the cells and predictors of an image
(averaged over the images of a batch):

    lambda_coord * sum 1obj_ij [(x - x^)^2 + (y - y^)^2 + (sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2]
  + sum 1obj_ij (C - C^)^2 + lambda_noobj * sum 1noobj_ij (C - C^)^2
  + sum 1obj_i sum_c (p(c) - p^(c))^2

with lambda_coord = 5, lambda_noobj = 0.5. A cell is responsible for the objects whose centre
falls in it; of its B predictors, the one with the highest current IoU with the truth is
"responsible" (1obj_ij); every other predictor is 1noobj_ij. The network predicts the square
roots of w and h directly ("we predict the square root of the bounding box width and height"),
so the loss compares its outputs with sqrt(w^), sqrt(h^). x, y are offsets within the cell and
w, h fractions of the image (Sec. 2.2). The confidence target of the responsible predictor is its
IoU with the truth (Sec. 2: "we want the confidence score to equal the intersection over union
between the predicted box and the ground truth"), held constant in the gradient. The class term
counts once per cell that holds an object. A cell holds one object: when several centres fall in
one cell, the first listed is kept (the released Darknet code shuffles an image's boxes and keeps
the first per cell, a random one; the readers' order is as good as random here).

Decoding (Sec. 2, "at test time"): class-specific confidence = Pr(class | object) x box
confidence, for each of the S*S*B boxes and each class (the linear outputs clipped at 0 first,
so that two negative outputs never make a positive score), then per-class greedy NMS at 0.5 and
the `detections_per_image` best. Images of any size are resized to the network input without
keeping the aspect ratio (`replicate.ops.yolo`).

Knobs: `grid_size` (S), `boxes_per_cell` (B), `lambda_coord`, `lambda_noobj`, `width_mult`
(every convolution and hidden fully-connected width), `input_size` (the fully-connected layer is
sized from the convolutional output at this input, so a smaller input, e.g. 128, keeps the
S x S output: the reduced profile uses this), `batch_norm`, `dropout`, `fc_bottleneck`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.yolo import (cxcywh_to_xyxy, one_per_key, paired_iou, per_class_detections, to_network_input,
                        to_network_targets)
from ._registry import register
from .layers import LEAKY_SLOPE, scaled
from .protocols import Detector


# Fig. 3, (kernel, filters, stride) or "M" (2x2 max-pool, stride 2). The first 20 convolutions
# are the ImageNet pre-training network's (Sec. 2.2) ...
FEATURES: tuple = (
    (7, 64, 2), "M",
    (3, 192, 1), "M",
    (1, 128, 1), (3, 256, 1), (1, 256, 1), (3, 512, 1), "M",
    *((1, 256, 1), (3, 512, 1)) * 4, (1, 512, 1), (3, 1024, 1), "M",
    *((1, 512, 1), (3, 1024, 1)) * 2,
)
# ... and the detector adds four with random initialisation, one of them with stride 2.
DETECTION: tuple = ((3, 1024, 1), (3, 1024, 2), (3, 1024, 1), (3, 1024, 1))
HIDDEN = 4096  # Fig. 3: the first fully-connected layer

# Fast YOLO: the released yolo-tiny.cfg's nine convolutions (the paper: "9 instead of 24").
FAST_FEATURES: tuple = (
    (3, 16, 1), "M", (3, 32, 1), "M", (3, 64, 1), "M", (3, 128, 1), "M", (3, 256, 1), "M",
    (3, 512, 1), "M", (3, 1024, 1), (3, 1024, 1), (3, 1024, 1),
)
FAST_BOTTLENECK = 256


def conv_block(in_channels: int, out_channels: int, kernel: int, stride: int = 1, batch_norm: bool = False
               ) -> nn.Sequential:
    """Convolution ("same" padding), optional batch norm (then no bias), leaky ReLU 0.1."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
    return nn.Sequential(*layers)


def make_layers(spec: Sequence, in_channels: int, width_mult: float = 1.0, batch_norm: bool = False
                ) -> tuple[nn.Sequential, int]:
    """The layers of `spec` and their output channels."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in spec:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            kernel, width, stride = item
            width = scaled(width, width_mult)
            layers.append(conv_block(channels, width, kernel, stride, batch_norm))
            channels = width
    return nn.Sequential(*layers), channels


def output_side(side: int, spec: Sequence) -> int:
    """The side of the map `spec` makes of a `side` x `side` input (padding kernel // 2)."""
    for item in spec:
        if item == "M":
            side //= 2
        else:
            kernel, _, stride = item
            side = (side + 2 * (kernel // 2) - kernel) // stride + 1
    if side < 1:
        raise ValueError("the input is too small for this network: its feature map would vanish")
    return side


def init_weights(module: nn.Module) -> None:
    """He initialisation for the leaky-ReLU layers (the paper trains from ImageNet weights and
    does not say how the new layers start; Darknet draws them uniformly at a similar scale)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class YOLOv1Network(nn.Module):
    """Image batch [N, C, s, s] -> raw predictions [N, S, S, 5B + C] (Fig. 3)."""

    def __init__(self, features: Sequence, extra: Sequence, *, in_channels: int, input_size: int, grid_size: int,
                 outputs_per_cell: int, width_mult: float = 1.0, batch_norm: bool = False, dropout: float = 0.5,
                 fc_bottleneck: int | None = None):
        super().__init__()
        # `backbone`: the part pre-trained on ImageNet (Sec. 2.2); `extra`: the convolutions added for detection.
        self.backbone, channels = make_layers(features, in_channels, width_mult, batch_norm)
        self.extra, channels = make_layers(extra, channels, width_mult, batch_norm)
        side = output_side(output_side(input_size, features), extra)
        self.grid_size, self.outputs_per_cell = int(grid_size), int(outputs_per_cell)
        flat = channels * side * side
        head: list[nn.Module] = [nn.Flatten()]
        if fc_bottleneck:
            # yolo-tiny.cfg: a linear fully-connected layer narrows the features first.
            head.append(nn.Linear(flat, scaled(fc_bottleneck, width_mult)))
            flat = scaled(fc_bottleneck, width_mult)
        hidden = scaled(HIDDEN, width_mult)
        head += [nn.Linear(flat, hidden), nn.LeakyReLU(LEAKY_SLOPE, inplace=True), nn.Dropout(dropout),
                 nn.Linear(hidden, grid_size * grid_size * outputs_per_cell)]
        self.head = nn.Sequential(*head)
        init_weights(self)
        # Start the linear outputs near 0 (no box, no class) rather than at He scale.
        nn.init.normal_(self.head[-1].weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        s = self.grid_size
        return self.head(self.extra(self.backbone(x))).view(-1, s, s, self.outputs_per_cell)


def encode_targets(targets: Sequence[Mapping], *, grid_size: int, num_classes: int, input_size: int,
                   device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per cell of each image: whether an object's centre falls in it [N, S, S] (bool), that
    object's box (cx, cy, w, h) as fractions of the image [N, S, S, 4], its one-hot class
    [N, S, S, C]. `targets` have boxes in network pixels and labels 1..C."""
    s, n = grid_size, len(targets)
    has_object = torch.zeros(n, s, s, dtype=torch.bool, device=device)
    boxes_out = torch.zeros(n, s, s, 4, device=device)
    classes = torch.zeros(n, s, s, num_classes, device=device)
    for k, target in enumerate(targets):
        boxes = torch.as_tensor(target["boxes"]).as_subclass(Tensor).float().to(device).reshape(-1, 4) / input_size
        labels = torch.as_tensor(target["labels"]).to(device).reshape(-1).long() - 1
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (labels >= 0) & (labels < num_classes)
        boxes, labels = boxes[valid], labels[valid]
        if boxes.numel() == 0:
            continue
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        i = (cx * s).floor().long().clamp(0, s - 1)
        j = (cy * s).floor().long().clamp(0, s - 1)
        keep = one_per_key(j * s + i, "first")
        i, j = i[keep], j[keep]
        has_object[k, j, i] = True
        boxes_out[k, j, i] = torch.stack([cx, cy, w, h], -1)[keep]
        classes[k, j, i] = F.one_hot(labels[keep], num_classes).float()
    return has_object, boxes_out, classes


def split_predictions(raw: Tensor, boxes_per_cell: int) -> tuple[Tensor, Tensor, Tensor]:
    """raw [N, S, S, 5B + C] -> boxes [N, S, S, B, 4] (x, y, sqrt w, sqrt h), confidences
    [N, S, S, B], class probabilities [N, S, S, C]."""
    n, s, _, _ = raw.shape
    per_box = raw[..., :5 * boxes_per_cell].reshape(n, s, s, boxes_per_cell, 5)
    return per_box[..., :4], per_box[..., 4], raw[..., 5 * boxes_per_cell:]


def predicted_boxes(box_outputs: Tensor) -> Tensor:
    """(x, y, sqrt w, sqrt h) [N, S, S, B, 4] -> xyxy boxes as fractions of the image."""
    s = box_outputs.shape[1]
    cells = torch.arange(s, device=box_outputs.device, dtype=box_outputs.dtype)
    cx = (box_outputs[..., 0] + cells.view(1, 1, s, 1)) / s
    cy = (box_outputs[..., 1] + cells.view(1, s, 1, 1)) / s
    return cxcywh_to_xyxy(cx, cy, box_outputs[..., 2].square(), box_outputs[..., 3].square())


def yolov1_loss(raw: Tensor, targets: Sequence[Mapping], *, boxes_per_cell: int = 2, input_size: int = 448,
                lambda_coord: float = 5.0, lambda_noobj: float = 0.5) -> dict[str, Tensor]:
    """Eq. 3 of Sec. 2.2, its terms apart, each summed over an image and averaged over the batch.
    `raw` [N, S, S, 5B + C] (`YOLOv1Network`), `targets` in network pixels."""
    n, s = raw.shape[0], raw.shape[1]
    box_out, confidence, class_probs = split_predictions(raw, boxes_per_cell)
    has_object, truth, truth_classes = encode_targets(targets, grid_size=s, num_classes=class_probs.shape[-1],
                                                      input_size=input_size, device=raw.device)
    cells = torch.arange(s, device=raw.device, dtype=raw.dtype)
    with torch.no_grad():
        truth_xyxy = cxcywh_to_xyxy(*truth.unbind(-1))
        iou = paired_iou(predicted_boxes(box_out.detach()), truth_xyxy[:, :, :, None, :])  # [N, S, S, B]
        # "highest current IOU with the ground truth" picks the responsible predictor.
        best = iou.argmax(-1, keepdim=True)
        responsible = torch.zeros_like(iou, dtype=torch.bool).scatter_(-1, best, True) & has_object[..., None]
        target_x = truth[..., 0] * s - cells.view(1, 1, s)
        target_y = truth[..., 1] * s - cells.view(1, s, 1)
        target_sqrt_wh = truth[..., 2:].clamp(min=0).sqrt()
    mask = responsible.to(raw.dtype)
    xy_error = (box_out[..., 0] - target_x[..., None]).square() + (box_out[..., 1] - target_y[..., None]).square()
    wh_error = (box_out[..., 2:] - target_sqrt_wh[..., None, :]).square().sum(-1)
    return {
        "loss_xy": lambda_coord * (mask * xy_error).sum() / n,
        "loss_wh": lambda_coord * (mask * wh_error).sum() / n,
        "loss_obj": (mask * (confidence - iou).square()).sum() / n,
        "loss_noobj": lambda_noobj * ((1 - mask) * confidence.square()).sum() / n,
        "loss_cls": (has_object[..., None] * (class_probs - truth_classes).square()).sum() / n,
    }


class YOLOv1(Detector, nn.Module):
    """The detector: the network, Eq. 3 in training, class-specific confidences and NMS in
    evaluation (the contract of `replicate.tasks.detection`)."""

    pretrained_part = "network.backbone"
    resizable_input = True

    def __init__(self, *, features: Sequence = FEATURES, extra: Sequence = DETECTION, num_classes: int = 20,
                 in_channels: int = 3, grid_size: int = 7, boxes_per_cell: int = 2, input_size: int = 448,
                 width_mult: float = 1.0, batch_norm: bool = False, dropout: float = 0.5,
                 fc_bottleneck: int | None = None, lambda_coord: float = 5.0, lambda_noobj: float = 0.5,
                 score_threshold: float = 0.005, nms_threshold: float = 0.5, detections_per_image: int = 100):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult!r}")
        self.num_classes, self.grid_size, self.boxes_per_cell = int(num_classes), int(grid_size), int(boxes_per_cell)
        self.input_size = int(input_size)
        self.lambda_coord, self.lambda_noobj = float(lambda_coord), float(lambda_noobj)
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.detections_per_image = int(detections_per_image)
        self.network = YOLOv1Network(
            features, extra, in_channels=in_channels, input_size=self.input_size, grid_size=self.grid_size,
            outputs_per_cell=5 * self.boxes_per_cell + self.num_classes, width_mult=width_mult,
            batch_norm=batch_norm, dropout=dropout, fc_bottleneck=fc_bottleneck)

    def forward(self, images, targets: Sequence[Mapping] | None = None):
        if isinstance(images, Tensor) and images.dim() == 4 and images.is_meta:
            return self.network(images)  # counting (replicate.measure.complexity): the raw S x S x (5B + C)
        batch, scales = to_network_input(list(images), self.input_size)
        raw = self.network(batch)
        if self.training:
            if targets is None:
                raise ValueError("YOLOv1 needs targets in training mode")
            return yolov1_loss(raw, to_network_targets(targets, scales), boxes_per_cell=self.boxes_per_cell,
                               input_size=self.input_size, lambda_coord=self.lambda_coord,
                               lambda_noobj=self.lambda_noobj)
        return self.decode(raw, scales, [tuple(image.shape[-2:]) for image in images])

    @torch.no_grad()
    def decode(self, raw: Tensor, scales: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        box_out, confidence, class_probs = split_predictions(raw, self.boxes_per_cell)
        boxes = predicted_boxes(box_out).clamp(0, 1) * self.input_size  # network pixels
        # Sec. 2: Pr(class | object) * Pr(object) * IoU = class-specific confidence per box.
        scores = class_probs.clamp(min=0)[:, :, :, None, :] * confidence.clamp(min=0)[..., None]  # [N,S,S,B,C]
        return [per_class_detections(boxes[k], scores[k], scales[k], hw, score_threshold=self.score_threshold,
                                     nms_threshold=self.nms_threshold, max_detections=self.detections_per_image)
                for k, hw in enumerate(image_sizes)]


@register(input_size=(3, 448, 448))
def yolov1(**kw) -> YOLOv1:
    """YOLO: 24 convolutions + 2 fully-connected layers, 448 x 448 -> 7 x 7 x 30 (Sec. 2.1, Fig. 3)."""
    return YOLOv1(features=FEATURES, extra=DETECTION, **kw)


@register(input_size=(3, 448, 448))
def yolov1_fast(*, fc_bottleneck: int | None = FAST_BOTTLENECK, **kw) -> YOLOv1:
    """Fast YOLO: 9 convolutions with fewer filters (Sec. 2.1; layout of the released yolo-tiny.cfg)."""
    return YOLOv1(features=FAST_FEATURES, extra=(), fc_bottleneck=fc_bottleneck, **kw)


class DarknetV1Classifier(nn.Module):
    """YOLO's ImageNet pre-training network (Sec. 2.2): the first 20 convolutions of Fig. 3, an
    average pool and a fully-connected layer, at 224 x 224.

    `classifier="conv"` builds the layout of the authors' later released Darknet "Extraction"
    configuration instead: a 1x1 convolution to the classes on the 7 x 7 map, then the average
    pool. Both have the same parameters; the convolution costs 49 times the multiply-adds of the
    fully-connected layer, and that layout is what YOLO9000 (Sec. 3) counts as "8.52 billion
    operations for a forward pass"."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 batch_norm: bool = False, classifier: str = "fc"):
        super().__init__()
        if classifier not in ("fc", "conv"):
            raise ValueError(f"classifier={classifier!r}: allowed 'fc' (Sec. 2.2) or 'conv'")
        self.backbone, channels = make_layers(FEATURES, in_channels, width_mult, batch_norm)
        self.classifier_kind = classifier
        self.pool = nn.AdaptiveAvgPool2d(1)
        if classifier == "fc":
            self.classifier: nn.Module = nn.Linear(channels, num_classes)
        else:
            self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.backbone(x)
        if self.classifier_kind == "conv":
            return torch.flatten(self.pool(self.classifier(x)), 1)
        return self.classifier(torch.flatten(self.pool(x), 1))


@register(input_size=(3, 224, 224))
def yolov1_darknet_imagenet(**kw) -> DarknetV1Classifier:
    """The 20-convolution ImageNet classifier YOLO is pre-trained as (Sec. 2.2)."""
    return DarknetV1Classifier(**kw)
