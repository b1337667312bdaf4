"""`tierwise remoe analyze`: routing metrics plus an expert-cache sweep of one trace, as JSON, tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tierwise.common.errors import TierwiseError
from tierwise.remoe.analysis import cachesim, metrics
from tierwise.remoe.models.routing import RoutingTrace


def default_capacities(top_k: int, num_experts: int) -> list[int]:
    """The design's sweep C ∈ {K, 1.5K, 2K, 4K}, capped at E."""
    return sorted({min(num_experts, c) for c in (top_k, (3 * top_k + 1) // 2, 2 * top_k, 4 * top_k)})


def parse_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise TierwiseError(f"{what} must be a comma-separated list, got {text!r}") from e
    return items


def analyze(
    trace: RoutingTrace,
    *,
    capacities: Sequence[int] | None = None,
    policies: Sequence[str] = ("lru", "belady"),
    cold: bool = True,
    prefill: str = "exclude",
    max_horizon: int = 16,
) -> dict:
    """Every routing metric and, per policy and capacity, the cache simulation of the trace."""
    capacities = list(capacities) if capacities else default_capacities(trace.top_k, trace.num_experts)
    for p in policies:
        if p not in cachesim.POLICIES:
            raise TierwiseError(f"unknown cache policy {p!r}; choose from {', '.join(cachesim.POLICIES)}")
    bad = [c for c in capacities if c < 1]
    if bad:
        raise TierwiseError(f"cache capacities must be >= 1, got {bad}")
    result = {
        "trace": {k: trace.meta[k] for k in ("model", "model_type", "num_experts", "top_k", "moe_layers", "expert_bytes")},
        **metrics.routing_metrics(trace, max_horizon=max_horizon, cache_sizes=capacities),
        "cache_config": {"cold": cold, "prefill": prefill, "lfru_half_life": cachesim.DEFAULT_LFRU_HALF_LIFE},
    }
    sims = cachesim.sweep(trace, policies, capacities, cold=cold, prefill=prefill)
    result["cache"] = {p: {c: r.to_dict() for c, r in by_c.items()} for p, by_c in sims.items()}
    return result


def metric_rows(result: dict) -> list[dict]:
    names = [
        ("eor", "EOR (all pairs, pooled)"), ("eor_decode", "EOR decode"), ("eor_prefill", "EOR prefill"),
        ("eor_per_request", "EOR per-request mean"), ("fetch_bound_decode", "K(1 - EOR decode)"),
        ("load_cv", "load CV"), ("entropy_norm", "routing entropy (normalised)"),
        ("effective_experts", "effective experts exp(H)"), ("max_load_share", "largest expert load share"),
        ("distinct_experts_per_request", "distinct experts / request"),
    ]
    rows = [{"metric": label, "value": result[key]} for key, label in names]
    rows += [{"metric": f"reuse @ h={h}", "value": result["reuse_at_horizon"][h]} for h in (1, 2, 4, 8, 16)
             if h in result["reuse_at_horizon"]]
    rows += [{"metric": f"working set / {w} tokens", "value": v} for w, v in result["working_set"].items()]
    rows += [{"metric": f"SRP(m={m})", "value": v} for m, v in result["srp"].items()]
    return rows


def cache_rows(result: dict) -> list[dict]:
    rows = []
    for policy, by_c in result["cache"].items():
        for c, r in by_c.items():
            rows.append({
                "policy": policy, "C": c, "hit rate": r["hit_rate"], "uHR@C": r["unique_hit_rate"],
                "miss/tok/layer": r["misses_per_token_per_layer"],
                "steady miss/tok/layer": r["steady_misses_per_token_per_layer"],
                "#uMiss": r["unique_misses"], "fetched (MB)": r["bytes_fetched"] / 1e6,
            })
    return rows


def write_plots(result: dict, out_dir: str | Path) -> list[Path]:
    """reuse_vs_horizon.png and hit_rate_vs_cache_size.png."""
    from tierwise.common.plots import line_plot

    out_dir = Path(out_dir)
    horizon = result["reuse_at_horizon"]
    reuse = line_plot({"reuse": (list(horizon), list(horizon.values()))}, out_dir / "reuse_vs_horizon.png",
                      title="Expert reuse vs horizon", xlabel="h (previous tokens)",
                      ylabel="experts reused from the last h tokens (0-1)")
    series = {p: (list(by_c), [r["unique_hit_rate"] for r in by_c.values()]) for p, by_c in result["cache"].items()}
    hits = line_plot(series, out_dir / "hit_rate_vs_cache_size.png", title="Expert-cache hit rate vs capacity",
                     xlabel="C (experts per layer)", ylabel="unique hit rate uHR@C (0-1)")
    return [reuse, hits]
