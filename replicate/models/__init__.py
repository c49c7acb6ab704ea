"""Model registry: `build(name, **kwargs)` and `available()`; one family per module."""

from . import resnet, vgg  # noqa: F401  (each module registers its family)
from ._registry import available, build, default_input_size, register

__all__ = ["available", "build", "default_input_size", "register"]
