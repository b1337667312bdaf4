"""Zone-rule conformance, the same tests for every `ZonedDevice` backend.

The emulators run everywhere. Set `TIERWISE_ZBD=/dev/nvme0n1` to run the suite against a real zoned block device
too (`scripts/zns-vm-test` does that inside a QEMU guest with an emulated ZNS namespace). Tests only assume the
geometry the device reports, so they hold for any zone size, capacity and open/active limits.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from tierwise.common.errors import TierwiseError
from tierwise.nemo.device import FileZonedDevice, MemoryZonedDevice, ZoneCondition, ZoneError

BS = 4096
GEOMETRY = dict(num_zones=8, zone_size=16 * BS, zone_capacity=12 * BS, max_open_zones=2, max_active_zones=3)
ZBD = os.environ.get("TIERWISE_ZBD")


def _open_zbd():
    from tierwise.nemo.device.linux import LinuxZonedDevice

    return LinuxZonedDevice(ZBD)


BACKENDS = {
    "memory": lambda tmp: MemoryZonedDevice(**GEOMETRY),
    "file": lambda tmp: FileZonedDevice(tmp / "dev", **GEOMETRY),
    "file-direct": lambda tmp: FileZonedDevice(tmp / "dev", direct=True, **GEOMETRY),
}
if ZBD:
    BACKENDS["zbd"] = lambda tmp: _open_zbd()


@pytest.fixture(params=list(BACKENDS))
def dev(request, tmp_path):
    d = BACKENDS[request.param](tmp_path)
    for z in range(d.num_zones):  # a real device keeps state between tests
        if d.condition(z) != ZoneCondition.EMPTY:
            d.reset(z)
    yield d
    if hasattr(d, "kernel_zones"):  # a real device: the mirrored zone state must equal the kernel's report
        mirror = [(z.condition, z.write_pointer) for z in d.report_zones()]
        d.refresh()
        assert [(z.condition, z.write_pointer) for z in d.report_zones()] == mirror
    d.close()


def blocks(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n * BS)


def cap_blocks(d) -> int:
    return d.zone_capacity // d.block_size


def test_geometry_and_initial_report(dev):
    assert dev.block_size == BS
    assert dev.zone_capacity <= dev.zone_size and dev.zone_capacity % BS == 0
    zones = dev.report_zones()
    assert len(zones) == dev.num_zones
    for i, zi in enumerate(zones):
        assert (zi.index, zi.start, zi.size, zi.capacity) == (i, i * dev.zone_size, dev.zone_size, dev.zone_capacity)
        assert zi.condition == ZoneCondition.EMPTY and zi.write_pointer == 0 and zi.remaining == dev.zone_capacity


def test_append_advances_write_pointer_and_reads_back(dev):
    a, b = blocks(1, 1), blocks(2, 2)
    assert dev.append(0, a) == 0
    assert dev.condition(0) == ZoneCondition.IMP_OPEN
    assert dev.append(0, b) == BS
    assert dev.write_pointer(0) == 3 * BS
    assert dev.read(0, 0, 3 * BS) == a + b
    assert dev.read(0, BS + 100, 50) == b[100:150]  # reads need no alignment, only to stay below the write pointer
    assert dev.write_pointer(1) == 0


def test_write_must_be_at_write_pointer(dev):
    dev.append(0, blocks(1))
    with pytest.raises(ZoneError, match="not at the write pointer"):
        dev.write(0, 2 * BS, blocks(1))
    with pytest.raises(ZoneError, match="not at the write pointer"):
        dev.write(0, 0, blocks(1))
    dev.write(0, BS, blocks(1, 5))
    assert dev.read(0, BS, BS) == blocks(1, 5)


@pytest.mark.parametrize("n", [0, 1, BS - 1, BS + 512])
def test_unaligned_or_empty_write_rejected(dev, n):
    with pytest.raises(ZoneError, match="multiple of the block size"):
        dev.append(0, b"x" * n)
    assert dev.write_pointer(0) == 0 and dev.condition(0) == ZoneCondition.EMPTY


def test_fill_to_capacity_then_full(dev):
    n = cap_blocks(dev)
    with pytest.raises(ZoneError, match="exceeds zone capacity"):
        dev.append(1, bytes((n + 1) * BS))
    dev.append(1, bytes((n - 1) * BS))
    with pytest.raises(ZoneError, match="exceeds zone capacity"):
        dev.append(1, bytes(2 * BS))
    dev.append(1, blocks(1, 3))
    assert dev.condition(1) == ZoneCondition.FULL and dev.write_pointer(1) == dev.zone_capacity
    assert dev.read(1, dev.zone_capacity - BS, BS) == blocks(1, 3)
    with pytest.raises(ZoneError, match="FULL"):
        dev.append(1, blocks(1))


def test_read_rules(dev):
    dev.append(2, blocks(2))
    for off, n in [(2 * BS, 1), (2 * BS - 1, 2), (0, 2 * BS + 1), (5 * BS, BS)]:
        with pytest.raises(ZoneError, match="past the write pointer"):
            dev.read(2, off, n)
    with pytest.raises(ZoneError):
        dev.read(2, -1, 10)
    with pytest.raises(ZoneError):
        dev.read(2, 0, 0)
    with pytest.raises(ZoneError, match="past the write pointer"):
        dev.read(3, 0, 1)  # empty zone: nothing readable


@pytest.mark.parametrize("z", [-1, 10**9, "0", 1.0])
def test_bad_zone_index(dev, z):
    for call in (lambda: dev.append(z, blocks(1)), lambda: dev.read(z, 0, 1), lambda: dev.reset(z),
                 lambda: dev.finish(z), lambda: dev.zone_info(z), lambda: dev.write_pointer(z)):
        with pytest.raises(ZoneError, match="zone index"):
            call()
    with pytest.raises(ZoneError, match="zone index"):
        dev.append(dev.num_zones, blocks(1))


def test_zone_error_is_user_facing():
    assert issubclass(ZoneError, TierwiseError)


def test_reset_rewinds_and_forgets(dev):
    dev.append(0, blocks(3, 7))
    dev.reset(0)
    assert dev.condition(0) == ZoneCondition.EMPTY and dev.write_pointer(0) == 0
    with pytest.raises(ZoneError):
        dev.read(0, 0, 1)
    assert dev.append(0, blocks(1, 8)) == 0
    assert dev.read(0, 0, BS) == blocks(1, 8)
    dev.reset(1)  # resetting an EMPTY zone is allowed
    assert dev.condition(1) == ZoneCondition.EMPTY


def test_finish(dev):
    dev.append(0, blocks(1, 9))
    dev.finish(0)
    assert dev.condition(0) == ZoneCondition.FULL and dev.write_pointer(0) == dev.zone_capacity
    assert dev.read(0, 0, BS) == blocks(1, 9)
    assert dev.read(0, BS, 2 * BS) == bytes(2 * BS)  # never-written space of a finished zone reads zeros
    with pytest.raises(ZoneError, match="FULL"):
        dev.append(0, blocks(1))
    dev.finish(0)  # finishing a FULL zone is a no-op
    dev.finish(1)  # an EMPTY zone can be finished directly
    assert dev.condition(1) == ZoneCondition.FULL
    dev.reset(0)
    assert dev.condition(0) == ZoneCondition.EMPTY and dev.append(0, blocks(1)) == 0


def test_open_close_transitions(dev):
    dev.open_zone(0)
    assert dev.condition(0) == ZoneCondition.EXP_OPEN
    dev.append(0, blocks(1))
    assert dev.condition(0) == ZoneCondition.EXP_OPEN
    dev.close_zone(0)
    assert dev.condition(0) == ZoneCondition.CLOSED and dev.write_pointer(0) == BS
    dev.close_zone(0)  # closing a CLOSED zone is a no-op
    assert dev.append(0, blocks(1, 4)) == BS  # writing a CLOSED zone reopens it implicitly, at its write pointer
    assert dev.condition(0) == ZoneCondition.IMP_OPEN
    dev.open_zone(0)  # implicit -> explicit
    assert dev.condition(0) == ZoneCondition.EXP_OPEN
    dev.close_zone(0)
    with pytest.raises(ZoneError, match="only an open zone"):
        dev.close_zone(3)  # EMPTY
    dev.finish(4)
    with pytest.raises(ZoneError):
        dev.open_zone(4)  # FULL
    with pytest.raises(ZoneError):
        dev.close_zone(4)


def test_max_open_zones(dev):
    m = dev.max_open_zones
    if not m or m >= dev.num_zones or (dev.max_active_zones and m >= dev.max_active_zones):
        pytest.skip("device has no open-zone limit below its zone and active-zone counts")
    for z in range(m):
        dev.open_zone(z)
    with pytest.raises(ZoneError, match="too many open zones"):
        dev.open_zone(m)
    with pytest.raises(ZoneError, match="too many open zones"):
        dev.append(m, blocks(1))
    assert dev.condition(m) == ZoneCondition.EMPTY and dev.write_pointer(m) == 0
    dev.close_zone(0)  # an explicitly opened zone closed without writes is EMPTY again
    for z in range(m):  # all open now implicitly: a further write closes one of them instead of failing
        dev.reset(z)
        dev.append(z, blocks(1))
    dev.append(m, blocks(1))
    conds = [dev.condition(z) for z in range(m + 1)]
    assert conds.count(ZoneCondition.CLOSED) == 1 and dev.condition(m) == ZoneCondition.IMP_OPEN
    assert sum(c in (ZoneCondition.IMP_OPEN, ZoneCondition.EXP_OPEN) for c in conds) == m
    closed = conds.index(ZoneCondition.CLOSED)
    assert dev.append(closed, blocks(1)) == BS


def test_max_active_zones(dev):
    a = dev.max_active_zones
    if not a or a >= dev.num_zones:
        pytest.skip("device has no active-zone limit below its zone count")
    for z in range(a):  # CLOSED zones with data stay active
        dev.append(z, blocks(1))
        dev.close_zone(z)
    with pytest.raises(ZoneError, match="too many active zones"):
        dev.append(a, blocks(1))
    with pytest.raises(ZoneError, match="too many active zones"):
        dev.open_zone(a)
    dev.finish(0)  # a FULL zone is no longer active
    dev.append(a, blocks(1))
    dev.reset(a)
    dev.reset(1)
    assert dev.append(a + 1 if a + 1 < dev.num_zones else a, blocks(1)) == 0


def test_counters(dev):
    base = dev.stats.as_dict()  # the fixture's own resets of a reused real device count too
    zone_resets, zone_finishes = dev.stats.zone_resets[0], dev.stats.zone_finishes[0]
    dev.append(0, blocks(2))
    dev.append(0, blocks(1))
    dev.append(3, blocks(1))
    dev.read(0, 0, 100)
    dev.read(3, 0, BS)
    dev.read_into(0, 0, bytearray(BS))
    dev.finish(0)
    dev.reset(0)
    s = dev.stats
    assert (s.bytes_written, s.write_ios, s.bytes_read, s.read_ios) == (4 * BS, 3, 100 + 2 * BS, 3)
    assert (s.resets - base["resets"], s.finishes - base["finishes"]) == (1, 1)
    assert s.zone_bytes_written[0] == 3 * BS and s.zone_bytes_written[3] == BS and s.zone_bytes_written.sum() == 4 * BS
    assert s.zone_bytes_read[0] == 100 + BS and s.zone_bytes_read[3] == BS
    assert s.zone_resets[0] - zone_resets == 1 and s.zone_finishes[0] - zone_finishes == 1
    assert s.dlwa == 1.0 and s.as_dict()["bytes_written"] == 4 * BS


def test_read_into_and_buffer_types(dev):
    data = blocks(2, 11)
    dev.append(0, np.frombuffer(data[:BS], dtype=np.uint32))  # any buffer of whole blocks, counted in bytes
    dev.append(0, memoryview(data[BS:]))
    out = np.zeros(2 * BS, dtype=np.uint8)
    dev.read_into(0, 0, out)
    assert out.tobytes() == data
    mv = memoryview(bytearray(10))
    dev.read_into(0, BS, mv)
    assert bytes(mv) == data[BS:BS + 10]


def test_random_operations_match_model(dev):
    """A seeded random walk of appends/reads/resets/finishes against a dict model of the zones."""
    rng = random.Random(42)
    zones = list(range(min(dev.num_zones, 3)))  # stays within any open/active limit >= 3 or none
    if dev.max_active_zones and dev.max_active_zones < len(zones):
        zones = zones[:dev.max_active_zones]
    if dev.max_open_zones and dev.max_open_zones < len(zones):
        zones = zones[:dev.max_open_zones]
    model = {z: b"" for z in zones}
    full = {z: False for z in zones}
    for step in range(150):
        z = rng.choice(zones)
        op = rng.random()
        if op < 0.5:
            n = rng.randint(1, 3) * BS
            if full[z] or len(model[z]) + n > dev.zone_capacity:
                with pytest.raises(ZoneError):
                    dev.append(z, bytes(n))
            else:
                data = rng.randbytes(n)
                assert dev.append(z, data) == len(model[z])
                model[z] += data
                full[z] = len(model[z]) == dev.zone_capacity
        elif op < 0.8 and model[z]:
            off = rng.randrange(len(model[z]))
            n = rng.randint(1, len(model[z]) - off)
            assert dev.read(z, off, n) == model[z][off:off + n]
        elif op < 0.9:
            dev.reset(z)
            model[z], full[z] = b"", False
        else:
            dev.finish(z)
            model[z] += bytes(dev.zone_capacity - len(model[z]))
            full[z] = True
        assert dev.write_pointer(z) == len(model[z])
        assert (dev.condition(z) == ZoneCondition.FULL) == full[z]
