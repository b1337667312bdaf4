"""Throughput of a ReMoE fine-tuning step (all locality terms + trust region) vs a plain forward+backward.

Both steps train the same parameters (the gates only, everything else frozen) on the same packed batches with the
same optimizer step; the plain step uses L_CE alone and no router hooks. Steps alternate A/B so that machine noise
hits both alike. Prints tokens/s of each and the ratio remoe / plain (target: >= 0.8, i.e. overhead <= 25%).

    .venv/bin/python benchmarks/finetune_throughput.py [--model embedded] [--steps 12] [--seq-len 256] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from tierwise.common.report import print_table
from tierwise.remoe.models.corpus import pack
from tierwise.remoe.models.adapters import load_model, tiny_model
from tierwise.remoe.training.objective import LossWeights
from tierwise.remoe.training.finetune import RouterFinetuner


def _model(name: str):
    if name.startswith("tiny:"):
        return tiny_model(name.split(":", 1)[1])
    return load_model(name)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded", help="checkpoint, 'embedded', or tiny:ARCH")
    ap.add_argument("--steps", type=int, default=12, help="timed steps of each kind")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = _model(args.model).eval()
    tuner = RouterFinetuner(model, LossWeights(warmup_steps=0))  # freezes all but the gates; hooks on the routers
    optimizer = torch.optim.AdamW(tuner.gate_parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    docs = [torch.randint(0, vocab, (int(n),), generator=g).tolist()
            for n in torch.randint(args.seq_len // 4, 2 * args.seq_len, (8 * args.batch_size,), generator=g)]
    corpus = pack(docs, args.seq_len)
    batches = [corpus.batch(range(i, i + args.batch_size)) for i in range(0, len(corpus) - args.batch_size + 1,
                                                                          args.batch_size)]

    def remoe_step(batch):
        loss, _, _ = tuner.loss(model, batch, step=1)
        loss.backward()

    def plain_step(batch):
        tuner.capture.clear()  # the hooks still run; their stores are dropped at once
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False)
        out.loss.backward()

    def timed(step_fn, batch) -> float:
        t0 = time.perf_counter()
        step_fn(batch)
        torch.nn.utils.clip_grad_norm_(tuner.gate_parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    seconds = {"plain": 0.0, "remoe": 0.0}
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        order = (("plain", plain_step), ("remoe", remoe_step)) if i % 2 == 0 else (("remoe", remoe_step), ("plain", plain_step))
        for name, fn in order:
            dt = timed(fn, batch)
            if i >= args.warmup:
                seconds[name] += dt
    tokens = args.steps * args.batch_size * args.seq_len
    rows = [{"step": name, "tokens_per_s": tokens / s, "ms_per_step": 1000 * s / args.steps} for name, s in seconds.items()]
    print_table(rows, title=f"router fine-tuning throughput, {args.model}, batch {args.batch_size}x{args.seq_len}")
    ratio = seconds["plain"] / seconds["remoe"]
    print(f"ratio remoe/plain tokens/s = {ratio:.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
