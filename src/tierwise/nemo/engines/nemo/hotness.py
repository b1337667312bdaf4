"""Hybrid hotness tracking (nemo.md §3.7): frequency = one access bit per object slot, kept only for the oldest
`window` of live SGs; recency = the object's PBFG is cached. Hot = bit set AND PBFG cached (write-back only visits
cached offsets; cooling clears the bits of the others). The bits are a (window, S) uint16 array: row seq % window is
SG seq's while it is in the window."""

from __future__ import annotations

import math

import numpy as np

from tierwise.nemo.native import internal

SLOTS = 16  # bits per (SG, set) ≈ 1 bit per object (a set holds ~15 objects at 246 B); later slots are never hot


def window_sgs(data_slots: int, window: float) -> int:
    """SGs tracked: [oldest, oldest + window)."""
    return max(1, math.ceil(window * data_slots))


def cool_every(data_slots: int, cooling: float) -> int:
    """SG flushes between clears of every bit (10% of the cache's writes)."""
    return max(1, math.ceil(cooling * data_slots))


@internal(inline=True)
def mark(bits, seq, oldest, j, slot):
    """A flash hit on object slot `slot` of set j of SG seq: set its bit if the SG is in the window."""
    window = bits.shape[0]
    if seq < oldest + window and slot < SLOTS:
        bits[seq % window, j] |= np.uint16(1 << slot)


@internal
def on_evict(bits, oldest):
    """SG `oldest` leaves; its row now belongs to SG oldest + window, which enters the window with no history."""
    bits[oldest % bits.shape[0], :] = 0


@internal
def on_flush(bits, slot_of, flushes, every):
    """After the `flushes`-th SG flush: cool down every `every` flushes. As in the artifact (`coldZone`), only sets
    whose PBFG is no longer cached forget their hits: a cached set's bits keep counting over the whole window, where
    clearing them too would leave an evicted SG only the hits of its last cooling period."""
    if flushes % every == 0:
        for j in range(bits.shape[1]):
            if slot_of[j] < 0:
                bits[:, j] = 0
