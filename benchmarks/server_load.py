"""Load test: `tierwise nemo serve` against memcached (Debian package) with the same Python client and key/value mix.

N client processes, each one pymemcache connection (TCP_NODELAY, every command acknowledged), run a get/set mix on
tiny values for a bounded time; the script prints ops/s, p50/p99 latency per server and the Nemo/memcached
throughput ratio (target >= 0.7 on tiny values). Both servers are started by the script on free loopback ports;
runs alternate between them (`--rounds`) so background load on the machine hits both alike, and the best round of
each is reported. memcached runs with one worker thread (`-t 1`), as the Nemo server serves from one thread.

Each round also reports the server's CPU time per operation (user + system time of the server process, all its
threads, from /proc before and after the load): on a shared machine throughput follows whatever CPU share the
server gets, while CPU per operation barely moves.

    python benchmarks/server_load.py --clients 4 --seconds 5
    apt-get install -y memcached   # if the script says memcached is not installed
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from pymemcache.client.base import Client

from tierwise.common.units import parse_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server did not listen on port {port} within {timeout} s")


def start_memcached(memory_mb: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(memory_mb),
                             "-t", "1", *user], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


def start_nemo(folder: str, flash: str, dram: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "tierwise.cli", "nemo", "serve", "--device", folder, "--flash-size", flash,
           "--dram-size", dram, "--port", str(port), "--fresh", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    banner: list[str] = []

    def drain() -> None:
        for line in proc.stdout:
            banner.append(line.rstrip())

    threading.Thread(target=drain, daemon=True).start()
    wait_port(port, proc)
    print("  " + "\n  ".join(b for b in banner if not b.startswith("listening")), flush=True)
    return proc, port


def value_for(key_id: int, vmin: int, vmax: int) -> bytes:
    n = vmin + (key_id * 2654435761) % (vmax - vmin + 1)  # a fixed size per key, spread over [vmin, vmax]
    return (b"%d|" % key_id * (n // 4 + 1))[:n]


def populate(port: int, keys: int, vmin: int, vmax: int) -> None:
    c = Client(("127.0.0.1", port), no_delay=True, timeout=60)
    batch = {}
    for k in range(keys):
        batch[b"key:%d" % k] = value_for(k, vmin, vmax)
        if len(batch) == 200:
            c.set_many(batch, noreply=False)
            batch = {}
    if batch:
        c.set_many(batch, noreply=False)
    c.close()


def client_loop(port: int, seconds: float, max_ops: int, keys: int, get_ratio: float, vmin: int, vmax: int,
                multiget: int, seed: int, out: mp.Queue) -> None:
    c = Client(("127.0.0.1", port), no_delay=True, timeout=60, default_noreply=False)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, keys, max_ops)
    gets = rng.random(max_ops) < get_ratio
    lat = np.empty(max_ops, np.int64)
    hits = n_gets = 0
    n = 0
    clock = time.perf_counter_ns
    start = clock()
    end = start + int(seconds * 1e9)
    while n < max_ops:
        k = int(ids[n])
        key = b"key:%d" % k
        t = clock()
        if not gets[n]:
            c.set(key, value_for(k, vmin, vmax))
            done = 1
        elif multiget == 1:
            hits += c.get(key) is not None
            done = 1
        else:  # one request for the next `multiget` keys, counted as that many gets
            done = min(multiget, max_ops - n)
            hits += len(c.get_many([b"key:%d" % i for i in ids[n:n + done].tolist()]))
        n_gets += done if gets[n] else 0
        t2 = clock()
        lat[n:n + done] = (t2 - t) // done
        n += done
        if t2 > end:
            break
    elapsed = (clock() - start) / 1e9
    c.close()
    out.put((n, hits, n_gets, lat[:n], elapsed))


def run_load(port: int, args) -> dict:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=client_loop, args=(port, args.seconds, args.max_ops, args.keys, args.get_ratio,
                                                   args.value_min, args.value_max, args.multiget, 100 + i, q))
             for i in range(args.clients)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    wall = max(r[4] for r in results)  # from each client's first to its last operation
    for p in procs:
        p.join()
    ops = sum(r[0] for r in results)
    lat = np.concatenate([r[3] for r in results]) / 1000.0
    gets = sum(r[2] for r in results)
    return {"ops": ops, "ops_per_s": ops / wall, "p50_us": float(np.percentile(lat, 50)),
            "p99_us": float(np.percentile(lat, 99)), "hit_ratio": sum(r[1] for r in results) / gets if gets else None}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to report server CPU per operation."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4, help="concurrent client processes (one connection each)")
    ap.add_argument("--seconds", type=float, default=5.0, help="load time per run")
    ap.add_argument("--max-ops", type=int, default=200_000, help="cap on operations per client per run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs per server; the best is reported")
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--get-ratio", type=float, default=0.9)
    ap.add_argument("--value-min", type=int, default=50)
    ap.add_argument("--value-max", type=int, default=300, help="tiny values: at most this many bytes")
    ap.add_argument("--multiget", type=int, default=1,
                    help="keys per get request (get_many); latencies are then per key")
    ap.add_argument("--flash-size", default="256M", help="Nemo device size")
    ap.add_argument("--dram-size", default="48M", help="Nemo DRAM budget, e.g. 48M (sizes the SGs; memcached gets "
                    "the same, at least 64 MiB)")
    ap.add_argument("--engine-thread", action="store_true", help="serve Nemo with --engine-thread")
    args = ap.parse_args()

    servers = ["nemo"]
    if shutil.which("memcached"):
        servers.insert(0, "memcached")
    else:
        print("memcached is NOT installed, so there is no reference run and no ratio: "
              "install it with `apt-get update && apt-get install -y memcached`", flush=True)
    extra = ["--engine-thread"] if args.engine_thread else []
    best: dict[str, dict] = {}
    rates: dict[str, list[float]] = {name: [] for name in servers}
    cpus: dict[str, list[float]] = {name: [] for name in servers}
    with tempfile.TemporaryDirectory(prefix="nemo-load-") as tmp:
        for rnd in range(args.rounds):
            for name in servers:
                print(f"round {rnd + 1}/{args.rounds}: {name}", flush=True)
                if name == "memcached":
                    proc, port = start_memcached(max(64, parse_size(args.dram_size, "--dram-size") >> 20))
                else:
                    proc, port = start_nemo(os.path.join(tmp, "dev"), args.flash_size, args.dram_size, extra)
                try:
                    populate(port, args.keys, args.value_min, args.value_max)
                    cpu0 = cpu_seconds(proc.pid)
                    r = run_load(port, args)
                    r["server_cpu_us_per_op"] = (cpu_seconds(proc.pid) - cpu0) / r["ops"] * 1e6
                finally:
                    stop(proc)
                print(f"  {r['ops']} ops, {r['ops_per_s']:.0f} ops/s, p50 {r['p50_us']:.0f} us, "
                      f"p99 {r['p99_us']:.0f} us, hit ratio {r['hit_ratio']:.3f}, server CPU "
                      f"{r['server_cpu_us_per_op']:.1f} us/op; load average {os.getloadavg()[0]:.1f}", flush=True)
                rates[name].append(r["ops_per_s"])
                cpus[name].append(r["server_cpu_us_per_op"])
                if name not in best or r["ops_per_s"] > best[name]["ops_per_s"]:
                    best[name] = r

    print(f"\n{args.clients} clients x {args.seconds:g} s, {args.keys} keys, values {args.value_min}-"
          f"{args.value_max} B, {args.get_ratio:.0%} gets, {args.multiget} key(s) per get "
          f"(best of {args.rounds} rounds)")
    print(f"{'server':<10} {'ops/s':>10} {'p50 us':>8} {'p99 us':>8} {'hit ratio':>9} {'server CPU us/op':>17}")
    for name, r in best.items():
        print(f"{name:<10} {r['ops_per_s']:>10.0f} {r['p50_us']:>8.0f} {r['p99_us']:>8.0f} {r['hit_ratio']:>9.3f} "
              f"{r['server_cpu_us_per_op']:>17.1f}")
    if "memcached" in best:
        ratio = best["nemo"]["ops_per_s"] / best["memcached"]["ops_per_s"]
        print(f"throughput ratio nemo / memcached = {ratio:.2f} (target >= 0.7)")
        paired = [n / m for n, m in zip(rates["nemo"], rates["memcached"])]
        print(f"round by round: {', '.join(f'{p:.2f}' for p in paired)}; median {np.median(paired):.2f} "
              "(background load moves both servers' rates between rounds)")
        nemo_cpu, mc_cpu = np.median(cpus["nemo"]), np.median(cpus["memcached"])
        print(f"server CPU per operation, median of rounds: nemo {nemo_cpu:.1f} us, memcached {mc_cpu:.1f} us "
              f"(memcached / nemo = {mc_cpu / nemo_cpu:.2f})")


if __name__ == "__main__":
    main()
