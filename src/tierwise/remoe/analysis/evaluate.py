"""Held-out quality and expert reuse of a model, before and after a router delta.

One teacher-forced pass over packed held-out rows (block-diagonal attention, so documents never see each other)
gives both the perplexity and the routing trace. Each packed piece of a document is one request of the trace,
every position a decode-like step (EOR_tf of remoe.md §5.1); the trace then goes through the analysis metrics
(`tierwise.remoe.analysis.metrics`: EOR, load CV, entropy, effective experts, largest share) and the per-layer LRU cache
simulator (`tierwise.remoe.analysis.cachesim`: uHR@C, unique misses; cold cache per request).

With a router delta, both routers run batch by batch on the same rows (`paired_pass`: swap in the original gates,
forward, swap in the fine-tuned ones, forward, compare), so quality beyond perplexity costs no second model and
memory stays bounded by one batch: next-token top-1 agreement with the original, KL(original ‖ fine-tuned) of the
next-token distributions, and the trust term KL(P_new ‖ P_ref) of the routers (training/objective.py).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tierwise.common.progress import progress_task
from tierwise.common.report import to_jsonable
from tierwise.common.results import Result
from tierwise.remoe.analysis import cachesim, metrics
from tierwise.remoe.analysis.metrics import CONCENTRATION, concentration_warning
from tierwise.remoe.models.corpus import PackedCorpus, load_corpus
from tierwise.remoe.models.adapters import adapter_for, load_model
from tierwise.remoe.models.routing import DECODE, RouterRecorder, RoutingTrace, trace_meta
from tierwise.remoe.training.objective import router_log_probs, trust_loss


@dataclass
class EvalConfig:
    data: str = "embedded:heldout"
    seq_len: int = 256
    batch_size: int = 8
    max_rows: int | None = None  # evaluate N packed rows spread evenly over the data
    cache_sizes: tuple[int, ...] = ()  # uHR@C capacities; empty = (K, 2K)
    doc_separator: str | None = None
    max_docs: int | None = None  # read at most N documents (spread evenly), e.g. of a large training set
    generate: int = 0  # > 0: also decode the prompts greedily this many tokens (analysis/generation.py)
    prompts: str | None = None  # prompt file for the generation check (default: the embedded prompts)


def _batches(model: nn.Module, corpus: PackedCorpus, batch_size: int):
    """The corpus's rows, `batch_size` at a time, on the model's device, with a progress bar over the rows."""
    device = next(model.parameters()).device
    with progress_task("held-out rows", total=len(corpus)) as (progress, task):
        for lo in range(0, len(corpus), batch_size):
            rows = range(lo, min(lo + batch_size, len(corpus)))
            yield {k: v.to(device) for k, v in corpus.batch(rows).items()}
            progress.update(task, advance=len(rows))


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], use_cache=False).logits


class TeacherForced:
    """One router setting's summed next-token CE, predicted-token count and routing trace, added batch by batch."""

    def __init__(self):
        self.ce_sum, self.n_pred, self.n_tokens = 0.0, 0, 0
        self.experts: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []

    def add(self, batch: dict[str, torch.Tensor], logits: torch.Tensor, call_experts: np.ndarray) -> None:
        """One batch: its logits and the experts of its forward call, [B·T, layers, K]."""
        targets = batch["labels"][:, 1:]
        self.ce_sum += float(F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(),
                                             ignore_index=-100, reduction="sum"))
        self.n_pred += int((targets != -100).sum())
        doc = batch["doc_ids"].cpu()
        new_request = torch.ones_like(doc, dtype=torch.bool)  # every row start, every document start
        new_request[:, 1:] = doc[:, 1:] != doc[:, :-1]
        valid = (doc >= 0).flatten().numpy()
        self.experts.append(call_experts[valid])
        self.starts.append(np.flatnonzero(new_request.flatten().numpy()[valid]) + self.n_tokens)
        self.n_tokens += int(valid.sum())

    def trace(self, adapter, model_name: str) -> RoutingTrace:
        return RoutingTrace(np.concatenate(self.experts), np.concatenate(self.starts),
                            np.full(self.n_tokens, DECODE, np.uint8), trace_meta(adapter, model_name, teacher_forced=True))


