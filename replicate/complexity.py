"""`replicate.complexity.count(model, input_size)`, the name DESIGN.md's contract gives the counter
of `replicate.measure.complexity`, where it lives."""

from .measure.complexity import QUANTITIES, Complexity, count, count_params

__all__ = ["count", "count_params", "Complexity", "QUANTITIES"]
