"""YOLOv4 (Bochkovskiy, Wang & Liao 2020, arXiv 2004.10934): CSPDarknet53 and the detector.

Architecture (Sec. 3.4): backbone CSPDarknet53, neck SPP + PAN, head YOLOv3.

* CSPDarknet53 (Sec. 3.1, Table 1): Darknet-53's stages (YOLOv3 Table 1) made cross-stage
  partial: after each stage's 3x3/2 downsampling, two 1x1 convolutions split the map into a part
  that goes through the residual blocks and a 1x1 "transition", and a part that bypasses them;
  the two are concatenated and fused by a 1x1. The first stage keeps the full width (64) in both
  parts and a 32-wide bottleneck, the others halve it (bottleneck 1x1 and 3x3 at half width); the
  widths are those of the released csdarknet53-omega.cfg / yolov4.cfg, which the paper does not
  print. Mish everywhere (Table 3). It has 29 3x3 convolutions and a 725 x 725 receptive field
  (Sec. 3.1), 27.6 M parameters and 52 BFLOPs = 26.0 billion FMA at 512 x 512 (Table 1).
  Counted here: 27,642,184 parameters (with the 1000-way classifier: 26.6 M without it) and
  26.03 billion multiply-adds at 512, of which the classifier is 0.001: Table 1 counts the
  classification network, classifier included.
* SPP (Sec. 2.3, 3.4): max-pooling of sizes 5, 9, 13 at stride 1, concatenated with its input,
  between three convolutions on each side, over the stride-32 map.
* PAN (Sec. 3.4, Fig. 6 "modified PAN": the shortcut of PAN's path aggregation replaced by a
  concatenation): a top-down path (1x1, 2x upsampling, concatenation with a 1x1 of the backbone
  map, five convolutions) to stride 8, then a bottom-up path (3x3/2, concatenation with the
  top-down map, five convolutions) back to stride 32; a YOLOv3 prediction head (3x3 + 1x1) on each.
  The neck uses leaky ReLU as the released yolov4.cfg (`mish_neck=True`: Mish, as yolov4-sam-mish).

Bag of freebies / specials, each a constructor knob (defaults: the released yolov4.cfg, i.e. the
model behind Tables 8-10, see below):

* `box_loss` "ciou" | "diou" | "giou" | "mse" (Table 4 "loss"; torchvision's IoU losses, weighted
  by the "loss normalizer 0.07" of Sec. 4.1; MSE is YOLOv3's SSE, weight 1).
* `grid_sensitivity` (Sec. 4.3 "S"): b_x = alpha sigma(t_x) - (alpha - 1)/2 + c_x with alpha > 1
  so that the cell borders are reachable; the paper says only "a factor exceeding 1.0": 1.2, 1.1
  and 1.05 for strides 8, 16, 32 are the released cfg's `scale_x_y` (1.0 = off).
* `iou_thresh_multi_anchor` (Sec. 4.3 "IT"): every anchor with IoU(truth, anchor) above it is
  assigned too; 0.213 (Sec. 4.1, "IoU threshold for assigning ground truth 0.213").
* `label_smoothing` (Table 4 "LS", for the sigmoid class outputs); 0: the paper lists it among the
  backbone's (classifier's) freebies, not the detector's.
* `dropblock` (Sec. 3.2, 3.4): DropBlock drop probability on the three backbone maps entering the
  neck, block `dropblock_size` (7, the DropBlock paper's) capped by the map size. The paper gives
  neither rate nor placement and the released yolov4.cfg has no DropBlock layer: 0 by default.
* `sam` (Sec. 3.3, Fig. 5, modified SAM: point-wise attention, a 1x1 convolution + batch norm +
  sigmoid multiplying its input, no pooling), before the last 1x1 of each output branch's block,
  where yolov4-sam-mish.cfg puts it. Off in yolov4.cfg.
* `nms` "greedy" | "diou" (DIoU-NMS, Sec. 2.3/3.4; `diou_beta` 0.6, the cfg's beta_nms).
  yolov4.cfg uses greedy NMS.
* `mosaic`, `cutmix` (Sec. 3.3): applied to the training batch before resizing, by
  `replicate.ops.mix`; Mosaic is in the detector's bag of freebies, CutMix only in the
  backbone's (classifier) one.
* `activation` "mish" | "leaky" | "swish" for the backbone (Tables 2-3, Table 6 "BoF-backbone + Mish").
* `backbone` "cspdarknet53" | "cspresnext50" (`replicate.models.cspresnext`): the ablations of
  Tables 4-6 use CSPResNeXt50-PANet-SPP, the same neck and head on CSPResNeXt-50's stride-8/16/32
  maps (512, 1024, 2048 channels), as the released csresnext50-panet-spp.cfg builds it.

Where the paper's Sec. 3.4 list and the released yolov4.cfg disagree (SAM, DIoU-NMS and Mish in
the detector are listed, not used by the cfg; DropBlock is listed, absent from the cfg), the
defaults follow the cfg, which produced Tables 8-10's 41.2-43.5 AP; the knobs give the other.
Ignore rule and threshold are the cfg's as well (ignore_thresh 0.7 on predicted boxes); the
anchors are its "optimized anchors" for 512 (Table 4 "OA"), in input pixels. Not implemented:
CmBN, self-adversarial training, the genetic hyper-parameter search, Gaussian YOLO, RFB, ASFF,
BiFPN. The cosine schedule is the recipe's (`schedule: cosine`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import drop_block2d

from ._registry import register
from .cspresnext import CSPResNeXt50
from .darknet53 import Residual
from .layers import ConvBN, FiveStageBackbone, make_activation, scaled
from .yolov3 import STRIDES, PredictionHead, YOLODetector, five_convs

# Released yolov4.cfg's anchors ("optimized anchors" for 512 x 512, Table 4 "OA").
YOLOV4_ANCHORS = ((12, 16), (19, 36), (40, 28), (36, 75), (76, 55), (72, 146), (142, 110), (192, 243), (459, 401))
# Released yolov4.cfg's scale_x_y for strides 8, 16, 32 (Sec. 4.3 "S": "a factor exceeding 1.0").
GRID_SENSITIVITY = (1.2, 1.1, 1.05)
# Darknet-53's stages (YOLOv3 Table 1), made cross-stage partial.
CSP_STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


class CSPStage(nn.Module):
    """One CSPDarknet53 stage: 3x3/2 down, split by two 1x1s, residual blocks + 1x1 transition on
    one part, concatenation with the other, 1x1 fusion."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, first: bool, activation: str = "mish"):
        super().__init__()
        part = out_ch if first else max(1, out_ch // 2)
        hidden = max(1, part // 2) if first else part
        self.down = ConvBN(in_ch, out_ch, 3, 2, activation)
        self.bypass = ConvBN(out_ch, part, 1, activation=activation)
        self.main = ConvBN(out_ch, part, 1, activation=activation)
        self.blocks = nn.Sequential(*[Residual(part, hidden, activation) for _ in range(blocks)])
        self.transition = ConvBN(part, part, 1, activation=activation)
        self.fuse = ConvBN(2 * part, out_ch, 1, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return self.fuse(torch.cat([self.transition(self.blocks(self.main(x))), self.bypass(x)], 1))


class CSPDarknet53(FiveStageBackbone):
    """CSPDarknet53 (Table 1); `forward_features` gives the stride-8/16/32 maps, `forward` the
    logits (global average pooling, 1000-way layer); `num_classes=None` drops the classifier."""

    def __init__(self, num_classes: int | None = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 activation: str = "mish"):
        super().__init__()
        width = scaled(32, width_mult)
        self.stem = ConvBN(in_channels, width, 3, activation=activation)
        stages = []
        for index, (channels, blocks) in enumerate(CSP_STAGES):
            channels = scaled(channels, width_mult)
            stages.append(CSPStage(width, channels, blocks, index == 0, activation))
            width = channels
        self.stages = nn.Sequential(*stages)
        self.out_channels = tuple(scaled(c, width_mult) for c, _ in CSP_STAGES[2:])
        self.fc = nn.Linear(width, num_classes) if num_classes is not None else None


class SPP(nn.Module):
    """SPP as YOLOv3-SPP/YOLOv4 use it (Sec. 2.3): k x k max-pooling, stride 1, k = 5, 9, 13,
    concatenated with the input (the cfg's order: 13, 9, 5, input)."""

    def __init__(self, kernels: Sequence[int] = (5, 9, 13)):
        super().__init__()
        self.kernels = tuple(kernels)

    def forward(self, x: Tensor) -> Tensor:
        pooled = [F.max_pool2d(x, k, stride=1, padding=k // 2) for k in reversed(self.kernels)]
        return torch.cat([*pooled, x], 1)


class SAM(nn.Module):
    """Modified spatial attention module (Sec. 3.3, Fig. 5): point-wise attention, the input times
    sigmoid(BN(1x1 conv(input))), without SAM's max/average pooling."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.bn(self.conv(x)))


class DropBlock(nn.Module):
    """DropBlock (torchvision's `drop_block2d`) whose block side is capped by the map's (odd)."""

    def __init__(self, p: float, block_size: int = 7):
        super().__init__()
        self.p, self.block_size = float(p), int(block_size)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        size = min(self.block_size, x.shape[-2], x.shape[-1])
        size -= 1 - size % 2
        return drop_block2d(x, self.p, max(1, size), training=True)


class YOLOv4Network(nn.Module):
    """CSPDarknet53 (or CSPResNeXt-50) + SPP + PAN + three YOLOv3 heads: [B, 3, S, S] -> raw maps
    at strides 8, 16, 32."""

    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0, anchors_per_scale: int = 3,
                 activation: str = "mish", mish_neck: bool = False, sam: bool = False, dropblock: float = 0.0,
                 dropblock_size: int = 7, backbone: str = "cspdarknet53"):
        super().__init__()
        outputs = anchors_per_scale * (5 + num_classes)
        act = "mish" if mish_neck else "leaky"
        make_activation(activation)  # validates the name early
        if backbone not in BACKBONES:
            raise ValueError(f"backbone={backbone!r}: allowed {', '.join(repr(b) for b in BACKBONES)}")
        w = lambda c: scaled(c, width_mult)
        self.backbone = BACKBONES[backbone](None, in_channels, width_mult, activation)
        c3, c4, c5 = self.backbone.out_channels
        self.dropblock = DropBlock(dropblock, dropblock_size)
        self.pre_spp = nn.Sequential(ConvBN(c5, w(512), 1, activation=act), ConvBN(w(512), w(1024), 3, activation=act),
                                     ConvBN(w(1024), w(512), 1, activation=act))
        self.spp = SPP()
        self.post_spp = nn.Sequential(ConvBN(4 * w(512), w(512), 1, activation=act),
                                      ConvBN(w(512), w(1024), 3, activation=act),
                                      ConvBN(w(1024), w(512), 1, activation=act))
        # Top-down path.
        self.reduce5 = ConvBN(w(512), w(256), 1, activation=act)
        self.lateral4 = ConvBN(c4, w(256), 1, activation=act)
        self.topdown4 = five_convs(2 * w(256), w(256), act)
        self.reduce4 = ConvBN(w(256), w(128), 1, activation=act)
        self.lateral3 = ConvBN(c3, w(128), 1, activation=act)
        self.topdown3 = five_convs(2 * w(128), w(128), act, SAM(w(256)) if sam else None)
        # Bottom-up path (PAN), concatenation instead of addition (Fig. 6).
        self.down3 = ConvBN(w(128), w(256), 3, 2, act)
        self.bottomup4 = five_convs(2 * w(256), w(256), act, SAM(w(512)) if sam else None)
        self.down4 = ConvBN(w(256), w(512), 3, 2, act)
        self.bottomup5 = five_convs(2 * w(512), w(512), act, SAM(w(1024)) if sam else None)
        self.head3 = PredictionHead(w(128), outputs, act)
        self.head4 = PredictionHead(w(256), outputs, act)
        self.head5 = PredictionHead(w(512), outputs, act)

    def forward(self, x: Tensor) -> list[Tensor]:
        c3, c4, c5 = (self.dropblock(c) for c in self.backbone.forward_features(x))
        p5 = self.post_spp(self.spp(self.pre_spp(c5)))
        up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")
        p4 = self.topdown4(torch.cat([self.lateral4(c4), up(self.reduce5(p5))], 1))
        n3 = self.topdown3(torch.cat([self.lateral3(c3), up(self.reduce4(p4))], 1))
        n4 = self.bottomup4(torch.cat([self.down3(n3), p4], 1))
        n5 = self.bottomup5(torch.cat([self.down4(n4), p5], 1))
        return [self.head3(n3), self.head4(n4), self.head5(n5)]


# The detector's backbones: YOLOv4's, and the one of its ablations (Tables 4-6, "CSPResNeXt50-PANet-SPP").
BACKBONES = {"cspdarknet53": CSPDarknet53, "cspresnext50": CSPResNeXt50}


@register(input_size=(3, 512, 512))
def cspdarknet53(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 activation: str = "mish") -> CSPDarknet53:
    """CSPDarknet53 (YOLOv4 Table 1, counted at 512 x 512), with Mish (Table 3's best)."""
    return CSPDarknet53(num_classes, in_channels, width_mult, activation)


@register(input_size=(3, 512, 512))
def yolov4(num_classes: int = 20, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 512,
           anchors: Sequence[Sequence[float]] = YOLOV4_ANCHORS, anchor_scale: float = 1.0,
           activation: str = "mish", mish_neck: bool = False, sam: bool = False, dropblock: float = 0.0,
           dropblock_size: int = 7, box_loss: str = "ciou", box_loss_weight: float | None = None,
           label_smoothing: float = 0.0, grid_sensitivity: float | Sequence[float] = GRID_SENSITIVITY,
           iou_thresh_multi_anchor: float | None = 0.213, ignore_thresh: float = 0.7,
           ignore_iou_of: str = "prediction", nms: str = "greedy", nms_threshold: float = 0.45,
           diou_beta: float = 0.6, mosaic: bool = True, cutmix: bool = False, score_threshold: float = 0.005,
           detections_per_image: int = 100, pre_nms_top_k: int = 1000,
           multiscale_sizes: Sequence[int] | None = None, multiscale_every: int = 10,
           backbone: str = "cspdarknet53") -> YOLODetector:
    """YOLOv4 (Sec. 3.4): CSPDarknet53 + SPP + PAN + YOLOv3 head with its bag of freebies and
    specials as knobs; 512 x 512 by default (Table 10 also evaluates 416 and 608).
    `backbone="cspresnext50"` is the ablations' CSPResNeXt50-PANet-SPP (Tables 4-6)."""
    anchors = [tuple(float(v) for v in a) for a in anchors]
    if isinstance(grid_sensitivity, (int, float)):
        grid_sensitivity = [float(grid_sensitivity)] * len(STRIDES)
    network = YOLOv4Network(num_classes, in_channels, width_mult, len(anchors) // len(STRIDES), activation,
                            mish_neck, sam, dropblock, dropblock_size, backbone)
    return YOLODetector(network, num_classes=num_classes, input_size=input_size, anchors=anchors,
                        anchor_scale=anchor_scale, box_loss=box_loss, box_loss_weight=box_loss_weight,
                        label_smoothing=label_smoothing, grid_sensitivity=list(grid_sensitivity),
                        iou_thresh_multi_anchor=iou_thresh_multi_anchor, ignore_thresh=ignore_thresh,
                        ignore_iou_of=ignore_iou_of, nms=nms, nms_threshold=nms_threshold, diou_beta=diou_beta,
                        score_threshold=score_threshold, detections_per_image=detections_per_image,
                        pre_nms_top_k=pre_nms_top_k, multiscale_sizes=multiscale_sizes,
                        multiscale_every=multiscale_every, mosaic=mosaic, cutmix=cutmix)
