"""`tierwise nemo trace synth|stats` and `tierwise nemo device report` end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.nemo.device import FileZonedDevice


def test_synth_then_stats(tmp_path):
    runner = CliRunner()
    out = tmp_path / "t.req"
    r = runner.invoke(app, ["nemo", "trace", "synth", "--requests", "20k", "--seed", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote 20000 requests" in r.output
    r = runner.invoke(app, ["nemo", "trace", "stats", str(out), "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["requests"] == 20000 and abs(s["object_size"]["mean"] - 246) < 15
    table = runner.invoke(app, ["nemo", "trace", "stats", str(out)], terminal_width=80)
    assert table.exit_code == 0 and "one_hit_object_share" in table.output and "bad_lines_skipped" in table.output
    assert "…" not in table.output and max(len(line) for line in table.output.splitlines()) <= 80


def test_stats_bad_line_and_skip(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("0,a,3,10,1,get,0\n0,a,3,10,1,frob,0\n")
    runner = CliRunner()
    r = runner.invoke(app, ["nemo", "trace", "stats", str(p)])
    assert r.exit_code != 0 and "t.csv:2" in str(r.exception)
    r = runner.invoke(app, ["nemo", "trace", "stats", str(p), "--skip-bad", "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s.json").read_text())["bad_lines_skipped"] == 1


def test_device_report(tmp_path):
    with FileZonedDevice(tmp_path / "d", num_zones=3, zone_size=8192) as d:
        d.append(1, bytes(4096))
    r = CliRunner().invoke(app, ["nemo", "device", "report", f"file:{tmp_path / 'd'}"])
    assert r.exit_code == 0, r.output
    assert "CLOSED" in r.output and "EMPTY" in r.output
    r = CliRunner().invoke(app, ["nemo", "device", "report", f"file:{tmp_path / 'd'}", "--json", "-"])
    zones = json.loads(r.stdout)["zones"]  # nothing but the JSON
    assert {z["condition"] for z in zones} == {"EMPTY", "CLOSED"}
    assert zones[1]["write pointer (B)"] == 4096


def test_stats_json_to_standard_output_alone(tmp_path):
    r = CliRunner().invoke(app, ["nemo", "trace", "stats", "synth:twitter-merged:5000", "--json", "-"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)  # nothing but the JSON: no table
    assert s["requests"] == 5000 and s["trace"].startswith("synth:twitter-merged:5000") and s["bad_lines_skipped"] == 0


def test_synth_json_to_standard_output_alone(tmp_path):
    r = CliRunner().invoke(app, ["nemo", "trace", "synth", "--requests", "5k", "--out", str(tmp_path / "t.req"),
                                 "--json", "-"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["requests"] == 5000 and (tmp_path / "t.req").stat().st_size > 0
