"""ReMoE router fine-tuning: train only the gates of an MoE model with the locality objective.

    model  : everything frozen except every MoE layer's gate W_g (aux load-balancing loss off)
    W_g⁰   : a frozen float32 copy of each original gate, applied to the *current* router input h_t
             (captured by a forward hook) to give P_t^ref for the trust term
    loss   : objective.remoe_loss (L_CE + λ_KL·L_Trust + α_s·L_Loc)
    optim  : AdamW on the gates, linear LR warm-up then cosine to `min_lr_ratio`·lr, grad clipping,
             gradient accumulation, fp32 or bf16 autocast, fixed seed

The loop is the same under `accelerate launch` (data parallel): each process takes its own slice of
every global batch, gradients are averaged by DDP, only the main process writes files. The model runs in
eval mode (no dropout), and the rows of each step are a pure function of (seed, step), so a run resumed
from a checkpoint ends with exactly the router weights of an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.corpus import PackedCorpus, load_corpus
from tierwise.remoe.export.delta import apply_router_delta, load_router_delta, save_router_delta
from tierwise.remoe.models.adapters import MoEAdapter, adapter_for, load_model
from tierwise.remoe.training.objective import LossWeights, TERMS, pair_mask, remoe_loss, router_log_probs

DELTA_NAME = "router_delta.safetensors"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (saved as config.json next to its outputs)."""

    model: str = "embedded"
    data: str = "embedded:train"
    out: str = "runs/remoe"
    loss: LossWeights = field(default_factory=LossWeights)
    ce_only: bool = False  # the paper's control: L_CE alone (overrides every λ)
    steps: int = 150  # optimizer steps
    seq_len: int = 256
    batch_size: int = 4  # sequences per micro-batch, per process
    grad_accum: int = 1
    lr: float = 3e-3
    lr_warmup: int = 10  # optimizer steps of linear LR warm-up
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: str = "fp32"  # 'fp32' | 'bf16' (model weights bf16, gates and objective fp32)
    seed: int = 0
    checkpoint_every: int = 50  # optimizer steps between checkpoints (0: only at the end)
    resume: bool = False
    stop_after: int | None = None  # end this session after this step (the run stays resumable)
    doc_separator: str | None = None  # split plain text into documents at this string
    max_docs: int | None = None

    def effective_weights(self) -> LossWeights:
        return self.loss.ce_only() if self.ce_only else self.loss

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loss"]["lags"] = list(self.loss.lags)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FinetuneConfig":
        loss = dict(d.get("loss", {}))
        if "lags" in loss:
            loss["lags"] = tuple(loss["lags"])
        return cls(**{**d, "loss": LossWeights(**loss)})

    def validate(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise TierwiseError(f"precision must be fp32 or bf16, got {self.precision!r}")
        for name in ("steps", "seq_len", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise TierwiseError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise TierwiseError("lr must be > 0 and min_lr_ratio within [0, 1]")
        w = self.loss
        if min(w.kl, w.spread, w.reuse, w.smooth, w.lag, w.ws) < 0 or w.window < 1 or w.warmup_steps < 0 or not w.lags:
            raise TierwiseError("loss weights must be >= 0, window >= 1, warm-up >= 0, and at least one lag")
        if any(d < 1 for d in w.lags):
            raise TierwiseError(f"lags must be positive, got {w.lags}")


# Presets: named overrides of the defaults. `demo` is a short run (≈ 40 s on one busy core on the embedded model)
# that still gives a large EOR gain; docs/results-remoe.md measures it.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "demo": dict(steps=40, seq_len=128, batch_size=4, lr=5e-3, lr_warmup=4, checkpoint_every=0, max_docs=400,
                 loss=LossWeights(warmup_steps=4)),
}