def teacher_forced_pass(model: nn.Module, corpus: PackedCorpus, *, batch_size: int = 8,
                        model_name: str = "model") -> tuple[float, int, RoutingTrace]:
    """(summed next-token CE in nats, number of predicted tokens, routing trace) over every row of `corpus`."""
    adapter = adapter_for(model)
    run = TeacherForced()
    with RouterRecorder(adapter) as rec, torch.no_grad():
        for batch in _batches(model, corpus, batch_size):
            run.add(batch, _logits(model, batch), rec.pop()[0])
    return run.ce_sum, run.n_pred, run.trace(adapter, model_name)


VS_ORIGINAL_LEGEND = (
    "top1_agreement: share of predicted positions whose next-token argmax equals the original model's; "
    "output_kl_orig_ft: mean KL(original || fine-tuned) of the next-token distributions (nats/token); "
    "router_kl_ft_orig: training's trust term, mean KL(P_fine-tuned || P_original) of the routers on the same "
    "router inputs (nats)")

CHANGE = "change (%)"  # (after − before) / before, a fraction the table shows in percent

GENERATION_LEGEND = (
    "greedy_*: {n} tokens decoded greedily per prompt; distinct4: distinct 4-grams / 4-grams (mean over prompts); "
    "looping_prompts: prompts whose last 24 tokens repeat with a period of at most 16 tokens; identical_prefix: "
    "mean leading tokens the fine-tuned router generates exactly as the original")


class Agreement:
    """The fine-tuned model against the original on the same rows, batch by batch (remoe.md §5.6: quality)."""

    def __init__(self):
        self.same_top1, self.n_pred, self.output_kl_sum = 0, 0, 0.0
        self.trust_sum, self.trust_rows = 0.0, 0

    def add(self, batch: dict[str, torch.Tensor], logits_ref: torch.Tensor, logits: torch.Tensor,
            router_logp: torch.Tensor, router_logp_ref: torch.Tensor) -> None:
        """One batch: both models' output logits, and the routers' log P (L, B, T, E) of the fine-tuned run with the
        original routers' log P_ref on the same router inputs."""
        predicted = batch["labels"][:, 1:] != -100  # the positions perplexity scores
        ref = logits_ref[:, :-1][predicted].float().log_softmax(-1)
        new = logits[:, :-1][predicted].float().log_softmax(-1)
        self.same_top1 += int((ref.argmax(-1) == new.argmax(-1)).sum())
        self.n_pred += int(predicted.sum())
        self.output_kl_sum += float(F.kl_div(new, ref, log_target=True, reduction="sum"))  # Σ KL(ref ‖ new)
        doc_ids = batch["doc_ids"]
        rows = int((doc_ids >= 0).any(1).sum())  # trust_loss averages over (layer, row) cells holding tokens
        self.trust_sum += float(trust_loss(router_logp, router_logp_ref, doc_ids)) * rows
        self.trust_rows += rows

    def result(self) -> dict[str, float]:
        n = max(1, self.n_pred)
        # a KL is >= 0; float32 rounding leaves about -1e-8 where the distributions are the same
        return {"top1_agreement": self.same_top1 / n, "output_kl_orig_ft": max(0.0, self.output_kl_sum / n),
                "router_kl_ft_orig": max(0.0, self.trust_sum / max(1, self.trust_rows))}


def paired_pass(model: nn.Module, corpus: PackedCorpus, delta, *, batch_size: int = 8,
                model_name: str = "model") -> tuple[tuple[float, int, RoutingTrace], tuple[float, int, RoutingTrace],
                                                    dict[str, float]]:
    """`teacher_forced_pass` of the original and of `delta` (a RouterDelta), and their `Agreement`, in one pass.

    Per batch the original gates run, then the delta's, on the same rows: only one batch of logits of each is ever
    held. The model is left with the delta applied. P_ref is the original router applied to the fine-tuned run's
    own router inputs h, as in training's trust term.
    """
    from tierwise.remoe.export.delta import RouterDelta, apply_router_delta, delta_meta, router_state
    from tierwise.remoe.training.finetune import RouterCapture, frozen_reference_routers

    adapter = adapter_for(model)
    original = RouterDelta(router_state(model), delta_meta(model))
    refs = frozen_reference_routers(adapter)
    before, after, agreement = TeacherForced(), TeacherForced(), Agreement()
    capture = RouterCapture(adapter)
    try:
        with RouterRecorder(adapter) as rec, torch.no_grad():
            for batch in _batches(model, corpus, batch_size):
                apply_router_delta(model, original)
                logits_ref = _logits(model, batch)
                before.add(batch, logits_ref, rec.pop()[0])
                capture.clear()
                apply_router_delta(model, delta)
                logits = _logits(model, batch)
                after.add(batch, logits, rec.pop()[0])
                b, t = batch["doc_ids"].shape
                logp = torch.stack([router_log_probs(z.view(b, t, -1), adapter.scoring) for z in capture.logits])
                logp_ref = torch.stack([router_log_probs(ref(h.float())[0].view(b, t, -1), adapter.scoring)
                                        for ref, h in zip(refs, capture.inputs)])
                agreement.add(batch, logits_ref, logits, logp, logp_ref)
                capture.clear()
    finally:
        capture.remove()
    name = f"{model_name}+delta"
    return ((before.ce_sum, before.n_pred, before.trace(adapter, model_name)),
            (after.ce_sum, after.n_pred, after.trace(adapter, name)), agreement.result())


