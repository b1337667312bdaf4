"""Simulated device time (tierwise.nemo.device.timing): queueing on dies, batches, background reads, program units,
the write buffer, erases, profiles, and the latency histogram's percentiles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from numba import njit

from tierwise.common.errors import TierwiseError
from tierwise.nemo import metrics as mt
from tierwise.nemo.device import timing as tm

US = 1000  # ns

# 4 dies, 10 us reads, a program of 2 pages takes 100 us, an erase block is 4 pages (16 KiB) per die and takes 1 ms,
# a read from the write buffer 2 us. Page p of unit u is on die (7u + p) % 4: unit 0 -> die p % 4.
TOY = tm.DeviceProfile("toy", "test device", dies=4, read_us=10, program_us=100, unit_kb=8, erase_ms=1,
                       block_mb=16 / 1024, buffer_us=2)


def toy() -> tm.Timing:
    return tm.timing_for(TOY)


@njit
def _begin(T, now):
    tm.begin_request(T, now)


@njit
def _latency(T):
    return tm.latency(T)


@njit
def _read(T, unit, page):
    tm.read(T, unit, page)


@njit
def _reads(T, now, units, pages, batch):
    """One request reading (units[i], pages[i]) in order, or all at once in a batch; returns its latency."""
    tm.begin_request(T, now)
    if batch:
        tm.begin_batch(T)
    for i in range(units.shape[0]):
        tm.read(T, units[i], pages[i])
    if batch:
        tm.end_batch(T)
    return tm.latency(T)


@njit
def _background(T, unit, page):
    tm.background_read(T, unit, page)


@njit
def _program(T, unit, first, n):
    tm.program_pages(T, unit, first, n)


@njit
def _erase(T, unit, pages):
    tm.erase(T, unit, pages)


@njit
def _begin_batch(T):
    tm.begin_batch(T)


def request(T, now, reads, batch=False) -> int:
    units = np.array([u for u, _ in reads], np.int64)
    pages = np.array([p for _, p in reads], np.int64)
    return int(_reads(T, np.int64(now), units, pages, batch))


def test_parameters_from_the_profile():
    p = toy().p
    assert p[tm.ENABLED] == 1 and p[tm.DIES] == 4 and p[tm.READ_NS] == 10 * US and p[tm.PROGRAM_NS] == 100 * US
    assert p[tm.UNIT_PAGES] == 2 and p[tm.ERASE_NS] == 1000 * US and p[tm.BLOCK_PAGES] == 4
    assert p[tm.BUFFER_NS] == 2 * US
    assert TOY.read_iops == 400_000 and TOY.write_mb_s == pytest.approx(4 * 8192 / 100)


def test_an_idle_read_costs_the_read_time_and_serial_reads_add_up():
    T = toy()
    assert request(T, 0, [(0, 0)]) == 10 * US
    assert request(T, 1_000_000, [(0, 0), (0, 1), (0, 2)]) == 30 * US  # one after another, on different dies


def test_parallel_batch_reads_finish_at_the_max_not_the_sum():
    T = toy()
    assert request(T, 0, [(0, 0), (0, 1), (0, 2), (0, 3)], batch=True) == 10 * US  # four dies at once
    # a busy die delays only its own read; the batch ends with the slowest
    T = toy()
    _begin(T, 0)
    _background(T, 0, 2)  # die 2 busy until 10 us
    assert request(T, 0, [(0, 0), (0, 1), (0, 2)], batch=True) == 20 * US
    # two reads of one batch on the same die still queue
    T = toy()
    assert request(T, 0, [(0, 0), (0, 4)], batch=True) == 20 * US


def test_background_reads_do_not_add_latency_but_delay_later_requests():
    T = toy()
    _begin(T, 0)
    _background(T, 0, 1)
    _background(T, 0, 1)
    assert _latency(T) == 0  # the request that issued them did not wait
    assert T.busy[1] == 20 * US
    assert request(T, 5 * US, [(0, 1)]) == 25 * US  # arrives at 5 us, die 1 free at 20 us, read done at 30 us
    assert request(T, 5 * US, [(0, 2)]) == 10 * US  # other dies are idle


def test_a_read_waits_behind_a_program_on_the_same_die():
    T = toy()
    _begin(T, 0)
    _program(T, 0, 0, 8)  # pages 0..7: two pages per die, one program unit each
    assert list(T.busy) == [100 * US] * 4 and list(T.fill) == [0] * 4
    # a page of another unit on die 0 (unit 4: 7 * 4 % 4 == 0) waits for the program
    assert request(T, 0, [(4, 0)]) == 110 * US
    assert request(T, 200 * US, [(4, 0)]) == 10 * US  # after it, no wait


def test_writes_accumulate_to_program_units():
    T = toy()
    _begin(T, 0)
    _program(T, 0, 0, 4)  # one page per die: nothing programmed yet
    assert list(T.busy) == [0] * 4 and list(T.fill) == [1] * 4
    _program(T, 0, 4, 1)  # page 4 -> die 0: its second page, a full unit
    assert list(T.busy) == [100 * US, 0, 0, 0] and list(T.fill) == [0, 1, 1, 1]
    _program(T, 0, 5, 7)  # pages 5..7 complete dies 1-3's units, pages 8..11 open the next unit on every die
    assert list(T.fill) == [1, 1, 1, 1] and list(T.busy) == [100 * US] * 4


def test_a_read_from_the_write_buffer_costs_no_die_time():
    T = toy()
    _begin(T, 0)
    _program(T, 0, 0, 1)  # page 0 waits in die 0's buffer
    assert request(T, 0, [(0, 0)]) == 2 * US and T.busy[0] == 0
    _begin(T, 0)
    _program(T, 0, 4, 1)  # page 4 completes die 0's unit: programmed, read from NAND behind the program
    assert request(T, 0, [(0, 0)]) == 110 * US
    # a page of another unit interleaved on the die takes the buffer over (4-page units: nothing programmed)
    T = tm.timing_for(replace(TOY, unit_kb=16))
    _begin(T, 0)
    _program(T, 0, 0, 1)
    _program(T, 4, 0, 1)  # unit 4 page 0 -> die 0 too: unit 0's page counts as programmed
    assert request(T, 0, [(4, 0)]) == 2 * US
    assert request(T, 0, [(0, 0)]) == 10 * US


def test_erase_occupies_dies_by_erase_blocks():
    T = toy()
    _begin(T, 0)
    _erase(T, 0, 8)  # two pages per die: half a block, credited
    assert list(T.busy) == [0] * 4 and list(T.buf[tm.ERASED]) == [2] * 4
    _erase(T, 0, 8)  # another half: each die erases one block
    assert list(T.busy) == [1000 * US] * 4 and list(T.buf[tm.ERASED]) == [0] * 4
    assert request(T, 0, [(0, 3)]) == 1010 * US  # a read behind the erase
    T = toy()
    _begin(T, 0)
    _erase(T, 1, 17)  # unit 1 starts on die 3: 5 pages there, 4 on each other die: one block erase per die
    assert list(T.busy) == [1000 * US] * 4 and list(T.buf[tm.ERASED]) == [0, 0, 0, 1]


def test_erase_drops_the_units_buffered_pages():
    T = toy()
    _begin(T, 0)
    _program(T, 0, 0, 1)
    _erase(T, 0, 1)
    assert T.buf[tm.B_UNIT, 0] == 0 and T.fill[0] == 1  # the page is gone; the program unit still fills
    assert request(T, 0, [(0, 0)]) == 10 * US


def test_begin_request_ends_a_batch_left_open():
    T = toy()
    _begin(T, 0)
    _begin_batch(T)  # say an engine raised before end_batch
    assert request(T, 100 * US, [(0, 0)]) == 10 * US


def test_timing_off_is_a_no_op():
    T = tm.new_timing(4)
    assert request(T, 0, [(0, 0), (0, 1)]) == 0
    _program(T, 0, 0, 100)
    _erase(T, 0, 100)
    assert T.busy.sum() == 0 and T.fill.sum() == 0 and T.buf.sum() == 0


def test_deterministic():
    def run():
        T = tm.timing_for(tm.profile("zn540"))
        rng = np.random.default_rng(5)
        lat = []
        for i in range(2000):
            now = i * 5 * US
            _begin(T, now)
            if i % 7 == 0:
                _program(T, int(rng.integers(0, 50)), int(rng.integers(0, 256)), 64)
            if i % 97 == 0:
                _erase(T, int(rng.integers(0, 50)), 256)
            reads = [(int(rng.integers(0, 50)), int(rng.integers(0, 256))) for _ in range(int(rng.integers(1, 4)))]
            lat.append(request(T, now, reads, batch=bool(i % 2)))
        return lat, T.busy.copy(), T.fill.copy(), T.buf.copy()

    a, b = run(), run()
    assert a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:]))
    assert max(a[0]) > 70 * US  # queueing happened


def test_profiles_by_name_and_consistent():
    assert set(tm.PROFILES) >= {"zn540", "fdp", "consumer", "conventional"}
    with pytest.raises(TierwiseError, match="unknown device profile 'nope'"):
        tm.profile("nope")
    zn = tm.profile("zn540")
    assert zn.dies == 32 and zn.read_us == 70
    assert zn.write_mb_s == pytest.approx(1200, rel=0.01)  # the measured append bandwidth
    assert zn.read_iops == pytest.approx(457_000, rel=0.01)  # measured 437K at QD256
    for p in tm.PROFILES.values():
        t = tm.timing_for(p)
        assert t.p[tm.UNIT_PAGES] * 4096 == p.unit_kb * 1024  # whole pages: the bandwidth is exact
        assert p.dies <= 1024 and p.source and len(p.source) < 100
        # a full 1077 MiB zone's share per die takes 4-5 erases, ~16 ms as measured on the ZN540
        per_die = 1077 * 2**20 / 4096 / 32
        assert 15 < per_die / t.p[tm.BLOCK_PAGES] * p.erase_ms < 17


@njit
def _record(m, values):
    for v in values:
        mt.record_latency(m, mt.L_GET, v)


def test_latency_bins_are_monotone_and_tight():
    for ns in [0, 1, 63, 64, 65, 100, 1000, 12345, 70_000, 1_000_000, 123_456_789, 2**45]:
        b = mt.latency_bin(ns)
        assert ns <= mt.bin_upper_ns(b) and (b == 0 or mt.bin_upper_ns(b - 1) < ns)
        assert mt.bin_upper_ns(b) <= ns * (1 + 1 / 32) + 1
    assert all(mt.bin_upper_ns(b) < mt.bin_upper_ns(b + 1) for b in range(mt.LATENCY_BINS - 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_match_numpy_within_bucket_precision(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.lognormal(np.log(80_000), 0.4, 50_000), rng.exponential(2e6, 500)]).astype(np.int64)
    m = mt.Metrics()
    _record(m.arrays, values)
    lat = m.summary()["latency"]["get"]
    assert lat["count"] == len(values)
    for q in mt.PERCENTILES:
        got = lat[f"p{q:g}_us"] * 1000
        nearest_rank = np.percentile(values, q, method="inverted_cdf")  # the value the bucket must hold
        assert nearest_rank <= got <= nearest_rank * (1 + 1 / 32) + 1, q
        # and numpy's default (interpolated) percentile lies between the same order statistics
        lo, hi = np.percentile(values, q, method="lower"), np.percentile(values, q, method="higher")
        assert lo <= np.percentile(values, q) <= hi and lo <= got <= hi * (1 + 1 / 32) + 1
    assert lat["mean_us"] * 1000 == pytest.approx(values.mean(), rel=0.04)


def test_a_late_read_does_not_reserve_an_idle_die_ahead_of_later_arrivals():
    # die 0 has 1 ms of background work; request A reads die 0, then die 1 (ready only at 1.02 ms)
    T = toy()
    _begin(T, 0)
    for _ in range(100):
        _background(T, 0, 0)
    assert request(T, 0, [(0, 0), (0, 1)]) == (1000 + 10 + 10) * US  # A still waits its turn on both dies
    # B arrives at 5 us and reads die 1: A's second read did not hold die 1 idle until 1.01 ms for B to wait behind
    assert request(T, 5 * US, [(0, 1)]) == 15 * US  # behind A's 10 us of work on die 1, booked at A's arrival


def test_a_device_below_its_capacity_keeps_bounded_queues():
    # requests of two dependent reads on random dies at 60 % of the read capacity: the queues must stay short,
    # also when requests wait long for their first read
    T = toy()
    rng = np.random.default_rng(0)
    gap = 2 * 10 * US / 4 / 0.6  # 2 reads of 10 us per request over 4 dies, 60 % busy
    latencies = [request(T, int(i * gap), [(int(rng.integers(64)), int(rng.integers(64))) for _ in range(2)])
                 for i in range(20_000)]
    assert np.percentile(latencies, 50) < 60 * US and max(latencies) < 500 * US
