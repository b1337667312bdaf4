"""Kangaroo (SOSP'21): a small flash log (KLog) in front of a large set-associative tier (KSet).

Objects land in the log (one cheap append each). When the log's oldest zone is reclaimed, each of its live
objects pulls every other log object of the same set; a set is rewritten only if at least `threshold` objects
move together (threshold admission), otherwise the objects are dropped, except those hit more than `readmit` times
while in the log, which are readmitted: appended to the log again (the authors' simulator, `log.readmit`; their
README and published runs use 1, their code's default 0 turns it off). Sets evict with RRIParoo: a 3-bit RRIP
value per object on flash and one DRAM hit bit per object; a migrated object enters its set at RRIP_MAX - 1 - (its
log hits) and is refused if it could only enter by evicting objects predicted to be reused sooner
(`rrip_insert="authors"`, `settier`). Here KSet sits on zones, so its rewrites are out of place and zone GC
multiplies them (the ZNS port the Nemo paper measured, without hot/cold separation).

What Kangaroo and FairyWREN share (the log + sets layout, the get/set/delete paths, migrating a set's log objects
into it, FairyWREN's hot/cold halves of each set) is here too: `HierarchicalEngine` and the compiled `hier_*`
functions, registered for both designs.

Hot/cold separation (FairyWREN, OSDI'24; `hot_cold`): each set has a cold half, which every migration rewrites,
and a hot half in zones of its own, which holds the pair's objects with the nearest predicted re-reference and is
rebuilt only on one set move in `hot_rebuild` (the artifact's `hotRebuildFreq_`, 5, drawn at random there, every
fifth move here). A rebuild moves cold objects, nearest first, into the hot half as long as RRIParoo admits them
there; the hot objects they displace go to the cold half. Newcomers always enter the cold half, so a key may have
an older copy in the hot half: gets try the cold half first, and a rebuild drops such stale hot copies.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.nemo import layout
from tierwise.nemo import metrics as mt
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.base import Engine, register_compiled
from tierwise.nemo.engines.paged import (ABSENT, GET_READS, HIT, LIVE, POS_BITS, POS_MASK, ix_chain_length,
                                         ix_hits, key_tag, log_bucket, log_capacity_pages, log_dram_bytes, log_flush,
                                         log_insert, log_live, log_lookup, log_remove, log_take_bucket, new_log_tier,
                                         new_page_io, register_log_owner)
from tierwise.nemo.engines.settier import (NO_OWNER, new_set_tier, no_merge, obj_rrip, page_most_distant,
                                           page_nearest, page_put, page_room_at, register_set_owner,
                                           set_begin_update, set_dram_bytes, set_holds, set_lookup, set_may_hold,
                                           set_object_count, set_of, set_params, set_put, set_remove,
                                           set_report_fills, set_write, set_write_no_owner)
from tierwise.nemo.layout import OBJ_HEADER, PAGE_HEADER, PAGE_SIZE
from tierwise.nemo.native import internal, state_field

# cfg: int64[...] of a hierarchical state; MOVES counts set moves for the hot-half rebuild cadence
THRESHOLD, READMIT, HOT_COLD, HOT_REBUILD, MOVES = range(5)
# The state both designs share: the device's Flash, MetricsArrays, the log tier, the set tier (the cold halves
# with hot/cold separation), the hot halves (the set tier itself without it: never used then), the log hits of the
# objects `take_bucket` took, a page for the hot objects a rebuild displaces, the cfg scalars.
HIER_FIELDS = ["dev", "m", "log", "sets", "hot", "taken_hits", "spill", "cfg"]


def split_zones(num_zones: int, log_pct: float) -> tuple[list[int], list[int]]:
    """The first ~log_pct of the zones (at least 2) for the log, the rest for the sets."""
    if not 0 < log_pct < 1:
        raise TierwiseError(f"log share must be in (0, 1), got {log_pct}")
    n_log = max(2, round(log_pct * num_zones))
    if num_zones - n_log < 3:
        raise TierwiseError(f"{num_zones} zones are too few for a log of {n_log} zones plus a set tier")
    return list(range(n_log)), list(range(n_log, num_zones))


# ---- the shared request paths (P: a state with HIER_FIELDS) --------------------------------------------------------

@internal
def hier_get(P, key):
    """The log first, then the key's set (its cold half, where newer copies land, then its hot half)."""
    before = P.sets.io.st[GET_READS]
    tag = key_tag(key)
    found, page, start, n = log_lookup(P.log, tag, key)
    if found == ABSENT:
        j = set_of(P.sets, tag)
        found, page, start, n = set_lookup(P.sets, j, key)
        if found == ABSENT and P.cfg[HOT_COLD]:
            found, page, start, n = set_lookup(P.hot, j, key)
    hit = found == HIT
    mt.record_get(P.m, hit, P.sets.io.st[GET_READS] - before, 0, PAGE_SIZE)
    return hit, page, start, n


