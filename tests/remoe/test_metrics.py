"""Routing metrics against hand-computed values and plain-Python definitions (remoe.md §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierwise.remoe.analysis import metrics
from tierwise.remoe.models.routing import DECODE, PREFILL, RoutingTrace, synthetic_trace


def make_trace(experts, request_start=(0,), phase=None, E=8):
    experts = np.asarray(experts, dtype=np.int16)
    if experts.ndim == 2:  # [tokens, K] -> one layer
        experts = experts[:, None, :]
    T, L, K = experts.shape
    meta = dict(model="hand", model_type="test", num_experts=E, top_k=K, moe_layers=list(range(L)), expert_bytes=10)
    phase = np.ones(T, np.uint8) if phase is None else np.asarray(phase, np.uint8)
    return RoutingTrace(experts, np.asarray(request_start), phase, meta)


# Two requests of one layer, K = 2. Request 0: {0,1} {1,2} {1,2} ; request 1: {1,2} {3,4}.
HAND = make_trace([[0, 1], [1, 2], [2, 1], [1, 2], [3, 4]], request_start=(0, 3))


def test_eor_by_hand():
    # pairs inside requests: 1/2, 2/2 | 0/2  -> pooled 1.5/3 = 0.5; the 2->3 boundary pair {1,2}->{1,2} is ignored
    assert metrics.eor(HAND) == pytest.approx(0.5)
    assert metrics.eor(HAND, per_request=True) == pytest.approx(((0.5 + 1.0) / 2 + 0.0) / 2)
    np.testing.assert_allclose(metrics.eor_per_layer(HAND), [0.5])


def test_eor_prefill_vs_decode():
    # one request: prefill {0,1} {0,2} ; decode {0,2} {3,4} {3,5}
    t = make_trace([[0, 1], [0, 2], [0, 2], [3, 4], [3, 5]], phase=[PREFILL, PREFILL, DECODE, DECODE, DECODE])
    assert metrics.eor(t, PREFILL) == pytest.approx(0.5)
    assert metrics.eor(t, DECODE) == pytest.approx((0 + 0.5) / 2)
    assert metrics.eor(t) == pytest.approx((0.5 + 1 + 0 + 0.5) / 4)  # all pairs, incl. the prefill->decode one
    assert math.isnan(metrics.eor(make_trace([[0, 1]])))


def test_reuse_at_horizon_by_hand():
    t = make_trace([[0, 1], [2, 3], [0, 2], [4, 5]])
    # token 1: {2,3} vs {0,1}: 0 ; token 2: {0,2} vs h=1 {2,3}: 1/2, h=2 {0,1,2,3}: 1 ; token 3: 0 always
    r = metrics.reuse_at_horizon(t, max_h=3)
    np.testing.assert_allclose(r, [(0 + 0.5 + 0) / 3, (0 + 1 + 0) / 3, (0 + 1 + 0) / 3])
    assert r[0] == pytest.approx(metrics.eor(t))


def test_working_set_by_hand():
    t = make_trace([[0, 1], [1, 2], [3, 4], [3, 4], [5, 6], [0, 1], [2, 3]], request_start=(0, 5))
    # windows of 2: req0 [0:2] {0,1,2}=3, [2:4] {3,4}=2 (token 4 left out); req1 [5:7] {0,1,2,3}=4
    np.testing.assert_allclose(metrics.working_set(t, 2), [3.0])
    assert metrics.distinct_experts_per_request(t) == pytest.approx((7 + 4) / 2)


def test_load_stats_uniform_and_skewed():
    uniform = make_trace([[0, 1], [2, 3]], E=4)
    s = metrics.load_stats(uniform)
    assert s["load_cv"][0] == pytest.approx(0) and s["entropy_norm"][0] == pytest.approx(1)
    assert s["effective_experts"][0] == pytest.approx(4) and s["max_load_share"][0] == pytest.approx(0.25)
    skewed = make_trace([[0, 1], [0, 2], [0, 3]], E=4)  # loads 3,1,1,1 of 6
    u = np.array([3, 1, 1, 1]) / 6
    s = metrics.load_stats(skewed)
    assert s["load_cv"][0] == pytest.approx(u.std() / u.mean())
    assert s["entropy_norm"][0] == pytest.approx(-(u * np.log(u)).sum() / np.log(4))
    assert s["effective_experts"][0] == pytest.approx(np.exp(-(u * np.log(u)).sum()))
    assert s["max_load_share"][0] == pytest.approx(0.5)


# -- plain-Python definitions ---------------------------------------------------------------------------------------
def sets(trace, layer):
    return [set(row.tolist()) for row in trace.experts[:, layer, :]]


def brute_eor(trace):
    req = trace.request_id()
    irs = [
        len(S[t] & S[t - 1]) / trace.top_k
        for layer in range(trace.num_layers)
        for S in [sets(trace, layer)]
        for t in range(1, trace.num_tokens)
        if req[t] == req[t - 1]
    ]
    return sum(irs) / len(irs)


def brute_segment(trace, layer, m, capacity):
    K = trace.top_k
    tp_by_v = {}
    top_sum = n = 0
    for a, b in zip(trace.request_bounds()[:-1], trace.request_bounds()[1:]):
        for s in range(a, b - m + 1):
            c = np.zeros(trace.num_experts, int)
            for t in range(s, s + m):
                c[trace.experts[t, layer]] += 1
            top_sum += sum(sorted(c, reverse=True)[:capacity])
            n += 1
            for v in range(1, m + 1):
                sel = c >= v
                tp, pred = tp_by_v.get(v, (0, 0))
                tp_by_v[v] = (tp + c[sel].sum(), pred + m * sel.sum())
    sch = top_sum / (K * m * n)
    srp = max(2 * tp / (pred + K * m * n) for tp, pred in tp_by_v.values())
    return sch, srp


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    E=st.sampled_from([8, 70, 130]),  # one, two and three bitmask words
    stickiness=st.floats(0, 0.9),
)
def test_eor_matches_set_definition(seed, E, stickiness):
    t = synthetic_trace(requests=3, tokens=9, layers=2, num_experts=E, top_k=3, stickiness=stickiness, seed=seed)
    assert metrics.eor(t) == pytest.approx(brute_eor(t))


def test_srp_sch_match_the_moe_lrc_definitions():
    t = synthetic_trace(requests=2, tokens=20, layers=2, num_experts=10, top_k=2, stickiness=0.5, seed=7)
    for m, c in [(4, 2), (8, 3)]:
        sch = metrics.sch(t, m, c)
        srp = metrics.srp(t, m)
        for layer in range(2):
            want_sch, want_srp = brute_segment(t, layer, m, c)
            assert sch[layer] == pytest.approx(want_sch) and srp[layer] == pytest.approx(want_srp)


def test_routing_metrics_bundle():
    t = synthetic_trace(requests=4, tokens=40, layers=3, num_experts=16, top_k=4, stickiness=0.6, prompt_tokens=8, seed=3)
    m = metrics.routing_metrics(t)
    assert m["eor"] == pytest.approx(brute_eor(t))
    assert 0.45 < m["eor_decode"] < 0.75  # the generator's stickiness shows up as EOR
    assert list(m["reuse_at_horizon"]) == list(range(1, 17))
    values = list(m["reuse_at_horizon"].values())
    assert values[0] == pytest.approx(m["eor"]) and all(a <= b + 1e-12 for a, b in zip(values, values[1:]))
    assert m["fetch_bound_decode"] == pytest.approx(4 * (1 - m["eor_decode"]))
    assert 1 <= m["effective_experts"] <= 16 and 0 < m["entropy_norm"] <= 1
    assert set(m["sch"][4]) == {4, 8}
