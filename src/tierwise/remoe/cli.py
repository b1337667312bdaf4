"""`tierwise remoe ...` commands: parse flags, call `tierwise.remoe.api` (or the library), print or emit the result.

One convention for every command: `--json PATH` writes every number (`-`: standard output carries only the JSON,
no table, no progress); `--plot DIR` where there are plots; the same name for the same thing (`--seed`, `--threads`
for torch threads, `--device`, `--workers` for runs side by side). An option left unset takes its default from the
command's config dataclass (`api.defaults`); --help shows it from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperCommand

from tierwise.common.cli import emit, json_only

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

MODEL_HELP = "MoE checkpoint: local HF folder, hub id (online), or 'embedded'."
DEVICE_HELP = "Where the model runs: cpu, cuda, cuda:N, mps, or auto (cuda when available)."
DTYPE_HELP = "Weights and compute dtype: fp32, bf16 or fp16."
THREADS_HELP = "torch CPU threads (default: torch's choice)."


def defaults_from(api_name: str) -> type[TyperCommand]:
    """A command class whose --help shows, for options left at None, the defaults `api.defaults(api_name)` reads
    from the config dataclasses. They are read only when help is asked for: the configs live in torch modules,
    and the CLI starts without loading them."""

    class ConfigDefaults(TyperCommand):
        def format_help(self, ctx, formatter) -> None:
            from tierwise.remoe.api import defaults

            known = defaults(api_name)
            for param in self.params:
                if param.default is None and known.get(param.name) not in (None, ()):
                    param.default = known[param.name]  # help exits next: the command never runs with it
            super().format_help(ctx, formatter)

    return ConfigDefaults


def json_option(what: str = "every number") -> Any:
    return typer.Option(None, "--json", metavar="PATH",
                        help=f"Write {what} as JSON to PATH ('-': standard output, then without the tables).")


def device_option(help: str = DEVICE_HELP) -> Any:
    return typer.Option(None, "--device", help=help)


def dtype_option(help: str = DTYPE_HELP) -> Any:
    return typer.Option(None, "--dtype", help=help)


def threads_option(help: str = THREADS_HELP) -> Any:
    return typer.Option(None, "--threads", help=help)


def given(**values: Any) -> dict[str, Any]:
    from tierwise.remoe.api import given as not_none

    return not_none(**values)


# -- the embedded model: pretrain ----------------------------------------------------------------------------------


@app.command(cls=defaults_from("pretrain"))
def pretrain(
    out: Path = typer.Option(..., "--out", help="Output folder for the HF checkpoint and pretrain_report.json."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (the shipped checkpoint: 2500)."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per step."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per sequence."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (linear warm-up, then cosine to 10%)."),
    warmup_steps: Optional[int] = typer.Option(None, help="Learning-rate warm-up steps."),
    aux_alpha: Optional[float] = typer.Option(None, help="Coefficient of the switch-style load-balancing loss."),
    seed: Optional[int] = typer.Option(None, help="Seed of initialisation and batch sampling (runs are "
                                       "deterministic)."),
    threads: Optional[int] = threads_option("torch CPU threads."),
    save_every: Optional[int] = typer.Option(None, help="Also write the checkpoint every N steps (0: only at the "
                                             "end)."),
    stop_after: Optional[int] = typer.Option(None, help="End after N steps of the --steps schedule (0: all), e.g. to "
                                             "reproduce a snapshot."),
    tokenizer: Optional[Path] = typer.Option(None, help="Tokenizer folder (default: the embedded tokenizer)."),
    json_path: Optional[str] = json_option("the pretraining report"),
) -> None:
    """Pretrain the embedded DeepSeek-V2-style MoE from scratch on the embedded corpus (train split)."""
    from dataclasses import replace

    from tierwise.common.report import print_table
    from tierwise.remoe.training.pretrain import PretrainConfig, load_tokenizer, pretrain as run_pretrain

    json_only(json_path)
    cfg = replace(PretrainConfig(), **given(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed,
                                            warmup_steps=warmup_steps, aux_alpha=aux_alpha, threads=threads,
                                            save_every=save_every, stop_after=stop_after))
    report = run_pretrain(cfg, out, load_tokenizer(tokenizer))
    if emit(report, json_path):
        return
    print_table([{"parameters": report["parameters"], "train (s)": report["train_seconds"],
                  **{k: report[k] for k in ("final_train_ce", "heldout_ppl", "eor", "load_cv", "entropy_norm")}}],
                title=f"pretrained -> {out}")


# -- expert offloading ---------------------------------------------------------------------------------------------


@app.command(cls=defaults_from("offload"))
def offload(
    model: str = typer.Argument(..., help=MODEL_HELP),
    cache_experts: Optional[int] = typer.Option(None, "--cache-experts", "-C", help="Experts kept in memory per MoE "
                                                "layer (K..E; default K)."),
    storage: Optional[str] = typer.Option(None, help="Storage profile of one expert fetch: local, ufs4, nvme, emmc, "
                                          "pcie3-host or pcie4-host."),
    target: Optional[str] = typer.Option(None, help="Model the timing model stands for: a named target, 'own', or "
                                         "an expert size such as 17.3MB (KB/MB decimal, K/M binary)."),
    platform: Optional[str] = typer.Option(None, help="Compute device of the timing model: jetson-orin-nx, "
                                           "jetson-agx-orin, rtx3090 or rtx4090 (default: the storage profile's)."),
    throttle: bool = typer.Option(False, "--throttle", help="Make every store read take the profile's fetch time of "
                                  "real time, on one I/O thread: measured time then includes the storage."),
    policy: Optional[str] = typer.Option(None, help="Expert cache policy: lru, lfu, fifo or lfru."),
    workload: Optional[str] = typer.Option(None, help="replay (held-out text, teacher-forced; the default), sample, "
                                           "or greedy (the default when --prompts is given)."),
    data: Optional[str] = typer.Option(None, "--data", help="Replay documents: .txt/.jsonl/.json, embedded:heldout "
                                       "(default for the embedded model) or hf:NAME[:SPLIT]."),
    prompt_tokens: Optional[int] = typer.Option(None, help="Replay: prompt tokens taken from each document."),
    prompts: Optional[Path] = typer.Option(None, help="Prompts for greedy/sample (.txt one per line, or .jsonl); "
                                           "default: the embedded prompts."),
    limit: Optional[int] = typer.Option(None, help="Requests: the first N prompts, or N replay documents "
                                        "(default 16)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Tokens per request (decoded, or replayed), no early "
                                                 "stop."),
    temperature: Optional[float] = typer.Option(None, help="Sample: softmax temperature."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Sample: nucleus probability mass."),
    seed: Optional[int] = typer.Option(None, help="Sample: seed of the per-(request, step) random numbers."),
    router: Optional[Path] = typer.Option(None, help="ReMoE router delta (.safetensors): run it instead of the "
                                          "original ('remoe' in --compare)."),
    prefetch: Optional[int] = typer.Option(None, help="Next-layer prefetch of N experts per layer (0: off; "
                                           "'prefetch' in --compare uses N, default K; with --compare, the list "
                                           "must use it)."),
    reroute: Optional[float] = typer.Option(None, help="Cache-aware rerouting strength LAMBDA (0: off; 'reroute' in "
                                            "--compare uses it, default 0.5; with --compare, the list must use it)."),
    protect: Optional[int] = typer.Option(None, help="Rerouting: the original top-J experts are never displaced; "
                                          "only with a configuration that reroutes."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Comma list of configurations run side by side: "
                                          "original, remoe, prefetch, reroute, and combinations such as "
                                          "remoe+prefetch."),
    verify: bool = typer.Option(False, "--verify", help="Check every token and the logits of each configuration "
                                "that keeps the routing against the resident model; fail on a mismatch."),
    store: Optional[Path] = typer.Option(None, help="Expert store folder (default: one per model under "
                                         "~/.cache/tierwise/expert-stores)."),
    json_path: Optional[str] = json_option(),
    threads: Optional[int] = threads_option("torch CPU threads (B = 1 decode of small models is fastest on one)."),
    device: Optional[str] = device_option(DEVICE_HELP + " The expert cache lives there; misses are read from the "
                                          "store through host memory."),
    dtype: Optional[str] = dtype_option(DTYPE_HELP[:-1] + "; the expert store holds experts in it."),
) -> None:
    """Decode with routed experts offloaded to an on-disk store and at most C per layer in memory; compare routers
    and runtime techniques (prefetch, rerouting) on the same requests."""
    from tierwise.remoe import api

    json_only(json_path)
    result = api.offload(model, router, **given(
        cache_experts=cache_experts, storage=storage, target=target, platform=platform, throttle=throttle,
        policy=policy, workload=workload, data=data, prompt_tokens=prompt_tokens, prompts=prompts, limit=limit,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, prefetch=prefetch,
        reroute=reroute, protect=protect, compare=compare, verify=verify, store=store, threads=threads,
        device=device, dtype=dtype))
    if not emit(result, json_path):
        print_offload(result)


def print_offload(result) -> None:
    """`offload`'s tables: what ran, the configurations side by side, the routing, warnings and --verify."""
    from dataclasses import asdict

    from rich import box

    from tierwise.common.report import print_table, stdout, table
    from tierwise.remoe.offload import compare as cmp

    figures = asdict(result)  # the offload.compare tables read the JSON's shape
    c, w = result.config, result.workload
    kind = w["kind"]
    what = {"replay": f"replay of {w['requests']} held-out continuations ({result.data}, "
                      f"{w['prompt_tokens'][0]}-token prompts)",
            "sample": f"sampling of {w['requests']} prompts (T={w.get('temperature', 0):g}, "
                      f"top-p={w.get('top_p', 0):g}, seed {w.get('seed')})",
            "greedy": f"greedy decoding of {w['requests']} prompts"}[kind]
    stdout.print(f"offload {result.model}, workload: {what}, {result.max_new_tokens} tokens each. "
                 f"C={c['cache_experts']} of E={c['num_experts']} (K={c['top_k']}), {c['policy']}, "
                 f"store I/O {c['store_io']}.")
    if c["timing"] is not None:
        t = c["timing"]
        stdout.print(f"modelled: {c['target']} ({t['target_moe_layers']} MoE layers) on {c['platform']} with "
                     f"{c['storage']}: {c['fetch_ms']:.3f} ms per expert fetch, overlapped with compute "
                     f"(expert {t['expert_ms']:.3f} ms, layer {t['attention_ms']:.3f} ms)"
                     + ("; measured includes the throttled storage" if c["throttle"] else ""))
    summary = table(cmp.summary_rows(figures), title=f"offload, {kind} workload")
    summary.box = box.SIMPLE_HEAD
    stdout.print(summary)
    for line in cmp.legend(figures):
        stdout.print(line, markup=False)
    print_table(cmp.routing_rows(figures), title=f"decode routing, {kind} workload (mean over MoE layers)")
    for label, vs in result.vs_original.items():
        if vs["concentration_warning"]:
            stdout.print(f"{label}: {vs['concentration_warning']}", style="bold yellow", markup=False)
    if result.verify is not None:
        v = result.verify
        stdout.print(f"--verify: {', '.join(v['checked']) or 'none'} equal to the resident model (max |logit "
                     f"difference| {max(v['checked'].values(), default=0.0):.2g}, tolerance {v['tolerance']:g})"
                     + (f"; not checked (rerouting changes the routing): {', '.join(v['skipped'])}"
                        if v["skipped"] else ""), markup=False)


