"""The M in-memory SetGroups (nemo.md §3.3): one (M, S, 4096) array of set pages plus a per-set Bloom filter.

B[0] is the front (newest), B[M-1] the rear (next to flush); `order[i]` is the physical row of B[i], so rotating
after a flush only permutes `order`. The per-set filters are updated as objects arrive and are handed to the open
index group at flush; objects removed from a buffer leave their bits set, which only costs a rare extra read.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tierwise.nemo.index.bloom import filter_add, filter_test
from tierwise.nemo.layout import (FLAG_SHADOWS, FLAG_TOMBSTONE, PAGE_HEADER, PAGE_SIZE, PAYLOAD, obj_flags_at,
                                  obj_size_at, page_append, page_count, page_find, page_remove, page_to_tombstone,
                                  page_used)


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


@njit(cache=True)
def buffers_insert(pages, filters, order, j, key, value, flags, positions, tries) -> int:
    """Put the object into the first of B[0..tries) whose set j has room; its index, or -1."""
    for i in range(min(tries, order.shape[0])):
        b = order[i]
        if page_append(pages[b, j], key, value, flags):
            filter_add(filters[b, j], 0, positions)
            return i
    return -1


@njit(cache=True)
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


class SetGroupBuffers:
    def __init__(self, buffered: int, sets: int, filter_bytes: int, fallback: bool = True):
        # fallback=False inserts into B[0] only: the "no buffered SGs" rows of the fill-rate ablation (Fig. 17)
        self.tries = buffered if fallback else 1
        self.pages = np.zeros((buffered, sets, PAGE_SIZE), np.uint8)
        self.filters = np.zeros((buffered, sets, filter_bytes), np.uint8)
        self.order = np.arange(buffered, dtype=np.int64)

    @property
    def rear(self) -> int:
        """Physical row of B[M-1], the SG flushed next."""
        return int(self.order[-1])

    @property
    def last_tried(self) -> int:
        """Physical row of the oldest buffer inserts may use (where a delayed flush sacrifices objects)."""
        return int(self.order[self.tries - 1])

    def rotate(self) -> None:
        """After B[M-1] is written: empty it and make it the new front B[0]."""
        r = self.rear
        self.pages[r] = 0
        self.filters[r] = 0
        self.order = np.roll(self.order, 1)

    def find(self, j: int, key: np.ndarray, positions: np.ndarray) -> tuple[int, int]:
        return buffers_find(self.pages, self.filters, self.order, j, key, positions)

    def page(self, i: int, j: int) -> np.ndarray:
        return self.pages[self.order[i], j]

    def remove(self, j: int, key: np.ndarray, positions: np.ndarray) -> int:
        return buffers_remove(self.pages, self.filters, self.order, j, key, positions)

    def insert(self, j: int, key: np.ndarray, value: np.ndarray, flags: int, positions: np.ndarray) -> int:
        return buffers_insert(self.pages, self.filters, self.order, j, key, value, flags, positions, self.tries)

    def objects(self) -> int:
        return buffered_objects(self.pages)

    def nbytes(self) -> dict[str, int]:
        return {"buffers": self.pages.nbytes, "buffer_filters": self.filters.nbytes + self.order.nbytes}
