"""The one request type every trace reader yields and every replay consumes.

Readers yield chunks: numpy structured arrays of `REQUEST_DTYPE` (fast to slice, filter and feed to numba);
`Request` is the readable per-request view of one record. `time` is the request's timestamp in whole seconds as the
trace gives it (0 where the trace has none); a replay driven by the trace's timestamps uses it (`traces.arrivals`).
Keys travel as 64-bit ids; `key_bytes` turns an id into the key bytes a cache stores, the same way in every replay,
so two engines fed the same trace see the same keys.
"""

from __future__ import annotations

import binascii
import enum
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np


class Op(enum.IntEnum):
    GET = 0
    SET = 1
    DELETE = 2


REQUEST_DTYPE = np.dtype([("op", "u1"), ("key", "u8"), ("key_size", "u2"), ("value_size", "u4"), ("ttl", "i4"),
                          ("time", "u4")])
MAX_TIME = (1 << 32) - 1  # the width of `time` (seconds)

MAX_KEY_SIZE = 65535  # the width of `key_size`
_ID_CHARS = 11  # base64 digits that spell all 64 bits of a key id
_PAD = b"." * MAX_KEY_SIZE
_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", dtype=np.uint8)


@dataclass(frozen=True)
class Request:
    op: Op
    key: int
    key_size: int
    value_size: int
    ttl: int = 0
    time: int = 0

    @classmethod
    def from_record(cls, rec) -> "Request":
        return cls(Op(int(rec["op"])), int(rec["key"]), int(rec["key_size"]), int(rec["value_size"]), int(rec["ttl"]),
                   int(rec["time"]))


def make_chunk(n: int) -> np.ndarray:
    return np.zeros(n, dtype=REQUEST_DTYPE)


def iter_requests(chunks: Iterable[np.ndarray]) -> Iterator[Request]:
    """Per-request view of a chunked trace (readable, slow: use the chunks for bulk work)."""
    for chunk in chunks:
        for rec in chunk:
            yield Request.from_record(rec)


def key_bytes(key_id: int, key_size: int) -> bytes:
    """The key bytes of key id `key_id` at length `key_size`: 11 base64 characters spelling the id (unique for
    key_size >= 11; shorter keys keep the low-order digits) padded with '.'. Printable, so memcached accepts it."""
    enc = binascii.b2a_base64(int(key_id).to_bytes(8, "little"), newline=False)
    return enc[:key_size] if key_size <= _ID_CHARS else enc[:_ID_CHARS] + _PAD[:key_size - _ID_CHARS]


def keys_of(chunk: np.ndarray) -> list[bytes]:
    """`key_bytes` for every request of a chunk, vectorised (same bytes as the scalar function)."""
    n = len(chunk)
    if n == 0:
        return []
    sizes = chunk["key_size"].astype(np.int64)
    width = max(int(sizes.max()), _ID_CHARS)
    raw = np.zeros((n, 9), dtype=np.uint8)  # 8 id bytes + 1 zero byte -> three 24-bit groups
    raw[:, :8] = chunk["key"].astype("<u8").view(np.uint8).reshape(n, 8)
    groups = raw.reshape(n, 3, 3).astype(np.uint32)
    word = (groups[:, :, 0] << 16) | (groups[:, :, 1] << 8) | groups[:, :, 2]
    digits = np.stack([(word >> s) & 63 for s in (18, 12, 6, 0)], axis=2).reshape(n, 12)[:, :_ID_CHARS]
    table = np.full((n, width), ord("."), dtype=np.uint8)
    table[:, :_ID_CHARS] = _B64[digits]
    flat = table.tobytes()
    return [flat[i * width:i * width + s] for i, s in enumerate(sizes.tolist())]
