"""`tierwise nemo ...` commands. Each command is a thin wrapper: parse flags, call the library, print/write results."""

from __future__ import annotations

import typer

from tierwise.nemo.defaults import DEFAULT_PROFILE, DEFAULT_RATE

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

FORMAT_HELP = "Trace file format: twitter | metakv | oracle | requests (default: detected from the content)."
SKIP_BAD_HELP = "Count and skip malformed lines or records instead of stopping."

# ---- traces and devices (owner: device/traces) -----------------------------------------------------------------
trace_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                        help="Key-value traces: synthetic generator, statistics.")
device_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                         help="Zoned devices: zone report, rule conformance check.")
app.add_typer(trace_app, name="trace")
app.add_typer(device_app, name="device")


@trace_app.command("synth")
def trace_synth(
    out: str = typer.Option(..., "--out", help="Output file: .csv (CacheBench), .bin/.oracleGeneral (libCacheSim), .req (tierwise)."),
    profile: str = typer.Option("twitter-merged", "--profile", help="Synthetic profile (twitter-merged, twitter-14/29/34/52)."),
    requests: str = typer.Option("1M", "--requests", help="Number of requests (e.g. 1000000, 10M)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same trace."),
) -> None:
    """Generate a synthetic trace calibrated to the paper's Twitter clusters and write it to a file."""
    from tierwise.common.report import print_table
    from tierwise.nemo.traces import SyntheticTrace, write_trace
    from tierwise.common.units import parse_count

    tr = SyntheticTrace(profile, parse_count(requests), seed)
    n = write_trace(out, tr)
    cal = tr.calibration
    typer.echo(f"wrote {n} requests to {out} (global size factor {cal['global_size_factor']:.4f}, "
               f"expected mean object {cal['expected_mean_object']:.1f} B)")
    print_table(cal["clusters"], title=f"{cal['profile']} clusters")


@trace_app.command("stats")
def trace_stats_cmd(
    trace: str = typer.Argument(..., help="Trace file or synth:PROFILE[:REQUESTS[:SEED]]."),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
    json_out: str = typer.Option(None, "--json", help="Also write the statistics as JSON."),
) -> None:
    """Requests, objects, key/value/object size percentiles, op mix and estimated Zipf alpha of a trace."""
    from tierwise.common.report import print_table, write_json
    from tierwise.nemo.traces import open_trace, trace_stats

    reader = open_trace(trace, format=format, skip_bad=skip_bad, skip_hint="--skip-bad")
    s = trace_stats(reader)
    s["bad_lines_skipped"] = reader.bad_lines
    # one row per statistic: a row of them does not fit 80 columns
    print_table([{"statistic": k, "value": v} for k, v in s.items() if not isinstance(v, dict)], title=str(trace))
    print_table([{"size": k, **s[k]} for k in ("key_size", "value_size", "object_size", "object_size_per_object")],
                title="sizes (B): per request, and per object")
    print_table([s["op_mix"]], title="op mix")
    for msg in reader.bad_examples:
        typer.echo(f"skipped: {msg}", err=True)
    if json_out:
        write_json(s, json_out)


@device_app.command("report")
def device_report(spec: str = typer.Argument(..., help="file:FOLDER or zbd:/dev/<zoned device>.")) -> None:
    """Print a device's geometry and every zone's condition and write pointer."""
    from tierwise.common.report import print_table
    from tierwise.nemo.device import open_device

    with open_device(spec) as dev:
        typer.echo(f"{dev!r}  max_open_zones={dev.max_open_zones} max_active_zones={dev.max_active_zones}")
        print_table([{"zone": z.index, "start": z.start, "condition": z.condition.name, "write_pointer": z.write_pointer,
                      "capacity": z.capacity} for z in dev.report_zones()])


@device_app.command("profiles")
def device_profiles() -> None:
    """The device timing profiles a replay can simulate (--profile), with their NAND parameters."""
    from tierwise.common.report import print_table
    from tierwise.nemo.device.timing import PROFILES

    print_table([{"profile": p.name, "dies": p.dies, "read us": p.read_us, "program us": p.program_us,
                  "unit KiB": p.unit_kb, "erase ms": p.erase_ms} for p in PROFILES.values()],
                title="device timing profiles (docs/nemo-devices-and-traces.md has their sources)")
    for p in PROFILES.values():
        typer.echo(f"{p.name}: {p.description}")


