"""The ReMoE router fine-tuning objective (design doc remoe.md §2.3), as pure tensor functions.

    L     = L_CE + λ_KL·L_Trust + λ_Spread·L_Spread + α_s·(λ_Reuse·L_Reuse + λ_Smooth·L_Smooth + λ_Lag·L_Lag + λ_WS·L_WS)
    α_s   = min(1, s / T_warm)

Per MoE layer, with P_t the router distribution at position t and P_t^ref the frozen original gate's
distribution on the *same* router input h_t:

    L_Reuse  = −log(ρ + ε),  ρ = mean_t m_t,  m_t = (1/K)·Σ_{e ∈ sg(E_{t−1})} P_t[e]
    L_Smooth = mean_t SymKL(P_t, P_{t−1})                      SymKL(p, q) = KL(p‖q) + KL(q‖p)
    L_Lag    = mean_{d ∈ D} mean_t SymKL(P_t, P_{t−d})        D = {1, 2, 4, 8, 16}
    L_WS     = mean_b H(P̄_b),  P̄_b = mean of P_t over tumbling window b of W tokens
    L_Trust  = mean_t KL(P_t ‖ sg(P_t^ref))                    (reverse, mode-seeking KL)

A guard against collapse (project addition, not in the paper; docs/results-remoe.md shows its ablation):

    L_Spread = max(0, H(P̄^ref) − H(P̄)) / ln E,   P̄ = mean of P_t over the micro-batch's tokens, per layer

It costs nothing while the batch's expert load is at least as spread as the original router's on the same tokens,
and pushes back as soon as the fine-tuned router concentrates the load: locality must come from *when* experts are
used, not from using fewer of them. It is not warmed up (like L_Trust, it guards from the first step).

Shapes: every function takes log-probabilities `logp` of shape (L, B, T, E) — MoE layers, sequences,
positions, experts — in float32, and `doc_ids` of shape (B, T) (int, -1 = padding). A pair (t, t−d)
counts only when both positions are real tokens of the *same* document, so packed sequences never
reward reuse across a document boundary; windows restart at each document start. Each term is
computed per (sequence, layer) and then averaged over layers and sequences (λ independent of depth);
a (sequence, layer) cell with nothing to average (e.g. a one-token row) is left out of the mean.

Sigmoid-scored routers (DeepSeek-V3) have no distribution of their own: there P_t is the vector of
sigmoid scores normalised to sum to one, log P = logσ(z) − logsumexp(logσ(z)) (`router_log_probs`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

EPS = 1e-8
DEFAULT_LAGS = (1, 2, 4, 8, 16)


def router_log_probs(logits: torch.Tensor, scoring: str = "softmax") -> torch.Tensor:
    """Router logits (..., E) → log P (..., E) in float32. `scoring` is 'softmax' or 'sigmoid'."""
    z = logits.float()
    if scoring == "softmax":
        return F.log_softmax(z, dim=-1)
    if scoring == "sigmoid":
        log_scores = F.logsigmoid(z)
        return log_scores - torch.logsumexp(log_scores, dim=-1, keepdim=True)
    raise ValueError(f"unknown router scoring {scoring!r} (expected 'softmax' or 'sigmoid')")


def pair_mask(doc_ids: torch.Tensor, lag: int) -> torch.Tensor:
    """(B, T−lag) bool: position t (t ≥ lag) and t−lag are real tokens of the same document."""
    cur, prev = doc_ids[:, lag:], doc_ids[:, :-lag]
    return (cur >= 0) & (cur == prev)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the last dim of `values` (L, B, N) where `mask` (B, N) holds; returns (mean (L, B), count (B,))."""
    m = mask.to(values.dtype)
    count = m.sum(-1)
    return (values * m).sum(-1) / count.clamp(min=1), count


