"""ReMoE router fine-tuning: train only the gates of an MoE model with the locality objective.

    model  : everything frozen except every MoE layer's gate W_g (aux load-balancing loss off)
    W_g⁰   : a frozen float32 copy of each original gate, applied to the *current* router input h_t
             (captured by a forward hook) to give P_t^ref for the trust term
    loss   : objective.remoe_loss (L_CE + λ_KL·L_Trust + α_s·L_Loc)
    optim  : AdamW on the gates, linear LR warm-up then cosine to `min_lr_ratio`·lr, grad clipping,
             gradient accumulation, fp32 or bf16 autocast, optional gradient checkpointing, fixed seed

The loop is the same under `accelerate launch`: each process takes its own slice of every global batch,
gradients are averaged by DDP (or reduce-scattered by FSDP2, which also shards the frozen weights), only the
main process writes files. Gates and optimizer state are gathered by parameter name for checkpoints, so the
same files serve one process, DDP and FSDP. The model runs in eval mode (no dropout), and the rows of each
step are a pure function of (seed, step), so a run resumed from a checkpoint ends with exactly the router
weights of an uninterrupted run.
"""

from __future__ import annotations

import atexit
import copy
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tierwise.common.errors import TierwiseError
from tierwise.common.results import Result
from tierwise.remoe.models.corpus import PackedCorpus, load_corpus
from tierwise.remoe.export.delta import RouterDelta, apply_router_delta, delta_meta, load_router_delta, write_router_delta
from tierwise.remoe.models.adapters import MoEAdapter, adapter_for, decoder_layers, load_model
from tierwise.remoe.models.placement import resolve_device, resolve_dtype
from tierwise.remoe.training.objective import LossWeights, TERMS, pair_mask, remoe_loss, router_log_probs

