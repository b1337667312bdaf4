"""libCacheSim `oracleGeneral` binary traces: packed little-endian 24-byte records
`{u32 timestamp, u64 obj_id, u32 obj_size, i64 next_access_vtime}` (-1 = never requested again).

The format has no operation or key size: every record is a GET (a lookaside replay inserts on miss), and
`obj_size` is split into a key of `key_size` bytes (default 16, or the whole object if smaller) and the value, so
key + value = obj_size and a byte-capacity cache sees exactly libCacheSim's object sizes. `timestamp` (seconds)
becomes the request's `time`.

Records are validated as they are read (`record_problems`): an object size of 0, a timestamp before the previous
record's, or a `next_access_vtime` that is neither "never" (-1, or INT64_MAX as libCacheSim also accepts) nor
after the record itself is a bad record, reported with its byte offset (or counted and skipped with `skip_bad`,
like libCacheSim's `ignore_size_zero_req` for size-0 records). The same checks on the first records tell an
oracleGeneral file from anything else, whatever its name (`sniff_oracle`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from tierwise.nemo.traces.reader import BinaryTraceReader
from tierwise.nemo.traces.request import REQUEST_DTYPE, Op

ORACLE_DTYPE = np.dtype([("timestamp", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access_vtime", "<i8")])
DEFAULT_KEY_SIZE = 16
RECORD = ORACLE_DTYPE.itemsize
assert RECORD == 24
NEVER = (-1, np.iinfo(np.int64).max)  # next_access_vtime of a last request (libCacheSim accepts both)
SNIFF_RECORDS = 1024  # records checked when detecting the format
SNIFF_TOLERANCE = 10  # up to 1 in 10 of those may be bad (reported by the reader) and the file still detected
PLAUSIBLE_SIZE = 1 << 31  # detection only: a larger object size in the first records is taken as "not oracleGeneral"


def record_problems(recs: np.ndarray, first: int, prev_time: int | None) -> list[tuple[int, str]]:
    """(index into `recs`, what is wrong) for each invalid record; `first` is the record number of recs[0],
    `prev_time` the timestamp of the record before it (None at the start of the file). Vectorised."""
    if not len(recs):
        return []
    ts = recs["timestamp"].astype(np.int64)
    prev = np.empty_like(ts)
    prev[1:] = ts[:-1]
    prev[0] = ts[0] if prev_time is None else prev_time
    nxt = recs["next_access_vtime"]
    index = np.arange(first, first + len(recs), dtype=np.int64)
    zero = recs["obj_size"] == 0
    back = ts < prev
    wrong_next = (nxt != NEVER[0]) & (nxt != NEVER[1]) & (nxt <= index)
    problems = []
    for i in np.flatnonzero(zero | back | wrong_next).tolist():
        if zero[i]:
            why = "object size 0"
        elif back[i]:
            why = f"timestamp {ts[i]} is before the previous record's {prev[i]} (timestamps must not decrease)"
        else:
            why = (f"next_access_vtime {int(nxt[i])} is neither -1 (never) nor after this record "
                   f"(record {first + i})")
        problems.append((i, why))
    return problems


def sniff_oracle(path: Path, size: int) -> str:
    """'' if the file looks like oracleGeneral (the first records valid, with plausible sizes), else why not, with
    the byte offset where it applies. A size that is not a whole number of records still counts when at least one
    whole record is there and valid: the reader then refuses the torn last record with its offset, a clearer
    message for a cut-short download than "unknown format"."""
    if size < RECORD:
        return f"its size, {size} B, is less than one {RECORD}-byte record"
    with open(path, "rb") as f:
        recs = np.fromfile(f, dtype=ORACLE_DTYPE, count=min(SNIFF_RECORDS, size // RECORD))
    problems = record_problems(recs, 0, None)
    problems += [(i, f"implausible object size {int(recs['obj_size'][i])}")
                 for i in np.flatnonzero(recs["obj_size"] > PLAUSIBLE_SIZE).tolist()]
    # a few bad records (real traces have size-0 ones) still read as oracleGeneral, so the reader names them; any
    # other binary fails about half its timestamp checks
    if len(problems) > len(recs) // SNIFF_TOLERANCE:
        i, why = min(problems)
        return f"record {i} at byte {i * RECORD}: {why}"
    return ""


class OracleGeneralReader(BinaryTraceReader):
    format = "oracle"
    record = ORACLE_DTYPE

    def __init__(self, path, *, key_size: int = DEFAULT_KEY_SIZE, **kw):
        super().__init__(path, **kw)
        self.key_size = key_size
        self._prev_time: int | None = None

    def _convert(self, recs: np.ndarray, first: int) -> np.ndarray:
        if first == 0:
            self._prev_time = None
        problems = record_problems(recs, first, self._prev_time)
        if len(recs):
            self._prev_time = int(recs["timestamp"][-1])
        for i, why in problems:
            self.bad(f"byte {(first + i) * RECORD}", why)
        if problems:
            keep = np.ones(len(recs), dtype=bool)
            keep[[i for i, _ in problems]] = False
            recs = recs[keep]
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