@internal
def hier_set(P, key, value, expiry):
    P.m.counters[mt.C_INSERTS] += 1
    P.m.counters[mt.C_INSERT_BYTES] += key.shape[0] + value.shape[0]
    log_insert(P, P.log, key_tag(key), key, value, expiry)
    return True


@internal
def hier_delete(P, key):
    P.m.counters[mt.C_DELETES] += 1
    tag = key_tag(key)
    log_remove(P.log, tag)
    j = set_of(P.sets, tag)
    set_remove(P, P.sets, j, key)
    if P.cfg[HOT_COLD]:
        set_remove(np.int64(NO_OWNER), P.hot, j, key)


@internal
def hier_flush(P):
    log_flush(P, P.log)
    set_report_fills(P.sets)
    if P.cfg[HOT_COLD]:
        set_report_fills(P.hot)


@internal
def sets_hold(P, j, key, cause):
    """Is `key` in set j on flash (either half)?"""
    return set_holds(P.sets, j, key, cause) or (P.cfg[HOT_COLD] and set_holds(P.hot, j, key, cause))


@internal
def take_bucket(P, j):
    """`log_take_bucket`, keeping the log hits of each object taken in P.taken_hits (the same, chain, order)."""
    ix = P.log.ix
    if ix.hits.shape[0]:
        e = ix.head[j]
        i = 0
        while e >= 0:
            P.taken_hits[i] = ix.hits[e]
            i += 1
            e = ix.nxt[e]
    return log_take_bucket(P.log, j)


@internal
def taken(L, i):
    """(key, value field, FLAG_EXPIRES bit, expired now) of the i-th object `take_bucket` took (the value field as
    stored: with its expiry)."""
    loc = L.tk_loc[i]
    src = L.tk_pages[loc >> POS_BITS]
    pos = loc & POS_MASK
    k0 = pos + OBJ_HEADER
    klen = np.int64(src[pos])
    vlen = np.int64(src[pos + 2]) | (np.int64(src[pos + 3]) << 8)
    flags = np.int64(src[pos + 1]) & layout.FLAG_EXPIRES
    return src[k0:k0 + klen], src[k0 + klen:k0 + klen + vlen], flags, layout.obj_expired(src, pos, L.io.m.clock[0])


@internal
def put_taken(P, S, n, page):
    """Put the n objects `take_bucket` just took into a set page, in the order taken (an expired one only removes
    the older copy it replaces); returns the bytes added."""
    added = 0
    for i in range(n):
        key, value, flags, expired = taken(P.log, i)
        if expired:
            pos = layout.page_find(page, key)
            if pos >= 0:
                layout.page_remove(page, pos)
            mt.record_expired(P.m, (1, key.shape[0] + value.shape[0] - layout.EXPIRY_BYTES))
            continue
        added += set_put(S, page, key, value, flags, 0, np.int64(P.taken_hits[i]))
    return added


