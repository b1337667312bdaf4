"""The one small interface every flash-cache design implements (libCacheSim-like: designs / traces / simulator).

An engine owns its DRAM structures and writes to a `ZonedDevice`; it reports every device write, lookup and flush
to its `Metrics`, which is how ALWA, bits/object and read amplification are computed identically for all designs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping

from tierwise.nemo.metrics import Metrics


class Engine(ABC):
    """A key-value flash cache: `get` returns exactly the bytes last `set` (or None), `delete` makes a key miss."""

    name: str = "engine"
    max_value_size: int = 2048  # largest value accepted (CacheLib's small-item max); larger sets raise TierwiseError

    def __init__(self, device: Any, metrics: Metrics | None = None):
        self.device = device
        self.metrics = metrics if metrics is not None else Metrics()
        self.closed = False

    @abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The newest value of `key`, or None on a miss (never a stale or deleted value)."""

    @abstractmethod
    def set(self, key: bytes, value: bytes) -> bool:
        """Insert or overwrite; False if the engine declined to cache it (the key then misses)."""

    @abstractmethod
    def delete(self, key: bytes) -> None:
        """After this returns, `get(key)` misses until the key is set again."""

    @abstractmethod
    def flush(self) -> None:
        """Write buffered data that can be written (used before a clean shutdown)."""

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
            self.flush()
            self.closed = True

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
