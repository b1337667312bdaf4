"""The M in-memory SetGroups (nemo.md §3.3): one (M, S, 4096) array of set pages plus a per-set Bloom filter.

B[0] is the front (newest), B[M-1] the rear (next to flush); `order[i]` is the physical row of B[i], so rotating
after a flush only permutes `order`. The per-set filters are updated as objects arrive (objects removed from a
buffer leave their bits set, which only costs a rare extra read) and rebuilt from the set's records at flush,
before they join the open index group.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tierwise.nemo.hashing import bloom_positions
from tierwise.nemo.index.bloom import filter_add, filter_test
from tierwise.nemo.layout import (FLAG_SHADOWS, FLAG_TOMBSTONE, OBJ_HEADER, PAGE_HEADER, PAGE_SIZE, PAYLOAD,
                                  obj_flags_at, obj_size_at, obj_value_span, page_append, page_count, page_find,
                                  page_positions, page_remove, page_to_tombstone, page_used, page_well_formed,
                                  stored_size)
from tierwise.nemo.native import unref, xxh3_128


@njit(cache=True)
def rotate(pages, filters, order) -> None:
    """After B[M-1] is written: empty it and make it the new front B[0]."""
    rear = order[order.shape[0] - 1]
    pages[rear] = 0
    filters[rear] = 0
    for i in range(order.shape[0] - 1, 0, -1):
        order[i] = order[i - 1]
    order[0] = rear


@njit(cache=True)
def buffers_find(pages, filters, order, j, key, positions):
    """(i, pos) of the newest buffered copy of `key` at offset j (B[0] first), or (-1, -1). A set whose filter
    rules the key out is not walked (its filter holds every key the set holds: bits are only ever added)."""
    for i in range(order.shape[0]):
        if not filter_test(filters[order[i], j], 0, positions):
            continue
        pos = page_find(pages[order[i], j], key)
        if pos >= 0:
            return i, pos
    return -1, -1


@njit(cache=True)
def buffers_value(pages, filters, order, j, key, positions):
    """(row, value start, value length, flags) of the newest buffered record of `key` at offset j (its set page is
    pages[row, j]), or row -1: `buffers_find` and the record's value span in one call."""
    i, pos = buffers_find(pages, filters, order, j, key, positions)
    if i < 0:
        return -1, 0, 0, 0
    row = order[i]
    start, n, flags = obj_value_span(pages[row, j], pos)
    return row, start, n, flags


@unref
def buffers_remove(pages, filters, order, j, key, positions) -> int:
    """Drop every buffered copy (object or tombstone) of `key` at offset j; returns how many were dropped."""
    n = 0
    for i in range(order.shape[0]):
        if not filter_test(filters[order[i], j], 0, positions):
            continue
        page = pages[order[i], j]
        pos = page_find(page, key)
        if pos >= 0:
            page_remove(page, pos)
            n += 1
    return n


@unref
def buffers_insert(pages, filters, order, j, key, value, flags, expiry, positions, tries, secondary_used) -> int:
    """Put the object into set j of the SG flushed next (B[M-1]) if it fits, else of the next younger of the
    `tries` buffers whose set stays within `secondary_used` bytes (the artifact's rule: the SG flushed next takes
    every insert it can hold, a younger one only overflow while below FLUSH_THRESHOLD). Its index, or -1."""
    need = stored_size(key, value, expiry)
    last = order.shape[0] - 1
    for i in range(last, last - min(tries, order.shape[0]), -1):
        b = order[i]
        if i < last and page_used(pages[b, j]) + need > secondary_used:
            continue
        if page_append(pages[b, j], key, value, flags, expiry):
            filter_add(filters[b, j], 0, positions)
            return i
    return -1


@unref
def sacrifice(page, need):
    """Delayed flush: free `need` bytes in a full set by dropping its oldest objects (never tombstones).

    An object that may shadow an older flash copy is turned into a tombstone instead of vanishing, so the older
    copy can never be served again. Returns (user objects lost, their key+value bytes, success).
    """
    lost = 0
    lost_bytes = 0
    while PAYLOAD - page_used(page) < need:
        end = PAGE_HEADER + page_used(page)
        pos = PAGE_HEADER
        while pos < end and obj_flags_at(page, pos) & FLAG_TOMBSTONE:
            pos += obj_size_at(page, pos)
        if pos >= end:
            return lost, lost_bytes, False
        lost += 1
        lost_bytes += obj_size_at(page, pos) - 4
        if obj_flags_at(page, pos) & FLAG_SHADOWS:
            page_to_tombstone(page, pos)
        else:
            page_remove(page, pos)
    return lost, lost_bytes, True


@njit(cache=True)
def buffered_objects(pages) -> int:
    n = 0
    for b in range(pages.shape[0]):
        for j in range(pages.shape[1]):
            n += page_count(pages[b, j])
    return n


@njit(cache=True)
def page_keys(pages, bad):
    """(page, byte offset in the flattened pages, length) of every record's key, skipping bad pages (a page whose
    object chain disagrees with its header is marked bad too)."""
    total = 0
    for j in range(pages.shape[0]):
        if not bad[j] and not page_well_formed(pages[j]):
            bad[j] = True
        if not bad[j]:
            total += page_count(pages[j])
    page_of = np.empty(total, np.int64)
    key_at = np.empty(total, np.int64)
    key_len = np.empty(total, np.int64)
    n = 0
    for j in range(pages.shape[0]):
        if bad[j]:
            continue
        for pos in page_positions(pages[j]):
            page_of[n] = j
            key_at[n] = j * PAGE_SIZE + pos + OBJ_HEADER
            key_len[n] = pages[j, pos]
            n += 1
    return page_of, key_at, key_len


@njit(cache=True)
def _key_highs(flat, key_at, key_len, seed):
    """High 64 bits of each key's XXH3-128 (what the Bloom positions come from)."""
    out = np.empty(key_at.shape[0], np.uint64)
    for i in range(key_at.shape[0]):
        out[i] = xxh3_128(flat[key_at[i]:key_at[i] + key_len[i]], seed)[1]
    return out


@njit(cache=True)
def _fill_filters(filters, bad, page_of, highs, k, m_bits):
    filters[:] = 0
    for i in range(page_of.shape[0]):
        hi = highs[i]
        h1 = np.int64(hi & np.uint64(0xFFFFFFFF))
        h2 = np.int64((hi >> np.uint64(32)) | np.uint64(1))
        filter_add(filters[page_of[i]], 0, bloom_positions(h1, h2, k, m_bits))
    for j in range(bad.shape[0]):
        if bad[j]:
            filters[j] = 0xFF


@njit(cache=True)
def set_filters(pages, filters, seed, k, m_bits, bad) -> None:
    """Refill each set's filter from the records its page holds (objects, write-back copies, tombstones).

    At a flush this drops the bits of objects that left the buffer (overwritten, deleted, sacrificed by the delayed
    flush), which would otherwise raise the filters' false-positive rate; recovery rebuilds the open group with it.
    A bad page (marked in `bad`, or found malformed) gets an all-ones filter: every lookup reads it and misses on
    its checksum.
    """
    page_of, key_at, key_len = page_keys(pages, bad)
    highs = _key_highs(pages.reshape(-1), key_at, key_len, np.uint64(seed))
    _fill_filters(filters, bad, page_of, highs, k, m_bits)
