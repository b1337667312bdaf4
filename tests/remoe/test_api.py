"""The Python API (tierwise.remoe.api): the same numbers as the commands' --json, plain results, cheap import."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tierwise import remoe
from tierwise.remoe import api
from tierwise.cli import app
from tierwise.common.errors import TierwiseError
from tierwise.remoe.export.delta import save_router_delta
from tierwise.remoe.models.adapters import adapter_for, save_tiny, tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny olmoe checkpoint, prompts, held-out text, and the API's trace of the prompts."""
    d = tmp_path_factory.mktemp("api")
    ckpt = save_tiny("olmoe", d / "m")
    (d / "p.txt").write_text("experts on flash\nhello there, router\n")
    (d / "held.jsonl").write_text("".join(json.dumps({"text": f"held-out document {i}, a few words."}) + "\n"
                                          for i in range(4)))
    traced = remoe.trace(str(ckpt), prompts=d / "p.txt", out=d / "t.npz", max_new_tokens=5, stop_at_eos=False)
    return d, ckpt, traced


def _cli_json(*args) -> dict:
    result = CliRunner().invoke(app, ["remoe", *map(str, args), "--json", "-"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_trace_result(tiny):
    d, _, traced = tiny
    assert (traced.requests, traced.decode_tokens) == (2, 2 * 4)
    assert traced.routing.num_tokens == traced.tokens and (d / "t.npz").is_file()
    summary = json.loads(json.dumps(traced.as_dict()))
    assert "routing" not in summary and summary["eor"] == traced.eor
    assert list(traced.to_dataframe().columns)[:2] == ["model", "out"] and len(traced.to_dataframe()) == 1


def test_analyze_matches_the_command(tiny):
    d, _, traced = tiny
    result = remoe.analyze(traced, cache=[4, 6], policy="lru,belady")
    assert result.as_dict() == _cli_json("analyze", d / "t.npz", "--cache", "4,6", "--policy", "lru,belady")
    assert remoe.analyze(d / "t.npz", cache="4,6").as_dict() == remoe.analyze(traced.routing, cache=[4, 6]).as_dict()
    frame = result.to_dataframe()
    assert list(zip(frame["policy"], frame["C"])) == [("lru", 4), ("lru", 6), ("belady", 4), ("belady", 6)]
    assert frame["unique_hit_rate"].tolist() == [result.cache[p][c]["unique_hit_rate"] for p, c in
                                                 zip(frame["policy"], frame["C"])]


def test_evaluate_matches_the_command(tiny, tmp_path):
    d, ckpt, _ = tiny
    model = tiny_model("olmoe")
    for i in adapter_for(model).moe_layers:
        adapter_for(model).router_weight(i).data.mul_(-1.0)  # another routing of the same model
    delta = save_router_delta(model, tmp_path / "router.safetensors")
    result = remoe.evaluate(str(ckpt), delta, data=str(d / "held.jsonl"), seq_len=16, max_rows=3)
    plain = json.loads(json.dumps(result.as_dict()))
    assert plain == _cli_json("eval", ckpt, "--router", delta, "--data", d / "held.jsonl", "--seq-len", 16,
                              "--max-rows", 3)
    assert plain["num_rows"] == 3 and plain["before"]["eor"] != plain["after"]["eor"]
    frame = result.to_dataframe()
    assert frame["router"].tolist() == ["original", "fine-tuned"]
    assert frame["ppl"].tolist() == [result.before["ppl"], result.after["ppl"]]
    alone = remoe.evaluate(str(ckpt), data=str(d / "held.jsonl"), seq_len=16, max_rows=3)
    assert alone.after is None and len(alone.to_dataframe()) == 1 and alone.before == result.before


def test_finetune_result_has_history_rows_and_the_check(tiny, tmp_path):
    d, ckpt, _ = tiny
    result = remoe.finetune(str(ckpt), data=str(d / "held.jsonl"), out=tmp_path / "run", steps=2, seq_len=16,
                            batch_size=2, lambda_reuse=0.5, t_warm=1, lags="1,2", no_ws=True, check_rows=2)
    assert result.finished and result.delta_path.is_file() and result.config["loss"]["reuse"] == 0.5
    assert result.config["loss"]["warmup_steps"] == 1 and result.config["loss"]["lags"] == [1, 2]
    assert result.config["loss"]["ws"] == 0.0
    assert result.to_dataframe()["step"].tolist() == [1, 2]
    assert result.check.num_rows == 2 and result.check.vs_original is not None
    json.dumps(result.as_dict())
    assert type(pickle.loads(pickle.dumps(result))) is remoe.FinetuneResult
    with pytest.raises(TierwiseError, match="no option stepz"):
        remoe.finetune(str(ckpt), out=tmp_path / "bad", stepz=3)


def test_offload_result_rows_per_configuration(tiny, tmp_path):
    d, ckpt, _ = tiny
    result = api.offload(str(ckpt), prompts=d / "p.txt", max_new_tokens=3, storage="local",
                         compare="original,prefetch", store=tmp_path / "store")
    assert result.workload["kind"] == "greedy" and set(result.runs) == {"original", "prefetch"}
    frame = result.to_dataframe()
    assert frame["configuration"].tolist() == ["original", "prefetch"] and "decode.hit_rate" in frame
    json.dumps(result.as_dict())


def test_defaults_come_from_the_config_dataclasses():
    from tierwise.remoe.analysis.evaluate import EvalConfig
    from tierwise.remoe.training.finetune import FinetuneConfig

    assert api.defaults("evaluate")["seq_len"] == EvalConfig.seq_len
    finetune = api.defaults("finetune")
    assert finetune["steps"] == FinetuneConfig.steps and finetune["lambda_reuse"] == FinetuneConfig().loss.reuse
    assert api.defaults("analyze")["policy"] == ("lru", "belady")


def test_importing_the_package_and_analyzing_a_trace_load_no_torch(tiny):
    d, _, _ = tiny
    code = ("import sys; import tierwise.remoe, tierwise.remoe.cli; print('torch' in sys.modules); "
            "sys.modules['torch'] = None; from tierwise.remoe import analyze; "
            f"print(analyze({str(d / 't.npz')!r}).requests)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "2"]
