"""Fast R-CNN (Girshick, ICCV 2015, arXiv 1504.08083) with the VGG-16 trunk ("model L").

The network (Sec. 2, Fig. 1): the conv layers of VGG-16 (configuration D of Simonyan &
Zisserman, `replicate.models.vgg`) with the last max-pool replaced by RoI max pooling to 7 x 7
(Sec. 2.1-2.2), then fc6 and fc7 (4096 each, ReLU and dropout 0.5 as in VGG), then two sibling
layers: a softmax over K + 1 classes (`cls_score`) and class-specific box regression offsets
(`bbox_pred`), "four real-valued numbers for each of the K object classes" (Sec. 2, 4K outputs;
the released Caffe model has 4(K + 1), a background slot that is never trained).

Training (Sec. 2.3): mini-batches of N = 2 images and R = 128 RoIs, 64 per image, a quarter of
them foreground (IoU >= 0.5 with a ground-truth box), the rest background (best IoU in
[0.1, 0.5)); horizontal flips; the multi-task loss L = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v)
with lambda = 1 and smooth L1 for L_loc (Eq. 1-3), the regression targets v normalised
(`box_weights` = (10, 10, 5, 5), i.e. standard deviations 0.1/0.2, the usual fixed choice).
Ground-truth boxes join the candidate RoIs (as the released code does). An image with no object
(every box of it `difficult`, hence dropped) has no proposal in [0.1, 0.5); its proposals are then
all taken as background candidates, so the image still contributes.

Detection (Sec. 3): the R proposals of an image are scored in one forward pass; each class's
boxes are the proposals moved by that class's offsets, scored by that class's probability, and
suppressed with per-class NMS at IoU 0.3 (R-CNN's setting, which Fast R-CNN reuses).
`truncated_svd` compresses fc6 and fc7 as Sec. 3.1 does (top 1024 and 256 singular values).

Proposals come from outside the network (selective search, `replicate.data.detection.proposals`): in training
each target carries them as `target["proposals"]`; in evaluation they are passed as
`model(images, proposals=...)` (`replicate.runs.detection.ProposalDetectionTask` does both).

Where this differs from the paper: the trunk is initialised from ImageNet-pretrained VGG-16 only
when `trunk_weights` names a state dict (no download here); otherwise it starts from He et al.'s
initialisation (the reduced profile, which trains from scratch; see `vgg16_trunk`). `frozen_convs` (4 in
the paper: conv1_1-conv2_2 stay fixed, Sec. 4.5) only makes sense with pretrained weights.
`width_mult` narrows every layer for the reduced profile (1.0: the paper's sizes).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import boxes as B
from ._registry import register
from .layers import scaled
from .protocols import Detector
from .vgg import CONFIGS, make_features

# Sec. 2.3's sampling and Sec. 3's detection settings.
ROIS_PER_IMAGE = 64
FG_FRACTION = 0.25
FG_IOU = 0.5
BG_IOU = (0.1, 0.5)
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
TEST_NMS = 0.3
STRIDE = 16  # VGG-16's conv5_3: four 2x2 max-pools


def vgg16_trunk(in_channels: int = 3, width_mult: float = 1.0) -> nn.Sequential:
    """The 13 conv layers of VGG-16 (configuration D) without the last max-pool: conv5_3's
    feature map at stride 16 (Fast R-CNN Sec. 2.2, Faster R-CNN Sec. 3.1).

    The papers start from ImageNet weights (`load_vgg16_weights`). Without them the layers are
    initialised as He et al. (2015) do for ReLU stacks: Glorot's scaling (`vgg.VGG`'s) halves
    the activations' variance at each of the 13 ReLU layers, and a trunk started that way
    does not learn within the reduced profile's few hundred steps (measured: chance accuracy)."""
    trunk = make_features(CONFIGS["D"][:-1], in_channels, width_mult)
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return trunk


def trunk_channels(width_mult: float) -> int:
    return scaled(512, width_mult)


