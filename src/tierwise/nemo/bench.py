"""`tierwise nemo bench` and `tierwise nemo sweep`: many flash-cache designs x configurations on one trace.

Each run is a `RunSpec` (engine, options, device, trace) replayed by the one replay driver
(`tierwise.nemo.replay`) on a fresh device in its own worker; runs execute serially, on a local process pool
(default) or on a Ray cluster (`executor="ray"`, `address=...`). A run returns one flat row of the comparison
table plus its time series.

Device kinds: `mem` (in-memory zones: the default), `file` (the file-backed zoned emulator in a temporary
folder, what the server runs on) and `ssd` (the conventional-SSD FTL model; append `@ssd` to an engine name, e.g.
`set@ssd`, to run it in place there and see its DLWA). Latencies are simulated device time (a device profile,
`tierwise.nemo.device.timing`, with requests arriving at `rate` per second), so they are the same on every kind
and on every machine; the steady-state window follows the replay's one rule.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable


from tierwise.common.errors import TierwiseError
from tierwise.common.plots import bar_plot, line_plot
from tierwise.nemo.defaults import DEFAULT_PROFILE, DEFAULT_RATE

PAPER_WA = {"nemo": 1.56, "log": 1.08, "fairywren": 15.20, "set": 16.31, "kangaroo": 55.59}
PAPER_BITS = {"nemo": 8.3, "fairywren": 9.9, "log": ">100"}
# Fig. 17's fill-rate breakdown as Nemo configuration switches (nemo.md §7); "P" rows delay the flush by p_th
ABLATION = {
    "naive": {"buffer_fallback": False, "flush_threshold": 1, "write_back": False},
    "+buffered SGs": {"buffer_fallback": True, "flush_threshold": 1, "write_back": False},
    "+delayed flush": {"buffer_fallback": False, "flush_threshold": "P", "write_back": False},
    "+both": {"buffer_fallback": True, "flush_threshold": "P", "write_back": False},
    "+write-back": {"buffer_fallback": True, "flush_threshold": "P", "write_back": True},
}
# Nemo's options in the comparison (docs/results-nemo.md, "Comparison"), every one explicit so that a change of
# the engine's defaults does not move it; p_th goes with the SG size (S/2, see ablation_p_th)
COMPARISON_NEMO = {"buffered_sgs": 2, "buffer_fallback": True, "flush_mode": "count", "pbfg_cache_ratio": 0.5,
                   "filter_budget": None, "fp_rate": 0.001, "expected_object_bytes": 250, "filter_fill": 0.9,
                   "index_pages_per_pbfg": 7, "hot_window": 0.3, "cooling": 0.1, "write_back": True,
                   "write_back_cold": True}
PAPER_FILL = {"naive": 6.78, "+buffered SGs": 31.32, "+delayed flush": 36.77, "+both": 64.13, "+write-back": 89.34}
DEVICES = ("mem", "file", "ssd")
SSD_PROFILE = "conventional"  # the timing of the conventional-SSD model
LATENCY_COLUMNS = [f"{kind}_{q}_us" for kind in ("get", "set") for q in ("p50", "p99", "p99.9", "p99.99")]
COLUMNS = ["run", "device", "alwa", "dlwa", "e2e_wa", "index_bits_per_obj", "total_bits_per_obj", "miss_ratio",
           "read_amp", "flash_reads_per_get", *LATENCY_COLUMNS, "set_fill", "requests", "window"]


def _sig(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


# what fits an 80-column terminal: short headers, cells pre-formatted to at most ~6 characters (a saturated
# device's p99 in the millions of microseconds excepted); the JSON and Markdown reports keep every column
TERMINAL_COLUMNS = {"run": ("run", str), "alwa": ("ALWA", _sig), "e2e_wa": ("E2E WA", _sig),
                    "index_bits_per_obj": ("bits", _sig), "miss_ratio": ("miss %", _pct),
                    "get_p99_us": ("p99 us", _us), "set_fill": ("fill %", _pct), "paper_wa": ("paper", _sig)}


@dataclass
class RunSpec:
    """One replay: everything a worker process needs (plain data, so it pickles for any executor)."""

    engine: str
    trace: str
    flash_mb: float
    zone_kb: int = 256
    device: str = "mem"
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    requests: int | None = None
    warmup: float = 1.0
    warm_capacities: float = 1.0
    sample_every: int = 50_000
    ssd_op: float = 0.07
    dram_mb: float | None = None
    tmp_dir: str | None = None
    rate: float = DEFAULT_RATE  # requests per second (simulated arrivals)
    arrivals: str = "rate"  # or "trace": the trace's timestamps
    profile: str = DEFAULT_PROFILE  # device timing profile of zoned devices (the SSD model uses SSD_PROFILE)

    def name(self) -> str:
        return self.label or (self.engine + ("@ssd" if self.device == "ssd" else ""))


def parse_engines(text: str) -> list[tuple[str, str | None]]:
    """'nemo,log,set@ssd' -> [('nemo', None), ('log', None), ('set', 'ssd')] (None = the bench's device)."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, dev = item.partition("@")
        if dev and dev not in DEVICES:
            raise TierwiseError(f"engine {item!r}: unknown device {dev!r}; use one of {', '.join(DEVICES)}")
        out.append((name, dev or None))
    if not out:
        raise TierwiseError("no engines given (e.g. --engines nemo,log,set,kangaroo,fairywren)")
    return out


def _open_device(spec: RunSpec, folder: str):
    from tierwise.nemo.device import FtlSSD, open_device

    flash = int(spec.flash_mb * 2**20)
    zone = spec.zone_kb * 1024
    if spec.device == "ssd":  # erase blocks the size of the baselines' zones, which are also its segments
        return FtlSSD(flash // zone * zone, op=spec.ssd_op, pages_per_block=max(1, zone // 4096))
    if spec.device == "file":
        return open_device(f"file:{folder}", flash_bytes=flash, zone_size=zone)
    if spec.device == "mem":
        return open_device("mem", flash_bytes=flash, zone_size=zone)
    raise TierwiseError(f"unknown device kind {spec.device!r}; use one of {', '.join(DEVICES)}")


def run_safely(spec: RunSpec) -> dict[str, Any]:
    """`run_one`, but a configuration the engine refuses (e.g. too little OP for the zones) becomes a row with an
    `error` instead of sinking the whole bench."""
    try:
        return run_one(spec)
    except TierwiseError as e:
        row = {"run": spec.name(), "engine": spec.engine, "device": spec.device, "flash_mb": spec.flash_mb,
               "error": str(e), "options": dict(spec.options)}
        return {"row": row, "series": [], "summary": {}, "engine_config": {}, "replay": {}}


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Replay one spec on a fresh device; returns the table row, the time series and the full summary."""
    from tierwise.nemo.engines import make_engine
    from tierwise.nemo.replay import ReplayOptions, replay
    from tierwise.nemo.traces import open_trace

    os.environ.setdefault("TIERWISE_NO_PROGRESS", "1")
    with tempfile.TemporaryDirectory(dir=spec.tmp_dir, prefix="tierwise-bench-") as folder:
        dev = _open_device(spec, folder)
        try:
            engine = make_engine(spec.engine, dev, **spec.options)
            if spec.dram_mb is not None and sum(engine.dram_bytes().values()) > spec.dram_mb * 2**20:
                raise TierwiseError(f"{spec.name()}: needs {sum(engine.dram_bytes().values()) / 2**20:.1f} MiB of "
                                    f"DRAM, more than --dram-mb {spec.dram_mb}")
            reader = open_trace(spec.trace)
            profile = SSD_PROFILE if spec.device == "ssd" else spec.profile
            result = replay(engine, reader, ReplayOptions(sample_every=spec.sample_every, warmup=spec.warmup,
                                                          warm_capacities=spec.warm_capacities, limit=spec.requests,
                                                          progress=False, rate=spec.rate, arrivals=spec.arrivals,
                                                          profile=profile),
                            total=getattr(reader, "total", None))
            engine.close()
            dlwa = dev.stats.dlwa
        finally:
            dev.close()
    s = result.summary
    dram = s.get("dram", {})
    # read amplification: flash bytes read per get over the object bytes a get returns (mean hit size x hit ratio)
    hit_bytes = result.mean_hit_bytes
    returned = (1 - s["miss_ratio"]) * hit_bytes if hit_bytes and s["miss_ratio"] is not None else 0
    latency = {f"{kind}_{q}": s["latency"][kind][f"{q}"] for kind in ("get", "set")
               for q in ("p50_us", "p99_us", "p99.9_us", "p99.99_us")}
    row = {
        "run": spec.name(), "engine": spec.engine, "device": spec.device, "flash_mb": spec.flash_mb,
        "alwa": s["alwa"], "dlwa": dlwa, "e2e_wa": s["alwa"] * dlwa if s["alwa"] is not None else None,
        "index_bits_per_obj": dram.get("index_bits_per_object"), "total_bits_per_obj": dram.get("total_bits_per_object"),
        "miss_ratio": s["miss_ratio"], "read_amp": (s["bytes_read_per_get"] or 0) / returned if returned else None,
        "flash_reads_per_get": s["flash_reads_per_get"], **latency,
        "set_fill": s["mean_sg_fill"] if s["mean_sg_fill"] is not None else s["mean_set_fill"],
        "requests": result.requests, "window": s["window"], "seconds": result.seconds, "options": dict(spec.options),
        "profile": profile, "rate": spec.rate if spec.arrivals == "rate" else None,
    }
    return {"row": row, "series": result.series, "summary": s, "engine_config": result.engine_config,
            "replay": result.counters}


# --- executors ----------------------------------------------------------------------------------------------------


def execute(specs: list[RunSpec], *, executor: str = "process", workers: int | None = None,
            address: str | None = None) -> list[dict[str, Any]]:
    """Run every spec; results come back in the order of `specs`."""
    if executor == "serial" or (executor == "process" and (workers == 1 or len(specs) == 1)):
        return [run_safely(s) for s in specs]
    if executor == "process":
        with ProcessPoolExecutor(max_workers=workers or min(len(specs), os.cpu_count() or 1)) as pool:
            return list(pool.map(run_safely, specs))
    if executor == "ray":
        return _execute_ray(specs, address)
    raise TierwiseError(f"unknown executor {executor!r}: use process, serial or ray")


def _execute_ray(specs: list[RunSpec], address: str | None) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise TierwiseError("the Ray executor needs Ray: pip install 'tierwise[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False,
                 runtime_env={"env_vars": {"TIERWISE_NO_PROGRESS": "1"}})
        started = True
    try:
        task = ray.remote(run_safely)
        return ray.get([task.remote(s) for s in specs])
    finally:
        if started:
            ray.shutdown()


# --- the bench -------------------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    trace: str = "synth:twitter-merged:1M"
    engines: str = "nemo,log,set,kangaroo,fairywren"
    flash_mb: float = 4.0
    dram_mb: float | None = None
    device: str = "mem"
    zone_kb: int = 64  # baselines: small zones keep the set tiers' GC granularity fine
    nemo_zone_kb: int = 256  # Nemo: one SG per zone
    requests: int | None = None
    warmup: float = 1.0
    warm_capacities: float = 1.0
    sample_every: int = 50_000
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per engine name
    ablation: bool = True
    cache_sizes: tuple[float, ...] = (0.5, 1.0, 2.0)  # x flash_mb, for the miss-ratio curve
    ssd_op: float = 0.07
    rate: float = DEFAULT_RATE
    arrivals: str = "rate"
    profile: str = DEFAULT_PROFILE


def _spec(st: BenchSettings, name: str, device: str | None, **over) -> RunSpec:
    zone = st.nemo_zone_kb if name == "nemo" else st.zone_kb
    device = device or st.device
    options = dict(st.options.get(name, {}))
    spec = RunSpec(engine=name, trace=st.trace, flash_mb=st.flash_mb, zone_kb=zone, device=device,
                   options=options, requests=st.requests, warmup=st.warmup,
                   warm_capacities=st.warm_capacities, sample_every=st.sample_every, ssd_op=st.ssd_op,
                   dram_mb=st.dram_mb, rate=st.rate, arrivals=st.arrivals, profile=st.profile)
    return replace(spec, **over)


def ablation_p_th(st: BenchSettings) -> int:
    """p_th of the ablation's delayed-flush rows: the bench's `--opt nemo.flush_threshold` if given, else S/2.

    nemo.md §11 keeps p_th at 1.5% of S (4096 of 275,712 sets), which rounds to 1 (no delay at all) below
    S ~ 100 sets per SG; S/2 brings B+P+W to the paper's ~89% SG fill at laptop S (docs/results-nemo.md,
    "Comparison")."""
    from tierwise.nemo.engines.nemo.config import SG_META_PAGES

    given = st.options.get("nemo", {}).get("flush_threshold")
    return int(given) if given else max(1, round((st.nemo_zone_kb * 1024 // 4096 - SG_META_PAGES) / 2))


def bench(st: BenchSettings, *, executor: str = "process", workers: int | None = None, address: str | None = None,
          plot_dir: str | Path | None = None) -> dict[str, Any]:
    """The comparison table, and optionally the fill-rate ablation and the miss-ratio-vs-size curve, with plots."""
    engines = parse_engines(st.engines)
    main = [_spec(st, n, d) for n, d in engines]
    ablation = []
    if st.ablation and any(n == "nemo" for n, _ in engines):
        p_th = ablation_p_th(st)
        ablation = [_spec(st, "nemo", "mem", label=f"nemo {k}",
                          options={**st.options.get("nemo", {}), **o, "flush_threshold": o["flush_threshold"]
                                   if o["flush_threshold"] != "P" else p_th})
                    for k, o in ABLATION.items()]
    # the curve keeps the zone count: zones scale with the cache (a set tier's GC needs its spare zones)
    curve = [_spec(st, n, "mem", flash_mb=st.flash_mb * f, label=f"{n} x{f:g}",
                   zone_kb=max(4, int((st.nemo_zone_kb if n == "nemo" else st.zone_kb) * f) // 4 * 4))
             for n, d in engines if d is None for f in st.cache_sizes if f != 1.0]
    results = execute(main + ablation + curve, executor=executor, workers=workers, address=address)
    out_main, out_abl, out_curve = results[:len(main)], results[len(main):len(main) + len(ablation)], \
        results[len(main) + len(ablation):]
    table = [r["row"] for r in out_main]
    for row in table:
        row["paper_wa"] = PAPER_WA.get(row["engine"]) if row["device"] != "ssd" else None
    report: dict[str, Any] = {"settings": asdict(st), "table": table,
                              "series": {r["row"]["run"]: r["series"] for r in out_main},
                              "engine_configs": {r["row"]["run"]: r["engine_config"] for r in out_main},
                              "summaries": {r["row"]["run"]: r["summary"] for r in out_main}}
    if ablation:
        report["ablation"] = [{"config": k, "sg_fill_pct": 100 * (r["row"].get("set_fill") or 0),
                               "paper_fill_pct": PAPER_FILL[k], "alwa": r["row"].get("alwa"),
                               "miss_ratio": r["row"].get("miss_ratio")} for k, r in zip(ABLATION, out_abl)]
    sizes: dict[str, list[tuple[float, float]]] = {}
    for r in out_curve + [x for x in out_main if x["row"]["device"] == st.device]:
        if "error" not in r["row"]:
            sizes.setdefault(r["row"]["engine"], []).append((r["row"]["flash_mb"], r["row"]["miss_ratio"]))
    report["miss_ratio_curve"] = [{"engine": e, "flash_mb": f, "miss_ratio": m}
                                  for e, pts in sizes.items() for f, m in sorted(pts)]
    report["errors"] = [r["row"] for r in results if "error" in r["row"]]
    if plot_dir is not None:
        report["plots"] = [str(p) for p in write_plots(report, Path(plot_dir))]
    return report


def write_plots(report: dict[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    series = {name: ([r["requests"] for r in rows if r["alwa"]], [r["alwa"] for r in rows if r["alwa"]])
              for name, rows in report["series"].items() if rows}
    paths.append(line_plot(series, folder / "wa_over_time.png", title="Write amplification over time (windowed ALWA)",
                           xlabel="requests", ylabel="ALWA", logy=True))
    if report.get("ablation"):
        paths.append(bar_plot({r["config"]: r["sg_fill_pct"] for r in report["ablation"]}, folder / "fill_ablation.png",
                              title="Nemo SG fill rate by technique (paper: 6.8 / 31.3 / 36.8 / 64.1 / 89.3 %)",
                              ylabel="mean SG fill (%)"))
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for r in report["miss_ratio_curve"]:
        xs, ys = curves.setdefault(r["engine"], ([], []))
        xs.append(r["flash_mb"])
        ys.append(r["miss_ratio"])
    if any(len(xs) > 1 for xs, _ in curves.values()):  # a curve needs more than one cache size
        paths.append(line_plot(curves, folder / "miss_ratio_vs_size.png", title="Miss ratio vs cache size",
                               xlabel="flash (MiB)", ylabel="miss ratio", logx=True))
    return paths


# --- sweeps -------------------------------------------------------------------------------------------------------

SWEEP_KEYS = {"trace", "engine", "flash_mb", "zone_kb", "device", "requests", "warmup", "warm_capacities",
              "sample_every", "options", "grid", "ssd_op", "rate", "arrivals", "profile"}


def sweep_specs(config: dict[str, Any]) -> list[RunSpec]:
    """The runs of a sweep: the cartesian product of every list under `grid` (engine options) and of `flash_mb`
    when it is a list. Example (YAML):

        trace: synth:twitter-merged:1M
        engine: nemo
        flash_mb: [2, 4, 8]
        zone_kb: 256
        grid: {flush_threshold: [1, 4, 16], pbfg_cache_ratio: [0.25, 0.5, 1.0], sets_per_sg: [30, 62]}
    """
    unknown = set(config) - SWEEP_KEYS
    if unknown:
        raise TierwiseError(f"unknown sweep keys {sorted(unknown)}; expected some of {sorted(SWEEP_KEYS)}")
    if "trace" not in config or "engine" not in config:
        raise TierwiseError("a sweep needs at least 'trace' and 'engine'")
    grid = config.get("grid") or {}
    if not isinstance(grid, dict):
        raise TierwiseError("sweep 'grid' must map option names to lists of values")
    flash = config.get("flash_mb", 4.0)
    axes = {"flash_mb": flash if isinstance(flash, list) else [flash]}
    axes.update({k: v if isinstance(v, list) else [v] for k, v in grid.items()})
    base = RunSpec(engine=str(config["engine"]), trace=str(config["trace"]), flash_mb=0,
                   zone_kb=int(config.get("zone_kb", 256)), device=str(config.get("device", "mem")),
                   requests=config.get("requests"), warmup=float(config.get("warmup", 1.0)),
                   warm_capacities=float(config.get("warm_capacities", 1.0)),
                   sample_every=int(config.get("sample_every", 50_000)), ssd_op=float(config.get("ssd_op", 0.07)),
                   rate=float(config.get("rate", DEFAULT_RATE)), arrivals=str(config.get("arrivals", "rate")),
                   profile=str(config.get("profile", DEFAULT_PROFILE)))
    specs = []
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo))
        flash_mb = float(point.pop("flash_mb"))
        varied = [k for k in axes if len(axes[k]) > 1] or list(axes)  # name a run by what the grid varies
        label = ", ".join(f"{k}={flash_mb:g}" if k == "flash_mb" else f"{k}={point[k]}" for k in varied)
        specs.append(replace(base, flash_mb=flash_mb, options={**(config.get("options") or {}), **point},
                             label=label))
    return specs


def sweep(config: dict[str, Any], *, executor: str = "process", workers: int | None = None,
          address: str | None = None) -> list[dict[str, Any]]:
    specs = sweep_specs(config)
    return [r["row"] for r in execute(specs, executor=executor, workers=workers, address=address)]


def load_sweep_config(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TierwiseError(f"sweep config not found: {p}")
    try:
        config = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise TierwiseError(f"sweep config {p} is not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise TierwiseError(f"sweep config {p} must be a mapping (trace, engine, flash_mb, grid, ...)")
    return config


def rows_for_print(rows: Iterable[dict[str, Any]], columns: list[str] = COLUMNS) -> list[dict[str, Any]]:
    """Rows reduced to `columns`, with the paper's WA where the rows have it (the Markdown report)."""
    return [{c: r.get(c) for c in [*columns, *(["paper_wa"] if "paper_wa" in r else [])]} for r in rows]


def rows_for_terminal(rows: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """Rows as the short, pre-formatted cells of `TERMINAL_COLUMNS` (a column absent from every row is left out)."""
    rows = list(rows)
    cols = {k: v for k, v in TERMINAL_COLUMNS.items() if any(k in r for r in rows)}
    return [{head: "-" if r.get(k) is None and k != "run" else f(r.get(k)) for k, (head, f) in cols.items()}
            for r in rows]


def markdown_report(report: dict[str, Any], title: str, command: str,
                    link: Callable[[str], str] = lambda p: p) -> str:
    """A Markdown section: the table beside the paper's numbers, the ablation, and the plots."""
    from tierwise.common.report import markdown_table

    parts = [f"## {title}\n", f"`{command}`\n", markdown_table(rows_for_print(report["table"]))]
    if report.get("ablation"):
        parts += ["\nFill-rate ablation (Nemo switches; paper Fig. 17):\n", markdown_table(report["ablation"])]
    for p in report.get("plots", []):
        parts.append(f"\n![{Path(p).stem}]({link(p)})\n")
    return "\n".join(parts)
