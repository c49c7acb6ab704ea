"""Model registry: `build(name, **kwargs)` and `available()`; one family per module.

Every module of this package is imported here, so a family registers its builders just by
living in its own file (`@register` on each builder).
"""

import importlib
import pkgutil

from ._registry import available, build, default_input_size, register

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["available", "build", "default_input_size", "register"]
