"""timm-style registry: every builder registers itself under the name users pass to `build`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import UnknownModelError, choices

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SIZES: dict[str, tuple[int, int, int]] = {}


def register(fn: Callable[..., nn.Module] | None = None, *, input_size: tuple[int, int, int] = (3, 224, 224)):
    """Decorator: register `fn` under its own name; `input_size` is the paper's (C, H, W).

    Usable bare (`@register`) or with arguments (`@register(input_size=(3, 32, 32))`).
    """

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _BUILDERS:
            raise RuntimeError(f"model {fn.__name__!r} registered twice")
        _BUILDERS[fn.__name__] = fn
        _INPUT_SIZES[fn.__name__] = input_size
        return fn

    return add(fn) if fn is not None else add


def build(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name` with the paper's knobs as keyword arguments."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise UnknownModelError(f"Unknown model {name!r}.{choices(name, _BUILDERS)}") from None
    return builder(**kwargs)


def default_input_size(name: str) -> tuple[int, int, int]:
    """The input (C, H, W) the model's paper uses: (3, 32, 32) for CIFAR nets, (3, 224, 224) for ImageNet."""
    if name not in _INPUT_SIZES:
        raise UnknownModelError(f"Unknown model {name!r}.{choices(name, _BUILDERS)}")
    return _INPUT_SIZES[name]


def available() -> list[str]:
    """Names accepted by `build`, sorted."""
    return sorted(_BUILDERS)
