"""The 4 KB set page shared by every set-based engine (Nemo SetGroups, Set/BigHash, Kangaroo/FairyWREN sets).

Page layout (little-endian), PAGE_SIZE = 4096:

    offset  size  field
    0       4     crc32c of bytes [4, 4096)
    4       8     seq: sequence number of the SetGroup (or set write) this page was written for
    12      2     count: objects in the page
    14      2     used: payload bytes occupied by objects (headers included)
    16      ...   objects, packed oldest first, then zero padding

Object layout: OBJ_HEADER = 4 bytes, then key, then value:

    0  u8   key length (1..255)
    1  u8   flags (FLAG_TOMBSTONE, FLAG_SHADOWS, FLAG_WRITEBACK, FLAG_EXPIRES)
    2  u16  value length (0 for a tombstone)

An object with a TTL (FLAG_EXPIRES) stores its expiry first in the value field: a u32 of seconds on the cache's
clock (`MetricsArrays.clock`), then the value; the value length counts those 4 bytes, so walking a page never needs
the flag. It is expired once expiry <= clock; `obj_value_span` skips the expiry.

A page is a numpy uint8 row so a SetGroup is one (S, 4096) array and the packing loops below run in numba.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import crc32c
import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo.native import copy_bytes, get_uint, put_uint, unref
from tierwise.nemo.native import crc32c as native_crc32c

PAGE_SIZE = 4096
PAGE_HEADER = 16
OBJ_HEADER = 4
PAYLOAD = PAGE_SIZE - PAGE_HEADER
MAX_KEY = 255

FLAG_TOMBSTONE = 1  # a delete marker: a lookup that meets it misses
FLAG_SHADOWS = 2  # in a buffer: an older copy may be on flash, so sacrificing this object must leave a tombstone
FLAG_WRITEBACK = 4  # re-inserted by hotness-aware write-back (charged as amplification, not logical bytes)
FLAG_EXPIRES = 8  # the value field starts with a u32 expiry (EXPIRY_BYTES)
EXPIRY_BYTES = 4


class PageObject(NamedTuple):
    key: bytes
    value: bytes
    flags: int
    expiry: int = 0  # seconds on the cache's clock; 0 = never


def object_size(key_len: int, value_len: int) -> int:
    return OBJ_HEADER + key_len + value_len


def max_value_size(key_len: int) -> int:
    """The largest value a page holds with a `key_len`-byte key and an expiry."""
    return PAYLOAD - OBJ_HEADER - EXPIRY_BYTES - key_len


# ---- header fields (numba) -------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _u16(page, pos):
    return np.int64(page[pos]) | (np.int64(page[pos + 1]) << 8)


@njit(cache=True, inline="always")
def _put_u16(page, pos, v):
    page[pos] = v & 0xFF
    page[pos + 1] = (v >> 8) & 0xFF


@njit(cache=True)
def page_count(page) -> int:
    return _u16(page, 12)


@njit(cache=True)
def page_used(page) -> int:
    return _u16(page, 14)


@njit(cache=True)
def page_free(page) -> int:
    return PAYLOAD - _u16(page, 14)


@njit(cache=True)
def obj_size_at(page, pos) -> int:
    return OBJ_HEADER + np.int64(page[pos]) + _u16(page, pos + 2)


@njit(cache=True)
def obj_flags_at(page, pos) -> int:
    return np.int64(page[pos + 1])


@njit(cache=True)
def obj_value_span(page, pos):
    """(start, length, flags) of the value of the object at `pos` (its expiry, if any, is before `start`)."""
    start, n, flags = pos + OBJ_HEADER + np.int64(page[pos]), _u16(page, pos + 2), np.int64(page[pos + 1])
    if flags & FLAG_EXPIRES:
        return start + EXPIRY_BYTES, n - EXPIRY_BYTES, flags
    return start, n, flags


@njit(cache=True)
def span_expired(page, start, flags, now) -> bool:
    """Is the object whose value span `obj_value_span` gave (start, _, flags) expired at time `now`?"""
    return flags & FLAG_EXPIRES != 0 and get_uint(page, start - EXPIRY_BYTES, EXPIRY_BYTES) <= now


@njit(cache=True)
def obj_expiry_at(page, pos) -> int:
    """The expiry of the object at `pos` (0: none)."""
    if not page[pos + 1] & FLAG_EXPIRES:
        return 0
    return get_uint(page, pos + OBJ_HEADER + np.int64(page[pos]), EXPIRY_BYTES)


@njit(cache=True)
def obj_kv_size(page, pos) -> int:
    """Key + value bytes of the object at `pos` (without its header and expiry)."""
    return obj_size_at(page, pos) - OBJ_HEADER - (EXPIRY_BYTES if page[pos + 1] & FLAG_EXPIRES else 0)


@njit(cache=True)
def obj_expired(page, pos, now) -> bool:
    """Is the object at `pos` a record with an expiry at or before `now` (tombstones never expire)?"""
    f = page[pos + 1]
    return f & FLAG_EXPIRES != 0 and not f & FLAG_TOMBSTONE and obj_expiry_at(page, pos) <= now


# ---- packing (numba) -------------------------------------------------------------------------------------------


@unref
def page_find(page, key) -> int:
    """Byte position of the object header holding `key`, or -1. A set holds at most one copy of a key."""
    klen = key.shape[0]
    end = PAGE_HEADER + _u16(page, 14)
    pos = PAGE_HEADER
    while pos < end:
        kl = np.int64(page[pos])
        if kl == klen:
            stored = page[pos + OBJ_HEADER:pos + OBJ_HEADER + klen]  # a view indexed from 0: a tighter loop
            same = True
            for i in range(klen):
                if stored[i] != key[i]:
                    same = False
                    break
            if same:
                return pos
        pos += OBJ_HEADER + kl + _u16(page, pos + 2)
    return -1


@njit(cache=True)
def page_index_of(page, pos) -> int:
    """Slot number (0 = oldest) of the object at byte position `pos`."""
    p = PAGE_HEADER
    i = 0
    while p < pos:
        p += OBJ_HEADER + np.int64(page[p]) + _u16(page, p + 2)
        i += 1
    return i


@njit(cache=True, inline="always")
def stored_size(key, value, expiry) -> int:
    """Bytes `page_append` takes for this object."""
    return OBJ_HEADER + key.shape[0] + value.shape[0] + (EXPIRY_BYTES if expiry else 0)


@unref
def page_append(page, key, value, flags, expiry) -> bool:
    """Append an object at the end (newest position); False if it does not fit. `expiry` > 0 stores it (with
    FLAG_EXPIRES); 0 stores `value` as given, so a copy of a stored object passes its raw value field and flags."""
    klen = key.shape[0]
    vlen = value.shape[0]
    used = _u16(page, 14)
    extra = EXPIRY_BYTES if expiry else 0
    need = OBJ_HEADER + klen + vlen + extra
    if used + need > PAYLOAD:
        return False
    pos = PAGE_HEADER + used
    page[pos] = klen
    page[pos + 1] = flags | (FLAG_EXPIRES if expiry else 0)
    _put_u16(page, pos + 2, vlen + extra)
    copy_bytes(page, pos + OBJ_HEADER, key, 0, klen)
    at = pos + OBJ_HEADER + klen
    if expiry:
        put_uint(page, at, expiry, EXPIRY_BYTES)
        at += EXPIRY_BYTES
    copy_bytes(page, at, value, 0, vlen)
    _put_u16(page, 12, _u16(page, 12) + 1)
    _put_u16(page, 14, used + need)
    return True


@njit(cache=True)
def page_copy_object(dst, src, pos, flags) -> bool:
    """Append the object at `pos` of page `src` to `dst` with new flags (its expiry kept); False if it does not
    fit."""
    size = obj_size_at(src, pos)
    used = _u16(dst, 14)
    if used + size > PAYLOAD:
        return False
    d = PAGE_HEADER + used
    copy_bytes(dst, d, src, pos, size)
    dst[d + 1] = flags | (src[pos + 1] & FLAG_EXPIRES)
    _put_u16(dst, 12, _u16(dst, 12) + 1)
    _put_u16(dst, 14, used + size)
    return True


@unref
def page_remove(page, pos) -> None:
    """Remove the object at `pos`, shifting newer objects down so the page stays packed."""
    size = obj_size_at(page, pos)
    end = PAGE_HEADER + _u16(page, 14)
    copy_bytes(page, pos, page, pos + size, end - size - pos)
    page[end - size : end] = 0
    _put_u16(page, 12, _u16(page, 12) - 1)
    _put_u16(page, 14, end - size - PAGE_HEADER)


@njit(cache=True)
def page_rotate_to_front(page, pos) -> None:
    """Move the objects from byte position `pos` to the end in front of the older ones (order within a page is
    free on flash; write-back uses it so re-inserted hot objects keep low slot numbers for hotness bits)."""
    end = PAGE_HEADER + _u16(page, 14)
    if PAGE_HEADER < pos < end:
        tail = page[pos:end].copy()
        head = page[PAGE_HEADER:pos].copy()
        page[PAGE_HEADER:PAGE_HEADER + tail.size] = tail
        page[PAGE_HEADER + tail.size:end] = head


@unref
def page_to_tombstone(page, pos) -> None:
    """Turn the object at `pos` into a tombstone for the same key in place (drops the value bytes)."""
    klen = np.int64(page[pos])
    vlen = _u16(page, pos + 2)
    end = PAGE_HEADER + _u16(page, 14)
    vstart = pos + OBJ_HEADER + klen
    copy_bytes(page, vstart, page, vstart + vlen, end - vlen - vstart)
    page[end - vlen : end] = 0
    page[pos + 1] = FLAG_TOMBSTONE
    _put_u16(page, pos + 2, 0)
    _put_u16(page, 14, end - vlen - PAGE_HEADER)


@unref
def page_drop_expired(page, now):
    """Remove the objects expired at `now` (an object that may shadow an older flash copy, FLAG_SHADOWS, becomes a
    tombstone instead). Returns (objects dropped, their key+value bytes)."""
    n = 0
    nbytes = 0
    pos = PAGE_HEADER
    while pos < PAGE_HEADER + _u16(page, 14):
        if not obj_expired(page, pos, now):
            pos += obj_size_at(page, pos)
            continue
        n += 1
        nbytes += obj_kv_size(page, pos)
        if page[pos + 1] & FLAG_SHADOWS:
            page_to_tombstone(page, pos)
            pos += obj_size_at(page, pos)
        else:
            page_remove(page, pos)
    return n, nbytes


@njit(cache=True)
def page_positions(page) -> np.ndarray:
    """Byte positions of all objects, oldest first."""
    n = _u16(page, 12)
    out = np.empty(n, np.int64)
    pos = PAGE_HEADER
    for i in range(n):
        out[i] = pos
        pos += OBJ_HEADER + np.int64(page[pos]) + _u16(page, pos + 2)
    return out


@njit(cache=True)
def page_well_formed(page) -> bool:
    """True if count/used agree with the object chain and every object lies inside the payload (untrusted pages)."""
    used = _u16(page, 14)
    if used > PAYLOAD:
        return False
    end = PAGE_HEADER + used
    pos = PAGE_HEADER
    n = 0
    while pos < end:
        if pos + OBJ_HEADER > end or page[pos] == 0:
            return False
        pos += OBJ_HEADER + np.int64(page[pos]) + _u16(page, pos + 2)
        n += 1
    return pos == end and n == _u16(page, 12)


TALLY_COLUMNS = ("user_kv_bytes", "user_objects", "writeback_bytes", "tombstone_bytes", "user_header_bytes",
                 "used_bytes", "writeback_objects", "tombstones")
(T_USER_KV, T_USER_OBJECTS, T_WRITEBACK, T_TOMBSTONE, T_USER_HEADERS, T_USED, T_WRITEBACK_OBJECTS,
 T_TOMBSTONES) = range(len(TALLY_COLUMNS))


@njit(cache=True)
def page_tally_into(page, out) -> None:
    """Add the TALLY_COLUMNS of one page to out[0:8]: user key+value bytes, user objects, write-back bytes,
    tombstone bytes, user per-object header bytes, used bytes, write-back objects, tombstones. Write-back and
    tombstone bytes include their headers."""
    end = PAGE_HEADER + _u16(page, 14)
    pos = PAGE_HEADER
    while pos < end:
        size = OBJ_HEADER + np.int64(page[pos]) + _u16(page, pos + 2)
        f = np.int64(page[pos + 1])
        if f & FLAG_TOMBSTONE:
            out[T_TOMBSTONE] += size
            out[T_TOMBSTONES] += 1
        elif f & FLAG_WRITEBACK:
            out[T_WRITEBACK] += size
            out[T_WRITEBACK_OBJECTS] += 1
        else:  # an expiry is per-object metadata, like the header
            meta = OBJ_HEADER + (EXPIRY_BYTES if f & FLAG_EXPIRES else 0)
            out[T_USER_KV] += size - meta
            out[T_USER_OBJECTS] += 1
            out[T_USER_HEADERS] += meta
        pos += size
    out[T_USED] += end - PAGE_HEADER


# ---- sealing and reading (Python) ------------------------------------------------------------------------------


def new_pages(n: int) -> np.ndarray:
    return np.zeros((n, PAGE_SIZE), np.uint8)


@njit(cache=True)
def seal_pages(pages, first_seq, seq_step) -> None:
    """Stamp each page of an (n, PAGE_SIZE) array with its sequence number (first_seq + i * seq_step) and then its
    checksum; call right before the pages go to flash."""
    for i in range(pages.shape[0]):
        page = pages[i]
        seq = np.uint64(first_seq + i * seq_step)
        for b in range(8):
            page[4 + b] = (seq >> np.uint64(8 * b)) & np.uint64(0xFF)
        crc = native_crc32c(page[4:])
        for b in range(4):
            page[b] = (crc >> np.uint32(8 * b)) & np.uint32(0xFF)


def page_crc_ok(page: bytes | np.ndarray) -> bool:
    buf = memoryview(page).cast("B") if not isinstance(page, np.ndarray) else page.data
    return len(buf) == PAGE_SIZE and int.from_bytes(bytes(buf[0:4]), "little") == crc32c.crc32c(buf[4:])


@njit(cache=True, inline="always")
def page_crc_valid(page) -> bool:
    """`page_crc_ok` for compiled code (a uint8 page array)."""
    stored = np.uint32(page[0]) | np.uint32(page[1]) << 8 | np.uint32(page[2]) << 16 | np.uint32(page[3]) << 24
    return stored == native_crc32c(page[4:])


def page_seq(page: bytes | np.ndarray) -> int:
    return int.from_bytes(bytes(page[4:12]), "little")


def object_at(page: np.ndarray, pos: int) -> PageObject:
    klen = int(page[pos])
    vlen = int(page[pos + 2]) | (int(page[pos + 3]) << 8)
    k0 = pos + OBJ_HEADER
    flags = int(page[pos + 1])
    expiry = int.from_bytes(page[k0 + klen:k0 + klen + EXPIRY_BYTES].tobytes(), "little") if flags & FLAG_EXPIRES else 0
    v0 = k0 + klen + (EXPIRY_BYTES if expiry or flags & FLAG_EXPIRES else 0)
    return PageObject(page[k0:k0 + klen].tobytes(), page[v0:k0 + klen + vlen].tobytes(), flags, expiry)


def iter_objects(page: np.ndarray) -> Iterator[PageObject]:
    """Objects of a page, oldest first (raises TierwiseError on a structurally broken page)."""
    if not page_well_formed(page):
        raise TierwiseError(f"malformed set page (seq {page_seq(page)}): object chain disagrees with its header")
    for pos in page_positions(page):
        yield object_at(page, int(pos))
