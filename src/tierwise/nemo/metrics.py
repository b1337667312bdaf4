"""The one metrics recorder every flash-cache engine reports to, so every design is measured the same way.

ALWA (nemo.md §1, project rule) = bytes written to the device (data, write-back, tombstones, padding, metadata,
index) / key+value bytes of *user* objects that reached flash. Engines record, from their compiled request paths,
into the arrays of `Metrics.arrays` (a `MetricsArrays` bundle; named slots below):

- `writes[cause]` for every byte they write, attributed to a cause (`CAUSES`); the sum over causes is the device
  byte count, which tests check against the device's own counters;
- `counters[...]`: user objects reaching flash (`logical_bytes`, the ALWA denominator), accepted and dropped
  inserts, lookups (hits, pages read), fills of the set pages written (`record_fills`), and each design's events
  (migrations, evictions, PBFG fetches, ...);
- `latency[kind]`: a log-scale histogram of each request's simulated latency (get, set, delete), filled by the
  replay driver from the device's timing model.

The Python methods (`count`, `get`, `device_write`, ...) write the same arrays. `sample(requests, dram, objects)`
adds a time-series row; `mark_warm` starts the steady-state window that `summary()` reports.

DRAM keys starting with "buffer" are data buffers (SG buffers, log segment buffers); all other keys are index
state (filters, hotness bits, maps). Bits/object is reported for the index alone and for everything (§3.8).
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from numba import njit

from tierwise.nemo.native import internal

CAUSES = (
    "user",  # key+value bytes of user objects (the logical bytes themselves)
    "object_headers",  # per-object headers of user objects
    "writeback",  # objects re-inserted by write-back / GC / migration copies (with their headers)
    "tombstone",  # delete markers (with headers)
    "padding",  # unused bytes of written pages
    "page_headers",  # page headers, SG header/trailer pages, other data-side metadata
    "index",  # on-flash index pages
    "other",
)
W_USER, W_OBJECT_HEADERS, W_WRITEBACK, W_TOMBSTONE, W_PADDING, W_PAGE_HEADERS, W_INDEX, W_OTHER = range(len(CAUSES))

COUNTERS = (
    # requests
    "gets", "hits", "get_bytes_read", "get_flash_reads", "get_index_reads", "gets_fetching_index",
    "inserts", "insert_bytes", "deletes", "dropped_objects", "dropped_bytes", "rejected",
    # user objects that reached flash (the ALWA denominator) and the fill of the set pages written
    "flashed_objects", "logical_bytes", "logical_header_bytes",
    "sets_flushed", "set_fill_sum", "sgs_flushed", "sg_fill_sum",
    # reads outside lookups, by cause
    "read_writeback_bytes", "read_writeback_check_bytes", "read_log_bytes", "read_migration_bytes", "read_gc_bytes",
    "read_rmw_bytes", "read_delete_bytes",
    # damaged pages met (read as empty / a miss)
    "corrupt_pages", "corrupt_set_pages",
    # TTLs: lookups that met an expired copy (a miss), expired objects dropped instead of written or copied
    "expired_misses", "expired_dropped_objects", "expired_dropped_bytes",
    # a two-tier cache: gets of objects above its size threshold (the replay counts them), and the large tier's
    # share of the logical bytes and device writes (the small tier's is the rest)
    "large_gets", "large_hits", "large_logical_bytes", "large_bytes_written",
    # Nemo
    "tombstones", "delete_index_reads", "writeback_objects", "writeback_hot", "writeback_cold", "writeback_shadowed",
    "sg_evictions", "evicted_objects", "recoveries",
    # set tiers (Set, Kangaroo, FairyWREN)
    "gc_zones", "gc_set_copies",
    # Kangaroo
    "migrations_threshold", "migrated_objects_threshold", "migrated_bytes_threshold", "threshold_drops",
    "readmissions",
    # FairyWREN
    "migrations_passive", "migrated_objects_passive", "migrated_bytes_passive",
    "migrations_active", "migrated_objects_active", "migrated_bytes_active",
)
(C_GETS, C_HITS, C_GET_BYTES_READ, C_GET_FLASH_READS, C_GET_INDEX_READS, C_GETS_FETCHING_INDEX,
 C_INSERTS, C_INSERT_BYTES, C_DELETES, C_DROPPED_OBJECTS, C_DROPPED_BYTES, C_REJECTED,
 C_FLASHED_OBJECTS, C_LOGICAL_BYTES, C_LOGICAL_HEADER_BYTES,
 C_SETS_FLUSHED, C_SET_FILL_SUM, C_SGS_FLUSHED, C_SG_FILL_SUM,
 C_READ_WRITEBACK, C_READ_WRITEBACK_CHECK, C_READ_LOG, C_READ_MIGRATION, C_READ_GC, C_READ_RMW, C_READ_DELETE,
 C_CORRUPT_PAGES, C_CORRUPT_SET_PAGES,
 C_EXPIRED_MISSES, C_EXPIRED_DROPPED_OBJECTS, C_EXPIRED_DROPPED_BYTES,
 C_LARGE_GETS, C_LARGE_HITS, C_LARGE_LOGICAL_BYTES, C_LARGE_BYTES_WRITTEN,
 C_TOMBSTONES, C_DELETE_INDEX_READS, C_WRITEBACK_OBJECTS, C_WRITEBACK_HOT, C_WRITEBACK_COLD, C_WRITEBACK_SHADOWED,
 C_SG_EVICTIONS, C_EVICTED_OBJECTS, C_RECOVERIES,
 C_GC_ZONES, C_GC_SET_COPIES,
 C_MIGRATIONS_THRESHOLD, C_MIGRATED_OBJECTS_THRESHOLD, C_MIGRATED_BYTES_THRESHOLD, C_THRESHOLD_DROPS,
 C_READMISSIONS,
 C_MIGRATIONS_PASSIVE, C_MIGRATED_OBJECTS_PASSIVE, C_MIGRATED_BYTES_PASSIVE,
 C_MIGRATIONS_ACTIVE, C_MIGRATED_OBJECTS_ACTIVE, C_MIGRATED_BYTES_ACTIVE) = range(len(COUNTERS))
_SLOT = {name: i for i, name in enumerate(COUNTERS)}

FILL_BINS = 20  # histogram of set fill in 5% steps

# Latency histograms: one row per request kind; log-linear buckets of integer nanoseconds (values below 64 ns
# exact, then 32 buckets per power of two: at most 3% wide), up to 2^46 ns.
LATENCY_KINDS = ("get", "set", "delete")
L_GET, L_SET, L_DELETE = range(3)
_SUB = 32
LATENCY_BINS = 2 * _SUB + 40 * _SUB
PERCENTILES = (50.0, 99.0, 99.9, 99.99)

# `clock` (int64[1]) is the cache's time in seconds, what object expiries are compared with (replay: the trace's
# timestamps; server: unix time). It lives here because every layer of every design reaches this bundle.
MetricsArrays = namedtuple("MetricsArrays", ["counters", "writes", "fill_hist", "latency", "clock"])


def new_arrays() -> MetricsArrays:
    return MetricsArrays(np.zeros(len(COUNTERS), np.float64), np.zeros(len(CAUSES), np.float64),
                         np.zeros(FILL_BINS, np.int64), np.zeros((len(LATENCY_KINDS), LATENCY_BINS), np.int64),
                         np.zeros(1, np.int64))


# ---- compiled recorders -----------------------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def latency_bin(ns):
    if ns < 2 * _SUB:
        return max(ns, 0)
    msb = 63
    while (ns >> msb) == 0:
        msb -= 1
    shift = msb - 5  # ns >> shift is in [32, 64)
    return min(LATENCY_BINS - 1, 2 * _SUB + (msb - 6) * _SUB + ((ns >> shift) - _SUB))


def bin_upper_ns(b: int) -> int:
    """The largest latency (ns) bucket `b` holds."""
    if b < 2 * _SUB:
        return b
    octave, sub = divmod(b - 2 * _SUB, _SUB)
    shift = octave + 1
    return ((sub + _SUB + 1) << shift) - 1


@internal
def record_latency(m, kind, ns):
    m.latency[kind, latency_bin(ns)] += 1


@njit(cache=True)
def record_fills(m, used, payload, as_group):
    """Fill (used bytes / payload) of set pages written; `as_group`: they are one SetGroup (its mean fill is one
    sample of the SG fill)."""
    total = 0
    for u in used:
        f = u / payload
        m.fill_hist[min(np.int64(f * FILL_BINS), FILL_BINS - 1)] += 1
        total += u
    m.counters[C_SETS_FLUSHED] += used.shape[0]
    m.counters[C_SET_FILL_SUM] += total / payload
    if as_group and used.shape[0]:
        m.counters[C_SGS_FLUSHED] += 1
        m.counters[C_SG_FILL_SUM] += total / payload / used.shape[0]


@internal(inline=True)
def record_expired(m, dropped):
    """(objects, key+value bytes) that `layout.page_drop_expired` dropped."""
    if dropped[0]:
        m.counters[C_EXPIRED_DROPPED_OBJECTS] += dropped[0]
        m.counters[C_EXPIRED_DROPPED_BYTES] += dropped[1]


@internal(inline=True)
def record_get(m, hit, flash_reads, index_reads, page_size):
    c = m.counters
    c[C_GETS] += 1
    if hit:
        c[C_HITS] += 1
    if flash_reads + index_reads:
        c[C_GET_BYTES_READ] += (flash_reads + index_reads) * page_size
        c[C_GET_FLASH_READS] += flash_reads
    if index_reads:
        c[C_GET_INDEX_READS] += index_reads
        c[C_GETS_FETCHING_INDEX] += 1


# ---- the Python recorder ------------------------------------------------------------------------------------------------

def is_buffer_key(name: str) -> bool:
    return name.startswith("buffer")


@dataclass
class _Snapshot:
    counters: np.ndarray
    writes: np.ndarray
    fill_hist: np.ndarray
    latency: np.ndarray
    extra: dict[str, float]


@dataclass
class Metrics:
    arrays: MetricsArrays = field(default_factory=new_arrays)
    extra: dict[str, float] = field(default_factory=dict)  # counters outside `COUNTERS` (Python-side only)
    series: list[dict[str, Any]] = field(default_factory=list)
    dram_samples: list[dict[str, float]] = field(default_factory=list)
    warm_at_request: int | None = None
    _warm: _Snapshot | None = None
    _last_sample: _Snapshot | None = None

    # ---- recording ---------------------------------------------------------------------------------------------

    def count(self, name: str, value: float = 1) -> None:
        """Add to a named counter (design events: migrations, evictions, PBFG fetches, ...), reported as-is."""
        slot = _SLOT.get(name)
        if slot is None:
            self.extra[name] = self.extra.get(name, 0) + value
        else:
            self.arrays.counters[slot] += value

    def device_write(self, cause: str, nbytes: int) -> None:
        self.arrays.writes[CAUSES.index(cause)] += nbytes

    def device_read(self, cause: str, nbytes: int) -> None:
        """Reads outside lookups (write-back, migration, GC)."""
        self.count(f"read_{cause}_bytes", nbytes)

    def flashed_user(self, objects: int, kv_bytes: int, header_bytes: int) -> None:
        c = self.arrays.counters
        c[C_FLASHED_OBJECTS] += objects
        c[C_LOGICAL_BYTES] += kv_bytes
        c[C_LOGICAL_HEADER_BYTES] += header_bytes

    def user_insert(self, nbytes: int) -> None:
        self.arrays.counters[C_INSERTS] += 1
        self.arrays.counters[C_INSERT_BYTES] += nbytes

    def user_delete(self) -> None:
        self.arrays.counters[C_DELETES] += 1

    def dropped(self, objects: int, nbytes: int) -> None:
        self.arrays.counters[C_DROPPED_OBJECTS] += objects
        self.arrays.counters[C_DROPPED_BYTES] += nbytes

    def rejected(self) -> None:
        """A set the engine refused (e.g. admission, too large)."""
        self.arrays.counters[C_REJECTED] += 1

    def get(self, hit: bool, bytes_read: int = 0, flash_reads: int = 0, index_reads: int = 0) -> None:
        c = self.arrays.counters
        c[C_GETS] += 1
        c[C_HITS] += bool(hit)
        c[C_GET_BYTES_READ] += bytes_read
        c[C_GET_FLASH_READS] += flash_reads
        c[C_GET_INDEX_READS] += index_reads
        c[C_GETS_FETCHING_INDEX] += index_reads > 0

    def flushed_sets(self, fills: np.ndarray) -> None:
        """Fill fraction (0..1) of every set page in one flushed SetGroup."""
        fills = np.asarray(fills, np.float64)
        if fills.size:
            record_fills(self.arrays, fills, 1.0, True)

    @property
    def counters(self) -> dict[str, float]:
        """The counters recorded so far (non-zero ones), by name."""
        return self._counter_dict(self.arrays.counters, self.extra)

    @property
    def writes(self) -> dict[str, float]:
        """Bytes written so far, by cause (causes with bytes)."""
        return {c: float(v) for c, v in zip(CAUSES, self.arrays.writes.tolist()) if v}

    def sample(self, requests: int, dram: Mapping[str, int], objects: int) -> dict[str, Any]:
        """Append one time-series row: cumulative request count, windowed ALWA/miss ratio since the last row."""
        snap = self._snapshot()
        window = self._summarise(snap, self._last_sample)
        row = {
            "requests": requests,
            "objects": objects,
            "alwa": window["alwa"],
            "miss_ratio": window["miss_ratio"],
            "mean_sg_fill": window["mean_sg_fill"],
            "device_bytes_written": float(snap.writes.sum()),
            **self._dram_row(dram, objects),
        }
        self.series.append(row)
        if self.warm_at_request is not None:
            self.dram_samples.append(self._dram_row(dram, objects))
        self._last_sample = snap
        return row

    def mark_warm(self, requests: int) -> None:
        """Steady state starts here: `summary()` reports deltas from this point."""
        self.warm_at_request = requests
        self._warm = self._snapshot()
        self.dram_samples.clear()

    # ---- reporting ---------------------------------------------------------------------------------------------

    def summary(self, dram: Mapping[str, int] | None = None, objects: int | None = None,
                steady: bool = True) -> dict[str, Any]:
        """All figures, over the steady-state window if warm-up was marked (and `steady`), else over the run."""
        out = self._summarise(self._snapshot(), self._warm if steady else None)
        out["window"] = "steady" if steady and self._warm is not None else "whole run"
        out["warm_at_request"] = self.warm_at_request
        if dram is not None and objects is not None:
            out["dram"] = self._dram_row(dram, objects)
            out["dram"]["breakdown_bytes"] = dict(dram)
            if self.dram_samples:
                for key in ("index_bits_per_object", "total_bits_per_object"):
                    vals = [s[key] for s in self.dram_samples if s[key] is not None]
                    out["dram"][f"{key}_mean"] = float(np.mean(vals)) if vals else None
                    out["dram"][f"{key}_max"] = float(np.max(vals)) if vals else None
        return out

    # ---- internals ---------------------------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        a = self.arrays
        return _Snapshot(a.counters.copy(), a.writes.copy(), a.fill_hist.copy(), a.latency.copy(), dict(self.extra))

    @staticmethod
    def _counter_dict(counters: np.ndarray, extra: Mapping[str, float]) -> dict[str, float]:
        out = {name: float(v) for name, v in zip(COUNTERS, counters.tolist()) if v}
        out.update(extra)
        return out

    @staticmethod
    def _dram_row(dram: Mapping[str, int], objects: int) -> dict[str, Any]:
        index = sum(v for k, v in dram.items() if not is_buffer_key(k))
        buffers = sum(v for k, v in dram.items() if is_buffer_key(k))
        return {
            "index_bytes": index,
            "buffer_bytes": buffers,
            "index_bits_per_object": index * 8 / objects if objects else None,
            "total_bits_per_object": (index + buffers) * 8 / objects if objects else None,
        }

    @staticmethod
    def _percentiles(hist: np.ndarray) -> dict[str, float | None]:
        """p50 / p99 / p99.9 / p99.99 in microseconds (each the upper edge of its bucket), and the mean."""
        total = int(hist.sum())
        out: dict[str, float | None] = {}
        cum = np.cumsum(hist)
        for q in PERCENTILES:
            if not total:
                out[f"p{q:g}_us"] = None
                continue
            b = int(np.searchsorted(cum, q / 100 * total, side="left"))
            out[f"p{q:g}_us"] = bin_upper_ns(min(b, LATENCY_BINS - 1)) / 1000
        uppers = np.array([bin_upper_ns(b) for b in range(LATENCY_BINS)], np.float64)
        out["mean_us"] = float((hist * uppers).sum() / total / 1000) if total else None
        out["count"] = total
        return out

    def _summarise(self, now: _Snapshot, base: _Snapshot | None) -> dict[str, Any]:
        counters = now.counters - (base.counters if base else 0)
        extra = {k: v - (base.extra.get(k, 0) if base else 0) for k, v in now.extra.items()}
        named = self._counter_dict(counters, extra)

        def c(name: str) -> float:
            return named.get(name, 0.0)

        writes = now.writes - (base.writes if base else 0)
        hist = now.fill_hist - (base.fill_hist if base else 0)
        lat = now.latency - (base.latency if base else 0)
        device = float(writes.sum())
        logical = c("logical_bytes")
        gets = c("gets")
        ratio = (lambda a, b: a / b if b else None)
        by_cause = {k: float(v) for k, v in zip(CAUSES, writes.tolist()) if v or k in now_causes(now)}
        tiers = None
        if c("large_gets") or c("large_logical_bytes") or c("large_bytes_written"):
            large = {"gets": c("large_gets"), "hits": c("large_hits"), "logical_bytes": c("large_logical_bytes"),
                     "device_bytes_written": c("large_bytes_written")}
            small = {"gets": gets - large["gets"], "hits": c("hits") - large["hits"],
                     "logical_bytes": logical - large["logical_bytes"],
                     "device_bytes_written": device - large["device_bytes_written"]}
            tiers = {name: {**t, "miss_ratio": ratio(t["gets"] - t["hits"], t["gets"]),
                            "alwa": ratio(t["device_bytes_written"], t["logical_bytes"])}
                     for name, t in (("small", small), ("large", large))}
        return {
            "tiers": tiers,  # a two-tier cache's figures per tier (None otherwise)
            "device_bytes_written": device,
            "logical_bytes": logical,
            "alwa": ratio(device, logical),
            "alwa_headers_logical": ratio(device, logical + c("logical_header_bytes")),
            "alwa_with_dropped": ratio(device, logical + c("dropped_bytes")),
            "alwa_breakdown": {k: ratio(v, logical) for k, v in sorted(by_cause.items())},
            "write_bytes_by_cause": by_cause,
            "inserts": c("inserts"),
            "dropped_fraction": ratio(c("dropped_objects"), c("inserts")),
            "gets": gets,
            "miss_ratio": ratio(gets - c("hits"), gets),
            "bytes_read_per_get": ratio(c("get_bytes_read"), gets),
            "flash_reads_per_get": ratio(c("get_flash_reads"), gets),
            "index_reads_per_get": ratio(c("get_index_reads"), gets),
            "index_fetch_fraction": ratio(c("gets_fetching_index"), gets),
            "mean_set_fill": ratio(c("set_fill_sum"), c("sets_flushed")),
            "mean_sg_fill": ratio(c("sg_fill_sum"), c("sgs_flushed")),
            "sgs_flushed": c("sgs_flushed"),
            "set_fill_histogram": {f"{i * 100 // FILL_BINS}-{(i + 1) * 100 // FILL_BINS}%": int(v)
                                   for i, v in enumerate(hist)},
            "latency": {kind: self._percentiles(lat[i]) for i, kind in enumerate(LATENCY_KINDS)},
            "counters": dict(sorted(named.items())),
        }


def now_causes(snap: _Snapshot) -> set[str]:
    """Causes with bytes in a snapshot (a window reports every cause the run wrote, even at 0 in the window)."""
    return {k for k, v in zip(CAUSES, snap.writes.tolist()) if v}
