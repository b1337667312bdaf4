"""A conventional (block-interface) SSD: a logical address space over the page-mapped FTL model of `ftl.py`.

Designs that overwrite in place (a set-associative cache rewriting 4 KB sets) run on it: `write_at`, `read_at` and
`trim` address any whole page. For the log-structured parts of a design the address space is also cut into
`segment_bytes` segments that play the zones: appended sequentially, reset by a trim, with the same calls as the
zones of a zoned device. The data is kept by logical address (so reads return what was written); the FTL underneath
only decides where pages would sit in NAND, to count GC copies and erases (DLWA) and to time them.
"""

from __future__ import annotations

import mmap

import numpy as np
from numba import njit

from tierwise.nemo.device import flash as fl
from tierwise.nemo.device import ftl as ftl_model
from tierwise.nemo.native import ref_of
from tierwise.nemo.device.base import BLOCK_SIZE, ZonedDevice, ZoneError, as_bytes_array


@njit(cache=True)
def _write_at(arena, F, offset, src, n):
    fl.write_at(ref_of(arena, F), offset, src, 0, n)


@njit(cache=True)
def _trim(arena, F, offset, n):
    fl.trim(ref_of(arena, F), offset, n)


@njit(cache=True)
def _read_at(arena, F, offset, out):
    """Read len(out) bytes at logical `offset`, segment by segment."""
    D = ref_of(arena, F)
    done = 0
    while done < out.shape[0]:
        z, off = divmod(offset + done, F.zone_cap)
        n = min(out.shape[0] - done, F.zone_cap - off)
        fl.read_into(D, z, off, out[done:done + n], True)
        done += n


class FtlSSD(ZonedDevice):
    """A conventional SSD of `capacity_bytes` logical bytes with `op` over-provisioning (0.07 = 7% extra flash),
    erase blocks of `pages_per_block` pages, GC that keeps `gc_reserve` erase blocks free, and segments of
    `segment_bytes` (default: one erase block)."""

    kind = fl.BLOCK

    def __init__(self, capacity_bytes: int, *, op: float = 0.07, pages_per_block: int = 256,
                 page_size: int = BLOCK_SIZE, gc_reserve: int = 2, segment_bytes: int | None = None):
        segment = segment_bytes or pages_per_block * page_size
        if page_size <= 0 or page_size % 512 or capacity_bytes <= 0 or capacity_bytes % page_size:
            raise ZoneError(f"capacity {capacity_bytes} B must be a positive multiple of the page size {page_size}")
        if op < 0 or pages_per_block < 1 or gc_reserve < 2:
            # GC starts below gc_reserve free blocks and its copies may need one more block: reserve >= 2
            raise ZoneError("op must be >= 0, pages_per_block >= 1 and gc_reserve >= 2")
        if segment % page_size or capacity_bytes % segment:
            raise ZoneError(f"capacity {capacity_bytes} B must be a whole number of {segment} B segments (whole pages)")
        super().__init__(capacity_bytes // segment, segment, block_size=page_size)
        self.op = op
        self.pages_per_block = pages_per_block
        self.gc_reserve = gc_reserve
        logical_pages = capacity_bytes // page_size
        self.physical_blocks = int(np.ceil(logical_pages * (1 + op) / pages_per_block))
        spare = self.physical_blocks - -(-logical_pages // pages_per_block)
        if spare < gc_reserve + 1:
            raise ZoneError(f"over-provisioning {op:.1%} leaves {spare} spare erase block(s); GC needs at least "
                            f"{gc_reserve + 1}: raise op or use smaller erase blocks")
        ftl = ftl_model.new_ftl(logical_pages, self.physical_blocks, pages_per_block, gc_reserve)
        self._build(np.frombuffer(mmap.mmap(-1, capacity_bytes), np.uint8), ftl=ftl)

    def _check_span(self, offset: int, length: int, what: str) -> None:
        if self._closed:
            raise ZoneError("device is closed")
        if offset < 0 or length <= 0 or offset + length > self.capacity_bytes:
            raise ZoneError(f"{what} of {length} B at {offset} outside [0, {self.capacity_bytes})")

    def write_at(self, offset: int, data) -> None:
        """Overwrite whole pages at logical byte `offset` in place."""
        arr = as_bytes_array(data)
        self._check_span(offset, max(arr.size, 1), "write")
        self._run(_write_at, int(offset), arr, arr.size)

    def read_at(self, offset: int, length: int) -> bytes:
        """Any `length` bytes at logical byte `offset` (never-written or trimmed pages read as zeros)."""
        self._check_span(offset, length, "read")
        out = np.empty(length, np.uint8)
        self._run(_read_at, int(offset), out)
        return out.tobytes()

    def trim(self, offset: int, length: int) -> None:
        """Drop whole pages: the FTL stops copying them and they read as zeros."""
        self._check_span(offset, max(length, 1), "trim")
        self._run(_trim, int(offset), int(length))

    @property
    def valid_pages(self) -> int:
        return int(self.flash.ftl.valid.sum())
