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
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

from tierwise.common.errors import TierwiseError
from tierwise.common.plots import bar_plot, line_plot
from tierwise.common.progress import make_progress
from tierwise.common.results import Result
from tierwise.common.units import format_bytes, parse_count
from tierwise.nemo.defaults import DEFAULT_EXECUTOR, MiB, RENAMED_SIZES, BenchSettings, renamed_size, zone_size_for

__all__ = ["BenchResult", "BenchSettings", "RunSpec", "SweepResult", "bench", "execute", "load_sweep_config",
           "run_one", "sweep", "sweep_specs"]

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


# the comparison on an 80-column terminal: a few columns, headers carrying their units (tierwise.common.report
# formats the cells by them); the JSON and Markdown reports keep every column
TIER_COLUMNS = ["small_miss_ratio", "large_miss_ratio", "small_alwa", "large_alwa"]  # two-tier rows only
TERMINAL_COLUMNS = {"run": "run", "alwa": "ALWA", "e2e_wa": "E2E WA", "index_bits_per_obj": "bits",
                    "miss_ratio": "miss (%)", "get_p99_us": "p99 (us)", "set_fill": "fill (%)", "paper_wa": "paper",
                    "small_miss_ratio": "small miss (%)", "large_miss_ratio": "large miss (%)",
                    "small_alwa": "small ALWA", "large_alwa": "large ALWA"}


@dataclass
class RunSpec:
    """One replay: everything a worker process needs (plain data, so it pickles for any executor). What a run
    leaves out takes the bench's default."""

    engine: str
    trace: str
    flash_size: int  # bytes
    zone_size: int | None = None  # bytes; None: picked from the flash size (defaults.zone_size_for)
    device: str = BenchSettings.device
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    requests: int | None = None
    warmup: float = BenchSettings.warmup
    warm_capacities: float = BenchSettings.warm_capacities
    sample_every: int = BenchSettings.sample_every
    ssd_op: float = BenchSettings.ssd_op
    dram_size: int | None = None  # bytes
    tmp_dir: str | None = None
    rate: float = BenchSettings.rate  # requests per second (simulated arrivals)
    arrivals: str = BenchSettings.arrivals  # or "trace": the trace's timestamps
    profile: str = BenchSettings.profile  # device timing profile of zoned devices (the SSD model uses SSD_PROFILE)

    def __post_init__(self) -> None:
        if self.zone_size is None:
            self.zone_size = zone_size_for(self.engine, self.flash_size)

    def design(self) -> str:
        return self.engine + ("@ssd" if self.device == "ssd" else "")

    def name(self) -> str:
        return self.label or self.design()


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

    flash, zone = spec.flash_size, spec.zone_size
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
        row = {"run": spec.name(), "engine": spec.engine, "device": spec.device, "flash_size": spec.flash_size,
               "error": str(e), "options": dict(spec.options)}
        return {"row": row, "series": [], "summary": {}, "engine_config": {}, "replay": {}}


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Replay one spec on a fresh device; returns the table row, the time series and the full summary."""
    from tierwise.nemo.replay import ReplayOptions, engine_on, replay
    from tierwise.nemo.traces import open_trace

    os.environ.setdefault("TIERWISE_NO_PROGRESS", "1")
    with tempfile.TemporaryDirectory(dir=spec.tmp_dir, prefix="tierwise-bench-") as folder:
        dev = _open_device(spec, folder)
        try:
            engine = engine_on(dev, spec.engine, dram_size=spec.dram_size, **spec.options)
            profile = SSD_PROFILE if spec.device == "ssd" else spec.profile
            result = replay(engine, open_trace(spec.trace),
                            ReplayOptions(sample_every=spec.sample_every, warmup=spec.warmup,
                                          warm_capacities=spec.warm_capacities, limit=spec.requests, progress=False,
                                          rate=spec.rate, arrivals=spec.arrivals, profile=profile))
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
        "run": spec.name(), "engine": spec.engine, "device": spec.device, "flash_size": spec.flash_size,
        "zone_size": spec.zone_size, "alwa": s["alwa"], "dlwa": dlwa,
        "e2e_wa": s["alwa"] * dlwa if s["alwa"] is not None else None,
        "index_bits_per_obj": dram.get("index_bits_per_object"), "total_bits_per_obj": dram.get("total_bits_per_object"),
        "miss_ratio": s["miss_ratio"], "read_amp": (s["bytes_read_per_get"] or 0) / returned if returned else None,
        "flash_reads_per_get": s["flash_reads_per_get"], **latency,
        "set_fill": s["mean_sg_fill"] if s["mean_sg_fill"] is not None else s["mean_set_fill"],
        "requests": result.requests, "window": s["window"], "seconds": result.seconds, "options": dict(spec.options),
        "profile": profile, "rate": spec.rate if spec.arrivals == "rate" else None,
    }
    for tier, t in (s.get("tiers") or {}).items():  # a two-tier cache: each tier's own figures
        row[f"{tier}_miss_ratio"], row[f"{tier}_alwa"] = t["miss_ratio"], t["alwa"]
    return {"row": row, "series": result.series, "summary": s, "engine_config": result.engine_config,
            "replay": result.counters}


# --- executors ----------------------------------------------------------------------------------------------------


def execute(specs: list[RunSpec], *, executor: str = DEFAULT_EXECUTOR, workers: int | None = None,
            address: str | None = None) -> list[dict[str, Any]]:
    """Run every spec; results come back in the order of `specs`. On a terminal, bars count the finished runs
    overall and per design, with their ETA (the runs themselves draw nothing)."""
    if executor not in ("serial", "process", "ray"):
        raise TierwiseError(f"unknown executor {executor!r}: use process, serial or ray")
    results: list[dict[str, Any]] = [{}] * len(specs)
    with _RunBars(specs) as bars:
        for i, result in _finished(specs, executor, workers, address):
            results[i] = result
            bars.finished(i)
    return results


def _finished(specs: list[RunSpec], executor: str, workers: int | None,
              address: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, result) of each spec as its run finishes."""
    if executor == "serial" or (executor == "process" and (workers == 1 or len(specs) == 1)):
        yield from ((i, run_safely(s)) for i, s in enumerate(specs))
    elif executor == "process":
        with ProcessPoolExecutor(max_workers=workers or min(len(specs), os.cpu_count() or 1)) as pool:
            futures = {pool.submit(run_safely, s): i for i, s in enumerate(specs)}
            yield from ((futures[f], f.result()) for f in as_completed(futures))
    else:
        yield from _finished_on_ray(specs, address)


