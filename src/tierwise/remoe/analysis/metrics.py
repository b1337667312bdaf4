"""Expert-reuse and load metrics of a routing trace (docs/remoe-analysis.md, design remoe.md §5).

Every temporal metric works on *segments*: the tokens of one request (phase=None), or one maximal run of prefill or
decode tokens of one request (phase=PREFILL/DECODE). Nothing is ever compared across a segment boundary.
Expert sets are bitmasks (uint64 words), so overlaps are popcounts and unions are ORs: all vectorised numpy.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from tierwise.remoe.models.routing import RoutingTrace


# -- building blocks ----------------------------------------------------------------------------------------------
def expert_masks(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """[tokens, layers, K] expert ids -> [tokens, layers, words] uint64 bitmasks of the selected sets."""
    words = (num_experts + 63) // 64
    T, L, _ = experts.shape
    e = experts.astype(np.int64)
    masks = np.zeros((T, L, words), dtype=np.uint64)
    bits = np.left_shift(np.uint64(1), (e % 64).astype(np.uint64))
    for w in range(words):
        masks[:, :, w] = np.bitwise_or.reduce(np.where(e // 64 == w, bits, np.uint64(0)), axis=2)
    return masks


def popcount(masks: np.ndarray) -> np.ndarray:
    """Set sizes of bitmasks [..., words] -> [...]."""
    return np.bitwise_count(masks).sum(axis=-1, dtype=np.int64)


def segments(trace: RoutingTrace, phase: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(token indices kept, segment id per kept token) for the tokens of `phase` (None = all tokens)."""
    seg_start = np.zeros(trace.num_tokens, dtype=bool)
    seg_start[trace.request_start] = True
    if phase is None:
        keep = np.arange(trace.num_tokens)
    else:
        seg_start[1:] |= trace.phase[1:] != trace.phase[:-1]
        keep = np.flatnonzero(trace.phase == phase)
    seg_id = np.cumsum(seg_start) - 1
    return keep, seg_id[keep]


def _nan_mean(x: np.ndarray, axis=None):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(x, axis=axis) if np.size(x) and not np.all(np.isnan(x)) else float("nan")


