"""Large-object log (CacheLib Navy's BlockCache): objects of any size up to a zone, appended as records to a FIFO of
zones, found through an exact DRAM index, evicted a zone at a time.

A record is a 24-byte header, the key, the value, padded to 8 bytes; records are packed back to back, so one spans
as many 4 KB pages as it needs, but never two zones:

    offset  size  field
    0       4     crc32c of bytes [4, 24 + key + value)
    4       4     value length
    8       4     expiry (seconds on the cache's clock; 0 = never)
    12      1     key length
    13      1     flags (1: a tombstone, written by a delete: no value)
    14      2     magic 0xB10C (a record starts here; zeros are padding)
    16      8     sequence number (records in write order)

The zone being filled is a DRAM buffer (CacheLib's region buffer): it is written when the next record does not fit
(the zone is then finished: its unused tail costs no write) or at `flush` (up to the next page boundary, which is
padding). An index entry holds the record's byte address and length, so a get is one read of exactly the record;
records in the open zone are served from the buffer. Eviction reads the oldest zone to unlink its live records
(CacheLib reads a reclaimed region too) and resets it. An overwritten key's older record just stops being indexed;
a delete of an indexed key also appends a tombstone record, so recovery (`recover=True`: the zones' records
replayed in sequence order) never brings a deleted key back. Nothing is rewritten, so the only write amplification
is headers, tombstones and padding.

It runs alone (design "block") and as the large-object tier of a two-tier cache (`tiered.py`), on the zones it is
given.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo import metrics as mt
from tierwise.nemo.device import flash as fl
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.base import Engine, register_compiled
from tierwise.nemo.engines.paged import (LIVE, index_capacity, index_nbytes, ix_lookup, ix_insert, ix_remove,
                                         key_tag, new_log_index, ring_pop, ring_push)
from tierwise.nemo.layout import MAX_KEY, PAGE_SIZE
from tierwise.nemo.native import copy_bytes, crc32c, get_uint, internal, put_uint, ref_of

HEADER = 24
MAGIC = 0xB10C
_LEN_BITS = 24  # index entry: (byte address / 8) << 24 | record length / 8
MAX_VALUE = 1 << 20  # the default largest value: 1 MiB, or what a zone holds

BlockState = namedtuple("BlockState", [
    "dev", "m",  # the device's Flash bundle, MetricsArrays
    "ix",  # paged.LogIndex: key tag -> index entry
    "free", "live",  # int64[zones]: rings of free zones and of written zones, oldest first
    "st",  # int64[...]: the scalars below
    "buf",  # uint8[zone capacity]: the open zone's image
    "evict",  # uint8[zone capacity]: the zone being evicted
    "scratch",  # uint8[largest record + 2 pages]: reads on syscall devices
    "bucket_mask",
])
# st; P_*: what the buffer holds that is not yet written
ZONE, WP, POS, FREE_AT, FREE_N, LIVE_AT, LIVE_N, SEQ, P_KV, P_META, P_OBJECTS, P_TOMBSTONES = range(12)
TOMBSTONE = 1


@njit(cache=True, inline="always")
def record_length(klen, vlen):
    return (HEADER + klen + vlen + 7) & ~7


@internal(inline=True)
def _page_end(pos):
    return (pos + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


@internal(inline=True)
def _next_record(data, pos, n):
    """(start, length) of the first record at or after `pos` in data[:n] (zeros up to a page boundary are
    padding), or (n, 0) when none is left. The length is the header's word: the caller checks it fits."""
    while pos + HEADER <= n:
        if get_uint(data, pos + 14, 2) == MAGIC:
            return pos, record_length(np.int64(data[pos + 12]), get_uint(data, pos + 4, 4))
        pos = _page_end(pos + 1)
    return n, 0


