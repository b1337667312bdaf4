"""Greedy decoding with per-step timing, and the per-run metrics of the offloading runtime.

One loop serves the resident and the offloaded model, so their tokens and timings compare like for like:
prefill is step 0 (TTFT), every later step decodes one token (TPOT = mean decode step). Each step's time is
reported three ways: `measured` (wall clock on this machine, including the store's real reads), `modelled` (the
storage profile's charge for that step's misses) and `total` = measured + modelled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from tierwise.common.errors import TierwiseError
from tierwise.remoe.analysis import metrics as routing_metrics
from tierwise.remoe.models.routing import DECODE, RoutingTrace, trace_meta
from tierwise.remoe.offload.runtime import OffloadRuntime, StepCounters


@dataclass
class Generation:
    """One request: prompt, greedy output tokens, and per-step wall time and offload counters (step 0 = prefill)."""

    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    steps: list[StepCounters] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # last-position logits per step, when kept
    layer_hits: dict[int, int] = field(default_factory=dict)  # per MoE layer, this request only
    layer_misses: dict[int, int] = field(default_factory=dict)
    bytes_read: int = 0  # from the expert store, this request only


@torch.inference_mode()
def greedy_generate(model, prompt_ids: list[int], max_new_tokens: int, *, runtime: OffloadRuntime | None = None,
                    keep_logits: bool = False) -> Generation:
    """Greedy decoding of exactly `max_new_tokens` tokens (no early stop: every request decodes the same length)."""
    if not prompt_ids:
        raise TierwiseError("cannot generate from an empty prompt")
    if max_new_tokens < 1:
        raise TierwiseError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    gen = Generation(list(prompt_ids))
    if runtime is not None:
        runtime.reset()  # request isolation: every request starts with cold expert caches
        runtime.take_step()
        layers_before, bytes_before = runtime.counters()
    past = DynamicCache(config=model.config)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    for _ in range(max_new_tokens):
        t0 = time.perf_counter()
        logits = model(input_ids=input_ids, cache=past, use_cache=True, logits_to_keep=1).logits[0, -1]
        token = int(logits.argmax())
        gen.step_seconds.append(time.perf_counter() - t0)
        gen.steps.append(runtime.take_step() if runtime is not None else StepCounters())
        gen.tokens.append(token)
        if keep_logits:
            gen.logits.append(logits.float().clone())
        input_ids = torch.tensor([[token]], dtype=torch.long, device=model.device)
    if runtime is not None:
        layers_after, bytes_after = runtime.counters()
        for layer, (h, m) in layers_after.items():
            gen.layer_hits[layer] = h - layers_before[layer][0]
            gen.layer_misses[layer] = m - layers_before[layer][1]
        gen.bytes_read = bytes_after - bytes_before
    return gen


def _summary(values: list[float]) -> dict[str, float]:
    """Median, p90 and mean in milliseconds."""
    ms = 1e3 * np.asarray(values, dtype=float)
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "mean": float(ms.mean())}


def run_metrics(gens: list[Generation], runtime: OffloadRuntime | None = None) -> dict:
    """TTFT, TPOT (median/p90 over requests), tokens/s, hits/misses, bytes, I/O vs compute: measured/modelled/total."""
    ttft = {"measured": [], "modelled": []}
    tpot = {"measured": [], "modelled": []}
    decode = StepCounters()
    prefill = StepCounters()
    wall = modelled = 0.0
    out_tokens = 0
    for g in gens:
        ttft["measured"].append(g.step_seconds[0])
        ttft["modelled"].append(g.steps[0].modelled_seconds)
        prefill.add(g.steps[0])
        n_dec = len(g.tokens) - 1
        if n_dec > 0:
            tpot["measured"].append(sum(g.step_seconds[1:]) / n_dec)
            tpot["modelled"].append(sum(s.modelled_seconds for s in g.steps[1:]) / n_dec)
        for s in g.steps[1:]:
            decode.add(s)
        wall += sum(g.step_seconds)
        modelled += sum(s.modelled_seconds for s in g.steps)
        out_tokens += len(g.tokens)
    for d in (ttft, tpot):
        d["total"] = [a + b for a, b in zip(d["measured"], d["modelled"])]
    io_measured = prefill.io_seconds + decode.io_seconds
    decode_tokens = sum(len(g.tokens) - 1 for g in gens)
    metrics = {
        "requests": len(gens),
        "prompt_tokens": sum(len(g.prompt_ids) for g in gens),
        "output_tokens": out_tokens,
        "ttft_ms": {k: _summary(v) for k, v in ttft.items()},
        "tpot_ms": {k: _summary(v) for k, v in tpot.items()} if tpot["measured"] else None,
        "tokens_per_s": {"measured": out_tokens / wall, "total": out_tokens / (wall + modelled)},
        "decode": {
            "hits": decode.hits,
            "misses": decode.misses,
            "hit_rate": decode.hits / max(1, decode.hits + decode.misses),
            "misses_per_token": decode.misses / max(1, decode_tokens),
        },
        "prefill": {"hits": prefill.hits, "misses": prefill.misses},
        "time_s": {
            "measured": wall,
            "io_measured": io_measured,
            "compute_measured": wall - io_measured,
            "io_modelled": modelled,
            "total": wall + modelled,
        },
    }
    if runtime is not None:
        metrics["config"] = runtime.describe()
        metrics["bytes_read"] = sum(g.bytes_read for g in gens)
        metrics["modelled_bytes"] = (prefill.misses + decode.misses) * runtime.target_bytes
        metrics["per_layer"] = []
        for layer in runtime.layers:
            hits = sum(g.layer_hits[layer] for g in gens)
            misses = sum(g.layer_misses[layer] for g in gens)
            metrics["per_layer"].append({"layer": layer, "hits": hits, "misses": misses,
                                         "hit_rate": hits / max(1, hits + misses)})
        metrics["routing"] = decode_routing(gens, runtime)
    return metrics


def decode_routing(gens: list[Generation], runtime: OffloadRuntime) -> dict[str, float]:
    """EOR_dec (remoe.md §5.1) and the load concentration (§5.4) of the decode steps, from the experts the runtime
    saw each layer select: a higher EOR bought by sending most tokens to a few experts shows here."""
    layers = list(runtime.layers)
    decoding = [g for g in gens if len(g.steps) > 1]
    if not decoding:
        return {"eor_decode": float("nan"), **{k: float("nan") for k in routing_metrics.CONCENTRATION}}
    # one [1, layers, K] call per decode token; each request's decode steps are one segment of the trace
    calls = [np.stack([s.selected[layer].numpy() for layer in layers], axis=1) for g in decoding for s in g.steps[1:]]
    starts = np.cumsum([0] + [len(g.steps) - 1 for g in decoding])[:-1]
    experts = np.concatenate(calls)
    trace = RoutingTrace(experts, starts, np.full(len(experts), DECODE, np.uint8), trace_meta(runtime.adapter, "offload"))
    stats = routing_metrics.load_stats(trace, DECODE)
    return {"eor_decode": routing_metrics.eor(trace, DECODE),
            **{k: float(np.nanmean(stats[k])) for k in routing_metrics.CONCENTRATION}}
