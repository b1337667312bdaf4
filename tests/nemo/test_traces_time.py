"""Request timestamps: the `time` column in every reader, the .req v2 format (v1 still read), the synthetic
generator's arrival times, and replays driven by the trace's timestamps (traces.arrivals.TraceClock)."""

from __future__ import annotations

import numpy as np
import pytest

from tierwise.common.errors import TierwiseError
from tierwise.nemo.traces import REQUEST_DTYPE, Op, Request, detect_format, iter_requests, open_trace, write_trace
from tierwise.nemo.traces import arrivals as arr
from tierwise.nemo.traces.arrivals import NS, TraceClock, rate_arrivals
from tierwise.nemo.traces.native import MAGIC, MAGIC_V1
from tierwise.nemo.traces.oracle import ORACLE_DTYPE
from tierwise.nemo.traces.synth import PROFILES


def read_all(path, **kw) -> np.ndarray:
    return np.concatenate(list(open_trace(path, **kw)))


def test_request_dtype_and_view_carry_time():
    assert REQUEST_DTYPE.names[-1] == "time" and REQUEST_DTYPE["time"] == np.dtype("u4")
    chunk = np.zeros(1, dtype=REQUEST_DTYPE)
    chunk[0] = (Op.SET, 1, 2, 3, 4, 123456)
    assert next(iter_requests([chunk])) == Request(Op.SET, 1, 2, 3, 4, 123456)