@internal
def _record(P, loc):
    """(record bytes, pages read from flash) of index entry `loc`: a view of the buffer for the open zone."""
    F = P.dev
    addr = (loc >> _LEN_BITS) << 3
    n = (loc & ((1 << _LEN_BITS) - 1)) << 3
    z, off = addr // F.zone_cap, addr % F.zone_cap
    if z == P.st[ZONE]:
        return P.buf[off:off + n], 0
    return fl.read(F, z, off, n, P.scratch, True), (off + n - 1) // PAGE_SIZE - off // PAGE_SIZE + 1


@internal
def find(P, key):
    """(indexed, hit, buffer, value start, value length): a get that, when the index has no entry for the key
    (DRAM only), stops there and records nothing (a two-tier cache then asks its small tier)."""
    m = P.m
    tag = key_tag(key)
    b = np.int64(tag & np.uint64(P.bucket_mask))
    loc = ix_lookup(P.ix, b, tag)
    if loc < 0:
        return False, False, P.buf, 0, 0
    rec, pages = _record(P, loc)
    klen, vlen = np.int64(rec[12]), get_uint(rec, 4, 4)
    end = HEADER + klen + vlen
    if get_uint(rec, 14, 2) != MAGIC or end > rec.shape[0] or get_uint(rec, 0, 4) != crc32c(rec[4:end]):
        m.counters[mt.C_CORRUPT_PAGES] += 1  # damaged on flash: forget it rather than serve it
        ix_remove(P.ix, b, tag, loc)
        mt.record_get(m, False, pages, 0, PAGE_SIZE)
        return True, False, rec, 0, 0
    same = klen == key.shape[0]
    i = 0
    while same and i < klen:
        same = rec[HEADER + i] == key[i]
        i += 1
    expiry = get_uint(rec, 8, 4)
    hit = same and not 0 < expiry <= m.clock[0]
    if same and not hit:
        m.counters[mt.C_EXPIRED_MISSES] += 1
    mt.record_get(m, hit, pages, 0, PAGE_SIZE)
    return True, hit, rec, HEADER + klen, vlen if hit else 0


@internal
def get(P, key):
    indexed, hit, buf, start, n = find(P, key)
    if not indexed:
        mt.record_get(P.m, False, 0, 0, PAGE_SIZE)
    return hit, buf, start, n


@internal
def _append(P, key, value, expiry, flags):
    """Put a record in the buffer (sealing the zone first if it does not fit); returns its index entry."""
    st = P.st
    klen, vlen = key.shape[0], value.shape[0]
    n = record_length(klen, vlen)
    if st[POS] + n > P.buf.shape[0]:
        _seal(P)
    at = st[POS]
    r = P.buf
    put_uint(r, at + 4, vlen, 4)
    put_uint(r, at + 8, expiry, 4)
    r[at + 12] = klen
    r[at + 13] = flags
    put_uint(r, at + 14, MAGIC, 2)
    put_uint(r, at + 16, st[SEQ], 8)
    copy_bytes(r, at + HEADER, key, 0, klen)
    copy_bytes(r, at + HEADER + klen, value, 0, vlen)
    put_uint(r, at, crc32c(r[at + 4:at + HEADER + klen + vlen]), 4)
    st[SEQ] += 1
    st[POS] = at + n
    if flags & TOMBSTONE:
        st[P_TOMBSTONES] += n
    else:
        st[P_KV] += klen + vlen
        st[P_META] += n - klen - vlen
        st[P_OBJECTS] += 1
    addr = st[ZONE] * P.dev.zone_cap + at
    return (addr >> 3) << _LEN_BITS | n >> 3


@internal
def set_(P, key, value, expiry):
    m = P.m
    m.counters[mt.C_INSERTS] += 1
    m.counters[mt.C_INSERT_BYTES] += key.shape[0] + value.shape[0]
    loc = _append(P, key, value, expiry, 0)
    tag = key_tag(key)
    ix_insert(P.ix, np.int64(tag & np.uint64(P.bucket_mask)), tag, loc)
    return True


