"""Protocol fuzzing: hypothesis on the parser (random command mixes, random bytes, random chunking) and a seeded
random-bytes fuzzer against a live server over TCP, which must keep serving well-formed replies."""

from __future__ import annotations

import os
import random
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierwise.nemo.server.commands import CommandHandler
from tierwise.nemo.server.items import unpack
from tierwise.nemo.server.protocol import Limits, Parser
from tierwise.nemo.server.server import MemcacheServer, ServerConfig, serve_in_thread
from tierwise.nemo.server.serve import open_cache

from tests.nemo.test_server_support import DictEngine, recv_until

LIMITS = Limits(max_value=64, max_line=128)
# Longer fuzzing runs: TIERWISE_FUZZ_EXAMPLES=20000 TIERWISE_FUZZ_ROUNDS=2000 pytest tests/nemo/test_server_fuzz.py
EXAMPLES = int(os.environ.get("TIERWISE_FUZZ_EXAMPLES", "300"))
ROUNDS = int(os.environ.get("TIERWISE_FUZZ_ROUNDS", "40"))
keys = st.binary(min_size=1, max_size=8).map(lambda b: b.hex().encode()[:8] or b"k")
fragments = st.one_of(
    st.builds(lambda k, d: b"set %s 0 0 %d\r\n%s\r\n" % (k, len(d), d), keys, st.binary(max_size=80)),
    st.builds(lambda k, n, d: b"set %s 0 0 %d\r\n%s\r\n" % (k, n, d), keys, st.integers(0, 100), st.binary(max_size=20)),
    st.builds(lambda ks: b"get " + b" ".join(ks) + b"\r\n", st.lists(keys, min_size=1, max_size=5)),
    st.builds(lambda k: b"delete %s\r\n" % k, keys),
    st.builds(lambda k, n: b"incr %s %d\r\n" % (k, n), keys, st.integers(0, 2**64)),
    st.builds(lambda k, d: b"ms %s %d T0\r\n%s\r\n" % (k, len(d), d), keys, st.binary(max_size=80)),
    st.sampled_from([b"version\r\n", b"mn\r\n", b"stats\r\n", b"flush_all\r\n", b"\r\n", b"get\r\n",
                     b"set k 0 0 -5\r\n", b"mg k v Q\r\n", b"\x80\x00\x00\x00"]),
    st.binary(max_size=200),
)


def _parse_chunked(stream: bytes, cuts: list[int]):
    p = Parser(LIMITS)
    out, last = [], 0
    for c in sorted(set(cuts)) + [len(stream)]:
        p.feed(stream[last:c])
        out += p.parse()
        last = c
        assert p.buffered <= LIMITS.max_line + LIMITS.max_value + 2 + len(stream)
    return [(r.cmd, r.keys, r.data, r.error) for r in out], p


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fragments, max_size=25), st.data())
def test_parser_never_raises_and_chunking_does_not_matter(frags, data):
    stream = b"".join(frags)
    cuts = data.draw(st.lists(st.integers(0, max(0, len(stream))), max_size=10))
    whole, _ = _parse_chunked(stream, [])
    chunked, _ = _parse_chunked(stream, cuts)
    assert whole == chunked
    for cmd, _, _, error in whole:
        assert cmd or error.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_then_valid_commands_resync(junk):
    # After any garbage, a line end and a block terminator put the parser back at a command boundary
    # unless the garbage announced a data block; a fresh newline-terminated command is then parsed.
    p = Parser(LIMITS)
    p.feed(junk + b"\r\n" + b" " * (LIMITS.max_value + 2) + b"\r\nversion\r\n")
    reqs = p.parse()
    assert reqs and reqs[-1].cmd in (b"version", b"quit")  # (the fuzzer's find: junk may itself say quit)


def _set_read(draw) -> bytes:
    """A read shaped like one `set` (valid or nearly: odd numbers, byte counts, keys, terminators, noreply)."""
    key = draw(st.one_of(keys, st.binary(max_size=6)))
    value = draw(st.binary(max_size=80))
    exact = b"%d" % len(value)
    nbytes = draw(st.sampled_from([exact, exact, exact, b"", b"-3", b"0" + exact, b"1x", exact + b" noreply",
                                   b"%d" % (len(value) + 1)]))
    # (exptimes absolute, so that both servers store the same one whatever the clock reads between them)
    fields = draw(st.sampled_from([b"0 0", b"0 0", b"1 4000000000", b"4294967295 3000000000", b"4294967296 0",
                                   b"0 -1", b"x 0", b"0  0", b"0 99999999999999999999999", b"0"]))
    tail = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"", b"\r\nget k\r\n", b"x\r\n"]))
    return b"set %s %s %s\r\n%s%s" % (key, fields, nbytes, value, tail)


