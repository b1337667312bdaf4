"""docs/cli.md on the `tierwise nemo` commands: sizes with units (the old flags still read, with one note), errors
that name the flag, `--json -` carrying the JSON alone, and zones picked from the flash size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tierwise.cli import app

SYNTH = "synth:twitter-merged:20000"
TRACE = "synth:twitter-merged:10000"
BENCH = ["bench", "--trace", TRACE, "--engines", "log", "--no-ablation", "--sizes", "", "--executor", "serial"]


def nemo(*args: str):
    return CliRunner().invoke(app, ["nemo", *args])


def json_alone(result) -> dict:
    """The command's standard output, which must be one JSON document and nothing else."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_old_size_flags_still_work_with_one_note_each():
    new = nemo("replay", "--trace", SYNTH, "--flash-size", "2M", "--zone-size", "128K", "--json", "-")
    old = nemo("replay", "--trace", SYNTH, "--flash-mb", "2", "--zone-kb", "128", "--json", "-")
    assert "deprecated" not in new.stderr
    assert old.stderr.count("note: --flash-mb is deprecated; use --flash-size 2M") == 1
    assert old.stderr.count("note: --zone-kb is deprecated; use --zone-size 128K") == 1
    a, b = json_alone(new), json_alone(old)
    assert a["engine"] == b["engine"] and a["summary"] == b["summary"]  # the same replay

    bench = json_alone(nemo(*BENCH, "--flash-mb", "0.125", "--zone-kb", "16", "--nemo-zone-kb", "32",
                            "--dram-mb", "64", "--json", "-"))
    assert {k: bench["settings"][k] for k in ("flash_size", "zone_size", "nemo_zone_size", "dram_size")} == \
        {"flash_size": 128 << 10, "zone_size": 16 << 10, "nemo_zone_size": 32 << 10, "dram_size": 64 << 20}


def test_serve_reads_the_old_dram_flag_with_a_note(capsys):
    from tierwise.nemo.cli import size_flag

    assert size_flag("dram_size", None, 3) == 3 << 20
    assert capsys.readouterr().err == "note: --dram-mb is deprecated; use --dram-size 3M\n"


@pytest.mark.parametrize("args, message", [
    (["replay", "--trace", SYNTH, "--flash-size", "2M", "--flash-mb", "2"],
     "--flash-mb is the old name of --flash-size; give only --flash-size"),
    ([*BENCH, "--zone-size", "16K", "--zone-kb", "16"], "--zone-kb is the old name of --zone-size"),
    (["replay", "--trace", SYNTH, "--flash-size", "24Q"], "--flash-size: cannot read '24Q' as a size"),
    ([*BENCH, "--nemo-zone-size", "big"], "--nemo-zone-size: cannot read 'big' as a size"),
    (["replay", "--trace", SYNTH, "--requests", "lots"], "--requests: cannot read 'lots' as a count"),
    (["serve", "--device", "mem", "--max-value", "2Q"], "--max-value: cannot read '2Q' as a size"),
])
def test_a_bad_or_doubled_size_is_an_error_naming_the_flag(args, message):
    run = subprocess.run([sys.executable, "-m", "tierwise.cli", "nemo", *args], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and run.stderr.startswith(f"error: {message}"), run.stderr
    assert run.stdout == ""


def test_json_to_standard_output_alone_for_replay_bench_and_trace_stats():
    replay = json_alone(nemo("replay", "--trace", SYNTH, "--flash-size", "1M", "--json", "-"))
    assert replay["requests"] == 20_000 and replay["replay"]["wrong_values"] == 0
    bench = json_alone(nemo(*BENCH, "--flash-size", "128K", "--json", "-"))
    assert [r["run"] for r in bench["table"]] == ["log"]
    stats = json_alone(nemo("trace", "stats", TRACE, "--json", "-"))
    assert stats["requests"] == 10_000


def test_replay_picks_enough_zones_for_a_small_flash():
    # a 4 MiB device used to get one 4 MiB zone, which Nemo refused
    result = json_alone(nemo("replay", "--trace", "synth:twitter-merged:200k", "--flash-size", "4M", "--json", "-"))
    assert result["requests"] == 200_000 and result["replay"]["wrong_values"] == 0
    config = result["engine"]
    assert config["S"] == 62 and config["N"] + config["index_zones"] == 16  # 16 zones of 256 KiB: one SG each


def test_replay_plot_shades_the_steady_window(tmp_path):
    result = nemo("replay", "--trace", "synth:twitter-merged:300k", "--flash-size", "2M", "--sample-every", "20000",
                  "--plot", str(tmp_path), "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    png = tmp_path / "replay_over_time.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["warm_at_request"] is not None


def test_device_profiles_as_json():
    profiles = json_alone(nemo("device", "profiles", "--json", "-"))
    assert {"zn540", "fdp", "conventional"} <= set(profiles) and profiles["zn540"]["dies"] > 0
