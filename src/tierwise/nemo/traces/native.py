"""tierwise's own request file (`.req`): an 8-byte magic, then packed little-endian REQUEST_DTYPE records.

Lossless (op, key id, key size, value size, TTL) and read with `np.fromfile`: the fastest way to replay a
generated trace many times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from tierwise.nemo.traces.reader import BinaryTraceReader
from tierwise.nemo.traces.request import REQUEST_DTYPE

MAGIC = b"TWREQv1\n"
_FILE_DTYPE = REQUEST_DTYPE.newbyteorder("<")


class RequestFileReader(BinaryTraceReader):
    format = "requests"
    record = _FILE_DTYPE
    magic = MAGIC

    def _convert(self, recs: np.ndarray, first: int) -> np.ndarray:
        invalid = np.flatnonzero(recs["op"] > 2)
        for i in invalid.tolist():
            self.bad(f"record {first + i}", f"invalid op code {int(recs['op'][i])}")
        return (recs[recs["op"] <= 2] if len(invalid) else recs).astype(REQUEST_DTYPE)


def write_requests(path: str | Path, chunks: Iterable[np.ndarray]) -> int:
    """Stream chunks to a `.req` file; returns the number of requests written."""
    n = 0
    with open(path, "wb") as f:
        f.write(MAGIC)
        for chunk in chunks:
            chunk.astype(_FILE_DTYPE).tofile(f)
            n += len(chunk)
    return n
