"""Simulated device time: per-operation service times on a set of NAND dies, with queueing, so every design gets
per-get and per-set latency percentiles that do not depend on the machine the simulation runs on.

The model (documented with its sources in docs/nemo-devices-and-traces.md, "Simulated device time"):
- The device has `dies` independent NAND dies. Page p of unit u (a zone, or an FTL erase block) lives on die
  (u * 7 + p) mod dies: zones are striped over every die, as ZNS SSDs stripe large zones.
- Each die serves operations first come, first served: an operation starts when it is issued and the die is free.
- A page read costs `read_ns` (array read + transfer). Reads on the lookup path are *foreground*: the request
  waits for them, one after another, or all at once inside a batch (the parallel index-page fetch of a PBFG).
  Reads an engine does for flushes, migration or GC are *background*: they occupy the die, nobody waits.
- Writes are posted to the device's write buffer: the host does not wait, but every `unit_pages` pages written to
  a die become one program operation of `program_ns` on it, and a read behind it waits.
- A zone reset (or an FTL erase) erases its pages: `erase_ns` per erase block's worth of pages on each die.
- Functions take a `Ref` to the `Timing` bundle (tierwise.nemo.native, "state bundles by reference").
- A request's latency is the time from its arrival (trace timestamp or --rate) to the end of its last foreground
  read; requests arrive open-loop, so device queues build up when the load is high.

All times are integer nanoseconds, so a run with the same seed and arrivals gives the same percentiles anywhere.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import asdict, dataclass

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.nemo.native import internal

# p: the profile's parameters
ENABLED, DIES, READ_NS, PROGRAM_NS, UNIT_PAGES, ERASE_NS, BLOCK_PAGES = range(7)
# clock: the request being simulated
NOW, CURSOR, IN_BATCH, BATCH_END = range(4)

Timing = namedtuple("Timing", [
    "p",  # int64[7]: the parameters above (ENABLED = 0: no timing, every call returns at once)
    "busy",  # int64[dies]: when each die is free again (ns)
    "fill",  # int64[dies]: pages buffered toward each die's next program operation
    "clock",  # int64[4]: arrival of the current request, its cursor (when its last foreground read ends), batch
])


@dataclass(frozen=True)
class DeviceProfile:
    """A device's NAND timing (see the module docstring for how each number is used)."""

    name: str
    description: str
    dies: int
    read_us: float  # one 4 KB page read: array read (tR) + transfer
    program_us: float  # one program operation on a die
    unit_kb: int  # bytes a program operation writes on one die
    erase_ms: float  # one erase-block erase
    block_mb: float  # erase-block size (per die)
    source: str

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, DeviceProfile] = {}


def register_profile(p: DeviceProfile) -> DeviceProfile:
    PROFILES[p.name] = p
    return p


def profile(name: str) -> DeviceProfile:
    if name not in PROFILES:
        raise TierwiseError(f"unknown device profile {name!r}; available: {', '.join(sorted(PROFILES))}")
    return PROFILES[name]


def new_timing(dies: int = 1) -> Timing:
    """A timing state with timing off (no profile)."""
    return Timing(np.zeros(7, np.int64), np.zeros(max(1, dies), np.int64), np.zeros(max(1, dies), np.int64),
                  np.zeros(4, np.int64))


