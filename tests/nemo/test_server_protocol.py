"""memcached text-protocol parser: commands, limits, error replies, staying in sync after bad input; and the server
behaviour an operator relies on (idle timeout, read-after-write with 16 clients, the warning on an exposed bind)."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest
from pymemcache.client.base import Client

from tierwise.nemo.server.commands import CommandHandler
from tierwise.nemo.server.items import Item, absolute_exptime, pack, unpack
from tierwise.nemo.server.protocol import Limits, Parser
from tierwise.nemo.server.server import MemcacheServer, ServerConfig, serve_in_thread
from tierwise.nemo.server.serve import exposure_warning, open_cache

from tests.nemo.test_server_support import DictEngine, recv_until


def parse(data: bytes, limits: Limits | None = None, chunk: int | None = None):
    p = Parser(limits)
    out = []
    if chunk is None:
        p.feed(data)
        out += p.parse()
    else:  # byte-by-byte / chunked delivery must give the same requests
        for i in range(0, len(data), chunk):
            p.feed(data[i:i + chunk])
            out += p.parse()
    return out, p


def test_storage_and_retrieval_commands():
    reqs, _ = parse(b"set k 5 0 3\r\nabc\r\nget k k2\r\ngets k\r\ncas k 1 2 1 99 noreply\r\nx\r\n"
                    b"delete k\r\nincr n 7\r\ntouch k 10\r\ngat 5 a b\r\nflush_all 3\r\nversion\r\nquit\r\nget z\r\n")
    assert [r.cmd for r in reqs] == [b"set", b"get", b"gets", b"cas", b"delete", b"incr", b"touch", b"gat",
                                     b"flush_all", b"version", b"quit"]  # nothing after quit
    s = reqs[0]
    assert (s.keys, s.flags, s.exptime, s.data, s.noreply) == ([b"k"], 5, 0, b"abc", False)
    assert reqs[1].keys == [b"k", b"k2"]
    assert (reqs[3].cas, reqs[3].noreply, reqs[3].data) == (99, True, b"x")
    assert reqs[5].delta == 7 and reqs[6].exptime == 10 and reqs[7].exptime == 5 and reqs[7].keys == [b"a", b"b"]
    assert reqs[8].delta == 3


def test_chunked_delivery_gives_same_requests():
    data = b"set k 0 0 10\r\n0123456789\r\nget k\r\nms key 2 T0 F5\r\nhi\r\nmg key v c\r\n"
    whole, _ = parse(data)
    for chunk in (1, 2, 7):
        parts, _ = parse(data, chunk=chunk)
        assert [(r.cmd, r.keys, r.data) for r in parts] == [(r.cmd, r.keys, r.data) for r in whole]


def test_bad_keys_are_client_errors():
    long_key = b"k" * 251
    reqs, _ = parse(b"get " + long_key + b"\r\nget a\x01b\r\nget " + b"k" * 250 + b"\r\n")
    assert reqs[0].error.startswith(b"CLIENT_ERROR") and reqs[1].error.startswith(b"CLIENT_ERROR")
    assert reqs[2].cmd == b"get"


def test_oversized_value_is_swallowed_and_connection_stays_in_sync():
    big = b"x" * 5000
    reqs, p = parse(b"set k 0 0 5000\r\n" + big + b"\r\nget k\r\n", Limits(max_value=2048), chunk=333)
    assert reqs[0].error == b"SERVER_ERROR object too large for cache"
    assert reqs[1].cmd == b"get" and reqs[1].keys == [b"k"]
    assert p.buffered == 0


def test_data_block_of_a_bad_storage_line_is_handled_as_memcached_does():
    # a key over 250 bytes: memcached answers before reading the block, whose bytes are then read as a command
    reqs, _ = parse(b"set " + b"k" * 300 + b" 0 0 3\r\nabc\r\nversion\r\n")
    assert [r.error or r.cmd for r in reqs] == [b"CLIENT_ERROR bad command line format", b"ERROR", b"version"]
    # a control character (memcached stores it) or a number memcached would truncate: refused, the block skipped
    for line in (b"set a\x01b 0 0 3", b"set k 4294967296 0 3", b"set k 0 4294967296 3",
                 b"set k 0 99999999999999999999999 3"):
        reqs, _ = parse(line + b"\r\nabc\r\nversion\r\n")
        assert [r.error or r.cmd for r in reqs] == [b"CLIENT_ERROR bad command line format", b"version"], line
    # noreply silences the error, not the resync
    reqs, _ = parse(b"set k x 0 1 noreply\r\nz\r\n")
    assert [(r.error, r.noreply) for r in reqs] == [(b"CLIENT_ERROR bad command line format", True), (b"ERROR", False)]


def test_wrong_byte_count_is_bad_data_chunk():
    reqs, _ = parse(b"set k 0 0 2\r\nabc\r\nversion\r\n")
    assert reqs[0].error == b"CLIENT_ERROR bad data chunk"


def test_malformed_commands():
    lines = [b"set k 0 0\r\n", b"set k 0 0 -1\r\n", b"set k 0 0 1x\r\n", b"incr k abc\r\n", b"delete k 5\r\n",
             b"bogus\r\n", b"\r\n", b"\x80\x01\x00\x05garbage\r\n", b"touch k\r\n", b"get\r\n", b"verbosity\r\n"]
    for line in lines:
        reqs, _ = parse(line + b"version\r\n")
        assert reqs[0].error.startswith((b"ERROR", b"CLIENT_ERROR")), line
        assert reqs[-1].cmd == b"version", line
    # A meta set's block is skipped once its length is known, even though a flag is bad (as memcached).
    reqs, _ = parse(b"ms k 1 Z\r\nz\r\nversion\r\n")
    assert reqs[0].error == b"CLIENT_ERROR invalid flag" and reqs[1].cmd == b"version"


def test_over_long_line_is_rejected_once_then_resyncs():
    limits = Limits(max_line=100, max_get_line=300)
    reqs, p = parse(b"get " + b"a " * 500 + b"\r\nversion\r\n", limits, chunk=64)
    assert [r.error for r in reqs[:1]] == [b"CLIENT_ERROR line too long"]
    assert reqs[1].cmd == b"version" and len(reqs) == 2
    assert p.buffered < 400
    reqs, _ = parse(b"bogus " + b"a" * 200 + b"\r\nget " + b"a " * 100 + b"\r\n", limits, chunk=64)
    assert [r.error or r.cmd for r in reqs] == [b"CLIENT_ERROR line too long", b"get"]  # get lines may be longer


def test_meta_commands():
    reqs, _ = parse(b"mg foo v c f k Oab q\r\nms foo 3 T10 F7 MA C5\r\nabc\r\nmd foo q\r\nmn\r\nmg foo Z\r\n")
    mg, ms, md, mn, bad = reqs
    assert mg.cmd == b"mg" and mg.noreply and mg.meta[ord("O")] == b"ab"
    assert (ms.exptime, ms.flags, ms.cas, ms.data, ms.meta[ord("M")]) == (10, 7, 5, b"abc", b"A")
    assert md.noreply and mn.cmd == b"mn"
    assert bad.error == b"CLIENT_ERROR invalid flag"


def test_random_bytes_never_raise_and_buffer_stays_bounded():
    rng = random.Random(1)
    limits = Limits(max_value=100, max_line=200)
    p = Parser(limits)
    for _ in range(3000):
        p.feed(rng.randbytes(rng.randrange(1, 300)))
        for r in p.parse():
            assert r.cmd or r.error
        assert p.buffered <= limits.max_line + limits.max_value + 2 + 300


def test_item_header_round_trip():
    for item in (Item(0, 0, 1, b""), Item(7, 0, 2**64 - 1, b"v"), Item(0, 123, 5, b"x" * 2048), Item(2**32 - 1, 9, 0, b"z")):
        assert unpack(pack(item)) == item
    assert len(pack(Item(0, 0, 1, b"abc"))) == 9 + 3  # flags/exptime 0 cost nothing
    assert absolute_exptime(0, 1000.0) == 0 and absolute_exptime(10, 1000.0) == 1010
    assert absolute_exptime(2_000_000_000, 1000.0) == 2_000_000_000 and absolute_exptime(-1, 1000.0) == 1


def test_one_plain_get_or_set_per_read_skips_the_parser():
    server = MemcacheServer(CommandHandler(DictEngine(), Limits()), ServerConfig(port=0))
    assert server.quick_reply(b"set k 5 0 3\r\nabc\r\n") == b"STORED\r\n"
    assert server.quick_reply(b"get k\r\n") == b"VALUE k 5 3\r\nabc\r\nEND\r\n"
    assert server.quick_reply(b"get nope\r\n") == b"END\r\n"
    assert server.handler.counters["cmd_set"] == 1 and server.handler.counters["get_hits"] == 1
    # Anything else is left to the parser: noreply, two requests in one read, a partial block, a bad key.
    for read in (b"set k 0 0 3 noreply\r\nabc\r\n", b"get k\r\nget k\r\n", b"set k 0 0 3\r\nab",
                 b"set k 0 0 3\r\nabc\r\nget k\r\n", b"get a\x01b\r\n", b"get k k2\r\n", b"gets k\r\n"):
        assert server.quick_reply(read) is None, read


# ---- what an operator relies on: idle connections, read-after-write, exposure ------------------------------------

def test_idle_connections_are_closed_so_new_clients_get_in():
    """memcached's `-o idle_timeout`: max_conns idle clients would otherwise lock every new client out."""
    handler = CommandHandler(DictEngine(), Limits())
    server, stop = serve_in_thread(handler, ServerConfig(port=0, max_conns=8, idle_timeout=0.5))
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(8)]
    late = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    assert recv_until(late, b"\r\n").startswith(b"SERVER_ERROR too many open connections")
    for s in idle:  # the idle ones are closed by the server, without a word (as memcached)
        assert s.recv(1) == b""
    c = Client(("127.0.0.1", server.port), timeout=30)
    assert c.set("k", b"v") and c.get("k") == b"v"
    stop()


