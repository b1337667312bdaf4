"""A two-tier cache, as CacheLib's Navy pairs its small- and large-object engines: values above a size threshold
go to a large-object log (`block.py`) on its own zones, the rest to a small-object design on the first zones of the
same device.

Rules (compiled, over `TieredState`), so that a key lives in at most one tier and no older copy is ever served:
- set: a value above `threshold` is deleted from the small tier, then written to the large one; a smaller one is
  unlinked from the large tier's index (DRAM only), then written to the small one;
- get: the large tier's index decides (DRAM only): an entry there sends the get to the large tier, else the small
  tier answers;
- delete and flush go to both.

Both tiers record into one `MetricsArrays`, so every total (ALWA, miss ratio, reads) is the cache's; the large
tier's share of logical bytes and device writes is counted around each of its calls (`large_logical_bytes`,
`large_bytes_written`), and the replay counts gets of objects above the threshold (`large_gets`, `large_hits`):
`Metrics.summary()["tiers"]` gives each tier's miss ratio and ALWA. The deletes a set sends to the other tier count
in `deletes` (with Nemo as the small tier, each may fetch a PBFG to learn whether a tombstone is needed).
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo import metrics as mt
from tierwise.nemo.device import flash as fl
from tierwise.nemo.device.window import ZonePrefix
from tierwise.nemo.engines import make_engine, register_engine
from tierwise.nemo.engines.base import Engine, engine_delete, engine_flush, engine_get, engine_set, register_compiled
from tierwise.nemo.engines.block import BlockEngine, find, unlink
from tierwise.nemo.native import internal

TieredState = namedtuple("TieredState", ["dev", "m", "small", "large", "cfg"])  # cfg: int64[1], THRESHOLD
THRESHOLD = 0
SMALL_DESIGNS = ("nemo", "log", "set", "kangaroo", "fairywren")


@internal(inline=True)
def _large_begin(P):
    return P.m.counters[mt.C_LOGICAL_BYTES], P.dev.stats[fl.BYTES_WRITTEN]


@internal(inline=True)
def _large_end(P, before):
    c = P.m.counters
    c[mt.C_LARGE_LOGICAL_BYTES] += c[mt.C_LOGICAL_BYTES] - before[0]
    c[mt.C_LARGE_BYTES_WRITTEN] += P.dev.stats[fl.BYTES_WRITTEN] - before[1]


@internal
def get(P, key):
    indexed, hit, buf, start, n = find(P.large, key)
    if indexed:
        return hit, buf, start, n
    return engine_get(P.small, key)


@internal
def set_(P, key, value, expiry):
    if value.shape[0] > P.cfg[THRESHOLD]:
        engine_delete(P.small, key)
        before = _large_begin(P)
        ok = engine_set(P.large, key, value, expiry)
        _large_end(P, before)
        return ok
    before = _large_begin(P)
    unlink(P.large, key)  # its tombstone may seal a zone of the large tier
    _large_end(P, before)
    return engine_set(P.small, key, value, expiry)


@internal
def delete(P, key):
    before = _large_begin(P)
    engine_delete(P.large, key)
    _large_end(P, before)
    engine_delete(P.small, key)


@internal
def flush(P):
    engine_flush(P.small)
    flush_large(P)


register_compiled(TieredState, get=get, set=set_, delete=delete, flush=flush)


@internal
def flush_large(P):
    before = _large_begin(P)
    engine_flush(P.large)
    _large_end(P, before)


@njit(cache=True)
def _flush_large_entry(h):
    flush_large(h.ref)


@register_engine("tiered")
class TieredEngine(Engine):
    """`small` (a small-object design) on the first `small_zones` zones, a `block` log on the rest; values above
    `threshold` bytes (default: the small design's largest) go to the block log. Options of a tier are given as
    `small.NAME=value` / `large.NAME=value` (e.g. `small.flush_threshold=16`). `recover` recovers both tiers from
    flash (a Nemo small tier)."""

    name = "tiered"

    def __init__(self, device, metrics=None, *, small: str = "nemo", small_zones: int | None = None,
                 threshold: int | None = None, recover: bool = False, **tier_options: Any):
        super().__init__(device, metrics)
        if small not in SMALL_DESIGNS:
            raise TierwiseError(f"tiered: small must be one of {', '.join(SMALL_DESIGNS)}, got {small!r}")
        opts: dict[str, dict[str, Any]] = {"small": {}, "large": {}}
        for name, value in tier_options.items():
            tier, dot, option = name.partition(".")
            if not dot or tier not in opts:
                raise TierwiseError(f"bad option for engine 'tiered': {name} (its own: small, small_zones, threshold; "
                                    "a tier's: small.NAME or large.NAME)")
            opts[tier][option] = value
        if small == "nemo" and "filter_budget" not in opts["small"]:
            # every get of a key the block log lacks asks Nemo: with half of its PBFG offsets cached (Nemo's default)
            # half of those fetch an index page (CloudPhysics: 0.48 per get, +30 % bytes read); the small tier is a
            # small share of the device, so caching all of them is cheap (+28 bits per object there)
            opts["small"].setdefault("pbfg_cache_ratio", 1.0)
        n = device.num_zones
        small_zones = max(16, round(0.1 * n)) if small_zones is None else small_zones
        if not 0 < small_zones <= n - 2:
            raise TierwiseError(f"tiered: small_zones must leave the large tier 2 of the device's {n} zones, "
                                f"got {small_zones}")
        if recover:  # both tiers' contents come back from flash
            if small != "nemo":
                raise TierwiseError(f"tiered: only a nemo small tier can be recovered, not {small!r}")
            opts["small"]["recover"] = opts["large"]["recover"] = True
        self.small = make_engine(small, ZonePrefix(device, small_zones), metrics=self.metrics, **opts["small"])
        self.large = BlockEngine(device, self.metrics, zones=list(range(small_zones, n)), **opts["large"])
        self.threshold = self.small.max_value_size if threshold is None else threshold
        if not 0 <= self.threshold <= self.small.max_value_size:
            raise TierwiseError(f"tiered: threshold must be in 0..{self.small.max_value_size} (the small tier's "
                                f"largest value), got {threshold}")
        self.max_value_size = self.large.max_value_size
        self.size_split = self.threshold
        self.small_zones = small_zones
        cfg = np.array([self.threshold], np.int64)
        self._ready(TieredState(device.flash, self.metrics.arrays, self.small.state, self.large.state, cfg))

    def value_limit(self, key_len: int) -> int:
        return self.large.value_limit(key_len)

    def flush_large(self) -> None:
        """Write what the block log buffers (up to a page boundary): the server does at every Nemo SG flush, so
        its journal may retire large writes on Nemo's schedule."""
        self._check_usable()
        try:
            _flush_large_entry(self._handle)
        except (fl.DeviceFault, TierwiseError) as e:
            self._fault(e)

    # a Nemo small tier's own state, for the server (its journal follows Nemo's SG flushes)
    @property
    def next_seq(self) -> int:
        return self.small.next_seq

    @property
    def cfg(self):
        return self.small.cfg

    @property
    def recovery(self):
        return getattr(self.small, "recovery", None)

    def dram_bytes(self) -> dict[str, int]:
        return {**{f"{k}@small": v for k, v in self.small.dram_bytes().items()}, **self.large.dram_bytes()}

    def object_count(self) -> int:
        return self.small.object_count() + self.large.object_count()

    def config(self) -> dict:
        return {"engine": self.name, "threshold": self.threshold, "small_zones": self.small_zones,
                "large_zones": len(self.large.zones),
                **{f"small.{k}": v for k, v in self.small.config().items()},
                **{f"large.{k}": v for k, v in self.large.config().items()}}
