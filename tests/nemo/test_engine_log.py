"""The Log baseline: FIFO over zones, exact DRAM index (LogIndex), dict-model correctness."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from tierwise.common.errors import TierwiseError
from tierwise.nemo.device import FtlSSD, MemoryZonedDevice
from numba import njit

from tierwise.nemo.engines import make_engine
from tierwise.nemo.engines.paged import (LIVE, index_capacity, index_nbytes, ix_chain_length, ix_insert, ix_lookup,
                                         ix_remove, new_log_index)

from .baseline_helpers import check_against_dict, check_op_list, device_bytes_match, op_lists, random_ops


@njit
def _insert(ix, bucket, tag, loc):
    return ix_insert(ix, bucket, np.uint64(tag), loc)


@njit
def _lookup(ix, bucket, tag):
    return ix_lookup(ix, bucket, np.uint64(tag))


@njit
def _remove(ix, bucket, tag, expect):
    return ix_remove(ix, bucket, np.uint64(tag), expect)


@njit
def _chain(ix, bucket):
    return ix_chain_length(ix, bucket)


def test_log_index_insert_replace_remove_and_capacity():
    ix = new_log_index(4, max_entries=100, capacity=2, max_loc=1 << 32)
    assert _insert(ix, 1, 111, 5) and _insert(ix, 1, 222, 6) and _insert(ix, 3, 333, 7)  # a third entry: pool x2
    assert index_capacity(ix) == 4
    assert not _insert(ix, 1, 111, 9)  # replacement
    assert _lookup(ix, 1, 111) == 9 and _lookup(ix, 1, 222) == 6 and _lookup(ix, 3, 333) == 7
    assert _lookup(ix, 2, 111) == -1 and _chain(ix, 1) == 2
    assert not _remove(ix, 1, 111, 5)  # points elsewhere now: kept
    assert _remove(ix, 1, 111, 9) and _lookup(ix, 1, 111) == -1
    assert ix.st[LIVE] == 2
    assert _insert(ix, 2, 444, 8) and _insert(ix, 2, 555, 10) and index_capacity(ix) == 4  # the freed entry reused
    assert _insert(ix, 0, 666, 11) and index_capacity(ix) == 8  # then the pool doubles again
    assert ix.st[LIVE] == 5 and _lookup(ix, 2, 555) == 10 and _lookup(ix, 1, 222) == 6 and _lookup(ix, 0, 666) == 11
    assert index_nbytes(ix) == ix.head.nbytes + 8 * (8 + 4 + 4)  # tag, 32-bit location, link per entry


def test_log_index_locations_take_32_bits_on_small_devices():
    assert new_log_index(4, 10, max_loc=1 << 32).locs.dtype == np.uint32
    big = new_log_index(4, 10, capacity=2, max_loc=1 << 40)
    assert big.locs.dtype == np.int64 and _insert(big, 0, 1, (1 << 39) + 5) and _lookup(big, 0, 1) == (1 << 39) + 5


@settings(max_examples=25, deadline=None)
@given(op_lists(40))
def test_log_matches_dict_model(ops):
    check_op_list(make_engine("log", MemoryZonedDevice(3, 16 * 4096), buffer_pages=2), ops)


def test_log_fifo_eviction_alwa_and_index_bits():
    dev = MemoryZonedDevice(8, 32 * 4096)
    engine = make_engine("log", dev)
    ops = random_ops(1, 30_000, 20_000, sizes=(200, 300))
    check_against_dict(engine, ops)
    engine.flush()
    s = engine.metrics.summary(engine.dram_bytes(), engine.object_count())
    assert dev.stats.resets > 0  # the ring wrapped: FIFO eviction by zone happened
    assert 1.0 < s["alwa"] < 1.15  # headers + page padding only
    assert s["dram"]["index_bits_per_object"] > 100  # an exact index is expensive, measured from its arrays
    assert device_bytes_match(engine)
    # FIFO: the very first keys set, never rewritten since, are gone
    first = [k for op, k, _ in ops[:200] if op == "set"]
    later = {k for op, k, _ in ops[200:] if op == "set"}
    assert all(engine.get(k) is None for k in first if k not in later)


def test_log_runs_on_a_conventional_ssd_with_dlwa_near_one():
    dev = FtlSSD(2 * 1024 * 1024, op=0.1, pages_per_block=16)  # segments of one 64 KiB erase block
    engine = make_engine("log", dev)
    check_against_dict(engine, random_ops(2, 20_000, 8_000, sizes=(200, 400)))
    assert dev.stats.bytes_written > dev.capacity_bytes  # wrapped around the address space
    assert dev.stats.dlwa < 1.1  # sequential segments: the FTL barely copies
    assert device_bytes_match(engine)


def test_log_rejects_bad_objects_and_options():
    engine = make_engine("log", MemoryZonedDevice(3, 16 * 4096))
    with pytest.raises(TierwiseError):
        engine.set(b"", b"v")
    with pytest.raises(TierwiseError):
        engine.set(b"k", b"x" * 5000)
    with pytest.raises(TierwiseError):
        make_engine("log", MemoryZonedDevice(3, 16 * 4096), no_such_option=1)
    with pytest.raises(TierwiseError):
        make_engine("log", MemoryZonedDevice(1, 16 * 4096))


def test_log_dram_breakdown_separates_index_from_buffer():
    engine = make_engine("log", MemoryZonedDevice(4, 16 * 4096), buffer_pages=4)
    d = engine.dram_bytes()
    assert d["buffer_log"] == 4 * 4096 and d["log_index"] > 0
    assert np.isclose(sum(d.values()), d["buffer_log"] + d["log_index"])


def test_a_reused_zone_whose_objects_were_all_dead_serves_its_new_pages():
    # every object is deleted before its zone is evicted, so evictions hand nothing to the owner; the zone is
    # reused at once and its new pages must not be shadowed by the evicted ones
    engine = make_engine("log", MemoryZonedDevice(2, 2 * 4096), buffer_pages=1)
    for i in range(300):
        key = b"k%d" % i
        assert engine.set(key, b"v" * 500) and engine.get(key) == b"v" * 500
        engine.delete(key)
    assert engine.device.stats.resets > 10


def test_a_device_failure_stops_the_engine_cleanly():
    # the segment write fails half-way through the log's bookkeeping: the engine must refuse later requests
    # rather than go on from a half-updated state (no crash, no stale value)
    dev = MemoryZonedDevice(4, 16 * 4096)
    engine = make_engine("log", dev, buffer_pages=2)
    engine.set(b"kept", b"v")
    dev.close()
    errors = {}
    for i in range(40):
        try:
            engine.set(b"k%d" % i, b"x" * 2000)
        except TierwiseError as e:
            errors[i] = str(e)
    first = min(errors)  # the set whose segment write reached the closed device
    assert "device is closed" in errors[first] and set(errors) == set(range(first, 40))
    assert all("stopped after a failure" in errors[i] for i in range(first + 1, 40))
    with pytest.raises(TierwiseError, match="stopped after a failure"):
        engine.get(b"kept")
