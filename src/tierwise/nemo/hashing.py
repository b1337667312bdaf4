"""Key hashing shared by every set-based engine: one xxh3-128 per key gives the set offset and the Bloom positions.

The low 64 bits choose the set offset j (the same j in every SetGroup), the high 64 bits seed the Bloom probes
(double hashing h1 + i*h2). Using disjoint halves keeps the filter positions independent of the offset, which
matters because every key in one set-level filter shares the same j.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import xxhash
from numba import njit

from tierwise.nemo.native import xxh3_128

DEFAULT_SEED = 0x6E656D6F  # "nemo"; stored in the SG header so a reopened cache hashes the same way

_MASK64 = (1 << 64) - 1


class KeyHash(NamedTuple):
    """What a lookup needs from one key, computed once: set offset and the two Bloom seeds."""

    offset: int  # set offset j in [0, num_sets)
    h1: int  # Bloom base (low 32 bits of the high half)
    h2: int  # Bloom step (high 32 bits of the high half, forced odd)


def hash128(key: bytes, seed: int = DEFAULT_SEED) -> int:
    return xxhash.xxh3_128_intdigest(key, seed)


def key_hash(key: bytes, num_sets: int, seed: int = DEFAULT_SEED) -> KeyHash:
    h = xxhash.xxh3_128_intdigest(key, seed)
    lo = h & _MASK64
    hi = h >> 64
    return KeyHash(lo % num_sets, hi & 0xFFFFFFFF, (hi >> 32) | 1)


def set_offset(key: bytes, num_sets: int, seed: int = DEFAULT_SEED) -> int:
    return (xxhash.xxh3_128_intdigest(key, seed) & _MASK64) % num_sets


@njit(cache=True)
def bloom_positions(h1: int, h2: int, k: int, m_bits: int) -> np.ndarray:
    """The k bit positions of a key in an m-bit filter (Kirsch–Mitzenmacher double hashing)."""
    out = np.empty(k, np.int64)
    bloom_positions_into(h1, h2, m_bits, out)
    return out


@njit(cache=True, inline="always")
def bloom_positions_into(h1: int, h2: int, m_bits: int, out: np.ndarray) -> None:
    """`bloom_positions` into a caller's array of k elements (no allocation on compiled hot paths).

    Position i is (h1 + i*h2) mod m. h1, h2 < 2^32, so the sum never wraps 64 bits and the positions can be
    stepped modulo m: two (unsigned) divisions instead of k (a 64-bit division costs tens of cycles).
    """
    m = np.int64(m_bits)
    x = np.int64(np.uint64(h1) % np.uint64(m))
    step = np.int64(np.uint64(h2) % np.uint64(m))
    for i in range(out.shape[0]):
        out[i] = x
        x += step
        if x >= m:
            x -= m


@njit(cache=True, inline="always")
def key_hash_into(key, seed, num_sets, m_bits, out) -> int:
    """`key_hash` + `bloom_positions` in one compiled call (needs `tierwise.nemo.native.HAVE_XXH3`): the set offset
    of a key given as a uint8 array; its Bloom positions go into `out` (k elements)."""
    lo, hi = xxh3_128(key, np.uint64(seed))
    bloom_positions_into(np.int64(hi & np.uint64(0xFFFFFFFF)), np.int64((hi >> np.uint64(32)) | np.uint64(1)), m_bits,
                         out)
    return np.int64(lo % np.uint64(num_sets))
