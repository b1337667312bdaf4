"""A real runtime: the exported GGUF (original vs ReMoE router) in llama.cpp, memory-mapped under a memory cap.

ReMoE's claim is that a router with more expert reuse pages fewer experts in from storage. This measures it in
llama.cpp itself (llama-cpp-python) instead of in tierwise's offload runtime: the original GGUF
(`tierwise remoe export-gguf`) and the ReMoE one (`tierwise remoe patch-gguf`, only `blk.N.ffn_gate_inp.weight`
differs) are each loaded with `use_mmap=True, use_mlock=False` by a child process placed in a fresh memory cgroup
(cgroup v2 `memory.max`, else v1 `memory.limit_in_bytes`), so the kernel must evict mapped weight pages and fault
them back in from disk when the cap is below the working set. The page cache of the GGUF is dropped
(`posix_fadvise(DONTNEED)`, checked with `mincore`) before every run, so every run starts cold.

Each run decodes the same requests (teacher-forced replay of held-out text by default, or greedy prompts), one token
per `llama_eval` call, and reports decode TPOT (wall clock per `eval` of one token), major page faults (the cgroup's
`memory.stat` `pgmajfault`, and `/proc/self/stat` majflt) and bytes read from disk (`/proc/self/io` read_bytes) per
decoded token. Original and ReMoE runs alternate over `--rounds` (the order flips every round); one uncapped run of
each (same cold start, no cgroup) is added as the no-paging reference unless `--no-reference`.

`--madvise random` applies MADV_RANDOM to llama.cpp's mapping of the GGUF after loading, so a miss reads the faulted
page only; the default `none` keeps llama.cpp as shipped, where a miss reads the device's read_ahead_kb around the
page (8 MiB on some VMs: then paging cannot see experts at all).

The child joins the cgroup after importing llama_cpp, so the cap bounds what loading and decoding the model
charges (mapped GGUF pages, KV cache, compute buffers, the logits array), not the Python interpreter. Needs root (or a
delegated cgroup) and a memory controller; without one it exits with a message saying so.

    nice -n 19 .venv/bin/python benchmarks/remoe_llamacpp_paging.py --mem-cap 112MiB --madvise random \\
        [--router DELTA] [--model embedded] [--workload replay|greedy] [--limit 8] [--tokens 32] [--rounds 3] \\
        [--workdir DIR] [--json out.json]

Without `--router` (embedded model only) the router is fine-tuned first with
`tierwise remoe finetune embedded --preset demo --out WORKDIR/finetune` (about a minute on a CPU), reused if present.
Install the runtime with `CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CGROUP_PREFIX = "tierwise-llcp"
TOY_BYTES = 1 << 30  # below this GGUF size the run is a plumbing check, not a speed claim


# ----------------------------------------------------------------------------------------------------- sizes


def parse_size(text: str, reference: int | None = None) -> int | None:
    """A size as every tierwise command reads it ('24M', '24MiB', '24MB'), or '0.4' / '40%' of `reference` bytes
    (the GGUF size), or 'none'."""
    from tierwise.common.errors import TierwiseError
    from tierwise.common.units import parse_size as size

    s = text.strip().lower().replace(" ", "")
    if s in ("none", "off", "0"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(%?)", s)
    if m:  # a fraction of the GGUF
        if reference is None:
            raise SystemExit("--mem-cap: a fraction needs the GGUF size")
        value = float(m.group(1))
        frac = value / 100 if m.group(2) else value
        if not 0 < frac <= 1:
            raise SystemExit(f"--mem-cap: a fraction of the GGUF size must be in (0, 1], got {text!r}")
        return int(frac * reference)
    try:
        return size(text, "--mem-cap")
    except TierwiseError as e:
        raise SystemExit(f"{e}; or a fraction such as 0.4 or 40% (of the GGUF size)") from None


def say(text: str) -> None:
    print(textwrap.fill(text, 80, subsequent_indent="  "))


def mib(n: float) -> float:
    return n / 2**20


# ------------------------------------------------------------------------------------------------ page cache


_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return _libc


def resident_fraction(path: Path) -> float | None:
    """Fraction of the file's pages in the page cache (mincore); None where it cannot be asked."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = _c()
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED: maps without faulting anything in
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            pages = (size + os.sysconf("SC_PAGE_SIZE") - 1) // os.sysconf("SC_PAGE_SIZE")
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return None
            return sum(b & 1 for b in vec) / pages
        finally:
            libc.munmap(addr, size)
    except (OSError, AttributeError):
        return None
    finally:
        os.close(fd)


