"""File-backed zoned device: a folder with one file per zone whose length is the zone's write pointer.

This is the semantics of zonefs and of the kernel's zloop driver: an append is a `pwrite` at the end of the zone
file, a reset truncates it to 0, a finish extends it (sparsely) to the capacity. Every zone file is also mapped
read-only, side by side in one address range, so compiled code reads set and index pages straight from the page
cache with no system call (the zone rules keep reads below the write pointer, i.e. inside the file). The write pointers therefore
survive a restart or a crash with no separate state to keep in step, and a reopened device sees what a real ZNS
SSD shows after a power cycle: empty zones EMPTY, full ones FULL, the rest CLOSED.

Layout: `PATH/zoned.json` (the device description: its geometry), `PATH/seq/<zone index>` and `PATH/lock`. A
folder whose zone files lost their description is an error, never taken for a new device. The device holds an
exclusive lock (`flock` on `PATH/lock`, which names the holder's pid) while it is open, so a second process (or a
second open in this one) is refused instead of writing the same zones; the kernel drops the lock when the holder
dies. `reserve=True` allocates every zone's blocks up front (`fallocate`, keeping each file's length), so writing
the device never needs free space on a full filesystem; a new device that does not fit is an error, an existing
one that cannot be reserved (a full disk at restart) opens with `unreserved` saying why (retry `reserve_space`). A zone file whose length is not a whole number of
blocks (a write torn by a crash) is cut back to its last whole block on open, as a device only persists whole
blocks. `direct=True` writes with O_DIRECT through a page-aligned staging buffer (what a real zoned device requires).
All zone files stay open (the process's open-file limit is raised to fit them).

Fault injection for recovery tests: `FaultPlan(crash_after_bytes=N, torn=...)` makes the device "lose power" once
N bytes have been written: the write crossing the limit is torn (only its first bytes reach the file), the
device refuses further use, and `SimulatedCrash` is raised; `FaultPlan(crash_before_reset=K)` dies instead of
carrying out the K-th zone reset. Reopen the folder to recover.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tierwise.nemo.device import flash as fl
from tierwise.nemo.device.base import BLOCK_SIZE, SimulatedCrash, ZonedDevice, ZoneError

_GEOMETRY_FILE = "zoned.json"
_LOCK_FILE = "lock"
_FORMAT = "tierwise-zoned-folder-v1"
_TORN = {"drop": fl.TORN_DROP, "zeros": fl.TORN_ZEROS, "garbage": fl.TORN_GARBAGE}

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_FALLOC_FL_KEEP_SIZE = 1
_PROT_NONE, _PROT_READ = 0, 1
_MAP_SHARED, _MAP_PRIVATE, _MAP_FIXED, _MAP_ANONYMOUS, _MAP_NORESERVE = 0x01, 0x02, 0x10, 0x20, 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value


@dataclass
class FaultPlan:
    """When to crash and what the torn write leaves behind.

    crash_after_bytes: the device dies once this many bytes have been written through it; the write that crosses
        the limit persists only its first `crash_after_bytes - already_written` bytes.
    crash_before_reset: the device dies instead of carrying out its N-th zone reset (a reset itself is atomic).
    torn: the partial last block of that write is "drop"ped (the zone ends at the previous whole block), padded
        with "zeros", or padded with "garbage" (random bytes: a torn page a reader must detect by checksum).
    seed: seeds the garbage.
    """

    crash_after_bytes: int | None = None
    torn: str = "drop"
    seed: int = 0
    crash_before_reset: int | None = None  # the device dies instead of performing its N-th reset (1 = the first)

    def __post_init__(self):
        if self.torn not in ("drop", "zeros", "garbage"):
            raise ZoneError(f"FaultPlan.torn must be 'drop', 'zeros' or 'garbage', got {self.torn!r}")
        if (self.crash_after_bytes is not None and self.crash_after_bytes < 0) or \
                (self.crash_before_reset is not None and self.crash_before_reset < 1):
            raise ZoneError("FaultPlan.crash_after_bytes must be >= 0 and crash_before_reset >= 1")



    def as_array(self) -> np.ndarray:
        """The plan as the compiled core's `fault` array."""
        return np.array([-1 if self.crash_after_bytes is None else self.crash_after_bytes, _TORN[self.torn], self.seed,
                         self.crash_before_reset or 0, 0, 0, 0], np.int64)


