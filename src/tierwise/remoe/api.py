"""The ReMoE Python API: each `tierwise remoe` command as a function whose parameters are the command's flags.

    from tierwise.remoe import api

    traced = api.trace("embedded", limit=4, max_new_tokens=16)
    api.analyze(traced, cache=[4, 8]).to_dataframe()
    api.evaluate("embedded", max_rows=16).before["ppl"]

Each function returns a dataclass that mixes in `tierwise.common.results.Result`: `.as_dict()` is exactly what the
command's `--json` writes, `.to_dataframe()` its table. A parameter left at None takes the default of the command's
config dataclass (`EvalConfig`, `FinetuneConfig`, `OffloadConfig`, ...), the one place each such default is kept;
`defaults(name)` reads them for the CLI's --help. Importing this module loads no torch (`analyze` needs none); the
other functions load it on their first call, and so do `EvalResult` and `FinetuneResult`. `tierwise.remoe`
re-exports all but `offload`, whose name there is the subpackage's.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tierwise.common.errors import TierwiseError
from tierwise.common.report import to_jsonable
from tierwise.common.results import Result
from tierwise.remoe.models.routing import RoutingTrace

API_FUNCTIONS = ("trace", "analyze", "evaluate", "finetune", "offload")
__all__ = ["AnalysisResult", "EvalResult", "FinetuneResult", "OffloadResult", "TraceResult", "analyze", "defaults",
           "evaluate", "finetune", "offload", "trace"]

# finetune's loss flags -> LossWeights fields, and the ablation flags -> the weight each sets to 0
LOSS_FLAGS = {"lambda_kl": "kl", "lambda_reuse": "reuse", "lambda_smooth": "smooth", "lambda_lag": "lag",
              "lambda_ws": "ws", "lambda_spread": "spread", "window": "window", "t_warm": "warmup_steps",
              "lags": "lags"}
ABLATION_FLAGS = {"no_trust": "kl", "no_reuse": "reuse", "no_smooth": "smooth", "no_lag": "lag", "no_ws": "ws"}
# analyze's parameters -> analysis.analyze's
ANALYZE_PARAMS = {"cache": "capacities", "policy": "policies", "prefill": "prefill", "horizon": "max_horizon"}


def given(**values: Any) -> dict[str, Any]:
    """The values that are not None: what was asked for, leaving the rest to the defaults."""
    return {k: v for k, v in values.items() if v is not None}


def _items(value: str | Sequence | None, what: str, cast=str) -> list | None:
    """A list from a comma-separated string (as the flags take it) or a sequence."""
    if value is None or not isinstance(value, str):
        return None if value is None else [cast(v) for v in value]
    try:
        return [cast(x.strip()) for x in value.split(",") if x.strip()]
    except ValueError:
        raise TierwiseError(f"{what} must be a comma-separated list, got {value!r}") from None


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise TierwiseError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def _load(model: str, device: str, dtype: str):
    """(model, tokenizer) of a checkpoint name, in the --dtype and on the --device given by name."""
    from tierwise.remoe.models.adapters import load_model
    from tierwise.remoe.models.placement import resolve_device, resolve_dtype

    return load_model(model, dtype=resolve_dtype(dtype), device=resolve_device(device))


# -- trace --------------------------------------------------------------------------------------------------------


@dataclass
class TraceResult(Result):
    """The routing `trace` recorded (`routing`, also written to `out` when given) and its summary figures."""

    model: str
    out: str | None
    requests: int
    tokens: int
    decode_tokens: int
    moe_layers: int
    num_experts: int
    top_k: int
    eor: float
    routing: RoutingTrace = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        # the routing itself is the .npz at `out` (docs/remoe-analysis.md), not JSON
        return to_jsonable({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "routing"})


def trace(model: str, *, prompts: str | Path | None = None, out: str | Path | None = None, max_new_tokens: int = 32,
          stop_at_eos: bool = True, limit: int | None = None, threads: int | None = None, device: str = "cpu",
          dtype: str = "fp32") -> TraceResult:
    """Record the experts every token selects in every MoE layer (`tierwise remoe trace`).

    Each prompt is one request: prefill, then `max_new_tokens` of greedy decoding (`stop_at_eos`: end at EOS).
    `prompts`: a .txt (one per line) or .jsonl file; None: the embedded prompts; `limit`: the first N only.
    `out`: also write the trace (.npz) there.
    """
    from tierwise.common.progress import progress_task
    from tierwise.remoe.analysis import metrics
    from tierwise.remoe.models.prompts import encode_prompt, read_prompts
    from tierwise.remoe.models.routing import capture_generation

    if max_new_tokens < 1:
        raise TierwiseError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    _set_threads(threads)
    hf_model, tokenizer = _load(model, device, dtype)
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
    if out is not None:
        routing.save(out)
    return TraceResult(str(model), None if out is None else str(out), routing.num_requests, routing.num_tokens,
                       int(routing.phase.sum()), routing.num_layers, routing.num_experts, routing.top_k,
                       metrics.eor(routing), routing)


# -- analyze ------------------------------------------------------------------------------------------------------


@dataclass
class AnalysisResult(Result):
    """`analyze`'s figures, one field per key of `--json` (docs/remoe-analysis.md lists them): the routing metrics,
    and per policy and capacity C the cache simulation, `cache[policy][C]`. `to_dataframe()`: one row per
    (policy, C)."""

    trace: dict[str, Any]
    tokens: int
    requests: int
    decode_tokens: int
    eor: float
    eor_per_request: float
    eor_prefill: float
    eor_decode: float
    eor_per_layer: Any
    fetch_bound_decode: float
    reuse_at_horizon: dict[int, float]
    working_set: dict[int, float]
    distinct_experts_per_request: float
    load_cv: float
    entropy_norm: float
    effective_experts: float
    max_load_share: float
    per_layer: dict[str, Any]
    srp: dict[int, float]
    sch: dict[int, dict[int, float]]
    cache_config: dict[str, Any]
    cache: dict[str, dict[int, dict[str, Any]]]

    def rows(self) -> list[dict[str, Any]]:
        return [{"policy": policy, "C": c, **to_jsonable(r)} for policy, by_c in self.cache.items()
                for c, r in by_c.items()]


def analyze(trace: TraceResult | RoutingTrace | str | Path, *, cache: str | Sequence[int] | None = None,
            policy: str | Sequence[str] | None = None, warm: bool = False, prefill: str | None = None,
            horizon: int | None = None) -> AnalysisResult:
    """Expert-reuse metrics and an expert-cache sweep of a routing trace (`tierwise remoe analyze`).

    `trace`: what `trace` returned, a RoutingTrace, or a trace file (.npz). `cache`: capacities C per layer (None:
    K, 1.5K, 2K and 4K); `policy`: cache policies (lru, fifo, lfu, lfru, belady); both take lists or comma-separated
    strings. `warm`: one cache across requests (default: cold per request); `prefill`: 'exclude' (decode steps
    only) or 'include'; `horizon`: the largest h of reuse at horizon.
    """
    from tierwise.remoe.analysis.analyze import analyze as run_analysis

    routing = trace.routing if isinstance(trace, TraceResult) else trace
    routing = routing if isinstance(routing, RoutingTrace) else RoutingTrace.load(routing)
    options = given(capacities=_items(cache, "--cache", int), policies=_items(policy, "--policy"), prefill=prefill,
                    max_horizon=horizon)
    return AnalysisResult(**run_analysis(routing, cold=not warm, **options))


# -- evaluate -----------------------------------------------------------------------------------------------------


def evaluate(model: str = "embedded", router: str | Path | None = None, *, data: str | None = None,
             max_rows: int | None = None, seq_len: int | None = None, batch_size: int | None = None,
             cache_sizes: str | Sequence[int] | None = None, generate: int | None = None,
             prompts: str | Path | None = None, threads: int | None = None, device: str = "cpu",
             dtype: str = "fp32") -> "EvalResult":
    """Held-out perplexity and expert reuse, before and after a router delta (`tierwise remoe eval`).

    `router`: a delta (.safetensors): both routers run on the same rows, side by side. `data`: evaluation text
    (finetune's formats); `max_rows`: N packed rows spread evenly over it (None: all); `cache_sizes`: C of uHR@C
    (None: K and 2K); `generate`: also decode each of `prompts` greedily for N tokens. None: EvalConfig's default.
    """
    from tierwise.remoe.analysis.evaluate import EvalConfig, evaluate_checkpoint
    from tierwise.remoe.models.placement import resolve_device, resolve_dtype

    _set_threads(threads)
    sizes = _items(cache_sizes, "--cache-sizes", int)
    cfg = EvalConfig(**given(data=data, max_rows=max_rows, seq_len=seq_len, batch_size=batch_size,
                             generate=generate, prompts=None if prompts is None else str(prompts),
                             cache_sizes=None if sizes is None else tuple(sizes)))
    return evaluate_checkpoint(model, None if router is None else Path(router), cfg, device=resolve_device(device),
                               dtype=resolve_dtype(dtype))


# -- finetune -----------------------------------------------------------------------------------------------------


def finetune(model: str = "embedded", *, data: str | None = None, out: str | Path | None = None,
             preset: str = "default", check_rows: int = 8, threads: int | None = None,
             **overrides: Any) -> "FinetuneResult":
    """Fine-tune only the router weights with the ReMoE objective; writes a router delta (`tierwise remoe finetune`).

    `preset`: the named settings to start from (default, demo, aggressive); `overrides`: any other finetune flag by
    its name: a FinetuneConfig field (steps, seq_len, batch_size, lr, device, dtype, seed, resume, ...), a loss
    weight (lambda_kl, lambda_reuse, lambda_smooth, lambda_lag, lambda_ws, lambda_spread, window, t_warm, lags) or
    an ablation (no_trust, no_reuse, no_smooth, no_lag, no_ws = True). `check_rows`: after the run, compare both
    routers on N rows of `data` (0: skip).
    """
    from accelerate import PartialState

    from tierwise.remoe.analysis.evaluate import EvalConfig, evaluate_checkpoint
    from tierwise.remoe.models.placement import resolve_device, resolve_dtype
    from tierwise.remoe.training import finetune as training

    cfg = _finetune_config(model, data, out, preset, overrides)
    _set_threads(threads)
    run = training.finetune(cfg)
    result = dataclasses.replace(run, config=cfg.to_dict())
    delta = run.delta_path or Path(cfg.out) / training.CHECKPOINT_DIR / training.DELTA_NAME
    if check_rows > 0 and PartialState().is_main_process and delta.is_file():
        check_cfg = EvalConfig(data=cfg.data, seq_len=cfg.seq_len, max_rows=check_rows,
                               doc_separator=cfg.doc_separator, max_docs=cfg.max_docs)
        result.check = evaluate_checkpoint(cfg.model, delta, check_cfg, device=resolve_device(cfg.device),
                                           dtype=resolve_dtype(cfg.dtype))
    return result


def _finetune_config(model: str, data: str | None, out: str | Path | None, preset: str, overrides: dict[str, Any]):
    """FinetuneConfig of the preset with the overrides: config fields as they are, loss flags into `loss`."""
    from tierwise.remoe.training.finetune import FinetuneConfig, config_with_preset

    config_fields = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"model", "data", "out", "loss"}
    unknown = set(overrides) - config_fields - set(LOSS_FLAGS) - set(ABLATION_FLAGS)
    if unknown:
        raise TierwiseError(f"finetune has no option {', '.join(sorted(unknown))}")
    cfg = config_with_preset(preset, model=model, data=data, out=None if out is None else str(out),
                             **{k: v for k, v in overrides.items() if k in config_fields})
    loss = given(**{LOSS_FLAGS[k]: v for k, v in overrides.items() if k in LOSS_FLAGS})
    if "lags" in loss:
        loss["lags"] = tuple(_items(loss["lags"], "--lags", int))
    loss.update({ABLATION_FLAGS[k]: 0.0 for k, v in overrides.items() if k in ABLATION_FLAGS and v})
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, **loss))


# -- offload ------------------------------------------------------------------------------------------------------


@dataclass
class OffloadResult(Result):
    """`offload`'s figures (docs/offload.md): the `workload`, the runtime's `config`, per configuration its `runs`
    metrics and, against `original`, `vs_original`; with two configurations `tpot_speedup` and
    `concentration_warning`; with `verify`, what was checked. `to_dataframe()`: one row per configuration, nested
    figures flattened as 'decode.hit_rate'."""

    model: str
    data: str | None  # the replay workload's documents
    workload: dict[str, Any]
    config: dict[str, Any]
    protect: int
    max_new_tokens: int
    runs: dict[str, dict[str, Any]]
    vs_original: dict[str, dict[str, Any]] = field(default_factory=dict)
    tpot_speedup: dict[str, float] | None = None
    concentration_warning: str | None = None
    verify: dict[str, Any] | None = None

    def rows(self) -> list[dict[str, Any]]:
        return [{"configuration": label, **_flat(to_jsonable(run))} for label, run in self.runs.items()]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The scalars of nested dicts under dotted keys; lists are left out."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def offload(model: str, router: str | Path | None = None, *, cache_experts: int | None = None,
            storage: str = "ufs4", target: str | None = None, platform: str | None = None, throttle: bool = False,
            policy: str | None = None, workload: str | None = None, data: str | None = None, prompt_tokens: int = 32,
            prompts: str | Path | None = None, limit: int | None = None, max_new_tokens: int = 32,
            temperature: float = 0.8, top_p: float = 0.95, seed: int = 0, prefetch: int | None = None,
            reroute: float | None = None, protect: int | None = None, compare: str | Sequence[str] | None = None,
            verify: bool = False, store: str | Path | None = None, threads: int = 1, device: str = "cpu",
            dtype: str = "fp32") -> OffloadResult:
    """Decode with routed experts offloaded to an on-disk store, at most `cache_experts` per layer in memory
    (`tierwise remoe offload`; docs/offload.md explains every parameter).

    `workload`: 'replay' (held-out `data`, teacher-forced; the default), 'sample' or 'greedy' (the default when
    `prompts` is given). `compare`: configurations run side by side on the same requests, e.g.
    'original,remoe,prefetch' (a list or comma-separated). `router`: the ReMoE delta ('remoe'). `target`, `policy`:
    None takes OffloadConfig's default; `cache_experts` None: K.
    """
    from tierwise.remoe.models.adapters import adapter_for, load_model
    from tierwise.remoe.models.placement import resolve_device, resolve_dtype
    from tierwise.remoe.offload import compare as cmp
    from tierwise.remoe.offload.runtime import OffloadConfig
    from tierwise.remoe.offload.workload import DEFAULT_REPLAY_REQUESTS, Workload, prompt_requests, replay_requests

    for name, value, low in (("--cache-experts", cache_experts, 1), ("--limit", limit, 1), ("--prefetch", prefetch, 0),
                             ("--reroute", reroute, 0), ("--protect", protect, 0)):
        if value is not None and value < low:
            raise TierwiseError(f"{name} must be at least {low}, got {value}")
    if target is not None:
        _check_target(target)
    kind = workload or ("greedy" if prompts is not None else "replay")
    work = Workload(kind, temperature, top_p, seed)
    if kind == "replay" and prompts is not None:
        raise TierwiseError("the replay workload reads documents from --data; --prompts is for --workload "
                            "greedy|sample")
    if kind != "replay" and data is not None:
        raise TierwiseError(f"--data is for the replay workload, not {kind}")
    _set_threads(threads)
    place = resolve_device(device)
    if kind == "replay" and data is None and model != "embedded":
        raise TierwiseError("the replay workload needs --data (held-out documents) for models other than the "
                            "embedded one, or --workload greedy|sample with --prompts")
    hf_model, tokenizer = load_model(model, dtype=resolve_dtype(dtype))  # on the CPU: the runtime places it
    top_k = adapter_for(hf_model).top_k
    if kind == "replay":
        data = data or "embedded:heldout"
        requests = replay_requests(data, tokenizer, prompt_tokens, max_new_tokens, limit or DEFAULT_REPLAY_REQUESTS)
    else:
        if tokenizer is None:
            raise TierwiseError("this checkpoint has no tokenizer; offload runs need one to encode the prompts")
        texts = cmp.resolve_prompts(model, prompts, tokenizer, limit)
        requests = prompt_requests([tokenizer(p)["input_ids"] for p in texts])
    if compare is not None:
        spec = compare if isinstance(compare, str) else ",".join(compare)
        settings = cmp.parse_settings(spec, prefetch=prefetch, reroute=reroute, top_k=top_k,
                                      have_router=router is not None)
    else:
        settings = [cmp.single_setting(router=router is not None, prefetch=prefetch, reroute=reroute)]
    if protect is not None and not any(s.reroute for s in settings):
        raise TierwiseError(f"--protect {protect} is given but no configuration reroutes; add reroute to --compare "
                            f"(or give --reroute LAMBDA), or drop --protect")
    config = OffloadConfig(cache_experts=cache_experts if cache_experts is not None else top_k, storage=storage,
                           platform=platform, throttle=throttle, store_dir=None if store is None else Path(store),
                           device=place, **given(policy=policy, target=target))
    figures = cmp.run_offload(hf_model, requests, max_new_tokens, config, settings, workload=work, router=router,
                              protect=cmp.DEFAULT_PROTECT if protect is None else protect, verify=verify)
    return OffloadResult(model=str(model), data=data, **figures)


def _check_target(target: str) -> None:
    """Refuse a --target that is neither a named target, 'own', nor a size, before the model loads."""
    from tierwise.common.units import parse_size
    from tierwise.remoe.offload.targets import TARGETS

    if target in TARGETS or target == "own":
        return
    try:
        parse_size(target, "--target")
    except TierwiseError as e:
        raise TierwiseError(f"{e}; or name a target: own, {', '.join(TARGETS)}") from None


# -- defaults, for --help -----------------------------------------------------------------------------------------


def _config_defaults(cls: type, renames: dict[str, str] | None = None) -> dict[str, Any]:
    """A config dataclass's defaults by parameter name (`renames`: field -> parameter)."""
    renames = renames or {}
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[renames.get(f.name, f.name)] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[renames.get(f.name, f.name)] = f.default_factory()
    return out


def _signature_defaults(function, renames: dict[str, str] | None = None) -> dict[str, Any]:
    """A function's keyword defaults by parameter name (`renames`: its name -> ours); None ones left out."""
    renames = renames or {}
    return {renames.get(name, name): p.default for name, p in inspect.signature(function).parameters.items()
            if p.default not in (inspect.Parameter.empty, None)}


def _analysis_defaults() -> dict[str, Any]:
    from tierwise.remoe.analysis.analyze import analyze as run_analysis

    return _signature_defaults(run_analysis, {v: k for k, v in ANALYZE_PARAMS.items()})


def _eval_defaults() -> dict[str, Any]:
    from tierwise.remoe.analysis.evaluate import EvalConfig

    return _config_defaults(EvalConfig)


def _finetune_defaults() -> dict[str, Any]:
    from tierwise.remoe.training.finetune import FinetuneConfig

    config = _config_defaults(FinetuneConfig)
    return {**config, **{flag: getattr(config["loss"], name) for flag, name in LOSS_FLAGS.items()}}


def _offload_defaults() -> dict[str, Any]:
    from tierwise.remoe.offload.runtime import OffloadConfig

    from tierwise.remoe.offload.compare import DEFAULT_PROTECT

    config = _config_defaults(OffloadConfig)
    return {"policy": config["policy"], "target": config["target"], "protect": DEFAULT_PROTECT}


def _pretrain_defaults() -> dict[str, Any]:
    from tierwise.remoe.training.pretrain import PretrainConfig

    return _config_defaults(PretrainConfig)


def _sweep_defaults() -> dict[str, Any]:
    from tierwise.remoe.training.sweep import SweepConfig

    return _config_defaults(SweepConfig)


_CONFIG_DEFAULTS = {"analyze": _analysis_defaults, "evaluate": _eval_defaults, "finetune": _finetune_defaults,
                    "offload": _offload_defaults, "pretrain": _pretrain_defaults, "sweep": _sweep_defaults}


def defaults(name: str) -> dict[str, Any]:
    """What each parameter of API function or command `name` (trace, analyze, evaluate, finetune, offload, pretrain,
    sweep) is when not given: its config's default, else the function's own. Loads the config's module."""
    own = _signature_defaults(globals()[name]) if name in API_FUNCTIONS else {}
    return {**own, **_CONFIG_DEFAULTS.get(name, dict)()}


def __getattr__(name: str):
    # the result types that build on torch modules, loaded when first asked for
    if name == "EvalResult":
        from tierwise.remoe.analysis.evaluate import EvalResult

        return EvalResult
    if name == "FinetuneResult":
        from tierwise.remoe.training.finetune import FinetuneResult

        return FinetuneResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
