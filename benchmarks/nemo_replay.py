"""Replay speed of the Nemo engine against libCacheSim's LRU on the same trace, in one process.

    .venv/bin/python benchmarks/nemo_replay.py --requests 10M --flash-mb 24 --zone-kb 512 --rounds 3

The trace (synthetic twitter-merged) is generated once, held in memory for Nemo and written as a libCacheSim
oracleGeneral file for LRU (neither generation is timed). LRU (C, `process_trace`) simulates a cache of the same
byte size; Nemo runs the full lookaside replay: real set pages on an in-memory zoned device, every page checksum
verified on read and every hit checked byte for byte (on this device the replay loop runs compiled,
`tierwise.nemo.engines.nemo.fastreplay`). Each round times LRU, then Nemo on a fresh device; the ratio reported is
the median of the rounds' ratios (target: Nemo >= 0.2x LRU). LRU driven one request at a time from Python is timed
once, for reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import libcachesim as lcs
import numpy as np

from tierwise.common.report import print_table, write_json
from tierwise.nemo.replay import ReplayOptions, open_engine, parse_engine_options, replay
from tierwise.nemo.traces import SyntheticTrace, write_trace
from tierwise.nemo.traces.synth import parse_count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", default="10M")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flash-mb", type=float, default=24)
    ap.add_argument("--zone-kb", type=int, default=512)
    ap.add_argument("--opt", action="append", default=[], help="Nemo option name=value")
    ap.add_argument("--rounds", type=int, default=1, help="LRU/Nemo pairs to time; the ratio is their median")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n = parse_count(args.requests)
    chunks = list(SyntheticTrace("twitter-merged", n, args.seed))

    # The same LRU driven one request at a time from Python: the floor any per-request Python engine API pays.
    lru_py = lcs.LRU(int(args.flash_mb * 2**20))
    req = lcs.Request()
    t0 = time.perf_counter()
    for chunk in chunks:
        for oid, size in zip(chunk["key"].tolist(), (chunk["key_size"] + chunk["value_size"]).tolist()):
            req.obj_id = oid
            req.obj_size = size
            lru_py.get(req)
    lru_py_s = time.perf_counter() - t0

    rows, ratios = [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trace.oracleGeneral.bin"
            write_trace(path, chunks)
            lru = lcs.LRU(int(args.flash_mb * 2**20))
            t0 = time.perf_counter()
            lru_miss, _ = lru.process_trace(lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE))
            lru_s = time.perf_counter() - t0
        engine = open_engine("nemo", flash_mb=args.flash_mb, zone_kb=args.zone_kb, **parse_engine_options(args.opt))
        result = replay(engine, chunks, ReplayOptions(sample_every=max(1, n // 20)), total=n)
        ratios.append(result.requests_per_second / (n / lru_s))
        rows += [{"round": r + 1, "design": "libcachesim LRU (C)", "seconds": lru_s, "req/s": n / lru_s,
                  "miss_ratio": lru_miss},
                 {"round": r + 1, "design": "tierwise Nemo", "seconds": result.seconds,
                  "req/s": result.requests_per_second, "miss_ratio": result.summary["miss_ratio"]}]
    rows.append({"round": "-", "design": "libcachesim LRU, per request from Python", "seconds": lru_py_s,
                 "req/s": n / lru_py_s, "miss_ratio": None})
    ratio = float(np.median(ratios))
    print_table(rows, title=f"replay speed, synth:twitter-merged:{n}, {args.flash_mb} MiB flash")
    print(f"Nemo / LRU speed ratio: {ratio:.3f} (median of {', '.join(f'{x:.3f}' for x in ratios)}; target >= 0.2)")
    if args.json:
        write_json({"rows": rows, "ratios": ratios, "ratio": ratio, "engine": engine.config(),
                    "summary": result.summary}, args.json)


if __name__ == "__main__":
    main()
