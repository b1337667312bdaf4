"""HF MoE -> GGUF export read back with gguf's reader; router patching; opt-in llama.cpp greedy equality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.export.delta import apply_router_delta, load_router_delta, save_router_delta
from tierwise.remoe.export.gguf import GGUF_ARCHS, LITE_LAYERS, PADDING_KEY, export_gguf, patch_router, read_gguf
from tierwise.remoe.models.adapters import SUPPORTED_ARCHS, adapter_for, tiny_model, tiny_tokenizer

# What llama.cpp's graphs can hold: qwen2moe/qwen3moe have MoE in every layer, olmoe has no grouped-query attention.
LLAMA_CPP_SHAPES = {"qwen2_moe": {"mlp_only_layers": []}, "qwen3_moe": {"mlp_only_layers": []},
                    "olmoe": {"num_key_value_heads": 4}}


def _export(arch, path, **kw):
    model = tiny_model(arch, **LLAMA_CPP_SHAPES.get(arch, {}), **kw)
    return model, export_gguf(model, tiny_tokenizer(), path)


def _field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_export_reads_back(arch, tmp_path):
    model, path = _export(arch, tmp_path / f"{arch}.gguf")
    adapter = adapter_for(model)
    reader = read_gguf(path)
    name = GGUF_ARCHS[arch].name
    assert _field(reader, "general.architecture") == name
    assert _field(reader, f"{name}.expert_count") == adapter.num_experts
    assert _field(reader, f"{name}.expert_used_count") == adapter.top_k
    padding = _field(reader, PADDING_KEY) if PADDING_KEY in reader.fields else 0
    assert padding == (LITE_LAYERS - model.config.num_hidden_layers if arch == "deepseek_v2" else 0)
    assert _field(reader, f"{name}.block_count") == model.config.num_hidden_layers + padding
    assert len(_field(reader, "tokenizer.ggml.tokens")) == model.config.vocab_size
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    for layer in adapter.moe_layers:
        np.testing.assert_array_equal(tensors[f"blk.{layer}.ffn_gate_inp.weight"], adapter.router_weight(layer).detach().numpy())
        w = adapter.expert_weights(layer, 1)
        np.testing.assert_array_equal(tensors[f"blk.{layer}.ffn_gate_exps.weight"][1], w["gate_proj"].detach().numpy())
        np.testing.assert_array_equal(tensors[f"blk.{layer}.ffn_up_exps.weight"][1], w["up_proj"].detach().numpy())
        np.testing.assert_array_equal(tensors[f"blk.{layer}.ffn_down_exps.weight"][1], w["down_proj"].detach().numpy())
    np.testing.assert_array_equal(tensors["token_embd.weight"], model.model.embed_tokens.weight.detach().numpy())


def test_shapes_llama_cpp_cannot_hold_are_refused(tmp_path):
    with pytest.raises(TierwiseError, match="dense"):
        export_gguf(tiny_model("qwen2_moe"), tiny_tokenizer(), tmp_path / "x.gguf")
    with pytest.raises(TierwiseError, match="grouped-query"):
        export_gguf(tiny_model("olmoe"), tiny_tokenizer(), tmp_path / "x.gguf")


def test_padding_blocks_are_all_zero(tmp_path):
    """deepseek2 without q_lora is padded to DeepSeek-V2-Lite's layer count with blocks that add exactly nothing."""
    model, path = _export("deepseek_v2", tmp_path / "m.gguf")
    n = model.config.num_hidden_layers
    padded = [t for t in read_gguf(path).tensors if int(t.name.split(".")[1] if t.name.startswith("blk.") else -1) >= n]
    assert len({t.name.split(".")[1] for t in padded}) == LITE_LAYERS - n
    assert all(not np.asarray(t.data).any() for t in padded)


def test_patch_router_replaces_only_the_gates(tmp_path):
    model, path = _export("deepseek_v2", tmp_path / "base.gguf")
    adapter = adapter_for(model)
    with torch.no_grad():
        for layer in adapter.moe_layers:
            adapter.router_weight(layer).mul_(-2.0)
    delta = load_router_delta(save_router_delta(model, tmp_path / "router.safetensors"))
    out = patch_router(path, delta, tmp_path / "patched.gguf")
    base, patched = read_gguf(path), read_gguf(out)
    assert [t.name for t in base.tensors] == [t.name for t in patched.tensors]
    for a, b in zip(base.tensors, patched.tensors):
        if a.name.endswith("ffn_gate_inp.weight") and int(a.name.split(".")[1]) in adapter.moe_layers:
            layer = int(a.name.split(".")[1])
            np.testing.assert_array_equal(np.asarray(b.data), adapter.router_weight(layer).detach().numpy())
            assert not np.array_equal(np.asarray(a.data), np.asarray(b.data))
        else:
            assert np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), a.name
    assert {k: f.contents() for k, f in base.fields.items()} == {k: f.contents() for k, f in patched.fields.items()}


def test_patch_router_errors(tmp_path):
    _, path = _export("olmoe", tmp_path / "olmoe.gguf")
    delta = save_router_delta(tiny_model("deepseek_v2"), tmp_path / "dsv2_router.safetensors")  # layers 1..3 only
    with pytest.raises(TierwiseError, match="router delta covers"):
        patch_router(path, delta, tmp_path / "out.gguf")
    narrow = save_router_delta(tiny_model("mixtral"), tmp_path / "mixtral_router.safetensors")  # E = 8, not 16
    with pytest.raises(TierwiseError, match="differs"):
        patch_router(path, narrow, tmp_path / "out.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(TierwiseError, match="not a readable GGUF"):
        patch_router(junk, delta, tmp_path / "out.gguf")


def _llama_cpp_greedy(path, prompt, n):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False, logits_all=True)
    got = []
    llm.eval(prompt)
    for _ in range(n):
        got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([got[-1]])
    return got


