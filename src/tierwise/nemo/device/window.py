"""The first zones of a device, seen as a device of their own: how two engines share one drive (a two-tier cache
gives its small-object engine zones [0, n) and its large-object engine the rest).

Compiled code addresses zones by their index in the whole device, so the prefix shares the parent's `flash` bundle,
statistics, timing and faults: nothing is copied and the device's totals stay whole. Only the geometry an engine
plans with (`num_zones`, `capacity_bytes`) and the zone checks of the Python API stop at n.
"""

from __future__ import annotations

from typing import Any

from tierwise.nemo.device.base import ZonedDevice, ZoneError, ZoneInfo

_PER_ZONE = ("zone_info", "write_pointer", "condition", "append", "write", "read_into", "read", "reset", "finish",
             "open_zone", "close_zone")


class ZonePrefix:
    """Zones [0, num_zones) of `parent`; the parent's owner closes it (closing the prefix does nothing)."""

    def __init__(self, parent: ZonedDevice, num_zones: int):
        if not 0 < num_zones <= parent.num_zones:
            raise ZoneError(f"a prefix of {num_zones} zones of a {parent.num_zones}-zone device")
        self.parent = parent
        self.num_zones = num_zones

    @property
    def capacity_bytes(self) -> int:
        return self.num_zones * self.parent.zone_capacity

    def report_zones(self) -> list[ZoneInfo]:
        return [self.parent.zone_info(z) for z in range(self.num_zones)]

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.parent, name)
        if name not in _PER_ZONE:
            return attr

        def checked(z, *args, **kwargs):
            if not 0 <= z < self.num_zones:
                raise ZoneError(f"zone index {z!r} out of range [0, {self.num_zones})")
            return attr(z, *args, **kwargs)

        return checked

    def __repr__(self) -> str:
        return f"ZonePrefix({self.parent!r}, zones 0..{self.num_zones - 1})"
