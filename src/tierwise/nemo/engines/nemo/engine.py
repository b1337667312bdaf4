"""The Nemo engine (nemo.md §3, §8.1): SetGroups hashed over the whole key space, written whole to a FIFO ring of
zones, found again through the PBFG index. The request path (get, set, delete), the delayed flush, the SG flush
with its index write, eviction and hotness-aware write-back are compiled below, over the `NemoState` bundle;
`NemoEngine` builds it, reports on it and recovers it (recovery.py).

Correctness rules that make "a deleted or overwritten key is never served again" hold:
1. Lookups go newest first: buffers B[0..M-1], then candidate SGs by descending sequence number; the first copy or
   tombstone found decides.
2. `set` and `delete` drop every buffered copy first, so a buffer holds at most one record per key.
3. `delete` leaves a tombstone in the buffers whenever any live SG's filter may hold the key; a tombstone is never
   sacrificed by the delayed flush and never written back; it dies with its own SG, after every older copy.
4. A buffered object that may shadow an older flash copy (FLAG_SHADOWS) becomes a tombstone, not nothing, when the
   delayed flush sacrifices it.
5. Write-back re-inserts an object of the evicted SG only if no buffer and no younger live SG holds any record of
   its key (filters checked, positives confirmed by reading the set).
6. Set pages carry a crc32c; a lookup that meets a corrupt page stops with a miss rather than risk an older copy.
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import Any

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo import metrics as mt
from tierwise.nemo.device import flash as fl
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.base import Engine, register_compiled
from tierwise.nemo.engines.nemo import hotness, pbfg
from tierwise.nemo.engines.nemo.config import SG_META_PAGES, NemoConfig, plan_geometry
from tierwise.nemo.engines.nemo.format import sets_crc, write_sg_header, write_sg_trailer
from tierwise.nemo.engines.nemo.setgroup import (buffered_objects, buffers_find, buffers_insert, buffers_remove,
                                                 buffers_value, rotate, sacrifice, set_filters)
from tierwise.nemo.hashing import key_hash_into, set_offset
from tierwise.nemo.index.bloom import filter_add
from tierwise.nemo.layout import (FLAG_SHADOWS, FLAG_TOMBSTONE, FLAG_WRITEBACK, OBJ_HEADER, PAGE_HEADER,
                                  PAGE_SIZE, PAYLOAD, T_TOMBSTONE, T_USED, T_USER_HEADERS, T_USER_KV, T_USER_OBJECTS,
                                  T_WRITEBACK, T_WRITEBACK_OBJECTS, obj_expired, obj_flags_at, obj_kv_size, obj_size_at,
                                  obj_value_span, page_copy_object, page_crc_valid, page_drop_expired, page_find,
                                  page_free, page_index_of, page_positions, page_rotate_to_front, page_tally_into,
                                  page_used, seal_pages, span_expired, stored_size)
from tierwise.nemo.metrics import MetricsArrays, record_expired, record_fills, record_get
from tierwise.nemo.native import Pinned, internal, ref_of

Cfg = namedtuple("Cfg", [
    "S",  # sets per SG
    "N",  # SG slots on flash
    "G",  # SGs per index group
    "L",  # live index groups (index pages per PBFG fetch)
    "R",  # PBFG rows per index page
    "RB",  # bytes per PBFG row
    "K", "MBITS",  # set-level filter: hash functions, bits
    "ZPS",  # zones per SG
    "TRIES",  # buffered SGs an insert may use (M, or 1 without buffered-SG fallback)
    "SECONDARY_USED",  # bytes a younger buffered set may hold after an insert (FLUSH_THRESHOLD of its payload)
    "M",  # buffered SGs
    "P_TH",  # count mode: flush after this many failed inserts
    "PROBABILITY",  # 1: flush with probability FLUSH_P per failed insert instead
    "FLUSH_P",
    "WRITE_BACK", "WB_COLD",  # hotness-aware write-back; then also cold objects while room remains
    "COOL_EVERY",  # SG flushes between clears of the hotness bits
    "SEED",  # key hash seed
    "BLOCK_PAGES",  # pages of an index block
])
# st: the engine's scalars
OLDEST, NEXT_SEQ, WAITS, FLUSHES, RNG = range(5)

Scratch = namedtuple("Scratch", [
    "page", "victim", "check",  # page buffers for reads on syscall devices: lookups, write-back victim, shadow checks
    "pos", "wb_pos",  # Bloom positions of the request's key, of a write-back candidate
    "used", "tally", "bad",  # per-set used bytes, page tally, all-False per set (an SG flush)
    "meta",  # the SG header and trailer pages
    "offsets",  # cached offsets, for write-back
])

NemoState = namedtuple("NemoState", [
    "dev", "m",  # the device's Flash bundle, MetricsArrays
    "cfg", "st",
    "pages", "filters", "order",  # the M buffered SGs (setgroup.py)
    "pbfg",  # the index (pbfg.py)
    "hot",  # uint16[window, S]: hotness bits (hotness.py)
    "sg_objects",  # int64[N]: objects (user + write-back) in each live SG slot
    "scratch",
])


# ---- hashing and reads -------------------------------------------------------------------------------------------------

@internal(inline=True)
def _hash(P, key, positions):
    """Set offset of `key`; its Bloom positions go into `positions`."""
    cfg = P.cfg
    return key_hash_into(key, np.uint64(cfg.SEED), cfg.S, cfg.MBITS, positions)


@internal
def read_set(P, seq, j, scratch, foreground):
    """(set page j of SG `seq`, its checksum holds)."""
    cfg, F = P.cfg, P.dev
    byte = (1 + j) * PAGE_SIZE
    page = fl.read(F, (seq % cfg.N) * cfg.ZPS + byte // F.zone_cap, byte % F.zone_cap, PAGE_SIZE, scratch, foreground)
    return page, page_crc_valid(page)


# ---- the request path --------------------------------------------------------------------------------------------------

@internal
def get(P, key):
    cfg, st, m = P.cfg, P.st, P.m
    positions = P.scratch.pos
    j = _hash(P, key, positions)
    row, start, n, flags = buffers_value(P.pages, P.filters, P.order, j, key, positions)
    if row >= 0:
        hit = not flags & FLAG_TOMBSTONE
        if hit and span_expired(P.pages[row, j], start, flags, m.clock[0]):
            hit = False
            m.counters[mt.C_EXPIRED_MISSES] += 1
        record_get(m, hit, 0, 0, PAGE_SIZE)
        return hit, P.pages[row, j], start, n
    n_cands, index_reads = pbfg.candidates(P, j, positions, st[OLDEST], st[NEXT_SEQ], True, True)
    out = P.pbfg.out
    reads = 0
    hit = False
    start, n = 0, 0
    page = P.scratch.page
    for c in range(n_cands):
        seq = out[c]
        reads += 1
        page, ok = read_set(P, seq, j, P.scratch.page, True)
        if not ok:
            m.counters[mt.C_CORRUPT_SET_PAGES] += 1
            break
        pos = page_find(page, key)
        if pos < 0:
            continue  # a filter false positive
        start, n, flags = obj_value_span(page, pos)
        if flags & FLAG_TOMBSTONE:
            break
        if span_expired(page, start, flags, m.clock[0]):  # the newest copy decides: an older one is older still
            m.counters[mt.C_EXPIRED_MISSES] += 1
            break
        hit = True
        hotness.mark(P.hot, seq, st[OLDEST], j, page_index_of(page, pos))
        break
    record_get(m, hit, reads, index_reads, PAGE_SIZE)
    return hit, page, start, n


@internal
def set_(P, key, value, expiry):
    st, m = P.st, P.m
    m.counters[mt.C_INSERTS] += 1
    m.counters[mt.C_INSERT_BYTES] += key.shape[0] + value.shape[0]
    positions = P.scratch.pos
    j = _hash(P, key, positions)
    buffers_remove(P.pages, P.filters, P.order, j, key, positions)
    # known-absent from flash only if the filters in DRAM say so; otherwise assume an older copy may exist
    n, _ = pbfg.candidates(P, j, positions, st[OLDEST], st[NEXT_SEQ], False, False)
    _put(P, j, key, value, FLAG_SHADOWS if n != 0 else 0, expiry)
    return True


@internal
def delete(P, key):
    st, m = P.st, P.m
    m.counters[mt.C_DELETES] += 1
    positions = P.scratch.pos
    j = _hash(P, key, positions)
    buffers_remove(P.pages, P.filters, P.order, j, key, positions)
    n, index_reads = pbfg.candidates(P, j, positions, st[OLDEST], st[NEXT_SEQ], True, True)
    m.counters[mt.C_DELETE_INDEX_READS] += index_reads
    if n:
        m.counters[mt.C_TOMBSTONES] += 1
        _put(P, j, key, key[:0], FLAG_TOMBSTONE, 0)


@internal
def _next_random(st):
    """A uniform float in [0, 1) from the engine's own generator (splitmix64), for probability-mode flushes."""
    st[RNG] += np.int64(-7046029254386353131)  # 0x9E3779B97F4A7C15
    z = np.uint64(st[RNG])
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@internal
def _put(P, j, key, value, flags, expiry):
    """Insert into the buffers; when every candidate set is full, delay the flush (§3.3): sacrifice the oldest
    objects of the youngest candidate set (the artifact's secondary SG) down to its threshold, or flush once the
    delay has run out."""
    cfg, st = P.cfg, P.st
    positions = P.scratch.pos
    if _insert(P, j, key, value, flags, expiry, positions) >= 0:
        return
    st[WAITS] += 1
    due = _next_random(st) < cfg.FLUSH_P if cfg.PROBABILITY else st[WAITS] >= cfg.P_TH
    if due:
        flush_sg(P)
    else:
        need = stored_size(key, value, expiry)
        if cfg.TRIES > 1:
            need += PAYLOAD - cfg.SECONDARY_USED
        lost, lost_bytes, ok = sacrifice(P.pages[P.order[cfg.M - cfg.TRIES], j], need)
        P.m.counters[mt.C_DROPPED_OBJECTS] += lost
        P.m.counters[mt.C_DROPPED_BYTES] += lost_bytes
        if not ok:
            flush_sg(P)  # the set holds only tombstones: flushing is the only way to make room
    _hash(P, key, positions)  # a flush's write-back hashed other keys
    if _insert(P, j, key, value, flags, expiry, positions) < 0:
        raise TierwiseError("an object does not fit an empty 4 KB set")


