"""Twitter cache traces (`twitter/cache-trace`): header-less CSV, plain or `.zst`.

Columns: timestamp (seconds), anonymized key, key size, value size, client id, operation, TTL. get/gets are GETs,
delete is a DELETE, every other operation (set, add, replace, cas, append, prepend, incr, decr) writes the key: a
SET. The timestamp becomes the request's `time`.
"""

from __future__ import annotations

from tierwise.nemo.traces.reader import CsvTraceReader, key_id
from tierwise.nemo.traces.request import Op

OPS = {"get": Op.GET, "gets": Op.GET, "delete": Op.DELETE, "set": Op.SET, "add": Op.SET, "replace": Op.SET,
       "cas": Op.SET, "append": Op.SET, "prepend": Op.SET, "incr": Op.SET, "decr": Op.SET}
_CODES = {name: int(op) for name, op in OPS.items()}
_FIELDS = 7


class TwitterReader(CsvTraceReader):
    format = "twitter"

    def _parse(self, line: str) -> tuple[int, int, int, int, int, int, int]:
        # Split from the right: an anonymised key could itself hold commas, the five fields after it cannot.
        parts = line.rsplit(",", 5)
        head = parts[0].split(",", 1)
        if len(parts) != 6 or len(head) != 2:
            raise ValueError(f"expected {_FIELDS} comma-separated fields, got {line.count(',') + 1}")
        _, key_size, value_size, _client, op, ttl = parts
        code = _CODES.get(op)
        if code is None:
            code = _CODES.get(op.strip().lower())
            if code is None:
                raise ValueError(f"unknown operation {op!r} (expected one of {', '.join(OPS)})")
        return code, key_id(head[1]), int(key_size), int(value_size), int(ttl), 1, int(head[0])
