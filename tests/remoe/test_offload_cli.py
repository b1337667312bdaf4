"""`tierwise remoe offload` end to end on a tiny checkpoint: workloads, --compare lists, the table, bad values."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.errors import TierwiseError
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
    held = root / "held.jsonl"
    held.write_text("".join(json.dumps({"text": f"Held-out document {i}: " + "some words to replay, " * (2 + i)}) + "\n"
                            for i in range(5)))
    return ckpt, delta, prompts, held, root


def _invoke(*args):
    return CliRunner().invoke(app, ["remoe", "offload", *map(str, args)], terminal_width=80)


def _run(*args):
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_offload_json_replay_by_default(checkpoint):
    ckpt, _, _, held, root = checkpoint
    out = _run(ckpt, "--cache-experts", 6, "--storage", "nvme", "--data", held, "--prompt-tokens", 8,
               "--max-new-tokens", 5, "--limit", 3, "--store", root / "store", "--json", "-")
    result = json.loads(out)
    run = result["runs"]["original"]
    assert result["workload"]["kind"] == "replay" and result["workload"]["requests"] == 3
    assert result["config"]["cache_experts"] == 6 and result["config"]["storage"] == "nvme"
    assert result["config"]["platform"] == "jetson-orin-nx" and result["config"]["timing"]["target_moe_layers"] == 26
    assert run["requests"] == 3 and run["output_tokens"] == 15 and run["quality"]["tokens"] == 15
    assert {"measured", "modelled", "total"} <= set(run["tpot_ms"]) and run["tpot_ms"]["total"] == run["tpot_ms"]["modelled"]
    assert run["bytes_read"] > 0 and len(run["per_layer"]) == 3


def test_offload_greedy_with_prompts(checkpoint):
    ckpt, _, prompts, _, root = checkpoint
    result = json.loads(_run(ckpt, "--prompts", prompts, "--max-new-tokens", 4, "--storage", "local",
                             "--store", root / "store", "--json", "-"))
    assert result["workload"]["kind"] == "greedy" and result["runs"]["original"]["requests"] == 2
    assert result["config"]["timing"] is None and result["runs"]["original"]["quality"] is None
    run = result["runs"]["original"]
    assert run["tpot_ms"]["total"] == run["tpot_ms"]["measured"] and "modelled" not in run["tpot_ms"]


def test_compare_prints_one_table_whole_at_80_columns(checkpoint):
    ckpt, delta, _, held, root = checkpoint
    out = _run(ckpt, "--data", held, "--prompt-tokens", 8, "--max-new-tokens", 5, "--router", delta,
               "--compare", "original,remoe,prefetch,reroute,remoe+prefetch,remoe+reroute", "--prefetch", 2,
               "--store", root / "store", "--json", root / "cmp.json")
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for header in ("orig", "remoe", "pf", "rr", "remoe+pf", "remoe+rr"):
        assert f" {header} " in out or out.rstrip().endswith(header)
    for row in ("misses/token", "fetches/token", "hit rate", "TPOT measured (ms)", "TPOT modelled (ms)",
                "speedup modelled", "same steps", "ppl change", "pf precision", "pf recall", "pf wasted (MB)",
                "rerouted", "replay workload", "EOR (decode)"):
        assert row in out, row
    result = json.loads((root / "cmp.json").read_text())
    assert list(result["runs"]) == ["original", "remoe", "prefetch", "reroute", "remoe+prefetch", "remoe+reroute"]
    assert result["runs"]["prefetch"]["setting"]["prefetch"] == 2 and result["runs"]["reroute"]["setting"]["reroute"] == 0.5
    orig, pf = result["runs"]["original"], result["runs"]["prefetch"]
    vs = result["vs_original"]["prefetch"]
    assert vs["tpot_speedup"]["modelled"] == pytest.approx(orig["tpot_ms"]["modelled"]["mean"] / pf["tpot_ms"]["modelled"]["mean"])
    assert vs["identical_share"] == 1.0 and vs["ppl_change"] == pytest.approx(0.0, abs=1e-6)
    assert result["runs"]["reroute"]["decode"]["rerouted_share"] > 0 and orig["prefetch"] is None
    assert 0 <= pf["prefetch"]["precision"] <= 1 and pf["decode"]["fetches_per_token"] >= pf["decode"]["misses_per_token"]


def test_compare_shows_routing_concentration(checkpoint):
    ckpt, _, prompts, _, root = checkpoint
    model, _ = load_model(ckpt)
    with torch.no_grad():
        for layer in adapter_for(model).moe_layers:
            adapter_for(model).router_weight(layer).zero_()  # every token scores every expert alike: the same K experts
    collapse = save_router_delta(model, root / "collapse.safetensors")
    args = [ckpt, "--workload", "greedy", "--prompts", prompts, "--max-new-tokens", 6, "--compare", "original,remoe",
            "--store", root / "store"]
    out = _run(*args, "--router", collapse, "--json", root / "collapse.json")
    for column in ("EOR (decode)", "entropy", "eff. experts", "busiest share", "warning: routing entropy fell"):
        assert column in out
    assert "…" not in out and "greedy workload" in out
    result = json.loads((root / "collapse.json").read_text())
    orig, tuned = result["runs"]["original"]["routing"], result["runs"]["remoe"]["routing"]
    k, e = result["config"]["top_k"], result["config"]["num_experts"]
    assert tuned["eor_decode"] == 1.0 and tuned["effective_experts"] == pytest.approx(k)
    assert tuned["entropy_norm"] == pytest.approx(math.log(k) / math.log(e))
    assert orig["entropy_norm"] > tuned["entropy_norm"] and 1 / k >= tuned["max_load_share"] > orig["max_load_share"]
    assert result["concentration_warning"].startswith("warning: routing entropy fell")
    assert result["vs_original"]["remoe"]["concentration_warning"] == result["concentration_warning"]
    # the original against itself: same routing, every step identical, no warning
    same = save_router_delta(load_model(ckpt)[0], root / "same.safetensors")
    _run(*args, "--router", same, "--json", root / "same.json")
    result = json.loads((root / "same.json").read_text())
    assert result["runs"]["original"]["routing"] == result["runs"]["remoe"]["routing"]
    assert result["concentration_warning"] is None and result["vs_original"]["remoe"]["identical_share"] == 1.0


def test_verify_and_throttle_from_the_command_line(checkpoint):
    ckpt, _, _, held, root = checkpoint
    out = _run(ckpt, "--data", held, "--prompt-tokens", 8, "--max-new-tokens", 4, "--limit", 2,
               "--compare", "original,prefetch,reroute", "--verify", "--throttle", "--storage", "pcie3-host",
               "--target", "4KB", "--store", root / "store")
    assert "--verify: original, prefetch equal to the resident model" in out.replace("\n", " ")
    assert "not checked" in out and "throttled storage" in out


@pytest.mark.parametrize("args, message", [
    (["-C", "0"], "--cache-experts must be at least 1"),
    (["-C", "99"], "between K=4 and E=16"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--prefetch", "-1"], "--prefetch must be at least 0"),
    (["--prefetch", "17"], "--prefetch must be between 0 and C=4"),
    (["--reroute", "-0.5"], "--reroute must be at least 0"),
    (["--compare", "original,turbo"], "unknown configuration 'turbo'"),
    (["--compare", "original,remoe"], "needs --router"),
    (["--compare", "prefetch", "--prefetch", "0"], "needs --prefetch N >= 1"),
    (["--compare", "original", "--prefetch", "2"],
     "--prefetch 2 is given but --compare original has no configuration that uses it"),
    (["--compare", "original,prefetch", "--reroute", "0.5"],
     "--reroute 0.5 is given but --compare original,prefetch has no configuration that uses it"),
    (["--compare", "original,prefetch", "--protect", "1"], "--protect 1 is given but no configuration reroutes"),
    (["--protect", "3"], "--protect 3 is given but no configuration reroutes"),
    (["--workload", "replay", "--prompts", "x.txt"], "--prompts is for --workload greedy|sample"),
    (["--workload", "tea"], "unknown workload"),
    (["--throttle", "--storage", "local"], "--throttle needs a storage profile"),
    (["--platform", "abacus"], "unknown platform"),
    (["--max-new-tokens", "1"], "at least 2"),
])
def test_bad_values_are_clear_errors(checkpoint, args, message):
    ckpt, _, _, held, root = checkpoint
    data = [] if "--prompts" in args else ["--data", str(held), "--prompt-tokens", "8"]
    r = _invoke(ckpt, *data, "--max-new-tokens", 3, *args, "--store", root / "store")
    assert r.exit_code != 0 and isinstance(r.exception, TierwiseError), r.output
    assert message in str(r.exception)


def test_prefetch_and_reroute_unused_by_the_compare_list_are_errors():
    """A --prefetch/--reroute value no configuration of the list uses would be silently ignored: refused instead."""
    from tierwise.remoe.offload.compare import parse_settings

    with pytest.raises(TierwiseError, match=r"--prefetch 3 is given but --compare original,remoe,reroute .*drop"):
        parse_settings("original,remoe,reroute", prefetch=3, reroute=None, top_k=4, have_router=True)
    with pytest.raises(TierwiseError, match=r"--reroute 0.25 is given but --compare original,remoe\+prefetch"):
        parse_settings("original,remoe+prefetch", prefetch=None, reroute=0.25, top_k=4, have_router=True)
    # used by one configuration of the list, alone or in a '+' combination: accepted
    settings = parse_settings("original,remoe+prefetch,reroute", prefetch=3, reroute=0.25, top_k=4, have_router=True)
    assert [(s.label, s.prefetch, s.reroute) for s in settings] == [
        ("original", 0, 0.0), ("remoe+prefetch", 3, 0.0), ("reroute", 0, 0.25)]
