"""The model and the device the timing model stands for: a `TargetModel` (a real MoE's shape) on a `Platform`.

The runtime runs a small model; what it measures (which experts each layer hits, misses and prefetches, step by
step) is replayed by `timing.py` on a real model's shape: its number of MoE layers, the bytes one token reads per
layer outside the routed experts (attention, router, shared experts), one routed expert's bytes, and the bytes read
outside the MoE layers (dense layers, LM head). Compute time follows one stated rule: decode at batch 1 is
memory-bandwidth bound, so reading N bytes of weights takes N / (the platform's peak memory bandwidth). At peak
bandwidth this is a lower bound on compute, so the share of time spent on I/O is, if anything, overstated.

Parameter counts are derived from each model's public config.json (the arithmetic is in docs/offload.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tierwise.common.errors import TierwiseError
from tierwise.common.units import parse_size

GB = 1e9


@dataclass(frozen=True)
class TargetModel:
    name: str
    moe_layers: int  # MoE decoder layers
    num_experts: int  # routed experts per MoE layer (E)
    top_k: int  # routed experts per token (K)
    expert_params: int  # one routed SwiGLU expert: 3 * H * I
    layer_params: int  # per MoE layer besides its routed experts: attention, router, shared experts (+ their gate)
    other_params: int  # per token outside the MoE layers: dense layers and the LM head (an embedding row is ~0)
    bits_per_weight: float
    source: str
    expert_bytes_override: int | None = None  # `--target 17.3MB`: this many bytes per expert, the rest unchanged

    @property
    def expert_bytes(self) -> int:
        if self.expert_bytes_override is not None:
            return self.expert_bytes_override
        return int(self.expert_params * self.bits_per_weight / 8)

    def bytes_of(self, params: int) -> float:
        return params * self.bits_per_weight / 8

    def describe(self) -> dict:
        return {"name": self.name, "moe_layers": self.moe_layers, "num_experts": self.num_experts,
                "top_k": self.top_k, "expert_bytes": self.expert_bytes, "layer_bytes": self.bytes_of(self.layer_params),
                "other_bytes": self.bytes_of(self.other_params), "bits_per_weight": self.bits_per_weight,
                "source": self.source}


@dataclass(frozen=True)
class Platform:
    name: str
    memory_bandwidth: float  # bytes/s, peak
    source: str


def _swiglu(hidden: int, inter: int) -> int:
    """gate, up and down projections of one SwiGLU MLP: 3 * H * I weights."""
    return 3 * hidden * inter


def _gqa(hidden: int, heads: int, kv_heads: int, head_dim: int) -> int:
    """q, k, v, o projections of grouped-query attention."""
    return 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim


# DeepSeek-V2-Lite (deepseek-ai/DeepSeek-V2-Lite config.json): H 2048, 27 layers (layer 0 dense, I 10944), MLA
# without q compression (16 heads, nope 128 + rope 64, kv_lora_rank 512, v 128), 64 routed experts (I 1408), top-6,
# 2 shared experts, vocab 102400, untied LM head.
_DSV2_ATTN = 2048 * 16 * 192 + 2048 * (512 + 64) + 512 * 16 * (128 + 128) + 16 * 128 * 2048
_DSV2 = dict(moe_layers=26, num_experts=64, top_k=6, expert_params=_swiglu(2048, 1408),
             layer_params=_DSV2_ATTN + 64 * 2048 + 2 * _swiglu(2048, 1408),
             other_params=_DSV2_ATTN + _swiglu(2048, 10944) + 102400 * 2048,
             source="deepseek-ai/DeepSeek-V2-Lite config.json (2.4B active of 15.7B)")
# Qwen1.5-MoE-A2.7B: H 2048, 24 MoE layers, 16 heads x 128 (no GQA), 60 experts (I 1408), top-4, one shared expert
# (I 5632) with a sigmoid gate, vocab 151936, untied.
_QWEN15 = dict(moe_layers=24, num_experts=60, top_k=4, expert_params=_swiglu(2048, 1408),
               layer_params=_gqa(2048, 16, 16, 128) + 60 * 2048 + _swiglu(2048, 5632) + 2048,
               other_params=151936 * 2048, source="Qwen/Qwen1.5-MoE-A2.7B config.json (2.7B active of 14.3B)")
# OLMoE-1B-7B-0924: H 2048, 16 MoE layers, 16 heads x 128, 64 experts (I 1024), top-8, vocab 50304, untied.
_OLMOE = dict(moe_layers=16, num_experts=64, top_k=8, expert_params=_swiglu(2048, 1024),
              layer_params=_gqa(2048, 16, 16, 128) + 64 * 2048, other_params=50304 * 2048,
              source="allenai/OLMoE-1B-7B-0924 config.json (1.3B active of 6.9B)")
# Qwen3-30B-A3B: H 2048, 48 MoE layers, 32 query / 4 KV heads x 128, 128 experts (I 768), top-8, vocab 151936.
_QWEN3 = dict(moe_layers=48, num_experts=128, top_k=8, expert_params=_swiglu(2048, 768),
              layer_params=_gqa(2048, 32, 4, 128) + 128 * 2048, other_params=151936 * 2048,
              source="Qwen/Qwen3-30B-A3B config.json (3.3B active of 30.5B)")
# Mixtral-8x7B: H 4096, 32 MoE layers, 32 query / 8 KV heads x 128, 8 experts (I 14336), top-2, vocab 32000.
_MIXTRAL = dict(moe_layers=32, num_experts=8, top_k=2, expert_params=_swiglu(4096, 14336),
                layer_params=_gqa(4096, 32, 8, 128) + 8 * 4096, other_params=32000 * 4096,
                source="mistralai/Mixtral-8x7B-v0.1 config.json (12.9B active of 46.7B)")

# q4 = llama.cpp Q4_K_M at ~4.5 bits per weight, applied to every weight (an approximation: some tensors are Q6_K).
TARGETS: dict[str, TargetModel] = {
    t.name: t
    for t in (
        TargetModel("dsv2-lite-bf16", bits_per_weight=16, **_DSV2),
        TargetModel("dsv2-lite-q4", bits_per_weight=4.5, **_DSV2),
        TargetModel("qwen1.5-moe-bf16", bits_per_weight=16, **_QWEN15),
        TargetModel("olmoe-bf16", bits_per_weight=16, **_OLMOE),
        TargetModel("qwen3-30b-a3b-bf16", bits_per_weight=16, **_QWEN3),
        TargetModel("mixtral-8x7b-bf16", bits_per_weight=16, **_MIXTRAL),
    )
}
DEFAULT_TARGET = "dsv2-lite-bf16"

PLATFORMS: dict[str, Platform] = {
    p.name: p
    for p in (
        Platform("jetson-orin-nx", 102.4 * GB, "NVIDIA Jetson Orin NX 16GB datasheet: 128-bit LPDDR5, 102.4 GB/s"),
        Platform("jetson-agx-orin", 204.8 * GB, "NVIDIA Jetson AGX Orin 64GB datasheet: 256-bit LPDDR5, 204.8 GB/s"),
        Platform("rtx3090", 936.2 * GB, "NVIDIA GeForce RTX 3090 specifications: 24 GB GDDR6X, 936 GB/s"),
        Platform("rtx4090", 1008.0 * GB, "NVIDIA GeForce RTX 4090 specifications: 24 GB GDDR6X, 1,008 GB/s"),
    )
}
# The device each storage profile is attached to when --platform is not given: flash on an edge board, host
# memory behind a desktop GPU (the paper's setting: RTX 3090 over PCIe 3.0).
DEFAULT_PLATFORM = {"ufs4": "jetson-orin-nx", "nvme": "jetson-orin-nx", "emmc": "jetson-orin-nx",
                    "pcie3-host": "rtx3090", "pcie4-host": "rtx4090"}


def platform(name: str) -> Platform:
    if name not in PLATFORMS:
        raise TierwiseError(f"unknown platform {name!r}; choose one of: {', '.join(PLATFORMS)}")
    return PLATFORMS[name]


def default_platform(storage: str) -> str | None:
    """The platform a storage profile implies (None for `local`, whose time is only measured)."""
    return DEFAULT_PLATFORM.get(storage)


def own_target(adapter, model) -> TargetModel:
    """The measured model itself as the target: its own layers, shape and weight dtype (no scaling)."""
    from tierwise.remoe.models.adapters import decoder_layers

    layers = decoder_layers(model)
    element = next(model.parameters()).element_size()
    expert_params = adapter.expert_bytes // element
    moe_params = [sum(p.numel() for p in layers[i].parameters()) for i in adapter.moe_layers]
    layer_params = moe_params[0] - adapter.num_experts * expert_params
    # everything else one token reads: dense layers, final norm, LM head (an embedding lookup reads one row)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    other = sum(p.numel() for p in model.parameters()) - sum(moe_params) - (0 if tied else embedding.numel())
    return TargetModel("own", len(adapter.moe_layers), adapter.num_experts, adapter.top_k, expert_params,
                       layer_params, other, 8 * element, f"the measured {adapter.model_type} model itself")


def resolve_target(spec: str, adapter, model) -> TargetModel:
    """A named target, `own`, or a size such as `17.3MB` (the measured model's shape with that expert size)."""
    if spec in TARGETS:
        return TARGETS[spec]
    if spec == "own":
        return own_target(adapter, model)
    try:
        size = parse_size(spec)
    except TierwiseError:
        raise TierwiseError(f"unknown target expert size {spec!r}; use own, one of {', '.join(TARGETS)}, or a size "
                            "such as 17.3MB") from None
    return replace(own_target(adapter, model), name=spec, expert_bytes_override=size)