def _finished_on_ray(specs: list[RunSpec], address: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Ray as `_finished` runs it: the instance already started in this process, else one on `address` (or a
    local one) for these runs only."""
    try:
        import ray
    except ImportError:
        raise TierwiseError("the Ray executor needs Ray: pip install 'tierwise[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False,
                 runtime_env={"env_vars": {"TIERWISE_NO_PROGRESS": "1"}})
    try:
        task = ray.remote(run_safely)
        index = {task.remote(s): i for i, s in enumerate(specs)}
        pending = list(index)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield index[ready[0]], ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()


class _RunBars:
    """One bar over all runs, and one per design when there are several (a design's line completes when its last
    run, the ablation's and the curve's included, finishes)."""

    def __init__(self, specs: list[RunSpec]):
        self.designs = [s.design() for s in specs]
        self.progress = make_progress()
        self.overall = self.progress.add_task(f"{len(specs)} runs", total=len(specs))
        names = dict.fromkeys(self.designs)
        self.per_design = {n: self.progress.add_task(f"  {n}", total=self.designs.count(n)) for n in names} \
            if len(names) > 1 else {}

    def __enter__(self) -> "_RunBars":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def finished(self, i: int) -> None:
        self.progress.advance(self.overall)
        if self.per_design:
            self.progress.advance(self.per_design[self.designs[i]])


# --- the bench -------------------------------------------------------------------------------------------------


@dataclass
class BenchResult(Result):
    """The comparison: `table` (one row per design: the table of `to_dataframe()`), each design's time series,
    engine configuration and summary, Nemo's fill-rate ablation, the miss-ratio curve, the runs that failed and
    the plots written."""

    _rows: ClassVar[str] = "table"

    settings: dict[str, Any]
    table: list[dict[str, Any]]
    series: dict[str, list[dict[str, Any]]]
    engine_configs: dict[str, dict[str, Any]]
    summaries: dict[str, dict[str, Any]]
    ablation: list[dict[str, Any]] = field(default_factory=list)
    miss_ratio_curve: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


def _spec(st: BenchSettings, name: str, device: str | None, **over) -> RunSpec:
    spec = RunSpec(engine=name, trace=st.trace, flash_size=st.flash_size, zone_size=st.zone_size_of(name),
                   device=device or st.device, options=dict(st.options.get(name, {})), requests=st.requests,
                   warmup=st.warmup, warm_capacities=st.warm_capacities, sample_every=st.sample_every,
                   ssd_op=st.ssd_op, dram_size=st.dram_size, rate=st.rate, arrivals=st.arrivals, profile=st.profile)
    return replace(spec, **over)


def ablation_p_th(st: BenchSettings) -> int:
    """p_th of the ablation's delayed-flush rows: the bench's `--opt nemo.flush_threshold` if given, else S/2.

    nemo.md §11 keeps p_th at 1.5% of S (4096 of 275,712 sets), which rounds to 1 (no delay at all) below
    S ~ 100 sets per SG; S/2 brings B+P+W to the paper's ~89% SG fill at laptop S (docs/results-nemo.md,
    "Comparison")."""
    from tierwise.nemo.engines.nemo.config import SG_META_PAGES

    given = st.options.get("nemo", {}).get("flush_threshold")
    return int(given) if given else max(1, round((st.zone_size_of("nemo") // 4096 - SG_META_PAGES) / 2))


def _curve_spec(st: BenchSettings, name: str, factor: float) -> RunSpec:
    """A run of the miss-ratio curve: the cache `factor` times the bench's, in as many zones (a set tier's GC needs
    its spare zones), on the bench's device kind."""
    zone = max(4096, int(st.zone_size_of(name) * factor) // 4096 * 4096)
    return _spec(st, name, "mem", flash_size=int(st.flash_size * factor), zone_size=zone, label=f"{name} x{factor:g}")


def bench(st: BenchSettings, *, executor: str = DEFAULT_EXECUTOR, workers: int | None = None,
          address: str | None = None, plot_dir: str | Path | None = None) -> BenchResult:
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
    curve = [_curve_spec(st, n, f) for n, d in engines if d is None for f in st.cache_sizes if f != 1.0]
    results = execute(main + ablation + curve, executor=executor, workers=workers, address=address)
    out_main, out_abl, out_curve = results[:len(main)], results[len(main):len(main) + len(ablation)], \
        results[len(main) + len(ablation):]
    table = [r["row"] for r in out_main]
    for row in table:
        row["paper_wa"] = PAPER_WA.get(row["engine"]) if row["device"] != "ssd" else None
    sizes: dict[str, list[tuple[int, float]]] = {}
    for r in out_curve + [x for x in out_main if x["row"]["device"] == st.device]:
        if "error" not in r["row"]:
            sizes.setdefault(r["row"]["engine"], []).append((r["row"]["flash_size"], r["row"]["miss_ratio"]))
    report = BenchResult(
        settings=asdict(st), table=table, series={r["row"]["run"]: r["series"] for r in out_main},
        engine_configs={r["row"]["run"]: r["engine_config"] for r in out_main},
        summaries={r["row"]["run"]: r["summary"] for r in out_main},
        ablation=[{"config": k, "sg_fill_pct": 100 * (r["row"].get("set_fill") or 0), "paper_fill_pct": PAPER_FILL[k],
                   "alwa": r["row"].get("alwa"), "miss_ratio": r["row"].get("miss_ratio")}
                  for k, r in zip(ABLATION, out_abl)],
        miss_ratio_curve=[{"engine": e, "flash_size": f, "miss_ratio": m} for e, pts in sizes.items()
                          for f, m in sorted(pts)],
        errors=[r["row"] for r in results if "error" in r["row"]])
    if plot_dir is not None:
        report.plots = [str(p) for p in write_plots(report, Path(plot_dir))]
    return report


def write_plots(report: BenchResult, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    series = {name: ([r["requests"] for r in rows if r["alwa"]], [r["alwa"] for r in rows if r["alwa"]])
              for name, rows in report.series.items() if rows}
    warm = [report.summaries.get(name, {}).get("warm_at_request") for name in series]
    # shaded from the latest warm-up end: from there every run is in its steady window
    steady = max(warm) if warm and None not in warm else None
    paths.append(line_plot(series, folder / "wa_over_time.png", title="Write amplification over time (windowed ALWA)",
                           xlabel="requests", ylabel="app-level write amplification (x)", logy=True, steady=steady))
    if report.ablation:
        paths.append(bar_plot({r["config"]: r["sg_fill_pct"] for r in report.ablation}, folder / "fill_ablation.png",
                              title="Nemo SG fill rate by technique (paper: 6.8 / 31.3 / 36.8 / 64.1 / 89.3 %)",
                              ylabel="mean SG fill (%)"))
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for r in report.miss_ratio_curve:
        xs, ys = curves.setdefault(r["engine"], ([], []))
        xs.append(r["flash_size"] / MiB)
        ys.append(r["miss_ratio"])
    if any(len(xs) > 1 for xs, _ in curves.values()):  # a curve needs more than one cache size
        paths.append(line_plot(curves, folder / "miss_ratio_vs_size.png", title="Miss ratio vs cache size",
                               xlabel="flash (MiB)", ylabel="miss ratio (0-1)", logx=True))
    return paths


# --- sweeps -------------------------------------------------------------------------------------------------------

# what a run reads from the sweep's keys as they are (the sizes and the grid are read below)
SWEEP_PLAIN_KEYS = ("device", "warmup", "warm_capacities", "sample_every", "ssd_op", "rate", "arrivals", "profile")
SWEEP_SIZE_KEYS = ("flash_size", "zone_size")
SWEEP_KEYS = {"trace", "engine", "requests", "options", "grid", *SWEEP_PLAIN_KEYS, *SWEEP_SIZE_KEYS,
              *(RENAMED_SIZES[k][0] for k in SWEEP_SIZE_KEYS)}


@dataclass
class SweepResult(Result):
    """A sweep's `rows`: one per run of the grid (the table of `to_dataframe()`), as the bench's table has them."""

    _rows: ClassVar[str] = "rows"

    config: dict[str, Any]
    rows: list[dict[str, Any]]


def _sweep_sizes(config: dict[str, Any], name: str) -> list[int]:
    """A size key of a sweep (a value or a list; '4M' or bytes, or under its old name in MiB / KiB) as bytes."""
    old_name = RENAMED_SIZES[name][0]
    if name in config and old_name in config:
        raise TierwiseError(f"sweep keys {old_name} and {name} give the same size; keep only {name}")
    if old_name in config:
        return [renamed_size(name, None, v) for v in _listed(config[old_name])]
    return [renamed_size(name, v, None) for v in _listed(config.get(name))]


def _listed(value: Any) -> list[Any]:
    return [] if value is None else value if isinstance(value, list) else [value]


def _label(key: str, value: Any) -> str:
    return f"{key}={format_bytes(value)}" if key in SWEEP_SIZE_KEYS else f"{key}={value}"


def sweep_specs(config: dict[str, Any]) -> list[RunSpec]:
    """The runs of a sweep: the cartesian product of every list under `grid` (engine options) and of the sizes
    `flash_size` and `zone_size` where they are lists (a zone size left out is picked from the flash size).
    Example (YAML):

        trace: synth:twitter-merged:1M
        engine: nemo
        flash_size: [2M, 4M, 8M]
        zone_size: 256K
        grid: {flush_threshold: [1, 4, 16], pbfg_cache_ratio: [0.25, 0.5, 1.0], sets_per_sg: [30, 62]}

    The old keys `flash_mb` (MiB) and `zone_kb` (KiB) still read."""
    unknown = set(config) - SWEEP_KEYS
    if unknown:
        raise TierwiseError(f"unknown sweep keys {sorted(unknown)}; expected some of {sorted(SWEEP_KEYS)}")
    if "trace" not in config or "engine" not in config:
        raise TierwiseError("a sweep needs at least 'trace' and 'engine'")
    grid = config.get("grid") or {}
    if not isinstance(grid, dict):
        raise TierwiseError("sweep 'grid' must map option names to lists of values")
    axes: dict[str, list[Any]] = {"flash_size": _sweep_sizes(config, "flash_size") or [BenchSettings.flash_size]}
    if zones := _sweep_sizes(config, "zone_size"):
        axes["zone_size"] = zones
    axes.update({k: v if isinstance(v, list) else [v] for k, v in grid.items()})
    requests = config.get("requests")
    base = RunSpec(engine=str(config["engine"]), trace=str(config["trace"]), flash_size=BenchSettings.flash_size,
                   requests=parse_count(requests, "requests") if requests is not None else None,
                   **{k: config[k] for k in SWEEP_PLAIN_KEYS if k in config})
    varied = [k for k in axes if len(axes[k]) > 1] or list(axes)  # name a run by what the grid varies
    specs = []
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo))
        sizes = {k: point.pop(k) for k in SWEEP_SIZE_KEYS if k in point}
        label = ", ".join(_label(k, sizes.get(k, point.get(k))) for k in varied)
        specs.append(replace(base, flash_size=sizes["flash_size"], zone_size=sizes.get("zone_size"),
                             options={**(config.get("options") or {}), **point}, label=label))
    return specs


