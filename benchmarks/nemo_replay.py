"""Replay speed of every flash-cache design against libCacheSim's LRU on the same trace, in one process.

    .venv/bin/python benchmarks/nemo_replay.py --requests 10M --flash-mb 24 --rounds 3
    .venv/bin/python benchmarks/nemo_replay.py --engines nemo --requests 10M --device file   # the server's device

The trace (synthetic twitter-merged) is generated once and held in memory; for LRU it is also written as a
libCacheSim oracleGeneral file (neither generation is timed). LRU (C, `process_trace`) simulates a cache of the
same byte size. Each design runs the full lookaside replay through the one compiled replay driver: real pages on
a zoned device (in memory by default, or file-backed), every page checksum verified on read, every hit checked byte
for byte against the value the trace last set, simulated device time. Each round times LRU, then every design on a
fresh device; a design's ratio is the median over rounds of (design req/s / LRU req/s in the same round).
Targets: every design >= 0.5 M requests/s, Nemo >= 1.0 M requests/s. Compile time is excluded: a first, short
replay of each design loads (or builds) its compiled code before the timed rounds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import libcachesim as lcs
import numpy as np

from tierwise.common.report import print_table, write_json
from tierwise.nemo.api import open_engine
from tierwise.nemo.replay import ReplayOptions, parse_engine_options, replay
from tierwise.nemo.traces import SyntheticTrace, write_trace
from tierwise.common.units import parse_count


def run_design(name: str, chunks, args, zone_kb: int, folder: str, options: dict) -> dict:
    device = "mem" if args.device == "mem" else f"file:{folder}/{name}"
    engine = open_engine(name, flash_size=int(args.flash_mb * 2**20), zone_size=zone_kb * 1024, device=device,
                         **options)
    n = sum(len(c) for c in chunks)
    result = replay(engine, chunks, ReplayOptions(sample_every=max(1, n // 20), progress=False))
    engine.close()
    engine.device.close()
    return {"seconds": result.seconds, "req/s": result.requests_per_second, "miss_ratio": result.summary["miss_ratio"],
            "alwa": result.summary["alwa"], "wrong_values": result.counters["wrong_values"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="nemo,log,set,kangaroo,fairywren")
    ap.add_argument("--requests", default="10M")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flash-mb", type=float, default=24)
    ap.add_argument("--zone-kb", type=int, default=512, help="Nemo's zone (one SG)")
    ap.add_argument("--baseline-zone-kb", type=int, default=64, help="zones of the other designs")
    ap.add_argument("--device", choices=("mem", "file"), default="mem")
    ap.add_argument("--opt", action="append", default=[], help="ENGINE.option=value")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of LRU + every design; ratios are medians")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n = parse_count(args.requests)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    options: dict[str, dict] = {e: {} for e in engines}
    for pair in args.opt:
        eng, _, rest = pair.partition(".")
        options.setdefault(eng, {}).update(parse_engine_options([rest]))
    chunks = list(SyntheticTrace("twitter-merged", n, args.seed))
    zone = {e: args.zone_kb if e == "nemo" else args.baseline_zone_kb for e in engines}

    with tempfile.TemporaryDirectory() as tmp:
        warm = list(SyntheticTrace("twitter-merged", 50_000, args.seed + 1))
        for e in engines:  # load or build each design's compiled code outside the timed rounds
            run_design(e, warm, args, zone[e], tmp, options[e])
        path = Path(tmp) / "trace.oracleGeneral.bin"
        write_trace(path, chunks)
        rows, ratios = [], {e: [] for e in engines}
        for r in range(args.rounds):
            lru = lcs.LRU(int(args.flash_mb * 2**20))
            t0 = time.perf_counter()
            lru_miss, _ = lru.process_trace(lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE))
            lru_s = time.perf_counter() - t0
            rows.append({"round": r + 1, "design": "libcachesim LRU (C)", "seconds": lru_s, "req/s": n / lru_s,
                         "miss_ratio": lru_miss, "alwa": None, "ratio": 1.0})
            for e in engines:
                res = run_design(e, chunks, args, zone[e], tmp, options[e])
                ratios[e].append(res["req/s"] / (n / lru_s))
                rows.append({"round": r + 1, "design": f"tierwise {e} ({args.device})", **res,
                             "ratio": ratios[e][-1]})
    print_table([{k: v for k, v in row.items() if k != "wrong_values"} for row in rows],
                title=f"replay speed, synth:twitter-merged:{n}, {args.flash_mb:g} MiB flash")
    summary = {e: float(np.median(v)) for e, v in ratios.items()}
    speeds = {e: float(np.median([row["req/s"] for row in rows if row["design"].startswith(f"tierwise {e} ")]))
              for e in engines}
    for e in engines:
        target = 1.0e6 if e == "nemo" else 0.5e6
        print(f"{e}: {speeds[e] / 1e6:.2f} M req/s (median; target >= {target / 1e6:.1f} M), "
              f"{summary[e]:.3f} x LRU (median of {', '.join(f'{x:.3f}' for x in ratios[e])})")
    if args.json:
        write_json({"rows": rows, "ratio_vs_lru": summary, "requests_per_second": speeds, "args": vars(args)},
                   args.json)


if __name__ == "__main__":
    main()
