"""Recovery time per GiB of flash: fill a file-backed Nemo cache until its SG ring has wrapped, then time the rebuild
from flash after (a) a clean shutdown and (b) a crash (the device dropped without flushing the buffered SGs).

Recovery reads every data zone (headers, all set pages for their checksums, trailers), the live index blocks, and
re-hashes the keys of the SGs in the open index group, so its time grows with the flash size. The figure is
compared with reading the same bytes (the floor for a full check) measured in the same run.

    python benchmarks/nemo_recovery.py --flash-size 512M --zone-size 32M
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from tierwise.nemo.device import FileZonedDevice
from tierwise.nemo.engines.nemo import NemoEngine
from tierwise.common.units import parse_size


def drop_page_cache() -> bool:
    """Cold reads if we may (root on Linux); otherwise recovery reads from the page cache, said in the output."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def read_floor(folder: str) -> tuple[float, int]:
    """Seconds to read every zone file once, and the bytes read."""
    total = 0
    t = time.perf_counter()
    seq = os.path.join(folder, "seq")
    for name in os.listdir(seq):
        with open(os.path.join(seq, name), "rb", buffering=0) as f:
            while chunk := f.read(8 << 20):
                total += len(chunk)
    return time.perf_counter() - t, total


def fill_until_wrap(engine: NemoEngine, value: bytes) -> int:
    """Set fresh keys until the SG ring wraps (every data zone has held an SG); returns how many."""
    i = 0
    while engine.oldest == 0:
        engine.set(b"key:%d" % i, value)
        i += 1
    return i


def load_compiled_code(tmp: str) -> None:
    """Fill and recover a tiny cache once, untimed: in a fresh checkout the first recovery compiles its kernels."""
    folder = os.path.join(tmp, "warm-up")
    engine = NemoEngine(FileZonedDevice(folder, 8, 256 * 1024))
    fill_until_wrap(engine, b"v" * 200)
    engine.close()
    engine.device.close()
    NemoEngine(FileZonedDevice(folder), recover=True).device.close()


def timed_recovery(folder: str, label: str) -> None:
    cold = drop_page_cache()
    engine = NemoEngine(FileZonedDevice(folder), recover=True)
    rep = engine.recovery
    gib = rep.flash_bytes / 2**30
    print(f"{label}: {rep.seconds:.2f} s for {gib:.2f} GiB of flash = {rep.seconds_per_gb:.2f} s/GiB "
          f"({'cold' if cold else 'page-cache'} reads, {rep.bytes_read / 2**20:.0f} MiB read, {rep.live_sgs} live SGs, "
          f"{rep.objects} objects, open group {rep.open_group_sgs} SGs re-hashed, torn head {rep.torn_head})")
    engine.device.close()
    cold = drop_page_cache()
    secs, n = read_floor(folder)
    print(f"  plain read of the same zone files: {secs:.2f} s ({n / 2**20 / secs:.0f} MiB/s); "
          f"recovery / read = {rep.seconds / secs:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flash-size", default="512M")
    ap.add_argument("--zone-size", default="32M")
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--keep", default=None, help="build the device in this folder and keep it")
    args = ap.parse_args()
    flash, zone = parse_size(args.flash_size), parse_size(args.zone_size)
    tmp = tempfile.mkdtemp(prefix="nemo-recovery-")
    folder = args.keep or os.path.join(tmp, "dev")
    try:
        load_compiled_code(tmp)
        dev = FileZonedDevice(folder, flash // zone, zone)
        engine = NemoEngine(dev)
        t = time.perf_counter()
        i = fill_until_wrap(engine, b"v" * args.value_size)
        print(f"filled {args.flash_size} (zones of {args.zone_size}, S={engine.S}, N={engine.N}, "
              f"G={engine.geo.group_size}) with {i} sets in {time.perf_counter() - t:.0f} s")
        crash_copy = folder + "-crash"
        shutil.copytree(folder, crash_copy)  # the state at this point, buffers never flushed: a crash
        engine.close()
        dev.close()
        timed_recovery(folder, "after clean shutdown")
        timed_recovery(crash_copy, "after a crash")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
