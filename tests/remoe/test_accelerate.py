"""`tierwise remoe finetune` under `accelerate launch` with 2 CPU processes (gloo): data parallel, and sharded (FSDP2).

On a machine without CUDA the fine-tuner asks Accelerate for CPU, so `--multi_gpu --num_processes 2` (torchrun
under the hood) gives two gloo processes; `--cpu` alone would start a single process (multi-CPU there means mpirun).
Accelerate turns FSDP on only for accelerator devices, so the FSDP test launches fsdp_worker.py, which runs
`finetune` with torch's FSDP2 sharding in place of `Accelerator.prepare` (docs/finetune.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tierwise.remoe.models.corpus import load_corpus
from tierwise.remoe.export.delta import load_router_delta
from tierwise.remoe.models.adapters import load_model, save_tiny, tiny_model, tiny_tokenizer
from tierwise.remoe.training.finetune import FinetuneConfig, finetune
from tierwise.remoe.training.objective import LossWeights

SEQ = 32
WORKER = Path(__file__).with_name("fsdp_worker.py")


def _launch(*args: str) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate launcher not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TIERWISE_NO_PROGRESS": "1"}
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def _base_and_data(tmp_path: Path) -> tuple[Path, Path]:
    base = save_tiny("olmoe", tmp_path / "base")
    text = "".join(chr(97 + (i * 7) % 26) for i in range(SEQ * 12 - 1))  # byte tokens + EOS: exactly 12 full rows
    data = tmp_path / "train.txt"
    data.write_text(text)
    return base, data


def _single_process(base: Path, data: Path, out: Path, steps: int) -> dict[str, torch.Tensor]:
    """The same run in one process with the global batch (4 rows per step)."""
    corpus = load_corpus(str(data), tiny_tokenizer(), SEQ)
    assert len(corpus) == 12 and corpus.num_tokens == 12 * SEQ
    cfg = FinetuneConfig(model=str(base), data=str(data), out=str(out), steps=steps, seq_len=SEQ, batch_size=4,
                         lr=1e-2, lr_warmup=1, checkpoint_every=2, loss=LossWeights(warmup_steps=1, window=8))
    tensors = load_router_delta(finetune(cfg, model=load_model(base)[0], corpus=corpus).delta_path).tensors
    original = tiny_model("olmoe").state_dict()
    assert all(not torch.equal(w, original[name]) for name, w in tensors.items())  # it trained
    return tensors


@pytest.mark.slow
def test_two_process_data_parallel_equals_one_process_with_the_global_batch(tmp_path):
    base, data = _base_and_data(tmp_path)
    _launch("-m", "tierwise.cli", "remoe", "finetune", str(base), "--out", str(tmp_path / "ddp"), "--batch-size", "2",
            "--data", str(data), "--steps", "3", "--seq-len", str(SEQ), "--lr", "1e-2", "--lr-warmup", "1",
            "--t-warm", "1", "--window", "8", "--checkpoint-every", "2", "--check-rows", "0")
    ddp = load_router_delta(tmp_path / "ddp" / "router_delta.safetensors").tensors
    single = _single_process(base, data, tmp_path / "one", steps=3)
    for name, w in single.items():
        assert torch.allclose(ddp[name], w, rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_fsdp_router_only_sharded_experts_resumed_equals_one_process(tmp_path):
    """Two processes shard every layer (FSDP2): each holds half of every frozen expert tensor, only the gates train.
    The run stops after step 2 (a checkpoint gathered from the shards) and a new launch resumes it."""
    base, data = _base_and_data(tmp_path)
    out, shards = tmp_path / "fsdp", tmp_path / "shards"
    _launch(str(WORKER), str(base), str(data), str(out), str(shards / "first"), "--stop-after", "2")
    assert (out / "checkpoint" / "state.pt").is_file() and not (out / "router_delta.safetensors").exists()
    _launch(str(WORKER), str(base), str(data), str(out), str(shards / "resumed"), "--resume")
    sharded = load_router_delta(out / "router_delta.safetensors").tensors
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    num_experts = tiny_model("olmoe").config.num_experts
    for rank in (0, 1):
        evidence = json.loads((shards / "resumed" / f"rank{rank}.json").read_text())
        assert evidence["frozen"] and evidence["held"]
        assert all(shape[0] == num_experts // 2 for shape in evidence["held"].values())
    single = _single_process(base, data, tmp_path / "one", steps=4)
    assert sharded.keys() == single.keys()
    for name, w in single.items():
        assert torch.allclose(sharded[name], w, rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_fsdp_keeps_fp32_gates_beside_bf16_frozen_weights(tmp_path):
    """The DeepSeek-V2-Lite set-up: bf16 weights sharded, fp32 gates (FSDP2 needs one dtype among trainable ones)."""
    base, data = _base_and_data(tmp_path)
    _launch(str(WORKER), str(base), str(data), str(tmp_path / "bf16"), str(tmp_path / "shards"), "--steps", "2",
            "--dtype", "bf16")
    evidence = json.loads((tmp_path / "shards" / "rank0.json").read_text())
    assert evidence["dtypes"] == ["torch.bfloat16"] and evidence["gate_dtypes"] == ["torch.float32"]
    delta = load_router_delta(tmp_path / "bf16" / "router_delta.safetensors")
    original = tiny_model("olmoe").state_dict()
    assert delta.meta["config"]["dtype"] == "bf16"
    assert all(t.dtype == torch.float32 and not torch.equal(t, original[n]) for n, t in delta.tensors.items())


def test_an_fsdp_launch_without_gpus_is_refused_not_run_as_data_parallel(tmp_path, monkeypatch):
    """`accelerate launch --config_file <FSDP config>` on CPUs sets ACCELERATE_USE_FSDP, yet accelerate would run DDP."""
    from tierwise.common.errors import TierwiseError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cfg = FinetuneConfig(model="tiny", out=str(tmp_path / "run"), steps=1, device="cpu")
    with pytest.raises(TierwiseError, match="FSDP only on GPUs"):
        finetune(cfg, model=tiny_model("olmoe"), corpus=None)
    assert not (tmp_path / "run").exists()


def test_the_shipped_fsdp_config_is_fsdp2_wrapping_deepseek_v2_decoder_layers():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    from tierwise.remoe.models.adapters import decoder_layers

    path = Path(__file__).parents[2] / "configs" / "accelerate" / "fsdp2-8gpu.yaml"
    config = load_config_from_file(str(path))
    fsdp = config.fsdp_config
    assert config.distributed_type == DistributedType.FSDP and config.mixed_precision == "no"
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_cpu_ram_efficient_loading"] is False
    layer = decoder_layers(tiny_model("deepseek_v2"))[0]
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == type(layer).__name__
