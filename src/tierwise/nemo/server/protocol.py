"""memcached text protocol: an incremental parser with limits, and the reply serialiser.

The parser never raises on client input: anything wrong becomes a `Request` whose `error` is the reply line the
protocol prescribes (`ERROR`, `CLIENT_ERROR <reason>`, `SERVER_ERROR <reason>`). Whenever the byte count of a data
block is known, the block is consumed even if the command is rejected (oversized value, bad key), so the next
command starts where the client thinks it does and the connection stays in sync.

Commands: get gets gat gats set add replace append prepend cas delete touch incr decr flush_all stats version
verbosity quit, and the meta commands mg ms md mn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STORAGE = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))
RETRIEVAL = frozenset((b"get", b"gets", b"gat", b"gats"))
MG_FLAGS = frozenset(b"cfkOqstTv")
MS_FLAGS = frozenset(b"cCFkMOqT")
MD_FLAGS = frozenset(b"CkOq")
MS_MODES = {b"S": b"set", b"E": b"add", b"A": b"append", b"P": b"prepend", b"R": b"replace"}

BAD_FORMAT = b"CLIENT_ERROR bad command line format"
BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument"


@dataclass
class Limits:
    max_key: int = 250  # memcached's KEY_MAX_LENGTH
    max_value: int = 2048  # tiny-object limit (CacheLib small-item max)
    max_line: int = 65536  # a command line; long enough for a multi-get of ~250 long keys


@dataclass(slots=True)
class Request:
    cmd: bytes  # b"get", b"set", ... or b"" for a request that is only an error reply
    keys: list[bytes] = field(default_factory=list)
    flags: int = 0
    exptime: int = 0
    cas: int = 0  # cas unique of `cas` / meta C flag
    delta: int = 0  # incr/decr amount, flush_all delay, verbosity level
    noreply: bool = False
    data: bytes = b""
    args: list[bytes] = field(default_factory=list)  # stats arguments
    meta: dict[int, bytes] | None = None  # meta flags: flag byte -> argument
    error: bytes = b""  # reply line (without CRLF) when the request is rejected by the parser
    swallow: int = 0  # bytes of the rejected command's data block (plus CRLF) to discard


_KEY_FORBIDDEN = bytes(range(33)) + b"\x7f"  # control characters, space and DEL


def valid_key(key: bytes, max_key: int) -> bool:
    """1 to max_key bytes, none a control character, space or DEL. So `get <valid key>` is one plain get: a
    second key would need a space."""
    return 0 < len(key) <= max_key and len(key.translate(None, _KEY_FORBIDDEN)) == len(key)


def single_set(data: bytes, limits: Limits) -> tuple[bytes, int, int, bytes] | None:
    """(key, flags, exptime, value) when `data` is exactly one valid `set <key> <flags> <exptime> <bytes>` line and
    its data block, as simple clients send a set; else None, and the general parser handles the bytes (errors,
    noreply, negative exptime and partial reads included). Accepts nothing that parser would read differently."""
    if data[:4] != b"set " or data[-2:] != b"\r\n":
        return None
    nl = data.find(b"\r\n")  # found: the line's own CRLF or the block's; a bare LF lands in a token and fails it
    tokens = data[4:nl].split(b" ")
    if len(tokens) != 4:
        return None
    key, flags, exptime, nbytes = tokens
    n = _uint(nbytes, 31)
    if n is None or len(data) != nl + n + 4 or n > limits.max_value or not valid_key(key, limits.max_key):
        return None
    f = _uint(flags, 32)
    e = _uint(exptime, 31)  # a negative one takes the general path
    if f is None or e is None:
        return None
    return key, f, e, data[nl + 2:-2]


def _uint(tok: bytes, bits: int) -> int | None:
    if not tok.isdigit() or len(tok) > 20:
        return None
    v = int(tok)
    return v if v < (1 << bits) else None


def _exptime(tok: bytes) -> int | None:
    """An exptime: a signed 32-bit number, as memcached parses it (anything else is a client error, never a value
    the item header cannot hold)."""
    neg = tok.startswith(b"-")
    v = _uint(tok[1:] if neg else tok, 32)
    if v is None or v > (1 << 31) - (0 if neg else 1):
        return None
    return -v if neg else v


def _error(msg: bytes) -> Request:
    return Request(b"", error=msg)


class Parser:
    """Feed bytes in, take complete requests out. Holds at most one incomplete command (bounded by the limits)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.buf = bytearray()
        self._pending: Request | None = None  # a storage command waiting for its data block
        self._need = 0  # bytes of data block (plus CRLF) still wanted by _pending
        self._swallow = 0  # bytes of a rejected data block still to discard
        self._skip_line = False  # discarding the rest of an over-long line
        self.closed = False  # `quit` seen: ignore everything after it
        self.idle = True  # at a command boundary with nothing buffered: the next bytes start a new command

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def _update_idle(self) -> None:
        # An attribute, not a property: the server checks it on every read.
        self.idle = not self.buf and self._pending is None and not self._swallow and not self._skip_line \
            and not self.closed

    def feed(self, data: bytes) -> None:
        if self.closed:
            return
        if self._swallow and not self.buf:  # discard straight from the input: a rejected block is never buffered
            n = min(self._swallow, len(data))
            self._swallow -= n
            data = data[n:]
        self.buf += data
        self._update_idle()

    def parse(self, max_requests: int = 1 << 30) -> list[Request]:
        out: list[Request] = []
        buf = self.buf
        pos = 0
        n = len(buf)
        max_key = self.limits.max_key
        while pos < n and len(out) < max_requests and not self.closed:
            if self._swallow:
                k = min(self._swallow, n - pos)
                self._swallow -= k
                pos += k
                continue
            if self._pending is not None:
                if n - pos < self._need:
                    break
                req, self._pending = self._pending, None
                end = pos + self._need
                if buf[end - 2:end] != b"\r\n":
                    out.append(_error(b"CLIENT_ERROR bad data chunk"))
                else:
                    req.data = bytes(buf[pos:end - 2])
                    out.append(req)
                pos = end
                continue
            if self._skip_line:  # discarding the rest of an over-long line
                nl = buf.find(b"\n", pos)
                pos = n if nl < 0 else nl + 1
                self._skip_line = nl < 0
                continue
            nl = buf.find(b"\n", pos, pos + self.limits.max_line + 1)
            if nl < 0:
                if n - pos > self.limits.max_line:
                    out.append(_error(b"CLIENT_ERROR line too long"))
                    self._skip_line = True
                    continue
                break
            line = bytes(buf[pos:nl - 1] if nl > pos and buf[nl - 1] == 13 else buf[pos:nl])
            pos = nl + 1
            if line[:4] == b"get " and valid_key(line[4:], max_key):  # the most common request: no tokenising
                out.append(Request(b"get", [line[4:]]))
                continue
            req = self._parse_line(line)
            if req.cmd in STORAGE or req.cmd == b"ms":
                self._pending = req
                self._need = req.delta + 2
                req.delta = 0
            else:
                self._swallow = req.swallow
                out.append(req)
                if req.cmd == b"quit":
                    self.closed = True
        del buf[:pos]
        self._update_idle()
        return out

    # One command line -> a Request. A storage command carries its data length in `delta` until its block arrives.
    def _parse_line(self, line: bytes) -> Request:
        tokens = [t for t in line.split(b" ") if t]
        if not tokens:
            return _error(b"ERROR")
        cmd = tokens[0]
        if cmd in RETRIEVAL:
            return self._retrieval(cmd, tokens)
        if cmd in STORAGE:
            return self._storage(cmd, tokens)
        if cmd == b"delete":
            # `delete <key> [0] [noreply]`: the legacy time argument must be 0.
            rest = tokens[2:]
            noreply = bool(rest) and rest[-1] == b"noreply"
            if noreply:
                rest = rest[:-1]
            if len(tokens) < 2 or rest not in ([], [b"0"]):
                return _error(b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]")
            return self._keyed(Request(cmd, [tokens[1]], noreply=noreply))
        if cmd in (b"incr", b"decr"):
            if len(tokens) not in (3, 4) or (len(tokens) == 4 and tokens[3] != b"noreply"):
                return _error(BAD_FORMAT)
            delta = _uint(tokens[2], 64)
            if delta is None:
                return _error(b"CLIENT_ERROR invalid numeric delta argument")
            return self._keyed(Request(cmd, [tokens[1]], delta=delta, noreply=len(tokens) == 4))
        if cmd == b"touch":
            if len(tokens) not in (3, 4) or (len(tokens) == 4 and tokens[3] != b"noreply"):
                return _error(BAD_FORMAT)
            exptime = _exptime(tokens[2])
            if exptime is None:
                return _error(BAD_EXPTIME)
            return self._keyed(Request(cmd, [tokens[1]], exptime=exptime, noreply=len(tokens) == 4))
        if cmd in (b"flush_all", b"verbosity"):
            rest = tokens[1:]
            noreply = bool(rest) and rest[-1] == b"noreply"
            if noreply:
                rest = rest[:-1]
            if len(rest) > 1 or (cmd == b"verbosity" and not rest):
                return _error(BAD_FORMAT)
            num = _uint(rest[0], 32) if rest else 0
            if num is None:
                return _error(BAD_FORMAT)
            return Request(cmd, delta=num, noreply=noreply)
        if cmd == b"stats":
            return Request(cmd, args=tokens[1:])
        if cmd in (b"version", b"quit", b"mn") and len(tokens) == 1:
            return Request(cmd)
        if cmd in (b"mg", b"md"):
            return self._meta(cmd, tokens, 2)
        if cmd == b"ms":
            return self._meta(cmd, tokens, 3)
        return _error(b"ERROR")

    def _keyed(self, req: Request) -> Request:
        for key in req.keys:
            if not valid_key(key, self.limits.max_key):
                return _error(BAD_FORMAT)
        return req

    def _retrieval(self, cmd: bytes, tokens: list[bytes]) -> Request:
        req = Request(cmd)
        keys = tokens[1:]
        if cmd in (b"gat", b"gats"):
            if len(tokens) < 2:
                return _error(BAD_FORMAT)
            exptime = _exptime(tokens[1])
            if exptime is None:
                return _error(BAD_EXPTIME)
            req.exptime = exptime
            keys = tokens[2:]
        if not keys:
            return _error(b"ERROR")
        req.keys = keys
        return self._keyed(req)

    def _storage(self, cmd: bytes, tokens: list[bytes]) -> Request:
        want = 6 if cmd == b"cas" else 5
        if len(tokens) not in (want, want + 1):
            return _error(BAD_FORMAT)
        nbytes = _uint(tokens[4], 31)
        if nbytes is None:
            return _error(BAD_FORMAT)
        noreply = len(tokens) == want + 1 and tokens[want] == b"noreply"
        flags = _uint(tokens[2], 32)
        exptime = _exptime(tokens[3])
        cas = _uint(tokens[5], 64) if cmd == b"cas" else 0
        if flags is None or exptime is None or cas is None or (len(tokens) == want + 1 and not noreply):
            return self._reject(nbytes, BAD_FORMAT)
        if not valid_key(tokens[1], self.limits.max_key):
            return self._reject(nbytes, BAD_FORMAT)
        if nbytes > self.limits.max_value:
            return self._reject(nbytes, b"SERVER_ERROR object too large for cache")
        return Request(cmd, [tokens[1]], flags=flags, exptime=exptime, cas=cas, delta=nbytes, noreply=noreply)

    def _reject(self, nbytes: int, reply: bytes) -> Request:
        # Error replies are sent even with noreply (as memcached does), so the client sees why nothing was stored.
        return Request(b"", error=reply, swallow=nbytes + 2)

    def _meta(self, cmd: bytes, tokens: list[bytes], first_flag: int) -> Request:
        if len(tokens) < first_flag:
            return _error(BAD_FORMAT)
        allowed = {b"mg": MG_FLAGS, b"ms": MS_FLAGS, b"md": MD_FLAGS}[cmd]
        meta: dict[int, bytes] = {}
        bad = b""
        for tok in tokens[first_flag:]:
            if tok[0] not in allowed:
                bad = b"CLIENT_ERROR invalid flag"
            meta[tok[0]] = tok[1:]
        req = Request(cmd, [tokens[1]], meta=meta, noreply=ord("q") in meta)
        if cmd == b"ms":
            nbytes = _uint(tokens[2], 31)
            if nbytes is None:
                return _error(BAD_FORMAT)
            if not bad:
                bad = _meta_numbers(req, meta)
            if bad or not valid_key(tokens[1], self.limits.max_key):
                return self._reject(nbytes, bad or BAD_FORMAT)
            if nbytes > self.limits.max_value:
                return self._reject(nbytes, b"SERVER_ERROR object too large for cache")
            req.delta = nbytes
            return req
        if not bad:
            bad = _meta_numbers(req, meta)
        return _error(bad) if bad else self._keyed(req)


