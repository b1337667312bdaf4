"""A conventional (block-interface) SSD model: page-mapped FTL with greedy garbage collection.

Designs that overwrite in place (a set-associative cache rewriting 4 KB sets) run on a `BlockDevice`: write,
read and trim at any block-aligned byte offset. `FtlSSD` keeps the data by logical address (so reads return what
was written) and models the flash underneath only to count NAND page programs: each host page goes to the next
free page of the open erase block; when free erase blocks run low, the closed block with the fewest valid pages is
the victim (greedy), its valid pages are copied into the open block (NAND writes the host never asked for) and it
is erased. DLWA = NAND bytes written / host bytes written; over-provisioning (OP) is the physical space beyond the
logical capacity, the lever that keeps DLWA down.
"""

from __future__ import annotations

import mmap
from abc import ABC, abstractmethod

import numpy as np
from numba import njit

from tierwise.nemo.device.base import BLOCK_SIZE, DeviceStats, ZoneError

_FREE, _OPEN, _CLOSED = 0, 1, 2


class BlockStats(DeviceStats):
    """Host I/O counters plus the FTL's NAND programs, GC copies and erases."""

    def __init__(self):
        super().__init__(0)
        self.nand_pages_written = 0
        self.gc_page_copies = 0
        self.erases = 0
        self.trims = 0
        self.page_size = BLOCK_SIZE

    @property
    def nand_bytes_written(self) -> int:
        return self.nand_pages_written * self.page_size

    def as_dict(self) -> dict[str, int | float]:
        return super().as_dict() | {"gc_page_copies": self.gc_page_copies, "erases": self.erases, "trims": self.trims}


