"""Pretraining loop: a tiny run end to end, the balancing loss, the schedule and the routing summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models import embedded
from tierwise.remoe.training.pretrain import (MoEModelConfig, PretrainConfig, build_model, load_balancing_loss,
                                     load_tokenizer, lr_at, pretrain)

TINY = MoEModelConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                      moe_intermediate_size=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                      kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)


@pytest.fixture(scope="module")
def small_docs():
    return {"train": embedded.corpus_documents("train")[:60], "heldout": embedded.corpus_documents("heldout")[:10]}


def _run(tmp_path, docs, name):
    cfg = PretrainConfig(steps=3, batch_size=2, seq_len=32, warmup_steps=1, eval_windows=4, model=TINY)
    out = tmp_path / name
    return out, pretrain(cfg, out, load_tokenizer(), documents=docs)


def test_tiny_pretrain_writes_a_loadable_deterministic_checkpoint(tmp_path, small_docs):
    from transformers import AutoModelForCausalLM

    out, report = _run(tmp_path, small_docs, "a")
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert model.config.n_routed_experts == 8 and model.config.first_k_dense_replace == 1
    assert np.isfinite(report["heldout_ppl"]) and report["heldout_tokens"] == 4 * 32
    assert len(report["experts_used_per_layer"]) == 2 and 0 <= report["eor"] <= 1 and report["load_cv"] >= 0
    assert json.loads((out / "pretrain_report.json").read_text())["parameters"] == report["parameters"]
    assert len((out / "pretrain_history.jsonl").read_text().splitlines()) == 3
    # bf16 storage, fp32 routers, tied head stored once; transformers writes experts in DeepSeek's per-expert layout
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.1.mlp.gate.weight").dtype == torch.float32
        assert f.get_tensor("model.layers.1.mlp.experts.7.gate_proj.weight").dtype == torch.bfloat16
        assert "lm_head.weight" not in f.keys()

    out_b, _ = _run(tmp_path, small_docs, "b")
    with safe_open(str(out / "model.safetensors"), "pt") as fa, safe_open(str(out_b / "model.safetensors"), "pt") as fb:
        assert all(torch.equal(fa.get_tensor(name), fb.get_tensor(name)) for name in fa.keys())


def test_balancing_loss_is_nonzero_and_reaches_the_gates():
    model = build_model(TINY, load_tokenizer(), seed=0)
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    out = model(input_ids=ids, output_router_logits=True)
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (32, 8)
    aux, cv = load_balancing_loss(out.router_logits, top_k=2)
    assert aux.item() > 0.5 and cv >= 0
    aux.backward()
    for layer in (1, 2):
        grad = model.model.layers[layer].mlp.gate.weight.grad
        assert grad is not None and grad.abs().sum() > 0


def test_balancing_loss_is_one_when_routing_is_even():
    uniform = torch.zeros(8, 4)  # equal logits: P̄ = 1/E, and top-k of ties spreads f evenly enough to sum to 1
    aux, _ = load_balancing_loss((uniform,), top_k=2)
    assert aux.item() == pytest.approx(1.0)
    skewed = torch.tensor([[5.0, 0, 0, 0]] * 8)
    assert load_balancing_loss((skewed,), top_k=1)[0].item() > 2.5


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = PretrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55) and lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_cli_rejects_bad_settings(tmp_path):
    from tierwise.cli import app

    result = CliRunner().invoke(app, ["remoe", "pretrain", "--out", str(tmp_path / "x"), "--steps", "0"])
    assert isinstance(result.exception, TierwiseError) and "steps ≥ 1" in str(result.exception)
    assert not (tmp_path / "x").exists()


def test_stop_after_reproduces_the_snapshot_of_a_longer_schedule(tmp_path, small_docs):
    tok = load_tokenizer()
    full = PretrainConfig(steps=4, batch_size=2, seq_len=32, warmup_steps=1, eval_windows=2, save_every=2, model=TINY)
    history = []
    for name, cfg in [("full", full), ("cut", PretrainConfig(**{**full.__dict__, "save_every": 0, "stop_after": 2}))]:
        pretrain(cfg, tmp_path / name, tok, documents=small_docs)
        history.append((tmp_path / name / "pretrain_history.jsonl").read_text().splitlines())
    assert len(history[1]) == 2 and history[1] == history[0][:2]
    with pytest.raises(TierwiseError, match="stop-after"):
        pretrain(PretrainConfig(steps=2, stop_after=3, model=TINY), tmp_path / "x", tok, documents=small_docs)


def test_pretrain_rejects_too_little_text(tmp_path):
    cfg = PretrainConfig(steps=1, seq_len=64, model=TINY)
    with pytest.raises(TierwiseError, match="fewer than one sequence"):
        pretrain(cfg, tmp_path / "x", load_tokenizer(), documents={"train": ["tiny"], "heldout": ["tiny"]})
