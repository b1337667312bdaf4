"""Open (or recover) the Nemo cache a server runs on, and run `tierwise nemo serve`.

`open_cache` turns the CLI's device and sizes into a device + Nemo engine + acknowledgement journal:
- a new device folder is created with zones sized from the DRAM budget (Nemo keeps M = 2 whole SGs in DRAM, one SG
  per zone, so zone size ≈ DRAM / 3, a power of two between 1 MiB and 256 MiB, and at least 16 zones);
- an existing one is recovered from flash (`tierwise.nemo.engines.nemo.recovery`), then the journal is replayed so
  that no key reads back older than its last acknowledged write, and the journaled writes that were only in the DRAM
  buffers are restored; from then on the journal checkpoints the buffers' objects (`buffered_records`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.common.units import parse_size
from tierwise.nemo.server import items
from tierwise.nemo.server.commands import CommandHandler
from tierwise.nemo.server.journal import DELETE, SET, AckJournal, JournalFull
from tierwise.nemo.server.protocol import Limits

SMALL_ITEM = 2048  # a tiered cache's Nemo holds items of up to this many data bytes (CacheLib's small-item limit)

ITEM_HEADER_MAX = items.header_size(1, 1)


def zone_bytes_for(flash_bytes: int, dram_bytes: int, buffers: int = 3, min_zones: int = 16) -> int:
    """The largest zone (1..256 MiB, a power of two) whose `buffers` fit the DRAM budget (Nemo: 2 buffered SGs of
    a zone each, and room for the index) and that leaves at least `min_zones` zones."""
    zone = 256 << 20
    while zone > 1 << 20 and (buffers * zone > dram_bytes or flash_bytes // zone < min_zones):
        zone //= 2
    return zone


@dataclass
class Cache:
    """A served cache: the engine, the command handler over it, the journal and what recovery found."""

    engine: object
    handler: CommandHandler
    journal: AckJournal | None
    recovery: object | None
    journal_replayed: dict
    opener: "_Opener"
    _large_synced_at: int = -1  # Nemo's SG count when a tiered cache's block log was last written

    def durable(self) -> int:
        """SGs flushed so far: a write acknowledged before this count reached n is on flash once it reaches n+M. A
        tiered cache writes its block log's buffer whenever the count moves, so its large writes keep that rule."""
        seq = self.engine.next_seq
        if seq != self._large_synced_at and hasattr(self.engine, "flush_large"):
            try:
                self.engine.flush_large()
            except Exception:  # a device fault (the next batch reopens the cache): vouch only for what was written
                return max(self._large_synced_at, 0)
            self._large_synced_at = seq
        return seq

    @property
    def lag(self) -> int:
        return self.engine.cfg.buffered_sgs

    def room(self, journal_bytes: int) -> None:
        """Make room for a write, or raise TierwiseError: the journal's records and, on a device whose space could
        not be reserved when it opened (a full disk at restart), that reservation first."""
        device = self.engine.device
        if getattr(device, "unreserved", None):  # only a file-backed device reserves its space
            device.reserve_space()
        if self.journal is not None:
            self.journal.reserve(journal_bytes)

    def reopen(self) -> None:
        """After a device fault (disk full, I/O error in an SG flush) the engine's state may be half-updated: drop it
        as a crash would and recover the cache from flash and the journal, as a restarted server does. Writes that
        were only buffered come back from the bytes their journal records carry."""
        device = self.engine.device
        getattr(device, "crash", device.close)()  # a file device drops without syncing (its sync may fail now)
        if self.journal is not None:
            self.journal.close()
        engine = self.opener.engine(fresh=False)
        try:
            self.journal, self.journal_replayed = self.opener.journal(engine, fresh=False)
        except BaseException:
            engine.device.close()  # and its lock, so a retry can take it
            raise
        self.engine, self.recovery = engine, getattr(engine, "recovery", None)
        handler = self.handler
        handler.engine, handler.journal = engine, self.journal
        if self.journal is not None:
            handler.flush_threshold = max(handler.flush_threshold, self.journal.flush_threshold)

    def close(self) -> None:
        """Clean shutdown: write the buffered SGs, forget the journal (all of it is on flash now), sync the device."""
        engine = self.engine
        engine.flush()
        engine.device.sync()
        if self.journal is not None:
            try:
                self.journal.clear(engine.next_seq)
            except JournalFull as e:  # its segments stay: they still describe what is on flash
                print(f"journal not emptied: {e}", file=sys.stderr, flush=True)
            self.journal.close()
        engine.close()
        engine.device.close()
        self.opener.close()


