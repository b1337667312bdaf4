"""Kangaroo baseline: KLog + KSet, threshold admission, RRIParoo; correctness against a dict model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo import layout
from tierwise.nemo.device import FtlSSD, MemoryZonedDevice
from tierwise.nemo.engines import make_engine
from tierwise.nemo.engines.paged import key_tag, log_lookup, new_page_io
from tierwise.nemo.engines.settier import RRIP_NEW, RRIP_SHIFT, new_set_tier, set_lookup, set_of, set_put
from tierwise.nemo.metrics import C_REJECTED, Metrics
from tierwise.nemo.native import ref_of

from .baseline_helpers import check_against_dict, check_op_list, device_bytes_match, op_lists, random_ops


@njit
def _lookup(arena, state, key, in_log, out):
    """Look `key` up in the log tier (in_log) or in its set, as the engine's get does; its value goes into out."""
    P = ref_of(arena, state)
    if in_log:
        hit, page, start, n = log_lookup(P.log, key_tag(key), key)
    else:
        hit, page, start, n = set_lookup(P.sets, set_of(P.sets, key_tag(key)), key)
    if not hit:
        return -1
    out[:n] = page[start:start + n]
    return n


def _tier_lookup(engine, key, in_log):
    out = np.zeros(4096, np.uint8)
    n = _lookup(engine.pinned.arena, engine.state, np.frombuffer(key, np.uint8), in_log, out)
    return None if n < 0 else out[:n].tobytes()


def small_kangaroo(**config):
    # 48 zones of 4 pages: 2 log zones (8 pages), 46 set zones; OP 0.25 leaves GC room
    return make_engine("kangaroo", MemoryZonedDevice(48, 4 * 4096), log_pct=0.04, set_op=0.25, buffer_pages=2,
                       **config)


@settings(max_examples=25, deadline=None)
@given(op_lists(80))
def test_kangaroo_matches_dict_model(ops):
    check_op_list(small_kangaroo(), ops)


def test_kangaroo_threshold_admission_migrates_and_drops():
    engine = small_kangaroo(threshold=2)
    check_against_dict(engine, random_ops(5, 15_000, 4_000, sizes=(100, 300)))
    c = engine.metrics.summary()["counters"]
    assert c["migrations_threshold"] > 0 and c["threshold_drops"] > 0
    # a migration moves >= threshold objects, except updates that must overwrite a stale copy in the set
    assert c["migrated_objects_threshold"] / c["migrations_threshold"] >= 1.5
    assert device_bytes_match(engine)


def in_sets(engine, key):
    return _tier_lookup(engine, key, in_log=False)


def test_dropped_log_object_never_exposes_an_older_set_copy():
    engine = small_kangaroo(threshold=1)  # everything migrates: "victim" lands in its set
    engine.set(b"victim", b"old" * 10)
    for i in range(600):
        engine.set(b"filler%d" % i, b"x" * 200)
    assert in_sets(engine, b"victim") == b"old" * 10
    engine.threshold = 64  # now nothing reaches the threshold: log objects are dropped at eviction ...
    engine.set(b"victim", b"new" * 10)
    drops = engine.metrics.counters.get("threshold_drops", 0)
    for i in range(600):
        engine.set(b"more%d" % i, b"y" * 200)
    assert engine.metrics.counters["threshold_drops"] > drops
    # ... except the update, whose stale copy in the set had to be overwritten rather than exposed
    assert _tier_lookup(engine, b"victim", in_log=True) is None  # it left the log
    assert in_sets(engine, b"victim") == b"new" * 10 and engine.get(b"victim") == b"new" * 10


@pytest.mark.parametrize("readmit, hits, readmitted", [(1, 1, False), (1, 2, True), (0, 5, False), (2, 3, True)])
def test_log_objects_are_readmitted_only_with_more_than_readmit_hits(readmit, hits, readmitted):
    engine = small_kangaroo(threshold=64, readmit=readmit)  # nothing reaches the threshold: only readmission saves
    engine.set(b"hot", b"h" * 100)
    engine.set(b"cold", b"c" * 100)
    for _ in range(hits):
        assert engine.get(b"hot") == b"h" * 100
    for i in range(130):  # ~10 log pages of 13 objects: the first log zone (4 pages) is evicted, the second not yet
        engine.set(b"filler%03d" % i, b"x" * 290)
    c = engine.metrics.counters
    assert engine.get(b"cold") is None and c["threshold_drops"] > 0
    assert (engine.get(b"hot") == b"h" * 100) is readmitted and c.get("readmissions", 0) == int(readmitted)
    engine.flush()
    # the readmitted copy is written again as a copy (amplification), not as new user bytes
    assert engine.metrics.writes.get("writeback", 0) == (layout.object_size(3, 100) if readmitted else 0)
    assert device_bytes_match(engine)


