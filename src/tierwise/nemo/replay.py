"""Drive any `Engine` with a trace, lookaside style, and sample its metrics (the simulator of the Nemo wing).

Lookaside (CacheBench `enableLookaside`): a GET that misses issues a SET of that object. Values are deterministic
bytes per (key, version) — a SET or DELETE in the trace bumps the key's version — so every hit is checked against
the value the cache must hold; a wrong or stale value counts in `wrong_values` (and fails the replay when `strict`).

Steady state (nemo.md §5, project default): the first zone reset marks the end of the first fill; after a further
`warmup` × device capacity of device writes the metrics window restarts (`Metrics.mark_warm`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.common.progress import progress_task
from tierwise.nemo.engines import make_engine
from tierwise.nemo.engines.base import Engine
from tierwise.nemo.lookaside import value_bytes
from tierwise.nemo.traces import Op, keys_of


@dataclass
class ReplayOptions:
    sample_every: int = 100_000  # time-series row every this many requests
    warmup: float = 1.0  # device capacities written after the first zone reset before steady state
    limit: int | None = None  # stop after this many requests
    strict: bool = True  # raise on a wrong/stale value
    progress: bool = True
    compiled: bool = True  # use the engine's compiled replay loop where it has one (same results, much faster)


@dataclass
class ReplayResult:
    requests: int
    seconds: float
    summary: dict[str, Any]
    series: list[dict[str, Any]]
    engine_config: dict[str, Any]
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "seconds": self.seconds, "requests_per_second": self.requests_per_second,
                "engine": self.engine_config, "replay": self.counters, "summary": self.summary,
                "series": self.series}


class _Warmup:
    """Watches the device counters for the end of warm-up (engine-agnostic: every design resets zones)."""

    def __init__(self, device: Any, factor: float):
        self.device = device
        self.need = factor * device.capacity_bytes
        self.first_reset_bytes: int | None = None

    def done(self) -> bool:
        st = self.device.stats
        if self.first_reset_bytes is None:
            if st.resets == 0:
                return False
            self.first_reset_bytes = st.bytes_written
        return st.bytes_written - self.first_reset_bytes >= self.need


def replay(engine: Engine, trace: Iterable[np.ndarray], options: ReplayOptions | None = None,
           total: int | None = None) -> ReplayResult:
    opt = options or ReplayOptions()
    metrics = engine.metrics
    warm = _Warmup(engine.device, opt.warmup)
    versions: dict[int, tuple[int, int]] = {}  # key id -> (version, value size) the cache should hold
    counters = {"gets": 0, "sets": 0, "deletes": 0, "lookaside_sets": 0, "wrong_values": 0, "uncacheable": 0}
    done = 0
    next_sample = opt.sample_every
    total = min(total, opt.limit) if total and opt.limit else (total or opt.limit)
    t0 = time.perf_counter()
    fast = engine.compiled_replay(opt.strict) if opt.compiled and hasattr(engine, "compiled_replay") else None
    with progress_task(f"replay {engine.name}", total) as (bar, task):
        for chunk in _slices(trace, opt.limit):
            if fast is not None:
                fast.run(chunk, done)
            else:
                _replay_slice(engine, chunk, versions, counters, opt.strict, done)
            done += len(chunk)
            bar.update(task, advance=len(chunk))
            if metrics.warm_at_request is None and warm.done():
                metrics.mark_warm(done)
            if opt.sample_every and done >= next_sample:
                row = metrics.sample(done, engine.dram_bytes(), engine.object_count())
                next_sample += opt.sample_every * ((done - next_sample) // opt.sample_every + 1)
                alwa, miss = row["alwa"], row["miss_ratio"]
                bar.update(task, info=f"ALWA {alwa:.3f} miss {miss:.3f}" if alwa and miss is not None else "")
    seconds = time.perf_counter() - t0
    if opt.sample_every and (not metrics.series or metrics.series[-1]["requests"] != done):
        metrics.sample(done, engine.dram_bytes(), engine.object_count())
    summary = metrics.summary(engine.dram_bytes(), engine.object_count())
    return ReplayResult(done, seconds, summary, metrics.series, dict(engine.config()),
                        fast.counters() if fast is not None else counters)


def _replay_slice(engine: Engine, chunk: np.ndarray, versions: dict[int, tuple[int, int]],
                  counters: dict[str, int], strict: bool, done: int) -> None:
    """One slice, request by request, through the engine's Python API."""
    keys = keys_of(chunk)
    ops = chunk["op"].tolist()
    ids = chunk["key"].tolist()
    sizes = chunk["value_size"].tolist()
    for op, kid, key, size in zip(ops, ids, keys, sizes):
        if op == Op.GET:
            counters["gets"] += 1
            got = engine.get(key)
            ver, vsize = versions.get(kid, (0, size))
            if got is None:
                counters["lookaside_sets"] += 1
                _set(engine, key, kid, ver, vsize, counters, invalidate=False)
                versions[kid] = (ver, vsize)
            elif got != value_bytes(kid, ver, vsize):
                counters["wrong_values"] += 1
                if strict:
                    raise TierwiseError(f"engine {engine.name} returned a wrong or stale value for key id "
                                        f"{kid} at request {done}")
        elif op == Op.SET:
            counters["sets"] += 1
            ver = versions.get(kid, (0, 0))[0] + 1
            _set(engine, key, kid, ver, size, counters, invalidate=True)
            versions[kid] = (ver, size)
        else:
            counters["deletes"] += 1
            engine.delete(key)
            versions[kid] = (versions.get(kid, (0, 0))[0] + 1, size)
        done += 1


