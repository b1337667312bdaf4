"""memcached text protocol: an incremental parser with limits, and the reply serialiser.

The parser never raises on client input: anything wrong becomes a `Request` whose `error` is the reply line the
protocol prescribes (`ERROR`, `CLIENT_ERROR <reason>`, `SERVER_ERROR <reason>`). A data block is consumed even if
its command is rejected wherever memcached consumes it (oversized value, a meta set with bad flags, a number
memcached would truncate), so the next command starts where memcached would start it; where memcached rejects the
line before it knows the block's length (wrong token count, unparsable number, key over 250 bytes), the block's
bytes are read as commands, as memcached reads them.

Commands: get gets gat gats set add replace append prepend cas delete touch incr decr flush_all stats version
verbosity quit, and the meta commands mg ms md ma mn. Replies follow memcached 1.6.18 byte for byte, except the
differences listed in docs/nemo-server.md ("memcached compatibility") and checked by
tests/nemo/test_memcached_conformance.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STORAGE = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))
RETRIEVAL = frozenset((b"get", b"gets", b"gat", b"gats"))
# memcached 1.6's argument counts (tokens after the command); outside them it answers a bare ERROR
_ARGS = {b"set": (4, 5), b"add": (4, 5), b"replace": (4, 5), b"append": (4, 5), b"prepend": (4, 5),
         b"cas": (5, 6), b"incr": (2, 3), b"decr": (2, 3), b"touch": (2, 3), b"delete": (1, 3),
         b"flush_all": (0, 2), b"verbosity": (1, 2)}
# Every meta flag memcached 1.6 parses (any of them is accepted by every meta command and ignored where it means
# nothing), and those of them whose meaning tierwise does not implement (b base64 keys, h/l/u access history,
# R/I/N stale-while-revalidate and autovivify except in ma): refused as "invalid flag", never silently ignored.
META_KNOWN = frozenset(b"bNTRlOPLkstcfvhuqFCMJDI")
META_UNSUPPORTED = {b"mg": frozenset(b"bhluRNI"), b"ms": frozenset(b"bRNI"), b"md": frozenset(b"bRNI"),
                    b"ma": frozenset(b"bRI")}
MS_MODES = {b"S": b"set", b"E": b"add", b"A": b"append", b"P": b"prepend", b"R": b"replace"}
MA_MODES = {b"I": True, b"i": True, b"+": True, b"D": False, b"d": False, b"-": False}  # True: incr

BAD_FORMAT = b"CLIENT_ERROR bad command line format"
BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument"
BAD_TOKEN = b"CLIENT_ERROR bad token in command line format"
BAD_META_FLAG = b"CLIENT_ERROR invalid or duplicate flag"  # md and ma say this whatever the flag error was
TOO_LARGE = b"SERVER_ERROR object too large for cache"


@dataclass
class Limits:
    max_key: int = 250  # memcached's KEY_MAX_LENGTH
    max_value: int = 2048  # tiny-object limit (CacheLib small-item max)
    max_line: int = 65536  # a command line other than get/gets
    # a get/gets line: memcached reads multi-gets of any length; this bounds a connection's input buffer
    max_get_line: int = 4 << 20


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


def _c_int(text: bytes) -> int | None:
    """A number in strtol's syntax, of any size; None if it is not one."""
    m = _C_NUMBER.match(text)
    return None if m is None else -int(m[2]) if m[1] == b"-" else int(m[2])


def c_strtol(text: bytes) -> int | None:
    """A signed number as memcached's safe_strtol reads it; None where strtol fails (no digits, out of 64 bits)."""
    v = _c_int(text)
    return v if v is not None and -(1 << 63) <= v < (1 << 63) else None


def _int32(v: int | None) -> int | None:
    # memcached silently truncates exptimes to 32 bits (2^32 becomes 0, "never"); tierwise refuses them instead
    return v if v is not None and -(1 << 31) <= v < (1 << 31) else None


def _exptime(tok: bytes) -> int | None:
    """An exptime: a signed 32-bit number (anything else is a client error, never a value the item header cannot
    hold)."""
    return _int32(c_strtol(tok))


_U64_MAX = (1 << 64) - 1
# strtoull's view of a number: leading whitespace, an optional sign, digits, then whitespace (anything after it is
# ignored) or the end
_C_NUMBER = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]+)(?:[ \t\n\v\f\r]|\Z)")


def c_strtoull(text: bytes) -> int | None:
    """A number as memcached's safe_strtoull reads it (incr/decr of a stored value, so " 12" and "12 " count);
    None if it is not one, is out of 64 bits, or reads as negative."""
    m = _C_NUMBER.match(text)
    if m is None:
        return None
    v = int(m[2])
    if v > _U64_MAX:
        return None
    if m[1] == b"-":  # strtoull negates modulo 2^64; memcached refuses what is then negative as a signed number
        v = -v & _U64_MAX
        if v >> 63:
            return None
    return v


