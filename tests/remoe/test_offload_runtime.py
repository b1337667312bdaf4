"""The offloading runtime: same greedy tokens as the resident model on every arch, real reads, cachesim semantics."""

from __future__ import annotations

import pytest
import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.analysis.cachesim import CacheConfig, simulate
from tierwise.remoe.models.adapters import SUPPORTED_ARCHS, adapter_for, tiny_model
from tierwise.remoe.offload.cache import ExpertCache
from tierwise.remoe.offload.generate import greedy_generate, run_metrics
from tierwise.remoe.offload.runtime import OffloadConfig, OffloadRuntime
from tierwise.remoe.models.routing import capture_generation

PROMPT = [5, 17, 99, 3, 42, 7, 250, 31, 64, 12, 8, 77]


def _offloaded(arch, tmp_path, **cfg):
    model = tiny_model(arch)
    adapter = adapter_for(model)
    cfg.setdefault("cache_experts", adapter.top_k)
    runtime = OffloadRuntime(model, OffloadConfig(store_dir=tmp_path / "store", **cfg), adapter)
    return model, adapter, runtime


def _routed_numel(model, adapter):
    return sum(p.numel() for layer in adapter.moe_layers for p in adapter.experts(layer).parameters())


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_offloaded_decoding_equals_resident(arch, tmp_path):
    resident = tiny_model(arch)
    ref = greedy_generate(resident, PROMPT, 10, keep_logits=True)
    model, adapter, runtime = _offloaded(arch, tmp_path)
    n_before = sum(p.numel() for p in resident.parameters())
    # Only the routed experts left memory: E - C experts per MoE layer.
    per_expert = _routed_numel(resident, adapter_for(resident)) // (len(adapter.moe_layers) * adapter.num_experts)
    removed = len(adapter.moe_layers) * (adapter.num_experts - adapter.top_k) * per_expert
    assert sum(p.numel() for p in model.parameters()) == n_before - removed
    got = greedy_generate(model, PROMPT, 10, runtime=runtime, keep_logits=True)
    assert got.tokens == ref.tokens
    for a, b in zip(ref.logits, got.logits):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert all(n <= adapter.top_k for n in runtime.resident_experts().values())
    misses = sum(s.misses for s in got.steps)
    assert misses > 0 and runtime.store.reads == misses  # every miss is a real read (prefill: > C experts)
    runtime.close()


@pytest.mark.parametrize("policy", ["lfu", "fifo", "lfru"])
def test_other_policies_keep_tokens(policy, tmp_path):
    ref = greedy_generate(tiny_model("olmoe"), PROMPT, 8)
    model, _, runtime = _offloaded("olmoe", tmp_path, cache_experts=6, policy=policy)
    assert greedy_generate(model, PROMPT, 8, runtime=runtime).tokens == ref.tokens
    assert runtime.layers[0].cache.name == policy


def test_measured_hits_equal_cachesim(tmp_path):
    """One-token prompts make every call one step of the simulator: measured and simulated counts agree exactly."""
    prompts = [[11], [200], [42]]
    trace = capture_generation(tiny_model("deepseek_v2"), prompts, model_name="tiny", max_new_tokens=12)
    model, _, runtime = _offloaded("deepseek_v2", tmp_path, cache_experts=6)
    for policy in ("lru", "lfu", "lfru"):
        for layer in runtime.layers.values():
            layer.cache = ExpertCache(layer.num_experts, 6, policy)
        sim = simulate(trace, CacheConfig(6, policy, cold=True, prefill="include"))
        gens = [greedy_generate(model, p, 12, runtime=runtime) for p in prompts]
        hits = sum(s.hits for g in gens for s in g.steps)
        misses = sum(s.misses for g in gens for s in g.steps)
        assert (hits, misses) == (sim.hits, sim.misses), policy


