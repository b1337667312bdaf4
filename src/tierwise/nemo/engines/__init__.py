"""Flash-cache designs behind one `Engine` interface, and the registry `make_engine(name, device, **config)`.

An engine module registers its class with `@register_engine("name")`; `make_engine` imports every module of this
package once, so adding a design is adding a module.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable

from tierwise.common.errors import TierwiseError
from tierwise.nemo.engines.base import Engine

_REGISTRY: dict[str, Callable[..., Engine]] = {}
_discovered = False


def register_engine(name: str) -> Callable[[type[Engine]], type[Engine]]:
    def wrap(cls: type[Engine]) -> type[Engine]:
        _REGISTRY[name] = cls
        return cls

    return wrap


def _discover() -> None:
    global _discovered
    if not _discovered:
        for mod in pkgutil.iter_modules(__path__):
            if mod.name != "base":
                importlib.import_module(f"{__name__}.{mod.name}")
        _discovered = True


def engine_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def make_engine(name: str, device: Any, **config: Any) -> Engine:
    """Build engine `name` on `device`; unknown names and bad options raise TierwiseError."""
    _discover()
    if name not in _REGISTRY:
        raise TierwiseError(f"unknown engine {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(device, **config)
    except TypeError as e:
        raise TierwiseError(f"bad option for engine {name!r}: {e}") from e
    return factory(device, **config)


__all__ = ["Engine", "engine_names", "make_engine", "register_engine"]