# -- ReMoE router fine-tuning: finetune / sweep / eval / lm-eval / apply-router --------------------------------------


@app.command(cls=defaults_from("finetune"))
def finetune(
    model: str = typer.Argument("embedded", help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, "--data", help="Training text: .txt, .jsonl/.json (text, "
                                       "prompt/completion, messages, conversations), embedded:train, or "
                                       "hf:NAME[:SPLIT]."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder: router_delta.safetensors, config.json, "
                                       "train_log.jsonl, checkpoint/."),
    preset: str = typer.Option("default", help="Named settings to start from: 'default' (the swept defaults shown "
                               "here), 'demo' (a ~1 min CPU run) or 'aggressive' (more EOR by collapsing the routing "
                               "onto fewer experts)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per packed sequence."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per micro-batch per process."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate of the gates."),
    lr_warmup: Optional[int] = typer.Option(None, help="Linear LR warm-up steps, then cosine."),
    min_lr_ratio: Optional[float] = typer.Option(None, help="Cosine floor as a fraction of --lr."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay."),
    grad_clip: Optional[float] = typer.Option(None, help="Gradient-norm clip."),
    dtype: Optional[str] = dtype_option("fp32 or bf16: storage of the frozen weights and the autocast compute; "
                                        "gates, reference gates and every loss term stay fp32."),
    device: Optional[str] = device_option(DEVICE_HELP + " Under accelerate launch each process takes its own device "
                                          "of that kind."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute each decoder "
                                                "layer in the backward pass: keeps one layer's activations instead "
                                                "of all, for about a third more compute."),
    seed: Optional[int] = typer.Option(None, help="Seed of the data order."),
    lambda_kl: Optional[float] = typer.Option(None, "--lambda-kl", help="λ_KL, trust region KL(P‖P_ref)."),
    lambda_reuse: Optional[float] = typer.Option(None, "--lambda-reuse", help="λ_Reuse."),
    lambda_smooth: Optional[float] = typer.Option(None, "--lambda-smooth", help="λ_Smooth."),
    lambda_lag: Optional[float] = typer.Option(None, "--lambda-lag", help="λ_Lag."),
    lambda_ws: Optional[float] = typer.Option(None, "--lambda-ws", help="λ_WS."),
    lambda_spread: Optional[float] = typer.Option(None, "--lambda-spread", help="λ_Spread, the load-entropy floor "
                                                  "that keeps routing spread."),
    window: Optional[int] = typer.Option(None, help="W, tokens per L_WS window."),
    t_warm: Optional[int] = typer.Option(None, "--t-warm", help="T_warm, steps of the locality warm-up "
                                         "α_s = min(1, s/T_warm); 0: none."),
    lags: Optional[str] = typer.Option(None, help="Comma-separated lags of L_Lag."),
    no_trust: bool = typer.Option(False, "--no-trust", help="Ablation: λ_KL = 0."),
    no_reuse: bool = typer.Option(False, "--no-reuse", help="Ablation: λ_Reuse = 0."),
    no_smooth: bool = typer.Option(False, "--no-smooth", help="Ablation: λ_Smooth = 0."),
    no_lag: bool = typer.Option(False, "--no-lag", help="Ablation: λ_Lag = 0."),
    no_ws: bool = typer.Option(False, "--no-ws", help="Ablation: λ_WS = 0."),
    ce_only: bool = typer.Option(False, "--ce-only", help="The paper's control: train the router with L_CE alone."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints; 0: none."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint (same settings required)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove the outputs of an earlier run in --out first "
                                   "(a non-empty --out is refused otherwise)."),
    stop_after: Optional[int] = typer.Option(None, help="End this session after this step, leaving a resumable "
                                             "checkpoint."),
    doc_separator: Optional[str] = typer.Option(None, help="Split plain-text data into documents at this string."),
    max_docs: Optional[int] = typer.Option(None, help="Use at most this many documents (spread evenly over the "
                                           "data)."),
    threads: Optional[int] = threads_option("torch CPU threads per process (default: torch's choice; 1 is fastest "
                                            "on a busy machine)."),
    check_rows: Optional[int] = typer.Option(None, help="After the run, compare the original and new routers on N "
                                             "rows of --data: EOR beside routing entropy, effective experts and "
                                             "busiest share (0: skip)."),
    json_path: Optional[str] = json_option("the run's summary (every step's losses, the routing check)"),
) -> None:
    """Fine-tune only the router (gate) weights with the ReMoE locality objective; writes a router-only delta."""
    from tierwise.remoe import api

    json_only(json_path)
    result = api.finetune(model, data=data, out=out, preset=preset, **given(
        check_rows=check_rows, threads=threads, steps=steps, seq_len=seq_len, batch_size=batch_size,
        grad_accum=grad_accum, lr=lr, lr_warmup=lr_warmup, min_lr_ratio=min_lr_ratio, weight_decay=weight_decay,
        grad_clip=grad_clip, dtype=dtype, device=device, gradient_checkpointing=gradient_checkpointing, seed=seed,
        checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite, stop_after=stop_after,
        doc_separator=doc_separator, max_docs=max_docs, ce_only=ce_only, lambda_kl=lambda_kl,
        lambda_reuse=lambda_reuse, lambda_smooth=lambda_smooth, lambda_lag=lambda_lag, lambda_ws=lambda_ws,
        lambda_spread=lambda_spread, window=window, t_warm=t_warm, lags=lags, no_trust=no_trust, no_reuse=no_reuse,
        no_smooth=no_smooth, no_lag=no_lag, no_ws=no_ws))
    if not emit(result, json_path):
        print_finetune(result)


def print_finetune(result) -> None:
    """The last step's losses, then the routing check: EOR beside the load concentration of both routers."""
    from tierwise.common.report import print_table, stdout
    from tierwise.remoe.analysis.evaluate import concentration_rows
    from tierwise.remoe.training.finetune import CHECKPOINT_DIR, DELTA_NAME

    delta = result.delta_path or result.out / CHECKPOINT_DIR / DELTA_NAME
    if result.history:
        last = result.history[-1]
        # the running EOR is left to train_log.jsonl: an EOR is shown only beside its load concentration (below)
        print_table([{k: last[k] for k in last if k not in ("lr", "grad_norm", "eor_running")}],
                    title=f"step {result.steps_done}/{result.config['steps']} -> {delta}")
    check = result.check
    if check is not None:
        print_table(concentration_rows(check), title=f"routing on {check.num_rows} rows of the training data "
                    "(mean over MoE layers)")
        vs = check.vs_original
        stdout.print(f"fine-tuned vs original on these rows: top-1 agreement {vs['top1_agreement']:.4f}, "
                     f"KL(original || fine-tuned) {vs['output_kl_orig_ft']:.3g} nats/token", markup=False)
        if check.concentration_warning:
            stdout.print(check.concentration_warning, style="bold yellow", markup=False)


@app.command(cls=defaults_from("sweep"))
def sweep(
    model: str = typer.Argument("embedded", help=MODEL_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for runs.jsonl (resumable), summary.md and each "
                                       "run's delta."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps of every run of the λ grid; the training-length "
                                        "family then tries 1x, 2x and 4x this."),
    eval_rows: Optional[int] = typer.Option(None, help="Held-out rows of 256 tokens, the same for every run."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Runs trained side by side, each in its own "
                                          "process with one torch thread."),
    jobs: Optional[int] = typer.Option(None, "--jobs", hidden=True, help="Deprecated: --workers."),
    json_path: Optional[str] = json_option("every run's figures and the chosen default"),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="DIR", help="Write pareto.png (EOR gain against "
                                        "entropy and perplexity change) to DIR."),
) -> None:
    """Pick the fine-tuning defaults by the protocol of remoe.md §4 (one λ family at a time, W and T_warm
    included), then run the CE-only control, the ablations and the presets; prints the chosen default."""
    from dataclasses import replace

    from tierwise.common.errors import TierwiseError
    from tierwise.common.report import markdown_table, print_table, stdout
    from tierwise.remoe.training.sweep import SUMMARY_CHANGES, SweepConfig, pareto_plot, run_sweep, summary_rows

    if jobs is not None:
        if workers is not None:
            raise TierwiseError("--jobs is the old name of --workers; give only --workers")
        typer.echo(f"note: --jobs is deprecated; use --workers {jobs}", err=True)
    json_only(json_path)
    cfg = replace(SweepConfig(), model=model, **given(out=None if out is None else str(out), steps=steps,
                                                      eval_rows=eval_rows,
                                                      workers=workers if workers is not None else jobs))
    result = run_sweep(cfg)
    rows = summary_rows(result)
    (Path(cfg.out) / "summary.md").write_text(markdown_table(rows))
    if plot is not None:
        pareto_plot(result, plot / "pareto.png")
    if emit(result, json_path):
        return
    print_table([{k: r[k] for k in ("run", SUMMARY_CHANGES["eor"], SUMMARY_CHANGES["entropy_norm"],
                                    SUMMARY_CHANGES["ppl"])} for r in rows],
                title=f"{len(rows)} runs; all columns in {Path(cfg.out) / 'summary.md'}")
    w = result["default"]
    stdout.print(f"default: --lambda-kl {w.kl:g} --lambda-reuse {w.reuse:g} --lambda-smooth {w.smooth:g} "
                 f"--lambda-lag {w.lag:g} --lambda-ws {w.ws:g} --lambda-spread {w.spread:g} --window {w.window} "
                 f"--t-warm {w.warmup_steps} --steps {result['steps']}"
                 + (" (the spread guard was needed)" if result["guard"] else ""))


