"""`tierwise nemo ...` commands. Each command is a thin wrapper: parse flags, call the library, print/write results."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

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
    from tierwise.nemo.traces.synth import parse_count

    tr = SyntheticTrace(profile, parse_count(requests), seed)
    n = write_trace(out, tr)
    cal = tr.calibration
    typer.echo(f"wrote {n} requests to {out} (global size factor {cal['global_size_factor']:.4f}, "
               f"expected mean object {cal['expected_mean_object']:.1f} B)")
    print_table(cal["clusters"], title=f"{cal['profile']} clusters")


@trace_app.command("stats")
def trace_stats_cmd(
    trace: str = typer.Argument(..., help="Trace file or synth:PROFILE[:REQUESTS[:SEED]]."),
    format: str = typer.Option(None, "--format", help="twitter | metakv | oracle | requests (default: detect)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Count and skip malformed lines instead of stopping."),
    json_out: str = typer.Option(None, "--json", help="Also write the statistics as JSON."),
) -> None:
    """Requests, objects, key/value/object size percentiles, op mix and estimated Zipf alpha of a trace."""
    from tierwise.common.report import print_table, write_json
    from tierwise.nemo.traces import open_trace, trace_stats

    reader = open_trace(trace, format=format, skip_bad=skip_bad)
    s = trace_stats(reader)
    s["bad_lines_skipped"] = reader.bad_lines
    print_table([{k: v for k, v in s.items() if not isinstance(v, dict)}], title=str(trace))
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
    format: str = typer.Option(None, "--format", help="Trace format when not detected."),
    json_out: str = typer.Option(None, "--json", help="Write the summary, config and time series as JSON."),
) -> None:
    """Replay a trace against an engine (lookaside: GET miss -> SET) and print ALWA, DRAM bits/object, miss
    ratio, read amplification and fill rates over the steady-state window."""
    from tierwise.common.report import print_table, write_json
    from tierwise.nemo.replay import ReplayOptions, open_engine, parse_engine_options, replay
    from tierwise.nemo.traces import open_trace
    from tierwise.nemo.traces.synth import parse_count

    eng = open_engine(engine, flash_mb=flash_mb, zone_kb=zone_kb, dram_mb=dram_mb, device=device,
                      **parse_engine_options(opt))
    reader = open_trace(trace, format=format)
    limit = parse_count(requests) if requests else None
    result = replay(eng, reader, ReplayOptions(sample_every=sample_every, warmup=warmup, limit=limit),
                    total=getattr(reader, "total", None))
    s = result.summary
    dram = s.get("dram", {})
    print_table([{"engine": engine, "requests": result.requests, "req/s": result.requests_per_second,
                  "window": s["window"], "alwa": s["alwa"], "alwa_with_dropped": s["alwa_with_dropped"],
                  "dropped": s["dropped_fraction"], "miss_ratio": s["miss_ratio"], "sg_fill": s["mean_sg_fill"],
                  "index_bits/obj": dram.get("index_bits_per_object"),
                  "flash_reads/get": s["flash_reads_per_get"], "index_reads/get": s["index_reads_per_get"]}],
                title=f"replay {trace}")
    print_table([{"cause": k, "alwa_share": v} for k, v in s["alwa_breakdown"].items()], title="ALWA by cause")
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
) -> None:
    """Serve a Nemo cache over the memcached text protocol until SIGTERM/SIGINT (then flush and sync)."""
    from tierwise.nemo.server.serve import parse_size, serve

    serve(device, host=host, port=port, flash_bytes=parse_size(flash_size) if flash_size else None,
          dram_bytes=int(dram_mb * 2**20) if dram_mb else None, max_conns=max_conns, max_value=max_value,
          engine_thread=engine_thread, fresh=fresh)
