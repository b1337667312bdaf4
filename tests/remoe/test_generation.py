"""The greedy-generation check: repetition measures, loop detection, and two routers decoding the same prompts."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.remoe.analysis.generation import (distinct_ngrams, generation_check, greedy_continuations,
                                                identical_prefix, loop_period, repetition_report)
from tierwise.remoe.export.delta import RouterDelta, delta_meta, router_state, save_router_delta
from tierwise.remoe.models.adapters import adapter_for, save_tiny, tiny_model


def test_distinct_ngrams():
    assert distinct_ngrams(list(range(20))) == 1.0
    assert distinct_ngrams([7] * 20) == 1 / 17
    assert distinct_ngrams([1, 2, 3]) == 1.0  # too short to repeat
    assert distinct_ngrams([1, 2, 1, 2, 1, 2]) == 2 / 3  # (1,2,1,2) (2,1,2,1) (1,2,1,2)


def test_loop_period_finds_the_smallest_cycle_of_the_tail():
    text = list(range(100, 140))  # 40 tokens without repeats
    assert loop_period(text) is None
    assert loop_period(text + [5, 6, 7] * 9) == 3
    assert loop_period(text + [9] * 30) == 1
    assert loop_period(text + [1, 2, 3, 4, 5, 6] * 5) == 6  # the last 24 tokens repeat the 6 before them
    assert loop_period(text + [1, 2, 3, 4, 5, 6] * 4) is None  # 24 tokens in a cycle: one period short
    assert loop_period(text + list(range(20)) * 2) is None  # period 20 > MAX_PERIOD
    assert loop_period([3] * 10) is None  # shorter than the tail


def test_repetition_report_and_prefix():
    rep = repetition_report([list(range(64)), list(range(40)) + [1, 2] * 13])
    assert rep["prompts"] == 2 and rep["looping_prompts"] == 1 and rep["loop_period"] == [None, 2]
    assert rep["distinct4"][0] == 1.0 and rep["distinct4"][1] < 1.0
    assert identical_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2 and identical_prefix([1, 2], [1, 2]) == 2


def test_greedy_continuations_match_step_by_step_argmax():
    model = tiny_model("olmoe")
    prompt = [5, 17, 42, 9]
    (got,) = greedy_continuations(model, [prompt], 6)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert got == ids[len(prompt):]


def test_same_router_decodes_identically_and_a_different_one_diverges():
    model = tiny_model("olmoe", initializer_range=0.2)
    original = RouterDelta(router_state(model), delta_meta(model))
    prompts = [[5, 17, 42, 9], [100, 3, 77]]
    same = generation_check(model, prompts, 12, original, original)
    assert same["identical_prefix"] == [12, 12] and same["identical_continuations"] == 2
    g = torch.Generator().manual_seed(0)
    other = RouterDelta({n: torch.randn(w.shape, generator=g) for n, w in original.tensors.items()}, original.meta)
    diff = generation_check(model, prompts, 12, original, other)
    assert diff["identical_continuations"] < 2
    assert diff["before"] == same["before"]  # the original is applied before decoding, whatever the model held
    assert router_state(model).keys() == other.tensors.keys() and all(
        torch.equal(router_state(model)[n], other.tensors[n]) for n in other.tensors)  # left with the delta applied


def test_eval_generate_reports_both_routers(tmp_path):
    base = save_tiny("olmoe", tmp_path / "base")
    tuned = tiny_model("olmoe")
    with torch.no_grad():
        for i in adapter_for(tuned).moe_layers:
            adapter_for(tuned).router_weight(i).mul_(-1.0)
    delta = save_router_delta(tuned, tmp_path / "d.safetensors")
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"text": f"held-out document number {i}, some text."}) + "\n" for i in range(3)))
    prompts = tmp_path / "p.txt"
    prompts.write_text("one prompt\nanother prompt here\n")
    args = ["remoe", "eval", str(base), "--router", str(delta), "--data", str(data), "--seq-len", "32",
            "--generate", "8", "--prompts", str(prompts)]
    result = CliRunner().invoke(app, [*args, "--json", "-"])
    assert result.exit_code == 0, result.output
    gen = json.loads(result.stdout[result.stdout.index("{"):])["generation"]
    assert gen["new_tokens"] == 8 and gen["before"]["prompts"] == gen["after"]["prompts"] == 2
    assert len(gen["identical_prefix"]) == 2 and all(0 <= p <= 8 for p in gen["identical_prefix"])
    table = CliRunner().invoke(app, args, terminal_width=80)
    assert table.exit_code == 0 and "greedy_looping_prompts" in table.output and "greedy_identical_prefix" in table.output
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
