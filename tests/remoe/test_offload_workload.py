"""Decode workloads: seeded sampling, teacher-forced replay, and steps counted identical to the original."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import adapter_for, tiny_model, tiny_tokenizer
from tierwise.remoe.offload.compare import Setting, run_offload, vs_original
from tierwise.remoe.offload.generate import Generation, decode
from tierwise.remoe.offload.runtime import OffloadConfig
from tierwise.remoe.offload.workload import Request, Workload, replay_requests, sample_token, step_uniform

PROMPT = [5, 17, 99, 3, 42, 7, 250, 31]


def test_sample_token_is_an_inverse_cdf_over_the_nucleus():
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    assert [sample_token(logits, 1.0, 1.0, u) for u in (0.1, 0.6, 0.9)] == [0, 1, 2]
    assert sample_token(logits, 1.0, 0.6, 0.9) == 1  # nucleus {0, 1}: 0.9 of 0.8 falls on token 1
    assert sample_token(logits, 1.0, 0.5, 0.99) == 0  # nucleus {0}
    assert sample_token(logits, 1e-3, 1.0, 0.99) == 0  # T -> 0 is greedy
    assert step_uniform(0, 1, 2) == step_uniform(0, 1, 2) != step_uniform(0, 1, 3)
    with pytest.raises(TierwiseError, match="temperature"):
        Workload("sample", temperature=0.0)
    with pytest.raises(TierwiseError, match="top-p"):
        Workload("sample", top_p=0.0)


def test_sampling_is_determined_by_the_seed_and_the_distribution():
    model = tiny_model("olmoe")
    run = lambda seed, index=0: decode(model, Request(index, PROMPT), 12, Workload("sample", 1.0, 0.9, seed)).tokens  # noqa: E731
    assert run(3) == run(3)
    assert run(3) != run(4) and run(3) != run(3, index=1)
    other = tiny_model("olmoe", seed=1)  # another model: other distributions, the same random numbers
    assert decode(other, Request(0, PROMPT), 12, Workload("sample", 1.0, 0.9, 3)).tokens != run(3)


def _gen(tokens, argmax=None):
    g = Generation([1])
    g.tokens, g.argmax = list(tokens), list(argmax if argmax is not None else tokens)
    return g


def test_identical_steps_are_counted_against_the_original():
    base = [_gen([1, 2, 3, 4]), _gen([5, 6])]
    other = [_gen([1, 2, 9, 4]), _gen([7, 6])]
    run = {"tpot_ms": {"measured": {"mean": 2.0}}, "routing": {"entropy_norm": 0.5}, "quality": {"ppl": 10.0}}
    greedy = vs_original(base, other, run, run, Workload("greedy"))
    assert (greedy["identical_steps"], greedy["steps"], greedy["identical_prefix_mean"]) == (4, 6, 1.0)
    assert greedy["tpot_speedup"] == {"measured": 1.0}
    # replay feeds the same real tokens; what is compared is each configuration's argmax
    forced = [_gen([1, 2, 3], argmax=[8, 8, 8])]
    replay = vs_original(forced, [_gen([1, 2, 3], argmax=[8, 0, 8])], run, run, Workload("replay"))
    assert replay["identical_steps"] == 2 and replay["top1_agreement"] == pytest.approx(2 / 3)
    assert replay["ppl_change"] == 0.0


def test_replay_requests_come_from_documents_long_enough(tmp_path):
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["short", "a" * 40, "b" * 50, "c" * 60]))
    tok = tiny_tokenizer()
    reqs = replay_requests(str(data), tok, 10, 20, limit=None)
    assert [len(r.prompt_ids) for r in reqs] == [10] * 3 and [len(r.continuation) for r in reqs] == [20] * 3
    assert reqs[1].prompt_ids == tok("b" * 50)["input_ids"][:10] and [r.index for r in reqs] == [0, 1, 2]
    assert len(replay_requests(str(data), tok, 10, 20, limit=2)) == 2
    with pytest.raises(TierwiseError, match="no document has"):
        replay_requests(str(data), tok, 10, 200)
    with pytest.raises(TierwiseError, match="--limit must be at least 1"):
        replay_requests(str(data), tok, 10, 20, limit=0)


def test_replay_perplexity_is_the_resident_teacher_forced_perplexity(tmp_path):
    prompts = [[5, 17, 99, 3], [42, 7, 250, 31, 64, 12]]
    conts = [[8, 77, 140, 9, 33, 201, 18, 60], [2, 91, 120, 44, 6, 300, 19, 73]]
    requests = [Request(i, p, c) for i, (p, c) in enumerate(zip(prompts, conts))]
    resident = tiny_model("deepseek_v2")
    nll = n = 0
    with torch.no_grad():
        for p, c in zip(prompts, conts):
            logits = resident(torch.tensor([p + c])).logits[0]
            nll += float(F.cross_entropy(logits[len(p) - 1:-1], torch.tensor(c), reduction="sum"))
            n += len(c)
    model = tiny_model("deepseek_v2")
    result = run_offload(model, requests, 8, OffloadConfig(adapter_for(model).top_k, store_dir=tmp_path / "s"),
                         [Setting("original")], workload=Workload("replay"))
    quality = result["runs"]["original"]["quality"]
    assert quality["tokens"] == n and quality["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert result["workload"]["kind"] == "replay" and result["workload"]["new_tokens"] == 8
