"""Set-associative flash cache (CacheLib BigHash / SOC), and the set tier Kangaroo's KSet and FairyWREN's HSet reuse.

Every key maps to one 4 KB set (the shared page format); adding an object is a read-modify-write of the whole
set. On a zoned device a rewritten set is appended to the open set zone and its old version goes stale; when
free zones run out, zone GC copies the still-valid sets of a victim zone (or lets the owner merge into them, as
FairyWREN's active migration does) and resets it. Over-provisioning (OP) = the share of pages not holding a set.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo import layout
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.base import Engine
from tierwise.nemo.engines.log import PagedEngine, PageIO, as_u8
from tierwise.nemo.hashing import bloom_positions, set_offset
from tierwise.nemo.index.bloom import BloomArray, FilterParams, filter_add
from tierwise.nemo.layout import PAGE_HEADER

# RRIParoo (Kangaroo): a 3-bit re-reference prediction per object, kept on flash in the unused top bits of the
# object's flags byte; 0 = reused soon, RRIP_MAX = evict first. New objects enter at RRIP_MAX - 1 ("long").
RRIP_SHIFT = 5
RRIP_MAX = 7
RRIP_NEW = RRIP_MAX - 1
# DRAM hit bits per set: one per object slot for the first 16 objects, a uint16 per set (Kangaroo's RripBitVector
# tracks 16 objects per bucket; a 4 KB set holds ~16 objects of the ~250 B twitter-merged size)
HIT_SLOTS = 16


@njit(cache=True)
def _key_seeds(buf, lo, hi):
    """Bloom seeds (h1, h2) of the key bytes buf[lo:hi]: FNV-1a then the murmur3 finaliser. Computed in numba so
    a set's filter can be rebuilt from its page alone on every rewrite, as BigHash does."""
    h = np.uint64(0xCBF29CE484222325)
    for i in range(lo, hi):
        h = (h ^ np.uint64(buf[i])) * np.uint64(0x100000001B3)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return np.int64(h & np.uint64(0xFFFFFFFF)), np.int64((h >> np.uint64(32)) | np.uint64(1))


@njit(cache=True)
def key_positions(key, k, m_bits):
    h1, h2 = _key_seeds(key, 0, key.shape[0])
    return bloom_positions(h1, h2, k, m_bits)


@njit(cache=True)
def rebuild_filter(page, row, k, m_bits) -> int:
    """Refill one set's Bloom filter from the keys in its page; returns the object count."""
    row[:] = 0
    positions = layout.page_positions(page)
    for pos in positions:
        start = pos + layout.OBJ_HEADER
        h1, h2 = _key_seeds(page, start, start + np.int64(page[pos]))
        filter_add(row, 0, bloom_positions(h1, h2, k, m_bits))
    return positions.shape[0]


@njit(cache=True)
def _rrip(page, pos):
    return np.int64(page[pos + 1]) >> RRIP_SHIFT


@njit(cache=True)
def _set_rrip(page, pos, v):
    page[pos + 1] = (page[pos + 1] & ((1 << RRIP_SHIFT) - 1)) | (v << RRIP_SHIFT)


@njit(cache=True)
def _evict_one(page, rrip) -> int:
    """Remove one object: the oldest (FIFO), or the oldest with the highest RRIP after ageing (RRIParoo).
    Returns its key+value bytes."""
    pos = PAGE_HEADER
    if rrip:
        positions = layout.page_positions(page)
        top = -1
        for p in positions:
            top = max(top, _rrip(page, p))
        if top < RRIP_MAX:  # age everyone until someone is at the distant end
            for p in positions:
                _set_rrip(page, p, _rrip(page, p) + RRIP_MAX - top)
        for p in positions:
            if _rrip(page, p) == RRIP_MAX:
                pos = p
                break
    size = layout.obj_size_at(page, pos) - layout.OBJ_HEADER
    layout.page_remove(page, pos)
    return size


@njit(cache=True)
def set_put(page, key, value, flags, rrip, evicted) -> bool:
    """Insert into a set page, replacing an older copy and evicting until it fits; evicted[0:2] += objects, bytes.
    False if the object cannot fit even in an empty page."""
    pos = layout.page_find(page, key)
    if pos >= 0:
        layout.page_remove(page, pos)
    while not layout.page_append(page, key, value, flags):
        if layout.page_count(page) == 0:
            return False
        evicted[1] += _evict_one(page, rrip)
        evicted[0] += 1
    return True


