"""The native primitives under the compiled engines: XXH3-128 and CRC-32C equal to the Python packages, byte copies
and loads, the replay's key spelling and version table, and state bundles passed by reference."""

from __future__ import annotations

from collections import namedtuple

import crc32c
import numpy as np
import pytest
import xxhash
from numba import njit

from tierwise.nemo import native
from tierwise.nemo.lookaside import VersionTable, slot_of, spell_key, store_at, value_bytes, version_at
from tierwise.nemo.native import Pinned, lazy_zeros, ref_of
from tierwise.nemo.traces import key_bytes


def test_native_hash_and_checksum_equal_the_python_packages():
    rng = np.random.default_rng(0)
    for n in range(0, 300):
        data = rng.integers(0, 256, n, dtype=np.uint8)
        lo, hi = native.xxh3_128(data, 0x6E656D6F)
        assert int(hi) << 64 | int(lo) == xxhash.xxh3_128_intdigest(data.tobytes(), 0x6E656D6F)
    buf = rng.integers(0, 256, 12_300, dtype=np.uint8)
    for n in list(range(0, 70)) + [182, 4079, 4080, 4081, 4092, 4096, 8160, 8161, 12_241]:
        for start in (0, 1, 4, 7):  # unaligned starts: the words are unaligned loads
            data = buf[start:start + n]
            assert native.crc32c(data) == crc32c.crc32c(data.tobytes()) == native._crc32c_sw(data), (n, start)


@njit
def _copy(dst, d0, src, s0, n):
    native.copy_bytes(dst, d0, src, s0, n)


@njit
def _load(a, i):
    return native.load_u64(a, i)


def test_copy_bytes_moves_overlapping_spans_and_rejects_spans_outside():
    a = np.arange(32, dtype=np.uint8)
    ref = a.copy()
    _copy(a, 4, a, 0, 20)  # overlapping, forwards: memmove semantics, not a byte-by-byte smear
    ref[4:24] = ref[0:20].copy()
    assert a.tolist() == ref.tolist()
    _copy(a, 0, a, 6, 26)
    ref[0:26] = ref[6:32].copy()
    assert a.tolist() == ref.tolist()
    b = np.zeros(8, np.uint8)
    _copy(b, 0, a, 0, 0)
    assert not b.any()
    for d0, s0, n in ((4, 0, 5), (0, 28, 5), (-1, 0, 2), (0, -1, 2)):
        with pytest.raises(IndexError):
            _copy(b, d0, a, s0, n)
    assert not b.any()  # a rejected copy writes nothing


def test_load_u64_reads_little_endian_words_at_any_byte():
    a = np.arange(1, 33, dtype=np.uint8)
    for i in range(0, 25):
        assert _load(a, i) == int.from_bytes(a[i:i + 8].tobytes(), "little")
    rows = a.reshape(4, 8)  # any rank: a flat byte index from the start of the buffer
    assert _load(rows, 9) == int.from_bytes(a[9:17].tobytes(), "little")


def test_spelled_keys_values_and_version_table():
    out = np.zeros(64, np.uint8)
    for kid in (0, 1, 2**40 + 7, 2**64 - 1):
        for size in (1, 5, 11, 12, 40):
            spell_key(np.uint64(kid), size, out)
            assert out[:size].tobytes() == key_bytes(kid, size)
    assert value_bytes(7, 1, 100) == value_bytes(7, 1, 100) != value_bytes(7, 2, 100)
    table = VersionTable(capacity=4)
    ids = np.random.default_rng(1).integers(0, 2**63, 5000).astype(np.uint64)
    for n, kid in enumerate(ids):
        table.reserve(1)  # grows (rehashing) many times
        store_at(table.rows, table.count, slot_of(table.rows, kid), kid, n, n % 300)
    assert table.count[0] == len(set(ids.tolist())) and table.rows.shape[0] >= 2 * table.count[0]
    for n, kid in enumerate(ids):
        assert version_at(table.rows, slot_of(table.rows, kid), -1) == (n, n % 300)
    assert version_at(table.rows, slot_of(table.rows, np.uint64(2**63 + 5)), 77) == (0, 77)


Inner = namedtuple("Inner", ["counts", "scale"])
Outer = namedtuple("Outer", ["values", "inner", "offset"])


@njit
def _bump(inner, i):
    inner.counts[i] += inner.scale  # a member bundle arrives as a Ref: fields read where they lie


@njit
def _use(arena, outer, i):
    P = ref_of(arena, outer)
    _bump(P.inner, i)
    P.values[i] += P.offset
    return P.values[i] + P.inner.counts[i]


def test_pinned_bundle_refs_read_and_write_the_same_arrays():
    outer = Outer(np.zeros(4, np.int64), Inner(np.zeros(4, np.int64), 7), 100)
    pinned = Pinned(outer)
    assert _use(pinned.arena, outer, 2) == 107 and _use(pinned.arena, outer, 2) == 214
    assert outer.values.tolist() == [0, 0, 200, 0] and outer.inner.counts.tolist() == [0, 0, 14, 0]


def test_lazy_zeros_commits_memory_only_where_touched():
    a = lazy_zeros(1 << 34, np.uint8)  # 16 GiB of address space
    a[1 << 33] = 5
    assert a.shape == (1 << 34,) and a[1 << 33] == 5 and a[0] == 0
