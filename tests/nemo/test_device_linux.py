"""Linux zoned block device backend: ioctl numbers and struct layouts against blkzoned.h (no device needed)."""

from __future__ import annotations

import struct

import pytest

from tierwise.nemo.device import ZoneError
from tierwise.nemo.device import linux as lx


def test_ioctl_numbers_match_blkzoned_h():
    assert lx.BLKREPORTZONE == 0xC0101282
    assert lx.BLKRESETZONE == 0x40101283
    assert lx.BLKGETZONESZ == 0x80041284
    assert lx.BLKGETNRZONES == 0x80041285
    assert lx.BLKOPENZONE == 0x40101286
    assert lx.BLKCLOSEZONE == 0x40101287
    assert lx.BLKFINISHZONE == 0x40101288


def test_struct_sizes():
    assert lx.REPORT_HEADER.size == 16 and lx.ZONE.size == 64


def _kernel_fill(buf: bytearray, zones: list[tuple], flags: int) -> None:
    """What the kernel does on BLKREPORTZONE: write the count and flags, then the zones, field by field."""
    struct.pack_into("<QII", buf, 0, 0, len(zones), flags)
    for i, (start, length, wp, ztype, cond, cap) in enumerate(zones):
        off = 16 + 64 * i
        struct.pack_into("<QQQ", buf, off, start, length, wp)
        buf[off + 24:off + 28] = bytes([ztype, cond, 0, 1])  # type, cond, non_seq, reset
        struct.pack_into("<Q", buf, off + 32, cap)  # after 4 reserved bytes


@pytest.mark.parametrize("flags", [0, lx.BLK_ZONE_REP_CAPACITY])
def test_report_round_trip(flags):
    buf = lx.pack_report_request(2048, 3)
    assert len(buf) == 16 + 3 * 64 and struct.unpack_from("<QII", buf) == (2048, 3, 0)
    _kernel_fill(buf, [(0, 2048, 100, 2, 2, 1984), (2048, 2048, 4096, 2, 0xE, 1984)], flags)
    zones = lx.parse_report(buf)
    assert len(zones) == 2
    assert (zones[0].start, zones[0].len, zones[0].wp, zones[0].type, zones[0].cond) == (0, 2048, 100, 2, 2)
    assert zones[0].reset == 1 and zones[0].non_seq == 0
    assert zones[1].capacity == (1984 if flags else 2048)


def test_not_a_zoned_device():
    with pytest.raises(ZoneError, match="not a block device|not a zoned block device"):
        lx.LinuxZonedDevice("/dev/null")
