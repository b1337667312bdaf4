import numpy as np

from tierwise.nemo.hashing import key_hash
from tierwise.nemo.index.bloom import BloomArray, FilterParams, filter_add, group_probe


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
    row = np.zeros(members * params.nbytes, np.uint8)
    h = key_hash(b"needle", 1)
    pos = params.positions(h.h1, h.h2)
    for g in (2, 7, 11):
        filter_add(row, g * params.nbytes, pos)
    out = np.empty(members, np.int64)
    n = group_probe(row, members, params.nbytes, pos, out)
    assert out[:n].tolist() == [2, 7, 11]
