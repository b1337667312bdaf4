"""A real Linux zoned block device (a ZNS NVMe namespace, an SMR disk, null_blk zoned) through the kernel's zone
ioctls (`include/uapi/linux/blkzoned.h`) and O_DIRECT I/O.

Geometry comes from sysfs (`/sys/block/<dev>/queue/`) and a zone report. The shared state machine
(`flash.py`, compiled, like the I/O: `pread`/`pwrite` and the zone ioctls) mirrors the kernel's zone state so rule
violations are refused before any I/O is issued; the device still has the last word: an I/O or ioctl error
re-reads the zone from the kernel and surfaces as `ZoneError`.
When the open-zone limit forces an implicit close, this backend closes the mirror's choice explicitly first, so
the device never has to pick one itself and the mirror stays exact.

Only sequential-write-required zones are exposed (zone index 0 = the first of them); conventional zones, as SMR
disks have at their start, are skipped.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tierwise.nemo.device import flash as fl
from tierwise.nemo.device.flash import BLKCLOSEZONE, BLKFINISHZONE, BLKOPENZONE, BLKRESETZONE  # noqa: F401 (API)
from tierwise.nemo.device.base import ZoneCondition, ZonedDevice, ZoneError, ZoneType

SECTOR = 512


def _ioc(direction: int, nr: int, size: int, kind: int = 0x12) -> int:
    """The kernel's _IOC(dir, type, nr, size) on x86/arm (dir: 1 = write, 2 = read, 3 = both)."""
    return (direction << 30) | (size << 16) | (kind << 8) | nr


REPORT_HEADER = struct.Struct("<QII")  # struct blk_zone_report: sector, nr_zones, flags
ZONE = struct.Struct("<QQQBBBB4xQ24x")  # struct blk_zone: start, len, wp, type, cond, non_seq, reset, capacity

BLKREPORTZONE = _ioc(3, 130, REPORT_HEADER.size)
BLKGETZONESZ = _ioc(2, 132, 4)
BLKGETNRZONES = _ioc(2, 133, 4)
BLK_ZONE_REP_CAPACITY = 1


@dataclass(frozen=True)
class BlkZone:
    """One `struct blk_zone`, positions in 512 B sectors as the kernel gives them."""

    start: int
    len: int
    wp: int
    type: int
    cond: int
    non_seq: int
    reset: int
    capacity: int


def pack_report_request(sector: int, nr_zones: int) -> bytearray:
    """A zeroed `blk_zone_report` buffer with room for `nr_zones` zones, asking from `sector` on."""
    buf = bytearray(REPORT_HEADER.size + ZONE.size * nr_zones)
    REPORT_HEADER.pack_into(buf, 0, sector, nr_zones, 0)
    return buf


def parse_report(buf) -> list[BlkZone]:
    """The zones the kernel filled into a report buffer (capacity = len when the kernel predates capacity)."""
    _, count, flags = REPORT_HEADER.unpack_from(buf, 0)
    zones = []
    for i in range(count):
        start, length, wp, ztype, cond, non_seq, reset, cap = ZONE.unpack_from(buf, REPORT_HEADER.size + i * ZONE.size)
        zones.append(BlkZone(start, length, wp, ztype, cond, non_seq, reset,
                             cap if flags & BLK_ZONE_REP_CAPACITY else length))
    return zones


def _sysfs_int(queue: Path, name: str, default: int = 0) -> int:
    try:
        return int((queue / name).read_text().strip())
    except (OSError, ValueError):
        return default


