"""ReMoE: routing analysis, router fine-tuning for expert reuse, and expert offloading for MoE LLMs.

The Python API is `tierwise.remoe.api` (docs/python-api.md); `trace`, `analyze`, `evaluate`, `finetune` and the
result types are re-exported here, loaded on first use so that importing this package stays cheap. `offload` is
not: the name belongs to the subpackage `tierwise.remoe.offload`; call `tierwise.remoe.api.offload`.
"""

from __future__ import annotations

__all__ = ["AnalysisResult", "EvalResult", "FinetuneResult", "OffloadResult", "TraceResult", "analyze", "evaluate",
           "finetune", "trace"]


def __getattr__(name: str):
    if name in __all__:
        from tierwise.remoe import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
