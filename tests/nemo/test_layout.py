import numpy as np
import pytest

from tierwise.common.errors import TierwiseError
from tierwise.nemo import layout as L
from tierwise.nemo.hashing import bloom_positions, key_hash


def _a(b: bytes) -> np.ndarray:
    return np.frombuffer(b, np.uint8)


def test_append_find_remove_roundtrip():
    page = L.new_pages(1)[0]
    objs = [(f"key{i}".encode(), bytes([i]) * (10 * i)) for i in range(1, 8)]
    for k, v in objs:
        assert L.page_append(page, _a(k), _a(v), 0, 0)
    assert L.page_count(page) == 7
    assert L.page_used(page) == sum(L.object_size(len(k), len(v)) for k, v in objs)
    pos = L.page_find(page, _a(b"key3"))
    assert L.object_at(page, pos) == (b"key3", objs[2][1], 0, 0)
    L.page_remove(page, pos)
    assert L.page_find(page, _a(b"key3")) == -1
    assert [o.key for o in L.iter_objects(page)] == [k for k, _ in objs if k != b"key3"]
    assert all(o.value == dict(objs)[o.key] for o in L.iter_objects(page))


def test_append_refuses_when_full_and_tombstone_conversion_frees_value():
    page = L.new_pages(1)[0]
    big = _a(b"v" * 2000)
    assert L.page_append(page, _a(b"a"), big, 0, 0)
    assert L.page_append(page, _a(b"b"), big, L.FLAG_SHADOWS, 0)
    assert not L.page_append(page, _a(b"c"), big, 0, 0)
    assert L.page_free(page) == L.PAYLOAD - 2 * (L.OBJ_HEADER + 1 + 2000)
    L.page_to_tombstone(page, L.page_find(page, _a(b"a")))
    objs = list(L.iter_objects(page))
    assert objs[0] == (b"a", b"", L.FLAG_TOMBSTONE, 0) and objs[1].value == b"v" * 2000
    assert L.page_append(page, _a(b"c"), big, 0, 0)


def test_seal_and_checksum_detect_corruption():
    pages = L.new_pages(3)
    for p in pages:
        L.page_append(p, _a(b"k"), _a(b"value"), 0, 0)
    L.seal_pages(pages, 12345, 2)
    assert [L.page_seq(p) for p in pages] == [12345, 12347, 12349]
    assert all(L.page_crc_ok(p) and L.page_crc_ok(p.tobytes()) for p in pages)
    page = pages[0]
    raw = bytearray(page.tobytes())
    raw[30] ^= 0xFF
    assert not L.page_crc_ok(bytes(raw))


def test_tally_splits_user_writeback_tombstone():
    pages = L.new_pages(2)
    L.page_append(pages[0], _a(b"u"), _a(b"12345"), 0, 0)
    L.page_append(pages[0], _a(b"w"), _a(b"123"), L.FLAG_WRITEBACK, 0)
    L.page_append(pages[1], _a(b"t"), _a(b""), L.FLAG_TOMBSTONE, 0)
    t = np.zeros((2, 8), np.int64)
    L.page_tally_into(pages[0], t[0])
    L.page_tally_into(pages[1], t[1])
    assert t[0].tolist() == [6, 1, 8, 0, 4, 18, 1, 0] and t[1].tolist() == [0, 0, 0, 5, 0, 5, 0, 1]
    L.page_tally_into(pages[1], t[0])  # it adds up
    assert t[0].tolist() == [6, 1, 8, 5, 4, 23, 1, 1]
    assert L.page_index_of(pages[0], L.page_find(pages[0], _a(b"w"))) == 1


def test_malformed_page_is_reported():
    page = L.new_pages(1)[0]
    L.page_append(page, _a(b"k"), _a(b"v"), 0, 0)
    page[12] = 5  # count disagrees with the chain
    with pytest.raises(TierwiseError, match="malformed"):
        list(L.iter_objects(page))


def test_hashing_offsets_and_positions_are_stable_and_spread():
    S = 64
    offs = [key_hash(f"k{i}".encode(), S).offset for i in range(6400)]
    counts = np.bincount(offs, minlength=S)
    assert counts.min() > 50 and counts.max() < 160
    h = key_hash(b"abc", S)
    assert h == key_hash(b"abc", S) and h.h2 % 2 == 1
    p = bloom_positions(h.h1, h.h2, 7, 216)
    assert p.shape == (7,) and (p >= 0).all() and (p < 216).all()


def test_rotate_to_front_keeps_objects():
    page = L.new_pages(1)[0]
    for k in (b"a", b"b", b"c"):
        L.page_append(page, _a(k), _a(k * 5), 0, 0)
    L.page_rotate_to_front(page, L.page_find(page, _a(b"b")))
    assert [o.key for o in L.iter_objects(page)] == [b"b", b"c", b"a"]
    assert all(o.value == o.key * 5 for o in L.iter_objects(page))


def test_an_expiry_travels_with_its_object_and_expired_objects_drop():
    """An object with a TTL stores its expiry before the value: the value span skips it, copies keep it, the tally
    counts it as per-object metadata; dropping expired objects leaves a tombstone for one that may shadow an older
    flash copy and nothing for the others."""
    page = L.new_pages(1)[0]
    assert L.page_append(page, _a(b"old"), _a(b"abc"), L.FLAG_SHADOWS, 100)
    assert L.page_append(page, _a(b"new"), _a(b"defg"), 0, 300)
    assert L.page_append(page, _a(b"none"), _a(b"hi"), 0, 0)
    assert L.page_used(page) == 3 * L.OBJ_HEADER + 2 * L.EXPIRY_BYTES + 3 + 3 + 3 + 4 + 4 + 2
    pos = L.page_find(page, _a(b"new"))
    start, n, flags = L.obj_value_span(page, pos)
    assert page[start:start + n].tobytes() == b"defg" and flags & L.FLAG_EXPIRES
    assert L.obj_expiry_at(page, pos) == 300 and not L.obj_expired(page, pos, 299) and L.obj_expired(page, pos, 300)
    assert L.span_expired(page, start, flags, 300) and not L.span_expired(page, start, flags, 299)
    assert [(o.key, o.value, o.expiry) for o in L.iter_objects(page)] == [
        (b"old", b"abc", 100), (b"new", b"defg", 300), (b"none", b"hi", 0)]
    copy = L.new_pages(1)[0]
    assert L.page_copy_object(copy, page, pos, L.FLAG_WRITEBACK)
    assert L.object_at(copy, L.PAGE_HEADER) == (b"new", b"defg", L.FLAG_WRITEBACK | L.FLAG_EXPIRES, 300)
    tally = np.zeros(8, np.int64)
    L.page_tally_into(page, tally)
    assert tally[L.T_USER_KV] == 3 + 3 + 3 + 4 + 4 + 2
    assert tally[L.T_USER_HEADERS] == 3 * L.OBJ_HEADER + 2 * L.EXPIRY_BYTES
    assert L.page_drop_expired(page, 200) == (1, 6)  # "old": shadows, so a tombstone
    assert [(o.key, o.flags) for o in L.iter_objects(page)][0] == (b"old", L.FLAG_TOMBSTONE)
    assert L.page_drop_expired(page, 1000) == (1, 7)  # "new" goes; tombstones and "none" never expire
    assert [o.key for o in L.iter_objects(page)] == [b"old", b"none"]
