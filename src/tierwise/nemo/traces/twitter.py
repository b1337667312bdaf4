"""Twitter cache traces (`twitter/cache-trace`): header-less CSV, plain or `.zst`.

Columns: timestamp, anonymized key, key size, value size, client id, operation, TTL. get/gets are GETs, delete is
a DELETE, every other operation (set, add, replace, cas, append, prepend, incr, decr) writes the key: a SET.
"""

from __future__ import annotations

from tierwise.nemo.traces.reader import CsvTraceReader, key_id
from tierwise.nemo.traces.request import Op

OPS = {"get": Op.GET, "gets": Op.GET, "delete": Op.DELETE, "set": Op.SET, "add": Op.SET, "replace": Op.SET,
       "cas": Op.SET, "append": Op.SET, "prepend": Op.SET, "incr": Op.SET, "decr": Op.SET}
_FIELDS = 7


class TwitterReader(CsvTraceReader):
    format = "twitter"

    def _parse(self, fields: list[str]) -> tuple[int, int, int, int, int, int]:
        if len(fields) < _FIELDS:
            raise ValueError(f"expected {_FIELDS} comma-separated fields, got {len(fields)}")
        key = ",".join(fields[1:-5])  # an anonymised key could itself hold commas: the other fields are fixed
        key_size, value_size, _client, op, ttl = fields[-5:]
        code = OPS.get(op.strip().lower())
        if code is None:
            raise ValueError(f"unknown operation {op!r} (expected one of {', '.join(OPS)})")
        int(fields[0])  # the timestamp must be an integer too
        return int(code), key_id(key), int(key_size), int(value_size), int(ttl), 1
