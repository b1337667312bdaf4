"""The PBFG index (nemo.md §3.5–3.6): set-level Bloom filters of every live SG, grouped per set offset.

A *row* is the G set-level filters of one offset j across the G SGs of an index group (member s = SG seq mod G).
- The open group (SGs flushed since the last index write) lives in DRAM as S rows.
- A complete group is written to the index zones as one block: a header page, then ceil(S/R) pages each packing the
  rows of R consecutive offsets (R = 1 at paper scale, where a row already fills a page; more at laptop scale, which
  cuts index writes without adding reads: a PBFG still costs one page per live group).
- The DRAM cache holds, for a fraction of the offsets (LRU), the rows of every written group that covers live SGs.
Positives of SGs outside the live range [lo, hi) are ignored (evicted SGs).

Index blocks are appended to a ring of index zones; a zone is reset when the ring comes back to it, which must
find every group it held dead. `loc` says where each live group's block lies: rows g mod len(loc) of
[(zone, byte offset, pages)] segments (a block may span zones), -1 padded.

Functions take the engine's state Ref `P` (fields `pbfg`, `cfg`, `dev`, `m`, `scratch`; see engine.py).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo.device import flash as fl
from tierwise.nemo.device import timing
from tierwise.nemo.engines.nemo.config import Geometry
from tierwise.nemo.engines.nemo.format import INDEX_ROW_HEADER, ROW_CHECK, fill_row_page, row_valid, write_index_header
from tierwise.nemo.index.bloom import GROUP_ROW_SLACK, group_probe, group_rows, group_set_member
from tierwise.nemo.layout import PAGE_SIZE
from tierwise.nemo.native import copy_bytes, internal, prefetch

# st: the index's scalars
OPEN_GROUP, OPEN_MEMBERS, CLOCK, FREE_SLOTS, CUR = range(5)
UNKNOWN, NEED_FETCH = -1, -2  # probe outcomes besides a candidate count
STAGE_PAGES = 256  # an index block is written from a staging buffer of at most this many pages at a time

Pbfg = namedtuple("Pbfg", [
    "st",  # int64[5]: OPEN_GROUP, OPEN_MEMBERS, CLOCK (LRU), FREE_SLOTS (cache), CUR (index zone being written)
    "open_rows",  # uint8[S, row bytes] (+ slack): the open group's rows
    "rows",  # uint8[cache slots * L, row bytes] (+ slack): cached rows, row (slot, i) = slot * L + i
    "row_group",  # int64[cache slots, L]: the group each cached row belongs to (-1 = none)
    "slot_of",  # int32[S]: cache slot of each offset (-1 = not cached)
    "offset_of",  # int32[cache slots]: offset held by each slot (-1 = free)
    "last_use",  # int64[cache slots]: LRU clock of each slot
    "out",  # int64[N + G + 1]: candidate SG sequence numbers of the last probe
    "loc",  # int64[L + 2, segments, 3]: where each live group's block lies
    "zones",  # int64[index zones]: the ring of index zones
    "zone_live",  # int64[device zones]: live groups with a segment in each zone
    "stage",  # uint8[<= STAGE_PAGES, PAGE_SIZE]: index pages on their way to flash
])


def new_pbfg(geo: Geometry, cache_offsets: int, num_zones: int, zone_capacity: int) -> Pbfg:
    S, L, rb = geo.sets, geo.live_groups, geo.row_bytes
    segments = -(-geo.index_block_pages * PAGE_SIZE // zone_capacity) + 1
    st = np.zeros(5, np.int64)
    st[FREE_SLOTS] = cache_offsets
    return Pbfg(st, group_rows(S, rb), group_rows(cache_offsets * L, rb), np.full((cache_offsets, L), -1, np.int64),
                np.full(S, -1, np.int32), np.full(cache_offsets, -1, np.int32), np.zeros(cache_offsets, np.int64),
                np.empty(geo.data_slots + geo.group_size + 1, np.int64), np.full((L + 2, segments, 3), -1, np.int64),
                np.array(geo.index_zones, np.int64), np.zeros(num_zones, np.int64),
                np.zeros((min(geo.index_block_pages, STAGE_PAGES), PAGE_SIZE), np.uint8))


def pbfg_nbytes(pb: Pbfg) -> dict[str, int]:
    """DRAM of the index (the staging buffer and the probe scratch are transient, not counted)."""
    return {"pbfg_cache": pb.rows.nbytes + GROUP_ROW_SLACK + pb.row_group.nbytes + pb.slot_of.nbytes
            + pb.offset_of.nbytes + pb.last_use.nbytes,
            "open_group": pb.open_rows.nbytes + GROUP_ROW_SLACK, "index_locations": pb.loc.nbytes}


# ---- probing ----------------------------------------------------------------------------------------------------------

@internal(inline=True)
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


@internal(inline=True)
def _probe(pb, G, j, positions, lo, hi, fetch):
    """The candidates once row j is in DRAM: their count (in pb.out), NEED_FETCH when row j is not cached and
    `fetch` asks for it, or UNKNOWN when it is not cached, written groups cover live SGs and there is no `fetch`
    (flash copies cannot be ruled out). Touches the LRU."""
    slot = pb.slot_of[j]
    st = pb.st
    if slot < 0:
        if fetch:
            return NEED_FETCH
        if st[OPEN_GROUP] * G > lo:
            return UNKNOWN
    else:
        st[CLOCK] += 1
        pb.last_use[slot] = st[CLOCK]
    return _candidates(pb.open_rows, j, st[OPEN_GROUP], st[OPEN_MEMBERS], pb.rows, slot, pb.row_group, G, positions,
                       lo, hi, pb.out)


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


@internal
def _take_slot(pb):
    """A PBFG cache slot for a new offset: a free one, else the least recently used (its offset is dropped)."""
    if pb.st[FREE_SLOTS] > 0:
        pb.st[FREE_SLOTS] -= 1
        for slot in range(pb.offset_of.shape[0]):
            if pb.offset_of[slot] < 0:
                return slot
    slot = np.argmin(pb.last_use)
    pb.slot_of[pb.offset_of[slot]] = -1
    return slot


@internal
def fetch_rows(P, j, lo, foreground):
    """Read row j of every written group covering live SGs (one page each, read in parallel) into an LRU slot;
    returns the pages read."""
    pb, cfg = P.pbfg, P.cfg
    slot = _take_slot(pb)
    pb.slot_of[j] = slot
    pb.offset_of[slot] = j
    pb.row_group[slot, :] = -1
    first = (j // cfg.R) * cfg.R
    rb = cfg.RB
    start = INDEX_ROW_HEADER + (j - first) * (rb + ROW_CHECK)
    reads = 0
    F = P.dev
    if F.kind != fl.SYSCALL:  # start every page's DRAM fetch before checking any
        for g in range(max(0, lo // cfg.G), pb.st[OPEN_GROUP]):
            z, off = locate_page(pb.loc, g, 1 + j // cfg.R)
            base = z * F.zone_cap + off
            prefetch(F.data, base)
            for line in range(base + start, base + start + rb + ROW_CHECK, 64):
                prefetch(F.data, line)
    if foreground:
        timing.begin_batch(F.timing)
    for g in range(max(0, lo // cfg.G), pb.st[OPEN_GROUP]):
        z, off = locate_page(pb.loc, g, 1 + j // cfg.R)
        page = fl.read(F, z, off, PAGE_SIZE, P.scratch.page, foreground)
        reads += 1
        dest = pb.rows[slot * cfg.L + g % cfg.L]
        if row_valid(page, g, first, j - first, rb):
            copy_bytes(dest, 0, page, start, rb)
        else:  # torn/corrupt index page: every member may hold the key (extra reads, never a stale hit)
            dest[:] = 0xFF
        pb.row_group[slot, g % cfg.L] = g
    if foreground:
        timing.end_batch(F.timing)
    return reads


@internal
def candidates(P, j, positions, lo, hi, fetch, foreground):
    """(count of SG seqs in P.pbfg.out, index pages read); count UNKNOWN (-1) = uncached PBFG without `fetch`."""
    pages = 0
    while True:  # probe; on NEED_FETCH fetch the row and probe again
        n = _probe(P.pbfg, P.cfg.G, j, positions, lo, hi, fetch)
        if n != NEED_FETCH:
            return n, pages
        pages = fetch_rows(P, j, lo, foreground)


# ---- flushes ----------------------------------------------------------------------------------------------------------

@njit(cache=True)
def add_member(open_rows, G, member, filters, m_bits) -> None:
    """A flushed SG's S set-level filters become member `member` of the open group's S rows."""
    for j in range(open_rows.shape[0]):
        group_set_member(open_rows[j], G, member, filters[j], m_bits)


@internal
def add_sg(P, seq, filters):
    """Put a flushed SG's S set-level filters into the open group; write the group when full. Returns index
    bytes written."""
    pb, cfg = P.pbfg, P.cfg
    st = pb.st
    if seq // cfg.G != st[OPEN_GROUP] or seq % cfg.G != st[OPEN_MEMBERS]:
        raise TierwiseError("an SG was flushed out of order into the open index group")
    add_member(pb.open_rows, cfg.G, seq % cfg.G, filters, cfg.MBITS)
    st[OPEN_MEMBERS] += 1
    if st[OPEN_MEMBERS] < cfg.G:
        return 0
    return write_group(P)


@internal
def write_group(P):
    """Write the open group's block (header page + row pages) to the index zones and start the next group;
    returns the bytes written. Cached offsets get the new group's row now, so the cache never re-fetches it."""
    pb, cfg = P.pbfg, P.cfg
    st = pb.st
    g = st[OPEN_GROUP]
    L, R = cfg.L, cfg.R
    for slot in range(pb.offset_of.shape[0]):
        if pb.offset_of[slot] >= 0:
            copy_bytes(pb.rows[slot * L + g % L], 0, pb.open_rows[pb.offset_of[slot]], 0, cfg.RB)
            pb.row_group[slot, g % L] = g
    total = cfg.BLOCK_PAGES
    stage = pb.stage
    staged = 0  # pages of the block staged so far
    zone = -1
    n_segs = 0
    segs = pb.loc[g % pb.loc.shape[0]]
    segs[:, :] = -1
    while staged < total:
        n = min(stage.shape[0], total - staged)
        for i in range(n):
            p = staged + i
            page = stage[i]
            page[:] = 0
            if p == 0:
                write_index_header(page, g, g * cfg.G, (g + 1) * cfg.G, cfg.S, cfg.G, cfg.MBITS, cfg.K, R, total - 1,
                                   cfg.SEED)
            else:
                lo = (p - 1) * R
                fill_row_page(page, g, lo, pb.open_rows[lo:min(lo + R, cfg.S)])
        zone, n_segs = _append_block_part(P, g, stage, n, staged == 0, zone, n_segs)
        staged += n
    for i in range(n_segs):
        P.pbfg.zone_live[segs[i, 0]] += 1
    pb.open_rows[:, :] = 0
    st[OPEN_GROUP] += 1
    st[OPEN_MEMBERS] = 0
    return total * PAGE_SIZE


