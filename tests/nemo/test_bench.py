"""`tierwise nemo bench` / `sweep`: runs, executors, the table's columns, plots, config errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.errors import TierwiseError
from tierwise.nemo.bench import (BenchSettings, RunSpec, _RunBars, bench, execute, load_sweep_config,
                                 parse_engines, rows_for_terminal, run_one, sweep, sweep_specs)
from tierwise.nemo.device import MemoryZonedDevice
from tierwise.nemo.engines import make_engine

from .baseline_helpers import check_op_list, op_lists

TRACE = "synth:twitter-merged:10000"  # ~60 KB working set: caches of 64-256 KB
KiB, MiB = 1 << 10, 1 << 20


def spec(engine, **kw):
    base = dict(engine=engine, trace=TRACE, flash_size=128 * KiB, zone_size=16 * KiB, device="mem", sample_every=2000)
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


def test_bars_count_finished_runs_overall_and_per_design():
    specs = [spec("log"), spec("set"), spec("log", label="log x2"), spec("set", device="ssd")]
    with _RunBars(specs) as bars:
        for i in (2, 0, 3, 1):
            bars.finished(i)
    tasks = {t.description.strip(): (t.completed, t.total) for t in bars.progress.tasks}
    assert tasks == {"4 runs": (4, 4), "log": (2, 2), "set": (1, 1), "set@ssd": (1, 1)}
    with _RunBars([spec("log"), spec("log", label="again")]) as one_design:
        pass
    assert [t.description for t in one_design.progress.tasks] == ["2 runs"]  # no per-design line for one design


def test_bench_picks_zones_from_the_flash_size():
    st = BenchSettings(flash_size="4M")
    assert st.zone_size_of("nemo") == 256 * KiB and st.zone_size_of("kangaroo") == 64 * KiB
    assert BenchSettings(flash_size="4M", nemo_zone_size="1M").zone_size_of("nemo") == MiB


def test_bench_table_curve_and_plots(tmp_path):
    st = BenchSettings(trace=TRACE, engines="log,set@ssd", flash_size="256K", zone_size="16K", device="mem",
                       ablation=False, cache_sizes=(0.5,), sample_every=2000, ssd_op=0.25)
    report = bench(st, executor="serial", plot_dir=tmp_path)
    assert [r["run"] for r in report.table] == ["log", "set@ssd"]
    assert report.table[0]["paper_wa"] == 1.08 and report.table[1]["paper_wa"] is None
    assert report.table[1]["dlwa"] > 1  # in place on the FTL model
    assert report.table[1]["e2e_wa"] == pytest.approx(report.table[1]["alwa"] * report.table[1]["dlwa"])
    by = {(r["engine"], r["flash_size"]): r["miss_ratio"] for r in report.miss_ratio_curve}
    assert set(by) == {("log", 128 * KiB), ("log", 256 * KiB)}  # the curve covers engines on the bench's device
    assert by[("log", 128 * KiB)] > by[("log", 256 * KiB)]  # a smaller cache misses more
    assert sorted(p.name for p in tmp_path.iterdir()) == ["miss_ratio_vs_size.png", "wa_over_time.png"]


def test_sweep_grid_is_a_cartesian_product(tmp_path):
    cfg = {"trace": TRACE, "engine": "set", "flash_size": ["128K", MiB], "zone_size": "16K",
           "grid": {"op": [0.25, 0.5]}}
    specs = sweep_specs(cfg)
    assert [(s.flash_size, s.options["op"]) for s in specs] == [(128 * KiB, 0.25), (128 * KiB, 0.5), (MiB, 0.25),
                                                                 (MiB, 0.5)]
    assert {s.zone_size for s in specs} == {16 * KiB} and specs[0].label == "flash_size=128 KiB, op=0.25"
    old = sweep_specs({"trace": TRACE, "engine": "set", "flash_mb": [0.125, 1], "zone_kb": 16,
                       "grid": {"op": [0.25, 0.5]}})
    assert old == specs  # the old keys, in MiB and KiB, read the same
    rows = sweep({**cfg, "flash_size": "128K"}, executor="serial").rows
    assert [r["options"]["op"] for r in rows] == [0.25, 0.5]
    assert rows[1]["alwa"] < rows[0]["alwa"]  # more over-provisioning, less GC copying
    with pytest.raises(TierwiseError, match="keep only flash_size"):
        sweep_specs({**cfg, "flash_mb": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("trace: x\nengine: set\nflsh_mb: 3\n")
    with pytest.raises(TierwiseError, match="unknown sweep keys"):
        sweep_specs(load_sweep_config(bad))
    bad.write_text("[1, 2")
    with pytest.raises(TierwiseError, match="not valid YAML"):
        load_sweep_config(bad)


def test_terminal_table_fits_80_columns_without_truncation():
    from rich.console import Console

    from tierwise.common.report import formatted, table

    rows = [{"run": "fairywren", "alwa": 141.06, "e2e_wa": 1034.2, "index_bits_per_obj": 180.2916,
             "miss_ratio": 0.10923, "get_p99_us": 35567.9, "set_fill": 0.8856, "paper_wa": 55.59, "dlwa": 1.0},
            {"run": "nemo", "alwa": None, "e2e_wa": None, "index_bits_per_obj": None, "miss_ratio": None,
             "get_p99_us": None, "set_fill": None, "paper_wa": None}]
    header, first, second = formatted(rows_for_terminal(rows))
    assert header == ["run", "ALWA", "E2E WA", "bits", "miss (%)", "p99 (us)", "fill (%)", "paper"]
    assert first == ["fairywren", "141.1", "1,034", "180.3", "10.92", "35,568", "88.56", "55.59"]
    assert set(second) == {"nemo", "-"}
    console = Console(width=80, record=True)
    console.print(table(rows_for_terminal(rows)))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    labels = [s.label for s in sweep_specs({"trace": TRACE, "engine": "nemo", "flash_size": "8M",
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
    res = runner.invoke(app, ["nemo", "bench", "--trace", TRACE, "--engines", "log", "--flash-size", "128K",
                              "--zone-size", "16K", "--device", "mem", "--no-ablation", "--sizes", "",
                              "--executor", "serial", "--json", str(out), "--plot", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert "log" in res.output and json.loads(out.read_text())["table"][0]["run"] == "log"
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"trace: {TRACE}\nengine: log\nflash_size: [128K]\nzone_size: 16K\n")
    res = runner.invoke(app, ["nemo", "sweep", str(cfg), "--executor", "serial", "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "s.json").read_text())["rows"]) == 1


@pytest.mark.parametrize("engine", ["nemo", "log", "set", "kangaroo", "fairywren"])
def test_bench_runs_on_the_meta_kv_sample(shared_data, engine):
    path = shared_data / "traces" / "meta_kvcache_202401_sample.csv"
    zone = 128 if engine == "nemo" else 16
    row = run_one(spec(engine, trace=str(path), flash_size=2 * MiB, zone_size=zone * KiB))["row"]
    assert row["requests"] == 691 and 0 < row["miss_ratio"] < 1  # op_count repeats are honoured


def test_bench_runs_on_the_oracle_general_block_trace(shared_data):
    path = shared_data / "traces" / "cloudphysics_block.oracleGeneral.bin"
    r = run_one(spec("log", trace=str(path), requests=20_000, flash_size=512 * KiB))
    assert r["row"]["requests"] == 20_000 and 0 < r["row"]["miss_ratio"] < 1
    assert r["replay"]["uncacheable"] > 0  # block I/Os larger than the 2 KB tiny-object limit are never cached


def test_demo_section_and_report_files(tmp_path):
    from tierwise.nemo.demo import run

    st = BenchSettings(trace=TRACE, engines="log,set", flash_size="128K", zone_size="16K", device="mem",
                       ablation=False, cache_sizes=(), sample_every=2000)
    md = run(tmp_path / "nemo", st)
    assert "| log |" in md and "(nemo/wa_over_time.png)" in md and "Paper (ZN540" in md
    assert {p.name for p in (tmp_path / "nemo").iterdir()} >= {"bench.json", "bench.md", "wa_over_time.png"}


def test_the_ablation_reads_the_same_in_every_report():
    """The bench command, the demo and the Markdown report show the ablation under one set of headers, the
    percentages as percentages (they printed raw field names and fractions in the demo)."""
    from tierwise.common.report import markdown_table
    from tierwise.nemo.bench import ablation_rows

    rows = ablation_rows([{"config": "+write-back", "sg_fill_pct": 95.69, "paper_fill_pct": 89.34, "alwa": 1.158,
                           "miss_ratio": 0.07187}])
    md = markdown_table(rows)
    assert "SG fill (%)" in md and "miss (%)" in md and "sg_fill_pct" not in md
    assert "95.69" in md and "7.19" in md and "0.07187" not in md


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
    ok, bad = execute([spec("log"), spec("fairywren")], executor="serial")  # 8 zones: too few
    assert "error" not in ok["row"] and "zone GC needs" in bad["row"]["error"]


def test_nemo_runs_agree_on_mem_and_file_devices(tmp_path):
    # one driver, one engine implementation and simulated time: both devices give the same figures
    rows = [run_one(spec("nemo", device=d, flash_size=512 * KiB, zone_size=32 * KiB, tmp_dir=str(tmp_path),
                         options={"flush_threshold": 3}))["row"] for d in ("mem", "file")]
    for key in ("alwa", "miss_ratio", "set_fill", "read_amp", "flash_reads_per_get", "get_p99_us", "get_p99.99_us"):
        assert rows[0][key] == rows[1][key] and rows[0][key] is not None
    assert all(r["get_p99_us"] > 0 for r in rows)


# --- Ray: a local instance, started once for this module ------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _numbers(rows):
    """A table's rows without the wall time of each run (the only figure not simulated)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_ray_gives_the_process_pools_bench_table(local_ray):
    st = BenchSettings(trace=TRACE, engines="log,set", flash_size="128K", zone_size="16K", ablation=False,
                       cache_sizes=(), sample_every=2000)
    on_ray = bench(st, executor="ray")
    pooled = bench(st, executor="process", workers=2)
    assert [r["run"] for r in on_ray.table] == ["log", "set"] and not on_ray.errors
    assert _numbers(on_ray.table) == _numbers(pooled.table)


def test_ray_gives_the_process_pools_sweep_rows(local_ray):
    cfg = {"trace": TRACE, "engine": "set", "flash_size": "128K", "zone_size": "16K", "grid": {"op": [0.25, 0.5]}}
    on_ray = sweep(cfg, executor="ray").rows
    assert len(on_ray) == 2 and all("error" not in r for r in on_ray)
    assert _numbers(on_ray) == _numbers(sweep(cfg, executor="process", workers=2).rows)
