"""The PBFG index (nemo.md §3.5–3.6): set-level Bloom filters of every live SG, grouped per set offset.

A *row* is the G set-level filters of one offset j across the G SGs of an index group (member s = SG seq mod G).
- The open group (SGs flushed since the last index write) lives in DRAM as S rows.
- A complete group is written to the index zones as one block: a header page, then ceil(S/R) pages each packing the
  rows of R consecutive offsets (R = 1 at paper scale, where a row already fills a page; more at laptop scale, which
  cuts index writes without adding reads: a PBFG still costs one page per live group).
- The DRAM cache holds, for a fraction of the offsets (LRU), the rows of every written group that covers live SGs.
Positives of SGs outside the live range [lo, hi) are ignored (evicted SGs).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo.engines.nemo.config import Geometry
from tierwise.nemo.engines.nemo.format import (INDEX_ROW_HEADER, ROW_CHECK, IndexHeader, encode_index_header,
                                               fill_row_page, row_valid)
from tierwise.nemo.index.bloom import GROUP_ROW_SLACK, group_probe, group_rows, group_set_member
from tierwise.nemo.layout import PAGE_SIZE
from tierwise.nemo.native import state_field, unref


@njit(cache=True, inline="always")
def _candidates(open_rows, j, open_group, open_members, rows, slot, row_group, G, positions, lo, hi, out) -> int:
    """SG sequence numbers in [lo, hi) whose set-level filter may hold the key, newest first: the open group's row j,
    then the cached rows of slot `slot` (rows[slot * L + i], L = row_group.shape[1]; slot -1 = none cached)."""
    n = group_probe(open_rows, j, G, positions, out, 0, open_group * G, lo, min(hi, open_group * G + open_members))
    for a in range(n // 2):  # newest first
        out[a], out[n - 1 - a] = out[n - 1 - a], out[a]
    m = n
    if slot >= 0:
        L = row_group.shape[1]
        for li in range(L):
            g = row_group[slot, li]
            if g >= 0 and (g + 1) * G > lo and g * G < hi:
                n = group_probe(rows, slot * L + li, G, positions, out, n, g * G, lo, hi)
    for a in range(m + 1, n):  # written groups sit in ring order: insertion-sort them newest first (a few at most)
        x = out[a]
        b = a - 1
        while b >= m and out[b] < x:
            out[b + 1] = out[b]
            b -= 1
        out[b + 1] = x
    return n


@njit(cache=True)
def add_member(open_rows, G, member, filters, m_bits) -> None:
    """A flushed SG's S set-level filters become member `member` of the open group's S rows."""
    for j in range(open_rows.shape[0]):
        group_set_member(open_rows[j], G, member, filters[j], m_bits)


# PBFG scalars, in one int64 array so compiled code and Python share them
OPEN_GROUP, OPEN_MEMBERS, CLOCK, FREE_SLOTS = range(4)
UNKNOWN, NEED_FETCH = -1, -2  # probe outcomes besides a candidate count


@njit(cache=True, inline="always")
def probe(pst, slot_of, last_use, open_rows, rows, row_group, G, j, positions, lo, hi, fetch, out) -> int:
    """The candidates of PBFG.candidates once row j is in DRAM: their count (in `out`), or NEED_FETCH when row j
    is not cached and `fetch` asks for it (fetch, then probe again), or UNKNOWN when it is not cached, written groups
    cover live SGs and there is no `fetch` (flash copies cannot be ruled out). Touches the LRU."""
    slot = slot_of[j]
    if slot < 0:
        if fetch:
            return NEED_FETCH
        if pst[OPEN_GROUP] * G > lo:
            return UNKNOWN
    else:
        pst[CLOCK] += 1
        last_use[slot] = pst[CLOCK]
    return _candidates(open_rows, j, pst[OPEN_GROUP], pst[OPEN_MEMBERS], rows, slot, row_group, G, positions, lo, hi,
                       out)


@njit(cache=True)
def locate_page(loc, group, page):
    """(zone, byte offset) of page `page` of index group `group`'s block, from the segment table `loc`."""
    segs = loc[group % loc.shape[0]]
    for i in range(segs.shape[0]):
        n = segs[i, 2]
        if page < n:
            return segs[i, 0], segs[i, 1] + page * PAGE_SIZE
        page -= n
    return -1, -1


