"""`tierwise remoe offload`: run prompts through the offloading runtime, optionally original vs fine-tuned router.

The expert store is written once; `--compare` then runs the original router and the fine-tuned one back to back on
every prompt, with the same store and the same cache configuration (only the gate weights differ), and reports the
ratio of their mean decode TPOT (every request decodes the same number of tokens, so this is total decode time
over decode tokens; medians and p90 are reported beside it).
"""

from __future__ import annotations

from pathlib import Path

from tierwise.common.errors import TierwiseError
from tierwise.common.progress import progress_task
from tierwise.remoe.analysis.metrics import CONCENTRATION, concentration_warning
from tierwise.remoe.offload.generate import greedy_generate, run_metrics
from tierwise.remoe.offload.runtime import OffloadConfig, OffloadRuntime

WARMUP_TOKENS = 4


def resolve_prompts(model_name: str, prompts_file: str | Path | None, tokenizer, limit: int | None = None) -> list[str]:
    """Prompts from a file (see tierwise.remoe.models.prompts), or the embedded defaults for the embedded model."""
    from tierwise.remoe.models.prompts import load_prompts

    if prompts_file is not None:
        prompts = load_prompts(prompts_file, tokenizer)
    elif model_name == "embedded":
        from tierwise.remoe.models.embedded import default_prompts

        prompts = default_prompts()
    else:
        raise TierwiseError("--prompts FILE is required for models other than the embedded one")
    return prompts[:limit] if limit else prompts


def offload_compare(model, tokenizer, prompts: list[str], max_new_tokens: int, config: OffloadConfig, *,
                    router: str | Path | None = None, compare: bool = False) -> dict:
    """Offload `model` in place and measure; returns {'runs': {label: metrics}, 'tpot_speedup': ... (with compare)}.

    With `compare`, each prompt runs under both routers, alternating which goes first (A B, B A, ...), so that
    machine noise and drift hit both alike; swapping routers is a copy of the small gate matrices.
    """
    from tierwise.remoe.export.delta import RouterDelta, apply_router_delta, delta_meta, load_router_delta, router_state

    if tokenizer is None:
        raise TierwiseError("this checkpoint has no tokenizer; offload runs need one to encode the prompts")
    if max_new_tokens < 2:
        raise TierwiseError(f"--max-new-tokens must be at least 2 to measure TPOT, got {max_new_tokens}")
    if compare and router is None:
        raise TierwiseError("--compare needs --router DELTA (the fine-tuned router to compare with the original)")
    routers: dict[str, RouterDelta | None] = {}
    if router is None or compare:
        routers["original"] = RouterDelta(router_state(model), delta_meta(model)) if compare else None
    if router is not None:
        routers["fine-tuned"] = load_router_delta(router)
    runtime = OffloadRuntime(model, config)
    prompts_ids = [tokenizer(p)["input_ids"] for p in prompts]
    gens: dict[str, list] = {label: [] for label in routers}
    labels = list(routers)
    try:
        # One short untimed request first, so one-off start-up costs (allocator, kernels) hit neither run.
        greedy_generate(model, prompts_ids[0], WARMUP_TOKENS, runtime=runtime)
        with progress_task("offload: " + " vs ".join(labels), len(prompts_ids) * len(labels)) as (progress, task):
            for i, ids in enumerate(prompts_ids):
                for label in (labels if i % 2 == 0 else labels[::-1]):
                    if routers[label] is not None:
                        apply_router_delta(model, routers[label])
                    gens[label].append(greedy_generate(model, ids, max_new_tokens, runtime=runtime))
                    progress.update(task, advance=1)
    finally:
        runtime.close()
    runs = {label: run_metrics(g, runtime) for label, g in gens.items()}
    result = {"config": runtime.describe(), "max_new_tokens": max_new_tokens, "runs": runs}
    if compare:
        result["tpot_speedup"] = {
            kind: runs["original"]["tpot_ms"][kind]["mean"] / runs["fine-tuned"]["tpot_ms"][kind]["mean"]
            for kind in ("measured", "total")
        }
        result["concentration_warning"] = concentration_warning(runs["original"]["routing"],
                                                                runs["fine-tuned"]["routing"])
    return result


SUMMARY_METRICS = {  # table row label -> how to read it from one run's metrics
    "TTFT ms (median)": lambda m: m["ttft_ms"]["total"]["median"],
    "TPOT ms (mean)": lambda m: m["tpot_ms"]["total"]["mean"],
    "TPOT ms (median)": lambda m: m["tpot_ms"]["total"]["median"],
    "TPOT ms (p90)": lambda m: m["tpot_ms"]["total"]["p90"],
    "TPOT ms measured (mean)": lambda m: m["tpot_ms"]["measured"]["mean"],
    "TPOT ms modelled (mean)": lambda m: m["tpot_ms"]["modelled"]["mean"],
    "tokens/s": lambda m: m["tokens_per_s"]["total"],
    "decode hit rate": lambda m: m["decode"]["hit_rate"],
    "decode misses/token": lambda m: m["decode"]["misses_per_token"],
    "store I/O s": lambda m: m["time_s"]["io_measured"],
    "MB read": lambda m: m["bytes_read"] / 1e6,
}


def summary_rows(result: dict) -> list[dict]:
    """One table row per number a user compares, one column per router, so it reads whole at 80 columns
    (everything else is in the JSON)."""
    runs = result["runs"]
    return [{"metric": label, **{name: read(m) for name, m in runs.items()}} for label, read in SUMMARY_METRICS.items()]


def routing_rows(result: dict) -> list[dict]:
    """One row per run: decode EOR with the load concentration beside it (a collapse onto few experts shows here)."""
    return [{"router": label, "EOR (decode)": m["routing"]["eor_decode"],
             **{name: m["routing"][k] for k, name in CONCENTRATION.items()}} for label, m in result["runs"].items()]