# -- EOR and reuse --------------------------------------------------------------------------------------------------
def pair_overlaps(trace: RoutingTrace, phase: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """IR of every valid consecutive pair: ([pairs, layers] |E_t ∩ E_{t-1}| / K, segment id of each pair)."""
    keep, seg = segments(trace, phase)
    masks = expert_masks(trace.experts[keep], trace.num_experts)
    valid = seg[1:] == seg[:-1]
    inter = popcount(masks[1:][valid] & masks[:-1][valid])
    return inter / trace.top_k, seg[1:][valid]


def eor(trace: RoutingTrace, phase: int | None = None, *, per_request: bool = False) -> float:
    """Expert overlap rate: mean IR over all (request, layer, t >= 2), pooled (token-weighted) by default.

    per_request=True averages each segment first, then the segments (each sequence weighs the same).
    """
    ir, seg = pair_overlaps(trace, phase)
    if ir.size == 0:
        return float("nan")
    if not per_request:
        return float(ir.mean())
    _, inverse = np.unique(seg, return_inverse=True)
    sums = np.bincount(inverse, weights=ir.mean(axis=1))
    return float((sums / np.bincount(inverse)).mean())


def eor_per_layer(trace: RoutingTrace, phase: int | None = None) -> np.ndarray:
    ir, _ = pair_overlaps(trace, phase)
    return ir.mean(axis=0) if len(ir) else np.full(trace.num_layers, np.nan)


def reuse_at_horizon(trace: RoutingTrace, max_h: int = 16, phase: int | None = None) -> np.ndarray:
    """[max_h] share of a token's experts used by any of the previous h tokens of its segment, h = 1..max_h.

    Tokens with at least one predecessor count; a token with fewer than h predecessors uses all it has.
    reuse[0] (h = 1) equals EOR.
    """
    keep, seg = segments(trace, phase)
    masks = expert_masks(trace.experts[keep], trace.num_experts)
    T = len(masks)
    has_prev = np.zeros(T, dtype=bool)
    has_prev[1:] = seg[1:] == seg[:-1]
    if not has_prev.any():
        return np.full(max_h, np.nan)
    union = np.zeros_like(masks)
    out = np.empty(max_h)
    for h in range(1, max_h + 1):
        same = np.zeros(T, dtype=bool)
        same[h:] = seg[h:] == seg[:-h]
        union[h:][same[h:]] |= masks[:-h][same[h:]]
        out[h - 1] = popcount(masks[has_prev] & union[has_prev]).mean() / trace.top_k
    return out


def working_set(trace: RoutingTrace, window: int, phase: int | None = None) -> np.ndarray:
    """[layers] mean number of distinct experts in consecutive, non-overlapping windows of `window` tokens.

    Windows never cross a segment boundary; a segment's incomplete last window is left out.
    """
    keep, seg = segments(trace, phase)
    masks = expert_masks(trace.experts[keep], trace.num_experts)
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    lengths = np.diff(np.r_[starts, len(seg)])
    win_starts = np.concatenate([s + np.arange(n // window) * window for s, n in zip(starts, lengths)]).astype(np.int64)
    if win_starts.size == 0:
        return np.full(trace.num_layers, np.nan)
    bounds = np.stack([win_starts, win_starts + window], axis=1).ravel()
    unions = np.bitwise_or.reduceat(masks, bounds[:-1] if bounds[-1] == len(masks) else bounds, axis=0)[::2]
    return popcount(unions).mean(axis=0)


def distinct_experts_per_request(trace: RoutingTrace) -> float:
    """Mean over (request, layer) of the number of distinct experts the request used."""
    masks = expert_masks(trace.experts, trace.num_experts)
    if len(masks) == 0:
        return float("nan")
    unions = np.bitwise_or.reduceat(masks, trace.request_start, axis=0)
    return float(popcount(unions).mean())


# -- load balance -------------------------------------------------------------------------------------------------
def expert_load(trace: RoutingTrace, phase: int | None = None) -> np.ndarray:
    """[layers, E] share u_e of all (token, slot) assignments going to each expert."""
    keep, _ = segments(trace, phase)
    e = trace.experts[keep].astype(np.int64)
    E, L = trace.num_experts, trace.num_layers
    counts = np.bincount((np.arange(L)[None, :, None] * E + e).ravel(), minlength=L * E).reshape(L, E)
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        return counts / total


def load_stats(trace: RoutingTrace, phase: int | None = None) -> dict[str, np.ndarray]:
    """Per layer: CV (population std / mean), normalised entropy, effective experts exp(H), largest load share."""
    return share_stats(expert_load(trace, phase))


def share_stats(u: np.ndarray) -> dict[str, np.ndarray]:
    """`load_stats` of per-layer load shares u [layers, E] (each row sums to one, or is NaN for an unused layer)."""
    E = u.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = u.std(axis=1) / u.mean(axis=1)
        entropy = -np.where(u > 0, u * np.log(np.where(u > 0, u, 1.0)), 0.0).sum(axis=1)
    return {
        "load_cv": cv,
        "entropy_norm": entropy / np.log(E),
        "effective_experts": np.exp(entropy),
        "max_load_share": u.max(axis=1) if u.size else np.full(u.shape[0], np.nan),
    }


# -- routing collapse -----------------------------------------------------------------------------------------------
# Router fine-tuning can raise EOR by sending most tokens to a few experts (remoe.md §5.4: the paper's router keeps
# "locality without global routing collapse", −0.27 % entropy). These figures go beside every EOR a command shows.
CONCENTRATION = {"entropy_norm": "entropy", "effective_experts": "eff. experts", "max_load_share": "busiest share"}
ENTROPY_DROP_WARNING = 0.02  # a larger relative fall of the normalised routing entropy is reported as a collapse


def concentration_warning(before: dict, after: dict) -> str | None:
    """A warning when `after`'s mean normalised routing entropy is more than 2 % (relative) below `before`'s, else None.

    `before` / `after`: metric dicts holding `entropy_norm` (the mean over layers), e.g. evaluate_model's results.
    """
    h0, h1 = float(before["entropy_norm"]), float(after["entropy_norm"])
    if not (np.isfinite(h0) and np.isfinite(h1)) or h0 <= 0:
        return None
    drop = (h0 - h1) / h0
    if drop <= ENTROPY_DROP_WARNING:
        return None
    return (f"warning: routing entropy fell {100 * drop:.1f} % ({h0:.3f} -> {h1:.3f}): the router concentrates load "
            f"on fewer experts; EOR gains partly come from that collapse")


# -- Liang et al. segment metrics ---------------------------------------------------------------------------------
def _window_counts(trace: RoutingTrace, layer: int, m: int) -> np.ndarray:
    """[windows, E] counts c_s[e] of sliding windows of m tokens at every start inside each request."""
    E = trace.num_experts
    onehot = np.zeros((trace.num_tokens + 1, E), dtype=np.int32)
    rows = np.repeat(np.arange(1, trace.num_tokens + 1), trace.top_k)
    np.add.at(onehot, (rows, trace.experts[:, layer, :].ravel().astype(np.int64)), 1)
    csum = np.cumsum(onehot, axis=0)
    bounds = trace.request_bounds()
    starts = np.concatenate([np.arange(a, b - m + 1) for a, b in zip(bounds[:-1], bounds[1:])]).astype(np.int64)
    return csum[starts + m] - csum[starts]


def sch(trace: RoutingTrace, m: int, capacity: int) -> np.ndarray:
    """[layers] segment cache best hit rate: the best fixed C-expert set per window, chosen with hindsight."""
    out = np.full(trace.num_layers, np.nan)
    for layer in range(trace.num_layers):
        c = _window_counts(trace, layer, m)
        if len(c):
            top = -np.partition(-c, min(capacity, c.shape[1]) - 1, axis=1)[:, :capacity]
            out[layer] = top.sum() / (trace.top_k * m * len(c))
    return out


def srp(trace: RoutingTrace, m: int) -> np.ndarray:
    """[layers] segment routing best performance: best F1 over a shared threshold v of 'active for the window'."""
    out = np.full(trace.num_layers, np.nan)
    for layer in range(trace.num_layers):
        c = _window_counts(trace, layer, m)
        if not len(c):
            continue
        hist = np.bincount(c.ravel(), minlength=m + 1)[1:]  # hist[v-1] = #(s, e) with c_s[e] == v
        values = np.arange(1, m + 1)
        tp = np.cumsum((values * hist)[::-1])[::-1]  # tp[v-1] = sum of c over c >= v
        predicted = m * np.cumsum(hist[::-1])[::-1]
        actual = trace.top_k * m * len(c)
        out[layer] = float(np.max(2 * tp / (predicted + actual)))
    return out


# -- everything at once -------------------------------------------------------------------------------------------
def routing_metrics(
    trace: RoutingTrace,
    *,
    max_horizon: int = 16,
    windows: Iterable[int] = (4, 8, 16, 32),
    segment_lengths: Iterable[int] = (4, 16),
    cache_sizes: Iterable[int] = (),
) -> dict:
    """The metrics of docs/remoe-analysis.md as plain values (JSON-ready after report.to_jsonable)."""
    from tierwise.remoe.models.routing import DECODE, PREFILL

    stats = load_stats(trace)
    horizon = reuse_at_horizon(trace, max_horizon)
    segment_lengths = list(segment_lengths)
    cache_sizes = list(cache_sizes) or [trace.top_k, 2 * trace.top_k]
    return {
        "tokens": trace.num_tokens,
        "requests": trace.num_requests,
        "decode_tokens": int((trace.phase == DECODE).sum()),
        "eor": eor(trace),
        "eor_per_request": eor(trace, per_request=True),
        "eor_prefill": eor(trace, PREFILL),
        "eor_decode": eor(trace, DECODE),
        "eor_per_layer": eor_per_layer(trace),
        "fetch_bound_decode": trace.top_k * (1 - eor(trace, DECODE)),
        "reuse_at_horizon": {h: float(v) for h, v in enumerate(horizon, 1)},
        "working_set": {w: float(_nan_mean(working_set(trace, w))) for w in windows},
        "distinct_experts_per_request": distinct_experts_per_request(trace),
        **{k: float(_nan_mean(v)) for k, v in stats.items()},
        "per_layer": {k: v for k, v in stats.items()},
        "srp": {m: float(_nan_mean(srp(trace, m))) for m in segment_lengths},
        "sch": {m: {c: float(_nan_mean(sch(trace, m, c))) for c in cache_sizes} for m in segment_lengths},
    }