@internal
def unlink(P, key):
    """Drop the key's index entry, if any, with a tombstone record so recovery never brings it back."""
    tag = key_tag(key)
    if ix_remove(P.ix, np.int64(tag & np.uint64(P.bucket_mask)), tag, -1):
        P.m.counters[mt.C_TOMBSTONES] += 1
        _append(P, key, key[:0], 0, TOMBSTONE)


@internal
def delete(P, key):
    P.m.counters[mt.C_DELETES] += 1
    unlink(P, key)


@internal
def flush(P):
    """Write the buffered records up to the next page boundary (the rest of that page is padding)."""
    st = P.st
    end = _page_end(st[POS])
    if end > st[WP]:
        _write(P, end)
        st[POS] = end
    if st[POS] == P.buf.shape[0]:
        _seal(P)


@internal
def _write(P, end):
    """Append buf[WP:end] (whole pages) to the open zone, charging its bytes."""
    st, m = P.st, P.m
    n = end - st[WP]
    fl.append(P.dev, st[ZONE], P.buf, st[WP], n)
    w, c = m.writes, m.counters
    w[mt.W_USER] += st[P_KV]
    w[mt.W_OBJECT_HEADERS] += st[P_META]
    w[mt.W_TOMBSTONE] += st[P_TOMBSTONES]
    w[mt.W_PADDING] += n - st[P_KV] - st[P_META] - st[P_TOMBSTONES]
    c[mt.C_FLASHED_OBJECTS] += st[P_OBJECTS]
    c[mt.C_LOGICAL_BYTES] += st[P_KV]
    c[mt.C_LOGICAL_HEADER_BYTES] += st[P_META]
    st[P_KV] = 0
    st[P_META] = 0
    st[P_OBJECTS] = 0
    st[P_TOMBSTONES] = 0
    st[WP] = end


@internal
def _seal(P):
    """The open zone is done: write what is buffered, finish it (its tail is never written) and open the next."""
    st, F = P.st, P.dev
    end = _page_end(st[POS])
    if end > st[WP]:
        _write(P, end)
    if st[WP] < F.zone_cap:
        fl.finish(F, st[ZONE])
    ring_push(P.live, st, LIVE_AT, LIVE_N, st[ZONE])
    _open_next(P)


@internal
def _open_next(P):
    st = P.st
    if st[FREE_N] == 0:
        _evict_oldest(P)
    st[ZONE] = ring_pop(P.free, st, FREE_AT, FREE_N)
    st[WP] = 0
    st[POS] = 0
    P.buf[:] = 0


@internal
def _evict_oldest(P):
    """Read the oldest zone, unlink the records the index still points at, reset it."""
    st, F, c = P.st, P.dev, P.m.counters
    victim = ring_pop(P.live, st, LIVE_AT, LIVE_N)
    n = F.zone_cap if F.cond[victim] == fl.FULL else F.wp[victim]
    ev = P.evict
    if n:
        fl.read_into(F, victim, 0, ev[:n], False)
        c[mt.C_READ_LOG] += n
    pos, size = _next_record(ev, 0, n)
    while size and pos + size <= n:  # (a damaged length ends the walk: the rest is forgotten with the zone)
        tag = key_tag(ev[pos + HEADER:pos + HEADER + np.int64(ev[pos + 12])])
        loc = ((victim * F.zone_cap + pos) >> 3) << _LEN_BITS | size >> 3
        if ix_remove(P.ix, np.int64(tag & np.uint64(P.bucket_mask)), tag, loc):
            c[mt.C_EVICTED_OBJECTS] += 1
        pos, size = _next_record(ev, pos + size, n)
    fl.reset(F, victim)
    ring_push(P.free, st, FREE_AT, FREE_N, victim)


register_compiled(BlockState, get=get, set=set_, delete=delete, flush=flush)


# ---- recovery ----------------------------------------------------------------------------------------------------

