"""Trace readers: Twitter CSV (plain/.zst), Meta KV CSV (every release header), oracleGeneral, tierwise .req."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import zstandard

from tierwise.common.errors import TierwiseError
from tierwise.nemo.traces import (REQUEST_DTYPE, Op, Request, iter_requests, key_bytes, keys_of, open_trace,
                                  write_trace)
from tierwise.nemo.traces.oracle import ORACLE_DTYPE, next_access
from tierwise.nemo.traces.reader import key_id

TWITTER = """\
0,keyA,10,100,1,get,0
0,keyA,10,100,1,set,3600
1,keyB,12,50,2,gets,0
1,keyB,12,50,2,add,60
2,keyC,8,7,3,cas,0
2,keyD,8,0,3,delete,0
3,key,with,commas,9,70,4,incr,0
"""


def test_twitter_plain_and_zst(tmp_path):
    plain = tmp_path / "t.csv"
    plain.write_text(TWITTER)
    zst = tmp_path / "t.csv.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(TWITTER.encode()))
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(TWITTER.encode()))
    chunks = {p: np.concatenate(list(open_trace(p, chunk_size=3))) for p in (plain, zst, gz)}
    a = chunks[plain]
    for other in chunks.values():
        assert np.array_equal(a, other)
    assert a["op"].tolist() == [Op.GET, Op.SET, Op.GET, Op.SET, Op.SET, Op.DELETE, Op.SET]
    assert a["key"][0] == a["key"][1] == key_id("keyA") and a["key"][6] == key_id("key,with,commas")
    assert a["key_size"].tolist() == [10, 10, 12, 12, 8, 8, 9]
    assert a["value_size"].tolist() == [100, 100, 50, 50, 7, 0, 70]
    assert a["ttl"].tolist() == [0, 3600, 0, 60, 0, 0, 0]
    r = open_trace(plain, chunk_size=3)
    assert [len(c) for c in r] == [3, 3, 1] and r.requests == 7 and r.format == "twitter"


@pytest.mark.parametrize("line, why", [
    ("0,k,10,100,1,fetch,0", "unknown operation"),
    ("0,k,10,100,1", "expected 7"),
    ("0,k,ten,100,1,get,0", "invalid literal"),
    ("x,k,10,100,1,get,0", "invalid literal"),
    ("0,k,70000,100,1,get,0", "key size"),
    ("0,k,10,-5,1,get,0", "value size"),
    ("0,k,10,99999999999999999999999,1,get,0", "value size"),
    ("0,k,10,1,1,set,99999999999", "ttl"),
    ("0,k,10,1,1,set", "expected 7"),
])
def test_twitter_bad_line_named_and_skippable(tmp_path, line, why):
    p = tmp_path / "bad.csv"
    p.write_text(f"0,a,1,1,1,get,0\n{line}\n0,b,1,1,1,get,0\n")
    with pytest.raises(TierwiseError, match=rf"bad.csv:2: .*{why}"):
        list(open_trace(p, format="twitter"))
    r = open_trace(p, format="twitter", skip_bad=True)
    assert sum(len(c) for c in r) == 2 and r.bad_lines == 1 and "bad.csv:2" in r.bad_examples[0]


HEADERS = {
    "202206": ("key,op,size,op_count,key_size", "k1,GET,100,2,20", "k1,SET_LEASE,100,1,20", "k2,DELETE,0,1,5"),
    "202210": ("op_time,key,key_size,op,op_count,size,cache_hits,ttl", "1,k1,20,GET_LEASE,2,100,1,0",
               "1,k1,20,SET,1,100,0,30", "2,k2,5,DELETE,1,0,0,0"),
    "202312": ("key,op,size,op_count,key_size,ttl", "k1,GET,100,2,20,0", "k1,SET,100,1,20,30", "k2,DELETE,0,1,5,0"),
    "202401": ("op_time,key,key_size,op,op_count,size,cache_hits,ttl,usecase,sub_usecase",
               "1,k1,20,GET,2,100,1,0,7,8", "1,k1,20,SET,1,100,0,30,7,8", "2,k2,5,DELETE,1,0,0,0,7,8"),
}


@pytest.mark.parametrize("release", list(HEADERS))
def test_metakv_every_release(tmp_path, release):
    p = tmp_path / f"kv_{release}.csv"
    p.write_text("\n".join(HEADERS[release]) + "\n")
    a = np.concatenate(list(open_trace(p)))
    assert a["op"].tolist() == [Op.GET, Op.GET, Op.SET, Op.DELETE]  # op_count 2 expands to two GETs
    assert a["key"].tolist() == [key_id("k1")] * 3 + [key_id("k2")]
    assert a["key_size"].tolist() == [20, 20, 20, 5] and a["value_size"].tolist() == [100, 100, 100, 0]
    assert a["ttl"][2] == (0 if release == "202206" else 30)


def test_metakv_bad_inputs(tmp_path):
    p = tmp_path / "kv.csv"
    p.write_text("key,op,size\nk,GET,1\nk,FROB,1\nk,GET,1,extra\nk,GET,1\n")
    with pytest.raises(TierwiseError, match=r"kv.csv:3: unknown operation 'FROB'"):
        list(open_trace(p))
    r = open_trace(p, skip_bad=True)
    assert sum(len(c) for c in r) == 2 and r.bad_lines == 2
    p.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(TierwiseError, match="cannot tell the format"):
        open_trace(p)
    with pytest.raises(TierwiseError, match=r"kv.csv:1: not a Meta KV trace header"):
        list(open_trace(p, format="metakv"))
    p.write_text("key,op,size,op_count\nk,GET,1,0\n")
    with pytest.raises(TierwiseError, match="op_count 0"):
        list(open_trace(p))


def test_op_count_expansion_respects_chunk_size(tmp_path):
    p = tmp_path / "kv.csv"
    p.write_text("key,op,size,op_count,key_size\nk,GET,1,1000,3\nj,SET,2,5,3\n")
    r = open_trace(p, chunk_size=64)
    sizes = [len(c) for c in r]
    assert sum(sizes) == 1005 and max(sizes) == 64 and r.requests == 1005


def test_metakv_shared_sample(shared_data):
    r = open_trace(shared_data / "traces" / "meta_kvcache_202401_sample.csv")
    a = np.concatenate(list(r))
    assert r.format == "metakv" and len(a) == 691 and len(np.unique(a["key"])) == 52 and r.bad_lines == 0
    assert set(np.unique(a["op"]).tolist()) == {Op.GET, Op.SET, Op.DELETE}


def test_oracle_shared_sample(shared_data):
    path = shared_data / "traces" / "cloudphysics_block.oracleGeneral.bin"
    raw = np.fromfile(path, dtype=ORACLE_DTYPE)
    r = open_trace(path, chunk_size=10_000)
    a = np.concatenate(list(r))
    assert r.format == "oracle" and len(a) == len(raw) == 113_872
    assert np.array_equal(a["key"], raw["obj_id"])
    assert np.array_equal(a["key_size"].astype(np.int64) + a["value_size"], raw["obj_size"].astype(np.int64))
    assert (a["op"] == Op.GET).all()
    assert np.array_equal(next_access(raw["obj_id"]), raw["next_access_vtime"])  # our next-access = libCacheSim's


def test_oracle_truncated_record(tmp_path):
    recs = np.zeros(3, dtype=ORACLE_DTYPE)
    recs["obj_id"] = [1, 2, 1]
    recs["obj_size"] = [10, 100, 10]
    recs["next_access_vtime"] = [3, -1, -1]  # valid records: only the torn tail is bad
    p = tmp_path / "x.oracleGeneral.bin"
    p.write_bytes(recs.tobytes() + b"\x00" * 5)
    with pytest.raises(TierwiseError, match="byte 72: .*truncated"):
        list(open_trace(p))
    r = open_trace(p, skip_bad=True, key_size=16)
    a = np.concatenate(list(r))
    assert len(a) == 3 and r.bad_lines == 1 and a["key_size"].tolist() == [10, 16, 10]


@pytest.mark.parametrize("suffix", [".req", ".oracleGeneral.bin", ".csv"])
def test_write_and_read_back(tmp_path, suffix):
    src = np.concatenate(list(open_trace("synth:twitter-merged:3000:5")))
    p = tmp_path / f"t{suffix}"
    assert write_trace(p, [src[:1000], src[1000:]]) == 3000
    back = np.concatenate(list(open_trace(p)))
    assert len(back) == 3000
    if suffix == ".req":
        assert np.array_equal(back, src)
    elif suffix == ".csv":  # keys are respelled and re-hashed; the key-equality pattern, sizes and ops survive
        assert np.array_equal(back[["op", "key_size", "value_size"]], src[["op", "key_size", "value_size"]])
        assert len(np.unique(back["key"])) == len(np.unique(src["key"]))
    else:
        assert np.array_equal(back["key"], src["key"])
        assert np.array_equal(back["key_size"].astype(int) + back["value_size"], src["key_size"].astype(int) + src["value_size"])


def test_request_file_bad_magic_and_missing(tmp_path):
    p = tmp_path / "x.req"
    p.write_bytes(b"NOTMAGIC" + bytes(19))
    with pytest.raises(TierwiseError, match="cannot tell the format|bad magic"):
        list(open_trace(p, format="requests"))
    with pytest.raises(TierwiseError, match="not found"):
        open_trace(tmp_path / "nope.csv")
    with pytest.raises(TierwiseError, match="unknown trace format"):
        open_trace(p, format="parquet")
    with pytest.raises(TierwiseError, match="output format"):
        write_trace(tmp_path / "x.txt", [])


def test_key_bytes_deterministic_unique_and_vectorised():
    ids = np.array([0, 1, 2**64 - 1, 12345678901234567, 1 << 63], dtype=np.uint64)
    chunk = np.zeros(len(ids), dtype=REQUEST_DTYPE)
    chunk["key"] = ids
    chunk["key_size"] = [11, 20, 30, 5, 11]
    spelled = keys_of(chunk)
    assert spelled == [key_bytes(int(k), int(s)) for k, s in zip(ids, chunk["key_size"])]
    assert [len(k) for k in spelled] == [11, 20, 30, 5, 11]
    assert len({key_bytes(int(k), 11) for k in ids}) == len(ids)
    assert all(k.isascii() and b" " not in k for k in spelled)
    assert key_bytes(7, 0) == b""


def test_request_view():
    chunk = np.zeros(2, dtype=REQUEST_DTYPE)
    chunk[1] = (Op.DELETE, 9, 3, 4, 5, 6)
    reqs = list(iter_requests([chunk]))
    assert reqs[1] == Request(Op.DELETE, 9, 3, 4, 5, 6) and reqs[0].op is Op.GET and reqs[0].time == 0


def test_request_file_bad_records(tmp_path):
    good = np.zeros(3, dtype=REQUEST_DTYPE)
    good["key"] = [1, 2, 3]
    good["op"] = [0, 7, 1]  # 7 is not an op
    p = tmp_path / "x.req"
    write_trace(p, [good])
    with open(p, "ab") as f:
        f.write(b"\x01\x02")  # a torn record
    with pytest.raises(TierwiseError, match=r"x.req:byte 31: record 1: invalid op code 7"):
        list(open_trace(p))  # the first bad record in file order, then the torn tail
    r = open_trace(p, skip_bad=True)
    a = np.concatenate(list(r))
    assert a["key"].tolist() == [1, 3] and r.bad_lines == 2 and "invalid op code 7" in r.bad_examples[0]
    assert "byte 77: " in r.bad_examples[1] and "truncated" in r.bad_examples[1]


def test_reader_is_also_an_iterator():
    r = open_trace("synth:twitter-merged:1000", chunk_size=400)
    assert [len(next(r)), len(next(r)), len(next(r))] == [400, 400, 200]
    with pytest.raises(StopIteration):
        next(r)
    assert sum(len(c) for c in r) == 1000  # a for loop is a fresh pass


def test_kangaroo_tao_csv(tmp_path):
    p = tmp_path / "tao.csv"
    p.write_text("fbid,size,op_count\n17,300,2\n18,40,1\n")
    r = open_trace(p)
    a = np.concatenate(list(r))
    assert r.format == "metakv" and len(a) == 3 and (a["op"] == Op.GET).all()
    assert a["key_size"].tolist() == [44, 44, 44] and a["value_size"].tolist() == [300, 300, 40]
    assert a["key"].tolist() == [key_id("17")] * 2 + [key_id("18")]
