"""What every command does with `--json PATH` (docs/cli.md); light to import, so the CLI starts fast."""

from __future__ import annotations

from typing import Any


def json_only(json_path: str | None) -> bool:
    """`--json -`: standard output carries the JSON alone, so nothing draws progress (call before the work)."""
    from tierwise.common.progress import silence

    if json_path == "-":
        silence()
    return json_path == "-"


def emit(result: Any, json_path: str | None) -> bool:
    """Write `result` where --json asks; True when standard output carries it (print nothing else then)."""
    from tierwise.common.report import emit_json

    if json_path is not None:
        emit_json(result, json_path)
    return json_path == "-"
