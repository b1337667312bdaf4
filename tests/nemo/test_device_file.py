"""File-backed device specifics: restart keeps write pointers and data, torn writes, fault injection, bad folders."""

from __future__ import annotations

import json
import os

import pytest

from tierwise.nemo.device import (FaultPlan, FileZonedDevice, MemoryZonedDevice, SimulatedCrash, ZoneCondition,
                                  ZoneError, open_device)

BS = 4096
GEO = dict(num_zones=4, zone_size=8 * BS, zone_capacity=6 * BS)


def test_reopen_sees_same_write_pointers_and_data(tmp_path):
    with FileZonedDevice(tmp_path / "d", **GEO) as d:
        d.append(0, b"a" * BS)
        d.append(0, b"b" * 2 * BS)
        d.open_zone(1)
        d.append(1, b"c" * 6 * BS)  # FULL by writing
        d.append(2, b"d" * BS)
        d.finish(2)  # FULL by finish
        d.open_zone(3)  # explicitly open, nothing written
    with FileZonedDevice(tmp_path / "d") as d:  # geometry comes from the folder
        assert (d.num_zones, d.zone_size, d.zone_capacity) == (4, 8 * BS, 6 * BS)
        assert [z.condition for z in d.report_zones()] == [ZoneCondition.CLOSED, ZoneCondition.FULL,
                                                          ZoneCondition.FULL, ZoneCondition.EMPTY]
        assert [d.write_pointer(z) for z in range(4)] == [3 * BS, 6 * BS, 6 * BS, 0]
        assert d.read(0, 0, 3 * BS) == b"a" * BS + b"b" * 2 * BS
        assert d.read(2, 0, 2 * BS) == b"d" * BS + bytes(BS)
        assert d.append(0, b"e" * BS) == 3 * BS  # a CLOSED zone continues at its write pointer
        assert d.stats.bytes_written == BS  # counters are per session


def test_zone_file_length_is_write_pointer(tmp_path):
    with FileZonedDevice(tmp_path / "d", **GEO) as d:
        d.append(1, b"x" * 2 * BS)
        assert os.path.getsize(d.zone_path(1)) == 2 * BS
        d.reset(1)
        assert os.path.getsize(d.zone_path(1)) == 0


@pytest.mark.parametrize("torn, expect_wp, tail", [("drop", 2 * BS, None), ("zeros", 3 * BS, "zeros"),
                                                   ("garbage", 3 * BS, "garbage")])
def test_crash_tears_the_last_write(tmp_path, torn, expect_wp, tail):
    d = FileZonedDevice(tmp_path / "d", **GEO, faults=FaultPlan(crash_after_bytes=BS + BS + 100, torn=torn))
    d.append(0, b"1" * BS)
    with pytest.raises(SimulatedCrash, match="simulated power loss"):
        d.append(0, b"2" * 3 * BS)  # only BS + 100 bytes of it reach the file
    with pytest.raises(ZoneError, match="closed"):
        d.append(0, b"3" * BS)  # a crashed device refuses use
    d = FileZonedDevice(tmp_path / "d")
    assert d.write_pointer(0) == expect_wp and d.condition(0) == ZoneCondition.CLOSED
    assert d.read(0, 0, 2 * BS) == b"1" * BS + b"2" * BS
    if tail:
        last = d.read(0, 2 * BS, BS)
        assert last[:100] == b"2" * 100
        assert (last[100:] == bytes(BS - 100)) == (tail == "zeros")
    d.close()


def test_partial_block_file_is_cut_back_on_open(tmp_path):
    FileZonedDevice(tmp_path / "d", **GEO).close()
    (tmp_path / "d" / "seq" / "2").write_bytes(b"z" * (BS + 10))
    with FileZonedDevice(tmp_path / "d") as d:
        assert d.write_pointer(2) == BS and d.read(2, 0, BS) == b"z" * BS


def test_bad_folders(tmp_path):
    with pytest.raises(ZoneError, match="not a zoned-device folder"):
        FileZonedDevice(tmp_path / "nothing")
    FileZonedDevice(tmp_path / "d", **GEO).close()
    with pytest.raises(ZoneError, match="zone_size=32768, not 65536"):
        FileZonedDevice(tmp_path / "d", num_zones=4, zone_size=16 * BS)
    (tmp_path / "d" / "seq" / "1").write_bytes(b"z" * 7 * BS)
    with pytest.raises(ZoneError, match="more than the zone capacity"):
        FileZonedDevice(tmp_path / "d")
    (tmp_path / "d" / "zoned.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ZoneError, match="corrupt zoned-device geometry"):
        FileZonedDevice(tmp_path / "d")


def test_file_shrunk_behind_the_devices_back(tmp_path):
    with FileZonedDevice(tmp_path / "d", **GEO) as d:
        d.append(0, b"q" * 2 * BS)
        os.truncate(d.zone_path(0), BS)
        with pytest.raises(ZoneError, match="shorter than its write pointer"):
            d.read(0, BS, 10)


def test_many_zones_more_than_open_file_limit(tmp_path):
    with FileZonedDevice(tmp_path / "d", num_zones=300, zone_size=BS) as d:
        for z in range(300):
            d.append(z, bytes([z % 256]) * BS)
        assert all(d.read(z, 0, 1) == bytes([z % 256]) for z in range(0, 300, 7))
        d.sync()


def test_open_device_specs(tmp_path):
    d = open_device("mem", flash_bytes=10 * BS, zone_size=4 * BS)
    assert isinstance(d, MemoryZonedDevice) and d.num_zones == 2
    f = open_device(f"file:{tmp_path / 'f'}", num_zones=3, zone_size=2 * BS, zone_capacity=BS)
    assert isinstance(f, FileZonedDevice) and f.zone_capacity == BS
    f.close()
    assert open_device(f"file:{tmp_path / 'f'}").num_zones == 3
    for bad in ("nvme", "file:", "zbd:", "mem:x"):
        with pytest.raises(ZoneError):
            open_device(bad, num_zones=1, zone_size=BS)
    with pytest.raises(ZoneError, match="needs a geometry"):
        open_device("mem")
    with pytest.raises(ZoneError, match="smaller than one zone"):
        open_device("mem", flash_bytes=BS, zone_size=2 * BS)


def test_crash_before_reset(tmp_path):
    d = FileZonedDevice(tmp_path / "d", **GEO, faults=FaultPlan(crash_before_reset=2))
    d.append(0, b"a" * BS)
    d.append(1, b"b" * BS)
    d.reset(0)
    with pytest.raises(SimulatedCrash, match="before reset #2"):
        d.reset(1)
    d = FileZonedDevice(tmp_path / "d")
    assert d.write_pointer(0) == 0 and d.read(1, 0, BS) == b"b" * BS  # the second reset never happened
    with pytest.raises(ZoneError, match="crash_before_reset"):
        FaultPlan(crash_before_reset=0)
