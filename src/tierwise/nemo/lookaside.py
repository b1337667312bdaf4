"""What a lookaside replay needs per request, usable from Python and from compiled replay loops alike.

- `value_start`: values are deterministic bytes per (key id, version): a slice of one fixed random pool starting at
  a mix of both, so a hit can be checked byte for byte without storing values.
- `spell_key`: the key bytes of a key id (the same bytes as `tierwise.nemo.traces.request.key_bytes`).
- `VersionTable`: key id -> (version, value size) the cache should hold, an open-addressing table in arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

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


@njit(cache=True)
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


@njit(cache=True)
def _slot(keys, used, key_id) -> int:
    """The slot holding `key_id`, or the empty slot where it goes (linear probing; the table is never full)."""
    mask = keys.shape[0] - 1
    h = np.uint64(key_id) * _M1
    i = np.int64((h ^ (h >> np.uint64(29))) & np.uint64(mask))
    while used[i] and keys[i] != key_id:
        i = (i + 1) & mask
    return i


@njit(cache=True)
def _rehash(keys, used, versions, sizes, new_keys, new_used, new_versions, new_sizes) -> None:
    for i in range(keys.shape[0]):
        if used[i]:
            s = _slot(new_keys, new_used, keys[i])
            new_keys[s], new_used[s], new_versions[s], new_sizes[s] = keys[i], True, versions[i], sizes[i]


class VersionTable:
    """key id -> (version, value size); compiled code uses `lookup` / `store` on the arrays (`arrays()`)."""

    def __init__(self, capacity: int = 1 << 16):
        self._alloc(capacity)
        self.count = np.zeros(1, np.int64)

    def _alloc(self, capacity: int) -> None:
        self.keys = np.zeros(capacity, np.uint64)
        self.used = np.zeros(capacity, np.bool_)
        self.versions = np.zeros(capacity, np.int64)
        self.sizes = np.zeros(capacity, np.int64)

    def reserve(self, more: int) -> None:
        """Room for `more` new keys at a load factor of at most 1/2."""
        cap = self.keys.shape[0]
        while 2 * (int(self.count[0]) + more) > cap:
            cap *= 2
        if cap != self.keys.shape[0]:
            old = self.arrays()
            self._alloc(cap)
            _rehash(*old[:4], *self.arrays()[:4])

    def arrays(self) -> tuple:
        return self.keys, self.used, self.versions, self.sizes, self.count


@njit(cache=True)
def lookup(table, key_id, default_size):
    """(version, value size) of `key_id`, or (0, default_size) if never seen."""
    keys, used, versions, sizes, _ = table
    s = _slot(keys, used, key_id)
    if used[s]:
        return versions[s], sizes[s]
    return 0, default_size


@njit(cache=True)
def store(table, key_id, version, size) -> None:
    keys, used, versions, sizes, count = table
    s = _slot(keys, used, key_id)
    if not used[s]:
        keys[s], used[s] = key_id, True
        count[0] += 1
    versions[s], sizes[s] = version, size