@internal(inline=True)
def _insert(P, j, key, value, flags, expiry, positions):
    cfg = P.cfg
    return buffers_insert(P.pages, P.filters, P.order, j, key, value, flags, expiry, positions, cfg.TRIES,
                          cfg.SECONDARY_USED)


@internal
def flush(P):
    """Write every non-empty buffered SG (clean shutdown); partial SGs cost their padding in ALWA."""
    for _ in range(P.cfg.M):
        rear = P.order[P.cfg.M - 1]
        if _any_used(P.pages[rear]):
            flush_sg(P)
        else:
            rotate(P.pages, P.filters, P.order)


@internal
def _any_used(pages):
    for j in range(pages.shape[0]):
        if pages[j, 12] | pages[j, 13] | pages[j, 14] | pages[j, 15]:
            return True
    return False


# ---- flush and eviction ------------------------------------------------------------------------------------------------

@internal
def flush_sg(P):
    """Write B[M-1] as the next SG (header, S sets, trailer), add its filters to the open index group, rotate."""
    cfg, st, m, sc = P.cfg, P.st, P.m, P.scratch
    if st[NEXT_SEQ] - st[OLDEST] >= cfg.N:
        evict_oldest(P)
    seq = st[NEXT_SEQ]
    rear = P.order[cfg.M - 1]
    pages = P.pages[rear]
    t = sc.tally
    t[:] = 0
    for j in range(cfg.S):
        record_expired(m, page_drop_expired(pages[j], m.clock[0]))  # never written: they would only be misses
        page_tally_into(pages[j], t)
        sc.used[j] = page_used(pages[j])
    seal_pages(pages, seq, 0)
    slot = seq % cfg.N
    header, trailer = sc.meta[0], sc.meta[1]
    header[:] = 0
    trailer[:] = 0
    write_sg_header(header, seq, cfg.S, slot, cfg.ZPS, cfg.SEED, cfg.MBITS, cfg.K, cfg.G, PAGE_SIZE, 0)
    objects = t[T_USER_OBJECTS] + t[T_WRITEBACK_OBJECTS]
    write_sg_trailer(trailer, seq, cfg.S, objects, t[T_USER_KV], sets_crc(pages), 0)
    _write_sg(P, slot * cfg.ZPS, pages)
    w = m.writes
    w[mt.W_USER] += t[T_USER_KV]
    w[mt.W_OBJECT_HEADERS] += t[T_USER_HEADERS]
    w[mt.W_WRITEBACK] += t[T_WRITEBACK]
    w[mt.W_TOMBSTONE] += t[T_TOMBSTONE]
    w[mt.W_PADDING] += cfg.S * PAYLOAD - t[T_USED]
    w[mt.W_PAGE_HEADERS] += cfg.S * (PAGE_SIZE - PAYLOAD) + SG_META_PAGES * PAGE_SIZE
    c = m.counters
    c[mt.C_FLASHED_OBJECTS] += t[T_USER_OBJECTS]
    c[mt.C_LOGICAL_BYTES] += t[T_USER_KV]
    c[mt.C_LOGICAL_HEADER_BYTES] += t[T_USER_HEADERS]
    record_fills(m, sc.used, PAYLOAD, True)
    c[mt.C_WRITEBACK_OBJECTS] += t[T_WRITEBACK_OBJECTS]
    P.sg_objects[slot] = objects
    filters = P.filters[rear]
    set_filters(pages, filters, cfg.SEED, cfg.K, cfg.MBITS, sc.bad)
    w[mt.W_INDEX] += pbfg.add_sg(P, seq, filters)
    st[FLUSHES] += 1
    hotness.on_flush(P.hot, P.pbfg.slot_of, st[FLUSHES], cfg.COOL_EVERY)
    rotate(P.pages, P.filters, P.order)
    st[NEXT_SEQ] += 1
    st[WAITS] = 0


