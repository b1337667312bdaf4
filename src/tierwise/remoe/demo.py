"""The ReMoE half of `tierwise demo`: trace -> analyze -> short fine-tune -> eval -> offload compare, on the embedded model.

Writes into `out_dir`: summary.md, results.json, the fine-tuned router delta, both routing traces and three plots
(reuse vs horizon, LRU hit rate vs cache size, decode TPOT before/after). Returns the Markdown section that
`tierwise.demo` puts into the combined report, and prints the summary table.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tierwise.common.plots import bar_plot, line_plot
from tierwise.common.progress import console, progress_task
from tierwise.common.report import markdown_table, print_table, write_json
from tierwise.remoe.analysis import cachesim, metrics
from tierwise.remoe.analysis.metrics import CONCENTRATION
from tierwise.remoe.models.corpus import load_corpus
from tierwise.remoe.export.delta import load_router_delta
from tierwise.remoe.analysis.evaluate import EvalConfig, evaluate_pair
from tierwise.remoe.models.adapters import adapter_for, load_model
from tierwise.remoe.offload.compare import offload_compare, resolve_prompts
from tierwise.remoe.offload.runtime import OffloadConfig
from tierwise.remoe.models.routing import capture_generation
from tierwise.remoe.training.finetune import config_with_preset, finetune


@dataclass
class DemoConfig:
    model: str = "embedded"
    prompts: str | None = None  # prompt file; default: the embedded prompts
    trace_prompts: int = 16  # requests traced for the analysis
    trace_tokens: int = 32  # tokens generated per traced request
    finetune_preset: str = "demo"
    finetune_overrides: dict = field(default_factory=dict)  # e.g. steps=2 in tests
    eval_rows: int = 16  # held-out packed rows for perplexity / EOR
    eval_seq_len: int = 256
    offload_prompts: int = 8
    offload_tokens: int = 32
    storage: str = "ufs4"
    target: str = "dsv2-lite-bf16"
    store_dir: str | None = None  # expert store folder (default: the per-model cache folder)
    max_horizon: int = 16
    threads: int = 1  # the embedded model is small: one thread is fastest, and far faster on a busy machine


def _trace(model, prompts_ids, cfg: DemoConfig, label: str):
    with progress_task(f"trace ({label} router)", len(prompts_ids)) as (progress, task):
        return capture_generation(model, prompts_ids, model_name=f"{cfg.model}:{label}", max_new_tokens=cfg.trace_tokens,
                                  progress=lambda n: progress.update(task, completed=n))


def _analyze(trace, cfg: DemoConfig, capacities: list[int]) -> dict:
    """The analysis figures the report plots: reuse vs horizon, and LRU unique hit rate vs cache size (decode)."""
    sweep = cachesim.sweep(trace, ["lru"], capacities)["lru"]
    return {
        "eor_decode": metrics.eor(trace, phase=1),
        "reuse_at_horizon": metrics.reuse_at_horizon(trace, cfg.max_horizon).tolist(),
        "uhr": {c: r.unique_hit_rate for c, r in sweep.items()},
        "misses_per_token_layer": {c: r.misses_per_token_per_layer for c, r in sweep.items()},
    }


def run(out_dir: str | Path, config: DemoConfig | None = None) -> str:
    """Run the ReMoE demo end to end into `out_dir`; returns its Markdown summary section."""
    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = now - since
        return now

    console.print("[bold]ReMoE demo[/]: trace -> analyze -> fine-tune router -> eval -> offload compare")
    model, tokenizer = load_model(cfg.model)
    adapter = adapter_for(model)
    K, E = adapter.top_k, adapter.num_experts
    capacities = sorted({K, K + K // 2, 2 * K, min(E, 4 * K)})
    prompts = resolve_prompts(cfg.model, cfg.prompts, tokenizer)
    prompts_ids = [tokenizer(p)["input_ids"] for p in prompts[: cfg.trace_prompts]]

    # 1-2. trace and analyze the original router
    t = time.perf_counter()
    trace_before = _trace(model, prompts_ids, cfg, "original")
    trace_before.save(out / "trace_original.npz")
    before = _analyze(trace_before, cfg, capacities)
    t = lap("trace + analyze", t)

    # 3. short router fine-tune (the fine-tuner's demo preset)
    ft_cfg = config_with_preset(cfg.finetune_preset, model=cfg.model, out=str(out / "finetune"), overwrite=True,
                                **cfg.finetune_overrides)
    result = finetune(ft_cfg)
    delta = load_router_delta(result.delta_path)
    t = lap("fine-tune", t)

    # 4. held-out eval before/after (perplexity, EOR_tf, concentration, uHR, agreement with the original; leaves the
    # fine-tuned router applied) and the fine-tuned router's decode trace
    corpus = load_corpus("embedded:heldout", tokenizer, cfg.eval_seq_len, max_rows=cfg.eval_rows)
    eval_cfg = EvalConfig(seq_len=cfg.eval_seq_len, max_rows=cfg.eval_rows)
    with progress_task("held-out eval", 1) as (progress, task):
        paired = evaluate_pair(model, corpus, delta, eval_cfg, model_name="original")
        progress.update(task, advance=1)
    eval_before, eval_after = paired["before"], paired["after"]
    trace_after = _trace(model, prompts_ids, cfg, "fine-tuned")
    trace_after.save(out / "trace_finetuned.npz")
    after = _analyze(trace_after, cfg, capacities)
    t = lap("eval + trace", t)

    # 5. offload compare: C = K experts per layer, modelled storage, original vs fine-tuned router
    del model
    model, tokenizer = load_model(cfg.model)
    offload = offload_compare(model, tokenizer, prompts[: cfg.offload_prompts], cfg.offload_tokens,
                              OffloadConfig(cache_experts=K, storage=cfg.storage, target=cfg.target,
                                            store_dir=Path(cfg.store_dir) if cfg.store_dir else None),
                              router=result.delta_path, compare=True)
    lap("offload compare", t)

    # report
    horizons = list(range(1, cfg.max_horizon + 1))
    line_plot({"original": (horizons, before["reuse_at_horizon"]), "fine-tuned": (horizons, after["reuse_at_horizon"])},
              out / "reuse_vs_horizon.png", title="Expert reuse vs horizon (decode trace)",
              xlabel="horizon h (previous tokens)", ylabel="share of experts reused")
    line_plot({"original": (capacities, [before["uhr"][c] for c in capacities]),
               "fine-tuned": (capacities, [after["uhr"][c] for c in capacities])},
              out / "hit_rate_vs_cache.png", title="LRU expert-cache hit rate vs cache size (decode)",
              xlabel="cache size C (experts per layer)", ylabel="unique hit rate uHR@C")
    runs = offload["runs"]
    bar_plot({f"{label}\n{'measured' if kind == 'measured' else '+ modelled I/O'}": runs[label]["tpot_ms"][kind]["mean"]
              for label in ("original", "fine-tuned") for kind in ("measured", "total")},
             out / "tpot_before_after.png", title=f"Decode TPOT, C = K = {K}, {cfg.storage} x {cfg.target}",
             ylabel="mean TPOT (ms)")
    rows = [
        {"metric": "held-out perplexity", "original": eval_before["ppl"], "fine-tuned": eval_after["ppl"]},
        {"metric": "EOR (teacher-forced, held-out)", "original": eval_before["eor"], "fine-tuned": eval_after["eor"]},
        *({"metric": f"routing {name} (held-out)", "original": eval_before[k], "fine-tuned": eval_after[k]}
          for k, name in CONCENTRATION.items()),
        {"metric": "EOR (generated decode)", "original": before["eor_decode"], "fine-tuned": after["eor_decode"]},
        {"metric": f"uHR@{K} (LRU, decode)", "original": before["uhr"][K], "fine-tuned": after["uhr"][K]},
        {"metric": f"misses/token/layer @C={K}", "original": before["misses_per_token_layer"][K],
         "fine-tuned": after["misses_per_token_layer"][K]},
        {"metric": "offload: decode misses/token", "original": runs["original"]["decode"]["misses_per_token"],
         "fine-tuned": runs["fine-tuned"]["decode"]["misses_per_token"]},
        {"metric": "offload: TPOT ms (measured)", "original": runs["original"]["tpot_ms"]["measured"]["mean"],
         "fine-tuned": runs["fine-tuned"]["tpot_ms"]["measured"]["mean"]},
        {"metric": f"offload: TPOT ms (+ modelled {cfg.storage})", "original": runs["original"]["tpot_ms"]["total"]["mean"],
         "fine-tuned": runs["fine-tuned"]["tpot_ms"]["total"]["mean"]},
    ]
    for row in rows:
        row["ratio"] = row["fine-tuned"] / row["original"] if row["original"] else float("nan")
    speedup = offload["tpot_speedup"]["total"]
    total = time.perf_counter() - t0
    print_table(rows, title=f"ReMoE demo ({cfg.model}, E={E}, K={K}): decode TPOT speedup {speedup:.2f}x")
    warning = paired["concentration_warning"]
    if warning:
        console.print(warning, style="bold yellow", markup=False)
    write_json({"config": asdict(cfg), "timings_s": timings,
                "eval": {"original": eval_before, "fine-tuned": eval_after, "vs_original": paired["vs_original"],
                         "concentration_warning": warning},
                "analysis": {"original": before, "fine-tuned": after}, "offload": offload,
                "finetune": {"steps": result.steps_done, "seconds": result.seconds, "delta": result.delta_path}},
               out / "results.json")
    section = "\n".join([
        "## ReMoE: router fine-tuning for expert reuse\n",
        f"Model `{cfg.model}` ({adapter.model_type}, E = {E} routed experts, top-{K}, MoE layers "
        f"{list(adapter.moe_layers)}). Router fine-tuned for {result.steps_done} steps ({result.seconds:.0f} s, preset "
        f"`{cfg.finetune_preset}`); offloading with C = K = {K} experts per layer in memory, misses read from the "
        f"on-disk expert store and charged as {cfg.storage} fetches of a {cfg.target} expert.\n",
        markdown_table(rows, columns=["metric", "original", "fine-tuned", "ratio"]),
        f"**Decode TPOT speedup (fine-tuned vs original router): {speedup:.2f}x** "
        f"(measured wall time alone: {offload['tpot_speedup']['measured']:.2f}x).\n",
        *([f"**{warning}**\n"] if warning else []),
        "![reuse vs horizon](reuse_vs_horizon.png) ![hit rate vs cache size](hit_rate_vs_cache.png) "
        "![TPOT before/after](tpot_before_after.png)\n",
        "Stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s.\n",
    ])
    (out / "summary.md").write_text(section)
    return section.replace("](", f"]({out.name}/")
