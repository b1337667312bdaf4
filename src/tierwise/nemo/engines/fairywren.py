"""FairyWREN (OSDI'24, with the migration bugs the Nemo authors fixed): HLog + HSet on zones.

Sets are written out of place into set zones with over-provisioning `set_op` (X). Two ways objects reach sets:
- passive migration: when HLog reclaims its oldest zone, each live object pulls every log object of its set,
  and the set is read, merged and rewritten (LogThreshold 1: nothing is dropped);
- active migration: HSet GC is folded into migration. When set zones run out, the oldest set zone is collected,
  and every valid set in it is rewritten together with the log objects pending for it.
Every object that leaves the log lands in a set (the counters `migrated_objects_*` prove it), which is what makes
L2SWA = (2 - p) * (1 - X) * N_set / (2 * N_log) appear (nemo.md Eq. 6/7; p = passive share of set writes; it
models sets without hot/cold separation, `hot_cold=False`).

As the artifact builds it, each set is a cold and a hot half, each a page in zones of its own (`hot_cold`, the
artifact's 8 KB bucket = 4 KB hot + 4 KB cold; `kangaroo.py` describes the rebuild; off by default: at 8 MiB it
doubles ALWA, docs/results-nemo.md "Baselines as their authors built them"), and objects enter a set at
RRIP_MAX - 1 - (log hits) with RRIParoo's admission rule (`rrip_insert="authors"`; the artifact readmits a refused
object to the log, here it is dropped and counted as `rejected`). Migrations write the cold half; the hot half is
rewritten when it is rebuilt (one set move in `hot_rebuild`) and when its own zones are collected (copied as is:
rebuilding it there would rewrite the cold half from inside GC).
"""

from __future__ import annotations

from collections import namedtuple

from tierwise.nemo import metrics as mt
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.base import register_compiled
from tierwise.nemo.engines.kangaroo import (HIER_FIELDS, HierarchicalEngine, hier_delete, hier_flush, hier_get,
                                            hier_set, migrate, take_into_set)
from tierwise.nemo.engines.paged import log_bucket, log_capacity_pages, log_live, register_log_owner
from tierwise.nemo.engines.settier import register_set_owner
from tierwise.nemo.layout import PAGE_SIZE
from tierwise.nemo.native import internal

FairyWrenState = namedtuple("FairyWrenState", HIER_FIELDS)


@internal
def passive_migration(P, n):
    """HLog reclaimed a zone: each live object migrates with every log object of its set."""
    L = P.log
    for i in range(n):
        tag = L.ev_tag[i]
        if log_live(L, tag, L.ev_loc[i]):  # not already moved with an earlier object of its set
            migrate(P, log_bucket(L, tag), mt.C_MIGRATIONS_PASSIVE)


@internal
def active_migration(P, S, j, page):
    """Set GC is relocating set j: merge the log objects waiting for it into its (cold) copy (hot halves are
    written with `NO_OWNER`: their GC only copies)."""
    n, added = take_into_set(P, j, page)
    c = P.m.counters
    c[mt.C_MIGRATIONS_ACTIVE] += 1
    c[mt.C_MIGRATED_OBJECTS_ACTIVE] += n
    c[mt.C_MIGRATED_BYTES_ACTIVE] += added
    return added


register_compiled(FairyWrenState, get=hier_get, set=hier_set, delete=hier_delete, flush=hier_flush)
register_log_owner(FairyWrenState, passive_migration)
register_set_owner(FairyWrenState, active_migration)


@register_engine("fairywren")
class FairyWrenEngine(HierarchicalEngine):
    name = "fairywren"

    def __init__(self, device, metrics=None, *, log_pct: float = 0.05, set_op: float = 0.05, hot_cold: bool = False,
                 hot_rebuild: int = 5, rrip_insert: str = "authors", bloom_fp: float = 0.01,
                 objects_per_set: float = 16.0, buffer_pages: int = 16):
        # sets out of place with FairyWREN's own GC on any device: on a conventional SSD its segments play the
        # zones (FairyWREN over the FTL, as on an FDP drive without placement hints)
        super().__init__(device, metrics, log_pct=log_pct, set_op=set_op, victim="fifo", bloom_fp=bloom_fp,
                         objects_per_set=objects_per_set, buffer_pages=buffer_pages, rrip_insert=rrip_insert,
                         hot_cold=hot_cold, hot_rebuild=hot_rebuild, in_place=False)
        self._ready(self._bundle(FairyWrenState))

    def l2swa(self, counters: dict[str, float]) -> dict[str, float | None]:
        """Measured L2SWA (set bytes written / bytes migrated into sets), the passive share p, and Eq. 6/7's
        prediction from the geometry, from a `Metrics.summary()['counters']` dict (without hot/cold halves)."""
        passive = counters.get("migrations_passive", 0)
        active = counters.get("migrations_active", 0)
        migrated = counters.get("migrated_bytes_passive", 0) + counters.get("migrated_bytes_active", 0)
        writes = passive + active
        p = passive / writes if writes else None
        l2swa_p = (1 - self.sets.op) * self.sets.phys_pages / (2 * log_capacity_pages(self.log))
        return {
            "l2swa": writes * PAGE_SIZE / migrated if migrated else None,
            "passive_share": p,
            "l2swa_passive_theory": l2swa_p,
            "l2swa_theory": (2 - p) * l2swa_p if p is not None else None,
        }
