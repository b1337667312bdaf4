"""numba's on-disk cache across processes: code a process compiled and cached must run in the next one.

FairyWREN's zone GC merges log objects into the set it relocates, and with hot/cold halves that merge writes a hot
set, whose own GC could run: with one compiled set-write for both, the write called itself, a recursion numba
caches without the link back, and every process after the first crashed (segfault) on loading it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

RUN = """
from tierwise.nemo.api import replay
r = replay("synth:twitter-merged:60k", "{engine}", flash_size="2M", zone_size="16K",
           options=dict(log_pct=0.05, set_op=0.05), progress=False)
print(r.counters["wrong_values"], round(r.summary["alwa"], 6))
"""


@pytest.mark.parametrize("engine", ["fairywren"])
def test_code_cached_by_one_process_runs_in_the_next(tmp_path, engine):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}  # an empty cache of its own
    runs = [subprocess.run([sys.executable, "-c", RUN.format(engine=engine)], env=env, capture_output=True,
                           text=True, timeout=900) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    assert any((tmp_path / "numba").rglob("*.nbc"))  # the second process had cached code to load
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.startswith("0 ")
