"""Router fine-tuning: only gates train, the reference gate (and its device), schedule, data order, exact resume,
CE-only control, gradient checkpointing, no silent loss of earlier outputs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.corpus import pack
from tierwise.remoe.export.delta import load_router_delta
from tierwise.remoe.models.adapters import adapter_for, save_tiny, tiny_model
from tierwise.remoe.training.objective import LossWeights
from tierwise.remoe.training.finetune import (FinetuneConfig, RouterFinetuner, config_with_preset,
                                               enable_gradient_checkpointing, finetune, lr_at, step_rows)


@pytest.fixture(scope="module")
def corpus():
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 256, (int(n),), generator=g).tolist() for n in torch.randint(10, 60, (24,), generator=g)]
    return pack(docs, seq_len=32)


def _cfg(tmp_path, **kw):
    base = dict(model="tiny", out=str(tmp_path / "run"), steps=4, seq_len=32, batch_size=2, lr=1e-2, lr_warmup=1,
                checkpoint_every=0, loss=LossWeights(warmup_steps=2, window=8))
    return FinetuneConfig(**{**base, **kw})


def test_only_router_weights_change(tmp_path, corpus):
    model = tiny_model("deepseek_v2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = finetune(_cfg(tmp_path), model=model, corpus=corpus)
    routers = set(adapter_for(model).router_param_names())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == routers
    assert result.finished and result.delta_path.is_file()
    assert set(load_router_delta(result.delta_path).tensors) == routers
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {"ce", "trust", "reuse", "smooth", "lag", "ws", "eor_running"} <= set(log[0])


def test_tied_embeddings_stay_out_of_the_delta(tmp_path, corpus):
    # the embedded model ties lm_head to the input embedding; the gather must not write it as a "gate"
    model = tiny_model("deepseek_v2", tie_word_embeddings=True)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    result = finetune(_cfg(tmp_path, steps=2), model=model, corpus=corpus)
    assert set(load_router_delta(result.delta_path).tensors) == set(adapter_for(model).router_param_names())


def test_trust_reference_is_the_original_gate_on_the_current_input(corpus):
    """Before any update P equals P_ref exactly, so L_Trust is 0; after moving the gate it is positive."""
    model = tiny_model("deepseek_v3")  # sigmoid-scored: exercises the normalised-score distribution
    tuner = RouterFinetuner(model, LossWeights())
    batch = corpus.batch([0, 1])
    _, terms, _ = tuner.loss(model, batch, step=1)
    assert terms["trust"] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        for p in tuner.gate_parameters():
            p.add_(0.5 * torch.randn_like(p))
    _, terms, _ = tuner.loss(model, batch, step=1)
    assert terms["trust"] > 1e-4
    assert not any(p.requires_grad for p in tuner.refs.parameters())


def test_reference_routers_stay_fp32_and_follow_the_router_input_to_its_device():
    """A model placed after the fine-tuner was built (accelerate's prepare moves it to the GPU) must not leave W_g⁰
    behind; without CUDA here, the meta device stands in for the other device."""
    model = tiny_model("olmoe")
    tuner = RouterFinetuner(model, LossWeights())
    model.to(torch.bfloat16)
    assert tuner.refs.device.type == "cpu" and all(p.dtype == torch.float32 for p in tuner.refs.parameters())
    layers, hidden = len(adapter_for(model).moe_layers), adapter_for(model).hidden_size
    h = [torch.empty(2 * 8, hidden, dtype=torch.bfloat16, device="meta") for _ in range(layers)]
    logp_ref = tuner.refs.log_probs(h, 2, 8, "softmax")
    assert tuner.refs.device.type == "meta"
    assert logp_ref.device.type == "meta" and logp_ref.dtype == torch.float32
    assert logp_ref.shape == (layers, 2, 8, adapter_for(model).num_experts)


def test_reference_routers_are_made_where_the_routers_are():
    with torch.device("meta"):
        model = tiny_model("deepseek_v2")
    tuner = RouterFinetuner(model, LossWeights())
    assert tuner.refs.device.type == "meta" and all(p.dtype == torch.float32 for p in tuner.refs.parameters())
    h = [torch.zeros(8, adapter_for(model).hidden_size) for _ in adapter_for(model).moe_layers]
    with pytest.raises(TierwiseError, match="meta device"):  # no weights to move: a clear error, not garbage
        tuner.refs.log_probs(h, 1, 8, "softmax")


def _gate_grads(corpus, checkpointing: bool) -> tuple[list[torch.Tensor], int]:
    model = tiny_model("deepseek_v2")
    if checkpointing:
        enable_gradient_checkpointing(model)
    tuner = RouterFinetuner(model, LossWeights(warmup_steps=0, window=8))
    with torch.no_grad():
        for p in tuner.gate_parameters():  # away from W_g⁰, so that L_Trust has a gradient too
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    calls = []
    first = adapter_for(model).router(adapter_for(model).moe_layers[0])
    handle = first.register_forward_hook(lambda *args: calls.append(1))
    loss, _, _ = tuner.loss(model, corpus.batch([0, 1, 2]), step=1)
    loss.backward()
    handle.remove()
    assert tuner.capture.logits == [] and tuner.capture.inputs == []  # the recompute's router calls were not kept
    return [p.grad.clone() for p in tuner.gate_parameters()], len(calls)


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gate_gradients(corpus):
    plain, plain_calls = _gate_grads(corpus, checkpointing=False)
    ckpt, ckpt_calls = _gate_grads(corpus, checkpointing=True)
    assert (plain_calls, ckpt_calls) == (1, 2)  # the backward pass ran the router's layer again
    assert all(g.abs().sum() > 0 for g in ckpt)
    for a, b in zip(plain, ckpt):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)


def test_finetune_with_gradient_checkpointing_matches(tmp_path, corpus):
    plain = finetune(_cfg(tmp_path / "a", steps=2), model=tiny_model("olmoe"), corpus=corpus)
    ckpt = finetune(_cfg(tmp_path / "b", steps=2, gradient_checkpointing=True), model=tiny_model("olmoe"), corpus=corpus)
    a, b = load_router_delta(plain.delta_path).tensors, load_router_delta(ckpt.delta_path).tensors
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def test_a_non_empty_out_is_refused_unless_resume_or_overwrite(tmp_path, corpus):
    run = tmp_path / "run"
    finetune(_cfg(tmp_path, steps=4, stop_after=1, checkpoint_every=1), model=tiny_model("olmoe"), corpus=corpus)
    (run / "notes.txt").write_text("not the fine-tuner's")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(TierwiseError, match="--resume.*--overwrite") as refused:
        finetune(_cfg(tmp_path, steps=2), model=tiny_model("olmoe"), corpus=corpus)
    assert str(run) in str(refused.value)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing touched
    done = finetune(_cfg(tmp_path, steps=2, overwrite=True), model=tiny_model("olmoe"), corpus=corpus)
    assert done.finished and not (run / "checkpoint").exists()  # the old run's checkpoint is gone
    assert [json.loads(x)["step"] for x in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((run / "config.json").read_text())["steps"] == 2
    assert (run / "notes.txt").read_text() == "not the fine-tuner's"


def test_aux_loss_is_off_for_models_that_have_one(corpus):
    model = tiny_model("qwen2_moe")
    RouterFinetuner(model, LossWeights())
    assert model.config.router_aux_loss_coef == 0.0 and not model.config.output_router_logits


def test_ce_only_control_logs_only_ce(tmp_path, corpus):
    result = finetune(_cfg(tmp_path, ce_only=True, steps=2), model=tiny_model("olmoe"), corpus=corpus)
    assert {k for k in result.history[0] if k not in ("step", "lr", "grad_norm", "eor_running")} == {"ce", "total"}
    assert result.history[0]["ce"] == result.history[0]["total"]


def test_locality_terms_raise_eor_and_lower_reuse_loss(tmp_path, corpus):
    result = finetune(_cfg(tmp_path, steps=12, lr=3e-2, loss=LossWeights(kl=0.1, warmup_steps=0, window=8)),
                      model=tiny_model("olmoe"), corpus=corpus)
    assert result.history[-1]["reuse"] < result.history[0]["reuse"] - 0.1


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = FinetuneConfig(steps=20, lr=1.0, lr_warmup=4, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert lr_at(20, cfg) == pytest.approx(0.1)
    assert lr_at(12, cfg) == pytest.approx(0.55)
    lrs = [lr_at(s, cfg) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_step_rows_partition_each_global_batch_across_processes():
    cfg = FinetuneConfig(batch_size=3, grad_accum=2, seed=1)
    n_rows = 50
    one_epoch = torch.cat([step_rows(s, m, r, cfg, 2, n_rows) for s in range(1, 10) for m in (0, 1) for r in (0, 1)])
    assert sorted(one_epoch[:n_rows].tolist()) == list(range(n_rows))  # a permutation: every row once per epoch
    assert torch.equal(step_rows(3, 1, 0, cfg, 2, n_rows), step_rows(3, 1, 0, cfg, 2, n_rows))


def test_resume_after_a_crash_gives_identical_router_weights(tmp_path, corpus):
    steps = 6
    full = finetune(_cfg(tmp_path / "a", steps=steps, grad_accum=2), model=tiny_model("deepseek_v2"), corpus=corpus)

    def crash(step, record):
        if step == 5:
            raise KeyboardInterrupt("killed")

    cfg = _cfg(tmp_path / "b", steps=steps, grad_accum=2, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, model=tiny_model("deepseek_v2"), corpus=corpus, on_step=crash)
    assert not (tmp_path / "b" / "run" / "router_delta.safetensors").exists()
    resumed = finetune(_cfg(tmp_path / "b", steps=steps, grad_accum=2, checkpoint_every=2, resume=True),
                       model=tiny_model("deepseek_v2"), corpus=corpus)
    assert [r["step"] for r in resumed.history] == [5, 6]  # continued from the step-4 checkpoint
    a, b = load_router_delta(full.delta_path).tensors, load_router_delta(resumed.delta_path).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x)["step"] for x in (tmp_path / "b" / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]


def test_stop_after_then_resume_matches(tmp_path, corpus):
    full = finetune(_cfg(tmp_path / "a", steps=4), model=tiny_model("olmoe"), corpus=corpus)
    part = finetune(_cfg(tmp_path / "b", steps=4, stop_after=2), model=tiny_model("olmoe"), corpus=corpus)
    assert not part.finished and part.delta_path is None
    rest = finetune(_cfg(tmp_path / "b", steps=4, resume=True), model=tiny_model("olmoe"), corpus=corpus)
    a, b = load_router_delta(full.delta_path).tensors, load_router_delta(rest.delta_path).tensors
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_settings_and_missing_checkpoint(tmp_path, corpus):
    with pytest.raises(TierwiseError, match="no checkpoint"):
        finetune(_cfg(tmp_path, resume=True), model=tiny_model("olmoe"), corpus=corpus)
    finetune(_cfg(tmp_path, steps=4, stop_after=1), model=tiny_model("olmoe"), corpus=corpus)
    with pytest.raises(TierwiseError, match="lr"):
        finetune(_cfg(tmp_path, steps=4, lr=0.5, resume=True), model=tiny_model("olmoe"), corpus=corpus)


def test_finetune_command_flags(tmp_path):
    base = save_tiny("olmoe", tmp_path / "base")
    (tmp_path / "train.txt").write_text("routing text for a tiny model, " * 40)
    run = tmp_path / "run"
    args = ["remoe", "finetune", str(base), "--data", str(tmp_path / "train.txt"), "--out", str(run), "--steps", "1",
            "--seq-len", "32", "--batch-size", "2", "--check-rows", "0", "--device", "cpu"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, TierwiseError) and "--overwrite" in str(again.exception)
    fp16 = CliRunner().invoke(app, [*args, "--overwrite", "--dtype", "fp16"])
    assert isinstance(fp16.exception, TierwiseError) and "bf16" in str(fp16.exception)
    bf16 = CliRunner().invoke(app, [*args, "--overwrite", "--dtype", "bf16", "--gradient-checkpointing"])
    assert bf16.exit_code == 0, bf16.output
    saved = json.loads((run / "config.json").read_text())
    assert (saved["dtype"], saved["device"], saved["gradient_checkpointing"]) == ("bf16", "cpu", True)
    assert load_router_delta(run / "router_delta.safetensors").meta["config"]["dtype"] == "bf16"


def test_bf16_keeps_fp32_gates(tmp_path, corpus):
    model = tiny_model("olmoe").to(torch.bfloat16)
    result = finetune(_cfg(tmp_path, steps=2, dtype="bf16"), model=model, corpus=corpus)
    assert all(adapter_for(model).router_weight(i).dtype == torch.float32 for i in adapter_for(model).moe_layers)
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in result.history)


def test_config_validation_and_presets():
    with pytest.raises(TierwiseError):
        config_with_preset("nope")
    with pytest.raises(TierwiseError, match="fp32 or bf16"):
        FinetuneConfig(dtype="fp8").validate()
    with pytest.raises(TierwiseError, match="loss scaling"):
        FinetuneConfig(dtype="fp16").validate()
    with pytest.raises(TierwiseError, match="only one"):
        FinetuneConfig(resume=True, overwrite=True).validate()
    assert FinetuneConfig.from_dict({"precision": "bf16"}).dtype == "bf16"  # config.json of earlier versions
    with pytest.raises(TierwiseError):
        FinetuneConfig(loss=LossWeights(kl=-1)).validate()
    demo = config_with_preset("demo", steps=7)
    assert demo.steps == 7 and demo.seq_len == config_with_preset("demo").seq_len
    cfg = FinetuneConfig(loss=LossWeights(lags=(1, 3)))
    assert FinetuneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