def test_readmit_is_a_hit_count():
    with pytest.raises(TierwiseError, match="readmit"):
        small_kangaroo(readmit=True)


@njit
def _put(S, key, value, hits):
    return set_put(S, S.page, key, value, 0, 0, hits)


def _set_tier(rrip_insert):
    dev = MemoryZonedDevice(8, 4 * 4096)
    return new_set_tier(new_page_io(dev, Metrics()), list(range(8)), op=0.5, rrip=True, rrip_insert=rrip_insert)


def _keys(S):
    return [o.key for o in layout.iter_objects(S.page)]


def test_authors_rriparoo_refuses_a_newcomer_that_would_evict_nearer_objects():
    S = _set_tier("authors")
    value = np.zeros(1300, np.uint8)
    for k in (b"a", b"b", b"c"):  # hit often in the log: they enter at RRIP 0
        assert _put(S, np.frombuffer(k, np.uint8), value, 6) > 0
    assert {o.flags >> RRIP_SHIFT for o in layout.iter_objects(S.page)} == {0}
    assert _put(S, np.frombuffer(b"new", np.uint8), value, 0) == 0  # would enter at RRIP_MAX - 1: refused
    assert _keys(S) == [b"a", b"b", b"c"] and S.io.m.counters[C_REJECTED] == 1
    assert _put(S, np.frombuffer(b"new", np.uint8), value, RRIP_NEW) > 0  # as near as they are: admitted
    assert _keys(S) == [b"b", b"c", b"new"]  # the oldest of the nearest went


def test_authors_rriparoo_inserts_at_max_minus_one_minus_hits():
    S = _set_tier("authors")
    for hits, k in ((0, b"a"), (2, b"b"), (9, b"c")):
        _put(S, np.frombuffer(k, np.uint8), np.zeros(10, np.uint8), hits)
    assert [o.flags >> RRIP_SHIFT for o in layout.iter_objects(S.page)] == [RRIP_NEW, RRIP_NEW - 2, 0]


def test_long_rriparoo_admits_every_newcomer_at_long():
    S = _set_tier("long")
    value = np.zeros(1300, np.uint8)
    for k in (b"a", b"b", b"c"):
        _put(S, np.frombuffer(k, np.uint8), value, 6)
    assert _put(S, np.frombuffer(b"new", np.uint8), value, 0) > 0
    assert _keys(S) == [b"b", b"c", b"new"] and S.io.m.counters[C_REJECTED] == 0
    assert list(layout.iter_objects(S.page))[-1].flags >> RRIP_SHIFT == RRIP_NEW


def test_a_refused_update_still_retires_the_older_copy():
    S = _set_tier("authors")
    value = np.zeros(1300, np.uint8)
    for k in (b"a", b"b", b"c"):
        _put(S, np.frombuffer(k, np.uint8), value, 6)
    assert _put(S, np.frombuffer(b"a", np.uint8), np.ones(2700, np.uint8), 0) == 0  # does not fit beside b, c
    assert _keys(S) == [b"b", b"c"]  # the stale "a" is gone with it


@pytest.mark.parametrize("rrip_insert", ["long", "authors"])
def test_kangaroo_rrip_insertions_match_dict_model(rrip_insert):
    engine = small_kangaroo(threshold=1, rrip_insert=rrip_insert)
    check_against_dict(engine, random_ops(9, 12_000, 3_000, sizes=(100, 1500)))
    assert (engine.metrics.counters.get("rejected", 0) > 0) is (rrip_insert == "authors")
    assert device_bytes_match(engine)


def test_kangaroo_in_place_on_a_conventional_ssd():
    dev = FtlSSD(2 * 1024 * 1024, op=0.1, pages_per_block=8, segment_bytes=16 * 1024)  # the log's segments: 4 pages
    engine = make_engine("kangaroo", dev, log_pct=0.05)
    check_against_dict(engine, random_ops(6, 12_000, 4_000, sizes=(100, 300)))
    assert engine.metrics.summary()["counters"]["migrations_threshold"] > 0
    assert dev.stats.dlwa > 1.0 and device_bytes_match(engine)


def test_kangaroo_bad_threshold():
    with pytest.raises(TierwiseError, match="threshold"):
        small_kangaroo(threshold=0)