@app.command("eval", cls=defaults_from("evaluate"))
def eval_cmd(
    model: str = typer.Argument("embedded", help=MODEL_HELP),
    router: Optional[Path] = typer.Option(None, "--router", help="A router delta: evaluate the model before and "
                                          "after applying it, side by side."),
    data: Optional[str] = typer.Option(None, "--data", help="Evaluation text (same formats as finetune --data)."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per packed sequence."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per forward pass."),
    max_rows: Optional[int] = typer.Option(None, help="Evaluate N packed sequences spread evenly over the data "
                                           "(default: all)."),
    cache_sizes: Optional[str] = typer.Option(None, help="Comma-separated expert-cache capacities C for uHR@C "
                                              "(default K and 2K)."),
    generate: Optional[int] = typer.Option(None, "--generate", metavar="N", min=0, help="Also decode each prompt "
                                           "greedily for N tokens: distinct 4-grams, prompts stuck in a loop, and "
                                           "with --router the tokens both routers generate alike."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt file for --generate (.jsonl "
                                           "prompts/chats or plain lines; default: the embedded prompts)."),
    json_path: Optional[str] = json_option(),
    threads: Optional[int] = threads_option(),
    device: Optional[str] = device_option(),
    dtype: Optional[str] = dtype_option(),
) -> None:
    """Held-out perplexity and expert-reuse metrics (EOR, uHR@C, misses/token, load CV, entropy), before and after
    a router delta."""
    from tierwise.common.report import print_table, stdout
    from tierwise.remoe import api
    from tierwise.remoe.analysis.evaluate import GENERATION_LEGEND, VS_ORIGINAL_LEGEND, summary_rows

    json_only(json_path)
    result = api.evaluate(model, router, **given(
        data=data, max_rows=max_rows, seq_len=seq_len, batch_size=batch_size, cache_sizes=cache_sizes,
        generate=generate, prompts=prompts, threads=threads, device=device, dtype=dtype))
    if emit(result, json_path):
        return
    print_table(summary_rows(result), title=f"{model} on {result.data}")
    if result.vs_original is not None:
        stdout.print(VS_ORIGINAL_LEGEND, markup=False)
    if result.generation is not None:
        stdout.print(GENERATION_LEGEND.format(n=result.generation["new_tokens"]), markup=False)
    if result.concentration_warning:
        stdout.print(result.concentration_warning, style="bold yellow", markup=False)


@app.command("lm-eval")
def lm_eval_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated lm_eval task names, e.g. gsm8k,mmlu,humaneval."),
    router: Optional[Path] = typer.Option(None, "--router", help="Router delta to apply first (default: the "
                                          "original routers)."),
    limit: Optional[float] = typer.Option(None, help="Items per task (a value below 1: that fraction of each task)."),
    num_fewshot: Optional[int] = typer.Option(None, help="Few-shot examples per item (default: each task's own)."),
    batch_size: int = typer.Option(1, help="Requests per forward pass."),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="Folder of extra task YAML files "
                                                "(e.g. a local task on local data)."),
    apply_chat_template: bool = typer.Option(False, "--apply-chat-template", help="Wrap each prompt in the "
                                             "tokenizer's chat template (chat models)."),
    confirm_run_unsafe_code: bool = typer.Option(False, "--confirm-run-unsafe-code", help="Let code tasks "
                                                 "(humaneval) execute the generated programs."),
    json_path: Optional[str] = json_option("the scores (lm_eval's results, versions, n-shot)"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("fp32", "--dtype", help=DTYPE_HELP),
) -> None:
    """Downstream quality with lm-evaluation-harness: MODEL (with --router applied) through lm_eval's HF model
    class."""
    from tierwise.common.report import print_table
    from tierwise.remoe.analysis.lmeval import run_lm_eval, score_rows
    from tierwise.remoe.models.placement import resolve_device, resolve_dtype

    json_only(json_path)
    if limit is not None and limit >= 1:
        limit = int(limit)  # a count of items (lm_eval reads a value below 1 as a fraction)
    result = run_lm_eval(model, router, [t.strip() for t in tasks.split(",") if t.strip()], limit=limit,
                         num_fewshot=num_fewshot, batch_size=batch_size, include_path=include_path,
                         apply_chat_template=apply_chat_template, confirm_run_unsafe_code=confirm_run_unsafe_code,
                         device=resolve_device(device), dtype=resolve_dtype(dtype))
    if emit(result, json_path):
        return
    print_table(score_rows(result), title=f"{model}" + (f" + {router.name}" if router else "") + " (lm_eval)")


