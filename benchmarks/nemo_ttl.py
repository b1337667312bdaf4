"""TTLs in every design, measured (issue 16, item 4): expired objects served, what expiry costs in misses and what
dropping expired objects saves in writes.

Each design replays the same trace twice on a fresh device: with the trace's TTLs (times --ttl-scale) and with them
ignored. The first run must serve no expired object (the replay checks every hit against the expiry it stored); the
difference between the two is what TTLs do to the miss ratio (expired objects become misses) and to the flash writes
of the whole run (expired objects are dropped at flush, write-back, migration and GC instead of being written again).
Miss ratio and ALWA are the steady window's.

The synthetic Twitter trace carries each cluster's published TTL (90 min to 24 h) but its 10M requests span only
minutes of trace time, so TTLs are scaled: at --ttl-scale 0.002 cluster 29's 90 minutes become 11 s, about the time an
object stays in an 8 MiB cache here, and the others 76-173 s.

    python benchmarks/nemo_ttl.py --requests 2M --flash-size 8M --ttl-scale 0.002 [--json ttl.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tierwise.common.progress import silence
from tierwise.common.report import print_table
from tierwise.common.units import parse_count, parse_size
from tierwise.nemo.api import open_engine
from tierwise.nemo.defaults import ReplayOptions
from tierwise.nemo.replay import replay
from tierwise.nemo.traces import open_trace

DESIGNS = ("nemo", "log", "set", "kangaroo", "fairywren")


def without_ttls(chunks):
    for c in chunks:
        c = c.copy()
        c["ttl"] = 0
        yield c


def run(design: str, trace: str, flash: int, limit: int, ttl_scale: float, ttls: bool) -> dict:
    engine = open_engine(design, flash)
    try:
        chunks = open_trace(trace)
        result = replay(engine, chunks if ttls else without_ttls(chunks),
                        ReplayOptions(limit=limit, progress=False, ttl_scale=ttl_scale))
        written = engine.device.stats.bytes_written  # the whole run: both runs replay the same requests
    finally:
        engine.close()
        engine.device.close()
    s, c = result.summary, result.summary["counters"]
    return {"design": design, "ttls": ttls, "expired_served": result.counters["expired_served"],
            "wrong_values": result.counters["wrong_values"], "miss_ratio": s["miss_ratio"], "alwa": s["alwa"],
            "expired_misses": c.get("expired_misses", 0) / max(c.get("gets", 0), 1),
            "expired_dropped_bytes": c.get("expired_dropped_bytes", 0),
            "device_bytes_written": written, "warm_at": s["warm_at_request"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default="synth:twitter-merged:10M")
    ap.add_argument("--requests", default="2M")
    ap.add_argument("--flash-size", default="8M")
    ap.add_argument("--ttl-scale", type=float, default=0.002)
    ap.add_argument("--designs", default=",".join(DESIGNS))
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args()
    silence()
    limit, flash = parse_count(a.requests, "--requests"), parse_size(a.flash_size, "--flash-size")
    rows = []
    for design in a.designs.split(","):
        with_ttl = run(design, a.trace, flash, limit, a.ttl_scale, True)
        ignored = run(design, a.trace, flash, limit, a.ttl_scale, False)
        saved = 1 - with_ttl["device_bytes_written"] / ignored["device_bytes_written"]
        rows.append({"design": design, "expired served": with_ttl["expired_served"],
                     "wrong values": with_ttl["wrong_values"],
                     "miss, TTLs (%)": with_ttl["miss_ratio"], "miss, none (%)": ignored["miss_ratio"],
                     "expired misses (%)": with_ttl["expired_misses"],
                     "dropped expired (B)": with_ttl["expired_dropped_bytes"],
                     "ALWA, TTLs": with_ttl["alwa"], "ALWA, none": ignored["alwa"],
                     "writes saved (%)": saved, "runs": [with_ttl, ignored]})
        print(f"{design}: done", flush=True)
    print_table([{k: v for k, v in r.items() if k != "runs"} for r in rows],
                title=f"TTLs x {a.ttl_scale:g}: {a.trace}, {a.requests} requests, {a.flash_size} flash "
                      "(steady window)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1, default=lambda o: o.item()
                      if isinstance(o, np.generic) else str(o))


if __name__ == "__main__":
    main()
