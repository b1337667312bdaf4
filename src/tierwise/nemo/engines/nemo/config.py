"""Nemo parameters (nemo.md §4), paper values scaled to laptop size per §11, and the flash geometry they imply."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tierwise.common.errors import TierwiseError
from tierwise.nemo.engines.nemo.format import INDEX_ROW_HEADER, ROW_CHECK
from tierwise.nemo.hashing import DEFAULT_SEED
from tierwise.nemo.index.bloom import FilterParams, group_row_bytes
from tierwise.nemo.layout import OBJ_HEADER, PAGE_SIZE, PAYLOAD, max_value_size

SG_META_PAGES = 2  # SG header page + SG trailer (commit) page around the S set pages
P_TH_SHARE = 4096 / 275_712  # the paper's p_th over its S (Table 3); §11 keeps this ratio when S is scaled down
DEFAULT_PBFG_CACHE_RATIO = 0.5  # Table 3: the index cache holds the PBFGs of 50% of the set offsets


@dataclass
class NemoConfig:
    sets_per_sg: int | None = None  # S; None = as many as fill one zone (the paper's SG = zone)
    buffered_sgs: int = 2  # M, in-memory SetGroups (paper: 2)
    # B: the SG flushed next (B[M-1]) takes every insert its set can hold; a full set falls back to the same set of
    # the younger buffers (ablation: off, B[M-1] only)
    buffer_fallback: bool = True
    # the artifact's FLUSH_THRESHOLD 90: a younger (secondary) SG's set takes an object only while it stays within
    # this fraction of its payload, so the next SG starts with room for the sets that overflowed
    secondary_threshold: float = 0.9
    flush_mode: str = "count"  # "count": flush after p_th failed inserts; "probability": flush w.p. p per failure
    # p_th (count mode) or p (probability mode); None = the paper's 1.5% of S, at least 1 (count) or 0.001
    flush_threshold: float | None = None
    # the fraction of set offsets whose PBFG is cached (the open index group comes on top); None = 0.5, unless
    # filter_budget sizes the cache instead
    pbfg_cache_ratio: float | None = None
    # instead: DRAM for set-level filters as a fraction of the filters of every live SG, the open index group
    # included (Table 6's "14.4 x 50%" read as a bound on all filter bits); excludes pbfg_cache_ratio
    filter_budget: float | None = None
    fp_rate: float = 0.001  # design false-positive rate of a set-level filter (paper: 0.1%)
    expected_object_bytes: float = 250.0  # key+value bytes per object, to size the filters (twitter-merged: 246)
    filter_fill: float = 0.9  # set fill the filters are sized for (the target SG fill)
    group_size: int | None = None  # G, SGs per index group; None = chosen so ceil(N/G) ≈ 7 (the paper's 7 pages)
    index_pages_per_pbfg: int = 7  # target ceil(N/G) when group_size is None
    # R, PBFG rows (set offsets) per 4 KB index page; None = as many as fit (fewest index writes). At the paper's
    # scale a row fills a page (R = 1), so fetches spread over S pages; packing many rows at a small S puts them on a
    # few pages, hence a few dies (docs/results-nemo.md, "Comparison"): 1 reproduces the paper's spread
    index_rows_per_page: int | None = None
    hot_window: float = 0.3  # hotness bits only for the oldest 30% of live SGs
    cooling: float = 0.1  # clear the hotness bits every 10% of cache writes (in SG flushes)
    write_back: bool = True  # hotness-aware write-back from the evicted SG
    write_back_cold: bool = True  # then also re-insert non-hot objects while space remains (artifact default)
    max_value_size: int = 2048  # largest value accepted (CacheLib small-item max)
    hash_seed: int = DEFAULT_SEED
    seed: int = 0  # RNG for probability-mode flushes

    def __post_init__(self) -> None:
        if self.buffered_sgs < 2:
            raise TierwiseError(f"Nemo needs at least 2 buffered SGs (got buffered_sgs={self.buffered_sgs})")
        if self.flush_mode not in ("count", "probability"):
            raise TierwiseError(f"flush_mode must be 'count' or 'probability', got {self.flush_mode!r}")
        if self.flush_mode == "probability" and self.flush_threshold is not None and not 0 < self.flush_threshold <= 1:
            raise TierwiseError(f"probability-mode flush_threshold must be in (0, 1], got {self.flush_threshold}")
        if self.pbfg_cache_ratio is not None and not 0 < self.pbfg_cache_ratio <= 1:
            raise TierwiseError(f"pbfg_cache_ratio must be in (0, 1], got {self.pbfg_cache_ratio}")
        if self.pbfg_cache_ratio is not None and self.filter_budget is not None:
            raise TierwiseError("give filter_budget or pbfg_cache_ratio, not both: each sizes the PBFG cache")
        if self.filter_budget is not None and not 0 < self.filter_budget <= 1:
            raise TierwiseError(f"filter_budget must be in (0, 1], got {self.filter_budget}")
        if not 0 < self.secondary_threshold <= 1:
            raise TierwiseError(f"secondary_threshold must be in (0, 1], got {self.secondary_threshold}")
        if not 0 < self.hot_window <= 1 or not 0 < self.cooling <= 1:
            raise TierwiseError("hot_window and cooling must be fractions in (0, 1]")
        if self.index_rows_per_page is not None and self.index_rows_per_page < 1:
            raise TierwiseError(f"index_rows_per_page must be at least 1, got {self.index_rows_per_page}")
        if self.sets_per_sg is not None and self.sets_per_sg < 1:
            raise TierwiseError(f"sets_per_sg must be >= 1, got {self.sets_per_sg}")
        if not 0 < self.max_value_size <= max_value_size(1):
            raise TierwiseError(f"max_value_size must be in 1..{max_value_size(1)}")

    def filter_params(self) -> FilterParams:
        """Set-level filter sized for the objects a set holds at `filter_fill` (nemo.md §3.5 caveat)."""
        expected = self.filter_fill * PAYLOAD / (self.expected_object_bytes + OBJ_HEADER)
        return FilterParams.for_objects(expected, self.fp_rate)

    def pbfg_cache_offsets(self, geo: "Geometry") -> int:
        """How many set offsets the PBFG cache holds (each costs live_groups rows of G filters)."""
        if self.filter_budget is None:
            ratio = DEFAULT_PBFG_CACHE_RATIO if self.pbfg_cache_ratio is None else self.pbfg_cache_ratio
            return max(1, math.floor(ratio * geo.sets))
        spare = self.filter_budget * geo.data_slots - geo.group_size  # filters per offset left after the open group
        if spare <= 0:
            raise TierwiseError(f"filter_budget {self.filter_budget} does not even cover the open index group "
                                f"({geo.group_size} of {geo.data_slots} SGs)")
        return max(1, min(geo.sets, math.floor(geo.sets * spare / (geo.live_groups * geo.group_size))))

    def p_threshold(self, sets: int) -> float:
        if self.flush_threshold is not None:
            return self.flush_threshold
        if self.flush_mode == "probability":
            return 0.001
        return max(1, math.ceil(P_TH_SHARE * sets))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Geometry:
    """Where SetGroups and index groups live on the device."""

    sets: int  # S
    zones_per_sg: int
    data_slots: int  # N, SGs on flash at most (FIFO ring of slots)
    group_size: int  # G
    live_groups: int  # L = ceil(N/G), written index groups that can cover live SGs
    rows_per_page: int  # R, PBFG rows (one per set offset) packed in one 4 KB index page
    index_block_pages: int  # header page + ceil(S/R) row pages
    index_zones: list[int]
    filter: FilterParams

    @property
    def sg_pages(self) -> int:
        return self.sets + SG_META_PAGES

    @property
    def row_bytes(self) -> int:
        return group_row_bytes(self.filter.m_bits, self.group_size)


def _index_zones_needed(block_bytes: int, zone_capacity: int, live_groups: int) -> int:
    # One block more than L can be live while the newest is written; a partly dead zone needs one zone of slack.
    if block_bytes <= zone_capacity:
        return math.ceil((live_groups + 1) / (zone_capacity // block_bytes)) + 1
    return (live_groups + 1) * math.ceil(block_bytes / zone_capacity)


def plan_geometry(cfg: NemoConfig, num_zones: int, zone_capacity: int) -> Geometry:
    """Split the zones into the SG ring and the index zones, choosing G so a PBFG spans ~7 index pages."""
    if zone_capacity % PAGE_SIZE:
        raise TierwiseError(f"zone capacity {zone_capacity} is not a multiple of the {PAGE_SIZE}-byte set size")
    sets = cfg.sets_per_sg or zone_capacity // PAGE_SIZE - SG_META_PAGES
    if sets < 1:
        raise TierwiseError(f"zone capacity {zone_capacity} B cannot hold an SG header, a set and a trailer")
    zps = math.ceil((sets + SG_META_PAGES) * PAGE_SIZE / zone_capacity)
    filt = cfg.filter_params()
    max_group = (PAGE_SIZE - INDEX_ROW_HEADER - ROW_CHECK) * 8 // filt.m_bits
    for n in range(num_zones // zps, 1, -1):
        g = cfg.group_size or max(1, math.ceil(n / cfg.index_pages_per_pbfg))
        if g > max_group:
            raise TierwiseError(f"group_size {g} too large: {g} filters of {filt.nbytes} B exceed one 4 KB index page "
                                f"(max {max_group}); raise fp_rate or lower group_size")
        live = math.ceil(n / g)
        rows = (PAGE_SIZE - INDEX_ROW_HEADER) // (group_row_bytes(filt.m_bits, g) + ROW_CHECK)
        rows = min(rows, cfg.index_rows_per_page or rows)
        block_pages = 1 + math.ceil(sets / rows)
        need = _index_zones_needed(block_pages * PAGE_SIZE, zone_capacity, live)
        if n * zps + need <= num_zones:
            first = n * zps
            return Geometry(sets, zps, n, g, live, rows, block_pages, list(range(first, first + need)), filt)
    raise TierwiseError(f"{num_zones} zones of {zone_capacity} B are too few for Nemo with S={sets} "
                        f"(need at least 2 SG slots plus index zones); use more zones or fewer sets per SG")
