"""One convention for every `tierwise remoe` command: --json (and `-`), flag names, sizes, defaults in --help."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import save_tiny

FIGURE_COMMANDS = ("trace", "analyze", "eval", "offload", "sweep", "finetune", "pretrain", "export-gguf",
                   "patch-gguf", "import-gguf-router", "tiny", "lm-eval")


@pytest.fixture(autouse=True)
def _progress_restored(monkeypatch):
    monkeypatch.setenv("TIERWISE_NO_PROGRESS", "")  # `--json -` silences progress; put it back after each test


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("convention")
    ckpt = save_tiny("olmoe", d / "m")
    (d / "held.jsonl").write_text("".join(json.dumps({"text": f"held-out document {i}, some words."}) + "\n"
                                          for i in range(3)))
    (d / "p.txt").write_text("experts on flash\n")
    return d, ckpt


def _invoke(*args):
    return CliRunner().invoke(app, ["remoe", *map(str, args)], terminal_width=80)


@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_json_dash_puts_only_json_on_stdout(tiny, command):
    d, ckpt = tiny
    if command == "eval":
        args = ["eval", ckpt, "--data", d / "held.jsonl", "--seq-len", 16]
    else:
        traced = _invoke("trace", ckpt, "--prompts", d / "p.txt", "--out", d / "t.npz", "--max-new-tokens", 3)
        assert traced.exit_code == 0, traced.output
        args = ["analyze", d / "t.npz"]
    result = _invoke(*args, "--json", "-")
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.stdout), dict)  # the whole of stdout, no table before or after
    assert os.environ["TIERWISE_NO_PROGRESS"] == "1"
    table = _invoke(*args)
    assert table.exit_code == 0 and not table.stdout.lstrip().startswith("{")


def test_tiny_json_says_what_was_written(tmp_path):
    result = _invoke("tiny", "mixtral", "--out", tmp_path / "m", "--json", "-")
    written = json.loads(result.stdout)
    assert written["out"] == str(tmp_path / "m") and written["model_type"] == "mixtral"


def test_deprecated_jobs_still_works_with_a_note(tmp_path, monkeypatch):
    from tierwise.remoe.training import sweep
    from tierwise.remoe.training.objective import LossWeights

    seen = {}
    row = {"run": "baseline", "stage": "baseline", "eor": 0.3, "entropy_norm": 0.9, "effective_experts": 40.0,
           "max_load_share": 0.05, "ppl": 20.0}

    def fake_sweep(cfg):
        seen["workers"] = cfg.workers
        return {"rows": {"baseline": row}, "default": LossWeights(), "default_run": "baseline", "steps": cfg.steps,
                "guard": False, "config": {}}

    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    result = _invoke("sweep", "--out", tmp_path, "--jobs", 3, "--json", "-")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "note: --jobs is deprecated; use --workers 3" and seen["workers"] == 3
    assert json.loads(result.stdout)["default_run"] == "baseline"
    assert _invoke("sweep", "--out", tmp_path, "--workers", 1).exit_code == 0 and seen["workers"] == 1
    both = _invoke("sweep", "--out", tmp_path, "--workers", 1, "--jobs", 2)
    assert isinstance(both.exception, TierwiseError) and "--workers" in str(both.exception)
    assert "--jobs" not in _invoke("sweep", "--help").stdout


def test_a_bad_size_names_its_flag(tiny):
    _, ckpt = tiny
    result = _invoke("offload", ckpt, "--target", "17.3XB")
    assert isinstance(result.exception, TierwiseError)
    assert str(result.exception).startswith("--target: cannot read '17.3XB' as a size")


@pytest.mark.parametrize("command", FIGURE_COMMANDS)
def test_help_reads_well_at_80_columns_and_offers_json(command):
    result = _invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "--json" in result.stdout and "…" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_help_shows_the_config_defaults():
    from tierwise.remoe.analysis.evaluate import EvalConfig
    from tierwise.remoe.training.finetune import FinetuneConfig
    from tierwise.remoe.training.sweep import SweepConfig

    def shown(command, flag):
        lines = _invoke(command, "--help").stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if f" {flag} " in line)
        following = " ".join(lines[at:at + 6])
        return following.split("[default: ")[1].split("]")[0]

    assert shown("eval", "--seq-len") == str(EvalConfig.seq_len)
    assert shown("finetune", "--steps") == str(FinetuneConfig.steps)
    assert shown("finetune", "--lambda-reuse") == f"{FinetuneConfig().loss.reuse}"
    assert shown("sweep", "--workers") == str(SweepConfig.workers)
