"""Nemo: a low-write-amplification flash cache for tiny objects, its baselines, devices, traces and server.

The Python API (`tierwise.nemo.api`, docs/python-api.md) is re-exported here: `open_engine`, `replay`, `bench`,
`sweep`, `trace_stats`, `synth_trace` and their result types. It loads on first use, so importing this package
stays cheap.
"""

from __future__ import annotations

import sys
import types

__all__ = ["BenchResult", "ReplayResult", "SweepResult", "TraceStats", "bench", "open_engine", "replay", "sweep",
           "synth_trace", "trace_stats"]


def __getattr__(name: str):
    if name in __all__:
        from tierwise.nemo import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """`nemo.replay` and `nemo.bench` stay the API's functions once their modules load: importing a submodule would
    otherwise rebind the package's attribute of that name to it (import names from those modules instead)."""

    def __setattr__(self, name: str, value: object) -> None:
        if not (name in __all__ and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
