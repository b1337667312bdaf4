"""The ReMoE half of `tierwise demo`, end to end on a tiny checkpoint with a 2-step fine-tune."""

from __future__ import annotations

import json

import pytest
import torch

from tierwise.remoe import demo
from tierwise.remoe.demo import DemoConfig, run
from tierwise.remoe.export.delta import save_router_delta
from tierwise.remoe.models.adapters import adapter_for, load_model, save_tiny
from tierwise.remoe.training.finetune import FinetuneResult


def test_demo_writes_report(tmp_path):
    ckpt = save_tiny("deepseek_v2", tmp_path / "ckpt")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("In the beginning\nA hacker is\nThe Python library\n")
    out = tmp_path / "report" / "remoe"
    section = run(out, DemoConfig(model=str(ckpt), prompts=str(prompts), trace_prompts=3, trace_tokens=6,
                                  finetune_overrides=dict(steps=2, max_docs=20), eval_rows=2, eval_seq_len=64,
                                  offload_requests=2, offload_prompt_tokens=8, offload_tokens=5,
                                  store_dir=str(tmp_path / "store")))
    for png in ("reuse_vs_horizon.png", "hit_rate_vs_cache.png", "tpot_before_after.png"):
        assert (out / png).stat().st_size > 1000
        assert f"(remoe/{png})" in section  # links resolve from the combined report one folder up
    assert (out / "finetune" / "router_delta.safetensors").is_file()
    summary = (out / "summary.md").read_text()
    assert "Decode TPOT speedup" in summary and "| held-out perplexity |" in summary
    results = json.loads((out / "results.json").read_text())
    runs = results["offload"]["runs"]
    assert set(runs) == {"original", "fine-tuned"} and results["offload"]["config"]["cache_experts"] == 4
    assert results["offload"]["tpot_speedup"]["total"] == pytest.approx(
        runs["original"]["tpot_ms"]["total"]["mean"] / runs["fine-tuned"]["tpot_ms"]["total"]["mean"])
    # the offload step replays held-out text by default, as `remoe offload` does, and quotes the modelled TPOT
    offload = results["offload"]
    assert offload["workload"]["kind"] == "replay" and offload["workload"]["requests"] == 2
    assert offload["workload"]["prompt_tokens"] == [8, 8] and runs["original"]["quality"]["tokens"] == 10
    assert runs["fine-tuned"]["tpot_ms"]["total"] == runs["fine-tuned"]["tpot_ms"]["modelled"]
    assert "| offload: replay perplexity |" in summary
    assert "| offload: TPOT ms modelled (dsv2-lite-bf16 on jetson-orin-nx, ufs4) |" in summary
    assert "| offload: TPOT ms measured on this machine |" in summary
    assert "replay of 2 held-out continuations" in summary
    flat = " ".join(summary.split())
    assert "modelled for `dsv2-lite-bf16` (26 MoE layers) on `jetson-orin-nx`" in flat and "overlapping" in flat
    assert "measured + modelled" not in flat and "+ modelled" not in flat
    assert len(results["analysis"]["original"]["reuse_at_horizon"]) == 16
    for row in ("| routing entropy (held-out) |", "| routing eff. experts (held-out) |",
                "| routing busiest share (held-out) |"):
        assert row in summary
    assert set(results["eval"]["vs_original"]) == {"top1_agreement", "output_kl_orig_ft", "router_kl_ft_orig"}


def _demo_with_router(tmp_path, monkeypatch, ckpt, delta, **config):
    """The demo on a tiny checkpoint with its fine-tune replaced by `delta`; returns (report folder, results)."""
    monkeypatch.setattr(demo, "finetune", lambda cfg: FinetuneResult(tmp_path, delta, 1, True, [], 0.0))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("In the beginning\nA hacker is\n")
    out = tmp_path / "report"
    run(out, DemoConfig(model=str(ckpt), prompts=str(prompts), trace_prompts=2, trace_tokens=4, eval_rows=2,
                        eval_seq_len=32, offload_tokens=3, store_dir=str(tmp_path / "store"), **config))
    return out, json.loads((out / "results.json").read_text())


def test_demo_warns_when_the_router_collapses(tmp_path, monkeypatch):
    """A fine-tune that leaves all-zero gates (every token to the same K experts) is flagged in the summary."""
    ckpt = save_tiny("deepseek_v2", tmp_path / "ckpt")
    model, _ = load_model(ckpt)
    with torch.no_grad():
        for layer in adapter_for(model).moe_layers:
            adapter_for(model).router_weight(layer).zero_()
    collapse = save_router_delta(model, tmp_path / "collapse.safetensors")
    out, results = _demo_with_router(tmp_path, monkeypatch, ckpt, collapse, offload_requests=1,
                                     offload_prompt_tokens=8)
    warning = results["eval"]["concentration_warning"]
    assert warning.startswith("warning: routing entropy fell") and warning in (out / "summary.md").read_text()
    assert results["eval"]["fine-tuned"]["eor"] == 1.0


def test_demo_offload_with_local_storage_and_greedy_prompts(tmp_path, monkeypatch):
    """`local` storage has no timing model: the quoted TPOT is the measured one, and the text says so; the greedy
    workload decodes the prompt file."""
    ckpt = save_tiny("deepseek_v2", tmp_path / "ckpt")
    model, _ = load_model(ckpt)
    same = save_router_delta(model, tmp_path / "same.safetensors")
    out, results = _demo_with_router(tmp_path, monkeypatch, ckpt, same, offload_workload="greedy", offload_requests=2,
                                     storage="local")
    offload = results["offload"]
    assert offload["workload"]["kind"] == "greedy" and offload["workload"]["requests"] == 2
    assert offload["config"]["timing"] is None
    run_ = offload["runs"]["fine-tuned"]
    assert run_["tpot_ms"]["total"] == run_["tpot_ms"]["measured"] and "modelled" not in run_["tpot_ms"]
    flat = " ".join((out / "summary.md").read_text().split())
    assert "| offload: TPOT ms measured (local store reads) |" in flat
    assert "measured on this machine, store reads included (`local`)" in flat
    assert "modelled" not in flat and "replay perplexity" not in flat
