"""The embedded corpus, tokenizer, prompts and checkpoint: present, offline, consistent."""

from __future__ import annotations

import math

import pytest
import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models import embedded


def test_splits_disjoint_deterministic_and_complete():
    train, heldout = embedded.corpus_documents("train"), embedded.corpus_documents("heldout")
    everything = embedded._all_documents()
    assert len(train) + len(heldout) == len(everything)
    assert heldout == [d for i, d in enumerate(everything) if i % embedded.HELDOUT_EVERY == embedded.HELDOUT_EVERY - 1]
    assert not set(train) & set(heldout)
    assert len(heldout) / len(everything) == pytest.approx(1 / embedded.HELDOUT_EVERY, abs=0.01)
    assert embedded.corpus_documents("heldout") == heldout  # same call, same answer
    assert embedded.corpus_text("heldout").startswith(heldout[0])
    assert len(embedded.corpus_sources()) == len(everything)
    assert set(embedded.corpus_sources()) == {"kjv", "devil", "jargon", "pydoc"}


def test_unknown_split_is_a_clear_error():
    with pytest.raises(TierwiseError, match="unknown corpus split 'test'"):
        embedded.corpus_text("test")


def test_default_prompts_are_heldout_openings():
    prompts = embedded.default_prompts()
    assert 12 <= len(prompts) <= 24
    heldout = embedded.corpus_documents("heldout")
    for p in prompts:
        assert p and any(doc.startswith(p) for doc in heldout)


def test_tokenizer_round_trips_and_renders_chat():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded.tokenizer_dir()))
    for text in ["In the beginning God created the heaven and the earth.",
                 "def f(x):\n    return {'a': x ** 2}  # ünïcödé ✓ 漢字\n\ttab", embedded.default_prompts()[0]]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert 4000 <= len(tok) <= 8192
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids("<|im_end|>") != tok.unk_token_id


def test_embedded_model_loads_offline_and_generates():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = embedded.model_dir()
    assert (d / "model.safetensors").stat().st_size <= 25 * 2**20
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    cfg = model.config
    assert cfg.model_type == "deepseek_v2" and cfg.first_k_dense_replace == 1
    assert cfg.n_routed_experts >= 32 and cfg.num_experts_per_tok >= 4 and cfg.n_shared_experts >= 1
    assert cfg.num_hidden_layers - cfg.first_k_dense_replace >= 4
    assert all(p.dtype == torch.float32 for p in model.parameters())

    ids = tok(embedded.default_prompts()[0], return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 8)
    assert tok.decode(out[0, ids.shape[1]:]).strip()

    # It is trained: held-out perplexity far below the uniform guess (vocabulary size).
    held = tok(embedded.corpus_documents("heldout")[0], return_tensors="pt").input_ids[:, :257]
    with torch.no_grad():
        logits = model(held[:, :-1]).logits[0]
    ppl = math.exp(torch.nn.functional.cross_entropy(logits, held[0, 1:]).item())
    assert ppl < len(tok) / 20
