"""Memory backend specifics and geometry validation shared by every backend."""

from __future__ import annotations

import pytest

from tierwise.nemo.device import MemoryZonedDevice, ZoneError

BS = 4096


@pytest.mark.parametrize("kw, msg", [
    (dict(num_zones=0, zone_size=BS), "num_zones"),
    (dict(num_zones=1, zone_size=BS + 1), "zone_size"),
    (dict(num_zones=1, zone_size=BS, zone_capacity=2 * BS), "zone_capacity"),
    (dict(num_zones=1, zone_size=2 * BS, zone_capacity=100), "zone_capacity"),
    (dict(num_zones=1, zone_size=BS, block_size=1000), "block_size"),
    (dict(num_zones=2, zone_size=BS, max_open_zones=2, max_active_zones=1), "max_open_zones"),
    (dict(num_zones=2, zone_size=BS, max_open_zones=-1), "max_open_zones"),
])
def test_geometry_validation(kw, msg):
    with pytest.raises(ZoneError, match=msg):
        MemoryZonedDevice(**kw)


def test_small_blocks_and_reset_reuse():
    d = MemoryZonedDevice(2, 3 * 512, block_size=512)
    d.append(0, b"a" * 1536)
    d.reset(0)
    d.append(0, b"b" * 512)
    d.finish(0)
    assert d.read(0, 0, 1536) == b"b" * 512 + bytes(1024)  # stale bytes of the old generation never show
    d.close()
    with pytest.raises(ZoneError, match="closed"):
        d.read(0, 0, 1)
