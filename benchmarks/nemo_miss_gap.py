"""Where Nemo's miss ratio gap to FairyWREN comes from, measured (issue 16, item 2).

Replays the comparison trace on Nemo and FairyWREN at the comparison's geometry (docs/results-nemo.md, "Comparison"),
then asks each engine, key by key, which objects it still holds (every hit is the latest version: the replay checks
each one byte for byte). Live bytes held is the capacity the design turns into hits; the rest of its flash (and
DRAM buffers) goes to index zones, SG metadata, padding, headers, stale copies, tombstones and over-provisioning.
Nemo variants switch one loss off at a time. A FIFO and an LRU (in bytes of live objects, lookaside like the replay)
fed the same requests give the miss ratio each policy reaches with the same live bytes: a design below its FIFO
figure keeps hot objects better than FIFO, one above it holds its live bytes badly (they are not the ones asked for).

    python benchmarks/nemo_miss_gap.py --requests 2M --flash-size 8M [--json gap.json]
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict

import numpy as np

from tierwise.common.units import parse_count, parse_size
from tierwise.nemo.api import open_engine
from tierwise.nemo.defaults import ReplayOptions
from tierwise.nemo.replay import replay
from tierwise.nemo.traces import open_trace
from tierwise.nemo.traces.request import key_bytes

NEMO_TABLE = dict(flush_threshold=32, pbfg_cache_ratio=0.5, index_pages_per_pbfg=7)  # the comparison table's Nemo


def designs(flash: int) -> dict[str, dict]:
    nemo_zone = flash // 32  # 32 zones, as the comparison's 256 KiB at 8 MiB
    return {
        "fairywren": dict(name="fairywren", zone_size=flash // 128, log_pct=0.05, set_op=0.05),
        "kangaroo": dict(name="kangaroo", zone_size=flash // 128, log_pct=0.05, set_op=0.05, threshold=2, readmit=1),
        "nemo (table: p_th 32)": dict(name="nemo", zone_size=nemo_zone, **NEMO_TABLE),
        "nemo, defaults (p_th 1 here)": dict(name="nemo", zone_size=nemo_zone),
        "nemo, no write-back": dict(name="nemo", zone_size=nemo_zone, **NEMO_TABLE, write_back=False),
        "nemo, p_th 1 (no drops)": dict(name="nemo", zone_size=nemo_zone, **{**NEMO_TABLE, "flush_threshold": 1}),
        "nemo, fp 1e-5": dict(name="nemo", zone_size=nemo_zone, **NEMO_TABLE, fp_rate=1e-5),
    }


def last_state(chunks) -> dict[int, tuple[int, int]]:
    """key id -> (key size, value size) of its latest version, for keys whose last request left a value (GET misses
    refill with the requested size, as the lookaside replay does)."""
    state: dict[int, int] = {}
    for c in chunks:
        for op, k, ks, vs in zip(c["op"].tolist(), c["key"].tolist(), c["key_size"].tolist(), c["value_size"].tolist()):
            if op == 2:
                state.pop(k, None)
            elif op == 1 or k not in state:
                state[k] = (ks, vs)
    return state


def held(engine, state) -> tuple[int, int]:
    """(objects, key + value bytes) the engine returns among the keys that have a latest version."""
    n = b = 0
    for k, (ks, vs) in state.items():
        if 1 <= ks <= 255 and engine.get(key_bytes(k, ks)) is not None:
            n += 1
            b += ks + vs
    return n, b


def nemo_census(engine) -> dict[str, int]:
    """Bytes of every Nemo object record (header + key + value), on flash in the live SGs and in the DRAM buffers,
    by what it is now: live (the key's latest version: a get returns these bytes), stale (superseded or deleted),
    tombstone. Plus the flash bytes of SG slots that hold no live SG, and the padding of live SGs' pages."""
    from tierwise.nemo.layout import FLAG_TOMBSTONE, OBJ_HEADER, PAGE_HEADER, PAGE_SIZE, iter_objects

    out = dict.fromkeys(("live", "stale", "tombstone", "page_padding", "buffer_live", "buffer_stale",
                         "buffer_tombstone"), 0)

    def tally(page, where):
        used = 0
        for key, value, flags, _ in iter_objects(page):
            size = OBJ_HEADER + len(key) + len(value)
            used += size
            kind = "tombstone" if flags & FLAG_TOMBSTONE else "live" if engine.get(key) == value else "stale"
            out[where + kind] += size
        return used

    for seq in range(engine.oldest, engine.next_seq):
        for j in range(1, engine.S + 1):
            z, off = engine._addr(seq, j)
            page = np.frombuffer(engine.device.read(z, off, PAGE_SIZE), np.uint8).copy()
            out["page_padding"] += PAGE_SIZE - PAGE_HEADER - tally(page, "")
    for page in engine.state.pages.reshape(-1, PAGE_SIZE):
        tally(page, "buffer_")
    out["live_sgs"] = engine.next_seq - engine.oldest
    return out


def policy_miss(chunks, capacity: int, policy: str, warm: int) -> float:
    """Lookaside miss ratio of a byte-capacity "fifo" or "lru" cache over the requests after `warm`. Both hold only
    live copies (an update replaces the old copy and moves the key to the head), so `capacity` is live bytes."""
    cache: OrderedDict[int, int] = OrderedDict()
    used = gets = misses = i = 0

    def insert(k, size):
        nonlocal used
        used += size - cache.pop(k, 0)
        cache[k] = size
        while used > capacity:
            used -= cache.popitem(last=False)[1]

    for c in chunks:
        for op, k, ks, vs in zip(c["op"].tolist(), c["key"].tolist(), c["key_size"].tolist(), c["value_size"].tolist()):
            i += 1
            size = ks + vs
            if op == 0:
                hit = k in cache
                if i > warm:
                    gets += 1
                    misses += not hit
                if not hit:
                    insert(k, size)
                elif policy == "lru":
                    cache.move_to_end(k)
            elif op == 1:
                insert(k, size)
            else:
                used -= cache.pop(k, 0)
    return misses / max(gets, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default="synth:twitter-merged")
    ap.add_argument("--requests", default="2M")
    ap.add_argument("--flash-size", default="8M")
    ap.add_argument("--only", default="", help="design labels to run, separated by ';' (default: all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n, flash = parse_count(args.requests, "requests"), parse_size(args.flash_size, "flash-size")
    chunks = list(open_trace(f"{args.trace}:{n}"))
    state = last_state(chunks)
    rows = []
    for label, spec in designs(flash).items():
        if args.only and label not in args.only.split(";"):
            continue
        spec = dict(spec)
        name, zone = spec.pop("name"), spec.pop("zone_size")
        engine = open_engine(name, flash_size=flash, zone_size=zone, **spec)
        r = replay(engine, chunks, ReplayOptions(progress=False, profile=None))
        s = r.summary
        census = nemo_census(engine) if name == "nemo" else None
        objects, live = held(engine, state)
        dram = s.get("dram", {})
        rows.append({"design": label, "miss_ratio": s["miss_ratio"], "alwa": s["alwa"],
                     "dropped_fraction": s["dropped_fraction"], "mean_sg_fill": s.get("mean_sg_fill"),
                     "live_objects": objects, "live_bytes": live, "live_share_of_flash": live / flash,
                     "warm_at_request": s["warm_at_request"], "buffer_bytes": dram.get("buffer_bytes"),
                     "nemo_census_bytes": census,
                     "counters": {k: v for k, v in s["counters"].items() if k in (
                         "tombstones", "writeback_objects", "evicted_objects", "dropped_objects", "sg_evictions")}})
        print(f"{label:32s} miss {100 * s['miss_ratio']:5.2f} %  live {live / 2**20:5.2f} MiB "
              f"({100 * live / flash:4.1f} % of flash, {objects:,} objects)  ALWA {s['alwa']:.2f}", flush=True)
        if census:
            print("   Nemo record bytes (MiB): " + ", ".join(f"{k} {v / 2**20:.2f}" for k, v in census.items()
                                                             if k != "live_sgs") + f"; {census['live_sgs']} live SGs")
        engine.close()
        engine.device.close()
    warm = int(np.median([r["warm_at_request"] for r in rows])) if rows else 0
    for r in rows:
        for policy in ("fifo", "lru"):
            r[f"{policy}_miss_at_live_bytes"] = policy_miss(chunks, r["live_bytes"], policy, warm)
        print(f"{r['design']:32s} same live bytes: fifo {100 * r['fifo_miss_at_live_bytes']:5.2f} %, "
              f"lru {100 * r['lru_miss_at_live_bytes']:5.2f} %  (measured {100 * r['miss_ratio']:5.2f} %)", flush=True)
        census = r["nemo_census_bytes"]
        if census and r["design"].startswith("nemo (table"):
            # what FIFO reaches if each loss, in turn, held live objects instead
            steps, capacity, ladder = [], r["live_bytes"], []
            for label, extra in (("+ stale copies", census["stale"] + census["buffer_stale"]),
                                 ("+ tombstones and page padding", census["tombstone"] + census["page_padding"]),
                                 ("+ SG header/trailer pages, page headers and index zones",
                                  flash + census["buffer_live"] - capacity - census["stale"] - census["tombstone"]
                                  - census["page_padding"])):
                capacity += extra
                ladder.append({"step": label, "bytes": extra, "capacity": capacity,
                               "fifo_miss": policy_miss(chunks, capacity, "fifo", warm)})
                print(f"   FIFO {label:58s} {extra / 2**20:5.2f} MiB -> {100 * ladder[-1]['fifo_miss']:5.2f} %",
                      flush=True)
            r["fifo_ladder"] = ladder
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"trace": f"{args.trace}:{n}", "flash_bytes": flash, "policy_warm_at": warm, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