@njit(cache=True)
def promote_hits(page, hits) -> None:
    """RRIParoo: objects hit since the set was last written move to the near end (RRIP 0)."""
    positions = layout.page_positions(page)
    for i in range(min(positions.shape[0], HIT_SLOTS)):
        if (np.int64(hits) >> i) & 1:
            _set_rrip(page, positions[i], 0)


class SetTier:
    """`num_sets` 4 KB sets written out of place over `zones`, with per-set Bloom filters in DRAM.

    `op` is the over-provisioned share of the pages. `victim` is the GC policy ("greedy": fewest valid sets;
    "fifo": oldest zone). `gc_merge(j, page) -> added bytes` may add objects to a set that GC is relocating
    (FairyWREN's active migration); without it GC copies the page as is. `rrip=True` selects RRIParoo eviction,
    else FIFO. The fill reported per set write is the share of the page that is newly added data (Eq. 3).
    """

    def __init__(
        self,
        engine: Engine,
        zones: list[int],
        *,
        op: float,
        rrip: bool = False,
        victim: str = "greedy",
        gc_merge: Callable[[int, np.ndarray], int] | None = None,
        bloom_fp: float = 0.01,
        objects_per_set: float = 16.0,
    ):
        if victim not in ("greedy", "fifo"):
            raise TierwiseError(f"unknown GC victim policy {victim!r}: use 'greedy' or 'fifo'")
        if not 0 <= op < 1:
            raise TierwiseError(f"set over-provisioning must be in [0, 1), got {op}")
        self.io, self.metrics = engine.io, engine.metrics
        self.ppz = engine.io.ppz
        self.phys_pages = phys = len(zones) * self.ppz
        # on a conventional device sets live at fixed addresses and the FTL does the GC (its OP, its DLWA)
        self.in_place = not engine.io.zoned
        if self.in_place:
            op = 0.0
            if zones != list(range(zones[0], zones[0] + len(zones))):
                raise TierwiseError("in-place sets need a contiguous range of segments")
        self.num_sets = int(phys * (1 - op))
        self.base = zones[0] * self.ppz  # page id of set 0 when in place
        if not self.in_place and (phys - self.num_sets < 2 * self.ppz or self.num_sets < 1):
            raise TierwiseError(
                f"set OP {op} leaves {phys - self.num_sets} spare pages over {len(zones)} zones of {self.ppz} pages; "
                f"zone GC needs at least 2 zones' worth ({2 * self.ppz}): raise the OP or use smaller zones")
        self.op, self.rrip, self.victim, self.gc_merge = op, rrip, victim, gc_merge
        # set -> page id (zone * ppz + page), -1 = empty. No reverse map: GC finds a victim zone's valid sets as
        # those whose location points into it (FairyWREN reads each page's set id from flash for the same answer).
        self.loc = np.full(self.num_sets, -1, np.int32)
        self.valid = np.zeros(engine.io.num_zones, np.int64)  # valid sets per zone
        self.free: deque[int] = deque(zones)
        self.closed: deque[int] = deque()  # full zones, oldest first
        self.zone, self.wp = self.free.popleft(), 0
        self.bloom = BloomArray(self.num_sets, FilterParams.for_objects(objects_per_set, bloom_fp))
        self.hits = np.zeros(self.num_sets, np.uint16) if rrip else None
        self._evicted = np.zeros(2, np.int64)  # objects, key+value bytes pushed out of sets
        self._fills: list[float] = []
        self.counts = np.zeros(self.num_sets, np.int32)  # objects per set, for object_count (reporting only)
        self.objects = 0

    # --- lookups ------------------------------------------------------------------------------------

    def hash(self, key: bytes) -> tuple[int, np.ndarray]:
        """Set offset (the shared key hash) and Bloom positions of a key."""
        p = self.bloom.params
        return set_offset(key, self.num_sets), key_positions(as_u8(key), p.k, p.m_bits)

    def lookup(self, j: int, positions: np.ndarray, key: bytes) -> bytes | None:
        if self.loc[j] < 0 or not self.bloom.contains(j, positions):
            return None
        page = self.read(j, "get")
        pos = layout.page_find(page, as_u8(key))
        if pos < 0:
            return None
        if self.hits is not None:
            slot = int(np.searchsorted(layout.page_positions(page), pos))
            if slot < HIT_SLOTS:
                self.hits[j] |= 1 << slot
        return layout.object_at(page, pos).value

    def read(self, j: int, cause: str) -> np.ndarray:
        """Set j's page (a writable copy; an empty page if the set was never written)."""
        pid = int(self.loc[j])
        if pid < 0:
            return layout.new_pages(1)[0]
        z, p = divmod(pid, self.ppz)
        return self.io.read(z, p, 1, cause)[0].copy()

    # --- updates ------------------------------------------------------------------------------------

    def put(self, page: np.ndarray, key: bytes, value: bytes) -> int:
        """Insert into a page read with `read`, evicting as the policy says (new objects enter at RRIP long);
        returns the bytes added (object with header)."""
        flags = RRIP_NEW << RRIP_SHIFT if self.rrip else 0
        set_put(page, as_u8(key), as_u8(value), flags, self.rrip, self._evicted)
        return layout.object_size(len(key), len(value))

    def merge(self, page: np.ndarray, objects) -> int:
        """Put several (key, value, ...) objects into a page, oldest first; returns the bytes added."""
        return sum(self.put(page, o[1], o[2]) for o in objects)

    def begin_update(self, j: int, cause: str) -> np.ndarray:
        """Read set j for a read-modify-write; hit objects are promoted before anything is evicted."""
        page = self.read(j, cause)
        if self.hits is not None and self.hits[j]:
            promote_hits(page, self.hits[j])
        return page

    def remove(self, j: int, positions: np.ndarray, key: bytes) -> bool:
        """Delete a key from its set (a read-modify-write when the Bloom filter says it may be there)."""
        if self.loc[j] < 0 or not self.bloom.contains(j, positions):
            return False
        page = self.begin_update(j, "delete")
        pos = layout.page_find(page, as_u8(key))
        if pos < 0:
            return False
        layout.page_remove(page, pos)
        self.write(j, page, 0, 0, 0)
        return True

    def write(self, j: int, page: np.ndarray, added: int, new_kv: int = 0, new_objects: int = 0) -> None:
        """Write set j out of place. `added` = bytes of objects added by this write; `new_kv`/`new_objects` =
        the user objects among them reaching flash for the first time (migrated ones were already counted)."""
        self._rebuild_filter(j, page)
        if self.in_place:
            pid = self.base + j
            if layout.page_count(page):
                self.io.write_at(pid, page, new_kv, new_objects)
                self.loc[j] = pid
                self._record_fill(added)
            elif self.loc[j] >= 0:
                self.io.trim(pid)
                self.loc[j] = -1
            return
        self._invalidate(j)
        if layout.page_count(page) == 0:  # an empty set needs no page: its old version is simply stale
            return
        self._room()
        self._append(j, page, added, new_kv, new_objects)

    def _append(self, j: int, page: np.ndarray, added: int, new_kv: int, new_objects: int) -> None:
        p = self.io.write(self.zone, page[None, :], new_kv, new_objects)
        pid = self.zone * self.ppz + p
        self.loc[j] = pid
        self.valid[self.zone] += 1
        self.wp += 1
        self._record_fill(added)

    def _record_fill(self, added: int) -> None:
        self._fills.append(added / layout.PAYLOAD)
        if len(self._fills) >= 1024:
            self.report_fills()

    def report_fills(self) -> None:
        """Hand the fill fraction of the set pages written since the last call to the metrics, as one batch."""
        if self._fills:
            self.metrics.flushed_sets(np.array(self._fills))
            self._fills.clear()

    def _invalidate(self, j: int) -> None:
        pid = int(self.loc[j])
        if pid >= 0:
            self.valid[pid // self.ppz] -= 1
            self.loc[j] = -1

    def _rebuild_filter(self, j: int, page: np.ndarray) -> None:
        n = rebuild_filter(page, self.bloom.bits[j], self.bloom.params.k, self.bloom.params.m_bits)
        self.objects += n - int(self.counts[j])
        self.counts[j] = n
        if self.hits is not None:
            self.hits[j] = 0

    # --- zone GC ------------------------------------------------------------------------------------

    def _room(self) -> None:
        """Make sure the open zone has a free page, collecting a victim zone whenever the last free zone is taken."""
        while self.wp == self.ppz:
            self.closed.append(self.zone)
            self.zone, self.wp = self.free.popleft(), 0
            if not self.free:  # keep one zone in reserve: GC copies into the zone just opened
                self._collect()

    def _collect(self) -> None:
        if self.victim == "fifo":
            victim = self.closed.popleft()
        else:
            victim = min(self.closed, key=lambda z: self.valid[z])
            self.closed.remove(victim)
        self.metrics.count("gc_zones")
        base = victim * self.ppz
        in_victim = np.flatnonzero((self.loc >= base) & (self.loc < base + self.ppz))
        live = sorted((int(self.loc[j]) - base, int(j)) for j in in_victim)
        if live:
            pages = self.io.read(victim, 0, self.ppz, "gc")
            for p, j in live:
                page = pages[p].copy()
                if self.hits is not None and self.hits[j]:
                    promote_hits(page, self.hits[j])
                added = self.gc_merge(j, page) if self.gc_merge else 0
                self._invalidate(j)
                if self.gc_merge or self.hits is not None:  # a plain copy keeps its filter
                    self._rebuild_filter(j, page)
                if layout.page_count(page):
                    self._append(j, page, added, 0, 0)
            self.metrics.count("gc_set_copies", len(live))
        self.io.reset(victim)
        self.free.append(victim)

    # --- reporting ----------------------------------------------------------------------------------

    @property
    def evicted(self) -> tuple[int, int]:
        return int(self._evicted[0]), int(self._evicted[1])

    def object_count(self) -> int:
        return self.objects

    def dram_bytes(self, name: str) -> dict[str, int]:
        out = {f"{name}_bloom": self.bloom.nbytes}
        if not self.in_place:  # in place, a set's address is its number: no map
            out[f"{name}_location_map"] = self.loc.nbytes
        if self.hits is not None:
            out[f"{name}_hit_bits"] = self.hits.nbytes
        return out


@register_engine("set")
class SetEngine(PagedEngine):
    """BigHash/SOC: every insert reads, modifies and rewrites the key's 4 KB set (FIFO within the set);
    per-set Bloom filters in DRAM spare flash reads for absent keys. ALWA ~ 4096 / object size x zone GC."""

    name = "set"

    def __init__(self, device, metrics=None, *, op: float = 0.5, victim: str = "greedy", bloom_fp: float = 0.01,
                 objects_per_set: float = 16.0, segment_kb: int = 256):
        super().__init__(device, metrics)
        self.io = PageIO(device, self.metrics, segment_kb * 1024)
        self.sets = SetTier(self, list(range(self.io.num_zones)), op=op, victim=victim, bloom_fp=bloom_fp,
                            objects_per_set=objects_per_set)

    def _lookup(self, key: bytes) -> bytes | None:
        return self.sets.lookup(*self.sets.hash(key), key)

    def _insert(self, key: bytes, value: bytes) -> None:
        j, _ = self.sets.hash(key)
        page = self.sets.begin_update(j, "rmw")
        added = self.sets.put(page, key, value)
        self.sets.write(j, page, added, len(key) + len(value), 1)

    def _remove(self, key: bytes) -> None:
        self.sets.remove(*self.sets.hash(key), key)

    def flush(self) -> None:
        """Nothing is buffered (every insert is already on flash); only pending fill statistics are reported."""
        self.sets.report_fills()

    def dram_bytes(self) -> dict[str, int]:
        return self.sets.dram_bytes("set")

    def object_count(self) -> int:
        return self.sets.object_count()

    def config(self) -> dict:
        return {"engine": self.name, "sets": self.sets.num_sets, "op": self.sets.op, "victim": self.sets.victim,
                "bloom_bits": self.sets.bloom.params.m_bits, "bloom_k": self.sets.bloom.params.k}
