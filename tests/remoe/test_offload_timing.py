"""The overlap timing model on hand-computed cases, and the target models' shapes against their published sizes."""

from __future__ import annotations

import pytest

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import adapter_for, tiny_model
from tierwise.remoe.offload.storage import storage_profile
from tierwise.remoe.offload.targets import PLATFORMS, TARGETS, platform, resolve_target
from tierwise.remoe.offload.timing import LayerStep, TimingModel, timing_model

# a = 1 (attention + router), e = 1 (one expert), f = 2 (one fetch), nothing outside the MoE layers
ONE = TimingModel(layers=1, other=0.0, attention=1.0, expert=1.0, fetch=2.0)
TWO = TimingModel(layers=2, other=0.0, attention=1.0, expert=1.0, fetch=2.0)


def test_fetches_overlap_compute():
    # two misses: fetched back to back from t = 1 (done 3, 5); expert 1 runs 3-4, expert 2 waits until 5, ends 6.
    # A serial charge would be a + 2f + 2e = 7.
    t = ONE.step([LayerStep(demand=2)])
    assert (t.total, t.compute, t.io, t.stall, t.backlog) == (6.0, 3.0, 4.0, 3.0, 0.0)
    # hits compute while the miss loads: two hits 1-3, the miss is ready at 3, ends 4
    assert ONE.step([LayerStep(hits=2, demand=1)]).total == 4.0
    assert ONE.step([LayerStep(hits=3)]).total == ONE.step([LayerStep(hits=3)]).compute == 4.0


def test_prefetch_hides_the_fetch_behind_the_previous_layer():
    no_prefetch = [LayerStep(hits=1), LayerStep(demand=1)]  # layer 1's miss is fetched at r = 3, ready 5: ends 6
    prefetch = [LayerStep(hits=1, prefetch=1), LayerStep(prefetched=[0])]  # fetched from r = 1, ready 3: ends 4
    assert TWO.step(no_prefetch).total == 6.0
    assert TWO.step(prefetch).total == 4.0 == TWO.step(prefetch).compute
    slow = TimingModel(layers=2, other=0.0, attention=1.0, expert=1.0, fetch=5.0)
    assert slow.step(no_prefetch).total == 9.0  # ready 8
    assert slow.step(prefetch).total == 7.0  # ready 6: the fetch hides behind 2 units of compute
    # a prefetch queues behind the layer's own misses, and the next layer's misses behind the prefetch: two wasted
    # prefetches (done 5, 7) push layer 1's miss from 5-7 to 7-9
    assert TWO.step([LayerStep(demand=1), LayerStep(demand=1)]).total == 8.0
    assert TWO.step([LayerStep(demand=1, prefetch=2), LayerStep(demand=1)]).total == 10.0


def test_backlog_carries_into_the_next_step():
    slow = TimingModel(layers=1, other=0.0, attention=1.0, expert=1.0, fetch=10.0)
    first, second = slow.steps([[LayerStep(hits=1, prefetch=1)], [LayerStep(demand=1)]])
    assert (first.total, first.backlog) == (2.0, 9.0)  # a prefetch no layer waits for is still loading
    assert second.total == 20.0  # the next miss starts when the channel frees at 9: done 19, computed 19-20


def test_measured_layers_repeat_cyclically_and_scale_to_the_target():
    model = TimingModel(layers=3, other=0.5, attention=1.0, expert=1.0, fetch=2.0, scale=2.0)
    measured = [LayerStep(demand=1), LayerStep(hits=1)]
    assert [lay.demand for lay in model.target_layers(measured)] == [1, 0, 1]
    # e' = 2, f' = 4: layer 0 r 1.5, fetch done 5.5, ends 7.5; layer 1 r 8.5, ends 10.5; layer 2 r 11.5, done 15.5
    t = model.step(measured)
    assert (t.total, t.compute, t.io) == (17.5, 9.5, 8.0)


def _total_params(t, embedding):
    return t.moe_layers * (t.layer_params + t.num_experts * t.expert_params) + t.other_params + embedding


@pytest.mark.parametrize("name, embedding, published", [
    ("dsv2-lite-bf16", 102400 * 2048, 15.7e9),
    ("qwen1.5-moe-bf16", 151936 * 2048, 14.3e9),
    ("olmoe-bf16", 50304 * 2048, 6.9e9),
    ("qwen3-30b-a3b-bf16", 151936 * 2048, 30.5e9),
    ("mixtral-8x7b-bf16", 32000 * 4096, 46.7e9),
])
def test_target_shapes_add_up_to_the_published_sizes(name, embedding, published):
    assert _total_params(TARGETS[name], embedding) == pytest.approx(published, rel=0.01)


def test_timing_model_from_target_platform_and_storage():
    dsv2, orin, ufs4 = TARGETS["dsv2-lite-bf16"], platform("jetson-orin-nx"), storage_profile("ufs4")
    model = timing_model(dsv2, orin, ufs4, measured_top_k=4)
    assert model.layers == 26 and model.scale == 1.5
    assert model.expert == pytest.approx(3 * 2048 * 1408 * 2 / 102.4e9)
    assert model.fetch == pytest.approx(100e-6 + 3 * 2048 * 1408 * 2 / 4.2e9)
    assert model.attention == pytest.approx(dsv2.layer_params * 2 / 102.4e9)
    q4 = timing_model(TARGETS["dsv2-lite-q4"], orin, ufs4, 4)
    assert q4.expert < model.expert and q4.fetch < model.fetch
    assert timing_model(dsv2, orin, storage_profile("local"), 4) is None
    assert PLATFORMS["rtx3090"].memory_bandwidth > PLATFORMS["jetson-orin-nx"].memory_bandwidth
    with pytest.raises(TierwiseError, match="unknown platform"):
        platform("abacus")


def test_own_target_is_the_measured_model():
    model = tiny_model("deepseek_v2")
    adapter = adapter_for(model)
    own = resolve_target("own", adapter, model)
    assert (own.moe_layers, own.top_k, own.expert_bytes) == (len(adapter.moe_layers), adapter.top_k, adapter.expert_bytes)
    routed = sum(adapter.experts(layer).gate_up_proj.numel() + adapter.experts(layer).down_proj.numel()
                 for layer in adapter.moe_layers)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    assert _total_params(own, embedding) == total  # every weight counted once (the tiny model's head is untied)
    assert routed == own.moe_layers * own.num_experts * own.expert_params
    sized = resolve_target("2MB", adapter, model)
    assert sized.expert_bytes == 2_000_000 and sized.moe_layers == own.moe_layers
    with pytest.raises(TierwiseError, match="target expert size"):
        resolve_target("huge", adapter, model)
