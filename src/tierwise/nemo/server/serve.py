"""Open (or recover) the Nemo cache a server runs on, and run `tierwise nemo serve`.

`open_cache` turns the CLI's device and sizes into a device + Nemo engine + acknowledgement journal:
- a new device folder is created with zones sized from the DRAM budget (Nemo keeps M = 2 whole SGs in DRAM, one SG
  per zone, so zone size ≈ DRAM / 3, a power of two between 1 MiB and 256 MiB, and at least 16 zones);
- an existing one is recovered from flash (`tierwise.nemo.engines.nemo.recovery`), then the journal is replayed so
  that no key reads back older than its last acknowledged write.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tierwise.common.errors import TierwiseError
from tierwise.common.units import parse_size
from tierwise.nemo.server import items
from tierwise.nemo.server.commands import CommandHandler
from tierwise.nemo.server.journal import DELETE, AckJournal
from tierwise.nemo.server.protocol import Limits

ITEM_HEADER_MAX = items.header_size(1, 1)


def zone_bytes_for(flash_bytes: int, dram_bytes: int) -> int:
    zone = 256 << 20
    while zone > 1 << 20 and (3 * zone > dram_bytes or flash_bytes // zone < 16):
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

    def durable(self) -> int:
        """SGs flushed so far: a write acknowledged before this count reached n is on flash once it reaches n+M."""
        return self.engine.next_seq

    @property
    def lag(self) -> int:
        return self.engine.cfg.buffered_sgs

    def close(self) -> None:
        """Clean shutdown: write the buffered SGs, forget the journal (all of it is on flash now), sync the device."""
        engine = self.engine
        engine.flush()
        engine.device.sync()
        if self.journal is not None:
            self.journal.clear()
            self.journal.close()
        engine.close()
        engine.device.close()


def open_cache(device: str, *, flash_bytes: int | None = None, zone_bytes: int | None = None,
               dram_bytes: int | None = None, max_value: int = 2048, fresh: bool = False,
               journal_dir: str | Path | None = None) -> Cache:
    """Open `device` (`file:FOLDER`, a folder path, `mem` or `zbd:/dev/...`) and the Nemo cache on it. The
    acknowledgement journal lives in `journal_dir`, by default inside a file-backed device's folder."""
    from tierwise.nemo.device import open_device
    from tierwise.nemo.engines import make_engine

    from tierwise.nemo.layout import OBJ_HEADER, PAYLOAD

    largest = PAYLOAD - OBJ_HEADER - 1 - ITEM_HEADER_MAX
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
        zone = zone_bytes or zone_bytes_for(flash_bytes, dram_bytes or 3 * (64 << 20))
        geometry = dict(flash_bytes=flash_bytes, zone_size=zone)
    dev = open_device(spec, **geometry)
    if existing and flash_bytes is not None and abs(dev.capacity_bytes - flash_bytes) >= dev.zone_capacity:
        dev.close()
        raise TierwiseError(f"{folder} holds a {dev.capacity_bytes / 2**30:.2f} GiB device, not {flash_bytes / 2**30:.2f} "
                            "GiB: drop --flash-size to reuse it, or give a new folder")
    recover = (existing or spec.startswith("zbd:")) and not fresh
    engine = make_engine("nemo", dev, recover=recover, max_value_size=max_value + ITEM_HEADER_MAX)
    if dram_bytes is not None:
        need = sum(engine.dram_bytes().values())
        if need > dram_bytes:
            dev.close()
            raise TierwiseError(f"Nemo needs {need / 2**20:.1f} MiB of DRAM on this device, over the "
                                f"{dram_bytes / 2**20:.1f} MiB budget: raise --dram-mb or use a smaller zone size")
    ack = None
    replayed = {"keys": 0, "deleted": 0}
    jdir = Path(journal_dir) if journal_dir else folder / "server-journal" if folder is not None else None
    if jdir is not None:
        ack = AckJournal(jdir)
        if fresh:
            ack.clear()
        replayed = replay_journal(engine, ack.load(engine.next_seq))
    handler = CommandHandler(engine, Limits(max_value=max_value), ack)
    warm_up_engine_code()
    return Cache(engine, handler, ack, getattr(engine, "recovery", None), replayed)


def warm_up_engine_code() -> dict:
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
    engine = make_engine("nemo", device, sets_per_sg=sets, flush_threshold=2)
    for i in range(1500):  # enough to fill, flush and evict SGs on this geometry, several times over
        key = b"warm-%d" % i
        engine.set(key, key * (1 + i % 40))
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


def replay_journal(engine, last: dict[bytes, tuple[int, int]]) -> dict:
    """Delete every journaled key whose recovered value is not its last acknowledged version (or was deleted)."""
    deleted = 0
    for key, (kind, cas) in last.items():
        blob = engine.get(key)
        if blob is None:
            continue
        try:
            stale = kind == DELETE or items.unpack(blob).cas != cas
        except TierwiseError:
            stale = True
        if stale:
            engine.delete(key)
            deleted += 1
    return {"keys": len(last), "deleted": deleted}


def describe(cache: Cache) -> str:
    engine = cache.engine
    cfg = engine.config()
    dram = sum(engine.dram_bytes().values())
    lines = [f"nemo cache: {engine.device!r}, S={cfg['S']} sets/SG, N={cfg['N']} SGs, G={cfg['G']}, "
             f"DRAM {dram / 2**20:.1f} MiB"]
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
        lines.append(f"journal: {cache.journal_replayed['keys']} keys replayed, {cache.journal_replayed['deleted']} "
                     "stale or deleted keys dropped")
    else:
        lines.append("no acknowledgement journal (give --journal DIR): after a crash, a key whose last write was "
                     "still buffered may read back an older value")
    return "\n".join(lines)


def serve(device: str, *, host: str, port: int, flash_bytes: int | None, dram_bytes: int | None, max_conns: int,
          max_value: int, engine_thread: bool, fresh: bool, journal_dir: str | None = None) -> None:
    from tierwise.nemo.server.server import ServerConfig, run_server

    t0 = time.perf_counter()
    cache = open_cache(device, flash_bytes=flash_bytes, dram_bytes=dram_bytes, max_value=max_value, fresh=fresh,
                       journal_dir=journal_dir)
    print(describe(cache), flush=True)
    config = ServerConfig(host=host, port=port, max_conns=max_conns, engine_thread=engine_thread,
                          limits=cache.handler.limits)

    def finalize() -> None:
        t = time.perf_counter()
        cache.close()
        print(f"shut down cleanly: buffered SGs flushed and device synced in {time.perf_counter() - t:.2f} s", flush=True)

    def ready(server) -> None:
        print(f"listening on {host}:{server.port} (ready in {time.perf_counter() - t0:.2f} s)", flush=True)

    run_server(cache.handler, config, finalize, durable=cache.durable, lag=cache.lag, ready=ready)
