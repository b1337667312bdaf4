"""The acknowledgement journal: replay order, damaged blocks, the tail a killed process leaves, retirement, the
flush_all threshold surviving, checkpoints (the bound on its size, a crash at every point of one) and the sync
policy. (Crash-level fault tests are in test_server_faults.py and test_server_crash_points.py.)"""

from __future__ import annotations

import os
import time
import types
from pathlib import Path

import pytest

from tierwise.common.errors import TierwiseError
from tierwise.nemo.server import journal
from tierwise.nemo.server.commands import CommandHandler
from tierwise.nemo.server.journal import (CLOCK, DELETE, FLUSH, SET, SET_RECORD, AckJournal, encode_block,
                                          encode_record)
from tierwise.nemo.server.protocol import Limits

from tests.nemo.test_server_faults import Wire, kill, newest_or_absent, open_dev, wire
from tests.nemo.test_server_support import DictEngine


def test_replay_keeps_the_last_record_per_key_and_reports_a_truncated_tail(tmp_path):
    j = AckJournal(tmp_path / "j")
    j.add(SET, b"a", 1)
    j.add(SET, b"b", 2)
    j.commit(durable=0)
    j.add(DELETE, b"a", 0)
    j.add(SET, b"c", 3)
    j.commit(durable=0)
    j.add(SET, b"c", 4)
    j.commit(durable=0)
    j.close()
    seg = sorted((tmp_path / "j").glob("*.log"))[-1]
    os.truncate(seg, seg.stat().st_size - 3)  # a closed segment ends at whole blocks: this one lost bytes
    replay = AckJournal(tmp_path / "j").load(durable=0)
    assert replay.last == {b"a": (DELETE, 0, 0, b""), b"b": (SET, 2, 0, b""), b"c": (SET, 3, 0, b"")}
    assert len(replay.damage) == 1 and replay.distrust_below > 4


def test_a_flipped_byte_skips_only_its_block_and_is_reported(tmp_path):
    j = AckJournal(tmp_path / "j")
    for i in range(3):
        j.add(SET, b"k%d" % i, i)
        j.commit(durable=0)
    j.close()
    seg = sorted((tmp_path / "j").glob("*.log"))[-1]
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0xFF
    seg.write_bytes(bytes(data))
    replay = AckJournal(tmp_path / "j").load(durable=0)
    assert set(replay.last) == {b"k0", b"k1"} and "1 records" in replay.damage[0]


def test_segments_retire_after_lag_flushes_and_threshold_survives(tmp_path):
    j = AckJournal(tmp_path / "j", segment_bytes=64)
    j.add(FLUSH, b"", 77)
    for i in range(20):
        j.add(SET, b"key%d" % i, i)
        j.commit(durable=i)  # a new segment every commit or two
    many = len(list((tmp_path / "j").glob("*.log")))
    j.retire(durable=100, lag=2)
    assert len(list((tmp_path / "j").glob("*.log"))) < many
    j.clear(durable=100)
    j.close()
    fresh = AckJournal(tmp_path / "j")
    replay = fresh.load(durable=0)
    assert replay.last == {} and fresh.flush_threshold == 77 and replay.seq == 100


def test_records_are_readable_before_close_as_a_killed_process_leaves_them(tmp_path):
    # A segment is preallocated and written through a memory map: after a kill -9 the file keeps its full length
    # with a zero tail, and replay stops there.
    j = AckJournal(tmp_path / "j", segment_bytes=4096)
    j.add(SET, b"a", 1)
    j.commit(durable=0)
    j.add(DELETE, b"a", 0)
    j.add(SET, b"b", 2)
    j.commit(durable=0)
    j.add(SET, b"c", 3)  # not committed: its write was never acknowledged
    (seg,) = (tmp_path / "j").glob("*.log")
    assert seg.stat().st_size == 4096
    replay = AckJournal(tmp_path / "j").load(durable=0)
    assert replay.last == {b"a": (DELETE, 0, 0, b""), b"b": (SET, 2, 0, b"")} and not replay.damage
    assert j.size == j.bytes_written + 30  # the header block (FLUSH and SEQ records) and the two commits
    j.close()
    assert seg.stat().st_size == j.size


def test_a_batch_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path):
    j = AckJournal(tmp_path / "j", segment_bytes=64)
    for i in range(100):
        j.add(SET, b"key%d" % i, i)
    j.commit(durable=0)
    j.close()
    assert len(AckJournal(tmp_path / "j").load(durable=0).last) == 100