def timing_for(p: DeviceProfile, page_bytes: int = 4096) -> Timing:
    t = new_timing(p.dies)
    t.p[:] = [1, p.dies, round(p.read_us * 1000), round(p.program_us * 1000),
              max(1, p.unit_kb * 1024 // page_bytes), round(p.erase_ms * 1e6),
              max(1, round(p.block_mb * 2**20 / page_bytes))]
    return t


@internal(inline=True)
def _die(T, unit, page):
    return (unit * 7 + page) % T.p[DIES]


@internal
def begin_request(T, now):
    """A request arrives at `now` (ns): its foreground reads start then."""
    T.clock[NOW] = now
    T.clock[CURSOR] = now


@internal
def latency(T):
    """Nanoseconds from the current request's arrival to the end of its last foreground read."""
    return T.clock[CURSOR] - T.clock[NOW]


@internal
def begin_batch(T):
    """Foreground reads until `end_batch` are issued together (they overlap on different dies)."""
    T.clock[IN_BATCH] = 1
    T.clock[BATCH_END] = T.clock[CURSOR]


@internal
def end_batch(T):
    T.clock[IN_BATCH] = 0
    T.clock[CURSOR] = max(T.clock[CURSOR], T.clock[BATCH_END])


@internal
def read(T, unit, page):
    """A foreground page read of page `page` of `unit` (zone or erase block)."""
    if T.p[ENABLED] == 0:
        return
    d = _die(T, unit, page)
    done = max(T.clock[CURSOR], T.busy[d]) + T.p[READ_NS]
    T.busy[d] = done
    if T.clock[IN_BATCH]:
        T.clock[BATCH_END] = max(T.clock[BATCH_END], done)
    else:
        T.clock[CURSOR] = done


@internal
def background_read(T, unit, page):
    """A read the request does not wait for (flush, migration, GC): it only occupies its die."""
    if T.p[ENABLED] == 0:
        return
    d = _die(T, unit, page)
    T.busy[d] = max(T.clock[CURSOR], T.busy[d]) + T.p[READ_NS]


@internal
def program_pages(T, unit, first_page, n):
    """`n` pages written from `first_page` of `unit`: buffered, programmed a unit at a time on each die."""
    if T.p[ENABLED] == 0:
        return
    for page in range(first_page, first_page + n):
        d = _die(T, unit, page)
        T.fill[d] += 1
        if T.fill[d] >= T.p[UNIT_PAGES]:
            T.fill[d] = 0
            T.busy[d] = max(T.clock[CURSOR], T.busy[d]) + T.p[PROGRAM_NS]


@internal
def erase(T, unit, pages):
    """Erase `pages` pages of `unit` (a zone reset or an FTL block erase): each die holding some of them is busy
    for its share of erase blocks."""
    if T.p[ENABLED] == 0:
        return
    dies = T.p[DIES]
    for k in range(min(pages, dies)):
        d = _die(T, unit, k)
        on_die = (pages - k + dies - 1) // dies  # pages of the unit on this die
        T.busy[d] = max(T.clock[CURSOR], T.busy[d]) + T.p[ERASE_NS] * on_die // T.p[BLOCK_PAGES]


# ---- profiles (docs/nemo-devices-and-traces.md, "Simulated device time", gives the derivation of each number) ------

register_profile(DeviceProfile(
    name="zn540", description="Western Digital Ultrastar DC ZN540 class ZNS SSD (TLC, 1077 MiB zones): the paper's",
    dies=32, read_us=70.0, program_us=1500.0, unit_kb=96, erase_ms=5.0, block_mb=24.0,
    source="WD ZN540 datasheet (random 4K read IOPS, sequential write MB/s); BiCS4 TLC tR / tPROG / tBERS"))
register_profile(DeviceProfile(
    name="fdp", description="PCIe 5 datacenter SSD with Flexible Data Placement (TLC)",
    dies=128, read_us=60.0, program_us=1800.0, unit_kb=96, erase_ms=5.0, block_mb=24.0,
    source="Samsung PM9D3a class datasheet (random 4K read IOPS, sequential write MB/s); TLC tR / tPROG / tBERS"))
register_profile(DeviceProfile(
    name="consumer", description="Consumer PCIe 4 NVMe SSD (TLC, no power-loss protection)",
    dies=16, read_us=65.0, program_us=1800.0, unit_kb=96, erase_ms=5.0, block_mb=24.0,
    source="Samsung 980 Pro class reviews (QD1 4K read latency, QD32 IOPS, post-cache write MB/s)"))
register_profile(DeviceProfile(
    name="conventional", description="Enterprise TLC NVMe SSD with a page-mapped FTL (the conventional-SSD model)",
    dies=64, read_us=70.0, program_us=1500.0, unit_kb=96, erase_ms=5.0, block_mb=24.0,
    source="Samsung PM9A3 class datasheet (random 4K read IOPS, sequential write MB/s); TLC tR / tPROG / tBERS"))
