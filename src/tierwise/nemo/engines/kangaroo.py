"""Kangaroo (SOSP'21): a small flash log (KLog) in front of a large set-associative tier (KSet).

Objects land in the log (one cheap append each). When the log's oldest zone is reclaimed, each of its live
objects pulls every other log object of the same set; a set is rewritten only if at least `threshold` objects
move together (threshold admission), otherwise the objects are dropped, except those hit while in the log, which
are readmitted: appended to the log again (`readmit`, Kangaroo's default). Sets evict with RRIParoo: a 3-bit RRIP
value per object on flash and one DRAM hit bit per object. Here KSet sits on zones, so its rewrites are out of
place and zone GC multiplies them (the ZNS port the Nemo paper measured, without hot/cold separation).

What Kangaroo and FairyWREN share (the log + sets layout, the get/set/delete paths, migrating a set's log objects
into it) is here too: `HierarchicalEngine` and the compiled `hier_*` functions, registered for both designs.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.nemo import metrics as mt
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.base import Engine, register_compiled
from tierwise.nemo.engines.paged import (GET_READS, LIVE, POS_BITS, POS_MASK, ix_chain_length, ix_was_hit, key_tag,
                                         log_bucket, log_capacity_pages, log_dram_bytes, log_flush, log_insert,
                                         log_live, log_lookup, log_remove, log_take_bucket, new_log_tier, new_page_io,
                                         register_log_owner)
from tierwise.nemo.engines.settier import (new_set_tier, no_merge, register_set_owner, set_begin_update,
                                           set_dram_bytes, set_holds, set_lookup, set_object_count, set_of, set_params,
                                           set_put, set_remove, set_report_fills, set_write)
from tierwise.nemo.layout import OBJ_HEADER, PAGE_SIZE
from tierwise.nemo.native import internal, state_field


def split_zones(num_zones: int, log_pct: float) -> tuple[list[int], list[int]]:
    """The first ~log_pct of the zones (at least 2) for the log, the rest for the sets."""
    if not 0 < log_pct < 1:
        raise TierwiseError(f"log share must be in (0, 1), got {log_pct}")
    n_log = max(2, round(log_pct * num_zones))
    if num_zones - n_log < 3:
        raise TierwiseError(f"{num_zones} zones are too few for a log of {n_log} zones plus a set tier")
    return list(range(n_log)), list(range(n_log, num_zones))


# ---- the shared request paths (P: a state with `log` and `sets`) --------------------------------------------------------

@internal
def hier_get(P, key):
    """The log first, then the key's set."""
    before = P.sets.io.st[GET_READS]
    tag = key_tag(key)
    hit, page, start, n = log_lookup(P.log, tag, key)
    if not hit:
        hit, page, start, n = set_lookup(P.sets, set_of(P.sets, tag), key)
    mt.record_get(P.m, hit, P.sets.io.st[GET_READS] - before, 0, PAGE_SIZE)
    return hit, page, start, n


@internal
def hier_set(P, key, value):
    P.m.counters[mt.C_INSERTS] += 1
    P.m.counters[mt.C_INSERT_BYTES] += key.shape[0] + value.shape[0]
    log_insert(P, P.log, key_tag(key), key, value, 0)
    return True


@internal
def hier_delete(P, key):
    P.m.counters[mt.C_DELETES] += 1
    tag = key_tag(key)
    log_remove(P.log, tag)
    set_remove(P, P.sets, set_of(P.sets, tag), key)


@internal
def hier_flush(P):
    log_flush(P, P.log)
    set_report_fills(P.sets)


@internal
def put_taken(S, L, n, page):
    """Put the n objects `log_take_bucket` just took into a set page, in the order taken; returns the bytes added."""
    added = 0
    for i in range(n):
        loc = L.tk_loc[i]
        src = L.tk_pages[loc >> POS_BITS]
        pos = loc & POS_MASK
        klen = np.int64(src[pos])
        vlen = np.int64(src[pos + 2]) | (np.int64(src[pos + 3]) << 8)
        k0 = pos + OBJ_HEADER
        added += set_put(S, page, src[k0:k0 + klen], src[k0 + klen:k0 + klen + vlen])
    return added


@internal
def migrate(P, j, kind):
    """Move every log object of set j into it with one read-modify-write; `kind` is the counter slot of the
    migration kind (migrations_*, then migrated_objects_* and migrated_bytes_*)."""
    S, L = P.sets, P.log
    n = log_take_bucket(L, j)
    page = set_begin_update(S, j, mt.C_READ_MIGRATION, False)
    added = put_taken(S, L, n, page)
    set_write(P, S, j, page, added, 0, 0)
    c = P.m.counters
    c[kind] += 1
    c[kind + 1] += n
    c[kind + 2] += added


