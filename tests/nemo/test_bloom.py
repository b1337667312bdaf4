import numpy as np
import pytest

from tierwise.nemo.hashing import bloom_positions, key_hash
from tierwise.nemo.index.bloom import (BloomArray, FilterParams, filter_add, filter_test, group_add, group_probe,
                                       group_row_bytes, group_rows, group_set_member)


def test_sizing_matches_formula():
    p = FilterParams.for_objects(16, 0.001)
    assert p.m_bits % 8 == 0 and 230 <= p.m_bits <= 240 and p.k == 10
    assert abs(FilterParams.for_objects(1, 0.01).m_bits - 16) <= 8


def test_no_false_negatives_and_fp_rate_near_design():
    params = FilterParams.for_objects(16, 0.01)
    arr = BloomArray(2000, params)
    for f in range(2000):
        for i in range(16):
            h = key_hash(f"{f}:{i}".encode(), 1)
            arr.add(f, params.positions(h.h1, h.h2))
    for f in range(0, 2000, 97):
        for i in range(16):
            h = key_hash(f"{f}:{i}".encode(), 1)
            assert arr.contains(f, params.positions(h.h1, h.h2))
    fp = 0
    for f in range(2000):
        h = key_hash(f"absent{f}".encode(), 1)
        fp += arr.contains(f, params.positions(h.h1, h.h2))
    assert fp / 2000 < 3 * params.false_positive_rate(16)
    assert arr.nbytes == 2000 * params.m_bits // 8
    arr.clear(0)
    assert not arr.bits[0].any()


def test_group_probe_finds_exactly_the_members_holding_the_key():
    params = FilterParams.for_objects(8, 0.001)
    members = 12
    rows = group_rows(2, group_row_bytes(params.m_bits, members))
    h = key_hash(b"needle", 1)
    pos = params.positions(h.h1, h.h2)
    for g in (2, 7, 11):
        group_add(rows[1], members, g, pos)
    out = np.empty(members, np.int64)
    n = group_probe(rows, 1, members, pos, out, 0, 100, 0, 1000)
    assert out[:n].tolist() == [102, 107, 111]
    assert group_probe(rows, 1, members, pos, out, 0, 100, 105, 111) == 1 and out[0] == 107  # [lo, hi) only
    assert group_probe(rows, 0, members, pos, out, 0, 100, 0, 1000) == 0


@pytest.mark.parametrize("members", [1, 7, 8, 50, 64, 65, 130])
def test_group_probe_equals_testing_each_member_as_a_plain_filter(members):
    """A bit-sliced row built from plain filters answers exactly as the plain filters do, for every member count
    (one or several 64-member words, rows not a whole number of bytes)."""
    rng = np.random.default_rng(members)
    params = FilterParams.for_objects(6, 0.01)
    plain = np.zeros((members, params.nbytes), np.uint8)
    rows = group_rows(1, group_row_bytes(params.m_bits, members))
    row = rows[0]
    for g in range(members):
        for _ in range(int(rng.integers(0, 8))):
            filter_add(plain[g], 0, params.positions(int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)) | 1))
        group_set_member(row, members, g, plain[g], params.m_bits)
    out = np.empty(members, np.int64)
    for _ in range(300):
        pos = params.positions(int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)) | 1)
        n = group_probe(rows, 0, members, pos, out, 0, 0, 0, members)
        assert out[:n].tolist() == [g for g in range(members) if filter_test(plain[g], 0, pos)]


def test_bloom_positions_equal_the_double_hashing_formula():
    rng = np.random.default_rng(3)
    for _ in range(200):
        h1, h2, m = int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)) | 1, int(rng.integers(8, 5000))
        assert bloom_positions(h1, h2, 10, m).tolist() == [(h1 + i * h2) % m for i in range(10)]