def test_a_set_given_its_item_bytes_is_replayed_with_them(tmp_path):
    j = AckJournal(tmp_path / "j")
    j.add(SET, b"a", 1, 0, b"item-a")
    j.add(SET, b"b", 2, 99)
    j.commit(durable=0)
    j.close()
    replay = AckJournal(tmp_path / "j").load(durable=0)
    assert replay.last == {b"a": (SET, 1, 0, b"item-a"), b"b": (SET, 2, 99, b"")}


# ---- checkpoints: a bounded journal -------------------------------------------------------------------------------

class Buffers:
    """What an engine's DRAM buffers hold, for the journal's `snapshot`: the latest state of a few keys."""

    def __init__(self):
        self.latest: dict[bytes, tuple] = {}  # key -> (kind, cas, exptime, data), as `Replay.last` has it

    def write(self, j: AckJournal, key: bytes, cas: int) -> None:
        state = (DELETE, 0, 0, b"") if cas % 5 == 0 else (SET, cas, cas % 3, b"v%d" % cas)
        self.latest[key] = state
        kind, value, exptime, data = state
        j.add(kind, key, value, exptime, data)

    def snapshot(self) -> list:
        return [(kind, key, value, exptime, data) for key, (kind, value, exptime, data) in self.latest.items()]


def journal_with_history(folder, writes: int, keys: int) -> tuple[AckJournal, Buffers]:
    j = AckJournal(folder, segment_bytes=4096, compact_bytes=1 << 40)  # no checkpoint unless asked
    j.start(durable=0)
    buffers = Buffers()
    for i in range(1, writes + 1):
        buffers.write(j, b"k%d" % (i % keys), i)
        j.commit(durable=0)
    return j, buffers


def test_a_checkpoint_keeps_only_the_buffered_state_and_the_flush_threshold(tmp_path):
    j, buffers = journal_with_history(tmp_path / "j", writes=2000, keys=50)
    j.add(FLUSH, b"", 1500)
    j.commit(durable=0)
    j.snapshot = buffers.snapshot
    before = j.size
    assert j.checkpoint(durable=0)
    assert len(list((tmp_path / "j").glob("*.log"))) == 1 and j.size < before / 10
    j.close()
    fresh = AckJournal(tmp_path / "j")
    assert fresh.load(durable=0).last == buffers.latest and fresh.flush_threshold == 1500


def test_the_journal_stays_under_its_bound_when_the_working_set_fits_the_buffers(tmp_path):
    j = AckJournal(tmp_path / "j", segment_bytes=4096, compact_bytes=16 << 10)
    j.start(durable=0)
    buffers = Buffers()
    j.snapshot = buffers.snapshot
    largest = 0
    for i in range(1, 20_001):  # nothing is ever flushed: only checkpoints can keep it small
        buffers.write(j, b"key-%d" % (i % 100), i)
        j.commit(durable=0)
        limit = j.limit
        j.retire(durable=0, lag=2)
        largest = max(largest, j.size - limit)
    assert j.checkpoints > 10 and j.bytes_written > 20 * j.limit
    assert largest <= 64  # over the limit by one commit at most, and only until that commit's checkpoint
    header, clock = 30, encode_record(CLOCK, b"", 0)
    checkpoint = header + len(encode_block(clock + b"".join(encode_record(*r) for r in buffers.snapshot())))
    assert j.limit == max(16 << 10, 2 * checkpoint)


class Crash(Exception):
    """kill -9 at this point."""


@pytest.mark.parametrize("point", range(19))
def test_a_crash_at_any_point_of_a_checkpoint_loses_nothing_and_never_goes_back(tmp_path, monkeypatch, point):
    # Points 1-18: before each block of the checkpoint segment is copied (its header block first), between a block's
    # body and its header (a torn block), before each of the old segments is deleted; 0: after the whole checkpoint.
    j, buffers = journal_with_history(tmp_path / "j", writes=600, keys=40)
    monkeypatch.setattr(journal, "_CHECKPOINT_BLOCK", 200)  # a checkpoint of several blocks
    events = []
    append, unlink = AckJournal._append, Path.unlink

    def crash_here() -> bool:
        events.append(None)
        return len(events) == point

    def crashing_append(self, block):
        if crash_here():
            raise Crash
        if crash_here():  # torn: the body is copied, the header not yet
            self._map[self._size + 8:self._size + len(block)] = block[8:]
            raise Crash
        append(self, block)

    def crashing_unlink(path, missing_ok=False):
        if crash_here():
            raise Crash
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(AckJournal, "_append", crashing_append)
    monkeypatch.setattr(Path, "unlink", crashing_unlink)
    j.snapshot = buffers.snapshot
    try:
        j.checkpoint(durable=0)
    except Crash:
        pass
    monkeypatch.undo()
    replay = AckJournal(tmp_path / "j").load(durable=0)  # the mapping was never closed, as after kill -9
    assert not replay.damage
    # every key the buffers hold has its latest state; any other key only its latest state or nothing (on flash)
    assert set(buffers.latest) <= set(replay.last)
    assert all(replay.last[key] == buffers.latest[key] for key in replay.last)


