"""Training-data loading: formats, chat rendering, packing with document-boundary masks, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.corpus import block_causal_mask, labels_for, load_corpus, pack, read_documents, render_chat
from tierwise.remoe.models.adapters import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_text_prompt_completion_and_both_chat_styles(tmp_path, tok):
    path = _jsonl(tmp_path / "d.jsonl", [
        {"text": "plain doc"},
        {"prompt": "Q: 2+2? ", "completion": "A: 4"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi"},
                           {"from": "gpt", "value": "hello"}]},
    ])
    docs = read_documents(str(path), tok)
    assert docs[0] == ("plain doc", False)
    assert docs[1] == ("Q: 2+2? A: 4", False)
    assert docs[2][0] == "User: hi\nAssistant: hello\n"
    assert docs[3][0] == "System: be nice\nUser: hi\nAssistant: hello\n"


def test_chat_template_is_used_when_the_tokenizer_has_one(tok):
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    try:
        assert render_chat([{"role": "user", "content": "x"}], tok) == "<user>x"
    finally:
        tok.chat_template = None


def test_plain_text_with_separator_and_max_docs(tmp_path, tok):
    p = tmp_path / "a.txt"
    p.write_text("one\n===\ntwo\n===\nthree")
    assert [d for d, _ in read_documents(str(p), doc_separator="\n===\n")] == ["one", "two", "three"]
    assert [d for d, _ in read_documents(str(p), doc_separator="\n===\n", max_docs=2)] == ["one", "three"]
    assert len(read_documents(str(p))) == 1


@pytest.mark.parametrize("content,needle", [
    ('{"text": "ok"}\n{"text": \n', ":2: malformed JSON"),
    ('[1, 2]\n', "expected a JSON object"),
    ('{"title": "x"}\n', "no usable field"),
    ('{"conversations": [{"from": "alien", "value": "x"}]}\n', "turn 0"),
])
def test_bad_records_name_file_line_and_problem(tmp_path, tok, content, needle):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(TierwiseError, match=needle):
        read_documents(str(p), tok)


def test_missing_file_and_empty_text(tmp_path):
    with pytest.raises(TierwiseError, match="not found"):
        read_documents(str(tmp_path / "nope.txt"))
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(TierwiseError, match="empty"):
        read_documents(str(tmp_path / "e.txt"))


def test_pack_doc_ids_labels_positions_and_mask():
    packed = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4, pad_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert packed.doc_ids.tolist() == [[0, 0, 0, 1], [1, 2, 2, 2], [2, -1, -1, -1]]
    assert packed.num_tokens == 9
    b = packed.batch([0, 1])
    assert b["labels"].tolist() == [[1, 2, 3, -100], [5, -100, 7, 8]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0], [0, 0, 1, 2]]
    m = b["attention_mask"][1, 0]
    assert m[2].tolist() == [False, True, True, False]  # token of doc 2 sees only doc 2, causally
    assert labels_for(packed.input_ids[2:], packed.doc_ids[2:]).tolist() == [[9, -100, -100, -100]]
    assert block_causal_mask(packed.doc_ids).shape == (3, 1, 4, 4)


def test_load_corpus_tokenizes_with_eos(tmp_path, tok):
    p = _jsonl(tmp_path / "d.jsonl", [{"text": "ab"}, {"text": "cd"}])
    c = load_corpus(str(p), tok, seq_len=4)
    eos = tok.eos_token_id
    assert c.input_ids.tolist() == [[tok("a")["input_ids"][0], tok("b")["input_ids"][0], eos, tok("c")["input_ids"][0]],
                                    [tok("d")["input_ids"][0], eos, tok.pad_token_id, tok.pad_token_id]]
    assert len(load_corpus(str(p), tok, seq_len=2, max_rows=1)) == 1


def test_hf_dataset_without_network_or_package_is_a_clean_error():
    with pytest.raises(TierwiseError):
        read_documents("hf:surely/not-a-dataset")


def test_attention_mask_keeps_documents_apart_in_a_real_model():
    from tierwise.remoe.models.adapters import tiny_model

    model = tiny_model("olmoe")
    packed = pack([[5, 6, 7, 8, 9], [10, 11, 12]], seq_len=8)
    b = packed.batch([0])
    with torch.no_grad():
        joint = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]).logits
        alone = model(input_ids=torch.tensor([[10, 11, 12]])).logits
    assert torch.allclose(joint[0, 5:], alone[0], atol=1e-5)
