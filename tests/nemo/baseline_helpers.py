"""Shared checks for the baseline engines' tests: a dict model every engine must agree with."""

from __future__ import annotations

import random

from hypothesis import strategies as st

from tierwise.nemo.engines.base import Engine


def random_ops(seed: int, n: int, keys: int, *, p_set: float = 0.5, p_delete: float = 0.05,
               sizes: tuple[int, int] = (20, 400)) -> list[tuple[str, bytes, bytes | None]]:
    """A reproducible mix of ("set", key, value), ("delete", key, None) and ("get", key, None)."""
    rng = random.Random(seed)
    ops = []
    for i in range(n):
        key = b"key:%07d" % int(keys * rng.random() ** 2)  # skewed, so keys are reused and updated
        r = rng.random()
        if r < p_set:
            ops.append(("set", key, bytes([i % 251]) * rng.randint(*sizes)))
        elif r < p_set + p_delete:
            ops.append(("delete", key, None))
        else:
            ops.append(("get", key, None))
    return ops


def check_against_dict(engine: Engine, ops) -> dict[str, int]:
    """Replay `ops` on the engine and a dict: a get may miss (it is a cache) but never return a value other than
    the last one set, nor a deleted one; a get right after a set must hit. Returns hit/miss counts."""
    model: dict[bytes, bytes] = {}
    hits = misses = 0
    for op, key, value in ops:
        if op == "set":
            assert engine.set(key, value)
            model[key] = value
            assert engine.get(key) == value, f"{key!r} missed right after its set"
        elif op == "delete":
            engine.delete(key)
            model.pop(key, None)
            assert engine.get(key) is None, f"{key!r} still readable after delete"
        else:
            got = engine.get(key)
            if got is None:
                misses += 1
            else:
                hits += 1
                assert key in model, f"{key!r} returned a value after it was deleted or never set"
                assert got == model[key], f"{key!r} returned a stale value"
    return {"hits": hits, "misses": misses}


def device_bytes_match(engine: Engine) -> bool:
    """The metrics' per-cause write bytes add up to what the device itself counted."""
    return sum(engine.metrics.writes.values()) == engine.device.stats.bytes_written


def op_lists(max_key: int, max_size: int = 150):
    """Hypothesis strategy: lists of (op, key number, value size), sets twice as likely as gets or deletes."""
    return st.lists(st.tuples(st.sampled_from(["set", "set", "get", "delete"]), st.integers(0, max_key),
                              st.integers(1, 1500)), max_size=max_size)


def check_op_list(engine: Engine, ops) -> None:
    check_against_dict(engine, [(op, b"k%d" % k, bytes([k % 256]) * n if op == "set" else None) for op, k, n in ops])