def _meta_numbers(req: Request, meta: dict[int, bytes]) -> bytes:
    """Decode the numeric meta flags (T ttl, F flags, C cas, M mode) into the request; return an error or b""."""
    if ord("T") in meta:
        t = _exptime(meta[ord("T")])
        if t is None:
            return b"CLIENT_ERROR bad token in command line format"
        req.exptime = t
    if ord("F") in meta:
        f = _uint(meta[ord("F")], 32)
        if f is None:
            return b"CLIENT_ERROR bad token in command line format"
        req.flags = f
    if ord("C") in meta:
        c = _uint(meta[ord("C")], 64)
        if c is None:
            return b"CLIENT_ERROR bad token in command line format"
        req.cas = c
    if ord("M") in meta and meta[ord("M")][:1].upper() not in MS_MODES:
        return b"CLIENT_ERROR invalid mode for ms STORE"
    return b""


# ---- replies ------------------------------------------------------------------------------------------------------

def value_reply(key: bytes, flags: int, data: bytes, cas: int | None) -> bytes:
    if cas is None:
        return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(data), data)
    return b"VALUE %s %d %d %d\r\n%s\r\n" % (key, flags, len(data), cas, data)


def stats_reply(stats: list[tuple[str, object]]) -> bytes:
    return b"".join(b"STAT %s %s\r\n" % (k.encode(), str(v).encode()) for k, v in stats) + b"END\r\n"
