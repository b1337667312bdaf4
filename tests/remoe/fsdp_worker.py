"""One process of the FSDP test in test_accelerate.py: `finetune` with its model sharded by torch FSDP2.

accelerate (1.16) turns FSDP on only for accelerator devices: on a CPU-only machine a multi-process launch is
MULTI_CPU (gloo), and `Accelerator.prepare` would wrap the model in DDP. So `finetune`'s `prepare` here does what
accelerate's FSDP2 plugin does under configs/accelerate/fsdp2-8gpu.yaml (TRANSFORMER_BASED_WRAP): fully_shard each
decoder layer, then the root, and point the optimizer at the sharded parameters. Everything else (the fine-tuner,
the gathers for checkpoints and the delta, resume) is the package's own code.

usage: accelerate launch --multi_gpu --num_processes 2 fsdp_worker.py BASE DATA OUT SHARDS_DIR
           [--stop-after N] [--resume] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from tierwise.remoe.models.adapters import decoder_layers
from tierwise.remoe.training.finetune import FinetuneConfig, finetune
from tierwise.remoe.training.objective import LossWeights

# One global batch of 4 rows per step: 2 per process here, 4 in the single-process run it is compared with.
SETTINGS = dict(seq_len=32, batch_size=2, lr=1e-2, lr_warmup=1, checkpoint_every=2,
                loss=LossWeights(warmup_steps=1, window=8), device="cpu")


def fsdp2_prepare(shards_dir: Path):
    def prepare(accelerator, model, optimizer):
        names = {id(p): n for n, p in model.named_parameters()}
        groups = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
        mesh = init_device_mesh("cpu", (accelerator.num_processes,))
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        params = dict(model.named_parameters())  # FSDP2 replaced every parameter by a sharded one, same names
        for group, group_names in zip(optimizer.param_groups, groups):
            group["params"] = [params[n] for n in group_names]
        experts = {n: p for n, p in params.items() if ".experts." in n}
        evidence = {"held": {n: list(p.to_local().shape) for n, p in experts.items()},
                    "frozen": all(not p.requires_grad for p in experts.values()),
                    "dtypes": sorted({str(p.dtype) for p in experts.values()}),
                    "gate_dtypes": sorted({str(p.dtype) for n, p in params.items() if n.endswith("mlp.gate.weight")})}
        shards_dir.mkdir(parents=True, exist_ok=True)
        (shards_dir / f"rank{accelerator.process_index}.json").write_text(json.dumps(evidence))
        return model, optimizer

    return prepare


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("base", "data", "out", "shards"):
        ap.add_argument(name)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--stop-after", type=int)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--dtype", default="fp32")
    args = ap.parse_args()
    cfg = FinetuneConfig(model=args.base, data=args.data, out=args.out, steps=args.steps, stop_after=args.stop_after,
                         resume=args.resume, dtype=args.dtype, **SETTINGS)
    torch.set_num_threads(1)
    finetune(cfg, prepare=fsdp2_prepare(Path(args.shards)))


if __name__ == "__main__":
    main()
