"""Routing traces: which experts every token selected in every MoE layer, with request and phase boundaries.

On disk a trace is one `.npz` (see docs/remoe-analysis.md):
- `experts`       int16 [tokens, layers, K]   selected experts (router top-k order), layers = MoE layers in order
- `request_start` int64 [requests]            first token of each request (0, increasing)
- `phase`         uint8 [tokens]              0 = prefill, 1 = decode (one forward call per token)
- `prefill_mass`  float32 [prefill steps, layers, E]  summed router scores of each prefill call (optional)
- `meta`          a JSON string: format_version, model, model_type, num_experts, top_k, moe_layers, expert_bytes, ...

One step = one forward call: each decode token is its own step, each run of prefill tokens of a request is one step.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from tierwise.common.errors import TierwiseError

FORMAT_VERSION = 1
PREFILL, DECODE = 0, 1
REQUIRED_META = ("format_version", "model", "model_type", "num_experts", "top_k", "moe_layers", "expert_bytes")


@dataclass
class RoutingTrace:
    experts: np.ndarray  # int16 [tokens, layers, K]
    request_start: np.ndarray  # int64 [requests]
    phase: np.ndarray  # uint8 [tokens]
    meta: dict[str, Any]
    prefill_mass: np.ndarray | None = field(default=None)  # float32 [prefill steps, layers, E]

    def __post_init__(self):
        self.experts = np.asarray(self.experts)
        self.request_start = np.asarray(self.request_start, dtype=np.int64)
        self.phase = np.asarray(self.phase, dtype=np.uint8)
        self.meta = {"format_version": FORMAT_VERSION, **self.meta}
        self.validate()

    # -- shape facts -------------------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def num_experts(self) -> int:
        return int(self.meta["num_experts"])

    @property
    def num_requests(self) -> int:
        return len(self.request_start)

    @property
    def expert_bytes(self) -> int:
        return int(self.meta["expert_bytes"])

    def request_bounds(self) -> np.ndarray:
        """[requests + 1] token offsets: request r spans tokens bounds[r]:bounds[r+1]."""
        return np.append(self.request_start, self.num_tokens)

    def request_id(self) -> np.ndarray:
        """[tokens] index of the request each token belongs to."""
        return np.repeat(np.arange(self.num_requests), np.diff(self.request_bounds()))

    def step_start(self) -> np.ndarray:
        """[tokens] True where a token starts a new forward call (request start, decode token, or phase change)."""
        start = np.ones(self.num_tokens, dtype=bool)
        if self.num_tokens:
            same_prefill = (self.phase[1:] == PREFILL) & (self.phase[:-1] == PREFILL)
            start[1:] = ~same_prefill
            start[self.request_start] = True
        return start

    # -- validation ----------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise TierwiseError naming the first inconsistency."""
        missing = [k for k in REQUIRED_META if k not in self.meta]
        if missing:
            raise TierwiseError(f"trace metadata lacks {', '.join(missing)}")
        if self.meta["format_version"] != FORMAT_VERSION:
            raise TierwiseError(
                f"trace format version {self.meta['format_version']} is not supported (this tierwise reads version {FORMAT_VERSION})"
            )
        e = self.experts
        if e.ndim != 3 or not np.issubdtype(e.dtype, np.integer):
            raise TierwiseError(f"trace 'experts' must be an integer array [tokens, layers, K], got {e.dtype} {e.shape}")
        self.experts = e.astype(np.int16, copy=False)
        layers, K, E = len(self.meta["moe_layers"]), int(self.meta["top_k"]), int(self.meta["num_experts"])
        if e.shape[1:] != (layers, K):
            raise TierwiseError(f"trace 'experts' has shape {e.shape} but metadata says {layers} MoE layers and top_k={K}")
        if e.size and (e.min() < 0 or e.max() >= E):
            raise TierwiseError(f"trace 'experts' holds ids outside 0..{E - 1}")
        if K > 1 and e.size and (np.diff(np.sort(e, axis=2), axis=2) == 0).any():
            raise TierwiseError("trace 'experts' selects the same expert twice for one token")
        if self.phase.shape != (self.num_tokens,) or (self.phase > DECODE).any():
            raise TierwiseError(f"trace 'phase' must be [tokens] of 0/1, got shape {self.phase.shape}")
        rs = self.request_start
        if rs.ndim != 1 or (self.num_tokens and (len(rs) == 0 or rs[0] != 0)) or (np.diff(rs) <= 0).any() or (
            len(rs) and rs[-1] >= max(self.num_tokens, 1)
        ):
            raise TierwiseError("trace 'request_start' must start at 0 and strictly increase below the token count")
        if self.prefill_mass is not None:
            n_prefill = int((self.step_start() & (self.phase == PREFILL)).sum())
            if self.prefill_mass.shape != (n_prefill, layers, E):
                raise TierwiseError(
                    f"trace 'prefill_mass' has shape {self.prefill_mass.shape}, expected {(n_prefill, layers, E)}"
                )

    # -- disk ----------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = dict(experts=self.experts, request_start=self.request_start, phase=self.phase, meta=np.array(json.dumps(self.meta)))
        if self.prefill_mass is not None:
            arrays["prefill_mass"] = self.prefill_mass.astype(np.float32)
        with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz" to the user's name
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RoutingTrace":
        path = Path(path)
        if not path.is_file():
            raise TierwiseError(f"trace file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("experts", "request_start", "phase", "meta") if k not in z.files]
                if missing:
                    raise TierwiseError(f"{path}: not a tierwise routing trace (missing {', '.join(missing)})")
                arrays = {k: z[k] for k in z.files}
        except TierwiseError:
            raise
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as e:
            raise TierwiseError(f"{path}: corrupt or not a tierwise routing trace (.npz): {e}") from e
        try:
            meta = json.loads(str(arrays["meta"]))
        except json.JSONDecodeError as e:
            raise TierwiseError(f"{path}: trace metadata is not valid JSON ({e.msg})") from e
        if not isinstance(meta, dict):
            raise TierwiseError(f"{path}: trace metadata must be a JSON object")
        if "format_version" not in meta:
            raise TierwiseError(f"{path}: trace metadata lacks format_version")
        try:
            return cls(arrays["experts"], arrays["request_start"], arrays["phase"], meta, arrays.get("prefill_mass"))
        except TierwiseError as e:
            raise TierwiseError(f"{path}: {e}") from e


def concat_traces(traces: Sequence[RoutingTrace]) -> RoutingTrace:
    """One trace holding the requests of several traces of the same model (metadata of the first)."""
    if not traces:
        raise TierwiseError("no traces to concatenate")
    first = traces[0]
    for t in traces[1:]:
        if (t.num_experts, t.top_k, t.meta["moe_layers"]) != (first.num_experts, first.top_k, first.meta["moe_layers"]):
            raise TierwiseError("cannot concatenate traces of different models (E, K or MoE layers differ)")
    offsets = np.cumsum([0] + [t.num_tokens for t in traces[:-1]])
    masses = [t.prefill_mass for t in traces]
    return RoutingTrace(
        np.concatenate([t.experts for t in traces]),
        np.concatenate([t.request_start + o for t, o in zip(traces, offsets)]),
        np.concatenate([t.phase for t in traces]),
        dict(first.meta),
        None if any(m is None for m in masses) else np.concatenate(masses),
    )


def synthetic_trace(
    *,
    requests: int,
    tokens: int,
    layers: int,
    num_experts: int,
    top_k: int,
    stickiness: float = 0.3,
    zipf: float = 0.5,
    prompt_tokens: int = 0,
    expert_bytes: int = 1,
    seed: int = 0,
) -> RoutingTrace:
    """A routing trace with tunable locality, for benchmarks and tests (no model needed).

    Each slot keeps the previous token's expert with probability `stickiness`; other slots draw new experts
    (none of the previous token's) without replacement, with popularity ∝ rank^-zipf. The first
    `prompt_tokens` tokens of each request are marked prefill (one call), the rest decode.
    """
    if not 0 < top_k <= num_experts or tokens < 1 or requests < 1 or prompt_tokens >= tokens:
        raise TierwiseError("synthetic_trace needs 0 < top_k <= num_experts, tokens > prompt_tokens >= 0, requests >= 1")
    rng = np.random.default_rng(seed)
    log_pop = -zipf * np.log(np.arange(1, num_experts + 1))
    log_pop = np.stack([rng.permutation(log_pop) for _ in range(layers)])  # popular experts differ per layer
    out = np.empty((requests, tokens, layers, top_k), dtype=np.int16)

    def draw(exclude: np.ndarray | None) -> np.ndarray:
        keys = log_pop[None] + rng.gumbel(size=(requests, layers, num_experts))  # Gumbel top-k = sampling w/o replacement
        if exclude is not None:
            np.put_along_axis(keys, exclude.astype(np.int64), -np.inf, axis=2)
        return np.argpartition(-keys, top_k - 1, axis=2)[:, :, :top_k]

    out[:, 0] = draw(None)
    for t in range(1, tokens):
        prev = out[:, t - 1]
        keep = rng.random(prev.shape) < stickiness
        out[:, t] = np.where(keep, prev, draw(prev))
    phase = np.ones((requests, tokens), dtype=np.uint8)
    phase[:, :prompt_tokens] = PREFILL
    meta = dict(
        format_version=FORMAT_VERSION, model=f"synthetic(stickiness={stickiness}, zipf={zipf}, seed={seed})",
        model_type="synthetic", num_experts=num_experts, top_k=top_k, moe_layers=list(range(layers)),
        expert_bytes=expert_bytes,
    )
    return RoutingTrace(out.reshape(-1, layers, top_k), np.arange(requests) * tokens, phase.ravel(), meta)


# -- capture -------------------------------------------------------------------------------------------------------
class RouterRecorder:
    """Forward hooks on every MoE router: one record per forward call, experts [tokens, layers, K] and router mass.

    transformers routers return (router_logits, topk_weights, topk_indices); the hook keeps the indices and the
    per-call summed scores (softmax or sigmoid, as the architecture scores), which rank experts in a prefill call.
    """

    def __init__(self, adapter):
        self.adapter = adapter
        self._handles: list = []
        self._pending: list[list] = [[] for _ in adapter.moe_layers]

    def __enter__(self) -> "RouterRecorder":
        for pos, layer in enumerate(self.adapter.moe_layers):
            self._handles.append(self.adapter.router(layer).register_forward_hook(self._hook(pos)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, pos: int):
        import torch

        def hook(module, inputs, output):
            logits, _, idx = output
            scores = torch.sigmoid(logits.float()) if self.adapter.scoring == "sigmoid" else logits.float().softmax(-1)
            self._pending[pos].append((idx.detach().to("cpu", torch.int16), scores.detach().sum(0).cpu()))

        return hook

    def pop(self) -> tuple[np.ndarray, np.ndarray]:
        """The last forward call: experts int16 [tokens, layers, K] and mass float32 [layers, E]."""
        if any(len(p) != 1 for p in self._pending):
            raise RuntimeError("expected exactly one router call per MoE layer since the last pop")
        experts = np.stack([p[0][0].numpy() for p in self._pending], axis=1)
        mass = np.stack([p[0][1].numpy() for p in self._pending]).astype(np.float32)
        for p in self._pending:
            p.clear()
        return experts, mass


class TraceBuilder:
    """Collects forward calls request by request into a RoutingTrace."""

    def __init__(self, meta: dict[str, Any]):
        self.meta = meta
        self._experts: list[np.ndarray] = []
        self._phase: list[np.ndarray] = []
        self._mass: list[np.ndarray] = []
        self._request_start: list[int] = []
        self._tokens = 0

    def start_request(self) -> None:
        self._request_start.append(self._tokens)

    def add_call(self, experts: np.ndarray, mass: np.ndarray, phase: int) -> None:
        """One forward call; a prefill call keeps its router mass, decode-like calls don't need it."""
        self._experts.append(experts)
        self._phase.append(np.full(len(experts), phase, dtype=np.uint8))
        if phase == PREFILL:
            self._mass.append(mass)
        self._tokens += len(experts)

    def build(self) -> RoutingTrace:
        layers, K, E = len(self.meta["moe_layers"]), self.meta["top_k"], self.meta["num_experts"]
        return RoutingTrace(
            np.concatenate(self._experts) if self._experts else np.zeros((0, layers, K), np.int16),
            np.array(self._request_start, dtype=np.int64),
            np.concatenate(self._phase) if self._phase else np.zeros(0, np.uint8),
            self.meta,
            np.stack(self._mass) if self._mass else np.zeros((0, layers, E), np.float32),
        )


def trace_meta(adapter, model_name: str, **extra) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "model_type": adapter.model_type,
        "num_experts": adapter.num_experts,
        "top_k": adapter.top_k,
        "moe_layers": list(adapter.moe_layers),
        "expert_bytes": adapter.expert_bytes,
        "num_shared_experts": adapter.num_shared_experts,
        **extra,
    }


def capture_generation(
    model,
    prompts_ids: Iterable[Sequence[int]],
    *,
    model_name: str,
    max_new_tokens: int = 64,
    eos_token_id: int | None = None,
    progress=None,
) -> RoutingTrace:
    """Run each prompt as its own request (prefill, then greedy decode with a KV cache) and record routing.

    A request records prompt_len + generated - 1 tokens: the last generated token is never fed back.
    `progress`: optional callable(n_done) after each request.
    """
    import torch

    from tierwise.remoe.models.adapters import adapter_for

    adapter = adapter_for(model)
    builder = TraceBuilder(trace_meta(adapter, model_name, max_new_tokens=max_new_tokens))
    with RouterRecorder(adapter) as rec, torch.no_grad():
        for n, ids in enumerate(prompts_ids, 1):
            if len(ids) == 0:
                raise TierwiseError(f"prompt {n} is empty after tokenisation")
            builder.start_request()
            out = model(torch.tensor([list(ids)], device=model.device), use_cache=True)
            builder.add_call(*rec.pop(), PREFILL)
            for _ in range(max_new_tokens - 1):
                next_id = out.logits[:, -1].argmax(-1, keepdim=True)
                if eos_token_id is not None and int(next_id) == eos_token_id:
                    break
                out = model(next_id, cache=out.cache, use_cache=True)
                builder.add_call(*rec.pop(), DECODE)
            if progress is not None:
                progress(n)
    return builder.build()


def capture_teacher_forced(model, sequences_ids: Iterable[Sequence[int]], *, model_name: str, progress=None) -> RoutingTrace:
    """Routing of whole sequences under teacher forcing (one forward per sequence, one request each).

    Every token is marked DECODE: it stands for the token-by-token decode of the same text (EOR_tf),
    so a cache simulation treats each position as its own step.
    """
    import torch

    from tierwise.remoe.models.adapters import adapter_for

    adapter = adapter_for(model)
    builder = TraceBuilder(trace_meta(adapter, model_name, teacher_forced=True))
    with RouterRecorder(adapter) as rec, torch.no_grad():
        for n, ids in enumerate(sequences_ids, 1):
            builder.start_request()
            model(torch.tensor([list(ids)], device=model.device))
            experts, mass = rec.pop()
            builder.add_call(experts, mass, DECODE)
            if progress is not None:
                progress(n)
    return builder.build()