# ---- replay (owner: Nemo engine) -------------------------------------------------------------------------------
@app.command("replay")
def replay_cmd(
    trace: str = typer.Option(..., "--trace", help="Trace file or synth:PROFILE[:REQUESTS[:SEED]], e.g. synth:twitter-merged:1M."),
    engine: str = typer.Option("nemo", "--engine", help="Engine name (see tierwise.nemo.engines)."),
    flash_mb: float = typer.Option(256, "--flash-mb", help="Flash (device) size in MiB."),
    dram_mb: float = typer.Option(None, "--dram-mb", help="DRAM budget in MiB: refuse an engine that needs more."),
    zone_kb: int = typer.Option(4096, "--zone-kb", help="Zone size in KiB (Nemo: one SG per zone by default)."),
    device: str = typer.Option("mem", "--device", help="Device spec: mem or file:FOLDER."),
    opt: list[str] = typer.Option([], "--opt", help="Engine option name=value (repeatable), e.g. --opt fp_rate=0.002."),
    requests: str = typer.Option(None, "--requests", help="Stop after this many requests (e.g. 5M)."),
    warmup: float = typer.Option(1.0, "--warmup", help="Device capacities written after the first zone reset before steady state."),
    sample_every: int = typer.Option(100_000, "--sample-every", help="Time-series row every N requests."),
    rate: float = typer.Option(DEFAULT_RATE, "--rate", help="Requests per second arriving (simulated time)."),
    arrivals: str = typer.Option("rate", "--arrivals", help="rate (request i at i / --rate seconds) or trace (the "
                                 "trace's timestamps)."),
    profile: str = typer.Option(DEFAULT_PROFILE, "--profile", help="Simulated device timing (`tierwise nemo device "
                                "profiles` lists them)."),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
    json_out: str = typer.Option(None, "--json", help="Write the summary, config and time series as JSON."),
) -> None:
    """Replay a trace against an engine (lookaside: GET miss -> SET) and print ALWA, DRAM bits/object, miss
    ratio, read amplification, fill rates and simulated get/set latency over the steady-state window."""
    from tierwise.common.report import print_table, write_json
    from tierwise.nemo.replay import ReplayOptions, open_engine, parse_engine_options, replay
    from tierwise.nemo.traces import open_trace
    from tierwise.common.units import parse_count

    eng = open_engine(engine, flash_mb=flash_mb, zone_kb=zone_kb, dram_mb=dram_mb, device=device,
                      **parse_engine_options(opt))
    reader = open_trace(trace, format=format, skip_bad=skip_bad, skip_hint="--skip-bad")
    limit = parse_count(requests) if requests else None
    result = replay(eng, reader, ReplayOptions(sample_every=sample_every, warmup=warmup, limit=limit, rate=rate,
                                               arrivals=arrivals, profile=profile),
                    total=getattr(reader, "total", None))
    s = result.summary
    dram = s.get("dram", {})
    figures = {"engine": engine, "requests": result.requests, "requests/s": result.requests_per_second,
               "window": s["window"], "warm at request": s["warm_at_request"], "ALWA": s["alwa"],
               "ALWA (headers logical)": s["alwa_headers_logical"], "ALWA incl. dropped": s["alwa_with_dropped"],
               "dropped inserts": s["dropped_fraction"], "miss ratio": s["miss_ratio"],
               "mean SG fill": s["mean_sg_fill"], "index bits/object": dram.get("index_bits_per_object_mean",
                                                                                dram.get("index_bits_per_object")),
               "total bits/object": dram.get("total_bits_per_object"), "bytes read/get": s["bytes_read_per_get"],
               "flash reads/get": s["flash_reads_per_get"], "index pages/get": s["index_reads_per_get"],
               "wrong values": result.counters["wrong_values"]}
    for kind in ("get", "set"):
        lat = s["latency"][kind]
        figures[f"{kind} latency p50/p99/p99.9/p99.99 (us)"] = " / ".join(
            "-" if lat[q] is None else f"{lat[q]:,.0f}" for q in ("p50_us", "p99_us", "p99.9_us", "p99.99_us"))
    print_table([{"figure": k, "value": v} for k, v in figures.items()], title=f"replay {trace}")
    print_table([{"cause": k, "alwa_share": v} for k, v in s["alwa_breakdown"].items()], title="ALWA by cause")
    for msg in reader.bad_examples:
        typer.echo(f"skipped: {msg}", err=True)
    if result.counters["wrong_values"]:
        typer.echo(f"WRONG VALUES: {result.counters['wrong_values']}", err=True)
    if json_out:
        write_json(result.as_dict(), json_out)
    eng.close()


