import json

import pytest

from tierwise.common.errors import TierwiseError
from tierwise.nemo.api import open_engine
from tierwise.nemo.replay import ReplayOptions, parse_engine_options, replay, value_bytes
from tierwise.nemo.traces import Op, open_trace
from tierwise.nemo.traces.request import make_chunk


def test_value_bytes_deterministic_and_distinct():
    assert value_bytes(7, 1, 100) == value_bytes(7, 1, 100) and len(value_bytes(7, 1, 100)) == 100
    assert value_bytes(7, 1, 100) != value_bytes(7, 2, 100) != value_bytes(8, 1, 100)


def test_parse_engine_options():
    assert parse_engine_options(["a=1", "b=0.5", "c=true", "d=none", "e=x"]) == \
        {"a": 1, "b": 0.5, "c": True, "d": None, "e": "x"}
    with pytest.raises(TierwiseError):
        parse_engine_options(["novalue"])


def test_replay_synthetic_checks_values_and_reaches_steady_state():
    # 16 zones of 14 sets: far below the working set; p_th = 1 flushes often enough to reach steady state early
    engine = open_engine("nemo", flash_size="1M", zone_size="64K", flush_threshold=1)
    result = replay(engine, open_trace("synth:twitter-merged:100000"),
                    ReplayOptions(sample_every=20_000, warmup=0.5, warm_capacities=0.5, limit=100_000))
    s = result.summary
    assert result.requests == 100_000 and result.counters["wrong_values"] == 0
    assert result.counters["lookaside_sets"] > 0 and s["gets"] > 0
    assert s["window"] == "steady" and 0 < s["warm_at_request"] < 70_000 and s["sgs_flushed"] > 5
    assert 1.0 < s["alwa"] < 3.0 and 0 < s["miss_ratio"] < 1
    assert s["device_bytes_written"] > 0 and s["dram"]["index_bits_per_object"] > 0
    assert len(result.series) == 5 and result.series[-1]["requests"] == 100_000
    json.dumps(result.as_dict())  # plain JSON types only
    assert len(result.to_dataframe()) == 5  # the table of a replay is its time series


@pytest.mark.parametrize("name", ["nemo", "fairywren"])
def test_simulated_latencies_are_identical_across_runs_and_grow_with_load(name):
    def run(rate):
        options = {"flush_threshold": 1} if name == "nemo" else {"set_op": 0.25}
        engine = open_engine(name, flash_size="1M", zone_size="64K", **options)
        result = replay(engine, open_trace("synth:twitter-merged:60000"),
                        ReplayOptions(sample_every=30_000, warmup=0.5, warm_capacities=0.5, rate=rate,
                                      profile="zn540"))
        engine.close()
        return result.summary["latency"]

    a, b = run(100_000), run(100_000)
    assert a == b  # simulated device time: the same trace, seed and rate give the same percentiles
    assert a["get"]["count"] > 0 and a["get"]["p99_us"] >= 70  # at least one flash read of the profile
    slow = run(2_000_000)  # 20x the load on the same device: queues build
    assert slow["get"]["p99_us"] > a["get"]["p99_us"]


def test_dram_budget_enforced():
    with pytest.raises(TierwiseError, match="DRAM"):
        open_engine("nemo", flash_size="4M", zone_size="256K", dram_size="10K")


def test_cli_replay_writes_json(tmp_path):
    from typer.testing import CliRunner

    from tierwise.nemo.cli import app

    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["replay", "--trace", "synth:twitter-merged:20000", "--flash-size", "2M",
                                   "--zone-size", "128K", "--opt", "sets_per_sg=30", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["requests"] == 20000 and data["engine"]["S"] == 30 and data["replay"]["wrong_values"] == 0


def _trace(rows) -> list:
    chunk = make_chunk(len(rows))
    for i, (op, key, key_size, value_size) in enumerate(rows):
        chunk[i]["op"], chunk[i]["key"], chunk[i]["key_size"], chunk[i]["value_size"] = op, key, key_size, value_size
    return [chunk]


def test_an_uncacheable_set_invalidates_the_cached_value():
    trace = _trace([(Op.SET, 5, 20, 100), (Op.GET, 5, 20, 100), (Op.SET, 5, 20, 3000), (Op.GET, 5, 20, 3000)])
    engine = open_engine("nemo", flash_size=2 << 20, zone_size=64 << 10)
    result = replay(engine, trace, ReplayOptions(sample_every=0, progress=False))
    assert result.counters["uncacheable"] == 2 and result.counters["wrong_values"] == 0
    assert result.summary["gets"] == 2 and result.summary["miss_ratio"] == 0.5


def test_keys_the_cache_cannot_hold_miss_for_every_operation():
    engine = open_engine("nemo", flash_size=2 << 20, zone_size=64 << 10)
    trace = _trace([(Op.SET, 1, 300, 50), (Op.GET, 1, 300, 50), (Op.DELETE, 1, 300, 0), (Op.GET, 2, 0, 10),
                    (Op.SET, 3, 20, 50), (Op.GET, 3, 20, 50)])
    result = replay(engine, trace, ReplayOptions(sample_every=0, progress=False))
    assert result.counters["uncacheable"] == 4  # the set, the refills after both misses, the delete
    assert result.summary["gets"] == 3 and result.summary["miss_ratio"] == pytest.approx(2 / 3)


def test_zones_are_picked_from_the_flash_size():
    from tierwise.nemo.defaults import zone_size_for

    assert zone_size_for("nemo", 4 << 20) == 256 << 10 and zone_size_for("log", 4 << 20) == 64 << 10  # 16, 64 zones
    assert zone_size_for("nemo", 24 << 20) == 1 << 20  # a power of two: 24 zones
    assert zone_size_for("set", 256 << 20) == zone_size_for("nemo", 1 << 30) == 4 << 20  # at most 4 MiB
    assert zone_size_for("fairywren", 128 << 10) == 16 << 10  # at least 16 KiB


def test_progress_labels_interval_figures_and_counts_a_trace_of_unknown_length():
    from rich.progress import MofNCompleteColumn

    from tierwise.nemo.replay import _interval_figures, _progress

    assert _interval_figures({"alwa": 1.5, "miss_ratio": 0.1}, 100_000) == "last 100,000: ALWA 1.500, miss 10.0%"
    assert _interval_figures({"alwa": None, "miss_ratio": 0.1}, 100_000) == ""
    for total, shows_total in ((1000, True), (None, False)):
        with _progress("replay", total, enabled=True) as (bar, _):
            assert any(isinstance(c, MofNCompleteColumn) for c in bar.columns) == shows_total
