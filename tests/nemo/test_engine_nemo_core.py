"""The compiled Nemo path (core.py, fastreplay.py) against the Python path, and the native primitives under it."""

from __future__ import annotations

import crc32c
import numpy as np
import pytest
import xxhash
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo import native
from tierwise.nemo.engines.nemo import core
from tierwise.nemo.layout import PAGE_SIZE
from tierwise.nemo.lookaside import VersionTable, slot_of, spell_key, store_at, value_bytes, version_at
from tierwise.nemo.replay import ReplayOptions, open_engine, replay
from tierwise.nemo.traces import Op, SyntheticTrace, key_bytes
from tierwise.nemo.traces.request import make_chunk

pytestmark = pytest.mark.skipif(not native.HAVE_XXH3, reason="the xxhash build exports no XXH3_128bits_withSeed")


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


def _replay(trace, compiled: bool, **opts):
    engine = open_engine("nemo", flash_mb=2, zone_kb=64, **opts)
    engine.compiled = compiled  # write-back too
    result = replay(engine, trace, ReplayOptions(sample_every=20_000, warmup=0.5, progress=False, compiled=compiled))
    return engine, result


def _nonzero(d: dict) -> dict:
    return {k: v for k, v in d.items() if v}


def test_compiled_replay_equals_the_python_path_exactly():
    """Same trace both ways, with every mechanism at work (delayed flush, write-back, PBFG fetches, tombstones,
    evictions): identical metrics, time series, device counters and flash bytes."""
    trace = list(SyntheticTrace("twitter-merged", 120_000, 5))
    (pe, pr), (ce, cr) = (_replay(trace, c, flush_threshold=4, filter_budget=0.5) for c in (False, True))
    ps, cs = dict(pr.summary), dict(cr.summary)
    assert _nonzero(ps.pop("counters")) == _nonzero(cs.pop("counters"))
    assert ps == cs and pr.series == cr.series and pr.counters == cr.counters
    c = cr.summary["counters"]
    assert c["sg_evictions"] > 5 and c["writeback_hot"] + c["writeback_cold"] > 0 and c["tombstones"] > 0
    assert c["dropped_objects"] > 0 and cr.summary["index_reads_per_get"] > 0 and cr.counters["wrong_values"] == 0
    assert pe.device.stats.as_dict() == ce.device.stats.as_dict()
    assert pe.device.report_zones() == ce.device.report_zones()
    assert np.array_equal(pe.device.array, ce.device.array)


def _trace(rows) -> list[np.ndarray]:
    chunk = make_chunk(len(rows))
    for i, (op, key, key_size, value_size) in enumerate(rows):
        chunk[i] = (op, key, key_size, value_size, 0, 0)
    return [chunk]


@pytest.mark.parametrize("compiled", [False, True])
def test_an_uncacheable_set_invalidates_the_cached_value(compiled):
    trace = _trace([(Op.SET, 5, 20, 100), (Op.GET, 5, 20, 100), (Op.SET, 5, 20, 3000), (Op.GET, 5, 20, 3000)])
    engine = open_engine("nemo", flash_mb=2, zone_kb=64)
    result = replay(engine, trace, ReplayOptions(sample_every=0, progress=False, compiled=compiled))
    assert result.counters["uncacheable"] == 2 and result.counters["wrong_values"] == 0
    assert result.summary["gets"] == 2 and result.summary["miss_ratio"] == 0.5


@pytest.mark.parametrize("compiled", [False, True])
def test_bad_delete_key_is_reported(compiled):
    engine = open_engine("nemo", flash_mb=2, zone_kb=64)
    with pytest.raises(TierwiseError, match="key length 300"):
        replay(engine, _trace([(Op.SET, 1, 20, 50), (Op.DELETE, 1, 300, 0)]),
               ReplayOptions(sample_every=0, progress=False, compiled=compiled))


def test_compiled_get_treats_a_corrupt_flash_page_as_a_miss():
    engine = open_engine("nemo", flash_mb=2, zone_kb=64, flush_threshold=1)
    keys = [b"key%05d" % i for i in range(3000)]
    for k in keys:
        engine.set(k, k * 10)
    engine.flush()
    zone, offset = engine._addr(0, 1)  # set 0 of the first SG
    engine.device.array[zone * engine.device.zone_capacity + offset + PAGE_SIZE // 2] ^= 0xFF
    state, hits = engine.core_state(), 0
    for k in keys:
        where, start, n, page = core.get(state, np.frombuffer(k, np.uint8), engine.pbfg._out)
        if where >= 0:
            assert page[start:start + n].tobytes() == k * 10
            hits += 1
    engine.fold_core_counters()
    assert engine.metrics.counters["corrupt_set_pages"] > 0 and 0 < hits < len(keys)
