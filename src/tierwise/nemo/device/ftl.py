"""The flash translation layer of the conventional-SSD model: a page-mapped FTL with greedy garbage collection.

Host pages go to the next free page of the open erase block. When free erase blocks run low, the closed block with
the fewest valid pages is the victim (greedy): its valid pages are copied into the open block (NAND writes the host
never asked for) and it is erased. DLWA = NAND pages programmed / host pages written; over-provisioning (OP) is the
physical space beyond the logical capacity, the lever that keeps DLWA down.

The mapping lives in an `Ftl` bundle of arrays; `program` and `trim` are what the device layer (`flash.py`) calls
for each host write and trim. Every NAND page operation is also reported to the device's timing model.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from tierwise.nemo.device import timing
from tierwise.nemo.native import internal

_FREE, _OPEN, _CLOSED = 0, 1, 2

# ctr: the FTL's scalars
OPEN_BLOCK, NEXT_PAGE, FREE_COUNT, NAND_PAGES, GC_COPIES, ERASES, TRIMS = range(7)

Ftl = namedtuple("Ftl", [
    "l2p",  # int64[logical pages]: physical page of each logical page, -1 = unmapped
    "p2l",  # int64[physical pages]: logical page stored in each physical page, -1 = free or stale
    "valid",  # int64[erase blocks]: valid pages per block
    "state",  # int8[erase blocks]: free / open / closed
    "free",  # int64[erase blocks]: a stack of free blocks (the first ctr[FREE_COUNT] entries)
    "ctr",  # int64[7]: the scalars above
    "pages_per_block",  # int
    "gc_reserve",  # int: GC runs while fewer blocks than this are free
])


def new_ftl(logical_pages: int, physical_blocks: int, pages_per_block: int, gc_reserve: int) -> Ftl:
    """An empty FTL (all pages unmapped, every block free but the open one)."""
    ctr = np.zeros(7, np.int64)
    free = np.arange(physical_blocks - 1, -1, -1, dtype=np.int64)
    state = np.zeros(physical_blocks, np.int8)
    ctr[FREE_COUNT] = physical_blocks - 1
    ctr[OPEN_BLOCK] = free[ctr[FREE_COUNT]]
    state[ctr[OPEN_BLOCK]] = _OPEN
    return Ftl(np.full(logical_pages, -1, np.int64), np.full(physical_blocks * pages_per_block, -1, np.int64),
               np.zeros(physical_blocks, np.int64), state, free, ctr, pages_per_block, gc_reserve)


def no_ftl() -> Ftl:
    """The empty bundle a zoned device carries in its `ftl` field (same types, no pages)."""
    e = np.zeros(0, np.int64)
    return Ftl(e, e, e, np.zeros(0, np.int8), e, np.zeros(7, np.int64), 1, 2)


@internal
def program(ftl, T, first_lpn, n):
    """Write logical pages [first_lpn, first_lpn + n): each goes to the next page of the open block; GC keeps
    `gc_reserve` blocks free. (ftl, T: Refs of the Ftl bundle and of the device's Timing.)"""
    for lpn in range(first_lpn, first_lpn + n):
        old = ftl.l2p[lpn]
        if old >= 0:
            ftl.p2l[old] = -1
            ftl.valid[old // ftl.pages_per_block] -= 1
        _place(ftl, T, lpn)
        while ftl.ctr[FREE_COUNT] < ftl.gc_reserve:
            _collect(ftl, T)


@internal
def _place(ftl, T, lpn):
    ppb, ctr = ftl.pages_per_block, ftl.ctr
    if ctr[NEXT_PAGE] == ppb:  # open block full: close it, open the next free one
        ftl.state[ctr[OPEN_BLOCK]] = _CLOSED
        ctr[FREE_COUNT] -= 1
        ctr[OPEN_BLOCK] = ftl.free[ctr[FREE_COUNT]]
        ftl.state[ctr[OPEN_BLOCK]] = _OPEN
        ctr[NEXT_PAGE] = 0
    ppn = ctr[OPEN_BLOCK] * ppb + ctr[NEXT_PAGE]
    ctr[NEXT_PAGE] += 1
    ftl.l2p[lpn] = ppn
    ftl.p2l[ppn] = lpn
    ftl.valid[ctr[OPEN_BLOCK]] += 1
    ctr[NAND_PAGES] += 1
    timing.program_pages(T, ctr[OPEN_BLOCK], ctr[NEXT_PAGE] - 1, 1)


@internal
def _collect(ftl, T):
    """Greedy GC: erase the closed block with the fewest valid pages after moving them to the open block."""
    ppb = ftl.pages_per_block
    victim, best = -1, ppb + 1
    for b in range(ftl.valid.shape[0]):
        if ftl.state[b] == _CLOSED and ftl.valid[b] < best:
            victim, best = b, ftl.valid[b]
    for ppn in range(victim * ppb, (victim + 1) * ppb):
        lpn = ftl.p2l[ppn]
        if lpn >= 0:
            timing.background_read(T, victim, ppn - victim * ppb)
            ftl.p2l[ppn] = -1
            ftl.valid[victim] -= 1
            _place(ftl, T, lpn)
            ftl.ctr[GC_COPIES] += 1
    ftl.state[victim] = _FREE
    ftl.free[ftl.ctr[FREE_COUNT]] = victim
    ftl.ctr[FREE_COUNT] += 1
    ftl.ctr[ERASES] += 1
    timing.erase(T, victim, ppb)


@internal
def trim(ftl, first_lpn, n):
    """Unmap logical pages [first_lpn, first_lpn + n): GC stops copying them."""
    for lpn in range(first_lpn, first_lpn + n):
        old = ftl.l2p[lpn]
        if old >= 0:
            ftl.p2l[old] = -1
            ftl.valid[old // ftl.pages_per_block] -= 1
            ftl.l2p[lpn] = -1
    ftl.ctr[TRIMS] += 1


@internal(inline=True)
def physical_block(ftl, lpn):
    """(erase block, page in it) holding logical page `lpn` (block -1 if unmapped): where a read goes."""
    ppn = ftl.l2p[lpn]
    if ppn < 0:
        return -1, 0
    return ppn // ftl.pages_per_block, ppn % ftl.pages_per_block
