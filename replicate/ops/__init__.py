"""Box operations shared by the detectors: the R-CNN box parameterisation (encode/decode),
anchors, IoU, NMS, RoI pooling and IoU-based labelling/sampling. Where torchvision.ops has the
operation it is used (its kernels are tested and run on GPU); this package adds the papers'
conventions around them."""

from .anchors import AnchorGrid, base_anchors, feature_size, grid_anchors, inside_image
from .boxes import (
    BACKGROUND, IGNORE, box_area, box_iou, clip_boxes_to_image, decode, encode, label_by_iou, nms, batched_nms,
    remove_small_boxes, roi_pool, sample_labels,
)

__all__ = [
    "AnchorGrid", "base_anchors", "feature_size", "grid_anchors", "inside_image",
    "BACKGROUND", "IGNORE", "box_area", "box_iou", "clip_boxes_to_image", "decode", "encode", "label_by_iou",
    "nms", "batched_nms", "remove_small_boxes", "roi_pool", "sample_labels",
]
