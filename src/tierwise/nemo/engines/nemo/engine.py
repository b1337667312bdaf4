"""The Nemo engine (nemo.md §3, §8.1): SetGroups hashed over the whole key space, written whole to a FIFO ring of
zones, found again through the PBFG index.

Correctness rules that make "a deleted or overwritten key is never served again" hold:
1. Lookups go newest first: buffers B[0..M-1], then candidate SGs by descending sequence number; the first copy or
   tombstone found decides.
2. `set` and `delete` drop every buffered copy first, so a buffer holds at most one record per key.
3. `delete` leaves a tombstone in the buffers whenever any live SG's filter may hold the key; a tombstone is never
   sacrificed by the delayed flush and never written back; it dies with its own SG, after every older copy.
4. A buffered object that may shadow an older flash copy (FLAG_SHADOWS) becomes a tombstone, not nothing, when the
   delayed flush sacrifices it.
5. Write-back re-inserts an object of the evicted SG only if no buffer and no younger live SG holds any record of
   its key (filters checked, positives confirmed by reading the set).
6. Set pages carry a crc32c; a lookup that meets a corrupt page stops with a miss rather than risk an older copy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.base import Engine
from tierwise.nemo.engines.nemo import core
from tierwise.nemo.engines.nemo.core import NEXT_SEQ, OLDEST, WAITS
from tierwise.nemo.engines.nemo.config import SG_META_PAGES, NemoConfig, plan_geometry
from tierwise.nemo.engines.nemo.format import SGHeader, SGTrailer, encode_sg_header, encode_sg_trailer, sets_crc
from tierwise.nemo.engines.nemo.hotness import SLOTS, HotnessTracker
from tierwise.nemo.engines.nemo.pbfg import PBFG
from tierwise.nemo.engines.nemo.setgroup import SetGroupBuffers, sacrifice, set_filters
from tierwise.nemo.hashing import bloom_positions_into, key_hash, key_hash_into
from tierwise.nemo.index.bloom import filter_add
from tierwise.nemo.layout import (FLAG_SHADOWS, FLAG_TOMBSTONE, FLAG_WRITEBACK, OBJ_HEADER, PAGE_HEADER,
                                  PAGE_SIZE, PAYLOAD, TALLY_COLUMNS, check_object, obj_flags_at, obj_size_at,
                                  obj_value_span, object_at, page_copy_object, page_crc_ok, page_find, page_free,
                                  page_index_of, page_positions, page_rotate_to_front, page_used, pages_tally,
                                  seal_pages)
from tierwise.nemo.metrics import Metrics
from tierwise.nemo.native import HAVE_XXH3, state_field

_T = {name: i for i, name in enumerate(TALLY_COLUMNS)}


def _config(options: dict[str, Any]) -> NemoConfig:
    unknown = sorted(set(options) - set(NemoConfig.__dataclass_fields__))
    if unknown:
        raise TierwiseError(f"bad option for engine 'nemo': {', '.join(unknown)} (known: "
                            f"{', '.join(NemoConfig.__dataclass_fields__)})")
    return NemoConfig(**options)


def _value(page: np.ndarray, pos: int) -> bytes | None:
    """The value of the record at `pos`, or None for a tombstone."""
    start, n, flags = obj_value_span(page, pos)
    return None if flags & FLAG_TOMBSTONE else page[start:start + n].tobytes()


def _key_array(key: bytes) -> np.ndarray:
    return np.frombuffer(key, np.uint8)


@register_engine("nemo")
class NemoEngine(Engine):
    name = "nemo"

    def __init__(self, device: Any, metrics: Metrics | None = None, *, recover: bool = False, **options: Any):
        super().__init__(device, metrics)
        self.cfg = options.pop("config", None) or _config(options)
        self.geo = plan_geometry(self.cfg, device.num_zones, device.zone_capacity)
        geo, cfg = self.geo, self.cfg
        self.S = geo.sets
        self.N = geo.data_slots
        self.filter = geo.filter
        self.p_th = cfg.p_threshold(self.S)
        self.max_value_size = cfg.max_value_size
        self.buffers = SetGroupBuffers(cfg.buffered_sgs, self.S, self.filter.nbytes, cfg.buffer_fallback)
        self.pbfg = PBFG(geo, cfg.pbfg_cache_offsets(geo), device, cfg.hash_seed)
        self.hotness = HotnessTracker(self.N, self.S, cfg.hot_window, cfg.cooling)
        self.sg_objects = np.zeros(self.N, np.int64)  # objects (user + write-back) in each live SG slot
        self.st = np.zeros(3, np.int64)  # OLDEST, NEXT_SEQ, WAITS: shared with the compiled path (core.py)
        self._rng = np.random.default_rng(cfg.seed)
        self._page = np.empty(PAGE_SIZE, np.uint8)
        self._cmp_page = np.empty(PAGE_SIZE, np.uint8)
        # the compiled path (core.py) serves an in-memory device with count-mode flushes; tests switch it off to
        # check that both paths agree
        self.compiled = HAVE_XXH3 and cfg.flush_mode == "count" and hasattr(device, "array")
        self._cf = np.zeros(16, np.int64)
        self._cf[[core.S, core.N, core.G, core.L, core.R, core.RB, core.K, core.MBITS, core.ZPS, core.ZCAP,
                  core.P_TH, core.TRIES, core.WINDOW, core.WB_COLD, core.M]] = [
            self.S, self.N, geo.group_size, geo.live_groups, geo.rows_per_page, geo.row_bytes, self.filter.k,
            self.filter.m_bits, geo.zones_per_sg, device.zone_capacity, math.ceil(self.p_th), self.buffers.tries,
            self.hotness.window, int(cfg.write_back_cold), cfg.buffered_sgs]
        self._cf[core.SEED] = np.uint64(cfg.hash_seed).astype(np.int64)
        self._ctr = np.zeros(len(core.COUNTERS), np.int64)
        self._zone_reads = np.zeros(device.num_zones, np.int64)
        self._pos_scratch = np.zeros(self.filter.k, np.int64)
        self._seed = np.uint64(cfg.hash_seed)
        if recover:  # rebuild the cache the device holds (tierwise.nemo.engines.nemo.recovery)
            from tierwise.nemo.engines.nemo.recovery import recover as recover_from_flash

            self.recovery = recover_from_flash(self)
            return
        for z in range(device.num_zones):  # a new cache starts from empty zones
            if device.write_pointer(z):
                device.reset(z)

    oldest = state_field(OLDEST, "Oldest live SG on flash; live SGs are [oldest, next_seq).")
    next_seq = state_field(NEXT_SEQ, "Sequence number the next flushed SG gets.")
    waits = state_field(WAITS, "Failed inserts since the last flush (the delayed-flush counter c).")

    # ---- compiled path (core.py) ---------------------------------------------------------------------------------

    def core_state(self) -> tuple:
        """The state tuple `E` the compiled functions take: the engine's own arrays, in core.py's order."""
        b, p = self.buffers, self.pbfg
        return (self._cf, self.st, p.st, b.pages, b.filters, b.order, p.open_rows, p.flat_rows, p.row_group, p.slot_of,
                p.offset_of, p.last_use, p.log.loc, self.hotness.bits, self.device.array, self._zone_reads,
                self._ctr, self._pos_scratch)

    def compiled_replay(self, strict: bool):
        """The compiled lookaside replay loop (fastreplay.py) when this engine runs compiled, else None."""
        if not self.compiled:
            return None
        from tierwise.nemo.engines.nemo.fastreplay import CompiledReplay

        return CompiledReplay(self, strict)

    def fold_core_counters(self) -> None:
        """Move what the compiled path counted into the metrics and the device's read counters."""
        ctr = self._ctr
        for i in np.flatnonzero(ctr).tolist():
            if core.COUNTERS[i] != "device_read_ios":
                self.metrics.count(core.COUNTERS[i], int(ctr[i]))
        self.device.stats.add_reads(self._zone_reads, int(ctr[core.C_READ_IOS]))
        ctr[:] = 0
        self._zone_reads[:] = 0

    # ---- addressing ----------------------------------------------------------------------------------------------

    def _addr(self, seq: int, page: int) -> tuple[int, int]:
        """(zone, byte offset) of page `page` of SG `seq` (page 0 = header, 1..S = sets, S+1 = trailer)."""
        byte = page * PAGE_SIZE
        cap = self.device.zone_capacity
        return (seq % self.N) * self.geo.zones_per_sg + byte // cap, byte % cap

    def _read_set(self, seq: int, j: int, out: np.ndarray) -> bool:
        z, off = self._addr(seq, 1 + j)
        self.device.read_into(z, off, out)
        return page_crc_ok(out)

    def _hash(self, key: bytes, kb: np.ndarray) -> tuple[int, np.ndarray]:
        """Set offset and Bloom positions of a key (`kb`: the same bytes as an array)."""
        positions = np.empty(self.filter.k, np.int64)
        if HAVE_XXH3:  # one compiled call instead of two
            return int(key_hash_into(kb, self._seed, self.S, self.filter.m_bits, positions)), positions
        h = key_hash(key, self.S, self.cfg.hash_seed)
        bloom_positions_into(h.h1, h.h2, self.filter.m_bits, positions)
        return h.offset, positions

    # ---- API -----------------------------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        kb = _key_array(key)
        j, positions = self._hash(key, kb)
        found, value = self.buffers.value(j, kb, positions)
        if found:
            self.metrics.get(value is not None)
            return value
        cands, index_reads = self.pbfg.candidates(j, positions, self.oldest, self.next_seq)
        reads = 0
        value = None
        for seq in cands:
            reads += 1
            if not self._read_set(int(seq), j, self._page):
                self.metrics.count("corrupt_set_pages")
                break
            pos = page_find(self._page, kb)
            if pos < 0:
                continue  # a filter false positive
            value = _value(self._page, pos)
            if value is not None and self.hotness.tracked(int(seq), self.oldest):
                self.hotness.mark(int(seq), j, page_index_of(self._page, pos))
            break
        self.metrics.get(value is not None, (reads + index_reads) * PAGE_SIZE, reads, index_reads)
        return value

    def set(self, key: bytes, value: bytes) -> bool:
        check_object(key, value, self.cfg.max_value_size)
        self.metrics.user_insert(len(key) + len(value))
        kb = _key_array(key)
        j, positions = self._hash(key, kb)
        self.buffers.remove(j, kb, positions)
        # Known-absent from flash only if the filters in DRAM say so; otherwise assume an older copy may exist.
        cands, _ = self.pbfg.candidates(j, positions, self.oldest, self.next_seq, fetch=False)
        flags = FLAG_SHADOWS if cands is None or len(cands) else 0
        self._put(j, kb, _key_array(value), flags, positions)
        return True

    def delete(self, key: bytes) -> None:
        if not 1 <= len(key) <= 255:
            raise TierwiseError(f"key length {len(key)} outside 1..255 bytes")
        self.metrics.user_delete()
        kb = _key_array(key)
        j, positions = self._hash(key, kb)
        self.buffers.remove(j, kb, positions)
        cands, index_reads = self.pbfg.candidates(j, positions, self.oldest, self.next_seq)
        self.metrics.count("delete_index_reads", index_reads)
        if len(cands):
            self.metrics.count("tombstones")
            self._put(j, kb, np.zeros(0, np.uint8), FLAG_TOMBSTONE, positions)

    def flush(self) -> None:
        """Write every non-empty buffered SG (clean shutdown); partial SGs cost their padding in ALWA."""
        for _ in range(self.cfg.buffered_sgs):
            if self.buffers.pages[self.buffers.rear, :, 12:16].any():
                self._flush_sg()
            else:
                self.buffers.rotate()

    def object_count(self) -> int:
        return int(self.sg_objects.sum()) + self.buffers.objects()

    def dram_bytes(self) -> dict[str, int]:
        return {**self.pbfg.nbytes(), "hotness": self.hotness.nbytes, "sg_table": self.sg_objects.nbytes,
                **self.buffers.nbytes()}

    def config(self) -> dict[str, Any]:
        g = self.geo
        return {"engine": self.name, **self.cfg.as_dict(), "S": g.sets, "N": g.data_slots, "G": g.group_size,
                "zones_per_sg": g.zones_per_sg, "index_zones": len(g.index_zones), "rows_per_index_page":
                g.rows_per_page, "filter_m_bits": self.filter.m_bits, "filter_k": self.filter.k, "p_th": self.p_th,
                "pbfg_pages_per_fetch": g.live_groups, "pbfg_cached_offsets": int(self.pbfg.offset_of.size)}

    # ---- insert path ---------------------------------------------------------------------------------------------

    def _put(self, j: int, kb: np.ndarray, vb: np.ndarray, flags: int, positions: np.ndarray) -> None:
        if self.buffers.insert(j, kb, vb, flags, positions) >= 0:
            return
        self.waits += 1  # every candidate set is full: delay the flush (§3.3)
        if self._flush_due():
            self._flush_sg()
        else:
            row = self.buffers.last_tried
            lost, lost_bytes, ok = sacrifice(self.buffers.pages[row, j], OBJ_HEADER + kb.size + vb.size)
            self.metrics.dropped(lost, lost_bytes)
            if not ok:
                self._flush_sg()  # the set holds only tombstones: flushing is the only way to make room
        if self.buffers.insert(j, kb, vb, flags, positions) < 0:
            raise TierwiseError(f"object of {kb.size + vb.size} B does not fit an empty {PAYLOAD}-byte set")

    def _flush_due(self) -> bool:
        if self.cfg.flush_mode == "count":
            return self.waits >= self.p_th
        return bool(self._rng.random() < self.p_th)

    # ---- flush and eviction --------------------------------------------------------------------------------------

    def _flush_sg(self) -> None:
        if self.next_seq - self.oldest >= self.N:
            self._evict_oldest()
        seq = self.next_seq
        rear = self.buffers.rear
        pages = self.buffers.pages[rear]
        tally = pages_tally(pages)
        seal_pages(pages, seq, 0)
        cols = tally.sum(axis=0)
        slot = seq % self.N
        header = encode_sg_header(SGHeader(seq=seq, sets=self.S, slot=slot, zones_per_sg=self.geo.zones_per_sg,
                                           hash_seed=self.cfg.hash_seed, m_bits=self.filter.m_bits,
                                           k=self.filter.k, group_size=self.geo.group_size))
        trailer = encode_sg_trailer(SGTrailer(seq=seq, sets=self.S,
                                              objects=int(cols[_T["user_objects"]] + cols[_T["writeback_objects"]]),
                                              user_bytes=int(cols[_T["user_kv_bytes"]]), sets_crc=sets_crc(pages)))
        self._write_sg(slot, [np.frombuffer(header, np.uint8)[None, :], pages, np.frombuffer(trailer, np.uint8)[None, :]])
        m = self.metrics
        user, hdr = int(cols[_T["user_kv_bytes"]]), int(cols[_T["user_header_bytes"]])
        m.device_write("user", user)
        m.device_write("object_headers", hdr)
        m.device_write("writeback", int(cols[_T["writeback_bytes"]]))
        m.device_write("tombstone", int(cols[_T["tombstone_bytes"]]))
        m.device_write("padding", int(self.S * PAYLOAD - cols[_T["used_bytes"]]))
        m.device_write("page_headers", (self.S * (PAGE_SIZE - PAYLOAD)) + SG_META_PAGES * PAGE_SIZE)
        m.flashed_user(int(cols[_T["user_objects"]]), user, hdr)
        m.flushed_sets(tally[:, _T["used_bytes"]] / PAYLOAD)
        m.count("writeback_objects", int(cols[_T["writeback_objects"]]))
        self.sg_objects[slot] = int(cols[_T["user_objects"]] + cols[_T["writeback_objects"]])
        filters = self.buffers.filters[rear]
        set_filters(pages, filters, self.cfg.hash_seed, self.filter.k, self.filter.m_bits)
        index_bytes = self.pbfg.add_sg(seq, filters)
        if index_bytes:
            m.device_write("index", index_bytes)
        self.hotness.on_flush()
        self.buffers.rotate()
        self.next_seq += 1
        self.waits = 0

    def _write_sg(self, slot: int, parts: list[np.ndarray]) -> None:
        """Append header, sets and trailer pages sequentially over the SG's zones."""
        cap = self.device.zone_capacity
        z = slot * self.geo.zones_per_sg
        room = cap
        for part in parts:
            done = 0
            while done < part.shape[0]:
                if room == 0:
                    z += 1
                    room = cap
                n = min(part.shape[0] - done, room // PAGE_SIZE)
                self.device.append(z, part[done:done + n])
                room -= n * PAGE_SIZE
                done += n

    def _evict_oldest(self) -> None:
        v = self.oldest
        if self.cfg.write_back:
            self._write_back(v)
        first = (v % self.N) * self.geo.zones_per_sg
        for z in range(first, first + self.geo.zones_per_sg):
            if self.device.write_pointer(z):
                self.device.reset(z)
        self.sg_objects[v % self.N] = 0
        self.hotness.on_evict(v)
        self.pbfg.on_evict(v)
        self.oldest += 1
        self.metrics.count("sg_evictions")

    def _write_back(self, v: int) -> None:
        """Hotness-aware write-back (§3.4): for offsets whose PBFG is cached, re-insert the victim's hot objects,
        then the others while space remains, into the SG about to be flushed (B[M-1])."""
        if self.compiled:
            core.write_back(self.core_state(), v, self.pbfg.cached_offsets(), self.pbfg._out)
            self.fold_core_counters()
            return
        rear = self.buffers.rear
        dst_pages, dst_filters = self.buffers.pages[rear], self.buffers.filters[rear]
        tracked = self.hotness.tracked(v, v)
        page = self._page
        for j in self.pbfg.cached_offsets():
            j = int(j)
            if page_free(dst_pages[j]) < OBJ_HEADER + 2:
                continue
            if not self._read_set(v, j, page):
                self.metrics.count("corrupt_set_pages")
                continue
            self.metrics.device_read("writeback", PAGE_SIZE)
            positions = page_positions(page)
            hot = self.hotness.set_bits(v, j) if tracked else 0
            order = [i for i in range(len(positions)) if i < SLOTS and hot >> i & 1]
            if self.cfg.write_back_cold:
                order += [i for i in range(len(positions)) if not (i < SLOTS and hot >> i & 1)]
            first_new = PAGE_HEADER + page_used(dst_pages[j])
            for i in order:
                pos = int(positions[i])
                if obj_flags_at(page, pos) & FLAG_TOMBSTONE or obj_size_at(page, pos) > page_free(dst_pages[j]):
                    continue
                key = object_at(page, pos).key
                jj, bpos = self._hash(key, _key_array(key))
                if self._shadowed(key, j, bpos, v):
                    self.metrics.count("writeback_shadowed")
                    continue
                page_copy_object(dst_pages[j], page, pos, FLAG_WRITEBACK)
                filter_add(dst_filters[j], 0, bpos)
                self.metrics.count("writeback_hot" if i < SLOTS and hot >> i & 1 else "writeback_cold")
            page_rotate_to_front(dst_pages[j], first_new)

    def _shadowed(self, key: bytes, j: int, positions: np.ndarray, v: int) -> bool:
        """Does a buffer or an SG younger than `v` hold any record (copy or tombstone) of `key`?"""
        kb = _key_array(key)
        if self.buffers.find(j, kb, positions)[0] >= 0:
            return True
        cands, _ = self.pbfg.candidates(j, positions, v + 1, self.next_seq, fetch=False)
        if cands is None:
            return True
        for seq in cands:
            ok = self._read_set(int(seq), j, self._cmp_page)
            self.metrics.device_read("writeback_check", PAGE_SIZE)
            if not ok or page_find(self._cmp_page, kb) >= 0:
                return True
        return False
