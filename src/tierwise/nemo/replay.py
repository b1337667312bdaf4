"""The one replay driver: any engine, any device, any trace, lookaside style (the simulator of the Nemo wing).

The request loop is compiled (`replay_slice`) and calls the engine's compiled get / set / delete directly, so a
replay runs at millions of requests a second whatever the design. Per request:
- the key is spelled from its id (`lookaside.spell_key`, the bytes `traces.key_bytes` gives);
- the request arrives at its simulated time (`--rate` requests/s, or the trace's timestamps) and the device's
  timing model (`device/timing.py`) gives its latency, recorded per kind (get / set / delete);
- a GET that misses issues a SET of that object (CacheBench `enableLookaside`), itself timed as a set;
- an object the engine cannot hold (a value over its `max_value_size`, a key outside 1..255 bytes) is never cached:
  its GETs miss, its SETs and DELETEs only count as `uncacheable` (a SET still removes an older cached value);
- every hit is compared byte for byte with the value of the key's current version (values are deterministic bytes
  per (key, version); a SET or DELETE in the trace bumps the version): a wrong or stale value counts in
  `wrong_values`, and fails the replay when `strict`;
- TTLs: the engine's clock follows the trace's timestamps; a SET with a TTL (x `ttl_scale`) stores an expiry of
  time + TTL, a lookaside refill the key's last TTL (or its GET's own); a hit on an object whose expiry has passed
  counts in `expired_served` (must stay 0) and fails the replay when `strict`.

Steady state (one rule for replay and bench): the window starts after the request at which (a) the device has
reclaimed space at least once (a zone reset or an FTL erase: the cache is full) and written `warmup` x its capacity
since, and (b) the user bytes that reached flash total `warm_capacities` x its capacity (so designs whose small log
wraps long before their sets are full are measured full too). `Metrics.mark_warm` restarts the metrics there.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np
from numba import njit
from rich.progress import MofNCompleteColumn, TextColumn

from tierwise.common.errors import TierwiseError
from tierwise.common.progress import progress_task
from tierwise.common.report import to_jsonable
from tierwise.common.results import Result
from tierwise.common.units import format_bytes
from tierwise.nemo import metrics as mt
from tierwise.nemo.defaults import ReplayOptions
from tierwise.nemo.device import flash as fl
from tierwise.nemo.device import ftl as ftl_model
from tierwise.nemo.device import timing
from tierwise.nemo.engines import make_engine
from tierwise.nemo.engines.base import MAX_EXPIRY, Engine, engine_delete, engine_get, engine_set
from tierwise.nemo.layout import MAX_KEY, PAGE_SIZE
from tierwise.nemo.lookaside import (POOL, POOL_BYTES, VersionTable, life_of, slot_of, spell_key, store_at, store_life,
                                     value_bytes, value_start, version_at)
from tierwise.nemo.native import borrow, internal, load_u64, ref_of
from tierwise.nemo.traces.arrivals import TraceClock, rate_arrivals

__all__ = ["ReplayOptions", "ReplayResult", "engine_on", "parse_engine_options", "replay", "value_bytes"]


REPLAY_COUNTERS = ("gets", "sets", "deletes", "lookaside_sets", "wrong_values", "uncacheable", "hits", "hit_bytes",
                   "expired_served")
GETS, SETS, DELETES, LOOKASIDE, WRONG, UNCACHEABLE, HITS, HIT_BYTES, EXPIRED_SERVED = range(len(REPLAY_COUNTERS))
FINISHED, WARM, WRONG_VALUE, EXPIRED_VALUE = range(4)  # slice outcomes
MAX_TTL = 1 << 30  # seconds: an expiry (time + TTL) stays within u32
_SLICE = 65536  # requests per compiled call at most (progress, samples and warm-up marks fall between calls)
FIRST_RECLAIM, DEVICE_NEED, LOGICAL_NEED, MARKED = range(4)  # the warm-up watch
_GET, _SET = 0, 1  # tierwise.nemo.traces.Op


@dataclass
class ReplayResult(Result):
    """What a replay measured: `summary` (the steady-state figures), `series` (a row every `sample_every` requests:
    the table of `to_dataframe()`), the engine's configuration, the replay's own counters and the device profile."""

    _rows: ClassVar[str] = "series"

    requests: int
    seconds: float
    summary: dict[str, Any]
    series: list[dict[str, Any]]
    engine_config: dict[str, Any]
    counters: dict[str, int] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    bad_lines: int = 0  # malformed trace lines skipped (skip_bad)
    bad_examples: list[str] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    @property
    def mean_hit_bytes(self) -> float | None:
        """Mean key + value bytes a hit returned (over the whole run)."""
        return self.counters["hit_bytes"] / self.counters["hits"] if self.counters.get("hits") else None

    def as_dict(self) -> dict[str, Any]:
        """What `tierwise nemo replay --json` writes."""
        return to_jsonable({
            "requests": self.requests, "seconds": self.seconds, "requests_per_second": self.requests_per_second,
            "engine": self.engine_config, "device_profile": self.profile, "replay": self.counters,
            "bad_lines_skipped": self.bad_lines, "summary": self.summary, "series": self.series})


@internal(inline=True)
def _same_bytes(a, a0, b, b0, n) -> bool:
    if a0 < 0 or b0 < 0 or a0 + n > a.shape[0] or b0 + n > b.shape[0]:
        return False
    diff = np.uint64(0)
    i = 0
    while i + 8 <= n:  # 8 bytes a step; no early exit (a mismatch is an error anyway)
        diff |= load_u64(a, a0 + i) ^ load_u64(b, b0 + i)
        i += 8
    while i < n:
        diff |= np.uint64(a[a0 + i] ^ b[b0 + i])
        i += 1
    return diff == 0


@internal
def _set(P, key, key_id, size, version, expiry, pool, max_value, rc, invalidate):
    """A SET of (key, version) as the replay issues it; a value beyond the engine's limit (or a key outside
    1..255 bytes) is never cached and, for a SET in the trace, must not leave the older cached value behind."""
    if size > max_value or not 1 <= key.shape[0] <= MAX_KEY:
        rc[UNCACHEABLE] += 1
        if invalidate and 1 <= key.shape[0] <= MAX_KEY:
            engine_delete(P, key)
        return
    start = value_start(key_id, version, size)
    engine_set(P, key, pool[start:start + size], expiry)


@internal(inline=True)
def _expiry(now, ttl):
    return min(now + ttl, MAX_EXPIRY) if ttl > 0 else 0


@internal(inline=True)
def _warm(P, warm):
    """Has the steady state begun (the rule in the module docstring)?"""
    F, m = P.dev, P.m
    written = F.stats[fl.BYTES_WRITTEN]
    if warm[FIRST_RECLAIM] < 0:
        if F.stats[fl.RESETS] + F.ftl.ctr[ftl_model.ERASES] == 0:
            return False
        warm[FIRST_RECLAIM] = written
    return written - warm[FIRST_RECLAIM] >= warm[DEVICE_NEED] and m.counters[mt.C_LOGICAL_BYTES] >= warm[LOGICAL_NEED]


@njit(cache=True)
def replay_slice(arena, E, ops, key_ids, key_sizes, value_sizes, ttls, times, arrivals, start, rows, count, pool,
                 max_value, split, strict, rc, keybuf, warm):
    """Replay requests [start, len(ops)) of a slice on the engine whose state E is pinned in `arena`. Returns
    (outcome, index): FINISHED at the end, WARM after the request that began the steady state (resume at index),
    WRONG_VALUE or EXPIRED_VALUE at the failing request."""
    # every array outlives this call: borrowed, they cost no reference counting below
    rows, pool, rc, keybuf, warm = borrow((rows, pool, rc, keybuf, warm))
    P = ref_of(arena, E)
    TR = P.dev.timing
    m = P.m
    for i in range(start, ops.shape[0]):
        now = np.int64(times[i])
        m.clock[0] = now
        kid, ksize = key_ids[i], np.int64(key_sizes[i])
        key = keybuf[:ksize]
        spell_key(kid, ksize, key)
        slot = slot_of(rows, kid)
        timing.begin_request(TR, arrivals[i])
        storable = 1 <= ksize <= MAX_KEY  # a key the cache cannot hold: every request of it misses
        if ops[i] == _GET:
            rc[GETS] += 1
            if storable:
                hit, buf, vstart, n = engine_get(P, key)
            else:
                hit, buf, vstart, n = False, keybuf, 0, 0
                mt.record_get(m, False, 0, 0, PAGE_SIZE)
            mt.record_latency(m, mt.L_GET, timing.latency(TR))
            version, size = version_at(rows, slot, np.int64(value_sizes[i]))
            expiry, ttl = life_of(rows, slot)
            large = 0 <= split < size  # a two-tier cache: a get of the large tier's size class
            if large:
                m.counters[mt.C_LARGE_GETS] += 1
            if not hit:
                rc[LOOKASIDE] += 1
                store_at(rows, count, slot, kid, version, size)
                if ttls[i] > 0:
                    ttl = np.int64(ttls[i])
                expiry = _expiry(now, ttl)
                store_life(rows, slot, expiry, ttl)
                timing.begin_request(TR, arrivals[i])  # the refill is a set of its own, issued on the miss
                _set(P, key, kid, size, version, expiry, pool, max_value, rc, False)
                mt.record_latency(m, mt.L_SET, timing.latency(TR))
            elif n != size or not _same_bytes(buf, vstart, pool, value_start(kid, version, size), n):
                rc[WRONG] += 1
                if strict:
                    return WRONG_VALUE, i
            elif expiry and expiry <= now:
                rc[EXPIRED_SERVED] += 1
                if strict:
                    return EXPIRED_VALUE, i
            else:
                rc[HITS] += 1
                rc[HIT_BYTES] += ksize + n
                if large:
                    m.counters[mt.C_LARGE_HITS] += 1
        elif ops[i] == _SET:
            rc[SETS] += 1
            version = version_at(rows, slot, 0)[0] + 1
            store_at(rows, count, slot, kid, version, value_sizes[i])
            ttl = max(np.int64(ttls[i]), 0)
            expiry = _expiry(now, ttl)
            store_life(rows, slot, expiry, ttl)
            _set(P, key, kid, np.int64(value_sizes[i]), version, expiry, pool, max_value, rc, True)
            mt.record_latency(m, mt.L_SET, timing.latency(TR))
        else:
            rc[DELETES] += 1
            if storable:
                engine_delete(P, key)
            else:
                rc[UNCACHEABLE] += 1
            store_at(rows, count, slot, kid, version_at(rows, slot, 0)[0] + 1, value_sizes[i])
            mt.record_latency(m, mt.L_DELETE, timing.latency(TR))
        if warm[MARKED] == 0 and _warm(P, warm):
            warm[MARKED] = 1
            return WARM, i + 1
    return FINISHED, ops.shape[0]


class _Run:
    """The per-replay state of the compiled loop: version table, counters, key buffer, warm-up watch."""

    def __init__(self, engine: Engine, opt: ReplayOptions):
        self.engine = engine
        self.opt = opt
        cap = engine.device.capacity_bytes
        self.table = VersionTable()
        self.rc = np.zeros(len(REPLAY_COUNTERS), np.int64)
        self.keybuf = np.zeros(1 << 16, np.uint8)
        self.warm = np.array([-1, int(opt.warmup * cap), int(opt.warm_capacities * cap), 0], np.int64)
        self.clock = TraceClock() if opt.arrivals == "trace" else None
        self.max_value = min(engine.max_value_size, POOL_BYTES - 1)  # replay values are slices of the pool

    def run(self, part: np.ndarray, first: int) -> None:
        """Replay one slice of a trace; `first` numbers its first request."""
        eng = self.engine
        cols = [np.ascontiguousarray(part[f]) for f in ("op", "key", "key_size", "value_size")]
        ttl = part["ttl"].astype(np.int64)
        if self.opt.ttl_scale != 1.0:
            ttl = np.where(ttl > 0, np.maximum(1, np.rint(ttl * self.opt.ttl_scale)), 0).astype(np.int64)
        cols += [np.minimum(ttl, MAX_TTL), np.ascontiguousarray(part["time"])]
        if self.clock is not None:  # the trace's timestamps
            every = self.opt.sample_every or _SLICE
            short = len(part) < min(_SLICE, every - first % every)  # the trace, or its chunk, ended in this slice
            arrivals = self.clock.arrivals(part["time"], ends_trace=short)
        else:
            arrivals = rate_arrivals(first, len(part), self.opt.rate)
        self.table.reserve(len(part))
        i = 0
        while True:
            try:
                outcome, i = replay_slice(eng.pinned.arena, eng.state, *cols, arrivals, i, self.table.rows,
                                          self.table.count, POOL, self.max_value, eng.size_split,
                                          self.opt.strict, self.rc, self.keybuf, self.warm)
            except (fl.DeviceFault, TierwiseError) as e:
                eng._fault(e)
            if outcome == FINISHED:
                return
            if outcome == WARM:
                eng.metrics.mark_warm(first + i)
                continue
            what = "an expired" if outcome == EXPIRED_VALUE else "a wrong or stale"
            raise TierwiseError(f"engine {eng.name} returned {what} value for key id {int(part['key'][i])} at "
                                f"request {first + i}")

    def counters(self) -> dict[str, int]:
        return dict(zip(REPLAY_COUNTERS, self.rc.tolist()))


def replay(engine: Engine, trace: Iterable[np.ndarray], options: ReplayOptions | None = None,
           total: int | None = None) -> ReplayResult:
    """Replay `trace` (REQUEST_DTYPE chunks, e.g. a reader of `tierwise.nemo.traces.open_trace`) on `engine`;
    `total` (default: the trace's own, where it knows it) sizes the progress bar."""
    opt = options or ReplayOptions()
    if opt.rate <= 0:
        raise TierwiseError(f"arrival rate must be positive, got {opt.rate}")
    if opt.profile is not None:
        engine.device.set_profile(opt.profile)
    metrics = engine.metrics
    run = _Run(engine, opt)
    done = 0
    next_sample = opt.sample_every
    total = total or getattr(trace, "total", None)
    total = min(total, opt.limit) if total and opt.limit else (total or opt.limit)
    t0 = time.perf_counter()
    with _progress(f"replay {engine.name}", total, opt.progress) as (bar, task):
        for chunk in _slices(trace, opt.limit, opt.sample_every or _SLICE):
            run.run(chunk, done)
            done += len(chunk)
            bar.update(task, advance=len(chunk))
            if opt.sample_every and done >= next_sample:
                row = metrics.sample(done, engine.dram_bytes(), engine.object_count())
                next_sample += opt.sample_every * ((done - next_sample) // opt.sample_every + 1)
                bar.update(task, info=_interval_figures(row, opt.sample_every))
    seconds = time.perf_counter() - t0
    if opt.sample_every and (not metrics.series or metrics.series[-1]["requests"] != done):
        metrics.sample(done, engine.dram_bytes(), engine.object_count())
    summary = metrics.summary(engine.dram_bytes(), engine.object_count())
    profile = engine.device.profile.as_dict() if engine.device.profile else None
    return ReplayResult(done, seconds, summary, metrics.series, dict(engine.config()), run.counters(), profile,
                        getattr(trace, "bad_lines", 0), list(getattr(trace, "bad_examples", [])))


@contextmanager
def _progress(description: str, total: int | None, enabled: bool) -> Iterator[tuple[Any, Any]]:
    """The project's bar; a trace of unknown length (a text file) counts its requests alone instead of 'n/?'."""
    with progress_task(description, total, enabled=enabled) as (bar, task):
        if total is None:
            bar.columns = tuple(TextColumn("{task.completed:,.0f} requests") if isinstance(c, MofNCompleteColumn)
                                else c for c in bar.columns)
        yield bar, task


def _interval_figures(row: dict[str, Any], every: int) -> str:
    """The bar's figures of the last sample interval (the series is windowed), labelled as such."""
    alwa, miss = row["alwa"], row["miss_ratio"]
    if alwa is None or miss is None:
        return ""
    return f"last {every:,}: ALWA {alwa:.3f}, miss {100 * miss:.1f}%"


def _slices(trace: Iterable[np.ndarray], limit: int | None, every: int, size: int = _SLICE) -> Iterable[np.ndarray]:
    """The trace in slices of at most `size` requests that end at every multiple of `every` (where samples go)."""
    done = 0
    for chunk in trace:
        start = 0
        while start < len(chunk):
            step = min(size, every - done % every, len(chunk) - start)
            part = chunk[start:start + step]
            if limit is not None:
                part = part[:limit - done]
            if len(part) == 0:
                return
            done += len(part)
            start += step
            yield part


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


def engine_on(device: Any, name: str, *, dram_size: int | None = None, **options: Any) -> Engine:
    """Engine `name` with `options` on `device`; with `dram_size` (bytes), refuse one whose measured DRAM exceeds
    that budget."""
    engine = make_engine(name, device, **options)
    used = sum(engine.dram_bytes().values())
    if dram_size is not None and used > dram_size:
        raise TierwiseError(f"engine {name} with these options needs {format_bytes(used)} of DRAM, more than the "
                            f"budget (--dram-size) of {format_bytes(dram_size)}; raise the budget or shrink the "
                            "engine's buffers/cache")
    return engine
