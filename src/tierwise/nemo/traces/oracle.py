"""libCacheSim `oracleGeneral` binary traces: packed little-endian 24-byte records
`{u32 timestamp, u64 obj_id, u32 obj_size, i64 next_access_vtime}` (-1 = never requested again).

The format has no operation or key size: every record is a GET (a lookaside replay inserts on miss), and
`obj_size` is split into a key of `key_size` bytes (default 16, or the whole object if smaller) and the value, so
key + value = obj_size and a byte-capacity cache sees exactly libCacheSim's object sizes. `timestamp` (seconds)
becomes the request's `time`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from tierwise.nemo.traces.reader import BinaryTraceReader
from tierwise.nemo.traces.request import REQUEST_DTYPE, Op

ORACLE_DTYPE = np.dtype([("timestamp", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access_vtime", "<i8")])
DEFAULT_KEY_SIZE = 16
assert ORACLE_DTYPE.itemsize == 24


class OracleGeneralReader(BinaryTraceReader):
    format = "oracle"
    record = ORACLE_DTYPE

    def __init__(self, path, *, key_size: int = DEFAULT_KEY_SIZE, **kw):
        super().__init__(path, **kw)
        self.key_size = key_size

    def _convert(self, recs: np.ndarray, first: int) -> np.ndarray:
        out = np.empty(len(recs), dtype=REQUEST_DTYPE)
        out["op"] = Op.GET
        out["key"] = recs["obj_id"]
        ks = np.minimum(recs["obj_size"], self.key_size)
        out["key_size"] = ks
        out["value_size"] = recs["obj_size"] - ks
        out["ttl"] = 0
        out["time"] = recs["timestamp"]
        return out


def next_access(keys: np.ndarray) -> np.ndarray:
    """Virtual time of each request's next request for the same key, -1 if none. Virtual time counts requests
    from 1, as libCacheSim does (sort + compare, no hashing)."""
    order = np.argsort(keys, kind="stable")
    nxt = np.full(len(keys), -1, dtype=np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same] + 1
    return nxt


def write_oracle(path: str | Path, chunks: Iterable[np.ndarray]) -> int:
    """Write requests as oracleGeneral (obj_size = key + value, timestamp = the requests' `time`, or the request
    number, from 1, for a trace without timestamps); returns the count.

    Needs the whole trace in memory for next-access times (8 B per request beyond the records themselves)."""
    parts = list(chunks)
    reqs = np.concatenate(parts) if parts else np.empty(0, REQUEST_DTYPE)
    recs = np.empty(len(reqs), dtype=ORACLE_DTYPE)
    if len(reqs) and reqs["time"].any():
        recs["timestamp"] = reqs["time"]
    else:
        recs["timestamp"] = np.arange(1, len(reqs) + 1, dtype=np.uint64).astype(np.uint32)
    recs["obj_id"] = reqs["key"]
    recs["obj_size"] = reqs["key_size"].astype(np.uint32) + reqs["value_size"]
    recs["next_access_vtime"] = next_access(reqs["key"])
    recs.tofile(str(path))
    return len(recs)
