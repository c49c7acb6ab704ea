"""LightningModules: one per kind of task."""
from .classification import ClassificationTask
from .detection import DetectionTask

__all__ = ["ClassificationTask", "DetectionTask"]
