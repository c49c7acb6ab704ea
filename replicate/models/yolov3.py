"""YOLOv3 (Redmon & Farhadi 2018, arXiv 1804.02767): the detector.

Darknet-53, the backbone, is in `darknet53.py` (Sec. 2.4, Table 1).

The detector (Sec. 2.1-2.3):

* Predictions across scales (Sec. 2.3): the 13x13 map (stride 32 at 416) gets five convolutions
  (1x1 / 3x3 alternating), then a 3x3 and a 1x1 predicting N x N x [3 x (4 + 1 + C)]; the map
  "from 2 layers previous" is reduced by a 1x1, upsampled 2x and concatenated with the stride-16
  backbone features, and the same design is repeated for stride 16 and again for stride 8. The
  widths (512/1024, 256/512, 128/256) are those of the released yolov3.cfg, which the paper's
  text does not print.
* Box prediction (Sec. 2.1, as YOLO9000): b_x = sigma(t_x) + c_x, b_y = sigma(t_y) + c_y,
  b_w = p_w e^{t_w}, b_h = p_h e^{t_h}, with the 9 COCO priors (10,13) ... (373,326) in pixels of a
  416 input, three per scale from small (stride 8) to large (stride 32). `anchor_scale` multiplies
  them for other canvases (the reduced profile's 128-pixel images), or pass re-clustered `anchors`.
* Loss: sum of squared errors on the coordinates (sigma(t_x), sigma(t_y) against the centre's
  offset in its cell, t_w, t_h against log(w / p_w)); objectness by logistic regression, target 1
  for the one prior that overlaps a ground-truth object best (one prior per object); a prior that
  is not the best but overlaps a ground truth by more than 0.5 is ignored (no objectness loss),
  "following [Faster R-CNN]"; priors without an object cost only objectness. Classes are
  independent logistic classifiers trained with binary cross-entropy (Sec. 2.2). The terms are
  summed over the batch and divided by the number of images.

Where this differs from the released Darknet code, it follows the paper: the ignore rule compares
the *prior* (the anchor box at its cell's centre) with the ground truth, as Sec. 2.1 says, while
Darknet compares the *predicted* box (`ignore_iou_of="prediction"` gives that); Darknet also
weights the coordinate errors by (2 - w h), which the paper does not mention (not implemented).
Multi-scale training (Sec. 2.5) is the `multiscale_sizes` knob (off by default: the paper gives no
sizes; YOLO9000 used 320-608 every 10 batches).

The machinery shared with YOLOv4 (whose head is "YOLOv3", Bochkovskiy et al. Sec. 3.4) lives in
`YOLODetector`: target assignment, losses, decoding and NMS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from ..ops.kmeans_anchors import wh_iou
from ..ops.mix import cutmix, mosaic
from ..ops.yolo import select_detections, to_image_boxes, to_network_input, to_network_targets
from ._registry import register
from .darknet53 import Darknet53
from .layers import ConvBN, scaled
from .protocols import Detector

STRIDES = (8, 16, 32)
# Sec. 2.3: "On the COCO dataset the 9 clusters were" (pixels of a 416 x 416 input).
COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
BOX_LOSSES = ("mse", "giou", "diou", "ciou")
_IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}
# exp(t_w) is capped so that an untrained network's boxes stay finite in the IoU losses and decoding.
_MAX_LOG_SIZE = math.log(1000.0)


def five_convs(in_ch: int, channels: int, activation: str = "leaky", sam: nn.Module | None = None) -> nn.Sequential:
    """The detection block: 1x1 `channels`, 3x3 2x, 1x1, 3x3 2x, 1x1 (optionally YOLOv4's SAM before
    the last 1x1, where the released yolov4-sam cfg puts it)."""
    layers = [ConvBN(in_ch, channels, 1, activation=activation),
              ConvBN(channels, 2 * channels, 3, activation=activation),
              ConvBN(2 * channels, channels, 1, activation=activation),
              ConvBN(channels, 2 * channels, 3, activation=activation)]
    if sam is not None:
        layers.append(sam)
    layers.append(ConvBN(2 * channels, channels, 1, activation=activation))
    return nn.Sequential(*layers)


class PredictionHead(nn.Sequential):
    """3x3 convolution to twice the width, then the linear 1x1 predicting A x (4 + 1 + C) per cell."""

    def __init__(self, in_ch: int, outputs: int, activation: str = "leaky"):
        super().__init__(ConvBN(in_ch, 2 * in_ch, 3, activation=activation), nn.Conv2d(2 * in_ch, outputs, 1))


class YOLOv3Network(nn.Module):
    """Darknet-53 and the three-scale feature pyramid of Sec. 2.3: [B, 3, S, S] -> raw predictions
    [B, A (5 + C), S/8, S/8], [.., S/16, S/16], [.., S/32, S/32]."""

    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0, anchors_per_scale: int = 3):
        super().__init__()
        outputs = anchors_per_scale * (5 + num_classes)
        w = lambda c: scaled(c, width_mult)
        self.backbone = Darknet53(None, in_channels, width_mult)
        c3, c4, c5 = self.backbone.out_channels
        self.block5 = five_convs(c5, w(512))
        self.head5 = PredictionHead(w(512), outputs)
        self.reduce5 = ConvBN(w(512), w(256), 1)
        self.block4 = five_convs(w(256) + c4, w(256))
        self.head4 = PredictionHead(w(256), outputs)
        self.reduce4 = ConvBN(w(256), w(128), 1)
        self.block3 = five_convs(w(128) + c3, w(128))
        self.head3 = PredictionHead(w(128), outputs)

    def forward(self, x: Tensor) -> list[Tensor]:
        c3, c4, c5 = self.backbone.forward_features(x)
        p5 = self.block5(c5)
        # yolov3.cfg's routes: the upsampled map first, then the backbone's.
        p4 = self.block4(torch.cat([F.interpolate(self.reduce5(p5), scale_factor=2.0, mode="nearest"), c4], 1))
        p3 = self.block3(torch.cat([F.interpolate(self.reduce4(p4), scale_factor=2.0, mode="nearest"), c3], 1))
        return [self.head3(p3), self.head4(p4), self.head5(p5)]


def _plain(boxes) -> Tensor:
    return torch.as_tensor(boxes).as_subclass(Tensor).float().reshape(-1, 4)


class YOLODetector(Detector, nn.Module):
    """What YOLOv3 and YOLOv4 share around their networks: the anchor assignment, the loss, the
    decoding and the final NMS. `network` maps [B, 3, S, S] to one raw map per stride in `strides`.

    Training: `model(images, targets)` -> {"loss_box", "loss_obj", "loss_cls"} (each summed over
    the batch and divided by the number of images). Evaluation: `model(images)` -> one
    {"boxes", "scores", "labels"} per image, scores = objectness x class probability, boxes in the
    input image's pixels. A 4-D tensor on the meta device returns the raw maps (for counting).
    """

    pretrained_part = "network.backbone"
    resizable_input = True

    def __init__(self, network: nn.Module, *, num_classes: int, input_size: int, anchors: Sequence[Sequence[float]],
                 anchor_scale: float = 1.0, strides: Sequence[int] = STRIDES, box_loss: str = "mse",
                 box_loss_weight: float | None = None, label_smoothing: float = 0.0,
                 grid_sensitivity: float | Sequence[float] = 1.0, iou_thresh_multi_anchor: float | None = None,
                 ignore_thresh: float = 0.5, ignore_iou_of: str = "prior", nms: str = "greedy",
                 nms_threshold: float = 0.45, diou_beta: float = 1.0, score_threshold: float = 0.005,
                 detections_per_image: int = 100, pre_nms_top_k: int = 1000,
                 multiscale_sizes: Sequence[int] | None = None, multiscale_every: int = 10,
                 mosaic: bool = False, cutmix: bool = False):
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss={box_loss!r}: allowed {', '.join(BOX_LOSSES)}")
        if ignore_iou_of not in ("prior", "prediction"):
            raise ValueError(f"ignore_iou_of={ignore_iou_of!r}: allowed 'prior' (the paper) or 'prediction' (Darknet)")
        if nms not in ("greedy", "diou"):
            raise ValueError(f"nms={nms!r}: allowed 'greedy' or 'diou'")
        for size in [input_size, *(multiscale_sizes or [])]:
            if int(size) % max(strides):
                raise ValueError(f"input size {size} must be a multiple of {max(strides)}")
        if len(anchors) % len(strides):
            raise ValueError(f"{len(anchors)} anchors cannot be shared evenly by {len(strides)} scales")
        self.network = network
        self.num_classes = int(num_classes)
        self.input_size = int(input_size)
        self.strides = tuple(int(s) for s in strides)
        self.anchors_per_scale = len(anchors) // len(strides)
        # Sorted small to large, as the paper's list: the first three go to stride 8.
        anchors = torch.tensor(anchors, dtype=torch.float32) * float(anchor_scale)
        self.register_buffer("anchors", anchors, persistent=False)
        self.box_loss = box_loss
        self.box_loss_weight = float(box_loss_weight) if box_loss_weight is not None else (
            1.0 if box_loss == "mse" else 0.07)  # YOLOv4 Sec. 4.1: "loss normalizer 0.07" for the IoU losses
        self.label_smoothing = float(label_smoothing)
        if isinstance(grid_sensitivity, (int, float)):
            grid_sensitivity = [float(grid_sensitivity)] * len(self.strides)
        if len(grid_sensitivity) != len(self.strides):
            raise ValueError(f"grid_sensitivity needs one factor per stride {self.strides}")
        self.grid_sensitivity = tuple(float(g) for g in grid_sensitivity)
        self.iou_thresh_multi_anchor = None if iou_thresh_multi_anchor is None else float(iou_thresh_multi_anchor)
        self.ignore_thresh = float(ignore_thresh)
        self.ignore_iou_of = ignore_iou_of
        self.nms, self.nms_threshold, self.diou_beta = nms, float(nms_threshold), float(diou_beta)
        self.score_threshold = float(score_threshold)
        self.detections_per_image = int(detections_per_image)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.multiscale_sizes = [int(s) for s in multiscale_sizes] if multiscale_sizes else None
        self.multiscale_every = int(multiscale_every)
        self.mosaic, self.cutmix = bool(mosaic), bool(cutmix)
        self._steps = 0
        self._train_size = self.input_size

    # -- geometry -------------------------------------------------------------------------------
    def scale_anchors(self, scale: int) -> Tensor:
        a = self.anchors_per_scale
        return self.anchors[scale * a:(scale + 1) * a]

    def split(self, raw: Tensor) -> Tensor:
        """[B, A (5 + C), H, W] -> [B, A, H, W, 5 + C]."""
        b, _, h, w = raw.shape
        return raw.view(b, self.anchors_per_scale, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2)

    def cell_offsets(self, t_xy: Tensor, scale: int) -> Tensor:
        """sigma(t) scaled by the grid-sensitivity factor alpha around the cell's centre:
        alpha sigma(t) - (alpha - 1) / 2 (YOLOv4 Sec. 4.3 "S"; alpha = 1 is YOLOv3's sigma(t))."""
        alpha = self.grid_sensitivity[scale]
        return alpha * torch.sigmoid(t_xy) - (alpha - 1.0) / 2.0

    def decode_boxes(self, p: Tensor, scale: int) -> Tensor:
        """Boxes [B, A, H, W, 4] (xyxy, network pixels) from split predictions `p` of one scale."""
        h, w = p.shape[2:4]
        stride = self.strides[scale]
        ys, xs = torch.meshgrid(torch.arange(h, device=p.device, dtype=p.dtype),
                                torch.arange(w, device=p.device, dtype=p.dtype), indexing="ij")
        grid = torch.stack([xs, ys], -1)  # [H, W, 2]
        centre = (self.cell_offsets(p[..., :2], scale) + grid) * stride
        size = self.scale_anchors(scale).to(p.dtype)[None, :, None, None] * p[..., 2:4].clamp(max=_MAX_LOG_SIZE).exp()
        return torch.cat([centre - size / 2, centre + size / 2], -1)

    def prior_boxes(self, h: int, w: int, scale: int, device) -> Tensor:
        """The priors [A, H, W, 4]: each anchor at each cell's centre (network pixels)."""
        stride = self.strides[scale]
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        centre = (torch.stack([xs, ys], -1) + 0.5) * stride
        size = self.scale_anchors(scale).to(device)[:, None, None]
        return torch.cat([centre - size / 2, centre + size / 2], -1).expand(-1, h, w, 4)

    # -- targets ----------------------------------------------------------------------------------
    def assign(self, boxes: Tensor,
               grid_sizes: Sequence[tuple[int, int]]) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Which predictions answer for which ground truth (boxes [N, 4] in network pixels).

        Each box goes to the prior of best shape IoU among all scales (YOLOv3 Sec. 2.1: one prior
        per object), and with `iou_thresh_multi_anchor` also to every prior whose IoU(truth,
        anchor) exceeds it (YOLOv4 Sec. 4.3 "IT"), in the cell holding its centre. Returns per scale
        (truth index, anchor index within the scale, cell row, cell column)."""
        empty = torch.empty(0, dtype=torch.int64, device=boxes.device)
        if boxes.numel() == 0:
            return [(empty, empty, empty, empty) for _ in self.strides]
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp_min(1e-6)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        iou = wh_iou(wh, self.anchors.to(boxes.device))
        chosen = F.one_hot(iou.argmax(1), iou.shape[1]).bool()
        if self.iou_thresh_multi_anchor is not None:
            chosen |= iou > self.iou_thresh_multi_anchor
        truth, anchor = chosen.nonzero(as_tuple=True)
        out = []
        for scale, (h, w) in enumerate(grid_sizes):
            keep = anchor // self.anchors_per_scale == scale
            n = truth[keep]
            cell = (centre[n] / self.strides[scale]).floor().long()
            out.append((n, anchor[keep] % self.anchors_per_scale,
                        cell[:, 1].clamp(0, h - 1), cell[:, 0].clamp(0, w - 1)))
        return out

    # -- loss -------------------------------------------------------------------------------------
    def compute_loss(self, outputs: Sequence[Tensor], targets: Sequence[Mapping]) -> dict[str, Tensor]:
        """The loss of raw maps `outputs` for `targets` whose boxes are in network pixels."""
        batch = outputs[0].shape[0]
        gts = [_plain(t["boxes"]).to(outputs[0].device) for t in targets]
        labels = [torch.as_tensor(t["labels"], dtype=torch.int64, device=outputs[0].device).reshape(-1)
                  for t in targets]
        grid_sizes = [tuple(o.shape[-2:]) for o in outputs]
        assigned = [self.assign(g, grid_sizes) for g in gts]
        zero = outputs[0].sum() * 0.0
        loss_box, loss_obj, loss_cls = zero, zero, zero
        for scale, raw in enumerate(outputs):
            p = self.split(raw)
            h, w = p.shape[2:4]
            pos_b, pos_a, pos_j, pos_i, pos_truth, pos_label = [], [], [], [], [], []
            ignore = torch.zeros(p.shape[:4], dtype=torch.bool, device=p.device)
            if self.ignore_iou_of == "prediction":
                with torch.no_grad():
                    candidates = self.decode_boxes(p.detach(), scale)
            else:
                priors = self.prior_boxes(h, w, scale, p.device)
            for b in range(batch):
                if gts[b].numel() == 0:
                    continue
                boxes = candidates[b] if self.ignore_iou_of == "prediction" else priors
                ignore[b] = box_iou(boxes.reshape(-1, 4), gts[b]).amax(1).view(ignore.shape[1:]) > self.ignore_thresh
                n, a, j, i = assigned[b][scale]
                for store, value in zip((pos_b, pos_a, pos_j, pos_i, pos_truth, pos_label),
                                        (torch.full_like(n, b), a, j, i, gts[b][n], labels[b][n])):
                    store.append(value)
            objectness = torch.zeros(p.shape[:4], device=p.device, dtype=p.dtype)
            if pos_b:
                bi, ai, ji, ii = (torch.cat(v) for v in (pos_b, pos_a, pos_j, pos_i))
                truth, label = torch.cat(pos_truth), torch.cat(pos_label)
            if pos_b and bi.numel():
                objectness[bi, ai, ji, ii] = 1.0
                ignore[bi, ai, ji, ii] = False
                pred = p[bi, ai, ji, ii]
                loss_box = loss_box + self.box_loss_weight * self._box_term(pred, truth, ai, ji, ii, scale)
                onehot = F.one_hot(label - 1, self.num_classes).to(pred.dtype)
                # YOLOv4 Table 4 "LS": label smoothing for sigmoid outputs (each a 2-way problem).
                smoothed = onehot * (1.0 - self.label_smoothing) + self.label_smoothing / 2.0
                loss_cls = loss_cls + F.binary_cross_entropy_with_logits(pred[:, 5:], smoothed, reduction="sum")
            keep = ~ignore
            loss_obj = loss_obj + F.binary_cross_entropy_with_logits(p[..., 4][keep], objectness[keep], reduction="sum")
        return {"loss_box": loss_box / batch, "loss_obj": loss_obj / batch, "loss_cls": loss_cls / batch}

    def _box_term(self, pred: Tensor, truth: Tensor, anchor: Tensor, row: Tensor, col: Tensor, scale: int) -> Tensor:
        stride = self.strides[scale]
        if self.box_loss == "mse":
            # YOLOv3 Sec. 2.1: squared error against the inverted box equations.
            centre = (truth[:, :2] + truth[:, 2:]) / 2 / stride
            offset_target = centre - torch.stack([col, row], 1).to(centre.dtype)
            size_target = ((truth[:, 2:] - truth[:, :2]).clamp_min(1e-6) / self.scale_anchors(scale)[anchor]).log()
            return ((self.cell_offsets(pred[:, :2], scale) - offset_target) ** 2).sum() + \
                ((pred[:, 2:4] - size_target) ** 2).sum()
        cell = torch.stack([col, row], 1).to(pred.dtype)
        centre = (self.cell_offsets(pred[:, :2], scale) + cell) * stride
        size = self.scale_anchors(scale)[anchor] * pred[:, 2:4].clamp(max=_MAX_LOG_SIZE).exp()
        boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
        return _IOU_LOSSES[self.box_loss](boxes, truth, reduction="sum")

    # -- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(self, outputs: Sequence[Tensor], scales: Tensor, size: int) -> list[dict[str, Tensor]]:
        """Decoded, thresholded, NMS-ed detections per image, boxes in the input images' pixels."""
        boxes, scores = [], []
        for scale, raw in enumerate(outputs):
            p = self.split(raw)
            boxes.append(self.decode_boxes(p, scale).flatten(1, 3))
            # Sec. 2.2: independent logistic classifiers; a detection's score is objectness x class.
            scores.append((torch.sigmoid(p[..., 4:5]) * torch.sigmoid(p[..., 5:])).flatten(1, 3))
        boxes, scores = torch.cat(boxes, 1).clamp(0, size), torch.cat(scores, 1)
        results = []
        for i in range(boxes.shape[0]):
            flat = scores[i].flatten()
            candidates = torch.nonzero(flat > self.score_threshold).flatten()
            if candidates.numel() > self.pre_nms_top_k:
                candidates = candidates[flat[candidates].topk(self.pre_nms_top_k).indices]
            box_index, cls = candidates // self.num_classes, candidates % self.num_classes
            kept = select_detections(boxes[i][box_index], flat[candidates], cls + 1,
                                     score_threshold=self.score_threshold, nms_threshold=self.nms_threshold,
                                     max_detections=self.detections_per_image, nms=self.nms, diou_beta=self.diou_beta)
            kept["boxes"] = to_image_boxes(kept["boxes"], scales[i])
            results.append(kept)
        return results

    # -- forward ----------------------------------------------------------------------------------
    def _augment(self, images: list[Tensor], targets: list[dict]) -> tuple[list[Tensor], list[dict]]:
        """YOLOv4's Mosaic (Sec. 3.3) and CutMix, when switched on."""
        if not (self.mosaic or self.cutmix):
            return images, targets
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        if self.mosaic:
            images, targets = mosaic(images, targets, self._train_size, generator)
        if self.cutmix:
            images, targets = cutmix(images, targets, generator)
        return list(images), list(targets)

    def _next_train_size(self) -> int:
        """The input side for this batch: fixed, or a new random pick from `multiscale_sizes` every
        `multiscale_every` batches (YOLO9000 Sec. 2 "Multi-Scale Training")."""
        if self.multiscale_sizes and self._steps % self.multiscale_every == 0:
            pick = int(torch.randint(len(self.multiscale_sizes), (1,)).item())
            self._train_size = self.multiscale_sizes[pick]
        self._steps += 1
        return self._train_size if self.multiscale_sizes else self.input_size

    def forward(self, images, targets: Sequence[Mapping] | None = None):
        if isinstance(images, Tensor) and images.dim() == 4 and images.is_meta:
            return self.network(images)
        images = list(images)
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            size = self._next_train_size()
            self._train_size = size
            images, targets = self._augment(images, [dict(t) for t in targets])
            batch, scales = to_network_input(images, size)
            return self.compute_loss(self.network(batch), to_network_targets(targets, scales.to("cpu")))
        batch, scales = to_network_input(images, self.input_size)
        return self.postprocess(self.network(batch), scales, self.input_size)


@register(input_size=(3, 416, 416))
def yolov3(num_classes: int = 20, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 416,
           anchors: Sequence[Sequence[float]] = COCO_ANCHORS, anchor_scale: float = 1.0, ignore_thresh: float = 0.5,
           ignore_iou_of: str = "prior", score_threshold: float = 0.005, nms_threshold: float = 0.45,
           detections_per_image: int = 100, pre_nms_top_k: int = 1000,
           multiscale_sizes: Sequence[int] | None = None, multiscale_every: int = 10) -> YOLODetector:
    """YOLOv3 (Sec. 2): Darknet-53, three scales with 3 priors each, SSE box loss, logistic
    objectness with ignore threshold 0.5, binary cross-entropy classes; 416 x 416 by default."""
    anchors = [tuple(float(v) for v in a) for a in anchors]
    network = YOLOv3Network(num_classes, in_channels, width_mult, len(anchors) // len(STRIDES))
    return YOLODetector(network, num_classes=num_classes, input_size=input_size, anchors=anchors,
                        anchor_scale=anchor_scale, box_loss="mse", ignore_thresh=ignore_thresh,
                        ignore_iou_of=ignore_iou_of, score_threshold=score_threshold, nms_threshold=nms_threshold,
                        detections_per_image=detections_per_image, pre_nms_top_k=pre_nms_top_k,
                        multiscale_sizes=multiscale_sizes, multiscale_every=multiscale_every)
