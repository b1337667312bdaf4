"""Synthetic twitter-merged generation speed against numpy's own weighted sampling of the same key popularity.

    .venv/bin/python benchmarks/trace_synth.py [--requests 10000000] [--seed 0]

tierwise: `SyntheticTrace("twitter-merged", N)` end to end (calibration, four Zipf clusters, sizes, ops, TTLs,
merge), iterated in 1 M-request chunks. Reference: `Generator.choice(keys, size=N, p=...)` over the same merged
key-popularity vector: keys only, no sizes or ops, i.e. the least any generator of this trace must do. Times are
CPU seconds of this process (both single-threaded), so a busy machine does not skew the ratio.
Target (task brief): >= 10 M requests in well under a minute.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tierwise.nemo.traces.synth import SyntheticTrace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = args.requests

    t = time.process_time()
    trace = SyntheticTrace("twitter-merged", n, args.seed, chunk_size=1 << 20)
    got = sum(len(chunk) for chunk in trace)
    ours = time.process_time() - t
    assert got == n

    p = np.concatenate([cl.weight * (1 - cl.one_hit_share) * cl.p_key for cl in trace._clusters])
    p /= p.sum()
    rng = np.random.default_rng(args.seed)
    t = time.process_time()
    keys = rng.choice(len(p), size=n, p=p)
    ref = time.process_time() - t
    assert len(keys) == n

    print(f"requests                 {n:,}")
    print(f"tierwise synth           {ours:8.2f} s CPU  {n / ours / 1e6:6.2f} M req/s (keys, sizes, ops, TTLs)")
    print(f"numpy choice(p) keys     {ref:8.2f} s CPU  {n / ref / 1e6:6.2f} M req/s (keys only)")
    print(f"ratio tierwise/reference {ref / ours:8.2f}x the reference's requests/s")


if __name__ == "__main__":
    main()
