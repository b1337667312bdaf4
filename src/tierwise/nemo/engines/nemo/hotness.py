"""Hybrid hotness tracking (nemo.md §3.7): frequency = one access bit per object slot, kept only for the oldest
`window` of live SGs; recency = the object's PBFG is cached. Hot = bit set AND PBFG cached (the caller checks the
second half, which it knows from the index cache)."""

from __future__ import annotations

import math

import numpy as np

SLOTS = 16  # bits per (SG, set) ≈ 1 bit per object (a set holds ~15 objects at 246 B); later slots are never hot


class HotnessTracker:
    def __init__(self, data_slots: int, sets: int, window: float, cooling: float):
        self.window = max(1, math.ceil(window * data_slots))  # SGs tracked: [oldest, oldest + window)
        self.cool_every = max(1, math.ceil(cooling * data_slots))  # SG flushes between clears (10% of writes)
        self.bits = np.zeros((self.window, sets), np.uint16)
        self._flushes = 0

    def tracked(self, seq: int, oldest: int) -> bool:
        return seq < oldest + self.window

    def mark(self, seq: int, j: int, slot: int) -> None:
        if slot < SLOTS:
            self.bits[seq % self.window, j] |= np.uint16(1 << slot)

    def set_bits(self, seq: int, j: int) -> int:
        return int(self.bits[seq % self.window, j])

    def on_evict(self, oldest: int) -> None:
        """SG `oldest` leaves; its row now belongs to SG oldest + window, which enters the window with no history."""
        self.bits[oldest % self.window] = 0

    def on_flush(self) -> None:
        self._flushes += 1
        if self._flushes % self.cool_every == 0:
            self.bits[:] = 0

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes
