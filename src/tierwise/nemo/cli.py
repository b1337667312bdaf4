"""`tierwise nemo ...` commands: parse flags, call `tierwise.nemo.api` (or the library), print or emit the result.

One convention for every command (docs/cli.md): sizes with units (`--flash-size 24M`; the old `--flash-mb`-style
flags still read, hidden, with a note), `--json PATH` writes every number (`-`: standard output carries only the
JSON, no table, no progress), `--plot DIR` where there are plots, the same name for the same thing (`--seed`,
`--workers`, `--requests`). A flag left out takes its default from `tierwise.nemo.defaults` (`ReplayOptions`,
`BenchSettings`) or the server's config, the one place each is kept.
"""

from __future__ import annotations

from typing import Any, Optional

from pathlib import Path

import typer

from tierwise.common.cli import emit, json_only
from tierwise.common.units import format_bytes
from tierwise.nemo.defaults import (DEFAULT_DEVICE, DEFAULT_ENGINE, DEFAULT_EXECUTOR, RENAMED_SIZES, REPLAY_FLASH_SIZE,
                                    SYNTH_PROFILE, SYNTH_REQUESTS, SYNTH_SEED, BenchSettings, MiB, ReplayOptions)
from tierwise.nemo.server.protocol import Limits
from tierwise.nemo.server.server import ServerConfig

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

FORMAT_HELP = "Trace file format: twitter | metakv | oracle | requests (default: detected from the content)."
SKIP_BAD_HELP = "Count and skip malformed lines or records instead of stopping."
# no word longer than the help column of an 80-column --help (tests/test_cli_output.py)
TRACE_HELP = "Trace file, or synth:PROFILE:N:SEED (N requests and SEED optional), e.g. synth:twitter-merged:1M."
ZONE_HELP = ("by default the largest power of two that leaves Nemo 16 zones, the others 64, within 16K..4M")
ARRIVALS_HELP = "rate (request i at i / --rate seconds) or trace (the trace's timestamps)."
PROFILE_HELP = "Simulated device timing (`tierwise nemo device profiles` lists them)."
EXECUTOR_HELP = "process (local pool), serial, or ray."
WORKERS_HELP = "Local worker processes (default: CPU count)."


# ---- the convention: sizes, --json --------------------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def size_option(name: str, help: str, default: int | None = None) -> Any:
    shown = f"; default: {format_bytes(default)}" if default else ""
    return typer.Option(None, _flag(name), metavar="SIZE", help=f"{help} (e.g. 512K, 24M, 1G{shown}).")


def old_size_option(name: str) -> Any:
    """The deprecated flag of size `name` (`defaults.RENAMED_SIZES`), hidden from --help."""
    return typer.Option(None, _flag(RENAMED_SIZES[name][0]), hidden=True)


def size_flag(name: str, value: str | None, old: float | None = None) -> int | None:
    """Bytes of size flag `name` given as `value`, or by its deprecated flag as `old` (with a note on standard
    error); None when neither was given. Both is an error."""
    from tierwise.nemo.defaults import renamed_size

    if old is not None and value is None:
        old_name, _, unit = RENAMED_SIZES[name]
        typer.echo(f"note: {_flag(old_name)} is deprecated; use {_flag(name)} {old:g}{unit}", err=True)
    return renamed_size(name, value, old, _flag)


def count_flag(flag: str, value: str | None) -> int | None:
    from tierwise.common.units import parse_count

    return None if value is None else parse_count(value, flag)


def open_reader(trace: str, format: str | None, skip_bad: bool) -> Any:
    """The trace a command reads; a malformed line's error points at --skip-bad."""
    from tierwise.nemo.traces import open_trace

    return open_trace(trace, format=format, skip_bad=skip_bad, skip_hint="--skip-bad")


def given(**values: Any) -> dict[str, Any]:
    """The flags given (not None), leaving the rest to the defaults."""
    return {k: v for k, v in values.items() if v is not None}


def json_option(what: str) -> Any:
    return typer.Option(None, "--json", metavar="PATH",
                        help=f"Write {what} as JSON to PATH ('-': standard output, then without the tables).")


