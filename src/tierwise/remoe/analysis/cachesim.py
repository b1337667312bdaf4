"""Per-layer expert caches: policies (the readable, online face) and a trace simulator (numba fast path).

Semantics of one step (= one forward call; design remoe.md §5.2):
- U = the distinct experts the step requests, in priority order (decode: router slot order; prefill: router mass);
- hits are the experts of U already resident; they are refreshed first (in U order);
- each miss is then loaded (in U order), evicting the policy's victim among residents *not requested in this step*;
- if |U| > C (a prefill call, or C < K), hits are counted as usual, every other expert of U is a miss, and the
  first C experts of U stay resident.

Policies pick the victim with the smallest key:
    lru: last use   fifo: insertion   lfu: (uses since reset, last use)   lfru: (decayed uses, last use)
    belady: (-next use, last use), the offline optimum given the future steps.
`ExpertCachePolicy.access` and the numba kernel `_simulate_layer` implement exactly this; tests hold them equal.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Sequence

import numpy as np
from numba import njit

from tierwise.common.compiled import serialise_cache_files
from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.routing import DECODE, PREFILL, RoutingTrace

serialise_cache_files()  # sweeps simulate in parallel worker processes

POLICIES = ("lru", "fifo", "lfu", "lfru", "belady")
LRU, FIFO, LFU, LFRU, BELADY = range(5)
NEVER = np.iinfo(np.int64).max  # "no next use"
DEFAULT_LFRU_HALF_LIFE = 8.0  # steps after which a use counts half


def lfru_decay(half_life: float) -> float:
    return 0.5 ** (1.0 / half_life)


# -- the policies (online, per step) ------------------------------------------------------------------------------
@dataclass
class StepResult:
    hits: list[int]
    misses: list[int]  # to load, in U order
    evicted: list[int]  # to drop


class ExpertCachePolicy(ABC):
    """A cache of at most `capacity` experts of one MoE layer. Call `access(experts)` once per forward call."""

    name: ClassVar[str]

    def __init__(self, capacity: int, num_experts: int):
        if capacity < 1:
            raise TierwiseError(f"cache capacity must be >= 1 expert, got {capacity}")
        self.capacity = int(capacity)
        self.num_experts = int(num_experts)
        self._tick = 0
        self.reset()

    def reset(self) -> None:
        """Empty the cache and forget its history (a cold cache: start of a new request)."""
        self._resident: set[int] = set()
        self._last = np.zeros(self.num_experts, dtype=np.int64)
        self._inserted = np.zeros(self.num_experts, dtype=np.int64)

    def resident(self) -> list[int]:
        return sorted(self._resident)

    def __contains__(self, expert: int) -> bool:
        return int(expert) in self._resident

    def __len__(self) -> int:
        return len(self._resident)

    def _observe(self, step: list[int]) -> None:
        """Per-policy bookkeeping for the experts requested in a step (before any victim is chosen)."""

    @abstractmethod
    def _key(self, expert: int) -> tuple:
        """Victim order: among residents not requested in this step, the smallest key is evicted."""

    def access(self, experts: Iterable[int]) -> StepResult:
        """One step: the experts one forward call routes to, most important first."""
        step = list(dict.fromkeys(int(e) for e in experts))
        bad = [e for e in step if not 0 <= e < self.num_experts]
        if bad:
            raise TierwiseError(f"expert ids {bad} outside 0..{self.num_experts - 1}")
        hits = [e for e in step if e in self._resident]
        misses = [e for e in step if e not in self._resident]
        self._observe(step)
        for e in hits + misses:
            self._tick += 1
            self._last[e] = self._tick
        for e in misses:
            self._inserted[e] = self._last[e]
        if len(step) > self.capacity:
            keep = set(step[: self.capacity])
            evicted = sorted(self._resident - keep)
            self._resident = keep
            return StepResult(hits, misses, evicted)
        requested = set(step)
        evicted = []
        for e in misses:
            if len(self._resident) == self.capacity:
                victim = min((r for r in self._resident if r not in requested), key=self._key)
                self._resident.remove(victim)
                evicted.append(victim)
            self._resident.add(e)
        return StepResult(hits, misses, evicted)


class LRUPolicy(ExpertCachePolicy):
    name = "lru"

    def _key(self, e):
        return (self._last[e],)


class FIFOPolicy(ExpertCachePolicy):
    name = "fifo"

    def _key(self, e):
        return (self._inserted[e],)


class LFUPolicy(ExpertCachePolicy):
    """Uses are counted for every expert since the last reset, resident or not (E is small)."""

    name = "lfu"

    def reset(self):
        super().reset()
        self._count = np.zeros(self.num_experts, dtype=np.int64)

    def _observe(self, step):
        self._count[step] += 1

    def _key(self, e):
        return (self._count[e], self._last[e])


class LFRUPolicy(ExpertCachePolicy):
    """Frequency with recency decay: every step all scores decay by `decay`, requested experts gain 1."""

    name = "lfru"

    def __init__(self, capacity: int, num_experts: int, half_life: float = DEFAULT_LFRU_HALF_LIFE):
        self.decay = lfru_decay(half_life)
        super().__init__(capacity, num_experts)

    def reset(self):
        super().reset()
        self._score = np.zeros(self.num_experts, dtype=np.float64)

    def _observe(self, step):
        self._score *= self.decay
        self._score[step] += 1.0

    def _key(self, e):
        return (self._score[e], self._last[e])


class BeladyPolicy(ExpertCachePolicy):
    """The offline optimum: evicts the resident expert whose next use is furthest. Needs the future steps."""

    name = "belady"

    def __init__(self, capacity: int, num_experts: int, future: Sequence[Iterable[int]] = ()):
        self._future: list[list[int]] = [list(dict.fromkeys(int(e) for e in s)) for s in future]
        super().__init__(capacity, num_experts)

    def reset(self, future: Sequence[Iterable[int]] | None = None):
        """Cold cache; `future` replaces the steps to come (default: replay the same future from its start)."""
        super().reset()
        if future is not None:
            self._future = [list(dict.fromkeys(int(e) for e in s)) for s in future]
        self._uses: dict[int, list[int]] = {}
        for s, step in enumerate(self._future):
            for e in step:
                self._uses.setdefault(e, []).append(s)
        self._now = -1

    def _observe(self, step):
        self._now += 1
        if self._now >= len(self._future) or step != self._future[self._now]:
            raise TierwiseError(f"Belady step {self._now} differs from the future it was given")

    def _next_use(self, e: int) -> int:
        uses = self._uses.get(e, [])
        i = bisect.bisect_right(uses, self._now)
        return uses[i] if i < len(uses) else NEVER

    def _key(self, e):
        return (-self._next_use(e), self._last[e])


POLICY_CLASSES: dict[str, type[ExpertCachePolicy]] = {
    c.name: c for c in (LRUPolicy, FIFOPolicy, LFUPolicy, LFRUPolicy, BeladyPolicy)
}


def make_policy(name: str, capacity: int, num_experts: int, **kwargs) -> ExpertCachePolicy:
    """A policy by name (lru, fifo, lfu, lfru, belady)."""
    if name not in POLICY_CLASSES:
        raise TierwiseError(f"unknown cache policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICY_CLASSES[name](capacity, num_experts, **kwargs)


# -- the step stream of a trace -----------------------------------------------------------------------------------
@dataclass
class StepStream:
    """The steps one cache sees, per MoE layer: flat[layer] holds each step's U back to back."""

    flat: list[np.ndarray]  # per layer, int16 [sum |U|]
    ptr: list[np.ndarray]  # per layer, int64 [steps + 1]
    first: np.ndarray  # bool [steps]: first simulated step of its request
    tokens: np.ndarray  # int64 [steps]: tokens in the step
    phase: np.ndarray  # uint8 [steps]

    @property
    def num_steps(self) -> int:
        return len(self.first)


