"""The large-object log (`block`) beyond the conformance suite: objects far larger than a page, recovery after a
clean close, after a torn write, and after damage to an older zone (which may have held a tombstone)."""

from __future__ import annotations

import random

import pytest

from tierwise.nemo.device import FaultPlan, FileZonedDevice, SimulatedCrash
from tierwise.nemo.engines import make_engine

ZONES, ZONE = 8, 256 << 10


def workload(engine, n: int, seed: int, latest: dict, history: dict | None = None) -> None:
    """Sets of 1 B..60 KB and deletes over 100 keys."""
    rng = random.Random(seed)
    for i in range(n):
        k = b"k%d" % rng.randrange(100)
        if rng.random() < 0.1:
            engine.delete(k)
            latest[k] = None
        else:
            v = b"%d:" % (seed * 1_000_000 + i) + rng.randbytes(rng.randrange(1, 60_000))
            if history is not None:
                history.setdefault(k, set()).add(v)
            engine.set(k, v)
            latest[k] = v


def served(engine, latest: dict) -> int:
    """Every key serves its newest value or misses (a deleted one misses); returns the hits."""
    hits = 0
    for k, v in latest.items():
        got = engine.get(k)
        assert got is None or got == v, f"{k!r}: served an older or deleted value"
        hits += got is not None
    return hits


def test_recovers_newest_or_nothing_after_close_and_again(tmp_path):
    dev = FileZonedDevice(tmp_path / "d", ZONES, ZONE)
    engine = make_engine("block", dev)
    latest: dict = {}
    workload(engine, 800, 1, latest)
    assert engine.metrics.counters.get("evicted_objects", 0) > 0 and engine.metrics.counters.get("tombstones", 0) > 0
    before = served(engine, latest)
    engine.close()
    dev.close()
    for round_ in range(2):
        dev = FileZonedDevice(tmp_path / "d")
        engine = make_engine("block", dev, recover=True)
        assert served(engine, latest) == before if round_ == 0 else True
        assert engine.recovered["zones"] > 0 and engine.recovered["damaged_zones"] == 0
        workload(engine, 200, 10 + round_, latest)
        before = served(engine, latest)
        engine.close()
        dev.close()


@pytest.mark.parametrize("torn", ["drop", "garbage"])
def test_a_crash_serves_only_written_values(tmp_path, torn):
    """A torn last write loses what the buffer held: a key may read back an older value it had, never bytes that
    were not written for it."""
    dev = FileZonedDevice(tmp_path / "c", ZONES, ZONE, faults=FaultPlan(crash_after_bytes=3_000_000, torn=torn, seed=5))
    engine = make_engine("block", dev)
    history: dict = {}
    with pytest.raises(SimulatedCrash):
        workload(engine, 10_000, 2, {}, history)
    engine = make_engine("block", FileZonedDevice(tmp_path / "c"), recover=True)
    hits = 0
    for k, values in history.items():
        got = engine.get(k)
        assert got is None or got in values, f"{k!r}: recovered bytes never written for it"
        hits += got is not None
    assert hits > 0
    latest: dict = {}
    workload(engine, 300, 7, latest)
    served(engine, latest)


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
