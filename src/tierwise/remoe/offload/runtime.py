"""The offloading runtime: routed experts live in an ExpertStore on disk, each MoE layer keeps at most C in memory.

It hooks into transformers through the experts-function registry (`ALL_EXPERTS_FUNCTIONS`), so no model is
re-implemented: attention, embeddings, norms, routers and shared experts run unchanged and stay resident. Only the
fused routed-expert parameters of every `mlp.experts` module are replaced by C-row *slot* tensors; the E-row
originals are dropped. Per forward call of a layer (one step, remoe.md §5.2):

    requested = unique(top_k_index)             the experts this call needs
    hits, misses, evicted = cache.access(...)   the cachesim policy decides residency
    for e in misses: store.read_into(slot(e))   a real O_DIRECT read of one expert
    [decode, --prefetch N: layer l+1's gate on this layer's input -> its top N absent experts loaded ahead of use]
    out = inner(experts, h, slot_of[top_k_index], top_k_weights)

where `inner` is the kernel the model used before (grouped_mm by default), run on the slot tensors. When one call
needs more than C experts (prefill), the experts that will not stay resident are read into transient staging rows
that exist only for that call. `--reroute` adds a forward hook on each router that biases its choice toward the
layer's cached experts (reroute.py). With `--throttle` every read goes through one I/O thread that takes the
storage profile's time per fetch (io.py), and a decode call computes its ready experts while its misses load.
Every decode step records what each layer did (timing.LayerStep) for the overlap timing model.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import MoEAdapter, adapter_for
from tierwise.remoe.offload.cache import ExpertCache, check_policy
from tierwise.remoe.offload.io import IOChannel
from tierwise.remoe.offload.reroute import Rerouter, check_reroutable
from tierwise.remoe.offload.storage import DEFAULT_TARGET, StorageProfile, storage_profile
from tierwise.remoe.offload.store import ExpertStore, expert_params, model_fingerprint
from tierwise.remoe.offload.targets import default_platform, platform as get_platform, resolve_target
from tierwise.remoe.offload.timing import LayerStep, timing_model

IMPLEMENTATION = "tierwise_offload"
DEFAULT_STORE_ROOT = Path.home() / ".cache" / "tierwise" / "expert-stores"


@dataclass
class OffloadConfig:
    cache_experts: int  # C: experts kept in memory per MoE layer
    policy: str = "lru"  # lru | lfu | fifo | lfru (tierwise.remoe.analysis.cachesim)
    storage: str = "local"  # fetch cost of one target expert, see storage.PROFILES
    target: str = DEFAULT_TARGET  # the model the timing model stands for (targets.TARGETS), `own`, or e.g. 17.3MB
    platform: str | None = None  # the target's compute device (targets.PLATFORMS); default: the storage's
    throttle: bool = False  # every store read takes the profile's fetch time of real time, on one I/O thread
    store_dir: Path | None = None  # default: ~/.cache/tierwise/expert-stores/<fingerprint>
    io: str = "auto"  # O_DIRECT, or fadvise(DONTNEED) where O_DIRECT is unsupported
    verify: bool = True  # crc32c-check every expert read
    device: torch.device | str = "cpu"  # where the offloaded model runs: its expert cache and every resident weight


@dataclass
class StepCounters:
    """What the runtime did during one model forward (taken by the caller after each step)."""

    hits: int = 0  # needed experts resident when their layer ran (prefetched ones included)
    misses: int = 0  # needed experts fetched on demand
    io_seconds: float = 0.0  # measured: time inside store reads (with --throttle: time spent waiting for them)
    prefetch_loads: int = 0  # experts a prefetch fetched
    prefetch_used: int = 0  # prefetched experts used for the first time
    prefetch_wasted: int = 0  # prefetched experts evicted (or dropped at the request's end) before any use
    predicted: int = 0  # experts the next layer's gate predicted
    predicted_correct: int = 0  # of them, selected by that layer
    selected_after_prediction: int = 0  # experts selected by layers that had a prediction
    rerouted: int = 0  # tokens x layers whose expert set the cache prior changed
    # the experts each MoE layer selected, int16 [tokens, K] by layer: the routing (EOR, load) of the run
    selected: dict[int, torch.Tensor] = field(default_factory=dict)
    layers: dict[int, LayerStep] = field(default_factory=dict)  # per MoE layer, decode steps only

    def add(self, other: "StepCounters") -> None:
        for f in fields(self):
            if f.name not in ("selected", "layers"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


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
        self.next: LayerOffload | None = None  # the next MoE layer (prefetch target)
        self.gate: nn.Module = runtime.adapter.router(layer)
        self.inflight: dict[int, tuple[int, Future | None]] = {}  # prefetched into this layer this step: position
        self.predicted: set[int] | None = None  # what the previous layer's prefetch predicted for this step
        self.rerouter: Rerouter | None = None

    @property
    def slots(self) -> dict[str, torch.Tensor]:
        """The C-row slot tensors, read from the module each time: they follow the model to its device."""
        return {name: getattr(self.experts, name).data for name in self.names}

    def _rows(self, row: int) -> dict[str, torch.Tensor]:
        return {name: slot[row] for name, slot in self.slots.items()}

    def reset(self) -> int:
        """Cold cache for a new request; returns prefetched experts dropped unused."""
        self.prefill = True
        self.inflight, self.predicted = {}, None
        if self.rerouter is not None:
            self.rerouter.reset()
        return self.cache.reset()

    # ---- I/O ----------------------------------------------------------------------------------------------------

    def _load(self, expert: int, out: dict[str, torch.Tensor]) -> Future | None:
        """Read one expert into `out`: now (returns None), or queued on the throttled I/O thread (a Future)."""
        runtime = self.runtime
        if runtime.channel is not None:
            return runtime.channel.submit(self.layer, expert, out)
        store = runtime.store
        t0 = store.read_seconds
        store.read_into(self.layer, expert, out)
        runtime.step.io_seconds += store.read_seconds - t0
        return None

    def _wait(self, futures) -> None:
        futures = [f for f in futures if f is not None]
        if futures:
            t0 = time.perf_counter()
            for f in futures:
                f.result()
            self.runtime.step.io_seconds += time.perf_counter() - t0

    def _read(self, expert: int, out: dict[str, torch.Tensor]) -> None:
        self._wait([self._load(expert, out)])

    # ---- one forward call ---------------------------------------------------------------------------------------

    def forward(self, experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        counters = self.runtime.step
        decode = not self.prefill
        # cachesim's step order: decode in the router's slot order, prefill by router mass.
        if self.prefill:
            ids = _by_router_mass(top_k_index, top_k_weights, self.num_experts)
            self.prefill = False
        else:
            ids = top_k_index.reshape(-1).tolist()
        wanted = set(ids)
        inflight, self.inflight = self.inflight, {}
        if self.predicted is not None:
            counters.predicted_correct += len(self.predicted & wanted)
            counters.selected_after_prediction += len(wanted)
            self.predicted = None
        step = self.cache.access(ids)
        counters.prefetch_used += len(step.prefetch_used)
        counters.prefetch_wasted += step.prefetch_wasted
        # Requested experts that will not be resident after this step run from transient staging rows:
        # misses that got no slot are read from the store, evicted hits are copied before their row is reused.
        staged = {e: None for e in step.misses if e not in step.inserted}
        staged.update({e: row for e, row in step.evicted.items() if e in wanted})
        extra = self._stage(staged) if staged else None  # before a new read reuses an evicted hit's row
        pending = {e: fut for e, (_, fut) in inflight.items() if e in wanted and fut is not None}
        for e, row in step.inserted.items():
            pending[e] = self._load(e, self._rows(row))
        self.hits += len(step.hits)
        self.misses += len(step.misses)
        counters.selected[self.layer] = top_k_index.to("cpu", torch.int16)
        counters.hits += len(step.hits)
        counters.misses += len(step.misses)
        if decode:
            counters.layers[self.layer] = LayerStep(
                hits=sum(e not in inflight for e in step.hits), demand=len(step.misses),
                prefetched=[inflight[e][0] for e in step.hits if e in inflight])
            if self.runtime.prefetch and self.next is not None:
                counters.layers[self.layer].prefetch = self._prefetch_next(hidden_states)
        pending = {e: f for e, f in pending.items() if f is not None}
        if extra is not None:
            self._wait(pending.values())
            return self._forward_staged(experts, hidden_states, top_k_index, top_k_weights, staged, extra)
        rows = self.cache.row_of.to(top_k_index.device)[top_k_index]
        if pending and hidden_states.shape[0] == 1 and len(pending) < len(wanted):
            # throttled decode: the ready experts compute while the others load
            late = torch.tensor([int(e) in pending for e in top_k_index[0].tolist()], device=rows.device)
            out = self.inner(experts, hidden_states, rows[:, ~late], top_k_weights[:, ~late])
            self._wait(pending.values())
            return out + self.inner(experts, hidden_states, rows[:, late], top_k_weights[:, late])
        self._wait(pending.values())
        return self.inner(experts, hidden_states, rows, top_k_weights)

    def _prefetch_next(self, hidden_states: torch.Tensor) -> int:
        """Speculative prefetch (mixtral-offloading): the next layer's gate applied to this layer's MoE input picks
        N experts; the absent ones are loaded into the next layer's cache now. Returns the loads issued."""
        runtime, nxt, counters = self.runtime, self.next, self.runtime.step
        scores = runtime.choice_scores(nxt.gate, hidden_states)
        predicted = scores[0].topk(runtime.prefetch).indices.tolist()
        nxt.predicted = set(predicted)
        counters.predicted += len(predicted)
        step = nxt.cache.prefetch(predicted)
        counters.prefetch_wasted += step.prefetch_wasted
        for pos, (e, row) in enumerate(step.inserted.items()):
            nxt.inflight[e] = (pos, nxt._load(e, nxt._rows(row)))
        counters.prefetch_loads += len(step.inserted)
        return len(step.inserted)

    def reroute_hook(self, module, inputs, output):
        """Forward hook on this layer's router: its output rerouted toward the cached experts (reroute.py)."""
        logits, weights, index = output
        cached = (self.cache.row_of >= 0).to(logits.device)
        weights, index, changed = self.rerouter(logits, weights, index, cached)
        self.runtime.step.rerouted += changed
        return logits, weights, index

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
        self.target = resolve_target(config.target, adapter, model)  # from the resident model, before offloading
        self.target_bytes = self.target.expert_bytes
        self.fetch_seconds = self.profile.miss_seconds(self.target_bytes)
        platform_name = config.platform or default_platform(config.storage)
        self.platform = get_platform(platform_name) if platform_name is not None else None
        self.timing = timing_model(self.target, self.platform, self.profile, adapter.top_k)
        if config.throttle and not self.profile.modelled:
            raise TierwiseError(f"--throttle needs a storage profile with a bandwidth (not {config.storage!r}): "
                                f"it makes each read take that profile's fetch time")
        experts_by_layer = {layer: adapter.experts(layer) for layer in adapter.moe_layers}
        fingerprint = model_fingerprint(json.dumps(model.config.to_dict(), sort_keys=True, default=str), experts_by_layer)
        store_dir = Path(config.store_dir) if config.store_dir else DEFAULT_STORE_ROOT / fingerprint
        self.store = ExpertStore.open_or_write(store_dir, experts_by_layer, fingerprint=fingerprint,
                                               model_type=adapter.model_type, io=config.io, verify=config.verify)
        self.channel = IOChannel(self.store, self.fetch_seconds) if config.throttle else None
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
        chain = list(self.layers.values())
        for lo, nxt in zip(chain, chain[1:]):
            lo.next = nxt
        self.prefetch, self.reroute, self.protect = 0, 0.0, 0
        self._hooks: list = []
        model.set_experts_implementation(IMPLEMENTATION)
        model.to(config.device)  # only now: the routed experts have left, the slots and resident weights go

    def configure(self, *, prefetch: int = 0, reroute: float = 0.0, protect: int = 2) -> None:
        """Runtime techniques for the next requests: next-layer prefetch of N experts, cache-prior rerouting with
        strength λ and the original top-J protected (0 / 0.0 = off)."""
        k, c = self.adapter.top_k, self.config.cache_experts
        if not 0 <= prefetch <= c:
            raise TierwiseError(f"--prefetch must be between 0 and C={c} (experts loaded ahead per layer), got {prefetch}")
        if reroute < 0:
            raise TierwiseError(f"--reroute must be >= 0 (0 = off), got {reroute}")
        if not 0 <= protect <= k:
            raise TierwiseError(f"--protect must be between 0 and K={k}, got {protect}")
        if reroute > 0:
            check_reroutable(self.adapter)
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.prefetch, self.reroute, self.protect = int(prefetch), float(reroute), int(protect)
        for lo in self.layers.values():
            lo.rerouter = None
            if reroute > 0:
                scaling = float(getattr(lo.gate, "routed_scaling_factor", 1.0) or 1.0)
                lo.rerouter = Rerouter(reroute, protect, k, self.adapter.norm_topk_prob, scaling)
                self._hooks.append(lo.gate.register_forward_hook(lo.reroute_hook))

    def choice_scores(self, gate: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """What `gate` ranks experts by, for hidden states `hidden_states` [T, H] (prefetch prediction)."""
        z = F.linear(hidden_states.float(), gate.weight.float())
        if self.adapter.scoring == "sigmoid":
            bias = getattr(gate, "e_score_correction_bias", None)
            return z.sigmoid() + (bias if bias is not None else 0.0)
        return z

    def reset(self) -> None:
        """Cold caches (the paper's request isolation); call before each request."""
        for layer in self.layers.values():
            layer.reset()

    def end_request(self) -> int:
        """Finish a request: wait for queued reads, count prefetched experts never used; returns that count."""
        if self.channel is not None:
            self.channel.drain()
        wasted = 0
        for lo in self.layers.values():
            wasted += len(lo.cache.unused_prefetch)
            lo.cache.unused_prefetch.clear()
            lo.inflight, lo.predicted = {}, None
        return wasted

    def cache_all(self) -> None:
        """Fill every layer's cache with its first C experts (all of them when C = E), e.g. before a warm run."""
        for layer in self.layers.values():
            for e, row in layer.cache.access(list(range(layer.cache.capacity))).inserted.items():
                layer._read(e, layer._rows(row))

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
            "moe_layers": len(self.adapter.moe_layers),
            "policy": self.config.policy,
            "storage": self.profile.name,
            "target": self.target.name,
            "target_model": self.target.describe(),
            "target_expert_bytes": self.target_bytes,
            "platform": self.platform.name if self.platform is not None else None,
            "platform_bandwidth": self.platform.memory_bandwidth if self.platform is not None else None,
            "fetch_ms": 1e3 * self.fetch_seconds,
            "timing": self.timing.describe() if self.timing is not None else None,
            "throttle": self.config.throttle,
            "store": str(self.store.directory),
            "store_io": self.store.io_mode,
            "device": str(self.config.device),
            "expert_bytes": self.store.expert_bytes,
        }

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.store.close()