def drop_page_cache(path: Path) -> float | None:
    """Write back and evict the file's cached pages; returns the fraction still resident (0.0 = cold)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_fraction(path)


# --------------------------------------------------------------------------------------------------- cgroups


def _mounts() -> list[tuple[str, str, list[str]]]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            out.append((parts[1], parts[2], parts[3].split(",")))
    return out


def _own_cgroups() -> dict[str, str]:
    """'v2' -> own path in the unified hierarchy; 'memory' -> own path in the v1 memory hierarchy."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":
            own["v2"] = path
        elif "memory" in controllers.split(","):
            own["memory"] = path
    return own


def _candidates() -> list[tuple[str, Path]]:
    """(version, parent directory) where a memory-capped child cgroup could be made, best first, with the
    reason each mount was passed over recorded in `_candidates.skipped`."""
    own, cands, skipped = _own_cgroups(), [], []
    for mount, fstype, opts in _mounts():
        root = Path(mount)
        if fstype == "cgroup2":
            ctrl = (root / "cgroup.controllers").read_text().split() if (root / "cgroup.controllers").exists() else []
            if "memory" not in ctrl:
                listed = " ".join(ctrl) or "empty"
                skipped.append(f"cgroup v2 at {mount}: no memory controller (cgroup.controllers: {listed})")
                continue
            mine = root / own.get("v2", "/").lstrip("/")
            for parent in dict.fromkeys([mine, root]):
                sub = parent / "cgroup.subtree_control"
                if sub.exists() and "memory" in sub.read_text().split():
                    cands.append(("v2", parent))
            if not any(v == "v2" for v, _ in cands):
                cands.append(("v2-enable", root))  # root may enable +memory for its children
        elif "memory" in opts:
            mine = root / own.get("memory", "/").lstrip("/")
            for parent in dict.fromkeys([mine, root]):
                cands.append(("v1", parent))
    _candidates.skipped = skipped
    return cands


