"""Routing capture, the .npz trace format and its validation, prompt files."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.prompts import encode_prompt, load_prompts, read_prompts
from tierwise.remoe.models.adapters import adapter_for, tiny_model, tiny_tokenizer
from tierwise.remoe.models.routing import (
    DECODE,
    FORMAT_VERSION,
    PREFILL,
    RoutingTrace,
    capture_generation,
    capture_teacher_forced,
    concat_traces,
    synthetic_trace,
)

PROMPTS = ["the cache keeps experts", "hello", "reuse reuse reuse"]


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen2_moe", seed=0)


@pytest.fixture(scope="module")
def trace(model):
    tok = tiny_tokenizer()
    return capture_generation(model, [tok(p).input_ids for p in PROMPTS], model_name="tiny-qwen2", max_new_tokens=6)


def test_capture_layout(model, trace):
    ad = adapter_for(model)
    lengths = [len(p.encode()) for p in PROMPTS]  # the tiny tokenizer is byte-level
    assert trace.experts.shape == (sum(lengths) + 5 * len(PROMPTS), len(ad.moe_layers), ad.top_k)
    assert trace.experts.dtype == np.int16
    assert list(trace.request_start) == list(np.cumsum([0] + [n + 5 for n in lengths[:-1]]))
    for start, n in zip(trace.request_start, lengths):
        assert (trace.phase[start : start + n] == PREFILL).all() and (trace.phase[start + n : start + n + 5] == DECODE).all()
    assert trace.meta["moe_layers"] == list(ad.moe_layers) and trace.meta["expert_bytes"] == ad.expert_bytes
    assert trace.prefill_mass.shape == (len(PROMPTS), len(ad.moe_layers), ad.num_experts)


def test_decode_routing_equals_teacher_forced_routing(model, trace):
    """Experts recorded during KV-cached decode equal a single forward over the same tokens (and out.router_logits)."""
    tok = tiny_tokenizer()
    bounds = trace.request_bounds()
    sequences = []
    for r, p in enumerate(PROMPTS):
        ids = tok(p).input_ids
        with torch.no_grad():  # regenerate the greedy continuation independently
            for _ in range(bounds[r + 1] - bounds[r] - len(ids)):
                ids = ids + [int(model(torch.tensor([ids])).logits[0, -1].argmax())]
        sequences.append(ids)
    tf = capture_teacher_forced(model, sequences, model_name="tiny")
    np.testing.assert_array_equal(np.sort(tf.experts, axis=2), np.sort(trace.experts, axis=2))
    assert (tf.phase == DECODE).all()
    with torch.no_grad():
        logits = model(torch.tensor([sequences[0]]), output_router_logits=True).router_logits
    n0 = len(sequences[0])
    for pos, lg in enumerate(logits):
        want = torch.topk(lg.softmax(-1), trace.top_k).indices.sort(-1).values.numpy()
        np.testing.assert_array_equal(np.sort(trace.experts[:n0, pos], axis=1), want)


def test_prefill_mass_is_summed_router_probabilities(model, trace):
    ids = tiny_tokenizer()(PROMPTS[1]).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids]), output_router_logits=True).router_logits
    for pos, lg in enumerate(logits):
        np.testing.assert_allclose(trace.prefill_mass[1, pos], lg.softmax(-1).sum(0).numpy(), rtol=1e-5)


def test_eos_stops_decoding(model):
    ids = tiny_tokenizer()("hello").input_ids
    free = capture_generation(model, [ids], model_name="m", max_new_tokens=4)
    first_token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
    stopped = capture_generation(model, [ids], model_name="m", max_new_tokens=4, eos_token_id=first_token)
    assert free.num_tokens == len(ids) + 3 and stopped.num_tokens == len(ids)


def test_save_load_roundtrip(tmp_path, trace):
    path = trace.save(tmp_path / "t.trace")
    assert path.name == "t.trace"
    back = RoutingTrace.load(path)
    np.testing.assert_array_equal(back.experts, trace.experts)
    np.testing.assert_array_equal(back.request_start, trace.request_start)
    np.testing.assert_array_equal(back.phase, trace.phase)
    np.testing.assert_array_equal(back.prefill_mass, trace.prefill_mass)
    assert back.meta == trace.meta and back.meta["format_version"] == FORMAT_VERSION


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _arrays(trace: RoutingTrace) -> dict:
    return dict(experts=trace.experts, request_start=trace.request_start, phase=trace.phase, meta=np.array(json.dumps(trace.meta)))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.pop("phase"), "missing phase"),
        (lambda a: a.update(meta=np.array("{not json")), "not valid JSON"),
        (lambda a: a.update(meta=np.array(json.dumps({**json.loads(str(a["meta"])), "format_version": 99}))), "version 99"),
        (lambda a: a.update(meta=np.array(json.dumps({k: v for k, v in json.loads(str(a["meta"])).items() if k != "top_k"}))), "lacks top_k"),
        (lambda a: a.update(experts=a["experts"][:, :, :2]), "metadata says"),
        (lambda a: a.update(experts=a["experts"].astype(np.float32)), "integer array"),
        (lambda a: a.update(experts=np.where(a["experts"] == 0, 99, a["experts"]).astype(np.int16)), "outside 0..11"),
        (lambda a: a.update(experts=np.repeat(a["experts"][:, :, :1], 4, axis=2)), "same expert twice"),
        (lambda a: a.update(phase=a["phase"][:-1]), "'phase' must be"),
        (lambda a: a.update(request_start=a["request_start"][::-1].copy()), "request_start"),
    ],
)
def test_load_rejects_inconsistent_files(tmp_path, trace, mutate, message):
    arrays = _arrays(trace)
    mutate(arrays)
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(TierwiseError, match=message) as err:
        RoutingTrace.load(path)
    assert "bad.npz" in str(err.value)


def test_load_rejects_garbage_and_truncation(tmp_path, trace):
    with pytest.raises(TierwiseError, match="not found"):
        RoutingTrace.load(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(TierwiseError, match="corrupt or not a tierwise routing trace"):
        RoutingTrace.load(tmp_path / "junk.npz")
    data = trace.save(tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TierwiseError, match="corrupt"):
        RoutingTrace.load(tmp_path / "cut.npz")
    flipped = bytearray(data)
    with zipfile.ZipFile(tmp_path / "ok.npz") as z:  # corrupt the compressed experts payload -> CRC/zlib error
        info = z.getinfo("experts.npy")
    flipped[info.header_offset + 60 : info.header_offset + 80] = bytes(20)
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(TierwiseError, match="flip.npz"):
        RoutingTrace.load(tmp_path / "flip.npz")


def test_concat_and_synthetic():
    a = synthetic_trace(requests=2, tokens=10, layers=2, num_experts=8, top_k=2, prompt_tokens=3, seed=1)
    b = synthetic_trace(requests=1, tokens=7, layers=2, num_experts=8, top_k=2, seed=2)
    both = concat_traces([a, b])
    assert both.num_tokens == 27 and list(both.request_start) == [0, 10, 20]
    assert (both.phase[:3] == PREFILL).all() and (both.phase[20:] == DECODE).all()
    with pytest.raises(TierwiseError, match="different models"):
        concat_traces([a, synthetic_trace(requests=1, tokens=5, layers=2, num_experts=8, top_k=3)])


# -- prompt files ---------------------------------------------------------------------------------------------------
def test_prompt_formats(tmp_path):
    (tmp_path / "p.txt").write_text("first prompt\n\n  \nsecond prompt\n")
    assert read_prompts(tmp_path / "p.txt") == ["first prompt", "second prompt"]
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"prompt": "plain"}) + "\n\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
    )
    tok = tiny_tokenizer()
    assert load_prompts(tmp_path / "p.jsonl", tok) == ["plain", "user: hi\nassistant:"]
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    assert load_prompts(tmp_path / "p.jsonl", tok)[1] == "<user>hi<assistant>"
    chat = read_prompts(tmp_path / "p.jsonl")[1]
    assert encode_prompt(chat, tok) == tok("<user>hi<assistant>").input_ids
    assert encode_prompt("plain", tok) == tok("plain").input_ids


@pytest.mark.parametrize(
    "line, message",
    [
        ("{broken", "p.jsonl:2: not valid JSON"),
        ("[1, 2]", "p.jsonl:2: expected a JSON object"),
        ('{"text": "x"}', "neither 'prompt' nor 'messages'"),
        ('{"messages": [{"role": "user"}]}', "'messages' must be"),
        ('{"prompt": ""}', "non-empty string"),
    ],
)
def test_prompt_errors_name_the_line(tmp_path, line, message):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "ok"}) + "\n" + line + "\n")
    with pytest.raises(TierwiseError, match=message):
        read_prompts(tmp_path / "p.jsonl")


def test_empty_or_missing_prompt_file(tmp_path):
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(TierwiseError, match="no prompts"):
        read_prompts(tmp_path / "e.txt")
    with pytest.raises(TierwiseError, match="not found"):
        read_prompts(tmp_path / "none.txt")
