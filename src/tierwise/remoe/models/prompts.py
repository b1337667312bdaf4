"""Prompt files for routing traces.

Formats (chosen by extension):
- `.jsonl` / `.json`: one JSON object per line, either `{"prompt": "..."}` or a chat `{"messages": [{"role": ..., "content": ...}, ...]}`;
- anything else: plain text, one prompt per non-empty line.

Chats are rendered with the tokenizer's chat template (generation prompt appended) when it has one, otherwise as
`role: content` lines followed by `assistant:`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from tierwise.common.errors import TierwiseError

Prompt = Union[str, list[dict[str, str]]]


def _parse_jsonl_line(line: str, where: str) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise TierwiseError(f"{where}: not valid JSON ({e.msg})") from e
    if not isinstance(obj, dict):
        raise TierwiseError(f"{where}: expected a JSON object with 'prompt' or 'messages', got {type(obj).__name__}")
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise TierwiseError(f"{where}: 'prompt' must be a non-empty string")
        return obj["prompt"]
    if "messages" in obj:
        messages = obj["messages"]
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        )
        if not ok:
            raise TierwiseError(f"{where}: 'messages' must be a non-empty list of {{'role': str, 'content': str}}")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    raise TierwiseError(f"{where}: object has neither 'prompt' nor 'messages' (keys: {', '.join(obj) or 'none'})")


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts of a file, unrendered: strings, or chat message lists."""
    path = Path(path)
    if not path.is_file():
        raise TierwiseError(f"prompt file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise TierwiseError(f"{path}: not UTF-8 text ({e})") from e
    if path.suffix.lower() in (".jsonl", ".json"):
        prompts = [_parse_jsonl_line(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    else:
        prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise TierwiseError(f"{path}: no prompts found")
    return prompts


def render_prompt(prompt: Prompt, tokenizer: Any) -> str:
    """The text the model sees for one prompt."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant:"


def encode_prompt(prompt: Prompt, tokenizer: Any) -> list[int]:
    """Token ids of one prompt; a templated chat is tokenised by its template, so special tokens are not doubled."""
    if not isinstance(prompt, str) and getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    return list(tokenizer(render_prompt(prompt, tokenizer)).input_ids)


def load_prompts(path: str | Path, tokenizer: Any) -> list[str]:
    """Read and render every prompt of a file."""
    return [render_prompt(p, tokenizer) for p in read_prompts(path)]
