"""Conventional-SSD model: data round trip, DLWA ~ 1 for sequential writes, well above 1 for random overwrites."""

from __future__ import annotations

import numpy as np
import pytest

from tierwise.nemo.device import FtlSSD, ZoneError

PS = 4096


def test_round_trip_trim_and_bounds():
    ssd = FtlSSD(64 * PS, op=0.5, pages_per_block=8)
    ssd.write_at(3 * PS, b"a" * PS + b"b" * PS)
    assert ssd.read_at(3 * PS + PS - 2, 4) == b"aabb" and ssd.read_at(0, 10) == bytes(10)
    ssd.trim(3 * PS, PS)
    assert ssd.read_at(3 * PS, PS) == bytes(PS) and ssd.valid_pages == 1
    for bad in (lambda: ssd.write_at(1, b"x" * PS), lambda: ssd.write_at(0, b"x" * 10),
                lambda: ssd.write_at(64 * PS, b"x" * PS), lambda: ssd.read_at(64 * PS, 1), lambda: ssd.trim(0, 0)):
        with pytest.raises(ZoneError):
            bad()
    s = ssd.stats
    assert s.bytes_written == 2 * PS and s.nand_bytes_written == 2 * PS and s.dlwa == 1.0


def test_op_too_small_rejected():
    with pytest.raises(ZoneError, match="spare erase block"):
        FtlSSD(64 * PS, op=0.01, pages_per_block=8)


def test_sequential_rewrites_have_dlwa_one():
    ssd = FtlSSD(512 * PS, op=0.07, pages_per_block=16)
    buf = bytes(16 * PS)
    for _ in range(6):
        for off in range(0, ssd.capacity_bytes, len(buf)):
            ssd.write_at(off, buf)
    assert ssd.stats.erases > 0 and ssd.stats.dlwa < 1.02
    assert ssd.stats.reclaims == ssd.stats.erases  # what the replay's warm-up watches


@pytest.mark.parametrize("op, low", [(0.07, 2.5), (0.5, 1.1)])
def test_random_overwrites_amplify_more_at_low_op(op, low):
    ssd = FtlSSD(1024 * PS, op=op, pages_per_block=32)
    page = bytes(PS)
    for off in range(0, ssd.capacity_bytes, PS):  # fill once
        ssd.write_at(off, page)
    rng = np.random.default_rng(0)
    for lpn in rng.integers(0, 1024, 8 * 1024).tolist():
        ssd.write_at(lpn * PS, page)
    s = ssd.stats
    assert s.dlwa > low and s.gc_page_copies > 0
    assert s.nand_pages_written == s.bytes_written // PS + s.gc_page_copies  # every NAND page is host or GC
    assert ssd.valid_pages == 1024


def test_dlwa_falls_as_op_grows():
    def run(op):
        ssd = FtlSSD(1024 * PS, op=op, pages_per_block=32)
        rng = np.random.default_rng(1)
        for lpn in rng.integers(0, 1024, 10 * 1024).tolist():
            ssd.write_at(lpn * PS, bytes(PS))
        return ssd.stats.dlwa
    assert run(0.07) > run(0.2) > run(0.5)
