"""ExpertCache: which experts of one MoE layer are in memory, and in which slot row.

Residency decisions come from the *same* policy classes the trace simulator uses (`tierwise.remoe.analysis.cachesim`), so a
simulated hit rate and one measured by the runtime mean the same thing. This class only adds the slot bookkeeping
the runtime needs: a resident expert owns one of C rows of the layer's slot tensors, and the bookkeeping of
speculative prefetch (which resident experts were loaded ahead of use and not used yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.analysis.cachesim import make_policy

ONLINE_POLICIES = ("lru", "lfu", "fifo", "lfru")  # belady needs the future, so it exists only in the simulator


def check_policy(policy: str) -> None:
    if policy not in ONLINE_POLICIES:
        raise TierwiseError(f"unknown expert cache policy {policy!r} for the runtime; choose from {', '.join(ONLINE_POLICIES)}")


@dataclass
class CacheStep:
    """The outcome of one step (one forward call of the layer)."""

    hits: list[int]
    misses: list[int]
    evicted: dict[int, int] = field(default_factory=dict)  # expert -> slot row it held until this step
    inserted: dict[int, int] = field(default_factory=dict)  # expert -> slot row it was given this step
    prefetch_used: list[int] = field(default_factory=list)  # hits on experts a prefetch loaded, first use
    prefetch_wasted: int = 0  # prefetched experts evicted by this step before any use


class ExpertCache:
    """At most `capacity` of a layer's `num_experts` experts; `row_of[e]` is e's slot row, or -1 when absent."""

    def __init__(self, num_experts: int, capacity: int, policy: str = "lru"):
        check_policy(policy)
        self.num_experts = num_experts
        self.capacity = capacity
        self.policy = make_policy(policy, capacity, num_experts)
        self.name = self.policy.name
        # The same mapping twice: a dict for the per-step bookkeeping, a tensor for the runtime's gather.
        self.slot: dict[int, int] = {}
        self.row_of = torch.full((num_experts,), -1, dtype=torch.long)
        self.free_rows = list(range(capacity - 1, -1, -1))
        self.unused_prefetch: set[int] = set()  # resident experts a prefetch loaded that no step has used yet

    def reset(self) -> int:
        """Empty the cache (cold start of a request); returns the prefetched experts dropped unused."""
        wasted = len(self.unused_prefetch)
        self.policy.reset()
        self.slot.clear()
        self.row_of.fill_(-1)
        self.free_rows = list(range(self.capacity - 1, -1, -1))
        self.unused_prefetch.clear()
        return wasted

    def resident(self) -> int:
        return len(self.slot)

    def access(self, requested: Sequence[int]) -> CacheStep:
        """One step: the distinct experts one forward call needs, most important first (cachesim's U order)."""
        result = self.policy.access(requested)
        step = CacheStep(result.hits, result.misses)
        step.prefetch_used = [e for e in result.hits if e in self.unused_prefetch]
        self.unused_prefetch.difference_update(step.prefetch_used)
        self._apply(result, step)
        return step

    def prefetch(self, experts: Sequence[int]) -> CacheStep:
        """Load `experts` ahead of use: the absent ones are inserted as one access of the policy (it picks the
        victims, as for a miss; LFU/LFRU count it as a use). `inserted` are the loads to issue, in `experts` order."""
        absent = [e for e in dict.fromkeys(int(e) for e in experts) if e not in self.policy][: self.capacity]
        step = CacheStep([], absent)
        if absent:
            self._apply(self.policy.access(absent), step)
            self.unused_prefetch.update(step.inserted)
        return step

    def _apply(self, result, step: CacheStep) -> None:
        """Slot rows follow the policy's decision: evicted experts free their rows, cached misses take one."""
        for e in result.evicted:
            row = self.slot.pop(e)
            step.evicted[e] = row
            self.row_of[e] = -1
            self.free_rows.append(row)
            if e in self.unused_prefetch:
                self.unused_prefetch.discard(e)
                step.prefetch_wasted += 1
        for e in result.misses:
            if e in self.policy:  # misses beyond capacity (prefill) are computed from staging rows, not cached
                row = self.free_rows.pop()
                self.slot[e] = row
                self.row_of[e] = row
                step.inserted[e] = row
