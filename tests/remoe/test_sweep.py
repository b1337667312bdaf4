"""The sweep's protocol (one family at a time, the limits, the guard) on a synthetic response surface, and one real
two-step run of each kind on the embedded model's training path."""

from __future__ import annotations

import json

import pytest

from tierwise.remoe.training import sweep as sweep_mod
from tierwise.remoe.training.finetune import FinetuneConfig
from tierwise.remoe.training.sweep import GRID, MIDPOINT, SweepConfig, run_sweep, run_name, summary_rows, weights_at

BASE = {"eor": 0.3, "entropy_norm": 0.97, "effective_experts": 29.0, "ppl": 100.0, "max_load_share": 0.05, "uhr@4": 0.3}


def _surface(collapse_per_reuse: float, guard_restores: bool):
    """EOR rises with λ_Reuse; entropy falls with it unless λ_Spread holds it; weak trust costs perplexity."""
    def fake_run(name, cfg_dict):
        if cfg_dict is None:
            return {"run": name, **BASE}
        cfg = FinetuneConfig.from_dict(cfg_dict)
        w = cfg.effective_weights()
        eor = 0.3 + 2.0 * w.reuse + 0.2 * w.ws + 0.001 / max(w.kl, 0.05) + (0.1 if cfg.ce_only else 0.0)
        drop = collapse_per_reuse * w.reuse * (0.1 if (guard_restores and w.spread >= 3) else 1.0)
        ppl = 100.0 * (1 + 0.01 * w.reuse / max(w.kl, 0.05))
        return {"run": name, "config": cfg.to_dict(), "eor": eor, "entropy_norm": 0.97 * (1 - drop),
                "effective_experts": 29.0 * (1 - 2 * drop), "ppl": ppl, "max_load_share": 0.05, "uhr@4": eor}
    return fake_run


def _sweep(tmp_path, monkeypatch, **surface):
    monkeypatch.setattr(sweep_mod, "_run", _surface(**surface))
    monkeypatch.setattr(sweep_mod, "_init_worker", lambda *a: None)
    return run_sweep(SweepConfig(out=str(tmp_path / "sweep"), steps=20, jobs=1))


def test_without_collapse_the_objective_alone_is_chosen_within_the_perplexity_limit(tmp_path, monkeypatch):
    result = _sweep(tmp_path, monkeypatch, collapse_per_reuse=0.0, guard_restores=False)
    w = result["default"]
    assert not result["guard"] and w.spread == 0
    # the largest λ_Reuse and weakest trust whose perplexity cost (0.01·reuse/kl) stays ≤ 0.5 %, then the most λ_WS
    assert (w.kl, w.reuse, w.ws) == (1.0, 0.3, 0.1)
    assert {"ce-only", "no-trust", "no-reuse", "no-consistency", "preset demo"} <= set(result["rows"])


def test_collapse_brings_in_the_guard_and_its_ablation(tmp_path, monkeypatch):
    result = _sweep(tmp_path, monkeypatch, collapse_per_reuse=0.5, guard_restores=True)
    w = result["default"]
    assert result["guard"] and w.spread >= 3
    row = result["rows"][result["default_run"]]
    assert row["entropy_norm"] >= 0.97 * 0.99 and row["eor"] / 0.3 - 1 >= 0.26
    assert "no-spread" in result["rows"]
    rows = summary_rows(result)
    assert sum("◀ default" in r["run"] for r in rows) == 1


def test_runs_are_resumed_from_the_log_not_repeated(tmp_path, monkeypatch):
    _sweep(tmp_path, monkeypatch, collapse_per_reuse=0.0, guard_restores=False)
    log = tmp_path / "sweep" / "runs.jsonl"
    n = len(log.read_text().splitlines())
    assert n == len({json.loads(line)["run"] for line in log.read_text().splitlines()})  # no run twice
    monkeypatch.setattr(sweep_mod, "_run", lambda *a: pytest.fail("a finished run was run again"))
    run_sweep(SweepConfig(out=str(tmp_path / "sweep"), steps=20, jobs=1))
    assert len(log.read_text().splitlines()) == n


def test_grid_points_scale_t_warm_to_the_run_and_name_every_setting():
    w = weights_at(MIDPOINT, 150)
    assert (w.kl, w.reuse, w.smooth, w.lag, w.ws, w.window, w.warmup_steps) == (1.0, 0.1, 0.01, 0.01, 0.03, 16, 15)
    names = {run_name(weights_at({**MIDPOINT, fam: v}, 150)) for fam, values in GRID.items() for v in values}
    assert len(names) == sum(len(v) for v in GRID.values()) - (len(GRID) - 1)  # the midpoint is shared


@pytest.mark.slow
def test_one_real_run_trains_and_evaluates(tmp_path):
    """The worker path with the real model: a two-step fine-tune from the original gates, evaluated held out."""
    sweep_mod._init_worker("embedded", 4)
    sweep = sweep_mod.Sweep(SweepConfig(out=str(tmp_path), steps=2, eval_rows=4, jobs=1))
    sweep.loaded = True
    try:
        w = weights_at(MIDPOINT, 2)
        rows = sweep.run({"baseline": None, run_name(w): sweep.finetune_config(run_name(w), loss=w, max_docs=40)}, "test")
    finally:
        sweep.close()
    assert rows[0]["run"] == "baseline" and "config" not in rows[0]
    assert rows[1]["steps"] == 2 and rows[1]["eor"] != rows[0]["eor"]
    assert (tmp_path / "runs" / run_name(w) / "router_delta.safetensors").is_file()
