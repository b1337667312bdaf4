"""Router fine-tuning: only gates train, the reference gate, schedule, data order, exact resume, CE-only control."""

from __future__ import annotations

import json

import pytest
import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.corpus import pack
from tierwise.remoe.export.delta import load_router_delta
from tierwise.remoe.models.adapters import adapter_for, tiny_model
from tierwise.remoe.training.objective import LossWeights
from tierwise.remoe.training.finetune import FinetuneConfig, RouterFinetuner, config_with_preset, finetune, lr_at, step_rows


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
    assert all(not p.requires_grad for r in tuner.refs for p in r.parameters())


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


def test_bf16_precision_keeps_fp32_gates(tmp_path, corpus):
    model = tiny_model("olmoe").to(torch.bfloat16)
    result = finetune(_cfg(tmp_path, steps=2, precision="bf16"), model=model, corpus=corpus)
    assert all(adapter_for(model).router_weight(i).dtype == torch.float32 for i in adapter_for(model).moe_layers)
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in result.history)


def test_config_validation_and_presets():
    with pytest.raises(TierwiseError):
        config_with_preset("nope")
    with pytest.raises(TierwiseError):
        FinetuneConfig(precision="fp8").validate()
    with pytest.raises(TierwiseError):
        FinetuneConfig(loss=LossWeights(kl=-1)).validate()
    demo = config_with_preset("demo", steps=7)
    assert demo.steps == 7 and demo.seq_len == config_with_preset("demo").seq_len
    cfg = FinetuneConfig(loss=LossWeights(lags=(1, 3)))
    assert FinetuneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
