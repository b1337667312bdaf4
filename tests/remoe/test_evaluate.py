"""Evaluation: perplexity and reuse metrics from one teacher-forced pass, before/after a delta, the eval command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.remoe.analysis import metrics
from tierwise.remoe.models.corpus import pack
from tierwise.remoe.analysis.metrics import concentration_warning
from tierwise.remoe.export.delta import RouterDelta, apply_router_delta, delta_meta, router_state, save_router_delta
from tierwise.remoe.analysis.evaluate import (EvalConfig, EvalResult, evaluate_model, evaluate_pair, relative_change,
                                              summary_rows, teacher_forced_pass)
from tierwise.remoe.models.adapters import adapter_for, save_tiny, tiny_model


def test_perplexity_matches_the_models_own_loss_on_one_document():
    model = tiny_model("deepseek_v2")
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(0))
    corpus = pack([ids[0].tolist()], seq_len=20)
    res = evaluate_model(model, corpus, EvalConfig())
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert res["ce"] == pytest.approx(float(loss), rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_trace_requests_follow_documents_and_rows():
    model = tiny_model("olmoe")
    corpus = pack([[1] * 5, [2] * 9, [3] * 3], seq_len=8)  # rows: [d0 d0 d0 d0 d0 d1 d1 d1] [d1 x6 d2 d2] [d2 pad...]
    _, n_pred, trace = teacher_forced_pass(model, corpus, batch_size=2)
    assert trace.num_tokens == 17
    assert trace.request_start.tolist() == [0, 5, 8, 14, 16]
    assert n_pred == 17 - 5  # no target at a document start or a row start
    assert trace.experts.shape == (17, len(adapter_for(model).moe_layers), adapter_for(model).top_k)


def test_reuse_figures_are_consistent():
    model = tiny_model("deepseek_v2")
    g = torch.Generator().manual_seed(1)
    corpus = pack([torch.randint(0, 256, (40,), generator=g).tolist() for _ in range(4)], seq_len=40)
    res = evaluate_model(model, corpus, EvalConfig())
    k = adapter_for(model).top_k
    # C = K, cold cache per request: the cache after step t−1 holds exactly E_{t−1}, so uHR@K = EOR·(T−1)/T
    assert res[f"uhr@{k}"] == pytest.approx(res["eor"] * 39 / 40, rel=1e-6)
    assert res[f"uhr@{2 * k}"] >= res[f"uhr@{k}"]
    assert res["fetch_bound"] == pytest.approx(k * (1 - res["eor"]))
    assert 1 <= res["effective_experts"] <= adapter_for(model).num_experts


def test_relative_change_and_rows():
    change = relative_change({"eor": 0.2, "ppl": 10.0, "x": [1]}, {"eor": 0.3, "ppl": 10.1, "x": [2]})
    assert change == pytest.approx({"eor": 0.5, "ppl": 0.01})
    result = EvalResult("m", "d", 1, 8, before={"eor": 0.2, "l": [1]}, after={"eor": 0.3}, change={"eor": 0.5})
    assert summary_rows(result) == [{"metric": "eor", "before": 0.2, "after": 0.3, "change (%)": 0.5}]


def test_eval_command_before_after_json(tmp_path):
    base = save_tiny("olmoe", tmp_path / "base")
    tuned = tiny_model("olmoe")
    with torch.no_grad():
        for i in adapter_for(tuned).moe_layers:
            adapter_for(tuned).router_weight(i).mul_(-1.0)  # a different routing, same model
    delta = save_router_delta(tuned, tmp_path / "d.safetensors")
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"text": f"held-out document number {i}, some text."}) + "\n" for i in range(6)))
    args = ["remoe", "eval", str(base), "--router", str(delta), "--data", str(data), "--seq-len", "32"]
    result = CliRunner().invoke(app, [*args, "--json", "-"])
    assert result.exit_code == 0, result.output
    written = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "r.json")])
    assert written.exit_code == 0 and "ppl" in written.output  # a file for the JSON, the table on the terminal
    res = json.loads(result.stdout[result.stdout.index("{"):])
    assert set(res) >= {"before", "after", "change"} and res["before"]["tokens"] == res["after"]["tokens"]
    assert res["before"]["eor"] != res["after"]["eor"]
    assert json.loads((tmp_path / "r.json").read_text())["after"]["eor"] == res["after"]["eor"]
    table = CliRunner().invoke(app, ["remoe", "eval", str(base), "--data", str(data), "--max-rows", "1"])
    assert table.exit_code == 0 and "ppl" in table.output


# -- quality beyond perplexity, and routing concentration ---------------------------------------------------------
def _held_out(n_rows: int = 3, seq_len: int = 24):
    g = torch.Generator().manual_seed(3)
    return pack([torch.randint(0, 256, (seq_len,), generator=g).tolist() for _ in range(n_rows)], seq_len=seq_len)


def _delta(model, change=None) -> RouterDelta:
    """The model's own routers (`change` None), or `change(name, W)` of each gate matrix."""
    state = router_state(model)
    return RouterDelta({n: w if change is None else change(n, w) for n, w in state.items()}, delta_meta(model))


