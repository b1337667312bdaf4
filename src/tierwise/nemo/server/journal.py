"""The acknowledgement journal: which writes the server acknowledged that may not be on flash yet.

Why: Nemo acknowledges a SET once the object sits in a buffered SG. If the process dies before that SG is flushed,
the object is lost (fine for a cache) but an *older* copy of the same key may still be on flash, and recovery would
serve it: a stale value. Deletes, TTL changes and `flush_all` have the same problem. So before replying, the server
appends one small record per write to this journal: a SET carries the stored item's cas *and* exptime (a touch
keeps the cas but changes the exptime), a DELETE the key, FLUSH a flush_all threshold, FLUSH_AT a delayed
flush_all's deadline, SEQ how many SGs the engine had flushed. After a restart, every journaled key whose
recovered item is not the journaled version is deleted, so a key reads back absent or as its last acknowledged
write. Records are retired once the engine has flushed every buffered SG that could hold them.

The journal is a folder of segment files. A segment is preallocated and written through a shared memory map: a
commit is a memory copy into the page cache, no system call, and survives a process crash (kill -9) exactly like a
`write` would; like the file-backed device it is not fsync'ed per commit. Space is reserved before a write is
applied (`reserve`), so a full disk refuses that write instead of acknowledging one the journal cannot hold. A
closed segment is truncated to what it holds. Each commit (the records of one batch of requests) is one block,
little-endian:

    body length (u32) | crc32c of the body (u32) | records: kind (u8), key length (u16), value (u64),
                                                    exptime (u32, SET only), key

The body is copied before the 8-byte block header, so a process killed in the middle of a commit leaves a zero
header: replay ends there cleanly (that commit was never acknowledged). Any other block that fails its checksum
is *damage* (a flipped byte, a truncated file): replay skips it when its length still frames the next block, and
reports it; the caller must then treat every item older than the damage as unknown (`Replay.distrust_below`).
A segment starts with a header block (FLUSH threshold, FLUSH_AT deadline when one is pending, SEQ), so retiring
old segments never forgets them.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import crc32c

from tierwise.common.errors import TierwiseError

SET, DELETE, FLUSH, FLUSH_AT, SEQ = 1, 2, 3, 4, 5
_BLOCK = struct.Struct("<II")
_RECORD = struct.Struct("<BHQ")
_EXPTIME = struct.Struct("<I")
SET_RECORD = _RECORD.size + _EXPTIME.size  # bytes of a SET record besides its key
# room kept free beyond the reserved writes: a block header and the records a batch adds on its own (a delayed
# flush_all firing: FLUSH and FLUSH_AT; a flush_all request; SEQ)
_SLACK = _BLOCK.size + 4 * _RECORD.size


class JournalFull(TierwiseError):
    """The journal cannot get room for more records (disk full, I/O error): the write is refused."""


def encode_block(records: bytes) -> bytes:
    return _BLOCK.pack(len(records), crc32c.crc32c(records)) + records


def _records(body: bytes) -> list[tuple[int, bytes, int, int]] | None:
    """(kind, key, value, exptime) of one block's body; None when it does not parse."""
    out = []
    r = 0
    n = len(body)
    while r < n:
        if r + _RECORD.size > n:
            return None
        kind, klen, value = _RECORD.unpack_from(body, r)
        r += _RECORD.size
        exptime = 0
        if kind == SET:
            if r + _EXPTIME.size > n:
                return None
            (exptime,) = _EXPTIME.unpack_from(body, r)
            r += _EXPTIME.size
        if kind not in (SET, DELETE, FLUSH, FLUSH_AT, SEQ) or r + klen > n:
            return None
        out.append((kind, bytes(body[r:r + klen]), value, exptime))
        r += klen
    return out


@dataclass
class Segment:
    records: list = field(default_factory=list)  # in order: (kind, key, value, exptime); None marks a damaged span
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

    last: dict = field(default_factory=dict)  # key -> (kind, cas, exptime) of its last journaled write
    damage: list = field(default_factory=list)  # one line per damaged span
    seq: int = 0  # the engine's flushed-SG count the journal last saw (its SGs below it were all on flash)
    distrust_below: int = 0  # items with a lower cas may be older than a write lost in a damaged span


@dataclass
class _Segment:
    path: Path
    closed_at: int  # engine durability counter when the segment was closed (-1 while open)
    used: int = 0  # bytes it holds