@internal
def _write_sg(P, first_zone, pages):
    """Append header, sets and trailer sequentially over the SG's zones (one append per part and zone)."""
    F = P.dev
    cap = F.zone_cap
    z = first_zone
    room = cap
    for part in range(3):
        src = P.scratch.meta[0:1] if part == 0 else pages if part == 1 else P.scratch.meta[1:2]
        done = 0
        while done < src.shape[0]:
            if room == 0:
                z += 1
                room = cap
            n = min(src.shape[0] - done, room // PAGE_SIZE)
            fl.append(F, z, src[done:done + n].reshape(-1), 0, n * PAGE_SIZE)
            room -= n * PAGE_SIZE
            done += n


@internal
def evict_oldest(P):
    cfg, st, c = P.cfg, P.st, P.m.counters
    v = st[OLDEST]
    kept = c[mt.C_WRITEBACK_HOT] + c[mt.C_WRITEBACK_COLD]
    if cfg.WRITE_BACK:
        write_back(P, v)
    kept = c[mt.C_WRITEBACK_HOT] + c[mt.C_WRITEBACK_COLD] - kept
    # what leaves flash with the SG (stale copies included: telling them apart would cost an index probe each)
    c[mt.C_EVICTED_OBJECTS] += P.sg_objects[v % cfg.N] - kept
    F = P.dev
    first = (v % cfg.N) * cfg.ZPS
    for z in range(first, first + cfg.ZPS):
        if F.wp[z] or F.cond[z] == fl.FULL:
            fl.reset(F, z)
    P.sg_objects[v % cfg.N] = 0
    hotness.on_evict(P.hot, v)
    pbfg.on_evict(P, v)
    st[OLDEST] += 1
    c[mt.C_SG_EVICTIONS] += 1


@internal
def _shadowed(P, key, j, positions, v):
    """Does a buffer or an SG younger than `v` hold any record (copy or tombstone) of `key`?"""
    if buffers_find(P.pages, P.filters, P.order, j, key, positions)[0] >= 0:
        return True
    n, _ = pbfg.candidates(P, j, positions, v + 1, P.st[NEXT_SEQ], False, False)
    if n < 0:
        return True
    out = P.pbfg.out
    for c in range(n):
        page, ok = read_set(P, out[c], j, P.scratch.check, False)
        P.m.counters[mt.C_READ_WRITEBACK_CHECK] += PAGE_SIZE
        if not ok or page_find(page, key) >= 0:
            return True
    return False


@internal
def write_back(P, v):
    """Hotness-aware write-back (§3.4): for offsets whose PBFG is cached, re-insert SG v's hot objects, then the
    others while space remains, into the SG about to be flushed (B[M-1])."""
    cfg, m, sc = P.cfg, P.m, P.scratch
    rear = P.order[cfg.M - 1]
    offsets = sc.offsets
    n_cached = 0
    for slot in range(P.pbfg.offset_of.shape[0]):
        if P.pbfg.offset_of[slot] >= 0:
            offsets[n_cached] = P.pbfg.offset_of[slot]
            n_cached += 1
    offsets[:n_cached].sort()
    hot_row = P.hot[v % P.hot.shape[0]]  # v is always inside the window: it is the oldest live SG
    for c in range(n_cached):
        j = offsets[c]
        dst = P.pages[rear, j]
        if page_free(dst) < OBJ_HEADER + 2:
            continue
        page, ok = read_set(P, v, j, sc.victim, False)
        if not ok:
            m.counters[mt.C_CORRUPT_SET_PAGES] += 1
            continue
        m.counters[mt.C_READ_WRITEBACK] += PAGE_SIZE
        positions = page_positions(page)
        hot = np.int64(hot_row[j])
        first_new = PAGE_HEADER + page_used(dst)
        for phase in range(2 if cfg.WB_COLD else 1):
            for i in range(positions.shape[0]):
                is_hot = i < hotness.SLOTS and (hot >> i) & 1 == 1
                if is_hot != (phase == 0):
                    continue
                pos = positions[i]
                if obj_flags_at(page, pos) & FLAG_TOMBSTONE or obj_size_at(page, pos) > page_free(dst):
                    continue
                if obj_expired(page, pos, m.clock[0]):
                    record_expired(m, (1, obj_kv_size(page, pos)))
                    continue
                key = page[pos + OBJ_HEADER:pos + OBJ_HEADER + np.int64(page[pos])]
                _hash(P, key, sc.wb_pos)
                if _shadowed(P, key, j, sc.wb_pos, v):
                    m.counters[mt.C_WRITEBACK_SHADOWED] += 1
                    continue
                page_copy_object(dst, page, pos, FLAG_WRITEBACK)
                filter_add(P.filters[rear, j], 0, sc.wb_pos)
                m.counters[mt.C_WRITEBACK_HOT if is_hot else mt.C_WRITEBACK_COLD] += 1
        page_rotate_to_front(dst, first_new)


register_compiled(NemoState, get=get, set=set_, delete=delete, flush=flush)


@njit(cache=True)
def _write_open_group(arena, state):
    """Recovery: write the open group's block now (rebuilding a block a crash kept off flash)."""
    return pbfg.write_group(ref_of(arena, state))


# ---- the Python side ------------------------------------------------------------------------------------------------------

def _config(options: dict[str, Any]) -> NemoConfig:
    unknown = sorted(set(options) - set(NemoConfig.__dataclass_fields__))
    if unknown:
        raise TierwiseError(f"bad option for engine 'nemo': {', '.join(unknown)} (known: "
                            f"{', '.join(NemoConfig.__dataclass_fields__)})")
    return NemoConfig(**options)


def _aligned_pages(n: int) -> np.ndarray:
    raw = np.zeros((n + 1) * PAGE_SIZE, np.uint8)
    skip = (-raw.ctypes.data) % PAGE_SIZE
    return raw[skip:skip + n * PAGE_SIZE].reshape(n, PAGE_SIZE)


def _scalar(index: int, doc: str) -> property:
    def get_(self) -> int:
        return int(self.state.st[index])

    def set__(self, value: int) -> None:
        self.state.st[index] = value

    return property(get_, set__, doc=doc)


@register_engine("nemo")
class NemoEngine(Engine):
    name = "nemo"

    def __init__(self, device: Any, metrics: mt.Metrics | None = None, *, recover: bool = False, **options: Any):
        super().__init__(device, metrics)
        self.cfg = options.pop("config", None) or _config(options)
        self.geo = plan_geometry(self.cfg, device.num_zones, device.zone_capacity)
        geo, cfg = self.geo, self.cfg
        self.S, self.N, self.filter = geo.sets, geo.data_slots, geo.filter
        self.p_th = cfg.p_threshold(self.S)
        self.max_value_size = cfg.max_value_size
        M, S = cfg.buffered_sgs, geo.sets
        probability = cfg.flush_mode == "probability"
        compiled_cfg = Cfg(
            S=S, N=geo.data_slots, G=geo.group_size, L=geo.live_groups, R=geo.rows_per_page, RB=geo.row_bytes,
            K=self.filter.k, MBITS=self.filter.m_bits, ZPS=geo.zones_per_sg,
            TRIES=M if cfg.buffer_fallback else 1, SECONDARY_USED=math.floor(cfg.secondary_threshold * PAYLOAD), M=M,
            P_TH=math.ceil(self.p_th) if not probability else 0,
            PROBABILITY=int(probability), FLUSH_P=float(self.p_th) if probability else 0.0,
            WRITE_BACK=int(cfg.write_back), WB_COLD=int(cfg.write_back_cold),
            COOL_EVERY=hotness.cool_every(geo.data_slots, cfg.cooling),
            SEED=int(np.uint64(cfg.hash_seed).astype(np.int64)), BLOCK_PAGES=geo.index_block_pages)
        self.pbfg = pbfg.new_pbfg(geo, cfg.pbfg_cache_offsets(geo), device.num_zones, device.zone_capacity)
        st = np.zeros(5, np.int64)
        st[RNG] = cfg.seed
        scratch = Scratch(_aligned_pages(1)[0], _aligned_pages(1)[0], _aligned_pages(1)[0],
                          np.zeros(self.filter.k, np.int64), np.zeros(self.filter.k, np.int64), np.zeros(S, np.int64),
                          np.zeros(8, np.int64), np.zeros(S, np.bool_), np.zeros((2, PAGE_SIZE), np.uint8),
                          np.zeros(S, np.int64))
        state = NemoState(device.flash, self.metrics.arrays, compiled_cfg, st,
                          np.zeros((M, S, PAGE_SIZE), np.uint8), np.zeros((M, S, self.filter.nbytes), np.uint8),
                          np.arange(M, dtype=np.int64), self.pbfg,
                          np.zeros((hotness.window_sgs(geo.data_slots, cfg.hot_window), S), np.uint16),
                          np.zeros(geo.data_slots, np.int64), scratch)
        self._ready(state)
        if recover:  # rebuild the cache the device holds (tierwise.nemo.engines.nemo.recovery)
            from tierwise.nemo.engines.nemo.recovery import recover as recover_from_flash

            self.recovery = recover_from_flash(self)
            return
        self.start_empty()

    oldest = _scalar(OLDEST, "Oldest live SG on flash; live SGs are [oldest, next_seq).")
    next_seq = _scalar(NEXT_SEQ, "Sequence number the next flushed SG gets.")
    waits = _scalar(WAITS, "Failed inserts since the last flush (the delayed-flush counter c).")

    @property
    def open_group(self) -> int:
        """The index group SGs are flushed into now (its filters are in DRAM)."""
        return int(self.pbfg.st[pbfg.OPEN_GROUP])

    @property
    def sg_objects(self) -> np.ndarray:
        return self.state.sg_objects

    def write_open_group(self) -> int:
        """Write the open index group's block now (recovery); returns the bytes written."""
        return int(self._call_state(_write_open_group))

    def _call_state(self, fn):
        try:
            return fn(self.pinned.arena, self.state)
        except fl.DeviceFault:
            self.device.raise_fault()

    def offset_of(self, key: bytes) -> int:
        """The set offset j of a key (the same in every SG)."""
        return set_offset(key, self.S, self.cfg.hash_seed)

    def _addr(self, seq: int, page: int) -> tuple[int, int]:
        """(zone, byte offset) of page `page` of SG `seq` (page 0 = header, 1..S = sets, S+1 = trailer)."""
        byte = page * PAGE_SIZE
        cap = self.device.zone_capacity
        return (seq % self.N) * self.geo.zones_per_sg + byte // cap, byte % cap

    def object_count(self) -> int:
        return int(self.state.sg_objects.sum()) + int(buffered_objects(self.state.pages))

    def dram_bytes(self) -> dict[str, int]:
        s = self.state
        return {**pbfg.pbfg_nbytes(self.pbfg), "hotness": s.hot.nbytes, "sg_table": s.sg_objects.nbytes,
                "buffers": s.pages.nbytes, "buffer_filters": s.filters.nbytes + s.order.nbytes}

    def config(self) -> dict[str, Any]:
        g = self.geo
        return {"engine": self.name, **self.cfg.as_dict(), "S": g.sets, "N": g.data_slots, "G": g.group_size,
                "zones_per_sg": g.zones_per_sg, "index_zones": len(g.index_zones), "rows_per_index_page":
                g.rows_per_page, "filter_m_bits": self.filter.m_bits, "filter_k": self.filter.k, "p_th": self.p_th,
                "pbfg_pages_per_fetch": g.live_groups, "pbfg_cached_offsets": int(self.pbfg.offset_of.size)}
