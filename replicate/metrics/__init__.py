"""Evaluation metrics that are not a torchmetrics one-liner: detection mAP (VOC07 11-point,
VOC area, COCO through pycocotools)."""

from .detection import PROTOCOLS, evaluate_detections

__all__ = ["PROTOCOLS", "evaluate_detections"]
