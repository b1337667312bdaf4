"""--device / --dtype: the names, load_model's placement, and the trace / eval / offload commands that take them."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import adapter_for, load_model, save_tiny
from tierwise.remoe.models.placement import resolve_device, resolve_dtype

runner = CliRunner()
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("placement")
    (root / "prompts.txt").write_text("experts on flash\nhello world\n")
    (root / "held.jsonl").write_text("".join(json.dumps({"text": f"held-out document {i}, text."}) + "\n"
                                             for i in range(4)))
    return save_tiny("olmoe", root / "m"), root


def test_names():
    assert [resolve_dtype(n) for n in ("fp32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(TierwiseError, match="--dtype"):
        resolve_dtype("fp8")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu0", "meta"):
        with pytest.raises(TierwiseError, match="--device"):
            resolve_device(bad)


@no_cuda
def test_a_missing_device_is_refused_by_name():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(TierwiseError, match="CUDA"):
            resolve_device(name)


def test_load_model_places_the_model(tiny):
    path, _ = tiny
    model, _ = load_model(path, dtype=torch.bfloat16, device="meta")  # a second device, without CUDA
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}


def test_trace_in_bf16(tiny):
    path, root = tiny
    res = runner.invoke(app, ["remoe", "trace", str(path), "--prompts", str(root / "prompts.txt"), "--out",
                              str(root / "t.npz"), "--max-new-tokens", "3", "--dtype", "bf16", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert (root / "t.npz").is_file()


def test_eval_in_bf16(tiny):
    path, root = tiny
    res = runner.invoke(app, ["remoe", "eval", str(path), "--data", str(root / "held.jsonl"), "--seq-len", "32",
                              "--json", "-", "--dtype", "bf16"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{"):])["before"]["ppl"] > 1


def test_offload_in_bf16_stores_bf16_experts(tiny):
    path, root = tiny
    res = runner.invoke(app, ["remoe", "offload", str(path), "--prompts", str(root / "prompts.txt"), "--max-new-tokens",
                              "3", "--store", str(root / "store"), "--json", "-", "--dtype", "bf16", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((root / "store" / "index.json").read_text())["dtype"] == "bfloat16"
    bf16_bytes = adapter_for(load_model(path, dtype=torch.bfloat16)[0]).expert_bytes
    assert json.loads(res.stdout[res.stdout.index("{"):])["config"]["expert_bytes"] == bf16_bytes


@no_cuda
@pytest.mark.parametrize("command", ["trace", "eval", "offload"])
def test_commands_refuse_a_missing_device(tiny, command):
    path, root = tiny
    extra = {"trace": ["--out", str(root / "x.npz")], "eval": [], "offload": []}[command]
    res = runner.invoke(app, ["remoe", command, str(path), *extra, "--device", "cuda"])
    assert isinstance(res.exception, TierwiseError) and "CUDA" in str(res.exception)
