"""The acknowledgement journal: the writes the server acknowledged that may not be on flash yet, and enough of them to
restore them.

Why: Nemo acknowledges a SET once the object sits in a buffered SG. If the process dies before that SG is flushed,
the object is lost, and an *older* copy of the same key may still be on flash: recovery would serve it, a stale
value. Deletes, TTL changes and `flush_all` have the same problem. So before replying, the server appends one small
record per write to this journal: an ITEM carries the stored item (its cas, its exptime, since a touch keeps the cas
but changes the exptime, and the item's bytes), a SET the same without the bytes, a DELETE the key, FLUSH a
flush_all threshold, FLUSH_AT a delayed flush_all's deadline, SEQ how many SGs the engine had flushed. After a
restart the last record of each key is applied over what recovery found (`serve.replay_journal`): an ITEM is
restored unless flash holds that version already, any other recovered item that is not the journaled version is
deleted. So a key reads back absent or as its last acknowledged write, and what was only in the DRAM buffers comes
back when its bytes were journaled.

Size. Records are retired once the engine has flushed every buffered SG that could hold them (`retire`). While the
working set fits in the buffers nothing is flushed, so the journal also checkpoints: once it holds more than
`limit` = max(`compact_bytes`, 2 x its size right after the previous checkpoint), it writes the latest state of
every object the engine's buffers hold (`snapshot`: an ITEM per object, a DELETE per tombstone) into a new segment
and deletes every older segment; whatever is not in the buffers is on flash. A crash at any point of a checkpoint
is harmless: until the older segments are deleted, the new one only repeats the latest state of keys they already
describe, and replay stops cleanly at an unfinished block. So the journal never holds more than `limit` plus one
commit, and a checkpoint is at most the buffered objects plus 15 bytes each (the record header besides the object's
own 4).

Sync policy (`sync`). "never": a commit is a copy into the page cache, which survives a process crash (kill -9) but
not a power failure or kernel crash. "always": each commit is fdatasync'ed before `commit` returns, so before its
writes are acknowledged. "batch": the same, but at most one fdatasync every `sync_interval` seconds: a commit waits
for the next one (group commit: with the engine thread, the requests of every connection that arrive meanwhile share
the next batch and its sync). Under "always" and "batch" a new segment's directory entry is synced when it is
created, and a checkpoint is synced before the segments it replaces are deleted.

The journal is a folder of segment files. A segment is preallocated and written through a shared memory map: a
commit is a memory copy into the page cache, no system call (unless the sync policy asks for one). Space is reserved
before a write is applied (`reserve`), so a full disk refuses that write instead of acknowledging one the journal
cannot hold. A closed segment is truncated to what it holds. Each commit (the records of one batch of requests) is
one block, little-endian:

    body length (u32) | crc32c of the body (u32) | records: kind (u8), key length (u16), value (u64),
                                                    exptime (u32, SET and ITEM), data length (u32, ITEM), key, data

The body is copied before the 8-byte block header, so a process killed in the middle of a commit leaves a zero
header: replay ends there cleanly (that commit was never acknowledged). Any other block that fails its checksum
is *damage* (a flipped byte, a truncated file): replay skips it when its length still frames the next block, and
reports it; the caller must then treat every item older than the damage as unknown (`Replay.distrust_below`).
That bound is the cas of the first SET (or CLOCK) read after the damage, which holds because records come in cas
order: the per-write records by construction; a checkpoint starts with a CLOCK record, a cas above every write
journaled before it (a checkpoint cut short by a crash may not repeat a write lost in older damage), then its
records sorted by cas with its DELETEs last.
A segment starts with a header block (FLUSH threshold, FLUSH_AT deadline when one is pending, SEQ), so retiring
old segments never forgets them.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import crc32c

from tierwise.common.errors import TierwiseError

SET, DELETE, FLUSH, FLUSH_AT, SEQ, ITEM, CLOCK = 1, 2, 3, 4, 5, 6, 7
_KINDS = (SET, DELETE, FLUSH, FLUSH_AT, SEQ, ITEM, CLOCK)
_BLOCK = struct.Struct("<II")
_RECORD = struct.Struct("<BHQ")  # kind, key length, value: DELETE, FLUSH, FLUSH_AT, SEQ, CLOCK
_SET = struct.Struct("<BHQI")  # ... and exptime
_ITEM = struct.Struct("<BHQII")  # ... and the length of the item's bytes
SET_RECORD = _SET.size  # bytes of a SET record besides its key
# The most an ITEM adds to a SET record: its data length and the item, at most `max_item` bytes (a Nemo object fits
# a 4 KB set page; a two-tier cache's large items are bigger). `reserve` counts it for every record a write may
# add, so a commit never needs room it did not reserve.
# room kept free beyond the reserved writes: a block header and the records a batch adds on its own (a delayed
# flush_all firing: FLUSH and FLUSH_AT; a flush_all request; SEQ)
_SLACK = _BLOCK.size + 4 * _RECORD.size
_CHECKPOINT_BLOCK = 1 << 20  # body bytes per checkpoint block: a damaged block loses at most this much of it
SYNC_POLICIES = ("never", "batch", "always")


class JournalFull(TierwiseError):
    """The journal cannot get room for more records (disk full, I/O error): the write is refused."""


def encode_block(records: bytes) -> bytes:
    return _BLOCK.pack(len(records), crc32c.crc32c(records)) + records


def encode_record(kind: int, key: bytes, value: int, exptime: int = 0, data: bytes = b"") -> bytes:
    """One record; a SET given the stored item's bytes (`data`) is written as an ITEM."""
    if data:
        return _ITEM.pack(ITEM, len(key), value, exptime, len(data)) + key + data
    if kind == SET:
        return _SET.pack(SET, len(key), value, exptime) + key
    return _RECORD.pack(kind, len(key), value) + key


