"""Bloom filters as byte rows, so many small filters live in one numpy array and probes run in numba.

A *filter* is `m_bits` bits (a whole number of bytes) starting at a byte offset of a uint8 row. A *filter group*
row packs `members` filters bit-sliced (see `group_probe`); testing one key against every member with the same k
positions is the PBFG "parallel" probe. Positions come from `tierwise.nemo.hashing.bloom_positions`
and are computed once per key, then reused for every member and every row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo.hashing import bloom_positions
from tierwise.nemo.native import load_u64

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


# ---- filter groups, bit-sliced ----------------------------------------------------------------------------------
# A *group row* holds `members` filters of m bits each, bit-sliced: bit p of member s is row bit p*members + s
# (row bit i = bit i & 7 of byte i >> 3). The members' bits for one probe position are then adjacent, so testing a
# key against every member takes one load per position instead of one per position and member: the PBFG's
# "test a key against all members at once". No padding between rows: a row is ceil(m * members / 8) bytes; an
# array of rows carries GROUP_ROW_SLACK bytes after its last row, so a probe can load 8 bytes at any row bit.
GROUP_ROW_SLACK = 8


def group_row_bytes(m_bits: int, members: int) -> int:
    return -(-m_bits * members // 8)


def group_rows(n: int, row_bytes: int) -> np.ndarray:
    """n zeroed group rows as an (n, row_bytes) array followed by GROUP_ROW_SLACK bytes of padding in its buffer
    (what `group_probe` needs)."""
    return np.zeros(n * row_bytes + GROUP_ROW_SLACK, np.uint8)[:n * row_bytes].reshape(n, row_bytes)


@njit(cache=True)
def group_add(row, members, member, positions) -> None:
    for p in positions:
        bit = p * members + member
        row[bit >> 3] |= np.uint8(1 << (bit & 7))


@njit(cache=True)
def group_set_member(row, members, member, filt, m_bits) -> None:
    """Make member `member` of the row equal to the plain filter `filt` (bit p at byte p >> 3), OR-ing into a
    member that starts empty; all-ones `filt` marks a member that must match every key."""
    for p in range(m_bits):
        if (filt[p >> 3] >> (p & 7)) & 1:
            bit = p * members + member
            row[bit >> 3] |= np.uint8(1 << (bit & 7))


@njit(cache=True, inline="always")
def _bits_at(rows, r, bitpos, count):
    """`count` (<= 64) bits of row r starting at bit `bitpos`, as the low bits of a uint64: one 8-byte load (bytes
    past the row are the next row's or the array's slack, and land above `count`, where the mask drops them)."""
    byte = bitpos >> 3
    shift = bitpos & 7
    v = load_u64(rows, r * rows.shape[1] + byte) >> np.uint64(shift)
    if shift + count > 64:  # a 64-member word at an odd bit offset spans 9 bytes
        v |= np.uint64(rows[r, byte + 8]) << np.uint64(64 - shift)
    if count < 64:
        v &= (np.uint64(1) << np.uint64(count)) - np.uint64(1)
    return v


@njit(cache=True, inline="always")
def group_probe(rows, r, members, positions, out, n, seq0, lo, hi) -> int:
    """Append seq0 + s to out[n:] for every member s of group row `rows[r]` that may hold the key and whose
    seq0 + s lies in [lo, hi), in ascending s; return the new count. `rows` is an array of rows from `group_rows`
    (passed whole with an index: compiled code creating a view per row pays two atomic reference-count updates).

    Members are tested 64 at a time, stopping at the first position that clears them all.
    """
    for first in range(0, members, 64):
        count = min(64, members - first)
        alive = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - count)
        for p in positions:
            alive &= _bits_at(rows, r, p * members + first, count)
            if alive == np.uint64(0):
                break
        s = seq0 + first
        while alive != np.uint64(0):
            if alive & np.uint64(1) and lo <= s < hi:
                out[n] = s
                n += 1
            alive >>= np.uint64(1)
            s += 1
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