def _prefill_order(experts: np.ndarray, mass: np.ndarray | None) -> np.ndarray:
    """Distinct experts of one prefill call, highest router mass first (selection counts when mass is unknown)."""
    ids = np.unique(experts)
    weight = mass[ids] if mass is not None else np.bincount(experts.ravel(), minlength=ids.max() + 1)[ids]
    return ids[np.lexsort((ids, -weight))].astype(np.int16)


def step_stream(trace: RoutingTrace, *, prefill: str = "exclude") -> StepStream:
    """Split a trace into forward-call steps; prefill='exclude' drops prefill calls, 'include' simulates them."""
    if prefill not in ("exclude", "include"):
        raise TierwiseError(f"prefill must be 'exclude' or 'include', got {prefill!r}")
    starts = np.flatnonzero(trace.step_start())
    ends = np.r_[starts[1:], trace.num_tokens]
    phase = trace.phase[starts] if len(starts) else np.zeros(0, np.uint8)
    prefill_idx = np.cumsum(phase == PREFILL) - 1  # index into trace.prefill_mass
    req = np.searchsorted(trace.request_start, starts, side="right") - 1
    keep = np.ones(len(starts), dtype=bool) if prefill == "include" else phase == DECODE
    starts, ends, phase, prefill_idx, req = starts[keep], ends[keep], phase[keep], prefill_idx[keep], req[keep]
    first = np.r_[True, req[1:] != req[:-1]] if len(req) else np.zeros(0, bool)
    K = trace.top_k
    decode = np.flatnonzero(phase == DECODE)
    flat, ptr = [], []
    for layer in range(trace.num_layers):
        sizes = np.full(len(starts), K, dtype=np.int64)  # a decode step requests its token's K experts
        prefill_sets = {}
        for j in np.flatnonzero(phase == PREFILL):  # one call per request: a short Python loop
            mass = trace.prefill_mass[prefill_idx[j], layer] if trace.prefill_mass is not None else None
            prefill_sets[j] = _prefill_order(trace.experts[starts[j] : ends[j], layer, :], mass)
            sizes[j] = len(prefill_sets[j])
        offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        decode_experts = trace.experts[starts[decode], layer, :].ravel()
        if not prefill_sets:  # decode steps only: they are the whole stream, in order
            layer_flat = decode_experts
        else:
            layer_flat = np.empty(offsets[-1], dtype=np.int16)
            layer_flat[(offsets[decode][:, None] + np.arange(K)).ravel()] = decode_experts
        for j, u in prefill_sets.items():
            layer_flat[offsets[j] : offsets[j + 1]] = u
        flat.append(layer_flat)
        ptr.append(offsets)
    return StepStream(flat, ptr, first, (ends - starts).astype(np.int64), phase)


