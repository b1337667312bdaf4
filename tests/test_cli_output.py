"""Every command's output read whole at 80 columns: no '…' and no cell cut (docs/cli.md, "Tables").

Each command runs in-process at the smallest scale that still prints its real tables. Every table it prints
through tierwise.common.report is recorded, and each of its numbers must then appear whole in the output, and each
of its words (bar one too long for any column) too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common import report

WIDTH = 80
ENV = {"COLUMNS": str(WIDTH), "TIERWISE_NO_PROGRESS": "1"}
NUMBER = re.compile(r"[-+]?[0-9][0-9,.]*(e[-+]?[0-9]+)?( ?[%kMGx])?")  # '1,234', '7.50', '1.02 M', '+1.5%'
BOX = re.compile("[│┃┏┗┡└┌─]")  # a line of a table
LONGEST_WHOLE_WORD = 20  # a longer word (a path) may fold inside its column
SYNTH = "synth:twitter-merged:20000"


def _commands(command, path: tuple[str, ...] = ()):
    """The path of every visible command and group under a click command, itself first."""
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            yield from _commands(sub, (*path, name))


@pytest.fixture(scope="module")
def nemo_files(tmp_path_factory) -> Path:
    from tierwise.nemo.device.file import FileZonedDevice
    from tierwise.nemo.traces import SyntheticTrace, write_trace

    d = tmp_path_factory.mktemp("nemo_output")
    write_trace(d / "t.req", SyntheticTrace("twitter-merged", 20_000, 0))
    with FileZonedDevice(d / "dev", num_zones=3, zone_size=8192) as dev:
        dev.append(1, bytes(4096))
    (d / "sweep.yaml").write_text("trace: synth:twitter-merged:10000\nengine: nemo\nflash_mb: [0.125, 0.25]\n"
                                  "zone_kb: 32\ngrid:\n  flush_threshold: [8, 16]\n")
    return d


@pytest.fixture(scope="module")
def remoe_files(tmp_path_factory) -> Path:
    import torch

    from tierwise.remoe.export.delta import save_router_delta
    from tierwise.remoe.models.adapters import adapter_for, load_model, save_tiny

    d = tmp_path_factory.mktemp("remoe_output")
    model, _ = load_model(save_tiny("qwen3_moe", d / "m"))
    with torch.no_grad():
        for layer in adapter_for(model).moe_layers:
            adapter_for(model).router_weight(layer).mul_(-1.0)  # another routing of the same model
    save_router_delta(model, d / "delta.safetensors")
    (d / "held.jsonl").write_text("".join(json.dumps({"text": f"Held-out document {i}: " + "words to replay, " * 4})
                                          + "\n" for i in range(4)))
    (d / "prompts.txt").write_text("experts on flash\nhello there\n")
    res = CliRunner().invoke(app, ["remoe", "trace", str(d / "m"), "--prompts", str(d / "prompts.txt"),
                                   "--out", str(d / "t.npz"), "--max-new-tokens", "6", "--ignore-eos"], env=ENV)
    assert res.exit_code == 0, res.output
    return d


# name -> (fixture with the files it reads, its arguments); the smallest scale that prints every table
COMMANDS = {
    "nemo trace synth": ("nemo_files", lambda d: ["nemo", "trace", "synth", "--requests", "20k", "--out", d / "s.req"]),
    "nemo trace stats": ("nemo_files", lambda d: ["nemo", "trace", "stats", d / "t.req"]),
    "nemo device profiles": ("nemo_files", lambda d: ["nemo", "device", "profiles"]),
    "nemo device report": ("nemo_files", lambda d: ["nemo", "device", "report", f"file:{d / 'dev'}"]),
    "nemo replay": ("nemo_files", lambda d: ["nemo", "replay", "--trace", SYNTH, "--flash-size", "256K",
                                             "--zone-size", "16K"]),
    "nemo bench": ("nemo_files", lambda d: ["nemo", "bench", "--trace", "synth:twitter-merged:10000",
                                            "--engines", "nemo,log", "--flash-size", "128K", "--zone-size", "16K",
                                            "--nemo-zone-size", "32K", "--sizes", "2", "--executor", "serial"]),
    "nemo sweep": ("nemo_files", lambda d: ["nemo", "sweep", d / "sweep.yaml", "--executor", "serial"]),
    "remoe tiny": ("remoe_files", lambda d: ["remoe", "tiny", "olmoe", "--out", d / "tiny"]),
    "remoe trace": ("remoe_files", lambda d: ["remoe", "trace", d / "m", "--prompts", d / "prompts.txt",
                                              "--out", d / "t2.npz", "--max-new-tokens", "4"]),
    "remoe analyze": ("remoe_files", lambda d: ["remoe", "analyze", d / "t.npz", "--cache", "2,4,6"]),
    "remoe finetune": ("remoe_files", lambda d: ["remoe", "finetune", d / "m", "--data", d / "held.jsonl",
                                                 "--out", d / "ft", "--overwrite", "--steps", "2", "--seq-len", "16",
                                                 "--batch-size", "2", "--check-rows", "2", "--device", "cpu"]),
    "remoe eval": ("remoe_files", lambda d: ["remoe", "eval", d / "m", "--router", d / "delta.safetensors",
                                             "--data", d / "held.jsonl", "--seq-len", "32"]),
    "remoe offload": ("remoe_files", lambda d: ["remoe", "offload", d / "m", "--router", d / "delta.safetensors",
                                                "--data", d / "held.jsonl", "--prompt-tokens", "8",
                                                "--max-new-tokens", "4", "--limit", "2", "--prefetch", "2",
                                                "--compare", "original,remoe,prefetch,reroute,remoe+prefetch,"
                                                "remoe+reroute", "--store", d / "store"]),
}
# the first replay of each design on a machine compiles it (half a minute here); training takes seconds
SLOW = {"nemo replay", "nemo bench", "remoe finetune"}


def _record_tables(monkeypatch) -> list[list[list[str]]]:
    """From now on, the cells of every table a command prints, as the report module formats them, go to the list
    returned; its console is 80 wide."""
    seen: list[list[list[str]]] = []

    def recording(show):
        def wrapper(rows, title=None, columns=None, *args, **kwargs):
            seen.append(report.formatted(rows, columns))
            return show(rows, title, columns, *args, **kwargs)
        return wrapper

    for name in ("print_table", "table"):
        monkeypatch.setattr(report, name, recording(getattr(report, name)))
    # the console reads COLUMNS when it is made: a fresh one, whatever the environment held at import
    monkeypatch.setattr(report, "stdout", Console(width=WIDTH))
    return seen


def _shown(text: str, output: str) -> bool:
    """`text` in `output` as a whole: bounded by blanks or rules, not inside a longer number or word."""
    return re.search(rf"(?<![^\s│┃]){re.escape(text)}(?![^\s│┃])", output) is not None


def _cut(cells: list[list[str]], output: str) -> list[str]:
    """The cells of a recorded table that do not appear whole in `output`."""
    cut = []
    for text in (t for line in cells for t in line):
        if NUMBER.fullmatch(text):
            cut += [] if _shown(text, output) else [text]
        else:
            cut += [w for w in text.split() if len(w) <= LONGEST_WHOLE_WORD and not _shown(w, output)]
    return cut


def _check(output: str, tables: list[list[list[str]]]) -> None:
    assert "…" not in output, "\n".join(line for line in output.splitlines() if "…" in line)
    wide = [line for line in output.splitlines() if BOX.search(line) and len(line) > WIDTH]
    assert not wide, "\n".join(wide)
    cut = [text for cells in tables for text in _cut(cells, output)]
    assert not cut, f"cells not shown whole: {cut}\n{output}"


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in COMMANDS])
def test_command_output_reads_whole_at_80_columns(name, request, monkeypatch):
    fixture, args = COMMANDS[name]
    files = request.getfixturevalue(fixture)
    tables = _record_tables(monkeypatch)
    res = CliRunner().invoke(app, [str(a) for a in args(files)], env=ENV)
    assert res.exit_code == 0, res.output
    assert tables or name == "remoe tiny", "the command printed no table"
    _check(res.output, tables)


@pytest.mark.parametrize("command", [" ".join(("tierwise", *p)) for p in _commands(typer.main.get_command(app))])
def test_help_reads_whole_at_80_columns(command):
    res = CliRunner().invoke(app, [*command.split()[1:], "--help"], env=ENV)
    assert res.exit_code == 0, res.output
    _check(res.output, [])