# ---- traces and devices --------------------------------------------------------------------------------------
trace_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                        help="Key-value traces: synthetic generator, statistics.")
device_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                         help="Zoned devices: zone report, rule conformance check.")
app.add_typer(trace_app, name="trace")
app.add_typer(device_app, name="device")


@trace_app.command("synth")
def trace_synth(
    out: str = typer.Option(..., "--out", help="Output file: .csv (CacheBench), .bin/.oracleGeneral (libCacheSim), .req (tierwise)."),
    profile: str = typer.Option(SYNTH_PROFILE, "--profile", help="Synthetic profile (twitter-merged, twitter-14/29/34/52)."),
    requests: str = typer.Option(str(SYNTH_REQUESTS), "--requests",
                                 help="Number of requests (e.g. 1000000, 10M)."),
    seed: int = typer.Option(SYNTH_SEED, "--seed", help="Random seed; the same seed gives the same trace."),
    json_out: Optional[str] = json_option("the calibration (per-cluster sizes, key spaces, one-hit shares)"),
) -> None:
    """Generate a synthetic trace calibrated to the paper's Twitter clusters and write it to a file."""
    from tierwise.common.report import print_table
    from tierwise.nemo.api import synth_trace

    json_only(json_out)
    trace = synth_trace(profile, count_flag("--requests", requests), seed, out=out)
    cal = trace.calibration
    if emit(cal, json_out):
        return
    typer.echo(f"wrote {trace.total} requests to {out} (global size factor {cal['global_size_factor']:.4f}, "
               f"expected mean object {cal['expected_mean_object']:.1f} B)")
    print_table(cal["clusters"], title=f"{cal['profile']} clusters")


@trace_app.command("stats")
def trace_stats_cmd(
    trace: str = typer.Argument(..., help=TRACE_HELP),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
    json_out: Optional[str] = json_option("the statistics"),
) -> None:
    """Requests, objects, key/value/object size percentiles, op mix and estimated Zipf alpha of a trace."""
    from tierwise.common.report import print_table
    from tierwise.nemo.api import trace_stats

    json_only(json_out)
    s = trace_stats(open_reader(trace, format, skip_bad))
    for msg in s.bad_examples:
        typer.echo(f"skipped: {msg}", err=True)
    if emit(s.as_dict(), json_out):
        return
    # one row per statistic: a row of them does not fit 80 columns
    figures = {k: v for k, v in s.as_dict().items() if not isinstance(v, (dict, list)) and k != "trace"}
    print_table([{"statistic": k, "value": v} for k, v in figures.items()], title=trace)
    print_table([{"size": k, **getattr(s, k)} for k in ("key_size", "value_size", "object_size",
                                                         "object_size_per_object")],
                title="sizes (B): per request, and per object")
    print_table([s.op_mix], title="op mix")


@device_app.command("report")
def device_report(spec: str = typer.Argument(..., help="file:FOLDER or zbd:/dev/<zoned device>."),
                  json_out: Optional[str] = json_option("the geometry and every zone")) -> None:
    """Print a device's geometry and every zone's condition and write pointer."""
    from tierwise.common.report import print_table
    from tierwise.nemo.device import open_device

    json_only(json_out)
    with open_device(spec) as dev:
        zones = [{"zone": z.index, "start": z.start, "condition": z.condition.name,
                  "write pointer (B)": z.write_pointer, "capacity (B)": z.capacity} for z in dev.report_zones()]
        geometry = {"device": repr(dev), "max_open_zones": dev.max_open_zones,
                    "max_active_zones": dev.max_active_zones}
    if emit({**geometry, "zones": zones}, json_out):
        return
    typer.echo(f"{geometry['device']}  max_open_zones={dev.max_open_zones} max_active_zones={dev.max_active_zones}")
    print_table(zones)


@device_app.command("profiles")
def device_profiles(json_out: Optional[str] = json_option("every profile's parameters")) -> None:
    """The device timing profiles a replay can simulate (--profile), with their NAND parameters."""
    from tierwise.common.report import print_table
    from tierwise.nemo.device.timing import PROFILES

    if emit({p.name: {**vars(p)} for p in PROFILES.values()}, json_out):
        return
    print_table([{"profile": p.name, "dies": p.dies, "read (us)": p.read_us, "program (us)": p.program_us,
                  "unit (KiB)": p.unit_kb, "erase (ms)": p.erase_ms} for p in PROFILES.values()],
                title="device timing profiles (docs/nemo-devices-and-traces.md has their sources)")
    for p in PROFILES.values():
        typer.echo(f"{p.name}: {p.description}")


