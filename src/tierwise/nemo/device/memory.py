"""In-memory zoned device: all zones in one anonymous mapping, for fast simulation runs.

Zone z owns bytes [z * zone_capacity, (z + 1) * zone_capacity) of the mapping. Pages are only backed by RAM once
written. A reset only rewinds the write pointer (stale bytes past it are unreadable by the zone rules), which keeps
reset O(1) and avoids re-faulting pages; `finish` zero-fills the unwritten tail, which a FULL zone may read.
"""

from __future__ import annotations

import mmap

import numpy as np

from tierwise.nemo.device import flash as fl
from tierwise.nemo.device.base import BLOCK_SIZE, ZonedDevice


class MemoryZonedDevice(ZonedDevice):
    kind = fl.MEM

    def __init__(self, num_zones: int, zone_size: int, zone_capacity: int | None = None, *,
                 block_size: int = BLOCK_SIZE, max_open_zones: int = 0, max_active_zones: int = 0):
        super().__init__(num_zones, zone_size, zone_capacity, block_size=block_size,
                         max_open_zones=max_open_zones, max_active_zones=max_active_zones)
        # the mapping lives as long as any array over it (an engine's state may outlive the device object)
        self._build(np.frombuffer(mmap.mmap(-1, self.num_zones * self.zone_capacity), np.uint8))