DELTA_NAME = "router_delta.safetensors"
CHECKPOINT_DIR = "checkpoint"
LOG_NAME = "train_log.jsonl"
CONFIG_NAME = "config.json"
CHECKPOINT_FORMAT = 2  # 2: gates and optimizer state gathered by parameter name (one process, DDP and FSDP alike)


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (saved as config.json next to its outputs)."""

    model: str = "embedded"
    data: str = "embedded:train"
    out: str = "runs/remoe"
    loss: LossWeights = field(default_factory=LossWeights)
    ce_only: bool = False  # the paper's control: L_CE alone (overrides every λ)
    steps: int = 600  # optimizer steps (the sweep's chosen length; the paper: 2000)
    seq_len: int = 256
    batch_size: int = 4  # sequences per micro-batch, per process
    grad_accum: int = 1
    lr: float = 3e-3
    lr_warmup: int = 10  # optimizer steps of linear LR warm-up
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    dtype: str = "fp32"  # storage of the frozen weights and autocast compute: 'fp32' | 'bf16' (gates, W_g⁰, loss: fp32)
    device: str = "auto"  # 'auto' (cuda when available) | 'cpu' | 'cuda' | 'cuda:N' | 'mps'; per process under a launcher
    gradient_checkpointing: bool = False  # recompute each decoder layer in the backward pass (activation memory)
    seed: int = 0
    checkpoint_every: int = 50  # optimizer steps between checkpoints (0: only at the end)
    resume: bool = False
    overwrite: bool = False  # replace the outputs of an earlier run in `out` (without it, a non-empty `out` is refused)
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
        d = dict(d)
        if "precision" in d:  # config.json written before --precision became --dtype
            d["dtype"] = d.pop("precision")
        loss = dict(d.get("loss", {}))
        if "lags" in loss:
            loss["lags"] = tuple(loss["lags"])
        return cls(**{**d, "loss": LossWeights(**loss)})

    def validate(self) -> None:
        if self.dtype == "fp16":
            raise TierwiseError("fine-tuning in fp16 is not supported: gradients through the frozen fp16 model underflow "
                                "without loss scaling, which the fine-tuner does not do; use --dtype bf16 (or fp32)")
        if self.dtype not in ("fp32", "bf16"):
            raise TierwiseError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.resume and self.overwrite:
            raise TierwiseError("--resume continues the run in --out and --overwrite replaces it; pass only one")
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
    "demo": dict(steps=40, seq_len=128, batch_size=4, lr=5e-3, lr_warmup=4, checkpoint_every=0, max_docs=400),
    # The defaults before the sweep of docs/results-remoe.md: the most EOR, bought by concentrating the routing on a
    # third of the experts (entropy −30 %, effective experts −63 % on the embedded model). Kept for comparison.
    "aggressive": dict(steps=150, loss=LossWeights(kl=1.0, reuse=0.5, smooth=0.1, lag=0.1, ws=0.25, spread=0.0,
                                                   window=16, warmup_steps=10)),
}


def lr_at(step: int, cfg: FinetuneConfig) -> float:
    """LR for optimizer step `step` (1-based): linear warm-up over lr_warmup steps, then cosine to min_lr_ratio·lr."""
    if step <= cfg.lr_warmup:
        return cfg.lr * step / cfg.lr_warmup
    span = max(1, cfg.steps - cfg.lr_warmup)
    progress = min(1.0, (step - cfg.lr_warmup) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class RouterCapture:
    """Forward hooks on every router: its input h (detached), logits (with grad) and selected experts, per layer.

    Calls made while `paused` are ignored: with gradient checkpointing the backward pass runs every layer's forward
    again, and those repeated router calls must not pile up.
    """

    def __init__(self, adapter: MoEAdapter):
        self.layers = adapter.moe_layers
        self.inputs: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.topk: list[torch.Tensor] = []
        self.paused = False
        self._handles = [adapter.router(i).register_forward_hook(self._hook) for i in self.layers]

    def _hook(self, module: nn.Module, args: tuple, output: tuple) -> None:
        if self.paused:
            return
        h = args[0]
        self.inputs.append(h.detach().reshape(-1, h.shape[-1]))
        self.logits.append(output[0])
        self.topk.append(output[2])

    def clear(self) -> None:
        self.inputs, self.logits, self.topk = [], [], []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class ReferenceRouters(nn.ModuleList):
    """W_g⁰: one frozen float32 router per MoE layer (`frozen_reference_routers`).

    Not part of the model, so the model's state dict, DDP buffers and FSDP shards stay its own. It follows the
    router input instead: `log_probs` moves it to h's device on first use, so a model placed or wrapped after
    the fine-tuner was built (accelerate's prepare, FSDP) needs nothing more. Whatever the model's dtype, it
    stays float32, as the objective's reference is (remoe.md §2.1).
    """

    @property
    def device(self) -> torch.device:
        return self[0].weight.device

    def log_probs(self, inputs: list[torch.Tensor], b: int, t: int, scoring: str) -> torch.Tensor:
        """log P^ref (L, B, T, E) from each MoE layer's router input h (B·T, H); float32 when autocast is off."""
        device = inputs[0].device
        if self.device != device:
            if self.device.type == "meta":
                raise TierwiseError("the reference routers W_g⁰ were copied from a model on the meta device and hold no "
                                    "weights; build the fine-tuner on the loaded model (under accelerate FSDP: "
                                    "fsdp_cpu_ram_efficient_loading: false)")
            self.to(device)
        with torch.no_grad():
            return torch.stack([router_log_probs(ref(h.float())[0].view(b, t, -1), scoring)
                                for ref, h in zip(self, inputs)])


def frozen_reference_routers(adapter: MoEAdapter) -> ReferenceRouters:
    """Float32, gradient-free copies of the original routers (W_g⁰), made on the device the routers are on."""
    refs = ReferenceRouters(copy.deepcopy(adapter.router(i)).float() for i in adapter.moe_layers)
    refs.requires_grad_(False)
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
        self.names = self.adapter.router_param_names()
        self.meta = delta_meta(model)  # read now: the facts of a model sharded later are not readable on one process
        self.refs = frozen_reference_routers(self.adapter) if weights.kl > 0 or weights.spread > 0 else None
        self.capture = RouterCapture(self.adapter)

    def gate_parameters(self) -> list[nn.Parameter]:
        return [self.adapter.router_weight(i) for i in self.adapter.moe_layers]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float], tuple[float, int]]:
        """Forward one micro-batch through `model` (maybe DDP-wrapped); returns (loss, terms, overlap parts)."""
        doc_ids = batch["doc_ids"]
        b, t = doc_ids.shape
        self.capture.clear()
        self.capture.paused = False
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False)
        self.capture.paused = True  # the backward pass may run the routers again (gradient checkpointing)
        scoring = self.adapter.scoring
        logp = torch.stack([router_log_probs(z.view(b, t, -1), scoring) for z in self.capture.logits])
        topk = torch.stack([i.view(b, t, -1) for i in self.capture.topk])
        if self.refs is not None:
            with torch.autocast(doc_ids.device.type, enabled=False):  # P^ref in float32, also under bf16 autocast
                logp_ref = self.refs.log_probs(self.capture.inputs, b, t, scoring)
        else:
            logp_ref = logp.detach()
        loss, terms = remoe_loss(out.loss.float(), logp, logp_ref, topk, doc_ids, self.weights, self.weights.alpha(step))
        overlap = selection_overlap(topk.detach(), doc_ids)
        self.capture.clear()
        return loss, {k: float(v) for k, v in terms.items()}, overlap


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Keep only each decoder layer's input in the forward pass and recompute the layer in the backward pass.

    Non-reentrant: a reentrant checkpoint runs the forward under no_grad, so the router logits the hooks capture
    would carry no graph and the gates, the only trainable weights, would get no gradient. transformers checkpoints
    a layer only while `layer.training` is set; only that flag is set, so the modules inside stay in eval mode (no
    dropout, no router jitter) and the run stays deterministic.
    """
    model.activation_checkpointing_enable({"use_reentrant": False})
    for layer in decoder_layers(model):
        layer.training = True


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


def gate_state(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The full gate matrices `names` on the main process (empty elsewhere), gathered from DDP replicas or FSDP
    shards alike; only trainable weights move. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                 ignore_frozen_params=True))
    # a tied output embedding (tie_word_embeddings) comes along under its second name although it is frozen
    return {name: t for name, t in state.items() if name in names}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full AdamW state keyed by parameter name on the main process (empty elsewhere). Every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full `optimizer_state` on every process; under FSDP each keeps its own shard of it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _save_checkpoint(out: Path, step: int, tuner: RouterFinetuner, model: nn.Module, optimizer: torch.optim.Optimizer,
                     cfg: FinetuneConfig, main: bool) -> None:
    """Every process joins the gathers; the main process writes."""
    gates, state = gate_state(model, tuner.names), optimizer_state(model, optimizer)
    if not main:
        return
    tmp = out / (CHECKPOINT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_router_delta(gates, {**tuner.meta, "base_model": cfg.model, "step": step}, tmp / DELTA_NAME)
    torch.save({"format": CHECKPOINT_FORMAT, "step": step, "optimizer": state, "config": cfg.to_dict()}, tmp / "state.pt")
    final = out / CHECKPOINT_DIR
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a kill mid-save leaves the previous checkpoint or none, never a torn one


# Settings that may differ between a run and its resumption without changing the result.
_RESUME_FREE = {"resume", "stop_after", "checkpoint_every", "out", "device", "gradient_checkpointing", "overwrite"}


def _read_checkpoint(out: Path, cfg: FinetuneConfig) -> tuple[int, RouterDelta, dict[str, Any]]:
    """(step, gates, optimizer state) of the checkpoint in `out`, after checking it belongs to this run."""
    ckpt = out / CHECKPOINT_DIR
    if not (ckpt / "state.pt").is_file():
        raise TierwiseError(f"--resume: no checkpoint in {ckpt}")
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TierwiseError(f"--resume: {ckpt} was written by an older tierwise (checkpoint format "
                            f"{state.get('format', 1)}, this one reads {CHECKPOINT_FORMAT}); start again with --overwrite")
    saved, now = FinetuneConfig.from_dict(state["config"]).to_dict(), cfg.to_dict()
    changed = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
    if changed:
        raise TierwiseError(f"--resume: settings differ from the checkpointed run: {changed}")
    return int(state["step"]), load_router_delta(ckpt / DELTA_NAME), state["optimizer"]


def _check_out(out: Path, cfg: FinetuneConfig) -> None:
    """No silent loss: the outputs of an earlier run are continued (--resume) or replaced (--overwrite), never mixed."""
    if cfg.resume or cfg.overwrite or not out.exists() or not any(out.iterdir()):
        return
    raise TierwiseError(f"--out {out} is not empty; pass --resume to continue the run in it, or --overwrite to "
                        "replace its outputs")


def _clear_outputs(out: Path) -> None:
    """--overwrite: remove what an earlier run wrote to `out` (other files stay)."""
    for name in (DELTA_NAME, CONFIG_NAME, LOG_NAME, CHECKPOINT_DIR, CHECKPOINT_DIR + ".tmp"):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _accelerator(device_name: str):
    """An Accelerator on the requested kind of device; under a launcher each process takes its own device of it."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # one process on GPU N: accelerate puts tensors on the current CUDA device
    # cpu=True also makes a multi-process launch (accelerate launch --multi_gpu / torchrun) use gloo on the CPU.
    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.device.type != device.type:
        raise TierwiseError(f"--device {device_name}: accelerate chose {accelerator.device} for this process")
    if device.index is not None and accelerator.num_processes > 1:
        raise TierwiseError(f"--device {device_name} names one device, but {accelerator.num_processes} processes were "
                            f"launched (each takes its own): pass --device {device.type}")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and accelerator.distributed_type != DistributedType.FSDP:
        raise TierwiseError(f"an FSDP launch config was given, but accelerate runs FSDP only on GPUs (and other "
                            f"accelerators): on {accelerator.device} it would quietly run {accelerator.distributed_type} "
                            "with a full model copy per process; launch without the FSDP config")
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise TierwiseError("FSDP1 is not supported: it flattens each wrapped layer into one tensor of one dtype (no fp32 "
                            "gates beside bf16 weights) and cannot clip the gates alone; set fsdp_version: 2 (see "
                            "configs/accelerate/)")
    if accelerator.num_processes > 1:
        # A gloo process group left alive at interpreter exit can abort the process (SIGABRT from its worker threads).
        atexit.register(accelerator.state.destroy_process_group)
    return accelerator


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log records of steps ≤ `step` (those a resumed run does not redo)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