def _error(msg: bytes, noreply: bool = False) -> Request:
    # memcached notes `noreply` before it checks anything else, so a classic command's error is not sent either
    return Request(b"", error=msg, noreply=noreply)


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

    def _max_line(self, buf: bytearray, pos: int) -> int:
        """memcached reads get/gets lines of any length (multi-gets); other lines have the shorter limit."""
        head = buf[pos:pos + 5]
        return self.limits.max_get_line if head[:4] == b"get " or head == b"gets " else self.limits.max_line

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
                    out.append(_error(b"CLIENT_ERROR bad data chunk", req.noreply and req.cmd != b"ms"))
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
            max_line = self._max_line(buf, pos)
            nl = buf.find(b"\n", pos, pos + max_line + 1)
            if nl < 0:
                if n - pos > max_line:
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

    # One command line -> a Request, or memcached 1.6's reply to what is wrong with it. A storage command carries
    # its data length in `delta` until its block arrives.
    def _parse_line(self, line: bytes) -> Request:
        tokens = [t for t in line.split(b" ") if t]
        if not tokens or len(tokens[0]) < 2:  # memcached: no command is shorter than two bytes
            return _error(b"ERROR")
        cmd, args = tokens[0], tokens[1:]
        bounds = _ARGS.get(cmd)
        if bounds is not None and not bounds[0] <= len(args) <= bounds[1]:
            return _error(b"ERROR")
        # memcached: a last token `noreply` silences the reply (errors included); another extra token is ignored
        noreply = bool(args) and args[-1] == b"noreply"
        if cmd in RETRIEVAL:
            return self._retrieval(cmd, args)
        if cmd in STORAGE:
            return self._storage(cmd, args, noreply)
        if cmd in META_UNSUPPORTED:
            return self._meta(cmd, args)
        if cmd == b"delete":
            return self._delete(args, noreply)
        if cmd in (b"incr", b"decr", b"touch"):
            return self._keyed_number(cmd, args, noreply)
        if cmd == b"flush_all":
            delay = 0
            if args and args != [b"noreply"]:
                delay = _exptime(args[0])
                if delay is None:
                    return _error(BAD_EXPTIME, noreply)
            return Request(cmd, delta=delay, noreply=noreply)
        if cmd == b"verbosity":
            level = _uint(args[0], 32)
            return _error(BAD_FORMAT, noreply) if level is None else Request(cmd, delta=level, noreply=noreply)
        if cmd == b"stats":
            return Request(cmd, args=args)
        if cmd in (b"version", b"quit", b"mn"):  # memcached ignores their arguments
            return Request(cmd)
        return _error(b"ERROR")

    def _keyed(self, req: Request) -> Request:
        for key in req.keys:
            if not valid_key(key, self.limits.max_key):
                return _error(BAD_FORMAT, req.noreply)
        return req

    def _retrieval(self, cmd: bytes, args: list[bytes]) -> Request:
        if not args:
            return _error(b"ERROR")
        req = Request(cmd, args)
        if cmd in (b"gat", b"gats"):
            exptime = _exptime(args[0])
            if exptime is None:
                return _error(BAD_EXPTIME)
            req.exptime = exptime
            req.keys = args[1:]  # none: memcached answers END
        return self._keyed(req)

    def _delete(self, args: list[bytes], noreply: bool) -> Request:
        # `delete <key> [0] [noreply]`: the legacy time argument must be 0
        zero = len(args) > 1 and args[1] == b"0"
        if not (len(args) == 1 or len(args) == 2 and (zero or noreply) or len(args) == 3 and zero and noreply):
            return _error(b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]", noreply)
        return self._keyed(Request(b"delete", args[:1], noreply=noreply))

    def _keyed_number(self, cmd: bytes, args: list[bytes], noreply: bool) -> Request:
        """incr/decr <key> <delta>, touch <key> <exptime>: the key is checked first, as memcached does."""
        req = self._keyed(Request(cmd, args[:1], noreply=noreply))
        if req.error:
            return req
        if cmd == b"touch":
            req.exptime = _exptime(args[1])
            return _error(BAD_EXPTIME, noreply) if req.exptime is None else req
        req.delta = c_strtoull(args[1])
        return _error(b"CLIENT_ERROR invalid numeric delta argument", noreply) if req.delta is None else req

    def _storage(self, cmd: bytes, args: list[bytes], noreply: bool) -> Request:
        key = args[0]
        # flags and exptime of any size here: one out of range is refused below, with its block skipped
        flags, exptime, nbytes = _c_int(args[1]), _c_int(args[2]), c_strtol(args[3])
        cas = c_strtoull(args[4]) if cmd == b"cas" else 0
        if len(key) > self.limits.max_key or None in (flags, exptime, nbytes, cas) or flags < 0 \
                or not 0 <= nbytes < _INT_MAX - 2:
            # memcached answers before it reads the data block: the block's bytes are then read as commands
            return _error(BAD_FORMAT, noreply)
        if flags >> 32 or _int32(exptime) is None or not valid_key(key, self.limits.max_key):
            # memcached would truncate the number (or keep the control character) and store, or (beyond 64 bits)
            # read the block as commands: refused here, and the block skipped as the client meant it to be stored
            return self._reject(nbytes, BAD_FORMAT, noreply)
        if nbytes > self.limits.max_value:
            return self._reject(nbytes, TOO_LARGE, noreply)
        return Request(cmd, [key], flags=flags, exptime=exptime, cas=cas, delta=nbytes, noreply=noreply)

    def _reject(self, nbytes: int, reply: bytes, noreply: bool = False) -> Request:
        return Request(b"", error=reply, swallow=nbytes + 2, noreply=noreply)

    def _meta(self, cmd: bytes, args: list[bytes]) -> Request:
        """mg/md/ma <key> <flags>*, ms <key> <datalen> <flags>*. Meta errors are sent even with q."""
        if not args:
            return _error(b"ERROR")
        key = args[0]
        if cmd == b"ms":
            nbytes = c_strtol(args[1]) if len(args) > 1 else None
            if len(key) > self.limits.max_key or nbytes is None or not 0 <= nbytes < _INT_MAX - 2:
                return _error(BAD_FORMAT)  # the block is not skipped: memcached does not know its length yet
            flags = args[2:]
        elif len(key) > self.limits.max_key:
            return _error(BAD_FORMAT)
        else:
            flags = args[1:]
        req = Request(cmd, [key])
        err = _meta_flags(req, flags)
        if err and cmd in (b"md", b"ma"):
            err = BAD_META_FLAG
        modes = {b"ms": MS_MODES, b"ma": MA_MODES}.get(cmd)  # mg and md ignore M
        mode = req.meta.get(ord("M"), b"")
        if not err and modes is not None and mode and mode not in modes:
            err = b"CLIENT_ERROR invalid mode for %s M token" % cmd
        if not err and not valid_key(key, self.limits.max_key):
            err = BAD_FORMAT
        if cmd != b"ms":
            return _error(err) if err else req
        if err:
            return self._reject(nbytes, err)  # memcached skips the block once it has read its length
        if nbytes > self.limits.max_value:
            return self._reject(nbytes, TOO_LARGE)
        req.delta = nbytes
        return req