class BlockDevice(ABC):
    """A block-interface device: byte offsets, writes and trims in whole blocks, reads of any range."""

    block_size: int
    capacity_bytes: int
    stats: BlockStats

    @abstractmethod
    def write(self, offset: int, data) -> None: ...

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def trim(self, offset: int, length: int) -> None: ...

    def close(self) -> None:
        """Release resources."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@njit(cache=True)
def _program(lpns, l2p, p2l, valid, state, free, ctr, ppb, gc_reserve):
    """Write logical pages `lpns`; ctr = [open block, next page in it, free count, nand pages, gc copies, erases]."""
    for lpn in lpns:
        old = l2p[lpn]
        if old >= 0:
            p2l[old] = -1
            valid[old // ppb] -= 1
        _place(lpn, l2p, p2l, valid, state, free, ctr, ppb)
        while ctr[2] < gc_reserve:
            _collect(l2p, p2l, valid, state, free, ctr, ppb)


@njit(cache=True)
def _place(lpn, l2p, p2l, valid, state, free, ctr, ppb):
    if ctr[1] == ppb:  # open block full: close it, open the next free one
        state[ctr[0]] = _CLOSED
        ctr[2] -= 1
        ctr[0] = free[ctr[2]]
        state[ctr[0]] = _OPEN
        ctr[1] = 0
    ppn = ctr[0] * ppb + ctr[1]
    ctr[1] += 1
    l2p[lpn] = ppn
    p2l[ppn] = lpn
    valid[ctr[0]] += 1
    ctr[3] += 1


@njit(cache=True)
def _collect(l2p, p2l, valid, state, free, ctr, ppb):
    """Greedy GC: erase the closed block with the fewest valid pages after moving them to the open block."""
    victim, best = -1, ppb + 1
    for b in range(valid.shape[0]):
        if state[b] == _CLOSED and valid[b] < best:
            victim, best = b, valid[b]
    for ppn in range(victim * ppb, (victim + 1) * ppb):
        lpn = p2l[ppn]
        if lpn >= 0:
            p2l[ppn] = -1
            valid[victim] -= 1
            _place(lpn, l2p, p2l, valid, state, free, ctr, ppb)
            ctr[4] += 1
    state[victim] = _FREE
    free[ctr[2]] = victim
    ctr[2] += 1
    ctr[5] += 1


@njit(cache=True)
def _trim(lpns, l2p, p2l, valid, ppb):
    for lpn in lpns:
        old = l2p[lpn]
        if old >= 0:
            p2l[old] = -1
            valid[old // ppb] -= 1
            l2p[lpn] = -1


class FtlSSD(BlockDevice):
    """A conventional SSD of `capacity_bytes` logical bytes with `op` over-provisioning (0.07 = 7% extra flash),
    erase blocks of `pages_per_block` 4 KB pages, and GC that keeps `gc_reserve` erase blocks free."""

    def __init__(self, capacity_bytes: int, *, op: float = 0.07, pages_per_block: int = 256,
                 page_size: int = BLOCK_SIZE, gc_reserve: int = 2):
        if page_size <= 0 or page_size % 512 or capacity_bytes <= 0 or capacity_bytes % page_size:
            raise ZoneError(f"capacity {capacity_bytes} B must be a positive multiple of the page size {page_size}")
        if op < 0 or pages_per_block < 1 or gc_reserve < 2:
            # GC starts below gc_reserve free blocks and its copies may need one more block: reserve >= 2
            raise ZoneError("op must be >= 0, pages_per_block >= 1 and gc_reserve >= 2")
        self.block_size = page_size
        self.capacity_bytes = capacity_bytes
        self.op = op
        self.pages_per_block = pages_per_block
        self.gc_reserve = gc_reserve
        logical_pages = capacity_bytes // page_size
        self.physical_blocks = int(np.ceil(logical_pages * (1 + op) / pages_per_block))
        spare = self.physical_blocks - -(-logical_pages // pages_per_block)
        if spare < gc_reserve + 1:
            raise ZoneError(f"over-provisioning {op:.1%} leaves {spare} spare erase block(s); GC needs at least "
                            f"{gc_reserve + 1}: raise op or use smaller erase blocks")
        n_ppn = self.physical_blocks * pages_per_block
        self._l2p = np.full(logical_pages, -1, dtype=np.int64)
        self._p2l = np.full(n_ppn, -1, dtype=np.int64)
        self._valid = np.zeros(self.physical_blocks, dtype=np.int64)
        self._state = np.zeros(self.physical_blocks, dtype=np.int8)
        self._free = np.arange(self.physical_blocks - 1, -1, -1, dtype=np.int64)  # a stack of free blocks
        # open block, next page, free count, nand pages, gc copies, erases
        self._ctr = np.array([0, 0, self.physical_blocks, 0, 0, 0], dtype=np.int64)
        self._ctr[2] -= 1
        self._ctr[0] = self._free[self._ctr[2]]
        self._state[self._ctr[0]] = _OPEN
        self._map = mmap.mmap(-1, capacity_bytes)
        self._mv = memoryview(self._map)
        self.stats = BlockStats()
        self.stats.page_size = page_size

    def _pages(self, offset: int, length: int, what: str) -> np.ndarray:
        ps = self.block_size
        if offset < 0 or length <= 0 or offset % ps or length % ps or offset + length > self.capacity_bytes:
            raise ZoneError(f"{what} of {length} B at {offset}: must be whole {ps} B pages inside "
                            f"[0, {self.capacity_bytes})")
        return np.arange(offset // ps, (offset + length) // ps, dtype=np.int64)

    def write(self, offset: int, data) -> None:
        if type(data) is not bytes and type(data) is not bytearray:
            data = memoryview(data).cast("B")
        lpns = self._pages(offset, len(data), "write")
        self._mv[offset:offset + len(data)] = data
        _program(lpns, self._l2p, self._p2l, self._valid, self._state, self._free, self._ctr,
                 self.pages_per_block, self.gc_reserve)
        self._sync_counters()
        self.stats.bytes_written += len(data)
        self.stats.write_ios += 1

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length <= 0 or offset + length > self.capacity_bytes:
            raise ZoneError(f"read of {length} B at {offset} outside [0, {self.capacity_bytes})")
        self.stats.bytes_read += length
        self.stats.read_ios += 1
        return self._mv[offset:offset + length].tobytes()

    def trim(self, offset: int, length: int) -> None:
        lpns = self._pages(offset, length, "trim")
        _trim(lpns, self._l2p, self._p2l, self._valid, self.pages_per_block)
        self._mv[offset:offset + length] = bytes(length)  # trimmed pages read as zeros
        self.stats.trims += 1

    def _sync_counters(self) -> None:
        self.stats.nand_pages_written = int(self._ctr[3])
        self.stats.gc_page_copies = int(self._ctr[4])
        self.stats.erases = int(self._ctr[5])
        # an erase is this device's reset: the first one marks the end of the first fill, as a zone reset does on
        # zoned devices (the replay's warm-up watches `resets`)
        self.stats.resets = self.stats.erases

    @property
    def valid_pages(self) -> int:
        return int(self._valid.sum())

    def close(self) -> None:
        if not self._map.closed:
            self._mv.release()
            self._map.close()
