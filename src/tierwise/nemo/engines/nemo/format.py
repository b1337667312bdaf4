"""On-flash records of a Nemo cache besides the set pages (`tierwise.nemo.layout`); see docs/nemo-format.md.

Every record is one 4 KB page ending its fixed fields with a crc32c over them, so recovery can tell a complete,
self-consistent SG or index block from a torn one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c
import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo.layout import PAGE_SIZE
from tierwise.nemo.native import crc32c as native_crc32c

FORMAT_VERSION = 2  # 2: PBFG rows bit-sliced (index/bloom.py), one check per row
SG_MAGIC = b"NEMOSG01"
SG_COMMIT_MAGIC = b"NEMOSGC1"
INDEX_MAGIC = b"NEMOIX01"

_SG_HEADER = struct.Struct("<8sHHQIIIIQIII")  # magic, version, flags, seq, S, set size, slot, zones/SG, seed, m, k, G
_SG_TRAILER = struct.Struct("<8sHHQIIQI")  # magic, version, flags, seq, S, objects, user kv bytes, crc32c of set CRCs
_INDEX_HEADER = struct.Struct("<8sHHQQQIIIIIIQ")  # magic, ver, flags, group, seq lo, seq hi, S, G, m, k, R, pages, seed
INDEX_ROW_HEADER = 16  # crc32c u32 over [4, 16), group id u64, first set offset u32; then R (row, check) entries
ROW_CHECK = 4  # after each row: crc32c of the row keyed by (group, offset)


@dataclass(frozen=True)
class SGHeader:
    seq: int
    sets: int
    slot: int
    zones_per_sg: int
    hash_seed: int
    m_bits: int
    k: int
    group_size: int
    set_size: int = PAGE_SIZE
    flags: int = 0


@dataclass(frozen=True)
class SGTrailer:
    seq: int
    sets: int
    objects: int
    user_bytes: int
    sets_crc: int  # crc32c of the S set-page crc fields, in offset order
    flags: int = 0


@dataclass(frozen=True)
class IndexHeader:
    group: int
    seq_lo: int  # first SG sequence number covered (group * G)
    seq_hi: int  # one past the last
    sets: int
    group_size: int
    m_bits: int
    k: int
    rows_per_page: int
    row_pages: int
    hash_seed: int
    flags: int = 0


def _page(body: bytes) -> bytes:
    body = body + crc32c.crc32c(body).to_bytes(4, "little")
    return body + bytes(PAGE_SIZE - len(body))


def _unpack(st: struct.Struct, page: bytes, magic: bytes, what: str) -> tuple:
    if len(page) < st.size + 4:
        raise TierwiseError(f"{what}: page too short")
    fields = st.unpack_from(page)
    if fields[0] != magic:
        raise TierwiseError(f"{what}: bad magic {fields[0]!r}")
    if int.from_bytes(page[st.size:st.size + 4], "little") != crc32c.crc32c(page[:st.size]):
        raise TierwiseError(f"{what}: checksum mismatch (torn or corrupted)")
    if fields[1] != FORMAT_VERSION:
        raise TierwiseError(f"{what}: format version {fields[1]} unsupported (this build reads {FORMAT_VERSION})")
    return fields


def encode_sg_header(h: SGHeader) -> bytes:
    return _page(_SG_HEADER.pack(SG_MAGIC, FORMAT_VERSION, h.flags, h.seq, h.sets, h.set_size, h.slot,
                                 h.zones_per_sg, h.hash_seed, h.m_bits, h.k, h.group_size))


def decode_sg_header(page: bytes) -> SGHeader:
    f = _unpack(_SG_HEADER, page, SG_MAGIC, "SG header")
    return SGHeader(seq=f[3], sets=f[4], set_size=f[5], slot=f[6], zones_per_sg=f[7], hash_seed=f[8], m_bits=f[9],
                    k=f[10], group_size=f[11], flags=f[2])


def encode_sg_trailer(t: SGTrailer) -> bytes:
    return _page(_SG_TRAILER.pack(SG_COMMIT_MAGIC, FORMAT_VERSION, t.flags, t.seq, t.sets, t.objects, t.user_bytes,
                                  t.sets_crc))


def decode_sg_trailer(page: bytes) -> SGTrailer:
    f = _unpack(_SG_TRAILER, page, SG_COMMIT_MAGIC, "SG trailer")
    return SGTrailer(seq=f[3], sets=f[4], objects=f[5], user_bytes=f[6], sets_crc=f[7], flags=f[2])


def sets_crc(pages: np.ndarray) -> int:
    """crc32c over the crc fields of the S set pages (the trailer's commit check)."""
    return crc32c.crc32c(np.ascontiguousarray(pages[:, 0:4]).tobytes())


def encode_index_header(h: IndexHeader) -> bytes:
    return _page(_INDEX_HEADER.pack(INDEX_MAGIC, FORMAT_VERSION, h.flags, h.group, h.seq_lo, h.seq_hi, h.sets,
                                    h.group_size, h.m_bits, h.k, h.rows_per_page, h.row_pages, h.hash_seed))


def decode_index_header(page: bytes) -> IndexHeader:
    f = _unpack(_INDEX_HEADER, page, INDEX_MAGIC, "index header")
    return IndexHeader(group=f[3], seq_lo=f[4], seq_hi=f[5], sets=f[6], group_size=f[7], m_bits=f[8], k=f[9],
                       rows_per_page=f[10], row_pages=f[11], hash_seed=f[12], flags=f[2])


@njit(cache=True, inline="always")
def _le(page, start, n):
    v = np.uint64(0)
    for i in range(n):
        v |= np.uint64(page[start + i]) << np.uint64(8 * i)
    return v


@njit(cache=True, inline="always")
def _put_le(page, start, n, v):
    for i in range(n):
        page[start + i] = (np.uint64(v) >> np.uint64(8 * i)) & np.uint64(0xFF)


@njit(cache=True, inline="always")
def _row_check(row, group, offset):
    """A row's check value: its crc32c keyed by (group, offset), so a row read at the wrong place fails too."""
    key = (np.uint64(group) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(offset) * np.uint64(0xC2B2AE3D27D4EB4F))
    return np.uint64(native_crc32c(row)) ^ (key >> np.uint64(32))


@njit(cache=True)
def fill_row_page(page, group, first_offset, rows) -> None:
    """Row page of index group `group` holding `rows` (the rows of offsets first_offset, first_offset + 1, ...):
    header [crc32c of bytes 4..16 | group u64 | first offset u32], then per row its bytes and a u32 check."""
    rb = rows.shape[1]
    _put_le(page, 4, 8, group)
    _put_le(page, 12, 4, first_offset)
    _put_le(page, 0, 4, native_crc32c(page[4:INDEX_ROW_HEADER]))
    for i in range(rows.shape[0]):
        start = INDEX_ROW_HEADER + i * (rb + ROW_CHECK)
        page[start:start + rb] = rows[i]
        _put_le(page, start + rb, ROW_CHECK, _row_check(rows[i], group, first_offset + i))


@njit(cache=True, inline="always")
def row_valid(page, group, first_offset, i, rb) -> bool:
    """Is row i of this row page intact and the row of (group, first_offset + i)? Checks the page header and that
    row only (a PBFG fetch needs one row of the page)."""
    if (_le(page, 0, 4) != np.uint64(native_crc32c(page[4:INDEX_ROW_HEADER])) or _le(page, 4, 8) != np.uint64(group)
            or _le(page, 12, 4) != np.uint64(first_offset)):
        return False
    start = INDEX_ROW_HEADER + i * (rb + ROW_CHECK)
    return _le(page, start + rb, ROW_CHECK) == _row_check(page[start:start + rb], group, first_offset + i)


@njit(cache=True)
def row_page_valid(page, group, first_offset, rows, rb) -> bool:
    """Are the first `rows` rows of this row page all intact (recovery)?"""
    for i in range(rows):
        if not row_valid(page, group, first_offset, i, rb):
            return False
    return True
