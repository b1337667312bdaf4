"""`tierwise remoe lm-eval`: a router delta applied to the HF model, run by lm_eval's HFLM on a local task, offline.

The task is a YAML written into a temporary folder over a JSONL of multiple-choice items cut from the embedded
held-out corpus (the true continuation of a document against another document's); the model is a tiny checkpoint.
Nothing is fetched: tests/conftest.py sets HF_HUB_OFFLINE=1, which `datasets` also reads as HF_DATASETS_OFFLINE.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional extra: pip install 'tierwise[lmeval]'")

from tierwise.cli import app  # noqa: E402
from tierwise.remoe.analysis.lmeval import run_lm_eval, score_rows  # noqa: E402
from tierwise.remoe.export.delta import save_router_delta  # noqa: E402
from tierwise.remoe.models import embedded  # noqa: E402
from tierwise.remoe.models.adapters import adapter_for, load_model, save_tiny  # noqa: E402

TASK = "tierwise_tiny_mc"


def _items(n: int = 8) -> list[dict]:
    """Item i: the first words of held-out document i; the choices: its next words, and document i+1's."""
    docs = [d.split() for d in embedded.corpus_documents("heldout") if len(d.split()) >= 12][: n + 1]
    return [{"question": " ".join(docs[i][:8]), "choices": [" ".join(docs[i][8:11]), " ".join(docs[i + 1][8:11])],
             "answer": 0} for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    ckpt = save_tiny("olmoe", root / "ckpt", initializer_range=0.2)  # routing moves the outputs well above rounding
    model, _ = load_model(ckpt)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapter_for(model).moe_layers:
            w = adapter_for(model).router_weight(layer)
            w.add_(0.4 * torch.randn(w.shape, generator=g))
    delta = save_router_delta(model, root / "router.safetensors")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in _items()))
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'items.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return ckpt, delta, tasks, root


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context) under `model`, summed over the continuation's tokens."""
    ctx, whole = tokenizer(context)["input_ids"], tokenizer(context + continuation)["input_ids"]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, len(ctx):]
    return float(logp[torch.arange(len(ctx) - 1, len(whole) - 1), targets].sum())


def test_router_delta_reaches_lm_eval(setup):
    ckpt, delta, tasks, _ = setup
    runs = {label: run_lm_eval(str(ckpt), router, [TASK], include_path=tasks, limit=2, log_samples=True)
            for label, router in (("original", None), ("fine-tuned", delta))}
    for label, result in runs.items():
        (row,) = score_rows(result)
        assert row["task"] == TASK and row["metric"] == "acc" and 0 <= row["value"] <= 1
        model, tokenizer = load_model(ckpt)
        if label == "fine-tuned":
            from tierwise.remoe.export.delta import apply_router_delta

            apply_router_delta(model, delta)
        sample = result["samples"][TASK][0]
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            assert resp[0][0] == pytest.approx(_loglikelihood(model, tokenizer, context, continuation), abs=1e-3)
    before, after = (runs[k]["samples"][TASK][0]["resps"][0][0][0] for k in ("original", "fine-tuned"))
    assert abs(before - after) > 1e-3  # the delta changed what lm_eval scored


def test_lm_eval_command(setup):
    ckpt, delta, tasks, root = setup
    args = ["remoe", "lm-eval", str(ckpt), "--router", str(delta), "--tasks", TASK, "--include-path", str(tasks),
            "--limit", "2", "--dtype", "bf16", "--json", str(root / "scores.json")]
    result = CliRunner().invoke(app, args, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert TASK in result.stdout and "acc" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    scores = json.loads((root / "scores.json").read_text())
    assert scores["router"] == str(delta) and scores["limit"] == 2 and "acc,none" in scores["results"][TASK]
    bad = CliRunner().invoke(app, ["remoe", "lm-eval", str(ckpt), "--tasks", "no_such_task_xyz",
                                   "--include-path", str(tasks)])
    assert bad.exit_code != 0 and "unknown lm_eval task" in str(bad.exception)
