"""Simulated device time: per-operation service times on a set of NAND dies, with queueing, so every design gets
per-get and per-set latency percentiles that do not depend on the machine the simulation runs on.

The model (its numbers and their sources: docs/nemo-devices-and-traces.md, "Simulated device time"):
- The device has `dies` independent parallel units ("dies": the drive's effective read parallelism, random-read
  IOPS x read latency). Page p of unit u (a zone, or an FTL erase block) lives on die (u * 7 + p) mod dies: every
  unit is striped page by page over all dies, as ZNS SSDs stripe a zone over all their dies; the offset u * 7 makes
  units start on different dies. The striping does not depend on the unit's size, so a scaled-down zone of a few
  MiB is spread like a 1 GiB one.
- Each die serves its operations first come, first served, and occupies the die for its whole service time (no
  program/erase suspension: a read behind a program or an erase waits for it, so read tails are on the
  pessimistic side). An operation completes at max(ready, die free) + service. Its work is booked on the die from
  the current request's *arrival*, not from when the operation is ready: requests are simulated one at a time, so
  an operation a request issues late (after its own earlier reads, or a GC copy inside a set) would otherwise
  reserve the die ahead of requests that arrive meanwhile and leave it idle until then; that idle time would be
  lost capacity, and a loaded device would saturate below its real throughput. Booking from the arrival keeps
  each die's total work and queue length right without an event calendar; when an operation's die is idle, the
  operation still waits for its own ready time.
- A page read occupies its die for `read_ns` (array read + transfer + controller, calibrated to the drive's queue
  depth 1 4 KiB read latency). Reads on the lookup path are *foreground*: the request waits for them, one after
  another, or all at once inside a batch (the parallel index-page fetch of a PBFG: the batch ends with its slowest
  read, and reads of one batch that land on the same die still queue behind each other). Reads an engine does for
  flushes, migration or GC are *background*: nobody waits for them, but they occupy their dies (so do the copies
  of an FTL's own garbage collection).
- Writes are posted: the host never waits for them (a set's latency counts only its foreground reads). Each die
  has a write buffer: every `unit_pages` pages written to a die become one program operation of `program_ns` on
  it, issued when the unit is full; a read queued behind it waits. The buffer is shared by all units (a program
  is counted by volume, not per zone), and `unit_pages` / `program_ns` are chosen so that all dies programming
  back to back give the drive's sustained sequential write bandwidth.
- A read of a page still in its die's write buffer (written, not yet programmed) is served by the controller: it
  costs `buffer_ns` of latency and no die time. (The buffer remembers the run of pages of the unit that wrote to
  it last; a page whose program is already issued is read from NAND, behind that program.)
- Erases: a zone reset (or an FTL block erase) of n pages credits each die with the pages of the unit it holds;
  every `block_pages` pages credited to a die are one erase operation of `erase_ns` on it. Erase work per byte is
  therefore the same whatever the simulated zone size (a real 1077 MiB ZN540 zone is ~4.6 erase blocks per die;
  a 4 MiB simulated zone credits each die with a fraction of one, and every few resets a die erases a whole
  block). Buffered pages of the erased unit are dropped.
- Functions take a `Ref` to the `Timing` bundle (tierwise.nemo.native, "state bundles by reference"); plain
  namedtuples work too (tests call them through small @njit wrappers).
- A request's latency is the time from its arrival (`begin_request`: trace timestamp or --rate) to the end of its
  last foreground read; requests arrive open-loop, so device queues build up when the load is high.

All times are integer nanoseconds and every rule above is deterministic, so a run with the same trace, seed and
arrivals gives the same percentiles anywhere.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import asdict, dataclass

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.nemo.native import internal

# p: the profile's parameters
ENABLED, DIES, READ_NS, PROGRAM_NS, UNIT_PAGES, ERASE_NS, BLOCK_PAGES, BUFFER_NS = range(8)
N_PARAMS = 8
# clock: the request being simulated
NOW, CURSOR, IN_BATCH, BATCH_END = range(4)
# buf rows: per-die write-buffer and erase state
B_UNIT, B_FIRST, ERASED = range(3)

Timing = namedtuple("Timing", [
    "p",  # int64[N_PARAMS]: the parameters above (ENABLED = 0: no timing, every call returns at once)
    "busy",  # int64[dies]: when each die is free again (ns)
    "fill",  # int64[dies]: pages buffered toward each die's next program operation
    "clock",  # int64[4]: arrival of the current request, its cursor (when its last foreground read ends), batch
    "buf",  # int64[3, dies]: per die, the unit (+1, 0 = none) and first page of the run its write buffer holds,
            # and the pages erased toward its next block erase
])


@dataclass(frozen=True)
class DeviceProfile:
    """A device's timing (see the module docstring for how each number is used)."""

    name: str
    description: str
    dies: int  # effective parallel units: random 4 KiB read IOPS x read latency
    read_us: float  # one 4 KiB page read occupies a die this long (queue depth 1 read latency)
    program_us: float  # one program operation on a die
    unit_kb: int  # bytes one program operation writes on one die (dies x unit_kb / program_us = write bandwidth)
    erase_ms: float  # one erase-block erase
    block_mb: float  # erase-block size per die
    buffer_us: float = 20.0  # a read served from the controller's write buffer
    source: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def write_mb_s(self) -> float:
        """Sustained write bandwidth (MB/s) when every die programs back to back."""
        return self.dies * self.unit_kb * 1024 / self.program_us

    @property
    def read_iops(self) -> float:
        """Random 4 KiB read IOPS when every die reads back to back."""
        return self.dies / self.read_us * 1e6


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
    n = max(1, dies)
    return Timing(np.zeros(N_PARAMS, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(4, np.int64),
                  np.zeros((3, n), np.int64))


def reset_state(t: Timing) -> None:
    """Timing off, every die idle and empty, clock at 0."""
    t.p[:] = 0
    t.busy[:] = 0
    t.fill[:] = 0
    t.clock[:] = 0
    t.buf[:] = 0


def timing_for(p: DeviceProfile, page_bytes: int = 4096) -> Timing:
    t = new_timing(p.dies)
    t.p[:] = [1, p.dies, round(p.read_us * 1000), round(p.program_us * 1000),
              max(1, round(p.unit_kb * 1024 / page_bytes)), round(p.erase_ms * 1e6),
              max(1, round(p.block_mb * 2**20 / page_bytes)), round(p.buffer_us * 1000)]
    return t


@internal(inline=True)
def _die(T, unit, page):
    return (unit * 7 + page) % T.p[DIES]


@internal(inline=True)
def _occupy(T, d, ready, service):
    """Die d does `service` ns of work for an operation ready at `ready`; returns when the operation completes.
    The work is booked from the current request's arrival (module docstring: no die reserved ahead)."""
    done = max(ready, T.busy[d]) + service
    T.busy[d] = max(T.busy[d], T.clock[NOW]) + service
    return done


@internal(inline=True)
def _buffered(T, d, unit, page):
    """Is page `page` of `unit` (on die d) still in the die's write buffer?"""
    return T.buf[B_UNIT, d] == unit + 1 and page >= T.buf[B_FIRST, d]


@internal
def begin_request(T, now):
    """A request arrives at `now` (ns): its foreground reads start then (outside any batch)."""
    T.clock[NOW] = now
    T.clock[CURSOR] = now
    T.clock[IN_BATCH] = 0
    T.clock[BATCH_END] = now


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
    if _buffered(T, d, unit, page):
        done = T.clock[CURSOR] + T.p[BUFFER_NS]
    else:
        done = _occupy(T, d, T.clock[CURSOR], T.p[READ_NS])
    if T.clock[IN_BATCH]:
        T.clock[BATCH_END] = max(T.clock[BATCH_END], done)
    else:
        T.clock[CURSOR] = done


@internal
def background_read(T, unit, page):
    """A read the request does not wait for (flush, migration, engine or FTL GC): it occupies its die."""
    if T.p[ENABLED] == 0:
        return
    d = _die(T, unit, page)
    if not _buffered(T, d, unit, page):
        _occupy(T, d, T.clock[CURSOR], T.p[READ_NS])


@internal
def program_pages(T, unit, first_page, n):
    """`n` pages written from `first_page` of `unit`: buffered, programmed a unit at a time on each die."""
    if T.p[ENABLED] == 0:
        return
    for page in range(first_page, first_page + n):
        d = _die(T, unit, page)
        if T.buf[B_UNIT, d] != unit + 1:  # the buffer now holds a run of this unit
            T.buf[B_UNIT, d] = unit + 1
            T.buf[B_FIRST, d] = page
        T.fill[d] += 1
        if T.fill[d] >= T.p[UNIT_PAGES]:
            T.fill[d] = 0
            T.buf[B_UNIT, d] = 0
            _occupy(T, d, T.clock[CURSOR], T.p[PROGRAM_NS])


@internal
def erase(T, unit, pages):
    """Erase pages [0, pages) of `unit` (a zone reset or an FTL block erase): each die holding some of them is
    credited with them, and erases a block (busy `erase_ns`) per `block_pages` pages credited."""
    if T.p[ENABLED] == 0:
        return
    dies = T.p[DIES]
    for k in range(min(pages, dies)):
        d = _die(T, unit, k)
        if T.buf[B_UNIT, d] == unit + 1:  # buffered pages of the unit are gone
            T.buf[B_UNIT, d] = 0
        T.buf[ERASED, d] += (pages - k + dies - 1) // dies  # pages of the unit on this die
        while T.buf[ERASED, d] >= T.p[BLOCK_PAGES]:
            T.buf[ERASED, d] -= T.p[BLOCK_PAGES]
            _occupy(T, d, T.clock[CURSOR], T.p[ERASE_NS])


# ---- profiles (docs/nemo-devices-and-traces.md, "Simulated device time", gives the derivation of each number) ------
# dies = random-read IOPS x read latency; program_us = unit_kb x dies / sequential write bandwidth; erase_ms and
# block_mb make a full 1077 MiB ZN540 zone reset take the measured ~16 ms on every die.

register_profile(DeviceProfile(
    name="zn540", description="Western Digital Ultrastar DC ZN540 ZNS SSD (TLC, 2 GiB zones of 1077 MiB): the paper's",
    dies=32, read_us=70.0, program_us=546.0, unit_kb=20, erase_ms=3.5, block_mb=7.3, buffer_us=20.0,
    source="ZN540 measured (SPDK fio, Doekemeijer et al. CLUSTER'23 data) + NVMeVirt WD_ZN540 config"))
register_profile(DeviceProfile(
    name="fdp", description="Samsung PM9D3a 7.68 TB class PCIe 5 datacenter TLC SSD (Flexible Data Placement class)",
    dies=130, read_us=65.0, program_us=470.0, unit_kb=24, erase_ms=3.5, block_mb=7.3, buffer_us=20.0,
    source="PM9D3a 7.68 TB spec listing (2.0M IOPS, 6.8 GB/s write, 65 us)"))
register_profile(DeviceProfile(
    name="consumer", description="Samsung 980 PRO 1 TB class consumer PCIe 4 NVMe SSD (TLC, past its SLC cache)",
    dies=65, read_us=65.0, program_us=532.0, unit_kb=12, erase_ms=3.5, block_mb=7.3, buffer_us=20.0,
    source="980 PRO 1 TB spec (1M IOPS), TechPowerUp post-cache 1.5 GB/s, V6 tR"))
register_profile(DeviceProfile(
    name="conventional", description="Samsung PM9A3 7.68 TB U.2 class enterprise TLC NVMe SSD (page-mapped FTL model)",
    dies=58, read_us=65.0, program_us=475.0, unit_kb=28, erase_ms=3.5, block_mb=7.3, buffer_us=20.0,
    source="PM9A3 U.2 spec (900K IOPS, 3.5 GB/s write), V6 tR/tPROG"))