@internal
def take_into_set(P, j, page):
    """Take set j's log objects and put them into its page (the cold half with hot/cold separation, rebuilding the
    hot half first when due, or when it may hold an older copy of one of them); returns (objects, bytes added)."""
    n = take_bucket(P, j)
    if P.cfg[HOT_COLD]:
        P.cfg[MOVES] += 1
        if P.cfg[MOVES] % P.cfg[HOT_REBUILD] == 0 or _taken_in_hot(P, j, n):
            redivide(P, j, page, n)
    return n, put_taken(P, P.sets, n, page)


# ---- hot/cold separation -------------------------------------------------------------------------------------------

@internal
def _move(dst, src, pos):
    """Append the object at `pos` of page src (with its RRIP) to page dst and remove it from src."""
    klen = np.int64(src[pos])
    k0 = pos + OBJ_HEADER
    end = k0 + klen + (np.int64(src[pos + 2]) | (np.int64(src[pos + 3]) << 8))
    layout.page_append(dst, src[k0:k0 + klen], src[k0 + klen:end], np.int64(src[pos + 1]), 0)
    layout.page_remove(src, pos)


@internal
def _taken_in_hot(P, j, n):
    """May set j's hot half hold a key among the n objects just taken (its Bloom filter says so)?"""
    for i in range(n):
        if set_may_hold(P.hot, j, taken(P.log, i)[0]):
            return True
    return False


@internal
def _drop_superseded(P, n, hot, cold):
    """Remove from both halves the keys of the n objects just taken (they bring newer copies) and from the hot half
    the keys the cold half also holds (newcomers always land in the cold half: its copy is the newer one)."""
    for i in range(n):
        key = taken(P.log, i)[0]
        for page in (hot, cold):
            pos = layout.page_find(page, key)
            if pos >= 0:
                layout.page_remove(page, pos)
    end = PAGE_HEADER + layout.page_used(hot)
    pos = PAGE_HEADER
    while pos < end:
        klen = np.int64(hot[pos])
        if layout.page_find(cold, hot[pos + OBJ_HEADER:pos + OBJ_HEADER + klen]) >= 0:
            layout.page_remove(hot, pos)
            end = PAGE_HEADER + layout.page_used(hot)
        else:
            pos += layout.obj_size_at(hot, pos)


@internal
def redivide(P, j, cold, n):
    """Rebuild set j's hot half from the pair (module docstring) and write it; `cold` is the cold half the caller
    rewrites afterwards with the n objects just taken."""
    H = P.hot
    hot = set_begin_update(H, j, mt.C_READ_MIGRATION, False)
    _drop_superseded(P, n, hot, cold)
    spill = P.spill
    spill[:] = 0
    while layout.page_count(cold):
        pos = page_nearest(cold)
        size = layout.obj_size_at(cold, pos)
        if page_room_at(hot, obj_rrip(cold, pos)) < size:
            break  # the nearest cold object does not beat the hot half's most distant ones: the split stands
        while layout.page_free(hot) < size:
            _move(spill, hot, page_most_distant(hot))
        _move(hot, cold, pos)
    set_write_no_owner(np.int64(NO_OWNER), H, j, hot, 0, 0, 0)
    end = PAGE_HEADER + layout.page_used(spill)
    pos = PAGE_HEADER
    while pos < end:  # the displaced hot objects join the cold half (RRIParoo evicts there if they do not fit)
        klen = np.int64(spill[pos])
        k0 = pos + OBJ_HEADER
        size = layout.obj_size_at(spill, pos)
        page_put(cold, spill[k0:k0 + klen], spill[k0 + klen:pos + size], np.int64(spill[pos + 1]), True, 0)
        pos += size


@internal
def migrate(P, j, kind):
    """Move every log object of set j into it with one read-modify-write; `kind` is the counter slot of the
    migration kind (migrations_*, then migrated_objects_* and migrated_bytes_*)."""
    S = P.sets
    page = set_begin_update(S, j, mt.C_READ_MIGRATION, False)
    n, added = take_into_set(P, j, page)
    set_write(P, S, j, page, added, 0, 0)
    c = P.m.counters
    c[kind] += 1
    c[kind + 1] += n
    c[kind + 2] += added