@unref
def take_slot(offset_of, slot_of, last_use, pst) -> int:
    """A PBFG cache slot for a new offset: a free one, else the least recently used (its offset is dropped)."""
    if pst[FREE_SLOTS] > 0:
        pst[FREE_SLOTS] -= 1
        for slot in range(offset_of.shape[0]):
            if offset_of[slot] < 0:
                return slot
    slot = np.argmin(last_use)
    slot_of[offset_of[slot]] = -1
    return slot


class IndexLog:
    """Index blocks appended to a ring of index zones; a zone is reset when reused, once all its groups are dead."""

    def __init__(self, device, zones: list[int], block_pages: int, live_groups: int):
        self.device = device
        self.zones = zones
        self.block_bytes = block_pages * PAGE_SIZE
        self.cap = device.zone_capacity
        self.cur = 0
        self.where: dict[int, list[tuple[int, int, int]]] = {}  # group -> [(zone, byte offset, pages)]
        self.zone_groups: dict[int, set[int]] = {z: set() for z in zones}
        # the same segments as a table compiled code can read: row g % rows = [(zone, offset, pages)] padded by -1
        segments = -(-block_pages * PAGE_SIZE // self.cap) + 1
        self.loc = np.full((live_groups + 2, segments, 3), -1, np.int64)

    def _advance(self) -> int:
        self.cur = (self.cur + 1) % len(self.zones)
        z = self.zones[self.cur]
        if self.zone_groups[z]:
            raise TierwiseError(f"index zone {z} still holds live groups {sorted(self.zone_groups[z])}: too few index zones")
        if self.device.write_pointer(z):
            self.device.reset(z)
        return z

    def write_block(self, group: int, pages: np.ndarray) -> None:
        z = self.zones[self.cur]
        room = self.cap - self.device.write_pointer(z)
        if room < min(self.block_bytes, self.cap) or (self.block_bytes > self.cap and room < self.cap):
            z = self._advance()
        segs = []
        done = 0
        total = pages.shape[0]
        while done < total:
            if self.cap - self.device.write_pointer(z) < PAGE_SIZE:
                z = self._advance()
            n = min(total - done, (self.cap - self.device.write_pointer(z)) // PAGE_SIZE)
            off = self.device.append(z, pages[done:done + n])
            segs.append((z, off, n))
            done += n
        self.record(group, segs)

    def record(self, group: int, segs: list[tuple[int, int, int]]) -> None:
        """Where group `group`'s block lies: [(zone, byte offset, pages)] (written now, or found by recovery)."""
        self.where[group] = segs
        row = self.loc[group % self.loc.shape[0]]
        row[:] = -1
        row[:len(segs)] = segs
        for z, _, _ in segs:
            self.zone_groups[z].add(group)

    def locate(self, group: int, page: int) -> tuple[int, int]:
        z, off = locate_page(self.loc, group, page)
        if group not in self.where or z < 0:
            raise IndexError(f"index group {group} page {page} is not on flash")
        return int(z), int(off)

    def drop(self, group: int) -> None:
        for z, _, _ in self.where.pop(group, ()):
            self.zone_groups[z].discard(group)
        self.loc[group % self.loc.shape[0]] = -1


class PBFG:
    def __init__(self, geo: Geometry, cache_offsets: int, device, hash_seed: int):
        S, G, rb = geo.sets, geo.group_size, geo.row_bytes
        self.geo, self.S, self.G, self.rb = geo, S, G, rb
        self.device = device
        self.hash_seed = hash_seed
        self.log = IndexLog(device, geo.index_zones, geo.index_block_pages, geo.live_groups)
        self.open_rows = group_rows(S, rb)
        self.st = np.zeros(4, np.int64)  # OPEN_GROUP, OPEN_MEMBERS, CLOCK, FREE_SLOTS
        cap = cache_offsets
        L = geo.live_groups
        self.flat_rows = group_rows(cap * L, rb)  # row (slot, i) = slot*L + i, for compiled code
        self.rows = self.flat_rows.reshape(cap, L, rb)  # the same rows
        self.row_group = np.full((cap, L), -1, np.int64)
        self.slot_of = np.full(S, -1, np.int32)
        self.offset_of = np.full(cap, -1, np.int32)
        self.last_use = np.zeros(cap, np.int64)
        self.st[FREE_SLOTS] = cap
        self._out = np.empty(geo.data_slots + G + 1, np.int64)
        self._page = np.empty(PAGE_SIZE, np.uint8)

    open_group = state_field(OPEN_GROUP, "The index group SGs are flushed into now (its filters are in DRAM).")
    open_members = state_field(OPEN_MEMBERS, "SGs of the open group flushed so far.")

    # ---- lookups -------------------------------------------------------------------------------------------------

    def cached(self, j: int) -> bool:
        return self.slot_of[j] >= 0

    def cached_offsets(self) -> np.ndarray:
        return np.sort(self.offset_of[self.offset_of >= 0]).astype(np.int64)

    def candidates(self, j: int, positions: np.ndarray, lo: int, hi: int, fetch: bool = True):
        """(SG seqs in [lo, hi) that may hold the key at offset j, newest first; index pages read).

        Without `fetch`, an uncached PBFG gives (None, 0): the caller cannot rule out flash copies.
        """
        args = (self.st, self.slot_of, self.last_use, self.open_rows, self.flat_rows, self.row_group, self.G, j,
                positions, lo, hi, fetch, self._out)
        n = probe(*args)
        pages = 0
        if n == NEED_FETCH:
            pages = self._fetch(j, lo)
            n = probe(*args)
        return (None if n == UNKNOWN else self._out[:n].copy()), pages

    def _fetch(self, j: int, lo: int) -> int:
        """Read row j of every written group covering live SGs (one page each) into an LRU slot; pages read."""
        slot = int(take_slot(self.offset_of, self.slot_of, self.last_use, self.st))
        self.slot_of[j] = slot
        self.offset_of[slot] = j
        self.row_group[slot] = -1
        R, L = self.geo.rows_per_page, self.geo.live_groups
        rb = self.rb
        first = (j // R) * R
        start = INDEX_ROW_HEADER + (j - first) * (rb + ROW_CHECK)
        reads = 0
        for g in range(max(0, lo // self.G), self.open_group):
            z, off = self.log.locate(g, 1 + j // R)
            self.device.read_into(z, off, self._page)
            reads += 1
            if row_valid(self._page, g, first, j - first, rb):
                self.rows[slot, g % L] = self._page[start:start + rb]
            else:  # torn/corrupt index page: every member may hold the key (extra reads, never a stale hit)
                self.rows[slot, g % L] = 0xFF
            self.row_group[slot, g % L] = g
        return reads

    # ---- flushes -------------------------------------------------------------------------------------------------

    def add_sg(self, seq: int, filters: np.ndarray) -> int:
        """Put a flushed SG's S set-level filters into the open group; write the group when full. Returns index
        bytes written."""
        s = seq % self.G
        if seq // self.G != self.open_group or s != self.open_members:
            raise TierwiseError(f"SG {seq} flushed out of order (open group {self.open_group}, {self.open_members} members)")
        add_member(self.open_rows, self.G, s, filters, self.geo.filter.m_bits)
        self.open_members += 1
        if self.open_members < self.G:
            return 0
        return self._write_group()

    def _write_group(self) -> int:
        g, G, geo = self.open_group, self.G, self.geo
        # cached offsets get the new group's row now, so the cache never needs a re-fetch for it
        live = self.offset_of >= 0
        self.rows[live, g % geo.live_groups] = self.open_rows[self.offset_of[live]]
        self.row_group[live, g % geo.live_groups] = g
        R = geo.rows_per_page
        row_pages = geo.index_block_pages - 1
        pages = np.zeros((geo.index_block_pages, PAGE_SIZE), np.uint8)
        header = IndexHeader(group=g, seq_lo=g * G, seq_hi=(g + 1) * G, sets=self.S, group_size=G,
                             m_bits=geo.filter.m_bits, k=geo.filter.k, rows_per_page=R, row_pages=row_pages,
                             hash_seed=self.hash_seed)
        pages[0] = np.frombuffer(encode_index_header(header), np.uint8)
        for p in range(row_pages):
            fill_row_page(pages[1 + p], g, p * R, self.open_rows[p * R:(p + 1) * R])
        self.log.write_block(g, pages)
        self.open_rows[:] = 0
        self.open_group += 1
        self.open_members = 0
        return pages.nbytes

    def on_evict(self, seq: int) -> None:
        if seq % self.G == self.G - 1:
            self.log.drop(seq // self.G)

    def nbytes(self) -> dict[str, int]:
        return {"pbfg_cache": self.rows.nbytes + GROUP_ROW_SLACK + self.row_group.nbytes + self.slot_of.nbytes
                + self.offset_of.nbytes + self.last_use.nbytes,
                "open_group": self.open_rows.nbytes + GROUP_ROW_SLACK, "index_locations": self.log.loc.nbytes}
