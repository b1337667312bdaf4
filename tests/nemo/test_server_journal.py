"""The acknowledgement journal: replay order, damaged blocks, the tail a killed process leaves, retirement, and the
flush_all threshold surviving. (Crash-level fault tests are in test_server_faults.py.)"""

from __future__ import annotations

import os

from tierwise.nemo.server.journal import DELETE, FLUSH, SET, AckJournal


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
    assert replay.last == {b"a": (DELETE, 0, 0), b"b": (SET, 2, 0), b"c": (SET, 3, 0)}
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
    assert replay.last == {b"a": (DELETE, 0, 0), b"b": (SET, 2, 0)} and not replay.damage
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