# ---- Kangaroo ----------------------------------------------------------------------------------------------------------

KangarooState = namedtuple("KangarooState", HIER_FIELDS)


@internal
def _older_copy_in_set(P, j, i):
    """Dropping evicted log object i while its key is still in its set would expose the stale copy."""
    L = P.log
    loc = L.ev_loc[i]
    page = L.evicting[(loc >> POS_BITS) % L.io.ppz]
    pos = loc & POS_MASK
    key = page[pos + OBJ_HEADER:pos + OBJ_HEADER + np.int64(page[pos])]
    return sets_hold(P, j, key, mt.C_READ_MIGRATION)


@internal
def _evicted_expired(P, i):
    """Has evicted log object i expired (counted as dropped: it is not readmitted)?"""
    L = P.log
    loc = L.ev_loc[i]
    page = L.evicting[(loc >> POS_BITS) % L.io.ppz]
    pos = loc & POS_MASK
    if not layout.obj_expired(page, pos, P.m.clock[0]):
        return False
    mt.record_expired(P.m, (1, layout.obj_kv_size(page, pos)))
    return True


@internal
def kangaroo_on_evict(P, n):
    """Threshold admission of the live objects of a reclaimed log zone; objects hit more than `readmit` times in
    the log are readmitted."""
    L = P.log
    c = P.m.counters
    readmit = P.cfg[READMIT]
    readmitted = 0
    for i in range(n):
        tag, loc = L.ev_tag[i], L.ev_loc[i]
        if not log_live(L, tag, loc):  # already moved with an earlier object of its set
            continue
        j = log_bucket(L, tag)
        if ix_chain_length(L.ix, j) >= P.cfg[THRESHOLD] or _older_copy_in_set(P, j, i):
            migrate(P, j, mt.C_MIGRATIONS_THRESHOLD)
        elif readmit and ix_hits(L.ix, j, tag) > readmit:
            if _evicted_expired(P, i):
                continue
            L.ev_readmit[i] = 1
            readmitted += 1
        else:
            c[mt.C_THRESHOLD_DROPS] += 1
    c[mt.C_READMISSIONS] += readmitted


register_compiled(KangarooState, get=hier_get, set=hier_set, delete=hier_delete, flush=hier_flush)
register_log_owner(KangarooState, kangaroo_on_evict)
register_set_owner(KangarooState, no_merge)


def _halves(zones: list[int], set_op: float, ppz: int) -> tuple[list[int], list[int], float]:
    """Set zones split into cold and hot halves (the hot one gets the odd zone), and the OP each half needs: at
    least the 2 zones' worth zone GC needs (more than `set_op` when a half has few zones)."""
    if len(zones) < 6:
        raise TierwiseError(f"{len(zones)} set zones are too few for hot and cold halves (6 at least)")
    half = len(zones) // 2
    return zones[:half], zones[half:], max(set_op, 2 / half + 1 / (half * ppz))


