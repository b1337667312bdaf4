"""The offloading runtime: routed experts live in an ExpertStore on disk, each MoE layer keeps at most C in memory.

It hooks into transformers through the experts-function registry (`ALL_EXPERTS_FUNCTIONS`), so no model is
re-implemented: attention, embeddings, norms, routers and shared experts run unchanged and stay resident. Only the
fused routed-expert parameters of every `mlp.experts` module are replaced by C-row *slot* tensors; the E-row
originals are dropped. Per forward call of a layer (one step, remoe.md §5.2):

    requested = unique(top_k_index)             the experts this call needs
    hits, misses, evicted = cache.access(...)   the cachesim policy decides residency
    for e in misses: store.read_into(slot(e))   a real O_DIRECT read of one expert
    out = inner(experts, h, slot_of[top_k_index], top_k_weights)

where `inner` is the kernel the model used before (grouped_mm by default), run on the slot tensors. When one call
needs more than C experts (prefill), the experts that will not stay resident are read into transient staging rows
that exist only for that call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import MoEAdapter, adapter_for
from tierwise.remoe.offload.cache import ExpertCache, check_policy
from tierwise.remoe.offload.storage import DEFAULT_TARGET, StorageProfile, storage_profile, target_expert_bytes
from tierwise.remoe.offload.store import ExpertStore, expert_params, model_fingerprint

IMPLEMENTATION = "tierwise_offload"
DEFAULT_STORE_ROOT = Path.home() / ".cache" / "tierwise" / "expert-stores"


@dataclass
class OffloadConfig:
    cache_experts: int  # C: experts kept in memory per MoE layer
    policy: str = "lru"  # lru | lfu | fifo | lfru (tierwise.remoe.analysis.cachesim)
    storage: str = "local"  # profile charged per miss, see storage.PROFILES
    target: str = DEFAULT_TARGET  # expert size charged per miss: a TARGET_EXPERTS name, `own`, or e.g. 17.3MB
    store_dir: Path | None = None  # default: ~/.cache/tierwise/expert-stores/<fingerprint>
    io: str = "auto"  # O_DIRECT, or fadvise(DONTNEED) where O_DIRECT is unsupported
    verify: bool = True  # crc32c-check every expert read
    device: torch.device | str = "cpu"  # where the offloaded model runs: its expert cache and every resident weight


@dataclass
class StepCounters:
    """What the runtime did during one model forward (reset by the caller between steps)."""

    hits: int = 0
    misses: int = 0
    io_seconds: float = 0.0  # measured: time inside store reads
    modelled_seconds: float = 0.0  # storage profile's charge for the misses
    # the experts each MoE layer selected, int16 [tokens, K] by layer: the routing (EOR, load) of the run
    selected: dict[int, torch.Tensor] = field(default_factory=dict)

    def add(self, other: "StepCounters") -> None:
        self.hits += other.hits
        self.misses += other.misses
        self.io_seconds += other.io_seconds
        self.modelled_seconds += other.modelled_seconds


class LayerOffload:
    """One MoE layer's slot tensors (C rows per fused expert parameter), its ExpertCache and its counters."""

    def __init__(self, layer: int, experts: nn.Module, runtime: "OffloadRuntime", inner):
        self.layer = layer
        self.runtime = runtime
        self.inner = inner
        self.experts = experts
        self.num_experts = int(experts.num_experts)
        capacity = runtime.config.cache_experts
        self.cache = ExpertCache(self.num_experts, capacity, runtime.config.policy)
        params = expert_params(experts)
        # Replace each E-row parameter by a C-row slot tensor: the routed experts leave memory here.
        self.names = list(params)
        for name, p in params.items():
            slot = torch.zeros((capacity, *p.shape[1:]), dtype=p.dtype, device=p.device)
            setattr(experts, name, nn.Parameter(slot, requires_grad=False))
        experts.num_experts = capacity  # the kernels size their groups by the number of weight rows
        self.hits = 0
        self.misses = 0
        self.prefill = True  # the next call is a request's prefill

    @property
    def slots(self) -> dict[str, torch.Tensor]:
        """The C-row slot tensors, read from the module each time: they follow the model to its device."""
        return {name: getattr(self.experts, name).data for name in self.names}

    def reset(self) -> None:
        self.cache.reset()
        self.prefill = True

    def forward(self, experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        # cachesim's step order: decode in the router's slot order, prefill by router mass.
        if self.prefill:
            ids = _by_router_mass(top_k_index, top_k_weights, self.num_experts)
            self.prefill = False
        else:
            ids = top_k_index.reshape(-1).tolist()
        step = self.cache.access(ids)
        wanted = set(ids)
        # Requested experts that will not be resident after this step run from transient staging rows:
        # misses that got no slot are read from the store, evicted hits are copied before their row is reused.
        staged = {e: None for e in step.misses if e not in step.inserted}
        staged.update({e: row for e, row in step.evicted.items() if e in wanted})
        extra = self._stage(staged) if staged else None
        for e, row in step.inserted.items():
            self._read(e, {name: slot[row] for name, slot in self.slots.items()})
        self.hits += len(step.hits)
        self.misses += len(step.misses)
        counters = self.runtime.step
        counters.selected[self.layer] = top_k_index.to("cpu", torch.int16)
        counters.hits += len(step.hits)
        counters.misses += len(step.misses)
        counters.modelled_seconds += len(step.misses) * self.runtime.miss_seconds
        if extra is None:
            rows = self.cache.row_of.to(top_k_index.device)[top_k_index]
            return self.inner(experts, hidden_states, rows, top_k_weights)
        return self._forward_staged(experts, hidden_states, top_k_index, top_k_weights, staged, extra)

    def _read(self, expert: int, out: dict[str, torch.Tensor]) -> None:
        store = self.runtime.store
        t0 = store.read_seconds
        store.read_into(self.layer, expert, out)
        self.runtime.step.io_seconds += store.read_seconds - t0

    def _stage(self, staged: dict[int, int | None]) -> dict[str, torch.Tensor]:
        """Transient rows for `staged` experts: a copy of their slot row (evicted hits) or a store read (misses)."""
        extra = {name: torch.empty((len(staged), *slot.shape[1:]), dtype=slot.dtype, device=slot.device)
                 for name, slot in self.slots.items()}
        for i, (e, row) in enumerate(staged.items()):
            if row is None:
                self._read(e, {name: t[i] for name, t in extra.items()})
            else:
                for name, t in extra.items():
                    t[i].copy_(self.slots[name][row])
        return extra

    def _forward_staged(self, experts, hidden_states, top_k_index, top_k_weights, staged, extra) -> torch.Tensor:
        """Run one call on the slot rows followed by the staging rows; the staging rows are freed afterwards."""
        capacity = self.cache.capacity
        row_of = self.cache.row_of.clone()
        row_of[list(staged)] = torch.arange(capacity, capacity + len(staged))
        row_of = row_of.to(top_k_index.device)
        params = {name: getattr(experts, name) for name in self.names}
        try:
            for name, slot in self.slots.items():
                setattr(experts, name, nn.Parameter(torch.cat([slot, extra[name]]), requires_grad=False))
            experts.num_experts = capacity + len(staged)
            return self.inner(experts, hidden_states, row_of[top_k_index], top_k_weights)
        finally:
            for name, p in params.items():
                setattr(experts, name, p)
            experts.num_experts = capacity


def _by_router_mass(top_k_index: torch.Tensor, top_k_weights: torch.Tensor, num_experts: int) -> list[int]:
    """Distinct experts of a multi-token call, highest summed router weight first, ties by id (cachesim's order)."""
    top_k_index, top_k_weights = top_k_index.cpu(), top_k_weights.cpu()  # once per request: the order is host logic
    mass = torch.zeros(num_experts, dtype=torch.float64).index_add_(
        0, top_k_index.reshape(-1), top_k_weights.reshape(-1).double())
    ids = torch.unique(top_k_index)
    order = sorted(range(len(ids)), key=lambda i: (-float(mass[ids[i]]), int(ids[i])))
    return [int(ids[i]) for i in order]


def _offload_experts_forward(experts: nn.Module, hidden_states, top_k_index, top_k_weights):
    layer = getattr(experts, "_tierwise_offload", None)
    if layer is None:
        raise TierwiseError(f"experts implementation {IMPLEMENTATION!r} used on a module the offload runtime does not own")
    return layer.forward(experts, hidden_states, top_k_index, top_k_weights)


ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, _offload_experts_forward)


