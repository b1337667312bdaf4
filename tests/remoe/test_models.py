"""Adapters over tiny random models of every supported architecture (built offline from configs)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import (
    SUPPORTED_ARCHS,
    adapter_for,
    decoder_layers,
    load_model,
    save_tiny,
    tiny_model,
)

# arch -> (moe layers of the 4-layer tiny model, E, K, shared experts, scoring, renormalised top-k)
EXPECTED = {
    "deepseek_v2": ((1, 2, 3), 16, 4, 2, "softmax", False),
    "deepseek_v3": ((1, 2, 3), 16, 4, 1, "sigmoid", True),
    "qwen2_moe": ((1, 2, 3), 12, 4, 1, "softmax", False),
    "qwen3_moe": ((1, 2, 3), 16, 4, 0, "softmax", True),
    "olmoe": ((0, 1, 2, 3), 16, 4, 0, "softmax", False),
    "mixtral": ((0, 1, 2, 3), 8, 2, 0, "softmax", True),
}


@pytest.fixture(scope="module", params=SUPPORTED_ARCHS)
def arch_model(request):
    return request.param, tiny_model(request.param, seed=1)


def _route(model, layer: int, tokens: int = 12):
    """Router outputs of `layer` on random hidden states."""
    h = torch.randn(tokens, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return adapter_for(model).router(layer)(h)


def test_supported_archs_cover_the_issue():
    assert set(SUPPORTED_ARCHS) == set(EXPECTED)


def test_adapter_fields(arch_model):
    arch, model = arch_model
    ad = adapter_for(model)
    layers, E, K, shared, scoring, norm = EXPECTED[arch]
    assert (ad.model_type, ad.moe_layers, ad.num_experts, ad.top_k) == (arch, layers, E, K)
    assert (ad.num_shared_experts, ad.scoring, ad.norm_topk_prob) == (shared, scoring, norm)
    assert ad.router_param_names() == [f"model.layers.{i}.mlp.gate.weight" for i in layers]
    for i, block in enumerate(decoder_layers(model)):
        assert hasattr(block.mlp, "experts") == (i in layers)  # dense first layers are skipped
    assert ad.router_weight(layers[0]).shape == (E, model.config.hidden_size)


def test_expert_weights_and_bytes_match_the_fused_tensors(arch_model):
    _, model = arch_model
    ad = adapter_for(model)
    layer, e = ad.moe_layers[-1], ad.num_experts - 1
    experts = ad.experts(layer)
    w = ad.expert_weights(layer, e)
    H, inter = ad.hidden_size, ad.expert_intermediate_size
    assert w["gate_proj"].shape == (inter, H) and w["up_proj"].shape == (inter, H) and w["down_proj"].shape == (H, inter)
    assert ad.expert_bytes == 3 * H * inter * experts.gate_up_proj.element_size()
    # Running expert e alone with weight 1 must equal the SwiGLU built from the returned tensors.
    x = torch.randn(5, H, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = experts(x, torch.full((5, 1), e), torch.ones(5, 1))
        want = (F.silu(x @ w["gate_proj"].T) * (x @ w["up_proj"].T)) @ w["down_proj"].T
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_router_returns_topk_of_its_scoring(arch_model):
    arch, model = arch_model
    ad = adapter_for(model)
    logits, weights, idx = _route(model, ad.moe_layers[0])
    assert logits.shape == (12, ad.num_experts) and idx.shape == weights.shape == (12, ad.top_k)
    sums = weights.sum(-1)
    if arch == "deepseek_v3":  # renormalised, then scaled by routed_scaling_factor
        torch.testing.assert_close(sums, torch.full((12,), model.config.routed_scaling_factor))
    elif ad.norm_topk_prob:
        torch.testing.assert_close(sums, torch.ones(12))
    elif arch in ("qwen2_moe", "olmoe", "deepseek_v2"):
        assert (sums < 0.999).all()  # Qwen1.5-MoE-style: top-k probabilities are used as they are


def test_deepseek_v3_grouped_topk_with_correction_bias():
    model = tiny_model("deepseek_v3", seed=2)
    ad = adapter_for(model)
    gate = ad.router(ad.moe_layers[0])
    assert gate.e_score_correction_bias.abs().sum() > 0
    logits, _, idx = _route(model, ad.moe_layers[0], tokens=64)
    group_size = ad.num_experts // ad.n_group
    for row in idx:
        assert len(set((row // group_size).tolist())) <= ad.topk_group
    # Selection uses sigmoid(logits) + bias inside the chosen groups, not the raw scores.
    choice = logits.sigmoid() + gate.e_score_correction_bias
    for t in range(64):
        groups = set((idx[t] // group_size).tolist())
        allowed = torch.tensor([e // group_size in groups for e in range(ad.num_experts)])
        best = torch.topk(choice[t].masked_fill(~allowed, -1e9), ad.top_k).indices
        assert set(best.tolist()) == set(idx[t].tolist())


def test_qwen_sparse_step_and_mlp_only_layers():
    model = tiny_model("qwen3_moe", num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
    assert adapter_for(model).moe_layers == (1, 5)


def test_deepseek_first_k_dense_replace():
    model = tiny_model("deepseek_v2", first_k_dense_replace=2)
    assert adapter_for(model).moe_layers == (2, 3)


def test_unsupported_arch_lists_supported():
    with pytest.raises(TierwiseError, match="supported: deepseek_v2, deepseek_v3, qwen2_moe"):
        tiny_model("llama")
    from transformers import AutoConfig, AutoModelForCausalLM

    llama = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2)
    )
    with pytest.raises(TierwiseError, match="unsupported MoE architecture 'llama'"):
        adapter_for(llama)


def test_non_moe_layer_and_expert_index_errors():
    ad = adapter_for(tiny_model("deepseek_v2"))
    with pytest.raises(TierwiseError, match="layer 0 is not an MoE layer"):
        ad.router(0)
    with pytest.raises(TierwiseError, match="expert 16 out of range"):
        ad.expert_weights(1, 16)


def test_load_model_roundtrip(tmp_path):
    save_tiny("qwen2_moe", tmp_path / "m", seed=4)
    model, tok = load_model(tmp_path / "m")
    ref = tiny_model("qwen2_moe", seed=4)
    ids = tok("reuse the experts", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)
    assert tok.decode(ids[0]) == "reuse the experts"


def test_load_model_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TierwiseError, match="no config.json"):
        load_model(tmp_path / "empty")
    # simulate the module being absent (also when another test already imported it into the package)
    import tierwise.remoe.models

    monkeypatch.setitem(sys.modules, "tierwise.remoe.models.embedded", None)
    monkeypatch.delattr(tierwise.remoe.models, "embedded", raising=False)
    with pytest.raises(TierwiseError, match="embedded checkpoint is not available"):
        load_model("embedded")