class AckJournal:
    def __init__(self, folder: str | Path, *, segment_bytes: int = 4 << 20):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TierwiseError(f"cannot create the server journal folder {self.folder}: {e}") from e
        self.segment_bytes = segment_bytes
        self.flush_threshold = 0
        self.flush_at = 0  # a pending delayed flush_all: its deadline in unix microseconds (0 = none)
        self.bytes_written = 0
        self._durable = 0  # the engine's durability counter as of the last call that gave it
        self._seq = -1  # the SEQ value last added
        self._pending = bytearray()
        self._segments: list[_Segment] = []
        self._next_seq = 0
        self._map: mmap.mmap | None = None  # the open segment
        self._size = 0  # bytes used in it

    def load(self, durable: int) -> Replay:
        """Replay every segment in order (sets `flush_threshold` and `flush_at`). The loaded segments stay, closed at
        `durable`, until retired: the deletes that replaying them causes are themselves only in DRAM buffers until
        the engine flushes."""
        replay = Replay()
        first_set_after_damage = None  # 0 once a damaged span is met, then the cas of the first SET after it
        for path in sorted(self.folder.glob("*.log")):
            seg = decode(path.read_bytes(), path.name)
            for rec in seg.records:
                if rec is None:
                    first_set_after_damage = 0
                    continue
                kind, key, value, exptime = rec
                if kind == SET and first_set_after_damage == 0:
                    first_set_after_damage = value
                self._apply(replay, kind, key, value, exptime)
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

    def _apply(self, replay: Replay, kind: int, key: bytes, value: int, exptime: int) -> None:
        if kind == FLUSH:
            self.flush_threshold = max(self.flush_threshold, value)
        elif kind == FLUSH_AT:
            self.flush_at = value
        elif kind == SEQ:
            replay.seq = value
        else:
            replay.last[key] = (kind, value, exptime)

    # ---- writing ------------------------------------------------------------------------------------------------
    def add(self, kind: int, key: bytes, value: int, exptime: int = 0) -> None:
        if kind == FLUSH:
            self.flush_threshold = max(self.flush_threshold, value)
        elif kind == FLUSH_AT:
            self.flush_at = value
        self._pending += _RECORD.pack(kind, len(key), value)
        if kind == SET:
            self._pending += _EXPTIME.pack(exptime)
        self._pending += key

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def reserve(self, extra: int) -> None:
        """Make sure the open segment can take the pending records plus `extra` bytes more, opening a new segment
        if needed. Raises JournalFull when it cannot (disk full, I/O error): then nothing may be acknowledged that
        would need the room."""
        need = len(self._pending) + extra + _SLACK
        if self._map is None or self._size + need > len(self._map):
            self._open_segment(self._durable, need)

    def commit(self, durable: int) -> None:
        """Write the records added since the last commit (before their writes are acknowledged). Writes were
        reserved room for; a commit that still finds no room (only records a batch adds on its own: a delayed
        flush_all firing, SEQ) keeps them pending for the next commit and raises JournalFull."""
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
            self._map = mmap.mmap(fd, length)
        except OSError as e:
            path.unlink(missing_ok=True)
            raise JournalFull(f"cannot allocate a {length}-byte server journal segment {path}: {e.strerror}") from e
        finally:
            os.close(fd)  # the mapping keeps the file
        self._next_seq += 1
        self._segments.append(_Segment(path, -1))
        self._seq = durable
        self._size = 0
        self._append(head)

    def _close_segment(self, durable: int) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            seg = self._segments[-1]
            os.truncate(seg.path, seg.used)
            seg.closed_at = durable

    def start(self, durable: int) -> None:
        """Open a segment for the new run now: its header records the flush_all threshold (including one set by
        `load` after damage) and the engine's SG count, so a later restart compares against this run."""
        self._open_segment(durable)

    def retire(self, durable: int, lag: int) -> None:
        """Delete closed segments whose writes are all on flash: the engine's durability counter has advanced by
        `lag` since they were closed. The newest segment stays: it carries the flush_all threshold."""
        segs = self._segments
        while len(segs) > 1 and 0 <= segs[0].closed_at <= durable - lag:
            segs.pop(0).path.unlink(missing_ok=True)

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
        self._close_segment(durable)
        for seg in old:
            seg.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._close_segment(self._durable)

    @property
    def size(self) -> int:
        """Bytes held by the segments kept."""
        return sum(seg.used for seg in self._segments)
