"""`tierwise remoe offload` end to end on a tiny checkpoint: JSON metrics, --compare with a router delta."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.remoe.export.delta import save_router_delta
from tierwise.remoe.models.adapters import adapter_for, load_model, save_tiny


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("offload_cli")
    ckpt = save_tiny("qwen3_moe", root / "ckpt")
    model, _ = load_model(ckpt)
    with torch.no_grad():
        for layer in adapter_for(model).moe_layers:
            w = adapter_for(model).router_weight(layer)
            w.copy_(w.roll(1, dims=0))  # a different router: the same experts are chosen for other tokens
    delta = save_router_delta(model, root / "router.safetensors")
    prompts = root / "prompts.txt"
    prompts.write_text("the quick brown fox\nhello world, again\n")
    return ckpt, delta, prompts, root


def _run(*args):
    result = CliRunner().invoke(app, ["remoe", "offload", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_offload_json(checkpoint):
    ckpt, _, prompts, root = checkpoint
    out = _run(ckpt, "--cache-experts", 6, "--storage", "nvme", "--prompts", prompts, "--max-new-tokens", 5,
               "--store", root / "store", "--json", "-")
    result = json.loads(out)
    run = result["runs"]["original"]
    assert result["config"]["cache_experts"] == 6 and result["config"]["storage"] == "nvme"
    assert run["requests"] == 2 and run["output_tokens"] == 10
    assert set(run["tpot_ms"]) == {"measured", "modelled", "total"}
    assert run["bytes_read"] > 0 and len(run["per_layer"]) == 3


def test_offload_compare_prints_both_and_ratio(checkpoint):
    ckpt, delta, prompts, root = checkpoint
    out = _run(ckpt, "--prompts", prompts, "--max-new-tokens", 4, "--router", delta, "--compare",
               "--store", root / "store", "--json", root / "cmp.json")
    assert "original" in out and "fine-tuned" in out and "speedup" in out
    result = json.loads((root / "cmp.json").read_text())
    assert set(result["runs"]) == {"original", "fine-tuned"}
    orig, tuned = result["runs"]["original"], result["runs"]["fine-tuned"]
    expected = orig["tpot_ms"]["total"]["mean"] / tuned["tpot_ms"]["total"]["mean"]
    assert result["tpot_speedup"]["total"] == pytest.approx(expected)


def test_offload_errors_are_clean(checkpoint):
    ckpt, _, prompts, root = checkpoint
    runner = CliRunner()
    r = runner.invoke(app, ["remoe", "offload", str(ckpt), "--compare", "--prompts", str(prompts), "--store", str(root / "store")])
    assert r.exit_code != 0 and "--router" in str(r.exception)
    r = runner.invoke(app, ["remoe", "offload", str(ckpt), "--cache-experts", "99", "--prompts", str(prompts),
                            "--store", str(root / "store")])
    assert r.exit_code != 0 and "between K=" in str(r.exception)


def test_offload_compare_shows_routing_concentration(checkpoint):
    ckpt, delta, prompts, root = checkpoint
    model, _ = load_model(ckpt)
    with torch.no_grad():
        for layer in adapter_for(model).moe_layers:
            adapter_for(model).router_weight(layer).zero_()  # every token scores every expert alike: the same K experts
    collapse = save_router_delta(model, root / "collapse.safetensors")
    args = [ckpt, "--prompts", prompts, "--max-new-tokens", 6, "--compare", "--store", root / "store"]
    out = CliRunner().invoke(app, ["remoe", "offload", *map(str, args), "--router", str(collapse),
                                   "--json", str(root / "collapse.json")], terminal_width=80)
    assert out.exit_code == 0, out.output
    for column in ("EOR (decode)", "entropy", "eff. experts", "busiest share", "warning: routing entropy fell"):
        assert column in out.stdout
    assert "…" not in out.stdout and "TPOT ms (p90)" in out.stdout  # every table whole at 80 columns
    result = json.loads((root / "collapse.json").read_text())
    orig, tuned = result["runs"]["original"]["routing"], result["runs"]["fine-tuned"]["routing"]
    k, e = result["config"]["top_k"], result["config"]["num_experts"]
    assert tuned["eor_decode"] == 1.0 and tuned["effective_experts"] == pytest.approx(k)
    assert tuned["entropy_norm"] == pytest.approx(math.log(k) / math.log(e))
    assert orig["entropy_norm"] > tuned["entropy_norm"] and 1 / k >= tuned["max_load_share"] > orig["max_load_share"]
    assert result["concentration_warning"].startswith("warning: routing entropy fell")
    # the original against itself: same routing, no warning
    same = save_router_delta(load_model(ckpt)[0], root / "same.safetensors")
    _run(*args, "--router", same, "--json", root / "same.json")
    result = json.loads((root / "same.json").read_text())
    assert result["runs"]["original"]["routing"] == result["runs"]["fine-tuned"]["routing"]
    assert result["concentration_warning"] is None
