"""`tierwise remoe offload`: run prompts through the offloading runtime, optionally original vs fine-tuned router.

The expert store is written once; `--compare` then runs the original router and the fine-tuned one back to back on
the same prompts, the same store and the same cache configuration (only the gate weights differ), and reports the
ratio of their decode TPOT.
"""

from __future__ import annotations

from pathlib import Path

from tierwise.common.errors import TierwiseError
from tierwise.remoe.offload.generate import greedy_generate, run_prompts
from tierwise.remoe.offload.runtime import OffloadConfig, OffloadRuntime

WARMUP_TOKENS = 4


def resolve_prompts(model_name: str, prompts_file: str | Path | None, tokenizer, limit: int | None = None) -> list[str]:
    """Prompts from a file (see tierwise.remoe.data), or the embedded defaults for the embedded model."""
    from tierwise.remoe.data import load_prompts

    if prompts_file is not None:
        prompts = load_prompts(prompts_file, tokenizer)
    elif model_name == "embedded":
        from tierwise.remoe.embedded import default_prompts

        prompts = default_prompts()
    else:
        raise TierwiseError("--prompts FILE is required for models other than the embedded one")
    return prompts[:limit] if limit else prompts


def offload_compare(model, tokenizer, prompts: list[str], max_new_tokens: int, config: OffloadConfig, *,
                    router: str | Path | None = None, compare: bool = False) -> dict:
    """Offload `model` in place and measure; returns {'runs': {label: metrics}, 'tpot_speedup': ... (with compare)}."""
    from tierwise.remoe.delta import apply_router_delta, load_router_delta

    if max_new_tokens < 2:
        raise TierwiseError(f"--max-new-tokens must be at least 2 to measure TPOT, got {max_new_tokens}")
    if compare and router is None:
        raise TierwiseError("--compare needs --router DELTA (the fine-tuned router to compare with the original)")
    delta = load_router_delta(router) if router is not None else None
    runtime = OffloadRuntime(model, config)
    try:
        # One short untimed request first, so one-off start-up costs (allocator, kernels) hit neither run.
        greedy_generate(model, tokenizer(prompts[0])["input_ids"], WARMUP_TOKENS, runtime=runtime)
        runs: dict[str, dict] = {}
        if delta is None or compare:
            runs["original"] = run_prompts(model, tokenizer, prompts, max_new_tokens, runtime=runtime,
                                           description="offload: original router")[1]
        if delta is not None:
            apply_router_delta(model, delta)
            runs["fine-tuned"] = run_prompts(model, tokenizer, prompts, max_new_tokens, runtime=runtime,
                                             description="offload: fine-tuned router")[1]
    finally:
        runtime.close()
    result = {"config": runtime.describe(), "max_new_tokens": max_new_tokens, "runs": runs}
    if compare:
        result["tpot_speedup"] = {
            kind: runs["original"]["tpot_ms"][kind]["median"] / runs["fine-tuned"]["tpot_ms"][kind]["median"]
            for kind in ("measured", "total")
        }
    return result


def summary_rows(result: dict) -> list[dict]:
    """One table row per run: the numbers a user compares (everything else is in the JSON)."""
    rows = []
    for label, m in result["runs"].items():
        tpot = m["tpot_ms"]
        rows.append({
            "router": label,
            "TTFT ms": m["ttft_ms"]["total"]["median"],
            "TPOT ms": tpot["total"]["median"],
            "p90": tpot["total"]["p90"],
            "measured": tpot["measured"]["median"],
            "modelled": tpot["modelled"]["median"],
            "tok/s": m["tokens_per_s"]["total"],
            "hit rate": m["decode"]["hit_rate"],
            "miss/tok": m["decode"]["misses_per_token"],
            "I/O s": m["time_s"]["io_measured"],
            "MB read": m["bytes_read"] / 1e6,
        })
    return rows
