"""R-CNN (Girshick, Donahue, Darrell & Malik, CVPR 2014, arXiv 1311.2524): regions with CNN features.

Per image (Sec. 2): about 2000 selective search proposals ("fast" mode, `replicate.data.detection.proposals`);
each is dilated so that the warped window has p = 16 pixels of context around the box, warped
anisotropically to the CNN's input (227 x 227 for AlexNet, Appendix A) and passed through the
CNN; class-specific linear SVMs score its fc7 features (Sec. 2.3), class-specific ridge
regressors move its box from its pool5 features (Appendix C), and greedy per-class NMS keeps the
best-scoring boxes (IoU 0.3, the released code's threshold).

Training is the paper's three stages:

1. fine-tuning (Sec. 2.3): the CNN, with its ImageNet classifier replaced by an (N + 1)-way one,
   learns by SGD on warped proposals: IoU >= 0.5 with a ground-truth box counts as that box's
   class, the rest as background; mini-batches of 128 windows, 32 foreground and 96 background
   (here each image of a mini-batch contributes 128 / images windows, a quarter foreground). This
   is `model(images, targets)` under `DetectionTask`.
2. SVMs (Sec. 2.3, Appendix B): one linear SVM per class on fc7 features; positives are the
   ground-truth boxes of the class, negatives the proposals with IoU < 0.3 with every instance of
   it; hard negative mining (a first fit on a random subset of negatives, then refits with the
   negatives that violate the margin). `fit_post_hoc(loader)` (called by
   `replicate.runs.detection` after fine-tuning).
3. box regression (Appendix C): per class, ridge regression (lambda = 1000) from pool5 features
   of proposals with IoU > 0.6 with a ground-truth box to the targets of Eq. 6-9.

Before stages 2 and 3 the features are rescaled to an average norm of 20 (`FEATURE_NORM`), as
the released code does: the paper's C and lambda hold at that scale.

The CNNs: `rcnn_alexnet` is Krizhevsky et al.'s network as Caffe's reference model has it (the
paper's "T-Net": conv1 96 11x11/4, LRN, max-pool; conv2 256 5x5 in 2 groups, LRN, max-pool; conv3
384; conv4 384 and conv5 256 in 2 groups; max-pool: pool5 6 x 6 x 256 = 9216; fc6, fc7 4096);
`rcnn_vgg16` is VGG-16 ("O-Net", Sec. 3.3) on 224 x 224 warps (pool5 7 x 7 x 512). Without
ImageNet weights (`trunk_weights`) the layers start from He et al.'s initialisation (see
`fast_rcnn.vgg16_trunk`); `width_mult` and `warp_size` shrink them for the reduced profile.
The warp is bilinear sampling of the dilated box (torchvision's roi_align), zero (the mean, after
mean subtraction) outside the image, as the paper's warp pads with the image mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..ops import boxes as B
from ._registry import register
from .fast_rcnn import vgg16_trunk
from .layers import scaled
from .protocols import Detector

CONTEXT = 16          # Sec. 2.1 / Appendix A: pixels of context around the box, at the warped size
FG_IOU = 0.5          # Sec. 2.3: fine-tuning positives
SVM_NEG_IOU = 0.3     # Sec. 2.3: SVM negatives below this overlap
BBOX_IOU = 0.6        # Appendix C: regression examples
BBOX_LAMBDA = 1000.0  # Appendix C
# The released code rescales the features of the SVMs (fc7) and of the regressors (pool5) to an
# average L2 norm of 20 before fitting them: C = 0.001 and lambda = 1000 were chosen at that scale,
# whatever the network's own feature norms (a narrower network's are smaller).
FEATURE_NORM = 20.0
TEST_NMS = 0.3


def alexnet_features(in_channels: int = 3, width_mult: float = 1.0) -> nn.Sequential:
    """conv1-conv5 and pool5 of Caffe's reference AlexNet (R-CNN's "T-Net")."""
    def w(c):
        return 2 * max(1, round(c * width_mult / 2))  # even: conv2, 4, 5 run in two groups

    layers = nn.Sequential(
        nn.Conv2d(in_channels, w(96), 11, stride=4), nn.ReLU(inplace=True),
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0), nn.MaxPool2d(3, 2),
        nn.Conv2d(w(96), w(256), 5, padding=2, groups=2), nn.ReLU(inplace=True),
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0), nn.MaxPool2d(3, 2),
        nn.Conv2d(w(256), w(384), 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(w(384), w(384), 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(w(384), w(256), 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
    )
    for m in layers.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return layers


def dilate(boxes: Tensor, warp_size: int, context: int = CONTEXT) -> Tensor:
    """Boxes grown so that, warped to `warp_size`, `context` pixels surround the original box
    (Appendix A): the box fills warp_size - 2 * context of the warped window."""
    scale = warp_size / max(1, warp_size - 2 * context)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w, h = (boxes[:, 2] - boxes[:, 0]) * scale, (boxes[:, 3] - boxes[:, 1]) * scale
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


class RCNN(Detector, nn.Module):
    """R-CNN: warped regions through a CNN; (N + 1)-way fine-tuning; SVMs and box regressors."""

    pretrained_part = "features"
    needs_proposals = True
    optional_box_regression = True
    post_hoc_fit = True

    def __init__(self, features: nn.Sequential, feature_channels: int, num_classes: int, *, warp_size: int,
                 hidden: int = 4096, dropout: float = 0.5, context: int = CONTEXT, windows_per_batch: int = 128,
                 fg_fraction: float = 0.25, svm_c: float = 0.001, svm_positive_weight: float = 2.0,
                 svm_rounds: int = 2, bbox_lambda: float = BBOX_LAMBDA, score_threshold: float = -1.0,
                 detections_per_image: int = 100, feature_batch: int = 256):
        super().__init__()
        self.features = features
        with torch.no_grad():
            probe = features(torch.zeros(1, features[0].in_channels, warp_size, warp_size,
                                         device=features[0].weight.device))
        self.pool5_shape = tuple(probe.shape[1:])
        pool5 = int(probe[0].numel())
        if probe.shape[-1] < 1:
            raise ValueError(f"warp_size={warp_size} is too small for this CNN")
        self.fc6 = nn.Linear(pool5, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.cls_score = nn.Linear(hidden, num_classes + 1)  # fine-tuning's (N + 1)-way classifier
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)
        # The post-hoc stages' parameters, buffers so that checkpoints carry them.
        self.register_buffer("svm_weight", torch.zeros(num_classes, hidden))
        self.register_buffer("svm_bias", torch.zeros(num_classes))
        self.register_buffer("bbox_weight", torch.zeros(num_classes, pool5 + 1, 4))
        self.num_classes, self.warp_size, self.context = int(num_classes), int(warp_size), int(context)
        self.windows_per_batch, self.fg_fraction = int(windows_per_batch), float(fg_fraction)
        self.svm_c, self.svm_positive_weight = float(svm_c), float(svm_positive_weight)
        self.svm_rounds = int(svm_rounds)
        self.bbox_lambda = float(bbox_lambda)
        self.score_threshold, self.detections_per_image = float(score_threshold), int(detections_per_image)
        self.feature_batch = int(feature_batch)
        self.box_regression = True  # False: the SVM-scored proposals as they are (Table 2's "FT fc7" rows)

    # -- regions ------------------------------------------------------------------------------
    def warp(self, image: Tensor, boxes: Tensor) -> Tensor:
        """The warped windows [R, C, warp, warp] of `boxes` in one image (with context)."""
        rois = dilate(boxes, self.warp_size, self.context)
        return roi_align(image[None], [rois], self.warp_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)

    def region_features(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        """pool5 (flattened) and fc7 of warped windows."""
        pool5 = self.features(windows).flatten(1)
        fc7 = F.relu(self.fc7(self.dropout(F.relu(self.fc6(pool5)))))
        return pool5, self.dropout(fc7)

    def _features_of(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        pools, fcs = [], []
        for start in range(0, len(boxes), self.feature_batch):
            p, f = self.region_features(self.warp(image, boxes[start:start + self.feature_batch]))
            pools.append(p)
            fcs.append(f)
        if not pools:
            d = self.fc7.out_features
            return boxes.new_zeros(0, self.fc6.in_features), boxes.new_zeros(0, d)
        return torch.cat(pools), torch.cat(fcs)

    # -- stage 1: fine-tuning -----------------------------------------------------------------
    def forward(self, images: Sequence[Tensor], targets: Sequence[Mapping] | None = None,
                proposals: Sequence[Tensor] | None = None):
        if proposals is None:
            if targets is None or any("proposals" not in t for t in targets):
                raise ValueError("R-CNN needs proposals: pass proposals=[...] or targets with 'proposals'.")
            proposals = [t["proposals"] for t in targets]
        proposals = [B.plain_tensor(p).to(images[0].device, torch.float32).reshape(-1, 4) for p in proposals]
        if not self.training:
            return self.detect(images, proposals)
        per_image = max(1, self.windows_per_batch // len(images))
        windows, labels = [], []
        for image, boxes, target in zip(images, proposals, targets):
            gt = B.plain_tensor(target["boxes"]).float().reshape(-1, 4)
            candidates = torch.cat([boxes, gt])
            iou = B.box_iou(candidates, gt)
            matched, fg = B.label_by_iou(iou, FG_IOU, (0.0, FG_IOU))
            kept = B.sample_labels(fg, per_image, self.fg_fraction)
            index = torch.nonzero(kept >= 0).flatten()
            label = torch.zeros(len(index), dtype=torch.int64, device=image.device)
            is_fg = kept[index] > 0
            if gt.shape[0]:
                label[is_fg] = target["labels"][matched[index][is_fg]]
            windows.append(self.warp(B.plain_tensor(image), candidates[index]))
            labels.append(label)
        _, fc7 = self.region_features(torch.cat(windows))
        return {"loss_cls": F.cross_entropy(self.cls_score(fc7), torch.cat(labels))}

    # -- stages 2 and 3: SVMs and box regressors ------------------------------------------------
    @torch.no_grad()
    def collect(self, loader) -> dict[str, Tensor]:
        """fc7 and pool5 features of every training image's ground truth and proposals, with
        their best IoU and class (no fine-tuning's dropout)."""
        was_training = self.training
        self.eval()
        fc7s, pool5s, ious, classes, is_gt, boxes_all, gts_all = [], [], [], [], [], [], []
        try:
            for images, targets in loader:
                for image, target in zip(images, targets):
                    gt = B.plain_tensor(target["boxes"]).float().reshape(-1, 4).to(image.device)
                    props = B.plain_tensor(target["proposals"]).float().reshape(-1, 4).to(image.device)
                    boxes = torch.cat([gt, props])
                    pool5, fc7 = self._features_of(B.plain_tensor(image), boxes)
                    if gt.shape[0]:
                        best, match = B.box_iou(boxes, gt).max(1)
                        cls = target["labels"].to(image.device)[match]
                        matched_gt = gt[match]
                    else:
                        best = boxes.new_zeros(len(boxes))
                        cls = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                        matched_gt = boxes.clone()
                    flags = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
                    flags[: gt.shape[0]] = True
                    for store, value in ((fc7s, fc7), (pool5s, pool5), (ious, best), (classes, cls), (is_gt, flags),
                                         (boxes_all, boxes), (gts_all, matched_gt)):
                        store.append(value.cpu())
        finally:
            self.train(was_training)
        return {"fc7": torch.cat(fc7s), "pool5": torch.cat(pool5s), "iou": torch.cat(ious), "cls": torch.cat(classes),
                "gt": torch.cat(is_gt), "boxes": torch.cat(boxes_all), "matched": torch.cat(gts_all)}

    def fit_post_hoc(self, loader, *, generator: torch.Generator | None = None) -> dict[str, float]:
        """Stages 2 and 3 on the training images of `loader` (targets carrying proposals)."""
        data = self.collect(loader)
        generator = generator or torch.Generator().manual_seed(0)
        fc7, iou, cls, gt = data["fc7"].double(), data["iou"], data["cls"], data["gt"]
        fc7_norm, pool5_norm = (float(data[k].double().norm(dim=1).mean()) for k in ("fc7", "pool5"))
        fc7_scale, pool5_scale = (FEATURE_NORM / n if n > 0 else 1.0 for n in (fc7_norm, pool5_norm))
        fc7 = fc7 * fc7_scale
        stats = {"svm_feature_norm": round(fc7_norm, 4), "bbox_feature_norm": round(pool5_norm, 4)}
        for k in range(1, self.num_classes + 1):
            positive = gt & (cls == k)
            # Negatives: proposals below 0.3 IoU with every instance of class k.
            negative = ~gt & ~((cls == k) & (iou >= SVM_NEG_IOU))
            w, b, hard = self._svm(fc7[positive], fc7[negative], generator)
            # The scale folded into the weights: w . (s x) = (s w) . x, so detection reads raw fc7.
            self.svm_weight[k - 1] = (w * fc7_scale).to(self.svm_weight.dtype)
            self.svm_bias[k - 1] = float(b)
            stats[f"svm_hard_negatives_{k}"] = hard
        pool5 = data["pool5"].double() * pool5_scale
        pool5 = torch.cat([pool5, torch.ones(len(pool5), 1, dtype=torch.float64)], 1)
        for k in range(1, self.num_classes + 1):
            use = (cls == k) & (iou > BBOX_IOU)
            if not bool(use.any()):
                continue
            x = pool5[use]
            t = B.encode(data["boxes"][use], data["matched"][use]).double()
            reg = self.bbox_lambda * torch.eye(x.shape[1], dtype=torch.float64)
            reg[-1, -1] = 0.0  # the bias is not regularised
            beta = torch.linalg.solve(x.T @ x + reg, x.T @ t)
            beta[:-1] *= pool5_scale  # folded in, as the SVMs' scale
            self.bbox_weight[k - 1] = beta.to(self.bbox_weight.dtype)
        return stats

    def _svm(self, positives: Tensor, negatives: Tensor, generator: torch.Generator) -> tuple[Tensor, float, int]:
        """A linear SVM (hinge loss, L2 penalty 1 / (2C) as liblinear's C, positives weighted),
        with hard negative mining: fit on the positives and a random 5000 negatives, then add
        the negatives with margin violations (score > -1) and refit, `svm_rounds` times."""
        d = positives.shape[1] if len(positives) else negatives.shape[1]
        if len(positives) == 0 or len(negatives) == 0:
            return torch.zeros(d, dtype=torch.float64), -1.0, 0
        order = torch.randperm(len(negatives), generator=generator)
        cache = negatives[order[:5000]]
        w, b = torch.zeros(d, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        hard = 0
        for _ in range(max(1, self.svm_rounds)):
            w, b = fit_svm(positives, cache, self.svm_c, self.svm_positive_weight, w, b)
            scores = negatives @ w + b
            violators = negatives[scores > -1.0]
            hard = len(violators)
            if hard == 0:
                break
            cache = torch.cat([cache[(cache @ w + b) > -1.0], violators])  # keep the hard ones only
        return w, float(b), hard

    # -- detection ------------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, images: Sequence[Tensor], proposals: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        out = []
        for image, boxes in zip(images, proposals):
            hw = (int(image.shape[-2]), int(image.shape[-1]))
            boxes = B.clip_boxes_to_image(boxes, hw)
            pool5, fc7 = self._features_of(B.plain_tensor(image), boxes)
            scores = fc7 @ self.svm_weight.T + self.svm_bias  # [R, K]
            x = torch.cat([pool5, pool5.new_ones(len(pool5), 1)], 1)
            deltas = torch.einsum("rd,kdc->rkc", x, self.bbox_weight)  # [R, K, 4]
            if not self.box_regression:
                deltas = torch.zeros_like(deltas)
            n, k = scores.shape
            moved = B.clip_boxes_to_image(B.decode(boxes, deltas.reshape(n, 4 * k)).reshape(n, k, 4), hw)
            labels = torch.arange(1, k + 1, device=scores.device).expand(n, k)
            moved, scores, labels = moved.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
            keep = torch.nonzero(scores > self.score_threshold).flatten()
            moved, scores, labels = moved[keep], scores[keep], labels[keep]
            wide = (moved[:, 2] - moved[:, 0] > 1e-3) & (moved[:, 3] - moved[:, 1] > 1e-3)
            moved, scores, labels = moved[wide], scores[wide], labels[wide]
            keep = B.batched_nms(moved, scores, labels, TEST_NMS)[: self.detections_per_image]
            out.append({"boxes": moved[keep], "scores": scores[keep], "labels": labels[keep]})
        return out


def fit_svm(positives: Tensor, negatives: Tensor, c: float, positive_weight: float, w: Tensor, b: Tensor,
            iterations: int = 200) -> tuple[Tensor, Tensor]:
    """min 1/2 |w|^2 + C sum_i weight_i max(0, 1 - y_i (w.x_i + b))^2 (L2-loss SVM, liblinear's
    default dual solver's objective) by L-BFGS, warm-started from (w, b)."""
    x = torch.cat([positives, negatives])
    y = torch.cat([torch.ones(len(positives)), -torch.ones(len(negatives))]).double()
    weight = torch.where(y > 0, positive_weight, 1.0).double()
    params = torch.cat([w, b.reshape(1)]).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([params], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        margin = (1 - y * (x @ params[:-1] + params[-1])).clamp(min=0)
        loss = 0.5 * params[:-1].pow(2).sum() + c * (weight * margin.pow(2)).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    params = params.detach()
    return params[:-1], params[-1]


@register
def rcnn_alexnet(num_classes: int = 20, in_channels: int = 3, width_mult: float = 1.0, warp_size: int = 227,
                 **kw) -> RCNN:
    """R-CNN with Krizhevsky et al.'s network (Caffe's reference model; the paper's "T-Net")."""
    features = alexnet_features(in_channels, width_mult)
    return RCNN(features, scaled(256, width_mult), num_classes, warp_size=warp_size,
                hidden=scaled(4096, width_mult), **kw)


@register
def rcnn_vgg16(num_classes: int = 20, in_channels: int = 3, width_mult: float = 1.0, warp_size: int = 224,
               **kw) -> RCNN:
    """R-CNN with VGG-16 (the paper's "O-Net", Sec. 3.3): configuration D's conv layers and
    five max-pools (pool5 7 x 7 x 512 at 224)."""
    features = vgg16_trunk(in_channels, width_mult)
    features.append(nn.MaxPool2d(2, 2))
    return RCNN(features, scaled(512, width_mult), num_classes, warp_size=warp_size,
                hidden=scaled(4096, width_mult), **kw)
