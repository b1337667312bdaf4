"""The ReMoE half of `tierwise demo`: trace -> analyze -> short fine-tune -> eval -> offload compare, on the embedded model.

The offload step runs what `tierwise remoe offload --compare original,remoe` runs: C = K experts per layer, every
miss a real read from the on-disk expert store, both routers on the same requests of the replay workload (held-out
text, teacher-forced: the same tokens under both routers) by default. The TPOT it quotes (`tpot_ms.total`) is the
one that includes the storage: the overlap timing model's (a real target model on a real device, expert fetches on
one I/O channel overlapping compute; docs/offload.md), or the measured wall clock for the `local` profile.

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
from tierwise.remoe.offload.compare import Setting, resolve_prompts, run_offload
from tierwise.remoe.offload.runtime import OffloadConfig
from tierwise.remoe.offload.workload import Workload, prompt_requests, replay_requests
from tierwise.remoe.models.routing import capture_generation
from tierwise.remoe.training.finetune import config_with_preset, finetune


@dataclass
class DemoConfig:
    model: str = "embedded"
    prompts: str | None = None  # prompt file (traces; offload with the greedy workload); default: the embedded prompts
    trace_prompts: int = 16  # requests traced for the analysis
    trace_tokens: int = 32  # tokens generated per traced request
    finetune_preset: str = "demo"
    finetune_overrides: dict = field(default_factory=dict)  # e.g. steps=2 in tests
    eval_rows: int = 16  # held-out packed rows for perplexity / EOR
    eval_seq_len: int = 256
    offload_workload: str = "replay"  # replay (held-out text, as `remoe offload`) | greedy | sample (T=1) of prompts
    offload_data: str = "embedded:heldout"  # replay documents
    offload_requests: int = 8  # replay documents (or prompts)
    offload_prompt_tokens: int = 32  # replay: prompt tokens from the start of each document
    offload_tokens: int = 32  # decode steps per request
    storage: str = "ufs4"  # `local`: measured only
    target: str = "dsv2-lite-bf16"  # the model the timing model stands for
    platform: str | None = None  # its compute device (default: the storage profile's)
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

    # 5. offload compare: C = K experts per layer, original vs fine-tuned router on the same requests (held-out
    # replay by default, as `tierwise remoe offload`), TPOT with the storage modelled for the target (or measured)
    del model
    model, tokenizer = load_model(cfg.model)
    work = Workload(cfg.offload_workload)
    if work.kind == "replay":
        requests = replay_requests(cfg.offload_data, tokenizer, cfg.offload_prompt_tokens, cfg.offload_tokens,
                                   cfg.offload_requests)
    else:
        requests = prompt_requests([tokenizer(p)["input_ids"] for p in prompts[: cfg.offload_requests]])
    offload = run_offload(model, requests, cfg.offload_tokens,
                          OffloadConfig(cache_experts=K, storage=cfg.storage, target=cfg.target, platform=cfg.platform,
                                        store_dir=Path(cfg.store_dir) if cfg.store_dir else None),
                          [Setting("original"), Setting("fine-tuned", router=True)], workload=work,
                          router=result.delta_path)
    lap("offload compare", t)

    # report
    horizons = list(range(1, cfg.max_horizon + 1))
    line_plot({"original": (horizons, before["reuse_at_horizon"]), "fine-tuned": (horizons, after["reuse_at_horizon"])},
              out / "reuse_vs_horizon.png", title="Expert reuse vs horizon (decode trace)",
              xlabel="horizon h (previous tokens)", ylabel="share of experts reused (0-1)")
    line_plot({"original": (capacities, [before["uhr"][c] for c in capacities]),
               "fine-tuned": (capacities, [after["uhr"][c] for c in capacities])},
              out / "hit_rate_vs_cache.png", title="LRU expert-cache hit rate vs cache size (decode)",
              xlabel="cache size C (experts per layer)", ylabel="unique hit rate uHR@C (0-1)")
    runs, oc, ow = offload["runs"], offload["config"], offload["workload"]
    modelled = oc["timing"] is not None and not oc["throttle"]  # else `total` is the measured wall clock
    where = f"{oc['target']} on {oc['platform']}, {oc['storage']}" if modelled else f"{oc['storage']} store reads"
    kinds = {"measured": "measured here", "total": "modelled"} if modelled else {"total": "measured"}
    bar_plot({f"{label}\n{name}": runs[label]["tpot_ms"][kind]["mean"]
              for label in ("original", "fine-tuned") for kind, name in kinds.items()},
             out / "tpot_before_after.png",
             title=f"Decode TPOT, C = K = {K}\n{'modelled: ' if modelled else 'measured, '}{where}",
             ylabel="mean TPOT (ms)")
    offload_tpot_rows = [
        *([{"metric": "offload: TPOT ms measured on this machine",
            "original": runs["original"]["tpot_ms"]["measured"]["mean"],
            "fine-tuned": runs["fine-tuned"]["tpot_ms"]["measured"]["mean"]}] if modelled else []),
        {"metric": f"offload: TPOT ms {'modelled' if modelled else 'measured'} ({where})",
         "original": runs["original"]["tpot_ms"]["total"]["mean"],
         "fine-tuned": runs["fine-tuned"]["tpot_ms"]["total"]["mean"]},
    ]
    replay = ow["kind"] == "replay"
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
        *offload_tpot_rows,
        *([{"metric": "offload: replay perplexity", "original": runs["original"]["quality"]["ppl"],
            "fine-tuned": runs["fine-tuned"]["quality"]["ppl"]}] if replay else []),
    ]
    for row in rows:
        row["ratio"] = row["fine-tuned"] / row["original"] if row["original"] else float("nan")
    speedup = offload["tpot_speedup"]["total"]
    total = time.perf_counter() - t0
    print_table(rows, title=f"ReMoE demo ({cfg.model}, E={E}, K={K}): decode TPOT speedup {speedup:.2f}x "
                            f"({'modelled' if modelled else 'measured'})")
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
        f"`{cfg.finetune_preset}`). Offloading: C = K = {K} experts per layer in memory, every miss a real read from "
        f"the on-disk expert store; {_workload_sentence(ow, cfg)}, the same requests under both routers.\n",
        markdown_table(rows, columns=["metric", "original", "fine-tuned", "ratio"]),
        f"**Decode TPOT speedup (fine-tuned vs original router): {speedup:.2f}x**, "
        f"{_tpot_sentence(offload, modelled)}\n",
        *([f"**{warning}**\n"] if warning else []),
        "![reuse vs horizon](reuse_vs_horizon.png) ![hit rate vs cache size](hit_rate_vs_cache.png) "
        "![TPOT before/after](tpot_before_after.png)\n",
        "Stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s.\n",
    ])
    (out / "summary.md").write_text(section)
    return section.replace("](", f"]({out.name}/")


def _workload_sentence(w: dict, cfg: DemoConfig) -> str:
    if w["kind"] == "replay":
        return (f"workload: replay of {w['requests']} held-out continuations ({cfg.offload_data}, "
                f"{cfg.offload_prompt_tokens}-token prompts, {w['new_tokens']} real tokens fed one per decode step)")
    return f"workload: {w['kind']} decoding of {w['requests']} prompts, {w['new_tokens']} tokens each"


def _tpot_sentence(offload: dict, modelled: bool) -> str:
    """What the quoted TPOT (`tpot_ms.total`) is: the overlap-modelled TPOT with the storage, or the measured one."""
    c, speedup = offload["config"], offload["tpot_speedup"]
    if not modelled:
        return (f"measured on this machine, store reads included (`{c['storage']}`"
                + (", throttled to the profile's fetch time" if c["throttle"] else "") + ").")
    t = c["timing"]
    return (f"modelled for `{c['target']}` ({t['target_moe_layers']} MoE layers) on `{c['platform']}` with experts "
            f"fetched from `{c['storage']}` ({c['fetch_ms']:.2f} ms per fetch on one I/O channel, overlapping the "
            f"target's compute; the measured hits and misses replayed on the target's shape, docs/offload.md). "
            f"The wall clock measured on this machine (this model's own experts, read synchronously from the store, "
            f"no storage model): {speedup['measured']:.2f}x.")
