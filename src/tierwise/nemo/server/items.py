"""How a memcached item (flags, exptime, cas, data) is stored as one Nemo value.

The engine stores opaque bytes, so the server prefixes the data with a small header. Tiny objects are the point of
Nemo, so the header is compact: one shape byte says which optional fields follow (flags and exptime are usually 0),
then the 8-byte cas, then the data. Typical overhead: 9 bytes.

    shape (u8) | flags (u32, if shape & 1) | exptime (u32, if shape & 2) | cas (u64) | data
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from tierwise.common.errors import TierwiseError

_HAS_FLAGS = 1
_HAS_EXPTIME = 2
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# memcached: an exptime up to 30 days is relative to now, above that it is an absolute unix time.
RELATIVE_EXPTIME_MAX = 60 * 60 * 24 * 30


@dataclass(slots=True)
class Item:
    flags: int
    exptime: int  # absolute unix seconds; 0 = never expires
    cas: int
    data: bytes


def pack(item: Item) -> bytes:
    if not item.flags and not item.exptime:  # the common case, one concatenation
        return b"\x00" + _U64.pack(item.cas) + item.data
    shape = (_HAS_FLAGS if item.flags else 0) | (_HAS_EXPTIME if item.exptime else 0)
    parts = [bytes((shape,))]
    if item.flags:
        parts.append(_U32.pack(item.flags))
    if item.exptime:
        parts.append(_U32.pack(item.exptime))
    parts.append(_U64.pack(item.cas))
    parts.append(item.data)
    return b"".join(parts)


def unpack(blob: bytes) -> Item:
    """Decode a stored value. A value the server did not write (wrong shape, too short) raises TierwiseError."""
    flags, exptime, cas, start = header(blob)
    return Item(flags, exptime, cas, blob[start:])


def header(blob: bytes) -> tuple[int, int, int, int]:
    """(flags, exptime, cas, where the data starts) of a stored value, without copying the data (a get reply
    slices it once). A value the server did not write (wrong shape, too short) raises TierwiseError."""
    if len(blob) >= 9 and blob[0] == 0:  # the common shape (no flags, no exptime), checked first: every get hit
        return 0, 0, _U64.unpack_from(blob, 1)[0], 9
    if not blob or blob[0] & ~(_HAS_FLAGS | _HAS_EXPTIME):
        raise TierwiseError("stored value is not a tierwise memcached item (bad header byte)")
    shape = blob[0]
    pos = 1
    flags = exptime = 0
    try:
        if shape & _HAS_FLAGS:
            (flags,) = _U32.unpack_from(blob, pos)
            pos += 4
        if shape & _HAS_EXPTIME:
            (exptime,) = _U32.unpack_from(blob, pos)
            pos += 4
        (cas,) = _U64.unpack_from(blob, pos)
    except struct.error as e:
        raise TierwiseError(f"stored value is not a tierwise memcached item ({len(blob)} bytes, truncated header)") from e
    return flags, exptime, cas, pos + 8


def header_size(flags: int, exptime: int) -> int:
    return 9 + (4 if flags else 0) + (4 if exptime else 0)


def absolute_exptime(exptime: int, now: float) -> int:
    """memcached exptime → absolute unix seconds (0 = never). Negative means already expired (stored as 1)."""
    if exptime == 0:
        return 0
    if exptime < 0:
        return 1
    if exptime <= RELATIVE_EXPTIME_MAX:
        return int(now) + exptime
    return exptime


class CasClock:
    """Unique, increasing cas values that stay unique across restarts without any stored counter.

    The counter starts at the current time in microseconds, so a restarted server issues values above everything
    the previous run issued unless that run averaged more than one cas per microsecond (far above its rate).
    """

    def __init__(self, floor: int = 0) -> None:
        self.value = max(time.time_ns() // 1000, floor)

    def next(self) -> int:
        self.value += 1
        return self.value
