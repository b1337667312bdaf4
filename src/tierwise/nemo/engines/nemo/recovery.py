"""Rebuild a Nemo engine from what is on flash (nemo.md §8.2), after a clean shutdown or a crash.

The rule that keeps recovery from ever serving a wrong value: the live SGs must be one unbroken run of sequence
numbers ending at the newest committed SG. An SG is committed when its header, all S set pages and its trailer are
on flash and agree (magic, checksums, sequence numbers, geometry, the trailer's crc of the set-page crcs).

1. Read every data slot: empty, committed, or damaged (torn by a crash, truncated, bytes flipped).
2. Walk down from the newest committed SG while each predecessor is committed: that run is the cache. Anything
   older than a break is dropped with the break: keeping it could resurrect a copy that the lost SG overwrote or
   deleted. Only a torn newest SG (a crash during its flush) is simply discarded. A set page whose own crc fails
   inside a committed SG is kept as a *bad page*: lookups that reach it miss, and stop there (engine rule 6).
3. Load the index blocks (header + row pages, every page checked) of the groups that cover live SGs. A missing or
   torn block of the newest complete group (a crash between the data flush and the index write) is rebuilt from
   the SGs and written; a missing older block cuts the run there, as in step 2.
4. Rebuild the open index group by re-reading the sets of the SGs flushed after the last index block and
   re-hashing their keys; a bad page gets an all-ones filter so every lookup of its set reaches it (and misses).
5. Zones outside the run are reset; the PBFG cache and the hotness bits start cold; the buffers start empty
   (objects buffered at a crash are lost: this is a cache).

If anything newer than the newest committed SG was committed once (an index block or an SG header says so), the
newest SGs themselves were damaged after the fact: nothing can be trusted to be the newest copy, and the cache
starts empty.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import crc32c
import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.nemo.engines.nemo.format import (decode_index_header, decode_sg_header, decode_sg_trailer,
                                               row_page_valid, sets_crc)
from tierwise.nemo.engines.nemo.pbfg import CUR, OPEN_GROUP, OPEN_MEMBERS, add_member, block_segments, record_block
from tierwise.nemo.engines.nemo.setgroup import set_filters
from tierwise.nemo.layout import PAGE_SIZE


@dataclass
class RecoveryReport:
    seconds: float = 0.0
    bytes_read: int = 0
    flash_bytes: int = 0
    live_sgs: int = 0
    oldest: int = 0
    next_seq: int = 0
    objects: int = 0
    empty_slots: int = 0
    torn_head: int = 0  # newest SG torn by a crash during its flush: discarded
    damaged_slots: list[str] = field(default_factory=list)  # "slot 3: seq 17 ..." with the reason
    dropped_committed: int = 0  # committed SGs dropped because an SG or index block newer than them is damaged
    bad_pages: int = 0  # set pages failing their crc inside kept SGs (their lookups miss)
    index_blocks_loaded: int = 0
    index_blocks_damaged: int = 0
    index_blocks_rebuilt: int = 0
    open_group_sgs: int = 0
    cleared: bool = False  # everything dropped (newest SGs damaged after commit)

    @property
    def seconds_per_gb(self) -> float:
        return self.seconds / (self.flash_bytes / 2**30) if self.flash_bytes else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "seconds_per_gb": self.seconds_per_gb}


@dataclass
class _Slot:
    seq: int = -1  # from the header, -1 if no readable header
    committed: bool = False
    objects: int = 0
    bad_pages: list[int] = field(default_factory=list)
    reason: str = ""


def recover(engine) -> RecoveryReport:
    """Fill a freshly constructed `NemoEngine` (zones not reset) with the cache its device holds."""
    t0 = time.perf_counter()
    dev = engine.device
    read0 = dev.stats.bytes_read
    rep = RecoveryReport(flash_bytes=dev.capacity_bytes)
    N, G = engine.N, engine.geo.group_size
    slots = [_read_slot(engine, s) for s in range(N)]
    rep.empty_slots = sum(1 for s in slots if s.seq < 0 and not s.reason)
    for i, s in enumerate(slots):
        if s.reason:
            rep.damaged_slots.append(f"slot {i}: {s.reason}")

    newest = max((s.seq for s in slots if s.committed), default=-1)
    oldest = newest + 1
    while oldest - 1 >= 0 and newest - (oldest - 1) < N:
        s = slots[(oldest - 1) % N]
        if not (s.committed and s.seq == oldest - 1):
            break
        oldest -= 1
    blocks, burned = _scan_index(engine, rep)
    head = slots[(newest + 1) % N] if newest + 1 >= 0 else None
    torn_head = head is not None and head.seq == newest + 1 and not head.committed and burned <= newest + 1
    burned = max([burned] + [s.seq for s in slots if s.seq > newest and not (torn_head and s is head)])
    if burned > newest:  # something newer than the newest committed SG was committed once: trust nothing
        rep.cleared = True
        newest = burned
        oldest = newest + 1
    rep.torn_head = int(torn_head)
    next_seq = newest + 1

    # Index blocks of the groups covering live SGs; an older missing block cuts the run.
    open_group = next_seq // G
    for g in range(open_group - 2, max(oldest // G, 0) - 1, -1):
        if g not in blocks:
            oldest = max(oldest, (g + 1) * G)
            break
    engine.oldest, engine.next_seq = oldest, next_seq
    for i, s in enumerate(slots):
        live = oldest <= s.seq < next_seq and s.committed and s.seq % N == i
        if live:
            engine.sg_objects[i] = s.objects
            rep.bad_pages += len(s.bad_pages)
        else:
            rep.dropped_committed += int(s.committed)
            _reset_slot(engine, i)
    _restore_index(engine, blocks, slots, rep)
    rep.live_sgs = next_seq - oldest
    rep.oldest, rep.next_seq = oldest, next_seq
    rep.objects = int(engine.sg_objects.sum())
    rep.bytes_read = dev.stats.bytes_read - read0
    rep.seconds = time.perf_counter() - t0
    engine.metrics.count("recoveries")
    return rep


# ---- data slots ----------------------------------------------------------------------------------------------------

def _slot_zones(engine, slot: int) -> range:
    zps = engine.geo.zones_per_sg
    return range(slot * zps, (slot + 1) * zps)


def _read_sg(engine, slot: int) -> np.ndarray | None:
    """All S+2 pages of the SG in `slot`, or None if its zones do not hold that many (torn or truncated)."""
    dev = engine.device
    pages = np.empty((engine.S + 2, PAGE_SIZE), np.uint8)
    flat = pages.reshape(-1)
    done = 0
    for z in _slot_zones(engine, slot):
        n = min(dev.write_pointer(z), flat.size - done)
        if n:
            dev.read_into(z, 0, flat[done:done + n])
        done += n
        if n < dev.zone_capacity:
            break
    return pages if done == flat.size else None


def _read_slot(engine, slot: int) -> _Slot:
    dev = engine.device
    first = _slot_zones(engine, slot)[0]
    out = _Slot()
    if dev.write_pointer(first) == 0:
        return out
    head = dev.read(first, 0, PAGE_SIZE)
    try:
        h = decode_sg_header(head)
    except TierwiseError as e:
        out.reason = f"unreadable SG header ({e})"
        return out
    out.seq = h.seq
    cfg, geo = engine.cfg, engine.geo
    expect = dict(sets=engine.S, zones_per_sg=geo.zones_per_sg, hash_seed=cfg.hash_seed, m_bits=engine.filter.m_bits,
                  k=engine.filter.k, group_size=geo.group_size, set_size=PAGE_SIZE)
    wrong = {k: getattr(h, k) for k, v in expect.items() if getattr(h, k) != v}
    if wrong:
        raise TierwiseError(f"the device holds a Nemo cache with other parameters ({wrong}; this configuration has "
                            f"{ {k: expect[k] for k in wrong} }): open it with the same settings, or start fresh")
    if h.slot != slot or h.seq % engine.N != slot:
        out.reason = f"seq {h.seq} found in slot {slot}"
        return out
    pages = _read_sg(engine, slot)
    if pages is None:
        out.reason = f"seq {h.seq}: incomplete (zone holds fewer than the {engine.S + 2} pages of an SG)"
        return out
    try:
        t = decode_sg_trailer(pages[-1].tobytes())
    except TierwiseError as e:
        out.reason = f"seq {h.seq}: no valid trailer ({e})"
        return out
    sets = pages[1:-1]
    if t.seq != h.seq or t.sets != engine.S or t.sets_crc != sets_crc(sets):
        out.reason = f"seq {h.seq}: trailer does not match the header or the set pages"
        return out
    out.committed = True
    out.objects = t.objects
    out.bad_pages = _bad_pages(sets, h.seq)
    return out


def _bad_pages(sets: np.ndarray, seq: int) -> list[int]:
    """Set pages whose crc or sequence number is wrong (bytes flipped after the trailer was written)."""
    stored = sets[:, 0:4].copy().view("<u4").reshape(-1)
    seqs = sets[:, 4:12].copy().view("<u8").reshape(-1)
    flat = memoryview(sets.reshape(-1))
    crc = crc32c.crc32c
    return [j for j in range(sets.shape[0])
            if seqs[j] != seq or crc(flat[j * PAGE_SIZE + 4:(j + 1) * PAGE_SIZE]) != stored[j]]


def _reset_slot(engine, slot: int) -> None:
    for z in _slot_zones(engine, slot):
        if engine.device.write_pointer(z):
            engine.device.reset(z)


# ---- index ---------------------------------------------------------------------------------------------------------

def _scan_index(engine, rep: RecoveryReport) -> tuple[dict[int, list[tuple[int, int, int]]], int]:
    """Valid index blocks: group -> [(zone, offset, pages)] segments, and the highest SG seq any block covers."""
    dev, zones = engine.device, engine.geo.index_zones
    blocks: dict[int, list[tuple[int, int, int]]] = {}
    burned = -1
    for zi, z in enumerate(zones):
        wp = dev.write_pointer(z)
        off = 0
        while off + PAGE_SIZE <= wp:
            try:
                h = decode_index_header(dev.read(z, off, PAGE_SIZE))
            except TierwiseError:
                off += PAGE_SIZE  # a row page of a block that started in an earlier zone, or garbage
                continue
            segs = _read_block(engine, h, zi, off)
            if segs is None:
                rep.index_blocks_damaged += 1
                off += PAGE_SIZE
                continue
            blocks[h.group] = segs
            burned = max(burned, h.seq_hi - 1)
            off = off + segs[0][2] * PAGE_SIZE
    return blocks, burned


def _read_block(engine, h, zi: int, off: int) -> list[tuple[int, int, int]] | None:
    """Segments of the index block whose header is at (index zone #zi, off), or None if any page is missing or
    damaged. A block larger than a zone continues at the start of the next index zones (ring order)."""
    dev, geo = engine.device, engine.geo
    zones, need = geo.index_zones, geo.index_block_pages
    if h.sets != engine.S or h.group_size != geo.group_size or h.row_pages != need - 1:
        return None
    page = np.empty(PAGE_SIZE, np.uint8)
    segs = []
    idx = 0  # page of the block (0 = header)
    while idx < need:
        if len(segs) == len(zones):
            return None
        z = zones[(zi + len(segs)) % len(zones)]
        n = min((dev.write_pointer(z) - off) // PAGE_SIZE, need - idx)
        if n <= 0:
            return None
        for p in range(n):
            if idx + p == 0:
                continue
            dev.read_into(z, off + p * PAGE_SIZE, page)
            first = (idx + p - 1) * geo.rows_per_page
            if not row_page_valid(page, h.group, first, min(geo.rows_per_page, engine.S - first), geo.row_bytes):
                return None
        segs.append((z, off, n))
        idx += n
        off = 0
    return segs


def _restore_index(engine, blocks, slots: list[_Slot], rep: RecoveryReport) -> None:
    pb, G, geo = engine.pbfg, engine.geo.group_size, engine.geo
    oldest, next_seq = engine.oldest, engine.next_seq
    open_group = next_seq // G
    live_groups = [g for g in range(oldest // G, open_group) if g in blocks]
    for g in live_groups:
        record_block(pb, g, blocks[g])
    if live_groups:
        last_zone = block_segments(pb, live_groups[-1])[-1][0]
        pb.st[CUR] = geo.index_zones.index(last_zone)
    else:  # nothing live in the index zones: start the ring afresh
        for z in geo.index_zones:
            if engine.device.write_pointer(z):
                engine.device.reset(z)
        pb.st[CUR] = 0
    rep.index_blocks_loaded = len(live_groups)
    if open_group - 1 >= oldest // G and open_group - 1 >= 0 and open_group - 1 not in blocks:
        # Crash between the last data flush of a group and its index write: rebuild and write the block.
        pb.st[OPEN_GROUP] = open_group - 1
        pb.st[OPEN_MEMBERS] = G
        _fill_open_rows(engine, open_group - 1, G, slots, rep)
        engine.write_open_group()
        rep.index_blocks_rebuilt += 1
    pb.st[OPEN_GROUP] = open_group
    pb.st[OPEN_MEMBERS] = next_seq - open_group * G
    pb.open_rows[:] = 0
    rep.open_group_sgs = _fill_open_rows(engine, open_group, int(pb.st[OPEN_MEMBERS]), slots, rep)


def _fill_open_rows(engine, group: int, members: int, slots: list[_Slot], rep: RecoveryReport) -> int:
    """Set-level filters of the live SGs among the first `members` of `group`, rebuilt from their keys (every
    record: objects, write-back copies and tombstones, as the insert path adds them)."""
    G, N = engine.geo.group_size, engine.N
    rows = engine.pbfg.open_rows
    rows[:] = 0
    f, seed = engine.filter, engine.cfg.hash_seed
    rebuilt = 0
    for s in range(members):
        seq = group * G + s
        if seq < engine.oldest:
            continue
        pages = _read_sg(engine, seq % N)[1:-1]
        bad = np.zeros(pages.shape[0], np.bool_)
        bad[slots[seq % N].bad_pages] = True
        filters = np.zeros((engine.S, f.nbytes), np.uint8)
        set_filters(pages, filters, np.uint64(seed), f.k, f.m_bits, bad)
        add_member(rows, G, s, filters, f.m_bits)
        rebuilt += 1
    return rebuilt