class MemCgroup:
    """A fresh memory cgroup with a hard limit; `procs` is the file a process writes its pid to, to join it."""

    def __init__(self, version: str, path: Path, limit: int):
        self.version, self.path, self.limit = version, path, limit

    @classmethod
    def create(cls, name: str, limit: int) -> "MemCgroup":
        reasons = []
        for version, parent in _candidates():
            try:
                if version == "v2-enable":
                    (parent / "cgroup.subtree_control").write_text("+memory")
                    version = "v2"
                path = parent / name
                path.mkdir()
            except OSError as e:
                reasons.append(f"{parent}: {e.strerror or e}")
                continue
            try:
                knob = "memory.max" if version == "v2" else "memory.limit_in_bytes"
                (path / knob).write_text(str(limit))
                if version == "v2" and (path / "memory.swap.max").exists():
                    (path / "memory.swap.max").write_text("0")  # paging must come from the file, not from swap
                got = int((path / knob).read_text().strip())
                if got > limit:
                    raise OSError(0, f"{knob} reads {got} after writing {limit}")
                return cls(version, path, got)
            except OSError as e:
                reasons.append(f"{path}: {e.strerror or e}")
                _rmdir(path)
        lines = _candidates.skipped + reasons
        raise SystemExit("cannot create a memory-capped cgroup on this machine, so experts cannot be made to page "
                         "under a cap (needs root or a delegated cgroup with the memory controller: cgroup v2 "
                         "memory.max or v1 memory.limit_in_bytes).\n  " + "\n  ".join(lines or ["no cgroup mount found"])
                         + "\nRun with --mem-cap none for an uncapped run, or on a machine that allows a cap.")

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def stat(self) -> dict[str, int]:
        out = {}
        for line in (self.path / "memory.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def peak(self) -> int | None:
        f = self.path / ("memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes")
        return int(f.read_text().strip()) if f.exists() else None

    def oom_kills(self) -> int:
        f = self.path / ("memory.events" if self.version == "v2" else "memory.oom_control")
        if not f.exists():
            return 0
        for line in f.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill":
                return int(v)
        return 0

    def remove(self) -> None:
        _rmdir(self.path)


def _rmdir(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    print(f"warning: could not remove cgroup {path}; remove it with: rmdir {path}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ the child


def _proc_counters() -> dict[str, int]:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    out = {"minflt": int(fields[7]), "majflt": int(fields[9])}
    for line in Path("/proc/self/io").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("read_bytes", "rchar"):
            out[k] = int(v)
    return out


def madvise_mapping(path: str, advice: str) -> int:
    """madvise every mapping of `path` in this process (llama.cpp's mmap of the GGUF); returns the bytes advised.
    `random` turns off the kernel's read-around on a fault, so a miss reads the faulted page, not read_ahead_kb."""
    libc = _c()
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    code = {"random": 1, "normal": 0}[advice]  # MADV_RANDOM, MADV_NORMAL
    real, total = os.path.realpath(path), 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == real:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if libc.madvise(lo, hi - lo, code) != 0:
                raise OSError(ctypes.get_errno(), f"madvise({advice}) on {path}")
            total += hi - lo
    if not total:
        raise SystemExit(f"--madvise {advice}: {path} is not mapped (was use_mmap honoured?)")
    return total


def child(spec_path: str) -> None:
    """Runs in its own process: import, join the cgroup, load the GGUF memory-mapped, decode, write JSON."""
    import numpy as np
    import llama_cpp

    spec = json.loads(Path(spec_path).read_text())
    cg_procs, cg_dir = spec.get("cgroup_procs"), spec.get("cgroup_dir")
    if cg_procs:
        Path(cg_procs).write_text(str(os.getpid()))

    def cg_pgmajfault():
        if not cg_dir:
            return None
        for line in (Path(cg_dir) / "memory.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "pgmajfault":
                return int(v)
        return None

    def snap():
        return {**_proc_counters(), "cg_pgmajfault": cg_pgmajfault(), "t": time.perf_counter()}

    def delta(a, b):
        return {k: (b[k] - a[k]) if a[k] is not None and b[k] is not None else None for k in a}

    s0 = snap()
    llm = llama_cpp.Llama(model_path=spec["gguf"], n_ctx=spec["n_ctx"], n_batch=spec["n_ctx"],
                          n_threads=spec["threads"], n_threads_batch=spec["threads"], use_mmap=True, use_mlock=False,
                          logits_all=True, verbose=False)  # as tests/remoe/test_gguf.py: scores of each step
    advised = madvise_mapping(spec["gguf"], spec["madvise"]) if spec["madvise"] != "none" else 0
    s1 = snap()
    prefill = {k: 0 for k in s1}
    decode = {k: 0 for k in s1}
    step_s, argmax, tokens = [], [], []

    def add(acc, d):
        for k, v in d.items():
            acc[k] = None if v is None or acc[k] is None else acc[k] + v

    for req in spec["requests"]:
        llm.reset()
        a = snap()
        llm.eval(req["prompt"])
        b = snap()
        add(prefill, delta(a, b))
        cont = req.get("continuation")
        req_argmax, req_tokens = [], []
        for i in range(spec["tokens"]):
            top = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tok = cont[i] if cont is not None else top
            req_argmax.append(top)
            req_tokens.append(tok)
            t = time.perf_counter()
            llm.eval([tok])
            step_s.append(time.perf_counter() - t)
        c = snap()
        add(decode, delta(b, c))
        argmax.append(req_argmax)
        tokens.append(req_tokens)
    cg_end = None
    if cg_dir:  # what the cgroup holds with the model loaded, before exit frees the anonymous memory
        cg_end = {k: int(v) for k, _, v in (line.partition(" ") for line in
                                             (Path(cg_dir) / "memory.stat").read_text().splitlines()) if v.isdigit()}
    Path(spec["out"]).write_text(json.dumps({"load": delta(s0, s1), "madvised_bytes": advised,
                                             "cgroup_stat_end": cg_end, "prefill": prefill, "decode": decode,
                                             "step_s": step_s, "argmax": argmax, "tokens": tokens,
                                             "llama_cpp_version": getattr(llama_cpp, "__version__", "?")}))


# ----------------------------------------------------------------------------------------------- the parent


def _tierwise(*args: str) -> None:
    exe = Path(sys.executable).with_name("tierwise")
    cmd = [str(exe) if exe.exists() else "tierwise", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def build_requests(args) -> tuple[list[dict], str]:
    from transformers import AutoTokenizer

    from tierwise.remoe.models.adapters import checkpoint_dir

    tok = AutoTokenizer.from_pretrained(str(checkpoint_dir(args.model)))
    if args.workload == "replay":
        from tierwise.remoe.offload.workload import replay_requests

        data = args.data or ("embedded:heldout" if args.model == "embedded" else None)
        if data is None:
            raise SystemExit("--data is required for the replay workload of a model other than embedded")
        reqs = replay_requests(data, tok, args.prompt_tokens, args.tokens, args.limit)
        return [{"prompt": r.prompt_ids, "continuation": r.continuation} for r in reqs], f"replay of {data}"
    from tierwise.remoe.offload.compare import resolve_prompts

    texts = resolve_prompts(args.model, args.prompts, tok, args.limit)
    return [{"prompt": tok(p)["input_ids"], "continuation": None} for p in texts], "greedy prompts"


def gguf_summary(path: Path) -> dict:
    from tierwise.remoe.export.gguf import PADDING_KEY, read_gguf

    r = read_gguf(path)
    blocks = next((int(f.contents()) for k, f in r.fields.items() if k.endswith(".block_count")), 0)
    padding = int(r.fields[PADDING_KEY].contents()) if PADDING_KEY in r.fields else 0
    real = blocks - padding
    routed = sum(int(t.n_bytes) for t in r.tensors if "_exps." in t.name and int(t.name.split(".")[1]) < real)
    padded = sum(int(t.n_bytes) for t in r.tensors if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= real)
    return {"bytes": path.stat().st_size, "routed_expert_bytes": routed, "padding_bytes": padded,
            "blocks": blocks, "padding_blocks": padding}


def run_once(args, label: str, gguf: Path, requests: list[dict], cap: int | None, n: int, n_ctx: int) -> dict:
    cold = drop_page_cache(gguf)
    spec_path = args.workdir / f"spec-{n}.json"
    out_path = args.workdir / f"result-{n}.json"
    cg = MemCgroup.create(f"{CGROUP_PREFIX}-{os.getpid()}-{n}", cap) if cap else None
    spec = {"gguf": str(gguf), "madvise": args.madvise, "requests": requests, "tokens": args.tokens,
            "threads": args.threads, "n_ctx": n_ctx, "out": str(out_path),
            "cgroup_procs": str(cg.procs) if cg else None, "cgroup_dir": str(cg.path) if cg else None}
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    try:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path)], capture_output=True, text=True,
                              timeout=args.run_timeout)
        wall = time.perf_counter() - t
        info = {"label": label, "capped": cg is not None, "cap_bytes": cg.limit if cg else None,
                "cgroup": cg.version if cg else None, "resident_before": cold, "wall_s": wall}
        if cg:
            info.update(cgroup_peak_bytes=cg.peak(), oom_kills=cg.oom_kills(), cgroup_stat=cg.stat())
    finally:
        if cg:
            cg.remove()
        spec_path.unlink(missing_ok=True)
    if proc.returncode != 0 or not out_path.exists():
        why = "killed by the OOM killer: the cap is below what llama.cpp must keep resident" if info.get("oom_kills") \
            else f"exit status {proc.returncode}"
        info["error"] = f"{why}; stderr tail: {proc.stderr.strip()[-600:]}"
        return info
    info.update(json.loads(out_path.read_text()))
    out_path.unlink()
    d, steps = info["decode"], len(info["step_s"])
    info.update(steps=steps, tpot_ms=1e3 * statistics.fmean(info["step_s"]),
                tpot_p50_ms=1e3 * statistics.median(info["step_s"]),
                majflt_per_token=d["majflt"] / steps, read_bytes_per_token=d["read_bytes"] / steps,
                cg_pgmajfault_per_token=None if d["cg_pgmajfault"] is None else d["cg_pgmajfault"] / steps)
    return info


def read_ahead_kb(path: Path) -> str:
    """The read_ahead_kb of the block device holding `path` (the size of a fault's read-around), or '?'."""
    try:
        dev = os.stat(path).st_dev
        q = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
        for d in (q, q.parent):
            if (d / "queue" / "read_ahead_kb").exists():
                return (d / "queue" / "read_ahead_kb").read_text().strip() + " KiB"
    except OSError:
        pass
    return "?"


def summarise(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"runs": len(runs), "ok": 0}
    steps = [s for r in ok for s in r["step_s"]]
    tpots = [r["tpot_ms"] for r in ok]
    cg = [r["cg_pgmajfault_per_token"] for r in ok if r["cg_pgmajfault_per_token"] is not None]
    return {"runs": len(runs), "ok": len(ok), "tpot_ms": statistics.fmean(tpots),
            "tpot_ms_sd": statistics.stdev(tpots) if len(tpots) > 1 else 0.0,
            "tpot_p50_ms": 1e3 * statistics.median(steps),
            "majflt_per_token": statistics.fmean(r["majflt_per_token"] for r in ok),
            "cg_pgmajfault_per_token": statistics.fmean(cg) if cg else None,
            "read_bytes_per_token": statistics.fmean(r["read_bytes_per_token"] for r in ok),
            "load_majflt": statistics.fmean(r["load"]["majflt"] for r in ok),
            "load_read_bytes": statistics.fmean(r["load"]["read_bytes"] for r in ok),
            "peak_bytes": max((r.get("cgroup_peak_bytes") or 0) for r in ok) or None}


def agreement(a: dict, b: dict, workload: str) -> float | None:
    """Share of decode steps where b's next-token argmax (replay) or token (greedy) equals a's."""
    if "error" in a or "error" in b:
        return None
    key = "tokens" if workload == "greedy" else "argmax"
    pairs = [(x, y) for ra, rb in zip(a[key], b[key]) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / len(pairs)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="checkpoint folder, hub id or 'embedded'")
    ap.add_argument("--router", type=Path, default=None,
                    help="ReMoE router delta; default (embedded only): a --preset demo fine-tune in WORKDIR/finetune")
    ap.add_argument("--mem-cap", default="0.6",
                    help="cgroup memory cap of each run: a size (112MiB, 50MB), a fraction of the GGUF size (0.6, "
                         "60%%), or 'none' (no cgroup) [0.6]")
    ap.add_argument("--workload", choices=("replay", "greedy"), default="replay")
    ap.add_argument("--data", default=None, help="replay documents (default for embedded: embedded:heldout)")
    ap.add_argument("--prompts", default=None, help="greedy: prompt file (default: the embedded prompts)")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="replay: prompt tokens per document [32]")
    ap.add_argument("--limit", type=int, default=8, help="requests per run [8]")
    ap.add_argument("--tokens", type=int, default=32, help="decoded tokens per request [32]")
    ap.add_argument("--rounds", type=int, default=3, help="capped runs of each GGUF, interleaved [3]")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads [1]")
    ap.add_argument("--madvise", choices=("none", "random"), default="none",
                    help="advice on llama.cpp's mapping of the GGUF after loading: none (llama.cpp as shipped: a miss "
                         "reads read_ahead_kb around the page) or random (a miss reads only the faulted page) [none]")
    ap.add_argument("--no-reference", action="store_true", help="skip the uncapped run of each GGUF")
    ap.add_argument("--workdir", type=Path, default=Path("runs/remoe-llamacpp-paging"),
                    help="where the GGUFs are written; must be on a disk file system, not tmpfs")
    ap.add_argument("--run-timeout", type=float, default=600, help="seconds before a run is abandoned [600]")
    ap.add_argument("--json", type=Path, default=None, help="write every run and the summary as JSON here")
    args = ap.parse_args()
    if min(args.limit, args.tokens, args.rounds, args.threads, args.prompt_tokens) < 1:
        raise SystemExit("--limit, --tokens, --rounds, --threads and --prompt-tokens must be at least 1")
    try:
        import llama_cpp  # noqa: F401  (the child imports it; fail here, before any export)
    except ImportError:
        raise SystemExit('llama_cpp is not installed: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python')
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.mem_cap.strip().lower() not in ("none", "off", "0"):  # fail before exporting when no cap can be set
        MemCgroup.create(f"{CGROUP_PREFIX}-{os.getpid()}-probe", 64 << 20).remove()

    router = args.router
    if router is None:
        if args.model != "embedded":
            raise SystemExit("--router is required for a model other than embedded")
        router = args.workdir / "finetune" / "router_delta.safetensors"
        if not router.exists():
            _tierwise("remoe", "finetune", "embedded", "--preset", "demo", "--out", str(router.parent))
    original, remoe = args.workdir / "original.gguf", args.workdir / "remoe.gguf"
    _tierwise("remoe", "export-gguf", args.model, "--out", str(original))
    _tierwise("remoe", "patch-gguf", str(original), str(router), str(remoe))

    info = gguf_summary(original)
    cap = parse_size(args.mem_cap, info["bytes"])
    requests, workload = build_requests(args)
    n_ctx = max(len(r["prompt"]) for r in requests) + args.tokens + 8
    ggufs = {"original": original, "remoe": remoe}
    runs: dict[str, list[dict]] = {"original": [], "remoe": []}
    reference: dict[str, dict] = {}
    n = 0
    for rnd in range(args.rounds):
        for label in (("original", "remoe") if rnd % 2 == 0 else ("remoe", "original")):
            n += 1
            r = run_once(args, label, ggufs[label], requests, cap, n, n_ctx)
            r["round"] = rnd
            runs[label].append(r)
            say(f"round {rnd + 1}/{args.rounds} {label:8s} " + (f"ERROR {r['error']}" if "error" in r else
                f"TPOT {r['tpot_ms']:.2f} ms, {r['majflt_per_token']:.1f} faults/tok, "
                f"{r['read_bytes_per_token'] / 1024:.0f} KiB/tok, {100 * (r['resident_before'] or 0):.0f}% cached"))
            sys.stdout.flush()
    if cap and not args.no_reference:
        for label in ("original", "remoe"):
            n += 1
            reference[label] = run_once(args, label, ggufs[label], requests, None, n, n_ctx)

    summary = {k: summarise(v) for k, v in runs.items()}
    ref_summary = {k: summarise([v]) for k, v in reference.items()}
    agree = [a for a in (agreement(o, r, args.workload) for o, r in zip(runs["original"], runs["remoe"])) if a is not None]
    same_self = [a for a in (agreement(runs["original"][0], o, args.workload) for o in runs["original"][1:]) if a is not None]
    so, sr = summary["original"], summary["remoe"]
    speedup = so["tpot_ms"] / sr["tpot_ms"] if so.get("ok") and sr.get("ok") else None
    paired = [o["tpot_ms"] / r["tpot_ms"] for o, r in zip(runs["original"], runs["remoe"]) if "error" not in o and "error" not in r]

    cap_txt = f"{mib(cap):.1f} MiB ({100 * cap / info['bytes']:.0f}% of the GGUF)" if cap else "none"
    cgv = next((r["cgroup"] for r in runs["original"] if r.get("cgroup")), None)
    print()
    say(f"llama.cpp, mmap (madvise {args.madvise}, device read-ahead {read_ahead_kb(original)}), "
        f"{args.threads} thread(s); cap {cap_txt}" + (f", cgroup {cgv}" if cgv else ""))
    say(f"GGUF {mib(info['bytes']):.1f} MiB, routed experts of real layers {mib(info['routed_expert_bytes']):.1f} MiB"
          + (f", {info['padding_blocks']} zero padding blocks {mib(info['padding_bytes']):.1f} MiB" if info["padding_blocks"] else ""))
    say(f"{workload}: {len(requests)} requests x {args.tokens} tokens, {args.rounds} round(s), cold start each run")
    print(f"{'run':<18}{'TPOT ms':>8}{'sd':>6}{'p50 ms':>8}{'flt/tok':>9}{'cg flt/tok':>11}{'KiB/tok':>9}{'peak MiB':>9}")
    rows = [(k, summary[k]) for k in ("original", "remoe")] + [(f"{k} (no cap)", v) for k, v in ref_summary.items()]
    for name, s in rows:
        if not s.get("ok"):
            print(f"{name:<18}  failed ({s['runs'] - s.get('ok', 0)} of {s['runs']} runs): see --json")
            continue
        cgf = "-" if s["cg_pgmajfault_per_token"] is None else f"{s['cg_pgmajfault_per_token']:.1f}"
        peak = "-" if not s["peak_bytes"] else f"{mib(s['peak_bytes']):.1f}"
        print(f"{name:<18}{s['tpot_ms']:>8.2f}{s['tpot_ms_sd']:>6.2f}{s['tpot_p50_ms']:>8.2f}{s['majflt_per_token']:>9.1f}"
              f"{cgf:>11}{s['read_bytes_per_token'] / 1024:>9.0f}{peak:>9}")
    for k in ("original", "remoe"):
        st = [r["cgroup_stat_end"] for r in runs[k] if "error" not in r and r.get("cgroup_stat_end")]
        if st:
            fkey, akey = ("file", "anon") if cgv == "v2" else ("cache", "rss")
            say(f"{k}: charged after the last token: file pages {mib(statistics.fmean(x.get(fkey, 0) for x in st)):.1f}"
                f" MiB, anonymous {mib(statistics.fmean(x.get(akey, 0) for x in st)):.1f} MiB (mean over runs)")
    verdict = None
    if speedup:
        fo, fr = so["majflt_per_token"], sr["majflt_per_token"]
        say(f"speedup original/ReMoE TPOT: {speedup:.2f}x (per round {', '.join(f'{p:.2f}' for p in paired)}); "
              f"faults/token {fo:.1f} -> {fr:.1f}")
        label = "top-1 agreement" if args.workload == "replay" else "identical tokens"
        if agree:
            say(f"ReMoE vs original {label}: {100 * statistics.fmean(agree):.1f}%"
                  + (f" (original vs itself: {100 * statistics.fmean(same_self):.1f}%)" if same_self else ""))
        noisy = len(paired) > 1 and min(paired) <= 1 <= max(paired)
        if info["bytes"] < TOY_BYTES:
            verdict = (f"a {mib(info['bytes']):.0f} MiB toy GGUF: its paging under a cap checks that this path works "
                       "(cap, cold start, faults and reads counted), it is not a speed claim for a real model"
                       + ("; the rounds disagree on the sign of the difference" if noisy else ""))
        elif noisy:
            verdict = "the rounds disagree on the sign of the difference: no speedup is shown at this cap"
        if verdict:
            say("note: " + verdict)
    if args.json:
        from tierwise.common.report import write_json

        write_json({"model": args.model, "router": str(router), "workload": workload, "mem_cap_bytes": cap,
                    "cgroup": cgv, "gguf": info, "madvise": args.madvise,
                    "read_ahead": read_ahead_kb(original), "threads": args.threads, "requests": len(requests),
                    "tokens": args.tokens, "rounds": args.rounds, "summary": summary, "reference": ref_summary,
                    "speedup_tpot": speedup, "speedup_per_round": paired,
                    "agreement": statistics.fmean(agree) if agree else None, "note": verdict,
                    "runs": runs, "reference_runs": reference}, args.json)
        print(f"wrote {args.json}")
    if not (so.get("ok") and sr.get("ok")):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
