"""Downstream quality through lm-evaluation-harness (remoe.md §5.6: GSM8K, HumanEval, MMLU, IFEval).

The model is loaded once, the router delta (if any) is copied into its gates, and the live model object goes to
lm_eval's own Hugging Face model class (`HFLM(pretrained=model, tokenizer=...)`) and `simple_evaluate`: the harness's
prompts, few-shot sampling and metrics, with nothing re-implemented here. Tasks come from lm_eval's registry, plus any
YAML task folder given as `include_path` (e.g. a local task on local data, offline).

lm_eval is an optional extra (`pip install 'tierwise[lmeval]'`): it pulls in `datasets`, pandas and scikit-learn.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import load_model

# The parts of simple_evaluate's answer that are plain data (its `config` holds the model object itself).
RESULT_KEYS = ("results", "groups", "versions", "n-shot", "higher_is_better", "n-samples")


def _lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise TierwiseError("`tierwise remoe lm-eval` needs lm-evaluation-harness: pip install 'tierwise[lmeval]' "
                            "(or pip install lm_eval==0.4.13)") from e
    return lm_eval


@functools.lru_cache(maxsize=4)
def _task_index(include_path: str | None):
    """lm_eval's TaskManager: building it reads every task YAML of the registry (~15k names, seconds), so once."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def task_manager(tasks: list[str], include_path: str | Path | None = None):
    """lm_eval's TaskManager over its registry plus `include_path`; unknown task names fail here, before any work."""
    if include_path is not None and not Path(include_path).is_dir():
        raise TierwiseError(f"--include-path {include_path} is not a folder of lm_eval task YAML files")
    manager = _task_index(str(Path(include_path).resolve()) if include_path is not None else None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise TierwiseError(f"unknown lm_eval task(s) {unknown}; `lm_eval ls tasks` lists the registry, and "
                            "--include-path adds a folder of task YAML files")
    return manager


def run_lm_eval(model_name: str, router: str | Path | None, tasks: list[str], *, limit: float | None = None,
                num_fewshot: int | None = None, batch_size: int = 1, include_path: str | Path | None = None,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                apply_chat_template: bool = False, confirm_run_unsafe_code: bool = False,
                log_samples: bool = False) -> dict[str, Any]:
    """Evaluate `model_name` (with the router delta `router` applied, when given) on lm_eval `tasks`.

    Returns the model, router, tasks and limit, and simple_evaluate's `RESULT_KEYS` (plus `samples` with
    `log_samples`). `apply_chat_template` wraps each prompt in the tokenizer's chat template (chat models);
    `confirm_run_unsafe_code` lets code tasks (HumanEval) execute the generated programs.
    """
    from tierwise.remoe.export.delta import apply_router_delta, load_router_delta

    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    if not tasks:
        raise TierwiseError("--tasks needs at least one lm_eval task name, e.g. gsm8k or mmlu")
    manager = task_manager(tasks, include_path)
    delta = load_router_delta(router) if router is not None else None  # a bad delta fails before the model loads
    model, tokenizer = load_model(model_name, dtype=dtype, device=device)  # HFLM runs a model object where it lies
    if tokenizer is None:
        raise TierwiseError(f"{model_name} has no tokenizer; lm_eval tasks are text")
    if delta is not None:
        apply_router_delta(model, delta)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot, task_manager=manager,
                                  apply_chat_template=apply_chat_template, log_samples=log_samples,
                                  confirm_run_unsafe_code=confirm_run_unsafe_code)
    result = {"model": model_name, "router": str(router) if router is not None else None, "tasks": tasks,
              "limit": limit, "apply_chat_template": apply_chat_template, **{k: out[k] for k in RESULT_KEYS if k in out}}
    if log_samples:
        result["samples"] = out["samples"]
    return result


def score_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per (task, metric, filter) of lm_eval's results, with its standard error."""
    rows = []
    for task, scores in result["results"].items():
        for key, value in scores.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr"):
                continue
            stderr = scores.get(f"{metric}_stderr,{filt}")
            rows.append({"task": task, "metric": metric, "filter": filt, "value": value,
                         "stderr": stderr if isinstance(stderr, (int, float)) else None})
    return rows
