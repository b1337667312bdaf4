"""Meta key-value cache traces (CacheLib `kvcache` releases), CSV with a header naming the columns.

Release headers: 202206 `key,op,size,op_count,key_size`; 202210 `op_time,key,key_size,op,op_count,size,cache_hits,
ttl`; 202312 `key,op,size,op_count,key_size,ttl`; 202401 adds `usecase,sub_usecase` to 202210. Columns are found
by name, so any release (and CacheBench's replay CSV) reads the same way. `size` is the value size; a row stands
for `op_count` identical requests. Keys (hex digests or strings) are hashed to 64-bit ids. `op_time` (seconds),
where the release has it, becomes the request's `time` (0 otherwise).

The Kangaroo simulator's `FacebookTaoSimple` CSV (`fbid,size,op_count`) reads here too: `fbid` is the key, every
row a GET, keys 44 B as that simulator assumes.
"""

from __future__ import annotations

from tierwise.nemo.traces.reader import CsvTraceReader, key_id
from tierwise.nemo.traces.request import Op, keys_of

OPS = {"GET": Op.GET, "GET_LEASE": Op.GET, "SET": Op.SET, "SET_LEASE": Op.SET, "DELETE": Op.DELETE}
REQUIRED = ("key", "op", "size")
TAO_KEY_SIZE = 44


class MetaKVReader(CsvTraceReader):
    format = "metakv"
    header = True

    def _read_header(self, fields: list[str]) -> None:
        names = [f.strip().lower() for f in fields]
        tao = "fbid" in names and "key" not in names and "op" not in names
        if tao:
            names[names.index("fbid")] = "key"
        missing = [c for c in REQUIRED if c not in names and not (tao and c == "op")]
        if missing:
            raise ValueError(f"not a Meta KV trace header (missing column(s) {', '.join(missing)}): {','.join(fields)!r}")
        col = {name: i for i, name in enumerate(names)}
        self._key, self._op, self._size = col["key"], col.get("op"), col["size"]
        self._count, self._key_size, self._ttl = col.get("op_count"), col.get("key_size"), col.get("ttl")
        self._time = col.get("op_time")
        self._default_key_size = TAO_KEY_SIZE if tao else None
        self._width = len(names)

    def _parse(self, line: str) -> tuple[int, int, int, int, int, int, int]:
        fields = line.rstrip("\r\n").split(",")
        if len(fields) != self._width:
            raise ValueError(f"expected {self._width} fields as in the header, got {len(fields)}")
        key = fields[self._key]
        code = OPS.get(fields[self._op].strip().upper()) if self._op is not None else Op.GET
        if code is None:
            raise ValueError(f"unknown operation {fields[self._op]!r} (expected one of {', '.join(OPS)})")
        key_size = int(fields[self._key_size]) if self._key_size is not None else self._default_key_size or len(key)
        count = int(fields[self._count]) if self._count is not None else 1
        ttl = int(fields[self._ttl] or 0) if self._ttl is not None else 0
        time = int(fields[self._time] or 0) if self._time is not None else 0
        return int(code), key_id(key), key_size, int(fields[self._size]), ttl, count, time


def write_cachebench_csv(path, chunks) -> int:
    """Write requests in CacheBench's replay format (the 202206 release header `key,op,size,op_count,key_size`),
    keys spelled by `key_bytes`; returns the number of requests written."""
    names = {int(code): name for name, code in OPS.items() if "LEASE" not in name}
    n = 0
    with open(path, "w", encoding="ascii", newline="") as f:
        f.write("key,op,size,op_count,key_size\n")
        for chunk in chunks:
            keys = keys_of(chunk)
            f.writelines(f"{k.decode()},{names[op]},{vs},1,{ks}\n" for k, op, vs, ks in
                         zip(keys, chunk["op"].tolist(), chunk["value_size"].tolist(), chunk["key_size"].tolist()))
            n += len(chunk)
    return n
