"""Opt-in: benchmarks/remoe_llamacpp_paging.py end to end on the embedded model (llama.cpp under a memory cgroup).

Needs llama-cpp-python (`CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python`), root or a delegated memory
cgroup, and TIERWISE_LLAMACPP_PAGING=1; skipped otherwise, so `make test` never needs any of them. About a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "remoe_llamacpp_paging.py"


@pytest.mark.optin
@pytest.mark.slow
def test_paging_benchmark_runs_capped_and_cold(tmp_path):
    if os.environ.get("TIERWISE_LLAMACPP_PAGING") != "1":
        pytest.skip("set TIERWISE_LLAMACPP_PAGING=1 to run the llama.cpp paging benchmark (needs root/cgroups)")
    pytest.importorskip("llama_cpp")
    from tierwise.remoe.export.delta import save_router_delta
    from tierwise.remoe.models.adapters import adapter_for, load_model

    model, _ = load_model("embedded")
    adapter = adapter_for(model)
    with torch.no_grad():  # another router, so the two GGUFs differ
        for layer in adapter.moe_layers:
            adapter.router_weight(layer).mul_(-1.0)
    delta = save_router_delta(model, tmp_path / "router.safetensors")
    out = tmp_path / "paging.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--router", str(delta), "--mem-cap", "0.6", "--madvise", "random",
                        "--rounds", "1", "--limit", "2", "--tokens", "4", "--workdir", str(tmp_path / "w"),
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "cannot create a memory-capped cgroup" in r.stderr + r.stdout:
        pytest.skip("no memory cgroup can be created here")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = r.stdout[r.stdout.index("round 1/1"):]  # what follows the exports' own output
    assert max(len(line) for line in report.splitlines()) <= 80
    data = json.loads(out.read_text())
    assert data["cgroup"] in ("v1", "v2") and data["mem_cap_bytes"] < data["gguf"]["bytes"]
    for label in ("original", "remoe"):
        (run,) = data["runs"][label]
        assert "error" not in run
        assert run["resident_before"] in (0.0, None)  # every run starts with the GGUF out of the page cache
        assert run["steps"] == 2 * 4 and run["madvised_bytes"] > 0
        assert run["cgroup_peak_bytes"] <= data["mem_cap_bytes"]
        assert run["load"]["read_bytes"] > 0  # the model came from disk
    assert data["speedup_tpot"] > 0
    assert not list(Path("/sys/fs/cgroup").rglob("tierwise-llcp-*"))  # every cgroup removed
