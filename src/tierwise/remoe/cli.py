"""`tierwise remoe ...` commands. Each command is a thin wrapper: parse flags, call the library, print/write results."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
def pretrain(
    out: Path = typer.Option(..., "--out", help="Output folder for the HF checkpoint and pretrain_report.json."),
    steps: int = typer.Option(2500, help="Optimizer steps (the shipped checkpoint: 2500)."),
    batch_size: int = typer.Option(16, help="Sequences per step."),
    seq_len: int = typer.Option(256, help="Tokens per sequence."),
    lr: float = typer.Option(3e-3, help="Peak learning rate (linear warm-up, then cosine to 10%)."),
    warmup_steps: int = typer.Option(100, help="Learning-rate warm-up steps."),
    aux_alpha: float = typer.Option(0.01, help="Coefficient of the switch-style load-balancing loss."),
    seed: int = typer.Option(0, help="Seed for initialisation and batch sampling (runs are deterministic)."),
    threads: int = typer.Option(2, help="torch CPU threads."),
    save_every: int = typer.Option(0, help="Also write the checkpoint every N steps (0: only at the end)."),
    stop_after: int = typer.Option(0, help="End after N steps of the --steps schedule (0: all), e.g. to reproduce a snapshot."),
    tokenizer: Optional[Path] = typer.Option(None, help="Tokenizer folder (default: the embedded tokenizer)."),
) -> None:
    """Pretrain the embedded DeepSeek-V2-style MoE from scratch on the embedded corpus (train split)."""
    from tierwise.common.report import print_table
    from tierwise.remoe.training.pretrain import PretrainConfig, load_tokenizer, pretrain as run_pretrain

    cfg = PretrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup_steps=warmup_steps,
                         aux_alpha=aux_alpha, seed=seed, threads=threads, save_every=save_every, stop_after=stop_after)
    report = run_pretrain(cfg, out, load_tokenizer(tokenizer))
    print_table([{k: report[k] for k in ("parameters", "train_seconds", "final_train_ce", "heldout_ppl", "eor",
                                         "load_cv", "entropy_norm")}], title=f"pretrained -> {out}")


@app.command()
def offload(
    model: str = typer.Argument(..., help="Checkpoint folder, hub id, or 'embedded'."),
    cache_experts: Optional[int] = typer.Option(None, "--cache-experts", "-C", help="Experts kept in memory per MoE layer (K..E; default K)."),
    storage: str = typer.Option("ufs4", help="Storage profile of one expert fetch: local|ufs4|nvme|emmc|pcie3-host|pcie4-host."),
    target: str = typer.Option("dsv2-lite-bf16", help="Model the timing model stands for: a named target, 'own', or an expert size such as 17.3MB."),
    platform: Optional[str] = typer.Option(None, help="Compute device of the timing model: jetson-orin-nx|jetson-agx-orin|rtx3090|rtx4090 (default: the storage profile's)."),
    throttle: bool = typer.Option(False, "--throttle", help="Make every store read take the profile's fetch time of real time, on one I/O thread: measured time then includes the storage."),
    policy: str = typer.Option("lru", help="Expert cache policy: lru|lfu|fifo|lfru."),
    workload: Optional[str] = typer.Option(None, help="replay (held-out text, teacher-forced; the default) | sample | greedy (the default when --prompts is given)."),
    data: Optional[str] = typer.Option(None, "--data", help="Replay documents: .txt/.jsonl/.json, embedded:heldout (default for the embedded model) or hf:NAME[:SPLIT]."),
    prompt_tokens: int = typer.Option(32, help="Replay: prompt tokens taken from each document."),
    prompts: Optional[Path] = typer.Option(None, help="Prompts for greedy/sample (.txt one per line, or .jsonl); default: embedded prompts."),
    limit: Optional[int] = typer.Option(None, help="Requests: the first N prompts, or N replay documents (default 16)."),
    max_new_tokens: int = typer.Option(32, help="Tokens per request (decoded, or replayed), no early stop."),
    temperature: float = typer.Option(0.8, help="Sample: softmax temperature."),
    top_p: float = typer.Option(0.95, "--top-p", help="Sample: nucleus probability mass."),
    seed: int = typer.Option(0, help="Sample: seed of the per-(request, step) random numbers."),
    router: Optional[Path] = typer.Option(None, help="ReMoE router delta (.safetensors): run it instead of the original ('remoe' in --compare)."),
    prefetch: Optional[int] = typer.Option(None, help="Next-layer prefetch of N experts per layer (0: off; 'prefetch' in --compare uses N, default K; with --compare, the list must use it)."),
    reroute: Optional[float] = typer.Option(None, help="Cache-aware rerouting strength LAMBDA (0: off; 'reroute' in --compare uses it, default 0.5; with --compare, the list must use it)."),
    protect: Optional[int] = typer.Option(None, help="Rerouting: the original top-J experts are never displaced [2]; only with a configuration that reroutes."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Comma list of configurations run side by side, e.g. original,remoe,prefetch,reroute,remoe+prefetch,remoe+reroute."),
    verify: bool = typer.Option(False, "--verify", help="Check every token and the logits of each configuration that keeps the routing against the resident model; fail on a mismatch."),
    store: Optional[Path] = typer.Option(None, help="Expert store folder (default ~/.cache/tierwise/expert-stores/<fingerprint>)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the full metrics as JSON to PATH ('-': to stdout, instead of the tables)."),
    threads: int = typer.Option(1, help="torch CPU threads (B = 1 decode of small models is fastest on one)."),
    device: str = typer.Option("cpu", "--device", help="Where the model runs: cpu, cuda, cuda:N, mps, or auto (cuda when available). The expert cache lives there; misses are read from the store through host memory."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weights and compute dtype: fp32, bf16 or fp16. The expert store holds experts in this dtype."),
) -> None:
    """Decode with routed experts offloaded to an on-disk store and at most C per layer in memory; compare routers
    and runtime techniques (prefetch, rerouting) on the same requests."""
    import torch
    from rich import box

    from tierwise.common.errors import TierwiseError
    from tierwise.common.report import emit_json, print_table, stdout, table
    from tierwise.remoe.models.adapters import adapter_for, load_model
    from tierwise.remoe.models.placement import resolve_device, resolve_dtype
    from tierwise.remoe.offload import compare as cmp
    from tierwise.remoe.offload.runtime import OffloadConfig
    from tierwise.remoe.offload.workload import DEFAULT_REPLAY_REQUESTS, Workload, prompt_requests, replay_requests

    for name, value, low in (("--cache-experts", cache_experts, 1), ("--limit", limit, 1), ("--prefetch", prefetch, 0),
                             ("--reroute", reroute, 0), ("--protect", protect, 0), ("--threads", threads, 1)):
        if value is not None and value < low:
            raise TierwiseError(f"{name} must be at least {low}, got {value}")
    kind = workload or ("greedy" if prompts is not None else "replay")
    work = Workload(kind, temperature, top_p, seed)
    if kind == "replay" and prompts is not None:
        raise TierwiseError("the replay workload reads documents from --data; --prompts is for --workload greedy|sample")
    if kind != "replay" and data is not None:
        raise TierwiseError(f"--data is for the replay workload, not {kind}")
    torch.set_num_threads(threads)
    place = resolve_device(device)
    hf_model, tokenizer = load_model(model, dtype=resolve_dtype(dtype))  # on the CPU: the runtime places it
    adapter = adapter_for(hf_model)
    if kind == "replay":
        if data is None and model != "embedded":
            raise TierwiseError("the replay workload needs --data (held-out documents) for models other than the "
                                "embedded one, or --workload greedy|sample with --prompts")
        requests = replay_requests(data or "embedded:heldout", tokenizer, prompt_tokens, max_new_tokens,
                                   limit or DEFAULT_REPLAY_REQUESTS)
    else:
        if tokenizer is None:
            raise TierwiseError("this checkpoint has no tokenizer; offload runs need one to encode the prompts")
        texts = cmp.resolve_prompts(model, prompts, tokenizer, limit)
        requests = prompt_requests([tokenizer(p)["input_ids"] for p in texts])
    if compare is not None:
        settings = cmp.parse_settings(compare, prefetch=prefetch, reroute=reroute, top_k=adapter.top_k,
                                      have_router=router is not None)
    else:
        settings = [cmp.single_setting(router=router is not None, prefetch=prefetch, reroute=reroute)]
    if protect is not None and not any(s.reroute for s in settings):
        raise TierwiseError(f"--protect {protect} is given but no configuration reroutes; add reroute to --compare "
                            f"(or give --reroute LAMBDA), or drop --protect")
    config = OffloadConfig(cache_experts=cache_experts if cache_experts is not None else adapter.top_k, policy=policy,
                           storage=storage, target=target, platform=platform, throttle=throttle, store_dir=store,
                           device=place)
    result = cmp.run_offload(hf_model, requests, max_new_tokens, config, settings, workload=work, router=router,
                             protect=cmp.DEFAULT_PROTECT if protect is None else protect, verify=verify)
    if json_path is not None:
        emit_json(result, json_path)
        if json_path == "-":
            return
    c, w = result["config"], result["workload"]
    what = {"replay": f"replay of {w['requests']} held-out continuations ({data or 'embedded:heldout'}, "
                      f"{prompt_tokens}-token prompts)",
            "sample": f"sampling of {w['requests']} prompts (T={temperature:g}, top-p={top_p:g}, seed {seed})",
            "greedy": f"greedy decoding of {w['requests']} prompts"}[kind]
    stdout.print(f"offload {model}, workload: {what}, {max_new_tokens} tokens each. C={c['cache_experts']} of "
                 f"E={c['num_experts']} (K={c['top_k']}), {c['policy']}, store I/O {c['store_io']}.")
    if c["timing"] is not None:
        t = c["timing"]
        stdout.print(f"modelled: {c['target']} ({t['target_moe_layers']} MoE layers) on {c['platform']} with "
                     f"{c['storage']}: {c['fetch_ms']:.3f} ms per expert fetch, overlapped with compute "
                     f"(expert {t['expert_ms']:.3f} ms, layer {t['attention_ms']:.3f} ms)"
                     + ("; measured includes the throttled storage" if c["throttle"] else ""))
    summary = table(cmp.summary_rows(result), title=f"offload, {kind} workload")
    summary.box = box.SIMPLE_HEAD
    stdout.print(summary)
    for line in cmp.legend(result):
        stdout.print(line, markup=False)
    print_table(cmp.routing_rows(result), title=f"decode routing, {kind} workload (mean over MoE layers)")
    for label, vs in result.get("vs_original", {}).items():
        if vs["concentration_warning"]:
            stdout.print(f"{label}: {vs['concentration_warning']}", style="bold yellow", markup=False)
    if verify:
        v = result["verify"]
        stdout.print(f"--verify: {', '.join(v['checked']) or 'none'} equal to the resident model (max |logit "
                     f"difference| {max(v['checked'].values(), default=0.0):.2g}, tolerance {v['tolerance']:g})"
                     + (f"; not checked (rerouting changes the routing): {', '.join(v['skipped'])}" if v['skipped'] else ""),
                     markup=False)


# -- ReMoE router fine-tuning: finetune / eval / apply-router -------------------------------------------------------


@app.command()
def finetune(
    model: str = typer.Argument("embedded", help="MoE checkpoint: local HF folder, hub id (online), or 'embedded'."),
    data: str = typer.Option("embedded:train", "--data", help="Training text: .txt, .jsonl/.json (text, prompt/completion, messages, conversations), embedded:train, or hf:NAME[:SPLIT]."),
    out: Path = typer.Option(Path("runs/remoe"), "--out", help="Output folder: router_delta.safetensors, config.json, train_log.jsonl, checkpoint/."),
    preset: str = typer.Option("default", help="Named settings to start from: 'default' (the swept defaults), 'demo' (a ~1 min CPU run) or 'aggressive' (more EOR by collapsing the routing onto fewer experts)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps [600]."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per packed sequence [256]."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per micro-batch per process [4]."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step [1]."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate of the gates [3e-3]."),
    lr_warmup: Optional[int] = typer.Option(None, help="Linear LR warm-up steps, then cosine [10]."),
    min_lr_ratio: Optional[float] = typer.Option(None, help="Cosine floor as a fraction of --lr [0.1]."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay [0]."),
    grad_clip: Optional[float] = typer.Option(None, help="Gradient-norm clip [1.0]."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 or bf16: storage of the frozen weights and the autocast compute; gates, reference gates and every loss term stay fp32 [fp32]."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (cuda when available), cpu, cuda, cuda:N or mps; under accelerate launch each process takes its own device of that kind [auto]."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute each decoder layer in the backward pass: keeps one layer's activations instead of all, for about a third more compute."),
    seed: Optional[int] = typer.Option(None, help="Seed of the data order [0]."),
    lambda_kl: Optional[float] = typer.Option(None, "--lambda-kl", help="λ_KL, trust region KL(P‖P_ref) [1.0]."),
    lambda_reuse: Optional[float] = typer.Option(None, "--lambda-reuse", help="λ_Reuse [0.3]."),
    lambda_smooth: Optional[float] = typer.Option(None, "--lambda-smooth", help="λ_Smooth [0.03]."),
    lambda_lag: Optional[float] = typer.Option(None, "--lambda-lag", help="λ_Lag [0.03]."),
    lambda_ws: Optional[float] = typer.Option(None, "--lambda-ws", help="λ_WS [0.1]."),
    lambda_spread: Optional[float] = typer.Option(None, "--lambda-spread", help="λ_Spread, the load-entropy floor that keeps routing spread [0]."),
    window: Optional[int] = typer.Option(None, help="W, tokens per L_WS window [16]."),
    t_warm: Optional[int] = typer.Option(None, "--t-warm", help="T_warm, steps of the locality warm-up α_s = min(1, s/T_warm) [0: none]."),
    lags: Optional[str] = typer.Option(None, help="Comma-separated lags of L_Lag [1,2,4,8,16]."),
    no_trust: bool = typer.Option(False, "--no-trust", help="Ablation: λ_KL = 0."),
    no_reuse: bool = typer.Option(False, "--no-reuse", help="Ablation: λ_Reuse = 0."),
    no_smooth: bool = typer.Option(False, "--no-smooth", help="Ablation: λ_Smooth = 0."),
    no_lag: bool = typer.Option(False, "--no-lag", help="Ablation: λ_Lag = 0."),
    no_ws: bool = typer.Option(False, "--no-ws", help="Ablation: λ_WS = 0."),
    ce_only: bool = typer.Option(False, "--ce-only", help="The paper's control: train the router with L_CE alone."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints; 0 = none [50]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint (same settings required)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove the outputs of an earlier run in --out first (a non-empty --out is refused otherwise)."),
    stop_after: Optional[int] = typer.Option(None, help="End this session after this step, leaving a resumable checkpoint."),
    doc_separator: Optional[str] = typer.Option(None, help="Split plain-text data into documents at this string."),
    max_docs: Optional[int] = typer.Option(None, help="Use at most this many documents (spread evenly over the data)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads per process (default: torch's choice; 1 is fastest on a busy machine)."),
    check_rows: int = typer.Option(8, help="After the run, compare the original and new routers on N rows of --data: EOR beside routing entropy, effective experts and busiest share (0: skip)."),
) -> None:
    """Fine-tune only the router (gate) weights with the ReMoE locality objective; writes a router-only delta."""
    from dataclasses import replace

    import torch
    from accelerate import PartialState

    from tierwise.common.errors import TierwiseError
    from tierwise.common.report import print_table, stdout
    from tierwise.remoe.analysis.evaluate import EvalConfig, concentration_rows, evaluate_cli
    from tierwise.remoe.models.placement import resolve_device, resolve_dtype
    from tierwise.remoe.training.finetune import CHECKPOINT_DIR, DELTA_NAME, config_with_preset, finetune as run_finetune

    cfg = config_with_preset(preset, model=model, data=data, out=str(out), steps=steps, seq_len=seq_len,
                             batch_size=batch_size, grad_accum=grad_accum, lr=lr, lr_warmup=lr_warmup,
                             min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, grad_clip=grad_clip,
                             dtype=dtype, device=device, gradient_checkpointing=gradient_checkpointing, seed=seed,
                             checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite,
                             stop_after=stop_after, doc_separator=doc_separator, max_docs=max_docs, ce_only=ce_only)
    try:
        lag_values = tuple(int(x) for x in lags.split(",")) if lags else None
    except ValueError as e:
        raise TierwiseError(f"--lags must be comma-separated integers, got {lags!r}") from e
    given = dict(kl=lambda_kl, reuse=lambda_reuse, smooth=lambda_smooth, lag=lambda_lag, ws=lambda_ws, spread=lambda_spread,
                 window=window,
                 warmup_steps=t_warm, lags=lag_values)
    off = dict(kl=no_trust, reuse=no_reuse, smooth=no_smooth, lag=no_lag, ws=no_ws)
    loss = replace(cfg.loss, **{k: v for k, v in given.items() if v is not None})
    cfg = replace(cfg, loss=replace(loss, **{k: 0.0 for k, v in off.items() if v}))
    if threads:
        torch.set_num_threads(threads)
    result = run_finetune(cfg)
    delta = result.delta_path or out / CHECKPOINT_DIR / DELTA_NAME
    if result.history:
        last = result.history[-1]
        # the running EOR is left to train_log.jsonl: an EOR is shown only beside its load concentration (below)
        print_table([{k: last[k] for k in last if k not in ("lr", "grad_norm", "eor_running")}],
                    title=f"step {result.steps_done}/{cfg.steps} -> {delta}")
    if check_rows > 0 and PartialState().is_main_process and delta.is_file():
        check = evaluate_cli(cfg.model, delta, EvalConfig(data=cfg.data, seq_len=cfg.seq_len, max_rows=check_rows,
                                                          doc_separator=cfg.doc_separator, max_docs=cfg.max_docs),
                             device=resolve_device(cfg.device), dtype=resolve_dtype(cfg.dtype))
        print_table(concentration_rows(check), title=f"routing on {check['rows']} rows of the training data "
                    "(mean over MoE layers)")
        vs = check["vs_original"]
        stdout.print(f"fine-tuned vs original on these rows: top-1 agreement {vs['top1_agreement']:.4f}, "
                     f"KL(original || fine-tuned) {vs['output_kl_orig_ft']:.3g} nats/token", markup=False)
        if check["concentration_warning"]:
            stdout.print(check["concentration_warning"], style="bold yellow", markup=False)


@app.command()
def sweep(
    model: str = typer.Argument("embedded", help="MoE checkpoint: local HF folder, hub id (online), or 'embedded'."),
    out: Path = typer.Option(Path("reports/remoe-sweep"), "--out", help="Folder for runs.jsonl (resumable), summary.md and each run's delta."),
    steps: int = typer.Option(150, help="Optimizer steps of every run of the λ grid; the training-length family then tries 1x, 2x and 4x this."),
    eval_rows: int = typer.Option(192, help="Held-out rows of 256 tokens, the same for every run."),
    jobs: int = typer.Option(2, help="Runs trained side by side (one torch thread each)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every run's figures and the chosen default as JSON to PATH."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write pareto.png (EOR gain vs entropy and perplexity change) to DIR."),
) -> None:
    """Pick the fine-tuning defaults by the protocol of remoe.md §4 (one λ family at a time, W and T_warm included),
    then run the CE-only control, the ablations and the presets; prints the chosen default."""
    from tierwise.common.report import markdown_table, print_table, stdout, write_json
    from tierwise.remoe.training.sweep import SweepConfig, pareto_plot, run_sweep, summary_rows

    result = run_sweep(SweepConfig(model=model, out=str(out), steps=steps, eval_rows=eval_rows, jobs=jobs))
    rows = summary_rows(result)
    (out / "summary.md").write_text(markdown_table(rows))
    print_table([{k: r[k] for k in ("run", "EOR gain", "entropy", "PPL")} for r in rows],
                title=f"{len(rows)} runs; all columns in {out / 'summary.md'}")
    w = result["default"]
    stdout.print(f"default: --lambda-kl {w.kl:g} --lambda-reuse {w.reuse:g} --lambda-smooth {w.smooth:g} "
                 f"--lambda-lag {w.lag:g} --lambda-ws {w.ws:g} --lambda-spread {w.spread:g} --window {w.window} "
                 f"--t-warm {w.warmup_steps} --steps {result['steps']}"
                 + (" (the spread guard was needed)" if result["guard"] else ""))
    if json_path is not None:
        write_json(result, json_path)
    if plot is not None:
        pareto_plot(result, plot / "pareto.png")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument("embedded", help="MoE checkpoint: local HF folder, hub id (online), or 'embedded'."),
    router: Optional[Path] = typer.Option(None, "--router", help="A router delta: evaluate the model before and after applying it, side by side."),
    data: str = typer.Option("embedded:heldout", "--data", help="Evaluation text (same formats as finetune --data)."),
    seq_len: int = typer.Option(256, help="Tokens per packed sequence."),
    batch_size: int = typer.Option(8, help="Sequences per forward pass."),
    max_rows: Optional[int] = typer.Option(None, help="Evaluate N packed sequences spread evenly over the data (default: all)."),
    cache_sizes: str = typer.Option("", help="Comma-separated expert-cache capacities C for uHR@C (default K and 2K)."),
    generate: int = typer.Option(0, "--generate", metavar="N", min=0, help="Also decode each prompt greedily for N tokens: distinct 4-grams, prompts stuck in a loop, and with --router the tokens both routers generate alike."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt file for --generate (.jsonl prompts/chats or plain lines; default: the embedded prompts)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the results as JSON to PATH ('-': to stdout, instead of the table)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    device: str = typer.Option("cpu", "--device", help="Where the model runs: cpu, cuda, cuda:N, mps, or auto (cuda when available)."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weights and compute dtype: fp32, bf16 or fp16."),
) -> None:
    """Held-out perplexity and expert-reuse metrics (EOR, uHR@C, misses/token, load CV, entropy), before/after a router delta."""
    import torch

    from tierwise.common.errors import TierwiseError
    from tierwise.common.report import emit_json, print_table, stdout
    from tierwise.remoe.analysis.evaluate import (GENERATION_LEGEND, VS_ORIGINAL_LEGEND, EvalConfig, evaluate_cli,
                                                  summary_rows)
    from tierwise.remoe.models.placement import resolve_device, resolve_dtype

    if threads:
        torch.set_num_threads(threads)
    try:
        sizes = tuple(int(c) for c in cache_sizes.split(",") if c.strip())
    except ValueError as e:
        raise TierwiseError(f"--cache-sizes must be comma-separated integers, got {cache_sizes!r}") from e
    results = evaluate_cli(model, router, EvalConfig(data=data, seq_len=seq_len, batch_size=batch_size,
                                                     max_rows=max_rows, cache_sizes=sizes, generate_tokens=generate,
                                                     prompts=str(prompts) if prompts else None),
                           device=resolve_device(device), dtype=resolve_dtype(dtype))
    if json_path is not None:
        emit_json(results, json_path)
    if json_path != "-":
        print_table(summary_rows(results), title=f"{model} on {data}")
        if "vs_original" in results:
            stdout.print(VS_ORIGINAL_LEGEND, markup=False)
        if "generation" in results:
            stdout.print(GENERATION_LEGEND.format(n=generate), markup=False)
        if results.get("concentration_warning"):
            stdout.print(results["concentration_warning"], style="bold yellow", markup=False)


@app.command("lm-eval")
def lm_eval_cmd(
    model: str = typer.Argument(..., help="MoE checkpoint: local HF folder, hub id (online), or 'embedded'."),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated lm_eval task names, e.g. gsm8k,mmlu,humaneval."),
    router: Optional[Path] = typer.Option(None, "--router", help="Router delta to apply first (default: the original routers)."),
    limit: Optional[float] = typer.Option(None, help="Items per task (a value below 1: that fraction of each task)."),
    num_fewshot: Optional[int] = typer.Option(None, help="Few-shot examples per item (default: each task's own)."),
    batch_size: int = typer.Option(1, help="Requests per forward pass."),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="Folder of extra task YAML files (e.g. a local task on local data)."),
    apply_chat_template: bool = typer.Option(False, "--apply-chat-template", help="Wrap each prompt in the tokenizer's chat template (chat models)."),
    confirm_run_unsafe_code: bool = typer.Option(False, "--confirm-run-unsafe-code", help="Let code tasks (humaneval) execute the generated programs."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the scores (lm_eval's results, versions, n-shot) as JSON to PATH."),
    device: str = typer.Option("cpu", "--device", help="Where the model runs: cpu, cuda, cuda:N, mps, or auto (cuda when available)."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weights and compute dtype: fp32, bf16 or fp16."),
) -> None:
    """Downstream quality with lm-evaluation-harness: MODEL (with --router applied) through lm_eval's HF model class."""
    from tierwise.common.report import print_table, write_json
    from tierwise.remoe.analysis.lmeval import run_lm_eval, score_rows
    from tierwise.remoe.models.placement import resolve_device, resolve_dtype

    if limit is not None and limit >= 1:
        limit = int(limit)  # a count of items (lm_eval reads a value below 1 as a fraction)
    result = run_lm_eval(model, router, [t.strip() for t in tasks.split(",") if t.strip()], limit=limit,
                         num_fewshot=num_fewshot, batch_size=batch_size, include_path=include_path,
                         apply_chat_template=apply_chat_template, confirm_run_unsafe_code=confirm_run_unsafe_code,
                         device=resolve_device(device), dtype=resolve_dtype(dtype))
    if json_path is not None:
        write_json(result, json_path)
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