def _server() -> MemcacheServer:
    return MemcacheServer(CommandHandler(DictEngine(), LIMITS), ServerConfig(port=0, limits=LIMITS))


def _contents(server: MemcacheServer) -> dict:
    items = {k: unpack(v) for k, v in server.handler.engine.d.items()}
    return {k: (item.flags, item.exptime, item.data) for k, item in items.items()}


set_reads = st.composite(_set_read)()
get_reads = st.one_of(keys.map(lambda k: b"get %s\r\n" % k), st.binary(max_size=60).map(lambda b: b"get " + b))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.one_of(set_reads, set_reads, get_reads, st.binary(max_size=60)))
def test_quick_path_agrees_with_general_parser(read):
    # The server answers a read holding one plain get or set without the parser; whenever it does, the reply and
    # the stored item must be what the general path gives for the same bytes.
    quick, general = _server(), _server()
    for server in (quick, general):
        server.handler.engine.d[b"k"] = b"\x00" + bytes(8) + b"old"
    reply = quick.quick_reply(read)
    if reply is None:
        return
    parser = Parser(LIMITS)
    parser.feed(read)
    reqs = parser.parse()
    assert parser.idle and len(reqs) == 1
    assert general.run_requests(reqs) == reply
    assert _contents(quick) == _contents(general)


REPLY_STARTS = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR", b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND",
                b"DELETED", b"TOUCHED", b"OK", b"VERSION", b"VALUE", b"END", b"STAT", b"HD", b"VA", b"EN", b"NF",
                b"NS", b"EX", b"MN")


@pytest.fixture(params=["nemo", "dict"])
def live_server(request, tmp_path):
    if request.param == "nemo":
        cache = open_cache(f"file:{tmp_path / 'dev'}", flash_bytes=8 << 20, zone_bytes=512 << 10, max_value=64)
        handler, engine = cache.handler, cache.engine
    else:
        engine = DictEngine()
        handler = CommandHandler(engine, Limits(max_value=64))
    server, stop = serve_in_thread(handler, ServerConfig(port=0, max_conns=16, limits=handler.limits))
    yield server.port
    stop()
    engine.close()


def _mutate(rng: random.Random) -> bytes:
    base = rng.choice([b"set k%d 0 0 5\r\nhello\r\n", b"get k%d k1\r\n", b"delete k%d\r\n", b"incr k%d 9\r\n",
                       b"ms k%d 2 T0\r\nhi\r\n", b"mg k%d v c\r\n", b"gets k%d\r\n", b"touch k%d 5\r\n"])
    msg = bytearray(base % rng.randrange(5))
    for _ in range(rng.randrange(4)):  # flip, drop or insert bytes
        i = rng.randrange(len(msg))
        op = rng.randrange(3)
        if op == 0:
            msg[i] = rng.randrange(256)
        elif op == 1:
            del msg[i]
        else:
            msg.insert(i, rng.randrange(256))
    return bytes(msg)


def check_reply_stream(data: bytes) -> None:
    """Every reply is a protocol reply line, an incr/decr number, or a value line followed by its data block."""
    pos = 0
    while (end := data.find(b"\r\n", pos)) >= 0:
        line = data[pos:end]
        pos = end + 2
        if line.startswith((b"VALUE ", b"VA ")):
            size = int(line.split()[3 if line.startswith(b"VALUE") else 1])
            if pos + size + 2 > len(data):
                return  # cut off by the read timeout
            assert data[pos + size:pos + size + 2] == b"\r\n", line
            pos += size + 2
        else:
            assert line.startswith(REPLY_STARTS) or line.isdigit(), line


def test_seeded_tcp_fuzzer_server_keeps_serving(live_server):
    port = live_server
    rng = random.Random(1234)
    for round_ in range(ROUNDS):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        payload = b"".join(_mutate(rng) if rng.random() < 0.7 else rng.randbytes(rng.randrange(1, 300))
                           for _ in range(rng.randrange(1, 20)))
        s.sendall(payload)
        if rng.random() < 0.5:
            s.shutdown(socket.SHUT_WR)  # half-close: the server answers what is complete, then closes
        s.settimeout(0.15)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        s.close()
        check_reply_stream(data)
        # a fresh client is served correctly after every round
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"set fz%d 0 0 2\r\nok\r\nget fz%d\r\n" % (round_, round_))
        assert recv_until(c, b"END\r\n") == b"STORED\r\nVALUE fz%d 0 2\r\nok\r\nEND\r\n" % round_
        c.close()
    time.sleep(0.1)