@app.command("apply-router")
def apply_router(
    base: str = typer.Argument(..., help="Base MoE checkpoint (folder, hub id, or 'embedded')."),
    delta: Path = typer.Argument(..., help="Router delta (.safetensors) from `tierwise remoe finetune`."),
    out: Path = typer.Argument(..., help="Output folder for the full checkpoint with the new gates."),
) -> None:
    """Write a full Hugging Face checkpoint: BASE with its router weights replaced by DELTA."""
    from tierwise.remoe.export.delta import write_patched_checkpoint

    write_patched_checkpoint(base, delta, out)
    typer.echo(f"wrote {out}")


# -- routing analysis: tiny / trace / analyze ----------------------------------------------------------------------


@app.command()
def tiny(
    arch: str = typer.Argument(..., help="Architecture: deepseek_v2, deepseek_v3, qwen2_moe, qwen3_moe, olmoe, "
                               "mixtral."),
    out: Path = typer.Option(..., "--out", help="Output folder (HF checkpoint + byte-level tokenizer)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    json_path: Optional[str] = json_option("what was written (the folder and the model's shape)"),
) -> None:
    """Write a tiny random MoE checkpoint of ARCH (real structural features, built offline from a config)."""
    from tierwise.remoe.models.adapters import adapter_for, load_model, save_tiny

    json_only(json_path)
    save_tiny(arch, out, seed=seed)
    described = adapter_for(load_model(out)[0]).describe()
    if not emit({"out": out, **described}, json_path):
        typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v}" for k, v in described.items()))


@app.command(cls=defaults_from("trace"))
def trace(
    model: str = typer.Argument(..., help=MODEL_HELP),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts: .txt (one per line) or .jsonl "
                                           "({'prompt'} / chat {'messages'}); default: the embedded prompts."),
    out: Path = typer.Option(..., "--out", help="Routing trace to write (.npz format)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Greedy tokens generated per "
                                                 "prompt."),
    stop_at_eos: bool = typer.Option(True, "--stop-at-eos/--ignore-eos", help="Stop a request at the EOS token."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
    json_path: Optional[str] = json_option("the trace's summary"),
    threads: Optional[int] = threads_option(),
    device: Optional[str] = device_option(),
    dtype: Optional[str] = dtype_option(),
) -> None:
    """Record the experts every token selects in every MoE layer: each prompt is one request (prefill, then greedy
    decode)."""
    from tierwise.common.report import print_table
    from tierwise.remoe import api

    json_only(json_path)
    result = api.trace(model, out=out, stop_at_eos=stop_at_eos, **given(
        prompts=prompts, max_new_tokens=max_new_tokens, limit=limit, threads=threads, device=device, dtype=dtype))
    if emit(result, json_path):
        return
    print_table([{"requests": result.requests, "tokens": result.tokens, "decode tokens": result.decode_tokens,
                  "MoE layers": result.moe_layers, "E": result.num_experts, "K": result.top_k, "EOR": result.eor}],
                title=f"trace -> {out}")


@app.command(cls=defaults_from("analyze"))
def analyze(
    trace_file: Path = typer.Argument(..., metavar="TRACE", help="Routing trace from `tierwise remoe trace`."),
    cache: Optional[str] = typer.Option(None, "--cache", help="Comma-separated cache capacities C per layer "
                                        "(default K, 1.5K, 2K, 4K)."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Comma-separated policies: lru, fifo, lfu, lfru, "
                                         "belady."),
    warm: bool = typer.Option(False, "--warm", help="Keep caches warm across requests (default: cold per request)."),
    prefill: Optional[str] = typer.Option(None, "--prefill", help="exclude: simulate decode steps only; include: "
                                          "prefill calls are steps too."),
    horizon: Optional[int] = typer.Option(None, "--horizon", help="Largest horizon h of reuse-at-horizon."),
    json_path: Optional[str] = json_option(),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="DIR", help="Write reuse_vs_horizon.png and "
                                        "hit_rate_vs_cache_size.png to DIR."),
) -> None:
    """Expert-reuse metrics (EOR, reuse at horizon, working set, load balance, SRP) and an expert-cache sweep of a
    trace."""
    from dataclasses import asdict

    from tierwise.common.report import print_table
    from tierwise.remoe import api
    from tierwise.remoe.analysis.analyze import cache_rows, metric_rows, write_plots

    json_only(json_path)
    result = api.analyze(trace_file, warm=warm, **given(cache=cache, policy=policy, prefill=prefill,
                                                        horizon=horizon))
    if plot is not None:
        write_plots(asdict(result), plot)
    if emit(result, json_path):
        return
    figures, m, config = asdict(result), result.trace, result.cache_config
    print_table(metric_rows(figures), title=f"{trace_file}: {m['model']} ({m['model_type']}), {result.requests} "
                f"requests, {result.tokens} tokens, E={m['num_experts']}, K={m['top_k']}")
    print_table(cache_rows(figures), title=f"per-layer expert cache ({'cold per request' if config['cold'] else 'warm'}"
                f", prefill {config['prefill']})")