def sweep(config: dict[str, Any], *, executor: str = DEFAULT_EXECUTOR, workers: int | None = None,
          address: str | None = None) -> SweepResult:
    specs = sweep_specs(config)
    return SweepResult(config=dict(config),
                       rows=[r["row"] for r in execute(specs, executor=executor, workers=workers, address=address)])


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
        raise TierwiseError(f"sweep config {p} must be a mapping (trace, engine, flash_size, grid, ...)")
    return config


def rows_for_print(rows: Iterable[dict[str, Any]], columns: list[str] = COLUMNS) -> list[dict[str, Any]]:
    """Rows reduced to `columns`, with the paper's WA where the rows have it (the Markdown report)."""
    rows = list(rows)
    tiers = [c for c in TIER_COLUMNS if any(c in r for r in rows)]
    return [{c: r.get(c) for c in [*columns, *tiers, *(["paper_wa"] if "paper_wa" in r else [])]} for r in rows]


def rows_for_terminal(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows reduced to `TERMINAL_COLUMNS`, under their headers (a column absent from every row is left out)."""
    rows = list(rows)
    cols = {k: head for k, head in TERMINAL_COLUMNS.items() if any(k in r for r in rows)}
    return [{head: r.get(k) for k, head in cols.items()} for r in rows]


def ablation_rows(ablation: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fill-rate ablation under readable headers (percent columns hold fractions: the table formats them)."""
    return [{"config": r["config"], "SG fill (%)": r["sg_fill_pct"] / 100, "paper SG fill (%)": r["paper_fill_pct"] / 100,
             "ALWA": r["alwa"], "miss (%)": r["miss_ratio"]} for r in ablation]


def markdown_report(report: BenchResult, title: str, command: str,
                    link: Callable[[str], str] = lambda p: p) -> str:
    """A Markdown section: the table beside the paper's numbers, the ablation, and the plots."""
    from tierwise.common.report import markdown_table

    parts = [f"## {title}\n", f"`{command}`\n", markdown_table(rows_for_print(report.table))]
    if report.ablation:
        parts += ["\nFill-rate ablation (Nemo switches; paper Fig. 17):\n", markdown_table(ablation_rows(report.ablation))]
    for p in report.plots:
        parts.append(f"\n![{Path(p).stem}]({link(p)})\n")
    return "\n".join(parts)
