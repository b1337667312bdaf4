"""Pretrain a small DeepSeek-V2-style MoE language model from scratch on the embedded corpus.

Real MoE models are pretrained with a load-balancing auxiliary loss; transformers' deepseek_v2 computes none
(its loss is CE only), so this loop adds a switch-style one from the router logits:
    aux = mean over MoE layers of  E · Σ_e f_e · P̄_e
with f_e the fraction of (token, slot) assignments routed to expert e (no gradient) and P̄_e the mean router
probability of e (gradient into the gates). aux = 1 for perfectly even routing.
The loop is nanoGPT-style: random windows of a token stream, AdamW, linear warm-up then cosine decay, grad clipping.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tierwise.common.errors import TierwiseError
from tierwise.common.progress import progress_task, track
from tierwise.remoe.models import embedded

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, so chat JSONL (OpenHermes/ShareGPT style) can be rendered with apply_chat_template.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class MoEModelConfig:
    """Shape of the embedded model: DeepSeek-V2-Lite's structure (MLA attention, dense layer 0, shared + fine-grained
    routed experts, softmax top-k routing) at about 1/1500 of its size."""

    hidden_size: int = 256
    num_hidden_layers: int = 5  # layer 0 dense, layers 1..4 MoE
    num_attention_heads: int = 4
    intermediate_size: int = 512  # the dense layer-0 MLP
    moe_intermediate_size: int = 64  # one routed expert
    n_routed_experts: int = 32
    n_shared_experts: int = 2
    num_experts_per_tok: int = 4
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    max_position_embeddings: int = 1024

    def to_hf(self, tokenizer):
        from transformers import AutoConfig

        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        return AutoConfig.for_model(
            "deepseek_v2",
            vocab_size=len(tokenizer),
            first_k_dense_replace=1,
            q_lora_rank=None,  # as in DeepSeek-V2-Lite
            topk_method="greedy",
            norm_topk_prob=False,
            routed_scaling_factor=1.0,
            tie_word_embeddings=True,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
            **asdict(self),
        )


@dataclass
class PretrainConfig:
    steps: int = 2500
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr · min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    aux_alpha: float = 0.01  # load-balancing loss coefficient
    seed: int = 0
    threads: int = 2
    eval_windows: int = 128  # held-out windows of seq_len tokens for the final report
    save_every: int = 0  # also write the checkpoint every N steps (0: only at the end), so others can load it early
    stop_after: int = 0  # end after N steps of the `steps`-long schedule (0: run it all); reproduces a snapshot
    model: MoEModelConfig = field(default_factory=MoEModelConfig)


# --- tokenizer -------------------------------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int = 8192):
    """Byte-level BPE trained on `texts`, wrapped as a transformers fast tokenizer with eos/bos/pad and ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
                                   model_max_length=MoEModelConfig.max_position_embeddings)


def load_tokenizer(path: Path | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or embedded.tokenizer_dir()))


def token_stream(tokenizer, documents: list[str]) -> torch.Tensor:
    """All documents as one int64 token stream, each followed by eos (the document boundary the model learns)."""
    eos = tokenizer.eos_token_id
    encodings = tokenizer.backend_tokenizer.encode_batch(documents, add_special_tokens=False)
    return torch.tensor(np.fromiter((t for enc in encodings for t in (*enc.ids, eos)), dtype=np.int64))


# --- losses and routing statistics ------------------------------------------------------------------------------------

def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> tuple[torch.Tensor, float]:
    """Switch-style balancing loss averaged over MoE layers, and the mean load CV (std/mean of f over experts)."""
    losses, cvs = [], []
    for z in router_logits:  # (tokens, E)
        probs = torch.softmax(z.float(), dim=-1)
        num_experts = probs.shape[-1]
        with torch.no_grad():
            idx = torch.topk(probs, top_k, dim=-1).indices
            f = torch.bincount(idx.flatten(), minlength=num_experts).float() / idx.numel()
        losses.append(num_experts * (f * probs.mean(dim=0)).sum())
        cvs.append((f.std(unbiased=False) / f.mean()).item())
    return torch.stack(losses).mean(), float(np.mean(cvs))


def routing_summary(trace) -> dict:
    """Held-out routing figures of a RoutingTrace via tierwise.remoe.analysis.metrics: EOR (§5.1), load CV, normalised entropy,
    effective experts and largest share (§5.4), and how many experts each MoE layer used at all."""
    from tierwise.remoe.analysis import metrics

    stats = metrics.load_stats(trace)
    return {
        "eor": metrics.eor(trace),
        "eor_per_layer": metrics.eor_per_layer(trace).tolist(),
        **{name: float(values.mean()) for name, values in stats.items()},
        "load_cv_per_layer": stats["load_cv"].tolist(),
        "experts_used_per_layer": (metrics.expert_load(trace) > 0).sum(axis=1).tolist(),
        "min_expert_share_per_layer": metrics.expert_load(trace).min(axis=1).tolist(),
    }