def _slices(trace: Iterable[np.ndarray], limit: int | None, size: int = 4096) -> Iterable[np.ndarray]:
    """The trace in slices of at most `size` requests (warm-up and samples are checked between slices)."""
    done = 0
    for chunk in trace:
        for start in range(0, len(chunk), size):
            part = chunk[start:start + size]
            if limit is not None:
                part = part[:limit - done]
            if len(part) == 0:
                return
            done += len(part)
            yield part


def _set(engine: Engine, key: bytes, kid: int, version: int, size: int, counters: dict[str, int],
         invalidate: bool) -> None:
    if size > engine.max_value_size or not 1 <= len(key) <= 255:
        counters["uncacheable"] += 1  # beyond the engine's tiny-object limit: never cached, always a miss
        if invalidate and 1 <= len(key) <= 255:
            engine.delete(key)  # a SET the cache cannot take must not leave the older value behind
    else:
        engine.set(key, value_bytes(kid, version, size))


def parse_engine_options(pairs: Iterable[str]) -> dict[str, Any]:
    """`name=value` strings (CLI `--opt`) to keyword options; values parse as int, float, bool or stay strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise TierwiseError(f"engine option {pair!r} is not name=value")
        low = text.lower()
        if low in ("true", "false"):
            out[name] = low == "true"
        elif low in ("none", "null"):
            out[name] = None
        else:
            for cast in (int, float):
                try:
                    out[name] = cast(text)
                    break
                except ValueError:
                    continue
            else:
                out[name] = text
    return out


def open_engine(name: str, *, flash_mb: float, zone_kb: int = 4096, dram_mb: float | None = None,
                device: str = "mem", **options: Any) -> Engine:
    """An engine on a fresh device of `flash_mb` MiB in zones of `zone_kb` KiB; with `dram_mb`, refuse a
    configuration whose measured DRAM exceeds the budget."""
    from tierwise.nemo.device import open_device

    zone = zone_kb * 1024
    dev = open_device(device, flash_bytes=int(flash_mb * 2**20), zone_size=zone)
    engine = make_engine(name, dev, **options)
    if dram_mb is not None:
        used = sum(engine.dram_bytes().values())
        if used > dram_mb * 2**20:
            raise TierwiseError(f"engine {name} with these options needs {used / 2**20:.1f} MiB of DRAM, more than "
                                f"--dram-mb {dram_mb}; raise the budget or shrink the engine's buffers/cache")
    return engine