def test_metrics_and_modelled_time(tmp_path):
    model, adapter, runtime = _offloaded("qwen3_moe", tmp_path, storage="ufs4", target="dsv2-lite-bf16")
    gens = [greedy_generate(model, PROMPT[:n], 6, runtime=runtime) for n in (3, 7)]
    m = run_metrics(gens, runtime)
    misses = m["prefill"]["misses"] + m["decode"]["misses"]
    assert misses == sum(lo["misses"] for lo in m["per_layer"])
    assert m["bytes_read"] == misses * runtime.store.record_stride
    assert m["modelled_bytes"] == misses * 3 * 2048 * 1408 * 2
    # the timing model replays the decode steps on DeepSeek-V2-Lite: 26 layers from these 3, K 6 for these 4
    timing = runtime.timing
    assert (timing.layers, timing.scale) == (26, 6 / 4) and runtime.platform.name == "jetson-orin-nx"
    assert timing.fetch == pytest.approx(100e-6 + 3 * 2048 * 1408 * 2 / 4.2e9)
    steps = [[s.layers[layer] for layer in runtime.layers] for g in gens for s in g.steps[1:]]
    assert all(sum(lay.needed for lay in step) == len(runtime.layers) * adapter.top_k for step in steps)
    serial = sum(timing.step(step).io for step in steps)
    fetches_in_target = sum(timing.target_layers(step)[j].demand for step in steps for j in range(26))
    assert serial == pytest.approx(fetches_in_target * 1.5 * timing.fetch)
    assert m["time_s"]["modelled_io_serial"] == pytest.approx(serial)
    tpot = m["tpot_ms"]
    assert tpot["total"] == tpot["modelled"]  # the storage is modelled, not in the wall clock
    assert tpot["modelled"]["mean"] >= tpot["modelled_compute"]["mean"] > 0 and tpot["total"]["p90"] >= tpot["total"]["median"]
    assert m["decode"]["misses_per_token"] == pytest.approx(m["decode"]["misses"] / 10)
    assert m["output_tokens"] == 12 and 0.0 <= m["decode"]["hit_rate"] <= 1.0


def test_all_resident_cache_never_reads_after_warmup(tmp_path):
    model, adapter, runtime = _offloaded("mixtral", tmp_path, cache_experts=8)
    runtime.reset()
    runtime.cache_all()
    reads = runtime.store.reads
    assert reads == len(adapter.moe_layers) * adapter.num_experts
    with torch.inference_mode():
        model(torch.tensor([PROMPT]))
    assert runtime.store.reads == reads


def test_bad_configuration_is_reported(tmp_path):
    model = tiny_model("qwen2_moe")
    with pytest.raises(TierwiseError, match="between K=4 and E=12"):
        OffloadRuntime(model, OffloadConfig(cache_experts=2, store_dir=tmp_path))
    with pytest.raises(TierwiseError, match="policy"):
        OffloadRuntime(model, OffloadConfig(cache_experts=4, policy="belady", store_dir=tmp_path))
    with pytest.raises(TierwiseError, match="storage profile"):
        OffloadRuntime(tiny_model("qwen2_moe"), OffloadConfig(cache_experts=4, storage="tape", store_dir=tmp_path))


def test_warm_prefill_stages_evicted_hits_before_their_rows_are_reused(tmp_path):
    """A prefill needing more than C experts on a warm cache evicts some experts it also uses: they must be copied
    to staging rows before a miss is read into their row."""
    resident = tiny_model("mixtral")
    with torch.inference_mode():
        ref = resident(torch.tensor([PROMPT])).logits
    model, adapter, runtime = _offloaded("mixtral", tmp_path, cache_experts=3)
    runtime.reset()
    runtime.cache_all()  # experts 0, 1, 2 resident in every layer; the prompt needs most of the 8
    with torch.inference_mode():
        got = model(torch.tensor([PROMPT])).logits
    step = runtime.take_step()
    assert step.hits > 0 and step.misses > 0
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