# ---- replay ------------------------------------------------------------------------------------------------------
@app.command("replay")
def replay_cmd(
    trace: str = typer.Option(..., "--trace", help=TRACE_HELP),
    engine: str = typer.Option(DEFAULT_ENGINE, "--engine", help="Engine: nemo, log, set, kangaroo, fairywren, "
                               "block (large objects) or tiered (nemo + block)."),
    flash_size: Optional[str] = size_option("flash_size", "Flash (device) size", REPLAY_FLASH_SIZE),
    dram_size: Optional[str] = size_option("dram_size", "DRAM budget: refuse an engine that needs more"),
    zone_size: Optional[str] = size_option("zone_size", f"Zone size (Nemo: one SG per zone); {ZONE_HELP}"),
    flash_mb: Optional[float] = old_size_option("flash_size"),
    dram_mb: Optional[float] = old_size_option("dram_size"),
    zone_kb: Optional[float] = old_size_option("zone_size"),
    device: str = typer.Option(DEFAULT_DEVICE, "--device", help="Device spec: mem or file:FOLDER."),
    opt: list[str] = typer.Option([], "--opt", help="Engine option name=value (repeatable), e.g. --opt fp_rate=0.002."),
    requests: Optional[str] = typer.Option(None, "--requests", help="Stop after this many requests (e.g. 5M)."),
    warmup: float = typer.Option(ReplayOptions.warmup, "--warmup",
                                 help="Device capacities written after the first zone reset before steady state."),
    sample_every: int = typer.Option(ReplayOptions.sample_every, "--sample-every",
                                     help="Time-series row every N requests."),
    rate: float = typer.Option(ReplayOptions.rate, "--rate", help="Requests per second arriving (simulated time)."),
    arrivals: str = typer.Option(ReplayOptions.arrivals, "--arrivals", help=ARRIVALS_HELP),
    profile: str = typer.Option(ReplayOptions.profile, "--profile", help=PROFILE_HELP),
    ttl_scale: float = typer.Option(ReplayOptions.ttl_scale, "--ttl-scale",
                                    help="Multiply the trace's TTLs (a downscaled trace turns its cache over in "
                                    "seconds: e.g. 0.001 keeps TTLs in proportion)."),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
    json_out: Optional[str] = json_option("the summary, config and time series"),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="DIR",
                                       help="Folder for replay_over_time.png (windowed ALWA and miss ratio, the "
                                       "steady window shaded)."),
) -> None:
    """Replay a trace against an engine (lookaside: GET miss -> SET) and print ALWA, DRAM bits/object, miss
    ratio, read amplification, fill rates and simulated get/set latency over the steady-state window."""
    from tierwise.common.report import print_table
    from tierwise.nemo.api import replay
    from tierwise.nemo.replay import parse_engine_options

    json_only(json_out)
    result = replay(open_reader(trace, format, skip_bad), engine,
                    flash_size=size_flag("flash_size", flash_size, flash_mb),
                    zone_size=size_flag("zone_size", zone_size, zone_kb),
                    dram_size=size_flag("dram_size", dram_size, dram_mb), device=device,
                    options=parse_engine_options(opt), requests=count_flag("--requests", requests),
                    sample_every=sample_every, warmup=warmup, rate=rate, arrivals=arrivals,
                    profile=profile, ttl_scale=ttl_scale)
    for msg in result.bad_examples:
        typer.echo(f"skipped: {msg}", err=True)
    if plot is not None:
        replay_plot(result, Path(plot) / "replay_over_time.png", title=f"{engine} on {trace}")
    if emit(result.as_dict(), json_out):
        return
    s = result.summary
    print_table([{"figure": k, "value": v} for k, v in replay_figures(engine, result).items()],
                title=f"replay {trace} (figures of the {s['window']} window)")
    print_table([{"cause": k, "ALWA": v} for k, v in s["alwa_breakdown"].items()], title="ALWA by cause")