# -- GGUF: export-gguf / import-gguf-router / patch-gguf -------------------------------------------------------------


def wrote(path: Path, json_path: str | None, text: str, **facts: Any) -> None:
    """Report a written file: its path and size (and `facts`) as JSON, or `text` on the terminal."""
    from tierwise.common.report import stdout
    from tierwise.common.units import format_bytes

    size = path.stat().st_size
    if not emit({"path": path, "bytes": size, **facts}, json_path):
        stdout.print(f"wrote {path} ({format_bytes(size)}): {text}", markup=False)


@app.command("export-gguf")
def export_gguf_cmd(
    model: str = typer.Argument(..., help="Checkpoint folder, hub id, or 'embedded'."),
    out: Path = typer.Option(..., "--out", help="GGUF file to write (F32, llama.cpp tensor names)."),
    router: Optional[Path] = typer.Option(None, help="Router delta to bake in instead of the original gates."),
    json_path: Optional[str] = json_option("what was written"),
) -> None:
    """Export a supported MoE checkpoint to GGUF for llama.cpp / Ollama."""
    from tierwise.remoe.export.gguf import export_checkpoint

    json_only(json_path)
    path = export_checkpoint(model, out, router=router)
    wrote(path, json_path, f"{model}" + (f" with the routers of {router}" if router else ""), model=model,
          router=router)