def freeze_convs(trunk: nn.Sequential, count: int) -> None:
    """Freeze the first `count` conv layers (Fast R-CNN Sec. 4.5: VGG-16 fine-tunes conv3_1 and
    up, i.e. the first 4 stay fixed)."""
    convs = [m for m in trunk if isinstance(m, nn.Conv2d)]
    if count < 0 or count > len(convs):
        raise ValueError(f"frozen_convs={count} must lie in [0, {len(convs)}]")
    for conv in convs[:count]:
        for p in conv.parameters():
            p.requires_grad_(False)


def load_vgg16_weights(trunk: nn.Sequential, head: FastRCNNHead | None, source: str | Path | Mapping) -> None:
    """Initialise from a VGG-16 state dict in torchvision's (or `vgg.VGG`'s, the same) layout:
    `features.<i>.*` into the trunk, `classifier.0.*` / `classifier.3.*` into fc6 / fc7."""
    state = torch.load(source, map_location="cpu", weights_only=True) if not isinstance(source, Mapping) else source
    trunk_state = {k[len("features."):]: v for k, v in state.items()
                   if k.startswith("features.") and int(k.split(".")[1]) < len(trunk)}
    trunk.load_state_dict(trunk_state)
    if head is not None and "classifier.0.weight" in state:
        head.fc6.load_state_dict({"weight": state["classifier.0.weight"], "bias": state["classifier.0.bias"]})
        head.fc7.load_state_dict({"weight": state["classifier.3.weight"], "bias": state["classifier.3.bias"]})