def _cell_mean(per_cell: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Average (L, B) per-(layer, sequence) values over the sequences that had anything to average."""
    ok = (count > 0).to(per_cell.dtype)
    if ok.sum() == 0:
        return per_cell.sum() * 0.0  # keeps the graph connected
    return (per_cell * ok).sum() / (ok.sum() * per_cell.shape[0])


def _probs(logp: torch.Tensor, probs: torch.Tensor | None) -> torch.Tensor:
    return logp.exp() if probs is None else probs


def sym_kl(logp: torch.Tensor, logq: torch.Tensor, p: torch.Tensor | None = None, q: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p‖q) + KL(q‖p) = Σ_e (p − q)(log p − log q), over the last dim."""
    return ((_probs(logp, p) - _probs(logq, q)) * (logp - logq)).sum(-1)


def trust_loss(logp: torch.Tensor, logp_ref: torch.Tensor, doc_ids: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """L_Trust = mean_t KL(P_t ‖ P_t^ref); `logp_ref` is detached here (sg). `probs` = logp.exp() if already at hand."""
    kl = (_probs(logp, probs) * (logp - logp_ref.detach())).sum(-1)
    per_cell, count = _masked_mean(kl, doc_ids >= 0)
    return _cell_mean(per_cell, count)


def reuse_loss(logp: torch.Tensor, topk_idx: torch.Tensor, doc_ids: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """L_Reuse = −log(ρ + ε): ρ = mean_t of P_t's mass on the experts selected at t−1 (divided by K).

    `topk_idx` (L, B, T, K) are the experts actually selected (constants: gradient flows only into P_t).
    """
    k = topk_idx.shape[-1]
    prev_sets = topk_idx[:, :, :-1].detach().long()
    m = _probs(logp, probs)[:, :, 1:].gather(-1, prev_sets).sum(-1) / k  # (L, B, T−1)
    rho, count = _masked_mean(m, pair_mask(doc_ids, 1))
    return _cell_mean(-torch.log(rho + EPS), count)


def lagged_sym_kl(logp: torch.Tensor, doc_ids: torch.Tensor, lags: tuple[int, ...],
                  probs: torch.Tensor | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """lag d → (per (layer, sequence) mean SymKL(P_t, P_{t−d}) over same-document pairs, pair count per sequence)."""
    p = _probs(logp, probs)
    out = {}
    for d in sorted(set(lags)):
        if d >= logp.shape[2]:  # no pair at this lag in any row
            out[d] = (logp.new_zeros(logp.shape[:2]) + 0.0 * logp.sum(), logp.new_zeros(logp.shape[1]))
            continue
        values = sym_kl(logp[:, :, d:], logp[:, :, :-d], p[:, :, d:], p[:, :, :-d])
        out[d] = _masked_mean(values, pair_mask(doc_ids, d))
    return out


def _smooth(lagged: dict) -> torch.Tensor:
    return _cell_mean(*lagged[1])


def _lag(lagged: dict, lags: tuple[int, ...]) -> torch.Tensor:
    values = torch.stack([lagged[d][0] for d in lags])  # (D, L, B)
    present = torch.stack([(lagged[d][1] > 0).to(values.dtype) for d in lags])  # (D, B)
    n = present.sum(0)  # (B,)
    per_cell = (values * present[:, None]).sum(0) / n.clamp(min=1)
    return _cell_mean(per_cell, n)


def smooth_loss(logp: torch.Tensor, doc_ids: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """L_Smooth = mean_t SymKL(P_t, P_{t−1}); no stop-gradient, both steps are pulled together."""
    return _smooth(lagged_sym_kl(logp, doc_ids, (1,), probs))


def lag_loss(logp: torch.Tensor, doc_ids: torch.Tensor, lags: tuple[int, ...] = DEFAULT_LAGS,
             probs: torch.Tensor | None = None) -> torch.Tensor:
    """L_Lag = plain mean over lags d of mean_t SymKL(P_t, P_{t−d}); lags with no pair in a cell are skipped there."""
    return _lag(lagged_sym_kl(logp, doc_ids, lags, probs), lags)


def doc_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) position of each token within its document (restarts at 0 at every document start in a row)."""
    b, t = doc_ids.shape
    pos = torch.arange(t, device=doc_ids.device).expand(b, t)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return pos - torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values


def window_ids(doc_ids: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T) index of each token's tumbling window within its row (−1 for padding); windows restart per document."""
    wid = (doc_positions(doc_ids) % window == 0).long().cumsum(1) - 1
    return torch.where(doc_ids >= 0, wid, torch.full_like(wid, -1))


def window_entropy_loss(logp: torch.Tensor, doc_ids: torch.Tensor, window: int, probs: torch.Tensor | None = None) -> torch.Tensor:
    """L_WS = mean over tumbling windows b of H(P̄_b), P̄_b the mean router distribution of the window's tokens."""
    n_layers, b, t, e = logp.shape
    wid = window_ids(doc_ids, window)
    n_win = t  # an upper bound on windows per row; empty slots are masked below
    idx = wid.clamp(min=0)[None, :, :, None].expand(n_layers, b, t, e)
    masked = _probs(logp, probs) * (wid >= 0)[None, :, :, None]
    sums = masked.new_zeros(n_layers, b, n_win, e).scatter_add(2, idx, masked)
    counts = torch.zeros(b, n_win, device=logp.device).scatter_add(1, wid.clamp(min=0), (wid >= 0).float())
    p_bar = sums / counts.clamp(min=1)[None, :, :, None]
    entropy = -(p_bar * torch.log(p_bar + EPS)).sum(-1)  # (L, B, n_win)
    per_cell, n = _masked_mean(entropy, counts > 0)
    return _cell_mean(per_cell, n)



def load_entropy(logp: torch.Tensor, doc_ids: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """(L,) entropy H(P̄) of each layer's mean router distribution over the real tokens of the batch."""
    valid = (doc_ids >= 0).to(logp.dtype)[None, :, :, None]
    p_bar = (_probs(logp, probs) * valid).sum((1, 2)) / valid.sum().clamp(min=1)
    return -(p_bar * torch.log(p_bar + EPS)).sum(-1)


def spread_loss(logp: torch.Tensor, logp_ref: torch.Tensor, doc_ids: torch.Tensor,
                probs: torch.Tensor | None = None) -> torch.Tensor:
    """L_Spread = mean over layers of max(0, H(P̄^ref) − H(P̄)) / ln E: the batch's expert load may not concentrate
    more than the original router's on the same tokens (`logp_ref` is detached)."""
    floor = load_entropy(logp_ref.detach(), doc_ids)
    drop = (floor - load_entropy(logp, doc_ids, probs)).clamp(min=0)
    return (drop / torch.log(torch.tensor(float(logp.shape[-1])))).mean()


@dataclass
class LossWeights:
    """The λ's of the objective (defaults chosen by the sweep in docs/results-remoe.md)."""

    kl: float = 1.0  # λ_KL, trust region to the original router
    reuse: float = 0.3  # λ_Reuse
    smooth: float = 0.03  # λ_Smooth
    lag: float = 0.03  # λ_Lag
    ws: float = 0.1  # λ_WS
    spread: float = 0.0  # λ_Spread, the load-entropy floor (project guard, not in the paper; the sweep did not need it)
    window: int = 16  # W, tokens per L_WS window
    warmup_steps: int = 0  # T_warm, optimizer steps of the locality warm-up α_s (0: none)
    lags: tuple[int, ...] = DEFAULT_LAGS

    def alpha(self, step: int) -> float:
        """α_s = min(1, s / T_warm) for optimizer step s (1-based); T_warm = 0 means no warm-up."""
        return 1.0 if self.warmup_steps <= 0 else min(1.0, step / self.warmup_steps)

    def ce_only(self) -> "LossWeights":
        """The paper's control: the router trained with L_CE alone."""
        return LossWeights(kl=0.0, reuse=0.0, smooth=0.0, lag=0.0, ws=0.0, spread=0.0, window=self.window,
                           warmup_steps=self.warmup_steps, lags=self.lags)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


TERMS = ("trust", "spread", "reuse", "smooth", "lag", "ws")


def remoe_loss(
    ce: torch.Tensor,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    topk_idx: torch.Tensor,
    doc_ids: torch.Tensor,
    weights: LossWeights,
    alpha: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss and each (unweighted, detached) term. Terms whose λ is 0 are not computed.

    ce: scalar L_CE; logp, logp_ref: (L, B, T, E) float32; topk_idx: (L, B, T, K); doc_ids: (B, T).
    """
    lam = {"trust": weights.kl, "spread": weights.spread, "reuse": weights.reuse, "smooth": weights.smooth,
           "lag": weights.lag, "ws": weights.ws}
    p = logp.exp()  # shared by every term
    needed_lags = (tuple(weights.lags) if lam["lag"] else ()) + ((1,) if lam["smooth"] else ())
    lagged = lagged_sym_kl(logp, doc_ids, needed_lags, p) if needed_lags else {}  # L_Smooth reuses L_Lag's d = 1
    fns = {
        "trust": lambda: trust_loss(logp, logp_ref, doc_ids, p),
        "spread": lambda: spread_loss(logp, logp_ref, doc_ids, p),
        "reuse": lambda: reuse_loss(logp, topk_idx, doc_ids, p),
        "smooth": lambda: _smooth(lagged),
        "lag": lambda: _lag(lagged, weights.lags),
        "ws": lambda: window_entropy_loss(logp, doc_ids, weights.window, p),
    }
    total = ce
    terms = {"ce": ce.detach()}
    for name in TERMS:
        if lam[name] == 0.0:
            continue
        value = fns[name]()
        scale = lam[name] if name in ("trust", "spread") else alpha * lam[name]  # the guards are not warmed up
        total = total + scale * value
        terms[name] = value.detach()
    terms["total"] = total.detach()
    return total, terms