# ---- Kangaroo ----------------------------------------------------------------------------------------------------------

KangarooState = namedtuple("KangarooState", ["dev", "m", "log", "sets", "cfg"])  # cfg: int64[THRESHOLD, READMIT]
THRESHOLD, READMIT = range(2)


@internal
def _older_copy_in_set(P, j, i):
    """Dropping evicted log object i while its key is still in its set would expose the stale copy."""
    L = P.log
    loc = L.ev_loc[i]
    page = L.evicting[(loc >> POS_BITS) % L.io.ppz]
    pos = loc & POS_MASK
    key = page[pos + OBJ_HEADER:pos + OBJ_HEADER + np.int64(page[pos])]
    return set_holds(P.sets, j, key, mt.C_READ_MIGRATION)


@internal
def kangaroo_on_evict(P, n):
    """Threshold admission of the live objects of a reclaimed log zone; objects hit in the log are readmitted."""
    L = P.log
    c = P.m.counters
    readmitted = 0
    for i in range(n):
        tag, loc = L.ev_tag[i], L.ev_loc[i]
        if not log_live(L, tag, loc):  # already moved with an earlier object of its set
            continue
        j = log_bucket(L, tag)
        if ix_chain_length(L.ix, j) >= P.cfg[THRESHOLD] or _older_copy_in_set(P, j, i):
            migrate(P, j, mt.C_MIGRATIONS_THRESHOLD)
        elif P.cfg[READMIT] and ix_was_hit(L.ix, j, tag):
            L.ev_readmit[i] = 1
            readmitted += 1
        else:
            c[mt.C_THRESHOLD_DROPS] += 1
    c[mt.C_READMISSIONS] += readmitted


register_compiled(KangarooState, get=hier_get, set=hier_set, delete=hier_delete, flush=hier_flush)
register_log_owner(KangarooState, kangaroo_on_evict)
register_set_owner(KangarooState, no_merge)


class HierarchicalEngine(Engine):
    """A log tier in front of a set tier (RRIParoo sets): gets check the log first, sets append to the log, deletes
    hit both. The log index is bucketed by set, so one set's log objects are one chain."""

    def __init__(self, device, metrics, *, log_pct: float, set_op: float, victim: str, bloom_fp: float,
                 objects_per_set: float, buffer_pages: int, log_hits: bool = False, in_place: bool | None = None):
        super().__init__(device, metrics)
        self.start_empty()
        io = new_page_io(device, self.metrics)
        log_zones, set_zones = split_zones(device.num_zones, log_pct)
        self.log_pct, self.victim = log_pct, victim
        self.sets = new_set_tier(io, set_zones, op=set_op, rrip=True, victim=victim, bloom_fp=bloom_fp,
                                 objects_per_set=objects_per_set, in_place=in_place)
        self.log = new_log_tier(io, log_zones, self.sets.num_sets, buffer_pages=buffer_pages, track_hits=log_hits,
                                num_zones=device.num_zones)

    def dram_bytes(self) -> dict[str, int]:
        return {**log_dram_bytes(self.log), **set_dram_bytes(self.sets)}

    def object_count(self) -> int:
        return int(self.log.ix.st[LIVE]) + set_object_count(self.sets)

    def config(self) -> dict:
        p = set_params(self.sets)
        return {"engine": self.name, "log_pct": self.log_pct, "log_pages": log_capacity_pages(self.log),
                "sets": p["sets"], "set_op": self.sets.op, "victim": self.victim, "bloom_bits": p["bloom_bits"],
                "bloom_k": p["bloom_k"]}


@register_engine("kangaroo")
class KangarooEngine(HierarchicalEngine):
    name = "kangaroo"

    threshold = state_field(THRESHOLD, "objects of one set that must leave the log together to be admitted")

    def __init__(self, device, metrics=None, *, log_pct: float = 0.05, threshold: int = 2, readmit: bool = True,
                 set_op: float = 0.05, victim: str = "greedy", bloom_fp: float = 0.01, objects_per_set: float = 16.0,
                 buffer_pages: int = 16):
        if threshold < 1:
            raise TierwiseError(f"Kangaroo's admission threshold must be >= 1, got {threshold}")
        super().__init__(device, metrics, log_pct=log_pct, set_op=set_op, victim=victim, bloom_fp=bloom_fp,
                         objects_per_set=objects_per_set, buffer_pages=buffer_pages, log_hits=readmit)
        self.st = np.array([threshold, int(readmit)], np.int64)
        self._ready(KangarooState(device.flash, self.metrics.arrays, self.log, self.sets, self.st))

    @property
    def readmit(self) -> bool:
        """Objects hit in the log are readmitted instead of dropped."""
        return bool(self.st[READMIT])

    def config(self) -> dict:
        return {**super().config(), "threshold": self.threshold, "readmit": self.readmit}
