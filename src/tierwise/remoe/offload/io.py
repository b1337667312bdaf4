"""The wall-clock storage throttle: expert reads on one I/O thread, each taking a storage profile's fetch time.

`--throttle` routes every store read through an `IOChannel`: one loader thread serves reads in FIFO order (as a
real runtime's I/O thread does), and each read takes at least `latency + target_bytes / bandwidth` of real time
(the store's real read, then a sleep for the rest). The compute thread meanwhile keeps working: it waits only for
the experts it needs (runtime.py), so overlap with compute, and with prefetches issued one layer ahead, is real and
the measured wall clock includes the storage.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch


class IOChannel:
    def __init__(self, store, fetch_seconds: float):
        self.store = store
        self.fetch_seconds = fetch_seconds
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierwise-io")  # one thread: FIFO

    def _fetch(self, layer: int, expert: int, out: dict[str, torch.Tensor]) -> None:
        t0 = time.perf_counter()
        with torch.inference_mode():  # thread-local: staging rows made under the caller's inference mode need it
            self.store.read_into(layer, expert, out)
        rest = self.fetch_seconds - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)

    def submit(self, layer: int, expert: int, out: dict[str, torch.Tensor]) -> Future:
        return self._pool.submit(self._fetch, layer, expert, out)

    def drain(self) -> None:
        """Wait until every queued read is done."""
        self._pool.submit(lambda: None).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
