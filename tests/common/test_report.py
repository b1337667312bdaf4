import json

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.report import fmt, formatted, markdown_table, print_table, to_jsonable, unit_of, write_json


def test_to_jsonable_handles_numpy_and_nan(tmp_path):
    data = {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "d": (np.int64(2),)}
    out = to_jsonable(data)
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": [2]}
    p = write_json(data, tmp_path / "x" / "r.json")
    assert json.loads(p.read_text())["b"] == [0, 1, 2]


@pytest.mark.parametrize("value, unit, text", [
    (None, None, "-"), (float("nan"), "%", "-"), (True, None, "yes"),
    (1234567, None, "1,234,567"), (np.int64(42), None, "42"),                    # plain ints: separators
    (0.5, None, "0.5"), (0.10923, None, "0.1092"), (141.06, None, "141.1"),     # floats: 4 significant digits
    (528912.3, None, "528,900"), (2.5e-4, None, "0.00025"), (3e-5, None, "3.000e-05"), (2e12, None, "2.000e+12"),
    (0.075, "%", "7.50"), (1, "%", "100.00"),                                    # a fraction, shown x100
    (1.0234e6, "req/s", "1.02 M"), (999_600, "tok/s", "1.00 M"), (25_000, "/s", "25.0 k"), (512, "req/s", "512"),
    (3.2e9, "req/s", "3.20 G"),
    (8.345, "bits", "8.3"), (1.5, "x", "1.50"),
    (12.345, "ms", "12.3"), (0.01234, "s", "0.0123"), (35567.9, "us", "35,568"), (12, "us", "12"),
    (4096, "KiB", "4,096"), (1.5, "MiB", "1.50"), (17.34, "GiB", "17.3"), (999.7, "B", "1,000"),
])
def test_fmt_by_unit(value, unit, text):
    assert fmt(value, unit) == text


def test_unit_of_reads_the_last_parenthesised_unit():
    assert unit_of("get p99 (us)") == "us" and unit_of("miss (%) (steady window)") == "%"
    assert unit_of("EOR (decode)") is None and unit_of("run") is None and unit_of(3) is None


def test_cells_take_the_unit_of_their_column_or_of_their_row_label():
    rows = [{"metric": "miss ratio (%)", "nemo": 0.1, "log": 0.2}, {"metric": "objects", "nemo": 1000, "log": 2.5e5}]
    assert formatted(rows) == [["metric", "nemo", "log"], ["miss ratio (%)", "10.00", "20.00"],
                               ["objects", "1,000", "250,000"]]
    assert formatted([{"run": "x", "rate (req/s)": 528912.3}]) == [["run", "rate (req/s)"], ["x", "529 k"]]


def test_markdown_uses_the_terminal_formatting():
    md = markdown_table([{"name": "lru", "hit (%)": 0.25, "rate": 528912.3}])
    assert md.splitlines()[0] == "| name | hit (%) | rate |"
    assert "| lru | 25.00 | 528,900 |" in md


def _render(rows, width=80, **kw) -> str:
    console = Console(width=width, record=True)
    print_table(rows, console=console, **kw)
    return console.export_text()


def _numbers(rows):
    """Every cell of `rows` that shows a number, as formatted."""
    header, *lines = formatted(rows)
    return [text for row, line in zip(rows, lines) for column, text in zip(header, line)
            if isinstance(row[column], (int, float))]


RUN = {"ALWA (x)": 1.5634, "E2E WA (x)": 1034.2, "DRAM (bits)": 8.31, "miss (%)": 0.10923, "get p99 (us)": 35567.9,
       "set p99.99 (us)": 1_234_567.0, "rate (req/s)": 1.2e6, "objects": 123_456_789}


def _check_whole(text, rows, width=80):
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for number in _numbers(rows):
        assert number in text, number


def test_a_table_that_fits_is_printed_as_it_is():
    rows = [{"run": "nemo", "ALWA (x)": 1.56, "miss (%)": 0.1}, {"run": "log", "ALWA (x)": 1.08, "miss (%)": 0.2}]
    text = _render(rows, title="bench")
    _check_whole(text, rows)
    assert ["nemo", "1.56", "10.00"] in [line.replace("│", " ").split() for line in text.splitlines()]


def test_a_wide_table_turns_vertical_metric_by_run():
    rows = [{"run": name, **RUN} for name in ("nemo", "log", "fairywren@ssd")]
    text = _render(rows, title="bench")
    _check_whole(text, rows)
    words = [line.replace("│", " ").replace("┃", " ").split() for line in text.splitlines()]
    assert ["run", "nemo", "log", "fairywren@ssd"] in words  # one column per run
    assert ["miss", "(%)", "10.92", "10.92", "10.92"] in words  # one row per metric


def test_too_many_runs_split_into_stacked_tables_with_the_metric_column_repeated():
    rows = [{"run": f"config-{i}", **RUN} for i in range(9)]
    text = _render(rows, title="sweep")
    _check_whole(text, rows)
    assert text.count("sweep") == 1 and text.count("get p99 (us)") >= 2
    assert all(f"config-{i}" in text for i in range(9))


def test_numbers_never_wrap_even_when_text_must():
    rows = [{"trace": "/data/traces/" + "deep/" * 12 + "twitter.req", "described as": "a long description " * 4,
             "rate (req/s)": 1.23e6, "bytes (B)": 123_456_789}]
    text = _render(rows, width=60)
    _check_whole(text, rows, width=60)
    assert "123,456,789" in text and "1.23 M" in text


def test_a_cell_is_not_markup():
    assert "[2]" in _render([{"note": "protect [2]", "n": 1}])


def test_cli_help_lists_groups():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0, r.output
    for group in ("remoe", "nemo", "demo"):
        assert group in r.output