@njit(cache=True)
def scan_zone(data, zone, zone_cap, seqs, tags, locs, kinds):
    """The records of one zone's bytes, in order, up to the first damaged one: (records, intact). Record i:
    seqs[i], tags[i] (the key's), locs[i] (its index entry), kinds[i] (its flags)."""
    n = data.shape[0]
    k = 0
    pos, size = _next_record(data, 0, n)
    while size:
        klen = np.int64(data[pos + 12])
        end = pos + HEADER + klen + get_uint(data, pos + 4, 4)
        if klen == 0 or pos + size > n or get_uint(data, pos, 4) != crc32c(data[pos + 4:end]):
            return k, False
        seqs[k] = get_uint(data, pos + 16, 8)
        tags[k] = key_tag(data[pos + HEADER:pos + HEADER + klen])
        locs[k] = ((zone * zone_cap + pos) >> 3) << _LEN_BITS | size >> 3
        kinds[k] = data[pos + 13]
        k += 1
        pos, size = _next_record(data, pos + size, n)
    return k, True


@njit(cache=True)
def _index_records(ix, mask, seqs, tags, locs, kinds, since):
    """Replay records (in sequence order) into the index: a record indexes its key, a tombstone unlinks it; records
    before `since` are not trusted (damage may have lost a later tombstone of theirs)."""
    for i in range(tags.shape[0]):
        b = np.int64(tags[i] & np.uint64(mask))
        if kinds[i] & TOMBSTONE or seqs[i] < since:
            ix_remove(ix, b, tags[i], -1)
        else:
            ix_insert(ix, b, tags[i], locs[i])


@njit(cache=True)
def _open_entry(arena, state):
    _open_next(ref_of(arena, state))