def _records(body: bytes) -> list[tuple[int, bytes, int, int, bytes]] | None:
    """(kind, key, value, exptime, data) of one block's body, an ITEM read as a SET with its data; None when it does
    not parse."""
    out = []
    r = 0
    n = len(body)
    while r < n:
        if r + _RECORD.size > n:
            return None
        kind = body[r]
        head = _ITEM if kind == ITEM else _SET if kind == SET else _RECORD
        if kind not in _KINDS or r + head.size > n:
            return None
        kind, klen, value, *rest = head.unpack_from(body, r)
        exptime, dlen = (*rest, 0, 0)[:2]  # what the record's kind has of (exptime, data length); 0 otherwise
        r += head.size
        if r + klen + dlen > n:
            return None
        out.append((SET if kind == ITEM else kind, bytes(body[r:r + klen]), value, exptime,
                    bytes(body[r + klen:r + klen + dlen])))
        r += klen + dlen
    return out


@dataclass
class Segment:
    records: list = field(default_factory=list)  # in order: (kind, key, value, exptime, data); None: a damaged span
    damage: list = field(default_factory=list)  # one line per damaged span


def decode(data: bytes, name: str = "segment") -> Segment:
    """The records of one segment file, with its damaged spans located and counted."""
    seg = Segment()
    pos = 0
    while pos + _BLOCK.size <= len(data):
        n, crc = _BLOCK.unpack_from(data, pos)
        if n == 0 and crc == 0:  # the unwritten tail (or a commit killed before its header was copied)
            return seg
        body = data[pos + _BLOCK.size:pos + _BLOCK.size + n]
        records = _records(body)
        if len(body) == n and crc32c.crc32c(body) == crc and records is not None:
            seg.records += records
            pos += _BLOCK.size + n
            continue
        seg.records.append(None)
        if len(body) != n:  # the length itself is wrong: nothing after it can be framed
            seg.damage.append(f"{name}: damaged at byte {pos}: the remaining {len(data) - pos} bytes "
                              "(an unknown number of records) are unreadable")
            return seg
        lost = f"{len(records)} records" if records is not None else "an unknown number of records"
        seg.damage.append(f"{name}: damaged block at byte {pos} ({n} bytes, {lost}) skipped")
        pos += _BLOCK.size + n
    if any(data[pos:]):
        seg.records.append(None)
        seg.damage.append(f"{name}: truncated inside a block header at byte {pos}")
    return seg


