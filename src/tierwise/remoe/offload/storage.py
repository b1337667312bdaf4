"""Storage profiles: what fetching one *target-size* expert costs, `latency + target_bytes / bandwidth`.

The embedded model's experts are a few KB, so reading them from a local SSD costs microseconds. To let a small model
feel the miss penalty of a real MoE on a phone, a Jetson or a desktop GPU, each profile except `local` gives the time
of one fetch of an expert of the *target* model (targets.py). The timing model (timing.py) queues these fetches on
one I/O channel beside the target's compute; `--throttle` makes each real store read take that long. Table and
sources: docs/offload.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from tierwise.common.errors import TierwiseError
from tierwise.remoe.offload.targets import DEFAULT_TARGET, TARGETS

__all__ = ["DEFAULT_TARGET", "PROFILES", "StorageProfile", "TARGET_EXPERTS", "storage_profile"]


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
        """Time to fetch one expert of `nbytes` (0 for `local`, whose reads are only measured)."""
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
        StorageProfile("pcie4-host", 25.0 * GB, 10e-6, "host RAM -> GPU over PCIe 4.0 x16 (31.5 GB/s raw, ~25 GB/s pinned copies, project assumption: 80 % of raw as for PCIe 3.0); ~10 us launch"),
    )
}


def storage_profile(name: str) -> StorageProfile:
    if name not in PROFILES:
        raise TierwiseError(f"unknown storage profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


# One routed expert of each named target (targets.py).
TARGET_EXPERTS: dict[str, int] = {name: t.expert_bytes for name, t in TARGETS.items()}