@register_engine("block")
class BlockEngine(Engine):
    """BlockCache-like large-object log on `zones` (default: every zone of the device)."""

    name = "block"

    def __init__(self, device, metrics=None, *, zones: list[int] | None = None, max_value_size: int | None = None,
                 expected_object_bytes: int = 32 << 10, bucket_load: float = 2.0, recover: bool = False):
        super().__init__(device, metrics)
        zones = list(range(device.num_zones)) if zones is None else [int(z) for z in zones]
        cap = device.zone_capacity
        if len(zones) < 2 or len(set(zones)) != len(zones) or not all(0 <= z < device.num_zones for z in zones):
            raise TierwiseError(f"block: needs at least 2 distinct zones of the device's {device.num_zones}, "
                                f"got {len(zones)}")
        largest = cap - HEADER - MAX_KEY - 8
        max_value_size = min(MAX_VALUE, largest) if max_value_size is None else max_value_size
        if not 0 < max_value_size <= largest:
            raise TierwiseError(f"block: max_value_size must be in 1..{largest} (a record fits a zone of "
                                f"{cap} B), got {max_value_size}")
        if expected_object_bytes < 1 or not 0.05 <= bucket_load <= 1024:
            raise TierwiseError("block: expected_object_bytes must be >= 1 and bucket_load in [0.05, 1024]")
        self.max_value_size = max_value_size
        self.zones = zones
        self.expected_object_bytes, self.bucket_load = expected_object_bytes, bucket_load
        found = self._scan(device, zones) if recover else []
        for z in zones:  # a new cache; only its own zones (a tier shares the device)
            if device.write_pointer(z) and z not in {f[1] for f in found}:
                device.reset(z)
        capacity = len(zones) * cap
        nb = 1 << max(4, int(np.ceil(np.log2(capacity / expected_object_bytes / bucket_load))))
        ix = new_log_index(nb, capacity // record_length(1, 0), max_loc=1 << 63)
        st = np.zeros(12, np.int64)
        free = np.array(zones, np.int64)
        st[ZONE] = free[0]
        st[FREE_AT], st[FREE_N] = 1 % len(zones), len(zones) - 1
        largest_record = record_length(MAX_KEY, max_value_size)
        self._ready(BlockState(device.flash, self.metrics.arrays, ix, free, np.zeros(len(zones), np.int64), st,
                               np.zeros(cap, np.uint8), np.zeros(cap, np.uint8),
                               np.zeros(largest_record + 2 * PAGE_SIZE, np.uint8), nb - 1))
        self.recovered = None
        if recover:
            self._rebuild(found)

    @staticmethod
    def _scan(device, zones):
        """(first seq, zone, bytes written, intact, records) of every zone holding records, oldest first."""
        found = []
        cap = device.zone_capacity
        for z in zones:
            n = device.write_pointer(z)
            if not n:
                continue
            data = np.empty(n, np.uint8)
            device.read_into(z, 0, data)
            most = n // record_length(1, 0) + 1
            seqs, tags, locs = np.empty(most, np.int64), np.empty(most, np.uint64), np.empty(most, np.int64)
            kinds = np.empty(most, np.uint8)
            k, intact = scan_zone(data, z, cap, seqs, tags, locs, kinds)
            if k:
                found.append((int(seqs[0]), z, n, intact, (seqs[:k].copy(), tags[:k].copy(), locs[:k].copy(),
                                                          kinds[:k].copy())))
            else:  # data, but not one readable record: where it stood in the log is unknown
                found.append((-1, z, n, False, None))
        return sorted(found, key=lambda f: f[0])

    def _rebuild(self, found) -> None:
        """Index the records found, oldest zone first; resume in the newest zone if it is intact and not full."""
        s, cap, dev = self.state, self.device.zone_capacity, self.device
        unplaced = [f for f in found if f[4] is None]
        for f in unplaced:
            dev.reset(f[1])
        found = [f for f in found if f[4] is not None]
        since = 0  # a damaged zone before the newest may have lost tombstones: forget everything older
        for i, f in enumerate(found[:-1]):
            if not f[3]:
                since = found[i + 1][0]
        if unplaced:  # it may have held the tombstone of any record: forget them all
            since = max((int(f[4][0][-1]) + 1 for f in found), default=0)
        for f in found:
            _index_records(s.ix, s.bucket_mask, *f[4], since)
        used = {f[1] for f in found}
        free = [z for z in self.zones if z not in used]
        st = s.st
        s.free[:len(free)] = free
        st[FREE_AT], st[FREE_N] = 0, len(free)
        st[SEQ] = max(int(f[4][0][-1]) for f in found) + 1 if found else 0
        resume = bool(found) and found[-1][3] and found[-1][2] < cap and dev.condition(found[-1][1]).name != "FULL"
        live = [f[1] for f in (found[:-1] if resume else found)]
        s.live[:len(live)] = live
        st[LIVE_AT], st[LIVE_N] = 0, len(live)
        for f in found:
            if f[1] in live and dev.condition(f[1]).name != "FULL":
                dev.finish(f[1])  # a damaged or earlier zone takes no more records
        if resume:  # the open zone's records are served from its image in the buffer
            z, n = found[-1][1], found[-1][2]
            dev.read_into(z, 0, s.buf[:n])
            st[ZONE], st[WP], st[POS] = z, n, n
        else:
            _open_entry(self.pinned.arena, s)
        self.recovered = {"zones": len(found), "objects": self.object_count(), "damaged_zones":
                          sum(not f[3] for f in found) + len(unplaced), "forgotten_before_seq": since}

    def value_limit(self, key_len: int) -> int:
        return self.max_value_size

    def dram_bytes(self) -> dict[str, int]:
        s = self.state
        return {"block_index": index_nbytes(s.ix), "buffer_block": s.buf.nbytes, "buffer_block_evict": s.evict.nbytes}

    def object_count(self) -> int:
        return int(self.state.ix.st[LIVE])

    def config(self) -> dict:
        return {"engine": self.name, "zones": len(self.zones), "max_value_size": self.max_value_size,
                "index_buckets": int(self.state.ix.head.shape[0]), "index_capacity": index_capacity(self.state.ix)}

