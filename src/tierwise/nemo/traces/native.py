"""tierwise's own request file (`.req`): an 8-byte magic, then packed little-endian REQUEST_DTYPE records.

Lossless (op, key id, key size, value size, TTL, time) and read with `np.fromfile`: the fastest way to replay a
generated trace many times. Version 2 (`TWREQv2\\n`, 23-byte records) added the `time` column; version 1 files
(`TWREQv1\\n`, 19-byte records without it) still read, every request at time 0. Files are written as version 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from tierwise.nemo.traces.reader import BinaryTraceReader
from tierwise.nemo.traces.request import REQUEST_DTYPE

MAGIC = b"TWREQv2\n"
MAGIC_V1 = b"TWREQv1\n"
MAGICS = (MAGIC, MAGIC_V1)
_FILE_DTYPE = REQUEST_DTYPE.newbyteorder("<")
_FILE_DTYPE_V1 = np.dtype([(name, _FILE_DTYPE[name]) for name in ("op", "key", "key_size", "value_size", "ttl")])
assert _FILE_DTYPE.itemsize == 23 and _FILE_DTYPE_V1.itemsize == 19


class RequestFileReader(BinaryTraceReader):
    format = "requests"
    record = _FILE_DTYPE
    magic = MAGIC

    def __init__(self, path, **kw):
        super().__init__(path, **kw)
        try:
            with open(self.path, "rb") as f:
                if f.read(len(MAGIC_V1)) == MAGIC_V1:
                    self.record, self.magic = _FILE_DTYPE_V1, MAGIC_V1
        except OSError:
            pass  # reported when the records are read

    def _convert(self, recs: np.ndarray, first: int) -> np.ndarray:
        invalid = np.flatnonzero(recs["op"] > 2)
        for i in invalid.tolist():
            self.bad(f"byte {len(self.magic) + (first + i) * self.record.itemsize}",
                     f"record {first + i}: invalid op code {int(recs['op'][i])}")
        if len(invalid):
            recs = recs[recs["op"] <= 2]
        out = np.zeros(len(recs), dtype=REQUEST_DTYPE)
        for name in recs.dtype.names:  # by name: a version 1 record has no time (0)
            out[name] = recs[name]
        return out


def write_requests(path: str | Path, chunks: Iterable[np.ndarray]) -> int:
    """Stream chunks to a `.req` file (version 2); returns the number of requests written."""
    n = 0
    with open(path, "wb") as f:
        f.write(MAGIC)
        for chunk in chunks:
            chunk.astype(_FILE_DTYPE).tofile(f)
            n += len(chunk)
    return n
