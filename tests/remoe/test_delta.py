"""Router-only deltas: round trip, apply, checks against the target model, corrupt files, apply-router (stored
dtypes and renamed checkpoint keys kept)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.errors import TierwiseError
from tierwise.remoe.export.delta import (apply_router_delta, load_router_delta, router_state, save_router_delta,
                                         write_patched_checkpoint)
from tierwise.remoe.models.adapters import adapter_for, checkpoint_dir, load_model, save_tiny, tiny_model


def _perturb_gates(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in adapter_for(model).moe_layers:
            w = adapter_for(model).router_weight(i)
            w.add_(torch.randn(w.shape, generator=g))
    return model


@pytest.mark.parametrize("arch", ["deepseek_v2", "qwen2_moe"])
def test_round_trip_holds_only_gates_and_applies_exactly(tmp_path, arch):
    tuned = _perturb_gates(tiny_model(arch))
    path = save_router_delta(tuned, tmp_path / "d.safetensors", base_model="tiny")
    delta = load_router_delta(path)
    adapter = adapter_for(tuned)
    assert set(delta.tensors) == set(adapter.router_param_names())
    assert sorted(delta.by_layer()) == list(adapter.moe_layers)
    assert delta.meta["base_model"] == "tiny" and delta.meta["top_k"] == adapter.top_k
    base = tiny_model(arch)
    other = {n: p.clone() for n, p in base.named_parameters() if n not in delta.tensors}
    apply_router_delta(base, path)
    assert all(torch.equal(router_state(base)[n], t) for n, t in delta.tensors.items())
    assert all(torch.equal(p, other[n]) for n, p in base.named_parameters() if n in other)


def test_wrong_model_is_refused_without_changes(tmp_path):
    path = save_router_delta(tiny_model("deepseek_v2"), tmp_path / "d.safetensors")
    target = tiny_model("olmoe")
    before = router_state(target)
    with pytest.raises(TierwiseError, match="model_type"):
        apply_router_delta(target, path)
    bigger = tiny_model("deepseek_v2", num_hidden_layers=5)
    with pytest.raises(TierwiseError, match="missing"):
        apply_router_delta(bigger, path)
    assert all(torch.equal(before[k], v) for k, v in router_state(target).items())


def test_corrupt_and_foreign_files_are_clean_errors(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(TierwiseError, match="not a readable safetensors"):
        load_router_delta(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(2, 2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(TierwiseError, match="not a tierwise router delta"):
        load_router_delta(tmp_path / "foreign.safetensors")
    with pytest.raises(TierwiseError, match="not found"):
        load_router_delta(tmp_path / "missing.safetensors")
    model = tiny_model("olmoe")
    path = save_router_delta(model, tmp_path / "nan.safetensors")
    delta = load_router_delta(path)
    name = next(iter(delta.tensors))
    bad = dict(delta.tensors, **{name: torch.full_like(delta.tensors[name], float("nan"))})
    save_file(bad, str(path), metadata={k: json.dumps(v) for k, v in delta.meta.items()})
    with pytest.raises(TierwiseError, match="non-finite"):
        load_router_delta(path)


def test_apply_router_command_writes_a_full_checkpoint(tmp_path):
    base = save_tiny("deepseek_v2", tmp_path / "base")
    tuned = _perturb_gates(tiny_model("deepseek_v2"))
    delta = save_router_delta(tuned, tmp_path / "d.safetensors")
    result = CliRunner().invoke(app, ["remoe", "apply-router", str(base), str(delta), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    patched, tokenizer = load_model(tmp_path / "out")
    assert tokenizer is not None
    want = load_router_delta(delta).tensors
    assert all(torch.equal(router_state(patched)[n], t) for n, t in want.items())
    x = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        assert torch.allclose(patched(x).logits, tuned(x).logits, atol=1e-5)
    again = CliRunner().invoke(app, ["remoe", "apply-router", str(base), str(delta), str(tmp_path / "out")])
    assert again.exit_code != 0


def _stored(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


def test_apply_router_keeps_every_stored_dtype_and_the_base_size(tmp_path):
    """The embedded checkpoint stores bf16 weights beside fp32 routers: the patched one must too (not all fp32)."""
    model, _ = load_model("embedded")
    delta = save_router_delta(_perturb_gates(model), tmp_path / "d.safetensors")
    out = write_patched_checkpoint("embedded", delta, tmp_path / "out")
    base = checkpoint_dir("embedded") / "model.safetensors"
    stored = _stored(out / "model.safetensors")
    assert stored == _stored(base) and {"BF16", "F32"} <= set(stored.values())
    assert abs((out / "model.safetensors").stat().st_size - base.stat().st_size) < 4096
    patched, tokenizer = load_model(out)
    assert tokenizer is not None
    assert all(torch.equal(router_state(patched)[n], t) for n, t in load_router_delta(delta).tensors.items())


def test_apply_router_finds_routers_stored_under_their_original_names(tmp_path):
    """An original Mixtral file stores `block_sparse_moe.gate`, which transformers loads as `mlp.gate`."""
    from safetensors import safe_open

    base = save_tiny("mixtral", tmp_path / "base")
    with safe_open(str(base / "model.safetensors"), framework="pt") as f:
        assert any("block_sparse_moe.gate.weight" in k for k in f.keys())
    tuned = _perturb_gates(tiny_model("mixtral"))
    out = write_patched_checkpoint(str(base), save_router_delta(tuned, tmp_path / "d.safetensors"), tmp_path / "out")
    patched, _ = load_model(out)
    assert all(torch.equal(router_state(patched)[n], t) for n, t in router_state(tuned).items())
