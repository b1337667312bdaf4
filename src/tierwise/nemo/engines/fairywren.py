"""FairyWREN (OSDI'24, with the migration bugs the Nemo authors fixed): HLog + HSet on zones.

Sets are written out of place into set zones with over-provisioning `set_op` (X). Two ways objects reach sets:
- passive migration: when HLog reclaims its oldest zone, each live object pulls every log object of its set,
  and the set is read, merged and rewritten (LogThreshold 1: nothing is dropped);
- active migration: HSet GC is folded into migration. When set zones run out, the oldest set zone is collected,
  and every valid set in it is rewritten together with the log objects pending for it.
Every object that leaves the log lands in a set (the counters `migrated_objects_*` prove it), which is what makes
L2SWA = (2 - p) * (1 - X) * N_set / (2 * N_log) appear (nemo.md Eq. 6/7; p = passive share of set writes).
"""

from __future__ import annotations

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.nemo.device import ZonedDevice
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.kangaroo import HierarchicalEngine
from tierwise.nemo.engines.log import LogObject
from tierwise.nemo.layout import PAGE_SIZE


@register_engine("fairywren")
class FairyWrenEngine(HierarchicalEngine):
    name = "fairywren"

    def __init__(self, device, metrics=None, *, log_pct: float = 0.05, set_op: float = 0.05,
                 bloom_fp: float = 0.01, objects_per_set: float = 16.0, buffer_pages: int = 16):
        if not isinstance(device, ZonedDevice):
            raise TierwiseError("FairyWREN is a design for zoned (ZNS/FDP) devices; give it a zoned device")
        super().__init__(device, metrics, log_pct=log_pct, set_op=set_op, victim="fifo", bloom_fp=bloom_fp,
                         objects_per_set=objects_per_set, buffer_pages=buffer_pages, segment_kb=0,
                         gc_merge=self._active_migration)

    def _on_log_evict(self, evicted: list[LogObject]) -> None:
        for o in evicted:
            if self._live(o):  # not already moved with an earlier object of its set
                j = self.log.bucket_of(o.tag)
                self._migrate(j, self.log.take_bucket(j), "passive")

    def _active_migration(self, j: int, page: np.ndarray) -> int:
        """GC is relocating set j: merge the log objects waiting for it into the copy."""
        group = self.log.take_bucket(j)
        added = self.sets.merge(page, group)
        self.metrics.count("migrations_active")
        self.metrics.count("migrated_objects_active", len(group))
        self.metrics.count("migrated_bytes_active", added)
        return added

    def l2swa(self, counters: dict[str, float]) -> dict[str, float | None]:
        """Measured L2SWA (set bytes written / bytes migrated into sets), the passive share p, and Eq. 6/7's
        prediction from the geometry, from a `Metrics.summary()['counters']` dict."""
        passive = counters.get("migrations_passive", 0)
        active = counters.get("migrations_active", 0)
        migrated = counters.get("migrated_bytes_passive", 0) + counters.get("migrated_bytes_active", 0)
        writes = passive + active
        p = passive / writes if writes else None
        l2swa_p = (1 - self.sets.op) * self.sets.phys_pages / (2 * self.log.capacity_pages)
        return {
            "l2swa": writes * PAGE_SIZE / migrated if migrated else None,
            "passive_share": p,
            "l2swa_passive_theory": l2swa_p,
            "l2swa_theory": (2 - p) * l2swa_p if p is not None else None,
        }
