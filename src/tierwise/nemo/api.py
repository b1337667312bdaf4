"""The Nemo Python API: each `tierwise nemo` command as a function whose parameters are the command's flags.

    from tierwise import nemo

    r = nemo.replay("synth:twitter-merged:200k", flash_size="4M")
    r.summary["alwa"], r.summary["miss_ratio"]
    nemo.bench("synth:twitter-merged:100k", engines="nemo,log", flash_size="2M").to_dataframe()

Sizes take a string with a unit ('24M', '512K': binary; '17MB': decimal) or a number of bytes; counts such as
`requests` take '10M' or a number. A zone size left out is picked from the flash size (`defaults.zone_size_for`);
every other default is the one `ReplayOptions` or `BenchSettings` (tierwise.nemo.defaults) keeps. Each function
returns a dataclass that mixes in `tierwise.common.results.Result`: `.as_dict()` is what the command's `--json`
writes, `.to_dataframe()` its table. Importing this module loads no compiled code; the functions do, on first call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tierwise.common.errors import TierwiseError
from tierwise.common.results import Result
from tierwise.common.units import parse_count, parse_size
from tierwise.nemo.defaults import (DEFAULT_DEVICE, DEFAULT_ENGINE, DEFAULT_EXECUTOR, REPLAY_FLASH_SIZE,
                                    SYNTH_PROFILE, SYNTH_REQUESTS, SYNTH_SEED, BenchSettings, ReplayOptions,
                                    zone_size_for)

__all__ = ["BenchResult", "ReplayResult", "SweepResult", "TraceStats", "bench", "open_engine", "replay", "sweep",
           "synth_trace", "trace_stats"]

Size = str | int


def _bytes(size: Size | None, name: str) -> int | None:
    return None if size is None else parse_size(size, name)


def open_engine(name: str = DEFAULT_ENGINE, flash_size: Size = REPLAY_FLASH_SIZE, zone_size: Size | None = None,
                dram_size: Size | None = None, device: str = DEFAULT_DEVICE, **options: Any):
    """Engine `name` (nemo, log, set, kangaroo, fairywren, block, tiered) on a fresh device of `flash_size` in zones
    of `zone_size` (default: picked from the flash size); `device` is `mem` or `file:FOLDER`; `options` are the
    engine's (e.g. `flush_threshold=16`). With `dram_size`, a configuration whose measured DRAM exceeds it is refused."""
    from tierwise.nemo.device import open_device
    from tierwise.nemo.replay import engine_on

    flash = parse_size(flash_size, "flash_size")
    zone = _bytes(zone_size, "zone_size") or zone_size_for(name, flash)
    dev = open_device(device, flash_bytes=flash, zone_size=zone)
    try:
        return engine_on(dev, name, dram_size=_bytes(dram_size, "dram_size"), **options)
    except BaseException:
        dev.close()
        raise


def replay(trace: str | Path | Iterable, engine: Any = DEFAULT_ENGINE, *, flash_size: Size | None = None,
           zone_size: Size | None = None, dram_size: Size | None = None, device: str = DEFAULT_DEVICE,
           options: dict[str, Any] | None = None, requests: str | int | None = None, format: str | None = None,
           skip_bad: bool = False, sample_every: int = ReplayOptions.sample_every,
           warmup: float = ReplayOptions.warmup, rate: float = ReplayOptions.rate,
           arrivals: str = ReplayOptions.arrivals, profile: str | None = ReplayOptions.profile,
           ttl_scale: float = ReplayOptions.ttl_scale, progress: bool = ReplayOptions.progress) -> ReplayResult:
    """Replay `trace` (a file, `synth:PROFILE[:REQUESTS[:SEED]]`, or an iterable of request chunks) on `engine`:
    a name, opened on a fresh device as `open_engine` does (`flash_size` default 256M, `zone_size`, `dram_size`,
    `device`, engine `options`) and closed after, or an engine you opened (then give none of those). Stops after
    `requests`; `format` and `skip_bad` read a trace file as `tierwise nemo trace stats` does; `ttl_scale`
    multiplies the trace's TTLs. Returns the steady-state figures, the time series and the replay's counters."""
    from tierwise.nemo.replay import replay as run_replay

    opened = isinstance(engine, str)
    if not opened and (flash_size, zone_size, dram_size, options) != (None,) * 4:
        raise TierwiseError("flash_size, zone_size, dram_size and options open an engine by name; "
                            "the engine given is already open")
    limit = None if requests is None else parse_count(requests, "requests")
    reader = _reader(trace, format, skip_bad)
    eng = open_engine(engine, REPLAY_FLASH_SIZE if flash_size is None else flash_size, zone_size, dram_size, device,
                      **(options or {})) if opened else engine
    try:
        return run_replay(eng, reader, ReplayOptions(sample_every=sample_every, warmup=warmup, limit=limit,
                                                     progress=progress, rate=rate, arrivals=arrivals, profile=profile,
                                                     ttl_scale=ttl_scale))
    finally:
        if opened:
            _close(eng)


