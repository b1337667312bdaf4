"""The ReMoE loss terms on synthetic router distributions: formulas, masks, aggregation, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tierwise.remoe.training.objective import (
    LossWeights,
    doc_positions,
    load_entropy,
    lag_loss,
    pair_mask,
    remoe_loss,
    reuse_loss,
    router_log_probs,
    smooth_loss,
    spread_loss,
    sym_kl,
    trust_loss,
    window_entropy_loss,
    window_ids,
)


def _logp(L=2, B=2, T=12, E=6, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(L, B, T, E, generator=g).requires_grad_(requires_grad)
    return z, router_log_probs(z)


def test_router_log_probs_softmax_and_normalised_sigmoid():
    z = torch.randn(3, 5)
    assert torch.allclose(router_log_probs(z), F.log_softmax(z, -1))
    p = router_log_probs(z, "sigmoid").exp()
    s = torch.sigmoid(z)
    assert torch.allclose(p, s / s.sum(-1, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError):
        router_log_probs(z, "relu")


def test_sym_kl_is_symmetric_sum_of_both_kls():
    p, q = router_log_probs(torch.randn(4, 6)), router_log_probs(torch.randn(4, 6))
    kl_pq = (p.exp() * (p - q)).sum(-1)
    kl_qp = (q.exp() * (q - p)).sum(-1)
    assert torch.allclose(sym_kl(p, q), kl_pq + kl_qp, atol=1e-6)
    assert torch.allclose(sym_kl(p, q), sym_kl(q, p))


def test_reuse_loss_formula_by_hand():
    _, lp = _logp(L=1, B=1, T=5, E=6)
    idx = lp.topk(2, -1).indices
    doc = torch.zeros(1, 5, dtype=torch.long)
    p = lp.exp()[0, 0]
    m = [p[t, idx[0, 0, t - 1]].sum() / 2 for t in range(1, 5)]
    expected = -math.log(float(sum(m) / 4) + 1e-8)
    assert reuse_loss(lp, idx, doc).item() == pytest.approx(expected, rel=1e-5)


def test_reuse_loss_minimum_is_log_k_when_all_mass_on_previous_set():
    T, E, K = 6, 8, 2
    z = torch.full((1, 1, T, E), -30.0)
    z[..., :K] = 0.0  # every step puts all mass on experts {0, 1}
    lp = router_log_probs(z)
    idx = torch.tensor([0, 1]).expand(1, 1, T, K)
    assert reuse_loss(lp, idx, torch.zeros(1, T, dtype=torch.long)).item() == pytest.approx(math.log(K), abs=1e-4)


def test_reuse_gradient_flows_only_into_current_step():
    z, lp = _logp(L=1, B=1, T=2, E=5, requires_grad=True)
    idx = lp.topk(2, -1).indices
    reuse_loss(lp, idx, torch.zeros(1, 2, dtype=torch.long)).backward()
    assert z.grad[0, 0, 0].abs().sum() == 0  # t−1 only supplies constant indices
    assert z.grad[0, 0, 1].abs().sum() > 0


def test_smooth_zero_for_constant_routing_and_lag1_equals_smooth():
    z = torch.randn(1, 1, 1, 6).expand(2, 3, 10, 6)
    doc = torch.zeros(3, 10, dtype=torch.long)
    assert smooth_loss(router_log_probs(z), doc).item() == pytest.approx(0.0, abs=1e-6)
    _, lp = _logp()
    doc = torch.zeros(2, 12, dtype=torch.long)
    assert lag_loss(lp, doc, (1,)).item() == pytest.approx(smooth_loss(lp, doc).item(), rel=1e-6)


def test_lag_loss_is_mean_over_lags():
    _, lp = _logp(T=20)
    doc = torch.zeros(2, 20, dtype=torch.long)
    parts = [lag_loss(lp, doc, (d,)).item() for d in (1, 2, 4)]
    assert lag_loss(lp, doc, (1, 2, 4)).item() == pytest.approx(sum(parts) / 3, rel=1e-5)


def test_pairs_across_document_boundaries_are_masked():
    """A packed row of two documents gives each term the same value as the documents in separate rows."""
    _, lp = _logp(L=2, B=1, T=16, E=6, seed=3)
    packed_doc = torch.tensor([[0] * 8 + [1] * 8])
    split_lp = torch.cat([lp[:, :, :8], lp[:, :, 8:]], dim=1)  # (L, 2, 8, E)
    split_doc = torch.zeros(2, 8, dtype=torch.long)
    idx, split_idx = lp.topk(2, -1).indices, split_lp.topk(2, -1).indices
    assert pair_mask(packed_doc, 1).sum() == 14
    # per-sequence aggregation differs (one row vs two), so compare the pair-wise terms through their sums
    for fn in (lambda l, d: smooth_loss(l, d), lambda l, d: lag_loss(l, d, (1, 2, 4))):
        separate = fn(split_lp, split_doc)
        packed = fn(lp, packed_doc)
        assert packed.item() == pytest.approx(separate.item(), rel=1e-5)
    # reuse: ρ pools pairs within the row; crossing pairs would change it
    crossing = reuse_loss(lp, idx, torch.zeros(1, 16, dtype=torch.long))
    masked = reuse_loss(lp, idx, packed_doc)
    assert masked.item() != pytest.approx(crossing.item(), rel=1e-6)
    # windows restart at the boundary: same windows as the split rows
    assert window_entropy_loss(lp, packed_doc, 4).item() == pytest.approx(
        window_entropy_loss(split_lp, split_doc, 4).item(), rel=1e-5)


def test_padding_changes_nothing():
    _, lp = _logp(L=1, B=1, T=12)
    doc = torch.zeros(1, 12, dtype=torch.long)
    padded_doc = torch.cat([doc, torch.full((1, 4), -1)], dim=1)
    padded_lp = torch.cat([lp, router_log_probs(torch.randn(1, 1, 4, 6))], dim=2)
    idx = lp.topk(2, -1).indices
    padded_idx = padded_lp.topk(2, -1).indices
    ref = router_log_probs(torch.randn(1, 1, 12, 6))
    padded_ref = torch.cat([ref, router_log_probs(torch.randn(1, 1, 4, 6))], dim=2)
    w = LossWeights(window=5)
    _, a = remoe_loss(torch.tensor(1.0), lp, ref, idx, doc, w, 1.0)
    _, b = remoe_loss(torch.tensor(1.0), padded_lp, padded_ref, padded_idx, padded_doc, w, 1.0)
    for k in a:
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-5), k


def test_window_ids_and_doc_positions():
    doc = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, -1, -1]])
    assert doc_positions(doc).tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]]
    assert window_ids(doc, 2).tolist() == [[0, 0, 1, 1, 2, 3, 3, 4, -1, -1]]


def test_window_entropy_zero_for_identical_one_hot_and_ln_e_for_uniform():
    z = torch.full((1, 1, 8, 4), -40.0)
    z[..., 2] = 0.0
    doc = torch.zeros(1, 8, dtype=torch.long)
    assert window_entropy_loss(router_log_probs(z), doc, 4).item() == pytest.approx(0.0, abs=1e-5)
    uniform = router_log_probs(torch.zeros(1, 1, 8, 4))
    assert window_entropy_loss(uniform, doc, 4).item() == pytest.approx(math.log(4), rel=1e-5)


def test_trust_is_zero_at_reference_and_kl_direction():
    _, lp = _logp()
    doc = torch.zeros(2, 12, dtype=torch.long)
    assert trust_loss(lp, lp, doc).item() == pytest.approx(0.0, abs=1e-6)
    _, ref = _logp(seed=1)
    kl_new_ref = (lp.exp() * (lp - ref)).sum(-1).mean()
    assert trust_loss(lp, ref, doc).item() == pytest.approx(kl_new_ref.item(), rel=1e-5)


def test_trust_has_no_gradient_into_reference():
    z, lp = _logp(requires_grad=True)
    zr, ref = _logp(seed=1, requires_grad=True)
    trust_loss(lp, ref, torch.zeros(2, 12, dtype=torch.long)).backward()
    assert zr.grad is None and z.grad.abs().sum() > 0


def test_mean_over_layers_keeps_scale_independent_of_depth():
    _, lp = _logp(L=1)
    doc = torch.zeros(2, 12, dtype=torch.long)
    idx = lp.topk(2, -1).indices
    w = LossWeights()
    _, one = remoe_loss(torch.tensor(0.0), lp, lp, idx, doc, w, 1.0)
    _, three = remoe_loss(torch.tensor(0.0), lp.expand(3, -1, -1, -1), lp.expand(3, -1, -1, -1),
                          idx.expand(3, -1, -1, -1), doc, w, 1.0)
    for k in one:
        assert one[k].item() == pytest.approx(three[k].item(), rel=1e-5)


def test_total_combines_terms_with_lambdas_and_alpha():
    _, lp = _logp()
    _, ref = _logp(seed=1)
    doc = torch.zeros(2, 12, dtype=torch.long)
    idx = lp.topk(2, -1).indices
    w = LossWeights(kl=0.7, spread=2.0, reuse=0.3, smooth=0.2, lag=0.1, ws=0.05, window=4)
    ce = torch.tensor(2.5)
    total, t = remoe_loss(ce, lp, ref, idx, doc, w, 0.5)
    expected = (2.5 + 0.7 * t["trust"] + 2.0 * t["spread"]
                + 0.5 * (0.3 * t["reuse"] + 0.2 * t["smooth"] + 0.1 * t["lag"] + 0.05 * t["ws"]))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total0, t0 = remoe_loss(ce, lp, ref, idx, doc, w.ce_only(), 1.0)
    assert total0.item() == 2.5 and set(t0) == {"ce", "total"}


def test_alpha_warmup():
    w = LossWeights(warmup_steps=10)
    assert [w.alpha(s) for s in (1, 5, 10, 20)] == [0.1, 0.5, 1.0, 1.0]
    assert LossWeights(warmup_steps=0).alpha(1) == 1.0


def test_short_sequences_do_not_produce_nan():
    _, lp = _logp(T=3)
    doc = torch.tensor([[0, 1, 2], [0, 0, -1]])  # row 0 has no same-document pair at all
    idx = lp.topk(2, -1).indices
    total, terms = remoe_loss(torch.tensor(1.0), lp, lp, idx, doc, LossWeights(window=2), 1.0)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())


def test_spread_is_zero_while_the_load_is_at_least_as_spread_as_the_reference():
    doc = torch.zeros(1, 8, dtype=torch.long)
    uniform = torch.full((1, 1, 8, 4), math.log(0.25))
    peaked = router_log_probs(torch.tensor([10.0, 0.0, 0.0, 0.0]).expand(1, 1, 8, 4))
    assert load_entropy(uniform, doc).item() == pytest.approx(math.log(4))
    assert spread_loss(uniform, peaked, doc).item() == 0.0  # more spread than the original: no cost
    collapsed = spread_loss(peaked, uniform, doc).item()  # all load on expert 0, the original spread it evenly
    assert collapsed == pytest.approx((math.log(4) - load_entropy(peaked, doc).item()) / math.log(4))
    assert 0.9 < collapsed <= 1.0


def test_spread_counts_batch_load_not_per_token_sharpness():
    """Every token may pick its experts sharply (locality); only the batch's load over experts is guarded."""
    doc = torch.zeros(1, 8, dtype=torch.long)
    one_hot = torch.full((1, 1, 8, 4), -30.0)
    for t in range(8):
        one_hot[0, 0, t, t % 4] = 0.0  # each token sure of one expert, the four used equally often
    uniform = torch.full((1, 1, 8, 4), math.log(0.25))
    assert spread_loss(router_log_probs(one_hot), uniform, doc).item() == pytest.approx(0.0, abs=1e-6)


def test_spread_gradient_raises_entropy_and_skips_the_reference():
    z = torch.tensor([3.0, 0.0, 0.0, 0.0]).expand(1, 1, 8, 4).clone().requires_grad_(True)
    ref = torch.zeros(1, 1, 8, 4, requires_grad=True)
    doc = torch.zeros(1, 8, dtype=torch.long)
    spread_loss(router_log_probs(z), router_log_probs(ref), doc).backward()
    assert ref.grad is None
    assert (z.grad[..., 0] > 0).all() and (z.grad[..., 1:] < 0).all()  # descent lowers the dominant expert's logit
