"""`tierwise remoe offload`: configurations of the offloading runtime side by side on the same requests.

A configuration is the original router or ReMoE's fine-tuned one (`remoe`, the --router delta), optionally with the
runtime techniques an engineer could use instead or as well: next-layer prefetch (`prefetch`) and cache-aware
rerouting (`reroute`), e.g. `original,remoe,prefetch,reroute,remoe+prefetch,remoe+reroute`. The expert store is
written once; every request then runs under every configuration, interleaved request by request with the order
rotated (A B C, B C A, ...) so machine noise and drift hit all alike; switching configurations copies the small gate
matrices and sets the runtime's options. Everything is reported relative to `original`: TPOT speedup, decode steps
identical to it (same token; replay: same argmax = top-1 agreement), and for replay the continuation's perplexity.
`verify` checks every configuration that keeps the model's routing against the resident (non-offloaded) model.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tierwise.common.errors import TierwiseError
from tierwise.common.progress import progress_task
from tierwise.remoe.analysis.metrics import CONCENTRATION, concentration_warning
from tierwise.remoe.offload.generate import GREEDY, Generation, decode, run_metrics
from tierwise.remoe.offload.runtime import OffloadConfig, OffloadRuntime
from tierwise.remoe.offload.workload import Request, Workload, prompt_requests

WARMUP_TOKENS = 4
TECHNIQUES = ("remoe", "prefetch", "reroute")
DEFAULT_REROUTE = 0.5
DEFAULT_PROTECT = 2  # J: the original top-J experts rerouting never displaces (fine-grained MoEs, remoe.md §8)
VERIFY_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclass(frozen=True)
class Setting:
    """One configuration: which router, and which runtime techniques."""

    label: str
    router: bool = False  # the --router delta (ReMoE) instead of the original gates
    prefetch: int = 0  # experts of the next layer loaded ahead of use (0: off)
    reroute: float = 0.0  # cache-prior strength λ (0: off)

    @property
    def keeps_routing(self) -> bool:
        """Whether the model routes as its (possibly fine-tuned) gates say: what --verify can check exactly."""
        return self.reroute == 0


def parse_settings(spec: str, *, prefetch: int | None, reroute: float | None, top_k: int,
                   have_router: bool) -> list[Setting]:
    """`original,remoe,prefetch,reroute,remoe+prefetch,...` -> settings; `original` is always run, first.
    `prefetch` loads --prefetch N experts (default K), `reroute` uses --reroute λ (default 0.5). A --prefetch or
    --reroute value (not None) that no configuration of the list uses is an error, not silently dropped."""
    n = top_k if prefetch is None else prefetch
    lam = DEFAULT_REROUTE if reroute is None else reroute
    settings: dict[str, Setting] = {}
    for label in (s.strip() for s in spec.split(",")):
        if not label:
            continue
        parts = label.split("+")
        if label != "original" and (set(parts) - set(TECHNIQUES) or len(set(parts)) != len(parts)):
            raise TierwiseError(f"--compare: unknown configuration {label!r}; use original or a '+' combination of "
                                f"{', '.join(TECHNIQUES)} (e.g. remoe+prefetch)")
        if "remoe" in parts and not have_router:
            raise TierwiseError(f"--compare: {label!r} needs --router DELTA (the ReMoE router delta)")
        if "prefetch" in parts and n < 1:
            raise TierwiseError(f"--compare: {label!r} needs --prefetch N >= 1, got {n}")
        if "reroute" in parts and not lam > 0:
            raise TierwiseError(f"--compare: {label!r} needs --reroute LAMBDA > 0, got {lam}")
        if label in settings:
            raise TierwiseError(f"--compare lists {label!r} twice")
        settings[label] = Setting(label, "remoe" in parts, n if "prefetch" in parts else 0,
                                  lam if "reroute" in parts else 0.0)
    if not settings:
        raise TierwiseError("--compare needs at least one configuration, e.g. original,remoe")
    for flag, value, technique in (("--prefetch", prefetch, "prefetch"), ("--reroute", reroute, "reroute")):
        if value is not None and not any(technique in label.split("+") for label in settings):
            raise TierwiseError(f"{flag} {value:g} is given but --compare {spec} has no configuration that uses it; "
                                f"add {technique} (or e.g. remoe+{technique}) to the list, or drop {flag}")
    original = settings.pop("original", Setting("original"))
    return [original, *settings.values()]


def single_setting(*, router: bool, prefetch: int | None, reroute: float | None) -> Setting:
    """The one configuration a run without --compare uses, named like a --compare entry."""
    parts = [name for name, on in (("remoe", router), ("prefetch", bool(prefetch)), ("reroute", bool(reroute))) if on]
    return Setting("+".join(parts) or "original", router, prefetch or 0, reroute or 0.0)


def resolve_prompts(model_name: str, prompts_file: str | Path | None, tokenizer, limit: int | None = None) -> list[str]:
    """Prompts from a file (see tierwise.remoe.models.prompts), or the embedded defaults for the embedded model."""
    from tierwise.remoe.models.prompts import load_prompts

    if limit is not None and limit < 1:
        raise TierwiseError(f"--limit must be at least 1, got {limit}")
    if prompts_file is not None:
        prompts = load_prompts(prompts_file, tokenizer)
    elif model_name == "embedded":
        from tierwise.remoe.models.embedded import default_prompts

        prompts = default_prompts()
    else:
        raise TierwiseError("--prompts FILE is required for models other than the embedded one")
    return prompts[:limit] if limit else prompts


def run_offload(model, requests: list[Request], max_new_tokens: int, config: OffloadConfig, settings: list[Setting],
                *, workload: Workload = GREEDY, router: str | Path | None = None, protect: int = DEFAULT_PROTECT,
                verify: bool = False) -> dict:
    """Offload `model` in place and run every request under every setting (interleaved); see the module doc."""
    from tierwise.remoe.export.delta import RouterDelta, apply_router_delta, delta_meta, load_router_delta, router_state

    if max_new_tokens < 2:
        raise TierwiseError(f"--max-new-tokens must be at least 2 to measure TPOT, got {max_new_tokens}")
    if not requests:
        raise TierwiseError("no requests to run")
    if any(s.router for s in settings) and router is None:
        raise TierwiseError("a ReMoE configuration needs --router DELTA")
    gates = {False: RouterDelta(router_state(model), delta_meta(model)) if router is not None else None,
             True: load_router_delta(router) if router is not None else None}
    reference = copy.deepcopy(model) if verify else None  # the resident model, before the experts leave
    runtime = OffloadRuntime(model, config)
    if reference is not None:
        reference.to(config.device)
    for s in settings:  # every bad value is reported before anything runs
        runtime.configure(prefetch=s.prefetch, reroute=s.reroute, protect=protect)
    gens: dict[str, list[Generation]] = {s.label: [] for s in settings}
    current_router = False
    checked: dict[str, float] = {}
    tolerance = VERIFY_TOLERANCE.get(next(model.parameters()).dtype, 1e-4)
    try:
        runtime.configure()
        # One short untimed request first, so one-off start-up costs (allocator, kernels) hit no configuration.
        decode(model, Request(0, requests[0].prompt_ids), WARMUP_TOKENS, GREEDY, runtime=runtime)
        with progress_task(f"offload: {len(settings)} configuration(s)", len(requests) * len(settings)) as (progress, task):
            for i, request in enumerate(requests):
                order = settings[i % len(settings):] + settings[:i % len(settings)]
                references: dict[bool, Generation] = {}
                for s in order:
                    if gates[s.router] is not None and s.router != current_router:
                        apply_router_delta(model, gates[s.router])
                        current_router = s.router
                    runtime.configure(prefetch=s.prefetch, reroute=s.reroute, protect=protect)
                    check = reference is not None and s.keeps_routing
                    gen = decode(model, request, max_new_tokens, workload, runtime=runtime, keep_logits=check)
                    if check:
                        if s.router not in references:
                            if gates[s.router] is not None:
                                apply_router_delta(reference, gates[s.router])
                            references[s.router] = decode(reference, request, max_new_tokens, workload,
                                                          keep_logits=True)
                        diff = check_against_resident(s.label, request.index, gen, references[s.router], tolerance)
                        checked[s.label] = max(checked.get(s.label, 0.0), diff)
                        gen.logits.clear()
                    gens[s.label].append(gen)
                    progress.update(task, advance=1)
    finally:
        runtime.configure()
        runtime.close()
    runs = {label: run_metrics(g, runtime, workload) for label, g in gens.items()}
    for s in settings:
        runs[s.label]["setting"] = asdict(s)
    result = {"workload": {**workload.describe(), "requests": len(requests), "new_tokens": max_new_tokens,
                           "prompt_tokens": [len(r.prompt_ids) for r in requests]},
              "config": runtime.describe(), "protect": protect, "max_new_tokens": max_new_tokens, "runs": runs}
    if "original" in gens and len(gens) > 1:
        result["vs_original"] = {label: vs_original(gens["original"], g, runs["original"], runs[label], workload)
                                 for label, g in gens.items() if label != "original"}
    if len(settings) == 2:  # the one-pair summary the demo quotes
        first, second = (s.label for s in settings)
        result["tpot_speedup"] = tpot_speedup(runs[first], runs[second])
        result["concentration_warning"] = concentration_warning(runs[first]["routing"], runs[second]["routing"])
    if verify:
        result["verify"] = {"checked": checked, "tolerance": tolerance,
                            "skipped": [s.label for s in settings if not s.keeps_routing]}
    return result


def offload_compare(model, tokenizer, prompts: list[str], max_new_tokens: int, config: OffloadConfig, *,
                    router: str | Path | None = None, compare: bool = False) -> dict:
    """Greedy decoding of `prompts` under the original router, the `router` delta, or both (`compare`, labelled
    original / fine-tuned): the call the demo makes."""
    if tokenizer is None:
        raise TierwiseError("this checkpoint has no tokenizer; offload runs need one to encode the prompts")
    if compare and router is None:
        raise TierwiseError("--compare needs --router DELTA (the fine-tuned router to compare with the original)")
    settings = [Setting("original"), Setting("fine-tuned", router=True)] if compare else \
        [Setting("fine-tuned" if router is not None else "original", router=router is not None)]
    requests = prompt_requests([tokenizer(p)["input_ids"] for p in prompts])
    return run_offload(model, requests, max_new_tokens, config, settings, router=router)


def check_against_resident(label: str, request: int, got: Generation, ref: Generation, tolerance: float) -> float:
    """Every step's token and logits against the resident model's; raises on the first mismatch. Max |diff|."""
    worst = 0.0
    for step, (a, b) in enumerate(zip(got.logits, ref.logits)):
        diff = float((a - b).abs().max())
        worst = max(worst, diff)
        if got.tokens[step] != ref.tokens[step] or not torch.allclose(a, b, atol=tolerance, rtol=tolerance):
            raise TierwiseError(
                f"--verify: configuration {label!r}, request {request}, step {step}: the offloaded model differs from "
                f"the resident one (token {got.tokens[step]} vs {ref.tokens[step]}, max |logit difference| "
                f"{diff:.3g} > tolerance {tolerance:g})")
    return worst


def tpot_speedup(base_run: dict, run: dict) -> dict[str, float]:
    """Mean TPOT of `base_run` over that of `run`, measured, modelled (where modelled) and total."""
    return {kind: base_run["tpot_ms"][kind]["mean"] / run["tpot_ms"][kind]["mean"]
            for kind in ("measured", "modelled", "total") if kind in run["tpot_ms"]}


def _compared(gen: Generation, workload: Workload) -> list[int]:
    """What "identical step" compares: the argmax under replay (tokens are forced), else the chosen token."""
    return gen.argmax if workload.kind == "replay" else gen.tokens


def vs_original(base: list[Generation], gens: list[Generation], base_run: dict, run: dict, workload: Workload) -> dict:
    """Speedups, steps identical to the original, quality change and routing-concentration warning of one run."""
    same = total = prefix = 0
    for b, g in zip(base, gens):
        pairs = list(zip(_compared(b, workload), _compared(g, workload)))
        same += sum(x == y for x, y in pairs)
        total += len(pairs)
        prefix += next((i for i, (x, y) in enumerate(pairs) if x != y), len(pairs))
    out = {
        "tpot_speedup": tpot_speedup(base_run, run),
        "identical_steps": same, "steps": total, "identical_share": same / max(1, total),
        "identical_prefix_mean": prefix / max(1, len(gens)),
        "concentration_warning": concentration_warning(base_run["routing"], run["routing"]),
    }
    if workload.kind == "replay":
        out["top1_agreement"] = out["identical_share"]
        out["ppl_change"] = run["quality"]["ppl"] / base_run["quality"]["ppl"] - 1
    return out


# -- the printed tables -------------------------------------------------------------------------------------------
ALIASES = {"original": "orig", "fine-tuned": "tuned", "prefetch": "pf", "reroute": "rr"}


def column_name(label: str) -> str:
    """A configuration's short column header, so six columns fit 80 characters."""
    return "+".join(ALIASES.get(p, p) for p in label.split("+")) if label not in ALIASES else ALIASES[label]


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    v = float(v)
    if abs(v) >= 1e5:
        return f"{v:.2e}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"