def replay_plot(result: Any, path: Path, title: str) -> Path:
    """Windowed ALWA and miss ratio against requests, one panel each, the steady window shaded."""
    from tierwise.common.plots import figure, readable_ticks, save

    rows = [r for r in result.series if r["alwa"] is not None]
    x = [r["requests"] for r in rows]
    fig, axes = figure(ncols=2, width=9, height=3.6)
    warm = result.summary["warm_at_request"]
    for ax, key, label in ((axes[0], "alwa", "app-level write amplification (x)"),
                           (axes[1], "miss_ratio", "miss ratio (0-1)")):
        ax.plot(x, [r[key] for r in rows], marker="o", markersize=3)
        if warm is not None and x:
            ax.axvspan(warm, x[-1], color="0.85", zorder=0, label="steady window")
            ax.legend(fontsize=7)
        ax.set_xlabel("requests")
        ax.set_ylabel(label)
        readable_ticks(ax.xaxis)
        readable_ticks(ax.yaxis)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def replay_figures(engine: str, result: Any) -> dict[str, Any]:
    """The replay's main figures, labelled with their units."""
    s = result.summary
    dram = s.get("dram", {})
    figures = {"engine": engine, "requests": result.requests, "speed (req/s)": result.requests_per_second,
               "warm at request": s["warm_at_request"], "ALWA": s["alwa"],
               "ALWA, headers logical": s["alwa_headers_logical"], "ALWA incl. dropped": s["alwa_with_dropped"],
               "dropped inserts (%)": s["dropped_fraction"], "miss ratio (%)": s["miss_ratio"],
               "mean SG fill (%)": s["mean_sg_fill"],
               "index per object (bits)": dram.get("index_bits_per_object_mean", dram.get("index_bits_per_object")),
               "DRAM per object (bits)": dram.get("total_bits_per_object"),
               "read per get (B)": s["bytes_read_per_get"], "flash reads per get": s["flash_reads_per_get"],
               "index pages per get": s["index_reads_per_get"], "wrong values": result.counters["wrong_values"],
               "expired objects served": result.counters["expired_served"],
               "expired misses (%)": _share(s["counters"].get("expired_misses", 0), s["counters"].get("gets", 0)),
               "expired dropped (B)": s["counters"].get("expired_dropped_bytes", 0)}
    for tier, t in (s.get("tiers") or {}).items():  # a two-tier cache
        figures[f"{tier} tier: miss (%)"] = t["miss_ratio"]
        figures[f"{tier} tier: ALWA"] = t["alwa"]
    for kind in ("get", "set"):
        lat = s["latency"][kind]
        figures[f"{kind} latency p50/p99/p99.9/p99.99 (us)"] = " / ".join(
            "-" if lat[q] is None else f"{lat[q]:,.0f}" for q in ("p50_us", "p99_us", "p99.9_us", "p99.99_us"))
    return figures


