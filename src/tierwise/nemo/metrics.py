"""The one metrics recorder every flash-cache engine reports to, so every design is measured the same way.

ALWA (nemo.md §1, project rule) = bytes written to the device (data, write-back, tombstones, padding, metadata,
index) / key+value bytes of *user* objects that reached flash. Engines call:

- `device_write(cause, nbytes)` for every byte they write, attributed to a cause (standard names in `CAUSES`);
  the sum over causes is the device byte count, which tests check against the device's own counters;
- `flashed_user(objects, kv_bytes, header_bytes)` when user objects reach flash (the ALWA denominator);
- `user_insert(nbytes)` / `dropped(objects, nbytes)` for accepted sets and user objects lost before flash;
- `get(hit, bytes_read, flash_reads, index_reads)` once per lookup;
- `flushed_sets(fills)` with the fill fraction of every set page written (one call per SetGroup / batch);
- `sample(requests, dram, objects)` from the replay loop, every N requests (the time series).

DRAM keys starting with "buffer" are data buffers (SG buffers, log segment buffers); all other keys are index
state (filters, hotness bits, maps). Bits/object is reported for the index alone and for everything (§3.8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

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

FILL_BINS = 20  # histogram of set fill in 5% steps


def is_buffer_key(name: str) -> bool:
    return name.startswith("buffer")


@dataclass
class _Snapshot:
    counters: dict[str, float]
    writes: dict[str, float]
    fill_hist: np.ndarray


@dataclass
class Metrics:
    sample_every: int = 0  # the replay samples a time-series row every this many requests (0 = never)
    counters: dict[str, float] = field(default_factory=dict)
    writes: dict[str, float] = field(default_factory=dict)
    fill_hist: np.ndarray = field(default_factory=lambda: np.zeros(FILL_BINS, np.int64))
    series: list[dict[str, Any]] = field(default_factory=list)
    dram_samples: list[dict[str, float]] = field(default_factory=list)
    warm_at_request: int | None = None
    _warm: _Snapshot | None = None
    _last_sample: _Snapshot | None = None

    # ---- recording ---------------------------------------------------------------------------------------------

    def _add(self, name: str, value: float) -> None:
        self.counters[name] = self.counters.get(name, 0) + value

    def device_write(self, cause: str, nbytes: int) -> None:
        self.writes[cause] = self.writes.get(cause, 0) + nbytes

    def device_read(self, cause: str, nbytes: int) -> None:
        """Reads outside lookups (write-back, migration, GC)."""
        self._add(f"read_{cause}_bytes", nbytes)

    def flashed_user(self, objects: int, kv_bytes: int, header_bytes: int) -> None:
        self._add("flashed_objects", objects)
        self._add("logical_bytes", kv_bytes)
        self._add("logical_header_bytes", header_bytes)

    def user_insert(self, nbytes: int) -> None:
        self._add("inserts", 1)
        self._add("insert_bytes", nbytes)

    def user_delete(self) -> None:
        self._add("deletes", 1)

    def dropped(self, objects: int, nbytes: int) -> None:
        self._add("dropped_objects", objects)
        self._add("dropped_bytes", nbytes)

    def rejected(self) -> None:
        """A set the engine refused (e.g. admission, too large)."""
        self._add("rejected", 1)

    def get(self, hit: bool, bytes_read: int = 0, flash_reads: int = 0, index_reads: int = 0) -> None:
        c = self.counters  # the hottest recorder: skip zero updates
        c["gets"] = c.get("gets", 0) + 1
        if hit:
            c["hits"] = c.get("hits", 0) + 1
        if bytes_read:
            c["get_bytes_read"] = c.get("get_bytes_read", 0) + bytes_read
            c["get_flash_reads"] = c.get("get_flash_reads", 0) + flash_reads
        if index_reads:
            c["get_index_reads"] = c.get("get_index_reads", 0) + index_reads
            c["gets_fetching_index"] = c.get("gets_fetching_index", 0) + 1

    def flushed_sets(self, fills: np.ndarray) -> None:
        """Fill fraction (0..1) of every set page in one flushed SetGroup (or one batch of set writes)."""
        fills = np.asarray(fills, np.float64)
        if fills.size == 0:
            return
        self.fill_hist += np.bincount(np.minimum((fills * FILL_BINS).astype(np.int64), FILL_BINS - 1),
                                      minlength=FILL_BINS)
        self._add("sets_flushed", fills.size)
        self._add("set_fill_sum", float(fills.sum()))
        self._add("sgs_flushed", 1)
        self._add("sg_fill_sum", float(fills.mean()))

    def count(self, name: str, value: float = 1) -> None:
        """Engine-specific event counters (migrations, evictions, PBFG fetches, ...), reported as-is."""
        self._add(name, value)

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
            "device_bytes_written": self._total_writes(snap),
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
        return _Snapshot(dict(self.counters), dict(self.writes), self.fill_hist.copy())

    @staticmethod
    def _total_writes(snap: _Snapshot) -> float:
        return float(sum(snap.writes.values()))

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

    def _summarise(self, now: _Snapshot, base: _Snapshot | None) -> dict[str, Any]:
        def c(name: str) -> float:
            return now.counters.get(name, 0) - (base.counters.get(name, 0) if base else 0)

        writes = {k: v - (base.writes.get(k, 0) if base else 0) for k, v in now.writes.items()}
        hist = now.fill_hist - (base.fill_hist if base else 0)
        device = float(sum(writes.values()))
        logical = c("logical_bytes")
        gets = c("gets")
        ratio = (lambda a, b: a / b if b else None)
        return {
            "device_bytes_written": device,
            "logical_bytes": logical,
            "alwa": ratio(device, logical),
            "alwa_headers_logical": ratio(device, logical + c("logical_header_bytes")),
            "alwa_with_dropped": ratio(device, logical + c("dropped_bytes")),
            "alwa_breakdown": {k: ratio(v, logical) for k, v in sorted(writes.items())},
            "write_bytes_by_cause": writes,
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
            "counters": {k: c(k) for k in sorted(now.counters)},
        }
