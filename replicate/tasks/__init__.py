"""LightningModules: one per kind of task."""
from .classification import ClassificationTask

__all__ = ["ClassificationTask"]
