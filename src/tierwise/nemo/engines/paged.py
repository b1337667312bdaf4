"""What the page-based baselines share (Log, Set, Kangaroo, FairyWREN): sealed 4 KB page I/O with one accounting
rule, and the log tier (a FIFO of pages over zones with an exact, bucketed DRAM index).

Page I/O (`PageIO`). Every page written splits into new user objects (key+value -> "user", their headers ->
"object_headers"), objects copied from elsewhere (migration, GC, read-modify-write survivors, readmission ->
"writeback"), unused bytes ("padding") and the page header ("page_headers"); every flash page counts 4 KB, full or
not. On a conventional SSD the device's segments play the zones, and in-place designs rewrite pages there.

The log tier (`LogTier`). Objects are packed into the pages of a DRAM segment buffer that is appended in one
write; when no zone is free the oldest zone is read, its still-live objects are handed to the owner engine
(`on_log_evict`, registered per design: dropped by Log, migrated to sets by Kangaroo/FairyWREN, which may take
every other log object of the same set with `log_take_bucket`, and may ask for some to be readmitted) and the zone
is reset. Readmitted objects are appended again once the eviction is complete, before the object whose append
caused it, exactly as a recursive implementation would order them (a stack of pending appends).

The index is a chained hash table in flat arrays: buckets chosen by the owner (by key hash for Log, by set for the
hierarchical designs, so one set's log objects form one chain). Its entry pool is reserved for the most objects the
log could ever hold but only touched as used; its DRAM is reported as the power of two (at least the initial
capacity) covering the most entries used at once, what a pool growing by doubling would hold.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Callable

import numpy as np
from numba.extending import overload

from tierwise.common.errors import TierwiseError
from tierwise.nemo import layout
from tierwise.nemo import metrics as mt
from tierwise.nemo.device import flash as fl
from tierwise.nemo.hashing import DEFAULT_SEED
from tierwise.nemo.layout import FLAG_WRITEBACK, OBJ_HEADER, PAGE_HEADER, PAGE_SIZE, PAYLOAD
from tierwise.nemo.native import compiled_only, copy_bytes, internal, lazy_zeros, put_uint, xxh3_128

MAX_OBJECTS_PER_PAGE = PAYLOAD // (OBJ_HEADER + 1)  # 1-byte keys, empty values
POS_BITS = 12  # an index entry locates the object itself: page id << 12 | byte position in the page
POS_MASK = (1 << POS_BITS) - 1
GET = -1  # `cause` of a read done for a lookup (counted per get by the engine, not as a background read)
ABSENT, HIT, EXPIRED = 0, 1, 2  # what a tier's lookup found

# ---- page I/O ---------------------------------------------------------------------------------------------------------

PageIO = namedtuple("PageIO", [
    "dev",  # the device's Flash bundle
    "m",  # MetricsArrays
    "st",  # int64[2]: SEQ (page writes so far, stamped into each page), GET_READS (pages read by lookups)
    "ppz",  # pages per zone (segment)
    "zero",  # uint8[PAGE_SIZE]: an empty page, what a page failing its checksum reads as
    "tally",  # int64[8]: scratch for layout.page_tally_into
])
SEQ, GET_READS = range(2)


def new_page_io(device, metrics) -> PageIO:
    if device.block_size != PAGE_SIZE:
        raise TierwiseError(f"these engines need a {PAGE_SIZE}-byte block device, got block_size={device.block_size}")
    return PageIO(device.flash, metrics.arrays, np.zeros(2, np.int64), device.zone_capacity // PAGE_SIZE,
                  np.zeros(PAGE_SIZE, np.uint8), np.zeros(8, np.int64))


@internal
def _account(io, pages, n, new_kv, new_objects):
    """Seal pages[0:n] and attribute their bytes; new_kv < 0: every object without the write-back flag is a new
    user object (log pages, where objects land once)."""
    used = 0
    t = io.tally
    t[:] = 0
    for p in range(n):
        layout.page_tally_into(pages[p], t)
        used += layout.page_used(pages[p])
    headers = new_objects * OBJ_HEADER  # a set write's newcomer: its expiry, if any, counts with the rewritten bytes
    if new_kv < 0:
        new_kv, new_objects, headers = t[layout.T_USER_KV], t[layout.T_USER_OBJECTS], t[layout.T_USER_HEADERS]
    layout.seal_pages(pages[:n], io.st[SEQ], 1)
    io.st[SEQ] += n
    w = io.m.writes
    w[mt.W_USER] += new_kv
    w[mt.W_OBJECT_HEADERS] += headers
    w[mt.W_WRITEBACK] += used - new_kv - headers
    w[mt.W_PADDING] += n * PAYLOAD - used
    w[mt.W_PAGE_HEADERS] += n * PAGE_HEADER
    if new_objects:
        c = io.m.counters
        c[mt.C_FLASHED_OBJECTS] += new_objects
        c[mt.C_LOGICAL_BYTES] += new_kv
        c[mt.C_LOGICAL_HEADER_BYTES] += headers


@internal
def write_pages(io, zone, pages, n, new_kv, new_objects):
    """Append pages[0:n] to `zone`; returns the page index of the first one within the zone."""
    _account(io, pages, n, new_kv, new_objects)
    return fl.append(io.dev, zone, pages[:n].reshape(-1), 0, n * PAGE_SIZE) // PAGE_SIZE


@internal
def write_page_at(io, pid, page, new_kv, new_objects):
    """Overwrite page `pid` (zone * ppz + page) in place: conventional devices only."""
    _account(io, page.reshape(1, PAGE_SIZE), 1, new_kv, new_objects)
    fl.write_at(io.dev, pid * PAGE_SIZE, page, 0, PAGE_SIZE)


@internal(inline=True)
def _count(io, cause, pages):
    if cause == GET:
        io.st[GET_READS] += pages
    else:
        io.m.counters[cause] += pages * PAGE_SIZE


@internal
def read_page(io, zone, page, scratch, cause):
    """Page `page` of `zone` (a view; on a syscall device read into `scratch`); a page failing its checksum reads
    as empty (a cache miss). `cause`: GET, or the counter slot of a background read."""
    return read_page_as(io, zone, page, scratch, cause, cause == GET)


@internal
def read_page_as(io, zone, page, scratch, cause, foreground):
    """`read_page` counted under `cause` but timed as `foreground` says: a read the request waits for that is not a
    lookup (the Set engine's read-modify-write)."""
    data = fl.read(io.dev, zone, page * PAGE_SIZE, PAGE_SIZE, scratch, foreground)
    _count(io, cause, 1)
    if layout.page_crc_valid(data):
        return data
    io.m.counters[mt.C_CORRUPT_PAGES] += 1
    return io.zero


@internal
def read_pages_into(io, zone, first, out, n, cause):
    """Copy n pages from page `first` of `zone` into out[0:n] (a background read); damaged pages read empty."""
    fl.read_into(io.dev, zone, first * PAGE_SIZE, out[:n].reshape(-1), cause == GET)
    _count(io, cause, n)
    for p in range(n):
        if not layout.page_crc_valid(out[p]):
            out[p, :] = 0
            io.m.counters[mt.C_CORRUPT_PAGES] += 1


@internal
def reset_zone(io, zone):
    fl.reset(io.dev, zone)


@internal
def trim_page(io, pid):
    """Drop one in-place page (conventional devices: the FTL stops copying it)."""
    fl.trim(io.dev, pid * PAGE_SIZE, PAGE_SIZE)


# ---- keys ----------------------------------------------------------------------------------------------------------

@internal(inline=True)
def key_tag(key):
    """The 64-bit index tag of a key: the low half of the shared 128-bit key hash (its residue is the set offset)."""
    return xxh3_128(key, np.uint64(DEFAULT_SEED))[0]


# ---- the log index -------------------------------------------------------------------------------------------------

LogIndex = namedtuple("LogIndex", [
    "head",  # int32[buckets]: first entry of each bucket's chain, -1 = empty
    "tags",  # uint64[pool]: key tag of each entry
    "locs",  # uint32 or int64[pool]: page id << POS_BITS | byte position of the object
    "nxt",  # int32[pool]: next entry in the chain (or in the free list)
    "hits",  # uint8[pool] (or empty): hits since written, saturating (Kangaroo's readmission, RRIParoo insertion)
    "st",  # int64[4]: FREE (first freed entry, -1 = none), LIVE entries, BUMP (entries ever used), CAP0
])
FREE, LIVE, BUMP, CAP0 = range(4)


def new_log_index(num_buckets: int, max_entries: int, capacity: int = 1024, max_loc: int = 1 << 63,
                  track_hits: bool = False) -> LogIndex:
    """An empty index of `num_buckets` chains able to hold `max_entries` (reserved, touched as used); locations
    below `max_loc` are stored in 32 bits when they fit (devices up to 4 GiB)."""
    loc_type = np.uint32 if max_loc <= 1 << 32 else np.int64
    return LogIndex(np.full(num_buckets, -1, np.int32), lazy_zeros(max_entries, np.uint64),
                    lazy_zeros(max_entries, loc_type), lazy_zeros(max_entries, np.int32),
                    lazy_zeros(max_entries if track_hits else 0, np.uint8), np.array([-1, 0, 0, capacity], np.int64))


def index_capacity(ix: LogIndex) -> int:
    """The pool a growing-by-doubling index would hold now: the initial capacity doubled until it covers the most
    entries ever in use at once."""
    cap = int(ix.st[CAP0])
    while cap < ix.st[BUMP]:
        cap *= 2
    return cap


def index_nbytes(ix: LogIndex) -> int:
    per_entry = ix.tags.itemsize + ix.locs.itemsize + ix.nxt.itemsize + (1 if ix.hits.shape[0] else 0)
    return ix.head.nbytes + index_capacity(ix) * per_entry


@internal
def ix_find(ix, bucket, tag):
    """The entry of `tag` in `bucket`, or -1."""
    e = ix.head[bucket]
    while e >= 0:
        if ix.tags[e] == tag:
            return e
        e = ix.nxt[e]
    return -1


@internal
def ix_lookup(ix, bucket, tag):
    e = ix_find(ix, bucket, tag)
    return np.int64(ix.locs[e]) if e >= 0 else np.int64(-1)


@internal
def ix_insert(ix, bucket, tag, loc):
    """Insert or replace (clearing the entry's hit flag); True when the tag is new."""
    e = ix_find(ix, bucket, tag)
    if e < 0:
        e = ix.st[FREE]
        if e >= 0:
            ix.st[FREE] = ix.nxt[e]
        else:
            e = ix.st[BUMP]
            if e >= ix.tags.shape[0]:
                raise IndexError("log index pool exhausted")
            ix.st[BUMP] += 1
        ix.tags[e] = tag
        ix.nxt[e] = ix.head[bucket]
        ix.head[bucket] = e
        ix.st[LIVE] += 1
        new = True
    else:
        new = False
    ix.locs[e] = loc
    if ix.hits.shape[0]:
        ix.hits[e] = 0
    return new


@internal
def ix_remove(ix, bucket, tag, expect_loc):
    """Unlink `tag` from `bucket` (only if it points at expect_loc, unless expect_loc < 0)."""
    prev = -1
    e = ix.head[bucket]
    while e >= 0:
        if ix.tags[e] == tag:
            if expect_loc >= 0 and np.int64(ix.locs[e]) != expect_loc:
                return False
            if prev < 0:
                ix.head[bucket] = ix.nxt[e]
            else:
                ix.nxt[prev] = ix.nxt[e]
            ix.nxt[e] = ix.st[FREE]
            ix.st[FREE] = e
            ix.st[LIVE] -= 1
            return True
        prev = e
        e = ix.nxt[e]
    return False


@internal
def ix_chain_length(ix, bucket):
    n = 0
    e = ix.head[bucket]
    while e >= 0:
        n += 1
        e = ix.nxt[e]
    return n


@internal
def ix_mark_hit(ix, bucket, tag):
    if ix.hits.shape[0]:
        e = ix_find(ix, bucket, tag)
        if e >= 0 and ix.hits[e] < 255:
            ix.hits[e] += 1


@internal
def ix_hits(ix, bucket, tag):
    """Hits of `tag` since it was written (0 when hits are not tracked)."""
    e = ix_find(ix, bucket, tag)
    return np.int64(ix.hits[e]) if e >= 0 and ix.hits.shape[0] else np.int64(0)


# ---- the log tier --------------------------------------------------------------------------------------------------

LogTier = namedtuple("LogTier", [
    "io",  # PageIO
    "ix",  # LogIndex
    "zones",  # int64[n]: the device zones the log owns
    "seg",  # uint8[buffer pages, PAGE_SIZE]: the DRAM segment buffer (seg[NBUF] is the page being filled)
    "st",  # int64[...]: the scalars below
    "free",  # int64[n]: ring of free zones (FREE_AT, FREE_N)
    "live",  # int64[n]: ring of filled zones, oldest first (LIVE_AT, LIVE_N); the open zone is not in it
    "evicting",  # uint8[ppz, PAGE_SIZE]: the pages of the zone being evicted (already reset), while its owner works
    "ev_tag", "ev_loc",  # uint64 / int64[ppz * objects per page]: its live objects, in zone order
    "ev_readmit",  # uint8[same]: the owner asks for these to be appended again
    "stack", "stack_at",  # uint8[log bytes], int64[...]: pending appends (tag, flags, key, value), newest last
    "tk_tag", "tk_loc", "tk_page",  # what log_take_bucket took: tag, location, row of tk_pages
    "tk_pages",  # uint8[log pages, PAGE_SIZE]: the distinct pages those objects were read from
    "scratch",  # uint8[PAGE_SIZE]: read buffer for syscall devices
    "bucket_mask",  # bucket = tag & mask when mask >= 0 ...
    "bucket_mod",  # ... else tag % mod
    "cause",  # counter slot of the log's background reads
])
NBUF, ZONE, WP, FREE_AT, FREE_N, LIVE_AT, LIVE_N, EVICTING, EV_N, STACK_N, STACK_BYTES, TK_N, TK_PAGES = range(13)
_ENTRY = 12  # stack entry header: tag u64, flags u8, key length u8, value length u16


def new_log_tier(io: PageIO, zones: list[int], num_buckets: int, *, bucket_mask: int = -1, buffer_pages: int = 16,
                 cause: int = mt.C_READ_LOG, track_hits: bool = False, num_zones: int | None = None) -> LogTier:
    if len(zones) < 2:
        raise TierwiseError(f"a log needs at least 2 zones, got {len(zones)}")
    ppz = io.ppz
    pages = len(zones) * ppz
    device_pages = (num_zones or max(zones) + 1) * ppz
    ix = new_log_index(num_buckets, pages * MAX_OBJECTS_PER_PAGE, max_loc=device_pages << POS_BITS,
                       track_hits=track_hits)
    st = np.zeros(13, np.int64)
    n = len(zones)
    free = np.array(zones, np.int64)
    st[ZONE] = free[0]  # the first zone opens at once
    st[FREE_AT], st[FREE_N] = 1 % n, n - 1
    st[EVICTING] = -1
    zone_objects = ppz * MAX_OBJECTS_PER_PAGE
    log_bytes = pages * PAGE_SIZE
    return LogTier(io, ix, np.array(zones, np.int64), np.zeros((max(1, min(buffer_pages, ppz)), PAGE_SIZE), np.uint8),
                   st, free, np.zeros(n, np.int64), np.zeros((ppz, PAGE_SIZE), np.uint8),
                   lazy_zeros(zone_objects, np.uint64), lazy_zeros(zone_objects, np.int64),
                   lazy_zeros(zone_objects, np.uint8), lazy_zeros(log_bytes + zone_objects * _ENTRY, np.uint8),
                   lazy_zeros(pages * MAX_OBJECTS_PER_PAGE, np.int64), lazy_zeros(pages * MAX_OBJECTS_PER_PAGE, np.uint64),
                   lazy_zeros(pages * MAX_OBJECTS_PER_PAGE, np.int64), lazy_zeros(pages * MAX_OBJECTS_PER_PAGE, np.int64),
                   lazy_zeros(pages * PAGE_SIZE, np.uint8).reshape(pages, PAGE_SIZE), np.zeros(PAGE_SIZE, np.uint8),
                   bucket_mask, max(1, num_buckets), cause)


@internal(inline=True)
def log_bucket(L, tag):
    if L.bucket_mask >= 0:
        return np.int64(tag & np.uint64(L.bucket_mask))
    return np.int64(tag % np.uint64(L.bucket_mod))


def log_capacity_pages(L: LogTier) -> int:
    return L.zones.shape[0] * L.io.ppz


# ---- the owner's eviction hook (per design) ------------------------------------------------------------------------

_OWNERS: dict[type, Callable] = {}


def register_log_owner(state_type: type, on_evict: Callable) -> None:
    """`on_evict(P, n)` (P: the engine's state ref): the n live objects of a reclaimed log zone are log.ev_tag /
    ev_loc[0:n] (their pages in log.evicting); the owner migrates them, or sets log.ev_readmit[i] to append object
    i again."""
    _OWNERS[state_type] = on_evict


def on_log_evict(P, n):
    raise compiled_only("on_log_evict")


@overload(on_log_evict)
def _ov_on_log_evict(P, n):
    fn = _OWNERS[P.dtype.instance_class]
    return lambda P, n: fn(P, n)


# ---- reads ---------------------------------------------------------------------------------------------------------

@internal
def log_page(L, pid, cause):
    """Log page `pid` (zone * ppz + page): from the zone being evicted, the DRAM segment, or the device."""
    ppz = L.io.ppz
    z, p = pid // ppz, pid % ppz
    if z == L.st[EVICTING]:
        return L.evicting[p]
    if z == L.st[ZONE] and p >= L.st[WP]:  # still in the DRAM buffer
        return L.seg[p - L.st[WP]]
    return read_page(L.io, z, p, L.scratch, cause)


@internal
def log_lookup(L, tag, key):
    """(found, page, value start, value length) of `key` in the log; found: HIT, ABSENT, or EXPIRED (a copy whose
    time has passed: a miss that no older copy elsewhere may answer)."""
    b = log_bucket(L, tag)
    loc = ix_lookup(L.ix, b, tag)
    if loc < 0:
        return ABSENT, L.io.zero, 0, 0
    page = log_page(L, loc >> POS_BITS, GET)
    pos = loc & POS_MASK
    klen = np.int64(page[pos])
    if klen != key.shape[0]:
        return ABSENT, page, 0, 0  # a different key with the same 64-bit tag: a miss
    for i in range(klen):
        if page[pos + OBJ_HEADER + i] != key[i]:
            return ABSENT, page, 0, 0
    start, n, flags = layout.obj_value_span(page, pos)
    if layout.span_expired(page, start, flags, L.io.m.clock[0]):
        L.io.m.counters[mt.C_EXPIRED_MISSES] += 1
        return EXPIRED, page, 0, 0
    ix_mark_hit(L.ix, b, tag)
    return HIT, page, start, n


@internal
def log_live(L, tag, loc):
    return ix_lookup(L.ix, log_bucket(L, tag), tag) == loc


@internal
def log_take_bucket(L, bucket):
    """Remove every log object of one bucket (chain order, newest first); returns how many. Object i is then
    L.tk_pages[L.tk_page[i]] at byte L.tk_loc[i] & POS_MASK (each distinct page read once)."""
    n = 0
    L.st[TK_PAGES] = 0
    e = L.ix.head[bucket]
    while e >= 0:
        nxt = L.ix.nxt[e]
        loc = np.int64(L.ix.locs[e])
        pid = loc >> POS_BITS
        row = -1
        for r in range(L.st[TK_PAGES]):
            if L.tk_page[r] == pid:
                row = r
                break
        if row < 0:
            row = L.st[TK_PAGES]
            L.st[TK_PAGES] += 1
            L.tk_page[row] = pid
            copy_bytes(L.tk_pages[row], 0, log_page(L, pid, L.cause), 0, PAGE_SIZE)
        L.tk_tag[n] = L.ix.tags[e]
        L.tk_loc[n] = (np.int64(row) << POS_BITS) | (loc & POS_MASK)
        n += 1
        ix_remove(L.ix, bucket, L.ix.tags[e], loc)
        e = nxt
    return n


# ---- writes --------------------------------------------------------------------------------------------------------

@internal(inline=True)
def _stack_entry(L, tag, flags, klen, vlen):
    """Reserve a pending-append entry for an object of `klen + vlen` bytes and write its header (tag, flags, key and
    value lengths); returns where its key bytes go."""
    at = L.st[STACK_BYTES]
    s = L.stack
    for b in range(8):
        s[at + b] = (tag >> np.uint64(8 * b)) & np.uint64(0xFF)
    s[at + 8] = flags
    s[at + 9] = klen
    s[at + 10] = vlen & 0xFF
    s[at + 11] = vlen >> 8
    L.stack_at[L.st[STACK_N]] = at
    L.st[STACK_N] += 1
    L.st[STACK_BYTES] = at + _ENTRY + klen + vlen
    return at + _ENTRY


@internal
def _push(L, tag, flags, src, pos):
    """Put the object at byte `pos` of page `src` on the pending-append stack."""
    klen = np.int64(src[pos])
    vlen = np.int64(src[pos + 2]) | (np.int64(src[pos + 3]) << 8)
    at = _stack_entry(L, tag, flags | (np.int64(src[pos + 1]) & layout.FLAG_EXPIRES), klen, vlen)
    copy_bytes(L.stack, at, src, pos + OBJ_HEADER, klen + vlen)


@internal
def log_insert(P, L, tag, key, value, expiry):
    """Append an object (`expiry`: module `layout`); an older copy anywhere in the log (even in the open page) just
    stops being indexed."""
    klen, vlen = key.shape[0], value.shape[0]
    extra = layout.EXPIRY_BYTES if expiry else 0
    at = _stack_entry(L, tag, layout.FLAG_EXPIRES if expiry else 0, klen, vlen + extra)
    copy_bytes(L.stack, at, key, 0, klen)
    if expiry:  # the value field as a page stores it: the expiry first
        put_uint(L.stack, at + klen, expiry, extra)
    copy_bytes(L.stack, at + klen + extra, value, 0, vlen)
    _drain(P, L)


@internal
def _drain(P, L):
    """Append pending objects, newest pending first; closing a full page may evict a zone whose readmitted objects
    are pushed on top, so they land before the object that was waiting."""
    s = L.stack
    while L.st[STACK_N] > 0:
        at = L.stack_at[L.st[STACK_N] - 1]
        tag = np.uint64(0)
        for b in range(8):
            tag |= np.uint64(s[at + b]) << np.uint64(8 * b)
        flags = np.int64(s[at + 8])
        klen = np.int64(s[at + 9])
        vlen = np.int64(s[at + 10]) | (np.int64(s[at + 11]) << 8)
        key = s[at + _ENTRY:at + _ENTRY + klen]
        value = s[at + _ENTRY + klen:at + _ENTRY + klen + vlen]
        page = L.seg[L.st[NBUF]]
        pos = PAGE_HEADER + layout.page_used(page)
        if layout.page_append(page, key, value, flags, 0):
            L.st[STACK_N] -= 1
            L.st[STACK_BYTES] = at
            pid = L.st[ZONE] * L.io.ppz + L.st[WP] + L.st[NBUF]
            ix_insert(L.ix, log_bucket(L, tag), tag, (pid << POS_BITS) | pos)
        else:
            _close_page(P, L)


@internal
def log_remove(L, tag):
    return ix_remove(L.ix, log_bucket(L, tag), tag, -1)


@internal
def _close_page(P, L):
    L.st[NBUF] += 1
    if L.st[WP] + L.st[NBUF] == L.io.ppz:
        _write_segment(L)
        _advance_zone(P, L)
    elif L.st[NBUF] == L.seg.shape[0]:
        _write_segment(L)


@internal
def _write_segment(L):
    n = L.st[NBUF]
    if n == 0:
        return
    write_pages(L.io, L.st[ZONE], L.seg, n, -1, 0)
    L.st[WP] += n
    L.seg[:, :] = 0  # the open page is always empty here: segments are written right after a page closes
    L.st[NBUF] = 0


@internal
def log_flush(P, L):
    """Write the partly filled page too (its unused tail is padding and counts as written)."""
    if layout.page_count(L.seg[L.st[NBUF]]):
        _close_page(P, L)
        _drain(P, L)
    _write_segment(L)


@internal
def ring_push(ring, st, at, count, value):
    ring[(st[at] + st[count]) % ring.shape[0]] = value
    st[count] += 1


@internal
def ring_pop(ring, st, at, count):
    v = ring[st[at]]
    st[at] = (st[at] + 1) % ring.shape[0]
    st[count] -= 1
    return v


@internal
def _advance_zone(P, L):
    st = L.st
    ring_push(L.live, st, LIVE_AT, LIVE_N, st[ZONE])
    n = 0
    if st[FREE_N] == 0:
        n = _evict_oldest(L)
    st[ZONE] = ring_pop(L.free, st, FREE_AT, FREE_N)
    st[WP] = 0
    L.ev_readmit[:n] = 0
    if n:
        on_log_evict(P, n)
    for i in range(n):  # whatever the owner did not take is dropped
        ix_remove(L.ix, log_bucket(L, L.ev_tag[i]), L.ev_tag[i], L.ev_loc[i])
    ppz = L.io.ppz
    for i in range(n - 1, -1, -1):  # appended again, as copies (write amplification, not user bytes)
        if L.ev_readmit[i]:
            loc = L.ev_loc[i]
            _push(L, L.ev_tag[i], FLAG_WRITEBACK, L.evicting[(loc >> POS_BITS) % ppz], loc & POS_MASK)
    st[EVICTING] = -1  # the zone may be reused right away: its old pages must not shadow new ones


@internal
def _evict_oldest(L):
    """Read the oldest zone, list its live objects (ev_tag / ev_loc), reset it; returns how many."""
    st = L.st
    victim = ring_pop(L.live, st, LIVE_AT, LIVE_N)
    ppz = L.io.ppz
    read_pages_into(L.io, victim, 0, L.evicting, ppz, L.cause)
    st[EVICTING] = victim
    n = 0
    for p in range(ppz):
        page = L.evicting[p]
        pid = victim * ppz + p
        end = PAGE_HEADER + layout.page_used(page)
        pos = PAGE_HEADER
        while pos < end:
            klen = np.int64(page[pos])
            tag = key_tag(page[pos + OBJ_HEADER:pos + OBJ_HEADER + klen])
            loc = (pid << POS_BITS) | pos
            if ix_lookup(L.ix, log_bucket(L, tag), tag) == loc:
                L.ev_tag[n] = tag
                L.ev_loc[n] = loc
                n += 1
            pos += layout.obj_size_at(page, pos)
    reset_zone(L.io, victim)
    ring_push(L.free, st, FREE_AT, FREE_N, victim)
    st[EV_N] = n
    return n


def log_dram_bytes(L: LogTier, name: str = "log") -> dict[str, int]:
    return {f"{name}_index": index_nbytes(L.ix), f"buffer_{name}": L.seg.nbytes}
