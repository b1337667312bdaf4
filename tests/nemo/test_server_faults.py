"""Faults against the memcached server over Nemo: crashes after TTL changes and every other acknowledged write, a
second server on the same device, a lost device description, out-of-range numbers, a full disk (journal and
device), and damage to the journal or to the newest SG. The rule every test checks: a key reads back absent or
as its last acknowledged state, never an older one.

A crash is what kill -9 leaves: the device's writes so far and the journal's mapped segment, in the page cache;
nothing is flushed or closed. Disk-full faults are injected (the journal's preallocation raises ENOSPC; the zone
files are swapped for /dev/full), not made on a real small filesystem.
"""

from __future__ import annotations

import errno
import os
import types

import pytest

from tierwise.common.errors import TierwiseError
from tierwise.nemo.device import FileZonedDevice, ZoneError
from tierwise.nemo.device import file as filedev
from tierwise.nemo.server import commands
from tierwise.nemo.server.commands import CommandHandler
from tierwise.nemo.server.journal import AckJournal
from tierwise.nemo.server.protocol import Limits, Parser
from tierwise.nemo.server.serve import describe, open_cache
from tierwise.nemo.server.server import MemcacheServer, ServerConfig

from tests.nemo.test_server_support import DictEngine

OUT_OF_SPACE = b"SERVER_ERROR out of space\r\n"


def open_dev(path, **kw):
    return open_cache(f"file:{path}", flash_bytes=16 << 20, zone_bytes=1 << 20, **kw)


class Wire:
    """Feeds bytes to a handler as the server does (the one-request short path first, else the parser; the journal
    written before the reply) and returns the reply."""

    def __init__(self, handler, *, durable=lambda: 0, lag: int = 0):
        self.server = MemcacheServer(handler, ServerConfig(limits=handler.limits), durable=durable, lag=lag)
        self.parser = Parser(handler.limits)

    def __call__(self, data: bytes) -> bytes:
        reply = self.server.quick_reply(data) if self.parser.idle else None
        if reply is not None:
            return reply
        self.parser.feed(data)
        return self.server.run_requests(self.parser.parse())


def wire(cache) -> Wire:
    return Wire(cache.handler, durable=cache.durable, lag=cache.lag)


def flushed_then_buffered(folder, n: int, old: bytes, new: bytes):
    """A cache whose keys k0..k{n-1} hold `old` on flash and `new` only in the DRAM buffers (and the journal);
    returns (cache, wire)."""
    cache = open_dev(folder)
    w = wire(cache)
    for i in range(n):
        w(b"set k%d 0 0 %d\r\n%s\r\n" % (i, len(old), old))
    cache.engine.flush()
    for i in range(n):
        w(b"set k%d 0 0 %d\r\n%s\r\n" % (i, len(new), new))
    return cache, w


def kill(cache) -> None:
    """kill -9: the device is dropped unsynced (its lock goes with it); the journal's mapping is left as it is."""
    cache.engine.device.crash()


def newest_or_absent(w: Wire, expected: dict[bytes, bytes | None]) -> int:
    """Every key reads back absent or as its expected (last acknowledged) value; returns the hits."""
    hits = 0
    for key, value in expected.items():
        reply = w(b"get %s\r\n" % key)
        if reply != b"END\r\n":
            assert value is not None and reply.endswith(b"\r\n%s\r\nEND\r\n" % value), f"{key!r}: {reply[:80]!r}"
            hits += 1
    return hits


# ---- 1. every acknowledged write survives a crash or is absent ----------------------------------------------------

def test_acknowledged_ttl_changes_survive_kill_9(tmp_path):
    cache = open_dev(tmp_path / "dev")
    w = wire(cache)
    for key in (b"a", b"b", b"c", b"d"):
        assert w(b"set %s 0 0 1\r\nx\r\n" % key) == b"STORED\r\n"
    assert w(b"set e 0 1000 1\r\nx\r\n") == b"STORED\r\n"
    cache.engine.flush()  # these versions are on flash; what follows is only buffered
    assert w(b"touch a -1\r\n") == b"TOUCHED\r\n"
    assert w(b"gat -1 b\r\n") == b"VALUE b 0 1\r\nx\r\nEND\r\n"
    assert w(b"mg c T-1\r\n") == b"HD\r\n"
    assert w(b"touch d 3\r\n") == b"TOUCHED\r\n"
    assert w(b"touch e 0\r\n") == b"TOUCHED\r\n"
    kill(cache)

    w = wire(open_dev(tmp_path / "dev"))
    assert w(b"get a b c\r\n") == b"END\r\n"  # expired by an acknowledged touch: never served again
    assert w(b"mg d t\r\n") in (b"EN\r\n", b"HD t3\r\n", b"HD t2\r\n", b"HD t1\r\n")  # gone, or with the TTL it was given
    assert w(b"mg e t\r\n") in (b"EN\r\n", b"HD t-1\r\n")  # gone, or never expiring as it was told


