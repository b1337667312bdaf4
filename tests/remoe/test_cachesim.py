"""Expert-cache policies and the trace simulator: per-step semantics, fast path == classes, the fetch bound,
and equality with libCacheSim on the same request stream."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierwise.common.errors import TierwiseError
from tierwise.remoe.analysis import metrics
from tierwise.remoe.analysis.cachesim import (
    POLICIES,
    BeladyPolicy,
    CacheConfig,
    LFRUPolicy,
    LFUPolicy,
    FIFOPolicy,
    LRUPolicy,
    layer_counts,
    make_policy,
    simulate,
    single_request_stream,
    step_stream,
    sweep,
)
from tierwise.remoe.models.routing import DECODE, synthetic_trace


# -- the per-step semantics, by hand ------------------------------------------------------------------------------
def test_lru_step_refreshes_hits_before_evicting():
    c = LRUPolicy(3, 8)
    assert c.access([0, 1, 2]).misses == [0, 1, 2]
    # 0 is the LRU expert but requested in this step: it is a hit, refreshed first; 3 then evicts 1 (now the LRU).
    r = c.access([3, 0])
    assert (r.hits, r.misses, r.evicted) == ([0], [3], [1])
    assert c.resident() == [0, 2, 3] and 2 in c and len(c) == 3


def test_victim_is_never_requested_in_the_same_step():
    c = FIFOPolicy(2, 8)
    c.access([0])
    c.access([1])
    r = c.access([0, 2])  # FIFO would evict 0 (oldest), but 0 is requested now: 1 goes instead
    assert (r.hits, r.misses, r.evicted) == ([0], [2], [1])


def test_lfu_lfru_belady_victims():
    lfu = LFUPolicy(2, 8)
    for step in ([0], [0], [1], [2]):  # 2 evicts 1 (1 use) rather than 0 (2 uses)
        r = lfu.access(step)
    assert r.evicted == [1]
    lfru = LFRUPolicy(2, 8, half_life=1.0)  # uses halve every step: recency dominates
    for step in ([0], [0], [0], [1], [1], [1], [2]):
        r = lfru.access(step)
    assert r.evicted == [0]  # 0: 1/8+1/16+1/32 < 1: 1/2+1/4+1
    future = [[0], [1], [2], [0], [1]]
    opt = BeladyPolicy(2, 8, future=future)
    evicted = [opt.access(s).evicted for s in future]
    # step 2: 1 is needed later than 0; step 4: neither 0 nor 2 is needed again, the tie goes to the LRU one (2)
    assert evicted == [[], [], [1], [], [2]]


def test_oversized_step_keeps_the_first_capacity_experts():
    c = LRUPolicy(2, 8)
    c.access([5])
    r = c.access([1, 5, 2, 3])
    assert (r.hits, r.misses) == ([5], [1, 2, 3]) and c.resident() == [1, 5]


def test_policy_errors():
    with pytest.raises(TierwiseError, match="capacity must be >= 1"):
        LRUPolicy(0, 8)
    with pytest.raises(TierwiseError, match="unknown cache policy 'arc'"):
        make_policy("arc", 2, 8)
    with pytest.raises(TierwiseError, match="outside 0..7"):
        LRUPolicy(2, 8).access([8])
    opt = BeladyPolicy(2, 8, future=[[0], [1]])
    opt.access([0])
    with pytest.raises(TierwiseError, match="differs from the future"):
        opt.access([2])
    with pytest.raises(TierwiseError, match="prefill must be"):
        step_stream(synthetic_trace(requests=1, tokens=3, layers=1, num_experts=4, top_k=2), prefill="maybe")


# -- fast path == policy classes --------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    policy=st.sampled_from(POLICIES),
    capacity=st.integers(1, 12),
    cold=st.booleans(),
    prefill=st.sampled_from(["exclude", "include"]),
    stickiness=st.floats(0, 0.9),
)
def test_numba_kernel_equals_policy_classes(seed, policy, capacity, cold, prefill, stickiness):
    t = synthetic_trace(requests=3, tokens=12, layers=2, num_experts=12, top_k=3, stickiness=stickiness,
                        prompt_tokens=4, seed=seed)
    cfg = CacheConfig(capacity, policy, cold=cold, prefill=prefill, lfru_half_life=3.0)
    assert simulate(t, cfg) == simulate(t, cfg, reference=True)


def test_prefill_include_orders_by_router_mass():
    t = synthetic_trace(requests=2, tokens=10, layers=1, num_experts=8, top_k=2, prompt_tokens=5, seed=1)
    t.prefill_mass = np.tile(np.arange(8, dtype=np.float32)[None, None, :], (2, 1, 1))  # expert 7 heaviest
    stream = step_stream(t, prefill="include")
    first = stream.flat[0][stream.ptr[0][0] : stream.ptr[0][1]]
    assert list(first) == sorted(set(t.experts[:5, 0].ravel().tolist()), reverse=True)
    assert stream.tokens[0] == 5 and stream.phase[0] == 0 and stream.first.sum() == 2


# -- results and the bound ------------------------------------------------------------------------------------------
def test_fetch_bound_lru_equality_at_c_equals_k():
    t = synthetic_trace(requests=5, tokens=60, layers=3, num_experts=16, top_k=4, stickiness=0.5, prompt_tokens=10, seed=4)
    bound = 4 * (1 - metrics.eor(t, DECODE))
    results = sweep(t, ["lru"], [4, 6, 8, 16])["lru"]
    assert results[4].steady_misses_per_token_per_layer == pytest.approx(bound)
    fetches = [results[c].steady_misses_per_token_per_layer for c in (4, 6, 8, 16)]
    assert all(f <= bound + 1e-12 for f in fetches) and fetches == sorted(fetches, reverse=True)
    # identity of remoe.md §5.2: with C = K, uHR@K = EOR (T-1)/T summed over requests
    decode_tokens = 50
    assert results[4].unique_hit_rate == pytest.approx(metrics.eor(t, DECODE) * (decode_tokens - 1) / decode_tokens)


def test_result_fields():
    t = synthetic_trace(requests=2, tokens=20, layers=2, num_experts=8, top_k=2, prompt_tokens=5, expert_bytes=1000, seed=2)
    r = simulate(t, CacheConfig(3, "lru", prefill="include"))
    assert r.tokens == 40 and r.requests == 40 * 2 * 2 and r.unique_requests == r.hits + r.misses
    assert r.bytes_fetched == r.misses * 1000
    assert r.hit_rate == pytest.approx(1 - r.misses / r.requests) and r.hit_rate > r.unique_hit_rate  # prefill shares fetches
    d = simulate(t, CacheConfig(3, "lru"))  # decode only: per-request and unique hit rates coincide
    assert d.tokens == 30 and d.hit_rate == pytest.approx(d.unique_hit_rate)
    assert d.misses_per_token_per_layer == pytest.approx(d.misses / (30 * 2))
    assert set(d.to_dict()) >= {"hit_rate", "unique_hit_rate", "misses_per_token_per_layer", "bytes_fetched"}
    warm = simulate(t, CacheConfig(3, "lru", cold=False))
    assert warm.misses <= d.misses


# -- libCacheSim on the same request stream ---------------------------------------------------------------------------
def libcachesim_misses(requests: np.ndarray, policy: str, capacity: int) -> int:
    import libcachesim as lcs

    cache = {"lru": lcs.LRU, "fifo": lcs.FIFO, "belady": lcs.Belady}[policy](capacity)
    never = np.iinfo(np.int64).max
    nxt = np.full(len(requests), never, dtype=np.int64)  # Belady needs each request's next access time
    seen: dict[int, int] = {}
    for i in range(len(requests) - 1, -1, -1):
        nxt[i] = seen.get(int(requests[i]), never)
        seen[int(requests[i])] = i
    misses = 0
    for i, e in enumerate(requests.tolist()):
        req = lcs.Request()
        req.obj_id, req.obj_size, req.clock_time, req.next_access_vtime = e, 1, i, int(nxt[i])
        misses += not cache.get(req)
    return misses


@pytest.mark.parametrize("policy", ["lru", "fifo", "belady"])
def test_miss_counts_equal_libcachesim(policy):
    t = synthetic_trace(requests=4, tokens=150, layers=2, num_experts=32, top_k=4, stickiness=0.4, zipf=0.8, seed=5)
    for layer in range(t.num_layers):
        requests = t.experts[:, layer, :].ravel()  # token-major, router slot order: one request per access
        stream = single_request_stream(requests)
        for capacity in (4, 8, 16):
            _, misses = layer_counts(stream, 0, CacheConfig(capacity, policy, cold=False), t.num_experts)
            assert misses.sum() == libcachesim_misses(requests, policy, capacity), (layer, capacity)
