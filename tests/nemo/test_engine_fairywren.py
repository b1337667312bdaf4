"""FairyWREN baseline: HLog + HSet on zones, passive and active migration, and the paper's L2SWA model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo.device import FtlSSD, MemoryZonedDevice
from tierwise.nemo.engines import make_engine
from tierwise.nemo.engines.paged import key_tag, log_capacity_pages
from tierwise.nemo.engines.settier import set_lookup, set_of
from tierwise.nemo.native import ref_of

from .baseline_helpers import check_against_dict, check_op_list, device_bytes_match, op_lists, random_ops


@settings(max_examples=25, deadline=None)
@given(op_lists(80))
def test_fairywren_matches_dict_model(ops):
    check_op_list(make_engine("fairywren", MemoryZonedDevice(48, 4 * 4096), log_pct=0.04, set_op=0.25,
                              buffer_pages=2), ops)


def test_fairywren_migrates_every_object_leaving_the_log():
    engine = make_engine("fairywren", MemoryZonedDevice(48, 4 * 4096), log_pct=0.04, set_op=0.25, buffer_pages=2)
    check_against_dict(engine, random_ops(7, 12_000, 4_000, sizes=(100, 300)))
    c = engine.metrics.summary()["counters"]
    assert c["migrations_passive"] > 0 and c["migrations_active"] > 0
    # LogThreshold 1: nothing is dropped at log eviction; objects only leave the log into sets
    assert "threshold_drops" not in c
    assert c["migrated_objects_passive"] + c["migrated_objects_active"] > 0.5 * c["inserts"]
    assert device_bytes_match(engine)


def test_l2swa_matches_eq6_eq7():
    """nemo.md §2.3: with log = 5% of flash and HSet OP X = 0.05, the measured L2SWA (set bytes written per byte
    migrated) follows (2 - p) * (1 - X) * N_set / (2 * N_log), p = the passive share of set writes."""
    dev = MemoryZonedDevice(100, 16 * 4096)  # 5 log zones = 80 pages, 95 set zones = 1520 pages
    engine = make_engine("fairywren", dev, log_pct=0.05, set_op=0.05, buffer_pages=4, hot_cold=False)
    sizes = np.random.default_rng(0).integers(180, 300, 30_000)
    for i, size in enumerate(sizes):
        if i == 10_000:
            engine.metrics.mark_warm(i)  # past the first log cycles and the first set-zone GC
        engine.set(b"key:%010d" % i, b"v" * int(size))
    m = engine.l2swa(engine.metrics.summary()["counters"])
    assert log_capacity_pages(engine.log) == 80 and engine.sets.phys_pages == 1520
    assert m["l2swa_passive_theory"] == pytest.approx(0.95 * 1520 / 160)
    assert 0.1 < m["passive_share"] < 0.5  # both kinds of migration happen (the paper reports p ~ 25%)
    assert m["l2swa"] == pytest.approx(m["l2swa_theory"], rel=0.15)
    assert engine.metrics.summary()["alwa"] > 8


def test_fairywren_on_a_conventional_ssd_keeps_its_out_of_place_sets():
    dev = FtlSSD(2 * 1024 * 1024, op=0.25, pages_per_block=8)  # 64 segments of one 32 KiB erase block
    engine = make_engine("fairywren", dev, log_pct=0.1, set_op=0.25)
    check_against_dict(engine, random_ops(7, 12_000, 6_000, sizes=(150, 300)))
    c = engine.metrics.counters
    assert c["migrations_passive"] > 0 and c["migrations_active"] > 0 and c["gc_zones"] > 0  # its own GC
    assert dev.stats.dlwa < 1.2  # whole segments are trimmed: the FTL barely copies
    assert device_bytes_match(engine)


@njit
def _in_hot_half(arena, state, key):
    P = ref_of(arena, state)
    return set_lookup(P.hot, set_of(P.sets, key_tag(key)), key)[0]


def in_hot_half(engine, key):
    return _in_hot_half(engine.pinned.arena, engine.state, np.frombuffer(key, np.uint8))


def small_fairywren(**config):
    return make_engine("fairywren", MemoryZonedDevice(48, 4 * 4096), log_pct=0.04, set_op=0.25, buffer_pages=2,
                       **config)


@settings(max_examples=25, deadline=None)
@given(op_lists(80))
def test_fairywren_rebuilding_hot_halves_at_every_move_matches_dict_model(ops):
    check_op_list(small_fairywren(hot_cold=True, hot_rebuild=1), ops)


@pytest.mark.parametrize("rrip_insert", ["long", "authors"])
def test_fairywren_hot_cold_serves_the_dict_model(rrip_insert):
    engine = small_fairywren(hot_cold=True, hot_rebuild=1, rrip_insert=rrip_insert)
    check_against_dict(engine, random_ops(8, 15_000, 3_000, sizes=(100, 600)))
    assert engine.hot is not engine.sets and engine.dram_bytes()["hot_set_bloom"] > 0
    assert device_bytes_match(engine)


def test_hot_cold_separation_puts_hit_objects_in_the_hot_halves():
    engine = small_fairywren(hot_cold=True, hot_rebuild=1)
    hot = [b"hot:%04d" % i for i in range(60)]
    for i in range(6_000):
        engine.set(b"cold:%05d" % i, b"c" * 150)
        if i % 4 == 0:  # the hot keys are set once, then read all along
            k = hot[(i // 4) % len(hot)]
            if engine.get(k) is None:
                engine.set(k, b"h" * 150)
    in_hot = sum(in_hot_half(engine, k) for k in hot)
    cold_sample = [b"cold:%05d" % i for i in range(0, 5_000, 50)]
    cold_in_hot = sum(in_hot_half(engine, k) for k in cold_sample)
    # most hot keys sit in hot halves, where never-read keys are far rarer (they only fill what hot ones leave)
    assert in_hot > 0.5 * len(hot) and in_hot / len(hot) > 2 * cold_in_hot / len(cold_sample)
    assert all(engine.get(k) == b"h" * 150 for k in hot if in_hot_half(engine, k))


def test_without_hot_cold_there_is_one_set_tier():
    engine = small_fairywren(hot_cold=False)
    assert engine.hot is engine.sets and "hot_set_bloom" not in engine.dram_bytes()


def test_hot_cold_needs_room_for_two_tiers():
    with pytest.raises(TierwiseError, match="hot and cold"):
        make_engine("fairywren", MemoryZonedDevice(6, 4 * 4096), log_pct=0.25, set_op=0.25, hot_cold=True)
