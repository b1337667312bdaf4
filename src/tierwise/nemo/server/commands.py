"""memcached command semantics over an `Engine`: one `CommandHandler.run(request) -> reply bytes` per request.

The engine stores opaque values, so every item carries its flags, exptime and cas in a small header (`items`).
Read-modify-write commands (add, cas, append, incr, touch, ...) are a get followed by a set; that is atomic because
the server runs every request of every connection on one engine thread, one after another.

Faults: a write is applied only once the journal has room for its record (`AckJournal.reserve`); while it cannot
get room (disk full, I/O error) writes are refused with `SERVER_ERROR out of space` and reads go on. A device fault
inside the engine (an SG flush that fails) stops the engine; the next batch then reopens the cache from flash and
the journal (`reopen`, set by `serve.open_cache`), as a restarted server would. Both are retried at most every
`retry_seconds` and logged one line per kind per minute (`RateLimitedLog`), never once per request.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import traceback

from tierwise import __version__
from tierwise.common.errors import TierwiseError
from tierwise.nemo import metrics as mt
from tierwise.nemo.server import items
from tierwise.nemo.server.items import Item
from tierwise.nemo.server.journal import DELETE, FLUSH, FLUSH_AT, SET, SET_RECORD, AckJournal
from tierwise.nemo.server.protocol import MA_MODES, MS_MODES, Limits, Request, c_strtoull, stats_reply, value_reply

TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
NOT_STORED_BY_ENGINE = b"SERVER_ERROR out of memory storing object\r\n"
OUT_OF_SPACE = b"SERVER_ERROR out of space\r\n"
NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
# commands that change the cache (mg does only with its T flag): they need journal room before they run
_WRITES = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"delete", b"incr", b"decr",
                     b"touch", b"gat", b"gats", b"flush_all", b"ms", b"md", b"ma"))
_MAX_U64 = (1 << 64) - 1
# meta codes that q hides (memcached's "noreply semantics for return codes")
_QUIET = {b"mg": (b"EN",), b"ms": (b"HD",), b"md": (b"HD",), b"ma": (b"HD", b"VA")}
# counter names by lookup kind, indexed by "missed": no string formatting per request
_HIT_MISS = {s: (f"{s}_hits", f"{s}_misses") for s in ("get", "delete", "incr", "decr", "touch")}


class RateLimitedLog:
    """At most one line per kind of trouble per `interval` seconds on stderr, saying how many were held back: a
    fault that hits every request must not write a line (or a traceback) per request."""

    def __init__(self, interval: float = 60.0):
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}  # kind -> (when last written, lines held back since)

    def __call__(self, kind: str, message: str) -> bool:
        """Write `message` unless a line of this kind was written less than `interval` ago; True if written."""
        now = time.monotonic()
        last, held = self._last.get(kind, (-self.interval, 0))
        if now - last < self.interval:
            self._last[kind] = (last, held + 1)
            return False
        more = f" ({held} more like this since the last report)" if held else ""
        print(f"nemo server: {message}{more}", file=sys.stderr, flush=True)
        self._last[kind] = (now, 0)
        return True


class CommandHandler:
    def __init__(self, engine, limits: Limits, journal: AckJournal | None = None, *, retry_seconds: float = 1.0):
        self.engine = engine
        self.limits = limits
        self.journal = journal
        self.clock = items.CasClock(journal.flush_threshold + 1 if journal else 0)
        self.flush_threshold = journal.flush_threshold if journal else 0  # items with a lower cas were flushed
        # a delayed flush_all: when it takes effect (unix seconds); journaled, so it survives a crash
        self.pending_flush_at = journal.flush_at / 1e6 if journal else 0.0
        self.retry_seconds = retry_seconds  # how often a full journal or a failed engine is tried again
        self.reopen = None  # callable that replaces a failed engine (and journal) with a recovered one
        # callable(bytes of journal records) that makes room for a write or raises TierwiseError (disk full)
        self.room = journal.reserve if journal is not None else None
        self.log = RateLimitedLog()
        self._space_retry_at = 0.0  # monotonic time before which writes are refused without asking the journal
        self._reopen_at = 0.0
        self.started = time.time()
        self.now = self.started
        self.counters = dict.fromkeys(
            ("cmd_get", "cmd_set", "cmd_touch", "cmd_flush", "get_hits", "get_misses", "get_expired",
             "get_flushed", "delete_hits", "delete_misses", "incr_hits", "incr_misses", "decr_hits", "decr_misses",
             "cas_hits", "cas_misses", "cas_badval", "touch_hits", "touch_misses", "total_items",
             "store_no_memory", "internal_errors", "bytes_read", "bytes_written"), 0)
        self.connection_stats: dict[str, int] = {}  # filled by the server (curr/total/rejected connections)
        self.server_settings: list[tuple[str, object]] = []  # `stats settings` lines the server knows (port, ...)
        self.conns_report = list  # callable -> `stats conns` lines, set by the server
        self.verbosity = 0
        self._dispatch = {
            b"get": self._get, b"gets": self._get, b"gat": self._get, b"gats": self._get,
            b"set": self._store, b"add": self._store, b"replace": self._store, b"append": self._store,
            b"prepend": self._store, b"cas": self._store,
            b"delete": self._delete, b"incr": self._arith, b"decr": self._arith, b"touch": self._touch,
            b"flush_all": self._flush_all, b"stats": self._stats, b"version": self._version,
            b"verbosity": self._verbosity, b"quit": self._quit, b"mn": self._mn,
            b"mg": self._mg, b"ms": self._ms, b"md": self._md, b"ma": self._ma,
        }
        self._stats_groups = {
            b"": self.general_stats, b"settings": self._settings_stats, b"items": self._items_stats,
            b"slabs": self._slabs_stats, b"sizes": lambda: [("sizes_status", "disabled")],
            b"conns": lambda: self.conns_report(), b"cachedump": list,  # the index cannot list keys: empty
            b"nemo": lambda: self.engine_stats(detail=True),
        }

    def begin_batch(self) -> None:
        self.now = time.time()
        if self.engine.failed is not None and self.reopen is not None:
            self._reopen()
        self.engine.clock = int(self.now)  # items expire in the engine: it never serves, flushes or copies them late
        if self.pending_flush_at and self.now >= self.pending_flush_at:
            self.pending_flush_at = 0.0
            if self.journal is not None:
                self.journal.add(FLUSH_AT, b"", 0)
            self._invalidate_all()

    def _reopen(self) -> None:
        now = time.monotonic()
        if now < self._reopen_at:
            return
        self._reopen_at = now + self.retry_seconds
        try:
            self.reopen()
        except Exception as e:
            self.log("reopen", f"cannot reopen the cache after a device fault, retrying every "
                               f"{self.retry_seconds:g} s: {e}")
            return
        self.log("reopened", "cache reopened from flash and the journal after a device fault; serving again")

    def _room_for(self, keys: list[bytes]) -> bool:
        """Make room (journal records, one per key) before a write changes anything; False (the write is refused)
        while there is none."""
        if self.room is None:
            return True
        if self._space_retry_at and time.monotonic() < self._space_retry_at:
            return False
        try:
            self.room(sum(map(len, keys)) + SET_RECORD * len(keys))
        except TierwiseError as e:
            self._space_retry_at = time.monotonic() + self.retry_seconds
            self.log("space", f"writes refused (SERVER_ERROR out of space) until there is room: {e}")
            return False
        if self._space_retry_at:
            self._space_retry_at = 0.0
            self.log("space-back", "there is room again: writes accepted")
        return True

    def run(self, req: Request) -> bytes:
        try:
            if req.cmd == b"get" and len(req.keys) == 1:  # the hot path: one plain get
                return self.run_get(req.keys[0])
            if req.error:
                return b"" if req.noreply else req.error + b"\r\n"
            if (req.cmd in _WRITES or req.cmd == b"mg" and ord("T") in req.meta) and not self._room_for(req.keys):
                return b"" if req.noreply else OUT_OF_SPACE
            reply = self._dispatch[req.cmd](req)
        except Exception as e:
            return self._failed(e)
        return b"" if req.noreply else reply

    def run_get(self, key: bytes) -> bytes:
        """`get <key>` with one valid key (the server also calls it without building a Request)."""
        c = self.counters
        c["cmd_get"] += 1
        try:
            blob = self.engine.get(key)
            head = None if blob is None else self._visible(blob)
        except Exception as e:
            return self._failed(e)
        if head is None:
            c["get_misses"] += 1
            return b"END\r\n"
        c["get_hits"] += 1
        start = head[3]
        return b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, head[0], len(blob) - start, blob[start:])

    def run_set(self, key: bytes, flags: int, exptime: int, data: bytes) -> bytes:
        """`set` with valid fields (`protocol.single_set`), recognised by the server without building a Request."""
        try:
            self.counters["cmd_set"] += 1
            if not self._room_for([key]):
                return OUT_OF_SPACE
            return self._write(key, flags, exptime, data)
        except Exception as e:
            return self._failed(e)

    def _failed(self, e: Exception) -> bytes:
        if self.engine.failed is not None:  # a device fault (disk full, I/O error): the next batch reopens the cache
            self.log("device", f"device fault; requests refused until the cache is reopened: {self.engine.failed}")
            return OUT_OF_SPACE
        if isinstance(e, TierwiseError):  # e.g. the device refused an I/O: report it, keep serving
            return b"SERVER_ERROR %s\r\n" % str(e).encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
        # A bug must not take the server down: log it (its traceback once a minute), answer this request, go on.
        self.counters["internal_errors"] += 1
        if self.log(f"internal {type(e).__name__}", f"internal error: {type(e).__name__}: {e}"):
            traceback.print_exception(e, file=sys.stderr)
        return b"SERVER_ERROR internal error (%s)\r\n" % type(e).__name__.encode()

    # ---- item access ---------------------------------------------------------------------------------------------
    def lookup(self, key: bytes) -> Item | None:
        blob = self.engine.get(key)
        head = None if blob is None else self._visible(blob)
        if head is None:
            return None
        flags, exptime, cas, start = head
        return Item(flags, exptime, cas, blob[start:])

    def _visible(self, blob: bytes) -> tuple[int, int, int, int] | None:
        """The item header (`items.header`) of a stored value a client may see now, else None: flushed, or a value
        some other tool wrote with the engine (not an item this server can serve). Expired items never get here: the
        engine holds each item's exptime as its expiry, on a clock `begin_batch` keeps at unix time."""
        try:
            head = items.header(blob)
        except TierwiseError:
            return None
        if head[2] < self.flush_threshold:
            self.counters["get_flushed"] += 1
            return None
        return head

    def _find(self, key: bytes, stat: str) -> Item | None:
        """lookup() that counts `<stat>_hits` / `<stat>_misses`."""
        item = self.lookup(key)
        self.counters[_HIT_MISS[stat][item is None]] += 1
        return item

    def _put(self, key: bytes, item: Item) -> bool:
        blob = items.pack(item)
        if not self.engine.set(key, blob, item.exptime):
            self.counters["store_no_memory"] += 1
            return False
        if self.journal is not None:  # with its bytes: a restart restores what only the DRAM buffers held
            self.journal.add(SET, key, item.cas, item.exptime, blob)
        self.counters["total_items"] += 1
        return True

    def _remove(self, key: bytes) -> None:
        self.engine.delete(key)
        if self.journal is not None:
            self.journal.add(DELETE, key, 0)

    def _invalidate_all(self) -> None:
        self.flush_threshold = self.clock.next()
        if self.journal is not None:
            self.journal.add(FLUSH, b"", self.flush_threshold)

    # ---- classic commands ----------------------------------------------------------------------------------------
    def _get(self, req: Request) -> bytes:
        with_cas = req.cmd in (b"gets", b"gats")
        touch = req.cmd in (b"gat", b"gats")
        out = []
        c = self.counters
        for key in req.keys:
            c["cmd_get"] += 1
            item = self._find(key, "get")
            if item is None:
                continue
            if touch:
                c["cmd_touch"] += 1
                item.exptime = items.absolute_exptime(req.exptime, self.now)
                self._put(key, item)
            out.append(value_reply(key, item.flags, item.data, item.cas if with_cas else None))
        out.append(b"END\r\n")
        return b"".join(out)

    def _store(self, req: Request) -> bytes:
        self.counters["cmd_set"] += 1
        key = req.keys[0]
        cmd = req.cmd
        if cmd == b"set":
            return self._write(key, req.flags, req.exptime, req.data)
        old = self.lookup(key)
        if cmd == b"cas":
            if old is None:
                self.counters["cas_misses"] += 1
                return b"NOT_FOUND\r\n"
            if old.cas != req.cas:
                self.counters["cas_badval"] += 1
                return b"EXISTS\r\n"
            self.counters["cas_hits"] += 1
            return self._write(key, req.flags, req.exptime, req.data)
        if (old is None) != (cmd == b"add"):  # add needs a miss; replace/append/prepend need a hit
            return b"NOT_STORED\r\n"
        if cmd == b"add" or cmd == b"replace":
            return self._write(key, req.flags, req.exptime, req.data)
        data = old.data + req.data if cmd == b"append" else req.data + old.data
        if len(data) > self.limits.max_value:
            return TOO_LARGE
        return b"STORED\r\n" if self._put(key, Item(old.flags, old.exptime, self.clock.next(), data)) else NOT_STORED_BY_ENGINE

    def _write(self, key: bytes, flags: int, exptime: int, data: bytes) -> bytes:
        item = Item(flags, items.absolute_exptime(exptime, self.now), self.clock.next(), data)
        return b"STORED\r\n" if self._put(key, item) else NOT_STORED_BY_ENGINE

    def _delete(self, req: Request) -> bytes:
        key = req.keys[0]
        if self._find(key, "delete") is None:
            return b"NOT_FOUND\r\n"
        self._remove(key)
        return b"DELETED\r\n"

    def _arith(self, req: Request) -> bytes:
        key = req.keys[0]
        item = self._find(key, req.cmd.decode())
        if item is None:
            return b"NOT_FOUND\r\n"
        number, error = self._add_delta(key, item, req.cmd == b"incr", req.delta)
        return error or number + b"\r\n"

    def _add_delta(self, key: bytes, item: Item, incr: bool, delta: int) -> tuple[bytes, bytes]:
        """incr (wrapping at 2^64) or decr (floored at 0) the item's number and store it: (the new number, b"") or
        (b"", the error reply). As memcached, a number that got no longer is stored space-padded to the old length
        (a client reading the value sees `9  ` after 100 - 91)."""
        value = c_strtoull(item.data)
        if value is None:
            return b"", NON_NUMERIC
        value = (value + delta) & _MAX_U64 if incr else max(0, value - delta)
        number = b"%d" % value
        item.data = number.ljust(len(item.data)) if len(number) <= len(item.data) else number
        item.cas = self.clock.next()
        return (number, b"") if self._put(key, item) else (b"", NOT_STORED_BY_ENGINE)

    def _touch(self, req: Request) -> bytes:
        key = req.keys[0]
        self.counters["cmd_touch"] += 1
        item = self._find(key, "touch")
        if item is None:
            return b"NOT_FOUND\r\n"
        item.exptime = items.absolute_exptime(req.exptime, self.now)
        return b"TOUCHED\r\n" if self._put(key, item) else NOT_STORED_BY_ENGINE

    def _flush_all(self, req: Request) -> bytes:
        # Items are not erased: they become invisible (cas below the threshold) and FIFO eviction reclaims them.
        self.counters["cmd_flush"] += 1
        if req.delta <= 0:  # none, 0 or negative: now
            self._invalidate_all()
            return b"OK\r\n"
        at = items.absolute_exptime(req.delta, self.now)  # over 30 days: a unix time
        if at > self.now:  # a unix time already past: memcached flushes only what predates its own start, so nothing
            self.pending_flush_at = at
            if self.journal is not None:
                self.journal.add(FLUSH_AT, b"", int(at * 1e6))
        return b"OK\r\n"

    def _version(self, req: Request) -> bytes:
        return b"VERSION tierwise-nemo-%s\r\n" % __version__.encode()

    def _verbosity(self, req: Request) -> bytes:
        self.verbosity = req.delta  # reported by `stats settings`; the server logs the same at every level
        return b"OK\r\n"

    def _quit(self, req: Request) -> bytes:
        return b""

    def _mn(self, req: Request) -> bytes:
        return b"MN\r\n"

    # ---- meta commands -------------------------------------------------------------------------------------------
    def _ret_flags(self, req: Request, key: bytes, item: Item | None, which: bytes) -> bytes:
        """The return flags among `which`, in the order the request gave them (as memcached): k and O always, c f s
        t only with an item."""
        out = []
        for flag, arg in req.meta.items():
            if flag not in which:
                continue
            if flag == 107:  # k
                out.append(b" k" + key)
            elif flag == 79:  # O
                out.append(b" O" + arg)
            elif item is None:
                continue
            elif flag == 99:  # c
                out.append(b" c%d" % item.cas)
            elif flag == 102:  # f
                out.append(b" f%d" % item.flags)
            elif flag == 115:  # s
                out.append(b" s%d" % len(item.data))
            elif flag == 116:  # t
                out.append(b" t%d" % (max(0, item.exptime - int(self.now)) if item.exptime else -1))
        return b"".join(out)

    def _meta_reply(self, req: Request, code: bytes, flags: bytes, value: bytes | None = None) -> bytes:
        # q hides only the "nothing to report" code: EN for mg, HD (or ma's VA) for ms, md and ma
        req.noreply = req.noreply and code in _QUIET[req.cmd]
        if value is None:
            return b"%s%s\r\n" % (code, flags)
        return b"%s %d%s\r\n%s\r\n" % (code, len(value), flags, value)

    def _mg(self, req: Request) -> bytes:
        key = req.keys[0]
        self.counters["cmd_get"] += 1
        item = self._find(key, "get")
        if item is None:
            return self._meta_reply(req, b"EN", self._ret_flags(req, key, None, b"kO"))
        if ord("T") in req.meta:
            self.counters["cmd_touch"] += 1
            item.exptime = items.absolute_exptime(req.exptime, self.now)
            self._put(key, item)
        flags = self._ret_flags(req, key, item, b"cfkOst")
        if ord("v") in req.meta:
            return self._meta_reply(req, b"VA", flags, item.data)
        return self._meta_reply(req, b"HD", flags)

    def _ms(self, req: Request) -> bytes:
        key = req.keys[0]
        self.counters["cmd_set"] += 1
        mode = MS_MODES[req.meta.get(ord("M")) or b"S"]
        old = self.lookup(key) if (mode != b"set" or ord("C") in req.meta) else None
        # memcached reports the cas of an item it did not store as c0
        refused = self._ret_flags(req, key, Item(0, 0, 0, b""), b"ckO")
        if ord("C") in req.meta:
            if old is None:
                return self._meta_reply(req, b"NF", refused)
            if old.cas != req.cas:
                return self._meta_reply(req, b"EX", refused)
        if mode == b"add" and old is not None or mode != b"add" and mode != b"set" and old is None:
            return self._meta_reply(req, b"NS", refused)
        if mode in (b"append", b"prepend"):
            data = old.data + req.data if mode == b"append" else req.data + old.data
            if len(data) > self.limits.max_value:
                req.noreply = False
                return TOO_LARGE
            item = Item(old.flags, old.exptime, self.clock.next(), data)
        else:
            item = Item(req.flags, items.absolute_exptime(req.exptime, self.now), self.clock.next(), req.data)
        if not self._put(key, item):
            req.noreply = False
            return NOT_STORED_BY_ENGINE
        return self._meta_reply(req, b"HD", self._ret_flags(req, key, item, b"ckO"))

    def _md(self, req: Request) -> bytes:
        key = req.keys[0]
        item = self._find(key, "delete")
        flags = self._ret_flags(req, key, None, b"kO")
        if item is None:
            return self._meta_reply(req, b"NF", flags)
        if ord("C") in req.meta and item.cas != req.cas:
            return self._meta_reply(req, b"EX", flags)
        self._remove(key)
        return self._meta_reply(req, b"HD", flags)

    def _ma(self, req: Request) -> bytes:
        """Meta arithmetic: M mode (I + incr, D - decr), D delta (1), N ttl with J initial value (0) to create a
        missing key, C compare-cas, T new ttl; returns HD, or VA with the number (v), and c t k O."""
        key = req.keys[0]
        meta = req.meta
        incr = MA_MODES[meta.get(ord("M")) or b"I"]
        item = self._find(key, "incr" if incr else "decr")
        if item is None and ord("N") not in meta:
            return self._meta_reply(req, b"NF", self._ret_flags(req, key, None, b"kO"))
        if item is None:  # autovivify: the initial value is stored as it is, not changed by the delta
            number = b"%d" % c_strtoull(meta.get(ord("J")) or b"0")
            exptime = items.absolute_exptime(int(meta[ord("N")] or b"0"), self.now)
            item = Item(0, exptime, self.clock.next(), number)
            if not self._put(key, item):
                return NOT_STORED_BY_ENGINE
        elif ord("C") in meta and item.cas != req.cas:
            return self._meta_reply(req, b"EX", self._ret_flags(req, key, None, b"kO"))
        else:
            if ord("T") in meta:
                item.exptime = items.absolute_exptime(req.exptime, self.now)
            number, error = self._add_delta(key, item, incr, req.delta)
            if error:
                return error
        flags = self._ret_flags(req, key, item, b"ctkO")
        return self._meta_reply(req, b"VA", flags, number) if ord("v") in meta else self._meta_reply(req, b"HD", flags)

    # ---- stats ---------------------------------------------------------------------------------------------------
    def _stats(self, req: Request) -> bytes:
        """memcached's stats groups that exporters read, answered from what this server has (no slab classes: one
        pseudo class holds every item), plus `stats nemo`; an unknown group is an ERROR, as in memcached."""
        group = req.args[0] if req.args else b""
        if group == b"detail":  # no per-prefix stats are kept: on/off are accepted, a dump is empty
            sub = req.args[1] if len(req.args) > 1 else b""
            return {b"on": b"OK\r\n", b"off": b"OK\r\n", b"dump": b"END\r\n"}.get(
                sub, b"CLIENT_ERROR usage: stats detail on|off|dump\r\n")
        if group == b"reset":
            self.counters.update(dict.fromkeys(self.counters, 0))  # in place: the server counts bytes into it
            return b"RESET\r\n"
        lines = self._stats_groups.get(group)
        return b"ERROR\r\n" if lines is None else stats_reply(lines())

    def _settings_stats(self) -> list[tuple[str, object]]:
        lim = self.limits
        return [("maxbytes", self.engine.device.capacity_bytes), *self.server_settings, ("verbosity", self.verbosity),
                ("evictions", "on"), ("cas_enabled", "yes"), ("item_size_max", lim.max_value),
                ("key_max", lim.max_key), ("line_max", lim.max_line), ("engine", type(self.engine).__name__)]

    def _items_stats(self) -> list[tuple[str, object]]:
        return [("items:1:number", self.engine.object_count())]

    def _slabs_stats(self) -> list[tuple[str, object]]:
        return [("active_slabs", 0), ("total_malloced", sum(self.engine.dram_bytes().values()))]

    def general_stats(self) -> list[tuple[str, object]]:
        now = time.time()
        c = self.counters
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats: list[tuple[str, object]] = [
            ("pid", os.getpid()), ("uptime", int(now - self.started)), ("time", int(now)),
            ("version", f"tierwise-nemo-{__version__}"), ("pointer_size", 64),
            ("rusage_user", f"{usage.ru_utime:.6f}"), ("rusage_system", f"{usage.ru_stime:.6f}"), ("threads", 1),
        ]
        stats += sorted(self.connection_stats.items())
        expired = int(self.engine.metrics.arrays.counters[mt.C_EXPIRED_MISSES])  # the engine expires items
        stats += [(k, expired if k == "get_expired" else v) for k, v in c.items()]
        # memcached's listener never pauses here (one connection over --max-conns is told so and closed) and no
        # connection yields mid-batch; exporters read these
        stats += [("accepting_conns", 1), ("listen_disabled_num", 0), ("conn_yields", 0)]
        stats += self.engine_stats(detail=False)
        if self.journal is not None:
            stats += [("journal_bytes_written", self.journal.bytes_written), ("journal_bytes", self.journal.size)]
        return stats

    def engine_stats(self, *, detail: bool) -> list[tuple[str, object]]:
        """The engine's own figures (the shared `Metrics` recorder): items, flash bytes, ALWA, bits/object."""
        engine = self.engine
        objects = engine.object_count()
        dram = engine.dram_bytes()
        summary = engine.metrics.summary(dram=dram, objects=objects, steady=False)
        device = engine.device
        in_use = sum(device.write_pointer(z) for z in range(device.num_zones))
        c = self.counters
        counted = summary["counters"]
        stats: list[tuple[str, object]] = [
            ("curr_items", objects),
            ("bytes", in_use),  # flash bytes holding data (written zone space), not the sum of item sizes
            ("limit_maxbytes", device.capacity_bytes),
            # objects the cache gave up for room: sacrificed in a buffered SG, or in an evicted SG and not written
            # back (stale copies included)
            ("evictions", int(counted.get("dropped_objects", 0) + counted.get("evicted_objects", 0))),
            # expired items the engine dropped instead of writing or copying them
            ("expired_dropped", int(counted.get("expired_dropped_objects", 0))),
            ("engine", engine.name),
            ("miss_ratio", _fmt(c["get_misses"] / c["cmd_get"] if c["cmd_get"] else None)),
            ("engine_miss_ratio", _fmt(summary["miss_ratio"])),
            ("alwa", _fmt(summary["alwa"])),
            ("alwa_with_dropped", _fmt(summary["alwa_with_dropped"])),
            ("index_bits_per_object", _fmt(summary["dram"]["index_bits_per_object"])),
            ("total_bits_per_object", _fmt(summary["dram"]["total_bits_per_object"])),
            ("dram_index_bytes", summary["dram"]["index_bytes"]),
            ("dram_buffer_bytes", summary["dram"]["buffer_bytes"]),
            ("device_bytes_written", device.stats.bytes_written),
            ("device_bytes_read", device.stats.bytes_read),
            ("mean_sg_fill", _fmt(summary["mean_sg_fill"])),
            ("sgs_flushed", int(summary["sgs_flushed"])),
        ]
        if detail:
            stats += [(f"write_bytes_{k}", int(v)) for k, v in summary["write_bytes_by_cause"].items()]
            stats += [(f"dram_bytes_{k}", v) for k, v in dram.items()]
            stats += [(k, _fmt(summary[k])) for k in ("flash_reads_per_get", "bytes_read_per_get",
                                                       "index_reads_per_get", "dropped_fraction")]
            stats += [(f"config_{k}", v) for k, v in engine.config().items() if isinstance(v, (int, float, str))]
        return stats


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