class HierarchicalEngine(Engine):
    """A log tier in front of a set tier (RRIParoo sets): gets check the log first, sets append to the log, deletes
    hit both. The log index is bucketed by set, so one set's log objects are one chain."""

    def __init__(self, device, metrics, *, log_pct: float, set_op: float, victim: str, bloom_fp: float,
                 objects_per_set: float, buffer_pages: int, rrip_insert: str, hot_cold: bool = False,
                 hot_rebuild: int = 5, log_hits: bool = False, in_place: bool | None = None):
        super().__init__(device, metrics)
        if hot_rebuild < 1:
            raise TierwiseError(f"hot_rebuild must be >= 1 (one set move in it rebuilds the hot half), got {hot_rebuild}")
        self.start_empty()
        io = new_page_io(device, self.metrics)
        log_zones, set_zones = split_zones(device.num_zones, log_pct)
        self.log_pct, self.victim, self.rrip_insert = log_pct, victim, rrip_insert
        tier = dict(rrip=True, victim=victim, bloom_fp=bloom_fp, objects_per_set=objects_per_set, in_place=in_place,
                    rrip_insert=rrip_insert)
        if hot_cold:
            cold_zones, hot_zones, set_op = _halves(set_zones, set_op, io.ppz)
            self.sets = new_set_tier(io, cold_zones, op=set_op, **tier)
            self.hot = new_set_tier(io, hot_zones, op=set_op, max_sets=self.sets.num_sets, **tier)
        else:
            self.sets = new_set_tier(io, set_zones, op=set_op, **tier)
            self.hot = self.sets
        log_hits = log_hits or rrip_insert == "authors"  # the authors' insertion point depends on log hits
        self.log = new_log_tier(io, log_zones, self.sets.num_sets, buffer_pages=buffer_pages, track_hits=log_hits,
                                num_zones=device.num_zones)
        self.cfg = np.zeros(5, np.int64)
        self.cfg[HOT_COLD], self.cfg[HOT_REBUILD] = int(hot_cold), hot_rebuild

    def _bundle(self, state_type):
        taken = np.zeros(self.log.tk_tag.shape[0], np.uint8)
        return state_type(self.device.flash, self.metrics.arrays, self.log, self.sets, self.hot, taken,
                          np.zeros(PAGE_SIZE, np.uint8), self.cfg)

    @property
    def hot_cold(self) -> bool:
        return bool(self.cfg[HOT_COLD])

    def dram_bytes(self) -> dict[str, int]:
        hot = set_dram_bytes(self.hot, "hot_set") if self.hot_cold else {}
        return {**log_dram_bytes(self.log), **set_dram_bytes(self.sets), **hot}

    def object_count(self) -> int:
        hot = set_object_count(self.hot) if self.hot_cold else 0
        return int(self.log.ix.st[LIVE]) + set_object_count(self.sets) + hot

    def config(self) -> dict:
        p = set_params(self.sets)
        out = {"engine": self.name, "log_pct": self.log_pct, "log_pages": log_capacity_pages(self.log),
               "sets": p["sets"], "set_op": self.sets.op, "victim": self.victim, "bloom_bits": p["bloom_bits"],
               "bloom_k": p["bloom_k"], "rrip_insert": self.rrip_insert, "hot_cold": self.hot_cold}
        if self.hot_cold:
            out["hot_rebuild"] = int(self.cfg[HOT_REBUILD])
        return out


@register_engine("kangaroo")
class KangarooEngine(HierarchicalEngine):
    name = "kangaroo"

    threshold = state_field(THRESHOLD, "objects of one set that must leave the log together to be admitted")
    readmit = state_field(READMIT, "log objects hit more than this many times are readmitted (0: none)")

    def __init__(self, device, metrics=None, *, log_pct: float = 0.05, threshold: int = 2, readmit: int = 1,
                 rrip_insert: str = "authors", set_op: float = 0.05, victim: str = "greedy", bloom_fp: float = 0.01,
                 objects_per_set: float = 16.0, buffer_pages: int = 16):
        if threshold < 1:
            raise TierwiseError(f"Kangaroo's admission threshold must be >= 1, got {threshold}")
        if isinstance(readmit, bool) or readmit < 0:
            raise TierwiseError(f"readmit is a number of log hits (0 = no readmission), got {readmit!r}")
        super().__init__(device, metrics, log_pct=log_pct, set_op=set_op, victim=victim, bloom_fp=bloom_fp,
                         objects_per_set=objects_per_set, buffer_pages=buffer_pages, rrip_insert=rrip_insert,
                         log_hits=readmit > 0)
        self.cfg[THRESHOLD], self.cfg[READMIT] = threshold, readmit
        self.st = self.cfg  # state_field's storage
        self._ready(self._bundle(KangarooState))

    def config(self) -> dict:
        return {**super().config(), "threshold": self.threshold, "readmit": self.readmit}