def lr_at(step: int, cfg: FinetuneConfig) -> float:
    """LR for optimizer step `step` (1-based): linear warm-up over lr_warmup steps, then cosine to min_lr_ratio·lr."""
    if step <= cfg.lr_warmup:
        return cfg.lr * step / cfg.lr_warmup
    span = max(1, cfg.steps - cfg.lr_warmup)
    progress = min(1.0, (step - cfg.lr_warmup) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class RouterCapture:
    """Forward hooks on every router: its input h (detached), logits (with grad) and selected experts, per layer."""

    def __init__(self, adapter: MoEAdapter):
        self.layers = adapter.moe_layers
        self.inputs: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.topk: list[torch.Tensor] = []
        self._handles = [adapter.router(i).register_forward_hook(self._hook) for i in self.layers]

    def _hook(self, module: nn.Module, args: tuple, output: tuple) -> None:
        h = args[0]
        self.inputs.append(h.detach().reshape(-1, h.shape[-1]))
        self.logits.append(output[0])
        self.topk.append(output[2])

    def clear(self) -> None:
        self.inputs, self.logits, self.topk = [], [], []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def frozen_reference_routers(adapter: MoEAdapter) -> list[nn.Module]:
    """Float32, gradient-free copies of the original routers (W_g⁰), one per MoE layer."""
    refs = []
    for i in adapter.moe_layers:
        ref = copy.deepcopy(adapter.router(i)).float()
        ref.requires_grad_(False)
        refs.append(ref)
    return refs


def selection_overlap(topk: torch.Tensor, doc_ids: torch.Tensor) -> tuple[float, int]:
    """Σ |E_t ∩ E_{t−1}| / K over same-document pairs, and the number of pairs (all layers): the running EOR's parts."""
    k = topk.shape[-1]
    same = (topk[:, :, 1:, :, None] == topk[:, :, :-1, None, :]).any(-1).sum(-1).float() / k  # (L, B, T−1)
    mask = pair_mask(doc_ids, 1).expand_as(same)
    return float(same[mask].sum()), int(mask.sum())


class RouterFinetuner:
    """Holds the model, its gates, the frozen references and the hooks; `loss(batch, step)` is one micro-batch."""

    def __init__(self, model: nn.Module, weights: LossWeights):
        self.model = model
        self.adapter = adapter_for(model)
        self.weights = weights
        model.config.output_router_logits = False  # no aux loss inside out.loss for models that have one
        if hasattr(model.config, "router_aux_loss_coef"):
            model.config.router_aux_loss_coef = 0.0
        model.requires_grad_(False)
        for i in self.adapter.moe_layers:
            self.adapter.router(i).float()  # fp32 master gates, also under bf16
            self.adapter.router_weight(i).requires_grad_(True)
        self.refs = frozen_reference_routers(self.adapter) if weights.kl > 0 or weights.spread > 0 else []
        self.capture = RouterCapture(self.adapter)

    def gate_parameters(self) -> list[nn.Parameter]:
        return [self.adapter.router_weight(i) for i in self.adapter.moe_layers]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float], tuple[float, int]]:
        """Forward one micro-batch through `model` (maybe DDP-wrapped); returns (loss, terms, overlap parts)."""
        doc_ids = batch["doc_ids"]
        b, t = doc_ids.shape
        self.capture.clear()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False)
        scoring = self.adapter.scoring
        logp = torch.stack([router_log_probs(z.view(b, t, -1), scoring) for z in self.capture.logits])
        topk = torch.stack([i.view(b, t, -1) for i in self.capture.topk])
        if self.refs:
            with torch.no_grad(), torch.autocast(doc_ids.device.type, enabled=False):
                logp_ref = torch.stack([router_log_probs(ref(h.float())[0].view(b, t, -1), scoring)
                                        for ref, h in zip(self.refs, self.capture.inputs)])
        else:
            logp_ref = logp.detach()
        loss, terms = remoe_loss(out.loss.float(), logp, logp_ref, topk, doc_ids, self.weights, self.weights.alpha(step))
        overlap = selection_overlap(topk.detach(), doc_ids)
        self.capture.clear()
        return loss, {k: float(v) for k, v in terms.items()}, overlap


def step_rows(step: int, micro: int, rank: int, cfg: FinetuneConfig, world: int, n_rows: int) -> torch.Tensor:
    """Row indices of one micro-batch: a seeded permutation per epoch, sliced by (step, micro, rank)."""
    per_step = cfg.batch_size * cfg.grad_accum * world
    start = (step - 1) * per_step + (micro * world + rank) * cfg.batch_size
    rows = []
    for g in range(start, start + cfg.batch_size):
        epoch, pos = divmod(g, n_rows)
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        rows.append(int(perm[pos]))
    return torch.tensor(rows)


def _save_checkpoint(out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: FinetuneConfig) -> None:
    tmp = out / (CHECKPOINT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_router_delta(model, tmp / DELTA_NAME, base_model=cfg.model, step=step)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "config": cfg.to_dict()}, tmp / "state.pt")
    final = out / CHECKPOINT_DIR
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a kill mid-save leaves the previous checkpoint or none, never a torn one


# Settings that may differ between a run and its resumption without changing the result.
_RESUME_FREE = {"resume", "stop_after", "checkpoint_every", "out"}