def _pct(v, sign: str = "+") -> str:
    return "-" if v is None else f"{100 * v:{sign}.1f}%"


def summary_rows(result: dict) -> list[dict]:
    """One row per number a user compares, one column per configuration (short headers; everything else is in the
    JSON), formatted so that six configurations read whole at 80 columns."""
    runs, vs = result["runs"], result.get("vs_original", {})
    modelled = result["config"]["timing"] is not None
    any_prefetch = any(m["prefetch"] for m in runs.values())
    any_reroute = any(m["setting"]["reroute"] > 0 for m in runs.values())
    replay = result["workload"]["kind"] == "replay"

    def speedup(label, kind):
        return 1.0 if label == "original" and vs else vs.get(label, {}).get("tpot_speedup", {}).get(kind)

    metrics = [
        ("misses/token", lambda label, m: _cell(m["decode"]["misses_per_token"])),
        *([("fetches/token", lambda label, m: _cell(m["decode"]["fetches_per_token"]))] if any_prefetch else []),
        ("hit rate", lambda label, m: _cell(m["decode"]["hit_rate"])),
        ("TPOT measured (ms)", lambda label, m: _cell(m["tpot_ms"]["measured"]["mean"])),
        *([("TPOT modelled (ms)", lambda label, m: _cell(m["tpot_ms"]["modelled"]["mean"]))] if modelled else []),
    ]
    if vs:
        metrics += [("speedup measured", lambda label, m: _cell(speedup(label, "measured")))]
        if modelled:
            metrics += [("speedup modelled", lambda label, m: _cell(speedup(label, "modelled")))]
        metrics += [("same steps", lambda label, m: _cell(1.0 if label == "original" else
                                                          vs[label]["identical_share"]))]
    if replay:
        metrics += [("ppl", lambda label, m: _cell(m["quality"]["ppl"]))]
        if vs:
            metrics += [("ppl change", lambda label, m: _pct(0.0 if label == "original" else vs[label]["ppl_change"]))]
    if any_prefetch:
        pf = lambda key, scale=1.0: (lambda label, m: _cell(m["prefetch"][key] * scale) if m["prefetch"] else "-")  # noqa: E731
        metrics += [("pf precision", pf("precision")), ("pf recall", pf("recall")),
                    ("pf wasted (MB)", pf("wasted_bytes", 1e-6))]
    if any_reroute:
        metrics += [("rerouted", lambda label, m: _pct(m["decode"]["rerouted_share"], "")
                     if m["setting"]["reroute"] > 0 else "-")]
    return [{"metric": name, **{column_name(label): read(label, m) for label, m in runs.items()}}
            for name, read in metrics]