class LinuxZonedDevice(ZonedDevice):
    """Open `path` (e.g. /dev/nvme0n1) for zoned I/O; it must be a host-managed or host-aware zoned device."""

    kind = fl.SYSCALL

    def __init__(self, path: str | os.PathLike, *, report_batch: int = 4096):
        self.path = Path(path)
        name = Path(os.path.realpath(self.path)).name
        queue = Path("/sys/block") / name / "queue"
        try:
            model = (queue / "zoned").read_text().strip()
        except OSError:
            raise ZoneError(f"{self.path}: no sysfs entry {queue}/zoned (not a block device?)") from None
        if model not in ("host-managed", "host-aware"):
            raise ZoneError(f"{self.path} is not a zoned block device (queue/zoned = {model!r})")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as e:
            raise ZoneError(f"cannot open {self.path} for zoned I/O: {e.strerror}") from None
        self._report_batch = report_batch
        zones = self.kernel_zones()
        seq = [z for z in zones if z.type != ZoneType.CONVENTIONAL]
        if not seq:
            os.close(self._fd)
            raise ZoneError(f"{self.path} has no sequential zones")
        self._first = zones.index(seq[0])
        caps = {z.capacity for z in seq}
        if len(caps) != 1 or len({z.len for z in seq}) != 1:
            os.close(self._fd)
            raise ZoneError(f"{self.path}: zones of different sizes or capacities {sorted(caps)} are not supported")
        block = _sysfs_int(queue, "logical_block_size", SECTOR)
        super().__init__(len(seq), seq[0].len * SECTOR, seq[0].capacity * SECTOR, block_size=max(block, 4096),
                         max_open_zones=_sysfs_int(queue, "max_open_zones"),
                         max_active_zones=_sysfs_int(queue, "max_active_zones"))
        self._start = [z.start * SECTOR for z in seq]
        self._build(np.zeros(0, np.uint8), fds=np.array([self._fd], np.int64),
                    starts=np.array(self._start, np.int64))
        self._load_state(seq)

    # ---- kernel state ------------------------------------------------------------------------------------------
    def kernel_zones(self, sector: int = 0, count: int | None = None) -> list[BlkZone]:
        """The kernel's zone report (BLKREPORTZONE) from `sector`, all zones unless `count` is given."""
        out: list[BlkZone] = []
        while count is None or len(out) < count:
            want = self._report_batch if count is None else min(self._report_batch, count - len(out))
            buf = pack_report_request(sector, want)
            try:
                fcntl.ioctl(self._fd, BLKREPORTZONE, buf, True)
            except OSError as e:
                raise ZoneError(f"{self.path}: zone report failed: {e.strerror}") from None
            got = parse_report(buf)
            if not got:
                break
            out += got
            sector = got[-1].start + got[-1].len
        return out

    def _load_state(self, seq: list[BlkZone]) -> None:
        for z, kz in enumerate(seq):
            if kz.cond in (ZoneCondition.READONLY, ZoneCondition.OFFLINE):
                raise ZoneError(f"{self.path}: zone {z} is {ZoneCondition(kz.cond).name}")
            self._load_state_one(z, kz)

    def refresh(self, z: int | None = None) -> None:
        """Re-read the mirror from the kernel (one zone, or all)."""
        if z is None:
            self._load_state(self.kernel_zones()[self._first:])
            return
        self._load_state_one(z, self.kernel_zones(self._start[z] // SECTOR, 1)[0])

    def _load_state_one(self, z: int, kz: BlkZone) -> None:
        self.flash.cond[z] = int(kz.cond)
        self.flash.wp[z] = self.zone_capacity if kz.cond == ZoneCondition.FULL else (kz.wp - kz.start) * SECTOR

    # ---- backend hooks -----------------------------------------------------------------------------------------
    def _fault_error(self) -> Exception:
        code, z, a, b, _ = (int(x) for x in self.flash.err)
        if code in (fl.E_IO, fl.E_SHORT) and 0 <= z < self.num_zones:
            self.refresh(z)
            what = {BLKRESETZONE: "reset", BLKOPENZONE: "open", BLKCLOSEZONE: "close",
                    BLKFINISHZONE: "finish"}.get(b, "I/O")
            reason = os.strerror(a) if code == fl.E_IO else "short read"
            return ZoneError(f"{self.path}: zone {z} {what} refused by the device: {reason}")
        return super()._fault_error()

    def close_zone(self, z: int) -> None:
        super().close_zone(z)
        self.refresh(z)  # devices differ on whether closing an unwritten open zone leaves it EMPTY or CLOSED

    def _sync(self) -> None:
        os.fsync(self._fd)

    def _release(self) -> None:
        os.close(self._fd)
