"""The decode loop of every workload, with per-step timing, and the per-run metrics of the offloading runtime.

One loop serves the resident and the offloaded model, so their tokens and timings compare like for like: prefill
is step 0 (TTFT), every later step decodes one token (TPOT = mean decode-step time). The token a step feeds next is
the workload's (workload.py): the argmax (greedy), a seeded draw (sample) or the real next token (replay).
Decode time is reported as `measured` (wall clock on this machine, including the store's real reads; with
`--throttle` those take the storage profile's time on an I/O thread) and `modelled` (the overlap timing model of
the target on its platform, timing.py, fed with the events the runtime recorded at every step); `total` is the one
that includes the storage: `modelled`, or `measured` when the storage is in the wall clock (`local`, `--throttle`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from tierwise.common.errors import TierwiseError
from tierwise.remoe.analysis import metrics as routing_metrics
from tierwise.remoe.models.routing import DECODE, RoutingTrace, trace_meta
from tierwise.remoe.offload.runtime import OffloadRuntime, StepCounters
from tierwise.remoe.offload.workload import Request, Workload, sample_token, step_uniform

GREEDY = Workload("greedy")


@dataclass
class Generation:
    """One request: prompt, the token each step fed next, and per-step wall time and offload counters (step 0 =
    prefill)."""

    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)  # chosen (greedy, sample) or real (replay) next tokens
    argmax: list[int] = field(default_factory=list)  # the model's top-1 next token at each step
    logprobs: list[float] = field(default_factory=list)  # log p(tokens[i]) at step i
    step_seconds: list[float] = field(default_factory=list)
    steps: list[StepCounters] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # last-position logits per step, when kept
    layer_hits: dict[int, int] = field(default_factory=dict)  # per MoE layer, this request only
    layer_misses: dict[int, int] = field(default_factory=dict)
    bytes_read: int = 0  # from the expert store, this request only
    prefetch_wasted_at_end: int = 0  # prefetched experts still unused when the request ended


@torch.inference_mode()
def decode(model, request: Request, max_new_tokens: int, workload: Workload = GREEDY, *,
           runtime: OffloadRuntime | None = None, keep_logits: bool = False) -> Generation:
    """Exactly `max_new_tokens` steps (no early stop: every request decodes the same length)."""
    if not request.prompt_ids:
        raise TierwiseError("cannot generate from an empty prompt")
    if max_new_tokens < 1:
        raise TierwiseError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if workload.kind == "replay" and (request.continuation is None or len(request.continuation) < max_new_tokens):
        raise TierwiseError(f"request {request.index}: replay needs {max_new_tokens} continuation tokens")
    gen = Generation(list(request.prompt_ids))
    if runtime is not None:
        runtime.reset()  # request isolation: every request starts with cold expert caches
        runtime.take_step()
        layers_before, bytes_before = runtime.counters()
    past = DynamicCache(config=model.config)
    input_ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=model.device)
    for i in range(max_new_tokens):
        u = step_uniform(workload.seed, request.index, i) if workload.kind == "sample" else 0.0
        t0 = time.perf_counter()
        logits = model(input_ids=input_ids, cache=past, use_cache=True, logits_to_keep=1).logits[0, -1]
        if workload.kind == "replay":
            token = request.continuation[i]
        elif workload.kind == "sample":
            token = sample_token(logits, workload.temperature, workload.top_p, u)
        else:
            token = int(logits.argmax())
        gen.step_seconds.append(time.perf_counter() - t0)
        gen.steps.append(runtime.take_step() if runtime is not None else StepCounters())
        gen.tokens.append(token)
        gen.argmax.append(token if workload.kind == "greedy" else int(logits.argmax()))
        gen.logprobs.append(float(logits.float().log_softmax(-1)[token]))
        if keep_logits:
            gen.logits.append(logits.float().clone())
        input_ids = torch.tensor([[token]], dtype=torch.long, device=model.device)
    if runtime is not None:
        gen.prefetch_wasted_at_end = runtime.end_request()
        layers_after, bytes_after = runtime.counters()
        for layer, (h, m) in layers_after.items():
            gen.layer_hits[layer] = h - layers_before[layer][0]
            gen.layer_misses[layer] = m - layers_before[layer][1]
        gen.bytes_read = bytes_after - bytes_before
    return gen


def greedy_generate(model, prompt_ids: list[int], max_new_tokens: int, *, runtime: OffloadRuntime | None = None,
                    keep_logits: bool = False) -> Generation:
    """Greedy decoding of exactly `max_new_tokens` tokens."""
    return decode(model, Request(0, list(prompt_ids)), max_new_tokens, GREEDY, runtime=runtime,
                  keep_logits=keep_logits)


def _summary(values: list[float]) -> dict[str, float]:
    """Median, p90 and mean in milliseconds."""
    ms = 1e3 * np.asarray(values, dtype=float)
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "mean": float(ms.mean())}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def run_metrics(gens: list[Generation], runtime: OffloadRuntime | None = None, workload: Workload = GREEDY) -> dict:
    """TTFT, TPOT (median/p90/mean over requests), hits/misses/fetches, prefetch accuracy, bytes, I/O vs compute,
    and for replay the continuation's perplexity."""
    timing = runtime.timing if runtime is not None else None
    ttft, tpot = [], {"measured": [], "modelled": [], "modelled_compute": [], "modelled_stall": []}
    decode_c, prefill = StepCounters(), StepCounters()
    wall = modelled = modelled_compute = modelled_serial = 0.0
    wasted = 0
    for g in gens:
        ttft.append(g.step_seconds[0])
        prefill.add(g.steps[0])
        for s in g.steps[1:]:
            decode_c.add(s)
        wasted += g.prefetch_wasted_at_end
        wall += sum(g.step_seconds)
        n_dec = len(g.tokens) - 1
        if n_dec > 0:
            tpot["measured"].append(sum(g.step_seconds[1:]) / n_dec)
            if timing is not None:
                times = timing.steps([[s.layers[layer] for layer in runtime.layers] for s in g.steps[1:]])
                tpot["modelled"].append(sum(t.total for t in times) / n_dec)
                tpot["modelled_compute"].append(sum(t.compute for t in times) / n_dec)
                tpot["modelled_stall"].append(sum(t.stall for t in times) / n_dec)
                modelled += sum(t.total for t in times)
                modelled_compute += sum(t.compute for t in times)
                modelled_serial += sum(t.io for t in times)
    storage_in_wall = timing is None or runtime.config.throttle
    tpot_ms = {k: _summary(v) for k, v in tpot.items() if v} if tpot["measured"] else None
    if tpot_ms is not None:
        tpot_ms["total"] = tpot_ms["measured" if storage_in_wall else "modelled"]
    decode_tokens = sum(len(g.tokens) - 1 for g in gens)
    out_tokens = sum(len(g.tokens) for g in gens)
    needed = decode_c.hits + decode_c.misses
    metrics = {
        "requests": len(gens),
        "prompt_tokens": sum(len(g.prompt_ids) for g in gens),
        "output_tokens": out_tokens,
        "ttft_ms": {"measured": _summary(ttft)},
        "tpot_ms": tpot_ms,
        "tokens_per_s": {"measured": out_tokens / wall},
        "decode": {
            "hits": decode_c.hits,
            "misses": decode_c.misses,
            "hit_rate": decode_c.hits / max(1, needed),
            "misses_per_token": decode_c.misses / max(1, decode_tokens),
            "fetches_per_token": (decode_c.misses + decode_c.prefetch_loads) / max(1, decode_tokens),
            "prefetch_hits": decode_c.prefetch_used,
            # share of (decode token, MoE layer) routing decisions the cache prior changed
            "rerouted_share": decode_c.rerouted / max(1, decode_tokens * (len(runtime.layers) if runtime else 1)),
        },
        "prefill": {"hits": prefill.hits, "misses": prefill.misses},
        "time_s": {
            "measured": wall,
            "io_measured": prefill.io_seconds + decode_c.io_seconds,
            "compute_measured": wall - prefill.io_seconds - decode_c.io_seconds,
            "modelled": modelled if timing is not None else None,
            "modelled_compute": modelled_compute if timing is not None else None,
            "modelled_io_serial": modelled_serial if timing is not None else None,
        },
        "prefetch": None,
        "quality": None,
    }
    if decode_c.predicted:
        loads = decode_c.prefetch_loads
        wasted += decode_c.prefetch_wasted
        metrics["prefetch"] = {
            "predicted": decode_c.predicted, "correct": decode_c.predicted_correct,
            "precision": _ratio(decode_c.predicted_correct, decode_c.predicted),
            "recall": _ratio(decode_c.predicted_correct, decode_c.selected_after_prediction),
            "loads": loads, "used": decode_c.prefetch_used, "wasted": wasted,
            "wasted_bytes": wasted * runtime.target_bytes,
            "loads_per_token": loads / max(1, decode_tokens),
        }
    if workload.kind == "replay":
        nll = -sum(sum(g.logprobs) for g in gens)
        n = sum(len(g.logprobs) for g in gens)
        metrics["quality"] = {"tokens": n, "nll": nll, "ppl": math.exp(nll / n)}
    if runtime is not None:
        metrics["config"] = runtime.describe()
        metrics["bytes_read"] = sum(g.bytes_read for g in gens)
        fetches = prefill.misses + decode_c.misses + decode_c.prefetch_loads
        metrics["modelled_bytes"] = fetches * runtime.target_bytes
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
