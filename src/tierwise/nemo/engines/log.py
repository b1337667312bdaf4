"""Log-structured FIFO flash cache, and the log tier that Kangaroo's KLog and FairyWREN's HLog reuse.

Objects are packed into 4 KB pages (the shared set-page format), pages are buffered in DRAM and appended
to a FIFO ring of zones; when no zone is free the oldest zone is read, its live objects are handed to the
owner (dropped by the plain Log engine, migrated to sets by Kangaroo/FairyWREN) and the zone is reset.
The DRAM index is a chained hash table held in flat numpy arrays, so its size is measured, not estimated.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import deque
from typing import Callable, NamedTuple

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo import layout
from tierwise.nemo.device import ZonedDevice
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.base import Engine
from tierwise.nemo.hashing import hash128
from tierwise.nemo.layout import PAGE_HEADER, PAGE_SIZE

# --- DRAM index: buckets of chained entries (tag = 64-bit key hash, loc = page id << 12 | byte position) ---
# Free entries are chained through `nxt` too (state[0] = first free entry, -1 = pool full), so an entry costs
# a tag, a location and one link.


@njit(cache=True)
def _ix_find(head, tags, nxt, bucket, tag):
    """The entry of `tag` in `bucket`, or -1."""
    e = head[bucket]
    while e >= 0:
        if tags[e] == tag:
            return e
        e = nxt[e]
    return -1


@njit(cache=True)
def _ix_insert(head, tags, locs, nxt, hits, state, bucket, tag, loc):
    """Insert or replace (clearing the entry's hit bit when `hits` is tracked); returns 1 (new), 0 (replaced)
    or -1 (pool full: caller grows it)."""
    e = _ix_find(head, tags, nxt, bucket, tag)
    if e >= 0:
        locs[e] = loc
        if hits.shape[0]:
            hits[e] = 0
        return 0
    e = state[0]
    if e < 0:
        return -1
    state[0] = nxt[e]
    tags[e] = tag
    locs[e] = loc
    if hits.shape[0]:
        hits[e] = 0
    nxt[e] = head[bucket]
    head[bucket] = e
    state[1] += 1
    return 1


@njit(cache=True)
def _ix_remove(head, tags, locs, nxt, state, bucket, tag, expect_loc):
    """Unlink tag from bucket (only if it points at expect_loc, unless expect_loc < 0)."""
    prev = -1
    e = head[bucket]
    while e >= 0:
        if tags[e] == tag:
            if expect_loc >= 0 and locs[e] != expect_loc:
                return False
            if prev < 0:
                head[bucket] = nxt[e]
            else:
                nxt[prev] = nxt[e]
            nxt[e] = state[0]
            state[0] = e
            state[1] -= 1
            return True
        prev = e
        e = nxt[e]
    return False


@njit(cache=True)
def _ix_bucket(head, tags, locs, nxt, bucket, out_tags, out_locs):
    n = 0
    e = head[bucket]
    while e >= 0 and n < out_tags.shape[0]:
        out_tags[n] = tags[e]
        out_locs[n] = locs[e]
        n += 1
        e = nxt[e]
    return n


class LogIndex:
    """key hash -> page id, bucketed (by hash for the Log engine, by set for KLog/HLog's per-set migration).
    Locations below `max_loc` are stored in 32 bits when they fit (devices up to 4 GiB). With `track_hits`, each
    entry also has a hit flag (Kangaroo's readmission), cleared whenever the tag is (re)inserted."""

    def __init__(self, num_buckets: int, capacity: int = 1024, max_loc: int = 1 << 63, track_hits: bool = False):
        self.head = np.full(num_buckets, -1, dtype=np.int32)
        self.tags = np.zeros(capacity, dtype=np.uint64)
        self.locs = np.zeros(capacity, dtype=np.uint32 if max_loc <= 1 << 32 else np.int64)
        self.nxt = self._free_chain(0, capacity, -1)
        self.hits = np.zeros(capacity if track_hits else 0, dtype=np.uint8)
        self.state = np.array([0, 0], dtype=np.int64)  # [first free entry, live entries]
        self._scratch = (np.zeros(256, dtype=np.uint64), np.zeros(256, dtype=np.int64))

    @staticmethod
    def _free_chain(first: int, end: int, then: int) -> np.ndarray:
        """Links of entries first..end-1 chained in order, the last one pointing at `then`."""
        chain = np.arange(first + 1, end + 1, dtype=np.int32)
        chain[-1] = then
        return chain

    def __len__(self) -> int:
        return int(self.state[1])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.head, self.tags, self.locs, self.nxt, self.hits))

    def lookup(self, bucket: int, tag: int) -> int:
        e = _ix_find(self.head, self.tags, self.nxt, bucket, np.uint64(tag))
        return int(self.locs[e]) if e >= 0 else -1

    def mark_hit(self, bucket: int, tag: int) -> None:
        if self.hits.shape[0]:
            e = _ix_find(self.head, self.tags, self.nxt, bucket, np.uint64(tag))
            if e >= 0:
                self.hits[e] = 1

    def was_hit(self, bucket: int, tag: int) -> bool:
        e = _ix_find(self.head, self.tags, self.nxt, bucket, np.uint64(tag))
        return e >= 0 and self.hits.shape[0] > 0 and bool(self.hits[e])

    def insert(self, bucket: int, tag: int, loc: int) -> bool:
        """True when the tag is new (not a replacement)."""
        r = _ix_insert(self.head, self.tags, self.locs, self.nxt, self.hits, self.state, bucket, np.uint64(tag), loc)
        if r < 0:
            self._grow()
            r = _ix_insert(self.head, self.tags, self.locs, self.nxt, self.hits, self.state, bucket, np.uint64(tag),
                           loc)
        return r == 1

    def remove(self, bucket: int, tag: int, expect_loc: int = -1) -> bool:
        return bool(_ix_remove(self.head, self.tags, self.locs, self.nxt, self.state, bucket, np.uint64(tag), expect_loc))

    def bucket(self, bucket: int) -> list[tuple[int, int]]:
        """All (tag, loc) entries of one bucket."""
        out_t, out_l = self._scratch
        n = _ix_bucket(self.head, self.tags, self.locs, self.nxt, bucket, out_t, out_l)
        while n == out_t.shape[0]:  # a long chain: retry with more room
            self._scratch = out_t, out_l = np.zeros(2 * n, dtype=np.uint64), np.zeros(2 * n, dtype=np.int64)
            n = _ix_bucket(self.head, self.tags, self.locs, self.nxt, bucket, out_t, out_l)
        return list(zip(out_t[:n].tolist(), out_l[:n].tolist()))

    def _grow(self) -> None:
        old = self.tags.shape[0]
        self.tags = np.concatenate([self.tags, np.zeros(old, dtype=self.tags.dtype)])
        self.locs = np.concatenate([self.locs, np.zeros(old, dtype=self.locs.dtype)])
        self.nxt = np.concatenate([self.nxt, self._free_chain(old, 2 * old, int(self.state[0]))])
        if self.hits.shape[0]:
            self.hits = np.concatenate([self.hits, np.zeros(old, dtype=np.uint8)])
        self.state[0] = old


# --- page I/O with the shared accounting ---------------------------------------------------------------


class PageIO:
    """Sealed 4 KB page writes/reads over zones, every byte attributed to a `Metrics` cause.

    On a `ZonedDevice` the zones are the device's. On a conventional `BlockDevice` (the FTL model) the address
    space is cut into `segment_bytes` segments that play the zones: appends are sequential writes at a write
    pointer kept here, a reset is a trim, and `write_at` overwrites a page in place (set-associative designs).

    A written page splits into: new user objects (key+value -> "user", their headers -> "object_headers"),
    objects copied from elsewhere (migration, GC, read-modify-write survivors -> "writeback"), unused bytes
    ("padding") and the page header ("page_headers"). Every flash page counts 4 KB, full or not.
    """

    def __init__(self, device, metrics, segment_bytes: int = 256 * 1024):
        if device.block_size != PAGE_SIZE:
            raise TierwiseError(f"these engines need a {PAGE_SIZE}-byte block device, got block_size={device.block_size}")
        self.dev, self.metrics = device, metrics
        self.zoned = isinstance(device, ZonedDevice)
        if self.zoned:
            self.num_zones, zone_bytes = device.num_zones, device.zone_capacity
        else:
            if segment_bytes <= 0 or segment_bytes % PAGE_SIZE:
                raise TierwiseError(f"segment size {segment_bytes} B must be a positive multiple of {PAGE_SIZE}")
            self.num_zones, zone_bytes = device.capacity_bytes // segment_bytes, segment_bytes
            self._wp = [0] * self.num_zones
        self.ppz = zone_bytes // PAGE_SIZE  # pages per zone
        self.seq = 0  # page writes, stamped into each page header
        self.get_reads = 0  # pages read on behalf of lookups (reported by the engine per get)

    def write(self, zone: int, pages: np.ndarray, new_kv: int | None = None, new_objects: int | None = None) -> int:
        """Append sealed pages to `zone`; returns the page index of the first one within the zone.

        `new_kv`/`new_objects` are the user objects reaching flash in them; by default every object without
        the write-back flag (right for log pages, where objects land once).
        """
        self._account(pages, new_kv, new_objects)
        if self.zoned:
            return self.dev.append(zone, pages) // PAGE_SIZE
        first = self._wp[zone]
        self.dev.write((zone * self.ppz + first) * PAGE_SIZE, pages)
        self._wp[zone] = first + pages.shape[0]
        return first

    def write_at(self, pid: int, page: np.ndarray, new_kv: int, new_objects: int) -> None:
        """Overwrite page `pid` (zone * ppz + page) in place: conventional devices only."""
        self._account(page[None, :], new_kv, new_objects)
        self.dev.write(pid * PAGE_SIZE, page)

    def _account(self, pages: np.ndarray, new_kv: int | None, new_objects: int | None) -> None:
        if new_kv is None:
            tally = layout.pages_tally(pages)
            new_kv, new_objects = int(tally[:, 0].sum()), int(tally[:, 1].sum())
        layout.seal_pages(pages, self.seq, 1)
        self.seq += pages.shape[0]
        used = sum(layout.page_used(p) for p in pages)
        m, n = self.metrics, pages.shape[0]
        m.device_write("user", new_kv)
        m.device_write("object_headers", new_objects * layout.OBJ_HEADER)
        m.device_write("writeback", used - new_kv - new_objects * layout.OBJ_HEADER)
        m.device_write("padding", n * layout.PAYLOAD - used)
        m.device_write("page_headers", n * layout.PAGE_HEADER)
        if new_objects:
            m.flashed_user(new_objects, new_kv, new_objects * layout.OBJ_HEADER)

    def read(self, zone: int, page: int, n: int, cause: str) -> np.ndarray:
        """`n` pages from page `page` of `zone`; a page failing its checksum reads as empty (a cache miss)."""
        if self.zoned:
            raw = self.dev.read(zone, page * PAGE_SIZE, n * PAGE_SIZE)
        else:
            raw = self.dev.read((zone * self.ppz + page) * PAGE_SIZE, n * PAGE_SIZE)
        data = np.frombuffer(raw, np.uint8).reshape(n, PAGE_SIZE)
        if cause == "get":
            self.get_reads += n
        else:
            self.metrics.device_read(cause, n * PAGE_SIZE)
        bad = [i for i in range(n) if not layout.page_crc_ok(data[i])]
        if bad:
            data = data.copy()
            data[bad] = 0
            self.metrics.count("corrupt_pages", len(bad))
        return data

    def reset(self, zone: int) -> None:
        if self.zoned:
            self.dev.reset(zone)
        else:
            self.dev.trim(zone * self.ppz * PAGE_SIZE, self.ppz * PAGE_SIZE)
            self._wp[zone] = 0

    def trim(self, pid: int) -> None:
        """Drop one in-place page (conventional devices: the FTL stops copying it)."""
        self.dev.trim(pid * PAGE_SIZE, PAGE_SIZE)


class PagedEngine(Engine):
    """What the page-based baselines share around their tiers: the object limits, and the metric calls of
    get/set/delete (a get reports the pages it read). Subclasses set `self.io` and implement the three paths."""

    io: PageIO

    def get(self, key: bytes) -> bytes | None:
        before = self.io.get_reads
        value = self._lookup(key)
        n = self.io.get_reads - before
        self.metrics.get(value is not None, bytes_read=n * PAGE_SIZE, flash_reads=n)
        return value

    def set(self, key: bytes, value: bytes) -> bool:
        layout.check_object(key, value, self.max_value_size)
        self.metrics.user_insert(len(key) + len(value))
        self._insert(key, value)
        return True

    def delete(self, key: bytes) -> None:
        if not 1 <= len(key) <= layout.MAX_KEY:
            raise TierwiseError(f"key length {len(key)} outside 1..{layout.MAX_KEY} bytes")
        self.metrics.user_delete()
        self._remove(key)

    @abstractmethod
    def _lookup(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def _insert(self, key: bytes, value: bytes) -> None: ...

    @abstractmethod
    def _remove(self, key: bytes) -> None: ...


# --- the log tier ----------------------------------------------------------------------------------

POS_BITS = 12  # an index entry locates the object itself: page id << 12 | byte position in the page
POS_MASK = (1 << POS_BITS) - 1

_MASK64 = (1 << 64) - 1


def key_tag(key: bytes) -> int:
    """The 64-bit index tag of a key: the low half of the shared 128-bit hash (its residue is the set offset)."""
    return hash128(key) & _MASK64


def as_u8(b: bytes) -> np.ndarray:
    return np.frombuffer(b, np.uint8)


class LogObject(NamedTuple):
    """A live log object handed to the owner when its zone is evicted (or taken for migration)."""

    tag: int
    key: bytes
    value: bytes
    loc: int


class LogTier:
    """A FIFO log of 4 KB pages over `zones` of a zoned device, with a bucketed DRAM index.

    Pages fill in a DRAM segment buffer of `buffer_pages` pages that is appended in one write. `bucket_of(tag)`
    picks the index bucket; `on_evict(objects)` receives the still-live objects of an evicted zone (after the
    zone was reset) and may call `take_bucket` to pull other log objects of the same bucket; the objects it
    returns are appended to the log again (Kangaroo's readmission), once the eviction is complete. With
    `track_hits` the index remembers which entries were hit since they were written.
    """

    def __init__(
        self,
        engine: Engine,
        zones: list[int],
        num_buckets: int,
        bucket_of: Callable[[int], int],
        *,
        on_evict: Callable[[list[LogObject]], list[LogObject] | None] | None = None,
        buffer_pages: int = 16,
        cause: str = "log",
        track_hits: bool = False,
    ):
        if len(zones) < 2:
            raise TierwiseError(f"a log needs at least 2 zones, got {len(zones)}")
        self.io, self.cause = engine.io, cause
        self.ppz = engine.io.ppz
        self.zones = list(zones)
        self.index = LogIndex(num_buckets, max_loc=engine.io.num_zones * self.ppz << POS_BITS, track_hits=track_hits)
        self.bucket_of = bucket_of
        self.on_evict = on_evict
        self.seg = layout.new_pages(max(1, min(buffer_pages, self.ppz)))
        self.nbuf = 0  # seg[:nbuf] are closed pages, seg[nbuf] is the page being filled
        self.free: deque[int] = deque(zones)
        self.live: deque[int] = deque()  # filled zones, oldest first (the open zone is not in it)
        self.zone = self.free.popleft()  # zone being written
        self.wp = 0  # pages already on flash in the open zone
        self._evicting: dict[int, np.ndarray] = {}  # pages of the zone being evicted, while its owner migrates

    @property
    def capacity_pages(self) -> int:
        return len(self.zones) * self.ppz

    def __len__(self) -> int:
        return len(self.index)

    def _open_pid(self) -> int:
        """Page id (zone * ppz + page) of the page being filled."""
        return self.zone * self.ppz + self.wp + self.nbuf

    # --- writes -------------------------------------------------------------------------------------

    def insert(self, tag: int, key: bytes, value: bytes, flags: int = 0) -> None:
        """Append an object; an older copy anywhere in the log (even in the open page) just stops being indexed."""
        k, v = as_u8(key), as_u8(value)
        while True:  # closing a page may evict a zone whose readmitted objects then fill the next page
            page = self.seg[self.nbuf]
            pos = PAGE_HEADER + layout.page_used(page)
            if layout.page_append(page, k, v, flags):
                break
            self._close_page()
        self.index.insert(self.bucket_of(tag), tag, self._open_pid() << POS_BITS | pos)

    def remove(self, tag: int) -> bool:
        return self.index.remove(self.bucket_of(tag), tag)

    def _close_page(self) -> None:
        self.nbuf += 1
        if self.wp + self.nbuf == self.ppz:
            self._write_segment()
            self._advance_zone()
        elif self.nbuf == self.seg.shape[0]:
            self._write_segment()

    def _write_segment(self) -> None:
        if self.nbuf == 0:
            return
        pages = self.seg[: self.nbuf]
        self.io.write(self.zone, pages)
        self.wp += self.nbuf
        self.seg[:] = 0  # the open page is always empty here: segments are written right after a page closes
        self.nbuf = 0

    def flush(self) -> None:
        """Write the partly filled page too (its unused tail is padding and counts as written)."""
        if layout.page_count(self.seg[self.nbuf]):
            self._close_page()
        self._write_segment()

    def _advance_zone(self) -> None:
        self.live.append(self.zone)
        evicted: list[LogObject] = []
        if not self.free:
            evicted = self._evict_oldest()
        self.zone, self.wp = self.free.popleft(), 0
        readmit = self.on_evict(evicted) if evicted and self.on_evict is not None else None
        for o in evicted:  # whatever the owner did not take is dropped
            self.index.remove(self.bucket_of(o.tag), o.tag, o.loc)
        self._evicting.clear()  # the zone may be reused right away: its old pages must not shadow new ones
        for o in readmit or ():  # appended again, as copies (write amplification, not user bytes)
            self.insert(o.tag, o.key, o.value, layout.FLAG_WRITEBACK)

    def _evict_oldest(self) -> list[LogObject]:
        victim = self.live.popleft()
        pages = self.io.read(victim, 0, self.ppz, self.cause)
        out: list[LogObject] = []
        for p in range(self.ppz):
            pid = victim * self.ppz + p
            self._evicting[pid] = pages[p]
            for pos in layout.page_positions(pages[p]).tolist():
                o = layout.object_at(pages[p], pos)
                tag, loc = key_tag(o.key), pid << POS_BITS | pos
                if self.index.lookup(self.bucket_of(tag), tag) == loc:
                    out.append(LogObject(tag, o.key, o.value, loc))
        self.io.reset(victim)
        self.free.append(victim)
        return out

    # --- reads --------------------------------------------------------------------------------------

    def _page(self, pid: int, cause: str) -> np.ndarray:
        if pid in self._evicting:
            return self._evicting[pid]
        z, p = divmod(pid, self.ppz)
        if z == self.zone and p >= self.wp:  # still in the DRAM buffer
            return self.seg[p - self.wp]
        return self.io.read(z, p, 1, cause)[0]

    def lookup(self, tag: int, key: bytes) -> bytes | None:
        loc = self.index.lookup(self.bucket_of(tag), tag)
        if loc < 0:
            return None
        o = layout.object_at(self._page(loc >> POS_BITS, "get"), loc & POS_MASK)
        if o.key != key:
            return None  # a different key with the same 64-bit tag: a miss
        self.index.mark_hit(self.bucket_of(tag), tag)
        return o.value

    def take_bucket(self, bucket: int) -> list[LogObject]:
        """Remove and return every log object of one bucket (reads each page once)."""
        out: list[LogObject] = []
        pages: dict[int, np.ndarray] = {}
        for tag, loc in self.index.bucket(bucket):
            pid = loc >> POS_BITS
            if pid not in pages:
                pages[pid] = self._page(pid, self.cause)
            o = layout.object_at(pages[pid], loc & POS_MASK)
            out.append(LogObject(tag, o.key, o.value, loc))
            self.index.remove(bucket, tag, loc)
        return out

    def dram_bytes(self) -> dict[str, int]:
        return {f"{self.cause}_index": self.index.nbytes, f"buffer_{self.cause}": self.seg.nbytes}


# --- the Log engine --------------------------------------------------------------------------------


@register_engine("log")
class LogEngine(PagedEngine):
    """Log-structured FIFO cache (CacheLib BlockCache-like): each object appended once, an exact DRAM index,
    FIFO eviction a zone at a time. Low write amplification, but > 100 index bits per object."""

    name = "log"

    def __init__(self, device, metrics=None, *, buffer_pages: int = 16, bucket_load: float = 2.0,
                 segment_kb: int = 256):
        super().__init__(device, metrics)
        self.io = PageIO(device, self.metrics, segment_kb * 1024)
        self.buffer_pages, self.bucket_load = buffer_pages, bucket_load
        zones = list(range(self.io.num_zones))
        # one bucket per ~bucket_load objects, assuming ~16 objects per page (the chains grow if objects are smaller)
        pages = len(zones) * self.io.ppz
        nb = 1 << max(4, int(np.ceil(np.log2(pages * 16 / bucket_load))))
        self.log = LogTier(self, zones, nb, lambda t: t & (nb - 1), buffer_pages=buffer_pages)

    def _lookup(self, key: bytes) -> bytes | None:
        return self.log.lookup(key_tag(key), key)

    def _insert(self, key: bytes, value: bytes) -> None:
        self.log.insert(key_tag(key), key, value)

    def _remove(self, key: bytes) -> None:
        self.log.remove(key_tag(key))

    def flush(self) -> None:
        self.log.flush()

    def dram_bytes(self) -> dict[str, int]:
        return self.log.dram_bytes()

    def object_count(self) -> int:
        return len(self.log)

    def config(self) -> dict:
        return {"engine": self.name, "zones": self.io.num_zones, "buffer_pages": self.buffer_pages,
                "index_buckets": int(self.log.index.head.shape[0])}
