"""Helpers shared by the server tests: a dict-backed engine double and socket reading."""

from __future__ import annotations

import socket


class DictEngine:
    """Protocol-only engine double: a dict behind the Engine get/set/delete API (expiries on `clock` included),
    with the stats hooks."""

    name = "dict"
    failed = None  # never fails

    def __init__(self):
        from tierwise.nemo.device import MemoryZonedDevice
        from tierwise.nemo.metrics import Metrics

        self.d: dict[bytes, bytes] = {}
        self.expiry: dict[bytes, int] = {}
        self.clock = 0
        self.metrics = Metrics()
        self.device = MemoryZonedDevice(2, 4096)

    def get(self, key: bytes) -> bytes | None:
        v = self.d.get(key)
        if v is not None and 0 < self.expiry[key] <= self.clock:
            v = None
            self.metrics.count("expired_misses")
        self.metrics.get(v is not None)
        return v

    def set(self, key: bytes, value: bytes, expiry: int = 0) -> bool:
        self.d[key] = value
        self.expiry[key] = expiry
        return True

    def delete(self, key: bytes) -> None:
        self.d.pop(key, None)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def object_count(self) -> int:
        return len(self.d)

    def dram_bytes(self) -> dict[str, int]:
        return {"dict": sum(len(k) + len(v) for k, v in self.d.items())}

    def config(self) -> dict:
        return {"engine": "dict"}


def recv_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