class FastRCNNHead(nn.Module):
    """RoI max pooling to `pool_size` x `pool_size`, fc6, fc7, and the two sibling outputs
    (Sec. 2, Fig. 1): `cls_score` (K + 1) and `bbox_pred` (4K)."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 4096, pool_size: int = 7,
                 dropout: float = 0.5, spatial_scale: float = 1.0 / STRIDE):
        super().__init__()
        self.num_classes = int(num_classes)
        self.pool_size = int(pool_size)
        self.spatial_scale = float(spatial_scale)
        self.fc6 = nn.Linear(in_channels * pool_size * pool_size, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.cls_score = nn.Linear(hidden, num_classes + 1)
        self.bbox_pred = nn.Linear(hidden, 4 * num_classes)
        for fc in (self.fc6, self.fc7):  # ReLU layers: He et al.'s scaling, as the trunk's
            nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        # Sec. 2.2 / released code: the new layers from zero-mean Gaussians, std 0.01 and 0.001.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, features: Tensor, rois: list[Tensor]) -> tuple[Tensor, Tensor]:
        pooled = B.roi_pool(features, rois, self.pool_size, self.spatial_scale)
        x = self.dropout(F.relu(self.fc6(pooled.flatten(1))))
        x = self.dropout(F.relu(self.fc7(x)))
        return self.cls_score(x), self.bbox_pred(x)


def truncated_svd(head: FastRCNNHead, fc6_rank: int = 1024, fc7_rank: int = 256) -> FastRCNNHead:
    """A copy of `head` whose fc6 and fc7 are each replaced by two layers without a
    non-linearity between them (Sec. 3.1): W (u x v) ~ U_t Sigma_t V_t^T becomes Sigma_t V_t^T
    (t x v, no bias) followed by U_t (u x t) with W's bias, cutting the weights from uv to
    t(u + v). The paper keeps the top 1024 singular values of VGG-16's fc6 (25088 x 4096 in its
    notation) and the top 256 of fc7 (4096 x 4096)."""
    out = copy.deepcopy(head)
    for name, rank in (("fc6", fc6_rank), ("fc7", fc7_rank)):
        layer: nn.Linear = getattr(head, name)
        weight = layer.weight.detach()
        t = min(int(rank), *weight.shape)
        first = nn.Linear(layer.in_features, t, bias=False, device=weight.device, dtype=weight.dtype)
        second = nn.Linear(t, layer.out_features, device=weight.device, dtype=weight.dtype)
        if weight.device.type != "meta":  # on the meta device (counting) there are only shapes
            u, s, vh = torch.linalg.svd(weight.to(torch.float64), full_matrices=False)
            with torch.no_grad():
                first.weight.copy_((s[:t, None] * vh[:t]).to(weight.dtype))
                second.weight.copy_(u[:, :t].to(weight.dtype))
                second.bias.copy_(layer.bias.detach())
        setattr(out, name, nn.Sequential(first, second))
    return out


def sample_rois(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, rois_per_image: int = ROIS_PER_IMAGE,
                fg_fraction: float = FG_FRACTION, fg_iou: float = FG_IOU, bg_iou: tuple[float, float] = BG_IOU,
                box_weights: Sequence[float] = BOX_WEIGHTS, generator: torch.Generator | None = None,
                ) -> tuple[Tensor, Tensor, Tensor]:
    """One image's training RoIs (Sec. 2.3): candidates are the proposals and the ground-truth
    boxes; foreground has IoU >= `fg_iou` (up to `fg_fraction` of `rois_per_image`), background
    a best IoU in `bg_iou`. Returns (rois [R, 4], class labels [R] with 0 = background,
    regression targets [R, 4], zero for background)."""
    candidates = torch.cat([proposals.reshape(-1, 4).to(gt_boxes.dtype), gt_boxes], 0)
    if gt_boxes.shape[0] == 0:
        bg_iou = (0.0, bg_iou[1])  # nothing to overlap: every proposal is background
    iou = B.box_iou(candidates, gt_boxes)
    matched, fg = B.label_by_iou(iou, fg_iou, bg_iou)
    kept = B.sample_labels(fg, rois_per_image, fg_fraction, generator=generator)
    index = torch.nonzero(kept >= 0).flatten()
    rois = candidates[index]
    is_fg = kept[index] > 0
    labels = torch.zeros(index.numel(), dtype=torch.int64, device=candidates.device)
    targets = torch.zeros(index.numel(), 4, dtype=candidates.dtype, device=candidates.device)
    if gt_boxes.shape[0] > 0 and bool(is_fg.any()):
        gt_index = matched[index][is_fg]
        labels[is_fg] = gt_labels[gt_index]
        targets[is_fg] = B.encode(rois[is_fg], gt_boxes[gt_index], box_weights)
    return rois, labels, targets


def fast_rcnn_loss(class_logits: Tensor, box_deltas: Tensor, labels: Tensor, targets: Tensor,
                   box_lambda: float = 1.0) -> dict[str, Tensor]:
    """Eq. 1: log loss of the true class plus lambda * smooth L1 (Eq. 2-3) of the true class's
    offsets on foreground RoIs, both averaged over the mini-batch's RoIs."""
    loss_cls = F.cross_entropy(class_logits, labels)
    fg = torch.nonzero(labels > 0).flatten()
    deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[fg, labels[fg] - 1]
    loss_box = F.smooth_l1_loss(deltas, targets[fg], beta=1.0, reduction="sum") / max(1, labels.numel())
    return {"loss_cls": loss_cls, "loss_box": box_lambda * loss_box}


@torch.no_grad()
def postprocess(class_logits: Tensor, box_deltas: Tensor, rois: list[Tensor], image_sizes: list[tuple[int, int]],
                *, score_threshold: float = 0.05, nms_threshold: float = TEST_NMS, detections_per_image: int = 100,
                box_weights: Sequence[float] = BOX_WEIGHTS) -> list[dict[str, Tensor]]:
    """Per image and class: proposals moved by that class's offsets, clipped, scored by the
    class's probability, kept above `score_threshold`, then per-class NMS (Sec. 3) and the
    `detections_per_image` best."""
    probs = F.softmax(class_logits, -1)
    num_classes = probs.shape[1] - 1
    out = []
    start = 0
    for boxes, hw in zip(rois, image_sizes):
        n = boxes.shape[0]
        p, d = probs[start:start + n, 1:], box_deltas[start:start + n]
        start += n
        decoded = B.clip_boxes_to_image(B.decode(boxes, d, box_weights).reshape(n, num_classes, 4), hw)
        labels = torch.arange(1, num_classes + 1, device=p.device).expand(n, num_classes)
        decoded, scores, labels = decoded.reshape(-1, 4), p.reshape(-1), labels.reshape(-1)
        keep = torch.nonzero(scores > score_threshold).flatten()
        decoded, scores, labels = decoded[keep], scores[keep], labels[keep]
        wide = (decoded[:, 2] - decoded[:, 0] > 1e-3) & (decoded[:, 3] - decoded[:, 1] > 1e-3)
        decoded, scores, labels = decoded[wide], scores[wide], labels[wide]
        keep = B.batched_nms(decoded, scores, labels, nms_threshold)[:detections_per_image]
        out.append({"boxes": decoded[keep], "scores": scores[keep], "labels": labels[keep]})
    return out


