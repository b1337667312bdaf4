"""numba's on-disk cache made safe for processes that compile at the same time (a bench's worker pool, Ray workers,
pytest-xdist).

A cached function's index file maps each compiled signature to a data file. `IndexDataCacheFile.save` reads the
index, picks the first free data-file number, writes the index, then the data, with no lock: two processes saving
overloads of one function at once can both pick number 1, and the index then names the other process's code for
the signature, which a later process would load and run. So every save and load of a cache entry holds a lock on
one file per cache folder: exclusive to save, shared to load; compilation itself stays parallel.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from numba.core import caching

_LOCK_NAME = "numba-cache.lock"


@contextmanager
def _cache_lock(folder: str | Path, exclusive: bool = True):
    """Hold the lock of the numba cache in `folder` (no lock where the folder cannot hold one: then numba cannot
    write its cache there either)."""
    try:
        fd = os.open(Path(folder) / _LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _locked(method, exclusive: bool):
    def wrapper(self, *args):
        with _cache_lock(self._cache_path, exclusive):
            return method(self, *args)

    wrapper.__wrapped__ = method
    return wrapper


def serialise_cache_files() -> None:
    """Install the locks (once per process; call it before the first cached function runs)."""
    cls = caching.IndexDataCacheFile
    if not hasattr(cls.save, "__wrapped__"):
        cls.save = _locked(cls.save, exclusive=True)
        cls.load = _locked(cls.load, exclusive=False)
