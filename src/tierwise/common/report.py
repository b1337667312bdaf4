"""Tables on the terminal and the same numbers as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

stdout = Console()


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths and dataclass-like objects to plain JSON types (NaN -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    return obj


def write_json(data: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")
    return path


def emit_json(data: Any, dest: str | Path) -> None:
    """The `--json PATH` convention: write JSON to PATH, or to standard output when PATH is '-'."""
    if str(dest) == "-":
        print(json.dumps(to_jsonable(data), indent=2))
    else:
        write_json(data, dest)


def fmt(value: Any, digits: int = 4) -> str:
    """Compact human formatting for table cells."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "-"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 10 ** (-digits)):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) >= 1000 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], title: str | None = None, columns: Iterable[str] | None = None) -> Table:
    """A rich Table from a list of dicts (columns = keys of the first row unless given)."""
    cols = list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])
    t = Table(title=title, show_lines=False)
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*(fmt(r.get(c)) for c in cols))
    return t


def print_table(rows: Sequence[Mapping[str, Any]], title: str | None = None, columns: Iterable[str] | None = None) -> None:
    stdout.print(table(rows, title=title, columns=columns))


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> str:
    """The same rows as a GitHub-flavoured Markdown table (for report folders and docs)."""
    cols = list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"
