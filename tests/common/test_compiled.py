"""The lock around numba's cache files: a save holds it exclusively, a load shares it."""

from __future__ import annotations

import errno
import fcntl
import os

import numpy as np
from numba import njit
from numba.core import caching
from numba.core import config as numba_config

from tierwise.common.compiled import serialise_cache_files


def _lock_held_elsewhere(folder) -> bool:
    fd = os.open(os.path.join(folder, "numba-cache.lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        assert e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        return True
    finally:
        os.close(fd)
    return False


def test_a_cache_save_holds_the_folder_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(numba_config, "CACHE_DIR", str(tmp_path))  # an empty cache: the function is saved, not loaded
    serialise_cache_files()
    seen = []
    real = caching.IndexDataCacheFile._save_index

    def spy(self, overloads):
        seen.append(_lock_held_elsewhere(self._cache_path))
        return real(self, overloads)

    monkeypatch.setattr(caching.IndexDataCacheFile, "_save_index", spy)

    @njit(cache=True)
    def twice(x):
        return 2 * x

    assert twice(np.int64(21)) == 42
    assert seen == [True]  # the index was written under the exclusive lock
    assert any(tmp_path.rglob("*.nbi"))
    serialise_cache_files()  # installing twice wraps once
    assert not hasattr(caching.IndexDataCacheFile.save.__wrapped__, "__wrapped__")