# -- the fast path ------------------------------------------------------------------------------------------------
@njit(cache=True)
def _next_use(flat, ptr, first, cold, num_experts):
    """For every entry of the stream, the step of the same expert's next request (NEVER: none, or not this request)."""
    nxt = np.empty(len(flat), np.int64)
    upcoming = np.full(num_experts, NEVER, np.int64)
    for s in range(len(ptr) - 2, -1, -1):
        for i in range(ptr[s], ptr[s + 1]):
            nxt[i] = upcoming[flat[i]]
        for i in range(ptr[s], ptr[s + 1]):
            upcoming[flat[i]] = s
        if cold and first[s]:
            upcoming[:] = NEVER
    return nxt


@njit(cache=True, inline="always")
def _victim_key(policy, r, count, score, next_of):
    """The primary victim key of the scanned policies' `_key`, as a float (ties go to the least recently used)."""
    if policy == LFU:
        return float(count[r])
    if policy == LFRU:
        return score[r]
    return -float(next_of[r])


@njit(cache=True, inline="always")
def _unlink(e, after, before):
    after[before[e]] = after[e]
    before[after[e]] = before[e]


@njit(cache=True, inline="always")
def _append(e, after, before, end):
    """Put e at the tail of the list whose sentinel is `end` (the head is after[end])."""
    tail = before[end]
    after[tail] = e
    before[e] = tail
    after[e] = end
    before[end] = e