# ---- serve (owner: Nemo service) -------------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    device: str = typer.Option(..., "--device", help="Device folder (file-backed zoned device; created if new), "
                               "or file:FOLDER / zbd:/dev/<zoned device>. An existing cache is recovered from flash."),
    flash_size: str = typer.Option(None, "--flash-size", help="Flash size of a new device, e.g. 4G, 512M."),
    dram_mb: float = typer.Option(None, "--dram-mb", help="DRAM budget in MiB (sizes zones = SGs; refuses more)."),
    port: int = typer.Option(11211, "--port", help="TCP port (0 = any free port, printed at start)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    max_conns: int = typer.Option(1024, "--max-conns", help="Connections served at once; more are refused."),
    max_value: int = typer.Option(2048, "--max-value", help="Largest value in bytes (tiny-object limit)."),
    engine_thread: bool = typer.Option(False, "--engine-thread/--inline", help="Run the engine on its own thread "
                                       "(the event loop keeps reading while an SG flush runs) or inline (faster)."),
    fresh: bool = typer.Option(False, "--fresh", help="Discard what the device holds instead of recovering it."),
    journal: str = typer.Option(None, "--journal", help="Acknowledgement journal folder (default: inside a file "
                                "device's folder; give one for zbd: devices so no stale value is served after a crash)."),
) -> None:
    """Serve a Nemo cache over the memcached text protocol until SIGTERM/SIGINT (then flush and sync)."""
    from tierwise.common.units import parse_size
    from tierwise.nemo.server.serve import serve

    serve(device, host=host, port=port, flash_bytes=parse_size(flash_size) if flash_size else None,
          dram_bytes=int(dram_mb * 2**20) if dram_mb else None, max_conns=max_conns, max_value=max_value,
          engine_thread=engine_thread, fresh=fresh, journal_dir=journal)