@dataclass
class _Opener:
    """How to open the device, the engine and the journal of one cache: at start, and again after a device fault."""

    spec: str
    folder: Path | None
    geometry: dict
    max_value: int
    journal_dir: Path | None
    sync: str = "never"  # the journal's sync policy (`AckJournal`)
    sync_interval: float = 0.005
    block_lock: int = -1  # fd holding a block device with O_EXCL
    flush_threshold: int = 1  # Nemo's p_th (see open_cache)
    engine_name: str = "nemo"  # or "tiered": Nemo for items up to SMALL_ITEM, a block log for larger ones

    def engine(self, *, fresh: bool):
        from tierwise.nemo.device import open_device
        from tierwise.nemo.engines import make_engine

        existing = not self.geometry
        options = {"reserve": True} if self.folder is not None else {}
        dev = open_device(self.spec, **self.geometry, **options)
        recover = (existing or self.spec.startswith("zbd:")) and not fresh
        try:
            if self.engine_name == "tiered":
                small = SMALL_ITEM + ITEM_HEADER_MAX
                return make_engine("tiered", dev, recover=recover, threshold=small,
                                   **{"small.max_value_size": small, "small.flush_threshold": self.flush_threshold})
            return make_engine("nemo", dev, recover=recover, max_value_size=self.max_value + ITEM_HEADER_MAX,
                               flush_threshold=self.flush_threshold)
        except BaseException:
            dev.close()  # and its lock, so a retry can take it
            raise

    def journal(self, engine, *, fresh: bool) -> tuple[AckJournal | None, dict]:
        """Open the journal, replay it over the recovered engine, and check that flash still holds every SG the
        journal saw written; anything it cannot vouch for is dropped (made invisible), never served."""
        if self.journal_dir is None:
            return None, {"keys": 0, "deleted": 0, "restored": 0, "notes": []}
        journal = AckJournal(self.journal_dir, sync=self.sync, sync_interval=self.sync_interval,
                             max_item=engine.max_value_size)
        if fresh:  # the device was wiped: so is every segment a previous run left (load would replay them)
            journal.discard(engine.next_seq)
        replay = journal.load(engine.next_seq)
        notes = [f"journal damaged: {d}" for d in replay.damage]
        if replay.damage:
            notes.append("every item written before the damage is dropped: a write lost in it may be newer")
        if engine.next_seq < replay.seq:
            journal.flush_threshold = max(journal.flush_threshold, time.time_ns() // 1000)
            notes.append(f"flash ends at SG {engine.next_seq - 1} but SG {replay.seq - 1} had been written: the "
                         "newest SGs are damaged or missing; every item from before this start is dropped")
        replayed = replay_journal(engine, replay.last, journal.flush_threshold, time.time())
        try:
            journal.start(engine.next_seq)
        except JournalFull as e:
            notes.append(f"{e}: writes are refused until it has room")
        journal.snapshot = lambda: buffered_records(engine)
        return journal, {**replayed, "notes": notes}

    def close(self) -> None:
        if self.block_lock >= 0:
            os.close(self.block_lock)
            self.block_lock = -1


def open_cache(device: str, *, flash_bytes: int | None = None, zone_bytes: int | None = None,
               dram_bytes: int | None = None, max_value: int = 2048, fresh: bool = False,
               journal_dir: str | Path | None = None, sync: str = "never", sync_interval_ms: float = 5.0,
               flush_threshold: int = 1, engine: str = "nemo") -> Cache:
    """Open `device` (`file:FOLDER`, a folder path, `mem` or `zbd:/dev/...`) and the Nemo cache on it. The
    acknowledgement journal lives in `journal_dir`, by default inside a file-backed device's folder; `sync` is its
    sync policy (never, batch: at most one fdatasync per `sync_interval_ms`, always: see `journal`).

    `flush_threshold` is Nemo's p_th: the rear buffered SG is written at the p_th-th insert that finds its set full
    in every buffer, and each insert before that makes room by dropping the oldest buffered objects of that set
    (the paper's delayed flush: ~90% SG fill and ALWA ~1.16 on tiny objects, against ~60% and ~1.6 at 1). Those are
    acknowledged writes read back as misses while the cache has room (4% of a working set written once), which
    no memcached user expects, so a served cache flushes at once (1) unless told otherwise.

    `engine` "tiered" keeps items of up to 2048 data bytes in Nemo and larger ones (up to `max_value`, at most what a
    zone holds) in a block log on the device's last zones (`tierwise.nemo.engines.tiered`), both recovered at a
    restart."""
    from tierwise.nemo.layout import max_value_size

    if engine not in ("nemo", "tiered"):
        raise TierwiseError(f"--engine {engine!r}: give nemo or tiered")
    largest = max_value_size(1) - ITEM_HEADER_MAX if engine == "nemo" else 1 << 20
    if not 1 <= max_value <= largest:
        raise TierwiseError(f"--max-value {max_value} out of range: at most {largest} bytes (a value, its "
                            f"{ITEM_HEADER_MAX}-byte item header and the key must fit one 4 KB set page)")
    spec = device if ":" in device or device == "mem" else f"file:{device}"
    folder = Path(spec[5:]) if spec.startswith("file:") else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise TierwiseError(f"--device {device}: {folder} is a file; give a folder for a file-backed zoned device")
    existing = folder is not None and (folder / "zoned.json").exists()
    geometry = {}
    if not existing and not spec.startswith("zbd:"):
        if flash_bytes is None:
            raise TierwiseError(f"{device} is a new device: give its size (--flash-size, e.g. 4G)")
        # tiered: the block log buffers its open zone and the one it evicts too, and needs zones of its own
        shape = dict(buffers=5, min_zones=32) if engine == "tiered" else {}
        zone = zone_bytes or zone_bytes_for(flash_bytes, dram_bytes or 3 * (64 << 20), **shape)
        geometry = dict(flash_bytes=flash_bytes, zone_size=zone)
    jdir = Path(journal_dir) if journal_dir else folder / "server-journal" if folder is not None else None
    opener = _Opener(spec, folder, geometry, max_value, jdir, sync, sync_interval_ms / 1000,
                     flush_threshold=flush_threshold, engine_name=engine)
    if spec.startswith("zbd:"):
        opener.block_lock = lock_block_device(spec[4:])
    try:
        engine = opener.engine(fresh=fresh)
    except BaseException:
        opener.close()
        raise
    if folder is not None:
        opener.geometry = {}  # the folder is a device now: a reopen recovers it
    dev = engine.device
    if max_value + ITEM_HEADER_MAX > engine.max_value_size:
        _give_up(engine, opener)
        raise TierwiseError(f"--max-value {max_value} out of range: at most {engine.max_value_size - ITEM_HEADER_MAX} "
                            "bytes on this device (an item and its header must fit one zone)")
    if existing and flash_bytes is not None and abs(dev.capacity_bytes - flash_bytes) >= dev.zone_capacity:
        _give_up(engine, opener)
        raise TierwiseError(f"{folder} holds a {dev.capacity_bytes / 2**30:.2f} GiB device, not {flash_bytes / 2**30:.2f} "
                            "GiB: drop --flash-size to reuse it, or give a new folder")
    if dram_bytes is not None:
        need = sum(engine.dram_bytes().values())
        if need > dram_bytes:
            _give_up(engine, opener)
            raise TierwiseError(f"Nemo needs {need / 2**20:.1f} MiB of DRAM on this device, over the "
                                f"{dram_bytes / 2**20:.1f} MiB budget: raise --dram-mb or use a smaller zone size")
    try:
        ack, replayed = opener.journal(engine, fresh=fresh)
    except BaseException:
        _give_up(engine, opener)
        raise
    handler = CommandHandler(engine, Limits(max_value=max_value), ack)
    cache = Cache(engine, handler, ack, getattr(engine, "recovery", None), replayed, opener)
    handler.reopen, handler.room = cache.reopen, cache.room
    warm_up_engine_code(engine.name)
    return cache


def _give_up(engine, opener: _Opener) -> None:
    engine.device.close()
    opener.close()


def lock_block_device(path: str) -> int:
    """Open a zoned block device with O_EXCL and return the fd: while it is held, a second server (or a mount) on
    the same device is refused by the kernel (EBUSY)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise TierwiseError(f"device {path} is in use (another server holds it, or it is mounted)") from None
        raise TierwiseError(f"cannot open device {path}: {e.strerror}") from None


def warm_up_engine_code(name: str = "nemo") -> dict:
    """Run a throwaway Nemo cache through sets, gets, deletes, flushes and evictions, so the engine's compiled code
    is compiled (or loaded from numba's on-disk cache) before the first client connects, instead of stalling the
    client whose set triggers the first SG flush for seconds. One compiled implementation serves every device kind,
    so an in-memory device warms it for all. Returns the throwaway engine's metrics summary (what it went through)."""
    from tierwise.nemo.device import open_device
    from tierwise.nemo.engines import make_engine
    from tierwise.nemo.layout import PAGE_SIZE

    sets = 4
    device = open_device("mem", num_zones=8, zone_size=(sets + 2) * PAGE_SIZE)
    # p_th 2 (a full-size device has dozens): full sets give up objects before a flush, as in service
    if name == "tiered":  # Nemo on the first 16 zones, a block log on 8 more; every 4th value is a large one
        device.close()
        device = open_device("mem", num_zones=24, zone_size=(sets + 2) * PAGE_SIZE)
        engine = make_engine("tiered", device, small_zones=16, threshold=600,
                             **{"small.sets_per_sg": sets, "small.flush_threshold": 2})
    else:
        engine = make_engine("nemo", device, sets_per_sg=sets, flush_threshold=2)
    large = 10 if name == "tiered" else 0
    for i in range(1500):  # enough to fill, flush and evict SGs on this geometry, several times over
        key = b"warm-%d" % i
        engine.set(key, key * (1 + i % 40) * (1 + large * (i % 4 == 0)))
        engine.get(key)
        engine.get(b"warm-%d" % (i // 2))  # older keys: reads of flushed SGs, hotness marks, write-back
        engine.get(b"warm-miss-%d" % i)
        if i % 7 == 0:
            engine.delete(b"warm-%d" % (i // 3))  # deletes of keys on flash as well as buffered ones
    engine.flush()
    summary = engine.metrics.summary(steady=False)
    engine.close()
    device.close()
    return summary


def replay_journal(engine, last: dict[bytes, tuple[int, int, int, bytes]], flush_threshold: int, now: float) -> dict:
    """Apply each journaled key's last acknowledged state over what recovery found: restore an item whose bytes were
    journaled, unless flash holds that version already (same cas and exptime: a touch keeps the cas) or it has
    expired or been flushed since; delete any other recovered item that is not that version."""
    deleted = restored = 0
    engine.clock = int(now)
    for key, (kind, cas, exptime, data) in last.items():
        blob = engine.get(key)
        if kind == SET and blob is not None and _version(blob) == (cas, exptime):
            continue
        if kind == SET and data and cas >= flush_threshold and not 0 < exptime <= now:
            restored += bool(engine.set(key, data, exptime))
        elif blob is not None:
            engine.delete(key)
            deleted += 1
    return {"keys": len(last), "deleted": deleted, "restored": restored}


def _version(blob: bytes) -> tuple[int, int] | None:
    """(cas, exptime) of a stored item; None for a value the server did not write."""
    try:
        _, exptime, cas, _ = items.header(blob)
    except TierwiseError:
        return None
    return cas, exptime


def buffered_records(engine) -> list[tuple[int, bytes, int, int, bytes]] | None:
    """The journal's checkpoint: the latest state of every object in the engine's DRAM buffers, as journal records
    (an item as a SET with its bytes, a tombstone as a DELETE); whatever is not buffered is on flash. None after a
    device fault: the buffers may be half-updated then."""
    from tierwise.nemo.layout import FLAG_TOMBSTONE, iter_objects

    if engine.failed is not None:
        return None
    if hasattr(engine, "flush_large"):  # a tiered cache: its block log's buffer goes to flash, so only Nemo's remain
        try:
            engine.flush_large()
        except Exception:  # a device fault: no checkpoint now
            return None
    state = getattr(engine, "small", engine).state
    pages = state.pages.reshape(-1, state.pages.shape[-1])
    records = []
    for page in pages[np.flatnonzero(pages[:, 12] | pages[:, 13])]:  # pages holding objects (their count field)
        for key, value, flags, _ in iter_objects(page):
            if flags & FLAG_TOMBSTONE:
                records.append((DELETE, key, 0, 0, b""))
            elif (version := _version(value)) is not None:  # not an item: never served, nothing to keep
                records.append((SET, key, *version, value))
    return records


def describe(cache: Cache) -> str:
    engine = getattr(cache.engine, "small", cache.engine)  # a tiered cache: its Nemo, then its block log
    cfg = engine.config()
    dram = sum(engine.dram_bytes().values())
    lines = [f"nemo cache: {engine.device!r}, S={cfg['S']} sets/SG, N={cfg['N']} SGs, G={cfg['G']}, "
             f"DRAM {dram / 2**20:.1f} MiB"]
    if engine is not cache.engine:
        large = cache.engine.large
        found = f", recovered {large.recovered['objects']} items" if large.recovered else ""
        lines.append(f"block log for items over {SMALL_ITEM} B: zones {large.zones[0]}..{large.zones[-1]}, "
                     f"DRAM {sum(large.dram_bytes().values()) / 2**20:.1f} MiB{found}")
    rec = cache.recovery
    if rec is not None:
        lines.append(f"recovered in {rec.seconds:.2f} s ({rec.seconds_per_gb:.2f} s/GiB of flash): {rec.live_sgs} live "
                     f"SGs, {rec.objects} objects, torn head {rec.torn_head}, damaged slots {len(rec.damaged_slots)}, "
                     f"bad pages {rec.bad_pages}, dropped SGs {rec.dropped_committed}, index blocks loaded "
                     f"{rec.index_blocks_loaded} / rebuilt {rec.index_blocks_rebuilt} / damaged "
                     f"{rec.index_blocks_damaged}" + (", CLEARED (newest SGs damaged)" if rec.cleared else ""))
        for d in rec.damaged_slots[:10]:
            lines.append(f"  damaged: {d}")
    if cache.journal is not None:
        replayed = cache.journal_replayed
        lines.append(f"journal: {replayed['keys']} keys replayed, {replayed['restored']} writes restored to the DRAM "
                     f"buffers, {replayed['deleted']} stale or deleted keys dropped")
        lines += [f"  WARNING {note}" for note in replayed["notes"][:10]]
    else:
        lines.append("no acknowledgement journal (give --journal DIR): after a crash, a key whose last write was "
                     "still buffered may read back an older value")
    if getattr(engine.device, "unreserved", None):
        lines.append(f"  WARNING {engine.device.unreserved}: writes are refused until it can be reserved")
    return "\n".join(lines)


def exposure_warning(host: str) -> str | None:
    """A warning when `host` is not a loopback address: the memcached text protocol has no authentication, so
    anyone who reaches the port can read, overwrite and flush the cache."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback:
        return None
    return (f"WARNING: listening on {host} without authentication (the memcached text protocol has none): anyone "
            "who can reach this port can read, change and flush the cache; bind to 127.0.0.1 or firewall the port")


def serve(device: str, *, host: str, port: int, flash_bytes: int | None, dram_bytes: int | None, max_conns: int,
          max_value: int, engine_thread: bool, fresh: bool, journal_dir: str | None = None, sync: str = "never",
          sync_interval_ms: float = 5.0, idle_timeout: float = 0.0, flush_threshold: int = 1,
          engine: str = "nemo") -> None:
    from tierwise.nemo.server.server import ServerConfig, run_server

    t0 = time.perf_counter()
    cache = open_cache(device, flash_bytes=flash_bytes, dram_bytes=dram_bytes, max_value=max_value, fresh=fresh,
                       journal_dir=journal_dir, sync=sync, sync_interval_ms=sync_interval_ms,
                       flush_threshold=flush_threshold, engine=engine)
    print(describe(cache), flush=True)
    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    config = ServerConfig(host=host, port=port, max_conns=max_conns, engine_thread=engine_thread,
                          idle_timeout=idle_timeout, limits=cache.handler.limits)

    def finalize() -> None:
        t = time.perf_counter()
        cache.close()
        print(f"shut down cleanly: buffered SGs flushed and device synced in {time.perf_counter() - t:.2f} s", flush=True)

    def ready(server) -> None:
        print(f"listening on {host}:{server.port} (ready in {time.perf_counter() - t0:.2f} s)", flush=True)

    run_server(cache.handler, config, finalize, durable=cache.durable, lag=cache.lag, ready=ready)
