"""Speculative next-layer prefetch: cache bookkeeping, prediction precision/recall, waste, timing events."""

from __future__ import annotations

import pytest
import torch

from tierwise.remoe.models.adapters import adapter_for, tiny_model
from tierwise.remoe.offload.cache import ExpertCache
from tierwise.remoe.offload.generate import decode, run_metrics
from tierwise.remoe.offload.runtime import OffloadConfig, OffloadRuntime
from tierwise.remoe.offload.workload import Request, Workload

PROMPT = [5, 17, 99, 3, 42, 7, 250, 31]
CONTINUATION = [64, 12, 8, 77, 140, 9, 33, 201, 18, 60]
REPLAY = Workload("replay")


def test_cache_prefetch_inserts_ahead_of_use_and_counts_waste():
    cache = ExpertCache(8, 3, "lru")
    cache.access([0, 1, 2])
    step = cache.prefetch([5, 2, 6])  # 2 is resident: only 5 and 6 load, evicting the least recent (0, 1)
    assert list(step.inserted) == [5, 6] and sorted(step.evicted) == [0, 1]
    assert cache.unused_prefetch == {5, 6} and cache.policy.resident() == [2, 5, 6]
    used = cache.access([5, 2])  # 5 is a hit loaded by the prefetch: its first use
    assert used.hits == [5, 2] and used.prefetch_used == [5] and cache.unused_prefetch == {6}
    wasted = cache.access([3])  # LRU evicts 6, prefetched and never used
    assert wasted.evicted == {6: step.inserted[6]} and wasted.prefetch_wasted == 1 and not cache.unused_prefetch
    cache.prefetch([7])
    assert cache.reset() == 1  # a prefetched expert dropped unused at the end of a request is waste too
    assert len(cache.prefetch(list(range(8))).inserted) == 3  # never more than C


def _offloaded(tmp_path, arch="deepseek_v2", **cfg):
    model = tiny_model(arch)
    adapter = adapter_for(model)
    runtime = OffloadRuntime(model, OffloadConfig(store_dir=tmp_path / "store", **cfg), adapter)
    return model, adapter, runtime


def test_precision_and_recall_count_what_the_next_gate_predicts(tmp_path):
    """Independently of the runtime: record every router's input and choice, apply layer l+1's gate to layer l's
    input, and count the top-N predictions the next layer really selected."""
    model, adapter, runtime = _offloaded(tmp_path, cache_experts=6)
    n = 3
    runtime.configure(prefetch=n)
    seen: dict[int, list] = {layer: [] for layer in adapter.moe_layers}
    hooks = [adapter.router(layer).register_forward_hook(
        lambda mod, inp, out, layer=layer: seen[layer].append((inp[0].reshape(-1, inp[0].shape[-1]).clone(), out[2])))
        for layer in adapter.moe_layers]
    gen = decode(model, Request(0, PROMPT, CONTINUATION), len(CONTINUATION), REPLAY, runtime=runtime)
    for h in hooks:
        h.remove()
    predicted = correct = actual = 0
    layers = adapter.moe_layers
    for this, nxt in zip(layers, layers[1:]):
        w_next = adapter.router_weight(nxt).detach().float()
        for (h, _), (_, chosen) in zip(seen[this][1:], seen[nxt][1:]):  # decode calls only
            guess = set((h.float() @ w_next.T)[0].topk(n).indices.tolist())
            predicted += n
            correct += len(guess & set(chosen[0].tolist()))
            actual += adapter.top_k
    m = run_metrics([gen], runtime, REPLAY)["prefetch"]
    assert (m["predicted"], m["correct"]) == (predicted, correct)
    assert m["precision"] == pytest.approx(correct / predicted) and m["recall"] == pytest.approx(correct / actual)
    assert 0 < m["used"] + m["wasted"] <= m["loads"] and m["wasted_bytes"] == m["wasted"] * runtime.target_bytes
    # every load is accounted for: used, wasted, or still resident unused until the end (counted as wasted)
    assert m["used"] + m["wasted"] == m["loads"]


def test_prefetch_keeps_the_outputs_and_records_the_prefetched_positions(tmp_path):
    ref = decode(tiny_model("qwen3_moe"), Request(0, PROMPT, CONTINUATION), 8, REPLAY, keep_logits=True)
    model, adapter, runtime = _offloaded(tmp_path, "qwen3_moe", cache_experts=6, storage="ufs4")
    runtime.configure(prefetch=adapter.top_k)
    got = decode(model, Request(0, PROMPT, CONTINUATION), 8, REPLAY, runtime=runtime, keep_logits=True)
    for a, b in zip(ref.logits, got.logits):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    first, *rest = adapter.moe_layers
    loads = sum(s.prefetch_loads for s in got.steps)
    issued = sum(s.layers[layer].prefetch for s in got.steps[1:] for layer in adapter.moe_layers)
    assert loads == issued > 0
    assert all(s.layers[adapter.moe_layers[-1]].prefetch == 0 for s in got.steps[1:])  # no layer after the last
    assert all(not s.layers[first].prefetched for s in got.steps[1:])  # nothing prefetches into the first layer
    used_now = [(s.layers[prev].prefetch, s.layers[layer].prefetched) for s in got.steps[1:]
                for prev, layer in zip(adapter.moe_layers, rest)]
    assert any(p for _, p in used_now)
    assert all(len(p) <= n and all(0 <= i < n for i in p) for n, p in used_now)
    # hits + demand misses + experts prefetched this step = the K experts each layer needed
    assert all(s.layers[layer].needed == adapter.top_k for s in got.steps[1:] for layer in adapter.moe_layers)
    assert runtime.store.reads == sum(s.misses + s.prefetch_loads for s in got.steps)


def test_bad_prefetch_and_reroute_values(tmp_path):
    from tierwise.common.errors import TierwiseError

    _, adapter, runtime = _offloaded(tmp_path, cache_experts=6)
    with pytest.raises(TierwiseError, match="--prefetch must be between 0 and C=6"):
        runtime.configure(prefetch=-1)
    with pytest.raises(TierwiseError, match="--prefetch must be between 0 and C=6"):
        runtime.configure(prefetch=7)
    with pytest.raises(TierwiseError, match="--reroute must be >= 0"):
        runtime.configure(reroute=-0.5)
    with pytest.raises(TierwiseError, match="--protect must be between 0 and K=4"):
        runtime.configure(reroute=0.5, protect=5)