def test_damage_before_a_checkpoint_cut_short_distrusts_every_earlier_write(tmp_path, monkeypatch):
    # Two faults: the last commit before a checkpoint is damaged, and the process dies after the checkpoint's first
    # block. That block's lowest cas must not become the bound on what the damaged commit held.
    j, buffers = journal_with_history(tmp_path / "j", writes=600, keys=40)
    seg = sorted((tmp_path / "j").glob("*.log"))[-1]
    monkeypatch.setattr(journal, "_CHECKPOINT_BLOCK", 200)
    append = AckJournal._append
    appends = []

    def crashing_append(self, block):
        appends.append(None)
        if len(appends) == 3:  # the header block and the first block of records are in
            raise Crash
        append(self, block)

    monkeypatch.setattr(AckJournal, "_append", crashing_append)
    j.snapshot = buffers.snapshot
    with pytest.raises(Crash):
        j.checkpoint(durable=0)
    monkeypatch.undo()
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF  # in the last commit (write 600, a delete)
    seg.write_bytes(bytes(data))
    replay = AckJournal(tmp_path / "j").load(durable=0)
    assert replay.damage and replay.distrust_below > 600


# ---- sync policy ----------------------------------------------------------------------------------------------------

class Clock:
    """The journal's time: a fake monotonic clock that `sleep` advances, and the fdatasync calls made."""

    def __init__(self, monkeypatch):
        self.now = 1000.0
        self.slept: list[float] = []
        self.syncs = 0
        monkeypatch.setattr(journal, "time", types.SimpleNamespace(monotonic=lambda: self.now, sleep=self.sleep,
                                                                   time_ns=time.time_ns))
        monkeypatch.setattr(os, "fdatasync", self.fdatasync)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1


@pytest.mark.parametrize("policy", ["always", "batch", "never"])
def test_the_sync_policy_syncs_before_the_reply(tmp_path, monkeypatch, policy):
    clock = Clock(monkeypatch)
    handler = CommandHandler(DictEngine(), Limits(), AckJournal(tmp_path / "j", sync=policy, sync_interval=0.01))
    w = Wire(handler)
    syncs = []
    for i in range(3):
        assert w(b"set k%d 0 0 1\r\nx\r\n" % i) == b"STORED\r\n"
        syncs.append(clock.syncs)  # counted when the reply was ready, before it was sent
    assert w(b"get k0\r\n") == b"VALUE k0 0 1\r\nx\r\nEND\r\n" and clock.syncs == syncs[-1]  # a read: no sync
    if policy == "never":
        assert syncs == [0, 0, 0] and clock.slept == []
    else:  # one sync per acknowledged batch; "batch" waits for its interval since the previous sync first
        assert syncs == [1, 2, 3]
        assert clock.slept == ([] if policy == "always" else pytest.approx([0.0, 0.01, 0.01]))


def test_an_unknown_sync_policy_is_refused(tmp_path):
    with pytest.raises(TierwiseError, match="sync policy 'sometimes'"):
        AckJournal(tmp_path / "j", sync="sometimes")


@pytest.mark.slow
def test_500k_sets_over_a_small_key_space_keep_the_journal_bounded_and_restore_after_kill_9(tmp_path):
    cache = open_dev(tmp_path / "dev")  # 1 MiB zones: 2 MiB of DRAM buffers hold all 1000 keys
    w = wire(cache)
    j = cache.journal
    j.compact_bytes = 1 << 20
    latest = {}
    over = 0
    for batch in range(5000):
        requests = []
        for i in range(100):
            key, value = b"key-%d" % ((batch * 7 + i * 13) % 1000), b"%d-%d" % (batch, i) * (1 + i % 8)
            requests.append(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
            latest[key] = value
        limit = j.limit
        assert w(b"".join(requests)) == b"STORED\r\n" * 100
        over = max(over, j.size - limit)
    assert cache.engine.next_seq == 0 and j.checkpoints > 0  # never flushed; checkpoints kept the journal small
    assert over <= 100 * (SET_RECORD + 8 + 4 + 9 + 8 * 9) + 64  # one batch's commit at most
    assert j.bytes_written > 3 * j.limit
    j.checkpoint(cache.durable())
    kill(cache)

    cache = open_dev(tmp_path / "dev")
    assert cache.journal_replayed["restored"] == 1000 and newest_or_absent(wire(cache), latest) == 1000
