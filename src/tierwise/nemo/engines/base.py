"""The one small interface every flash-cache design implements (libCacheSim-like: designs / traces / simulator).

A design is compiled code over a *state bundle* (a namedtuple of arrays, numbers and smaller bundles whose first
two fields are `dev`, its device's `Flash` bundle, and `m`, its `MetricsArrays`) plus a thin Python class. The bundle is pinned (passed by reference,
see `tierwise.nemo.native`, "state bundles by reference"), and the module of a design registers four compiled
functions taking its ref P for its bundle type with `register_compiled`:

    get(P, key) -> (hit, buffer, start, length)   the value is buffer[start:start + length]
    set(P, key, value, expiry) -> bool             False: the engine declined to cache it (the key then misses)
    delete(P, key)                                 after it returns, get(P, key) misses until the key is set again
    flush(P)                                       write what is buffered (clean shutdown)

TTLs: `expiry` is when the object expires, in seconds on the cache's clock (`P.m.clock[0]`), 0 = never. A get never
returns an object whose expiry <= clock (the newest copy decides: an expired copy is a miss even when an older one
lies deeper), and a design drops expired objects wherever it would write or copy them (flush, write-back,
migration, GC), counting them in `expired_dropped_*`.

Keys are 1..255 bytes and values at most the engine's `max_value_size` (callers check; the Python API raises
TierwiseError). The replay driver (`tierwise.nemo.replay`) calls these through `engine_get` / `engine_set` /
`engine_delete`, which numba resolves per bundle type; the Python `Engine` methods call them through one compiled
entry point each (`api_*`) with a `Handle` holding the ref, so a call costs about a microsecond.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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
from tierwise.nemo.native import Pinned, compiled_only, copy_bytes, ref_of


@dataclass(frozen=True)
class CompiledEngine:
    get: Callable
    set: Callable
    delete: Callable
    flush: Callable


_COMPILED: dict[type, CompiledEngine] = {}
MAX_EXPIRY = (1 << 32) - 1  # expiries are stored as u32 seconds


def register_compiled(state_type: type, *, get: Callable, set: Callable, delete: Callable,
                      flush: Callable) -> None:
    """Declare the compiled request path of a design for its state bundle type (a namedtuple class)."""
    _COMPILED[state_type] = CompiledEngine(get, set, delete, flush)


def _impl(P) -> CompiledEngine:
    cls = getattr(getattr(P, "dtype", None), "instance_class", None)
    if cls not in _COMPILED:
        raise TypeError(f"no compiled engine is registered for {P}")
    return _COMPILED[cls]


# Dispatchers for compiled code: numba resolves each call through the @overload below to the engine registered for
# P's state type.
def engine_get(P, key):
    """(hit, buffer, start, length) of `key` in the engine whose state ref is P."""
    raise compiled_only("engine_get")


def engine_set(P, key, value, expiry):
    raise compiled_only("engine_set")


def engine_delete(P, key):
    raise compiled_only("engine_delete")


def engine_flush(P):
    raise compiled_only("engine_flush")


@overload(engine_get)
def _ov_get(P, key):
    fn = _impl(P).get
    return lambda P, key: fn(P, key)


@overload(engine_set)
def _ov_set(P, key, value, expiry):
    fn = _impl(P).set
    return lambda P, key, value, expiry: fn(P, key, value, expiry)


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
    """An engine's state ref, the arena it points into, and buffers for the key, value and result of a call:
    numba unboxes it in one step."""


structref.define_proxy(Handle, HandleType, ["ref", "arena", "key", "value", "out"])


@njit(cache=True)
def make_handle(arena, state, key, value, out):
    return Handle(ref_of(arena, state), arena, key, value, out)


@njit(cache=True, inline="always")
def _arg(buf, data):
    """`data` (bytes) copied into the handle's writable buffer: the engine code then has one argument type, the
    replay driver's."""
    src = np.frombuffer(data, np.uint8)
    n = src.shape[0]
    dst = buf[:n]
    copy_bytes(dst, 0, src, 0, n)
    return dst


@njit(cache=True)
def api_get(h, key):
    """Copy the value of `key` into h.out; its length, or -1 on a miss."""
    hit, buf, start, n = engine_get(h.ref, _arg(h.key, key))
    if not hit:
        return -1
    copy_bytes(h.out, 0, buf, start, n)
    return n


@njit(cache=True)
def api_set(h, key, value, expiry):
    return engine_set(h.ref, _arg(h.key, key), _arg(h.value, value), expiry)


@njit(cache=True)
def api_delete(h, key):
    engine_delete(h.ref, _arg(h.key, key))


@njit(cache=True)
def api_flush(h):
    engine_flush(h.ref)


def _bad_key(key) -> TierwiseError:
    return TierwiseError(f"key length {len(key)} outside 1..{layout.MAX_KEY} bytes")


