"""Faster R-CNN (Ren, He, Girshick & Sun, NIPS 2015, arXiv 1506.01497) with VGG-16.

A Region Proposal Network shares the VGG-16 conv layers (conv5_3, stride 16) with a Fast R-CNN
detector (`replicate.models.fast_rcnn`: RoI pooling, fc6, fc7, softmax and box regression).

The RPN (Sec. 3.1): a 3x3 convolution to 512 channels with ReLU, then two sibling 1x1
convolutions: `cls` with 2k outputs (a two-class softmax per anchor: the paper's choice, its
footnote names k logistic outputs as the alternative) and `reg` with 4k. Anchors
(Sec. 3.1.1, 3.3): 3 scales of area 128^2, 256^2, 512^2 times 3 ratios 1:1, 1:2, 2:1 (k = 9) at
each conv5_3 position (`replicate.ops.anchors`). Labels (Sec. 3.1.2): positive for the anchor(s)
with the highest IoU with a ground-truth box and for any IoU > 0.7; negative below 0.3 for every
box; the rest ignored, and so are cross-boundary anchors in training (Sec. 3.3). 256 anchors per
image are sampled, up to half positive (Sec. 3.1.3). Loss (Eq. 1): log loss over the sampled
anchors (N_cls = their number, 256) plus lambda = 10 times the smooth L1 of the positives'
offsets (Eq. 2, unnormalised) summed and divided by N_reg = the number of anchor positions.

Proposals (Sec. 3.3): the anchors moved by `reg`, clipped to the image, NMS at IoU 0.7 on the
`cls` scores, the top 2000 kept in training and 300 at test time. Before NMS only the best
`pre_nms_top_n` boxes enter (12000 / 6000, the released code's numbers: the paper does not say).

Training (Sec. 3.2) is one of two schemes, chosen by `train_stage`:

* `"joint"`: approximate joint training (Sec. 3.2 (ii)): one network, RPN and Fast R-CNN losses
  summed, the proposals taken as fixed inputs of the detector (no gradient through their
  coordinates);
* the 4-step alternating training the paper's experiments use (Sec. 3.2 (i)) is four fits of
  `"rpn"` (the RPN's losses only) and `"detector"` (the Fast R-CNN losses only, on the proposals
  of `use_proposer`'s network, or of the model's own RPN when none is set), driven by
  `replicate.runs.alternating.fit_alternating`, which also freezes the shared layers in steps
  3 and 4.

The trunk initialisation, `frozen_convs` and `width_mult` are as in `replicate.models.fast_rcnn`;
the reduced profile also scales the anchors (`anchor_scales`) with its 128-pixel canvases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import anchors as A
from ..ops import boxes as B
from ._registry import register
from .fast_rcnn import (
    FG_FRACTION, ROIS_PER_IMAGE, STRIDE, FastRCNNHead, fast_rcnn_loss, freeze_convs, image_batch,
    load_vgg16_weights, postprocess, sample_rois, trunk_channels, vgg16_trunk,
)
from .layers import scaled
from .protocols import Detector


class RPNHead(nn.Module):
    """The sliding mini-network (Sec. 3.1, Fig. 3): 3x3 conv + ReLU, then `cls` (2k) and `reg` (4k)."""

    def __init__(self, in_channels: int, num_anchors: int = 9, channels: int = 512):
        super().__init__()
        self.num_anchors = int(num_anchors)
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.cls = nn.Conv2d(channels, 2 * num_anchors, 1)
        self.reg = nn.Conv2d(channels, 4 * num_anchors, 1)
        for conv in (self.conv, self.cls, self.reg):
            nn.init.normal_(conv.weight, std=0.01)  # Sec. 3.1.3: new layers from N(0, 0.01^2)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Logits [B, H*W*k, 2] and offsets [B, H*W*k, 4], ordered as `AnchorGrid`'s anchors."""
        x = F.relu(self.conv(features))
        b, _, h, w = x.shape
        logits = self.cls(x).view(b, self.num_anchors, 2, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 2)
        deltas = self.reg(x).view(b, self.num_anchors, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
        return logits, deltas


def rpn_targets(anchors: Tensor, gt_boxes: Tensor, image_hw: tuple[int, int], *, positive_iou: float = 0.7,
                negative_iou: float = 0.3, batch_size: int = 256, positive_fraction: float = 0.5,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The anchors' training labels and regression targets for one image (Sec. 3.1.2-3.1.3, 3.3).

    Returns `labels` [A] (1 positive, 0 negative, -1 ignored: cross-boundary, in between, or not
    sampled) and `targets` [A, 4] (Eq. 2, meaningful for positives)."""
    labels = torch.full((anchors.shape[0],), B.IGNORE, dtype=torch.int64, device=anchors.device)
    targets = torch.zeros_like(anchors)
    inside = torch.nonzero(A.inside_image(anchors, image_hw)).flatten()
    if inside.numel():
        iou = B.box_iou(anchors[inside], gt_boxes)
        matched, inside_labels = B.label_by_iou(iou, positive_iou, (0.0, negative_iou), best_match=True)
        labels[inside] = inside_labels
        positive = inside_labels > 0
        if bool(positive.any()):
            targets[inside[positive]] = B.encode(anchors[inside[positive]], gt_boxes[matched[positive]])
    labels = B.sample_labels(labels, batch_size, positive_fraction, generator=generator)
    return labels, targets


def rpn_loss(logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor, num_positions: int,
             reg_lambda: float = 10.0) -> tuple[Tensor, Tensor]:
    """Eq. 1 for one image: mean log loss over the sampled anchors, and lambda / N_reg times the
    summed smooth L1 of the positives (N_reg = number of anchor positions)."""
    sampled = labels >= 0
    loss_cls = F.cross_entropy(logits[sampled], labels[sampled]) if bool(sampled.any()) else logits.sum() * 0.0
    positive = labels > 0
    loss_box = F.smooth_l1_loss(deltas[positive], targets[positive], beta=1.0, reduction="sum") / max(1, num_positions)
    return loss_cls, reg_lambda * loss_box


@torch.no_grad()
def select_proposals(anchors: Tensor, logits: Tensor, deltas: Tensor, image_hw: tuple[int, int], *,
                     pre_nms_top_n: int, post_nms_top_n: int, nms_threshold: float = 0.7,
                     min_size: float = 0.0) -> tuple[Tensor, Tensor]:
    """One image's proposals (Sec. 3.3): decode, clip, drop boxes below `min_size`, keep the
    `pre_nms_top_n` best by objectness, NMS at `nms_threshold`, keep `post_nms_top_n`."""
    scores = F.softmax(logits, -1)[:, 1]
    boxes = B.clip_boxes_to_image(B.decode(anchors, deltas), image_hw)
    keep = B.remove_small_boxes(boxes, max(min_size, 1e-3))
    boxes, scores = boxes[keep], scores[keep]
    order = scores.argsort(descending=True)[:pre_nms_top_n]
    boxes, scores = boxes[order], scores[order]
    keep = B.nms(boxes, scores, nms_threshold)[:post_nms_top_n]
    return boxes[keep], scores[keep]


TRAIN_STAGES = ("joint", "rpn", "detector")


class FasterRCNN(Detector, nn.Module):
    """VGG-16 trunk shared by an RPN and a Fast R-CNN head; `model(images, targets)` returns
    the four losses in training, `model(images)` the detections in evaluation."""

    pretrained_part = "trunk"
    training_stages = True

    def __init__(self, num_classes: int = 20, in_channels: int = 3, width_mult: float = 1.0, *,
                 anchor_scales: Sequence[float] = A.PAPER_SCALES, anchor_ratios: Sequence[float] = A.PAPER_RATIOS,
                 anchor_scale_factor: float = 1.0,
                 rpn_channels: int | None = None, rpn_batch: int = 256, rpn_positive_fraction: float = 0.5,
                 rpn_positive_iou: float = 0.7, rpn_negative_iou: float = 0.3, rpn_lambda: float = 10.0,
                 rpn_nms: float = 0.7, pre_nms_top_n_train: int = 12000, post_nms_top_n_train: int = 2000,
                 pre_nms_top_n_test: int = 6000, post_nms_top_n_test: int = 300, proposal_min_size: float = 0.0,
                 rois_per_image: int = ROIS_PER_IMAGE, fg_fraction: float = FG_FRACTION, box_lambda: float = 1.0,
                 dropout: float = 0.5, frozen_convs: int = 0, trunk_weights: str | None = None,
                 score_threshold: float = 0.05, detections_per_image: int = 100):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult!r}")
        channels = trunk_channels(width_mult)
        self.trunk = vgg16_trunk(in_channels, width_mult)
        # `anchor_scale_factor` rescales the paper's anchors with the images (the reduced profile's
        # 128-pixel canvases hold objects about a quarter of a rescaled PASCAL image's).
        self.anchors = A.AnchorGrid([s * anchor_scale_factor for s in anchor_scales], anchor_ratios, stride=STRIDE)
        # Sec. 3.1: "512-d for VGG": the width of conv5_3, scaled with it.
        self.rpn = RPNHead(channels, self.anchors.num_anchors, rpn_channels or channels)
        self.head = FastRCNNHead(channels, num_classes, hidden=scaled(4096, width_mult), dropout=dropout)
        if trunk_weights:
            load_vgg16_weights(self.trunk, self.head, trunk_weights)
        freeze_convs(self.trunk, frozen_convs)
        self.num_classes = int(num_classes)
        self.rpn_batch, self.rpn_positive_fraction = int(rpn_batch), float(rpn_positive_fraction)
        self.rpn_positive_iou, self.rpn_negative_iou = float(rpn_positive_iou), float(rpn_negative_iou)
        self.rpn_lambda, self.rpn_nms = float(rpn_lambda), float(rpn_nms)
        self.proposal_min_size = float(proposal_min_size)
        self.top_n = {True: (int(pre_nms_top_n_train), int(post_nms_top_n_train)),
                      False: (int(pre_nms_top_n_test), int(post_nms_top_n_test))}
        self.rois_per_image, self.fg_fraction = int(rois_per_image), float(fg_fraction)
        self.box_lambda = float(box_lambda)
        self.score_threshold, self.detections_per_image = float(score_threshold), int(detections_per_image)
        self.train_stage = "joint"
        self._proposer: tuple[FasterRCNN, ...] = ()  # a tuple: another network, not a submodule

    @property
    def train_stage(self) -> str:
        """Which losses training computes: `"joint"` (all four, Sec. 3.2 (ii)), `"rpn"` (the RPN's)
        or `"detector"` (Fast R-CNN's, on proposals from `use_proposer`'s network or the own RPN)."""
        return self._train_stage

    @train_stage.setter
    def train_stage(self, stage: str) -> None:
        if stage not in TRAIN_STAGES:
            raise ValueError(f"train_stage={stage!r}; allowed: {', '.join(TRAIN_STAGES)}")
        self._train_stage = stage

    def use_proposer(self, proposer: FasterRCNN | None) -> None:
        """Train the detector on the proposals of another, fixed Faster R-CNN (step 2 of the
        alternating scheme: the step-1 RPN, whose conv layers are not shared yet); None: the own RPN."""
        self._proposer = (proposer.eval().requires_grad_(False),) if proposer is not None else ()

    def num_anchors(self, image_hw: tuple[int, int]) -> int:
        """All anchors of an (H, W) image: k per position of its conv5_3 map (Sec. 3.3)."""
        h, w = A.feature_size(image_hw, num_pools=4)
        return h * w * self.anchors.num_anchors

    def features(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        batch, sizes = image_batch(images)
        return self.trunk(batch), sizes

    def propose(self, features: Tensor, sizes: list[tuple[int, int]], *, for_training: bool | None = None,
                select: bool = True):
        """RPN outputs, the anchors and each image's proposals (detached: approximate joint
        training), selected with the training or test numbers (`for_training`, default: the
        module's mode); `select=False` skips the selection (an RPN-only training step)."""
        logits, deltas = self.rpn(features)
        # float32 whatever the autocast precision: bf16 cannot hold 600-pixel coordinates exactly.
        anchors = self.anchors(tuple(features.shape[-2:]), device=features.device, dtype=torch.float32)
        if not select:
            return logits, deltas, anchors, []
        pre, post = self.top_n[self.training if for_training is None else for_training]
        proposals = [select_proposals(anchors, lg.detach(), dl.detach(), hw, pre_nms_top_n=pre, post_nms_top_n=post,
                                      nms_threshold=self.rpn_nms, min_size=self.proposal_min_size)[0]
                     for lg, dl, hw in zip(logits, deltas, sizes)]
        return logits, deltas, anchors, proposals

    @torch.no_grad()
    def _fixed_proposals(self, images: Sequence[Tensor], features: Tensor, sizes: list[tuple[int, int]]) -> list[Tensor]:
        """Training proposals from a fixed RPN (the detector steps of the alternating scheme)."""
        if not self._proposer:
            return self.propose(features, sizes, for_training=True)[3]
        proposer = self._proposer[0]
        if next(proposer.parameters()).device != features.device:
            proposer.to(features.device)
        return proposer.propose(*proposer.features(images), for_training=True)[3]

    def detect(self, features: Tensor, proposals: list[Tensor], sizes: list[tuple[int, int]]) -> list[dict]:
        logits, deltas = self.head(features, proposals)
        return postprocess(logits, deltas, proposals, sizes, score_threshold=self.score_threshold,
                           detections_per_image=self.detections_per_image)

    def forward(self, images: Sequence[Tensor], targets: Sequence[Mapping] | None = None):
        features, sizes = self.features(images)
        if not self.training:
            return self.detect(features, self.propose(features, sizes)[3], sizes)
        if targets is None:
            raise ValueError("training needs targets")
        gts = [B.plain_tensor(t["boxes"]).float().reshape(-1, 4) for t in targets]
        stage = self.train_stage
        if stage == "detector":
            proposals = self._fixed_proposals(images, features, sizes)
        else:
            logits, deltas, anchors, proposals = self.propose(features, sizes, select=stage == "joint")
        num_positions = features.shape[-2] * features.shape[-1]
        rpn_cls, rpn_box, sampled = [], [], []
        for i, gt in enumerate(gts):  # per image: the RPN's anchors (Eq. 1), then Fast R-CNN's RoIs
            if stage != "detector":
                labels, box_targets = rpn_targets(anchors, gt, sizes[i], positive_iou=self.rpn_positive_iou,
                                                  negative_iou=self.rpn_negative_iou, batch_size=self.rpn_batch,
                                                  positive_fraction=self.rpn_positive_fraction)
                c, b = rpn_loss(logits[i], deltas[i], labels, box_targets, num_positions, self.rpn_lambda)
                rpn_cls.append(c)
                rpn_box.append(b)
            if stage != "rpn":
                sampled.append(sample_rois(proposals[i], gt, targets[i]["labels"], rois_per_image=self.rois_per_image,
                                           fg_fraction=self.fg_fraction))
        losses = {}
        if rpn_cls:
            losses.update(loss_rpn_cls=torch.stack(rpn_cls).mean(), loss_rpn_box=torch.stack(rpn_box).mean())
        if sampled:
            head_logits, head_deltas = self.head(features, [s[0] for s in sampled])
            losses.update(fast_rcnn_loss(head_logits, head_deltas, torch.cat([s[1] for s in sampled]),
                                         torch.cat([s[2] for s in sampled]), self.box_lambda))
        return losses


@register
def faster_rcnn_vgg16(num_classes: int = 20, in_channels: int = 3, **kw) -> FasterRCNN:
    """Faster R-CNN with VGG-16 (RPN + Fast R-CNN, shared conv layers): 20 VOC classes by default."""
    return FasterRCNN(num_classes=num_classes, in_channels=in_channels, **kw)
