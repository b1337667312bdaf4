"""Set-associative flash cache (CacheLib BigHash / SOC): every insert reads, modifies and rewrites the key's 4 KB set
(FIFO within the set); per-set Bloom filters in DRAM spare flash reads for absent keys. ALWA ~ 4096 / object size
x zone GC. The set tier itself (zones, GC, filters, in-place mode on a conventional SSD) is
`tierwise.nemo.engines.settier`.
"""

from __future__ import annotations

from collections import namedtuple

from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.base import Engine, register_compiled
from tierwise.nemo.engines.paged import GET_READS, HIT, key_tag, new_page_io
from tierwise.nemo.engines.settier import (SetTier, new_set_tier, no_merge, register_set_owner, set_begin_update,
                                           set_dram_bytes, set_lookup, set_object_count, set_of, set_params, set_put,
                                           set_remove, set_report_fills, set_write)
from tierwise.nemo.layout import PAGE_SIZE
from tierwise.nemo.metrics import C_DELETES, C_INSERT_BYTES, C_INSERTS, C_READ_RMW, record_get
from tierwise.nemo.native import internal

SetState = namedtuple("SetState", ["dev", "m", "sets"])  # the device's Flash, MetricsArrays, the set tier


@internal
def get(P, key):
    S = P.sets
    before = S.io.st[GET_READS]
    found, page, start, n = set_lookup(S, set_of(S, key_tag(key)), key)
    hit = found == HIT
    record_get(P.m, hit, S.io.st[GET_READS] - before, 0, PAGE_SIZE)
    return hit, page, start, n


@internal
def set_(P, key, value, expiry):
    P.m.counters[C_INSERTS] += 1
    P.m.counters[C_INSERT_BYTES] += key.shape[0] + value.shape[0]
    S = P.sets
    j = set_of(S, key_tag(key))
    page = set_begin_update(S, j, C_READ_RMW, True)
    added = set_put(S, page, key, value, 0, expiry, 0)
    set_write(P, S, j, page, added, key.shape[0] + value.shape[0], 1)
    return True


@internal
def delete(P, key):
    P.m.counters[C_DELETES] += 1
    S = P.sets
    set_remove(P, S, set_of(S, key_tag(key)), key)


@internal
def flush(P):
    """Nothing is buffered (every insert is already on flash); only pending fill statistics are reported."""
    set_report_fills(P.sets)


register_compiled(SetState, get=get, set=set_, delete=delete, flush=flush)
register_set_owner(SetState, no_merge)


@register_engine("set")
class SetEngine(Engine):
    name = "set"

    def __init__(self, device, metrics=None, *, op: float = 0.5, victim: str = "greedy", bloom_fp: float = 0.01,
                 objects_per_set: float = 16.0):
        super().__init__(device, metrics)
        self.start_empty()
        self.victim = victim
        self.sets: SetTier = new_set_tier(new_page_io(device, self.metrics), list(range(device.num_zones)), op=op,
                                          victim=victim, bloom_fp=bloom_fp, objects_per_set=objects_per_set)
        self._ready(SetState(device.flash, self.metrics.arrays, self.sets))

    def dram_bytes(self) -> dict[str, int]:
        return set_dram_bytes(self.sets)

    def object_count(self) -> int:
        return set_object_count(self.sets)

    def config(self) -> dict:
        p = set_params(self.sets)
        return {"engine": self.name, "sets": p["sets"], "op": self.sets.op, "victim": self.victim,
                "bloom_bits": p["bloom_bits"], "bloom_k": p["bloom_k"]}