class Engine(ABC):
    """A key-value flash cache: `get` returns exactly the bytes last `set` (or None), `delete` makes a key miss.

    A design's class builds its state bundle and calls `_ready(state)`; everything on the request path is then the
    design's compiled code. Subclasses add `dram_bytes`, `object_count` and `config` (reporting) and, where the
    design has them, recovery and checks of their own.
    """

    name: str = "engine"
    max_value_size: int = 2048  # largest value accepted (CacheLib's small-item max); larger sets raise TierwiseError
    size_split: int = -1  # a two-tier cache: values above this go to its large tier (the replay counts their gets)

    def __init__(self, device: Any, metrics: Metrics | None = None):
        self.device = device
        self.metrics = metrics if metrics is not None else Metrics()
        self.closed = False
        self.state: Any = None
        self.failed: str | None = None  # why the engine stopped (a device fault in the middle of a request)

    def start_empty(self) -> None:
        """A new cache (not a recovered one) starts from empty zones: whatever an earlier run left on the device is
        reset, so none of it can be served."""
        for z in range(self.device.num_zones):
            if self.device.write_pointer(z):
                self.device.reset(z)

    def _fault(self, err: BaseException) -> None:
        """A fault escaped the compiled request path mid-request: the engine's state may be half-updated, so it
        refuses every later request (a cache may forget; it must never serve from a broken state). Re-raises the
        device's error (or `err`)."""
        self.failed = f"{type(err).__name__}: {err}"
        if isinstance(err, DeviceFault):
            try:
                self.device.raise_fault()
            except BaseException as e:
                self.failed = f"{type(e).__name__}: {e}"
                raise
        raise err

    def _check_usable(self) -> None:
        if self.failed is not None:
            raise TierwiseError(f"engine {self.name} stopped after a failure in the middle of a request "
                                f"({self.failed}); reopen the device (recovering it if the design can)")

    def _ready(self, state: Any) -> None:
        """Install the state bundle the compiled request path works on (pinned: compiled code takes its ref)."""
        self.state = state
        self.pinned = Pinned(state)
        largest = max(layout.PAGE_SIZE, self.max_value_size)
        self._out = np.zeros(largest, np.uint8)
        self._handle = make_handle(self.pinned.arena, state, np.zeros(layout.MAX_KEY, np.uint8),
                                   np.zeros(largest, np.uint8), self._out)

    # The request methods are on the server's path: one compiled call each, arguments checked inline.
    def get(self, key: bytes) -> bytes | None:
        """The newest value of `key`, or None on a miss (never a stale or deleted value)."""
        if type(key) is not bytes:
            key = bytes(key)
        if not 0 < len(key) <= layout.MAX_KEY:
            raise _bad_key(key)
        if self.failed is not None:
            self._check_usable()
        try:
            n = api_get(self._handle, key)
        except (DeviceFault, TierwiseError) as e:
            self._fault(e)
        return None if n < 0 else self._out[:n].tobytes()

    def set(self, key: bytes, value: bytes, expiry: int = 0) -> bool:
        """Insert or overwrite; False if the engine declined to cache it (the key then misses). `expiry`: when it
        expires on the engine's `clock` (seconds; 0 = never)."""
        if type(key) is not bytes:
            key = bytes(key)
        if type(value) is not bytes:
            value = bytes(value)
        if not 0 < len(key) <= layout.MAX_KEY:
            raise _bad_key(key)
        if len(value) > self.value_limit(len(key)):
            raise TierwiseError(f"value of {len(value)} bytes exceeds the {self.value_limit(len(key))}-byte limit "
                                f"of engine {self.name} for a {len(key)}-byte key")
        if expiry and not 0 < expiry <= MAX_EXPIRY:
            raise TierwiseError(f"expiry {expiry} outside 0..{MAX_EXPIRY} (seconds on the engine's clock)")
        if self.failed is not None:
            self._check_usable()
        try:
            return bool(api_set(self._handle, key, value, expiry))
        except (DeviceFault, TierwiseError) as e:
            self._fault(e)

    def delete(self, key: bytes) -> None:
        """After this returns, `get(key)` misses until the key is set again."""
        if type(key) is not bytes:
            key = bytes(key)
        if not 0 < len(key) <= layout.MAX_KEY:
            raise _bad_key(key)
        if self.failed is not None:
            self._check_usable()
        try:
            api_delete(self._handle, key)
        except (DeviceFault, TierwiseError) as e:
            self._fault(e)

    def flush(self) -> None:
        """Write buffered data that can be written (used before a clean shutdown)."""
        self._check_usable()
        try:
            api_flush(self._handle)
        except (DeviceFault, TierwiseError) as e:
            self._fault(e)

    def value_limit(self, key_len: int) -> int:
        """The largest value `set` takes with a `key_len`-byte key (a set page's room, at most `max_value_size`)."""
        return min(self.max_value_size, layout.max_value_size(key_len))

    @property
    def clock(self) -> int:
        """The engine's time in seconds, what expiries are compared with (the server keeps it at unix time, a replay
        at the trace's timestamps)."""
        return int(self.metrics.arrays.clock[0])

    @clock.setter
    def clock(self, now: int) -> None:
        self.metrics.arrays.clock[0] = now

    @abstractmethod
    def dram_bytes(self) -> dict[str, int]:
        """Measured DRAM of the engine's structures (nbytes of what it allocated); keys 'buffer*' = data buffers."""

    @abstractmethod
    def object_count(self) -> int:
        """Objects currently cached (in buffers and on flash), for bits/object."""

    def config(self) -> Mapping[str, Any]:
        """The engine's effective parameters, for reports."""
        return {"engine": self.name}

    def close(self) -> None:
        if not self.closed:
            if self.failed is None:
                self.flush()
            self.closed = True

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
