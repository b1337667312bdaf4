"""Log-structured FIFO flash cache (CacheLib BlockCache-like): each object appended once to a log of zones, an exact
DRAM index, FIFO eviction a zone at a time. Low write amplification, but > 100 index bits per object.

The whole log tier (segment buffer, index, eviction) is `tierwise.nemo.engines.paged`; this design drops what an
evicted zone still held.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.base import Engine, register_compiled
from tierwise.nemo.engines.paged import (GET_READS, HIT, LIVE, LogTier, index_capacity, key_tag, log_dram_bytes, log_flush, log_insert,
                                         log_lookup, log_remove, new_log_tier, new_page_io, register_log_owner)
from tierwise.nemo.layout import PAGE_SIZE
from tierwise.nemo.metrics import C_DELETES, C_INSERT_BYTES, C_INSERTS, record_get
from tierwise.nemo.native import internal

LogState = namedtuple("LogState", ["dev", "m", "log"])  # the device's Flash, MetricsArrays, the log tier


@internal
def get(P, key):
    io = P.log.io
    before = io.st[GET_READS]
    found, page, start, n = log_lookup(P.log, key_tag(key), key)
    hit = found == HIT
    record_get(P.m, hit, io.st[GET_READS] - before, 0, PAGE_SIZE)
    return hit, page, start, n


@internal
def set_(P, key, value, expiry):
    P.m.counters[C_INSERTS] += 1
    P.m.counters[C_INSERT_BYTES] += key.shape[0] + value.shape[0]
    log_insert(P, P.log, key_tag(key), key, value, expiry)
    return True


@internal
def delete(P, key):
    P.m.counters[C_DELETES] += 1
    log_remove(P.log, key_tag(key))


@internal
def flush(P):
    log_flush(P, P.log)


@internal
def on_evict(P, n):
    """Plain FIFO: what the evicted zone still held is dropped."""


register_compiled(LogState, get=get, set=set_, delete=delete, flush=flush)
register_log_owner(LogState, on_evict)


@register_engine("log")
class LogEngine(Engine):
    name = "log"

    def __init__(self, device, metrics=None, *, buffer_pages: int = 16, bucket_load: float = 2.0):
        super().__init__(device, metrics)
        if buffer_pages < 1 or not 0.05 <= bucket_load <= 1024:
            raise TierwiseError(f"log: buffer_pages must be >= 1 and bucket_load in [0.05, 1024] (got {buffer_pages}, "
                                f"{bucket_load})")
        self.buffer_pages, self.bucket_load = buffer_pages, bucket_load
        self.start_empty()
        io = new_page_io(device, self.metrics)
        zones = list(range(device.num_zones))
        # one bucket per ~bucket_load objects, assuming ~16 objects per page (the chains grow if objects are smaller)
        pages = len(zones) * io.ppz
        nb = 1 << max(4, int(np.ceil(np.log2(pages * 16 / bucket_load))))
        self.log: LogTier = new_log_tier(io, zones, nb, bucket_mask=nb - 1, buffer_pages=buffer_pages)
        self._ready(LogState(device.flash, self.metrics.arrays, self.log))

    def dram_bytes(self) -> dict[str, int]:
        return log_dram_bytes(self.log)

    def object_count(self) -> int:
        return int(self.log.ix.st[LIVE])

    def config(self) -> dict:
        return {"engine": self.name, "zones": self.device.num_zones, "buffer_pages": self.buffer_pages,
                "index_buckets": int(self.log.ix.head.shape[0]), "index_capacity": index_capacity(self.log.ix)}
