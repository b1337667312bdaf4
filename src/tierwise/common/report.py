"""Tables on the terminal and the same numbers as JSON.

Every cell is formatted for people by the unit at the end of its column's header, e.g. `p99 (us)`, `miss (%)`; in a
metric-by-run table, where the header names a run, by the unit of its row's label. docs/cli.md lists the rules.
`print_table` never cuts a cell: a table too wide for the console turns vertical (one column per run), and if that
is still too wide, splits into stacked tables of as many runs as fit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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


# ---- numbers --------------------------------------------------------------------------------------------------


def _significant(v: float, digits: int) -> str:
    """`v` rounded to `digits` significant digits in fixed point, with thousands separators: '35,570', '0.1092'."""
    if v == 0:
        return "0"
    decimals = digits - 1 - math.floor(math.log10(abs(v)))
    rounded = round(v, decimals)
    if rounded and math.floor(math.log10(abs(rounded))) > digits - 1 - decimals:
        decimals -= 1  # rounding carried into a new digit (9.996 -> 10.00): one decimal fewer keeps `digits`
    return f"{round(v, decimals):,.{max(decimals, 0)}f}"


def _plain(v: float) -> str:
    """A float without a unit: 4 significant digits, fixed point from 1e-4 to 1e12 (where it stays short)."""
    if v != 0 and not 1e-4 <= abs(v) < 1e12:
        return f"{v:.3e}"
    text = _significant(v, 4)
    return text.rstrip("0").rstrip(".") if "." in text else text


def _rate(v: float) -> str:
    """3 significant digits with a k/M/G suffix: '512', '25.0 k', '1.02 M'."""
    r = float(f"{v:.3g}")  # round first, so that 999,600 reads '1.00 M', not '1,000 k'
    scale, suffix = next(((s, x) for s, x in ((1e9, " G"), (1e6, " M"), (1e3, " k")) if abs(r) >= s), (1, ""))
    return _significant(r / scale, 3) + suffix


def _measure(v: float) -> str:
    """Times and sizes: 3 significant digits below 1000 ('12.3'), whole numbers with separators above ('35,568')."""
    return f"{v:,.0f}" if abs(v) >= 1000 else _significant(v, 3)


_WHOLE_UNITS = {"us", "ms", "s", "B", "KiB", "MiB", "GiB"}  # an int in these units stays whole
_FORMATS: dict[str, Callable[[float], str]] = {
    "%": lambda v: f"{100 * v:,.2f}",  # the value is a fraction
    "bits": lambda v: f"{v:,.1f}",
    "x": lambda v: f"{v:,.2f}",
    **dict.fromkeys(("req/s", "tok/s", "/s"), _rate),
    **dict.fromkeys(_WHOLE_UNITS, _measure),
}
_PARENTHESISED = re.compile(r"\(([^()]*)\)")


def unit_of(label: Any) -> str | None:
    """The unit a header or row label carries: its last parenthesised unit, e.g. 'get p99 (us)' -> 'us'
    ('EOR (decode)' carries none)."""
    if not isinstance(label, str):
        return None
    units = [u.strip() for u in _PARENTHESISED.findall(label) if u.strip() in _FORMATS]
    return units[-1] if units else None


def fmt(value: Any, unit: str | None = None) -> str:
    """A table cell: `value` formatted for people in `unit` (see `unit_of`); None and NaN read '-'."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)) and (unit is None or unit in _WHOLE_UNITS):
        return f"{int(value):,}"
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "-" if math.isnan(v) else str(v)
        return _FORMATS.get(unit, _plain)(v)
    return str(value)


# ---- cells ----------------------------------------------------------------------------------------------------


class _Cell(NamedTuple):
    text: str
    floor: int  # the narrowest column that shows it without cutting a number or folding a word


# numbers callers format themselves ('10.92', '+1.5%', '1.02 M'): as unbreakable as the ones formatted here
_NUMBER_TEXT = re.compile(r"[-+]?[0-9][0-9,.]*(e[-+]?[0-9]+)?( ?[%kMGx])?")
# a longer word (a path) may fold rather than force the table vertical
_LONGEST_UNFOLDED_WORD = 24


