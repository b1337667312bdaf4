"""Storage profiles: the modelled cost of fetching one *target-size* expert on a miss.

The embedded model's experts are a few KB, so reading them from a local SSD costs microseconds. To let a small model
feel the miss penalty of a real 16B MoE on a phone or Jetson, every profile except `local` charges each miss
`latency + target_bytes / bandwidth`, where `target_bytes` is the size of one expert of the *target* model
(DeepSeek-V2-Lite at bf16 by default). The runtime reports this modelled time next to the measured wall time, and
their sum. Table and sources: docs/offload.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tierwise.common.errors import TierwiseError


@dataclass(frozen=True)
class StorageProfile:
    name: str
    bandwidth: float  # bytes/s of sustained sequential read; 0 for `local` (measured only)
    latency: float  # seconds per request, before the first byte arrives
    source: str

    @property
    def modelled(self) -> bool:
        return self.bandwidth > 0

    def miss_seconds(self, nbytes: int) -> float:
        """Modelled time to fetch one expert of `nbytes` (0 for `local`, whose misses are only measured)."""
        return self.latency + nbytes / self.bandwidth if self.modelled else 0.0


GB = 1e9
PROFILES: dict[str, StorageProfile] = {
    p.name: p
    for p in (
        StorageProfile("local", 0.0, 0.0, "measured only: the expert store's real reads on this machine"),
        StorageProfile("ufs4", 4.2 * GB, 100e-6, "Samsung UFS 4.0 (2022): 4,200 MB/s sequential read; ~100 us command latency (project assumption)"),
        StorageProfile("nvme", 7.0 * GB, 80e-6, "PCIe 4.0 x4 NVMe SSD (e.g. Samsung 990 PRO, 7,450 MB/s seq. read): 7 GB/s; ~80 us 4K read latency"),
        StorageProfile("emmc", 0.3 * GB, 300e-6, "eMMC 5.1 HS400 (400 MB/s bus): ~300 MB/s sequential read; ~300 us latency (project assumption)"),
        StorageProfile("pcie3-host", 12.0 * GB, 10e-6, "host RAM -> GPU over PCIe 3.0 x16 (15.75 GB/s raw, ~12 GB/s pinned copies; the paper's RTX 3090 setup); ~10 us launch"),
    )
}


def storage_profile(name: str) -> StorageProfile:
    if name not in PROFILES:
        raise TierwiseError(f"unknown storage profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


def _expert_bytes(hidden: int, inter: int, bits_per_weight: float) -> int:
    """gate, up and down projections of one SwiGLU expert: 3 * H * I weights."""
    return int(3 * hidden * inter * bits_per_weight / 8)


# One routed expert of real models (H, I from their public config.json). q4 = llama.cpp Q4_K_M, ~4.5 bits/weight.
TARGET_EXPERTS: dict[str, int] = {
    "dsv2-lite-bf16": _expert_bytes(2048, 1408, 16),
    "dsv2-lite-q4": _expert_bytes(2048, 1408, 4.5),
    "qwen1.5-moe-bf16": _expert_bytes(2048, 1408, 16),
    "olmoe-bf16": _expert_bytes(2048, 1024, 16),
    "qwen3-30b-a3b-bf16": _expert_bytes(2048, 768, 16),
    "mixtral-8x7b-bf16": _expert_bytes(4096, 14336, 16),
}
DEFAULT_TARGET = "dsv2-lite-bf16"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def target_expert_bytes(target: str | int, own_expert_bytes: int) -> int:
    """Bytes charged per miss: a named target, `own` (the model's own expert size), or a size like `17.3MB`."""
    if isinstance(target, int):
        return target
    if target == "own":
        return own_expert_bytes
    if target in TARGET_EXPERTS:
        return TARGET_EXPERTS[target]
    m = _SIZE.match(target)
    if not m:
        raise TierwiseError(
            f"unknown target expert size {target!r}; use own, one of {', '.join(TARGET_EXPERTS)}, or a size such as 17.3MB"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower() if m.group(2) else None])