# ---- bench and sweep (owner: baselines) ------------------------------------------------------------------------
@app.command("bench")
def bench_cmd(
    trace: str = typer.Option("synth:twitter-merged:1M", "--trace", help="Trace file or synth:PROFILE[:REQUESTS[:SEED]]."),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    engines: str = typer.Option("nemo,log,set,kangaroo,fairywren", "--engines",
                                help="Comma-separated engines; NAME@ssd runs one in place on the conventional-SSD model."),
    flash_mb: float = typer.Option(4.0, "--flash-mb", help="Flash (device) size in MiB, the same for every engine."),
    dram_mb: float = typer.Option(None, "--dram-mb", help="DRAM budget in MiB: refuse an engine that needs more."),
    device: str = typer.Option("mem", "--device", help="mem (in-memory zones), file (emulated zones in a temp folder), "
                               "or ssd (the conventional-SSD model for every engine)."),
    rate: float = typer.Option(DEFAULT_RATE, "--rate", help="Requests per second arriving (simulated time)."),
    arrivals: str = typer.Option("rate", "--arrivals", help="rate (request i at i / --rate seconds) or trace (the "
                                 "trace's timestamps)."),
    profile: str = typer.Option(DEFAULT_PROFILE, "--profile", help="Simulated timing of the zoned devices "
                                "(`tierwise nemo device profiles` lists them)."),
    zone_kb: int = typer.Option(64, "--zone-kb", help="Zone size of the baselines (KiB)."),
    nemo_zone_kb: int = typer.Option(256, "--nemo-zone-kb", help="Zone size for Nemo (KiB): one SetGroup per zone."),
    requests: str = typer.Option(None, "--requests", help="Stop each run after this many requests."),
    opt: list[str] = typer.Option([], "--opt", help="ENGINE.option=value (repeatable), e.g. --opt fairywren.set_op=0.5."),
    ablation: bool = typer.Option(True, "--ablation/--no-ablation", help="Also run Nemo's fill-rate ablation."),
    sizes: str = typer.Option("0.5,2", "--sizes", help="Extra cache sizes (x --flash-mb) for the miss-ratio curve; '' for none."),
    executor: str = typer.Option("process", "--executor", help="process (local pool), serial, or ray."),
    address: str = typer.Option(None, "--address", help="Ray cluster address (with --executor ray), e.g. ray://head:10001."),
    workers: int = typer.Option(None, "--workers", help="Local worker processes (default: CPU count)."),
    json_out: str = typer.Option(None, "--json", help="Write the table, ablation, curves and time series as JSON."),
    plot: str = typer.Option(None, "--plot", help="Folder for the plots (WA over time, fill ablation, miss ratio vs size)."),
) -> None:
    """Compare flash-cache designs on one trace: ALWA, DLWA, end-to-end WA, DRAM bits/object, miss ratio,
    read amplification and simulated get/set latency percentiles, beside the paper's WA."""
    from tierwise.common.errors import TierwiseError
    from tierwise.common.report import print_table, write_json
    from tierwise.nemo.bench import BenchSettings, bench, rows_for_terminal
    from tierwise.nemo.replay import parse_engine_options
    from tierwise.nemo.traces import open_trace
    from tierwise.common.units import parse_count

    if format or not trace.startswith("synth:"):
        open_trace(trace, format=format)  # refuse a missing, unknown or unrecognised trace before any run starts
        if format:
            trace = f"{format}:{trace}"  # each run opens the trace from its spec

    options: dict[str, dict] = {}
    for pair in opt:
        eng, dot, rest = pair.partition(".")
        if not dot:
            raise TierwiseError(f"--opt {pair!r}: write ENGINE.option=value, e.g. nemo.flush_threshold=16")
        options.setdefault(eng, {}).update(parse_engine_options([rest]))
    try:
        factors = tuple(float(x) for x in sizes.split(",") if x.strip())
    except ValueError:
        raise TierwiseError(f"--sizes {sizes!r}: give factors like 0.5,2") from None
    st = BenchSettings(trace=trace, engines=engines, flash_mb=flash_mb, dram_mb=dram_mb, device=device,
                       zone_kb=zone_kb, nemo_zone_kb=nemo_zone_kb, requests=parse_count(requests) if requests else None,
                       options=options, ablation=ablation, cache_sizes=factors, rate=rate, arrivals=arrivals,
                       profile=profile)
    report = bench(st, executor=executor, workers=workers, address=address, plot_dir=plot)
    print_table(rows_for_terminal(report["table"]), title=f"bench {trace}, {flash_mb:g} MiB flash")
    if report.get("ablation"):
        print_table(report["ablation"], title="Nemo fill-rate ablation (paper Fig. 17)")
    if report["miss_ratio_curve"]:
        print_table(report["miss_ratio_curve"], title="miss ratio vs cache size")
    for row in report["errors"]:
        typer.echo(f"run {row['run']} (flash {row['flash_mb']:g} MiB) failed: {row['error']}", err=True)
    if json_out:
        write_json(report, json_out)


@app.command("sweep")
def sweep_cmd(
    config: str = typer.Argument(..., help="YAML: trace, engine, flash_mb (value or list), zone_kb, device, grid: {option: [values]}."),
    executor: str = typer.Option("process", "--executor", help="process (local pool), serial, or ray."),
    address: str = typer.Option(None, "--address", help="Ray cluster address (with --executor ray)."),
    workers: int = typer.Option(None, "--workers", help="Local worker processes (default: CPU count)."),
    json_out: str = typer.Option(None, "--json", help="Write every run's row as JSON."),
) -> None:
    """Run an engine over the cartesian product of a parameter grid (cache size, p_th, cached-PBFG ratio, SG size,
    ...) in parallel and print one table."""
    from tierwise.common.report import print_table, write_json
    from tierwise.nemo.bench import load_sweep_config, rows_for_terminal, sweep

    rows = sweep(load_sweep_config(config), executor=executor, workers=workers, address=address)
    print_table(rows_for_terminal(rows), title=f"sweep {config}")
    if json_out:
        write_json(rows, json_out)