def _hf_greedy(model, prompt, n):
    return model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()


PROMPT = [5, 17, 99, 3, 42, 7, 250, 31]


@pytest.mark.optin
@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_llama_cpp_greedy_matches_transformers(arch, tmp_path):
    pytest.importorskip("llama_cpp")
    model, path = _export(arch, tmp_path / f"{arch}.gguf")
    assert _llama_cpp_greedy(path, PROMPT, 12) == _hf_greedy(model, PROMPT, 12)


@pytest.mark.optin
def test_llama_cpp_runs_the_patched_router(tmp_path):
    pytest.importorskip("llama_cpp")
    model, path = _export("deepseek_v2", tmp_path / "base.gguf")
    with torch.no_grad():
        for layer in adapter_for(model).moe_layers:
            adapter_for(model).router_weight(layer).copy_(torch.randn_like(adapter_for(model).router_weight(layer)))
    patched = patch_router(path, save_router_delta(model, tmp_path / "router.safetensors"), tmp_path / "patched.gguf")
    assert _llama_cpp_greedy(patched, PROMPT, 12) == _hf_greedy(model, PROMPT, 12)


def test_cli_export_and_patch(tmp_path):
    from typer.testing import CliRunner

    from tierwise.cli import app
    from tierwise.remoe.models.adapters import save_tiny

    ckpt = save_tiny("deepseek_v2", tmp_path / "ckpt")
    model = tiny_model("deepseek_v2", seed=3)
    delta = save_router_delta(model, tmp_path / "router.safetensors")
    runner = CliRunner()
    r = runner.invoke(app, ["remoe", "export-gguf", str(ckpt), "--out", str(tmp_path / "m.gguf")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["remoe", "patch-gguf", str(tmp_path / "m.gguf"), str(delta), str(tmp_path / "p.gguf")])
    assert r.exit_code == 0, r.output
    gates = {t.name: np.asarray(t.data) for t in read_gguf(tmp_path / "p.gguf").tensors if "ffn_gate_inp" in t.name}
    for layer in adapter_for(model).moe_layers:
        np.testing.assert_array_equal(gates[f"blk.{layer}.ffn_gate_inp.weight"], adapter_for(model).router_weight(layer).detach().numpy())


def test_import_router_round_trips_through_export(tmp_path):
    """export-gguf with a fine-tuned router, then import-gguf-router: the delta holds exactly those gates."""
    from tierwise.remoe.export.gguf import import_router
    from tierwise.remoe.models.adapters import save_tiny

    ckpt = save_tiny("deepseek_v2", tmp_path / "ckpt")
    tuned = tiny_model("deepseek_v2", seed=7)  # same shapes, other gates: stands in for a fine-tuned router
    path = export_gguf(tuned, tiny_tokenizer(), tmp_path / "tuned.gguf")  # padded to 27 blocks with zero routers
    delta = load_router_delta(import_router(path, ckpt, tmp_path / "router.safetensors"))
    adapter = adapter_for(tuned)
    assert sorted(delta.by_layer()) == list(adapter.moe_layers)
    for layer, gate in delta.by_layer().items():
        assert torch.equal(gate, adapter.router_weight(layer).detach())
    base = tiny_model("deepseek_v2")
    assert not torch.equal(base.model.layers[1].mlp.gate.weight, adapter.router_weight(1))
    apply_router_delta(base, delta)  # the delta applies to the checkpoint it was imported for
    assert torch.equal(base.model.layers[1].mlp.gate.weight, adapter.router_weight(1))


def test_import_router_refuses_a_mismatched_file(tmp_path):
    from tierwise.remoe.export.gguf import import_router
    from tierwise.remoe.models.adapters import save_tiny

    _, olmoe_gguf = _export("olmoe", tmp_path / "olmoe.gguf")
    with pytest.raises(TierwiseError, match="olmoe"):
        import_router(olmoe_gguf, save_tiny("deepseek_v2", tmp_path / "dsv2"), tmp_path / "r.safetensors")
    wide = save_tiny("deepseek_v2", tmp_path / "wide", n_routed_experts=8)
    _, path = _export("deepseek_v2", tmp_path / "m.gguf")
    with pytest.raises(TierwiseError, match="expert_count"):
        import_router(path, wide, tmp_path / "r.safetensors")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 40)
    with pytest.raises(TierwiseError, match="not a readable GGUF"):
        import_router(junk, tmp_path / "dsv2", tmp_path / "r.safetensors")


def test_cli_import_gguf_router(tmp_path):
    from typer.testing import CliRunner

    from tierwise.cli import app
    from tierwise.remoe.models.adapters import save_tiny

    ckpt = save_tiny("deepseek_v2", tmp_path / "ckpt")
    _, path = _export("deepseek_v2", tmp_path / "m.gguf")
    out = tmp_path / "router.safetensors"
    runner = CliRunner()
    r = runner.invoke(app, ["remoe", "import-gguf-router", str(path), str(ckpt), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file()
    r = runner.invoke(app, ["remoe", "import-gguf-router", str(path), str(ckpt), "--out", str(out)])
    assert isinstance(r.exception, TierwiseError) and "exists" in str(r.exception)