class FileZonedDevice(ZonedDevice):
    """Open (or, given a geometry, create) a file-backed zoned device in folder `path`."""

    kind = fl.FILE

    def __init__(self, path: str | os.PathLike, num_zones: int | None = None, zone_size: int | None = None,
                 zone_capacity: int | None = None, *, block_size: int = BLOCK_SIZE, max_open_zones: int = 0,
                 max_active_zones: int = 0, direct: bool = False, faults: FaultPlan | None = None,
                 reserve: bool = False):
        self.path = Path(path)
        geometry = dict(num_zones=num_zones, zone_size=zone_size,
                        zone_capacity=zone_size if zone_capacity is None else zone_capacity,
                        block_size=block_size, max_open_zones=max_open_zones, max_active_zones=max_active_zones)
        self.direct = direct
        self.faults = faults
        self._base = None
        self._lock_fd = -1
        self._fds = np.full(0, -1, np.int64)
        self.unreserved: str | None = None  # why the zones' space is not reserved (reserve=True on a full disk)
        try:
            self._setup(geometry, reserve)
        except BaseException:
            self._release()
            raise
        self._synced = self._write_marks()

    def _setup(self, geometry: dict, reserve: bool) -> None:
        meta = self.path / _GEOMETRY_FILE
        creating = not meta.exists()
        if not creating:
            self._lock()
            geometry = self._load_geometry(meta, geometry)
        elif geometry["num_zones"] is None or geometry["zone_size"] is None:
            raise ZoneError(f"{self.path} is not a zoned-device folder (no {_GEOMETRY_FILE}); "
                            "give num_zones and zone_size to create one")
        else:
            self._refuse_orphan_zones()
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
        super().__init__(**geometry)
        if self.zone_capacity % mmap_page():
            raise ZoneError(f"zone capacity {self.zone_capacity} B is not a multiple of the {mmap_page()} B memory "
                            "page: a file-backed device maps its zones side by side")
        if creating:
            (self.path / "seq").mkdir(exist_ok=True)
            tmp = meta.with_suffix(".tmp")
            tmp.write_text(json.dumps({"format": _FORMAT, **geometry}, indent=1))
            os.replace(tmp, meta)
        self._fds = np.full(self.num_zones, -1, np.int64)
        self._open_files()
        if reserve:
            try:
                self.reserve_space()
            except ZoneError as e:
                if creating:
                    raise
                self.unreserved = str(e)
        self._build(self._map_zones(), fds=self._fds, direct=self.direct,
                    fault=self.faults.as_array() if self.faults else None)
        self._recover_zones()

    # ---- ownership ----------------------------------------------------------------------------------------------
    def _refuse_orphan_zones(self) -> None:
        """Zone files without a description are a device that lost its zoned.json: creating a new, empty device
        over them would silently drop the cache (and its lock), so it is an error."""
        seq = self.path / "seq"
        if seq.is_dir() and any(seq.iterdir()):
            raise ZoneError(f"{self.path} holds zone files ({seq}) but no device description ({_GEOMETRY_FILE}): "
                            "restore it, or delete the folder to start a new device")

    def _lock(self) -> None:
        """Take the device's exclusive lock, or say which process holds it."""
        path = self.path / _LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ZoneError(f"cannot open the device lock {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ZoneError(f"device {self.path} is in use by process {holder} (it holds {path}): stop that "
                            "process or give another device") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self._lock_fd = fd

    def reserve_space(self) -> None:
        """Allocate the blocks of every zone below its capacity (the file length, i.e. the write pointer, is kept).
        A reset frees a zone's blocks and the SG flush that resets it appends to it straight away, so once reserved
        the device's writes do not depend on the filesystem's free space. A filesystem that cannot reserve
        (EOPNOTSUPP) is used as it is."""
        for z in range(self.num_zones):
            err = _reserve_zone(int(self._fds[z]), self.zone_capacity)
            if err == errno.EOPNOTSUPP:
                break
            if err:
                raise ZoneError(f"{self.path}: cannot reserve the {self.capacity_bytes} B of the device's zones on "
                                f"its filesystem: {os.strerror(err)}; free space or use a smaller device")
        self.unreserved = None

    # ---- metadata ---------------------------------------------------------------------------------------------
    def _load_geometry(self, meta: Path, given: dict) -> dict:
        try:
            saved = json.loads(meta.read_text())
            if saved.pop("format") != _FORMAT:
                raise ValueError("unknown format")
            saved = {k: int(saved[k]) for k in given}
        except (ValueError, KeyError, TypeError) as e:
            raise ZoneError(f"{meta}: corrupt zoned-device geometry file ({e})") from None
        for k, v in given.items():
            default = {"block_size": BLOCK_SIZE, "max_open_zones": 0, "max_active_zones": 0}.get(k)
            if v is not None and v != default and v != saved[k]:
                raise ZoneError(f"{self.path}: existing device has {k}={saved[k]}, not {v}")
        return saved

    def zone_path(self, z: int) -> Path:
        return self.path / "seq" / str(z)

    def _recover_zones(self) -> None:
        """Write pointers and conditions from the zone files' lengths (what survives a restart or a crash)."""
        F = self.flash
        for z in range(self.num_zones):
            n = os.fstat(int(self._fds[z])).st_size
            if n > self.zone_capacity:
                raise ZoneError(f"{self.zone_path(z)}: zone file holds {n} B, more than the zone capacity "
                                f"{self.zone_capacity}")
            if n % self.block_size:  # torn last write: keep whole blocks only
                n -= n % self.block_size
                os.ftruncate(int(self._fds[z]), n)
            F.wp[z] = n
            F.cond[z] = fl.EMPTY if n == 0 else fl.FULL if n == self.zone_capacity else fl.CLOSED

    # ---- files and mapping --------------------------------------------------------------------------------------
    def _open_files(self) -> None:
        need = self.num_zones + 256  # the zone files plus what the process already uses
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < need:
            if hard != resource.RLIM_INFINITY and hard < need:
                raise ZoneError(f"{self.path}: {self.num_zones} zone files need {need} open files, but the limit is "
                                f"{hard} (ulimit -Hn): use larger zones or raise the limit")
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_DIRECT if self.direct else 0)
        for z in range(self.num_zones):
            try:
                self._fds[z] = os.open(self.zone_path(z), flags, 0o644)
            except OSError as e:
                hint = " (O_DIRECT is not supported there: open the device without direct=True)" \
                    if self.direct and e.errno == errno.EINVAL else ""
                raise ZoneError(f"cannot open zone file {self.zone_path(z)}: {e.strerror}{hint}") from None

    def _map_zones(self) -> np.ndarray:
        """Reserve one address range for all zones and map each zone file read-only at its place in it."""
        total, cap = self.num_zones * self.zone_capacity, self.zone_capacity
        base = _LIBC.mmap(None, total, _PROT_NONE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        if base in (None, _MAP_FAILED):
            raise ZoneError(f"{self.path}: cannot reserve {total} B of address space: "
                            f"{os.strerror(ctypes.get_errno())}")
        self._base = base
        for z in range(self.num_zones):
            at = _LIBC.mmap(base + z * cap, cap, _PROT_READ, _MAP_SHARED | _MAP_FIXED, int(self._fds[z]), 0)
            if at != base + z * cap:
                raise ZoneError(f"cannot map zone file {self.zone_path(z)}: {os.strerror(ctypes.get_errno())}")
        return np.ctypeslib.as_array((ctypes.c_uint8 * total).from_address(base))

    def _write_marks(self) -> np.ndarray:
        """Per zone, what has changed it so far (bytes written, resets, finishes): zones whose marks moved since
        the last sync need an fsync."""
        zs = self.flash.zone_stats
        return zs[fl.Z_WRITTEN] + zs[fl.Z_RESETS] + zs[fl.Z_FINISHES]

    # ---- backend hooks ------------------------------------------------------------------------------------------
    def read_into(self, z: int, offset: int, buf) -> None:
        self._check_zone(z)
        end = offset + (buf.nbytes if hasattr(buf, "nbytes") else len(buf))
        if end <= self.write_pointer(z) and os.fstat(int(self._fds[z])).st_size < min(end, self.zone_capacity):
            raise ZoneError(f"zone file {self.zone_path(z)} is shorter than its write pointer "
                            f"(read up to {end} B): the folder was modified behind the device's back")
        super().read_into(z, offset, buf)

    def _fault_error(self) -> Exception:
        code, z, a, b, n = (int(x) for x in self.flash.err)
        if code == fl.E_CRASH_WRITE:
            self._drop()
            return SimulatedCrash(f"simulated power loss after {self.faults.crash_after_bytes} B written "
                                  f"(zone {z}, offset {a}, {b} of {n} B of the last write issued)")
        if code == fl.E_CRASH_RESET:
            self._drop()
            return SimulatedCrash(f"simulated power loss before reset #{a} (zone {z})")
        if code == fl.E_IO:
            return ZoneError(f"zone file {self.zone_path(z)}: I/O failed: {os.strerror(a)}")
        return super()._fault_error()

    def _sync(self) -> None:
        marks = self._write_marks()
        for z in np.flatnonzero(marks != self._synced).tolist():
            os.fsync(int(self._fds[z]))
        self._synced = marks

    def _release(self) -> None:
        for fd in self._fds.tolist():
            if fd >= 0:
                os.close(fd)
        self._fds[:] = -1
        if self._base is not None:
            _LIBC.munmap(self._base, self.num_zones * self.zone_capacity)
            self._base = None
        if self._lock_fd >= 0:  # last: the zones are released before another process may take them
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _drop(self) -> None:
        """Give the device up as a killed process would: no sync, no further use."""
        if not self._closed:
            self.flash.fault[fl.DEAD] = 1
            self._release()
            self._closed = True

    def crash(self) -> None:
        """Drop the device as a killed process would: close the files without syncing, refuse further use."""
        self._drop()


def _reserve_zone(fd: int, length: int) -> int:
    """Allocate the first `length` bytes of a zone file without changing its length; 0 or the errno."""
    return 0 if _LIBC.fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, length) == 0 else ctypes.get_errno()


def mmap_page() -> int:
    return os.sysconf("SC_PAGE_SIZE")
