"""The one place the Nemo wing keeps its defaults: the replay's and the bench's settings, the zone size picked for a
flash size, and the size names renamed to the units convention (docs/cli.md). The replay driver, the bench, the
Python API and the CLI all read them from here; the module is free of compiled code, so the CLI starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tierwise.common.errors import TierwiseError
from tierwise.common.units import parse_count, parse_size

KiB, MiB = 1 << 10, 1 << 20
DEFAULT_RATE = 100_000.0  # requests per second arriving at the cache when replaying at a fixed rate
DEFAULT_PROFILE = "zn540"  # simulated device timing (tierwise.nemo.device.timing.PROFILES)
DEFAULT_ENGINE = "nemo"
DEFAULT_DEVICE = "mem"
DEFAULT_EXECUTOR = "process"  # bench and sweep runs: a local process pool
REPLAY_FLASH_SIZE = 256 * MiB
SYNTH_PROFILE = "twitter-merged"  # the synthetic trace (tierwise.nemo.traces.synth)
SYNTH_REQUESTS = 1_000_000
SYNTH_SEED = 0

# Zones picked for a flash size: Nemo writes one SetGroup per zone, so fewer, larger zones fill its SGs better; the
# set tiers of the baselines collect garbage a zone at a time and want many small ones. 4 MiB at most keeps
# 64 zones at the replay's default 256 MiB; 16 KiB at least holds an SG of two sets.
MIN_ZONES = {"nemo": 16}
BASELINE_MIN_ZONES = 64
ZONE_BOUNDS = (16 * KiB, 4 * MiB)

# sizes renamed to the units convention: name -> (old name, bytes per old unit, that unit as a size suffix)
RENAMED_SIZES = {"flash_size": ("flash_mb", MiB, "M"), "dram_size": ("dram_mb", MiB, "M"),
                 "zone_size": ("zone_kb", KiB, "K"), "nemo_zone_size": ("nemo_zone_kb", KiB, "K")}


def zone_size_for(engine: str, flash_size: int) -> int:
    """The zone size an engine runs on when none is given: the largest power of two that leaves it its minimum
    number of zones (`MIN_ZONES`), within `ZONE_BOUNDS`. Replay, bench and the API all pick zones this way."""
    most = flash_size // MIN_ZONES.get(engine, BASELINE_MIN_ZONES)
    low, high = ZONE_BOUNDS
    return min(high, max(low, 1 << (max(most, 1).bit_length() - 1)))


def renamed_size(name: str, value: str | int | None, old: float | None,
                 spell: Callable[[str], str] = str) -> int | None:
    """The bytes of size `name`, given as `value` ('24M', or bytes) or under its old name as `old` (MiB or KiB, see
    `RENAMED_SIZES`); None when neither is given. `spell` writes a name as the caller's user wrote it (a flag, a
    YAML key), for the errors."""
    old_name, unit, _ = RENAMED_SIZES[name]
    if old is None:
        return None if value is None else parse_size(value, spell(name))
    if value is not None:
        raise TierwiseError(f"{spell(old_name)} is the old name of {spell(name)}; give only {spell(name)}")
    try:
        return int(float(old) * unit)
    except (TypeError, ValueError):
        raise TierwiseError(f"{spell(old_name)}: cannot read {old!r} as a number; use {spell(name)} 24M") from None


def sizes_in_bytes(obj: Any, *names: str) -> None:
    """Read the size fields `names` of a settings dataclass ('24M' or bytes) as bytes, in place."""
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            setattr(obj, name, parse_size(value, name))


@dataclass
class ReplayOptions:
    """How the replay driver runs a trace (`tierwise.nemo.replay.replay`)."""

    sample_every: int = 100_000  # time-series row every this many requests
    warmup: float = 1.0  # device capacities written after the first reclaim before steady state
    warm_capacities: float = 1.0  # user bytes flashed (in device capacities) before steady state
    limit: int | None = None  # stop after this many requests
    strict: bool = True  # raise on a wrong/stale value
    progress: bool = True
    rate: float = DEFAULT_RATE  # arrivals per second (simulated time)
    profile: str | None = DEFAULT_PROFILE  # device timing profile; None keeps the device's own setting
    # "rate": request i arrives at i / rate seconds; "trace": at the trace's timestamps, the requests of one second
    # spread evenly over it (tierwise.nemo.traces.arrivals; a trace without timestamps is refused)
    arrivals: str = "rate"
    # the trace's TTLs times this (a downscaled trace's cache turns over in seconds of trace time, not hours: scaling
    # its TTLs keeps their ratio to the cache's retention); TTLs <= 0 mean none
    ttl_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.arrivals not in ("rate", "trace"):
            raise TierwiseError(f"arrivals must be 'rate' or 'trace', got {self.arrivals!r}")
        if not self.ttl_scale > 0:
            raise TierwiseError(f"ttl_scale must be positive, got {self.ttl_scale}")


@dataclass
class BenchSettings:
    """What `tierwise nemo bench` compares (`tierwise.nemo.bench.bench`). Sizes are bytes or strings such as '4M';
    a zone size left at None is picked from the flash size (`zone_size_for`)."""

    trace: str = "synth:twitter-merged:1M"
    engines: str = "nemo,log,set,kangaroo,fairywren"
    flash_size: int | str = 4 * MiB
    dram_size: int | str | None = None
    device: str = DEFAULT_DEVICE
    zone_size: int | str | None = None  # the baselines' zones
    nemo_zone_size: int | str | None = None  # Nemo's zones: one SetGroup each
    requests: int | None = None
    warmup: float = 1.0
    warm_capacities: float = 1.0
    sample_every: int = 50_000
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per engine name
    ablation: bool = True
    cache_sizes: tuple[float, ...] = (0.5, 2.0)  # x flash_size, for the miss-ratio curve
    ssd_op: float = 0.07
    rate: float = DEFAULT_RATE
    arrivals: str = "rate"
    profile: str = DEFAULT_PROFILE

    def __post_init__(self) -> None:
        sizes_in_bytes(self, "flash_size", "dram_size", "zone_size", "nemo_zone_size")
        if self.requests is not None:
            self.requests = parse_count(self.requests, "requests")

    def zone_size_of(self, engine: str) -> int:
        given = self.nemo_zone_size if engine == "nemo" else self.zone_size
        return given or zone_size_for(engine, self.flash_size)