@internal
def _wp(F, z):
    return F.zone_cap if F.cond[z] == fl.FULL else F.wp[z]


@internal
def _advance(P):
    """Move to the next index zone of the ring and reset it (it must hold no live group)."""
    pb = P.pbfg
    pb.st[CUR] = (pb.st[CUR] + 1) % pb.zones.shape[0]
    z = pb.zones[pb.st[CUR]]
    if pb.zone_live[z] > 0:
        raise TierwiseError("an index zone still holds live groups: too few index zones")
    if _wp(P.dev, z):
        fl.reset(P.dev, z)
    return z


@internal
def _append_block_part(P, g, pages, n, first, zone, n_segs):
    """Append pages[0:n] of group g's block after what was appended of it so far (in `zone`, -1 = nothing yet),
    recording the segments; returns (zone, segments)."""
    F, pb = P.dev, P.pbfg
    cap = F.zone_cap
    block_bytes = P.cfg.BLOCK_PAGES * PAGE_SIZE
    if first:
        zone = pb.zones[pb.st[CUR]]
        room = cap - _wp(F, zone)
        if room < min(block_bytes, cap) or (block_bytes > cap and room < cap):
            zone = _advance(P)
    segs = pb.loc[g % pb.loc.shape[0]]
    done = 0
    while done < n:
        if cap - _wp(F, zone) < PAGE_SIZE:
            zone = _advance(P)
        k = min(n - done, (cap - _wp(F, zone)) // PAGE_SIZE)
        off = fl.append(F, zone, pages[done:done + k].reshape(-1), 0, k * PAGE_SIZE)
        if n_segs > 0 and segs[n_segs - 1, 0] == zone and segs[n_segs - 1, 1] + segs[n_segs - 1, 2] * PAGE_SIZE == off:
            segs[n_segs - 1, 2] += k  # continues the segment of the previous part
        else:
            segs[n_segs, 0], segs[n_segs, 1], segs[n_segs, 2] = zone, off, k
            n_segs += 1
        done += k
    return zone, n_segs


@internal
def on_evict(P, seq):
    """SG `seq` (the oldest) leaves; the last SG of a group takes the group's block with it."""
    pb, G = P.pbfg, P.cfg.G
    if seq % G == G - 1:
        segs = pb.loc[(seq // G) % pb.loc.shape[0]]
        for i in range(segs.shape[0]):
            if segs[i, 0] >= 0:
                pb.zone_live[segs[i, 0]] -= 1
        segs[:, :] = -1


# ---- recovery (Python): the segment table from blocks found on flash --------------------------------------------------

def record_block(pb: Pbfg, group: int, segs: list[tuple[int, int, int]]) -> None:
    """Where group `group`'s block lies: [(zone, byte offset, pages)] (found by recovery)."""
    row = pb.loc[group % pb.loc.shape[0]]
    row[:] = -1
    row[:len(segs)] = segs
    for z, _, _ in segs:
        pb.zone_live[z] += 1


def block_segments(pb: Pbfg, group: int) -> list[tuple[int, int, int]]:
    """The segments of a live group's block, as recorded."""
    return [tuple(int(x) for x in s) for s in pb.loc[group % pb.loc.shape[0]] if s[0] >= 0]