def test_every_kind_of_acknowledged_write_survives_kill_9_or_is_absent(tmp_path):
    cache = open_dev(tmp_path / "dev")
    w = wire(cache)
    old = {b"n%d" % i: b"%d" % (10 + i) for i in range(50)}
    for key, value in old.items():
        w(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
    cache.engine.flush()
    latest = dict(old)
    for i in range(0, 50, 5):
        assert w(b"incr n%d 7\r\n" % i) == b"%d\r\n" % (17 + i)
        latest[b"n%d" % i] = b"%d" % (17 + i)
        assert w(b"decr n%d 1\r\n" % (i + 1)) == b"%d\r\n" % (10 + i)
        latest[b"n%d" % (i + 1)] = b"%d" % (10 + i)
        assert w(b"delete n%d\r\n" % (i + 2)) == b"DELETED\r\n"
        latest[b"n%d" % (i + 2)] = None
        assert w(b"append n%d 0 0 1\r\n!\r\n" % (i + 3)) == b"STORED\r\n"
        latest[b"n%d" % (i + 3)] += b"!"
        assert w(b"ms n%d 2 MS\r\nok\r\n" % (i + 4)) == b"HD\r\n"
        latest[b"n%d" % (i + 4)] = b"ok"
    kill(cache)
    newest_or_absent(wire(open_dev(tmp_path / "dev")), latest)


def test_flush_all_survives_kill_9(tmp_path):
    cache = open_dev(tmp_path / "dev")
    w = wire(cache)
    w(b"set k 0 0 1\r\nx\r\n")
    cache.engine.flush()
    assert w(b"flush_all\r\n") == b"OK\r\n"
    assert w(b"set after 0 0 1\r\ny\r\n") == b"STORED\r\n"
    kill(cache)
    w = wire(open_dev(tmp_path / "dev"))
    assert w(b"get k\r\n") == b"END\r\n"
    assert w(b"get after\r\n") in (b"END\r\n", b"VALUE after 0 1\r\ny\r\nEND\r\n")


def test_a_delayed_flush_all_survives_kill_9(tmp_path, monkeypatch):
    clock = [2_000_000_000.0]  # a fake wall clock for the handler: the test moves it, nothing waits
    monkeypatch.setattr(commands, "time", types.SimpleNamespace(time=lambda: clock[0], monotonic=lambda: clock[0]))
    cache = open_dev(tmp_path / "dev")
    w = wire(cache)
    w(b"set k 0 0 1\r\nx\r\n")
    cache.engine.flush()
    assert w(b"flush_all 100\r\n") == b"OK\r\n"
    kill(cache)
    w = wire(open_dev(tmp_path / "dev"))
    assert w(b"get k\r\n") == b"VALUE k 0 1\r\nx\r\nEND\r\n"  # not due yet
    clock[0] += 101
    assert w(b"get k\r\n") == b"END\r\n"


# ---- 2. one server per device ------------------------------------------------------------------------------------

def test_a_second_server_on_the_same_device_is_refused(tmp_path):
    cache = open_dev(tmp_path / "dev")
    with pytest.raises(TierwiseError, match=f"in use by process {os.getpid()}"):
        open_dev(tmp_path / "dev")
    with pytest.raises(ZoneError, match="in use by process"):
        FileZonedDevice(tmp_path / "dev")
    cache.close()  # a clean exit releases the lock
    cache = open_dev(tmp_path / "dev")
    kill(cache)  # and so does a crash (the kernel drops a dead process's locks)
    open_dev(tmp_path / "dev").close()


# ---- 3. a missing device description -----------------------------------------------------------------------------

@pytest.mark.parametrize("ending", ["kill", "clean"])
def test_fresh_forgets_the_previous_runs_journal(tmp_path, ending):
    """--fresh wipes the device; the journal segments a previous run left must go too, or they are replayed into
    the new cache (and a clean run's SG count is taken for missing SGs)."""
    cache, _ = flushed_then_buffered(tmp_path / "dev", 300, b"old", b"new")
    kill(cache) if ending == "kill" else cache.close()
    cache = open_dev(tmp_path / "dev", fresh=True)
    assert cache.journal_replayed == {"keys": 0, "deleted": 0, "restored": 0, "notes": []}
    assert "WARNING" not in describe(cache)
    w = wire(cache)
    assert all(w(b"get k%d\r\n" % i) == b"END\r\n" for i in range(300))
    assert w(b"set a 0 0 1\r\nx\r\n") == b"STORED\r\n"
    kill(cache)
    w = wire(open_dev(tmp_path / "dev"))
    assert w(b"get a\r\n") == b"VALUE a 0 1\r\nx\r\nEND\r\n" and w(b"get k1\r\n") == b"END\r\n"


def test_a_missing_device_description_is_an_error_not_a_new_device(tmp_path):
    cache = open_dev(tmp_path / "dev")
    wire(cache)(b"set k 0 0 1\r\nx\r\n")
    cache.close()
    (tmp_path / "dev" / "zoned.json").unlink()
    with pytest.raises(TierwiseError, match="no device description"):
        open_dev(tmp_path / "dev")
    with pytest.raises(ZoneError, match="no device description"):
        FileZonedDevice(tmp_path / "dev", num_zones=16, zone_size=1 << 20)
    (tmp_path / "new").mkdir()  # an empty folder is a new device
    open_dev(tmp_path / "new").close()


# ---- 4. out-of-range numbers -------------------------------------------------------------------------------------

BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
BAD_TOKEN = b"CLIENT_ERROR bad token in command line format\r\n"


@pytest.mark.parametrize("request_bytes, reply", [
    (b"set k 0 4294967296 1\r\nx\r\n", BAD_FORMAT),
    (b"set k 0 2147483648 1\r\nx\r\n", BAD_FORMAT),
    (b"set k 0 -2147483649 1\r\nx\r\n", BAD_FORMAT),
    (b"set k 0 99999999999999999999999 1\r\nx\r\n", BAD_FORMAT),
    (b"set k 4294967296 0 1\r\nx\r\n", BAD_FORMAT),
    (b"cas k 0 4294967296 1 1\r\nx\r\n", BAD_FORMAT),
    (b"touch k 4294967296\r\n", BAD_EXPTIME),
    (b"gat 4294967296 k\r\n", BAD_EXPTIME),
    (b"gats 2147483648 k\r\n", BAD_EXPTIME),
    (b"mg k v T4294967296\r\n", BAD_TOKEN),
    (b"ms k 1 T4294967296\r\nx\r\n", BAD_TOKEN),
])
def test_out_of_range_numbers_get_memcacheds_reply(request_bytes, reply, capsys):
    handler = CommandHandler(DictEngine(), Limits())
    w = Wire(handler)
    assert w(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
    assert w(request_bytes) == reply
    assert w(b"get k\r\n") == b"VALUE k 0 1\r\nv\r\nEND\r\n"  # in sync, unchanged
    assert handler.counters["internal_errors"] == 0 and capsys.readouterr().err == ""


def test_exptime_limits_are_memcacheds(tmp_path):
    w = wire(open_dev(tmp_path / "dev"))
    assert w(b"set far 0 2147483647 1\r\nx\r\n") == b"STORED\r\n"  # the largest: an absolute time in 2038
    assert w(b"touch far 2147483647\r\n") == b"TOUCHED\r\n"
    assert w(b"get far\r\n") == b"VALUE far 0 1\r\nx\r\nEND\r\n"
    assert w(b"set past 0 -2147483648 1\r\nx\r\n") == b"STORED\r\n"  # the smallest: already expired
    assert w(b"get past\r\n") == b"END\r\n"


# ---- 5. disk full / I/O errors -----------------------------------------------------------------------------------

class DiskFull:
    """While `full` is set, the journal's segment preallocation fails with ENOSPC, and so does a device's
    reservation of zone space."""

    def __init__(self, monkeypatch):
        self.full = False
        self.real_fallocate, self.real_reserve = os.posix_fallocate, filedev._reserve_zone
        monkeypatch.setattr(os, "posix_fallocate", self.fallocate)
        monkeypatch.setattr(filedev, "_reserve_zone", self.reserve_zone)

    def fallocate(self, fd, offset, length):
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real_fallocate(fd, offset, length)

    def reserve_zone(self, fd, length):
        return errno.ENOSPC if self.full else self.real_reserve(fd, length)


def test_a_full_disk_refuses_writes_keeps_reads_and_resumes(tmp_path, monkeypatch, capsys):
    disk = DiskFull(monkeypatch)
    handler = CommandHandler(DictEngine(), Limits(), AckJournal(tmp_path / "j", segment_bytes=256),
                             retry_seconds=0)
    w = Wire(handler)
    assert w(b"set k 0 0 2\r\nv1\r\n") == b"STORED\r\n" and w(b"set gone 0 0 1\r\nx\r\n") == b"STORED\r\n"
    assert w(b"delete gone\r\n") == b"DELETED\r\n"
    disk.full = True
    refused = [w(b"set k 0 0 2\r\nv%d\r\n" % (i % 10)) for i in range(50)]  # 256-byte segments fill quickly
    assert OUT_OF_SPACE in refused and refused[refused.index(OUT_OF_SPACE):] == [OUT_OF_SPACE] * (
        50 - refused.index(OUT_OF_SPACE))
    acked = b"v%d" % (refused.index(OUT_OF_SPACE) - 1) if refused.index(OUT_OF_SPACE) else b"v1"
    for write in (b"set k 0 0 2\r\nzz\r\n", b"delete k\r\n", b"touch k 10\r\n", b"incr k 1\r\n",
                  b"gat 10 k\r\n", b"mg k T10\r\n", b"ms k 2\r\nzz\r\n", b"set k 0 0 2 noreply\r\nzz\r\n"):
        assert w(write) in (OUT_OF_SPACE, b""), write
    assert w(b"get k gone\r\n") == b"VALUE k 0 2\r\n%s\r\nEND\r\n" % acked  # reads go on; nothing was undone
    assert w(b"mg k v\r\n") == b"VA 2\r\n%s\r\n" % acked
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of space" in err and "No space left" in err  # one line, no traceback
    disk.full = False
    assert w(b"set k 0 0 2\r\nv9\r\n") == b"STORED\r\n" and w(b"get k\r\n") == b"VALUE k 0 2\r\nv9\r\nEND\r\n"
    assert "room again" in capsys.readouterr().err


def test_a_server_started_on_a_full_disk_serves_reads_and_resumes(tmp_path, monkeypatch):
    cache = open_dev(tmp_path / "dev")
    wire(cache)(b"set k 0 0 2\r\nv1\r\n")
    cache.close()
    disk = DiskFull(monkeypatch)
    disk.full = True
    cache = open_dev(tmp_path / "dev")  # it starts: the journal and the device get their room once there is some
    cache.handler.retry_seconds = 0
    assert any("writes are refused" in note for note in cache.journal_replayed["notes"])
    assert cache.engine.device.unreserved and "cannot reserve" in describe(cache)
    w = wire(cache)
    assert w(b"get k\r\n") == b"VALUE k 0 2\r\nv1\r\nEND\r\n"
    assert w(b"set k 0 0 2\r\nv2\r\n") == OUT_OF_SPACE and w(b"delete k\r\n") == OUT_OF_SPACE
    assert w(b"get k\r\n") == b"VALUE k 0 2\r\nv1\r\nEND\r\n"
    disk.full = False
    assert w(b"set k 0 0 2\r\nv3\r\n") == b"STORED\r\n" and not cache.engine.device.unreserved
    kill(cache)
    assert wire(open_dev(tmp_path / "dev"))(b"get k\r\n") in (b"END\r\n", b"VALUE k 0 2\r\nv3\r\nEND\r\n")


def fill_zones_with_dev_full(device) -> list[int]:
    """Point every zone file descriptor at /dev/full (writes fail with ENOSPC); returns the saved originals."""
    full = os.open("/dev/full", os.O_WRONLY)
    saved = []
    for fd in device._fds.tolist():
        saved.append(os.dup(fd))
        os.dup2(full, fd)
    os.close(full)
    return saved


def test_an_sg_flush_on_a_full_disk_never_serves_an_older_value_and_recovers(tmp_path, capsys):
    cache = open_dev(tmp_path / "dev")
    w = wire(cache)
    latest = {}
    for i in range(300):
        w(b"set k%d 0 0 3\r\nold\r\n" % i)
    cache.engine.flush()
    for i in range(300):  # newer versions and deletes, buffered in DRAM only
        if i % 3:
            w(b"set k%d 0 0 3\r\nnew\r\n" % i)
            latest[b"k%d" % i] = b"new"
        else:
            w(b"delete k%d\r\n" % i)
            latest[b"k%d" % i] = None
    saved = fill_zones_with_dev_full(cache.engine.device)
    seq = cache.engine.next_seq
    i = 0
    while (reply := w(b"set fill%d 0 0 200\r\n%s\r\n" % (i, b"f" * 200))) == b"STORED\r\n":  # until an SG flush
        latest[b"fill%d" % i] = b"f" * 200
        i += 1
    assert reply == OUT_OF_SPACE and cache.engine.next_seq == seq
    for fd in saved:
        os.close(fd)
    # the next request reopens the cache from flash and the journal: every acknowledged write is back (the buffered
    # ones from the journal's bytes), no older value, no deleted key
    assert newest_or_absent(w, latest) == sum(v is not None for v in latest.values())
    assert cache.engine.failed is None and w(b"set again 0 0 1\r\nx\r\n") == b"STORED\r\n"
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("requests refused until") == 1 and "reopened" in err
    kill(cache)
    latest[b"again"] = b"x"
    assert newest_or_absent(wire(open_dev(tmp_path / "dev")), latest) == sum(v is not None for v in latest.values())


def test_a_device_reserves_its_space_up_front(tmp_path):
    with FileZonedDevice(tmp_path / "dev", num_zones=4, zone_size=1 << 20, reserve=True) as dev:
        for z in range(dev.num_zones):
            st = os.stat(dev.zone_path(z))
            assert st.st_size == 0 and st.st_blocks * 512 >= dev.zone_capacity  # length = write pointer


# ---- 6. damage: the journal after a crash, the newest SG after a clean shutdown --------------------------------

def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["body", "length"])
def test_a_flipped_journal_byte_after_kill_9_never_serves_an_older_value(tmp_path, where):
    cache, w = flushed_then_buffered(tmp_path / "dev", 200, b"v1", b"v2")  # v2 lost with the DRAM buffers
    w(b"set late 0 0 1\r\nx\r\n")
    kill(cache)
    seg = sorted((tmp_path / "dev" / "server-journal").glob("*.log"))[-1]
    data = seg.read_bytes()
    used = len(data.rstrip(b"\0"))
    block = 3 * used // 4  # on to a commit of the v2 round: one ITEM record of a 4-byte key (a 34-byte body)
    while data[block:block + 4] != (34).to_bytes(4, "little") or data[block + 8:block + 11] != b"\x06\x04\x00":
        block += 1
    flip(seg, block + (20 if where == "body" else 1))  # a byte of its cas, or of its length

    cache = open_dev(tmp_path / "dev")
    w = wire(cache)
    assert newest_or_absent(w, {b"k%d" % i: b"v2" for i in range(200)}) < 200  # those after the damage come back
    notes = cache.journal_replayed["notes"]
    assert notes and "journal damaged" in notes[0] and "journal damaged" in describe(cache)
    if where == "body":
        assert "1 records" in notes[0]


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip trailer"])
def test_damage_to_the_newest_sg_after_a_clean_shutdown_never_serves_an_older_generation(tmp_path, damage):
    cache = open_dev(tmp_path / "dev")
    w = wire(cache)
    for generation in (b"g1", b"g2", b"g3"):  # one SG each; the third opens an index group (no index block yet)
        for i in range(150):
            w(b"set k%d 0 0 2\r\n%s\r\n" % (i, generation))
        cache.engine.flush()
    engine = cache.engine
    newest = engine.next_seq - 1
    assert newest % engine.geo.group_size == 0  # so only the journal knows this SG had been written
    zone = tmp_path / "dev" / "seq" / str((newest % engine.N) * engine.geo.zones_per_sg)
    cache.close()
    if damage == "truncate":
        os.truncate(zone, zone.stat().st_size // 2)
    elif damage == "delete":
        zone.unlink()
    else:
        flip(zone, zone.stat().st_size - 4096 + 4)  # in its commit record

    cache = open_dev(tmp_path / "dev")
    newest_or_absent(wire(cache), {b"k%d" % i: b"g3" for i in range(150)})
    assert any("newest SGs are damaged" in note for note in cache.journal_replayed["notes"])