@njit(cache=True)
def _simulate_layer(flat, ptr, first, cold, capacity, num_experts, policy, decay, hits, misses):
    """The per-step semantics of ExpertCachePolicy.access over a whole stream; fills hits[s], misses[s].

    LRU and FIFO keep residents in a list ordered by their key (last use / insertion), so the victim is the
    first listed expert not requested in this step: O(1) per request. The other policies scan the C residents.
    """
    n_steps = len(ptr) - 1
    nxt = _next_use(flat, ptr, first, cold, num_experts) if policy == BELADY else np.empty(0, np.int64)
    listed = policy == LRU or policy == FIFO
    end = num_experts  # list sentinel
    after = np.empty(num_experts + 1, np.int64)
    before = np.empty(num_experts + 1, np.int64)
    resident = np.zeros(num_experts, np.bool_)
    slots = np.empty(capacity, np.int64)  # resident experts, for scans
    slot_of = np.zeros(num_experts, np.int64)
    last = np.zeros(num_experts, np.int64)
    inserted = np.zeros(num_experts, np.int64)
    count = np.zeros(num_experts, np.int64)
    score = np.zeros(num_experts, np.float64)
    next_of = np.full(num_experts, NEVER, np.int64)
    in_step = np.full(num_experts, -1, np.int64)
    pending = np.empty(num_experts + 1, np.int64)  # this step's misses
    n_res = 0
    tick = 0
    for s in range(n_steps):
        if s == 0 or (cold and first[s]):
            resident[:] = False
            last[:] = 0
            inserted[:] = 0
            count[:] = 0
            score[:] = 0.0
            next_of[:] = NEVER
            after[end] = end
            before[end] = end
            n_res = 0
        a, b = ptr[s], ptr[s + 1]
        if policy == LFRU:
            for e in range(num_experts):
                score[e] *= decay
        h = 0
        m = 0
        for i in range(a, b):
            e = flat[i]
            in_step[e] = s
            if policy == LFU:
                count[e] += 1
            elif policy == LFRU:
                score[e] += 1.0
            elif policy == BELADY:
                next_of[e] = nxt[i]
            hit = resident[e]
            if hit and policy == LRU:  # refreshed: to the tail of the recency list
                _unlink(e, after, before)
                _append(e, after, before, end)
            # branch-free: a hit refreshes its recency, a miss is queued in U order
            h += hit
            tick += hit
            last[e] = tick if hit else last[e]
            pending[m] = e
            m += 1 - hit
        hits[s] = h
        misses[s] = m
        if b - a > capacity:  # oversized step: the first C experts of U stay, listed in key order
            for j in range(m):
                tick += 1
                last[pending[j]] = tick
                inserted[pending[j]] = tick
            for j in range(n_res):
                resident[slots[j]] = False
            after[end] = end
            before[end] = end
            kept = flat[a : a + capacity].astype(np.int64)
            order = np.argsort(last[kept] if policy != FIFO else inserted[kept])
            for k in range(capacity):
                e = kept[order[k]]
                resident[e] = True
                slots[k] = e
                slot_of[e] = k
                _append(e, after, before, end)
            n_res = capacity
            continue
        # misses tick in U order as they load; victims are never in this step, so this equals ticking them first
        for j in range(m):
            e = pending[j]
            tick += 1
            last[e] = tick
            inserted[e] = tick
            if n_res < capacity:
                slot = n_res
                n_res += 1
            else:
                if listed:
                    victim = after[end]
                    while in_step[victim] == s:
                        victim = after[victim]
                else:  # branch-free argmin of (key, last use) over residents not requested in this step
                    best, best_key, best_last = 0, np.inf, NEVER
                    for k in range(n_res):
                        r = slots[k]
                        key = _victim_key(policy, r, count, score, next_of)
                        better = (in_step[r] != s) & ((key < best_key) | ((key == best_key) & (last[r] < best_last)))
                        best = k if better else best
                        best_key = key if better else best_key
                        best_last = last[r] if better else best_last
                    victim = slots[best]
                resident[victim] = False
                _unlink(victim, after, before)
                slot = slot_of[victim]
            slots[slot] = e
            slot_of[e] = slot
            resident[e] = True
            _append(e, after, before, end)


def _layer_counts_fast(stream: StepStream, layer: int, cfg: "CacheConfig", num_experts: int):
    hits = np.zeros(stream.num_steps, np.int64)
    misses = np.zeros(stream.num_steps, np.int64)
    _simulate_layer(
        stream.flat[layer], stream.ptr[layer], stream.first, cfg.cold, cfg.capacity, num_experts,
        POLICIES.index(cfg.policy), lfru_decay(cfg.lfru_half_life), hits, misses,
    )
    return hits, misses