@dataclass
class Replay:
    """What the journal says about the previous run."""

    # key -> (kind, cas, exptime, data) of its last journaled write (data: the item's bytes, b"" when not journaled)
    last: dict = field(default_factory=dict)
    damage: list = field(default_factory=list)  # one line per damaged span
    seq: int = 0  # the engine's flushed-SG count the journal last saw (its SGs below it were all on flash)
    distrust_below: int = 0  # items with a lower cas may be older than a write lost in a damaged span


@dataclass
class _Segment:
    path: Path
    closed_at: int  # engine durability counter when the segment was closed (-1 while open)
    used: int = 0  # bytes it holds


class AckJournal:
    def __init__(self, folder: str | Path, *, segment_bytes: int = 4 << 20, compact_bytes: int = 8 << 20,
                 sync: str = "never", sync_interval: float = 0.005, max_item: int = 4096):
        self._item_extra = _ITEM.size - _SET.size + max_item
        if sync not in SYNC_POLICIES:
            raise TierwiseError(f"sync policy {sync!r}: give one of {', '.join(SYNC_POLICIES)}")
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TierwiseError(f"cannot create the server journal folder {self.folder}: {e}") from e
        self.segment_bytes = segment_bytes
        self.compact_bytes = compact_bytes  # the least size at which the journal checkpoints
        self.sync = sync
        self.sync_interval = sync_interval  # "batch": seconds between two syncs at least
        # callable -> the records of a checkpoint (the latest state of every buffered object), or None when they
        # cannot be had now; set by the server once the journal has been replayed. None: no checkpoints.
        self.snapshot = None
        self.flush_threshold = 0
        self.flush_at = 0  # a pending delayed flush_all: its deadline in unix microseconds (0 = none)
        self.bytes_written = 0
        self.checkpoints = 0
        self._checkpoint_bytes = 0  # the size right after the last checkpoint
        self._durable = 0  # the engine's durability counter as of the last call that gave it
        self._seq = -1  # the SEQ value last added
        self._pending = bytearray()
        self._segments: list[_Segment] = []
        self._next_seq = 0
        self._map: mmap.mmap | None = None  # the open segment
        self._fd = -1  # its file, kept open to sync it
        self._size = 0  # bytes used in it
        self._synced_at = 0.0  # monotonic time of the last sync ("batch")

    def load(self, durable: int) -> Replay:
        """Replay every segment in order (sets `flush_threshold` and `flush_at`). The loaded segments stay, closed at
        `durable`, until retired: the writes that replaying them causes are themselves only in DRAM buffers until
        the engine flushes."""
        replay = Replay()
        first_set_after_damage = None  # 0 once a damaged span is met, then the cas of the first SET after it
        for path in sorted(self.folder.glob("*.log")):
            seg = decode(path.read_bytes(), path.name)
            for rec in seg.records:
                if rec is None:
                    first_set_after_damage = 0
                    continue
                kind, key, value, exptime, data = rec
                if kind in (SET, CLOCK) and first_set_after_damage == 0:
                    first_set_after_damage = value
                self._apply(replay, kind, key, value, exptime, data)
            replay.damage += seg.damage
            self._segments.append(_Segment(path, durable, path.stat().st_size))
            self._next_seq = int(path.stem) + 1
        if replay.damage:
            # Cas values grow with time, so the first write read back after the last damaged span bounds every
            # write lost in it; with none, the new run's clock does (it starts above every earlier cas).
            replay.distrust_below = first_set_after_damage or time.time_ns() // 1000
            self.flush_threshold = max(self.flush_threshold, replay.distrust_below)
        self._durable = durable
        return replay

    def _apply(self, replay: Replay, kind: int, key: bytes, value: int, exptime: int, data: bytes) -> None:
        if kind == FLUSH:
            self.flush_threshold = max(self.flush_threshold, value)
        elif kind == FLUSH_AT:
            self.flush_at = value
        elif kind == SEQ:
            replay.seq = value
        elif kind != CLOCK:
            replay.last[key] = (kind, value, exptime, data)

    # ---- writing ------------------------------------------------------------------------------------------------
    def add(self, kind: int, key: bytes, value: int, exptime: int = 0, data: bytes = b"") -> None:
        """Queue a record for the next commit. A SET should give the stored item's bytes (`data`): after a crash
        recovery can then restore the write, not only hide an older copy of the key."""
        if kind == FLUSH:
            self.flush_threshold = max(self.flush_threshold, value)
        elif kind == FLUSH_AT:
            self.flush_at = value
        self._pending += encode_record(kind, key, value, exptime, data)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def reserve(self, extra: int) -> None:
        """Make sure the open segment can take the pending records plus `extra` bytes more (SET records: SET_RECORD
        plus the key, for each key a write may change), opening a new segment if needed. Each of those records may
        become an ITEM, and each key has a byte at least, so room for that many items is added. Raises JournalFull
        when there is no room (disk full, I/O error): then nothing may be acknowledged that would need it."""
        need = len(self._pending) + extra + extra // (SET_RECORD + 1) * self._item_extra + _SLACK
        if self._map is None or self._size + need > len(self._map):
            self._open_segment(self._durable, need)

    def commit(self, durable: int) -> None:
        """Write the records added since the last commit (before their writes are acknowledged), and sync them as
        the policy says. Writes were reserved room for; a commit that still finds no room (only records a batch adds
        on its own: a delayed flush_all firing, SEQ) keeps them pending for the next commit and raises JournalFull."""
        self._durable = durable
        if durable != self._seq:
            self._seq = durable
            self.add(SEQ, b"", durable)
        block = encode_block(self._pending)
        if self._map is None or self._size + len(block) > len(self._map):
            self._open_segment(durable, len(block))
        self._append(block)
        self.bytes_written += len(block)
        self._pending.clear()
        if self.sync == "batch":
            time.sleep(max(0.0, self._synced_at + self.sync_interval - time.monotonic()))
        self._sync()

    def _sync(self) -> None:
        """Unless the policy is "never": the open segment's commits survive a power failure once this returns."""
        if self.sync != "never":
            os.fdatasync(self._fd)
            self._synced_at = time.monotonic()

    def _sync_folder(self) -> None:
        """Unless the policy is "never": segment files created or renamed so far survive a power failure."""
        if self.sync != "never":
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _append(self, block: bytes) -> None:
        start, end = self._size, self._size + len(block)
        self._map[start + _BLOCK.size:end] = block[_BLOCK.size:]  # the body first: see the module docstring
        self._map[start:start + _BLOCK.size] = block[:_BLOCK.size]
        self._size = self._segments[-1].used = end

    def _header(self) -> bytes:
        records = _RECORD.pack(FLUSH, 0, self.flush_threshold)
        if self.flush_at:
            records += _RECORD.pack(FLUSH_AT, 0, self.flush_at)
        return encode_block(records + _RECORD.pack(SEQ, 0, self._durable))

    def _open_segment(self, durable: int, room: int = 0, *, length: int | None = None) -> None:
        """Close the open segment and open a new one with `room` bytes free after its header (`length`: its exact
        size instead, for a segment that will only hold the header)."""
        self._close_segment(durable)
        self._durable = durable
        path = self.folder / f"{self._next_seq:012d}.log"
        head = self._header()
        length = length or max(self.segment_bytes, len(head) + room)  # one batch's block always fits
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise JournalFull(f"cannot create server journal segment {path}: {e.strerror}") from e
        try:
            os.posix_fallocate(fd, 0, length)
            self._sync_folder()
            self._map = mmap.mmap(fd, length)
        except OSError as e:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise JournalFull(f"cannot allocate a {length}-byte server journal segment {path}: {e.strerror}") from e
        self._fd = fd
        self._next_seq += 1
        self._segments.append(_Segment(path, -1))
        self._seq = durable
        self._size = 0
        self._append(head)

    def _close_segment(self, durable: int) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            os.close(self._fd)
            self._fd = -1
            seg = self._segments[-1]
            os.truncate(seg.path, seg.used)
            seg.closed_at = durable

    def start(self, durable: int) -> None:
        """Open a segment for the new run now: its header records the flush_all threshold (including one set by
        `load` after damage) and the engine's SG count, so a later restart compares against this run."""
        self._open_segment(durable)

    def retire(self, durable: int, lag: int) -> None:
        """Drop records whose writes are on flash (after a commit): delete closed segments the engine has flushed
        `lag` more SGs since they were closed (the newest segment stays: it carries the flush_all threshold), and
        checkpoint once the journal holds more than `limit` bytes."""
        segs = self._segments
        while len(segs) > 1 and 0 <= segs[0].closed_at <= durable - lag:
            segs.pop(0).path.unlink(missing_ok=True)
        if self.snapshot is not None and self.size > self.limit:
            try:
                self.checkpoint(durable)
            except JournalFull as e:  # the segments stay (still true); tried again once the journal has doubled
                self._checkpoint_bytes = self.size
                print(f"nemo server: journal checkpoint put off: {e}", file=sys.stderr, flush=True)

    @property
    def limit(self) -> int:
        """The size past which the journal checkpoints: at least `compact_bytes`, else twice the last checkpoint,
        so the work of checkpointing stays proportional to the writes journaled."""
        return max(self.compact_bytes, 2 * self._checkpoint_bytes)

    def checkpoint(self, durable: int) -> bool:
        """Replace every segment by one holding the header and the latest state of each buffered object (see the
        module docstring); False when `snapshot` cannot give them now (a device fault: the next commit tries again).
        A checkpoint that cannot get its segment (disk full) raises JournalFull and keeps the old segments."""
        records = self.snapshot()
        if records is None:
            return False
        # Written in cas order, DELETEs last, after a CLOCK above every cas so far, so that the first SET or CLOCK read
        # after a damaged block bounds every write lost in it (`load`): a deleted item's cas is below those of the
        # writes after its delete. The clock is the new run's rule (`items.CasClock`): cas values stay below the time
        # in microseconds.
        records.sort(key=lambda r: (r[0] == DELETE, r[2]))
        clock = max([time.time_ns() // 1000, self.flush_threshold] + [r[2] + 1 for r in records if r[0] == SET])
        blocks = _checkpoint_blocks([(CLOCK, b"", clock)] + records)
        self._open_segment(durable, sum(map(len, blocks)))
        for block in blocks:
            self._append(block)
        self._sync()  # before the segments it replaces go
        for seg in self._segments[:-1]:
            seg.path.unlink(missing_ok=True)
        del self._segments[:-1]
        self._checkpoint_bytes = self.size
        self.bytes_written += self.size
        self.checkpoints += 1
        return True

    def clear(self, durable: int) -> None:
        """Everything acknowledged is on flash (after a full engine flush): keep only a header segment (flush_all
        threshold, pending deadline, the engine's SG count), written before the old segments are deleted so none of
        it is ever lost. A header that cannot be written (disk full) leaves the old segments: they are still true."""
        self._close_segment(durable)
        old = self._segments
        self._segments = []
        try:
            self._open_segment(durable, length=len(self._header()))
        except JournalFull:
            self._segments = old
            raise
        self._sync()
        self._close_segment(durable)
        for seg in old:
            seg.path.unlink(missing_ok=True)
        self._checkpoint_bytes = 0

    def discard(self, durable: int) -> None:
        """Forget everything (a fresh cache): delete every segment in the folder, then write a header segment."""
        self._close_segment(durable)
        for path in self.folder.glob("*.log"):
            path.unlink()
        self._segments = []
        self._next_seq = 0
        self.flush_threshold = self.flush_at = 0
        self.clear(durable)

    def close(self) -> None:
        self._close_segment(self._durable)

    @property
    def size(self) -> int:
        """Bytes held by the segments kept."""
        return sum(seg.used for seg in self._segments)


def _checkpoint_blocks(records: list) -> list[bytes]:
    """The records as blocks of about `_CHECKPOINT_BLOCK` bytes each."""
    blocks = []
    body = bytearray()
    for rec in records:
        body += encode_record(*rec)
        if len(body) >= _CHECKPOINT_BLOCK:
            blocks.append(encode_block(body))
            body = bytearray()
    if body:
        blocks.append(encode_block(body))
    return blocks
