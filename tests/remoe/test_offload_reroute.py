"""Cache-aware rerouting: the cache-prior formula on crafted logits, and as a router hook in the runtime."""

from __future__ import annotations

import pytest
import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import adapter_for, tiny_model
from tierwise.remoe.offload.generate import decode, run_metrics
from tierwise.remoe.offload.reroute import Rerouter, cache_prior_topk, routing_weights
from tierwise.remoe.offload.runtime import OffloadConfig, OffloadRuntime
from tierwise.remoe.offload.workload import Request, Workload

Z = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])  # logit range 5
CACHED = torch.tensor([False, False, False, True, True, False])  # experts 3 and 4 are in the layer's cache


def _topk(lam, protect, k=2, delta=5.0):
    return set(cache_prior_topk(Z, CACHED, lam, delta, k, protect)[0].tolist())


def test_cache_prior_formula():
    assert _topk(0.0, 0) == {0, 1}  # λ = 0: the router's own top-k
    assert _topk(0.5, 0) == {0, 3}  # bonus 2.5: z' = 4, 3, 2, 3.5, 2.5, -1
    assert _topk(1.0, 0) == {3, 4}  # bonus 5: cached experts promoted past every uncached one
    assert _topk(1.0, 1) == {0, 3}  # the original top-1 is protected
    assert _topk(1.0, 2) == {0, 1}  # J = K: nothing can be displaced
    assert _topk(1.0, 0, delta=0.5) == {0, 1}  # Δ_avg scales the bonus: 0.5 is not enough
    assert _topk(1.0, 1, k=3) == {0, 3, 4}


def test_weights_are_the_models_scores_of_the_original_logits():
    index = torch.tensor([[0, 3]])
    p = Z.softmax(-1)[0]
    raw = routing_weights(Z, index, renormalise=False, scaling=2.0)
    torch.testing.assert_close(raw, torch.stack([p[0], p[3]])[None] * 2.0)
    norm = routing_weights(Z, index, renormalise=True, scaling=1.0)
    torch.testing.assert_close(norm, torch.stack([p[0], p[3]])[None] / (p[0] + p[3]))


def test_rerouter_keeps_unchanged_rows_bit_for_bit_and_tracks_the_logit_range():
    logits = torch.cat([Z, torch.tensor([[0.0, 0.0, 0.0, 0.1, 0.0, 0.0]])])  # range 5 and range 0.1
    index = torch.tensor([[1, 0], [4, 3]])
    weights = torch.tensor([[0.25, 0.75], [0.5, 0.5]])  # arbitrary: only changed rows are recomputed
    rr = Rerouter(lam=1.0, protect=1, top_k=2, renormalise=True, scaling=1.0)
    new_w, new_i, changed = rr(logits, weights, index, CACHED)
    assert rr.range_sum / rr.range_n == pytest.approx(2.55)  # Δ_avg over both tokens
    # row 0: bonus 2.55 lifts expert 3 (3.55) past expert 1 (3); row 1 already holds the cached experts {3, 4}
    assert changed == 1
    assert set(new_i[0].tolist()) == {0, 3} and torch.equal(new_i[1], index[1]) and torch.equal(new_w[1], weights[1])
    torch.testing.assert_close(new_w[0].sum(), torch.tensor(1.0))
    rr.reset()
    assert rr.range_n == 0


def _offloaded(tmp_path, arch="qwen3_moe", **cfg):
    model = tiny_model(arch)
    adapter = adapter_for(model)
    runtime = OffloadRuntime(model, OffloadConfig(store_dir=tmp_path / "store", cache_experts=adapter.top_k + 2, **cfg),
                             adapter)
    return model, adapter, runtime


PROMPT, CONTINUATION = [5, 17, 99, 3, 42, 7, 250, 31], [64, 12, 8, 77, 140, 9, 33, 201, 18, 60, 2, 91]
REPLAY = Workload("replay")


def test_rerouting_in_the_runtime_trades_misses_for_routing_changes(tmp_path):
    model, adapter, runtime = _offloaded(tmp_path)
    request = Request(0, PROMPT, CONTINUATION)
    base = decode(model, request, len(CONTINUATION), REPLAY, runtime=runtime, keep_logits=True)
    runtime.configure(reroute=1e-9, protect=0)  # a negligible bonus: the hook runs, the output is the router's own
    same = decode(model, request, len(CONTINUATION), REPLAY, runtime=runtime, keep_logits=True)
    assert all(torch.equal(a, b) for a, b in zip(base.logits, same.logits))
    runtime.configure(reroute=5.0, protect=0)
    strong = decode(model, request, len(CONTINUATION), REPLAY, runtime=runtime)
    m0, m1 = run_metrics([base], runtime, REPLAY), run_metrics([strong], runtime, REPLAY)
    assert m1["decode"]["misses"] < m0["decode"]["misses"] and m1["decode"]["rerouted_share"] > 0
    assert m0["decode"]["rerouted_share"] == 0
    runtime.configure(reroute=5.0, protect=adapter.top_k)  # J = K protects the whole original choice
    protected = decode(model, request, len(CONTINUATION), REPLAY, runtime=runtime)
    assert run_metrics([protected], runtime, REPLAY)["decode"]["misses"] == m0["decode"]["misses"]
    runtime.configure()
    assert not runtime._hooks
    runtime.close()


def test_grouped_or_sigmoid_routers_are_refused(tmp_path):
    _, _, runtime = _offloaded(tmp_path, "deepseek_v3")
    with pytest.raises(TierwiseError, match="softmax scores and plain top-k"):
        runtime.configure(reroute=0.5)
