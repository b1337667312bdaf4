"""The Set baseline (BigHash/SOC): read-modify-write of 4 KB sets, zone GC with OP, in place on the FTL model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo import layout
from tierwise.nemo.device import FtlSSD, MemoryZonedDevice
from tierwise.nemo.engines import make_engine
from tierwise.nemo.engines.settier import RRIP_MAX, RRIP_NEW, RRIP_SHIFT, page_put, promote_hits

from .baseline_helpers import check_against_dict, check_op_list, device_bytes_match, op_lists, random_ops


@njit
def _put(page, key, value, flags, rrip):
    return page_put(page, key, value, flags, rrip, 0)


@njit
def _promote(page, hits):
    promote_hits(page, hits)


@settings(max_examples=25, deadline=None)
@given(op_lists(60))
def test_set_matches_dict_model(ops):
    check_op_list(make_engine("set", MemoryZonedDevice(6, 4 * 4096), op=0.5), ops)


def test_set_alwa_is_a_page_per_insert_times_gc():
    dev = MemoryZonedDevice(32, 16 * 4096)
    engine = make_engine("set", dev, op=0.25)
    check_against_dict(engine, random_ops(3, 12_000, 6_000, sizes=(200, 300)))
    s = engine.metrics.summary(engine.dram_bytes(), engine.object_count())
    c = s["counters"]
    assert dev.stats.resets > 0 and c["gc_set_copies"] > 0  # stale set versions were reclaimed by zone GC
    pages = dev.stats.bytes_written / 4096
    assert pages - c["gc_set_copies"] >= s["inserts"]  # one whole page per insert, besides GC's copies
    assert 1.0 < pages / (pages - c["gc_set_copies"]) < 4.0  # greedy GC at 25% OP
    mean_obj = 4 + 9 + 250  # header + key + mean value
    assert s["alwa"] > 4096 / mean_obj  # at least one 4 KB page per ~260 B object
    assert s["dram"]["index_bits_per_object"] < 40  # Bloom filters and the set map only
    assert device_bytes_match(engine)


def test_set_in_place_on_the_ftl_reports_dlwa():
    dev = FtlSSD(1024 * 1024, op=0.1, pages_per_block=8)
    engine = make_engine("set", dev)
    check_against_dict(engine, random_ops(4, 6_000, 3_000, sizes=(200, 300)))
    s = engine.metrics.summary()
    assert s["counters"].get("gc_set_copies", 0) == 0  # no host GC: sets are overwritten in place
    assert dev.stats.dlwa > 1.5  # the FTL's GC copies are the device-level amplification
    assert 4096 / 263 < s["alwa"] < 4096 / 200 * 1.2
    assert device_bytes_match(engine)


def test_rriparoo_evicts_distant_objects_and_keeps_hit_ones():
    page = layout.new_pages(1)[0]
    rrip_new = RRIP_NEW << RRIP_SHIFT
    for i in range(3):  # fit without evicting
        assert _put(page, np.frombuffer(b"k%d" % i, np.uint8), np.zeros(1300, np.uint8), rrip_new, True) == 0
    _promote(page, np.uint16(0b001))  # k0 was hit: near re-reference
    evicted = _put(page, np.frombuffer(b"k3", np.uint8), np.zeros(1300, np.uint8), rrip_new, True)
    keys = [o.key for o in layout.iter_objects(page)]
    assert keys == [b"k0", b"k2", b"k3"] and evicted == 1  # k1 (oldest not-hit) went, not k0
    assert max(o.flags >> RRIP_SHIFT for o in layout.iter_objects(page)) <= RRIP_MAX


def test_set_rejects_too_little_op():
    with pytest.raises(TierwiseError, match="OP"):
        make_engine("set", MemoryZonedDevice(8, 16 * 4096), op=0.05)


def test_set_in_place_deletes_trim_and_fifo_gc_serves_the_dict_model():
    dev = FtlSSD(256 * 1024, op=0.5, pages_per_block=8)
    engine = make_engine("set", dev)
    engine.set(b"only", b"v" * 100)
    assert dev.valid_pages == 1 and engine.object_count() == 1
    engine.delete(b"only")  # the set is empty now: its page is trimmed, not rewritten
    assert dev.valid_pages == 0 and engine.object_count() == 0 and engine.get(b"only") is None
    engine = make_engine("set", MemoryZonedDevice(16, 8 * 4096), op=0.3, victim="fifo")
    check_against_dict(engine, random_ops(8, 8_000, 3_000, sizes=(100, 300)))
    assert engine.metrics.counters["gc_zones"] > 0 and device_bytes_match(engine)
