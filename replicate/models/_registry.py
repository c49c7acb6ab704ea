"""timm-style registry: every builder registers itself under the name users pass to `build`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import UnknownModelError, choices

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register `fn` under its own name."""
    if fn.__name__ in _BUILDERS:
        raise RuntimeError(f"model {fn.__name__!r} registered twice")
    _BUILDERS[fn.__name__] = fn
    return fn


def build(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name` with the paper's knobs as keyword arguments."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise UnknownModelError(f"Unknown model {name!r}.{choices(name, _BUILDERS)}") from None
    return builder(**kwargs)


def available() -> list[str]:
    """Names accepted by `build`, sorted."""
    return sorted(_BUILDERS)
