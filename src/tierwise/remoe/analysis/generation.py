"""Greedy generation as a quality check: does the model fall into loops, and does a router delta change its text?

Perplexity says how well a model predicts held-out text; it does not say whether the model's own greedy text
degenerates. A small or undertrained model often repeats itself ("and the LORD and the LORD ..."), and repetitive
text makes expert reuse trivially high, so every EOR or offload figure on such text is flattered. This module decodes
prompts greedily (HF `generate`, KV cache, no sampling) and reports, per prompt:
- `distinct4`: distinct 4-grams / 4-grams of the continuation (1.0 = no 4-gram repeats);
- `loop_period`: the smallest period p ≤ `MAX_PERIOD` with which the continuation's last `LOOP_TAIL` tokens repeat
  (token t equals token t − p), None if none: the continuation has settled into a cycle.
With a router delta, both routers decode the same prompts and `identical_prefix` counts the continuation tokens
before they first differ.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

LOOP_TAIL = 24  # tokens that must repeat to call it a loop: longer than any natural repetition in 64 tokens
MAX_PERIOD = 16


def distinct_ngrams(ids: Sequence[int], n: int = 4) -> float:
    """Distinct n-grams / n-grams of `ids` (1.0 when shorter than n + 1: too short to repeat)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if len(grams) > 1 else 1.0


def loop_period(ids: Sequence[int], tail: int = LOOP_TAIL, max_period: int = MAX_PERIOD) -> int | None:
    """The smallest p ≤ max_period with ids[t] == ids[t − p] for each of the last `tail` tokens, else None."""
    ids = list(ids)
    if len(ids) < tail + 1:
        return None
    for p in range(1, min(max_period, len(ids) - tail) + 1):
        if all(ids[t] == ids[t - p] for t in range(len(ids) - tail, len(ids))):
            return p
    return None


@torch.no_grad()
def greedy_continuations(model: nn.Module, prompts_ids: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
    """Greedy continuations (exactly `new_tokens` each, EOS not honoured so lengths compare) of each prompt."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for ids in prompts_ids:
        x = torch.tensor([list(ids)], device=device)
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=0)
        out.append(y[0, x.shape[1]:].tolist())
    return out


def repetition_report(continuations: list[list[int]]) -> dict[str, Any]:
    """Per-prompt distinct-4 and loop period, and their summary (mean distinct-4, prompts in a loop)."""
    distinct = [distinct_ngrams(c) for c in continuations]
    periods = [loop_period(c) for c in continuations]
    return {"prompts": len(continuations), "distinct4_mean": float(np.mean(distinct)) if distinct else float("nan"),
            "looping_prompts": sum(p is not None for p in periods), "distinct4": distinct, "loop_period": periods}


def identical_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two continuations share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def generation_check(model: nn.Module, prompts_ids: Sequence[Sequence[int]], new_tokens: int,
                     original=None, delta=None) -> dict[str, Any]:
    """`repetition_report` of the model's greedy continuations; with RouterDeltas `original` and `delta`, of both
    routers (`before`, `after`) and how many leading continuation tokens they share. Leaves `delta` applied."""
    from tierwise.remoe.export.delta import apply_router_delta

    if delta is None:
        return {"new_tokens": new_tokens,
                "before": repetition_report(greedy_continuations(model, prompts_ids, new_tokens))}
    apply_router_delta(model, original)
    before = greedy_continuations(model, prompts_ids, new_tokens)
    apply_router_delta(model, delta)
    after = greedy_continuations(model, prompts_ids, new_tokens)
    prefix = [identical_prefix(a, b) for a, b in zip(before, after)]
    return {"new_tokens": new_tokens, "before": repetition_report(before), "after": repetition_report(after),
            "identical_prefix": prefix, "identical_prefix_mean": float(np.mean(prefix)) if prefix else float("nan"),
            "identical_continuations": sum(p == new_tokens for p in prefix)}
