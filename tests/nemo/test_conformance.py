"""Conformance suite: the guarantees every flash-cache design gives (docs/nemo-guarantees.md), tried on every design
and every device kind it runs on.

One parametrised module for nemo, log, set, kangaroo and fairywren, each on the in-memory zoned emulator ("mem"), the
file-backed zoned emulator in a temporary folder ("file") and, for the designs that run on a conventional SSD, the
FTL model ("@ssd": its segments play the zones; Set and Kangaroo rewrite their sets in place there, FairyWREN keeps
its out-of-place sets and GC). Geometries are tiny, so a few thousand requests already wrap the
device, evict zones / SetGroups, migrate log objects into sets and collect set zones; every test that relies on such
an event asserts that it happened (the counters in `engine.metrics.counters`, the device's resets and erases), so it
cannot pass vacuously.

A design whose module cannot be imported yet (being ported to the compiled architecture) has its parameters skipped
with the import error as the reason; set TIERWISE_CONFORMANCE_STRICT=1 to make that a failure instead.

Per-design geometry and options live in `DESIGNS` below: the one place to adjust when a design's options change.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from tierwise.common.errors import TierwiseError
from tierwise.nemo.device import FileZonedDevice, FtlSSD, MemoryZonedDevice
from tierwise.nemo.engines import engine_class, make_engine
from tierwise.nemo.layout import PAGE_SIZE

from .baseline_helpers import device_bytes_match

# ---- designs, devices and their small geometries ---------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    name: str
    zones: int  # zones (or, on the SSD model, erase-block segments) of the device
    zone_kb: int
    options: dict[str, Any] = field(default_factory=dict)
    ssd: bool = True  # runs on the conventional-SSD model (in place)
    # metrics counters a churn of a few device capacities must move, per device kind ("zoned" / "ssd")
    events: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # and those a churn mixing reads, overwrites and deletes must move too (readmission, tombstones, write-back)
    mixed_events: tuple[str, ...] = ()
    # the model check's second run: option overrides reaching another path, and the counters that prove it did
    model_options: dict[str, Any] = field(default_factory=dict)
    model_events: tuple[str, ...] = ()
    # what a TTL churn must move besides expired misses (a plain log copies nothing, so drops nothing)
    ttl_events: tuple[str, ...] = ("expired_dropped_objects",)


DESIGNS = {
    # 16 zones of 4 pages: the FIFO wraps after ~1000 objects of 250 B
    "log": Design("log", 16, 16, {"buffer_pages": 2}, ttl_events=()),
    # half the pages are over-provisioning for zone GC (the default); 32 sets of ~16 objects
    "set": Design("set", 16, 16, {}, events={"zoned": ("gc_zones", "gc_set_copies")}),
    # a 3-zone log in front of 29 set zones (set_op 0.25: zone GC needs >= 2 zones of spare pages)
    "kangaroo": Design("kangaroo", 32, 16, {"log_pct": 0.1, "set_op": 0.25},
                       events={"zoned": ("migrations_threshold", "gc_zones"), "ssd": ("migrations_threshold",)},
                       # readmission (more than `readmit` = 1 log hits) is rare here: test_engine_kangaroo covers it
                       mixed_events=("threshold_drops",)),
    "fairywren": Design("fairywren", 32, 16, {"log_pct": 0.1, "set_op": 0.25},
                        events={"zoned": ("migrations_passive", "migrations_active", "gc_zones"),
                                "ssd": ("migrations_passive", "migrations_active", "gc_zones")}),
    # SetGroups of 8 sets in zones of 10 pages (header + 8 sets + trailer); flush at the first failed insert, so
    # SGs are flushed (and the ring evicts) often
    "nemo": Design("nemo", 16, 40, {"sets_per_sg": 8, "flush_threshold": 1},
                   events={"zoned": ("sg_evictions",), "ssd": ("sg_evictions",)},
                   mixed_events=("tombstones", "writeback_objects", "writeback_shadowed"),
                   # a later flush: full sets sacrifice objects (those shadowing flash copies become tombstones)
                   model_options={"flush_threshold": 4}, model_events=("dropped_objects",)),
}
# the large-object log: 16 zones of 64 KB hold a few objects of the largest size each
DESIGNS["block"] = Design("block", 16, 64, {}, events={"zoned": ("evicted_objects",), "ssd": ("evicted_objects",)},
                          ttl_events=())
# Nemo on 16 zones of 40 KB (as above) and a block log on 8 more; values over 300 B (about half the fillers) go to
# the block log, so churn fills both tiers
DESIGNS["tiered"] = Design("tiered", 24, 40, {"small_zones": 16, "threshold": 300, "small.sets_per_sg": 8,
                                              "small.flush_threshold": 1},
                           events={"zoned": ("sg_evictions", "evicted_objects"),
                                   "ssd": ("sg_evictions", "evicted_objects")})
SSD_OP = 0.25  # over-provisioning of the FTL model: small erase blocks need a few spare ones for its GC
STRICT = os.environ.get("TIERWISE_CONFORMANCE_STRICT", "") not in ("", "0")


def _unavailable(design: str) -> str | None:
    """Why the design's tests are skipped: its module does not import yet (it is being ported), else None."""
    try:
        engine_class(design)
    except ImportError as e:  # ModuleNotFoundError included; any other error is a failure the tests run into
        why = re.sub(r" \(/[^)]*\)", "", str(e))  # without the file path
        return f"engine {design!r} not importable yet ({why}); TIERWISE_CONFORMANCE_STRICT=1 fails instead"
    except Exception:
        pass
    return None


