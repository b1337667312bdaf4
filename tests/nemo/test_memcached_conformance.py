"""The same bytes sent to `tierwise nemo serve` and to memcached (1.6, when installed), replies compared byte for byte.

Each case runs on a fresh connection and ends with `mn` (memcached answers MN once everything before it is
answered), so a reply is complete when MN or the end of the connection arrives. cas values are the only field
normalised (each server numbers its own). A case whose replies differ must be on ALLOWED with the reason and
tierwise's exact reply; docs/nemo-server.md ("memcached compatibility") lists the same differences.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tierwise.nemo.server.server import ServerConfig, serve_in_thread
from tierwise.nemo.server.serve import open_cache

MEMCACHED = shutil.which("memcached") or ("/usr/bin/memcached" if Path("/usr/bin/memcached").exists() else None)
pytestmark = pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed")

LONG_KEY = b"k" * 251
MULTIGET = b"get " + b" ".join(b"key%05d" % i for i in range(10_000)) + b"\r\n"  # a 90 KB line

CASES = {
    # storage lines: token counts, noreply, numbers, keys, data blocks
    "junk in the noreply slot is ignored": b"set a1 0 0 1 junk\r\nx\r\nget a1\r\n",
    "noreply then junk: too many tokens": b"set a2 0 0 1 noreply junk\r\nx\r\nget a2\r\n",
    "too few tokens, block read as a command": b"set a3 0 0\r\nxyz\r\n",
    "bad flags, block read as a command": b"set a4 x 0 1\r\nz\r\n",
    "negative flags": b"set a8 -1 0 1\r\nz\r\nget a8\r\n",
    "negative length": b"set a5 0 0 -1\r\nz\r\n",
    "key over 250 bytes in set": b"set " + LONG_KEY + b" 0 0 1\r\nz\r\n",
    "bad line with noreply says nothing": b"set nr x 0 1 noreply\r\nz\r\n",
    "bad data chunk": b"set dc 0 0 2\r\nabc\r\n",
    "bad data chunk, 2 bytes over": b"set dc 0 0 2\r\nabcd\r\n",
    "bad data chunk with noreply": b"set nr 0 0 1 noreply\r\nzz\r\n",
    "largest flags": b"set a7 4294967295 0 1\r\nz\r\nget a7\r\n",
    "flags 2^32": b"set a6 4294967296 0 1\r\nz\r\nget a6\r\n",
    "plus sign in numbers": b"set ps +5 +0 +1\r\nz\r\nget ps\r\n",
    "exptime negative": b"set a9 0 -1 1\r\nz\r\nget a9\r\n",
    "exptime 30 days is relative": b"set a14 0 2592000 1\r\nz\r\nget a14\r\n",
    "exptime over 30 days is a past unix time": b"set a10 0 2592001 1\r\nz\r\nget a10\r\n",
    "exptime 2^31-1": b"set a11 0 2147483647 1\r\nz\r\nget a11\r\n",
    "exptime 2^31": b"set a13 0 2147483648 1\r\nz\r\nget a13\r\n",
    "exptime 2^32": b"set a12 0 4294967296 1\r\nz\r\nget a12\r\n",
    "touch exptime 2^32": b"set t32 0 0 1\r\nz\r\ntouch t32 4294967296\r\n",
    "touch -1 expires": b"set tn 0 0 1\r\nz\r\ntouch tn -1\r\nget tn\r\n",
    "value over the size limit": b"set big 0 0 3000\r\n" + b"x" * 3000 + b"\r\n",
    "cas: bad cas number": b"set t1 0 0 1\r\nz\r\ncas t1 0 0 1 abc\r\nz\r\n",
    "cas: too few tokens": b"cas t1 0 0 1\r\nz\r\n",
    "cas of a missing key": b"cas nokey 0 0 1 5\r\nz\r\n",
    "gets shows the cas": b"set g1 0 0 1\r\nz\r\ngets g1\r\n",
    "append keeps the flags": b"set t2 0 0 1\r\nz\r\nappend t2 5 0 1\r\ny\r\nget t2\r\n",
    # incr / decr
    "incr non-numeric": b"set i1 0 0 2\r\nab\r\nincr i1 1\r\n",
    "incr wraps at 2^64": b"set i2 0 0 20\r\n18446744073709551615\r\nincr i2 2\r\n",
    "decr floors at 0": b"set i3 0 0 2\r\n10\r\ndecr i3 11\r\n",
    "decr pads a shorter number": b"set i4 0 0 3\r\n100\r\ndecr i4 91\r\nget i4\r\n",
    "incr grows the value": b"set i5 0 0 2\r\n99\r\nincr i5 1\r\nget i5\r\n",
    "incr of a leading-space number": b"set i6 0 0 3\r\n 12\r\nincr i6 1\r\n",
    "incr of a trailing-space number": b"set i7 0 0 3\r\n12 \r\nincr i7 1\r\n",
    "incr of a negative number": b"set i8 0 0 2\r\n-1\r\nincr i8 1\r\n",
    "incr of 21 digits": b"set i11 0 0 21\r\n000000000000000000001\r\nincr i11 1\r\n",
    "incr of an empty value": b"set i12 0 0 0\r\n\r\nincr i12 1\r\n",
    "incr by 2^64-1": b"set i10 0 0 1\r\n5\r\nincr i10 18446744073709551615\r\n",
    "incr delta negative / too big / plus": b"incr i9 -1\r\nincr i9 18446744073709551616\r\nset i9 0 0 2\r\n12\r\n"
                                              b"incr i9 +5\r\n",
    "incr with junk or missing arguments": b"incr nokey 1 junk\r\nincr\r\nincr k\r\nincr nokey x noreply\r\n",
    # flush_all, version, verbosity, quit, delete, touch, gat
    "flush_all forms": b"flush_all\r\nflush_all 0\r\nflush_all noreply\r\nflush_all 0 noreply\r\nflush_all -1\r\n",
    "flush_all junk": b"flush_all junk\r\nflush_all x noreply\r\nflush_all noreply 5\r\n",
    "flush_all delay with extra tokens": b"flush_all 2000000 2\r\nflush_all 2000000 junk\r\nflush_all 0\r\n",
    "flush_all at a past unix time": b"set fl 0 0 1\r\nz\r\nflush_all 2592001\r\nget fl\r\n",
    "version": b"version\r\nversion x\r\n",
    "verbosity": b"verbosity\r\nverbosity 1\r\nverbosity 1 noreply\r\nverbosity x\r\nverbosity 1 2 3\r\n"
                 b"verbosity 1 junk\r\nverbosity noreply\r\n",
    "quit": b"quit\r\n",
    "quit with arguments": b"quit junk\r\n",
    "unknown command, empty line, upper case": b"bogus\r\n\r\nGET x\r\nmx nokey\r\n",
    "delete forms": b"delete\r\ndelete k 0\r\ndelete k 1\r\ndelete k noreply junk\r\ndelete nr 5 noreply\r\n",
    "touch forms": b"touch\r\ntouch k\r\ntouch nokey 10\r\ntouch nokey x\r\ntouch nokey 10 junk\r\n"
                   b"touch nr x noreply\r\n",
    "gat forms": b"gat\r\ngat 10\r\ngat x k\r\n",
    # retrieval
    "key of 250 bytes": b"get " + b"k" * 250 + b"\r\n",
    "key of 251 bytes": b"get " + LONG_KEY + b"\r\n",
    "key of 251 bytes in a pipeline": b"set gv 0 0 1\r\nz\r\nget gv " + LONG_KEY + b" gv\r\n",
    "no key": b"get\r\n",
    "double space between keys": b"set gs 0 0 1\r\nz\r\nget gs  gs\r\n",
    "key with a control character": b"set a\x01b 0 0 1\r\nz\r\nget a\x01b\r\n",
    "multi-get of 90 KB": MULTIGET,
    # meta commands
    "mn with arguments": b"mn x\r\n",
    "mg without key": b"mg\r\nmd\r\nma\r\nms\r\n",
    "mg miss, quiet miss, k and O on a miss": b"mg nokey\r\nmg nokey v\r\nmg nokey v q\r\nmg nokey v k Oab\r\n",
    "mg q shows hits": b"ms x1 1\r\nz\r\nmg x1 q\r\nmg x1 q v\r\nmg x1 q k\r\n",
    "meta flags come back in request order": b"ms m2 1 T0 F5 c k Oxy\r\nz\r\nmg m2 s v f k t Oab\r\n"
                                             b"mg m2 k v f\r\nmg m2 O1 f s k t v\r\n",
    "mg bad, duplicate and ignored flags": b"mg m3 Z\r\nmg m3 v v\r\nmg x12 s D5\r\nmg nr P L\r\nmg nr E5\r\n",
    "mg bad ttl": b"mg nokey T-1 v\r\nmg nokey Tx v\r\n",
    "ms errors skip the block": b"ms m4 1 Z\r\nz\r\nms m4 1 MX\r\nz\r\nms m4 1 Tx\r\nz\r\nms m4 1 Fx\r\nz\r\n"
                                b"ms m4 1 Cx\r\nz\r\nms m4 1 MEE\r\nz\r\nms m4 1 Z q\r\nz\r\n",
    "ms line errors do not": b"ms m4 x\r\nz\r\nms m4\r\nz\r\nms " + LONG_KEY + b" 1\r\nz\r\n",
    "ms modes are upper case": b"ms x2 1 Ms\r\nz\r\nms x2 1 Ma\r\ny\r\nmg x2 v\r\n",
    "ms q hides HD only": b"ms m4 1 q\r\nz\r\nms m4 1 MR\r\nz\r\nms x3 1 q MR\r\nz\r\nms x3 1 ME q\r\nz\r\n",
    "ms failure flags": b"ms nr 1 MS q c k Oa\r\nz\r\nms nr 1 ME k Oa c\r\nz\r\nms x5 1 C1\r\nz\r\n",
    "md": b"md nokey\r\nmd nokey q\r\nmd nokey Z\r\nmd nokey k Oab\r\nmd x8 k k\r\nmd x6 q C1\r\nmd nr T5 k\r\n",
    "md cas and quiet": b"ms x7 1\r\nz\r\nmd x7 C1\r\nmd x7 q\r\nmd x7 q\r\nms m5 1\r\nz\r\nmd m5 k Oab\r\n",
    "md key over 250 bytes": b"mg " + LONG_KEY + b" v\r\nmd " + LONG_KEY + b"\r\n",
    "ma": b"ma nokey\r\nma x9 q\r\nma x9 N0 J5 v\r\nma x9 q v\r\nma x9 MI D2 v t k Oa\r\nma x9 Mx\r\nma x9 Dx\r\n"
          b"ma x9 Jx N0\r\n",
    "ma non-numeric and decr": b"ms x10 1\r\na\r\nma x10\r\nms x11 1\r\n9\r\nma x11 MD D20 v\r\nmg x11 v\r\n",
}

VALUE_LIMIT = "tierwise stores tiny objects: values over --max-value (2048 by default, CacheLib's small-item size) " \
              "are refused, as memcached refuses values over its -I (1 MB)"
TRUNCATION = "memcached silently truncates flags to 32 bits and exptimes to signed 32 bits (2^32 becomes 0, " \
             "'never expires'; 2^31 becomes -2^31, 'expired'); tierwise refuses the number the client did not mean " \
             "(the data block is skipped, as memcached's store would have read it)"
CONTROL = "memcached takes any byte but space in a key; protocol.txt forbids control characters and tierwise " \
          "refuses them (the block of a refused store is skipped)"
BAD = b"CLIENT_ERROR bad command line format\r\n"

# case -> (why the replies differ, tierwise's exact reply with cas values as `normalise` leaves them)
ALLOWED = {
    "flags 2^32": (TRUNCATION, BAD + b"END\r\nMN\r\n"),
    "exptime 2^31": (TRUNCATION, BAD + b"END\r\nMN\r\n"),
    "exptime 2^32": (TRUNCATION, BAD + b"END\r\nMN\r\n"),
    "touch exptime 2^32": (TRUNCATION, b"STORED\r\nCLIENT_ERROR invalid exptime argument\r\nMN\r\n"),
    "value over the size limit": (VALUE_LIMIT, b"SERVER_ERROR object too large for cache\r\nMN\r\n"),
    "version": ("the version names the server: tierwise-nemo-<version>", None),
    "key with a control character": (CONTROL, BAD + BAD + b"MN\r\n"),
    "key of 251 bytes in a pipeline": (
        "memcached 1.6 drops the replies queued before a get with a key over 250 bytes (here the STORED of the "
        "set before it); tierwise sends them", b"STORED\r\n" + BAD + b"MN\r\n"),
}
VERSION = re.compile(rb"VERSION \S+")


def normalise(reply: bytes) -> bytes:
    """Each server numbers its own cas values: replace them (VALUE lines of gets, meta c flags)."""
    reply = re.sub(rb"(VALUE \S+ \d+ \d+) \d+\r\n", rb"\1 <cas>\r\n", reply)
    return re.sub(rb" c[1-9]\d*", b" c<cas>", reply)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(port: int, data: bytes) -> bytes:
    """Send `data` then `mn` on a new connection; everything received until the MN of that last `mn` (counting
    those of any `mn` in `data`: replies may arrive in several reads) or the end of the connection."""
    expected = 1 + sum(line == b"mn" or line.startswith(b"mn ") for line in data.split(b"\r\n"))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data + b"mn\r\n")
        out = b""
        while out.count(b"MN\r\n") < expected:
            chunk = s.recv(1 << 20)
            if not chunk:
                return out + b"<closed>"
            out += chunk
    return out


@pytest.fixture(scope="module")
def memcached_port():
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # memcached refuses to run as root without -u
    proc = subprocess.Popen([MEMCACHED, "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-t", "1", *user],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):  # until it listens
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def tierwise_port(tmp_path_factory):
    cache = open_cache(f"file:{tmp_path_factory.mktemp('conformance') / 'dev'}", flash_bytes=32 << 20,
                       zone_bytes=1 << 20)
    server, stop = serve_in_thread(cache.handler, ServerConfig(port=0), durable=cache.durable, lag=cache.lag)
    yield server.port
    stop()
    cache.close()


@pytest.mark.parametrize("name", list(CASES))
def test_same_bytes_same_reply(name, memcached_port, tierwise_port):
    theirs = normalise(ask(memcached_port, CASES[name]))
    ours = normalise(ask(tierwise_port, CASES[name]))
    if name not in ALLOWED:
        assert ours == theirs
        return
    reason, expected = ALLOWED[name]
    assert ours != theirs, f"allowed difference no longer differs, drop it from ALLOWED: {reason}"
    if expected is not None:
        assert ours == expected


def test_version_and_unsupported_meta_flags_differ_only_as_documented(tierwise_port):
    """Meta flags whose meaning tierwise does not implement (I invalidate, h/l/u access history, N autovivify outside
    ma, R recache, b base64 keys) are refused as invalid rather than ignored: memcached would act on them."""
    assert VERSION.fullmatch(ask(tierwise_port, b"version\r\n")[:-len(b"\r\nMN\r\n")])
    for flags in (b"h", b"l", b"u", b"N30", b"b", b"R30"):
        assert ask(tierwise_port, b"mg k " + flags + b"\r\n") == b"CLIENT_ERROR invalid flag\r\nMN\r\n", flags
    assert ask(tierwise_port, b"ms k 1 I\r\nz\r\n") == b"CLIENT_ERROR invalid flag\r\nMN\r\n"


# what metrics exporters (prometheus memcached_exporter) read from `stats` and `stats settings`
EXPORTED = [b"uptime", b"time", b"version", b"rusage_user", b"rusage_system", b"curr_connections",
            b"total_connections", b"curr_items", b"total_items", b"bytes", b"limit_maxbytes", b"cmd_get", b"cmd_set",
            b"cmd_flush", b"cmd_touch", b"get_hits", b"get_misses", b"get_expired", b"get_flushed", b"delete_hits",
            b"delete_misses", b"incr_hits", b"incr_misses", b"decr_hits", b"decr_misses", b"cas_hits",
            b"cas_misses", b"cas_badval", b"touch_hits", b"touch_misses", b"threads"]
EXPORTED_SETTINGS = [b"maxbytes", b"maxconns", b"tcpport", b"item_size_max", b"evictions", b"cas_enabled",
                     b"num_threads", b"idle_timeout", b"verbosity"]


def stat_names(reply: bytes) -> list[bytes]:
    lines = reply.split(b"\r\n")
    assert lines[-3:] == [b"END", b"MN", b""], reply[-200:]
    assert all(line.startswith(b"STAT ") and len(line.split(b" ")) == 3 for line in lines[:-3]), reply[:200]
    return [line.split(b" ")[1] for line in lines[:-3]]


def test_stats_groups_exporters_read(memcached_port, tierwise_port):
    for port in (memcached_port, tierwise_port):
        assert set(EXPORTED) <= set(stat_names(ask(port, b"stats\r\n")))
        assert set(EXPORTED_SETTINGS) <= set(stat_names(ask(port, b"stats settings\r\n")))
        for group in (b"items", b"slabs", b"conns", b"sizes", b"detail dump"):
            stat_names(ask(port, b"stats " + group + b"\r\n"))  # well formed (content is the server's own)
    assert stat_names(ask(tierwise_port, b"stats items\r\n")) == [b"items:1:number"]
    assert ask(tierwise_port, b"stats cachedump 1 1\r\n") == b"END\r\nMN\r\n"  # the index cannot list keys
    for line in (b"stats detail on\r\n", b"stats detail off\r\n", b"stats detail\r\n", b"stats bogus\r\n",
                 b"stats a b c\r\n", b"stats sizes\r\n", b"stats reset\r\n"):
        assert ask(tierwise_port, line) == ask(memcached_port, line), line
    conns = stat_names(ask(tierwise_port, b"stats conns\r\n"))
    assert any(n.endswith(b":secs_since_last_cmd") for n in conns) and any(n.endswith(b":state") for n in conns)
