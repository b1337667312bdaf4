"""`tierwise nemo bench` / `sweep`: runs, executors, the table's columns, plots, config errors."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.errors import TierwiseError
from tierwise.nemo.bench import (BenchSettings, RunSpec, bench, execute, load_sweep_config, parse_engines,
                                 rows_for_terminal, run_one, sweep, sweep_specs)
from tierwise.nemo.device import MemoryZonedDevice
from tierwise.nemo.engines import make_engine

from .baseline_helpers import check_op_list, op_lists

TRACE = "synth:twitter-merged:10000"  # ~60 KB working set: caches of 64-256 KB


def spec(engine, **kw):
    base = dict(engine=engine, trace=TRACE, flash_mb=0.125, zone_kb=16, device="mem", sample_every=2000)
    return RunSpec(**{**base, **kw})


def test_run_one_row_has_every_column_and_simulated_latencies_on_the_file_device(tmp_path):
    r = run_one(spec("log", device="file", tmp_dir=str(tmp_path)))
    row = r["row"]
    assert row["requests"] == 10_000 and row["device"] == "file" and row["profile"] == "zn540"
    assert 1.0 < row["alwa"] < 1.2 and row["dlwa"] == 1.0 and row["e2e_wa"] == pytest.approx(row["alwa"])
    assert 0 < row["miss_ratio"] < 1 and row["index_bits_per_obj"] > 100
    assert 0 < row["get_p50_us"] <= row["get_p99_us"] <= row["get_p99.9_us"] <= row["get_p99.99_us"]
    assert row["read_amp"] > 1  # a hit reads a whole 4 KB page for a ~250 B object
    assert r["series"] and list(tmp_path.iterdir()) == []  # the temporary device folder is gone
    again = run_one(spec("log"))["row"]  # simulated time: the same percentiles on another device kind, every run
    assert all(again[c] == row[c] for c in ("get_p50_us", "get_p99_us", "get_p99.99_us", "set_p99_us"))
    slower = run_one(spec("log", rate=400_000))["row"]  # 4x the load queues up at the dies
    assert slower["get_p99_us"] > row["get_p99_us"]


def test_process_pool_matches_serial_results():
    specs = [spec("log"), spec("set")]
    serial = execute(specs, executor="serial")
    pooled = execute(specs, executor="process", workers=2)
    for a, b in zip(serial, pooled):
        assert a["row"]["alwa"] == b["row"]["alwa"] and a["row"]["miss_ratio"] == b["row"]["miss_ratio"]


def test_bench_table_curve_and_plots(tmp_path):
    st = BenchSettings(trace=TRACE, engines="log,set@ssd", flash_mb=0.25, zone_kb=16, device="mem", ablation=False,
                       cache_sizes=(0.5,), sample_every=2000, ssd_op=0.25)
    report = bench(st, executor="serial", plot_dir=tmp_path)
    assert [r["run"] for r in report["table"]] == ["log", "set@ssd"]
    assert report["table"][0]["paper_wa"] == 1.08 and report["table"][1]["paper_wa"] is None
    assert report["table"][1]["dlwa"] > 1  # in place on the FTL model
    assert report["table"][1]["e2e_wa"] == pytest.approx(report["table"][1]["alwa"] * report["table"][1]["dlwa"])
    by = {(r["engine"], r["flash_mb"]): r["miss_ratio"] for r in report["miss_ratio_curve"]}
    assert set(by) == {("log", 0.125), ("log", 0.25)}  # the curve covers engines on the bench's own device
    assert by[("log", 0.125)] > by[("log", 0.25)]  # a smaller cache misses more
    assert sorted(p.name for p in tmp_path.iterdir()) == ["miss_ratio_vs_size.png", "wa_over_time.png"]


def test_sweep_grid_is_a_cartesian_product(tmp_path):
    cfg = {"trace": TRACE, "engine": "set", "flash_mb": [0.125, 1], "zone_kb": 16, "grid": {"op": [0.25, 0.5]}}
    specs = sweep_specs(cfg)
    assert [(s.flash_mb, s.options["op"]) for s in specs] == [(0.125, 0.25), (0.125, 0.5), (1.0, 0.25), (1.0, 0.5)]
    rows = sweep({**cfg, "flash_mb": 0.125}, executor="serial")
    assert [r["options"]["op"] for r in rows] == [0.25, 0.5]
    assert rows[1]["alwa"] < rows[0]["alwa"]  # more over-provisioning, less GC copying
    bad = tmp_path / "bad.yaml"
    bad.write_text("trace: x\nengine: set\nflsh_mb: 3\n")
    with pytest.raises(TierwiseError, match="unknown sweep keys"):
        sweep_specs(load_sweep_config(bad))
    bad.write_text("[1, 2")
    with pytest.raises(TierwiseError, match="not valid YAML"):
        load_sweep_config(bad)


def test_terminal_table_fits_80_columns_without_truncation():
    from rich.console import Console

    from tierwise.common.report import table

    rows = [{"run": "fairywren@ssd", "alwa": 141.06, "e2e_wa": 1034.2, "index_bits_per_obj": 180.2916,
             "miss_ratio": 0.10923, "get_p99_us": 35567.9, "set_fill": 0.8856, "paper_wa": 55.59},
            {"run": "nemo", "alwa": None, "e2e_wa": None, "index_bits_per_obj": None, "miss_ratio": None,
             "get_p99_us": None, "set_fill": None, "paper_wa": None}]
    cells = rows_for_terminal(rows)
    assert cells[0] == {"run": "fairywren@ssd", "ALWA": "141.1", "E2E WA": "1034", "bits": "180.3", "miss %": "10.92",
                        "p99 us": "35,568", "fill %": "88.56", "paper": "55.59"}
    assert set(cells[1].values()) == {"nemo", "-"}
    console = Console(width=80, record=True)
    console.print(table(cells))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    labels = [s.label for s in sweep_specs({"trace": TRACE, "engine": "nemo", "flash_mb": 8,
                                             "grid": {"flush_threshold": [8, 16]}})]
    assert labels == ["flush_threshold=8", "flush_threshold=16"]  # named by what the grid varies


def test_engine_list_parsing_and_errors():
    assert parse_engines("nemo, set@ssd") == [("nemo", None), ("set", "ssd")]
    with pytest.raises(TierwiseError, match="unknown device"):
        parse_engines("set@tape")
    with pytest.raises(TierwiseError, match="no engines"):
        parse_engines(" , ")
    with pytest.raises(TierwiseError, match="executor"):
        execute([spec("log")], executor="mpi")


def test_bench_and_sweep_commands(tmp_path):
    runner = CliRunner()
    out = tmp_path / "b.json"
    res = runner.invoke(app, ["nemo", "bench", "--trace", TRACE, "--engines", "log", "--flash-mb", "0.125",
                              "--zone-kb", "16", "--device", "mem", "--no-ablation", "--sizes", "",
                              "--executor", "serial", "--json", str(out), "--plot", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert "log" in res.output and json.loads(out.read_text())["table"][0]["run"] == "log"
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"trace: {TRACE}\nengine: log\nflash_mb: [0.125]\nzone_kb: 16\n")
    res = runner.invoke(app, ["nemo", "sweep", str(cfg), "--executor", "serial", "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "s.json").read_text())) == 1


@pytest.mark.optin
@pytest.mark.skipif(os.environ.get("TIERWISE_TEST_RAY") != "1", reason="Ray start-up is heavy: set TIERWISE_TEST_RAY=1")
def test_ray_executor_runs_specs():
    pytest.importorskip("ray")
    rows = execute([spec("log")], executor="ray")
    assert rows[0]["row"]["requests"] == 10_000


@pytest.mark.parametrize("engine", ["nemo", "log", "set", "kangaroo", "fairywren"])
def test_bench_runs_on_the_meta_kv_sample(shared_data, engine):
    path = shared_data / "traces" / "meta_kvcache_202401_sample.csv"
    zone = 128 if engine == "nemo" else 16
    row = run_one(spec(engine, trace=str(path), flash_mb=2, zone_kb=zone))["row"]
    assert row["requests"] == 691 and 0 < row["miss_ratio"] < 1  # op_count repeats are honoured


def test_bench_runs_on_the_oracle_general_block_trace(shared_data):
    path = shared_data / "traces" / "cloudphysics_block.oracleGeneral.bin"
    r = run_one(spec("log", trace=str(path), requests=20_000, flash_mb=0.5))
    assert r["row"]["requests"] == 20_000 and 0 < r["row"]["miss_ratio"] < 1
    assert r["replay"]["uncacheable"] > 0  # block I/Os larger than the 2 KB tiny-object limit are never cached


def test_demo_section_and_report_files(tmp_path):
    from tierwise.nemo.demo import run

    st = BenchSettings(trace=TRACE, engines="log,set", flash_mb=0.125, zone_kb=16, device="mem", ablation=False,
                       cache_sizes=(), sample_every=2000)
    md = run(tmp_path / "nemo", st)
    assert "| log |" in md and "(nemo/wa_over_time.png)" in md and "Paper (ZN540" in md
    assert {p.name for p in (tmp_path / "nemo").iterdir()} >= {"bench.json", "bench.md", "wa_over_time.png"}


ENGINE_ON_SMALL_DEVICE = {
    "nemo": lambda: make_engine("nemo", MemoryZonedDevice(14, 6 * 4096), sets_per_sg=4, group_size=2,
                                flush_threshold=3),
    "log": lambda: make_engine("log", MemoryZonedDevice(3, 16 * 4096), buffer_pages=2),
    "set": lambda: make_engine("set", MemoryZonedDevice(6, 4 * 4096), op=0.5),
    "kangaroo": lambda: make_engine("kangaroo", MemoryZonedDevice(48, 4 * 4096), log_pct=0.04, set_op=0.25),
    "fairywren": lambda: make_engine("fairywren", MemoryZonedDevice(48, 4 * 4096), log_pct=0.04, set_op=0.25),
}


@pytest.mark.parametrize("name", sorted(ENGINE_ON_SMALL_DEVICE))
@settings(max_examples=15, deadline=None)
@given(ops=op_lists(50))
def test_every_engine_passes_the_same_dict_model_check(name, ops):
    check_op_list(ENGINE_ON_SMALL_DEVICE[name](), ops)


def test_a_refused_configuration_is_an_error_row_not_a_crash():
    ok, bad = execute([spec("log"), spec("fairywren", zone_kb=16)], executor="serial")  # 8 zones: too few
    assert "error" not in ok["row"] and "zone GC needs" in bad["row"]["error"]


def test_nemo_runs_agree_on_mem_and_file_devices(tmp_path):
    # one driver, one engine implementation and simulated time: both devices give the same figures
    rows = [run_one(spec("nemo", device=d, flash_mb=0.5, zone_kb=32, tmp_dir=str(tmp_path),
                         options={"flush_threshold": 3}))["row"] for d in ("mem", "file")]
    for key in ("alwa", "miss_ratio", "set_fill", "read_amp", "flash_reads_per_get", "get_p99_us", "get_p99.99_us"):
        assert rows[0][key] == rows[1][key] and rows[0][key] is not None
    assert all(r["get_p99_us"] > 0 for r in rows)
