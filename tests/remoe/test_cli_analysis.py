"""`tierwise remoe tiny | trace | analyze` end to end on a tiny model built from a config."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.errors import TierwiseError
from tierwise.remoe.analysis import cachesim, metrics
from tierwise.remoe.models.routing import RoutingTrace

runner = CliRunner()


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    res = runner.invoke(app, ["remoe", "tiny", "olmoe", "--out", str(d / "m")])
    assert res.exit_code == 0, res.output
    (d / "p.jsonl").write_text('{"prompt": "experts on flash"}\n{"messages": [{"role": "user", "content": "hi there"}]}\n')
    res = runner.invoke(app, ["remoe", "trace", str(d / "m"), "--prompts", str(d / "p.jsonl"), "--out", str(d / "t.npz"),
                              "--max-new-tokens", "6", "--ignore-eos"])
    assert res.exit_code == 0, res.output
    return d


def test_trace_command_writes_a_valid_trace(traced):
    t = RoutingTrace.load(traced / "t.npz")
    assert t.num_requests == 2 and int(t.phase.sum()) == 2 * 5
    assert t.meta["model_type"] == "olmoe" and t.meta["moe_layers"] == [0, 1, 2, 3]


def test_analyze_json_and_plots(traced):
    out = traced / "a.json"
    res = runner.invoke(app, ["remoe", "analyze", str(traced / "t.npz"), "--cache", "4,6", "--policy", "lru,belady",
                              "--json", str(out), "--plot", str(traced / "plots")])
    assert res.exit_code == 0, res.output
    assert "uHR@C" in res.output and "EOR decode" in res.output
    data = json.loads(out.read_text())
    t = RoutingTrace.load(traced / "t.npz")
    assert data["eor"] == pytest.approx(metrics.eor(t))
    assert data["eor_per_layer"] == pytest.approx(metrics.eor_per_layer(t).tolist())
    assert list(data["reuse_at_horizon"]) == [str(h) for h in range(1, 17)]
    lru4 = data["cache"]["lru"]["4"]
    want = cachesim.simulate(t, cachesim.CacheConfig(4, "lru"))
    assert lru4["unique_hit_rate"] == pytest.approx(want.unique_hit_rate)
    assert lru4["bytes_fetched"] == want.misses * t.expert_bytes
    assert set(lru4) >= {"hit_rate", "unique_hit_rate", "misses_per_token_per_layer", "bytes_fetched"}
    assert data["cache"]["belady"]["6"]["unique_hit_rate"] >= data["cache"]["lru"]["6"]["unique_hit_rate"]
    for name in ("reuse_vs_horizon.png", "hit_rate_vs_cache_size.png"):
        assert (traced / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_errors(traced):
    (traced / "junk.npz").write_bytes(b"garbage")
    res = runner.invoke(app, ["remoe", "analyze", str(traced / "junk.npz")])
    assert isinstance(res.exception, TierwiseError) and "corrupt" in str(res.exception)
    res = runner.invoke(app, ["remoe", "analyze", str(traced / "t.npz"), "--policy", "arc"])
    assert isinstance(res.exception, TierwiseError) and "unknown cache policy 'arc'" in str(res.exception)
    res = runner.invoke(app, ["remoe", "analyze", str(traced / "t.npz"), "--cache", "4,x"])
    assert isinstance(res.exception, TierwiseError) and "--cache" in str(res.exception)
    res = runner.invoke(app, ["remoe", "trace", str(traced / "m"), "--prompts", str(traced / "none.txt"), "--out",
                              str(traced / "x.npz")])
    assert isinstance(res.exception, TierwiseError) and "not found" in str(res.exception)
