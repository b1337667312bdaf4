"""The one small interface every flash-cache design implements (libCacheSim-like: designs / traces / simulator).

A design is compiled code over a *state bundle* (a namedtuple of arrays, numbers and smaller bundles whose first
two fields are `dev`, its device's `Flash` bundle, and `m`, its `MetricsArrays`) plus a thin Python class. The bundle is pinned (passed by reference,
see `tierwise.nemo.native`, "state bundles by reference"), and the module of a design registers four compiled
functions taking its ref P for its bundle type with `register_compiled`:

    get(P, key) -> (hit, buffer, start, length)   the value is buffer[start:start + length]
    set(P, key, value) -> bool                     False: the engine declined to cache it (the key then misses)
    delete(P, key)                                 after it returns, get(P, key) misses until the key is set again
    flush(P)                                       write what is buffered (clean shutdown)

Keys are 1..255 bytes and values at most the engine's `max_value_size` (callers check; the Python API raises
TierwiseError). The replay driver (`tierwise.nemo.replay`) calls these through `engine_get` / `engine_set` /
`engine_delete`, which numba resolves per bundle type; the Python `Engine` methods call them through one compiled
entry point each (`api_*`) with a `Handle` holding the ref, so a call costs about a microsecond.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from numba import njit, types
from numba.experimental import structref
from numba.extending import overload

from tierwise.common.errors import TierwiseError
from tierwise.nemo import layout
from tierwise.nemo.device.flash import DeviceFault
from tierwise.nemo.metrics import Metrics
from tierwise.nemo.native import Pinned, copy_bytes, ref_of


@dataclass(frozen=True)
class CompiledEngine:
    get: Callable
    set: Callable
    delete: Callable
    flush: Callable


_COMPILED: dict[type, CompiledEngine] = {}


def register_compiled(state_type: type, *, get: Callable, set: Callable, delete: Callable,
                      flush: Callable) -> None:
    """Declare the compiled request path of a design for its state bundle type (a namedtuple class)."""
    _COMPILED[state_type] = CompiledEngine(get, set, delete, flush)


def _impl(P) -> CompiledEngine:
    cls = getattr(getattr(P, "dtype", None), "instance_class", None)
    if cls not in _COMPILED:
        raise TypeError(f"no compiled engine is registered for {P}")
    return _COMPILED[cls]


def engine_get(P, key):
    """(hit, buffer, start, length) of `key` in the engine whose state ref is P (compiled code only)."""
    raise NotImplementedError


def engine_set(P, key, value):
    raise NotImplementedError


def engine_delete(P, key):
    raise NotImplementedError


def engine_flush(P):
    raise NotImplementedError


@overload(engine_get)
def _ov_get(P, key):
    fn = _impl(P).get
    return lambda P, key: fn(P, key)


@overload(engine_set)
def _ov_set(P, key, value):
    fn = _impl(P).set
    return lambda P, key, value: fn(P, key, value)


@overload(engine_delete)
def _ov_delete(P, key):
    fn = _impl(P).delete
    return lambda P, key: fn(P, key)


@overload(engine_flush)
def _ov_flush(P):
    fn = _impl(P).flush
    return lambda P: fn(P)


# ---- one pointer-sized handle on a state bundle, for cheap calls from Python ------------------------------------------

@structref.register
class HandleType(types.StructRef):
    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(typ)) for name, typ in fields)


class Handle(structref.StructRefProxy):
    """An engine's state ref and the arena it points into: numba unboxes it in one step."""


structref.define_proxy(Handle, HandleType, ["ref", "arena"])


@njit(cache=True)
def make_handle(arena, state):
    return Handle(ref_of(arena, state), arena)


@njit(cache=True)
def api_get(h, key, out):
    """Copy the value of `key` into `out`; its length, or -1 on a miss."""
    hit, buf, start, n = engine_get(h.ref, key)
    if not hit:
        return -1
    copy_bytes(out, 0, buf, start, n)
    return n


@njit(cache=True)
def api_set(h, key, value):
    return engine_set(h.ref, key, value)


@njit(cache=True)
def api_delete(h, key):
    engine_delete(h.ref, key)


@njit(cache=True)
def api_flush(h):
    engine_flush(h.ref)


def key_array(key: bytes) -> np.ndarray:
    if not 1 <= len(key) <= layout.MAX_KEY:
        raise TierwiseError(f"key length {len(key)} outside 1..{layout.MAX_KEY} bytes")
    return np.frombuffer(key, np.uint8)


class Engine:
    """A key-value flash cache: `get` returns exactly the bytes last `set` (or None), `delete` makes a key miss.

    A design's class builds its state bundle and calls `_ready(state)`; everything on the request path is then the
    design's compiled code. Subclasses add `dram_bytes`, `object_count` and `config` (reporting) and, where the
    design has them, recovery and checks of their own.
    """

    name: str = "engine"
    max_value_size: int = 2048  # largest value accepted (CacheLib's small-item max); larger sets raise TierwiseError

    def __init__(self, device: Any, metrics: Metrics | None = None):
        self.device = device
        self.metrics = metrics if metrics is not None else Metrics()
        self.closed = False
        self.state: Any = None

    def _ready(self, state: Any) -> None:
        """Install the state bundle the compiled request path works on (pinned: compiled code takes its ref)."""
        self.state = state
        self.pinned = Pinned(state)
        self._handle = make_handle(self.pinned.arena, state)
        self._out = np.empty(layout.PAGE_SIZE, np.uint8)

    def _call(self, fn, *args):
        try:
            return fn(self._handle, *args)
        except DeviceFault:
            self.device.raise_fault()

    def get(self, key: bytes) -> bytes | None:
        """The newest value of `key`, or None on a miss (never a stale or deleted value)."""
        n = self._call(api_get, key_array(key), self._out)
        return None if n < 0 else self._out[:n].tobytes()

    def set(self, key: bytes, value: bytes) -> bool:
        """Insert or overwrite; False if the engine declined to cache it (the key then misses)."""
        layout.check_object(key, value, self.max_value_size)
        return bool(self._call(api_set, np.frombuffer(key, np.uint8), np.frombuffer(value, np.uint8)))

    def delete(self, key: bytes) -> None:
        """After this returns, `get(key)` misses until the key is set again."""
        self._call(api_delete, key_array(key))

    def flush(self) -> None:
        """Write buffered data that can be written (used before a clean shutdown)."""
        self._call(api_flush)

    def dram_bytes(self) -> dict[str, int]:
        """Measured DRAM of the engine's structures (nbytes of what it allocated); keys 'buffer*' = data buffers."""
        raise NotImplementedError

    def object_count(self) -> int:
        """Objects currently cached (in buffers and on flash), for bits/object."""
        raise NotImplementedError

    def config(self) -> Mapping[str, Any]:
        """The engine's effective parameters, for reports."""
        return {"engine": self.name}

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