def _layer_counts_reference(stream: StepStream, layer: int, cfg: "CacheConfig", num_experts: int):
    """The same counts through the policy classes, one `access` per step (the readable specification)."""
    flat, ptr = stream.flat[layer], stream.ptr[layer]
    steps = [flat[ptr[s] : ptr[s + 1]].tolist() for s in range(stream.num_steps)]
    kwargs = {"half_life": cfg.lfru_half_life} if cfg.policy == "lfru" else {}
    policy = make_policy(cfg.policy, cfg.capacity, num_experts, **kwargs)
    bounds = list(np.flatnonzero(stream.first)) + [stream.num_steps] if cfg.cold else [0, stream.num_steps]
    hits = np.zeros(stream.num_steps, np.int64)
    misses = np.zeros(stream.num_steps, np.int64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if isinstance(policy, BeladyPolicy):
            policy.reset(future=steps[a:b])
        else:
            policy.reset()
        for s in range(a, b):
            r = policy.access(steps[s])
            hits[s], misses[s] = len(r.hits), len(r.misses)
    return hits, misses


def layer_counts(stream: StepStream, layer: int, config: "CacheConfig", num_experts: int, *, reference: bool = False):
    """(hits[steps], misses[steps]) of one layer's cache over a step stream."""
    run = _layer_counts_reference if reference else _layer_counts_fast
    return run(stream, layer, config, num_experts)


def single_request_stream(requests: np.ndarray) -> StepStream:
    """One layer's expert requests, each its own step: the one-request-per-access form of classic cache simulators.

    With one expert per step the per-step semantics reduce to the textbook policies, so results are comparable
    request for request with libCacheSim on the same sequence.
    """
    n = len(requests)
    first = np.zeros(n, dtype=bool)
    first[:1] = True
    return StepStream([np.asarray(requests, dtype=np.int16)], [np.arange(n + 1, dtype=np.int64)], first,
                      np.ones(n, dtype=np.int64), np.full(n, DECODE, dtype=np.uint8))


# -- simulation of a trace ----------------------------------------------------------------------------------------
@dataclass
class CacheConfig:
    capacity: int
    policy: str = "lru"
    cold: bool = True  # cold cache at every request (the paper's request isolation); False: warm across requests
    prefill: str = "exclude"  # 'exclude': simulate decode steps only; 'include': prefill calls are steps too
    lfru_half_life: float = DEFAULT_LFRU_HALF_LIFE

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise TierwiseError(f"unknown cache policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if self.capacity < 1:
            raise TierwiseError(f"cache capacity must be >= 1 expert, got {self.capacity}")


@dataclass
class CacheResult:
    policy: str
    capacity: int
    layers: int
    tokens: int  # simulated tokens (each counted once, not per layer)
    requests: int  # (token, slot, layer) expert requests
    unique_requests: int  # sum over steps and layers of |U|
    hits: int
    misses: int  # = #uMiss, unique misses
    steady_tokens: int  # tokens of steps after each request's first simulated step
    steady_misses: int  # misses of those steps (what Prop. 3.1 bounds)
    bytes_fetched: int
    per_layer_unique_hit_rate: list[float] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        """Share of (token, slot) expert requests served without a fetch."""
        return 1.0 - self.misses / self.requests if self.requests else float("nan")

    @property
    def unique_hit_rate(self) -> float:
        """uHR@C = sum of hits / sum of |U_t|."""
        return self.hits / self.unique_requests if self.unique_requests else float("nan")

    @property
    def misses_per_token_per_layer(self) -> float:
        return self.misses / (self.tokens * self.layers) if self.tokens else float("nan")

    @property
    def steady_misses_per_token_per_layer(self) -> float:
        return self.steady_misses / (self.steady_tokens * self.layers) if self.steady_tokens else float("nan")

    def to_dict(self) -> dict:
        return {
            "hit_rate": self.hit_rate,
            "unique_hit_rate": self.unique_hit_rate,
            "misses_per_token_per_layer": self.misses_per_token_per_layer,
            "steady_misses_per_token_per_layer": self.steady_misses_per_token_per_layer,
            "unique_misses": self.misses,
            "bytes_fetched": self.bytes_fetched,
            "unique_requests": self.unique_requests,
            "per_layer_unique_hit_rate": self.per_layer_unique_hit_rate,
        }


def simulate(
    trace: RoutingTrace, config: CacheConfig, *, stream: StepStream | None = None, reference: bool = False
) -> CacheResult:
    """One cache per MoE layer over the trace's steps. `reference=True` runs the policy classes instead of numba."""
    stream = stream if stream is not None else step_stream(trace, prefill=config.prefill)
    hits = misses = steady_misses = unique = 0
    per_layer = []
    steady = ~stream.first
    for layer in range(trace.num_layers):
        h, m = layer_counts(stream, layer, config, trace.num_experts, reference=reference)
        hits, misses, unique = hits + int(h.sum()), misses + int(m.sum()), unique + int(h.sum() + m.sum())
        steady_misses += int(m[steady].sum())
        per_layer.append(float(h.sum() / (h.sum() + m.sum())) if len(h) else float("nan"))
    tokens = int(stream.tokens.sum())
    return CacheResult(
        policy=config.policy,
        capacity=config.capacity,
        layers=trace.num_layers,
        tokens=tokens,
        requests=tokens * trace.top_k * trace.num_layers,
        unique_requests=unique,
        hits=hits,
        misses=misses,
        steady_tokens=int(stream.tokens[steady].sum()),
        steady_misses=steady_misses,
        bytes_fetched=misses * trace.expert_bytes,
        per_layer_unique_hit_rate=per_layer,
    )


def sweep(
    trace: RoutingTrace,
    policies: Sequence[str],
    capacities: Sequence[int],
    *,
    cold: bool = True,
    prefill: str = "exclude",
    lfru_half_life: float = DEFAULT_LFRU_HALF_LIFE,
) -> dict[str, dict[int, CacheResult]]:
    """policy -> capacity -> result, sharing one step stream."""
    stream = step_stream(trace, prefill=prefill)
    return {
        p: {
            c: simulate(trace, CacheConfig(c, p, cold=cold, prefill=prefill, lfru_half_life=lfru_half_life), stream=stream)
            for c in capacities
        }
        for p in policies
    }
