"""File-backed zoned device: a folder with one file per zone whose length is the zone's write pointer.

This is the semantics of zonefs and of the kernel's zloop driver: an append is a `pwrite` at the end of the zone
file, a reset truncates it to 0, a finish extends it (sparsely) to the capacity. The write pointers therefore
survive a restart or a crash with no separate state to keep in step, and a reopened device sees what a real ZNS
SSD shows after a power cycle: empty zones EMPTY, full ones FULL, the rest CLOSED.

Layout: `PATH/zoned.json` (geometry) and `PATH/seq/<zone index>`. A zone file whose length is not a whole number of
blocks (a write torn by a crash) is cut back to its last whole block on open, as a device only persists whole
blocks. `direct=True` uses O_DIRECT through a page-aligned staging buffer (what a real zoned device requires).

Fault injection for recovery tests: `FaultPlan(crash_after_bytes=N, torn=...)` makes the device "lose power" once
N bytes have been written: the write crossing the limit is torn (only its first bytes reach the file), the
device refuses further use, and `SimulatedCrash` is raised; `FaultPlan(crash_before_reset=K)` dies instead of
carrying out the K-th zone reset. Reopen the folder to recover.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import random
from dataclasses import dataclass
from pathlib import Path

from tierwise.nemo.device.base import BLOCK_SIZE, CLOSED, EMPTY, FULL, ZonedDevice, ZoneError

_GEOMETRY_FILE = "zoned.json"
_FORMAT = "tierwise-zoned-folder-v1"
_MAX_OPEN_FILES = 256  # file descriptors kept open at once (LRU); others are reopened on demand


class SimulatedCrash(Exception):
    """Raised by a fault-injecting device at the simulated power loss (deliberately not a TierwiseError)."""


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


class FileZonedDevice(ZonedDevice):
    """Open (or, given a geometry, create) a file-backed zoned device in folder `path`."""

    def __init__(self, path: str | os.PathLike, num_zones: int | None = None, zone_size: int | None = None,
                 zone_capacity: int | None = None, *, block_size: int = BLOCK_SIZE, max_open_zones: int = 0,
                 max_active_zones: int = 0, direct: bool = False, faults: FaultPlan | None = None):
        self.path = Path(path)
        geometry = dict(num_zones=num_zones, zone_size=zone_size,
                        zone_capacity=zone_size if zone_capacity is None else zone_capacity,
                        block_size=block_size, max_open_zones=max_open_zones, max_active_zones=max_active_zones)
        meta = self.path / _GEOMETRY_FILE
        if meta.exists():
            geometry = self._load_geometry(meta, geometry)
        elif num_zones is None or zone_size is None:
            raise ZoneError(f"{self.path} is not a zoned-device folder (no {_GEOMETRY_FILE}); "
                            "give num_zones and zone_size to create one")
        super().__init__(**geometry)
        if not meta.exists():
            (self.path / "seq").mkdir(parents=True, exist_ok=True)
            tmp = meta.with_suffix(".tmp")
            tmp.write_text(json.dumps({"format": _FORMAT, **geometry}, indent=1))
            os.replace(tmp, meta)
        self.direct = direct
        self.faults = faults
        self._fds: dict[int, int] = {}
        self._dirty: set[int] = set()
        self._stage: mmap.mmap | None = None  # page-aligned buffer for O_DIRECT
        self._written_total = 0
        self._resets_seen = 0
        self._recover_zones()

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
        for z in range(self.num_zones):
            p = self.zone_path(z)
            n = p.stat().st_size if p.exists() else 0
            if n > self.zone_capacity:
                raise ZoneError(f"{p}: zone file holds {n} B, more than the zone capacity {self.zone_capacity}")
            if n % self.block_size:  # torn last write: keep whole blocks only
                n -= n % self.block_size
                os.truncate(p, n)
            self._wp[z] = n
            self._cond[z] = EMPTY if n == 0 else FULL if n == self.zone_capacity else CLOSED

    # ---- file access ------------------------------------------------------------------------------------------
    def _fd(self, z: int) -> int:
        fd = self._fds.pop(z, None)
        if fd is not None:
            self._fds[z] = fd  # most recently used last: the least recently used is closed first
        else:
            if len(self._fds) >= _MAX_OPEN_FILES:
                os.close(self._fds.pop(next(iter(self._fds))))  # its writes stay dirty until sync()
            flags = os.O_RDWR | os.O_CREAT | (os.O_DIRECT if self.direct else 0)
            try:
                fd = os.open(self.zone_path(z), flags, 0o644)
            except OSError as e:
                hint = " (O_DIRECT is not supported there: open the device without direct=True)" \
                    if self.direct and e.errno == errno.EINVAL else ""
                raise ZoneError(f"cannot open zone file {self.zone_path(z)}: {e.strerror}{hint}") from None
            self._fds[z] = fd
        return fd

    def _staging(self, n: int) -> memoryview:
        if self._stage is None or len(self._stage) < n:
            if self._stage is not None:
                self._stage.close()
            self._stage = mmap.mmap(-1, max(n, 1 << 20))
        return memoryview(self._stage)[:n]

    def _pwrite(self, z: int, data, offset: int) -> None:
        fd = self._fd(z)
        if self.direct:
            buf = self._staging(len(data))
            buf[:] = data
            data = buf
        done = 0
        mv = memoryview(data)
        while done < len(mv):
            done += os.pwrite(fd, mv[done:], offset + done)
        self._dirty.add(z)

    def _store(self, z: int, offset: int, data) -> None:
        limit = None if self.faults is None else self.faults.crash_after_bytes
        if limit is not None and self._written_total + len(data) > limit:
            self._crash_during_write(z, offset, data)
        self._pwrite(z, data, offset)
        self._written_total += len(data)

    def _crash_during_write(self, z: int, offset: int, data) -> None:
        keep = self.faults.crash_after_bytes - self._written_total
        whole = keep - keep % self.block_size
        if whole:
            self._pwrite(z, data[:whole], offset)
        partial = keep - whole
        if partial and self.faults.torn != "drop":
            pad = bytes(self.block_size - partial) if self.faults.torn == "zeros" else \
                random.Random(self.faults.seed).randbytes(self.block_size - partial)
            self._pwrite(z, bytes(data[whole:keep]) + pad, offset + whole)
        self.crash()
        raise SimulatedCrash(f"simulated power loss after {self.faults.crash_after_bytes} B written "
                             f"(zone {z}, offset {offset}, {keep} of {len(data)} B of the last write issued)")

    def _load_into(self, z: int, offset: int, buf: memoryview) -> None:
        fd = self._fd(z)
        n = buf.nbytes
        if self.direct:  # O_DIRECT needs block-aligned offset, length and memory
            start = offset - offset % self.block_size
            end = -(-(offset + n) // self.block_size) * self.block_size
            stage = self._staging(end - start)
            got = os.preadv(fd, [stage], start)
            if got < offset + n - start:
                self._short_read(z, offset, n)
            buf[:] = stage[offset - start:offset - start + n]
            return
        got = os.preadv(fd, [buf], offset)
        if got < n:
            self._short_read(z, offset, n)

    def _short_read(self, z: int, offset: int, n: int):
        raise ZoneError(f"zone file {self.zone_path(z)} is shorter than its write pointer "
                        f"(read of {n} B at {offset}): the folder was modified behind the device's back")

    def _discard(self, z: int) -> None:
        if self.faults is not None and self.faults.crash_before_reset is not None:
            self._resets_seen += 1
            if self._resets_seen == self.faults.crash_before_reset:
                self.crash()
                raise SimulatedCrash(f"simulated power loss before reset #{self._resets_seen} (zone {z})")
        os.ftruncate(self._fd(z), 0)
        self._dirty.add(z)

    def _seal(self, z: int) -> None:
        os.ftruncate(self._fd(z), self.zone_capacity)  # sparse: the unwritten tail reads as zeros
        self._dirty.add(z)

    def _sync(self) -> None:
        for z in sorted(self._dirty):
            os.fsync(self._fd(z))
        self._dirty.clear()

    def _release(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._stage is not None:
            self._stage.close()
            self._stage = None

    def crash(self) -> None:
        """Drop the device as a killed process would: close the files without syncing, refuse further use."""
        self._dirty.clear()
        self._release()
        self._closed = True
