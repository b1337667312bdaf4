"""The system-call path of the compiled device core (what a real zoned block device uses: pread / pwrite through an
aligned staging buffer, no mapping), exercised on a plain file standing in for the block device. Zone management
ioctls need a real zoned device (`scripts/zns-vm-test` runs the conformance suite on one in a QEMU guest); on a
plain file they fail, which checks that a refused system call becomes a ZoneError naming the zone."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tierwise.nemo.device import ZoneError
from tierwise.nemo.device import flash as fl
from tierwise.nemo.device.base import ZonedDevice
from tierwise.nemo.engines import make_engine
from tierwise.nemo.layout import PAGE_SIZE


class PlainFileAsBlockDevice(ZonedDevice):
    """Zones at fixed offsets of one regular file, driven through the SYSCALL backend of flash.py."""

    kind = fl.SYSCALL

    def __init__(self, path, num_zones: int, zone_size: int):
        super().__init__(num_zones, zone_size)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, num_zones * zone_size)
        self._build(np.zeros(0, np.uint8), fds=np.array([self._fd], np.int64),
                    starts=np.arange(num_zones, dtype=np.int64) * zone_size)

    def _release(self) -> None:
        os.close(self._fd)


def test_appends_and_reads_go_through_pread_and_pwrite(tmp_path):
    dev = PlainFileAsBlockDevice(tmp_path / "blk", 4, 8 * PAGE_SIZE)
    data = np.random.default_rng(0).integers(0, 256, 3 * PAGE_SIZE, dtype=np.uint8).tobytes()
    assert dev.append(2, data) == 0 and dev.append(2, data[:PAGE_SIZE]) == 3 * PAGE_SIZE
    assert dev.read(2, 0, 3 * PAGE_SIZE) == data
    assert dev.read(2, 100, 5000) == data[100:5100]  # unaligned: through the staging buffer
    with open(tmp_path / "blk", "rb") as f:  # the bytes are where a block device would hold them
        f.seek(2 * 8 * PAGE_SIZE + PAGE_SIZE)
        assert f.read(PAGE_SIZE) == data[PAGE_SIZE:2 * PAGE_SIZE]
    assert dev.stats.bytes_written == 4 * PAGE_SIZE and dev.stats.read_ios == 2
    with pytest.raises(ZoneError, match="zone 2: I/O failed: Inappropriate ioctl"):
        dev.reset(2)  # the reset ioctl on a plain file: refused by the kernel
    dev.close()


def test_an_engine_runs_on_the_syscall_path(tmp_path):
    dev = PlainFileAsBlockDevice(tmp_path / "blk", 24, 10 * PAGE_SIZE)
    engine = make_engine("nemo", dev, sets_per_sg=8, flush_threshold=1)
    values = {b"k%d" % i: bytes([i % 251]) * (100 + i % 200) for i in range(1000)}
    for k, v in values.items():
        engine.set(k, v)
    assert engine.next_seq > 2 and engine.oldest == 0  # SGs reached the file, none evicted (no reset needed)
    got = {k: engine.get(k) for k in values}
    assert all(g is None or g == values[k] for k, g in got.items())
    assert sum(g is not None for g in got.values()) > 300
    assert engine.metrics.counters["get_flash_reads"] > 0  # lookups read set pages back with pread
    dev.close()
