"""Held-out quality and expert reuse of a model, before and after a router delta.

One teacher-forced pass over packed held-out rows (block-diagonal attention, so documents never see each other)
gives both the perplexity and the routing trace. Each packed piece of a document is one request of the trace,
every position a decode-like step (EOR_tf of remoe.md §5.1); the trace then goes through the analysis metrics
(`tierwise.remoe.analysis.metrics`: EOR, load CV, entropy, effective experts, largest share) and the per-layer LRU cache
simulator (`tierwise.remoe.analysis.cachesim`: uHR@C, unique misses; cold cache per request).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tierwise.remoe.analysis import cachesim, metrics
from tierwise.remoe.models.corpus import PackedCorpus, load_corpus
from tierwise.remoe.models.adapters import adapter_for, load_model
from tierwise.remoe.models.routing import DECODE, RouterRecorder, RoutingTrace, trace_meta


@dataclass
class EvalConfig:
    data: str = "embedded:heldout"
    seq_len: int = 256
    batch_size: int = 8
    max_rows: int | None = None  # evaluate N packed rows spread evenly over the data
    cache_sizes: tuple[int, ...] = ()  # uHR@C capacities; empty = (K, 2K)
    doc_separator: str | None = None


def teacher_forced_pass(model: nn.Module, corpus: PackedCorpus, *, batch_size: int = 8,
                        model_name: str = "model") -> tuple[float, int, RoutingTrace]:
    """(summed next-token CE in nats, number of predicted tokens, routing trace) over every row of `corpus`."""
    adapter = adapter_for(model)
    ce_sum, n_pred = 0.0, 0
    experts, starts = [], []
    n_tokens = 0
    with RouterRecorder(adapter) as rec, torch.no_grad():
        for lo in range(0, len(corpus), batch_size):
            batch = corpus.batch(range(lo, min(lo + batch_size, len(corpus))))
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"], use_cache=False)
            targets = batch["labels"][:, 1:]
            ce_sum += float(F.cross_entropy(out.logits[:, :-1].float().flatten(0, 1), targets.flatten(),
                                            ignore_index=-100, reduction="sum"))
            n_pred += int((targets != -100).sum())
            call_experts, _ = rec.pop()  # [B·T, layers, K]
            doc = batch["doc_ids"]
            new_request = torch.ones_like(doc, dtype=torch.bool)  # every row start, every document start
            new_request[:, 1:] = doc[:, 1:] != doc[:, :-1]
            valid = (doc >= 0).flatten().numpy()
            experts.append(call_experts[valid])
            starts.append(np.flatnonzero(new_request.flatten().numpy()[valid]) + n_tokens)
            n_tokens += int(valid.sum())
    trace = RoutingTrace(np.concatenate(experts), np.concatenate(starts), np.full(n_tokens, DECODE, np.uint8),
                         trace_meta(adapter, model_name, teacher_forced=True))
    return ce_sum, n_pred, trace


def reuse_metrics(trace: RoutingTrace, cache_sizes: tuple[int, ...] = ()) -> dict[str, Any]:
    """EOR, load balance and LRU cache figures of a trace (cold cache per request, every token a step)."""
    stats = metrics.load_stats(trace)
    result: dict[str, Any] = {
        "eor": metrics.eor(trace),
        "eor_per_layer": metrics.eor_per_layer(trace).tolist(),
        **{k: float(np.nanmean(v)) for k, v in stats.items()},
        "distinct_experts_per_request": metrics.distinct_experts_per_request(trace),
        "fetch_bound": trace.top_k * (1 - metrics.eor(trace)),
    }
    for c in cache_sizes or (trace.top_k, 2 * trace.top_k):
        sim = cachesim.simulate(trace, cachesim.CacheConfig(c, "lru"))
        result[f"uhr@{c}"] = sim.unique_hit_rate
        result[f"misses_per_token@{c}"] = sim.misses / trace.num_tokens  # summed over layers
        result[f"misses_per_token_layer@{c}"] = sim.misses_per_token_per_layer
    return result


def evaluate_model(model: nn.Module, corpus: PackedCorpus, cfg: EvalConfig, *, model_name: str = "model") -> dict[str, Any]:
    """Perplexity plus `reuse_metrics` of one model on one packed corpus."""
    model.eval()
    ce_sum, n_pred, trace = teacher_forced_pass(model, corpus, batch_size=cfg.batch_size, model_name=model_name)
    ce = ce_sum / max(1, n_pred)
    return {"ce": ce, "ppl": math.exp(ce), "tokens": trace.num_tokens, **reuse_metrics(trace, cfg.cache_sizes)}


def relative_change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """(after − before) / before for every scalar metric present in both."""
    out = {}
    for k, b in before.items():
        a = after.get(k)
        if isinstance(b, (int, float)) and isinstance(a, (int, float)) and b not in (0, None) and math.isfinite(b):
            out[k] = (a - b) / abs(b)
    return out


def evaluate_cli(model_name: str, router: Path | None, cfg: EvalConfig) -> dict[str, Any]:
    """What `tierwise remoe eval` prints: the model's figures, and with a router delta, after and the change."""
    from tierwise.remoe.export.delta import apply_router_delta, load_router_delta

    delta = load_router_delta(router) if router is not None else None  # a bad delta fails before the model loads
    model, tokenizer = load_model(model_name)
    corpus = load_corpus(cfg.data, tokenizer, cfg.seq_len, doc_separator=cfg.doc_separator, max_rows=cfg.max_rows)
    results: dict[str, Any] = {"model": model_name, "data": cfg.data, "rows": len(corpus), "seq_len": cfg.seq_len,
                               "before": evaluate_model(model, corpus, cfg, model_name=model_name)}
    if delta is not None:
        apply_router_delta(model, delta)
        results["router"] = str(router)
        results["after"] = evaluate_model(model, corpus, cfg, model_name=f"{model_name}+{router}")
        results["change"] = relative_change(results["before"], results["after"])
    return results


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per scalar metric: before, and with a delta, after and relative change."""
    rows = []
    for k, v in results["before"].items():
        if isinstance(v, (list, dict)):
            continue
        row = {"metric": k, "before": v}
        if "after" in results:
            row["after"] = results["after"][k]
            change = results["change"].get(k)
            row["change"] = f"{100 * change:+.2f}%" if change is not None else "-"
        rows.append(row)
    return rows
