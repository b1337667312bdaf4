import numpy as np
import pytest

from tierwise.nemo.metrics import Metrics


def test_alwa_variants_and_breakdown():
    m = Metrics()
    for _ in range(10):
        m.user_insert(100)
    m.dropped(2, 200)
    m.flashed_user(8, 800, 32)
    m.device_write("user", 800)
    m.device_write("object_headers", 32)
    m.device_write("padding", 168)
    m.device_write("index", 100)
    s = m.summary()
    assert s["device_bytes_written"] == 1100
    assert s["alwa"] == pytest.approx(1100 / 800)
    assert s["alwa_headers_logical"] == pytest.approx(1100 / 832)
    assert s["alwa_with_dropped"] == pytest.approx(1100 / 1000)
    assert s["dropped_fraction"] == pytest.approx(0.2)
    assert sum(s["alwa_breakdown"].values()) == pytest.approx(s["alwa"])


def test_reads_fill_and_steady_window():
    m = Metrics()
    m.get(False, 8192, 2, 1)
    m.flushed_sets(np.array([0.5, 1.0]))
    m.mark_warm(1)
    m.get(True, 4096, 1, 0)
    m.get(False, 0, 0, 0)
    m.flushed_sets(np.array([0.9, 0.92, 0.94, 0.96]))
    s = m.summary()
    assert s["gets"] == 2 and s["miss_ratio"] == 0.5 and s["bytes_read_per_get"] == 2048
    assert s["index_fetch_fraction"] == 0 and s["mean_sg_fill"] == pytest.approx(0.93)
    assert s["set_fill_histogram"]["90-95%"] == 3 and sum(s["set_fill_histogram"].values()) == 4
    whole = m.summary(steady=False)
    assert whole["gets"] == 3 and whole["sgs_flushed"] == 2


def test_dram_bits_per_object_split_index_and_buffers():
    m = Metrics()
    m.mark_warm(0)
    row = m.sample(100, {"pbfg_cache": 1000, "hotness": 24, "buffers": 8192}, objects=1024)
    assert row["index_bits_per_object"] == pytest.approx(8.0)
    assert row["total_bits_per_object"] == pytest.approx((1024 + 8192) * 8 / 1024)
    s = m.summary({"pbfg_cache": 1000, "hotness": 24, "buffers": 8192}, 1024)
    assert s["dram"]["index_bits_per_object_mean"] == pytest.approx(8.0)
    assert len(m.series) == 1 and m.series[0]["requests"] == 100
