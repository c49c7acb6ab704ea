"""Model registry: `build(name, **kwargs)` and `available()`; one family per module."""

from . import resnet  # noqa: F401  (registers the family)
from ._registry import available, build, default_input_size, register

__all__ = ["available", "build", "default_input_size", "register"]
