"""The timing harness: one timed epoch, the size of a timed epoch, interleaved repeats, and the
device memory of building a contestant.

A contestant is anything with ``name``, ``epoch()`` and ``sync()`` (the frameworks of
``peers.py``, the GEMM steps of ``gemm.py``).
"""

from __future__ import annotations

import gc
import time

import peers
from workloads import Workload

IDLE_GAP_S = 0.25  # between timed epochs; see `timed`


def timed(contestant, gap: float) -> float:
    """Seconds for one epoch, with the device synchronised before and after.

    Sleeps ``gap`` seconds first. OpenBLAS's worker threads spin for about 0.1 s after a call
    before they sleep; without the gap they take a core from whichever contestant runs next (in
    the same process or not), which halved torch's GEMM rate when it ran right after NumPy.
    """
    time.sleep(gap)
    contestant.sync()
    start = time.perf_counter()
    contestant.epoch()
    contestant.sync()
    return time.perf_counter() - start


def interleaved(contestants, repeats: int, gap: float) -> dict[str, list[float]]:
    """Seconds of each timed epoch per contestant, the contestants taking turns: A B C A B C ..."""
    times: dict[str, list[float]] = {c.name: [] for c in contestants}
    for _ in range(repeats):
        for c in contestants:
            times[c.name].append(timed(c, gap))
    return times


def choose_samples(workload: Workload, data, device: str, seconds: float, quick: bool) -> int:
    """Rows per timed epoch: about ``seconds`` of xpmlp training, a whole number of batches."""
    b, n_max = workload.batch, data.X_train.shape[0]
    if quick:
        return min(4 * b, n_max // b * b)
    probe_rows = min(4 * b, n_max // b * b)
    probe = peers.make(
        "xpmlp", workload, data.X_train[:probe_rows], data.y_train[:probe_rows], device=device
    )
    timed(probe, gap=0)  # warm-up
    rate = probe_rows / timed(probe, gap=IDLE_GAP_S)
    rows = int(rate * seconds) // b * b
    return max(4 * b, min(rows, n_max // b * b))


class DeviceMemory:
    """Peak device memory of building and warming up one contestant (GPU runs only).

    xpmlp (CuPy): growth of the CuPy memory pool (which keeps what it ever held, so its size
    after the epoch is its high-water mark). torch: growth of ``max_memory_reserved``.
    """

    def __init__(self, library: str):
        self.library = library

    def __enter__(self):
        gc.collect()
        if self.library == "cupy":
            import cupy

            self.pool = cupy.get_default_memory_pool()
            self.pool.free_all_blocks()
            self.before = self.pool.total_bytes()
        else:
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_reserved()
        return self

    def __exit__(self, *exc):
        if self.library == "cupy":
            self.mib = (self.pool.total_bytes() - self.before) / 2**20
        else:
            import torch

            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_reserved() - self.before) / 2**20
        return False


class NoMemory:
    """Stands in for :class:`DeviceMemory` where nothing is measured (CPU runs, sklearn)."""

    mib = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
