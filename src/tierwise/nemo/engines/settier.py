"""The set tier: 4 KB sets written out of place over zones (CacheLib BigHash / SOC), shared by the Set engine and
by Kangaroo's KSet and FairyWREN's HSet.

Every key maps to one set (the shared page format, `tierwise.nemo.layout`); adding an object is a read-modify-write
of the whole set. On a zoned device a rewritten set is appended to the open set zone and its old version goes
stale; when the last free zone is opened, zone GC picks a victim among the closed zones (greedy: fewest valid sets,
the oldest among equals; FIFO: the oldest), copies its still-valid sets into the zone just opened (or lets the owner
merge into them, as FairyWREN's active migration does) and resets it. Over-provisioning (OP) = the share of pages
not holding a set. On a conventional SSD sets live at fixed addresses and are overwritten in place (the FTL does the
GC: its OP, its DLWA).

DRAM per set: a Bloom filter rebuilt from the page on every write (BigHash), the set's location (out of place
only), and with RRIParoo (Kangaroo) 16 hit bits. RRIParoo keeps a 3-bit re-reference prediction per object on
flash, in the unused top bits of the object's flags byte: 0 = reused soon, RRIP_MAX = evict first; objects hit
since their set was last written are promoted to 0 before it is rewritten. Where a newcomer enters (`rrip_insert`):
- "long": at RRIP_MAX - 1, always admitted (evicting the most distant objects);
- "authors" (Kangaroo's simulator, `rrip_sets.cpp`, and FairyWREN's buckets): the set is aged once per rewrite,
  a newcomer enters at RRIP_MAX - 1 - (its hits in the log), and it is refused when it could only enter by
  evicting objects with a nearer predicted re-reference than its own (counted as `rejected`).

The fill reported per set write is the share of the page that is newly added data (Eq. 3), in batches of
FILL_BATCH writes (`metrics.record_fills`, each batch one group sample).

GC needs the sets stored in the victim zone: `owner` maps each page of the tier to the set last written there (a
page is live when that set's location still points at it). It stands for the set id a real implementation reads
from each page it collects, so it is not reported as DRAM.

The owner engine's GC hook is resolved at compile time per state type: `register_set_owner(StateType, gc_merge)`.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Callable

import numpy as np
from numba import types
from numba.extending import overload

from tierwise.common.errors import TierwiseError
from tierwise.nemo import layout
from tierwise.nemo import metrics as mt
from tierwise.nemo.device import flash as fl
from tierwise.nemo.engines.paged import (ABSENT, EXPIRED, GET, HIT, MAX_OBJECTS_PER_PAGE, PageIO, read_page,
                                         read_page_as, read_pages_into, reset_zone, trim_page, write_page_at,
                                         write_pages)
from tierwise.nemo.index.bloom import FilterParams
from tierwise.nemo.layout import OBJ_HEADER, PAGE_HEADER, PAGE_SIZE, PAYLOAD
from tierwise.nemo.native import compiled_only, copy_bytes, internal

RRIP_SHIFT = 5
RRIP_MAX = 7
RRIP_NEW = RRIP_MAX - 1
RRIP_INSERT = ("long", "authors")
LONG, AUTHORS = range(2)
# DRAM hit bits per set: one per object slot for the first 16 objects, a uint16 per set (Kangaroo's RripBitVector
# tracks 16 objects per bucket; a 4 KB set holds ~16 objects of the ~250 B twitter-merged size)
HIT_SLOTS = 16
FILL_BATCH = 1024  # set writes per fill report

SetTier = namedtuple("SetTier", [
    "io",  # PageIO
    "num_sets", "phys_pages", "op",  # sets, pages of the tier's zones, effective over-provisioning
    "in_place",  # 1: sets at fixed pages of a conventional SSD (page base + j)
    "base",  # page id of the tier's first page
    "rrip",  # 1: RRIParoo eviction (hit bits in `hits`), 0: FIFO
    "insert",  # RRIParoo insertion: LONG or AUTHORS (`RRIP_INSERT`)
    "fifo",  # GC victim: 1 = oldest closed zone, 0 = greedy (fewest valid sets)
    "m_bits", "k",  # Bloom filter bits per set, probes per key
    "loc",  # int32[num_sets]: page id of each set, -1 = not on flash
    "owner",  # int32[phys_pages]: the set last written at each page of the tier (out of place only)
    "valid",  # int64[device zones]: valid sets per zone
    "free",  # int64[zones]: ring of free zones (FREE_AT, FREE_N)
    "closed",  # int64[zones]: ring of full zones, oldest first (CLOSED_AT, CLOSED_N)
    "st",  # int64[...]: the scalars below
    "bloom",  # uint8[num_sets, m_bits / 8]: per-set Bloom filters
    "hits",  # uint16[num_sets] (RRIParoo) or empty: objects hit since the set was written
    "counts",  # int32[num_sets]: objects per set (object_count)
    "fills",  # int64[FILL_BATCH]: newly added bytes of the set pages written since the last fill report
    "page",  # uint8[PAGE_SIZE]: the set being updated (read-modify-write)
    "gc",  # uint8[ppz, PAGE_SIZE]: the zone being collected
    "scratch",  # uint8[PAGE_SIZE]: read buffer for syscall devices
    "keys",  # int64[2, objects per page]: start and length of each key of the page whose filter is rebuilt ...
    "hashes",  # uint64[objects per page]: ... and its FNV-1a state
])
ZONE, WP, FREE_AT, FREE_N, CLOSED_AT, CLOSED_N, OBJECTS, NFILLS = range(8)


def new_set_tier(io: PageIO, zones: list[int], *, op: float, rrip: bool = False, victim: str = "greedy",
                 bloom_fp: float = 0.01, objects_per_set: float = 16.0, in_place: bool | None = None,
                 rrip_insert: str = "long", max_sets: int | None = None) -> SetTier:
    """`zones` (a contiguous range) hold the sets; `op` is the over-provisioned share of their pages (0 in place).
    `in_place`: sets rewritten at fixed pages (a conventional SSD only; the default there) instead of out of place
    with zone GC (the default on zoned devices, and a design's choice on a conventional SSD too). `max_sets` caps
    the number of sets (a tier paired set by set with a smaller one; the pages left over add to its OP)."""
    if victim not in ("greedy", "fifo"):
        raise TierwiseError(f"unknown GC victim policy {victim!r}: use 'greedy' or 'fifo'")
    if rrip_insert not in RRIP_INSERT:
        raise TierwiseError(f"unknown RRIP insertion {rrip_insert!r}: use one of {', '.join(RRIP_INSERT)}")
    if not 0 <= op < 1:
        raise TierwiseError(f"set over-provisioning must be in [0, 1), got {op}")
    if not zones or list(zones) != list(range(zones[0], zones[0] + len(zones))):
        raise TierwiseError("a set tier needs a contiguous range of zones (segments)")
    ppz = io.ppz
    phys = len(zones) * ppz
    if in_place is None:  # a conventional SSD: sets at fixed addresses, the FTL does the GC
        in_place = io.dev.kind == fl.BLOCK
    if in_place and io.dev.kind != fl.BLOCK:
        raise TierwiseError("sets rewritten in place need a conventional (block) device")
    if in_place:
        op = 0.0
    num_sets = int(phys * (1 - op))
    if max_sets is not None and max_sets < num_sets:
        num_sets = max_sets
        op = 1 - num_sets / phys
    if not in_place and (phys - num_sets < 2 * ppz or num_sets < 1):
        raise TierwiseError(
            f"set OP {op} leaves {phys - num_sets} spare pages over {len(zones)} zones of {ppz} pages; "
            f"zone GC needs at least 2 zones' worth ({2 * ppz}): raise the OP or use smaller zones")
    params = FilterParams.for_objects(objects_per_set, bloom_fp)
    n = len(zones)
    st = np.zeros(8, np.int64)
    st[ZONE], st[FREE_AT], st[FREE_N] = zones[0], 1 % n, n - 1  # the first zone opens at once
    return SetTier(io, num_sets, phys, op, int(in_place), zones[0] * ppz, int(rrip), RRIP_INSERT.index(rrip_insert),
                   int(victim == "fifo"),
                   params.m_bits, params.k, np.full(num_sets, -1, np.int32),
                   np.zeros(0 if in_place else phys, np.int32), np.zeros(io.dev.num_zones, np.int64), np.array(zones, np.int64), np.zeros(n, np.int64), st,
                   np.zeros((num_sets, params.nbytes), np.uint8), np.zeros(num_sets if rrip else 0, np.uint16),
                   np.zeros(num_sets, np.int32), np.zeros(FILL_BATCH, np.int64), np.zeros(PAGE_SIZE, np.uint8),
                   np.zeros((0 if in_place else ppz, PAGE_SIZE), np.uint8), np.zeros(PAGE_SIZE, np.uint8),
                   np.zeros((2, MAX_OBJECTS_PER_PAGE), np.int64), np.zeros(MAX_OBJECTS_PER_PAGE, np.uint64))


def set_dram_bytes(S: SetTier, name: str = "set") -> dict[str, int]:
    out = {f"{name}_bloom": S.bloom.nbytes}
    if not S.in_place:  # in place, a set's address is its number: no map
        out[f"{name}_location_map"] = S.loc.nbytes
    if S.rrip:
        out[f"{name}_hit_bits"] = S.hits.nbytes
    return out


def set_object_count(S: SetTier) -> int:
    return int(S.st[OBJECTS])


def set_params(S: SetTier) -> dict:
    return {"sets": S.num_sets, "bloom_bits": S.m_bits, "bloom_k": S.k}


# ---- the owner's GC hook (per design) --------------------------------------------------------------------------------

_OWNERS: dict[type, Callable] = {}


def register_set_owner(state_type: type, gc_merge: Callable) -> None:
    """`gc_merge(P, S, j, page)` (P: the engine's state ref): zone GC of set tier S is relocating set j, whose page
    (a writable copy) it may add objects to; returns the bytes added, or -1 to have the page copied as is
    (`no_merge`)."""
    _OWNERS[state_type] = gc_merge


@internal
def no_merge(P, S, j, page):
    """The GC hook of a design whose sets GC copies unchanged."""
    return -1


# Pass as P, as np.int64(NO_OWNER), to `set_write_no_owner` to write a set tier whose GC must copy, whatever its
# owner's hook (FairyWREN's hot halves): the hook is chosen at compile time, so this keeps the owner's hook out of
# that path. The np.int64 keeps numba from specialising on the literal 0, which its cache does not link back.
NO_OWNER = 0


def on_set_gc(P, S, j, page):
    raise compiled_only("on_set_gc")


@overload(on_set_gc)
def _ov_on_set_gc(P, S, j, page):
    if isinstance(P, types.Integer):  # NO_OWNER
        return lambda P, S, j, page: no_merge(P, S, j, page)
    fn = _OWNERS[P.dtype.instance_class]
    return lambda P, S, j, page: fn(P, S, j, page)


# ---- keys and filters ----------------------------------------------------------------------------------------------

@internal
def set_of(S, tag):
    """The set of a key, from its tag (`paged.key_tag`: the low half of the shared key hash)."""
    return np.int64(tag % np.uint64(S.num_sets))


_FNV_BASIS = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


@internal
def _fnv(buf, lo, hi):
    """FNV-1a state of the bytes buf[lo:hi]."""
    h = np.uint64(_FNV_BASIS)
    for i in range(lo, hi):
        h = (h ^ np.uint64(buf[i])) * np.uint64(_FNV_PRIME)
    return h


@internal(inline=True)
def _probe(h, m_bits):
    """(first position, step) of the Bloom probes of a key whose FNV-1a state is h: the murmur3 finaliser gives the
    seeds h1 (low half) and h2 (high half, odd), and probe i is at (h1 + i * h2) mod m, as in
    `hashing.bloom_positions`. Hashing the key's bytes alone lets a set's filter be rebuilt from its page."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    m = np.uint64(m_bits)
    return np.int64((h & np.uint64(0xFFFFFFFF)) % m), np.int64(((h >> np.uint64(32)) | np.uint64(1)) % m)


@internal
def set_may_hold(S, j, key):
    """The set is on flash and its filter may hold `key`."""
    if S.loc[j] < 0:
        return False
    m = S.m_bits
    x, step = _probe(_fnv(key, 0, key.shape[0]), m)
    row = S.bloom[j]
    for _ in range(S.k):
        if (row[x >> 3] >> (x & 7)) & 1 == 0:
            return False
        x += step
        if x >= m:
            x -= m
    return True


@internal
def _rebuild(S, j, page):
    """Refill set j's filter from the keys in its page, recount its objects, clear its hit bits. Keys are hashed
    four at a time (FNV-1a is one dependent multiply per byte: interleaved chains keep the multiplier busy)."""
    row = S.bloom[j]
    row[:] = 0
    ks, kl, hs = S.keys[0], S.keys[1], S.hashes
    end = PAGE_HEADER + layout.page_used(page)
    n = 0
    pos = PAGE_HEADER
    while pos < end:
        klen = np.int64(page[pos])
        ks[n] = pos + OBJ_HEADER
        kl[n] = klen
        pos += OBJ_HEADER + klen + (np.int64(page[pos + 2]) | (np.int64(page[pos + 3]) << 8))
        n += 1
    prime = np.uint64(_FNV_PRIME)
    i = 0
    while i < n:
        group, done = 1, 0
        hs[i] = np.uint64(_FNV_BASIS)
        if i + 4 <= n:  # the bytes all four keys have, in four chains
            group = 4
            a0, a1, a2, a3 = ks[i], ks[i + 1], ks[i + 2], ks[i + 3]
            h0 = h1 = h2 = h3 = np.uint64(_FNV_BASIS)
            done = min(min(kl[i], kl[i + 1]), min(kl[i + 2], kl[i + 3]))
            for b in range(done):
                h0 = (h0 ^ np.uint64(page[a0 + b])) * prime
                h1 = (h1 ^ np.uint64(page[a1 + b])) * prime
                h2 = (h2 ^ np.uint64(page[a2 + b])) * prime
                h3 = (h3 ^ np.uint64(page[a3 + b])) * prime
            hs[i], hs[i + 1], hs[i + 2], hs[i + 3] = h0, h1, h2, h3
        for q in range(i, i + group):  # the rest of each key
            h = hs[q]
            for b in range(ks[q] + done, ks[q] + kl[q]):
                h = (h ^ np.uint64(page[b])) * prime
            hs[q] = h
        i += group
    m = S.m_bits
    for q in range(n):
        x, step = _probe(hs[q], m)
        for _ in range(S.k):
            row[x >> 3] |= np.uint8(1 << (x & 7))
            x += step
            if x >= m:
                x -= m
    S.st[OBJECTS] += n - np.int64(S.counts[j])
    S.counts[j] = n
    if S.rrip:
        S.hits[j] = 0


# ---- pages: insertion and eviction within a set ------------------------------------------------------------------------

@internal
def obj_rrip(page, pos):
    return np.int64(page[pos + 1]) >> RRIP_SHIFT


@internal
def _set_rrip(page, pos, v):
    page[pos + 1] = (np.int64(page[pos + 1]) & ((1 << RRIP_SHIFT) - 1)) | (v << RRIP_SHIFT)


@internal
def _top_rrip(page):
    """The most distant RRIP value in the page (-1 when empty)."""
    end = PAGE_HEADER + layout.page_used(page)
    top = -1
    p = PAGE_HEADER
    while p < end:
        top = max(top, obj_rrip(page, p))
        p += layout.obj_size_at(page, p)
    return top


@internal
def page_age(page):
    """RRIP ageing: raise everyone's value until the most distant object is at RRIP_MAX (order is kept)."""
    top = _top_rrip(page)
    if 0 <= top < RRIP_MAX:
        end = PAGE_HEADER + layout.page_used(page)
        p = PAGE_HEADER
        while p < end:
            _set_rrip(page, p, obj_rrip(page, p) + RRIP_MAX - top)
            p += layout.obj_size_at(page, p)


@internal
def page_most_distant(page):
    """Position of the oldest object with the highest RRIP (the first in page order among equals)."""
    top = _top_rrip(page)
    p = PAGE_HEADER
    while obj_rrip(page, p) != top:
        p += layout.obj_size_at(page, p)
    return p


@internal
def page_nearest(page):
    """Position of the oldest object with the lowest RRIP (the nearest predicted re-reference)."""
    end = PAGE_HEADER + layout.page_used(page)
    best, at = RRIP_MAX + 1, PAGE_HEADER
    p = PAGE_HEADER
    while p < end:
        v = obj_rrip(page, p)
        if v < best:
            best, at = v, p
        p += layout.obj_size_at(page, p)
    return at


@internal
def page_room_at(page, v):
    """Bytes a newcomer at RRIP v may take: the free space plus every object predicted no nearer than v."""
    room = layout.page_free(page)
    end = PAGE_HEADER + layout.page_used(page)
    p = PAGE_HEADER
    while p < end:
        size = layout.obj_size_at(page, p)
        if obj_rrip(page, p) >= v:
            room += size
        p += size
    return room


@internal
def _evict_one(page, rrip):
    """Remove one object: the oldest (FIFO), or the oldest with the highest RRIP after ageing (RRIParoo)."""
    pos = PAGE_HEADER
    if rrip:
        page_age(page)
        pos = page_most_distant(page)
    layout.page_remove(page, pos)


@internal
def page_put(page, key, value, flags, rrip, expiry):
    """Insert into a set page (`flags`, `expiry`: `layout.page_append`), replacing an older copy and evicting until
    it fits; returns the objects evicted, or -1 if the object cannot fit even in an empty page."""
    pos = layout.page_find(page, key)
    if pos >= 0:
        layout.page_remove(page, pos)
    evicted = 0
    while not layout.page_append(page, key, value, flags, expiry):
        if layout.page_count(page) == 0:
            return -1
        _evict_one(page, rrip)
        evicted += 1
    return evicted


@internal
def promote_hits(page, hits):
    """RRIParoo: objects hit since the set was last written move to the near end (RRIP 0)."""
    end = PAGE_HEADER + layout.page_used(page)
    pos = PAGE_HEADER
    i = 0
    while pos < end and i < HIT_SLOTS:
        if (np.int64(hits) >> i) & 1:
            _set_rrip(page, pos, 0)
        pos += layout.obj_size_at(page, pos)
        i += 1


@internal
def insert_rrip(S, hits):
    """Where a newcomer with `hits` log hits enters (module docstring: `rrip_insert`)."""
    if S.insert == AUTHORS:
        return max(RRIP_NEW - hits, 0)
    return RRIP_NEW


@internal
def set_put(S, page, key, value, flags, expiry, hits):
    """Insert into a page from `set_begin_update`, evicting as the policy says (`flags`, `expiry`:
    `layout.page_append`); `hits` = the newcomer's hits in the log. Returns the bytes added (object with header), 0
    when RRIParoo refuses it ("authors" insertion)."""
    size = layout.stored_size(key, value, expiry)
    if not S.rrip:
        page_put(page, key, value, flags, False, expiry)
        return size
    v = insert_rrip(S, hits)
    if S.insert == AUTHORS:
        pos = layout.page_find(page, key)
        if pos >= 0:  # an older copy goes whether or not the newcomer gets in: it must never be served again
            layout.page_remove(page, pos)
        if page_room_at(page, v) < size:
            S.io.m.counters[mt.C_REJECTED] += 1
            return 0
    page_put(page, key, value, flags | v << RRIP_SHIFT, True, expiry)
    return size


# ---- lookups -------------------------------------------------------------------------------------------------------

@internal
def set_lookup(S, j, key):
    """(found, page, value start, value length) of `key` in set j (a lookup: the read is the request's); found as
    `paged.log_lookup` says."""
    if not set_may_hold(S, j, key):
        return ABSENT, S.io.zero, 0, 0
    ppz = S.io.ppz
    pid = np.int64(S.loc[j])
    page = read_page(S.io, pid // ppz, pid % ppz, S.scratch, GET)
    pos = layout.page_find(page, key)
    if pos < 0:
        return ABSENT, page, 0, 0
    start, n, flags = layout.obj_value_span(page, pos)
    if layout.span_expired(page, start, flags, S.io.m.clock[0]):
        S.io.m.counters[mt.C_EXPIRED_MISSES] += 1
        return EXPIRED, page, 0, 0
    if S.rrip:
        slot = layout.page_index_of(page, pos)
        if slot < HIT_SLOTS:
            S.hits[j] |= np.uint16(1 << slot)
    return HIT, page, start, n


@internal
def set_holds(S, j, key, cause):
    """Is `key` in set j on flash (a background read under `cause` when its filter may hold it)?"""
    if not set_may_hold(S, j, key):
        return False
    ppz = S.io.ppz
    pid = np.int64(S.loc[j])
    return layout.page_find(read_page(S.io, pid // ppz, pid % ppz, S.scratch, cause), key) >= 0


# ---- updates -------------------------------------------------------------------------------------------------------

@internal
def set_begin_update(S, j, cause, foreground):
    """Set j's page in S.page (empty if not on flash), read under `cause`, for a read-modify-write; objects hit
    since its last write are promoted before anything is evicted."""
    page = S.page
    pid = np.int64(S.loc[j])
    if pid < 0:
        page[:] = 0
    else:
        ppz = S.io.ppz
        copy_bytes(page, 0, read_page_as(S.io, pid // ppz, pid % ppz, S.scratch, cause, foreground), 0, PAGE_SIZE)
    if S.rrip and S.hits[j]:
        promote_hits(page, S.hits[j])
    if S.insert == AUTHORS:  # the authors age a set once per batch of newcomers, before admitting them
        page_age(page)
    return page


@internal
def set_remove(P, S, j, key):
    """Delete a key from set j (a read-modify-write the request waits for, when the filter says it may be there)."""
    if not set_may_hold(S, j, key):
        return False
    page = set_begin_update(S, j, mt.C_READ_DELETE, True)
    pos = layout.page_find(page, key)
    if pos < 0:
        return False
    layout.page_remove(page, pos)
    set_write(P, S, j, page, 0, 0, 0)
    return True


@internal
def _append(S, j, page, added, new_kv, new_objects):
    zone = S.st[ZONE]
    p = write_pages(S.io, zone, page.reshape(1, PAGE_SIZE), 1, new_kv, new_objects)
    pid = zone * S.io.ppz + p
    S.loc[j] = pid
    S.owner[pid - S.base] = j
    S.valid[zone] += 1
    S.st[WP] += 1
    _record_fill(S, added)


@internal
def _invalidate(S, j):
    pid = np.int64(S.loc[j])
    if pid >= 0:
        S.valid[pid // S.io.ppz] -= 1
        S.loc[j] = -1


@internal
def _record_fill(S, added):
    n = S.st[NFILLS]
    S.fills[n] = added
    S.st[NFILLS] = n + 1
    if n + 1 == FILL_BATCH:
        set_report_fills(S)


@internal
def set_report_fills(S):
    """Hand the fill of the set pages written since the last call to the metrics, as one batch."""
    n = S.st[NFILLS]
    if n:
        mt.record_fills(S.io.m, S.fills[:n], PAYLOAD, True)
        S.st[NFILLS] = 0


# ---- zone GC -------------------------------------------------------------------------------------------------------

def _set_writer():
    """`write(P, S, j, page, added, new_kv, new_objects)` with the zone GC it may run (`room`, `collect`): one set
    of compiled functions. Two sets are built: `set_write`, whose GC calls the owner's hook, and `set_write_no_owner`
    for NO_OWNER writes (FairyWREN's hot halves, written from inside that hook). With one set, the hook's write would
    call the function that is running it, a recursion numba's cache cannot link back: a later process that loaded
    the cached code crashed (numba issue 6061)."""

    @internal
    def collect(P, S):
        victim = _take_victim(S)
        c = S.io.m.counters
        c[mt.C_GC_ZONES] += 1
        ppz = S.io.ppz
        if S.valid[victim]:
            read_pages_into(S.io, victim, 0, S.gc, ppz, mt.C_READ_GC)
            copies = 0
            for p in range(ppz):
                pid = victim * ppz + p
                j = np.int64(S.owner[pid - S.base])
                if S.loc[j] != pid:
                    continue  # a stale version
                page = S.gc[p]
                if S.rrip and S.hits[j]:
                    promote_hits(page, S.hits[j])
                dropped = layout.page_drop_expired(page, S.io.m.clock[0])  # not worth a copy
                mt.record_expired(S.io.m, dropped)
                added = on_set_gc(P, S, j, page)
                _invalidate(S, j)
                if added >= 0 or dropped[0] or S.rrip and layout.page_count(page) != S.counts[j]:
                    _rebuild(S, j, page)  # the owner may have changed the keys (or the page read back damaged: empty)
                elif S.rrip:  # the same keys: the filter stands (a plain copy always keeps it)
                    S.hits[j] = 0
                if layout.page_count(page):
                    _append(S, j, page, max(added, 0), 0, 0)
                copies += 1
            c[mt.C_GC_SET_COPIES] += copies
        reset_zone(S.io, victim)
        st = S.st
        S.free[(st[FREE_AT] + st[FREE_N]) % S.free.shape[0]] = victim
        st[FREE_N] += 1

    @internal
    def room(P, S):
        """Make sure the open zone has a free page, collecting a victim zone whenever the last free zone is taken."""
        st = S.st
        while st[WP] == S.io.ppz:
            S.closed[(st[CLOSED_AT] + st[CLOSED_N]) % S.closed.shape[0]] = st[ZONE]
            st[CLOSED_N] += 1
            st[ZONE] = S.free[st[FREE_AT]]
            st[FREE_AT] = (st[FREE_AT] + 1) % S.free.shape[0]
            st[FREE_N] -= 1
            st[WP] = 0
            if st[FREE_N] == 0:  # keep one zone in reserve: GC copies into the zone just opened
                collect(P, S)

    @internal
    def write(P, S, j, page, added, new_kv, new_objects):
        """Write set j. `added` = bytes of objects added by this write; `new_kv`/`new_objects` = the user objects among
        them reaching flash for the first time (migrated ones were already counted). Expired objects are dropped."""
        mt.record_expired(S.io.m, layout.page_drop_expired(page, S.io.m.clock[0]))
        _rebuild(S, j, page)
        if S.in_place:
            pid = S.base + j
            if layout.page_count(page):
                write_page_at(S.io, pid, page, new_kv, new_objects)
                S.loc[j] = pid
                _record_fill(S, added)
            elif S.loc[j] >= 0:
                trim_page(S.io, pid)
                S.loc[j] = -1
            return
        _invalidate(S, j)
        if layout.page_count(page) == 0:  # an empty set needs no page: its old version is simply stale
            return
        room(P, S)
        _append(S, j, page, added, new_kv, new_objects)

    return write


set_write = _set_writer()
set_write_no_owner = _set_writer()


@internal
def _take_victim(S):
    """Remove and return the GC victim from the closed zones: the oldest (FIFO) or the first with fewest valid
    sets (greedy)."""
    st = S.st
    ring = S.closed
    size = ring.shape[0]
    at, n = st[CLOSED_AT], st[CLOSED_N]
    r = 0
    if not S.fifo:
        best = S.valid[ring[at]]
        for i in range(1, n):
            v = S.valid[ring[(at + i) % size]]
            if v < best:
                best, r = v, i
    victim = ring[(at + r) % size]
    for i in range(r, 0, -1):  # close the gap from the old end
        ring[(at + i) % size] = ring[(at + i - 1) % size]
    st[CLOSED_AT] = (at + 1) % size
    st[CLOSED_N] = n - 1
    return victim



