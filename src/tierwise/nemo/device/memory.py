"""In-memory zoned device: all zones in one anonymous mapping, for fast simulation runs.

Zone z owns bytes [z * zone_capacity, (z + 1) * zone_capacity) of the mapping. Pages are only backed by RAM once
written. A reset only rewinds the write pointer (stale bytes past it are unreadable by the zone rules), which keeps
reset O(1) and avoids re-faulting pages; `finish` zero-fills the unwritten tail, which a FULL zone may read.
"""

from __future__ import annotations

import mmap

import numpy as np

from tierwise.nemo.device.base import BLOCK_SIZE, ZonedDevice


class MemoryZonedDevice(ZonedDevice):
    def __init__(self, num_zones: int, zone_size: int, zone_capacity: int | None = None, *,
                 block_size: int = BLOCK_SIZE, max_open_zones: int = 0, max_active_zones: int = 0):
        super().__init__(num_zones, zone_size, zone_capacity, block_size=block_size,
                         max_open_zones=max_open_zones, max_active_zones=max_active_zones)
        self._map = mmap.mmap(-1, self.num_zones * self.zone_capacity)
        self._mv = memoryview(self._map)
        # the same bytes as one uint8 array, for compiled readers (zone z at [z * zone_capacity, ...)); they must
        # keep to written ranges and report their reads with `stats.add_reads`
        self.array = np.frombuffer(self._map, np.uint8)

    def _store(self, z: int, offset: int, data) -> None:
        base = z * self.zone_capacity + offset
        self._mv[base:base + len(data)] = data

    def _load_into(self, z: int, offset: int, buf: memoryview) -> None:
        base = z * self.zone_capacity + offset
        buf[:] = self._mv[base:base + buf.nbytes]

    def _load(self, z: int, offset: int, length: int) -> bytes:
        base = z * self.zone_capacity + offset
        return self._mv[base:base + length].tobytes()

    def view(self, z: int, offset: int, length: int) -> memoryview:
        """Zero-copy read-only view of written bytes (counted as a read); valid until the zone is reset."""
        self._check_read(z, offset, length)
        self._count_read(z, length)
        base = z * self.zone_capacity + offset
        return self._mv[base:base + length].toreadonly()

    def _discard(self, z: int) -> None:
        """Nothing to do: bytes at or past the write pointer are never readable until written again."""

    def _seal(self, z: int) -> None:
        # A finished zone reads zeros between the old write pointer and the capacity.
        start = z * self.zone_capacity
        self._mv[start + self._wp[z]:start + self.zone_capacity] = bytes(self.zone_capacity - self._wp[z])

    def _release(self) -> None:
        del self.array
        self._mv.release()
        self._map.close()