def test_identity_delta_agrees_with_the_original_everywhere():
    model = tiny_model("olmoe")
    res = evaluate_pair(model, _held_out(), _delta(model), EvalConfig(batch_size=2))
    vs = res["vs_original"]
    assert vs["top1_agreement"] == 1.0
    assert vs["output_kl_orig_ft"] == pytest.approx(0.0, abs=1e-6)
    assert vs["router_kl_ft_orig"] == pytest.approx(0.0, abs=1e-6)
    assert res["after"]["ppl"] == pytest.approx(res["before"]["ppl"], rel=1e-6)
    assert res["after"]["eor"] == res["before"]["eor"]
    assert res["concentration_warning"] is None


def test_changed_router_disagrees_and_output_kl_runs_original_to_tuned():
    def model_():  # larger weights than the default 0.02, so that routing moves the outputs well above rounding
        return tiny_model("olmoe", initializer_range=0.2)

    model = model_()
    g = torch.Generator().manual_seed(4)
    delta = _delta(model, lambda n, w: w + 0.4 * torch.randn(w.shape, generator=g))
    corpus = _held_out()
    res = evaluate_pair(model, corpus, delta, EvalConfig(batch_size=2))
    vs = res["vs_original"]
    assert 0.0 < vs["top1_agreement"] < 1.0
    assert vs["output_kl_orig_ft"] > 0 and vs["router_kl_ft_orig"] > 0
    # the same figures from two separate models on the whole corpus at once: streaming by batch changes nothing,
    # and the output KL is KL(original ‖ fine-tuned), not the reverse
    original, tuned = model_(), apply_router_delta(model_(), delta)
    batch = corpus.batch(range(len(corpus)))
    predicted = batch["labels"][:, 1:] != -100
    with torch.no_grad():
        ref, new = (m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=batch["position_ids"]).logits[:, :-1][predicted].log_softmax(-1)
                    for m in (original, tuned))
    assert vs["top1_agreement"] == pytest.approx(float((ref.argmax(-1) == new.argmax(-1)).float().mean()))
    assert vs["output_kl_orig_ft"] == pytest.approx(float((ref.exp() * (ref - new)).sum(-1).mean()), rel=1e-4)
    assert vs["output_kl_orig_ft"] != pytest.approx(float((new.exp() * (new - ref)).sum(-1).mean()), rel=1e-2)
    one_batch = evaluate_pair(model_(), corpus, delta, EvalConfig(batch_size=8))["vs_original"]
    assert one_batch == pytest.approx(vs, rel=1e-5)


