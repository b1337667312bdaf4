"""A large Nemo replay: 1 GiB of flash, 100 M requests, streamed (the trace is generated chunk by chunk, never held
whole). Prints wall time, replay speed, peak RSS and the figures, with libCacheSim's LRU over the same requests for
scale (its time is measured on a 10 M-request prefix and scaled, to keep the oracleGeneral file small).

    .venv/bin/python benchmarks/nemo_scale.py                      # 1 GiB, 100M requests, 4 MiB zones
    .venv/bin/python benchmarks/nemo_scale.py --requests 20M       # a shorter run
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import libcachesim as lcs

from tierwise.common.report import print_table, write_json
from tierwise.nemo.api import open_engine
from tierwise.nemo.replay import ReplayOptions, replay
from tierwise.nemo.traces import SyntheticTrace, write_trace
from tierwise.common.units import parse_count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", default="100M")
    ap.add_argument("--flash-mb", type=float, default=1024)
    ap.add_argument("--zone-kb", type=int, default=4096)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n = parse_count(args.requests)
    t0 = time.perf_counter()
    engine = open_engine("nemo", flash_size=int(args.flash_mb * 2**20), zone_size=args.zone_kb * 1024)
    result = replay(engine, SyntheticTrace("twitter-merged", n, 0), ReplayOptions(sample_every=max(1, n // 50)),
                    total=n)
    wall = time.perf_counter() - t0
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    prefix = min(n, 10_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.oracleGeneral.bin"
        write_trace(path, SyntheticTrace("twitter-merged", prefix, 0))
        t1 = time.perf_counter()
        lcs.LRU(int(args.flash_mb * 2**20)).process_trace(lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE))
        lru = (time.perf_counter() - t1) * n / prefix
    s = result.summary
    rows = [{"figure": k, "value": v} for k, v in {
        "requests": result.requests, "wall s (incl. set-up)": wall, "replay s": result.seconds,
        "M req/s": result.requests_per_second / 1e6, "peak RSS GiB": rss_gib, "LRU s (scaled from 10M)": lru,
        "window": s["window"], "device GiB written": s["device_bytes_written"] / 2**30,
        "ALWA": s["alwa"], "miss ratio": s["miss_ratio"], "mean SG fill": s["mean_sg_fill"],
        "index bits/object": s["dram"].get("index_bits_per_object_mean", s["dram"].get("index_bits_per_object")),
        "wrong values": result.counters["wrong_values"], "S / N": f"{engine.S} / {engine.N}"}.items()]
    print_table(rows, title=f"Nemo at scale: {args.flash_mb:g} MiB flash, {n:,} requests")
    if args.json:
        write_json({"rows": rows, "summary": s, "engine": engine.config()}, args.json)


if __name__ == "__main__":
    main()
