"""The acknowledgement journal: which writes the server acknowledged that may not be on flash yet.

Why: Nemo acknowledges a SET once the object sits in a buffered SG. If the process dies before that SG is flushed,
the object is lost (fine for a cache) but an *older* copy of the same key may still be on flash, and recovery would
serve it: a stale value. Deletes and `flush_all` have the same problem. So before replying, the server appends
one small record per write (key, cas of the stored item; or a delete; or a flush_all threshold) to this journal.
After a restart, every journaled key whose recovered value is not the journaled version is deleted, so a key reads
back absent or as its last acknowledged value. Records are retired once the engine has flushed every buffered SG
that could hold them.

The journal is a folder of segment files. A segment is preallocated (a full disk is an error when it is opened,
never a fault while serving) and written through a shared memory map: a commit is a memory copy into the page
cache, no system call, and survives a process crash (kill -9) exactly like a `write` would; like the file-backed
device it is not fsync'ed per commit. A closed segment is truncated to what it holds. Each commit (the records of
one batch of requests) is one block, little-endian:

    body length (u32) | crc32c of the body (u32) | records: kind (u8), key length (u16), cas (u64), key

A segment starts with a FLUSH record carrying the current flush_all threshold, so retiring old segments never
forgets it. A torn or corrupted block ends that segment's replay: none of its writes had been acknowledged; so
does a zero length, the unwritten tail of a segment that was open when the process died.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import crc32c

from tierwise.common.errors import TierwiseError

SET, DELETE, FLUSH = 1, 2, 3
_BLOCK = struct.Struct("<II")
_RECORD = struct.Struct("<BHQ")


def encode_block(records: bytes) -> bytes:
    return _BLOCK.pack(len(records), crc32c.crc32c(records)) + records


def decode_all(data: bytes) -> list[tuple[int, bytes, int]]:
    """Records of one segment, up to the first torn or corrupted block."""
    out = []
    pos = 0
    while pos + _BLOCK.size <= len(data):
        n, crc = _BLOCK.unpack_from(data, pos)
        body = data[pos + _BLOCK.size:pos + _BLOCK.size + n]
        if n == 0 or len(body) < n or crc32c.crc32c(body) != crc:  # n == 0: the preallocated tail
            break
        records = []
        r = 0
        while r + _RECORD.size <= n:
            kind, klen, cas = _RECORD.unpack_from(body, r)
            r += _RECORD.size
            records.append((kind, bytes(body[r:r + klen]), cas))
            r += klen
        if r != n or any(kind not in (SET, DELETE, FLUSH) for kind, _, _ in records):
            break
        out += records
        pos += _BLOCK.size + n
    return out


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
        self.bytes_written = 0
        self._pending = bytearray()
        self._segments: list[_Segment] = []
        self._next_seq = 0
        self._map: mmap.mmap | None = None  # the open segment
        self._size = 0  # bytes used in it

    def load(self, durable: int) -> dict[bytes, tuple[int, int]]:
        """Replay every segment in order: key -> (kind, cas) of its last journaled write. Sets `flush_threshold`.
        The loaded segments stay, closed at `durable`, until retired: the deletes that replaying them causes are
        themselves only in DRAM buffers until the engine flushes."""
        last: dict[bytes, tuple[int, int]] = {}
        for path in sorted(self.folder.glob("*.log")):
            for kind, key, cas in decode_all(path.read_bytes()):
                if kind == FLUSH:
                    self.flush_threshold = max(self.flush_threshold, cas)
                else:
                    last[key] = (kind, cas)
            self._segments.append(_Segment(path, durable, path.stat().st_size))
            self._next_seq = int(path.stem) + 1
        return last

    # ---- writing ------------------------------------------------------------------------------------------------
    def add(self, kind: int, key: bytes, cas: int) -> None:
        if kind == FLUSH:
            self.flush_threshold = max(self.flush_threshold, cas)
        self._pending += _RECORD.pack(kind, len(key), cas)
        self._pending += key

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def commit(self, durable: int) -> None:
        """Write the records added since the last commit (before their writes are acknowledged)."""
        if not self._pending:
            return
        block = encode_block(self._pending)
        if self._map is None or self._size + len(block) > len(self._map):
            self._open_segment(durable, len(block))
        self._append(block)
        self.bytes_written += len(block)
        self._pending.clear()

    def _append(self, block: bytes) -> None:
        end = self._size + len(block)
        self._map[self._size:end] = block
        self._size = self._segments[-1].used = end

    def _open_segment(self, durable: int, first_block: int = 0) -> None:
        self._close_segment(durable)
        path = self.folder / f"{self._next_seq:012d}.log"
        self._next_seq += 1
        head = encode_block(_RECORD.pack(FLUSH, 0, self.flush_threshold))
        length = max(self.segment_bytes, len(head) + first_block)  # one batch's block always fits
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, length)
            self._map = mmap.mmap(fd, length)
        except OSError as e:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise TierwiseError(f"cannot create a {length}-byte server journal segment {path}: {e}") from e
        os.close(fd)  # the mapping keeps the file
        self._segments.append(_Segment(path, -1))
        self._size = 0
        self._append(head)

    def _close_segment(self, durable: int) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            seg = self._segments[-1]
            os.truncate(seg.path, seg.used)
            seg.closed_at = durable

    def retire(self, durable: int, lag: int) -> None:
        """Delete closed segments whose writes are all on flash: the engine's durability counter has advanced by
        `lag` since they were closed. The newest segment stays: it carries the flush_all threshold."""
        segs = self._segments
        while len(segs) > 1 and 0 <= segs[0].closed_at <= durable - lag:
            segs.pop(0).path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Everything acknowledged is on flash (after a full engine flush): keep only a fresh header segment,
        written before the old segments are deleted so the flush_all threshold is never lost."""
        self._close_segment(0)
        old = self._segments
        self._segments = []
        self._open_segment(0)
        self._close_segment(0)
        for seg in old:
            seg.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._close_segment(0)

    @property
    def size(self) -> int:
        """Bytes held by the segments kept."""
        return sum(seg.used for seg in self._segments)