def image_batch(images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
    """Images of different sizes zero-padded into one batch (bottom/right), with their sizes."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    batch = images[0].new_zeros(len(images), images[0].shape[0], h, w)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(torch.as_tensor(im))
    return batch, sizes


class FastRCNN(Detector, nn.Module):
    """VGG-16 trunk + RoI pooling + Fast R-CNN head, fed external proposals (selective search)."""

    pretrained_part = "trunk"
    needs_proposals = True

    def __init__(self, num_classes: int = 20, in_channels: int = 3, width_mult: float = 1.0, *,
                 rois_per_image: int = ROIS_PER_IMAGE, fg_fraction: float = FG_FRACTION, box_lambda: float = 1.0,
                 dropout: float = 0.5, frozen_convs: int = 0, trunk_weights: str | None = None,
                 score_threshold: float = 0.05, detections_per_image: int = 100):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, not {width_mult!r}")
        self.trunk = vgg16_trunk(in_channels, width_mult)
        self.head = FastRCNNHead(trunk_channels(width_mult), num_classes, hidden=scaled(4096, width_mult),
                                 dropout=dropout)
        if trunk_weights:
            load_vgg16_weights(self.trunk, self.head, trunk_weights)
        freeze_convs(self.trunk, frozen_convs)
        self.num_classes = int(num_classes)
        self.rois_per_image, self.fg_fraction = int(rois_per_image), float(fg_fraction)
        self.box_lambda = float(box_lambda)
        self.score_threshold, self.detections_per_image = float(score_threshold), int(detections_per_image)

    def features(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        batch, sizes = image_batch(images)
        return self.trunk(batch), sizes

    def forward(self, images: Sequence[Tensor], targets: Sequence[Mapping] | None = None,
                proposals: Sequence[Tensor] | None = None):
        if proposals is None:
            if targets is None or any("proposals" not in t for t in targets):
                raise ValueError("Fast R-CNN needs proposals: pass proposals=[...] or targets with 'proposals' "
                                 "(replicate.data.detection.proposals attaches selective search boxes to the targets).")
            proposals = [t["proposals"] for t in targets]
        proposals = [B.plain_tensor(p).to(images[0].device, torch.float32).reshape(-1, 4) for p in proposals]
        features, sizes = self.features(images)
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            sampled = [sample_rois(p, B.plain_tensor(t["boxes"]).float(), t["labels"], rois_per_image=self.rois_per_image,
                                   fg_fraction=self.fg_fraction) for p, t in zip(proposals, targets)]
            rois = [s[0] for s in sampled]
            logits, deltas = self.head(features, rois)
            return fast_rcnn_loss(logits, deltas, torch.cat([s[1] for s in sampled]),
                                  torch.cat([s[2] for s in sampled]), self.box_lambda)
        rois = [B.clip_boxes_to_image(p, hw) for p, hw in zip(proposals, sizes)]
        logits, deltas = self.head(features, rois)
        return postprocess(logits, deltas, rois, sizes, score_threshold=self.score_threshold,
                           detections_per_image=self.detections_per_image)


@register
def fast_rcnn_vgg16(num_classes: int = 20, in_channels: int = 3, **kw) -> FastRCNN:
    """Fast R-CNN with VGG-16 ("model L", Sec. 4.1): 20 VOC classes by default."""
    return FastRCNN(num_classes=num_classes, in_channels=in_channels, **kw)