def test_twitter_timestamps(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("0,a,1,1,1,get,0\n0,b,1,1,1,get,0\n7,a,1,1,1,set,5\n604800,c,2,2,1,delete,0\n")
    assert read_all(p)["time"].tolist() == [0, 0, 7, 604800]
    for stamp in ("-1", str(1 << 32)):
        p.write_text(f"0,a,1,1,1,get,0\n{stamp},b,1,1,1,get,0\n")
        with pytest.raises(TierwiseError, match=r"t.csv:2: timestamp"):
            read_all(p)
        r = open_trace(p, skip_bad=True)
        assert sum(len(c) for c in r) == 1 and r.bad_lines == 1


@pytest.mark.parametrize("release, times", [
    ("key,op,size,op_count,key_size\nk1,GET,100,2,20\nk2,SET,5,1,3\n", [0, 0, 0]),
    ("op_time,key,key_size,op,op_count,size,cache_hits,ttl\n"
     "604038471,k1,20,GET,2,100,1,0\n604038473,k2,3,SET,1,5,0,0\n",
     [604038471, 604038471, 604038473]),  # op_count expands with the row's time
])
def test_metakv_op_time(tmp_path, release, times):
    p = tmp_path / "kv.csv"
    p.write_text(release)
    assert read_all(p)["time"].tolist() == times


def test_metakv_shared_sample_times(shared_data):
    a = read_all(shared_data / "traces" / "meta_kvcache_202401_sample.csv")
    assert a["time"].min() == 604038471 and (np.diff(a["time"].astype(np.int64)) >= 0).all()


def test_oracle_timestamps_read_and_written(tmp_path, shared_data):
    path = shared_data / "traces" / "cloudphysics_block.oracleGeneral.bin"
    raw = np.fromfile(path, dtype=ORACLE_DTYPE)
    a = read_all(path, chunk_size=10_000)
    assert np.array_equal(a["time"], raw["timestamp"])
    out = tmp_path / "x.oracleGeneral.bin"
    write_trace(out, [a[:5000]])
    assert np.array_equal(np.fromfile(out, dtype=ORACLE_DTYPE)["timestamp"], raw["timestamp"][:5000])
    untimed = a[:10].copy()
    untimed["time"] = 0
    write_trace(out, [untimed])  # no timestamps: the request number, as before
    assert np.fromfile(out, dtype=ORACLE_DTYPE)["timestamp"].tolist() == list(range(1, 11))


def test_request_file_v2_round_trip_and_v1_still_reads(tmp_path):
    src = read_all("synth:twitter-merged:100000:2")
    p = tmp_path / "t.req"
    write_trace(p, [src])
    assert p.read_bytes()[:8] == MAGIC and p.stat().st_size == 8 + 23 * len(src)
    back = read_all(p, chunk_size=7777)
    assert np.array_equal(back, src) and back["time"].max() == (len(src) - 1) // PROFILES["twitter-merged"].rate_qps
    v1 = tmp_path / "old.req"
    fields = ["op", "key", "key_size", "value_size", "ttl"]
    recs = np.zeros(len(src), dtype=np.dtype([(f, REQUEST_DTYPE[f].newbyteorder("<")) for f in fields]))
    for f in fields:
        recs[f] = src[f]
    v1.write_bytes(MAGIC_V1 + recs.tobytes())
    assert detect_format(v1) == detect_format(p) == "requests"
    old = read_all(v1)
    assert np.array_equal(old[fields], src[fields]) and not old["time"].any()
    with open(v1, "ab") as f:
        f.write(b"\x01")  # a torn v1 record is reported in v1 record units
    with pytest.raises(TierwiseError, match=rf"byte {8 + 19 * len(src)}"):
        read_all(v1)


def test_synthetic_times_follow_the_aggregate_rate():
    prof = PROFILES["twitter-merged"]
    assert prof.rate_qps == 44_190 and PROFILES["twitter-52"].rate_qps == 24_250
    tr = open_trace("synth:twitter-merged:200000:4", chunk_size=30_000)
    a = np.concatenate(list(tr))
    assert np.array_equal(a["time"], np.arange(len(a)) // prof.rate_qps)
    b = read_all("synth:twitter-merged:200000:4", chunk_size=200_000)
    assert np.array_equal(a, b)  # independent of the chunk size


# ---- arrivals ----------------------------------------------------------------------------------------------------

def clock_arrivals(times, cuts=()) -> np.ndarray:
    """Arrivals of `times` fed to one TraceClock in slices cut at `cuts`."""
    clock = TraceClock()
    edges = [0, *cuts, len(times)]
    return np.concatenate([clock.arrivals(np.asarray(times[a:b], np.uint32)) for a, b in zip(edges, edges[1:])])


def test_requests_of_a_second_are_spread_evenly_over_it():
    got = clock_arrivals([5, 5, 5, 5, 6, 6, 8, 9])  # relative to second 5; 7 is empty
    assert got[:7].tolist() == [0, NS // 4, NS // 2, 3 * NS // 4, NS, NS + NS // 2, 3 * NS]
    assert 4 * NS <= got[7] < 5 * NS


def test_a_steady_rate_gives_the_same_arrivals_however_the_trace_is_sliced():
    times = np.repeat(np.arange(100, 120), 10)  # 10 requests a second
    whole = clock_arrivals(times)
    assert np.array_equal(whole[:190], np.arange(190) * (NS // 10))
    for cuts in ([35], [40], [13, 57, 58, 121], list(range(17, 200, 13))):
        assert np.array_equal(clock_arrivals(times, cuts)[:190], whole[:190])
    # a cut inside the trace's first second: that second has no rate to go by, the later ones are exact
    assert np.array_equal(clock_arrivals(times, list(range(10, 200, 10)))[10:190], whole[10:190])


@pytest.mark.parametrize("seed", [0, 1])
def test_arrivals_stay_in_their_second_and_never_go_back(seed):
    rng = np.random.default_rng(seed)
    times = np.repeat(np.arange(1000, 1200), rng.integers(0, 50, 200))
    cuts = sorted(rng.choice(np.arange(1, len(times)), 20, replace=False).tolist())
    got = clock_arrivals(times, cuts)
    rel = (times - times[0]).astype(np.int64)
    assert (np.diff(got) >= 0).all() and (got >= rel * NS).all() and (got <= (rel + 1) * NS).all()


def test_out_of_order_timestamps_are_raised_to_the_latest():
    got = clock_arrivals([10, 12, 11, 13])
    assert got.tolist()[:2] == [0, 2 * NS] and got[2] > got[1] and got[2] < 3 * NS


def test_a_trace_without_timestamps_is_refused(monkeypatch):
    with pytest.raises(TierwiseError, match="no timestamps.*--rate"):
        TraceClock().arrivals(np.zeros(50, np.uint32), ends_trace=True)
    clock = TraceClock()
    clock.arrivals(np.zeros(50, np.uint32))  # a zero-based trace may start with a whole slice in second 0
    assert clock.arrivals(np.array([0, 1, 1], np.uint32)).tolist()[1] == NS
    monkeypatch.setattr(arr, "ZERO_LIMIT", 120)
    clock = TraceClock()
    clock.arrivals(np.zeros(100, np.uint32))
    with pytest.raises(TierwiseError, match="no timestamps"):
        clock.arrivals(np.zeros(100, np.uint32))


def test_synthetic_trace_times_match_its_rate():
    prof = PROFILES["twitter-merged"]
    a = read_all("synth:twitter-merged:150000:1")
    clock = TraceClock()
    got = np.concatenate([clock.arrivals(a["time"][i:i + 65536]) for i in range(0, len(a), 65536)])
    want = rate_arrivals(0, len(a), prof.rate_qps)
    assert np.abs(got - want).max() <= 1  # ns: the same arrivals as --rate 44190


def test_replay_options_arrivals():
    from tierwise.nemo.replay import ReplayOptions

    assert ReplayOptions().arrivals == "rate" and ReplayOptions(arrivals="trace").arrivals == "trace"
    with pytest.raises(TierwiseError, match="arrivals"):
        ReplayOptions(arrivals="poisson")


def test_replay_driven_by_trace_timestamps():
    from tierwise.nemo.api import open_engine
    from tierwise.nemo.replay import ReplayOptions, replay

    def run(trace, **kw):
        engine = open_engine("log", flash_size="2M", zone_size="128K")
        return replay(engine, trace, ReplayOptions(sample_every=0, progress=False, **kw))

    trace = list(open_trace("synth:twitter-merged:100000:3"))
    timed = run(trace, arrivals="trace")
    lat = timed.summary["latency"]["get"]
    assert lat["count"] == timed.summary["gets"] > 0 and lat["p99_us"] > 0
    # the same arrivals as the profile's rate (to a nanosecond past the first second): the same latencies
    paced = run(trace, arrivals="rate", rate=PROFILES["twitter-merged"].rate_qps).summary["latency"]["get"]
    assert paced["count"] == lat["count"]
    for q in ("p50_us", "p99_us", "p99.9_us"):
        assert paced[q] == pytest.approx(lat[q], rel=0.07)
    untimed = [c.copy() for c in trace]
    for c in untimed:
        c["time"] = 0
    with pytest.raises(TierwiseError, match="no timestamps"):
        run(untimed, arrivals="trace")
