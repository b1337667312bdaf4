"""The zoned-device interface every engine writes to, and the zone state machine every backend shares.

A zoned device is split into `num_zones` zones of `zone_size` bytes; only the first `zone_capacity` bytes of a zone
are writable, and only sequentially at the zone's write pointer. Conditions, transitions and the open/active limits
follow the Linux kernel's zoned block model (`include/uapi/linux/blkzoned.h`, null_blk / NVMe ZNS behaviour), so an
engine tested on the emulator behaves the same on a real ZNS SSD.

The state machine lives here once; a backend only stores and loads bytes (`_store`, `_load_into`, `_discard`,
`_seal`) and, where state must survive a restart, persists it (`_persist_zone`).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from tierwise.common.errors import TierwiseError

BLOCK_SIZE = 4096


class ZoneError(TierwiseError):
    """A request that breaks a zone rule (write off the write pointer, read past it, full zone, bad index...)."""


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


# Plain ints for the hot paths (IntEnum comparisons are several times slower than int ones).
EMPTY, IMP_OPEN, EXP_OPEN, CLOSED, FULL = (int(c) for c in (ZoneCondition.EMPTY, ZoneCondition.IMP_OPEN,
                                                           ZoneCondition.EXP_OPEN, ZoneCondition.CLOSED,
                                                           ZoneCondition.FULL))
_OPEN = (IMP_OPEN, EXP_OPEN)
_ACTIVE = (IMP_OPEN, EXP_OPEN, CLOSED)


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
    """I/O counters: device totals plus per-zone counts. `nand_bytes_written` equals `bytes_written` on a zoned
    device (no device GC, DLWA = 1); the conventional-SSD model counts its GC copies there.

    Per-zone counts are plain lists on the hot path (a numpy scalar update costs ~10x a list one); the `zone_*`
    properties return them as arrays.
    """

    def __init__(self, num_zones: int):
        self.bytes_written = 0
        self.bytes_read = 0
        self.write_ios = 0
        self.read_ios = 0
        self.resets = 0
        self.finishes = 0
        self._zone_written = [0] * num_zones
        self._zone_read = [0] * num_zones
        self._zone_resets = [0] * num_zones
        self._zone_finishes = [0] * num_zones

    def add_reads(self, zone_bytes: np.ndarray, ios: int) -> None:
        """Reads a compiled reader did itself: bytes per zone and the number of I/Os."""
        self.bytes_read += int(zone_bytes.sum())
        self.read_ios += ios
        for z in np.flatnonzero(zone_bytes).tolist():
            self._zone_read[z] += int(zone_bytes[z])

    @property
    def zone_bytes_written(self) -> np.ndarray:
        return np.array(self._zone_written, dtype=np.int64)

    @property
    def zone_bytes_read(self) -> np.ndarray:
        return np.array(self._zone_read, dtype=np.int64)

    @property
    def zone_resets(self) -> np.ndarray:
        return np.array(self._zone_resets, dtype=np.int64)

    @property
    def zone_finishes(self) -> np.ndarray:
        return np.array(self._zone_finishes, dtype=np.int64)

    @property
    def nand_bytes_written(self) -> int:
        return self.bytes_written

    @property
    def dlwa(self) -> float:
        return self.nand_bytes_written / self.bytes_written if self.bytes_written else 1.0

    def as_dict(self) -> dict[str, int | float]:
        return {"bytes_written": self.bytes_written, "bytes_read": self.bytes_read, "write_ios": self.write_ios,
                "read_ios": self.read_ios, "resets": self.resets, "finishes": self.finishes,
                "nand_bytes_written": self.nand_bytes_written, "dlwa": self.dlwa}


class ZonedDevice(ABC):
    """A zoned block device: report/reset/finish/open/close zones, append at the write pointer, read below it.

    Offsets and lengths are bytes; every write is a whole number of `block_size` blocks. Violations raise
    `ZoneError`. `max_open_zones` / `max_active_zones` of 0 mean "no limit", as in sysfs.
    """

    block_size: int
    zone_size: int
    zone_capacity: int
    num_zones: int
    max_open_zones: int
    max_active_zones: int
    stats: DeviceStats

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
        self.stats = DeviceStats(num_zones)
        self._wp = [0] * num_zones
        self._cond = [EMPTY] * num_zones
        self._closed = False

    # ---- backend hooks ---------------------------------------------------------------------------------------
    @abstractmethod
    def _store(self, z: int, offset: int, data) -> None:
        """Write `data` (bytes-like, whole blocks) at `offset` of zone `z`; the rules are already checked."""

    @abstractmethod
    def _load_into(self, z: int, offset: int, buf: memoryview) -> None:
        """Fill `buf` from `offset` of zone `z` (below the write pointer; checked)."""

    @abstractmethod
    def _discard(self, z: int) -> None:
        """Drop the data of zone `z` (reset)."""

    def _seal(self, z: int) -> None:
        """Backend work when zone `z` becomes FULL by `finish` (e.g. the finish ioctl, or persisting the state)."""

    def _zone_changed(self, z: int) -> None:
        """Called after every state change of zone `z` a restart must see (file backends persist it)."""

    def _sync(self) -> None:
        """Make written data durable."""

    def _release(self) -> None:
        """Free backend resources (files, mappings)."""

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
        cond = self._cond[z]
        return ZoneInfo(index=int(z), start=int(z) * self.zone_size, size=self.zone_size,
                        capacity=self.zone_capacity, write_pointer=self.write_pointer(z),
                        condition=ZoneCondition(cond))

    def report_zones(self) -> list[ZoneInfo]:
        return [self.zone_info(z) for z in range(self.num_zones)]

    def write_pointer(self, z: int) -> int:
        """Bytes written in zone `z` since its last reset; `zone_capacity` once the zone is FULL."""
        self._check_zone(z)
        return self.zone_capacity if self._cond[z] == FULL else self._wp[z]

    def condition(self, z: int) -> ZoneCondition:
        self._check_zone(z)
        return ZoneCondition(self._cond[z])

    @property
    def open_zones(self) -> int:
        return sum(1 for c in self._cond if c in _OPEN)

    @property
    def active_zones(self) -> int:
        return sum(1 for c in self._cond if c in _ACTIVE)

    # ---- open/active accounting (kernel/NVMe rules) --------------------------------------------------------
    def _make_room_to_open(self, z: int) -> None:
        """Check the limits before zone `z` (not open) becomes open; implicitly close an IMP_OPEN zone if the open
        limit is reached, as a ZNS controller does."""
        if self._cond[z] == EMPTY and self.max_active_zones and self.active_zones >= self.max_active_zones:
            raise ZoneError(f"zone {z}: too many active zones (max_active_zones={self.max_active_zones})")
        if self.max_open_zones and self.open_zones >= self.max_open_zones:
            victim = next((i for i, c in enumerate(self._cond) if c == IMP_OPEN), None)
            if victim is None:
                raise ZoneError(f"zone {z}: too many open zones (max_open_zones={self.max_open_zones}, all explicitly open)")
            self._close_hook(victim)
            self._cond[victim] = CLOSED
            self._zone_changed(victim)

    # ---- data path -------------------------------------------------------------------------------------------
    def append(self, z: int, data) -> int:
        """Write `data` at the write pointer of zone `z`; returns the zone-relative offset it landed at."""
        if type(data) is not bytes and type(data) is not bytearray:
            data = memoryview(data).cast("B")  # numpy arrays, typed or multi-dimensional views: count bytes
        n = len(data)
        self._check_zone(z)
        cond = self._cond[z]
        if cond == FULL:
            raise ZoneError(f"zone {z} is FULL: reset it before writing")
        if n <= 0 or n % self.block_size:
            raise ZoneError(f"zone {z}: write length {n} is not a positive multiple of the block size {self.block_size}")
        wp = self._wp[z]
        if wp + n > self.zone_capacity:
            raise ZoneError(f"zone {z}: write of {n} B at write pointer {wp} exceeds zone capacity {self.zone_capacity}")
        if cond != IMP_OPEN and cond != EXP_OPEN:
            self._make_room_to_open(z)
            self._cond[z] = IMP_OPEN
        self._store(z, wp, data)
        end = wp + n
        self._wp[z] = end
        if end == self.zone_capacity:
            self._cond[z] = FULL
        st = self.stats
        st.bytes_written += n
        st.write_ios += 1
        st._zone_written[z] += n
        self._zone_changed(z)
        return wp

    def write(self, z: int, offset: int, data) -> None:
        """Write at an explicit zone offset, which must be the write pointer (the sequential-write rule)."""
        self._check_zone(z)
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
        limit = self.zone_capacity if self._cond[z] == FULL else self._wp[z]
        if offset + length > limit:
            raise ZoneError(f"zone {z}: read [{offset}, {offset + length}) reaches past the write pointer {limit}")

    def _count_read(self, z: int, n: int) -> None:
        st = self.stats
        st.bytes_read += n
        st.read_ios += 1
        st._zone_read[z] += n

    def read_into(self, z: int, offset: int, buf) -> None:
        """Read `len(buf)` bytes at `offset` of zone `z` into the writable buffer `buf` (no allocation)."""
        mv = buf if type(buf) is memoryview else memoryview(buf)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        self._check_read(z, offset, mv.nbytes)
        self._load_into(z, offset, mv)
        self._count_read(z, mv.nbytes)

    def read(self, z: int, offset: int, length: int) -> bytes:
        """Read `length` bytes at `offset` of zone `z`; the range must lie below the write pointer."""
        self._check_read(z, offset, length)
        data = self._load(z, offset, length)
        self._count_read(z, length)
        return data

    def _load(self, z: int, offset: int, length: int) -> bytes:
        """Backends with a cheaper path (a slice of a mapping) override this one-copy read."""
        buf = bytearray(length)
        self._load_into(z, offset, memoryview(buf))
        return bytes(buf)

    # ---- zone management ---------------------------------------------------------------------------------------
    def reset(self, z: int) -> None:
        """Rewind the write pointer of zone `z` to 0 and drop its data (EMPTY)."""
        self._check_zone(z)
        self._discard(z)
        self._wp[z] = 0
        self._cond[z] = EMPTY
        self.stats.resets += 1
        self.stats._zone_resets[z] += 1
        self._zone_changed(z)

    def finish(self, z: int) -> None:
        """Move zone `z` to FULL (no more writes until reset); unwritten space reads as zeros."""
        self._check_zone(z)
        cond = self._cond[z]
        if cond == FULL:
            return
        self._seal(z)
        self._cond[z] = FULL
        self.stats.finishes += 1
        self.stats._zone_finishes[z] += 1
        self._zone_changed(z)

    def open_zone(self, z: int) -> None:
        """Explicitly open zone `z` (EXP_OPEN); counts against the open and active limits."""
        self._check_zone(z)
        cond = self._cond[z]
        if cond == EXP_OPEN:
            return
        if cond == FULL:
            raise ZoneError(f"zone {z} is FULL and cannot be opened")
        if cond != IMP_OPEN:
            self._make_room_to_open(z)
        self._open_hook(z)
        self._cond[z] = EXP_OPEN
        self._zone_changed(z)

    def close_zone(self, z: int) -> None:
        """Close an open zone (CLOSED; EMPTY again if nothing was written); closing a CLOSED zone is a no-op."""
        self._check_zone(z)
        cond = self._cond[z]
        if cond == CLOSED:
            return
        if cond not in _OPEN:
            raise ZoneError(f"zone {z} is {ZoneCondition(cond).name}: only an open zone can be closed")
        self._close_hook(z)
        self._cond[z] = CLOSED if self._wp[z] else EMPTY
        self._zone_changed(z)

    def _open_hook(self, z: int) -> None:
        """Backend work for an explicit open (the open ioctl on a real device)."""

    def _close_hook(self, z: int) -> None:
        """Backend work for a close (the close ioctl on a real device)."""

    def sync(self) -> None:
        if not self._closed:
            self._sync()

    def close(self) -> None:
        if not self._closed:
            self._sync()
            self._release()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_zones={self.num_zones}, zone_size={self.zone_size}, "
                f"zone_capacity={self.zone_capacity}, block_size={self.block_size})")
