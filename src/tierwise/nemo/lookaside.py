"""What a lookaside replay needs per request, usable from Python and from compiled replay loops alike.

- `value_start`: values are deterministic bytes per (key id, version): a slice of one fixed random pool starting at
  a mix of both, so a hit can be checked byte for byte without storing values.
- `spell_key`: the key bytes of a key id (the same bytes as `tierwise.nemo.traces.request.key_bytes`).
- `VersionTable`: key id -> (version, value size, expiry, TTL) the cache should hold, an open-addressing table in
  one array.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tierwise.nemo.native import unref

POOL_BYTES = 1 << 20
POOL = np.random.default_rng(0x5EED).integers(0, 256, POOL_BYTES, dtype=np.uint8)  # compiled code takes it as an
# argument: numba cannot cache functions that read large global arrays
_M1, _M2, _M3 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)
_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", np.uint8)
_ID_CHARS = 11  # tierwise.nemo.traces.request._ID_CHARS


@njit(cache=True)
def value_start(key_id, version, size) -> int:
    """Where in POOL the `size`-byte value of `key_id` at `version` starts."""
    x = np.uint64(key_id) * _M1 + np.uint64(version) * _M2 + _M3
    x ^= x >> np.uint64(31)
    return np.int64(x % np.uint64(POOL_BYTES - size))


def value_bytes(key_id: int, version: int, size: int) -> bytes:
    start = value_start(np.uint64(key_id), version, size)
    return POOL[start:start + size].tobytes()


@unref
def spell_key(key_id, size, out) -> None:
    """Write the `size` key bytes of `key_id` into out[:size]: base64 of the 8 little-endian id bytes (11 digits,
    truncated for shorter keys), padded with '.'."""
    kid = np.uint64(key_id)
    for g in range(3):
        word = np.uint64(0)
        for b in range(3):
            idx = g * 3 + b
            byte = (kid >> np.uint64(8 * idx)) & np.uint64(0xFF) if idx < 8 else np.uint64(0)
            word = (word << np.uint64(8)) | byte
        for d in range(4):
            pos = g * 4 + d
            if pos < _ID_CHARS and pos < size:
                out[pos] = _B64[(word >> np.uint64(18 - 6 * d)) & np.uint64(63)]
    for pos in range(_ID_CHARS, size):
        out[pos] = 46  # '.'


# VersionTable rows: [key id, (version + 1) | value size << 32, expiry | TTL << 32] (version + 1 = 0: empty row);
# 24 bytes, so a request's probe and its expiry are (mostly) one cache line
_KEY, _STATE, _LIFE = 0, 1, 2
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, inline="always")
def home_slot(rows, key_id) -> int:
    """Where the probe for `key_id` starts (a replay loop can prefetch it a few requests ahead)."""
    h = np.uint64(key_id) * _M1
    return np.int64((h ^ (h >> np.uint64(29))) & np.uint64(rows.shape[0] - 1))


@njit(cache=True)
def slot_of(rows, key_id) -> int:
    """The row holding `key_id`, or the empty row where it goes (linear probing; the table is never full)."""
    mask = rows.shape[0] - 1
    kid = np.uint64(key_id)
    i = home_slot(rows, kid)
    while rows[i, _STATE] & _LOW32 != 0 and rows[i, _KEY] != kid:
        i = (i + 1) & mask
    return i


@njit(cache=True)
def version_at(rows, slot, default_size):
    """(version, value size) in row `slot`, or (0, default_size) for an empty row (a key never seen)."""
    state = rows[slot, _STATE]
    if state & _LOW32 == 0:
        return 0, default_size
    return np.int64(state & _LOW32) - 1, np.int64(state >> np.uint64(32))


@njit(cache=True)
def store_at(rows, count, slot, key_id, version, size) -> None:
    if rows[slot, _STATE] & _LOW32 == 0:
        rows[slot, _KEY] = np.uint64(key_id)
        count[0] += 1
    rows[slot, _STATE] = np.uint64(version + 1) | (np.uint64(size) << np.uint64(32))


@njit(cache=True)
def _rehash(rows, new_rows) -> None:
    for i in range(rows.shape[0]):
        if rows[i, _STATE] & _LOW32 != 0:
            new_rows[slot_of(new_rows, rows[i, _KEY])] = rows[i]


@njit(cache=True, inline="always")
def life_of(rows, slot):
    """(expiry, ttl) in seconds of the key in row `slot` (0: none)."""
    v = rows[slot, _LIFE]
    return np.int64(v & _LOW32), np.int64(v >> np.uint64(32))


@njit(cache=True, inline="always")
def store_life(rows, slot, expiry, ttl) -> None:
    rows[slot, _LIFE] = np.uint64(expiry) | (np.uint64(ttl) << np.uint64(32))


class VersionTable:
    """key id -> (version, value size) the cache should hold, for compiled replay loops (`slot_of`, `version_at`,
    `store_at` on `rows` and `count`), and the expiry of that version and the TTL the key was last written with
    (`life_of`, `store_life`)."""

    def __init__(self, capacity: int = 1 << 16):
        self.rows = np.zeros((capacity, 3), np.uint64)
        self.count = np.zeros(1, np.int64)

    def reserve(self, more: int) -> None:
        """Room for `more` new keys at a load factor of at most 1/2."""
        cap = self.rows.shape[0]
        while 2 * (int(self.count[0]) + more) > cap:
            cap *= 2
        if cap != self.rows.shape[0]:
            rows = np.zeros((cap, 3), np.uint64)
            _rehash(self.rows, rows)
            self.rows = rows