_INT_MAX = (1 << 31) - 1
# meta flag -> (how memcached reads its value, its message when that fails); F's failure keeps the earlier message
_META_VALUES = {ord("T"): (_exptime, BAD_TOKEN), ord("N"): (_exptime, BAD_TOKEN), ord("R"): (_exptime, BAD_TOKEN),
                ord("C"): (c_strtoull, BAD_TOKEN), ord("F"): (lambda t: _uint(t, 32), b""),
                ord("J"): (c_strtoull, b"CLIENT_ERROR invalid numeric initial value"),
                ord("D"): (c_strtoull, b"CLIENT_ERROR invalid numeric delta value")}


def _meta_flags(req: Request, tokens: list[bytes]) -> bytes:
    """memcached's flag pre-parse into `req` (meta: flag -> argument, in request order; noreply; ttl, client flags,
    cas and delta decoded): a duplicate or unknown flag stops it; after a bad value it goes on, and the last
    message wins. Returns the error line or b""."""
    meta: dict[int, bytes] = {}
    req.meta = meta
    unsupported = META_UNSUPPORTED[req.cmd]
    bad = b""
    for tok in tokens:
        flag, arg = tok[0], tok[1:]
        if flag in meta:
            return b"CLIENT_ERROR duplicate flag"
        if flag not in META_KNOWN or flag in unsupported:
            return b"CLIENT_ERROR invalid flag"
        meta[flag] = arg
        if flag == ord("M") and len(arg) != 1:
            bad = b"CLIENT_ERROR incorrect length for M token"
        elif flag in _META_VALUES:
            read, message = _META_VALUES[flag]
            if read(arg) is None:
                bad = message or bad or BAD_FORMAT
    if bad:
        return bad
    req.noreply = ord("q") in meta
    req.exptime = _exptime(meta[ord("T")]) if ord("T") in meta else 0
    req.flags = _uint(meta[ord("F")], 32) if ord("F") in meta else 0
    req.cas = c_strtoull(meta[ord("C")]) if ord("C") in meta else 0
    req.delta = c_strtoull(meta[ord("D")]) if ord("D") in meta else 1  # ma's delta
    return b""


# ---- replies ------------------------------------------------------------------------------------------------------

def value_reply(key: bytes, flags: int, data: bytes, cas: int | None) -> bytes:
    if cas is None:
        return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(data), data)
    return b"VALUE %s %d %d %d\r\n%s\r\n" % (key, flags, len(data), cas, data)


def stats_reply(stats: list[tuple[str, object]]) -> bytes:
    return b"".join(b"STAT %s %s\r\n" % (k.encode(), str(v).encode()) for k, v in stats) + b"END\r\n"