@torch.no_grad()
def evaluate(model, stream: torch.Tensor, seq_len: int, windows: int) -> dict:
    """Held-out perplexity over `windows` windows spread evenly over the stream (the held-out documents are in source
    order, so a prefix would be one source only), and the routing of the same tokens (teacher forced, one request
    per window)."""
    from tierwise.remoe.models.adapters import adapter_for
    from tierwise.remoe.models.routing import DECODE, RouterRecorder, TraceBuilder, trace_meta

    n = min(windows, (len(stream) - 1) // seq_len)
    starts = [i * (len(stream) - seq_len - 1) // max(1, n - 1) for i in range(n)]
    if n < 1:
        raise TierwiseError(f"held-out stream of {len(stream)} tokens is shorter than one window of {seq_len}")
    model.eval()
    adapter = adapter_for(model)
    builder = TraceBuilder(trace_meta(adapter, "pretrain", teacher_forced=True))
    nll = 0.0
    with RouterRecorder(adapter) as recorder:
        for start in track(starts, "held-out windows"):
            chunk = stream[start: start + seq_len + 1]
            logits = model(input_ids=chunk[None, :-1]).logits[0]
            nll += F.cross_entropy(logits.float(), chunk[1:], reduction="sum").item()
            builder.start_request()
            builder.add_call(*recorder.pop(), DECODE)
    model.train()
    loss = nll / (n * seq_len)
    return {"heldout_loss": loss, "heldout_ppl": math.exp(loss), "heldout_tokens": n * seq_len,
            **routing_summary(builder.build())}


# --- training ---------------------------------------------------------------------------------------------------------

def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr · cfg.min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def build_model(model_cfg: MoEModelConfig, tokenizer, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model_cfg.to_hf(tokenizer), dtype=torch.float32)


def save_checkpoint(model, tokenizer, out: Path) -> None:
    """HF checkpoint in bf16 storage with the routers kept in fp32 (they are tiny and fine-tuning starts from them)."""
    out.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:  # tied lm_head: stored once, as the embedding
            continue
        seen.add(t.data_ptr())
        state[name] = (t if name.endswith("mlp.gate.weight") else t.to(torch.bfloat16)).contiguous()
    model.save_pretrained(str(out), state_dict=state)
    tokenizer.save_pretrained(str(out))


def pretrain(cfg: PretrainConfig, out: Path, tokenizer=None, documents: dict[str, list[str]] | None = None) -> dict:
    """Train, evaluate on the held-out split, save the checkpoint + pretrain_report.json in `out`; returns the report.

    `documents` maps 'train'/'heldout' to lists of texts; default: the embedded corpus splits.
    """
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.seq_len < 2 or cfg.threads < 1:
        raise TierwiseError("pretrain needs steps ≥ 1, batch size ≥ 1, seq-len ≥ 2 and threads ≥ 1")
    if not 0 <= cfg.stop_after <= cfg.steps:
        raise TierwiseError(f"stop-after must be between 0 and steps ({cfg.steps}), got {cfg.stop_after}")
    run_steps = cfg.stop_after or cfg.steps
    torch.set_num_threads(cfg.threads)
    tokenizer = tokenizer or load_tokenizer()
    documents = documents or {split: embedded.corpus_documents(split) for split in embedded.SPLITS}
    train = token_stream(tokenizer, documents["train"])
    heldout = token_stream(tokenizer, documents["heldout"])
    if len(train) <= cfg.seq_len + 1:
        raise TierwiseError(f"training text has {len(train)} tokens, fewer than one sequence of {cfg.seq_len} + 1")
    model = build_model(cfg.model, tokenizer, cfg.seed)
    k = model.config.num_experts_per_tok

    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices decay; norms do not (nanoGPT)
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    offsets = torch.arange(cfg.seq_len + 1)
    history = []
    start = time.perf_counter()
    with progress_task("pretrain", run_steps) as (progress, task):
        for step in range(run_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            starts = torch.randint(0, len(train) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
            batch = train[starts[:, None] + offsets]  # (B, T+1)
            output = model(input_ids=batch[:, :-1], output_router_logits=True)
            ce = F.cross_entropy(output.logits.flatten(0, 1).float(), batch[:, 1:].flatten())
            aux, cv = load_balancing_loss(output.router_logits, k)
            loss = ce + cfg.aux_alpha * aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            history.append({"step": step, "ce": ce.item(), "aux": aux.item(), "cv": cv})
            progress.update(task, advance=1, info=f"ce {ce.item():.3f} aux {aux.item():.3f} cv {cv:.3f}")
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < run_steps:
                save_checkpoint(model, tokenizer, out)
                (out / "pretrain_history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    train_seconds = time.perf_counter() - start

    report = {
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": len(train),
        "heldout_tokens_total": len(heldout),
        "train_seconds": train_seconds,
        "final_train_ce": float(np.mean([h["ce"] for h in history[-20:]])),
        **evaluate(model, heldout, cfg.seq_len, cfg.eval_windows),
    }
    save_checkpoint(model, tokenizer, out)
    (out / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "pretrain_history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return report
