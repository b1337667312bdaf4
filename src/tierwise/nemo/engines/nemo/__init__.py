"""Nemo: SetGroups + delayed flush + hotness-aware write-back + the PBFG index (nemo.md §3)."""

from tierwise.nemo.engines.nemo.config import Geometry, NemoConfig, plan_geometry
from tierwise.nemo.engines.nemo.engine import NemoEngine

__all__ = ["Geometry", "NemoConfig", "NemoEngine", "plan_geometry"]