@app.command("import-gguf-router")
def import_gguf_router_cmd(
    gguf_file: Path = typer.Argument(..., help="GGUF file whose routers (blk.N.ffn_gate_inp.weight) to read."),
    model: str = typer.Argument(..., help="HF checkpoint (folder, hub id or 'embedded') the routers belong to; only "
                                "its config is read."),
    out: Path = typer.Option(..., "--out", help="Router delta (.safetensors) to write; must not exist."),
    json_path: Optional[str] = json_option("what was written"),
) -> None:
    """Read the routers of a GGUF (e.g. the published DeepSeek-V2-Lite-Chat-ReMoE) into a router delta, so `eval`,
    `offload`, `trace`, `apply-router` and `export-gguf` can run that routing: the reverse of `patch-gguf`."""
    from tierwise.common.errors import TierwiseError
    from tierwise.remoe.export.gguf import import_router

    if out.exists():
        raise TierwiseError(f"--out {out} exists; choose a new file (a router delta is never overwritten)")
    json_only(json_path)
    path = import_router(gguf_file, model, out)
    wrote(path, json_path, f"the routers of {gguf_file} as a delta for {model}", source=gguf_file, model=model)


@app.command("patch-gguf")
def patch_gguf_cmd(
    gguf_file: Path = typer.Argument(..., help="GGUF file whose routers (blk.N.ffn_gate_inp.weight) to replace."),
    router: Path = typer.Argument(..., help="Router delta (.safetensors) from `tierwise remoe finetune`."),
    out: Path = typer.Argument(..., help="Patched GGUF file to write (every other tensor copied unchanged)."),
    json_path: Optional[str] = json_option("what was written"),
) -> None:
    """Replace only the router tensors of a GGUF by a fine-tuned router delta (the ReMoE deployment step):
    `tierwise remoe patch-gguf IN.gguf DELTA OUT.gguf`."""
    from tierwise.remoe.export.gguf import patch_router

    json_only(json_path)
    path = patch_router(gguf_file, router, out)
    wrote(path, json_path, "routers replaced, all other tensors copied", source=gguf_file, router=router)