def _close(engine: Any) -> None:
    """Close an engine this module opened, and its device."""
    try:
        engine.close()
    finally:
        engine.device.close()


def _reader(trace: str | Path | Iterable, format: str | None, skip_bad: bool) -> Iterable:
    """A trace named by its spec opened, or a reader (or chunks) as given."""
    from tierwise.nemo.traces import open_trace

    return open_trace(trace, format=format, skip_bad=skip_bad) if isinstance(trace, (str, Path)) else trace


def bench(trace: str = BenchSettings.trace, engines: str = BenchSettings.engines,
          flash_size: Size = BenchSettings.flash_size, *, format: str | None = None,
          executor: str = DEFAULT_EXECUTOR, workers: int | None = None, address: str | None = None,
          plot: str | Path | None = None, **settings: Any) -> BenchResult:
    """The designs `engines` (comma-separated; `NAME@ssd` runs one in place on the conventional-SSD model) side by
    side on `trace` (read as `format`, default: detected), each on a fresh device of `flash_size`. `settings` are
    the other fields of `BenchSettings`: `zone_size` / `nemo_zone_size` (default: picked from the flash size),
    `dram_size`, `device`, `requests`, `options` ({engine: {option: value}}), `ablation`, `cache_sizes`, `rate`,
    `arrivals`, `profile`, ... Runs go to a process pool of `workers`, `serial`ly or to Ray (`executor="ray"`,
    `address`); `plot` is a folder for the plots. Returns one table row per design, with the ablation, the
    miss-ratio curve and each run's series."""
    from tierwise.nemo.bench import bench as run_bench
    from tierwise.nemo.traces import open_trace

    if format or not str(trace).startswith("synth:"):
        open_trace(trace, format=format)  # a missing, unknown or unrecognised trace is refused before any run starts
        if format:
            trace = f"{format}:{trace}"  # each run opens the trace from its spec
    st = BenchSettings(trace=str(trace), engines=engines, flash_size=flash_size, **settings)
    return run_bench(st, executor=executor, workers=workers, address=address, plot_dir=plot)


def sweep(config: dict[str, Any] | str | Path, *, executor: str = DEFAULT_EXECUTOR, workers: int | None = None,
          address: str | None = None) -> SweepResult:
    """One engine over the cartesian product of a parameter grid: `config` as `tierwise nemo sweep` reads it (a
    YAML file, or the same mapping: trace, engine, flash_size, zone_size, grid, ...). One row per run."""
    from tierwise.nemo.bench import load_sweep_config, sweep as run_sweep

    return run_sweep(config if isinstance(config, dict) else load_sweep_config(config), executor=executor,
                     workers=workers, address=address)


@dataclass
class TraceStats(Result):
    """What `tierwise nemo trace stats` reports: requests, objects, size percentiles (B, per request and per
    object), op mix, estimated Zipf alpha, and the malformed lines skipped."""

    trace: str
    requests: int
    objects: int
    mean_requests_per_object: float
    one_hit_object_share: float
    op_mix: dict[str, float]
    key_size: dict[str, float]
    value_size: dict[str, float]
    object_size: dict[str, float]
    object_size_per_object: dict[str, float]
    zipf_alpha: float
    bad_lines_skipped: int = 0
    bad_examples: list[str] = field(default_factory=list)


def trace_stats(spec: Any, *, format: str | None = None, skip_bad: bool = False) -> TraceStats:
    """Statistics of a trace file or `synth:PROFILE[:REQUESTS[:SEED]]` (or of a reader `open_trace` opened)."""
    from tierwise.nemo.traces import trace_stats as measure

    reader = _reader(spec, format, skip_bad)
    figures = measure(reader)
    return TraceStats(trace=str(getattr(reader, "path", spec)), **figures, bad_lines_skipped=reader.bad_lines,
                      bad_examples=list(reader.bad_examples))


def synth_trace(profile: str = SYNTH_PROFILE, requests: str | int = SYNTH_REQUESTS, seed: int = SYNTH_SEED,
                out: str | Path | None = None):
    """A synthetic trace calibrated to the paper's Twitter clusters (a `SyntheticTrace`: iterate it for request
    chunks; `.calibration` says what was fitted), also written to `out` when given (.csv, .bin/.oracleGeneral,
    .req)."""
    from tierwise.nemo.traces import SyntheticTrace, write_trace

    trace = SyntheticTrace(profile, parse_count(requests, "requests"), seed)
    if out is not None:
        write_trace(out, trace)
    return trace


def __getattr__(name: str):
    # the result types live beside the code that fills them, which loads compiled code: only on first use
    if name == "ReplayResult":
        from tierwise.nemo.replay import ReplayResult

        return ReplayResult
    if name in ("BenchResult", "SweepResult"):
        from tierwise.nemo.bench import BenchResult, SweepResult

        return {"BenchResult": BenchResult, "SweepResult": SweepResult}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