def _cell(value: Any, unit: str | None = None) -> _Cell:
    text = fmt(value, unit)
    number = isinstance(value, (int, float, np.integer, np.floating)) or _NUMBER_TEXT.fullmatch(text)
    longest_word = max((len(w) for w in text.split()), default=1)
    return _Cell(text, len(text) if number else min(longest_word, _LONGEST_UNFOLDED_WORD))


def _columns(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None) -> list[str]:
    return list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])


def _grid(rows: Sequence[Mapping[str, Any]], cols: list[str]) -> list[list[_Cell]]:
    """The header and then every row as cells; a cell takes its column's unit, else its row label's."""
    return [[_cell(c) for c in cols],
            *([_cell(r.get(c), unit_of(c) or unit_of(r.get(cols[0]))) for c in cols] for r in rows)]


def formatted(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> list[list[str]]:
    """The header and the rows exactly as the tables show them."""
    return [[c.text for c in line] for line in _grid(rows, _columns(rows, columns))]


# ---- layout ---------------------------------------------------------------------------------------------------


def _chrome(n_columns: int) -> int:
    """Width of rich's default box around n columns: a rule either side of each, one space of padding inside."""
    return 3 * n_columns + 1


def _widths(columns: list[list[_Cell]], width: int) -> list[int] | None:
    """Column widths (text only) for a table of `columns` within `width`, or None when it cannot fit uncut:
    the widest columns that can give room give it first, down to their floor."""
    room = width - _chrome(len(columns))
    floors = [max(c.floor for c in col) for col in columns]
    if sum(floors) > room:
        return None
    widths = [max(len(c.text) for c in col) for col in columns]
    while sum(widths) > room:
        i = max(range(len(widths)), key=lambda j: (widths[j] > floors[j], widths[j]))
        widths[i] -= 1
    return widths


def _wide(grid: list[list[_Cell]]) -> list[list[_Cell]]:
    """The columns of the grid as it is: a row per run."""
    return [list(col) for col in zip(*grid)]


def _parts(grid: list[list[_Cell]], width: int) -> list[list[list[_Cell]]]:
    """The columns of each table to print: the grid as it is if it fits, else vertical (the grid's rows become
    columns, the header the metric column), split into as many tables of as many runs as fit."""
    wide = _wide(grid)
    if _widths(wide, width) is not None:
        return [wide]
    names, *runs = grid
    parts = [[names]]
    for run in runs:
        if len(parts[-1]) > 1 and _widths([*parts[-1], run], width) is None:
            parts.append([names])
        parts[-1].append(run)
    return parts


def _render(columns: list[list[_Cell]], title: str | None, width: int) -> Table:
    # a console narrower than any uncut layout (a few dozen columns) gets the narrowest one, for the terminal to wrap
    widths = _widths(columns, width) or [max(c.floor for c in col) for col in columns]
    # at least as wide as the title's longest word, so that a path in the title does not fold
    title_word = max((len(w) for w in (title or "").split()), default=0)
    t = Table(title=escape(title) if title else None, min_width=min(width, title_word))
    for i, (col, w) in enumerate(zip(columns, widths)):
        t.add_column(Text(col[0].text), justify="left" if i == 0 else "right", width=w, overflow="fold")
    for cells in zip(*(col[1:] for col in columns)):
        t.add_row(*(Text(c.text) for c in cells))  # Text: a '[' in a cell is not rich markup
    return t


def table(rows: Sequence[Mapping[str, Any]], title: str | None = None, columns: Iterable[str] | None = None,
          width: int | None = None) -> Table:
    """`rows` as one rich Table (a row per dict; columns = keys of the first row unless given), sized for
    `width` (default: the console's). It does not turn vertical: `print_table` does, where it must."""
    return _render(_wide(_grid(rows, _columns(rows, columns))), title, width or stdout.width)


def print_table(rows: Sequence[Mapping[str, Any]], title: str | None = None, columns: Iterable[str] | None = None,
                console: Console | None = None) -> None:
    """`rows` on `console` (default: standard output) at its width: as a table, vertical, or stacked tables."""
    console = console or stdout
    parts = _parts(_grid(rows, _columns(rows, columns)), console.width)
    for i, part in enumerate(parts):
        console.print(_render(part, title if i == 0 else None, console.width))


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> str:
    """The same rows as a GitHub-flavoured Markdown table (for report folders and docs), cells as on the terminal."""
    header, *body = formatted(rows, columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"
