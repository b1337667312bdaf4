"""Kangaroo (SOSP'21): a small flash log (KLog) in front of a large set-associative tier (KSet).

Objects land in the log (one cheap append each). When the log's oldest zone is reclaimed, each of its live
objects pulls every other log object of the same set; a set is rewritten only if at least `threshold` objects
move together (threshold admission), otherwise the objects are dropped, except those hit while in the log, which
are readmitted: appended to the log again (`readmit`, Kangaroo's default). Sets evict with RRIParoo: a 3-bit RRIP
value per object on flash and one DRAM hit bit per object. Here KSet sits on zones, so its rewrites are out of
place and zone GC multiplies them (the ZNS port the Nemo paper measured, without hot/cold separation).

`HierarchicalEngine` holds what Kangaroo and FairyWREN share: the log + sets layout and the get/set/delete paths.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Callable

import numpy as np

from tierwise.common.errors import TierwiseError
from tierwise.nemo import layout
from tierwise.nemo.engines import register_engine
from tierwise.nemo.engines.log import LogObject, LogTier, PagedEngine, PageIO, key_tag
from tierwise.nemo.engines.setassoc import SetTier


def split_zones(num_zones: int, log_pct: float) -> tuple[list[int], list[int]]:
    """The first ~log_pct of the zones (at least 2) for the log, the rest for the sets."""
    if not 0 < log_pct < 1:
        raise TierwiseError(f"log share must be in (0, 1), got {log_pct}")
    n_log = max(2, round(log_pct * num_zones))
    if num_zones - n_log < 3:
        raise TierwiseError(f"{num_zones} zones are too few for a log of {n_log} zones plus a set tier")
    return list(range(n_log)), list(range(n_log, num_zones))


class HierarchicalEngine(PagedEngine):
    """A log tier in front of a set tier: gets check the log first, sets append to the log, deletes hit both.
    Subclasses decide what happens when the log evicts (`_on_log_evict`) and how set GC behaves."""

    def __init__(self, device, metrics, *, log_pct: float, set_op: float, victim: str, bloom_fp: float,
                 objects_per_set: float, buffer_pages: int, segment_kb: int,
                 gc_merge: Callable[[int, np.ndarray], int] | None = None, log_hits: bool = False):
        super().__init__(device, metrics)
        self.io = PageIO(device, self.metrics, segment_kb * 1024)
        log_zones, set_zones = split_zones(self.io.num_zones, log_pct)
        self.log_pct = log_pct
        self.sets = SetTier(self, set_zones, op=set_op, rrip=True, victim=victim, bloom_fp=bloom_fp,
                            objects_per_set=objects_per_set,
                            gc_merge=gc_merge)
        n = self.sets.num_sets
        # the log index is bucketed by set offset (the key tag's residue), so one set's log objects are one chain
        self.log = LogTier(self, log_zones, n, lambda t: t % n, on_evict=self._on_log_evict,
                           buffer_pages=buffer_pages, track_hits=log_hits)

    # --- the shared request paths -------------------------------------------------------------------

    def _lookup(self, key: bytes) -> bytes | None:
        value = self.log.lookup(key_tag(key), key)
        return value if value is not None else self.sets.lookup(*self.sets.hash(key), key)

    def _insert(self, key: bytes, value: bytes) -> None:
        self.log.insert(key_tag(key), key, value)

    def _remove(self, key: bytes) -> None:
        self.log.remove(key_tag(key))
        self.sets.remove(*self.sets.hash(key), key)

    def flush(self) -> None:
        self.log.flush()
        self.sets.report_fills()

    def dram_bytes(self) -> dict[str, int]:
        return {**self.log.dram_bytes(), **self.sets.dram_bytes("set")}

    def object_count(self) -> int:
        return len(self.log) + self.sets.object_count()

    # --- migration ----------------------------------------------------------------------------------

    def _migrate(self, j: int, group: list[LogObject], kind: str) -> None:
        """Merge log objects into set j with one read-modify-write."""
        page = self.sets.begin_update(j, "migration")
        added = self.sets.merge(page, group)
        self.sets.write(j, page, added)
        self.metrics.count(f"migrations_{kind}")
        self.metrics.count(f"migrated_objects_{kind}", len(group))
        self.metrics.count(f"migrated_bytes_{kind}", added)

    def _live(self, o: LogObject) -> bool:
        return self.log.index.lookup(self.log.bucket_of(o.tag), o.tag) == o.loc

    @abstractmethod
    def _on_log_evict(self, evicted: list[LogObject]) -> list[LogObject] | None:
        """The still-live objects of the log zone just reclaimed (their index entries are still in place);
        returns those to append to the log again."""

    def config(self) -> dict:
        return {"engine": self.name, "log_pct": self.log_pct, "log_pages": self.log.capacity_pages,
                "sets": self.sets.num_sets, "set_op": self.sets.op, "victim": self.sets.victim,
                "bloom_bits": self.sets.bloom.params.m_bits, "bloom_k": self.sets.bloom.params.k}


@register_engine("kangaroo")
class KangarooEngine(HierarchicalEngine):
    name = "kangaroo"

    def __init__(self, device, metrics=None, *, log_pct: float = 0.05, threshold: int = 2, readmit: bool = True,
                 set_op: float = 0.05, victim: str = "greedy", bloom_fp: float = 0.01, objects_per_set: float = 16.0,
                 buffer_pages: int = 16, segment_kb: int = 256):
        if threshold < 1:
            raise TierwiseError(f"Kangaroo's admission threshold must be >= 1, got {threshold}")
        self.threshold, self.readmit = threshold, readmit
        super().__init__(device, metrics, log_pct=log_pct, set_op=set_op, victim=victim, bloom_fp=bloom_fp,
                         objects_per_set=objects_per_set, buffer_pages=buffer_pages, segment_kb=segment_kb,
                         log_hits=readmit)

    def _on_log_evict(self, evicted: list[LogObject]) -> list[LogObject]:
        readmitted = []
        for o in evicted:
            if not self._live(o):  # already moved with an earlier object of its set
                continue
            j = self.log.bucket_of(o.tag)
            if len(self.log.index.bucket(j)) >= self.threshold or self._older_copy_in_set(j, o):
                self._migrate(j, self.log.take_bucket(j), "threshold")
            elif self.readmit and self.log.index.was_hit(j, o.tag):
                readmitted.append(o)
            else:
                self.metrics.count("threshold_drops")
        self.metrics.count("readmissions", len(readmitted))
        return readmitted

    def _older_copy_in_set(self, j: int, o: LogObject) -> bool:
        """Dropping a log object whose key is still in its set would expose the stale copy: migrate it then."""
        _, positions = self.sets.hash(o.key)
        if self.sets.loc[j] < 0 or not self.sets.bloom.contains(j, positions):
            return False
        return layout.page_find(self.sets.read(j, "migration"), np.frombuffer(o.key, np.uint8)) >= 0

    def config(self) -> dict:
        return {**super().config(), "threshold": self.threshold, "readmit": self.readmit}
