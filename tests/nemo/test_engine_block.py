"""The large-object log (`block`) beyond the conformance suite (which recovers it after a close and a torn write):
recovery after damage to an older zone, which may have held a tombstone."""

from __future__ import annotations

from tierwise.nemo.device import FileZonedDevice
from tierwise.nemo.engines import make_engine

ZONES, ZONE = 8, 256 << 10


def test_damage_to_an_older_zone_never_brings_a_deleted_key_back(tmp_path):
    """A flipped byte in an older zone cuts that zone's records short: a tombstone after it is lost, so everything
    older than the damage is forgotten rather than risk serving a deleted key."""
    dev = FileZonedDevice(tmp_path / "z", ZONES, ZONE)
    engine = make_engine("block", dev)
    engine.set(b"gone", b"v" * 100_000)  # zone 0
    engine.set(b"filler", b"f" * 170_000)  # does not fit: seals zone 0, opens zone 1
    engine.delete(b"gone")  # its tombstone: in zone 1, after the filler
    engine.set(b"filler2", b"g" * 200_000)  # seals zone 1
    engine.set(b"kept", b"k" * 1000)  # in zone 2
    engine.close()
    zone1 = dev.zone_path(1)
    dev.close()
    data = bytearray(zone1.read_bytes())
    data[170_032 + 20] ^= 0xFF  # inside the tombstone (after the filler's 170,032-byte record): checksum fails
    zone1.write_bytes(bytes(data))
    engine = make_engine("block", FileZonedDevice(tmp_path / "z"), recover=True)
    assert engine.recovered["damaged_zones"] == 1
    assert engine.get(b"gone") is None
    assert engine.get(b"kept") == b"k" * 1000  # newer than the damage: kept


def test_a_zone_with_no_readable_record_forgets_the_whole_log(tmp_path):
    """Where such a zone stood in the log is unknown, so any record may have had its tombstone there."""
    dev = FileZonedDevice(tmp_path / "u", ZONES, ZONE)
    engine = make_engine("block", dev)
    engine.set(b"gone", b"v" * 100_000)
    engine.set(b"filler", b"f" * 170_000)
    engine.delete(b"gone")
    engine.set(b"filler2", b"g" * 200_000)
    engine.close()
    zone1 = dev.zone_path(1)
    dev.close()
    data = bytearray(zone1.read_bytes())
    data[20] ^= 0xFF  # the zone's first record
    zone1.write_bytes(bytes(data))
    engine = make_engine("block", FileZonedDevice(tmp_path / "u"), recover=True)
    assert engine.recovered["damaged_zones"] == 1 and engine.object_count() == 0
    assert engine.get(b"gone") is None and engine.get(b"filler2") is None
    engine.set(b"after", b"a" * 5000)  # and it goes on working
    assert engine.get(b"after") == b"a" * 5000
