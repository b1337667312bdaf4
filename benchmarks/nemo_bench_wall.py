"""Wall time of the five-design comparison, the way a researcher runs it: `tierwise nemo bench` on 2 cores.

    .venv/bin/python benchmarks/nemo_bench_wall.py            # 2M requests, 8 MiB, in-memory device (target <= 30 s)

Runs the bench once untimed (to load or build every design's compiled code), then times it; for scale, times
libCacheSim's LRU on the same trace in the same process and prints both (this VM's speed drifts, so the LRU time
says how fast the machine was).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import libcachesim as lcs

from tierwise.nemo.bench import BenchSettings, bench
from tierwise.nemo.traces import SyntheticTrace, write_trace
from tierwise.common.units import parse_count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", default="2M")
    ap.add_argument("--flash-mb", type=float, default=8)
    ap.add_argument("--engines", default="nemo,log,set,kangaroo,fairywren")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    n = parse_count(args.requests)
    st = BenchSettings(trace=f"synth:twitter-merged:{n}", engines=args.engines, flash_size=int(args.flash_mb * 2**20), device="mem",
                       ablation=False, cache_sizes=())
    bench(BenchSettings(trace="synth:twitter-merged:50000", engines=args.engines, flash_size=int(args.flash_mb * 2**20),
                        device="mem", ablation=False, cache_sizes=()), workers=args.workers)  # compile / load
    t0 = time.perf_counter()
    report = bench(st, workers=args.workers)
    wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.oracleGeneral.bin"
        write_trace(path, SyntheticTrace("twitter-merged", n, 0))
        t0 = time.perf_counter()
        lcs.LRU(int(args.flash_mb * 2**20)).process_trace(lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE))
        lru = time.perf_counter() - t0
    for row in report["table"]:
        print(f"  {row['run']:10s} {row.get('seconds', 0):6.1f} s replay, {row['requests'] / row['seconds'] / 1e6:.2f} M "
              f"req/s" if "seconds" in row else f"  {row['run']}: {row.get('error')}")
    print(f"bench of {args.engines} on {n:,} requests, {args.flash_mb:g} MiB, {args.workers} workers: {wall:.1f} s wall "
          f"(target <= 30 s); libCacheSim LRU on the same trace, one process: {lru:.2f} s")


if __name__ == "__main__":
    main()
