"""Flash-cache designs behind one `Engine` interface, and the registry `make_engine(name, device, **config)`.

Each design is a module registered in `DESIGNS` (name -> module), the one place to add a design; the module marks
its class with `@register_engine(name)`. Only the module of a design in use is imported (and its compiled code
loaded).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from tierwise.common.errors import TierwiseError
from tierwise.nemo.engines.base import Engine

DESIGNS = {
    "nemo": "tierwise.nemo.engines.nemo",
    "log": "tierwise.nemo.engines.log",
    "set": "tierwise.nemo.engines.setassoc",
    "kangaroo": "tierwise.nemo.engines.kangaroo",
    "fairywren": "tierwise.nemo.engines.fairywren",
    "block": "tierwise.nemo.engines.block",
    "tiered": "tierwise.nemo.engines.tiered",
}

_REGISTRY: dict[str, Callable[..., Engine]] = {}


def register_engine(name: str) -> Callable[[type[Engine]], type[Engine]]:
    def wrap(cls: type[Engine]) -> type[Engine]:
        _REGISTRY[name] = cls
        return cls

    return wrap


def engine_names() -> list[str]:
    return sorted(DESIGNS)


def engine_class(name: str) -> Callable[..., Engine]:
    if name not in DESIGNS:
        raise TierwiseError(f"unknown engine {name!r}; available: {', '.join(sorted(DESIGNS))}")
    if name not in _REGISTRY:
        importlib.import_module(DESIGNS[name])
    return _REGISTRY[name]


def make_engine(name: str, device: Any, **config: Any) -> Engine:
    """Build engine `name` on `device`; unknown names and bad options raise TierwiseError."""
    factory = engine_class(name)
    try:
        inspect.signature(factory).bind(device, **config)
    except TypeError as e:
        raise TierwiseError(f"bad option for engine {name!r}: {e}") from None
    return factory(device, **config)


__all__ = ["DESIGNS", "Engine", "engine_class", "engine_names", "make_engine", "register_engine"]