# ---- serve -------------------------------------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    device: str = typer.Option(..., "--device", help="Device folder (file-backed zoned device; created if new), "
                               "or file:FOLDER / zbd:/dev/<zoned device>. An existing cache is recovered from flash."),
    flash_size: Optional[str] = size_option("flash_size", "Flash size of a new device"),
    dram_size: Optional[str] = size_option("dram_size", "DRAM budget (sizes zones = SGs; refuses more)"),
    dram_mb: Optional[float] = old_size_option("dram_size"),
    port: int = typer.Option(ServerConfig.port, "--port", help="TCP port (0 = any free port, printed at start)."),
    host: str = typer.Option(ServerConfig.host, "--host", help="Address to listen on."),
    max_conns: int = typer.Option(ServerConfig.max_conns, "--max-conns",
                                  help="Connections served at once; more are refused."),
    max_value: str = typer.Option(str(Limits.max_value), "--max-value", metavar="SIZE",
                                  help="Largest value (tiny-object limit), e.g. 2K or 2048 (bytes)."),
    engine_thread: bool = typer.Option(ServerConfig.engine_thread, "--engine-thread/--inline",
                                       help="Run the engine on its own thread (the event loop keeps reading while an "
                                       "SG flush runs) or inline (faster)."),
    fresh: bool = typer.Option(False, "--fresh", help="Discard what the device holds instead of recovering it."),
    journal: str = typer.Option(None, "--journal", help="Acknowledgement journal folder (default: inside a file "
                                "device's folder; give one for zbd: devices so no stale value is served after a crash)."),
    sync: str = typer.Option("never", "--sync", help="When the acknowledgement journal is fdatasync'ed: never (a "
                             "process crash loses nothing, a power failure may), batch (before the reply, at most "
                             "once per sync interval), always (before every reply)."),
    sync_interval_ms: float = typer.Option(5.0, "--sync-interval-ms", help="--sync batch: least time between two "
                                           "journal syncs; a batch waits for the next one."),
    idle_timeout: float = typer.Option(ServerConfig.idle_timeout, "--idle-timeout", min=0.0,
                                       help="Close a connection that completes no request for this many seconds "
                                       "(memcached's -o idle_timeout); 0 = never."),
    flush_threshold: int = typer.Option(1, "--flush-threshold", min=1,
                                        help="Nemo's p_th: write the buffered SG at the N-th insert that finds its "
                                        "set full. 1 never drops an acknowledged write while the cache has room; "
                                        "larger fills SGs better (lower write amplification) but may drop "
                                        "recent writes."),
    engine: str = typer.Option("nemo", "--engine", help="nemo (items up to 2 KB), or tiered: Nemo for items up to "
                               "2 KB and a block log on the last zones for larger ones, up to --max-value."),
) -> None:
    """Serve a Nemo cache over the memcached text protocol until SIGTERM/SIGINT (then flush and sync)."""
    from tierwise.common.units import parse_size
    from tierwise.nemo.server.serve import serve

    serve(device, host=host, port=port, flash_bytes=size_flag("flash_size", flash_size),
          dram_bytes=size_flag("dram_size", dram_size, dram_mb), max_conns=max_conns,
          max_value=parse_size(max_value, "--max-value"), engine_thread=engine_thread, fresh=fresh,
          journal_dir=journal, sync=sync, sync_interval_ms=sync_interval_ms, idle_timeout=idle_timeout,
          flush_threshold=flush_threshold, engine=engine)


