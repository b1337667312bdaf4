"""End-to-end check of the oracleGeneral reader on a real block trace: a plain LRU fed by tierwise's reader must
see exactly the miss ratio libcachesim's LRU sees reading the same file itself."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from tierwise.nemo.traces import open_trace

TRACE = "traces/cloudphysics_block.oracleGeneral.bin"


def lru_miss_ratio(chunks, capacity: int) -> tuple[float, int]:
    """A byte-capacity LRU: a hit moves the object to the front; a miss inserts it (if it fits at all), evicting
    from the back until it fits."""
    cache: OrderedDict[int, int] = OrderedDict()
    used = misses = n = 0
    for chunk in chunks:
        sizes = (chunk["key_size"].astype(np.int64) + chunk["value_size"]).tolist()
        for key, size in zip(chunk["key"].tolist(), sizes):
            n += 1
            if key in cache:
                cache.move_to_end(key)
                continue
            misses += 1
            if size > capacity:
                continue
            while used + size > capacity:
                used -= cache.popitem(last=False)[1]
            cache[key] = size
            used += size
    return misses / n, n


@pytest.mark.parametrize("capacity_mb", [1, 8, 64])
def test_reader_lru_equals_libcachesim_lru(shared_data, capacity_mb):
    lcs = pytest.importorskip("libcachesim")
    path = shared_data / TRACE
    capacity = capacity_mb * 2**20
    ours, n = lru_miss_ratio(open_trace(path), capacity)
    reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
    theirs = lcs.LRU(cache_size=capacity).process_trace(reader)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    assert n == 113_872
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert 0 < ours < 1
