"""tierwise's own request file (`.req`): an 8-byte magic, then packed little-endian REQUEST_DTYPE records.

Lossless (op, key id, key size, value size, TTL) and read with `np.fromfile`: the fastest way to replay a
generated trace many times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.nemo.traces.reader import TraceReader
from tierwise.nemo.traces.request import REQUEST_DTYPE

MAGIC = b"TWREQv1\n"
_FILE_DTYPE = REQUEST_DTYPE.newbyteorder("<")


class RequestFileReader(TraceReader):
    format = "requests"

    def _blocks(self) -> Iterator[np.ndarray]:
        try:
            size = self.path.stat().st_size
            f = open(self.path, "rb")
        except OSError as e:
            raise TierwiseError(f"cannot open trace {self.path}: {e.strerror}") from None
        with f:
            if f.read(len(MAGIC)) != MAGIC:
                raise TierwiseError(f"{self.path}: not a tierwise request file (bad magic)")
            body = size - len(MAGIC)
            whole = body // _FILE_DTYPE.itemsize
            if body % _FILE_DTYPE.itemsize:
                self.bad(f"byte {len(MAGIC) + whole * _FILE_DTYPE.itemsize}", "truncated last record")
            done = 0
            while done < whole:
                recs = np.fromfile(f, dtype=_FILE_DTYPE, count=min(self.chunk_size, whole - done))
                done += len(recs)
                invalid = np.flatnonzero(recs["op"] > 2)
                for i in invalid.tolist():
                    self.bad(f"record {done - len(recs) + i}", f"invalid op code {int(recs['op'][i])}")
                if len(invalid):
                    recs = recs[recs["op"] <= 2]
                yield recs.astype(REQUEST_DTYPE)


def write_requests(path: str | Path, chunks: Iterable[np.ndarray]) -> int:
    """Stream chunks to a `.req` file; returns the number of requests written."""
    n = 0
    with open(path, "wb") as f:
        f.write(MAGIC)
        for chunk in chunks:
            chunk.astype(_FILE_DTYPE).tofile(f)
            n += len(chunk)
    return n
