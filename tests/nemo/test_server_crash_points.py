"""20 random crash points under mixed load (set, delete, touch and gat with TTL changes, incr, flush_all, SG flushes,
journal checkpoints), each followed by a restart on the same device: every key reads back as its last acknowledged
value or as a miss, never an older value and never an expired one. Some crash points fall inside a journal
checkpoint, and some add a second fault: a flipped byte in the journal.

The crashes are in-process (what kill -9 leaves: the device unsynced, the journal's mapping as it is; see
test_server_faults.py) so that 20 restarts fit in seconds; test_crash.py kills the real server process.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from tierwise.nemo.server.journal import AckJournal

from tests.nemo.test_server_faults import kill, open_dev, wire

pytestmark = pytest.mark.slow

KEYS = [b"k%d" % i for i in range(150)]
COUNTERS = [b"n%d" % i for i in range(20)]
TTLS = (0, 0, 0, 1000, -1)  # never, an hour or so (outlives the test), already expired: none is ambiguous


class Crash(BaseException):
    """kill -9 at this point (BaseException: nothing on the way may catch it)."""


class Model:
    """The acknowledged state: key -> (value, absolute exptime, 0 = never) or None (deleted, flushed)."""

    def __init__(self):
        self.state: dict[bytes, tuple[bytes, int] | None] = dict.fromkeys(KEYS + COUNTERS)
        self.seen = Counter()

    def check(self, key: bytes, value: bytes | None) -> None:
        """A read of `key` gave `value` (None: a miss): a miss, or the last acknowledged value, not expired."""
        if value is None:
            self.seen["miss"] += 1
            return
        state = self.state[key]
        assert state is not None, f"{key!r} was deleted or flushed, yet read back {value[:40]!r}"
        assert value == state[0], f"{key!r}: {value[:40]!r} is not its last acknowledged value {state[0][:40]!r}"
        # TTLS are never, 1000 s (outlives the test) or already expired: the check needs no clock
        assert state[1] != EXPIRED, f"{key!r} was given an expired TTL, yet was served"
        self.seen["hit"] += 1


EXPIRED = 1  # memcached's absolute exptime for a negative TTL: already in the past


def exptime_of(ttl: int) -> int:
    return EXPIRED if ttl < 0 else int(time.time()) + ttl if ttl else 0


def one_op(w, rng: random.Random, model: Model) -> None:
    """One random request; the model takes what the server acknowledged."""
    op = rng.choices(("set", "delete", "touch", "gat", "incr", "flush_all"), (50, 10, 10, 10, 15, 0.3))[0]
    key = rng.choice(COUNTERS if op == "incr" else KEYS)
    ttl = rng.choice(TTLS)
    if op == "set":
        value = b"%s:%d:" % (key, rng.randrange(10**9)) + b"x" * rng.randrange(300)
        assert w(b"set %s 0 %d %d\r\n%s\r\n" % (key, ttl, len(value), value)) == b"STORED\r\n"
        model.state[key] = (value, exptime_of(ttl))
    elif op == "delete":
        assert w(b"delete %s\r\n" % key) in (b"DELETED\r\n", b"NOT_FOUND\r\n")
        model.state[key] = None
    elif op == "touch":
        if w(b"touch %s %d\r\n" % (key, ttl)) == b"TOUCHED\r\n":
            model.state[key] = (model.state[key][0], exptime_of(ttl))
    elif op == "gat":
        reply = w(b"gat %d %s\r\n" % (ttl, key))
        if reply != b"END\r\n":
            model.check(key, reply.split(b"\r\n")[1])
            model.state[key] = (model.state[key][0], exptime_of(ttl))
    elif op == "incr":
        reply = w(b"incr %s %d\r\n" % (key, rng.randrange(1, 100)))
        if reply == b"NOT_FOUND\r\n":
            value = b"%d" % rng.randrange(1000)
            assert w(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value)) == b"STORED\r\n"
            model.state[key] = (value, 0)
        else:
            model.state[key] = (reply[:-2], model.state[key][1])
    else:
        assert w(b"flush_all\r\n") == b"OK\r\n"
        model.state = dict.fromkeys(model.state)


def read_back(w, model: Model) -> None:
    for key in model.state:
        reply = w(b"get %s\r\n" % key)
        model.check(key, None if reply == b"END\r\n" else reply.split(b"\r\n")[1])


def crash_in_a_checkpoint(cache, monkeypatch, point: int) -> None:
    """Checkpoint the journal and die at its `point`-th step (a block copied, a block torn, an old segment deleted);
    past its last step, right after it."""
    steps = [0]
    append, unlink = AckJournal._append, Path.unlink

    def step() -> None:
        steps[0] += 1
        if steps[0] == point:
            raise Crash

    def crashing_append(self, block):
        step()
        append(self, block)

    def crashing_unlink(path, missing_ok=False):
        step()
        unlink(path, missing_ok=missing_ok)

    with monkeypatch.context() as m:
        m.setattr(AckJournal, "_append", crashing_append)
        m.setattr(Path, "unlink", crashing_unlink)
        try:
            cache.journal.checkpoint(cache.durable())
        except Crash:
            pass


def flip_a_journal_byte(folder: Path, rng: random.Random) -> None:
    seg = rng.choice(sorted(folder.glob("*.log")))
    data = bytearray(seg.read_bytes())
    used = len(data.rstrip(b"\0"))
    data[rng.randrange(used)] ^= 1 << rng.randrange(8)
    seg.write_bytes(bytes(data))


def test_20_random_crash_points_under_mixed_load_never_serve_an_older_or_expired_value(tmp_path, monkeypatch):
    rng = random.Random(17)
    model = Model()
    dev = tmp_path / "dev"
    cache = open_dev(dev)
    kinds = Counter()
    for point in range(20):
        cache.journal.compact_bytes = 16 << 10  # checkpoints every few hundred writes
        w = wire(cache)
        for _ in range(rng.randrange(50, 600)):
            one_op(w, rng, model)
            if rng.random() < 0.01:
                cache.engine.flush()  # an SG flush: older versions on flash, so a crash could bring them back
        kind = rng.choice(("after a reply", "after a reply", "in a checkpoint", "with a flipped journal byte"))
        kinds[kind] += 1
        if kind == "in a checkpoint":
            crash_in_a_checkpoint(cache, monkeypatch, rng.randrange(1, 12))
        kill(cache)
        if kind == "with a flipped journal byte":
            flip_a_journal_byte(dev / "server-journal", rng)
        cache = open_dev(dev)
        if kind == "with a flipped journal byte":
            assert any("journal damaged" in note for note in cache.journal_replayed["notes"])
        read_back(wire(cache), model)
    cache.close()
    print(f"\ncrash points: {dict(kinds)}; reads checked after restarts and during the load: {dict(model.seen)}, "
          "0 wrong, stale or expired")
    assert sum(kinds.values()) == 20 and model.seen["hit"] > 0 and model.seen["miss"] > 0
