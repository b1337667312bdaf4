"""The memcached server over TCP: pymemcache round trips, bad input, limits, half-closed connections.

Every test runs against the real Nemo engine on a file-backed zoned device; the protocol-level tests also run
against a dict-backed engine double, which separates protocol bugs from engine bugs.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError

from tierwise.nemo.server.commands import CommandHandler
from tierwise.nemo.server.protocol import Limits
from tierwise.nemo.server.server import ServerConfig, serve_in_thread
from tierwise.nemo.server.serve import open_cache, warm_up_engine_code

from tests.nemo.test_server_support import DictEngine, recv_until


@pytest.fixture(params=["nemo", "dict"])
def served_server(request, tmp_path):
    """(server, port) of a running server; torn down after the test."""
    if request.param == "nemo":
        cache = open_cache(f"file:{tmp_path / 'dev'}", flash_bytes=32 << 20, zone_bytes=1 << 20)
        handler, engine = cache.handler, cache.engine
    else:
        engine = DictEngine()
        handler = CommandHandler(engine, Limits())
    server, stop = serve_in_thread(handler, ServerConfig(port=0, max_conns=8, buffer_bytes=64 << 10))
    yield server, server.port
    stop()
    engine.close()


@pytest.fixture
def served(served_server):
    server, port = served_server
    return port, server.handler


def client(port: int) -> Client:
    return Client(("127.0.0.1", port), no_delay=True, timeout=10, default_noreply=False)


def raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def test_pymemcache_round_trips(served):
    port, _ = served
    c = client(port)
    values = {f"key{i}": bytes((i * 7 + j) % 256 for j in range(i * 13 % 600)) for i in range(300)}
    values["large"] = bytes(range(256)) * 8
    for k, v in values.items():
        assert c.set(k, v)
    assert c.get_many(list(values)) == values
    assert c.get("missing") is None
    v, cas = c.gets("key1")
    assert c.cas("key1", b"new", cas) and not c.cas("key1", b"newer", cas)
    assert c.get("key1") == b"new"
    assert not c.add("key1", b"x") and c.add("fresh", b"x") and c.replace("fresh", b"y") and not c.replace("nope", b"z")
    assert c.append("fresh", b"++") and c.prepend("fresh", b"--") and c.get("fresh") == b"--y++"
    assert c.set("n", b"10") and c.incr("n", 5) == 15 and c.decr("n", 100) == 0 and c.incr("missing", 1) is None
    assert c.set("f", b"v", flags=42) and c.gets_many(["f"])["f"][0] == b"v"
    assert c.touch("f", 100) and not c.touch("missing", 1)
    assert c.delete("key2") and c.get("key2") is None and not c.delete("key2")
    assert c.set("gone", b"v", expire=-1) and c.get("gone") is None
    stats = c.stats()
    for name in (b"curr_items", b"bytes", b"alwa", b"index_bits_per_object", b"miss_ratio", b"get_hits"):
        assert name in stats
    assert c.version().startswith(b"tierwise")
    assert c.flush_all() and c.get("key3") is None and c.get("fresh") is None
    assert c.set("after", b"1") and c.get("after") == b"1"


def _stats(sock: socket.socket, group: bytes = b"") -> dict[bytes, bytes]:
    sock.sendall(b"stats " + group + b"\r\n" if group else b"stats\r\n")
    lines = recv_until(sock, b"END\r\n").split(b"\r\n")[:-2]
    return {name: value for _, name, value in (line.split(b" ", 2) for line in lines)}


def test_stats_that_exporters_read_are_there_and_count(served):
    """prometheus memcached_exporter and telegraf read these from `stats` and fail on a value that is not a number;
    bytes_read / bytes_written count the wire bytes of every request and reply."""
    port, _ = served
    s = raw(port)
    before = _stats(s)
    for name in (b"bytes_read", b"bytes_written", b"evictions", b"curr_items", b"total_items", b"curr_connections",
                 b"total_connections", b"rejected_connections", b"conn_yields", b"listen_disabled_num",
                 b"accepting_conns", b"limit_maxbytes", b"bytes", b"cmd_get", b"cmd_set", b"cmd_flush", b"cmd_touch",
                 b"get_hits", b"get_misses", b"get_expired", b"get_flushed", b"cas_badval", b"store_no_memory",
                 b"uptime", b"time"):
        float(before[name])
    user, _, micros = before[b"rusage_user"].partition(b".")
    assert user.isdigit() and len(micros) == 6
    request, reply = b"set k 0 0 3\r\nabc\r\n", b"STORED\r\n"
    s.sendall(request)
    assert recv_until(s, reply) == reply
    after = _stats(s)
    # the first `stats` request (its reply was counted before it left) and the set in between
    assert int(after[b"bytes_read"]) - int(before[b"bytes_read"]) == len(b"stats\r\n") + len(request)
    sent_stats = sum(len(b"STAT %s %s\r\n" % kv) for kv in before.items()) + len(b"END\r\n")
    assert int(after[b"bytes_written"]) - int(before[b"bytes_written"]) == sent_stats + len(reply)


def test_evictions_count_what_the_cache_gave_up():
    cache = open_cache("mem", flash_bytes=8 << 20, zone_bytes=1 << 20)
    handler = cache.handler
    stats = lambda: dict(handler.engine_stats(detail=False))  # noqa: E731
    assert stats()["evictions"] == 0
    value = b"v" * 200
    for i in range(100_000):  # about 22 MB through an 8 MiB device: SGs are evicted
        handler.run_set(b"key%d" % i, 0, 0, value)
    assert handler.engine.metrics.summary(steady=False)["counters"]["sg_evictions"] > 0
    assert stats()["evictions"] > 50_000
    cache.engine.close()


def test_value_limit_and_key_limit(served):
    port, _ = served
    c = client(port)
    assert c.set("big", b"x" * 2048)
    with pytest.raises(MemcacheServerError, match="too large"):
        c.set("big", b"x" * 2049)
    assert c.get("big") == b"x" * 2048  # connection still in sync, old value kept
    s = raw(port)
    s.sendall(b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\nget big\r\n")
    reply = recv_until(s, b"END\r\n")
    assert reply.startswith(b"CLIENT_ERROR") and b"VALUE big 0 2048" in reply


def test_bad_input_keeps_connection_in_sync(served):
    port, _ = served
    s = raw(port)
    s.sendall(b"bogus command\r\nset k 0 0 3\r\nabcdef\r\nset k 0 0 x\r\nincr\r\n\x00\x01\x02\xff\r\n"
              b"set k 0 0 3\r\nabc\r\nget k\r\n")
    reply = recv_until(s, b"END\r\n")
    # As in memcached, the bytes after a bad data chunk ("f") are read as the next command.
    assert reply.split(b"\r\n")[:7] == [b"ERROR", b"CLIENT_ERROR bad data chunk", b"ERROR",
                                        b"CLIENT_ERROR bad command line format",
                                        b"ERROR", b"ERROR", b"STORED"]  # memcached: `incr` alone is an ERROR
    assert reply.endswith(b"VALUE k 0 3\r\nabc\r\nEND\r\n")


def test_meta_commands(served):
    port, _ = served
    s = raw(port)
    s.sendall(b"ms mk 2 T0 F3 c\r\nhi\r\nmg mk v f k Oxy\r\nmg nokey v q\r\nmg mk s t\r\nmd mk q\r\nmg mk v\r\nmn\r\n")
    reply = recv_until(s, b"MN\r\n").split(b"\r\n")
    assert reply[0].startswith(b"HD c")
    assert reply[1:3] == [b"VA 2 f3 kmk Oxy", b"hi"]
    assert reply[3] == b"HD s2 t-1"
    assert reply[4:6] == [b"EN", b"MN"]


def test_half_closed_connection_gets_its_replies(served):
    port, _ = served
    s = raw(port)
    s.sendall(b"set hc 0 0 2\r\nok\r\nget hc\r\n")
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    assert data == b"STORED\r\nVALUE hc 0 2\r\nok\r\nEND\r\n"
    assert client(port).get("hc") == b"ok"


def test_connection_limit(served):
    port, _ = served
    socks = [raw(port) for _ in range(8)]
    for s in socks:  # make sure all 8 are admitted
        s.sendall(b"version\r\n")
        assert recv_until(s, b"\r\n").startswith(b"VERSION")
    extra = raw(port)
    assert recv_until(extra, b"\r\n") == b"SERVER_ERROR too many open connections\r\n"
    socks[0].close()
    time.sleep(0.2)
    assert client(port).version().startswith(b"tierwise")


def test_client_that_does_not_read_is_throttled_not_fatal(served_server):
    server, port = served_server
    c = client(port)
    c.set("p", b"v" * 2000)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window so the server's output backs up soon
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    sent, burst = 0, b"get p\r\n" * 2000
    deadline = time.time() + 10
    while time.time() < deadline and sent < 8 << 20:  # send without ever reading
        try:
            sent += s.send(burst)
        except BlockingIOError:
            time.sleep(0.05)
            try:
                sent += s.send(burst)
            except BlockingIOError:
                break
    assert sent < 8 << 20  # the server stopped taking input from this client
    deadline = time.time() + 20
    while time.time() < deadline and not any(cn.write_paused for cn in list(server.conns)):
        time.sleep(0.05)  # the server works through what it took in until its output backs up
    conn = next(cn for cn in list(server.conns) if cn.write_paused)
    # Input held for it: at most the limit plus one socket read (uvloop reads up to 256 KiB at a time).
    assert not conn.reading and conn.parser.buffered <= server.config.buffer_bytes + (256 << 10)
    assert client(port).get("p") == b"v" * 2000  # everyone else is still served
    s.close()  # and a client vanishing with unread replies is no problem
    time.sleep(0.2)
    assert client(port).get("p") == b"v" * 2000


def test_engine_thread_mode_batches_connections(tmp_path):
    cache = open_cache(f"file:{tmp_path / 'dev'}", flash_bytes=32 << 20, zone_bytes=1 << 20)
    server, stop = serve_in_thread(cache.handler, ServerConfig(port=0, engine_thread=True),
                                   durable=cache.durable, lag=cache.lag)
    errors = []

    def worker(w: int) -> None:
        c = client(server.port)
        for i in range(150):
            key, value = f"t{w}-{i}", b"%d-%d" % (w, i) * 10
            if not c.set(key, value) or c.get(key) != value:
                errors.append(key)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop()
    cache.close()
    assert not errors
    assert cache.handler.counters["cmd_set"] == 600


def test_command_semantics(served):
    port, handler = served
    s = raw(port)

    def ask(cmd: bytes, end: bytes = b"\r\n") -> bytes:
        s.sendall(cmd)
        return recv_until(s, end)

    assert ask(b"set n 5 0 2\r\nab\r\n") == b"STORED\r\n"
    assert ask(b"incr n 1\r\n") == b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    assert ask(b"set n 0 0 20\r\n18446744073709551615\r\n") == b"STORED\r\n"
    assert ask(b"incr n 2\r\n") == b"1\r\n"  # wraps at 2^64, as memcached does
    assert ask(b"append n 0 0 2048\r\n" + b"x" * 2048 + b"\r\n") == b"SERVER_ERROR object too large for cache\r\n"
    # bad cas; as memcached, the shorter number is stored space-padded to the old length
    n_value = b"VALUE n 0 20\r\n1%s\r\nEND\r\n" % (b" " * 19)
    assert ask(b"cas n 0 0 1 1 noreply\r\nz\r\nget n\r\n", b"END\r\n") == n_value
    assert ask(b"gat 100 n\r\n", b"END\r\n") == n_value
    assert ask(b"gats 0 n\r\n", b"END\r\n").startswith(b"VALUE n 0 20 ")
    assert ask(b"verbosity 1\r\n") == b"OK\r\n"
    assert b"STAT item_size_max 2048\r\n" in ask(b"stats settings\r\n", b"END\r\n")
    assert b"STAT config_engine " in ask(b"stats nemo\r\n", b"END\r\n")
    assert ask(b"stats bogus\r\n") == b"ERROR\r\n"  # as memcached
    assert ask(b"flush_all 1\r\nget n\r\n", b"END\r\n") == b"OK\r\n" + n_value
    time.sleep(1.1)  # the delayed flush_all takes effect at the next request after its time
    assert ask(b"get n\r\n", b"END\r\n") == b"END\r\n"
    assert ask(b"ms m 1 MR\r\nv\r\n") == b"NS\r\n" and ask(b"ms m 1 ME\r\nv\r\n") == b"HD\r\n"
    assert ask(b"ms m 1 MA\r\nw\r\nmg m v\r\n", b"vw\r\n") == b"HD\r\nVA 2\r\nvw\r\n"
    assert ask(b"md m C1\r\n") == b"EX\r\n" and ask(b"md m\r\n") == b"HD\r\n" and ask(b"md m\r\n") == b"NF\r\n"


def test_engine_bug_is_reported_not_fatal(served):
    port, handler = served
    engine = handler.engine
    plain_get = engine.get

    def broken_get(key):
        if key == b"boom":
            raise ZeroDivisionError("simulated bug")
        return plain_get(key)

    engine.get = broken_get
    try:
        s = raw(port)
        s.sendall(b"get boom\r\nset ok 0 0 1\r\n1\r\nget ok\r\n")
        assert recv_until(s, b"END\r\n").split(b"\r\n")[:3] == [b"SERVER_ERROR internal error (ZeroDivisionError)",
                                                                b"STORED", b"VALUE ok 0 1"]
        assert handler.counters["internal_errors"] == 1
    finally:
        engine.get = plain_get


def test_warm_up_goes_through_every_engine_path_a_served_cache_takes():
    # Whatever code the engine runs in service must have run once before the first client connects, or the first
    # client to reach it waits for numba to compile it (seconds): the delayed flush giving up objects, SG flushes
    # and evictions with write-back, index writes, reads of flushed SGs, tombstones.
    s = warm_up_engine_code()
    causes = s["write_bytes_by_cause"]
    assert s["sgs_flushed"] > 8 and s["dropped_fraction"] > 0 and s["flash_reads_per_get"] > 0
    assert causes["writeback"] > 0 and causes["tombstone"] > 0 and causes["index"] > 0
