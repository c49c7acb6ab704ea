"""Helpers shared by several model families (one definition each; the families import them here)."""

from __future__ import annotations


def scaled(width: int, width_mult: float) -> int:
    """A layer's width times `width_mult`, rounded, at least 1: the reduced profile's thinner
    networks (VGG and the detectors on it, the YOLO family, CSPResNeXt)."""
    return max(1, round(width * width_mult))
