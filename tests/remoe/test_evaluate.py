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
from tierwise.remoe.export.delta import save_router_delta
from tierwise.remoe.analysis.evaluate import EvalConfig, evaluate_model, relative_change, summary_rows, teacher_forced_pass
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
    rows = summary_rows({"before": {"eor": 0.2, "l": [1]}, "after": {"eor": 0.3}, "change": {"eor": 0.5}})
    assert rows == [{"metric": "eor", "before": 0.2, "after": 0.3, "change": "+50.00%"}]


def test_eval_command_before_after_json(tmp_path):
    base = save_tiny("olmoe", tmp_path / "base")
    tuned = tiny_model("olmoe")
    with torch.no_grad():
        for i in adapter_for(tuned).moe_layers:
            adapter_for(tuned).router_weight(i).mul_(-1.0)  # a different routing, same model
    delta = save_router_delta(tuned, tmp_path / "d.safetensors")
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"text": f"held-out document number {i}, some text."}) + "\n" for i in range(6)))
    result = CliRunner().invoke(app, ["remoe", "eval", str(base), "--router", str(delta), "--data", str(data),
                                      "--seq-len", "32", "--json", "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout[result.stdout.index("{"):])
    assert set(res) >= {"before", "after", "change"} and res["before"]["tokens"] == res["after"]["tokens"]
    assert res["before"]["eor"] != res["after"]["eor"]
    assert json.loads((tmp_path / "r.json").read_text())["after"]["eor"] == res["after"]["eor"]
    table = CliRunner().invoke(app, ["remoe", "eval", str(base), "--data", str(data), "--max-rows", "1"])
    assert table.exit_code == 0 and "ppl" in table.output
