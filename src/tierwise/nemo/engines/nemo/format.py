"""On-flash records of a Nemo cache besides the set pages (`tierwise.nemo.layout`); see docs/nemo-format.md.

Every record is one 4 KB page ending its fixed fields with a crc32c over them, so recovery can tell a complete,
self-consistent SG or index block from a torn one. The engine writes them from compiled code (`write_*`); the
`encode_*` functions return the same page as bytes, and recovery reads them with `decode_*`.
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
_SG_HEADER_SIZE, _SG_TRAILER_SIZE, _INDEX_HEADER_SIZE = _SG_HEADER.size, _SG_TRAILER.size, _INDEX_HEADER.size
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
    page = np.zeros(PAGE_SIZE, np.uint8)
    write_sg_header(page, h.seq, h.sets, h.slot, h.zones_per_sg, h.hash_seed, h.m_bits, h.k, h.group_size,
                    h.set_size, h.flags)
    return page.tobytes()


def decode_sg_header(page: bytes) -> SGHeader:
    f = _unpack(_SG_HEADER, page, SG_MAGIC, "SG header")
    return SGHeader(seq=f[3], sets=f[4], set_size=f[5], slot=f[6], zones_per_sg=f[7], hash_seed=f[8], m_bits=f[9],
                    k=f[10], group_size=f[11], flags=f[2])


def encode_sg_trailer(t: SGTrailer) -> bytes:
    page = np.zeros(PAGE_SIZE, np.uint8)
    write_sg_trailer(page, t.seq, t.sets, t.objects, t.user_bytes, t.sets_crc, t.flags)
    return page.tobytes()


def decode_sg_trailer(page: bytes) -> SGTrailer:
    f = _unpack(_SG_TRAILER, page, SG_COMMIT_MAGIC, "SG trailer")
    return SGTrailer(seq=f[3], sets=f[4], objects=f[5], user_bytes=f[6], sets_crc=f[7], flags=f[2])


@njit(cache=True)
def sets_crc(pages) -> int:
    """crc32c over the crc fields of the S set pages, in offset order (the trailer's commit check)."""
    fields = np.empty(4 * pages.shape[0], np.uint8)
    for j in range(pages.shape[0]):
        for b in range(4):
            fields[4 * j + b] = pages[j, b]
    return native_crc32c(fields)


def encode_index_header(h: IndexHeader) -> bytes:
    page = np.zeros(PAGE_SIZE, np.uint8)
    write_index_header(page, h.group, h.seq_lo, h.seq_hi, h.sets, h.group_size, h.m_bits, h.k, h.rows_per_page,
                       h.row_pages, h.hash_seed, h.flags)
    return page.tobytes()


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


@njit(cache=True)
def _put_le(page, start, n, v):
    for i in range(n):
        page[start + i] = (np.uint64(v) >> np.uint64(8 * i)) & np.uint64(0xFF)


_MAGICS = np.frombuffer(SG_MAGIC + SG_COMMIT_MAGIC + INDEX_MAGIC, np.uint8).reshape(3, 8)
_SG, _COMMIT, _INDEX = range(3)


@njit(cache=True)
def _begin(page, magic, flags):
    """Magic, format version and flags: the first 12 bytes of every record."""
    page[0:8] = _MAGICS[magic]
    _put_le(page, 8, 2, FORMAT_VERSION)
    _put_le(page, 10, 2, flags)


@njit(cache=True)
def _seal(page, size):
    """The crc32c of the `size` bytes of fixed fields, right after them (the rest of the page is zero)."""
    _put_le(page, size, 4, native_crc32c(page[:size]))


@njit(cache=True)
def write_sg_header(page, seq, sets, slot, zones_per_sg, hash_seed, m_bits, k, group_size, set_size=PAGE_SIZE,
                    flags=0):
    """The SG header record (layout `_SG_HEADER`) into a zeroed page."""
    _begin(page, _SG, flags)
    _put_le(page, 12, 8, seq)
    _put_le(page, 20, 4, sets)
    _put_le(page, 24, 4, set_size)
    _put_le(page, 28, 4, slot)
    _put_le(page, 32, 4, zones_per_sg)
    _put_le(page, 36, 8, hash_seed)
    _put_le(page, 44, 4, m_bits)
    _put_le(page, 48, 4, k)
    _put_le(page, 52, 4, group_size)
    _seal(page, _SG_HEADER_SIZE)


@njit(cache=True)
def write_sg_trailer(page, seq, sets, objects, user_bytes, crc_of_sets, flags=0):
    """The SG trailer (commit) record (layout `_SG_TRAILER`) into a zeroed page."""
    _begin(page, _COMMIT, flags)
    _put_le(page, 12, 8, seq)
    _put_le(page, 20, 4, sets)
    _put_le(page, 24, 4, objects)
    _put_le(page, 28, 8, user_bytes)
    _put_le(page, 36, 4, crc_of_sets)
    _seal(page, _SG_TRAILER_SIZE)


@njit(cache=True)
def write_index_header(page, group, seq_lo, seq_hi, sets, group_size, m_bits, k, rows_per_page, row_pages, hash_seed,
                       flags=0):
    """The index block header record (layout `_INDEX_HEADER`) into a zeroed page."""
    _begin(page, _INDEX, flags)
    _put_le(page, 12, 8, group)
    _put_le(page, 20, 8, seq_lo)
    _put_le(page, 28, 8, seq_hi)
    _put_le(page, 36, 4, sets)
    _put_le(page, 40, 4, group_size)
    _put_le(page, 44, 4, m_bits)
    _put_le(page, 48, 4, k)
    _put_le(page, 52, 4, rows_per_page)
    _put_le(page, 56, 4, row_pages)
    _put_le(page, 60, 8, hash_seed)
    _seal(page, _INDEX_HEADER_SIZE)


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
