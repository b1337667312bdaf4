import json

import numpy as np
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.report import fmt, markdown_table, to_jsonable, write_json


def test_to_jsonable_handles_numpy_and_nan(tmp_path):
    data = {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "d": (np.int64(2),)}
    out = to_jsonable(data)
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": [2]}
    p = write_json(data, tmp_path / "x" / "r.json")
    assert json.loads(p.read_text())["b"] == [0, 1, 2]


def test_fmt_and_markdown():
    assert fmt(None) == "-"
    assert fmt(1234567) == "1,234,567"
    assert fmt(0.5) == "0.5"
    md = markdown_table([{"name": "lru", "hit": 0.25}])
    assert md.splitlines()[0] == "| name | hit |"
    assert "| lru | 0.25 |" in md


def test_cli_help_lists_groups():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0, r.output
    for group in ("remoe", "nemo", "demo"):
        assert group in r.output
