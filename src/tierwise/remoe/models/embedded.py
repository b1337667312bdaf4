"""The project's embedded default model: corpus, tokenizer, checkpoint and demo prompts shipped in the package.

Everything here works offline on a fresh machine:
  model_dir()          HF checkpoint of a small DeepSeek-V2-style MoE (load with `tierwise.remoe.models.adapters.load_model("embedded")`)
  tokenizer_dir()      the byte-level BPE tokenizer it was trained with (also copied into model_dir())
  corpus_documents(s)  the English corpus, split deterministically: every HELDOUT_EVERY-th document is held out
  corpus_text(s)       the same documents joined by blank lines
  default_prompts()    short openings of held-out documents for demo/trace/offload commands
Provenance and licences of the corpus: assets/corpus/PROVENANCE.md (built by scripts/build_corpus.py).
"""

from __future__ import annotations

import json
import lzma
from functools import lru_cache
from pathlib import Path

from tierwise.common.errors import TierwiseError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CORPUS_FILE = ASSETS / "corpus" / "corpus.txt.xz"
CORPUS_INDEX = ASSETS / "corpus" / "index.tsv"
PROMPTS_FILE = ASSETS / "prompts.jsonl"
DOC_SEP = "\n\f\n"  # a form-feed line between documents; build_corpus.py strips form feeds from the text itself
HELDOUT_EVERY = 10  # document i is held out when i % HELDOUT_EVERY == HELDOUT_EVERY - 1
SPLITS = ("train", "heldout")


def _asset(path: Path, what: str) -> Path:
    if not path.exists():
        raise TierwiseError(f"embedded {what} not found at {path}; the package data is incomplete (reinstall tierwise)")
    return path


def model_dir() -> Path:
    """Directory of the embedded HF checkpoint (config.json, model.safetensors, tokenizer files)."""
    d = ASSETS / "model"
    _asset(d / "config.json", "model checkpoint")
    return d


def tokenizer_dir() -> Path:
    """Directory of the embedded tokenizer (tokenizer.json + tokenizer_config.json with a chat template)."""
    d = ASSETS / "tokenizer"
    _asset(d / "tokenizer.json", "tokenizer")
    return d


@lru_cache(maxsize=1)
def _all_documents() -> tuple[str, ...]:
    return tuple(lzma.decompress(_asset(CORPUS_FILE, "corpus").read_bytes()).decode("utf-8").split(DOC_SEP))


@lru_cache(maxsize=1)
def corpus_sources() -> tuple[str, ...]:
    """Source name (kjv, devil, jargon, pydoc) of every document, in corpus order."""
    rows = _asset(CORPUS_INDEX, "corpus index").read_text(encoding="utf-8").splitlines()[1:]
    return tuple(row.split("\t", 1)[0] for row in rows)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise TierwiseError(f"unknown corpus split {split!r}; choose one of {', '.join(SPLITS)}")


def split_of(index: int) -> str:
    """Which split document number `index` belongs to (deterministic, independent of the content)."""
    return "heldout" if index % HELDOUT_EVERY == HELDOUT_EVERY - 1 else "train"


def corpus_documents(split: str) -> list[str]:
    """The documents of one split, in corpus order."""
    _check_split(split)
    return [doc for i, doc in enumerate(_all_documents()) if split_of(i) == split]


def corpus_text(split: str) -> str:
    """All documents of one split joined by a blank line."""
    return "\n\n".join(corpus_documents(split))


def default_prompts() -> list[str]:
    """About 16 short prompts (openings of held-out documents, several per corpus source)."""
    lines = _asset(PROMPTS_FILE, "prompts").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["prompt"] for line in lines if line.strip()]