def legend(result: dict) -> list[str]:
    """What each column and row means, in lines that wrap cleanly."""
    runs = result["runs"]
    cols = []
    for label, m in runs.items():
        s = m["setting"]
        parts = ["ReMoE router (--router)" if s["router"] else "original router"]
        if s["prefetch"]:
            parts.append(f"next-layer prefetch N={s['prefetch']}")
        if s["reroute"]:
            parts.append(f"cache-prior rerouting λ={s['reroute']:g}, J={result['protect']}")
        cols.append(f"{column_name(label)} = {', '.join(parts)}")
    w = result["workload"]
    lines = ["columns: " + "; ".join(cols)]
    same = "same argmax as original (= top-1 agreement)" if w["kind"] == "replay" else "same token as original"
    lines.append(f"rows: misses = demand fetches per decode token (all MoE layers); fetches add prefetch loads; "
                 f"TPOT = mean decode-step time; same steps = share of steps with the {same}"
                 + ("; ppl = perplexity of the real continuation" if w["kind"] == "replay" else "")
                 + ("; pf = prefetch prediction precision/recall and bytes loaded but never used" if
                    any(m["prefetch"] for m in runs.values()) else ""))
    return lines


def routing_rows(result: dict) -> list[dict]:
    """One row per configuration: decode EOR with the load concentration beside it (a collapse shows here)."""
    return [{"config": label, "EOR (decode)": m["routing"]["eor_decode"],
             **{name: m["routing"][k] for k, name in CONCENTRATION.items()}} for label, m in result["runs"].items()]
