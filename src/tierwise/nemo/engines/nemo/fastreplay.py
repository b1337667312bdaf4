"""The lookaside replay loop compiled around Nemo's compiled get/set/delete (core.py), for the in-memory device.

It is `tierwise.nemo.replay.replay`'s per-request loop, request for request: keys spelled from ids, a GET miss
issues a SET of the object, every hit checked against the value of the key's current version. It returns to
Python only when an insert needs an SG flush (the flush, with its write-back, then runs as usual) and at the end
of each slice the replay hands it, where the replay samples its metrics as it does for every engine.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo.engines.nemo import core
from tierwise.nemo.layout import FLAG_TOMBSTONE, MAX_KEY
from tierwise.nemo.native import load_u64, prefetch, unref
from tierwise.nemo.lookaside import POOL, VersionTable, home_slot, slot_of, spell_key, store_at, value_start, version_at

REPLAY_COUNTERS = ("gets", "sets", "deletes", "lookaside_sets", "wrong_values", "uncacheable")
GETS, SETS, DELETES, LOOKASIDE, WRONG, UNCACHEABLE = range(len(REPLAY_COUNTERS))
# slice outcomes
FINISHED, FLUSH, WRONG_VALUE, BAD_KEY, NO_FIT = range(5)
# the insert a flush interrupted: PENDING, request index, set offset j, flags
PENDING, P_INDEX, P_J, P_FLAGS = range(4)
_GET, _SET = 0, 1  # tierwise.nemo.traces.Op
_AHEAD = 4  # requests between prefetching a version-table row and using it


@njit(cache=True, inline="always")
def _same_bytes(a, a0, b, b0, n) -> bool:
    if a0 < 0 or b0 < 0 or a0 + n > a.shape[0] or b0 + n > b.shape[0]:
        return False
    diff = np.uint64(0)
    i = 0
    while i + 8 <= n:  # 8 bytes a step; no early exit (a mismatch is an error anyway)
        diff |= load_u64(a, a0 + i) ^ load_u64(b, b0 + i)
        i += 8
    while i < n:
        diff |= np.uint64(a[a0 + i] ^ b[b0 + i])
        i += 1
    return diff == 0


@njit(cache=True, inline="always")
def _value(rows, slot, key_id, pool):
    version, size = version_at(rows, slot, 0)
    start = value_start(key_id, version, size)
    return pool[start:start + size]


@njit(cache=True, inline="always")
def _set(E, key, key_id, rows, slot, pool, max_value, rc, pend, i, out, invalidate):
    """replay._set + NemoEngine.set / delete: FINISHED, FLUSH (pend filled) or NO_FIT."""
    if version_at(rows, slot, 0)[1] > max_value or not 1 <= key.shape[0] <= MAX_KEY:
        rc[UNCACHEABLE] += 1  # beyond the engine's tiny-object limit: never cached, always a miss
        if not invalidate or not 1 <= key.shape[0] <= MAX_KEY:
            return FINISHED
        outcome, j, _ = core.delete(E, key, out)
        return _outcome(outcome, pend, i, j, FLAG_TOMBSTONE)
    outcome, j, flags, _ = core.set_(E, key, _value(rows, slot, key_id, pool), out)
    return _outcome(outcome, pend, i, j, flags)


@njit(cache=True, inline="always")
def _outcome(outcome, pend, i, j, flags):
    if outcome == core.NEED_FLUSH:
        pend[PENDING], pend[P_INDEX], pend[P_J], pend[P_FLAGS] = 1, i, j, flags
        return FLUSH
    return FINISHED if outcome == core.DONE else NO_FIT


@unref
def replay_slice(E, ops, key_ids, key_sizes, value_sizes, rows, count, pool, max_value, strict, rc, pend, keybuf,
                 out):
    """Replay requests [0, n) of a slice, resuming at pend[P_INDEX] after a flush. Returns (outcome, index)."""
    i = 0
    if pend[PENDING]:  # finish the insert the flush interrupted
        i = pend[P_INDEX]
        pend[PENDING] = 0
        key = keybuf[:key_sizes[i]]
        spell_key(key_ids[i], key_sizes[i], key)
        flags = pend[P_FLAGS]
        value = key[:0] if flags & FLAG_TOMBSTONE else _value(rows, slot_of(rows, key_ids[i]), key_ids[i], pool)
        _, positions = core.key_hash(E, key)
        if not core.insert_after_flush(E, pend[P_J], key, value, flags, positions):
            return NO_FIT, i
        i += 1
    while i < ops.shape[0]:
        if i + _AHEAD < ops.shape[0]:  # the version table is far larger than the caches: fetch ahead
            prefetch(rows, home_slot(rows, key_ids[i + _AHEAD]) * rows.shape[1])
        kid, ksize = key_ids[i], np.int64(key_sizes[i])
        key = keybuf[:ksize]
        spell_key(kid, ksize, key)
        slot = slot_of(rows, kid)
        status = FINISHED
        if ops[i] == _GET:
            rc[GETS] += 1
            where, start, n, page = core.get(E, key, out)
            version, size = version_at(rows, slot, np.int64(value_sizes[i]))
            if where < 0:
                rc[LOOKASIDE] += 1
                store_at(rows, count, slot, kid, version, size)
                status = _set(E, key, kid, rows, slot, pool, max_value, rc, pend, i, out, False)
            else:
                if n != size or not _same_bytes(page, start, pool, value_start(kid, version, size), n):
                    rc[WRONG] += 1
                    if strict:
                        return WRONG_VALUE, i
        elif ops[i] == _SET:
            rc[SETS] += 1
            store_at(rows, count, slot, kid, version_at(rows, slot, 0)[0] + 1, value_sizes[i])
            status = _set(E, key, kid, rows, slot, pool, max_value, rc, pend, i, out, True)
        else:
            rc[DELETES] += 1
            if not 1 <= ksize <= MAX_KEY:
                return BAD_KEY, i
            outcome, j, _ = core.delete(E, key, out)
            store_at(rows, count, slot, kid, version_at(rows, slot, 0)[0] + 1, value_sizes[i])
            status = _outcome(outcome, pend, i, j, FLAG_TOMBSTONE)
        if status != FINISHED:
            return status, i
        i += 1
    return FINISHED, i


class CompiledReplay:
    """Per-replay state of the compiled loop: the version table, counters and the interrupted insert."""

    def __init__(self, engine, strict: bool):
        self.engine = engine
        self.strict = strict
        self.table = VersionTable()
        self.rc = np.zeros(len(REPLAY_COUNTERS), np.int64)
        self.pend = np.zeros(4, np.int64)
        self.keybuf = np.zeros(1 << 16, np.uint8)

    def run(self, part: np.ndarray, first_request: int) -> None:
        """Replay one slice of a trace (a structured array of requests); `first_request` numbers its first one."""
        cols = [np.ascontiguousarray(part[f]) for f in ("op", "key", "key_size", "value_size")]
        self.table.reserve(len(part))
        eng = self.engine
        while True:
            outcome, i = replay_slice(eng.core_state(), *cols, self.table.rows, self.table.count, POOL,
                                      eng.max_value_size, self.strict, self.rc, self.pend, self.keybuf,
                                      eng.pbfg._out)
            eng.fold_core_counters()
            if outcome == FINISHED:
                return
            if outcome == FLUSH:
                eng._flush_sg()
                continue
            kid = int(part["key"][i])
            if outcome == WRONG_VALUE:
                raise TierwiseError(f"engine {eng.name} returned a wrong or stale value for key id {kid} at request "
                                    f"{first_request + i}")
            if outcome == BAD_KEY:
                raise TierwiseError(f"key length {int(part['key_size'][i])} outside 1..{MAX_KEY} bytes")
            raise TierwiseError(f"object of key id {kid} does not fit an empty set")

    def counters(self) -> dict[str, int]:
        return dict(zip(REPLAY_COUNTERS, self.rc.tolist()))
