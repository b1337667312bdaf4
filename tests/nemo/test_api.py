"""The Nemo Python API (`tierwise.nemo`): the same numbers as the commands' --json, plain results, cheap import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tierwise import nemo
from tierwise.cli import app
from tierwise.common.errors import TierwiseError

TRACE = "synth:twitter-merged:10000"


def cli_json(*args: str) -> dict:
    res = CliRunner().invoke(app, ["nemo", *args, "--json", "-"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def without_wall_time(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in ("seconds", "requests_per_second")}


def test_replay_gives_the_numbers_of_the_command():
    result = nemo.replay(TRACE, "nemo", flash_size="512K", options={"flush_threshold": 4}, sample_every=2000,
                         progress=False)
    assert isinstance(result, nemo.ReplayResult) and result.requests == 10_000
    data = result.as_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON types
    cli = cli_json("replay", "--trace", TRACE, "--flash-size", "512K", "--opt", "flush_threshold=4",
                   "--sample-every", "2000")
    assert without_wall_time(cli) == without_wall_time(data)
    assert len(result.to_dataframe()) == len(result.series) == 5


def test_replay_of_an_engine_opened_by_hand():
    with nemo.open_engine("log", flash_size=256 << 10) as engine:
        assert engine.device.zone_size == 16 << 10  # picked from the flash size: 4 KiB for 64 zones, raised to 16
        result = nemo.replay(TRACE, engine, requests="5k", progress=False)
        assert result.requests == 5000
        with pytest.raises(TierwiseError, match="already open"):
            nemo.replay(TRACE, engine, flash_size="1M")
    engine.device.close()


def test_bench_gives_the_numbers_of_the_command_one_row_per_design():
    result = nemo.bench(TRACE, "log,set", flash_size="128K", zone_size="16K", ablation=False, cache_sizes=(),
                        executor="serial")
    data = result.as_dict()
    assert json.loads(json.dumps(data)) == data
    cli = cli_json("bench", "--trace", TRACE, "--engines", "log,set", "--flash-size", "128K", "--zone-size", "16K",
                   "--no-ablation", "--sizes", "", "--executor", "serial")
    drop = lambda rows: [without_wall_time(r) for r in rows]  # noqa: E731
    assert drop(cli["table"]) == drop(data["table"]) and cli["settings"] == data["settings"]
    frame = result.to_dataframe()
    assert list(frame["run"]) == ["log", "set"] and {"alwa", "miss_ratio", "get_p99_us"} <= set(frame.columns)


def test_trace_stats_and_synthetic_traces(tmp_path):
    trace = nemo.synth_trace(requests="5k", seed=3, out=tmp_path / "t.req")
    assert trace.total == 5000 and (tmp_path / "t.req").stat().st_size > 0
    stats = nemo.trace_stats(tmp_path / "t.req")
    assert stats.requests == 5000 and stats.bad_lines_skipped == 0
    assert json.loads(json.dumps(stats.as_dict()))["op_mix"] == stats.op_mix
    assert len(stats.to_dataframe()) == 1
    assert stats.as_dict() == cli_json("trace", "stats", str(tmp_path / "t.req"))


def test_importing_the_package_loads_no_compiled_code():
    code = "import sys, tierwise.nemo, tierwise.nemo.api; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
