"""Decode workloads: what token each decode step feeds, so that the routing under test is what real use produces.

- `replay` (the default for speedup figures): teacher-forced replay of held-out text. A request is the first P
  tokens of a document as the prompt and its next N real tokens as the continuation; step i feeds real token i, so
  every configuration routes exactly the tokens a real text has, and its logits give the continuation's perplexity
  and the next-token argmax (top-1 agreement with the original configuration).
- `sample`: seeded sampling (temperature, top-p). The uniform number behind step s of request r comes from a
  generator seeded by (seed, r, s), and a token is drawn by inverse CDF over token ids, so two configurations see
  the same random numbers and pick different tokens only where their distributions differ enough.
- `greedy`: argmax decoding of prompts. Greedy decoding of short prompts by small models falls into loops, whose
  trivially repetitive routing flatters expert reuse; it is kept for comparison, not for speedup figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tierwise.common.errors import TierwiseError

WORKLOADS = ("greedy", "replay", "sample")
DEFAULT_REPLAY_REQUESTS = 16


@dataclass(frozen=True)
class Workload:
    kind: str = "greedy"
    temperature: float = 1.0  # sample
    top_p: float = 1.0  # sample
    seed: int = 0  # sample

    def __post_init__(self):
        if self.kind not in WORKLOADS:
            raise TierwiseError(f"unknown workload {self.kind!r}; choose one of: {', '.join(WORKLOADS)}")
        if self.kind == "sample":
            if not self.temperature > 0:
                raise TierwiseError(f"--temperature must be > 0 for the sample workload, got {self.temperature}")
            if not 0 < self.top_p <= 1:
                raise TierwiseError(f"--top-p must be in (0, 1], got {self.top_p}")

    def describe(self) -> dict:
        d = {"kind": self.kind}
        if self.kind == "sample":
            d.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return d


@dataclass(frozen=True)
class Request:
    index: int  # request number (seeds the sample workload)
    prompt_ids: list[int]
    continuation: list[int] | None = None  # replay: the real tokens fed after the prompt


def prompt_requests(prompts_ids: list[list[int]]) -> list[Request]:
    return [Request(i, list(ids)) for i, ids in enumerate(prompts_ids)]


def replay_requests(data: str, tokenizer, prompt_tokens: int, new_tokens: int,
                    limit: int | None = DEFAULT_REPLAY_REQUESTS) -> list[Request]:
    """Requests from the documents of `data` (models.corpus spec, e.g. embedded:heldout) with at least P + N tokens,
    `limit` of them spread evenly over the source: the first P tokens are the prompt, the next N the continuation."""
    from tierwise.remoe.models.corpus import _spread, read_documents, tokenize_documents

    if prompt_tokens < 1:
        raise TierwiseError(f"--prompt-tokens must be at least 1, got {prompt_tokens}")
    if limit is not None and limit < 1:
        raise TierwiseError(f"--limit must be at least 1, got {limit}")
    if tokenizer is None:
        raise TierwiseError("this checkpoint has no tokenizer; the replay workload needs one to encode --data")
    docs = tokenize_documents(read_documents(data, tokenizer), tokenizer)
    long_enough = [ids for ids in docs if len(ids) >= prompt_tokens + new_tokens]
    if not long_enough:
        raise TierwiseError(f"{data}: no document has the {prompt_tokens} + {new_tokens} tokens a replay request needs "
                            f"(longest: {max((len(d) for d in docs), default=0)}); lower --prompt-tokens or --max-new-tokens")
    chosen = _spread(long_enough, limit)
    return [Request(i, ids[:prompt_tokens], ids[prompt_tokens:prompt_tokens + new_tokens])
            for i, ids in enumerate(chosen)]


def step_uniform(seed: int, request: int, step: int) -> float:
    """The uniform number of step `step` of request `request`: the same for every configuration."""
    state = np.random.SeedSequence([seed, request, step]).generate_state(2, np.uint32)
    g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return float(torch.rand((), generator=g, dtype=torch.float64))


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, u: float) -> int:
    """Inverse-CDF draw over token ids (a fixed order) from softmax(logits / T), restricted to the top-p nucleus."""
    probs = (logits.double() / temperature).softmax(-1)
    if top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        outside = sorted_p.cumsum(0) - sorted_p >= top_p  # tokens after the nucleus has reached top_p
        probs = probs.clone()
        probs[order[outside]] = 0
    cdf = probs.cumsum(0)
    return min(int(torch.searchsorted(cdf, torch.tensor(u * float(cdf[-1]), dtype=cdf.dtype), right=True)),
               len(cdf) - 1)
