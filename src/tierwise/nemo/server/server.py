"""The memcached-protocol TCP server: asyncio networking (uvloop when installed) in front of one engine.

The engine is single-threaded, so its requests are serialised: inline on the event loop (default), or on one
engine thread that receives the requests of all waiting connections in one batch (`engine_thread`). Each
connection has at most one batch in flight, so its replies stay in order.

Limits: `max_conns` (one more gets `SERVER_ERROR too many open connections` and is closed, as memcached does);
`idle_timeout` (like memcached's `-o idle_timeout`: a connection that completes no request for that many seconds
is closed, so idle clients cannot hold every slot);
per-connection input is bounded by the parser (one command line + one data block; rejected blocks are discarded
as they arrive) and, while the connection waits, by `buffer_bytes` of unparsed input; output is bounded by the
transport's write-buffer high-water mark (`buffer_bytes`): above it the server stops reading from that client
until it drains its replies.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tierwise.nemo.server.commands import CommandHandler
from tierwise.nemo.server.journal import JournalFull
from tierwise.nemo.server.protocol import Limits, Parser, Request, single_set, valid_key


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 11211
    max_conns: int = 1024
    buffer_bytes: int = 1 << 20  # per-connection output high-water mark (input is bounded by Limits)
    max_batch: int = 256  # requests of one connection run per turn
    engine_thread: bool = False  # run requests on a dedicated engine thread instead of inline on the loop
    idle_timeout: float = 0.0  # close a connection that completes no request for this long (seconds); 0 = never
    limits: Limits = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = Limits()


class Connection(asyncio.Protocol):
    def __init__(self, server: "MemcacheServer"):
        self.server = server
        self.parser = Parser(server.config.limits)
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a batch of this connection is with the engine thread
        self.eof = False
        self.reading = True
        self.write_paused = False
        self.last_request = server.now()  # when a request last completed (idle_timeout, `stats conns`)

    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.server.admit(self):
            transport.write(b"SERVER_ERROR too many open connections\r\n")
            transport.close()
            return
        high = self.server.config.buffer_bytes
        transport.set_write_buffer_limits(high=high, low=high // 4)

    def connection_lost(self, exc) -> None:
        self.server.forget(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.server.counters["bytes_read"] += len(data)
        if self.parser.idle and self.server.inline and not self.write_paused:
            reply = self.server.quick_reply(data)
            if reply is not None:
                self.send(reply)
                self.last_request = self.server.now()
                return
        self.parser.feed(data)
        if self.busy or self.write_paused:
            if self.parser.buffered > self.server.config.buffer_bytes:
                self._set_reading(False)
            return
        self.pump()

    def eof_received(self) -> bool:
        # Half-closed: the client sent everything it will send; answer what is complete, then close.
        self.eof = True
        if not self.busy:
            self.pump()
        return True

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests until they drain.
        self.write_paused = True
        self._set_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.busy:
            self.pump()

    def _set_reading(self, on: bool) -> None:
        if self.transport is None or on == self.reading or self.eof:
            return
        self.reading = on
        (self.transport.resume_reading if on else self.transport.pause_reading)()

    def pump(self) -> None:
        """Run the complete requests (inline, or on the engine thread), or close when nothing more can come."""
        server = self.server
        parser = self.parser
        while self.transport is not None and not self.write_paused:
            reqs = parser.parse(server.config.max_batch) if parser.buf else None
            if not reqs:
                if parser.closed or self.eof or server.closing:
                    self.transport.close()
                elif not self.reading:
                    self._set_reading(True)
                return
            self.last_request = server.now()
            if not server.inline:
                self.busy = True
                server.submit(self, reqs)
                return
            reply = server.run_requests(reqs)
            if reply:
                self.send(reply)

    def send(self, reply: bytes) -> None:
        self.server.counters["bytes_written"] += len(reply)
        self.transport.write(reply)

    def deliver(self, reply: bytes) -> None:
        self.busy = False
        if self.transport is None:
            return
        if reply:
            self.send(reply)
        self.pump()


class MemcacheServer:
    """Serves one engine. `handler` holds the command semantics; `durable` / `lag` tell the journal when an
    acknowledged write is on flash (see `tierwise.nemo.server.journal`).

    By default requests run inline on the event loop (cheapest: no thread hop; connections take turns, each with
    at most `max_batch` requests per turn). With `engine_thread`, they run on one engine thread instead, batched
    across connections, so the loop keeps accepting and reading while the engine is busy (e.g. flushing an SG).
    """

    def __init__(self, handler: CommandHandler, config: ServerConfig, *, durable=lambda: 0, lag: int = 0):
        self.handler = handler
        self.counters = handler.counters  # bytes_read / bytes_written are counted here
        self.config = config
        self.inline = not config.engine_thread  # read on every request: attributes, not config.*
        self.max_key = config.limits.max_key
        self.durable = durable
        self.lag = lag
        self.conns: set[Connection] = set()
        self.closing = False
        self.total_conns = 0
        self.rejected_conns = 0
        self._queue: list[tuple[Connection, list[Request]]] = []
        self._engine_busy = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nemo-engine")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._idle = asyncio.Event()
        self.port = config.port
        self.now = time.monotonic
        handler.connection_stats.update(curr_connections=0, total_connections=0, rejected_connections=0)
        handler.conns_report = self.conns_report
        handler.server_settings = [("maxconns", config.max_conns), ("tcpport", config.port), ("inter", config.host),
                                   ("num_threads", 1), ("idle_timeout", config.idle_timeout)]

    # ---- connections ---------------------------------------------------------------------------------------------
    def admit(self, conn: Connection) -> bool:
        if self.closing or len(self.conns) >= self.config.max_conns:
            self.rejected_conns += 1
            return False
        self.conns.add(conn)
        self.total_conns += 1
        self.handler.connection_stats.update(curr_connections=len(self.conns), total_connections=self.total_conns)
        return True

    def conns_report(self) -> list[tuple[str, object]]:
        """`stats conns`, in memcached's shape: the listening socket, then per connection (keyed by fd) its peer,
        state and seconds since its last request."""
        lines: list[tuple[str, object]] = []
        for sock in self._server.sockets if self._server is not None else ():
            host, port = sock.getsockname()[:2]
            lines += [(f"{sock.fileno()}:addr", f"tcp:{host}:{port}"), (f"{sock.fileno()}:state", "conn_listening")]
        now = self.now()
        for conn in self.conns:
            sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
            if sock is None:
                continue
            fd = sock.fileno()
            lines += [(f"{fd}:addr", "tcp:%s:%d" % sock.getpeername()[:2]),
                      (f"{fd}:listen_addr", "tcp:%s:%d" % sock.getsockname()[:2]),
                      (f"{fd}:state", "conn_parse_cmd" if conn.parser.idle else "conn_nread"),
                      (f"{fd}:secs_since_last_cmd", int(now - conn.last_request))]
        return lines

    def _close_idle(self) -> None:
        """Close the connections that completed no request within idle_timeout (a batch with the engine thread is
        not idle), then look again in a while: at most a second late, or a tenth of the timeout."""
        timeout = self.config.idle_timeout
        oldest = self.now() - timeout
        for conn in list(self.conns):
            if conn.last_request < oldest and not conn.busy and conn.transport is not None:
                conn.transport.close()
        if not self.closing:
            self._loop.call_later(min(1.0, timeout / 10), self._close_idle)

    def forget(self, conn: Connection) -> None:
        self.conns.discard(conn)
        self.handler.connection_stats.update(curr_connections=len(self.conns),
                                             rejected_connections=self.rejected_conns)

    # ---- running requests ----------------------------------------------------------------------------------------
    def quick_reply(self, data: bytes) -> bytes | None:
        """The reply to a read that holds exactly one plain `get <key>`, or one `set` line with its data block (what
        a client waiting for each reply sends), run without the general parser; None for anything else, which the
        general parser then handles (errors included)."""
        handler = self.handler
        head = data[:4]
        if head == b"get ":
            key = data[4:-2]
            if data[-2:] == b"\r\n" and valid_key(key, self.max_key):
                handler.begin_batch()
                return handler.run_get(key)
        elif head == b"set ":
            fields = single_set(data, self.config.limits)
            if fields is not None:
                handler.begin_batch()
                reply = handler.run_set(*fields)
                self._commit_journal()
                return reply
        return None

    def run_requests(self, reqs: list[Request]) -> bytes:
        """Run the requests of one connection; the journal is written before the reply leaves."""
        handler = self.handler
        handler.begin_batch()
        reply = handler.run(reqs[0]) if len(reqs) == 1 else b"".join([handler.run(r) for r in reqs])
        self._commit_journal()
        return reply

    def run_batch(self, batch: list[list[Request]]) -> list[bytes]:
        """Run the requests of several connections (engine thread); one journal write covers them all."""
        handler = self.handler
        handler.begin_batch()
        run = handler.run
        replies = [b"".join([run(r) for r in reqs]) for reqs in batch]
        self._commit_journal()
        return replies

    def _commit_journal(self) -> None:
        """Write the journal records of the requests just run: before their replies leave."""
        handler = self.handler
        journal = handler.journal
        if journal is not None and journal.pending:
            durable = self.durable()
            try:
                journal.commit(durable)
            except JournalFull as e:
                # Writes reserved their room before they ran, so only records a batch adds on its own are left
                # (a delayed flush_all firing, the SG count): they stay pending for the next commit.
                handler.log("space", f"journal commit deferred: {e}")
                return
            journal.retire(durable, self.lag)

    def submit(self, conn: Connection, reqs: list[Request]) -> None:
        self._queue.append((conn, reqs))
        if not self._engine_busy:
            self._start_batch()

    def _start_batch(self) -> None:
        batch, self._queue = self._queue, []
        self._engine_busy = True
        self._idle.clear()
        fut = self._loop.run_in_executor(self._executor, self.run_batch, [reqs for _, reqs in batch])
        fut.add_done_callback(lambda f: self._batch_done([conn for conn, _ in batch], f))

    def _batch_done(self, conns: list[Connection], fut) -> None:
        self._engine_busy = False
        exc = fut.exception()
        replies = [b"SERVER_ERROR %s\r\n" % type(exc).__name__.encode()] * len(conns) if exc else fut.result()
        for conn, reply in zip(conns, replies):
            conn.deliver(reply)
        if self._queue:
            self._start_batch()
        else:
            self._idle.set()

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle.set()
        self._server = await self._loop.create_server(lambda: Connection(self), self.config.host, self.config.port,
                                                      reuse_address=True, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.config.idle_timeout > 0:
            self._close_idle()

    async def shutdown(self, finalize) -> None:
        """Stop accepting, let in-flight requests finish, close the connections, then run `finalize` (flush the
        engine's buffered SGs and sync the device) on the engine thread."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        while self._engine_busy or self._queue:
            await self._idle.wait()
            await asyncio.sleep(0)
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
        await self._loop.run_in_executor(self._executor, finalize)
        self._executor.shutdown(wait=True)

    async def serve_until_signalled(self, finalize, ready=None) -> None:
        await self.start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready(self)
        await stop.wait()
        await self.shutdown(finalize)


def run_server(handler: CommandHandler, config: ServerConfig, finalize, *, durable=lambda: 0, lag: int = 0,
               ready=None) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully. Uses uvloop when it is installed."""
    server = MemcacheServer(handler, config, durable=durable, lag=lag)
    try:
        import uvloop
    except ImportError:
        asyncio.run(server.serve_until_signalled(finalize, ready))
    else:
        uvloop.run(server.serve_until_signalled(finalize, ready))


def serve_in_thread(handler: CommandHandler, config: ServerConfig, *, durable=lambda: 0, lag: int = 0):
    """Start a server on a background thread (tests, benchmarks); returns (server, stop) where stop() shuts it down
    gracefully without finalizing the engine."""
    started = threading.Event()
    holder: dict = {}

    def main() -> None:
        async def body() -> None:
            server = MemcacheServer(handler, config, durable=durable, lag=lag)
            await server.start()
            holder["server"], holder["loop"] = server, asyncio.get_running_loop()
            holder["stop"] = asyncio.Event()
            started.set()
            await holder["stop"].wait()
            await server.shutdown(lambda: None)

        asyncio.run(body())

    thread = threading.Thread(target=main, name="nemo-server", daemon=True)
    thread.start()
    started.wait(10)

    def stop() -> None:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)

    return holder["server"], stop
