"""`tierwise remoe finetune` unchanged under `accelerate launch`: 2 CPU processes (gloo), data parallel.

On a machine without CUDA the fine-tuner asks Accelerate for CPU, so `--multi_gpu --num_processes 2` (torchrun
under the hood) gives two gloo processes; `--cpu` alone would start a single process (multi-CPU there means mpirun).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tierwise.remoe.models.corpus import load_corpus
from tierwise.remoe.export.delta import load_router_delta
from tierwise.remoe.models.adapters import save_tiny, tiny_model, tiny_tokenizer
from tierwise.remoe.training.finetune import FinetuneConfig, finetune

SEQ = 32


@pytest.mark.slow
def test_two_process_data_parallel_equals_one_process_with_the_global_batch(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate launcher not installed")
    base = save_tiny("olmoe", tmp_path / "base")
    text = "".join(chr(97 + (i * 7) % 26) for i in range(SEQ * 12 - 1))  # byte tokens + EOS: exactly 12 full rows
    data = tmp_path / "train.txt"
    data.write_text(text)
    args = ["--data", str(data), "--steps", "3", "--seq-len", str(SEQ), "--lr", "1e-2", "--lr-warmup", "1",
            "--t-warm", "1", "--window", "8", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TIERWISE_NO_PROGRESS": "1"}
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tierwise.cli",
           "remoe", "finetune", str(base), "--out", str(tmp_path / "ddp"), "--batch-size", "2", *args]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ddp = load_router_delta(tmp_path / "ddp" / "router_delta.safetensors").tensors

    corpus = load_corpus(str(data), tiny_tokenizer(), SEQ)
    assert len(corpus) == 12 and corpus.num_tokens == 12 * SEQ
    cfg = FinetuneConfig(model=str(base), data=str(data), out=str(tmp_path / "one"), steps=3, seq_len=SEQ,
                         batch_size=4, lr=1e-2, lr_warmup=1, checkpoint_every=2)
    cfg.loss.warmup_steps, cfg.loss.window = 1, 8
    single = load_router_delta(finetune(cfg, model=tiny_model("olmoe"), corpus=corpus).delta_path).tensors
    original = tiny_model("olmoe").state_dict()
    for name, w in single.items():
        assert not torch.equal(w, original[name])  # it trained
        assert torch.allclose(ddp[name], w, rtol=1e-4, atol=1e-6), name
