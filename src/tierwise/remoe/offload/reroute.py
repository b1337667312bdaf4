"""Cache-aware rerouting (the "cache prior" of Skliar et al., arXiv 2412.00099; remoe.md §8), training-free.

Per MoE layer and token, the router logits z get a bonus on the experts the layer's cache holds:

    z'_e = z_e + λ · Δ_avg · 1[e ∈ cache]

Δ_avg is a running mean, per layer and request, of each token's logit range max_e z − min_e z, so λ is in units of
a typical spread. Top-K is taken on z', except that the original top-J experts (by z) are always kept. The routing
weights of the final set are the model's own scores of the *original* logits (softmax), renormalised over the set
where the model renormalises, times its routed scaling factor. The runtime applies this as a forward hook on each
router (`mlp.gate`): a transformation of the router's output, not a re-implemented model.

The opposite of ReMoE: routing changes at run time with the cache state, while ReMoE changes the gate offline.
"""

from __future__ import annotations

import torch

from tierwise.common.errors import TierwiseError


def check_reroutable(adapter) -> None:
    """Rerouting re-ranks plain top-k over softmax scores; grouped or sigmoid routers pick differently."""
    if adapter.scoring != "softmax" or adapter.n_group is not None:
        raise TierwiseError(
            f"--reroute supports routers with softmax scores and plain top-k; {adapter.model_type} "
            f"({adapter.scoring} scores{', grouped top-k' if adapter.n_group is not None else ''}) is not supported")


def cache_prior_topk(logits: torch.Tensor, cached: torch.Tensor, lam: float, delta_avg: float, k: int,
                     protect: int) -> torch.Tensor:
    """Top-k of z + λ·Δ_avg·1[cached] per row of `logits` [T, E], the top-`protect` of z always kept. [T, k]."""
    z = logits.float()
    biased = z + lam * delta_avg * cached.to(z.dtype)
    if protect > 0:
        biased = biased.scatter(1, z.topk(protect, dim=-1).indices, float("inf"))
    return biased.topk(k, dim=-1).indices


def routing_weights(logits: torch.Tensor, index: torch.Tensor, *, renormalise: bool, scaling: float) -> torch.Tensor:
    """The weights a softmax router gives the experts `index` [T, k]: softmax(z) at those experts, renormalised over
    them when the model renormalises, times its routed scaling factor."""
    w = logits.float().softmax(-1).gather(1, index)
    if renormalise:
        w = w / w.sum(-1, keepdim=True)
    return w * scaling


class Rerouter:
    """One MoE layer's rerouting state: λ, J, and the running mean of the logit range (reset per request)."""

    def __init__(self, lam: float, protect: int, top_k: int, renormalise: bool, scaling: float):
        self.lam, self.protect, self.top_k = lam, protect, top_k
        self.renormalise, self.scaling = renormalise, scaling
        self.reset()

    def reset(self) -> None:
        self.range_sum, self.range_n = 0.0, 0

    def __call__(self, logits: torch.Tensor, weights: torch.Tensor, index: torch.Tensor,
                 cached: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(weights, index) of the router's output rerouted toward `cached` [E] bool; and how many rows changed.
        Rows whose expert set is unchanged keep the router's own output bit for bit."""
        z = logits.float()
        self.range_sum += float((z.max(-1).values - z.min(-1).values).sum())
        self.range_n += z.shape[0]
        new = cache_prior_topk(z, cached, self.lam, self.range_sum / self.range_n, self.top_k, self.protect)
        changed = (new.sort(-1).values != index.sort(-1).values).any(-1)
        n_changed = int(changed.sum())
        if n_changed == 0:
            return weights, index, 0
        new_weights = routing_weights(z, new, renormalise=self.renormalise, scaling=self.scaling).to(weights.dtype)
        keep = ~changed[:, None]
        return torch.where(keep, weights, new_weights), torch.where(keep, index, new.to(index.dtype)), n_changed
