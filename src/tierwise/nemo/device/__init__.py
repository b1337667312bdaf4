"""Zoned devices (`ZonedDevice`): in-memory and file-backed emulators, a real Linux zoned block device, and a
conventional SSD (FTL model); `open_device(spec)` turns a CLI spec into one. Their I/O and zone state machine are
one compiled core (`flash.py`); `timing.py` simulates their service times."""

from __future__ import annotations

from tierwise.nemo.device.base import (BLOCK_SIZE, DeviceStats, SimulatedCrash, ZoneCondition, ZonedDevice,
                                       ZoneError, ZoneInfo, ZoneType)
from tierwise.nemo.device.file import FaultPlan, FileZonedDevice
from tierwise.nemo.device.memory import MemoryZonedDevice
from tierwise.nemo.device.ssd import FtlSSD
from tierwise.nemo.device.timing import PROFILES, DeviceProfile

__all__ = ["BLOCK_SIZE", "DeviceProfile", "DeviceStats", "FaultPlan", "FtlSSD", "FileZonedDevice",
           "MemoryZonedDevice", "PROFILES", "SimulatedCrash", "ZoneCondition", "ZoneError", "ZoneInfo", "ZoneType",
           "ZonedDevice", "open_device"]

DEVICE_SPECS = "mem | file:FOLDER | zbd:/dev/<zoned block device>"


def open_device(spec: str, *, flash_bytes: int | None = None, num_zones: int | None = None,
                zone_size: int | None = None, zone_capacity: int | None = None, profile: str | None = None,
                **options) -> ZonedDevice:
    """Open the device a CLI spec names: `mem`, `file:FOLDER` (created if absent) or `zbd:/dev/nvme0n1`.

    For `mem` and a new `file:` folder give the geometry: `zone_size` plus `num_zones` or `flash_bytes` (rounded
    down to whole zones); `zone_capacity` defaults to the zone size. `options` go to the backend (max_open_zones,
    max_active_zones, direct, faults). A real device, or an existing folder, has its own geometry. `profile` names
    the simulated device timing (tierwise.nemo.device.timing.PROFILES).
    """
    dev = _open(spec, flash_bytes, num_zones, zone_size, zone_capacity, options)
    if profile is not None:
        try:
            dev.set_profile(profile)
        except BaseException:
            dev.close()
            raise
    return dev


def _open(spec: str, flash_bytes, num_zones, zone_size, zone_capacity, options) -> ZonedDevice:
    kind, _, arg = spec.partition(":")
    if kind == "zbd":
        if not arg:
            raise ZoneError(f"device spec {spec!r}: give the block device, e.g. zbd:/dev/nvme0n1")
        from tierwise.nemo.device.linux import LinuxZonedDevice

        return LinuxZonedDevice(arg, **options)
    if num_zones is None and flash_bytes is not None and zone_size:
        num_zones = flash_bytes // zone_size
        if num_zones < 1:
            raise ZoneError(f"flash size {flash_bytes} B is smaller than one zone ({zone_size} B)")
    if kind == "mem" and not arg:
        if num_zones is None or zone_size is None:
            raise ZoneError("device 'mem' needs a geometry: zone_size and num_zones (or flash_bytes)")
        return MemoryZonedDevice(num_zones, zone_size, zone_capacity, **options)
    if kind == "file" and arg:
        return FileZonedDevice(arg, num_zones, zone_size, zone_capacity, **options)
    raise ZoneError(f"unknown device spec {spec!r}; expected {DEVICE_SPECS}")
