"""The λ sweep that picks the fine-tuning defaults (protocol of remoe.md §4), its controls and its Pareto view.

Protocol: start from the grid midpoints; vary one family at a time over its grid (λ_Reuse, then λ_KL, then the
three consistency λ's jointly, then W, then T_warm), each time keeping the best run so far; "best" = the highest
held-out EOR among the runs that keep the routing spread (normalised entropy within `max_entropy_drop` of the
original, effective experts ≥ `min_effective_experts` of the original) at perplexity ≤ +`max_ppl_increase`.
These families run `steps` steps each (cheap). Then the training length: the chosen point at `STEPS_GRID` × `steps`
(the paper trains 2000 steps; a longer run spends less perplexity per unit of EOR), and at the chosen length
λ_Reuse and λ_KL, the two strongest levers, once more.
If the spread limits, not perplexity, are what stops the objective short of `min_eor_gain` (some run gains that
much within the perplexity limit but breaks the spread), the guard λ_Spread (a batch load-entropy floor,
training/objective.py) gets its own family, started from that run, and λ_Reuse is swept once more under the chosen
guard. Then the controls at the chosen length: CE only, the ablations of the chosen point (each term off, guard
off), and the named presets.

Every run starts from the original gates, trains on the same rows, and is evaluated on the same held-out rows.
Runs are appended to OUT/runs.jsonl as they end and skipped when re-run with the same settings, so an interrupted
sweep resumes. T_warm's grid {0, 200, 500} is in the paper's 2000 steps; here it scales to the run's length.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.progress import TextColumn

from tierwise.common.errors import TierwiseError
from tierwise.common.progress import make_progress
from tierwise.remoe.training.objective import LossWeights

# remoe.md §4, in the order the protocol varies them; the consistency family moves its three λ's together.
GRID: dict[str, tuple] = {
    "reuse": (0.01, 0.03, 0.1, 0.3),
    "kl": (0.1, 0.3, 1.0, 3.0),
    "consistency": ((0.0, 0.0, 0.0), (0.003, 0.003, 0.01), (0.01, 0.01, 0.03), (0.03, 0.03, 0.1)),  # smooth, lag, ws
    "window": (8, 16, 32, 64),
    "t_warm": (0.0, 0.1, 0.25),  # fraction of the run's steps: 0, 200 and 500 of the paper's 2000
}
GUARD_GRID = (1.0, 3.0, 10.0)  # λ_Spread
MIDPOINT = dict(reuse=0.1, kl=1.0, consistency=(0.01, 0.01, 0.03), window=16, t_warm=0.1)
STEPS_GRID = (1, 2, 4)  # training length, in multiples of SweepConfig.steps
ABLATIONS = {"no-trust": dict(kl=0.0), "no-reuse": dict(reuse=0.0), "no-consistency": dict(smooth=0.0, lag=0.0, ws=0.0)}


@dataclass
class SweepConfig:
    model: str = "embedded"
    out: str = "reports/remoe-sweep"
    steps: int = 150
    eval_rows: int = 192  # held-out rows of 256 tokens, spread evenly
    workers: int = 2  # runs trained side by side, each in its own process with one torch thread
    max_ppl_increase: float = 0.005  # the limits on the default
    max_entropy_drop: float = 0.01
    min_effective_experts: float = 0.95
    min_eor_gain: float = 0.26  # the paper's +26 %


def weights_at(point: dict[str, Any], steps: int, spread: float = 0.0) -> LossWeights:
    """LossWeights of a point of the grid (its family values as in MIDPOINT) for a run of `steps` steps."""
    smooth, lag, ws = point["consistency"]
    return LossWeights(kl=point["kl"], reuse=point["reuse"], smooth=smooth, lag=lag, ws=ws, spread=spread,
                       window=point["window"], warmup_steps=round(point["t_warm"] * steps))


def run_name(w: LossWeights, steps: int | None = None) -> str:
    """A short, unique label of a weight setting and, when not the sweep's base length, its steps (also its folder
    name)."""
    return (f"kl{w.kl:g}-r{w.reuse:g}-s{w.smooth:g}-l{w.lag:g}-ws{w.ws:g}-W{w.window}-tw{w.warmup_steps}"
            + (f"-sp{w.spread:g}" if w.spread else "") + (f"-n{steps}" if steps else ""))


def planned_runs() -> int:
    """Runs of the protocol's fixed stages: the original, each family's grid, the training lengths and the controls
    (CE only, the ablations, the presets). The stages added when needed (levers at length, the guard) count theirs
    when they start."""
    from tierwise.remoe.training.finetune import PRESETS

    return 1 + sum(map(len, GRID.values())) + len(STEPS_GRID) + 1 + len(ABLATIONS) + len(PRESETS) - 1


# --- one run (in a worker process) -----------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_pool_worker(model_name: str, eval_rows: int) -> None:
    """A worker process: no progress bars of its own (the sweep's bar is in the parent), then the model."""
    from tierwise.common.progress import silence

    silence()
    _init_worker(model_name, eval_rows)


def _init_worker(model_name: str, eval_rows: int) -> None:
    import torch

    from tierwise.remoe.export.delta import RouterDelta, delta_meta, router_state
    from tierwise.remoe.models.adapters import load_model
    from tierwise.remoe.models.corpus import load_corpus

    torch.set_num_threads(1)
    model, tokenizer = load_model(model_name)
    _WORKER.update(model=model, tokenizer=tokenizer, original=RouterDelta(router_state(model), delta_meta(model)),
                   heldout=load_corpus("embedded:heldout", tokenizer, 256, max_rows=eval_rows), corpora={})


def _corpus(cfg) -> Any:
    from tierwise.remoe.models.corpus import load_corpus

    key = (cfg.data, cfg.seq_len, cfg.max_docs)
    if key not in _WORKER["corpora"]:
        _WORKER["corpora"][key] = load_corpus(cfg.data, _WORKER["tokenizer"], cfg.seq_len, max_docs=cfg.max_docs)
    return _WORKER["corpora"][key]


def _run(name: str, cfg_dict: dict[str, Any] | None) -> dict[str, Any]:
    """Fine-tune from the original gates with `cfg_dict` (None: evaluate the original) and evaluate held out."""
    from tierwise.remoe.analysis.evaluate import EvalConfig, evaluate_model
    from tierwise.remoe.export.delta import apply_router_delta
    from tierwise.remoe.training.finetune import FinetuneConfig, finetune

    model = _WORKER["model"]
    apply_router_delta(model, _WORKER["original"])
    row: dict[str, Any] = {"run": name}
    if cfg_dict is not None:
        cfg = FinetuneConfig.from_dict(cfg_dict)
        result = finetune(cfg, model=model, corpus=_corpus(cfg))
        row.update(train_s=result.seconds, steps=cfg.steps, config=cfg.to_dict())
    return {**row, **evaluate_model(model, _WORKER["heldout"], EvalConfig(), model_name=name)}


# --- the protocol ----------------------------------------------------------------------------------------------------

class Sweep:
    """Runs (or reads back) the sweep's runs and applies the selection rule."""

    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "runs.jsonl"
        self.rows: dict[str, dict[str, Any]] = {}
        if self.log.is_file():
            for line in self.log.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["run"]] = row
        # one worker: runs in this process (tests replace _run); more: worker processes, each loads the model once
        self.pool = (ProcessPoolExecutor(cfg.workers, initializer=_init_pool_worker,
                                         initargs=(cfg.model, cfg.eval_rows))
                     if cfg.workers > 1 else None)
        self.loaded = False
        self.progress = make_progress(TextColumn("{task.fields[info]}"))
        self.task = self.progress.add_task("sweep runs", total=planned_runs(), info="")
        self.progress.start()

    def close(self) -> None:
        self.progress.stop()
        if self.pool is not None:
            self.pool.shutdown()

    def expect(self, runs: int) -> None:
        """Count `runs` more in the bar's total: a stage that `planned_runs` did not foresee."""
        self.progress.update(self.task, total=self.progress.tasks[0].total + runs)

    def _results(self, todo: dict[str, dict[str, Any] | None], stage: str):
        """(name, row) of each job in `todo`, in order; the bar names the run waited for."""
        futures = {n: self.pool.submit(_run, n, c) for n, c in todo.items()} if self.pool is not None else None
        if todo and futures is None and not self.loaded:
            _init_worker(self.cfg.model, self.cfg.eval_rows)
            self.loaded = True
        for name, config in todo.items():
            self.progress.update(self.task, info=f"{stage}: {name}")
            yield name, futures[name].result() if futures is not None else _run(name, config)

    def finetune_config(self, name: str, **fields: Any) -> dict[str, Any]:
        from tierwise.remoe.training.finetune import config_with_preset

        preset = fields.pop("preset", "default")
        cfg = config_with_preset(preset, model=self.cfg.model, out=str(self.out / "runs" / name), checkpoint_every=0,
                                 overwrite=True)
        if preset == "default":
            cfg = replace(cfg, steps=self.cfg.steps)
        return replace(cfg, **fields).to_dict()

    def run(self, jobs: dict[str, dict[str, Any] | None], stage: str) -> list[dict[str, Any]]:
        """Run the jobs not done yet (name → finetune config dict, None = the original), in parallel; tag them.
        Each job is one step of the progress bar; one done before (runs.jsonl) counts at once."""
        todo = {n: c for n, c in jobs.items()
                if n not in self.rows or (c is not None and self.rows[n].get("config") != _jsonable(c))}
        self.progress.update(self.task, advance=len(jobs) - len(todo))
        for name, result in self._results(todo, stage):
            row = {**result, "stage": stage}
            self.rows[name] = row
            with self.log.open("a") as f:
                f.write(json.dumps(_jsonable(row)) + "\n")
            # a line per run on stderr: the record of a long sweep, and stdout stays free for `--json -`
            self.progress.console.print(f"[{stage}] {name}: EOR {row['eor']:.4f}, entropy {row['entropy_norm']:.4f}, "
                                        f"ppl {row['ppl']:.2f}", markup=False, highlight=False)
            self.progress.update(self.task, advance=1)
        return [self.rows[n] for n in jobs]

    def change(self, row: dict[str, Any], key: str) -> float:
        return row[key] / self.rows["baseline"][key] - 1

    def keeps_spread(self, row: dict[str, Any]) -> bool:
        return (self.change(row, "entropy_norm") >= -self.cfg.max_entropy_drop
                and self.change(row, "effective_experts") >= self.cfg.min_effective_experts - 1)

    def within_ppl(self, row: dict[str, Any]) -> bool:
        return self.change(row, "ppl") <= self.cfg.max_ppl_increase

    def best(self, rows: list[dict[str, Any]], *, need_spread: bool = True) -> dict[str, Any] | None:
        ok = [r for r in rows if self.within_ppl(r) and (self.keeps_spread(r) or not need_spread)]
        return max(ok, key=lambda r: r["eor"]) if ok else None

    def job(self, point: dict[str, Any], spread: float) -> tuple[str, dict[str, Any], LossWeights]:
        """The run of a grid point (`point["steps"]` long, the sweep's base length if absent): name, config, λ's."""
        steps = point.get("steps", self.cfg.steps)
        w = weights_at(point, steps, spread)
        name = run_name(w, steps if steps != self.cfg.steps else None)
        return name, self.finetune_config(name, loss=w, steps=steps), w

    def family(self, point: dict[str, Any], name: str, values: tuple, spread: float, stage: str,
               need_spread: bool = True, planned: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """Vary one family over its grid around `point`; returns (chosen point, its row). `planned=False`: a stage
        `planned_runs` does not count."""
        if not planned:
            self.expect(len(values))
        points = [{**point, name: v} for v in values]
        jobs = dict(self.job(p, spread)[:2] for p in points)
        rows = self.run(jobs, stage)
        chosen = self.best(rows, need_spread=need_spread)
        if chosen is None:  # nothing inside the limits: stay at the family's current value
            current = self.job(point, spread)[0]
            return point, self.rows.get(current, rows[0])
        return points[rows.index(chosen)], chosen


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """The whole protocol; returns {'rows': all runs, 'default': the chosen weights, 'steps': the chosen length,
    'guard': bool, ...}."""
    for flag, value in (("--workers", cfg.workers), ("--steps", cfg.steps), ("--eval-rows", cfg.eval_rows)):
        if value < 1:
            raise TierwiseError(f"{flag} must be at least 1, got {value}")
    sweep = Sweep(cfg)
    try:
        sweep.run({"baseline": None}, "baseline")
        point, spread = dict(MIDPOINT), 0.0
        for name in GRID:
            point, row = sweep.family(point, name, GRID[name], spread, f"objective: {name}")
        point, row = sweep.family(point, "steps", tuple(m * cfg.steps for m in STEPS_GRID), spread, "objective: steps")
        if point["steps"] != cfg.steps:  # at the chosen length, the strongest levers once more
            point, row = sweep.family(point, "reuse", GRID["reuse"] + (1.0,), spread, "objective: reuse at length",
                                      planned=False)
            point, row = sweep.family(point, "kl", GRID["kl"], spread, "objective: kl at length", planned=False)
        gained = sweep.change(row, "eor") >= cfg.min_eor_gain and sweep.keeps_spread(row) and sweep.within_ppl(row)
        objective = [r for r in sweep.rows.values() if r["stage"].startswith("objective")]
        held_by_spread = sweep.best(objective, need_spread=False)  # the most EOR within the perplexity limit
        guard = (not gained and held_by_spread is not None
                 and sweep.change(held_by_spread, "eor") >= cfg.min_eor_gain)
        if guard:  # the spread limits stop the objective: a load-entropy floor, then λ_Reuse under it
            base_point, _ = sweep.family(point, "reuse", GRID["reuse"], 0.0, "guard: base", need_spread=False,
                                         planned=False)
            sweep.expect(len(GUARD_GRID))
            rows = sweep.run(dict(sweep.job(base_point, v)[:2] for v in GUARD_GRID), "guard: spread")
            chosen = sweep.best(rows) or max(rows, key=lambda r: sweep.change(r, "entropy_norm"))
            spread = GUARD_GRID[rows.index(chosen)]
            point, row = sweep.family(base_point, "reuse", GRID["reuse"] + (1.0,), spread, "guard: reuse",
                                      planned=False)
        name, _, default = sweep.job(point, spread)
        steps = point.get("steps", cfg.steps)
        controls(sweep, default, steps)
        return {"rows": sweep.rows, "default": default, "default_run": name, "steps": steps, "guard": guard,
                "config": asdict(cfg)}
    finally:
        sweep.close()


def controls(sweep: Sweep, default: LossWeights, steps: int) -> None:
    """The paper's CE-only control, the ablations of the chosen default (all `steps` long), and the named presets
    (at their own settings)."""
    from tierwise.remoe.training.finetune import PRESETS

    ablations = dict(ABLATIONS)
    if default.spread:
        ablations["no-spread"] = dict(spread=0.0)
        sweep.expect(1)
    jobs = {"ce-only": sweep.finetune_config("ce-only", loss=default, ce_only=True, steps=steps)}
    for name, off in ablations.items():
        jobs[name] = sweep.finetune_config(name, loss=replace(default, **off), steps=steps)
    for preset in PRESETS:
        if preset != "default":
            jobs[f"preset {preset}"] = sweep.finetune_config(f"preset-{preset}", preset=preset)
    sweep.run(jobs, "controls")


def _jsonable(obj: Any) -> Any:
    from tierwise.common.report import to_jsonable

    return to_jsonable(obj)


# --- report -------------------------------------------------------------------------------------------------------

# the summary's relative changes against the original router (fractions; the tables show them in percent)
SUMMARY_CHANGES = {"eor": "EOR gain (%)", "entropy_norm": "entropy change (%)",
                   "effective_experts": "eff. experts change (%)", "ppl": "ppl change (%)"}


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run: its settings and its changes against the original router (relative, as fractions)."""
    rows = result["rows"]
    base = rows["baseline"]

    def change(row: dict[str, Any], key: str) -> float:
        return row[key] / base[key] - 1

    out = []
    for name, r in rows.items():
        loss = (r.get("config") or {}).get("loss", {})
        ce_only = (r.get("config") or {}).get("ce_only", False)
        out.append({
            "run": name + (" ◀ default" if name == result["default_run"] else ""),
            "stage": r["stage"],
            "λ KL/R/S/L/WS/Sp": "CE only" if ce_only else ("—" if not loss else "/".join(
                f"{loss[k]:g}" for k in ("kl", "reuse", "smooth", "lag", "ws", "spread"))),
            "W, T_warm": f"{loss['window']}, {loss['warmup_steps']}" if loss and not ce_only else "—",
            "steps": (r.get("config") or {}).get("steps", "—"),
            "EOR": r["eor"], SUMMARY_CHANGES["eor"]: change(r, "eor"),
            SUMMARY_CHANGES["entropy_norm"]: change(r, "entropy_norm"),
            SUMMARY_CHANGES["effective_experts"]: change(r, "effective_experts"),
            "busiest share": r["max_load_share"], SUMMARY_CHANGES["ppl"]: change(r, "ppl"),
            "uHR@4": r.get("uhr@4"),
        })
    return out


def pareto_plot(result: dict[str, Any], path: Path) -> Path:
    """EOR gain against routing-entropy change and against perplexity change, one point per run, the default
    starred, the limits dashed."""
    from tierwise.common.plots import figure, readable_ticks, save

    rows, base, cfg = result["rows"], result["rows"]["baseline"], result["config"]
    fig, axes = figure(ncols=2, width=11, height=4.4, sharey=True)
    for ax, key, limit, label in ((axes[0], "entropy_norm", -cfg["max_entropy_drop"], "routing entropy change (%)"),
                                  (axes[1], "ppl", cfg["max_ppl_increase"], "held-out perplexity change (%)")):
        for name, r in rows.items():
            x, y = 100 * (r[key] / base[key] - 1), 100 * (r["eor"] / base["eor"] - 1)
            stage = r["stage"]
            color = ("black" if name == "baseline" else "#cc6677" if stage == "controls"
                     else "#228833" if stage.startswith("guard") else "#4477aa")
            marker = "*" if name == result["default_run"] else "o"
            ax.scatter(x, y, color=color, marker=marker, s=160 if marker == "*" else 16, zorder=3)
            if stage == "controls" or marker == "*":
                ax.annotate(name if marker == "o" else "default", (x, y), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.axvline(100 * limit, color="gray", linestyle="--", linewidth=0.8)
        ax.axhline(100 * cfg["min_eor_gain"], color="gray", linestyle=":", linewidth=0.8)
        ax.set_xlabel(label)
        readable_ticks(ax.xaxis)
    axes[0].set_ylabel("EOR gain (%)")
    readable_ticks(axes[0].yaxis)  # shared: sets both panels
    fig.suptitle("Router fine-tuning sweep (blue: objective grid, green: with the spread guard, red: controls)",
                 fontsize=9)
    return save(fig, path)
