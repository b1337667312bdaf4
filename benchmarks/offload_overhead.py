"""Overhead of the offloading runtime with every expert resident (C = E) over the plain transformers model.

Both models decode the same prompts greedily in one process, interleaved request by request so that machine noise
hits both alike; the expert caches are filled once beforehand and never reset, so no expert is read during the
timed runs and what remains is the runtime's own work (hook dispatch, cache policy, index remap).
Prints the decode-time ratio offloaded / plain (target: <= 1.10).

    .venv/bin/python benchmarks/offload_overhead.py [--model embedded] [--tokens 48] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from tierwise.common.report import print_table
from tierwise.remoe.models.adapters import adapter_for, load_model
from tierwise.remoe.offload.compare import resolve_prompts
from tierwise.remoe.offload.generate import greedy_generate
from tierwise.remoe.offload.runtime import OffloadConfig, OffloadRuntime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", default=None, help="prompt file (default: the embedded prompts)")
    ap.add_argument("--limit", type=int, default=8, help="prompts per round")
    ap.add_argument("--tokens", type=int, default=48, help="tokens decoded per prompt")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    plain, tokenizer = load_model(args.model)
    offloaded, _ = load_model(args.model)
    num_experts = adapter_for(offloaded).num_experts
    prompts = [tokenizer(p)["input_ids"] for p in resolve_prompts(args.model, args.prompts, tokenizer, args.limit)]
    with tempfile.TemporaryDirectory() as store_dir:
        runtime = OffloadRuntime(offloaded, OffloadConfig(cache_experts=num_experts, storage="local", store_dir=store_dir))
        runtime.cache_all()
        reads = runtime.store.reads
        for model in (plain, offloaded):  # warm-up
            greedy_generate(model, prompts[0], 4)
        decode = {"plain": 0.0, "offloaded": 0.0}
        prefill = {"plain": 0.0, "offloaded": 0.0}
        same = True
        for _ in range(args.rounds):
            for ids in prompts:
                gens = {}
                for name, model in (("plain", plain), ("offloaded", offloaded)):
                    gens[name] = g = greedy_generate(model, ids, args.tokens)
                    prefill[name] += g.step_seconds[0]
                    decode[name] += sum(g.step_seconds[1:])
                same &= gens["plain"].tokens == gens["offloaded"].tokens
        assert runtime.store.reads == reads, "an expert was read during the timed runs"
        runtime.close()
    n_tokens = args.rounds * len(prompts) * (args.tokens - 1)
    print_table([{"model": name, "TPOT ms": 1e3 * decode[name] / n_tokens,
                  "TTFT ms": 1e3 * prefill[name] / (args.rounds * len(prompts))} for name in decode],
                title=f"{args.model}: C = E = {num_experts}, {args.rounds} rounds x {len(prompts)} prompts x {args.tokens} tokens")
    print(f"identical greedy tokens: {same}")
    print(f"decode overhead ratio (offloaded / plain): {decode['offloaded'] / decode['plain']:.3f}")
    print(f"prefill overhead ratio (offloaded / plain): {prefill['offloaded'] / prefill['plain']:.3f}")


if __name__ == "__main__":
    main()
