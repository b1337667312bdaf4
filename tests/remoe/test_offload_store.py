"""ExpertStore layout and integrity, storage profiles and target sizes."""

from __future__ import annotations

import json

import pytest
import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.models.adapters import adapter_for, tiny_model
from tierwise.remoe.offload.storage import TARGET_EXPERTS, storage_profile
from tierwise.remoe.offload.store import BLOCK, DATA_NAME, INDEX_NAME, ExpertStore, model_fingerprint


@pytest.fixture(scope="module")
def experts_by_layer():
    adapter = adapter_for(tiny_model("qwen2_moe"))
    return {layer: adapter.experts(layer) for layer in adapter.moe_layers}


def _write(tmp_path, experts_by_layer, **kw):
    return ExpertStore.write(tmp_path / "store", experts_by_layer, fingerprint="f1", model_type="qwen2_moe", **kw)


def test_roundtrip_every_expert_exact(tmp_path, experts_by_layer):
    with _write(tmp_path, experts_by_layer) as store:
        assert store.record_stride % BLOCK == 0 and store.record_stride >= store.record_bytes
        assert store.io_mode == "O_DIRECT"
        for layer, experts in experts_by_layer.items():
            for e in range(experts.num_experts):
                got = store.read(layer, e)
                assert torch.equal(got["gate_up_proj"], experts.gate_up_proj[e])
                assert torch.equal(got["down_proj"], experts.down_proj[e])
        n = len(experts_by_layer) * next(iter(experts_by_layer.values())).num_experts
        assert store.reads == n and store.bytes_read == n * store.record_stride


def test_fadvise_mode_reads_the_same(tmp_path, experts_by_layer):
    with _write(tmp_path, experts_by_layer, io="fadvise") as store:
        assert store.io_mode == "fadvise-dontneed"
        layer = store.moe_layers[-1]
        assert torch.equal(store.read(layer, 3)["down_proj"], experts_by_layer[layer].down_proj[3])


def test_index_documents_the_layout(tmp_path, experts_by_layer):
    _write(tmp_path, experts_by_layer).close()
    index = json.loads((tmp_path / "store" / INDEX_NAME).read_text())
    assert [f["name"] for f in index["fields"]] == ["gate_up_proj", "down_proj"]
    assert index["moe_layers"] == sorted(experts_by_layer)
    size = (tmp_path / "store" / DATA_NAME).stat().st_size
    assert size == index["record_stride"] * len(index["moe_layers"]) * index["num_experts"]


def test_corrupted_record_is_reported(tmp_path, experts_by_layer):
    store = _write(tmp_path, experts_by_layer)
    offset = store.record_stride * 5 + 10  # inside record 5 = (first MoE layer, expert 5)
    store.close()
    with open(tmp_path / "store" / DATA_NAME, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff\xfe\xfd")
    with ExpertStore(tmp_path / "store") as store:
        store.read(store.moe_layers[0], 4)  # neighbours are intact
        with pytest.raises(TierwiseError, match="corrupted"):
            store.read(store.moe_layers[0], 5)


def test_truncated_or_missing_store_is_reported(tmp_path, experts_by_layer):
    _write(tmp_path, experts_by_layer).close()
    data = tmp_path / "store" / DATA_NAME
    data.write_bytes(data.read_bytes()[:-BLOCK])
    with pytest.raises(TierwiseError, match="expects"):
        ExpertStore(tmp_path / "store")
    with pytest.raises(TierwiseError, match="no expert store"):
        ExpertStore(tmp_path / "nothing")
    (tmp_path / "store" / INDEX_NAME).write_text("{not json")
    with pytest.raises(TierwiseError, match="corrupted expert store index"):
        ExpertStore(tmp_path / "store")


def test_open_or_write_reuses_only_identical_experts(tmp_path, experts_by_layer):
    fp = model_fingerprint("{}", experts_by_layer)
    kw = dict(fingerprint=fp, model_type="qwen2_moe")
    ExpertStore.open_or_write(tmp_path / "s", experts_by_layer, **kw).close()
    mtime = (tmp_path / "s" / DATA_NAME).stat().st_mtime_ns
    ExpertStore.open_or_write(tmp_path / "s", experts_by_layer, **kw).close()
    assert (tmp_path / "s" / DATA_NAME).stat().st_mtime_ns == mtime
    other = {layer: adapter_for(tiny_model("qwen2_moe", seed=1)).experts(layer) for layer in experts_by_layer}
    fp2 = model_fingerprint("{}", other)
    assert fp2 != fp
    with ExpertStore.open_or_write(tmp_path / "s", other, fingerprint=fp2, model_type="qwen2_moe") as store:
        assert store.fingerprint == fp2
        layer = store.moe_layers[0]
        assert torch.equal(store.read(layer, 0)["gate_up_proj"], other[layer].gate_up_proj[0])


def test_out_of_range_expert(tmp_path, experts_by_layer):
    with _write(tmp_path, experts_by_layer) as store:
        with pytest.raises(TierwiseError, match="not in the store"):
            store.read(store.moe_layers[0], store.num_experts)


def test_storage_profiles_charge_latency_plus_transfer():
    ufs4 = storage_profile("ufs4")
    nbytes = TARGET_EXPERTS["dsv2-lite-bf16"]
    assert nbytes == 3 * 2048 * 1408 * 2
    assert ufs4.miss_seconds(nbytes) == pytest.approx(100e-6 + nbytes / 4.2e9)
    assert storage_profile("local").miss_seconds(nbytes) == 0.0
    assert storage_profile("emmc").miss_seconds(nbytes) > ufs4.miss_seconds(nbytes) > storage_profile("pcie3-host").miss_seconds(nbytes)
    with pytest.raises(TierwiseError, match="unknown storage profile"):
        storage_profile("floppy")


def test_target_sizes():
    assert TARGET_EXPERTS["dsv2-lite-q4"] < TARGET_EXPERTS["dsv2-lite-bf16"]