def reuse_metrics(trace: RoutingTrace, cache_sizes: tuple[int, ...] = ()) -> dict[str, Any]:
    """EOR, load balance and LRU cache figures of a trace (cold cache per request, every token a step)."""
    stats = metrics.load_stats(trace)
    result: dict[str, Any] = {
        "eor": metrics.eor(trace),
        "eor_per_layer": metrics.eor_per_layer(trace).tolist(),
        **{k: float(np.nanmean(stats[k])) for k in (*CONCENTRATION, "load_cv")},  # concentration beside EOR
        "distinct_experts_per_request": metrics.distinct_experts_per_request(trace),
        "fetch_bound": trace.top_k * (1 - metrics.eor(trace)),
    }
    for c in cache_sizes or (trace.top_k, 2 * trace.top_k):
        sim = cachesim.simulate(trace, cachesim.CacheConfig(c, "lru"))
        result[f"uhr@{c}"] = sim.unique_hit_rate
        result[f"misses_per_token@{c}"] = sim.misses / trace.num_tokens  # summed over layers
        result[f"misses_per_token_layer@{c}"] = sim.misses_per_token_per_layer
    return result


def _figures(passed: tuple[float, int, RoutingTrace], cfg: EvalConfig) -> dict[str, Any]:
    """Perplexity plus `reuse_metrics` from a teacher-forced pass's (CE sum, predicted tokens, trace)."""
    ce_sum, n_pred, trace = passed
    ce = ce_sum / max(1, n_pred)
    return {"ce": ce, "ppl": math.exp(ce), "tokens": trace.num_tokens, **reuse_metrics(trace, cfg.cache_sizes)}


def evaluate_model(model: nn.Module, corpus: PackedCorpus, cfg: EvalConfig, *, model_name: str = "model") -> dict[str, Any]:
    """Perplexity plus `reuse_metrics` of one model on one packed corpus."""
    model.eval()
    return _figures(teacher_forced_pass(model, corpus, batch_size=cfg.batch_size, model_name=model_name), cfg)


def evaluate_pair(model: nn.Module, corpus: PackedCorpus, delta, cfg: EvalConfig, *,
                  model_name: str = "model") -> dict[str, Any]:
    """The original model (`before`) and with the RouterDelta `delta` (`after`) on the same rows, their relative
    `change`, the fine-tuned model against the original (`vs_original`: `Agreement`), and the
    `concentration_warning` (None unless routing entropy fell > 2 %). Leaves the delta applied."""
    model.eval()
    passed_before, passed_after, vs_original = paired_pass(model, corpus, delta, batch_size=cfg.batch_size,
                                                           model_name=model_name)
    before, after = _figures(passed_before, cfg), _figures(passed_after, cfg)
    return {"before": before, "after": after, "change": relative_change(before, after), "vs_original": vs_original,
            "concentration_warning": concentration_warning(before, after)}


def relative_change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """(after − before) / before for every scalar metric present in both."""
    out = {}
    for k, b in before.items():
        a = after.get(k)
        if isinstance(b, (int, float)) and isinstance(a, (int, float)) and b not in (0, None) and math.isfinite(b):
            out[k] = (a - b) / abs(b)
    return out