def test_a_busy_connection_is_not_idle():
    handler = CommandHandler(DictEngine(), Limits())
    server, stop = serve_in_thread(handler, ServerConfig(port=0, idle_timeout=1.0))
    c = Client(("127.0.0.1", server.port), timeout=30)
    deadline = server.now() + 2.5  # 2.5 timeouts of requests, each well inside the timeout of the one before
    while server.now() < deadline:
        assert c.set("k", b"v") and c.get("k") == b"v"
        time.sleep(0.05)
    assert handler.connection_stats["total_connections"] == 1  # never reconnected
    stop()


def test_sixteen_clients_read_back_every_acknowledged_set(tmp_path):
    """Sixteen clients set their own keys, then read them back: every key is there while the working set fits.
    Nemo's delayed flush (p_th failed inserts before an SG is written, each dropping the oldest buffered objects
    of a full set) lost ~4% of such keys; a served cache flushes the SG at once instead (flush_threshold=1)."""
    cache = open_cache(f"file:{tmp_path / 'dev'}", flash_bytes=32 << 20, zone_bytes=1 << 20)
    server, stop = serve_in_thread(cache.handler, ServerConfig(port=0), durable=cache.durable, lag=cache.lag)
    missing: list[str] = []

    def client_keys(w: int) -> None:
        c = Client(("127.0.0.1", server.port), no_delay=True, timeout=60)
        values = {f"c{w}-{i}": b"%d-%d." % (w, i) * (5 + (w * 7 + i * 13) % 30) for i in range(1500)}
        for start in range(0, len(values), 100):  # pipelined sets, then each set key right after them
            chunk = dict(list(values.items())[start:start + 100])
            assert not c.set_many(chunk)
            got = c.get_many(list(chunk))
            missing.extend(k for k in chunk if got.get(k) != chunk[k])
        got = c.get_many(list(values))  # and all of them at the end
        missing.extend(k for k in values if got.get(k) != values[k])

    threads = [threading.Thread(target=client_keys, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flushed = cache.engine.next_seq
    stop()
    cache.close()
    assert flushed >= 3  # SGs were flushed: the buffers overflowed, which is where objects used to be dropped
    assert missing == []


@pytest.mark.parametrize("host, warns", [("127.0.0.1", False), ("::1", False), ("localhost", False),
                                         ("0.0.0.0", True), ("10.1.2.3", True), ("cache.example", True)])
def test_a_non_loopback_bind_warns_that_there_is_no_auth(host, warns):
    warning = exposure_warning(host)
    assert (warning is not None) == warns
    if warns:
        assert host in warning and "without authentication" in warning
