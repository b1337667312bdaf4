"""The λ sweep, ablations and CE-only control of docs/results-remoe.md, on one model in one process.

Every run starts from the original gates, fine-tunes the routers with `tierwise.remoe.training.finetune.finetune` on the train
split and is evaluated with `tierwise.remoe.analysis.evaluate.evaluate_model` on the same held-out rows as the baseline.
Results are appended to OUT/runs.jsonl as each run ends (a rerun skips runs already there), then OUT/summary.md and
OUT/eor_vs_ppl.png are written.

    nice .venv/bin/python scripts/remoe_sweep.py --out reports/remoe-sweep [--runs default,ce-only,...] [--steps 150]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from tierwise.common.report import markdown_table, to_jsonable
from tierwise.remoe.models.corpus import load_corpus
from tierwise.remoe.export.delta import RouterDelta, apply_router_delta, delta_meta, router_state
from tierwise.remoe.analysis.evaluate import EvalConfig, evaluate_model
from tierwise.remoe.models.adapters import load_model
from tierwise.remoe.training.objective import LossWeights
from tierwise.remoe.training.finetune import FinetuneConfig, config_with_preset, finetune

D = LossWeights()  # the defaults under test
RUNS: dict[str, dict] = {
    # λ family sweeps around the defaults (one family at a time, remoe.md §4)
    "default": {},
    "kl=0.3": dict(loss=replace(D, kl=0.3)),
    "kl=3": dict(loss=replace(D, kl=3.0)),
    "loc x0.5": dict(loss=replace(D, reuse=D.reuse / 2, smooth=D.smooth / 2, lag=D.lag / 2, ws=D.ws / 2)),
    "loc x2": dict(loss=replace(D, reuse=D.reuse * 2, smooth=D.smooth * 2, lag=D.lag * 2, ws=D.ws * 2)),
    # the paper's control and the ablations (each term off)
    "ce-only": dict(ce_only=True),
    "no-trust": dict(loss=replace(D, kl=0.0)),
    "no-reuse": dict(loss=replace(D, reuse=0.0)),
    "no-smooth": dict(loss=replace(D, smooth=0.0)),
    "no-lag": dict(loss=replace(D, lag=0.0)),
    "no-ws": dict(loss=replace(D, ws=0.0)),
    "no-consistency": dict(loss=replace(D, smooth=0.0, lag=0.0, ws=0.0)),
    # the short preset used by the demo
    "demo": dict(preset="demo"),
}
COLUMNS = ("run", "eor", "eor_gain", "ppl", "ppl_change", "uhr@4", "misses_per_token@4", "uhr@8",
           "effective_experts", "max_load_share", "load_cv", "entropy_norm", "train_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--out", default="reports/remoe-sweep")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of: {', '.join(RUNS)}")
    ap.add_argument("--steps", type=int, default=None, help="override the steps of every non-preset run")
    ap.add_argument("--eval-rows", type=int, default=256, help="held-out rows of 256 tokens, spread evenly")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, tokenizer = load_model(args.model)
    original = RouterDelta(router_state(model), delta_meta(model))
    heldout = load_corpus("embedded:heldout", tokenizer, 256, max_rows=args.eval_rows)
    train_corpora: dict[int, object] = {}
    log = out / "runs.jsonl"
    done = {json.loads(line)["run"]: json.loads(line) for line in log.read_text().splitlines()} if log.is_file() else {}

    if "baseline" not in done:
        base = {"run": "baseline", **evaluate_model(model, heldout, EvalConfig(), model_name=args.model)}
        done["baseline"] = base
        with log.open("a") as f:
            f.write(json.dumps(to_jsonable(base)) + "\n")
    for name in args.runs.split(","):
        if name in done:
            continue
        spec = dict(RUNS[name])
        preset = spec.pop("preset", "default")
        cfg = config_with_preset(preset, model=args.model, out=str(out / name.replace(" ", "_")), checkpoint_every=0,
                                 overwrite=True)  # a run not in runs.jsonl is redone from the start
        cfg = replace(cfg, **spec)
        if args.steps is not None and preset == "default":
            cfg = replace(cfg, steps=args.steps)
        if cfg.seq_len not in train_corpora:
            train_corpora[cfg.seq_len] = load_corpus(cfg.data, tokenizer, cfg.seq_len)
        corpus = train_corpora[cfg.seq_len]
        if cfg.max_docs is not None:  # a preset that reads fewer documents must see exactly those
            corpus = load_corpus(cfg.data, tokenizer, cfg.seq_len, max_docs=cfg.max_docs)
        apply_router_delta(model, original)
        result = finetune(cfg, model=model, corpus=corpus)
        row = {"run": name, "train_s": result.seconds, "steps": cfg.steps, "config": cfg.to_dict(),
               **evaluate_model(model, heldout, EvalConfig(), model_name=f"{args.model}+{name}")}
        done[name] = row
        with log.open("a") as f:
            f.write(json.dumps(to_jsonable(row)) + "\n")
    apply_router_delta(model, original)
    write_summary(done, out)


def write_summary(done: dict[str, dict], out: Path) -> None:
    base = done["baseline"]
    rows = []
    for name, r in done.items():
        rows.append({**{c: r.get(c) for c in COLUMNS}, "run": name,
                     "eor_gain": f"{100 * (r['eor'] / base['eor'] - 1):+.1f}%",
                     "ppl_change": f"{100 * (r['ppl'] / base['ppl'] - 1):+.2f}%"})
    (out / "summary.md").write_text(markdown_table(rows, COLUMNS))
    scatter_plot(done, out / "eor_vs_ppl.png")
    print((out / "summary.md").read_text())


def scatter_plot(done: dict[str, dict], path: Path) -> None:
    """One labelled point per run: held-out perplexity vs EOR, with the +1 % perplexity budget marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=120)
    for name, r in done.items():
        color = "black" if name == "baseline" else ("#cc6677" if name == "ce-only" or name.startswith("no-") else "#4477aa")
        ax.scatter(r["ppl"], r["eor"], color=color, s=18)
        ax.annotate(name, (r["ppl"], r["eor"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(done["baseline"]["ppl"] * 1.01, color="gray", linestyle="--", linewidth=0.8, label="baseline PPL +1 %")
    ax.set_title("Router fine-tuning: EOR vs held-out perplexity (blue: λ sweep, red: ablations/control)")
    ax.title.set_fontsize(9)
    ax.set_xlabel("held-out perplexity")
    ax.set_ylabel("EOR (teacher-forced)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
