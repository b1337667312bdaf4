"""Bloom filters as byte rows, so many small filters live in one numpy array and probes run in numba.

A *filter* is `m_bits` bits (a whole number of bytes) starting at a byte offset of a uint8 row. A *filter group*
row packs `members` filters back to back (member g at bytes [g*mb, (g+1)*mb)); testing one key against every member
with the same k positions is the PBFG "parallel" probe. Positions come from `tierwise.nemo.hashing.bloom_positions`
and are computed once per key, then reused for every member and every row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo.hashing import bloom_positions

LN2_SQ = math.log(2) ** 2


@dataclass(frozen=True)
class FilterParams:
    m_bits: int  # bits per filter, a multiple of 8
    k: int  # hash functions

    @property
    def nbytes(self) -> int:
        return self.m_bits // 8

    @classmethod
    def for_objects(cls, expected: float, fp_rate: float) -> "FilterParams":
        """Optimal sizing for `expected` elements at false-positive rate `fp_rate` (m = -n ln p / ln² 2)."""
        if expected <= 0 or not 0 < fp_rate < 1:
            raise TierwiseError(f"Bloom sizing needs expected > 0 and 0 < fp < 1 (got {expected}, {fp_rate})")
        m = max(8, math.ceil(-expected * math.log(fp_rate) / LN2_SQ))
        m = (m + 7) // 8 * 8
        k = max(1, min(32, round(m / expected * math.log(2))))
        return cls(m, k)

    def false_positive_rate(self, n: float) -> float:
        """Expected FP rate holding n elements."""
        return (1.0 - math.exp(-self.k * n / self.m_bits)) ** self.k

    def positions(self, h1: int, h2: int) -> np.ndarray:
        return bloom_positions(h1, h2, self.k, self.m_bits)


@njit(cache=True)
def filter_add(row, byte_base, positions) -> None:
    for p in positions:
        row[byte_base + (p >> 3)] |= np.uint8(1 << (p & 7))


@njit(cache=True)
def filter_test(row, byte_base, positions) -> bool:
    for p in positions:
        if (row[byte_base + (p >> 3)] >> (p & 7)) & 1 == 0:
            return False
    return True


@njit(cache=True)
def group_probe(row, members, member_bytes, positions, out) -> int:
    """Write the indices of the members of a filter-group row that may hold the key into `out` (ascending);
    return the count.

    The parallel probe: each probe position is tested in every surviving member at once (a bit mask per 64
    members), stopping when none survives. One early exit per 64 members instead of one per member keeps the
    branch predictor out of the way when tens of filters are probed per lookup.
    """
    n = 0
    for first in range(0, members, 64):
        count = min(64, members - first)
        alive = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - count)
        for p in positions:
            byte = first * member_bytes + (p >> 3)
            bit = p & 7
            hits = np.uint64(0)
            for g in range(count):
                hits |= np.uint64((row[byte + g * member_bytes] >> bit) & 1) << np.uint64(g)
            alive &= hits
            if alive == 0:
                break
        while alive:
            g = 0
            while not (alive >> np.uint64(g)) & np.uint64(1):
                g += 1
            out[n] = first + g
            n += 1
            alive &= alive - np.uint64(1)
    return n


class BloomArray:
    """`n` independent filters of one size (e.g. one per set), stored as a (n, m_bits/8) uint8 array."""

    def __init__(self, n: int, params: FilterParams):
        self.params = params
        self.bits = np.zeros((n, params.nbytes), np.uint8)

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    def add(self, i: int, positions: np.ndarray) -> None:
        filter_add(self.bits[i], 0, positions)

    def contains(self, i: int, positions: np.ndarray) -> bool:
        return filter_test(self.bits[i], 0, positions)

    def clear(self, i: int) -> None:
        self.bits[i] = 0
