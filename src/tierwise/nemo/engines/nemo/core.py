"""The Nemo engine's get / set / delete / write-back compiled whole, for an engine on the in-memory device.

`NemoEngine`'s Python methods serve any device (file, Linux zoned, in-memory); on the in-memory device the same
steps run here in numba, reading set and index pages straight from the device's memory, so a replay can drive
millions of requests a second (`tierwise.nemo.engines.nemo.fastreplay`). The two paths must stay step-for-step
equal: every function below names the `NemoEngine` method it mirrors, and `tests/nemo/test_engine_nemo_core.py`
replays the same trace both ways and requires identical metrics, device counters and flash contents.

All state is the engine's own arrays, passed as one tuple `E` (indices below); nothing is copied. Each function
binds the members it uses to locals first: numba code that indexes the tuple inside expressions (call arguments,
return values) runs several times slower. SG flushes stay
in Python (they are rare: one per ~S x 15 inserts): an insert that needs one returns NEED_FLUSH and the caller
flushes, then calls `insert_after_flush`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tierwise.nemo.engines.nemo.format import INDEX_ROW_HEADER, ROW_CHECK, row_valid
from tierwise.nemo.engines.nemo.hotness import SLOTS
from tierwise.nemo.engines.nemo.pbfg import NEED_FETCH, OPEN_GROUP, locate_page, probe, take_slot
from tierwise.nemo.engines.nemo.setgroup import buffers_find, buffers_insert, buffers_remove, buffers_value, sacrifice
from tierwise.nemo.hashing import key_hash_into
from tierwise.nemo.index.bloom import filter_add
from tierwise.nemo.layout import (FLAG_SHADOWS, FLAG_TOMBSTONE, FLAG_WRITEBACK, OBJ_HEADER, PAGE_HEADER, PAGE_SIZE,
                                  obj_flags_at, obj_size_at, obj_value_span, page_copy_object, page_crc_valid,
                                  page_find, page_free, page_index_of, page_positions, page_rotate_to_front,
                                  page_used)
from tierwise.nemo.native import borrow, copy_bytes, prefetch, unref

# E: the engine state tuple (built by NemoEngine.core_state); ROWS is PBFG.flat_rows
(CF, ST, PST, PAGES, FILTERS, ORDER, OPEN_ROWS, ROWS, ROW_GROUP, SLOT_OF, OFFSET_OF, LAST_USE, LOC, HOT, DEV, ZREAD,
 CTR, POS) = range(18)
# CF: configuration, int64
(S, N, G, L, R, RB, K, MBITS, ZPS, ZCAP, P_TH, TRIES, WINDOW, WB_COLD, SEED, M) = range(16)  # RB: PBFG row bytes
# ST: the engine's scalars (NemoEngine.oldest, next_seq, waits)
OLDEST, NEXT_SEQ, WAITS = range(3)
# CTR: counters folded into Metrics (non-zero ones) by NemoEngine.fold_core_counters
COUNTERS = ("gets", "hits", "get_bytes_read", "get_flash_reads", "get_index_reads", "gets_fetching_index", "inserts",
            "insert_bytes", "deletes", "dropped_objects", "dropped_bytes", "tombstones", "delete_index_reads",
            "corrupt_set_pages", "writeback_hot", "writeback_cold", "writeback_shadowed", "read_writeback_bytes",
            "read_writeback_check_bytes", "device_read_ios")
(C_GETS, C_HITS, C_GET_BYTES, C_GET_FLASH, C_GET_INDEX, C_GET_FETCHING, C_INSERTS, C_INSERT_BYTES, C_DELETES,
 C_DROPPED, C_DROPPED_BYTES, C_TOMBSTONES, C_DELETE_INDEX, C_CORRUPT, C_WB_HOT, C_WB_COLD, C_WB_SHADOWED,
 C_READ_WB, C_READ_WB_CHECK, C_READ_IOS) = range(len(COUNTERS))
# insert outcomes
DONE, NEED_FLUSH = 0, 1


@njit(cache=True, inline="always")
def key_hash(E, key):
    """(set offset j, Bloom positions) of `key` (hashing.key_hash + bloom_positions); the positions live in the
    scratch array E[POS] until the next call."""
    cf, pos = E[CF], E[POS]
    return key_hash_into(key, np.uint64(cf[SEED]), cf[S], cf[MBITS], pos), pos


@njit(cache=True, inline="always")
def read_page(E, zone, offset):
    """A page of the device as a view (no copy), counted as one device read (ZonedDevice.read_into)."""
    cf, dev, zread, ctr = E[CF], E[DEV], E[ZREAD], E[CTR]
    zread[zone] += PAGE_SIZE
    ctr[C_READ_IOS] += 1
    base = zone * cf[ZCAP] + offset
    return dev[base:base + PAGE_SIZE]


@njit(cache=True, inline="always")
def read_set(E, seq, j):
    """(set page j of SG `seq`, crc ok) (NemoEngine._read_set)."""
    cf = E[CF]
    byte = (1 + j) * PAGE_SIZE
    page = read_page(E, (seq % cf[N]) * cf[ZPS] + byte // cf[ZCAP], byte % cf[ZCAP])
    return page, page_crc_valid(page)


@unref
def fetch_rows(E, j, lo):
    """Read row j of every written group covering live SGs into an LRU slot; pages read (PBFG._fetch)."""
    cf, pst, rows, row_group, slot_of, offset_of = E[CF], E[PST], E[ROWS], E[ROW_GROUP], E[SLOT_OF], E[OFFSET_OF]
    last_use, loc = E[LAST_USE], E[LOC]
    slot = take_slot(offset_of, slot_of, last_use, pst)
    slot_of[j] = slot
    offset_of[slot] = j
    row_group[slot, :] = -1
    first = (j // cf[R]) * cf[R]
    rb = cf[RB]
    start = INDEX_ROW_HEADER + (j - first) * (rb + ROW_CHECK)
    reads = 0
    dev = E[DEV]
    for g in range(max(0, lo // cf[G]), pst[OPEN_GROUP]):  # start every page's DRAM fetch before checking any
        z, off = locate_page(loc, g, 1 + j // cf[R])
        base = z * cf[ZCAP] + off
        prefetch(dev, base)
        for line in range(base + start, base + start + rb + ROW_CHECK, 64):
            prefetch(dev, line)
    for g in range(max(0, lo // cf[G]), pst[OPEN_GROUP]):
        z, off = locate_page(loc, g, 1 + j // cf[R])
        page = read_page(E, z, off)
        reads += 1
        if row_valid(page, g, first, j - first, rb):
            copy_bytes(rows[slot * cf[L] + g % cf[L]], 0, page, start, rb)
        else:  # torn/corrupt index page: every member may hold the key (extra reads, never a stale hit)
            rows[slot * cf[L] + g % cf[L]] = 0xFF
        row_group[slot, g % cf[L]] = g
    return reads


@unref
def candidates(E, j, positions, lo, hi, fetch, out):
    """(count of SG seqs in `out`, index pages read); count -1 = uncached PBFG without `fetch` (PBFG.candidates).
    Not inlined into its callers: the probe it inlines is large, and one copy keeps compile time down."""
    cf, pst, slot_of, last_use, rows, row_group, open_rows = (E[CF], E[PST], E[SLOT_OF], E[LAST_USE], E[ROWS],
                                                              E[ROW_GROUP], E[OPEN_ROWS])
    pages = 0
    while True:  # probe; on NEED_FETCH fetch the row and probe again
        n = probe(pst, slot_of, last_use, open_rows, rows, row_group, cf[G], j, positions, lo, hi, fetch, out)
        if n != NEED_FETCH:
            return n, pages
        pages = fetch_rows(E, j, lo)


@njit(cache=True, inline="always")
def get(E, key, out):
    """NemoEngine.get. Returns (where, value start, value length, page): where = -1 miss, 0..M-1 the buffer row
    whose set page `page` holds the value, M a flash page (`page` is then a view of the device)."""
    cf, st, ctr, pages, filters, order, hot, dev = E[CF], E[ST], E[CTR], E[PAGES], E[FILTERS], E[ORDER], E[HOT], E[DEV]
    j, positions = key_hash(E, key)
    row, start, n, flags = buffers_value(pages, filters, order, j, key, positions)
    ctr[C_GETS] += 1
    if row >= 0:
        page = pages[row, j]
        if flags & FLAG_TOMBSTONE:
            return -1, 0, 0, page
        ctr[C_HITS] += 1
        return row, start, n, page
    n_cands, index_reads = candidates(E, j, positions, st[OLDEST], st[NEXT_SEQ], True, out)
    reads = 0
    where, start, n = -1, 0, 0
    page = dev[:0]
    for c in range(n_cands):
        seq = out[c]
        reads += 1
        page, ok = read_set(E, seq, j)
        if not ok:
            ctr[C_CORRUPT] += 1
            break
        pos = page_find(page, key)
        if pos < 0:
            continue  # a filter false positive
        start, n, flags = obj_value_span(page, pos)
        if not flags & FLAG_TOMBSTONE:
            where = cf[M]
            if seq < st[OLDEST] + cf[WINDOW]:  # HotnessTracker.tracked / mark
                slot = page_index_of(page, pos)
                if slot < SLOTS:
                    hot[seq % cf[WINDOW], j] |= np.uint16(1 << slot)
        break
    if where >= 0:
        ctr[C_HITS] += 1
    if reads + index_reads:
        ctr[C_GET_BYTES] += (reads + index_reads) * PAGE_SIZE
        ctr[C_GET_FLASH] += reads
    if index_reads:
        ctr[C_GET_INDEX] += index_reads
        ctr[C_GET_FETCHING] += 1
    return where, start, n, page


@njit(cache=True, inline="always")
def put(E, j, key, value, flags, positions):
    """NemoEngine._put up to the flush: DONE, or NEED_FLUSH (then flush and call insert_after_flush)."""
    cf, st, ctr, pages, filters, order = E[CF], E[ST], E[CTR], E[PAGES], E[FILTERS], E[ORDER]
    if buffers_insert(pages, filters, order, j, key, value, flags, positions, cf[TRIES]) >= 0:
        return DONE
    st[WAITS] += 1  # every candidate set is full: delay the flush (§3.3)
    if st[WAITS] >= cf[P_TH]:
        return NEED_FLUSH
    row = order[cf[TRIES] - 1]
    lost, lost_bytes, ok = sacrifice(pages[row, j], OBJ_HEADER + key.shape[0] + value.shape[0])
    ctr[C_DROPPED] += lost
    ctr[C_DROPPED_BYTES] += lost_bytes
    if not ok:
        return NEED_FLUSH
    return DONE if insert_after_flush(E, j, key, value, flags, positions) else -1


@njit(cache=True, inline="always")
def insert_after_flush(E, j, key, value, flags, positions) -> bool:
    """The insert that follows a flush or a sacrifice; False if the object does not fit an empty set."""
    cf, pages, filters, order = E[CF], E[PAGES], E[FILTERS], E[ORDER]
    return buffers_insert(pages, filters, order, j, key, value, flags, positions, cf[TRIES]) >= 0


@njit(cache=True, inline="always")
def set_(E, key, value, out):
    """NemoEngine.set after its size check: (outcome of put, j, flags, positions)."""
    st, ctr, pages, filters, order = E[ST], E[CTR], E[PAGES], E[FILTERS], E[ORDER]
    ctr[C_INSERTS] += 1
    ctr[C_INSERT_BYTES] += key.shape[0] + value.shape[0]
    j, positions = key_hash(E, key)
    buffers_remove(pages, filters, order, j, key, positions)
    # known-absent from flash only if the filters in DRAM say so; otherwise assume an older copy may exist
    n, _ = candidates(E, j, positions, st[OLDEST], st[NEXT_SEQ], False, out)
    flags = FLAG_SHADOWS if n != 0 else 0
    return put(E, j, key, value, flags, positions), j, flags, positions


@njit(cache=True, inline="always")
def delete(E, key, out):
    """NemoEngine.delete after its key check: (outcome of put or DONE, j, positions)."""
    st, ctr, pages, filters, order = E[ST], E[CTR], E[PAGES], E[FILTERS], E[ORDER]
    ctr[C_DELETES] += 1
    j, positions = key_hash(E, key)
    buffers_remove(pages, filters, order, j, key, positions)
    n, index_reads = candidates(E, j, positions, st[OLDEST], st[NEXT_SEQ], True, out)
    ctr[C_DELETE_INDEX] += index_reads
    if n:
        ctr[C_TOMBSTONES] += 1
        return put(E, j, key, key[:0], FLAG_TOMBSTONE, positions), j, positions
    return DONE, j, positions


@njit(cache=True)
def shadowed(E, key, j, positions, v, out) -> bool:
    """NemoEngine._shadowed: does a buffer or an SG younger than `v` hold any record of `key`?"""
    st, ctr, pages, filters, order = E[ST], E[CTR], E[PAGES], E[FILTERS], E[ORDER]
    if buffers_find(pages, filters, order, j, key, positions)[0] >= 0:
        return True
    n, _ = candidates(E, j, positions, v + 1, st[NEXT_SEQ], False, out)
    if n < 0:
        return True
    for c in range(n):
        page, ok = read_set(E, out[c], j)
        ctr[C_READ_WB_CHECK] += PAGE_SIZE
        if not ok or page_find(page, key) >= 0:
            return True
    return False


@njit(cache=True)
def write_back(E, v, cached, out) -> None:
    """NemoEngine._write_back: re-insert SG v's hot objects, then the others while room remains, into B[M-1], for
    the `cached` offsets (sorted) whose PBFG is in DRAM."""
    E, cached, out = borrow((E, cached, out))  # every argument outlives this call
    cf, ctr, pages, filters, order, hot_bits = E[CF], E[CTR], E[PAGES], E[FILTERS], E[ORDER], E[HOT]
    rear = order[cf[M] - 1]
    hot_row = hot_bits[v % cf[WINDOW]]  # v is always inside the window: it is the oldest live SG
    for j in cached:
        dst = pages[rear, j]
        if page_free(dst) < OBJ_HEADER + 2:
            continue
        page, ok = read_set(E, v, j)
        if not ok:
            ctr[C_CORRUPT] += 1
            continue
        ctr[C_READ_WB] += PAGE_SIZE
        positions = page_positions(page)
        hot = np.int64(hot_row[j])
        first_new = PAGE_HEADER + page_used(dst)
        for phase in range(2 if cf[WB_COLD] else 1):
            for i in range(positions.shape[0]):
                is_hot = i < SLOTS and (hot >> i) & 1 == 1
                if is_hot != (phase == 0):
                    continue
                pos = positions[i]
                if obj_flags_at(page, pos) & FLAG_TOMBSTONE or obj_size_at(page, pos) > page_free(dst):
                    continue
                key = page[pos + OBJ_HEADER:pos + OBJ_HEADER + np.int64(page[pos])]
                _, bpos = key_hash(E, key)
                if shadowed(E, key, j, bpos, v, out):
                    ctr[C_WB_SHADOWED] += 1
                    continue
                page_copy_object(dst, page, pos, FLAG_WRITEBACK)
                filter_add(filters[rear, j], 0, bpos)
                ctr[C_WB_HOT if is_hot else C_WB_COLD] += 1
        page_rotate_to_front(dst, first_new)