@dataclass(frozen=True)
class Variant:
    design: str
    kind: str  # "mem", "file", "ssd" or "zcap" (mem with zone capacity < zone size)

    @property
    def id(self) -> str:
        return f"{self.design}@ssd" if self.kind == "ssd" else f"{self.design}-{self.kind}"

    @property
    def spec(self) -> Design:
        return DESIGNS[self.design]

    @property
    def zoned(self) -> bool:
        return self.kind != "ssd"


VARIANTS = [Variant(d, k) for d in DESIGNS for k in ("mem", "file", "ssd") if k != "ssd" or DESIGNS[d].ssd]


def _params(variants):
    out = []
    for v in variants:
        reason = _unavailable(v.design)
        marks = [pytest.mark.skip(reason=reason)] if reason and not STRICT else []
        out.append(pytest.param(v, id=v.id, marks=marks))
    return out


ALL = _params(VARIANTS)
MEM = _params([v for v in VARIANTS if v.kind == "mem"])
# the model check also runs with zones whose capacity is below their size (as on ZNS SSDs)
WITH_ZCAP = ALL + _params([Variant(d, "zcap") for d in DESIGNS])


def new_device(variant: Variant, folder=None, *, faults=None):
    """A fresh device of the design's geometry, of the variant's kind (`folder`: where a file device lives)."""
    zones, zone = variant.spec.zones, variant.spec.zone_kb * 1024
    if variant.kind == "mem":
        return MemoryZonedDevice(zones, zone)
    if variant.kind == "zcap":  # ZNS-like: only the first half of each zone is writable
        return MemoryZonedDevice(zones, 2 * zone, zone_capacity=zone)
    if variant.kind == "file":
        return FileZonedDevice(folder, zones, zone, faults=faults)
    # segments of one erase block each play the zones of the log parts; sets are rewritten in place
    return FtlSSD(zones * zone, op=SSD_OP, pages_per_block=zone // PAGE_SIZE)


@pytest.fixture
def rig(tmp_path):
    """rig(variant, **options) -> (engine, device) on a fresh small device; devices are closed after the test."""
    devices = []

    def build(variant: Variant, *, device=None, **options):
        dev = device if device is not None else new_device(variant, tmp_path / f"dev{len(devices)}")
        devices.append(dev)
        return make_engine(variant.design, dev, **{**variant.spec.options, **options}), dev

    yield build
    for dev in devices:
        dev.close()


# ---- helpers --------------------------------------------------------------------------------------------------------


def value(tag: int, n: int) -> bytes:
    """n deterministic bytes, distinct per tag (for n >= 4): a stale value cannot pass for a newer one."""
    if n < 4:
        return bytes((tag + i) % 251 for i in range(n))
    return tag.to_bytes(4, "little") + random.Random(tag).randbytes(n - 4)


def key_of(i: int) -> bytes:
    """A key per id; small ids (the hot ones under skew) are 1-2 byte keys, the rest up to 255 bytes, binary."""
    if i < 200:
        return bytes([i]) if i < 100 else bytes([i, 0])
    body = b"%d\x00\xff|" % i
    return (body * 64)[: min(255, len(body) + (i * 37) % 240)]


def reclaims(dev) -> int:
    """Zone resets plus FTL erases: space the device got back (the cache was full)."""
    return dev.stats.resets + dev.stats.erases


def assert_events(variant: Variant, engine, dev, *extra: str) -> None:
    """The churn really went through the design's eviction / migration / GC paths (no vacuous pass)."""
    c = engine.metrics.counters
    assert reclaims(dev) > 0, f"{variant.id}: the device never reclaimed space: the cache never filled"
    if variant.kind == "ssd":
        assert dev.stats.trims > 0 or dev.stats.erases > 0
    for name in variant.spec.events.get("zoned" if variant.zoned else "ssd", ()) + extra:
        assert c.get(name, 0) > 0, f"{variant.id}: counter {name!r} never moved ({c})"


def check_model(engine, latest: dict[bytes, bytes | None], keys=None, expires: dict[bytes, int] | None = None) -> int:
    """Every hit equals the newest value the model holds (a key set to None must miss) and has not expired on the
    engine's clock (`expires`: key -> expiry, 0 or absent = never); returns the hits."""
    hits = 0
    for k in latest if keys is None else keys:
        got = engine.get(k)
        if got is not None:
            want = latest.get(k)
            assert want is not None, f"key {k[:24]!r}: deleted (or never cached) but served {len(got)} B"
            assert got == want, f"key {k[:24]!r}: served a stale or wrong value ({len(got)} B, newest {len(want)} B)"
            expiry = (expires or {}).get(k, 0)
            assert not 0 < expiry <= engine.clock, f"key {k[:24]!r}: served at {engine.clock}, expired at {expiry}"
            hits += 1
    return hits


def put(engine, latest: dict, key: bytes, val: bytes, expiry: int = 0) -> None:
    """set, and the model's rule for it: accepted -> a get right after hits with exactly these bytes; declined
    (False) -> the key misses."""
    ok = engine.set(key, val, expiry)
    latest[key] = val if ok else None
    got = engine.get(key)
    if ok:
        assert got == val, f"key {key[:24]!r}: get right after set returned {None if got is None else len(got)} B"
    else:
        assert got is None, f"key {key[:24]!r}: the engine declined the set but still serves a value"


def remove(engine, latest: dict, key: bytes) -> None:
    engine.delete(key)
    latest[key] = None
    assert engine.get(key) is None, f"key {key[:24]!r}: still served right after delete"


def churn(engine, dev, nbytes: int, rng: random.Random, tag0: int, every: int = 0, check=None) -> int:
    """Write fresh filler objects (~250 B, some overwritten) until `nbytes` of key+value were set; call `check()`
    every `every` sets. Returns the next free tag."""
    written, i = 0, 0
    while written < nbytes:
        k = b"fill:%d" % (tag0 + int(rng.random() ** 2 * 4000))  # skewed: fillers are overwritten too
        v = value(tag0 + i, rng.randrange(150, 400))
        engine.set(k, v)
        if rng.random() < 0.2:
            engine.get(k)
        written += len(k) + len(v)
        i += 1
        if every and check is not None and i % every == 0:
            check()
    return tag0 + i + 4001


def sizes_for(engine) -> list[int]:
    m = engine.max_value_size
    return sorted({0, 1, 2, 3, 4, 7, 8, 15, 16, 100, 255, 256, 1000, 1023, 1024, m // 2, m - 1, m})


# ---- round trips -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ALL)
def test_round_trip_is_byte_exact_for_every_size(variant, rig):
    """set/get returns exactly the bytes set, for values of 0, 1 .. max_value_size bytes and keys of 1 .. 255 bytes
    (binary, with NULs, prefixes of each other); a get right after a set hits; a flush keeps them byte-exact."""
    engine, dev = rig(variant)
    assert engine.config()["engine"] == variant.design
    latest: dict[bytes, bytes | None] = {}
    keys = [b"\x00", b"a", b"aa", b"a\x00", b"\xff" * 255, b"k" * 254 + b"\x00", b"k" * 11]
    tag = 1
    for key in keys:
        for n in sizes_for(engine):
            put(engine, latest, key, value(tag, n))
            tag += 1
    # distinct keys of every size too, so several objects of each size sit side by side in pages and sets
    for n in sizes_for(engine):
        for r in range(3):
            put(engine, latest, b"size:%d:%d" % (n, r), value(tag, n))
            tag += 1
    assert check_model(engine, latest) > 0
    engine.flush()
    hits = check_model(engine, latest)
    assert hits >= len(sizes_for(engine)) // 2, f"{variant.id}: only {hits} objects still cached after a flush"
    assert engine.get(b"never set") is None and engine.get(b"a\x00\x00") is None and engine.get(b"aaa") is None


@pytest.mark.parametrize("variant", ALL)
def test_overwrite_returns_the_newest_value(variant, rig):
    """Overwrites (growing, shrinking, same size) are served newest first: right away, after a flush, and while
    churn pushes the older copies through eviction, migration and GC."""
    engine, dev = rig(variant)
    rng = random.Random(3)
    latest: dict[bytes, bytes | None] = {}
    keys = [b"ow:%d" % i for i in range(60)]
    tag = 1
    for rnd in range(6):
        for k in keys:
            put(engine, latest, k, value(tag, rng.choice([1, 5, 64, 300, 900, engine.max_value_size])))
            tag += 1
        if rnd % 2:
            engine.flush()
        check_model(engine, latest)
        tag = churn(engine, dev, dev.capacity_bytes // 2, rng, tag, every=500,
                    check=lambda: check_model(engine, latest))
        check_model(engine, latest)
    assert_events(variant, engine, dev)


# ---- deletes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ALL)
def test_delete_is_immediate_and_survives_flush(variant, rig):
    engine, dev = rig(variant)
    latest: dict[bytes, bytes | None] = {}
    engine.delete(b"absent")  # deleting a key that was never set is a no-op
    assert engine.get(b"absent") is None
    put(engine, latest, b"a", b"1")
    remove(engine, latest, b"a")  # deleted while still buffered
    engine.flush()
    assert engine.get(b"a") is None
    put(engine, latest, b"b", value(7, 300))
    engine.flush()
    remove(engine, latest, b"b")  # deleted once on flash
    engine.flush()
    assert engine.get(b"b") is None
    put(engine, latest, b"b", value(8, 20))  # set again after a delete: the new value
    engine.flush()
    check_model(engine, latest)
    remove(engine, latest, b"b")
    remove(engine, latest, b"b")  # twice is fine
    engine.flush()
    check_model(engine, latest)


@pytest.mark.parametrize("variant", ALL)
def test_deleted_keys_never_come_back_through_churn(variant, rig):
    """Deleted and overwritten keys stay deleted / newest while churn of several device capacities evicts zones and
    SetGroups, migrates log objects into sets, collects set zones and writes hot objects back. Deletes and
    overwrites are spread over the churn, so they meet copies at every stage (buffered, on flash, in the log, in a
    set, hot or not); every round deletes some keys just served (cached, and hot), so the deletes are not no-ops."""
    engine, dev = rig(variant)
    rng = random.Random(11)
    latest: dict[bytes, bytes | None] = {}
    tracked = [b"trk:%d" % i for i in range(300)]
    tag = 1
    for k in tracked:
        put(engine, latest, k, value(tag, rng.randrange(50, 500)))
        tag += 1
    probe = lambda: check_model(engine, latest, tracked)  # noqa: E731
    deleted_cached = 0
    for rnd in range(14):
        for k in tracked[:40]:  # hot keys (readmission / write-back candidates), some of them deleted later
            engine.get(k)
        tag = churn(engine, dev, dev.capacity_bytes // 5, rng, tag, every=250, check=probe)
        cached = [k for k in rng.sample(tracked, 100) if engine.get(k) is not None]
        for k in cached[:6]:
            remove(engine, latest, k)
            deleted_cached += 1
        for k in cached[6:12]:
            put(engine, latest, k, value(tag, rng.randrange(1, 500)))
            tag += 1
        for k in rng.sample(tracked, 10):  # blind: whatever state the key is in
            if rng.random() < 0.5:
                remove(engine, latest, k)
            else:
                put(engine, latest, k, value(tag, rng.randrange(1, 500)))
                tag += 1
        if rnd % 4 == 3:
            engine.flush()
        probe()
    assert deleted_cached >= 30, f"{variant.id}: only {deleted_cached} deletes met a cached key"
    assert_events(variant, engine, dev, *variant.spec.mixed_events)
    engine.close()


# ---- the model check -------------------------------------------------------------------------------------------------


def random_ops(seed: int, n: int, max_value: int, keys: int = 1500, ttls: bool = False):
    """Mixed sets / overwrites / deletes / gets / flushes over skewed keys of 1..255 bytes and values of 0..max
    bytes; values are distinct per op, so a stale value cannot pass for the newest. With `ttls`, a third of the
    sets carry a TTL (1..40 s) and the clock ticks a second every ~20 ops."""
    rng = random.Random(seed)
    ops = []
    for i in range(n):
        k = key_of(int(keys * rng.random() ** 3))
        r = rng.random()
        if ttls and rng.random() < 0.05:
            ops.append(("tick", None, None))
        if r < 0.45:
            u = rng.random()
            size = 1 if u < 0.04 else 0 if u < 0.06 else max_value if u < 0.09 else rng.randrange(2, 600)
            ttl = rng.randrange(1, 41) if ttls and rng.random() < 0.33 else 0
            ops.append(("set", k, value(seed * 1_000_000 + i, size), ttl))
        elif r < 0.55:
            ops.append(("delete", k, None))
        elif r < 0.995:
            ops.append(("get", k, None))
        else:
            ops.append(("flush", None, None))
    return ops


def run_model(engine, ops) -> tuple[int, int]:
    """Apply ops to the engine and a dict of the newest value per key (None: deleted or declined); every hit must
    equal the newest value and be unexpired. A set may carry a TTL (a 4th field); "tick" advances the engine's
    clock a second. Returns (gets that hit, gets)."""
    latest: dict[bytes, bytes | None] = {}
    expires: dict[bytes, int] = {}
    hits = gets = 0
    for op, k, v, *ttl in ops:
        if op == "set":
            expires[k] = engine.clock + ttl[0] if ttl and ttl[0] else 0
            put(engine, latest, k, v, expires[k])
        elif op == "delete":
            remove(engine, latest, k)
        elif op == "flush":
            engine.flush()
        elif op == "tick":
            engine.clock += 1
        else:
            gets += 1
            hits += check_model(engine, latest, [k], expires)
    check_model(engine, latest, None, expires)
    return hits, gets


@pytest.mark.parametrize("variant", WITH_ZCAP)
def test_never_serves_a_value_older_than_the_last_write(variant, rig):
    """A cache may forget, but never serves a value older than the last acknowledged write (nor a deleted one):
    seeded random op lists on a small device, checked against a dict model, through eviction, migration and GC."""
    spec = variant.spec
    for seed, options, events in ((1, {}, ()), (2, spec.model_options, spec.model_events)):
        engine, dev = rig(variant, **options)
        hits, gets = run_model(engine, random_ops(seed, 9000, engine.max_value_size))
        assert 0 < hits < gets, f"{variant.id}: {hits} hits of {gets} gets: the workload does not test a cache"
        assert_events(variant, engine, dev, *spec.mixed_events, *events)
        assert device_bytes_match(engine)


@pytest.mark.parametrize("variant", WITH_ZCAP)
def test_never_serves_an_expired_object(variant, rig):
    """The model check with TTLs on a third of the sets and a ticking clock: no hit after its expiry, even where an
    older copy without one lies deeper (overwrites of keys on flash); expired objects met by lookups are misses, and
    those met by a flush, write-back, migration or GC are dropped, not written."""
    spec = variant.spec
    engine, dev = rig(variant)
    engine.clock = 1_000
    hits, gets = run_model(engine, random_ops(3, 9000, engine.max_value_size, ttls=True))
    assert 0 < hits < gets
    assert_events(variant, engine, dev, "expired_misses", *spec.ttl_events)
    assert device_bytes_match(engine)


try:  # hypothesis shrinks a failure to a minimal op list; the seeded lists above do not need it
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:

    @pytest.mark.parametrize("variant", MEM)
    @settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.sampled_from(["set", "set", "get", "delete", "flush"]), st.integers(0, 60),
                              st.integers(0, 2048)), min_size=1, max_size=120))
    def test_never_serves_a_value_older_than_the_last_write_hypothesis(variant, ops):
        dev = new_device(variant)
        try:
            engine = make_engine(variant.design, dev, **variant.spec.options)
            size = lambda n: min(n, engine.max_value_size)  # noqa: E731
            run_model(engine, [(op, key_of(k if k < 30 else 170 + k), value(i, size(n)) if op == "set" else None)
                               for i, (op, k, n) in enumerate(ops)])
        finally:
            dev.close()


# ---- eviction at capacity and accounting -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ALL)
def test_eviction_at_capacity_and_consistent_accounting(variant, rig):
    """Writing many device capacities of never-rewritten keys evicts the oldest; what is cached stays readable;
    object_count, the metrics' bytes and the device's own counters agree; DRAM is measured."""
    engine, dev = rig(variant)
    vsize, klen = 200, 12
    obj = vsize + klen
    n = 6 * dev.capacity_bytes // obj
    keys = [b"cap:%08d" % i for i in range(n)]
    assert all(len(k) == klen for k in keys)
    for i, k in enumerate(keys):
        assert engine.set(k, value(i, vsize))
    engine.flush()
    assert_events(variant, engine, dev)
    hits = [engine.get(k) == value(i, vsize) for i, k in enumerate(keys)]
    misses_wrong = [i for i, k in enumerate(keys) if not hits[i] and engine.get(k) is not None]
    assert not misses_wrong, f"{variant.id}: wrong bytes served for key ids {misses_wrong[:10]}"
    total = sum(hits)
    oldest = hits[: n // 10]
    assert sum(oldest) <= 0.02 * len(oldest), f"{variant.id}: {sum(oldest)} of the oldest {len(oldest)} keys survived"
    assert sum(hits[-20:]) >= 10, f"{variant.id}: most of the newest keys were lost"
    # a cache at capacity holds a fair share of what fits, and never more than fits
    fits = dev.capacity_bytes // obj
    assert 0.1 * fits <= total <= fits
    count = engine.object_count()
    assert total <= count <= n, f"{variant.id}: object_count {count}, but {total} keys hit"
    assert count * obj <= dev.capacity_bytes + sum(v for k, v in engine.dram_bytes().items() if k.startswith("buffer"))
    if variant.design == "log":  # an exact index: every indexed object hits
        assert count == total
    # bytes: the metrics' causes add up to what the device wrote; user bytes are what the sets carried
    c = engine.metrics.counters
    assert device_bytes_match(engine)
    s = engine.metrics.summary(steady=False)
    assert s["device_bytes_written"] == dev.stats.bytes_written >= 4 * dev.capacity_bytes
    assert c["inserts"] == n and c["insert_bytes"] == n * obj
    assert 0 < c["logical_bytes"] <= c["insert_bytes"]
    assert s["alwa"] >= 1.0
    assert c["gets"] == 2 * n - total and c.get("hits", 0) == total
    dram = engine.dram_bytes()
    assert dram and all(isinstance(v, (int, np.integer)) and v >= 0 for v in dram.values()) and sum(dram.values()) > 0


# ---- errors ----------------------------------------------------------------------------------------------------------


def _state(engine, dev):
    return (dict(engine.metrics.counters), dict(engine.metrics.writes), engine.object_count(), dev.stats.bytes_written,
            dev.stats.bytes_read)


@pytest.mark.parametrize("variant", ALL)
def test_bad_input_raises_and_leaves_the_cache_unchanged(variant, rig):
    engine, dev = rig(variant)
    m = engine.max_value_size
    assert 1 <= m <= (PAGE_SIZE if variant.design not in ("block", "tiered") else dev.zone_capacity)
    assert engine.set(b"keep", b"kept") and engine.set(b"big", value(1, m)) and engine.set(b"k" * 255, value(2, m))
    before = _state(engine, dev)
    for key, val in ((b"keep", b"x" * (m + 1)), (b"new", b"x" * (m + 1)), (b"k" * 255, b"x" * (m + 1)),
                     (b"keep", b"x" * (m + 4 * PAGE_SIZE))):
        with pytest.raises(TierwiseError):
            engine.set(key, val)
    for bad in (b"", b"k" * 256, b"x" * 1000):
        with pytest.raises(TierwiseError):
            engine.set(bad, b"v")
        with pytest.raises(TierwiseError):
            engine.get(bad)
        with pytest.raises(TierwiseError):
            engine.delete(bad)
    assert _state(engine, dev) == before, f"{variant.id}: a rejected request changed the cache or its metrics"
    assert engine.get(b"keep") == b"kept"  # the failed overwrite left the old value
    assert engine.get(b"new") is None
    assert engine.get(b"big") == value(1, m) and engine.get(b"k" * 255) == value(2, m)  # the limits are inclusive


@pytest.mark.parametrize("design", [pytest.param(d, marks=_params([Variant(d, "mem")])[0].marks) for d in DESIGNS])
def test_bad_options_and_devices_raise(design, tmp_path):
    spec = DESIGNS[design]
    dev = MemoryZonedDevice(spec.zones, spec.zone_kb * 1024)
    with pytest.raises(TierwiseError, match="option"):
        make_engine(design, dev, no_such_option=1)
    with pytest.raises(TierwiseError):
        make_engine("no-such-engine", dev)
    if not spec.ssd:  # designs for zoned devices refuse a conventional SSD with a clear error
        ssd = FtlSSD(spec.zones * spec.zone_kb * 1024, op=SSD_OP, pages_per_block=spec.zone_kb * 1024 // PAGE_SIZE)
        with pytest.raises(TierwiseError):
            make_engine(design, ssd, **spec.options)
        ssd.close()
    dev.close()


# ---- the replay driver and the Python API agree ----------------------------------------------------------------------


def _trace(max_value: int) -> list[np.ndarray]:
    """A synthetic twitter-like trace (gets, sets, deletes over ~4000 keys), with some SETs made uncacheable (value
    larger than the engine accepts: the replay deletes the older value) and some keys the cache cannot hold (0 or
    300 bytes: every request of them misses), in a few chunks. 500 requests a second, and SETs with TTLs of 1..20 s:
    objects expire while cached."""
    from tierwise.nemo.traces import open_trace

    t = np.concatenate(list(open_trace("synth:twitter-merged:30000")))
    t["key"] = t["key"] * 4 + np.arange(len(t)) % 4  # 4x the keys: enough objects to fill every design's device
    t["time"] = np.arange(len(t)) // 500
    t["ttl"] = np.where(t["op"] == 1, 1 + t["key"] % 20, 0)
    sets = np.flatnonzero(t["op"] == 1)
    t["value_size"][sets[::50]] = max_value + 1 + np.arange(len(sets[::50])) % 500
    bad = np.isin(t["key"], np.unique(t["key"])[::97])
    t["key_size"][bad] = np.where(t["key"][bad] % 2, 300, 0)
    return [t[:7000], t[7000:7001], t[7001:20000], t[20000:]]


def replay_by_hand(engine, chunks) -> dict[str, int]:
    """The lookaside replay of `tierwise.nemo.replay` through the Python API: keys spelled by `key_bytes`, values
    `value_bytes(key id, version, size)`; a GET miss sets the key's current version (size: the table's, else the
    request's); a SET bumps the version (an uncacheable one deletes the key); a DELETE bumps it too. The clock is the
    request's time; a SET stores an expiry of time + TTL, a refill the key's last TTL (or its GET's)."""
    from tierwise.nemo.lookaside import value_bytes
    from tierwise.nemo.traces import key_bytes

    rc = dict.fromkeys(("gets", "sets", "deletes", "lookaside_sets", "wrong_values", "uncacheable", "hits",
                        "hit_bytes", "expired_served"), 0)
    table: dict[int, tuple[int, int]] = {}  # key id -> (version, value size)
    life: dict[int, tuple[int, int]] = {}  # key id -> (expiry, TTL)
    m = engine.max_value_size
    for chunk in chunks:
        for op, kid, ksize, vsize, ttl, now in zip(*(chunk[f].tolist() for f in ("op", "key", "key_size",
                                                                                 "value_size", "ttl", "time"))):
            engine.clock = now
            key = key_bytes(kid, ksize)
            storable = 1 <= ksize <= 255  # a key the cache cannot hold: every request of it misses
            if op == 0:
                rc["gets"] += 1
                if storable:
                    got = engine.get(key)
                else:
                    got = None
                    engine.metrics.get(False)
                version, size = table.get(kid, (0, vsize))
                expiry, last_ttl = life.get(kid, (0, 0))
                large = 0 <= engine.size_split < size  # a two-tier cache's large size class
                if large:
                    engine.metrics.count("large_gets")
                if got is None:
                    rc["lookaside_sets"] += 1
                    table[kid] = (version, size)
                    last_ttl = ttl if ttl > 0 else last_ttl
                    expiry = now + last_ttl if last_ttl else 0
                    life[kid] = (expiry, last_ttl)
                    if size > m or not storable:
                        rc["uncacheable"] += 1
                    else:
                        engine.set(key, value_bytes(kid, version, size), expiry)
                elif got != value_bytes(kid, version, size):
                    rc["wrong_values"] += 1
                elif 0 < expiry <= now:
                    rc["expired_served"] += 1
                else:
                    rc["hits"] += 1
                    rc["hit_bytes"] += ksize + len(got)
                    if large:
                        engine.metrics.count("large_hits")
            elif op == 1:
                rc["sets"] += 1
                version = table.get(kid, (0, 0))[0] + 1
                table[kid] = (version, vsize)
                ttl = max(ttl, 0)
                life[kid] = (now + ttl if ttl else 0, ttl)
                if vsize > m or not storable:
                    rc["uncacheable"] += 1
                    if storable:
                        engine.delete(key)
                else:
                    engine.set(key, value_bytes(kid, version, vsize), life[kid][0])
            else:
                rc["deletes"] += 1
                if storable:
                    engine.delete(key)
                else:
                    rc["uncacheable"] += 1
                table[kid] = (table.get(kid, (0, 0))[0] + 1, vsize)
    return rc


def _figures(engine) -> dict[str, Any]:
    s = engine.metrics.summary(steady=False)
    for k in ("latency", "warm_at_request", "window"):  # simulated time, and where the replay marked steady state
        s.pop(k, None)
    return s


@pytest.mark.parametrize("variant", ALL)
def test_replay_driver_and_python_api_give_identical_figures(variant, rig):
    from tierwise.nemo.replay import ReplayOptions, replay

    by_hand, dev_a = rig(variant)
    chunks = _trace(by_hand.max_value_size)
    rc = replay_by_hand(by_hand, chunks)
    driven, dev_b = rig(variant)
    result = replay(driven, chunks, ReplayOptions(sample_every=10_000, progress=False))
    assert rc["wrong_values"] == 0 and rc["expired_served"] == 0 and result.counters == rc
    assert rc["hits"] > 0 and rc["lookaside_sets"] > 0 and rc["uncacheable"] > 0 and rc["deletes"] > 0
    assert by_hand.metrics.counters.get("expired_misses", 0) > 0, f"{variant.id}: no object expired while cached"
    assert reclaims(dev_a) > 0, f"{variant.id}: the trace never filled the device"
    assert _figures(by_hand) == _figures(driven)
    assert by_hand.metrics.writes == driven.metrics.writes
    assert dev_a.stats.as_dict() == dev_b.stats.as_dict()
    assert by_hand.object_count() == driven.object_count() and by_hand.dram_bytes() == driven.dram_bytes()
    assert device_bytes_match(by_hand) and device_bytes_match(driven)


# ---- a device that outlives its engine -------------------------------------------------------------------------------

FILE = [p for p in ALL if p.values[0].kind == "file"]


@pytest.mark.parametrize("variant", FILE)
@pytest.mark.parametrize("first_run", [3, 400], ids=["partly-written-zone", "full-zones"])
def test_a_new_engine_on_a_used_device_serves_nothing_old(variant, first_run, rig):
    """A zone folder (like a real ZNS drive) keeps its data after the engine and device are closed. An engine made
    on it later without recovery starts empty: it never serves the earlier run's values, before or after writing
    the same keys again, whether the first run left a zone partly written or whole zones full."""
    engine, dev = rig(variant)
    keys = [b"old:%d" % i for i in range(first_run)]
    for i, k in enumerate(keys):
        engine.set(k, value(i, 300))
    engine.close()
    dev.close()
    dev = FileZonedDevice(dev.path)
    assert any(dev.write_pointer(z) for z in range(dev.num_zones)), "the first run left nothing on the device"
    engine, _ = rig(variant, device=dev)
    assert all(engine.get(k) is None for k in keys)
    latest: dict[bytes, bytes | None] = {}
    for i, k in enumerate(keys):  # the same keys and sizes again: an old copy sits where a new one may be looked up
        put(engine, latest, k, value(10_000 + i, 300))
    engine.flush()
    assert check_model(engine, latest) > 0
    run_model(engine, random_ops(5, 3000, engine.max_value_size))


@pytest.mark.parametrize("variant", FILE)
def test_a_device_crash_reaches_the_caller(variant, rig, tmp_path):
    """A simulated power loss in the middle of a request surfaces as SimulatedCrash from that request (not swallowed,
    not turned into another error); the zone folder then reopens with whole blocks only."""
    from tierwise.nemo.device import FaultPlan, SimulatedCrash

    spec = variant.spec
    cap = spec.zones * spec.zone_kb * 1024
    dev = new_device(variant, tmp_path / "crash", faults=FaultPlan(crash_after_bytes=cap // 2 + 1000, torn="zeros"))
    engine, _ = rig(variant, device=dev)
    with pytest.raises(SimulatedCrash):
        churn(engine, dev, 4 * cap, random.Random(1), 0)
        engine.flush()
    dev = FileZonedDevice(tmp_path / "crash")
    wps = [dev.write_pointer(z) for z in range(dev.num_zones)]
    assert all(w % dev.block_size == 0 for w in wps) and 0 < sum(wps) <= cap // 2 + 1000 + dev.block_size
    dev.close()


# ---- recovery from flash (nemo, block, tiered) -------------------------------------------------------------------------

RECOVERABLE_FILE = [p for p in ALL if p.values[0] in (Variant(d, "file") for d in ("nemo", "block", "tiered"))]


def _recovery_workload(engine, n: int, seed: int, latest: dict, history: dict | None = None) -> None:
    """Sets, overwrites and deletes (of keys that may be on flash) over a skewed key space."""
    rng = random.Random(seed)
    for i in range(n):
        k = b"rk:%d" % int(rng.random() ** 2 * 1500)
        if rng.random() < 0.1:
            engine.delete(k)
            latest[k] = None
        else:
            v = value(seed * 1_000_000 + i, rng.randrange(1, 500))
            if history is not None:
                history.setdefault(k, set()).add(v)
            engine.set(k, v)
            latest[k] = v


@pytest.mark.parametrize("variant", RECOVERABLE_FILE)
def test_recovers_newest_or_nothing_after_close(variant, rig, tmp_path):
    """close() then recover=True on the same folder: every key serves its newest value or misses; deleted keys stay
    deleted (tombstones are recovered too); the recovered cache goes on working, and recovers again."""
    engine, dev = rig(variant)
    latest: dict[bytes, bytes | None] = {}
    _recovery_workload(engine, 12000, 1, latest)
    assert reclaims(dev) > 0 and engine.metrics.counters.get("tombstones", 0) > 0
    live_before = check_model(engine, latest)
    engine.close()
    dev.close()
    for round_ in range(2):
        dev = FileZonedDevice(dev.path)
        engine, _ = rig(variant, device=dev, recover=True)
        hits = check_model(engine, latest)
        assert hits >= 0.5 * live_before, f"recovery round {round_}: {hits} hits, {live_before} before close"
        _recovery_workload(engine, 3000, 10 + round_, latest)
        check_model(engine, latest)
        engine.close()
        dev.close()


@pytest.mark.parametrize("variant", RECOVERABLE_FILE)
def test_recovers_expiries(variant, rig):
    """Expiries are on flash with their objects: after recovery an object whose time has passed is a miss (even
    over an older copy without a TTL), one whose time has not is served, and so is one that never expires."""
    engine, dev = rig(variant)
    engine.clock = 100
    for i in range(3000):  # a first copy of every key without a TTL, pushed to flash by what follows
        engine.set(b"t:%d" % (i % 600), value(i, 120))
    latest = {}
    for i in range(600):
        latest[b"t:%d" % i] = value(10_000 + i, 120)
        engine.set(b"t:%d" % i, latest[b"t:%d" % i], (150 if i % 3 == 0 else 250) if i % 3 != 2 else 0)
    engine.close()
    dev.close()
    dev = FileZonedDevice(dev.path)
    engine, _ = rig(variant, device=dev, recover=True)
    engine.clock = 200
    served = {k for k in latest if engine.get(k) is not None}
    assert check_model(engine, latest) == len(served)
    assert not any(int(k[2:]) % 3 == 0 for k in served), "served an object whose expiry passed before recovery"
    assert sum(int(k[2:]) % 3 != 0 for k in served) > 300, "recovery lost the unexpired objects"
    assert engine.metrics.counters.get("expired_misses", 0) > 0


@pytest.mark.parametrize("variant", RECOVERABLE_FILE)
@pytest.mark.parametrize("torn", ["drop", "garbage"])
def test_crash_serves_only_written_values(variant, rig, tmp_path, torn):
    """A simulated power loss (torn last write) may lose what was buffered in DRAM, and a key may then read back an
    older value it had, but never bytes that were not written for that key; after recovery the cache obeys the
    model again."""
    from tierwise.nemo.device import FaultPlan, SimulatedCrash

    dev = new_device(variant, tmp_path / "crash", faults=FaultPlan(crash_after_bytes=1_500_000, torn=torn, seed=3))
    engine, _ = rig(variant, device=dev)
    history: dict[bytes, set] = {}
    with pytest.raises(SimulatedCrash):
        _recovery_workload(engine, 60000, 2, {}, history)
    dev = FileZonedDevice(tmp_path / "crash")
    engine, _ = rig(variant, device=dev, recover=True)
    hits = 0
    for k, values in history.items():
        got = engine.get(k)
        assert got is None or got in values, f"key {k!r}: recovered bytes never written for it"
        hits += got is not None
    assert hits > 0
    latest: dict[bytes, bytes | None] = {}
    _recovery_workload(engine, 3000, 7, latest)
    check_model(engine, latest)