@dataclass
class FinetuneResult(Result):
    """The run (`out`, `delta_path`, `steps_done`, `finished`, `history`: one record per step, `seconds`); the API
    adds its `config` (FinetuneConfig as a dict) and `check`: both routers on a few rows of the training data (an
    EvalResult, or None). `to_dataframe()`: the history."""

    out: Path
    delta_path: Path | None
    steps_done: int
    finished: bool
    history: list[dict[str, float]]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    check: Any = None
    _rows = "history"


def finetune(cfg: FinetuneConfig, *, model: nn.Module | None = None, corpus: PackedCorpus | None = None,
             on_step: Callable[[int, dict[str, float]], None] | None = None,
             prepare: Callable[[Any, nn.Module, torch.optim.Optimizer], tuple[nn.Module, Any]] | None = None,
             ) -> FinetuneResult:
    """Run (or resume) router fine-tuning. `model`/`corpus` may be passed in (tests, benchmarks) instead of loaded.

    `prepare(accelerator, model, optimizer)` places and wraps the model and its optimizer for the processes;
    default `accelerator.prepare` (DDP, or FSDP2 under an accelerate FSDP config). The FSDP test passes torch's
    own sharding here, because accelerate turns FSDP on only for GPUs (docs/finetune.md).
    """
    from tierwise.common.progress import make_progress
    from rich.progress import TextColumn

    cfg.validate()
    out = Path(cfg.out)
    _check_out(out, cfg)  # before the accelerator, whose start waits for every process: none sees another's new files
    # bf16 is our own autocast below: AcceleratorState's precision is fixed once per process.
    accelerator = _accelerator(cfg.device)
    main = accelerator.is_main_process
    torch.manual_seed(cfg.seed)
    if model is None or corpus is None:
        loaded, tokenizer = load_model(cfg.model, dtype=resolve_dtype(cfg.dtype))
        model = model if model is not None else loaded
        corpus = corpus if corpus is not None else load_corpus(cfg.data, tokenizer, cfg.seq_len,
                                                               doc_separator=cfg.doc_separator, max_docs=cfg.max_docs)
    model.eval()
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    tuner = RouterFinetuner(model, cfg.effective_weights())
    adamw = torch.optim.AdamW(tuner.gate_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, resumed_state = 0, None
    if cfg.resume:
        start, gates, resumed_state = _read_checkpoint(out, cfg)
        apply_router_delta(model, gates)  # every process, before any sharding
    log_path = out / LOG_NAME
    if main:
        if cfg.overwrite:
            _clear_outputs(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        _truncate_log(log_path, start)
    wrap = prepare or (lambda acc, m, opt: acc.prepare(m, opt))
    ddp_model, optimizer = wrap(accelerator, model, adamw)
    if resumed_state is not None:
        load_optimizer_state(ddp_model, adamw, resumed_state)  # after wrapping: FSDP shards the state like the gates
    world, rank = accelerator.num_processes, accelerator.process_index
    last = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    history: list[dict[str, float]] = []
    overlap_sum, overlap_n = 0.0, 0
    t0 = time.perf_counter()
    progress = make_progress(TextColumn("{task.fields[info]}"))
    if not main:
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
                    with sync, torch.autocast(accelerator.device.type, torch.bfloat16, enabled=cfg.dtype == "bf16"):
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
                if main:
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    info = " ".join(f"{k} {sums[k]:.3f}" for k in ("ce", *TERMS) if k in sums)
                    progress.update(task, advance=1, info=f"{info} eor {record['eor_running']:.3f}")
                if on_step is not None:
                    on_step(step, record)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    _save_checkpoint(out, step, tuner, ddp_model, adamw, cfg, main)
    finally:
        tuner.capture.remove()
    finished = last == cfg.steps
    delta_path = None
    if finished:
        gates = gate_state(ddp_model, tuner.names)  # every process joins the gather
        if main:
            delta_path = write_router_delta(gates, {**tuner.meta, "base_model": cfg.model, "step": last,
                                                    "config": cfg.to_dict()}, out / DELTA_NAME)
    elif last > start:
        _save_checkpoint(out, last, tuner, ddp_model, adamw, cfg, main)
    accelerator.wait_for_everyone()
    return FinetuneResult(out, delta_path, last, finished, history, time.perf_counter() - t0)


def config_with_preset(preset: str, **overrides: Any) -> FinetuneConfig:
    """FinetuneConfig from a named preset plus explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise TierwiseError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = replace(FinetuneConfig(), **PRESETS[preset])
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
