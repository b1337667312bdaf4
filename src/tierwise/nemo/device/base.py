"""The zoned-device interface every engine writes to: a Python API over the compiled device core (`flash.py`).

A zoned device is split into `num_zones` zones of `zone_size` bytes; only the first `zone_capacity` bytes of a zone
are writable, and only sequentially at the zone's write pointer. Conditions, transitions and the open/active limits
follow the Linux kernel's zoned block model (`include/uapi/linux/blkzoned.h`, null_blk / NVMe ZNS behaviour), so an
engine tested on the emulator behaves the same on a real ZNS SSD.

The state machine and the I/O are implemented once, compiled, in `flash.py`; engines call it from their compiled
request paths with the device's `flash` bundle, and the methods here call the same functions. A backend only builds
that bundle (its `kind`, mapping, file descriptors) and releases it.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo.device import flash as fl
from tierwise.nemo.device import ftl as ftl_model
from tierwise.nemo.device import timing
from tierwise.nemo.native import Pinned, ref_of

BLOCK_SIZE = 4096
MAX_DIES = 1024  # timing arrays are allocated for this many dies, so a profile can be chosen at any time


class ZoneError(TierwiseError):
    """A request that breaks a zone rule (write off the write pointer, read past it, full zone, bad index...)."""


class SimulatedCrash(Exception):
    """Raised by a fault-injecting device at the simulated power loss (deliberately not a TierwiseError)."""


class ZoneCondition(enum.IntEnum):
    """Zone conditions with the kernel's codes (`BLK_ZONE_COND_*`)."""

    NOT_WP = 0x0
    EMPTY = 0x1
    IMP_OPEN = 0x2
    EXP_OPEN = 0x3
    CLOSED = 0x4
    READONLY = 0xD
    FULL = 0xE
    OFFLINE = 0xF


class ZoneType(enum.IntEnum):
    """Zone types with the kernel's codes (`BLK_ZONE_TYPE_*`)."""

    CONVENTIONAL = 1
    SEQWRITE_REQ = 2
    SEQWRITE_PREF = 3


@dataclass(frozen=True)
class ZoneInfo:
    """One zone as `report_zones` describes it; positions in bytes (`start` from device start, `write_pointer`
    relative to the zone start)."""

    index: int
    start: int
    size: int
    capacity: int
    write_pointer: int
    condition: ZoneCondition
    type: ZoneType = ZoneType.SEQWRITE_REQ

    @property
    def remaining(self) -> int:
        return 0 if self.condition == ZoneCondition.FULL else self.capacity - self.write_pointer


class DeviceStats:
    """I/O counters, read from the device's compiled counters: totals plus per-zone counts, and on the
    conventional-SSD model the FTL's NAND programs, GC copies and erases (DLWA = NAND bytes / host bytes; 1 on a
    zoned device, which has no device GC)."""

    def __init__(self, flash: fl.Flash):
        self._f = flash

    def _stat(self, i: int) -> int:
        return int(self._f.stats[i])

    bytes_written = property(lambda self: self._stat(fl.BYTES_WRITTEN))
    bytes_read = property(lambda self: self._stat(fl.BYTES_READ))
    write_ios = property(lambda self: self._stat(fl.WRITE_IOS))
    read_ios = property(lambda self: self._stat(fl.READ_IOS))
    resets = property(lambda self: self._stat(fl.RESETS))
    finishes = property(lambda self: self._stat(fl.FINISHES))
    zone_bytes_written = property(lambda self: self._f.zone_stats[fl.Z_WRITTEN].copy())
    zone_bytes_read = property(lambda self: self._f.zone_stats[fl.Z_READ].copy())
    zone_resets = property(lambda self: self._f.zone_stats[fl.Z_RESETS].copy())
    zone_finishes = property(lambda self: self._f.zone_stats[fl.Z_FINISHES].copy())
    nand_pages_written = property(lambda self: int(self._f.ftl.ctr[ftl_model.NAND_PAGES]))
    gc_page_copies = property(lambda self: int(self._f.ftl.ctr[ftl_model.GC_COPIES]))
    erases = property(lambda self: int(self._f.ftl.ctr[ftl_model.ERASES]))
    trims = property(lambda self: int(self._f.ftl.ctr[ftl_model.TRIMS]))

    @property
    def reclaims(self) -> int:
        """Zone resets plus FTL erases: the first one marks the end of the first fill (the replay's warm-up)."""
        return self.resets + self.erases

    @property
    def nand_bytes_written(self) -> int:
        if self._f.kind == fl.BLOCK:
            return self.nand_pages_written * self._f.block
        return self.bytes_written

    @property
    def dlwa(self) -> float:
        return self.nand_bytes_written / self.bytes_written if self.bytes_written else 1.0

    def as_dict(self) -> dict[str, int | float]:
        out = {"bytes_written": self.bytes_written, "bytes_read": self.bytes_read, "write_ios": self.write_ios,
               "read_ios": self.read_ios, "resets": self.resets, "finishes": self.finishes,
               "nand_bytes_written": self.nand_bytes_written, "dlwa": self.dlwa}
        if self._f.kind == fl.BLOCK:
            out |= {"gc_page_copies": self.gc_page_copies, "erases": self.erases, "trims": self.trims}
        return out