class OffloadRuntime:
    """Turns a loaded (resident) supported MoE model into an offloaded one, in place.

    `adapter` must be the adapter of the *resident* model (it is created here if not given).
    """

    def __init__(self, model: nn.Module, config: OffloadConfig, adapter: MoEAdapter | None = None):
        adapter = adapter or adapter_for(model)
        if not adapter.top_k <= config.cache_experts <= adapter.num_experts:
            raise TierwiseError(
                f"--cache-experts must be between K={adapter.top_k} and E={adapter.num_experts} for this model, "
                f"got {config.cache_experts}"
            )
        check_policy(config.policy)  # before anything is written or replaced
        self.model = model
        self.config = config
        self.adapter = adapter
        self.profile: StorageProfile = storage_profile(config.storage)
        self.target_bytes = target_expert_bytes(config.target, adapter.expert_bytes)
        self.miss_seconds = self.profile.miss_seconds(self.target_bytes)
        experts_by_layer = {layer: adapter.experts(layer) for layer in adapter.moe_layers}
        fingerprint = model_fingerprint(json.dumps(model.config.to_dict(), sort_keys=True, default=str), experts_by_layer)
        store_dir = Path(config.store_dir) if config.store_dir else DEFAULT_STORE_ROOT / fingerprint
        self.store = ExpertStore.open_or_write(store_dir, experts_by_layer, fingerprint=fingerprint,
                                               model_type=adapter.model_type, io=config.io, verify=config.verify)
        previous = model.config._experts_implementation or "grouped_mm"
        if previous == IMPLEMENTATION:
            raise TierwiseError("this model is already offloaded")
        first = experts_by_layer[adapter.moe_layers[0]]
        # The kernel the model used before runs on the slot tensors ("eager" = the class's own forward).
        inner = ALL_EXPERTS_FUNCTIONS[previous] if previous in ALL_EXPERTS_FUNCTIONS else type(first).forward.__wrapped__
        self.step = StepCounters()
        self.layers: dict[int, LayerOffload] = {}
        for layer, experts in experts_by_layer.items():
            self.layers[layer] = LayerOffload(layer, experts, self, inner)
            experts._tierwise_offload = self.layers[layer]
        model.set_experts_implementation(IMPLEMENTATION)
        model.to(config.device)  # only now: the routed experts have left, the slots and resident weights go

    def reset(self) -> None:
        """Cold caches (the paper's request isolation); call before each request."""
        for layer in self.layers.values():
            layer.reset()

    def cache_all(self) -> None:
        """Fill every layer's cache with its first C experts (all of them when C = E), e.g. before a warm run."""
        for layer in self.layers.values():
            for e, row in layer.cache.access(list(range(layer.cache.capacity))).inserted.items():
                layer._read(e, {name: slot[row] for name, slot in layer.slots.items()})

    def counters(self) -> tuple[dict[int, tuple[int, int]], int]:
        """Cumulative (hits, misses) per layer and bytes read from the store, for per-request differences."""
        return {layer: (lo.hits, lo.misses) for layer, lo in self.layers.items()}, self.store.bytes_read

    def take_step(self) -> StepCounters:
        """Counters since the last call (one model forward when called once per step)."""
        step, self.step = self.step, StepCounters()
        return step

    def resident_experts(self) -> dict[int, int]:
        """Experts currently held in memory per layer (never more than C)."""
        return {layer: lo.cache.resident() for layer, lo in self.layers.items()}

    def describe(self) -> dict:
        return {
            "cache_experts": self.config.cache_experts,
            "num_experts": self.adapter.num_experts,
            "top_k": self.adapter.top_k,
            "policy": self.config.policy,
            "storage": self.profile.name,
            "target": self.config.target,
            "target_expert_bytes": self.target_bytes,
            "modelled_ms_per_miss": 1e3 * self.miss_seconds,
            "store": str(self.store.directory),
            "store_io": self.store.io_mode,
            "device": str(self.config.device),
            "expert_bytes": self.store.expert_bytes,
        }

    def close(self) -> None:
        self.store.close()