# -- routing analysis: tiny / trace / analyze -----------------------------------------------------------------------


@app.command()
def tiny(
    arch: str = typer.Argument(..., help="Architecture: deepseek_v2, deepseek_v3, qwen2_moe, qwen3_moe, olmoe, mixtral."),
    out: Path = typer.Option(..., "--out", help="Output folder (HF checkpoint + byte-level tokenizer)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
) -> None:
    """Write a tiny random MoE checkpoint of ARCH (real structural features, built offline from a config)."""
    from tierwise.remoe.models.adapters import adapter_for, load_model, save_tiny

    save_tiny(arch, out, seed=seed)
    described = adapter_for(load_model(out)[0]).describe()
    typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v}" for k, v in described.items()))


@app.command()
def trace(
    model: str = typer.Argument(..., help="MoE checkpoint: local HF folder, hub id (online), or 'embedded'."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts: .txt (one per line) or .jsonl ({'prompt'} / chat {'messages'}); default: the embedded prompts."),
    out: Path = typer.Option(..., "--out", help="Routing trace to write (.npz format)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Greedy tokens generated per prompt."),
    stop_at_eos: bool = typer.Option(True, "--stop-at-eos/--ignore-eos", help="Stop a request at the EOS token."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
    device: str = typer.Option("cpu", "--device", help="Where the model runs: cpu, cuda, cuda:N, mps, or auto (cuda when available)."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weights and compute dtype: fp32, bf16 or fp16."),
) -> None:
    """Record the experts every token selects in every MoE layer: each prompt is one request (prefill, then greedy decode)."""
    from tierwise.common.errors import TierwiseError
    from tierwise.common.progress import progress_task
    from tierwise.common.report import print_table
    from tierwise.remoe.analysis import metrics
    from tierwise.remoe.models.prompts import encode_prompt, read_prompts
    from tierwise.remoe.models.adapters import load_model
    from tierwise.remoe.models.placement import resolve_device, resolve_dtype
    from tierwise.remoe.models.routing import capture_generation

    if max_new_tokens < 1:
        raise TierwiseError("--max-new-tokens must be >= 1")
    hf_model, tokenizer = load_model(model, dtype=resolve_dtype(dtype), device=resolve_device(device))
    if tokenizer is None:
        raise TierwiseError(f"{model} has no tokenizer; tracing text prompts needs one")
    if prompts is None:
        from tierwise.remoe.models.embedded import default_prompts

        items = default_prompts()
    else:
        items = read_prompts(prompts)
    ids = [encode_prompt(p, tokenizer) for p in (items[:limit] if limit else items)]
    with progress_task("tracing prompts", total=len(ids)) as (progress, task):
        routing = capture_generation(hf_model, ids, model_name=str(model), max_new_tokens=max_new_tokens,
                                     eos_token_id=tokenizer.eos_token_id if stop_at_eos else None,
                                     progress=lambda n: progress.update(task, completed=n))
    routing.save(out)
    print_table([{"requests": routing.num_requests, "tokens": routing.num_tokens,
                  "decode tokens": int(routing.phase.sum()), "MoE layers": routing.num_layers,
                  "E": routing.num_experts, "K": routing.top_k, "EOR": metrics.eor(routing)}], title=f"trace -> {out}")


@app.command()
def analyze(
    trace_file: Path = typer.Argument(..., metavar="TRACE", help="Routing trace from `tierwise remoe trace`."),
    cache: str = typer.Option("", "--cache", help="Comma-separated cache capacities C per layer (default K, 1.5K, 2K, 4K)."),
    policy: str = typer.Option("lru,belady", "--policy", help="Comma-separated policies: lru, fifo, lfu, lfru, belady."),
    warm: bool = typer.Option(False, "--warm", help="Keep caches warm across requests (default: cold per request)."),
    prefill: str = typer.Option("exclude", "--prefill", help="exclude: simulate decode steps only; include: prefill calls are steps too."),
    horizon: int = typer.Option(16, "--horizon", help="Largest horizon h of reuse-at-horizon."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every number as JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Folder for reuse_vs_horizon.png and hit_rate_vs_cache_size.png."),
) -> None:
    """Expert-reuse metrics (EOR, reuse at horizon, working set, load balance, SRP) and an expert-cache sweep of a trace."""
    from tierwise.common.report import print_table, write_json
    from tierwise.remoe.analysis.analyze import analyze as run_analysis, cache_rows, metric_rows, parse_list, write_plots
    from tierwise.remoe.models.routing import RoutingTrace

    routing = RoutingTrace.load(trace_file)
    result = run_analysis(routing, capacities=parse_list(cache, "--cache", int), policies=parse_list(policy, "--policy"),
                          cold=not warm, prefill=prefill, max_horizon=horizon)
    m = result["trace"]
    print_table(metric_rows(result), title=f"{trace_file}: {m['model']} ({m['model_type']}), {result['requests']} requests, "
                f"{result['tokens']} tokens, E={m['num_experts']}, K={m['top_k']}")
    print_table(cache_rows(result), title=f"per-layer expert cache ({'warm' if warm else 'cold per request'}, prefill {prefill})")
    if json_out is not None:
        write_json(result, json_out)
    if plot is not None:
        write_plots(result, plot)


@app.command("export-gguf")
def export_gguf_cmd(
    model: str = typer.Argument(..., help="Checkpoint folder, hub id, or 'embedded'."),
    out: Path = typer.Option(..., "--out", help="GGUF file to write (F32, llama.cpp tensor names)."),
    router: Optional[Path] = typer.Option(None, help="Router delta to bake in instead of the original gates."),
) -> None:
    """Export a supported MoE checkpoint to GGUF for llama.cpp / Ollama."""
    from tierwise.common.report import stdout
    from tierwise.remoe.export.gguf import export_checkpoint

    path = export_checkpoint(model, out, router=router)
    stdout.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command("import-gguf-router")
def import_gguf_router_cmd(
    gguf_file: Path = typer.Argument(..., help="GGUF file whose routers (blk.N.ffn_gate_inp.weight) to read."),
    model: str = typer.Argument(..., help="HF checkpoint (folder, hub id or 'embedded') the routers belong to; only its config is read."),
    out: Path = typer.Option(..., "--out", help="Router delta (.safetensors) to write; must not exist."),
) -> None:
    """Read the routers of a GGUF (e.g. the published DeepSeek-V2-Lite-Chat-ReMoE) into a router delta, so `eval`,
    `offload`, `trace`, `apply-router` and `export-gguf` can run that routing: the reverse of `patch-gguf`."""
    from tierwise.common.errors import TierwiseError
    from tierwise.common.report import stdout
    from tierwise.remoe.export.gguf import import_router

    if out.exists():
        raise TierwiseError(f"{out} exists; choose a new file (a router delta is never overwritten)")
    path = import_router(gguf_file, model, out)
    stdout.print(f"wrote {path}: the routers of {gguf_file} as a delta for {model}")


@app.command("patch-gguf")
def patch_gguf_cmd(
    gguf_file: Path = typer.Argument(..., help="GGUF file whose routers (blk.N.ffn_gate_inp.weight) to replace."),
    router: Path = typer.Argument(..., help="Router delta (.safetensors) from `tierwise remoe finetune`."),
    out: Path = typer.Argument(..., help="Patched GGUF file to write (every other tensor copied unchanged)."),
) -> None:
    """Replace only the router tensors of a GGUF by a fine-tuned router delta (the ReMoE deployment step):
    `tierwise remoe patch-gguf IN.gguf DELTA OUT.gguf`."""
    from tierwise.common.report import stdout
    from tierwise.remoe.export.gguf import patch_router

    path = patch_router(gguf_file, router, out)
    stdout.print(f"wrote {path}: routers replaced, all other tensors copied")