# ---- compiled entry points of the Python API (one call each; the work is in flash.py) ------------------------------

@njit(cache=True)
def _append(arena, F, z, src, n):
    return fl.append(ref_of(arena, F), z, src, 0, n)


@njit(cache=True)
def _read_into(arena, F, z, offset, out):
    fl.read_into(ref_of(arena, F), z, offset, out, True)


@njit(cache=True)
def _reset(arena, F, z):
    fl.reset(ref_of(arena, F), z)


@njit(cache=True)
def _finish(arena, F, z):
    fl.finish(ref_of(arena, F), z)


@njit(cache=True)
def _open(arena, F, z):
    fl.open_zone(ref_of(arena, F), z)


@njit(cache=True)
def _close(arena, F, z):
    fl.close_zone(ref_of(arena, F), z)


def as_bytes_array(data) -> np.ndarray:
    """Any bytes-like object or numpy array as a flat uint8 array (no copy where possible)."""
    if isinstance(data, np.ndarray):
        arr = np.ascontiguousarray(data)
        return arr.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast("B"), np.uint8)


class ZonedDevice:
    """A zoned block device: report/reset/finish/open/close zones, append at the write pointer, read below it.

    Offsets and lengths are bytes; every write is a whole number of `block_size` blocks. Violations raise
    `ZoneError`. `max_open_zones` / `max_active_zones` of 0 mean "no limit", as in sysfs. `flash` is the bundle
    compiled code uses; `set_profile` turns on simulated device time (tierwise.nemo.device.timing).
    """

    kind = fl.MEM
    flash: fl.Flash

    def __init__(self, num_zones: int, zone_size: int, zone_capacity: int | None = None, *,
                 block_size: int = BLOCK_SIZE, max_open_zones: int = 0, max_active_zones: int = 0):
        zone_capacity = zone_size if zone_capacity is None else zone_capacity
        if num_zones <= 0:
            raise ZoneError(f"num_zones must be positive, got {num_zones}")
        if block_size <= 0 or block_size % 512:
            raise ZoneError(f"block_size must be a positive multiple of 512, got {block_size}")
        if zone_size <= 0 or zone_size % block_size:
            raise ZoneError(f"zone_size {zone_size} must be a positive multiple of the block size {block_size}")
        if not 0 < zone_capacity <= zone_size or zone_capacity % block_size:
            raise ZoneError(f"zone_capacity {zone_capacity} must be a multiple of {block_size} in (0, zone_size={zone_size}]")
        if max_open_zones < 0 or max_active_zones < 0:
            raise ZoneError("max_open_zones / max_active_zones must be >= 0 (0 = no limit)")
        if max_open_zones and max_active_zones and max_open_zones > max_active_zones:
            raise ZoneError(f"max_open_zones {max_open_zones} exceeds max_active_zones {max_active_zones}")
        self.block_size = block_size
        self.zone_size = zone_size
        self.zone_capacity = zone_capacity
        self.num_zones = num_zones
        self.max_open_zones = max_open_zones
        self.max_active_zones = max_active_zones
        self.profile: timing.DeviceProfile | None = None
        self._closed = False

    def _build(self, data: np.ndarray, *, fds: np.ndarray | None = None, starts: np.ndarray | None = None,
               direct: bool = False, fault: np.ndarray | None = None, ftl: ftl_model.Ftl | None = None,
               stage_bytes: int = 1 << 20) -> None:
        """Make the `flash` bundle of this backend (called by the backend's constructor once its storage exists)."""
        n = self.num_zones
        stage = _aligned(stage_bytes if self.kind in (fl.FILE, fl.SYSCALL) else self.block_size)
        no_fault = np.array([-1, 0, 0, 0, 0, 0, 0], np.int64)
        self.flash = fl.Flash(
            self.kind, n, self.zone_size, self.zone_capacity, self.block_size, self.max_open_zones,
            self.max_active_zones, data, np.zeros(n, np.int64), np.full(n, fl.EMPTY, np.int64),
            np.zeros(6, np.int64), np.zeros((4, n), np.int64),
            fds if fds is not None else np.full(n, -1, np.int64),
            starts if starts is not None else np.zeros(n, np.int64), stage, int(direct),
            fault if fault is not None else no_fault, np.zeros(5, np.int64), ftl or ftl_model.no_ftl(),
            timing.new_timing(MAX_DIES), np.zeros(2, np.int64))
        self._pinned = Pinned(self.flash)
        self.stats = DeviceStats(self.flash)

    # ---- backend hooks ---------------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Make written data durable."""

    def _release(self) -> None:
        """Free backend resources (files, mappings)."""

    def _fault_error(self) -> Exception:
        """The exception for the compiled core's last fault (backends add their own cases)."""
        code, z, a, b, c = (int(x) for x in self.flash.err)
        msg = {
            fl.E_CLOSED: "device is closed",
            fl.E_ZONE_RANGE: f"zone index {z} out of range [0, {self.num_zones})",
            fl.E_FULL: f"zone {z} is FULL: reset it before writing",
            fl.E_LENGTH: f"zone {z}: write length {a} is not a positive multiple of the block size {b}",
            fl.E_CAPACITY: f"zone {z}: write of {a} B at write pointer {b} exceeds zone capacity {self.zone_capacity}",
            fl.E_READ_RANGE: f"zone {z}: read [{a}, {a + b}) reaches past the write pointer "
                             f"{self.write_pointer(z) if 0 <= z < self.num_zones else 0}",
            fl.E_ACTIVE_LIMIT: f"zone {z}: too many active zones (max_active_zones={a})",
            fl.E_OPEN_LIMIT: f"zone {z}: too many open zones (max_open_zones={a}, all explicitly open)",
            fl.E_NOT_OPEN: f"zone {z} is {_cond_name(a)}: only an open zone can be closed",
            fl.E_OPEN_FULL: f"zone {z} is FULL and cannot be opened",
            fl.E_IO: f"zone {z}: I/O failed: {os.strerror(a) if a > 0 else 'unknown error'}",
            fl.E_SHORT: f"zone {z}: short read at offset {a}",
            fl.E_BLOCK_ONLY: "in-place writes and trims need a conventional (block) device",
            fl.E_BLOCK_RANGE: f"{b} B at {a}: must be whole {self.block_size} B pages inside the device",
        }.get(code, f"device fault {code} (zone {z})")
        return ZoneError(msg)

    def raise_fault(self) -> None:
        """Raise what the compiled core's last `DeviceFault` means (engines call this when one escapes)."""
        err = self._fault_error()
        self.flash.err[:] = 0
        raise err from None

    def _run(self, fn, *args):
        try:
            return fn(self._pinned.arena, self.flash, *args)
        except fl.DeviceFault:
            self.raise_fault()

    # ---- timing ----------------------------------------------------------------------------------------------
    def set_profile(self, name: str | timing.DeviceProfile | None) -> None:
        """Simulate this device's service times (a profile name from `timing.PROFILES`), or none (None)."""
        t = self.flash.timing
        timing.reset_state(t)
        self.profile = None
        if name is None:
            return
        p = timing.profile(name) if isinstance(name, str) else name
        if p.dies > MAX_DIES:
            raise ZoneError(f"profile {p.name}: {p.dies} dies, more than the {MAX_DIES} the model holds")
        t.p[:] = timing.timing_for(p, self.block_size).p
        self.profile = p

    # ---- geometry --------------------------------------------------------------------------------------------
    @property
    def capacity_bytes(self) -> int:
        """Writable bytes over all zones."""
        return self.num_zones * self.zone_capacity

    def _check_zone(self, z: int) -> None:
        if self._closed:
            raise ZoneError("device is closed")
        if not (type(z) is int or isinstance(z, (int, np.integer))) or not 0 <= z < self.num_zones:
            raise ZoneError(f"zone index {z!r} out of range [0, {self.num_zones})")

    def zone_info(self, z: int) -> ZoneInfo:
        self._check_zone(z)
        return ZoneInfo(index=int(z), start=int(z) * self.zone_size, size=self.zone_size,
                        capacity=self.zone_capacity, write_pointer=self.write_pointer(z),
                        condition=ZoneCondition(int(self.flash.cond[z])))

    def report_zones(self) -> list[ZoneInfo]:
        return [self.zone_info(z) for z in range(self.num_zones)]

    def write_pointer(self, z: int) -> int:
        """Bytes written in zone `z` since its last reset; `zone_capacity` once the zone is FULL."""
        self._check_zone(z)
        return self.zone_capacity if self.flash.cond[z] == fl.FULL else int(self.flash.wp[z])

    def condition(self, z: int) -> ZoneCondition:
        self._check_zone(z)
        return ZoneCondition(int(self.flash.cond[z]))

    @property
    def open_zones(self) -> int:
        c = self.flash.cond
        return int(np.count_nonzero((c == fl.IMP_OPEN) | (c == fl.EXP_OPEN)))

    @property
    def active_zones(self) -> int:
        c = self.flash.cond
        return int(np.count_nonzero((c == fl.IMP_OPEN) | (c == fl.EXP_OPEN) | (c == fl.CLOSED)))

    # ---- data path -------------------------------------------------------------------------------------------
    def append(self, z: int, data) -> int:
        """Write `data` at the write pointer of zone `z`; returns the zone-relative offset it landed at."""
        arr = as_bytes_array(data)
        self._check_zone(z)
        return int(self._run(_append, int(z), arr, arr.size))

    def write(self, z: int, offset: int, data) -> None:
        """Write at an explicit zone offset, which must be the write pointer (the sequential-write rule)."""
        wp = self.write_pointer(z)
        if offset != wp:
            raise ZoneError(f"zone {z}: write at offset {offset} is not at the write pointer {wp}")
        self.append(z, data)

    def _check_read(self, z: int, offset: int, length: int) -> None:
        self._check_zone(z)
        if length <= 0:
            raise ZoneError(f"zone {z}: read length must be positive, got {length}")
        if offset < 0:
            raise ZoneError(f"zone {z}: negative read offset {offset}")

    def read_into(self, z: int, offset: int, buf) -> None:
        """Read `len(buf)` bytes at `offset` of zone `z` into the writable buffer `buf` (no allocation)."""
        out = buf if isinstance(buf, np.ndarray) else np.frombuffer(memoryview(buf).cast("B"), np.uint8)
        out = out.reshape(-1).view(np.uint8)
        self._check_read(z, offset, out.size)
        self._run(_read_into, int(z), int(offset), out)

    def read(self, z: int, offset: int, length: int) -> bytes:
        """Read `length` bytes at `offset` of zone `z`; the range must lie below the write pointer."""
        out = np.empty(max(length, 0), np.uint8)
        self.read_into(z, offset, out)
        return out.tobytes()

    # ---- zone management ---------------------------------------------------------------------------------------
    def reset(self, z: int) -> None:
        """Rewind the write pointer of zone `z` to 0 and drop its data (EMPTY)."""
        self._check_zone(z)
        self._run(_reset, int(z))

    def finish(self, z: int) -> None:
        """Move zone `z` to FULL (no more writes until reset); unwritten space reads as zeros."""
        self._check_zone(z)
        self._run(_finish, int(z))

    def open_zone(self, z: int) -> None:
        """Explicitly open zone `z` (EXP_OPEN); counts against the open and active limits."""
        self._check_zone(z)
        self._run(_open, int(z))

    def close_zone(self, z: int) -> None:
        """Close an open zone (CLOSED; EMPTY again if nothing was written); closing a CLOSED zone is a no-op."""
        self._check_zone(z)
        self._run(_close, int(z))

    def sync(self) -> None:
        if not self._closed:
            self._sync()

    def close(self) -> None:
        if not self._closed:
            self._sync()
            self.flash.fault[fl.DEAD] = 1  # compiled code holding the bundle must not touch released storage
            self._release()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_zones={self.num_zones}, zone_size={self.zone_size}, "
                f"zone_capacity={self.zone_capacity}, block_size={self.block_size})")


def _cond_name(c: int) -> str:
    try:
        return ZoneCondition(c).name
    except ValueError:
        return str(c)


def _aligned(n: int, align: int = 4096) -> np.ndarray:
    """A zeroed uint8 array of n bytes whose first byte is `align`-aligned (O_DIRECT buffers)."""
    raw = np.zeros(n + align, np.uint8)
    skip = (-raw.ctypes.data) % align
    return raw[skip:skip + n]
