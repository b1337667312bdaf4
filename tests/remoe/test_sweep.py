"""The sweep's protocol (one family at a time, the limits, the guard) on a synthetic response surface, and one real
two-step run of each kind on the embedded model's training path."""

from __future__ import annotations

import json

import pytest

from tierwise.remoe.training import sweep as sweep_mod
from tierwise.remoe.training.finetune import FinetuneConfig
from tierwise.remoe.training.sweep import GRID, MIDPOINT, SweepConfig, run_sweep, run_name, summary_rows, weights_at

BASE = {"eor": 0.3, "entropy_norm": 0.97, "effective_experts": 29.0, "ppl": 100.0, "max_load_share": 0.05, "uhr@4": 0.3}


def _surface(collapse_per_reuse: float, guard_restores: bool, eor_per_reuse: float = 2.0,
             longer_is_cheaper: bool = False):
    """EOR rises with λ_Reuse; entropy falls with it unless λ_Spread holds it; weak trust costs perplexity (less in
    longer runs, with `longer_is_cheaper`)."""
    def fake_run(name, cfg_dict):
        if cfg_dict is None:
            return {"run": name, **BASE}
        cfg = FinetuneConfig.from_dict(cfg_dict)
        w = cfg.effective_weights()
        eor = 0.3 + eor_per_reuse * w.reuse + 0.2 * w.ws + 0.001 / max(w.kl, 0.05) + (0.1 if cfg.ce_only else 0.0)
        eor += 0.001 * cfg.steps / 20 if longer_is_cheaper else 0.0
        drop = collapse_per_reuse * w.reuse * (0.1 if (guard_restores and w.spread >= 3) else 1.0)
        ppl = 100.0 * (1 + 0.01 * w.reuse / max(w.kl, 0.05) * (20 / cfg.steps if longer_is_cheaper else 1.0))
        return {"run": name, "config": cfg.to_dict(), "eor": eor, "entropy_norm": 0.97 * (1 - drop),
                "effective_experts": 29.0 * (1 - 2 * drop), "ppl": ppl, "max_load_share": 0.05, "uhr@4": eor}
    return fake_run


def _sweep(tmp_path, monkeypatch, **surface):
    monkeypatch.setattr(sweep_mod, "_run", _surface(**surface))
    monkeypatch.setattr(sweep_mod, "_init_worker", lambda *a: None)
    return run_sweep(SweepConfig(out=str(tmp_path / "sweep"), steps=20, workers=1))


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


def test_a_longer_run_that_costs_less_perplexity_is_chosen_and_its_levers_swept_again(tmp_path, monkeypatch):
    result = _sweep(tmp_path, monkeypatch, collapse_per_reuse=0.0, guard_restores=False, longer_is_cheaper=True)
    w = result["default"]
    # at 4 x 20 steps the perplexity cost is a quarter: λ_Reuse 1.0 (beyond the grid, tried at length) fits
    assert result["steps"] == 80 and w.reuse == 1.0 and not result["guard"]
    assert result["default_run"].endswith("-n80")
    stages = {r["stage"] for r in result["rows"].values()}
    assert {"objective: steps", "objective: reuse at length", "objective: kl at length"} <= stages
    controls = [r for r in result["rows"].values() if r["stage"] == "controls" and r["run"] != "preset aggressive"]
    assert all(r["config"]["steps"] == 80 for r in controls if r["run"] != "preset demo")


def test_no_guard_when_perplexity_not_the_spread_is_the_limit(tmp_path, monkeypatch):
    # EOR rises too slowly to reach +26 % at any λ: a load-entropy floor could only lower it further
    result = _sweep(tmp_path, monkeypatch, collapse_per_reuse=0.5, guard_restores=True, eor_per_reuse=0.05)
    assert not result["guard"] and result["default"].spread == 0
    assert not any(r["stage"].startswith("guard") for r in result["rows"].values())


def test_a_run_with_changed_settings_is_run_again(tmp_path, monkeypatch):
    _sweep(tmp_path, monkeypatch, collapse_per_reuse=0.0, guard_restores=False)
    log = tmp_path / "sweep" / "runs.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    ce = next(r for r in rows if r["run"] == "ce-only")
    ce["config"]["lr"] = 1.0  # as if the defaults had changed since
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ran = []
    fake = _surface(0.0, False)
    monkeypatch.setattr(sweep_mod, "_run", lambda name, cfg: ran.append(name) or fake(name, cfg))
    run_sweep(SweepConfig(out=str(tmp_path / "sweep"), steps=20, workers=1))
    assert ran == ["ce-only"]


def test_runs_are_resumed_from_the_log_not_repeated(tmp_path, monkeypatch):
    _sweep(tmp_path, monkeypatch, collapse_per_reuse=0.0, guard_restores=False)
    log = tmp_path / "sweep" / "runs.jsonl"
    n = len(log.read_text().splitlines())
    assert n == len({json.loads(line)["run"] for line in log.read_text().splitlines()})  # no run twice
    monkeypatch.setattr(sweep_mod, "_run", lambda *a: pytest.fail("a finished run was run again"))
    run_sweep(SweepConfig(out=str(tmp_path / "sweep"), steps=20, workers=1))
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
    sweep = sweep_mod.Sweep(SweepConfig(out=str(tmp_path), steps=2, eval_rows=4, workers=1))
    sweep.loaded = True
    try:
        w = weights_at(MIDPOINT, 2)
        rows = sweep.run({"baseline": None, run_name(w): sweep.finetune_config(run_name(w), loss=w, max_docs=40)}, "test")
    finally:
        sweep.close()
    assert rows[0]["run"] == "baseline" and "config" not in rows[0]
    assert rows[1]["steps"] == 2 and rows[1]["eor"] != rows[0]["eor"]
    assert (tmp_path / "runs" / run_name(w) / "router_delta.safetensors").is_file()