def _load_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: FinetuneConfig) -> int:
    ckpt = out / CHECKPOINT_DIR
    if not (ckpt / "state.pt").is_file():
        raise TierwiseError(f"--resume: no checkpoint in {ckpt}")
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    saved, now = state["config"], cfg.to_dict()
    changed = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
    if changed:
        raise TierwiseError(f"--resume: settings differ from the checkpointed run: {changed}")
    apply_router_delta(model, load_router_delta(ckpt / DELTA_NAME))
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log records of steps ≤ `step` (those a resumed run does not redo)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


@dataclass
class FinetuneResult:
    out: Path
    delta_path: Path | None
    steps_done: int
    finished: bool
    history: list[dict[str, float]]
    seconds: float


def finetune(cfg: FinetuneConfig, *, model: nn.Module | None = None, corpus: PackedCorpus | None = None,
             on_step: Callable[[int, dict[str, float]], None] | None = None) -> FinetuneResult:
    """Run (or resume) router fine-tuning. `model`/`corpus` may be passed in (tests, benchmarks) instead of loaded."""
    from accelerate import Accelerator

    from tierwise.common.progress import make_progress
    from rich.progress import TextColumn

    cfg.validate()
    # cpu=True without CUDA makes a multi-process launch (accelerate launch --multi_gpu / torchrun) use gloo on CPU.
    # bf16 is our own autocast below: AcceleratorState's precision is fixed once per process.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(cfg.seed)
    if model is None or corpus is None:
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        loaded, tokenizer = load_model(cfg.model, dtype=dtype)
        model = model if model is not None else loaded
        corpus = corpus if corpus is not None else load_corpus(cfg.data, tokenizer, cfg.seq_len,
                                                               doc_separator=cfg.doc_separator, max_docs=cfg.max_docs)
    model.eval()
    out = Path(cfg.out)
    tuner = RouterFinetuner(model, cfg.effective_weights())
    optimizer = torch.optim.AdamW(tuner.gate_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = _load_checkpoint(out, model, optimizer, cfg) if cfg.resume else 0
    log_path = out / "train_log.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        _truncate_log(log_path, start)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    last = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    history: list[dict[str, float]] = []
    overlap_sum, overlap_n = 0.0, 0
    t0 = time.perf_counter()
    progress = make_progress(TextColumn("{task.fields[info]}"))
    if not accelerator.is_main_process:
        progress.disable = True
    try:
        with progress:
            task = progress.add_task("router fine-tuning", total=cfg.steps, completed=start, info="")
            for step in range(start + 1, last + 1):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, cfg)
                sums: dict[str, float] = {}
                for micro in range(cfg.grad_accum):
                    rows = step_rows(step, micro, rank, cfg, world, len(corpus))
                    batch = {k: v.to(accelerator.device) for k, v in corpus.batch(rows).items()}
                    sync = accelerator.no_sync(ddp_model) if micro < cfg.grad_accum - 1 else nullcontext()
                    with sync, torch.autocast(accelerator.device.type, torch.bfloat16, enabled=cfg.precision == "bf16"):
                        loss, terms, (ov, n) = tuner.loss(ddp_model, batch, step)
                        accelerator.backward(loss / cfg.grad_accum)
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
                    overlap_sum, overlap_n = overlap_sum + ov, overlap_n + n
                grad_norm = accelerator.clip_grad_norm_(tuner.gate_parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                record = {"step": step, "lr": lr_at(step, cfg), **sums, "grad_norm": float(grad_norm),
                          "eor_running": overlap_sum / max(1, overlap_n)}
                history.append(record)
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    info = " ".join(f"{k} {sums[k]:.3f}" for k in ("ce", *TERMS) if k in sums)
                    progress.update(task, advance=1, info=f"{info} eor {record['eor_running']:.3f}")
                if on_step is not None:
                    on_step(step, record)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    accelerator.wait_for_everyone()
                    if accelerator.is_main_process:
                        _save_checkpoint(out, step, accelerator.unwrap_model(ddp_model), optimizer, cfg)
    finally:
        tuner.capture.remove()
    accelerator.wait_for_everyone()
    finished = last == cfg.steps
    delta_path = None
    full_state = accelerator.get_state_dict(ddp_model) if finished else None  # every rank joins the FSDP gather
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(ddp_model)
        if finished:
            delta_path = save_router_delta(unwrapped, out / DELTA_NAME, state_dict=full_state, base_model=cfg.model,
                                           step=last, config=cfg.to_dict())
        elif last > start:
            _save_checkpoint(out, last, unwrapped, optimizer, cfg)
    return FinetuneResult(out, delta_path, last, finished, history, time.perf_counter() - t0)


def config_with_preset(preset: str, **overrides: Any) -> FinetuneConfig:
    """FinetuneConfig from a named preset plus explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise TierwiseError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = replace(FinetuneConfig(), **PRESETS[preset])
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
