"""YOLOv2 of Redmon & Farhadi, "YOLO9000: Better, Faster, Stronger" (CVPR 2017, arXiv
1612.08242), on the Darknet-19 backbone (`darknet19.py`, Sec. 3, Table 6).

YOLOv2 (`yolov2`, Sec. 2 "Better", Sec. 3 "Training for detection"): Darknet-19 without its last
convolution, then three 3x3 convolutions of 1024 filters and a 1x1 convolution to
num_anchors x (5 + C) outputs (125 for VOC: 5 boxes x (5 coordinates + 20 classes)). A
passthrough layer brings the 26 x 26 x 512 map (the last 3x3x512 layer, at 416) to 13 x 13 by
stacking each 2x2 block of neighbours into channels (13 x 13 x 2048) and concatenates it with the
13 x 13 x 1024 features before the last 3x3 convolution ("the second to last convolutional
layer"). We follow the paper, as does the configuration the authors released with it
(yolo-voc.2.0.cfg); their later yolo-voc.cfg first reduces the 512 channels to 64 with a 1x1
convolution (13 x 13 x 256 are stacked): `passthrough_channels=64` builds that (34.90 against
29.36 billion operations at 416). Input 416: a 13 x 13 grid, whose odd side gives a single
centre cell (Sec. 2).

Direct location prediction (Sec. 2): for the cell at offset (c_x, c_y) and an anchor (prior)
of size (p_w, p_h), b_x = sigma(t_x) + c_x, b_y = sigma(t_y) + c_y, b_w = p_w e^{t_w},
b_h = p_h e^{t_h}, and sigma(t_o) = Pr(object) x IoU(b, object); classes per anchor box, a softmax
of conditional probabilities. Anchors are given in grid cells (units of the 32-pixel stride), as
Darknet's region layer takes them, the same at every input size. The paper does not print its
VOC priors (k-means centroids, k = 5, Sec. 2 "Dimension Clusters"); the default `VOC_ANCHORS`
are those of yolo-voc.2.0.cfg, and `VOC_ANCHORS_LATER` those of the later yolo-voc.cfg.
`replicate.ops.kmeans_anchors` regenerates priors on any training set with the paper's distance
d = 1 - IoU (or the Euclidean distance of Table 1's "Cluster SSE" row).

The loss: the paper says only that the objectness "predicts the IOU of the ground truth and the
proposed box". The rest is the released Darknet region layer's, which trains YOLOv2 as follows:

* Each truth is assigned to the cell holding its centre and, there, to the one anchor whose
  shape (width and height, both centred) has the highest IoU with it. When two truths claim the
  same cell and anchor, the later one counts (Darknet shuffles an image's boxes first).
* That prediction's coordinates are regressed with squared error on sigma(t_x), sigma(t_y)
  (targets: the centre's offset in the cell) and on t_w, t_h (targets log(w / p_w),
  log(h / p_h)), weighted by coord_scale x (2 - w h), w and h as fractions of the image, so
  that small boxes weigh up to twice as much.
* Its objectness sigma(t_o) is regressed to the IoU of its current box with the truth (the
  "rescore" setting), with weight object_scale = 5.
* Its classes: Darknet back-propagates (one-hot - softmax) into the class logits, which is the
  gradient of the softmax cross-entropy; we use that loss, class_scale = 1.
* Every other prediction whose box has IoU at most 0.6 with every truth of the image has its
  objectness pushed to 0 with weight noobject_scale = 1; above 0.6 it is left alone.
* For the first 12,800 training images, every prediction not assigned to a truth is also pulled
  towards its anchor at the cell centre (sigma(t) = 0.5, t_w = t_h = 0) with weight 0.01.
* Darknet's deltas are the negative gradients of 1/2 x weight x (target - output)^2, so the
  squared terms here carry that 1/2; terms are summed over the predictions of an image and
  averaged over the batch (Darknet sums over the batch and divides its learning rate by the
  batch size, which is the same update).

Multi-scale training (Sec. 2): every 10 batches the network input is drawn from
{320, 352, ..., 608}. Here `multiscale=[min, max]` (multiples of 32), `multiscale_every` and a
seed give a reproducible sequence (a torch.Generator seeded from the seed and the batch
period); evaluation uses `input_size`. `multiscale=None` (or `multiscale_enabled=False`, which
keeps the range for a config that scales it) trains at `input_size` only.

Switches for Table 2's path from YOLO to YOLOv2: `passthrough=False` drops the fine-grained
features; `direct_location=False` predicts centres as region proposal networks do (the anchor,
centred in its cell, moved by t_x p_w, t_y p_h; squared error on t_x, t_y), the form Sec. 2
replaces; `anchors` sets the priors (clustered), `hand_picked_anchors=True` takes Faster R-CNN's
nine instead (`faster_rcnn_priors`); `multiscale=None` trains at one
size; `darknet19`'s backbone pre-trained at 448 is the "hi-res classifier"; `trunk="yolov1"`
builds the "convolutional with anchor boxes" column on YOLOv1's network (batch norm, one pool
fewer, 416 -> 13 x 13); batch norm is always on here (YOLOv1's `batch_norm` switch builds the
second column).

Decoding: score = sigma(t_o) x Pr(class | object), boxes clipped to the image, per-class greedy
NMS at 0.45, the `detections_per_image` best.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from ..ops.yolo import (cxcywh_to_xyxy, one_per_key, paired_iou, per_class_detections, to_network_input,
                        to_network_targets)
from ..ops.kmeans_anchors import hand_picked_anchors, wh_iou
from ._registry import register
from .darknet19 import Darknet19Backbone, init_darknet
from .layers import scaled
from .protocols import Detector
from .yolov1 import DETECTION as YOLOV1_DETECTION
from .yolov1 import FEATURES as YOLOV1_FEATURES
from .yolov1 import conv_block, make_layers

STRIDE = 32  # five 2x2 max-pools
PAPER_MIN_SIZE = 600  # Faster R-CNN's anchors are pixels of an image scaled to a 600-pixel shorter side
# Priors (width, height) in 13 x 13 grid cells, k-means centroids (k = 5) of the VOC 2007+2012
# training boxes: yolo-voc.2.0.cfg, released with the paper ...
VOC_ANCHORS: tuple[tuple[float, float], ...] = (
    (1.08, 1.19), (3.42, 4.41), (6.63, 11.38), (9.42, 5.11), (16.62, 10.52),
)
# ... and the later yolo-voc.cfg (with its 64-channel passthrough reduction).
VOC_ANCHORS_LATER: tuple[tuple[float, float], ...] = (
    (1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053), (11.2364, 10.0071),
)


# Table 2's "convolutional with anchor boxes" column keeps YOLOv1's network (batch norm added) and
# "eliminates one pooling layer" (Sec. 2): the last, for stride 32 (13 x 13 at 416).
YOLOV1_LAST_POOL = max(i for i, item in enumerate(YOLOV1_FEATURES) if item == "M")
TRUNKS = ("darknet19", "yolov1")


def yolov1_trunk(in_channels: int, width_mult: float) -> tuple[nn.Sequential, nn.Sequential, int]:
    """YOLOv1's 20 pre-trained and 4 detection convolutions with batch norm, the last max-pool
    replaced by an identity (so that the layer names stay those of YOLOv1's pre-trained
    convolutions): the pre-trained part, the detection part, their width."""
    backbone, channels = make_layers(YOLOV1_FEATURES, in_channels, width_mult, batch_norm=True)
    backbone[YOLOV1_LAST_POOL] = nn.Identity()
    extra, channels = make_layers(YOLOV1_DETECTION, channels, width_mult, batch_norm=True)
    return backbone, extra, channels


class YOLOv2Network(nn.Module):
    """Image batch [N, C, s, s] -> raw predictions [N, s/32, s/32, A, 5 + C]
    (t_x, t_y, t_w, t_h, t_o, class logits).

    `trunk="yolov1"` is Table 2's fourth column: YOLOv1's convolutions with batch norm and one
    pool fewer (`yolov1_trunk`), its four detection convolutions as the head, and the 1x1 output;
    no passthrough (the column precedes it)."""

    def __init__(self, *, num_classes: int, num_anchors: int, in_channels: int = 3, width_mult: float = 1.0,
                 passthrough: bool = True, passthrough_channels: int | None = None, trunk: str = "darknet19"):
        super().__init__()
        self.num_classes, self.num_anchors = int(num_classes), int(num_anchors)
        if trunk not in TRUNKS:
            raise ValueError(f"trunk={trunk!r}: allowed {', '.join(repr(t) for t in TRUNKS)}")
        if trunk == "yolov1":
            if passthrough:
                raise ValueError("trunk='yolov1' has no 26 x 26 x 512 layer for the passthrough: set passthrough=False")
            self.backbone, self.head, width = yolov1_trunk(in_channels, width_mult)
            self.use_passthrough, self.passthrough, self.fuse = False, nn.Identity(), nn.Identity()
        else:
            self.backbone = Darknet19Backbone(in_channels, width_mult)  # the ImageNet-pretrained part (Sec. 3)
            fine, channels = self.backbone.fine_channels, self.backbone.out_channels
            width = scaled(1024, width_mult)
            self.head = nn.Sequential(conv_block(channels, width, 3, batch_norm=True),
                                      conv_block(width, width, 3, batch_norm=True))
            self.use_passthrough = bool(passthrough)
            if passthrough and passthrough_channels:
                # yolo-voc.cfg's 1x1 reduction before the reorganisation.
                self.passthrough = conv_block(fine, scaled(passthrough_channels, width_mult), 1, batch_norm=True)
                fine = scaled(passthrough_channels, width_mult)
            else:
                self.passthrough = nn.Identity()
            # Sec. 2 "Fine-Grained Features": adjacent 2x2 features stacked into channels.
            self.reorg = nn.PixelUnshuffle(2)
            self.fuse = conv_block((4 * fine if passthrough else 0) + width, width, 3, batch_norm=True)
        self.output = nn.Conv2d(width, self.num_anchors * (5 + self.num_classes), 1)
        init_darknet(self)
        nn.init.normal_(self.output.weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        fine, x = features if isinstance(features, tuple) else (None, features)
        x = self.head(x)
        if self.use_passthrough:
            x = torch.cat([self.reorg(self.passthrough(fine)), x], 1)
        x = self.fuse(x)
        n, _, h, w = x.shape
        return self.output(x).view(n, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 3, 4, 1, 2)


def faster_rcnn_priors(input_size: int) -> Tensor:
    """Table 2's "anchor boxes" before dimension clusters: Faster R-CNN's nine hand-picked anchors
    (Table 1's "Anchor Boxes"; 128, 256, 512 pixels of a 600-pixel side at 1:1, 1:2, 2:1) as the
    same fractions of the image, in cells of the `input_size / 32` grid, [9, 2] (w, h)."""
    return hand_picked_anchors() / PAPER_MIN_SIZE * (input_size / STRIDE)


def multiscale_size(batch_index: int, sizes: Sequence[int], every: int, seed: int) -> int:
    """The input side for training batch `batch_index`: one of `sizes`, drawn anew every `every`
    batches by a generator seeded from (`seed`, period), so a resumed run draws the same sizes."""
    period = batch_index // every
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + period)
    return int(sizes[int(torch.randint(len(sizes), (1,), generator=generator))])


def box_centres(raw_xy: Tensor, anchors: Tensor, direct_location: bool = True) -> Tensor:
    """Box centres [..., 2] in grid cells from raw [N, H, W, A, 2] outputs: Sec. 2's
    b = sigma(t) + c (`direct_location`), or the region-proposal form it replaces, the anchor's
    centre (the cell's) moved by t times the anchor's size."""
    h, w = raw_xy.shape[1:3]
    cells = torch.stack(torch.meshgrid(torch.arange(w, device=raw_xy.device, dtype=raw_xy.dtype),
                                       torch.arange(h, device=raw_xy.device, dtype=raw_xy.dtype), indexing="xy"), -1)
    cells = cells[None, :, :, None, :]  # [1, H, W, 1, (x, y)]
    if direct_location:
        return raw_xy.sigmoid() + cells
    return cells + 0.5 + raw_xy * anchors


def yolov2_loss(raw: Tensor, targets: Sequence[Mapping], anchors: Tensor, *, input_size: int,
                object_scale: float = 5.0, noobject_scale: float = 1.0, coord_scale: float = 1.0,
                class_scale: float = 1.0, ignore_threshold: float = 0.6, prior_scale: float = 0.01,
                prior_term: bool = False, direct_location: bool = True) -> dict[str, Tensor]:
    """The region-layer loss described in the module docstring. `raw` [N, H, W, A, 5 + C]
    (`YOLOv2Network`), `targets` in network pixels (labels 1..C), `anchors` [A, 2] in cells."""
    n, h, w, a, _ = raw.shape
    num_classes = raw.shape[-1] - 5
    stride = input_size / w
    anchors = anchors.to(raw.device, raw.dtype)
    # The regressed centre outputs: sigma(t) (direct location prediction) or t itself.
    xy = raw[..., :2].sigmoid() if direct_location else raw[..., :2]
    t_wh, sig_obj, logits = raw[..., 2:4], raw[..., 4].sigmoid(), raw[..., 5:]
    with torch.no_grad():
        size = anchors * t_wh.detach().clamp(max=10).exp()
        centre = box_centres(raw[..., :2].detach(), anchors, direct_location)
        pred = cxcywh_to_xyxy(centre[..., 0], centre[..., 1], size[..., 0], size[..., 1])
    responsible = torch.zeros(n, h, w, a, dtype=torch.bool, device=raw.device)
    ignore = torch.zeros_like(responsible)
    idx_b, idx_j, idx_i, idx_a, truths, labels = [], [], [], [], [], []
    for k, target in enumerate(targets):
        boxes = torch.as_tensor(target["boxes"]).as_subclass(Tensor).float().to(raw.device).reshape(-1, 4) / stride
        lab = torch.as_tensor(target["labels"]).to(raw.device).reshape(-1).long() - 1
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (lab >= 0) & (lab < num_classes)
        boxes, lab = boxes[valid].to(raw.dtype), lab[valid]
        if boxes.numel() == 0:
            continue
        with torch.no_grad():
            # Predictions overlapping some truth by more than the threshold take no no-object term.
            ignore[k] = box_iou(pred[k].reshape(-1, 4), boxes).max(1).values.view(h, w, a) > ignore_threshold
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        wh = boxes[:, 2:] - boxes[:, :2]
        i = cx.floor().long().clamp(0, w - 1)
        j = cy.floor().long().clamp(0, h - 1)
        best_anchor = wh_iou(wh, anchors).argmax(1)
        idx_b.append(torch.full_like(i, k)), idx_j.append(j), idx_i.append(i), idx_a.append(best_anchor)
        truths.append(torch.stack([cx, cy, wh[:, 0], wh[:, 1]], -1)), labels.append(lab)
    zero = raw.sum() * 0
    if idx_b:
        b_, j_, i_, a_ = (torch.cat(v) for v in (idx_b, idx_j, idx_i, idx_a))
        truth, label = torch.cat(truths), torch.cat(labels)
        keep = one_per_key(((b_ * h + j_) * w + i_) * a + a_, "last")  # a later truth overwrites an earlier one
        b_, j_, i_, a_, truth, label = b_[keep], j_[keep], i_[keep], a_[keep], truth[keep], label[keep]
        responsible[b_, j_, i_, a_] = True
        weight = coord_scale * (2 - (truth[:, 2] / w) * (truth[:, 3] / h))
        anchor = anchors[a_]
        offset = truth[:, :2] - torch.stack([i_, j_], -1).to(raw.dtype)  # the centre within its cell
        target_xy = offset if direct_location else (offset - 0.5) / anchor
        xy_error = (xy[b_, j_, i_, a_] - target_xy).square().sum(-1)
        wh_error = (t_wh[b_, j_, i_, a_] - torch.log(truth[:, 2:] / anchor)).square().sum(-1)
        with torch.no_grad():
            iou = paired_iou(pred[b_, j_, i_, a_], cxcywh_to_xyxy(*truth.unbind(-1)))
        loss_xy = 0.5 * (weight * xy_error).sum() / n
        loss_wh = 0.5 * (weight * wh_error).sum() / n
        loss_obj = 0.5 * object_scale * (sig_obj[b_, j_, i_, a_] - iou).square().sum() / n
        loss_cls = class_scale * F.cross_entropy(logits[b_, j_, i_, a_], label, reduction="sum") / n
    else:
        loss_xy = loss_wh = loss_obj = loss_cls = zero
    noobj = (~responsible & ~ignore).to(raw.dtype)
    loss_noobj = 0.5 * noobject_scale * (noobj * sig_obj.square()).sum() / n
    if prior_term:
        free = (~responsible).to(raw.dtype)[..., None]
        prior_error = (xy - (0.5 if direct_location else 0.0)).square() + t_wh.square()
        loss_prior = 0.5 * prior_scale * (free * prior_error).sum() / n
    else:
        loss_prior = zero
    return {"loss_xy": loss_xy, "loss_wh": loss_wh, "loss_obj": loss_obj, "loss_noobj": loss_noobj,
            "loss_cls": loss_cls, "loss_prior": loss_prior}


class YOLOv2(Detector, nn.Module):
    """The detector: the network, the region loss in training (multi-scale), decoding and NMS in
    evaluation (the contract of `replicate.tasks.detection`)."""

    pretrained_part = "network.backbone"
    resizable_input = True

    def __init__(self, *, num_classes: int = 20, in_channels: int = 3, input_size: int = 416,
                 anchors: Sequence[Sequence[float]] = VOC_ANCHORS, width_mult: float = 1.0,
                 passthrough: bool = True, passthrough_channels: int | None = None,
                 direct_location: bool = True, multiscale: Sequence[int] | None = (320, 608),
                 multiscale_enabled: bool = True, multiscale_every: int = 10, multiscale_seed: int = 0, object_scale: float = 5.0,
                 noobject_scale: float = 1.0, coord_scale: float = 1.0, class_scale: float = 1.0,
                 ignore_threshold: float = 0.6, prior_images: int = 12800, prior_scale: float = 0.01,
                 score_threshold: float = 0.005, nms_threshold: float = 0.45, detections_per_image: int = 100,
                 trunk: str = "darknet19", hand_picked_anchors: bool = False):
        super().__init__()
        if input_size % STRIDE:
            raise ValueError(f"input_size={input_size} must be a multiple of {STRIDE}")
        if hand_picked_anchors:
            anchors = faster_rcnn_priors(input_size).tolist()
        if multiscale is not None and multiscale_enabled:
            low, high = (int(v) for v in multiscale)
            if low % STRIDE or high % STRIDE or low > high:
                raise ValueError(f"multiscale={list(multiscale)!r}: [min, max], multiples of {STRIDE}, min <= max")
            self.multiscale_sizes: tuple[int, ...] | None = tuple(range(low, high + 1, STRIDE))
        else:
            self.multiscale_sizes = None
        self.num_classes, self.input_size = int(num_classes), int(input_size)
        self.register_buffer("anchors", torch.tensor([list(map(float, p)) for p in anchors]).view(-1, 2),
                             persistent=False)
        self.multiscale_every, self.multiscale_seed = int(multiscale_every), int(multiscale_seed)
        self.loss_weights = {"object_scale": float(object_scale), "noobject_scale": float(noobject_scale),
                             "coord_scale": float(coord_scale), "class_scale": float(class_scale),
                             "ignore_threshold": float(ignore_threshold), "prior_scale": float(prior_scale)}
        self.prior_images = int(prior_images)
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.detections_per_image = int(detections_per_image)
        self.network = YOLOv2Network(num_classes=self.num_classes, num_anchors=self.anchors.shape[0],
                                     in_channels=in_channels, width_mult=width_mult,
                                     passthrough=passthrough, passthrough_channels=passthrough_channels,
                                     trunk=trunk)
        self.direct_location = bool(direct_location)
        # Training progress, saved with the weights so that a resumed run continues the same
        # multi-scale sequence and the anchor-prior term stops at the same image.
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.long))

    def training_size(self) -> int:
        """The input side of the next training batch."""
        if self.multiscale_sizes is None:
            return self.input_size
        return multiscale_size(int(self.batches_seen), self.multiscale_sizes, self.multiscale_every,
                               self.multiscale_seed)

    def forward(self, images, targets: Sequence[Mapping] | None = None):
        if isinstance(images, Tensor) and images.dim() == 4 and images.is_meta:
            return self.network(images)  # counting (replicate.measure.complexity): the raw head outputs
        images = list(images)
        if self.training:
            if targets is None:
                raise ValueError("YOLOv2 needs targets in training mode")
            size = self.training_size()
            batch, scales = to_network_input(images, size)
            raw = self.network(batch)
            losses = yolov2_loss(raw, to_network_targets(targets, scales), self.anchors, input_size=size,
                                 prior_term=int(self.images_seen) < self.prior_images,
                                 direct_location=self.direct_location, **self.loss_weights)
            self.batches_seen += 1
            self.images_seen += len(images)
            return losses
        batch, scales = to_network_input(images, self.input_size)
        return self.decode(self.network(batch), scales, [tuple(image.shape[-2:]) for image in images])

    @torch.no_grad()
    def decode(self, raw: Tensor, scales: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        n, h, w, a, _ = raw.shape
        stride = self.input_size / w
        anchors = self.anchors.to(raw.dtype)
        size = anchors * raw[..., 2:4].clamp(max=10).exp()
        centre = box_centres(raw[..., :2], anchors, self.direct_location)
        boxes = cxcywh_to_xyxy(centre[..., 0], centre[..., 1], size[..., 0], size[..., 1])
        boxes = (boxes * stride).clamp(0, self.input_size)
        scores = raw[..., 4].sigmoid()[..., None] * raw[..., 5:].softmax(-1)  # [N, H, W, A, C]
        return [per_class_detections(boxes[k], scores[k], scales[k], hw, score_threshold=self.score_threshold,
                                     nms_threshold=self.nms_threshold, max_detections=self.detections_per_image)
                for k, hw in enumerate(image_sizes)]


@register(input_size=(3, 416, 416))
def yolov2(**kw) -> YOLOv2:
    """YOLOv2: Darknet-19 + three 3x3x1024 convolutions + passthrough + 1x1 to A x (5 + C); 416 -> 13 x 13."""
    return YOLOv2(**kw)