# ---- bench and sweep ---------------------------------------------------------------------------------------------
@app.command("bench")
def bench_cmd(
    trace: str = typer.Option(BenchSettings.trace, "--trace", help=TRACE_HELP),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    engines: str = typer.Option(BenchSettings.engines, "--engines", show_default=False,
                                help="Comma-separated engines; NAME@ssd runs one in place on the conventional-SSD "
                                f"model (default: {', '.join(BenchSettings.engines.split(','))})."),
    flash_size: Optional[str] = size_option("flash_size", "Flash (device) size, the same for every engine",
                                            BenchSettings.flash_size),
    dram_size: Optional[str] = size_option("dram_size", "DRAM budget: refuse an engine that needs more"),
    zone_size: Optional[str] = size_option("zone_size", f"Zone size of the baselines; {ZONE_HELP}"),
    nemo_zone_size: Optional[str] = size_option("nemo_zone_size", f"Zone size for Nemo (one SetGroup per zone); "
                                                f"{ZONE_HELP}"),
    flash_mb: Optional[float] = old_size_option("flash_size"),
    dram_mb: Optional[float] = old_size_option("dram_size"),
    zone_kb: Optional[float] = old_size_option("zone_size"),
    nemo_zone_kb: Optional[float] = old_size_option("nemo_zone_size"),
    device: str = typer.Option(BenchSettings.device, "--device", help="mem (in-memory zones), file (emulated zones "
                               "in a temp folder), or ssd (the conventional-SSD model for every engine)."),
    rate: float = typer.Option(BenchSettings.rate, "--rate", help="Requests per second arriving (simulated time)."),
    arrivals: str = typer.Option(BenchSettings.arrivals, "--arrivals", help=ARRIVALS_HELP),
    profile: str = typer.Option(BenchSettings.profile, "--profile", help=PROFILE_HELP),
    requests: Optional[str] = typer.Option(None, "--requests", help="Stop each run after this many requests (e.g. 5M)."),
    opt: list[str] = typer.Option([], "--opt", help="ENGINE.option=value (repeatable), e.g. --opt fairywren.set_op=0.5."),
    ablation: bool = typer.Option(BenchSettings.ablation, "--ablation/--no-ablation",
                                  help="Also run Nemo's fill-rate ablation."),
    sizes: str = typer.Option(",".join(f"{x:g}" for x in BenchSettings.cache_sizes), "--sizes",
                              help="Extra cache sizes (x --flash-size) for the miss-ratio curve; '' for none."),
    executor: str = typer.Option(DEFAULT_EXECUTOR, "--executor", help=EXECUTOR_HELP),
    address: str = typer.Option(None, "--address", help="Ray cluster address (with --executor ray), e.g. ray://head:10001."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    json_out: Optional[str] = json_option("the table, ablation, curves and time series"),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="DIR",
                                       help="Folder for the plots (WA over time, fill ablation, miss ratio vs size)."),
) -> None:
    """Compare flash-cache designs on one trace: ALWA, DLWA, end-to-end WA, DRAM bits/object, miss ratio,
    read amplification and simulated get/set latency percentiles, beside the paper's WA."""
    from tierwise.common.report import print_table
    from tierwise.nemo.api import bench
    from tierwise.nemo.bench import ablation_rows, rows_for_terminal

    json_only(json_out)
    result = bench(trace, engines, format=format, executor=executor, workers=workers, address=address, plot=plot,
                   device=device, options=bench_options(opt), ablation=ablation, cache_sizes=cache_factors(sizes),
                   rate=rate, arrivals=arrivals, profile=profile,
                   **given(flash_size=size_flag("flash_size", flash_size, flash_mb),
                           dram_size=size_flag("dram_size", dram_size, dram_mb),
                           zone_size=size_flag("zone_size", zone_size, zone_kb),
                           nemo_zone_size=size_flag("nemo_zone_size", nemo_zone_size, nemo_zone_kb),
                           requests=count_flag("--requests", requests)))
    for row in result.errors:
        typer.echo(f"run {row['run']} (flash {format_bytes(row['flash_size'])}) failed: {row['error']}", err=True)
    if emit(result.as_dict(), json_out):
        return
    print_table(rows_for_terminal(result.table),
                title=f"bench {result.settings['trace']}, {format_bytes(result.settings['flash_size'])} flash")
    if result.ablation:
        print_table(ablation_rows(result.ablation), title="Nemo fill-rate ablation (paper Fig. 17)")
    if result.miss_ratio_curve:
        print_table([{"engine": r["engine"], "flash (MiB)": r["flash_size"] / MiB, "miss (%)": r["miss_ratio"]}
                     for r in result.miss_ratio_curve], title="miss ratio vs cache size")


def bench_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """`--opt ENGINE.option=value` flags as {engine: {option: value}}."""
    from tierwise.common.errors import TierwiseError
    from tierwise.nemo.replay import parse_engine_options

    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        eng, dot, rest = pair.partition(".")
        if not dot:
            raise TierwiseError(f"--opt {pair!r}: write ENGINE.option=value, e.g. nemo.flush_threshold=16")
        options.setdefault(eng, {}).update(parse_engine_options([rest]))
    return options


def cache_factors(text: str) -> tuple[float, ...]:
    from tierwise.common.errors import TierwiseError

    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise TierwiseError(f"--sizes {text!r}: give factors like 0.5,2") from None


@app.command("sweep")
def sweep_cmd(
    config: str = typer.Argument(..., help="YAML: trace, engine, flash_size (value or list), zone_size, device, "
                                 "grid: {option: [values]}."),
    executor: str = typer.Option(DEFAULT_EXECUTOR, "--executor", help=EXECUTOR_HELP),
    address: str = typer.Option(None, "--address", help="Ray cluster address (with --executor ray)."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    json_out: Optional[str] = json_option("every run's row"),
) -> None:
    """Run an engine over the cartesian product of a parameter grid (cache size, p_th, cached-PBFG ratio, SG size,
    ...) in parallel and print one table."""
    from tierwise.common.report import print_table
    from tierwise.nemo.api import sweep
    from tierwise.nemo.bench import rows_for_terminal

    json_only(json_out)
    result = sweep(config, executor=executor, workers=workers, address=address)
    if emit(result.as_dict(), json_out):
        return
    print_table(rows_for_terminal(result.rows), title=f"sweep {config}")
