"""Per-layer LRU expert-cache simulation speed: tierwise (numba) vs libCacheSim's LRU on the same request stream.

    .venv/bin/python benchmarks/expert_cache_sim.py [--requests 10000000] [--capacity 12]

The stream is a synthetic routing trace (DeepSeek-V2-Lite shape: 26 MoE layers, E = 64, K = 6, EOR ≈ 0.3).
Each layer's expert requests (token-major, router slot order) go to one cache of C experts per layer, warm over
the whole stream. libCacheSim reads each layer's stream as an oracleGeneral binary trace and runs its C LRU
through `process_trace`; tierwise runs the same requests, one per step, through its numba kernel. Both must
report the same misses. Also timed: tierwise's per-step simulation of the trace itself (K experts per step).
Timings are CPU seconds of this process (both simulators are single-threaded, so a busy machine does not skew the
ratio); they exclude building the streams and writing the files, and numba compiles before the clock starts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tierwise.remoe.analysis.cachesim import CacheConfig, layer_counts, simulate, single_request_stream
from tierwise.remoe.models.routing import synthetic_trace

ORACLE_GENERAL = np.dtype([("clock_time", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access_vtime", "<i8")])


def write_oracle_general(requests: np.ndarray, path: Path) -> None:
    """libCacheSim's oracleGeneral binary trace: one 24-byte record per request, with its next access time."""
    n = len(requests)
    never = np.iinfo(np.int64).max
    order = np.lexsort((np.arange(n), requests))  # positions grouped by expert, in time order
    nxt = np.full(n, never, dtype=np.int64)
    same = requests[order[1:]] == requests[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    rec = np.empty(n, dtype=ORACLE_GENERAL)
    rec["clock_time"], rec["obj_id"], rec["obj_size"], rec["next_access_vtime"] = np.arange(n), requests, 1, nxt
    rec.tofile(path)


def run_libcachesim(paths: list[Path], capacity: int) -> tuple[float, int]:
    import libcachesim as lcs

    seconds, misses = 0.0, 0
    for path in paths:
        reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
        cache = lcs.LRU(capacity)
        n = path.stat().st_size // ORACLE_GENERAL.itemsize
        t0 = time.process_time()
        miss_ratio, _ = cache.process_trace(reader)
        seconds += time.process_time() - t0
        misses += round(miss_ratio * n)
    return seconds, misses


def run_tierwise_single(streams, capacity: int, num_experts: int) -> tuple[float, int]:
    cfg = CacheConfig(capacity, "lru", cold=False)
    t0 = time.process_time()
    misses = sum(int(layer_counts(s, 0, cfg, num_experts)[1].sum()) for s in streams)
    return time.process_time() - t0, misses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000_000, help="Expert requests in the stream (at least).")
    ap.add_argument("--capacity", type=int, default=12, help="Cache capacity C per layer (experts).")
    ap.add_argument("--layers", type=int, default=26)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="Timed repetitions; the best is reported.")
    args = ap.parse_args()

    requests_per_token = args.layers * args.top_k
    tokens = -(-args.requests // requests_per_token)
    n_req = 64
    trace = synthetic_trace(requests=n_req, tokens=-(-tokens // n_req), layers=args.layers, num_experts=args.experts,
                            top_k=args.top_k, stickiness=0.3, zipf=0.5, seed=0)
    total = trace.experts.size
    streams = [single_request_stream(trace.experts[:, layer, :].ravel()) for layer in range(args.layers)]

    # warm-up: numba compilation (or loading its cache) stays out of the timings
    layer_counts(single_request_stream(trace.experts[:100, 0, :].ravel()), 0, CacheConfig(args.capacity, "lru"), args.experts)
    simulate(trace, CacheConfig(args.capacity, "lru", cold=False))

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for layer in range(args.layers):
            paths.append(Path(tmp) / f"layer{layer}.oracleGeneral.bin")
            write_oracle_general(trace.experts[:, layer, :].ravel().astype(np.int64), paths[-1])
        lcs_best = min((run_libcachesim(paths, args.capacity) for _ in range(args.repeats)), key=lambda r: r[0])
    tw_best = min((run_tierwise_single(streams, args.capacity, args.experts) for _ in range(args.repeats)), key=lambda r: r[0])
    step_times = []
    for _ in range(args.repeats):
        t0 = time.process_time()
        steps = simulate(trace, CacheConfig(args.capacity, "lru", cold=False))
        step_times.append(time.process_time() - t0)

    lcs_rate, tw_rate, step_rate = total / lcs_best[0], total / tw_best[0], total / min(step_times)
    print(f"stream: {total:,} expert requests = {trace.num_tokens:,} tokens x {args.layers} layers x K={args.top_k}, "
          f"E={args.experts}, per-layer LRU C={args.capacity}")
    print(f"libcachesim LRU (C, process_trace)     : {lcs_rate / 1e6:8.2f} M requests/s   misses {lcs_best[1]:,}")
    print(f"tierwise LRU, one request per step     : {tw_rate / 1e6:8.2f} M requests/s   misses {tw_best[1]:,}")
    print(f"tierwise LRU, per-step trace simulation: {step_rate / 1e6:8.2f} M requests/s   "
          f"unique misses {steps.misses:,} (K experts per step)")
    if tw_best[1] != lcs_best[1]:
        print("WARNING: miss counts differ between tierwise and libcachesim")
    print(f"ratio tierwise / libcachesim: {tw_rate / lcs_rate:.2f}x (same stream), "
          f"{step_rate / lcs_rate:.2f}x (per-step trace simulation)")


if __name__ == "__main__":
    main()
