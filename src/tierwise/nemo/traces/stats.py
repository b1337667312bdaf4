"""Summary statistics of a trace: request and object counts, size percentiles, op mix, estimated Zipf alpha."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from tierwise.nemo.traces.request import Op

PERCENTILES = (50, 90, 99)


def zipf_alpha(counts: np.ndarray, min_count: int = 5) -> float:
    """Estimate Zipf's alpha from per-key request counts by a least-squares fit of log(count) against log(rank).

    Only ranks whose count is at least `min_count` are used (the sampled tail flattens at 1-2 hits), and points are
    taken at log-spaced ranks so the long tail does not outweigh the head. NaN when fewer than 3 ranks qualify."""
    c = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    k = int(np.searchsorted(-c, -min_count, side="right"))
    if k < 3:
        return float("nan")
    ranks = np.unique(np.geomspace(1, k, num=min(k, 64)).astype(np.int64))
    slope = np.polyfit(np.log(ranks), np.log(c[ranks - 1]), 1)[0]
    return float(-slope)


def _pcts(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {f"p{p}": 0.0 for p in PERCENTILES} | {"mean": 0.0}
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES))} | {"mean": float(x.mean())}


def trace_stats(chunks: Iterable[np.ndarray]) -> dict:
    """Stats over a chunked trace. Sizes are reported per request and per object (one request of each key).

    Memory: 14 B per request (key id, sizes) to count distinct objects by sort, not by hashing."""
    keys, ksz, vsz = [], [], []
    ops = np.zeros(3, dtype=np.int64)
    for chunk in chunks:
        keys.append(chunk["key"].copy())
        ksz.append(chunk["key_size"].copy())
        vsz.append(chunk["value_size"].copy())
        ops += np.bincount(chunk["op"], minlength=3)[:3]
    key = np.concatenate(keys) if keys else np.empty(0, np.uint64)
    ks = np.concatenate(ksz).astype(np.int64) if ksz else np.empty(0, np.int64)
    vs = np.concatenate(vsz).astype(np.int64) if vsz else np.empty(0, np.int64)
    n = len(key)
    order = np.argsort(key)
    sk = key[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]]) if n else np.empty(0, np.int64)
    counts = np.diff(np.r_[starts, n]) if n else np.empty(0, np.int64)
    first = order[starts]  # one request of each key
    obj = ks + vs
    return {
        "requests": n,
        "objects": len(starts),
        "mean_requests_per_object": n / len(starts) if len(starts) else 0.0,
        "one_hit_object_share": float((counts == 1).mean()) if len(counts) else 0.0,
        "op_mix": {op.name: float(ops[op] / n) if n else 0.0 for op in Op},
        "key_size": _pcts(ks), "value_size": _pcts(vs), "object_size": _pcts(obj),
        "object_size_per_object": _pcts(obj[first]),
        "zipf_alpha": zipf_alpha(counts),
    }
