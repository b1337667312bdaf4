"""`tierwise nemo serve --engine tiered`: items over 2 KB in a block log beside Nemo, over the memcached protocol;
both tiers come back after a restart, and a key whose size crosses the threshold never reads back an older copy,
across a clean restart and a kill -9."""

from __future__ import annotations

import random

import pytest

from tierwise.common.errors import TierwiseError
from tierwise.nemo.server.serve import describe, open_cache

from tests.nemo.test_server_faults import kill, newest_or_absent, wire


def open_tiered(path, **kw):
    return open_cache(f"file:{path}", flash_bytes=48 << 20, zone_bytes=1 << 20, max_value=256 << 10,
                      engine="tiered", **kw)


def value(i: int, n: int) -> bytes:
    return (b"%d:" % i + random.Random(i).randbytes(n))[:n]


def test_large_items_round_trip_and_sizes_move_between_tiers(tmp_path):
    cache = open_tiered(tmp_path / "dev")
    w = wire(cache)
    assert "block log for items over 2048 B" in describe(cache)
    latest = {}
    rng = random.Random(1)
    for i in range(400):
        key = b"k%d" % rng.randrange(60)
        v = value(i, rng.choice((10, 1500, 2048, 2049, 9000, 70_000, 200_000)))
        assert w(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(v), v)) == b"STORED\r\n"
        latest[key] = v
        assert w(b"get %s\r\n" % key) == b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(v), v)
    assert newest_or_absent(w, latest) == len(latest)  # 48 MiB holds them all: nothing forgotten yet
    too_big = b"x" * ((256 << 10) + 1)
    assert w(b"set big 0 0 %d\r\n%s\r\n" % (len(too_big), too_big)).startswith(b"SERVER_ERROR object too large")
    stats = w(b"stats\r\n")
    assert b"STAT engine tiered" in stats
    cache.close()


@pytest.mark.parametrize("ending", ["clean", "kill"])
def test_a_restart_serves_each_key_newest_or_absent(tmp_path, ending):
    """Both tiers and the journal come back. A key that moved from Nemo to the block log, or back, or was deleted
    from either, must not read back an older copy."""
    cache = open_tiered(tmp_path / "dev")
    w = wire(cache)
    latest = {}
    for i in range(200):  # small first, on flash
        key = b"m%d" % (i % 50)
        latest[key] = value(i, 100)
        w(b"set %s 0 0 100\r\n%s\r\n" % (key, latest[key]))
    cache.engine.flush()
    for i in range(50):  # then large for half of them: Nemo's copies must stay dead
        if i % 2:
            key = b"m%d" % i
            latest[key] = value(1000 + i, 30_000)
            w(b"set %s 0 0 30000\r\n%s\r\n" % (key, latest[key]))
    cache.engine.flush()  # the large copies on flash too; what follows may be only buffered
    for i in range(1, 50, 4):  # back to small for some: the block log's copies must stay dead
        key = b"m%d" % i
        latest[key] = value(2000 + i, 50)
        w(b"set %s 0 0 50\r\n%s\r\n" % (key, latest[key]))
    for i in range(3, 50, 8):  # and deleted from the block log
        assert w(b"delete m%d\r\n" % i) == b"DELETED\r\n"
        latest[b"m%d" % i] = None
    if ending == "clean":
        cache.close()
    else:
        kill(cache)
    cache = open_tiered(tmp_path / "dev")
    w = wire(cache)
    hits = newest_or_absent(w, latest)  # never the other tier's older copy, nor a deleted one
    if ending == "clean":  # 48 MiB holds them all: every item comes back
        assert hits == sum(v is not None for v in latest.values())
        assert "recovered" in describe(cache)
    else:
        assert hits >= 25


def test_max_value_must_fit_a_zone(tmp_path):
    with pytest.raises(TierwiseError, match="max-value"):
        open_cache(f"file:{tmp_path / 'dev'}", flash_bytes=48 << 20, zone_bytes=1 << 20, max_value=4 << 20,
                   engine="tiered")
