"""Training/evaluation text for router fine-tuning: read documents, tokenize, pack into fixed-length rows.

Sources (`read_documents(spec)`):
- `embedded:train` / `embedded:heldout`: the project's embedded corpus splits.
- a `.txt`/`.md` file: plain text; one document, or several split at `doc_separator` when given.
- a `.jsonl` file (or `.json` holding a list), one record per line, any of:
    {"text": ...}                                     a document
    {"prompt": ..., "completion": ...}                prompt followed by its completion
    {"messages": [{"role", "content"}, ...]}          chat (OpenAI style)
    {"conversations": [{"from", "value"}, ...]}       chat (ShareGPT / OpenHermes-2.5 style)
  Chats are rendered with the tokenizer's chat template; a tokenizer without one gets the plain
  "Role: content" lines of `render_chat`, so the text the router sees is still the conversation.
- `hf:NAME` (optionally `hf:NAME:SPLIT`): a Hugging Face dataset by name (needs `datasets` and network),
  records handled as above.

Packing: documents are tokenized, each followed by EOS (when the tokenizer has one), concatenated and cut
into rows of `seq_len` tokens. `doc_ids` (rows, seq_len) gives each token's document (−1 = padding of the
last row). A batch carries a block-diagonal causal attention mask and per-document positions, so no token
attends across a document boundary, the first token of a document is not a CE target, and the objective
masks every (t, t−d) pair that crosses one (`objective.pair_mask`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.training.objective import doc_positions

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
              "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system",
              "tool": "tool", "function": "tool", "function_call": "tool", "observation": "tool"}


def render_chat(messages: Sequence[dict], tokenizer: Any) -> str:
    """A chat as one string: the tokenizer's chat template, else 'Role: content' lines."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False)
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)


def _chat_messages(turns: Any, where: str) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise TierwiseError(f"{where}: chat turns must be a non-empty list")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise TierwiseError(f"{where}: turn {i} is not an object")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if not isinstance(role, str) or role.lower() not in ROLE_NAMES or not isinstance(content, str):
            raise TierwiseError(
                f"{where}: turn {i} needs a role/from in {sorted(ROLE_NAMES)} and a string content/value, got {turn!r:.120}")
        out.append({"role": ROLE_NAMES[role.lower()], "content": content})
    return out


def record_text(record: Any, tokenizer: Any, where: str) -> tuple[str, bool]:
    """The text of one record and whether it is already a rendered chat (its template adds special tokens)."""
    if not isinstance(record, dict):
        raise TierwiseError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if isinstance(record.get("text"), str):
        return record["text"], False
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return record["prompt"] + record["completion"], False
    for key in ("messages", "conversations"):
        if key in record:
            chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
            return render_chat(_chat_messages(record[key], f"{where} ({key})"), tokenizer), chat
    raise TierwiseError(
        f"{where}: no usable field; expected 'text', 'prompt'+'completion', 'messages' or 'conversations', "
        f"got keys {sorted(record)}")


def _jsonl_records(path: Path) -> Iterable[tuple[Any, str]]:
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TierwiseError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, list):
            raise TierwiseError(f"{path}: a .json data file must hold a list of records")
        yield from ((rec, f"{path} record {i}") for i, rec in enumerate(data))
        return
    with path.open(encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line), f"{path}:{lineno}"
            except json.JSONDecodeError as e:
                raise TierwiseError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from e


def _hf_records(name: str, split: str) -> Iterable[tuple[Any, str]]:
    try:
        import datasets
    except ImportError as e:
        raise TierwiseError("reading a Hugging Face dataset by name needs the 'datasets' package: pip install 'tierwise[hf]' (or pip install datasets)") from e
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, unknown name, unknown split: all user-facing
        raise TierwiseError(f"could not load Hugging Face dataset {name!r} split {split!r}: {e}") from e
    yield from ((rec, f"hf:{name}[{i}]") for i, rec in enumerate(ds))


def read_documents(spec: str, tokenizer: Any = None, *, doc_separator: str | None = None,
                   max_docs: int | None = None) -> list[tuple[str, bool]]:
    """Documents of a data source as (text, is_rendered_chat) pairs; see the module doc for `spec`.

    `max_docs` keeps that many documents spread evenly over the source.
    """
    if spec.startswith("embedded:"):
        from tierwise.remoe.models import embedded

        split = spec.split(":", 1)[1]
        return _spread([(doc, False) for doc in embedded.corpus_documents(split)], max_docs)
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        records = _hf_records(name, split or "train")
    else:
        path = Path(spec)
        if not path.is_file():
            raise TierwiseError(f"data file not found: {spec} (give a .txt/.jsonl/.json file, embedded:train|heldout or hf:NAME)")
        if path.suffix in (".jsonl", ".json"):
            records = _jsonl_records(path)
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise TierwiseError(f"{path}: not UTF-8 text ({e})") from e
            return _split_text(text, doc_separator, max_docs)
    docs = [record_text(record, tokenizer, where) for record, where in records]
    if not docs:
        raise TierwiseError(f"{spec}: no documents")
    return _spread(docs, max_docs)


