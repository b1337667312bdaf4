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