@dataclass
class EvalResult(Result):
    """What `tierwise remoe eval` reports (docs/finetune.md): the model's figures on the held-out rows (`before`), and
    with a router delta the fine-tuned ones (`after`), their relative `change`, the fine-tuned model against the
    original (`vs_original`) and the `concentration_warning`; with `--generate`, the greedy `generation` check.
    `to_dataframe()`: one row per router with its scalar figures."""

    model: str
    data: str
    num_rows: int  # packed rows evaluated
    seq_len: int
    before: dict[str, Any]
    router: str | None = None
    after: dict[str, Any] | None = None
    change: dict[str, float] | None = None
    vs_original: dict[str, float] | None = None
    concentration_warning: str | None = None
    generation: dict[str, Any] | None = None

    def routers(self) -> dict[str, dict[str, Any]]:
        """The figures of each router evaluated, by label: 'original', and with a delta 'fine-tuned'."""
        return {"original": self.before, **({"fine-tuned": self.after} if self.after is not None else {})}

    def rows(self) -> list[dict[str, Any]]:
        return [{"router": label, **{k: v for k, v in to_jsonable(figures).items() if not isinstance(v, (list, dict))}}
                for label, figures in self.routers().items()]


@contextmanager
def _generation_progress(model: nn.Module, total: int) -> Iterator[None]:
    """A bar over the greedy generation's forward passes: `generate` runs one per new token (KV cache, no early
    stop), so `total` = prompts × tokens × routers."""
    with progress_task("greedy generation", total=total) as (progress, task):
        hook = model.register_forward_hook(lambda *_: progress.update(task, advance=1))
        try:
            yield
        finally:
            hook.remove()


def evaluate_checkpoint(model_name: str, router: Path | None, cfg: EvalConfig, *,
                        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> EvalResult:
    """`tierwise remoe eval`: the model's figures, and with a router delta, after and the change.

    The model is loaded in `dtype` and placed on `device` (None: the CPU); batches follow it there."""
    from tierwise.remoe.analysis.generation import generation_check
    from tierwise.remoe.export.delta import RouterDelta, delta_meta, load_router_delta, router_state
    from tierwise.remoe.models.embedded import default_prompts
    from tierwise.remoe.models.prompts import encode_prompt, read_prompts

    delta = load_router_delta(router) if router is not None else None  # a bad delta fails before the model loads
    model, tokenizer = load_model(model_name, dtype=dtype, device=device)
    corpus = load_corpus(cfg.data, tokenizer, cfg.seq_len, doc_separator=cfg.doc_separator, max_docs=cfg.max_docs,
                         max_rows=cfg.max_rows)
    original = RouterDelta(router_state(model), delta_meta(model))
    if delta is None:
        figures = {"before": evaluate_model(model, corpus, cfg, model_name=model_name)}
    else:
        figures = {"router": str(router), **evaluate_pair(model, corpus, delta, cfg, model_name=model_name)}
    result = EvalResult(model_name, cfg.data, len(corpus), cfg.seq_len, **figures)
    if cfg.generate > 0:
        prompts = read_prompts(cfg.prompts) if cfg.prompts else default_prompts()
        ids = [encode_prompt(p, tokenizer) for p in prompts]
        with _generation_progress(model, len(ids) * cfg.generate * (1 if delta is None else 2)):
            result.generation = generation_check(model, ids, cfg.generate, original, delta)
    return result


def summary_rows(results: EvalResult) -> list[dict[str, Any]]:
    """One table row per scalar metric: before, and with a delta, after and relative change; then the fine-tuned
    model against the original (`vs_original`, in the after column)."""
    paired = results.after is not None
    rows = []
    for k, v in results.before.items():
        if isinstance(v, (list, dict)):
            continue
        rows.append({"metric": k, "before": v,
                     **({"after": results.after[k], CHANGE: results.change.get(k)} if paired else {})})
    for k, v in (results.vs_original or {}).items():
        rows.append({"metric": k, "before": None, "after": v, CHANGE: None})
    gen = results.generation
    if gen:
        for k, label in (("distinct4_mean", "greedy_distinct4"), ("looping_prompts", "greedy_looping_prompts")):
            rows.append({"metric": label, "before": gen["before"][k],
                         **({"after": gen["after"][k], CHANGE: None} if "after" in gen else {})})
        if "after" in gen:
            rows.append({"metric": "greedy_identical_prefix", "before": None, "after": gen["identical_prefix_mean"],
                         CHANGE: None})
    return rows


def concentration_rows(results: EvalResult) -> list[dict[str, Any]]:
    """One row per router of an `EvalResult`: EOR with the load concentration beside it, and perplexity."""
    return [{"router": label, "EOR": r["eor"], **{name: r[k] for k, name in CONCENTRATION.items()}, "ppl": r["ppl"]}
            for label, r in results.routers().items()]