def _split_text(text: str, separator: str | None, max_docs: int | None) -> list[tuple[str, bool]]:
    parts = [p for p in (text.split(separator) if separator else [text]) if p.strip()]
    if not parts:
        raise TierwiseError("the text source is empty")
    return _spread([(p, False) for p in parts], max_docs)


def _spread(docs: list, n: int | None) -> list:
    """`n` documents spread evenly over the source (a corpus ordered by origin stays mixed), all when n is None."""
    if n is None or n >= len(docs):
        return docs
    if n < 1:
        raise TierwiseError(f"max_docs must be at least 1, got {n}")
    return [docs[round(i * (len(docs) - 1) / max(1, n - 1))] for i in range(n)]


@dataclass
class PackedCorpus:
    """Token rows ready for teacher-forced training/evaluation.

    input_ids: (N, T) int64; doc_ids: (N, T) int64, the document index of each token, −1 for padding.
    """

    input_ids: torch.Tensor
    doc_ids: torch.Tensor
    pad_id: int = 0

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return int((self.doc_ids >= 0).sum())

    def subset(self, n: int) -> "PackedCorpus":
        """`n` rows spread evenly over the corpus (all rows when n >= len): a sample of every part of it."""
        if n >= len(self):
            return self
        rows = torch.linspace(0, len(self) - 1, n).round().long()
        return PackedCorpus(self.input_ids[rows], self.doc_ids[rows], self.pad_id)

    def batch(self, rows: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """Model inputs for the given rows: input_ids, labels, position_ids, attention_mask (B,1,T,T bool), doc_ids."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        ids, docs = self.input_ids[rows], self.doc_ids[rows]
        return {"input_ids": ids, "doc_ids": docs, "labels": labels_for(ids, docs),
                "position_ids": doc_positions(docs), "attention_mask": block_causal_mask(docs)}


def labels_for(input_ids: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
    """CE targets: −100 at padding and at each document's first token (not predictable from another document)."""
    labels = input_ids.clone()
    first = torch.zeros_like(doc_ids, dtype=torch.bool)
    first[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    labels[first | (doc_ids < 0)] = -100
    return labels


def block_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: query t may attend key s ≤ t of the same document (padding attends to itself only)."""
    t = doc_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (causal & same)[:, None]


def pack(token_docs: Sequence[Sequence[int]], seq_len: int, pad_id: int = 0) -> PackedCorpus:
    """Concatenate tokenized documents and cut them into rows of `seq_len` (the last row padded)."""
    if seq_len < 2:
        raise TierwiseError(f"seq_len must be at least 2, got {seq_len}")
    ids = [tok for doc in token_docs for tok in doc]
    docs = [i for i, doc in enumerate(token_docs) for _ in doc]
    if not ids:
        raise TierwiseError("no tokens to pack (empty documents?)")
    n_rows = -(-len(ids) // seq_len)
    pad = n_rows * seq_len - len(ids)
    input_ids = torch.tensor(ids + [pad_id] * pad, dtype=torch.long).view(n_rows, seq_len)
    doc_ids = torch.tensor(docs + [-1] * pad, dtype=torch.long).view(n_rows, seq_len)
    return PackedCorpus(input_ids, doc_ids, pad_id)


def tokenize_documents(docs: Sequence[tuple[str, bool]], tokenizer: Any) -> list[list[int]]:
    """Token ids per document; EOS appended where the tokenizer has one. Rendered chats carry their own specials."""
    if tokenizer is None:
        raise TierwiseError("this model has no tokenizer; text data needs one (save it next to the checkpoint)")
    eos = getattr(tokenizer, "eos_token_id", None)
    out: list[list[int]] = [[] for _ in docs]
    for is_chat in (False, True):  # one batched (parallel) tokenizer call per kind
        which = [i for i, (_, chat) in enumerate(docs) if chat == is_chat]
        if not which:
            continue
        encoded = tokenizer([docs[i][0] for i in which], add_special_tokens=not is_chat, verbose=False)["input_ids"]
        for i, ids in zip(which, encoded):
            out[i] = list(ids) + ([eos] if eos is not None and (not ids or ids[-1] != eos) else [])
    return out


def load_corpus(spec: str, tokenizer: Any, seq_len: int, *, doc_separator: str | None = None,
                max_docs: int | None = None, max_rows: int | None = None) -> PackedCorpus:
    """read_documents → tokenize_documents → pack, keeping at most `max_rows` rows (spread evenly)."""
    docs = read_documents(spec, tokenizer, doc_separator=doc_separator, max_docs=max_docs)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    packed = pack(tokenize_documents(docs, tokenizer), seq_len, pad_id if pad_id is not None else 0)
    return packed.subset(max_rows) if max_rows is not None else packed