def test_collapsing_router_is_flagged():
    model = tiny_model("olmoe")
    # all-zero gates: every token scores every expert alike, so each layer sends every token to the same K experts
    res = evaluate_pair(model, _held_out(), _delta(model, lambda n, w: torch.zeros_like(w)), EvalConfig())
    assert res["after"]["eor"] == 1.0 and res["after"]["eor"] > res["before"]["eor"]
    assert res["after"]["effective_experts"] < res["before"]["effective_experts"]
    assert res["after"]["max_load_share"] > res["before"]["max_load_share"]
    warning = res["concentration_warning"]
    assert warning.startswith("warning: routing entropy fell") and "EOR gains partly come from that collapse" in warning


def test_concentration_warning_threshold():
    assert concentration_warning({"entropy_norm": 0.968}, {"entropy_norm": 0.68}) == (
        "warning: routing entropy fell 29.8 % (0.968 -> 0.680): the router concentrates load on fewer experts; "
        "EOR gains partly come from that collapse")
    assert concentration_warning({"entropy_norm": 1.0}, {"entropy_norm": 0.981}) is None  # a 1.9 % fall is allowed
    assert concentration_warning({"entropy_norm": 0.9}, {"entropy_norm": 0.95}) is None
    assert concentration_warning({"entropy_norm": float("nan")}, {"entropy_norm": 0.5}) is None


def test_eval_command_shows_quality_and_warning(tmp_path):
    base = save_tiny("olmoe", tmp_path / "base")
    model = tiny_model("olmoe")
    delta = save_router_delta(apply_router_delta(model, _delta(model, lambda n, w: torch.zeros_like(w))),
                              tmp_path / "collapse.safetensors")
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"text": f"held-out document number {i}, some text."}) + "\n" for i in range(4)))
    args = ["remoe", "eval", str(base), "--router", str(delta), "--data", str(data), "--seq-len", "32"]
    table = CliRunner().invoke(app, args, terminal_width=80)
    assert table.exit_code == 0, table.output
    for name in ("entropy_norm", "effective_experts", "max_load_share", "top1_agreement", "output_kl_orig_ft",
                 "router_kl_ft_orig", "warning: routing entropy fell"):
        assert name in table.output
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    result = CliRunner().invoke(app, [*args, "--json", "-"])
    res = json.loads(result.stdout[result.stdout.index("{"):])
    assert set(res["vs_original"]) == {"top1_agreement", "output_kl_orig_ft", "router_kl_ft_orig"}
    assert res["concentration_warning"].startswith("warning: routing entropy fell")


def _finetune_args(tmp_path):
    base = save_tiny("olmoe", tmp_path / "base")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"training document {i}: some words to route."}) + "\n" for i in range(8)))
    return ["remoe", "finetune", str(base), "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "2",
            "--seq-len", "32", "--batch-size", "2", "--check-rows", "3"]


def test_finetune_prints_eor_beside_concentration(tmp_path):
    result = CliRunner().invoke(app, _finetune_args(tmp_path), terminal_width=80)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for name in ("EOR", "entropy", "eff. experts", "busiest share", "original", "fine-tuned", "top-1 agreement"):
        assert name in out
    assert "eor_running" not in out  # no EOR without its concentration beside it
    assert max(len(line) for line in out.splitlines()) <= 80


def test_finetune_warns_when_the_router_collapses(tmp_path, monkeypatch):
    from tierwise.remoe.training import finetune as finetune_module

    model = tiny_model("olmoe")
    collapse = save_router_delta(apply_router_delta(model, _delta(model, lambda n, w: torch.zeros_like(w))),
                                 tmp_path / "collapse.safetensors")
    monkeypatch.setattr(finetune_module, "finetune",
                        lambda cfg: finetune_module.FinetuneResult(tmp_path, collapse, 2, True, [], 0.0))
    result = CliRunner().invoke(app, _finetune_args(tmp_path))
    assert result.exit_code == 0, result.output
    assert "warning: routing entropy fell" in result.stdout
    skipped = CliRunner().invoke(app, [*_finetune_args(tmp_path), "--check-rows", "0"])
    assert skipped.exit_code == 0 and "warning" not in skipped.stdout and "entropy" not in skipped.stdout
