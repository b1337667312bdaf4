"""--verify against the resident model, configurations interleaved on one store, and the throttled I/O thread."""

from __future__ import annotations

import pytest
import torch

from tierwise.common.errors import TierwiseError
from tierwise.remoe.export.delta import save_router_delta
from tierwise.remoe.models.adapters import adapter_for, tiny_model
from tierwise.remoe.offload.compare import Setting, parse_settings, run_offload
from tierwise.remoe.offload.io import IOChannel
from tierwise.remoe.offload.runtime import OffloadConfig, OffloadRuntime
from tierwise.remoe.offload.store import DATA_NAME, ExpertStore
from tierwise.remoe.offload.workload import Request, Workload

REQUESTS = [Request(0, [5, 17, 99, 3, 42], [7, 250, 31, 64, 12, 8, 77]),
            Request(1, [140, 9, 33], [201, 18, 60, 2, 91, 120, 44])]


def test_verify_passes_for_every_configuration_that_keeps_the_routing(tmp_path):
    model = tiny_model("qwen3_moe")
    adapter = adapter_for(model)
    with torch.no_grad():
        for layer in adapter.moe_layers:
            adapter.router_weight(layer).copy_(adapter.router_weight(layer).roll(1, dims=0))
    delta = save_router_delta(model, tmp_path / "router.safetensors")
    model = tiny_model("qwen3_moe")
    settings = parse_settings("original,remoe,prefetch,reroute,remoe+prefetch", prefetch=None, reroute=None,
                              top_k=4, have_router=True)
    assert [(s.label, s.router, s.prefetch, s.reroute) for s in settings] == [
        ("original", False, 0, 0.0), ("remoe", True, 0, 0.0), ("prefetch", False, 4, 0.0),
        ("reroute", False, 0, 0.5), ("remoe+prefetch", True, 4, 0.0)]
    result = run_offload(model, REQUESTS, 7, OffloadConfig(6, storage="nvme", store_dir=tmp_path / "s"), settings,
                         workload=Workload("sample", 1.0, 0.9, 1), router=delta, verify=True)
    checked = result["verify"]["checked"]
    assert set(checked) == {"original", "remoe", "prefetch", "remoe+prefetch"} and result["verify"]["skipped"] == ["reroute"]
    assert max(checked.values()) <= 1e-4
    vs = result["vs_original"]
    assert vs["prefetch"]["identical_share"] == 1.0  # prefetch never changes what the model computes
    assert result["runs"]["remoe"]["setting"]["router"] and not result["runs"]["prefetch"]["setting"]["router"]


def test_verify_fails_loudly_on_a_corrupted_expert(tmp_path):
    config = OffloadConfig(4, store_dir=tmp_path / "s", verify=False)  # no crc check: only --verify can notice
    OffloadRuntime(tiny_model("olmoe"), config).close()
    store = ExpertStore(tmp_path / "s")
    stride, layer_records = store.record_stride, store.num_experts
    store.close()
    with open(tmp_path / "s" / DATA_NAME, "r+b") as f:  # every expert of the first MoE layer: weights 3.0
        f.write(b"\x40" * (stride * layer_records))
    with pytest.raises(TierwiseError, match=r"configuration 'original', request 0, step 0: .* max \|logit difference\|"):
        run_offload(tiny_model("olmoe"), REQUESTS, 7, config, [Setting("original")], workload=Workload("replay"),
                    verify=True)
    # without --verify the same run goes through: nothing else would have noticed
    run_offload(tiny_model("olmoe"), REQUESTS, 7, config, [Setting("original")], workload=Workload("replay"))


def test_throttled_runs_overlap_and_stay_exact(tmp_path):
    """--throttle: every read on the I/O thread (a 4 KB target over PCIe 3.0 takes ~10 us), decode computing the
    ready experts while the others load; the outputs still equal the resident model's."""
    config = OffloadConfig(6, storage="pcie3-host", target="4KB", throttle=True, store_dir=tmp_path / "s")
    settings = [Setting("original"), Setting("prefetch", prefetch=2)]
    result = run_offload(tiny_model("mixtral"), REQUESTS, 7, config, settings, workload=Workload("replay"), verify=True)
    assert result["config"]["throttle"] and set(result["verify"]["checked"]) == {"original", "prefetch"}
    run = result["runs"]["original"]
    assert run["tpot_ms"]["total"] == run["tpot_ms"]["measured"]  # the storage is in the wall clock
    assert run["bytes_read"] > 0 and run["time_s"]["io_measured"] > 0


class _Store:
    def __init__(self):
        self.order = []

    def read_into(self, layer, expert, out):
        self.order.append((layer, expert))


def test_io_channel_serves_reads_in_order_and_pads_them_to_the_fetch_time(monkeypatch):
    slept = []
    monkeypatch.setattr("tierwise.remoe.offload.io.time.sleep", slept.append)
    store = _Store()
    channel = IOChannel(store, fetch_seconds=10.0)
    futures = [channel.submit(1, e, {}) for e in (3, 1, 2)]
    channel.drain()
    assert all(f.done() for f in futures) and store.order == [(1, 3), (1, 1), (1, 2)]
    assert len(slept) == 3 and all(9.0 < s <= 10.0 for s in slept)  # each read takes the rest of its 10 s
    channel.close()
