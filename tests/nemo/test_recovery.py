"""Recovering a Nemo cache from flash: clean shutdown, crashes at any byte (torn writes), a crash between a data
flush and its index write, and damaged zones (flipped bytes, truncation). A recovered cache never serves a value
that is not the key's newest: damage only ever turns keys into misses."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from tierwise.common.errors import TierwiseError
from tierwise.nemo.device import FaultPlan, FileZonedDevice, SimulatedCrash
from tierwise.nemo.engines.nemo import NemoEngine
from tierwise.nemo.layout import PAGE_SIZE

ZONES, ZONE = 24, 256 << 10  # S = 62 sets per SG, ~20 SG slots, index groups of a few SGs
P_TH = 1  # flush at the first failed insert: many flushes (ring wraps, index groups complete) in a short workload


def workload(engine, n: int, seed: int, history: dict | None = None) -> dict[bytes, bytes | None]:
    """Sets, overwrites and deletes; returns the newest value of every key (None = deleted)."""
    rng = random.Random(seed)
    latest: dict[bytes, bytes | None] = {}
    for i in range(n):
        key = b"key%d" % rng.randrange(n // 3)
        if rng.random() < 0.08:
            engine.delete(key)
            latest[key] = None
        else:
            value = b"%d:" % i + rng.randbytes(rng.randrange(60, 400))
            if history is not None:
                history.setdefault(key, set()).add(value)
            engine.set(key, value)
            latest[key] = value
    return latest


def check_newest_or_absent(engine, latest: dict) -> int:
    hits = 0
    for key, value in latest.items():
        got = engine.get(key)
        if got is not None:
            assert got == value, f"{key!r}: recovered a value that is not its newest"
            hits += 1
    return hits


def check_written_or_absent(engine, history: dict) -> None:
    for key, values in history.items():
        got = engine.get(key)
        assert got is None or got in values, f"{key!r}: recovered bytes that were never written"


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """A cache written with overwrites and deletes, wrapped around the ring, then shut down cleanly."""
    path = tmp_path_factory.mktemp("golden") / "dev"
    dev = FileZonedDevice(path, ZONES, ZONE)
    engine = NemoEngine(dev, flush_threshold=P_TH)
    history: dict[bytes, set] = {}
    latest = workload(engine, 24000, seed=1, history=history)
    assert engine.oldest > 0  # SGs were evicted: the ring wrapped
    engine.close()
    dev.close()
    return path, latest, history


def reopen(path) -> NemoEngine:
    return NemoEngine(FileZonedDevice(path), recover=True)


def copy_of(golden, tmp_path):
    src, latest, _ = golden
    dst = tmp_path / "dev"
    shutil.copytree(src, dst)
    return dst, latest


def test_clean_shutdown_recovers_everything_flushed(golden, tmp_path):
    path, latest = copy_of(golden, tmp_path)
    engine = reopen(path)
    rep = engine.recovery
    assert rep.live_sgs == engine.N and not rep.damaged_slots and rep.bad_pages == 0 and not rep.cleared
    assert rep.index_blocks_loaded >= 2 and rep.open_group_sgs >= 0
    live = sum(1 for v in latest.values() if v is not None)
    assert check_newest_or_absent(engine, latest) > 0.5 * live
    # It goes on working: more writes, flushes and evictions, then a second recovery.
    more = workload(engine, 6000, seed=2)
    engine.close()
    engine.device.close()
    engine = reopen(path)
    check_newest_or_absent(engine, {**latest, **more})
    assert check_newest_or_absent(engine, more) > 0.5 * sum(1 for v in more.values() if v is not None)


def _slot_zone_file(path, engine, seq: int):
    return os.path.join(path, "seq", str((seq % engine.N) * engine.geo.zones_per_sg))


def _flip(file, offset: int) -> None:
    with open(file, "r+b") as f:
        f.seek(offset)
        b = f.read(8)
        f.seek(offset)
        f.write(bytes(x ^ 0xA5 for x in b))


def _live_range(path):
    engine = reopen(path)
    engine.device.close()
    return engine, engine.oldest, engine.next_seq


def test_flipped_bytes_in_a_set_page_are_detected(golden, tmp_path):
    path, latest = copy_of(golden, tmp_path)
    probe, lo, hi = _live_range(path)
    mid = (lo + hi) // 2
    for j in (0, 7, 30):
        _flip(_slot_zone_file(path, probe, mid), (1 + j) * PAGE_SIZE + 200)
    engine = reopen(path)
    assert engine.recovery.bad_pages == 3 and engine.recovery.live_sgs == hi - lo
    check_newest_or_absent(engine, latest)


def test_flipped_trailer_drops_that_sg_and_older(golden, tmp_path):
    path, latest = copy_of(golden, tmp_path)
    probe, lo, hi = _live_range(path)
    mid = (lo + hi) // 2
    _flip(_slot_zone_file(path, probe, mid), (probe.S + 1) * PAGE_SIZE + 10)
    engine = reopen(path)
    rep = engine.recovery
    assert any("trailer" in d for d in rep.damaged_slots)
    assert engine.oldest > mid and rep.dropped_committed >= mid - lo
    check_newest_or_absent(engine, latest)


def test_truncated_zone_in_the_middle_drops_that_sg_and_older(golden, tmp_path):
    path, latest = copy_of(golden, tmp_path)
    probe, lo, hi = _live_range(path)
    mid = (lo + hi) // 2
    os.truncate(_slot_zone_file(path, probe, mid), 10 * PAGE_SIZE + 123)  # also a torn (partial) block
    engine = reopen(path)
    assert any("incomplete" in d for d in engine.recovery.damaged_slots)
    assert engine.oldest > mid
    check_newest_or_absent(engine, latest)


def test_truncated_newest_sg_is_a_torn_flush(golden, tmp_path):
    path, latest = copy_of(golden, tmp_path)
    probe, lo, hi = _live_range(path)
    os.truncate(_slot_zone_file(path, probe, hi - 1), 5 * PAGE_SIZE)
    engine = reopen(path)
    rep = engine.recovery
    assert rep.torn_head == 1 and engine.next_seq == hi - 1 and not rep.cleared
    # What a torn flush held was only in DRAM when the crash came: those keys may read back an older value (the
    # server's acknowledgement journal deletes them, see test_crash.py), never bytes that were not written.
    check_written_or_absent(engine, golden[2])
    check_newest_or_absent(engine, workload(engine, 3000, seed=5))  # the reused slot and sequence number work


def test_damaged_index_page_is_detected(golden, tmp_path):
    path, latest = copy_of(golden, tmp_path)
    probe, lo, hi = _live_range(path)
    z = probe.geo.index_zones[0]
    size = os.path.getsize(os.path.join(path, "seq", str(z)))
    for off in range(PAGE_SIZE, size, probe.geo.index_block_pages * PAGE_SIZE):  # a row page of every block
        _flip(os.path.join(path, "seq", str(z)), off + 500)
    engine = reopen(path)
    assert engine.recovery.index_blocks_damaged >= 1
    check_newest_or_absent(engine, latest)


def test_crashes_at_random_points_never_serve_garbage(tmp_path):
    for trial, torn in enumerate(("drop", "zeros", "garbage")):
        path = tmp_path / f"dev{trial}"
        crash_at = random.Random(trial).randrange(1 << 20, 5 << 20)
        dev = FileZonedDevice(path, ZONES, ZONE, faults=FaultPlan(crash_after_bytes=crash_at, torn=torn, seed=trial))
        history: dict[bytes, set] = {}
        with pytest.raises(SimulatedCrash):
            workload(NemoEngine(dev, flush_threshold=P_TH), 30000, seed=trial, history=history)
        engine = reopen(path)
        check_written_or_absent(engine, history)
        latest = workload(engine, 4000, seed=10 + trial)  # the recovered cache keeps working
        check_newest_or_absent(engine, latest)


def test_crash_between_data_flush_and_index_write_rebuilds_the_block(tmp_path):
    # The first index block is written right after the G-th SG, and nothing but those G SGs is written before it.
    probe = NemoEngine(FileZonedDevice(tmp_path / "probe", ZONES, ZONE), flush_threshold=P_TH)
    G = probe.geo.group_size
    first_index_write = G * (probe.S + 2) * PAGE_SIZE
    workload(probe, 20000, seed=3)
    assert probe.device.stats.zone_bytes_written[probe.geo.index_zones].sum() > 0  # the workload reaches it

    path = tmp_path / "dev"
    dev = FileZonedDevice(path, ZONES, ZONE, faults=FaultPlan(crash_after_bytes=first_index_write + PAGE_SIZE))
    with pytest.raises(SimulatedCrash):
        workload(NemoEngine(dev, flush_threshold=P_TH), 20000, seed=3)
    engine = reopen(path)
    rep = engine.recovery
    assert rep.index_blocks_rebuilt == 1 and rep.index_blocks_damaged == 1 and engine.next_seq == G
    assert engine.open_group == 1 and engine.oldest == 0
    workload(engine, 8000, seed=4)  # later groups go to the index after the rebuilt block
    engine.close()
    engine.device.close()
    assert reopen(path).recovery.index_blocks_loaded >= 2


def test_other_parameters_are_refused(golden, tmp_path):
    path, _ = copy_of(golden, tmp_path)
    with pytest.raises(TierwiseError, match="other parameters"):
        NemoEngine(FileZonedDevice(path), recover=True, fp_rate=0.01)


def test_index_pages_with_fewer_rows_recover_and_spread_the_index(tmp_path):
    """index_rows_per_page caps R (rows per index page): the index block spans more pages, the engine answers the
    same, and recovery reads the R the blocks were written with."""
    dev = FileZonedDevice(tmp_path / "dev", ZONES, ZONE)
    engine = NemoEngine(dev, flush_threshold=P_TH, index_rows_per_page=2)
    packed = NemoEngine(FileZonedDevice(tmp_path / "packed", ZONES, ZONE), flush_threshold=P_TH)
    assert engine.geo.rows_per_page == 2 < packed.geo.rows_per_page
    assert engine.geo.index_block_pages == 1 + -(-engine.S // 2)
    packed.close()
    packed.device.close()
    latest = workload(engine, 24000, seed=5)
    assert engine.oldest > 0 and check_newest_or_absent(engine, latest) > 0
    engine.close()
    dev.close()
    recovered = NemoEngine(FileZonedDevice(tmp_path / "dev"), recover=True, index_rows_per_page=2)
    assert recovered.recovery.index_blocks_loaded >= 1 and check_newest_or_absent(recovered, latest) > 0
    with pytest.raises(TierwiseError):
        NemoEngine(FileZonedDevice(tmp_path / "dev"), recover=True, index_rows_per_page=0)
