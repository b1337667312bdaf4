"""The overlap timing model: a decode step of the target model with expert fetches on one I/O channel.

A real offloading runtime (llama.cpp's mmap paging aside) loads experts on an I/O thread while the compute unit
works. Per decode step this model walks the target's MoE layers in order; layer j does

    r_j    = t + a                                     attention, router and shared experts take a
    demand misses queue on the channel at r_j          each fetch takes f = latency + bytes/bandwidth; the
                                                       channel serves one fetch at a time, back to back (FIFO)
    prefetches for layer j+1 queue behind them         issued from layer j's hidden state, so they overlap the
                                                       rest of layer j (and j+1's attention)
    experts compute one at a time, each for e,         hits are ready at r_j, a prefetched expert when its fetch
    in order of readiness                              is done, a demand miss when its fetch is done
    t      = end of the last expert

plus `other` per step (dense layers, LM head), and the channel's backlog carries over to the next step. Compute
times come from targets.py (bytes read / memory bandwidth), f from the storage profile.

What the runtime measured on a small model is replayed on the target's shape: measured layer (j mod L_measured)
supplies target layer j's events (the measured layers repeated cyclically to fill the target's layers), and each
measured expert stands for K_target / K_measured target experts (`scale`): its fetch and its compute take `scale`
times a target expert's, so misses per layer keep the measured share of the K routed experts.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LayerStep:
    """What one MoE layer did in one decode step (recorded by the runtime, replayed here)."""

    hits: int = 0  # needed experts resident before this step
    demand: int = 0  # needed experts fetched after this layer's router ran
    prefetched: list[int] = field(default_factory=list)  # needed experts the previous layer prefetched this step:
    # their positions in that layer's prefetch queue
    prefetch: int = 0  # fetches this layer issued for the next layer

    @property
    def needed(self) -> int:
        return self.hits + self.demand + len(self.prefetched)


@dataclass(frozen=True)
class StepTime:
    total: float  # seconds of the step
    compute: float  # the same step with every expert resident (no I/O)
    io: float  # fetch time issued in the step, end to end as if serial (what a non-overlapping model charges)
    backlog: float  # channel time still queued when the step ends (carried into the next step)

    @property
    def stall(self) -> float:
        """Time the step waited for I/O beyond its compute."""
        return self.total - self.compute


@dataclass(frozen=True)
class TimingModel:
    layers: int  # target MoE layers
    other: float  # seconds per step outside the MoE layers
    attention: float  # a: seconds per MoE layer before its routed experts (attention, router, shared experts)
    expert: float  # e: seconds of one target expert's compute
    fetch: float  # f: seconds of one target expert's fetch
    scale: float = 1.0  # target experts per measured expert (K_target / K_measured)

    def target_layers(self, measured: list[LayerStep]) -> list[LayerStep]:
        """The measured layers repeated cyclically to the target's layer count."""
        return [measured[j % len(measured)] for j in range(self.layers)]

    def step(self, measured: list[LayerStep], backlog: float = 0.0) -> StepTime:
        """One decode step from the measured layers' events; `backlog` = channel time left from the last step."""
        e, f = self.scale * self.expert, self.scale * self.fetch
        t = self.other
        free = backlog  # when the channel is next free (the step starts at 0)
        compute = self.other
        fetches = 0
        previous_prefetch: list[float] = []
        for layer in self.target_layers(measured):
            ready_at = t + self.attention
            ready = [ready_at] * layer.hits
            for _ in range(layer.demand):
                free = max(free, ready_at) + f
                ready.append(free)
            prefetch_done = []
            for _ in range(layer.prefetch):
                free = max(free, ready_at) + f
                prefetch_done.append(free)
            ready += [previous_prefetch[p] if p < len(previous_prefetch) else ready_at for p in layer.prefetched]
            t = ready_at
            for r in sorted(ready):
                t = max(t, r) + e
            previous_prefetch = prefetch_done
            compute += self.attention + layer.needed * e
            fetches += layer.demand + layer.prefetch
        return StepTime(t, compute, fetches * f, max(0.0, free - t))

    def steps(self, measured_steps: list[list[LayerStep]]) -> list[StepTime]:
        """Consecutive decode steps of one request (the channel's backlog carries from step to step)."""
        out, backlog = [], 0.0
        for measured in measured_steps:
            out.append(self.step(measured, backlog))
            backlog = out[-1].backlog
        return out

    def describe(self) -> dict:
        return {"target_moe_layers": self.layers, "other_ms": 1e3 * self.other, "attention_ms": 1e3 * self.attention,
                "expert_ms": 1e3 * self.expert, "fetch_ms": 1e3 * self.fetch, "scale": self.scale}


def timing_model(target, platform, profile, measured_top_k: int) -> TimingModel | None:
    """The timing model of `target` (targets.TargetModel) on `platform` with `profile`'s fetches; None for `local`."""
    if platform is None or not profile.modelled:
        return None
    bw = platform.memory_bandwidth
    return TimingModel(layers=target.moe_layers, other=target.bytes_of(target.other_params) / bw,
                       attention=target.bytes_of(target.layer_params) / bw, expert=target.expert_bytes / bw,
                       fetch=profile.miss_seconds(target.expert_bytes), scale=target.top_k / measured_top_k)
