"""The float32 GEMM ceiling: one training step's matrix products alone, at the measured rate.

A GEMM step runs exactly the products of one training step of a workload (same shapes, same
transposes as the library's own MLP lays them out) into preallocated outputs, so it allocates
nothing and does nothing else. Its samples/s is the *GEMM-bound ceiling*: how fast training
would go if a step cost only its matrix products. It is timed interleaved with the frameworks.

``reference_rate`` measures the library's rate on one large square product, for comparison.
"""

from __future__ import annotations

import itertools
import statistics
import time

import numpy as np
from workloads import Workload


def _operands(workload: Workload, rng: np.random.Generator, transposed_weights: bool):
    """Host float32 operands (left, right, out) of each product of one step.

    With ``transposed_weights`` the weights are stored (fan_out, fan_in) as torch's nn.Linear
    stores them: forward ``a @ W.T``, weight gradient ``delta.T @ a``, input gradient
    ``delta @ W``. Otherwise as xpmlp stores them, (fan_in, fan_out): ``a @ W``,
    ``a.T @ delta``, ``delta @ W.T``.
    """

    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    sizes, b = workload.layer_sizes, workload.batch
    acts = [rand(b, d) for d in sizes]
    deltas = [rand(b, d) for d in sizes]
    products = []  # (left, left_T, right, right_T, out_shape)
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = rand(fan_out, fan_in) if transposed_weights else rand(fan_in, fan_out)
        products.append((acts[i], False, w, transposed_weights, (b, fan_out)))
    for i in reversed(range(len(sizes) - 1)):
        fan_in, fan_out = sizes[i], sizes[i + 1]
        if transposed_weights:
            products.append((deltas[i + 1], True, acts[i], False, (fan_out, fan_in)))
        else:
            products.append((acts[i], True, deltas[i + 1], False, (fan_in, fan_out)))
        if i > 0:
            w = rand(fan_out, fan_in) if transposed_weights else rand(fan_in, fan_out)
            products.append((deltas[i + 1], False, w, not transposed_weights, (b, fan_in)))
    return products


class _Library:
    """matmul, synchronise, host-to-device copy and empty float32 arrays for one library."""

    def __init__(self, library: str, device: str = "cpu"):
        self.name = library
        if library == "numpy":
            self.matmul, self.to_device = np.matmul, np.asarray
        elif library == "cupy":
            import cupy

            self._cupy = cupy
            self.matmul, self.to_device = cupy.matmul, cupy.asarray
        elif library == "torch":
            import torch

            self._torch = torch
            self.device = torch.device("cuda" if device == "gpu" else "cpu")
            self.matmul = torch.matmul
        else:
            raise ValueError(f"unknown GEMM library {library!r}")

    def sync(self) -> None:
        if self.name == "cupy":
            self._cupy.cuda.get_current_stream().synchronize()
        elif self.name == "torch" and self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)

    def empty(self, shape):
        if self.name == "numpy":
            return np.empty(shape, np.float32)
        if self.name == "cupy":
            return self._cupy.empty(shape, self._cupy.float32)
        return self._torch.empty(shape, dtype=self._torch.float32, device=self.device)

    def copy(self, host: np.ndarray):
        if self.name == "torch":
            return self._torch.from_numpy(host).to(self.device)
        return self.to_device(host)


class GemmStep:
    """One step's GEMMs on NumPy or CuPy (xpmlp's layout) or torch (nn.Linear's layout).

    Parameters
    ----------
    library : {"numpy", "cupy", "torch"}
    workload : Workload
    n_samples : int
        Samples per :meth:`epoch`; a multiple of the batch size.
    device : {"cpu", "gpu"}
    """

    def __init__(self, library: str, workload: Workload, n_samples: int, *, device: str = "cpu"):
        self.library, self.workload = library, workload
        self.steps = max(1, n_samples // workload.batch)
        self.name = f"GEMM ceiling ({library})"
        self._lib = _Library(library, device)
        host = _operands(workload, np.random.default_rng(1), transposed_weights=library == "torch")
        self.products = []
        for left, left_t, right, right_t, out_shape in host:
            left, right = self._lib.copy(left), self._lib.copy(right)
            self.products.append(
                (
                    left.T if left_t else left,
                    right.T if right_t else right,
                    self._lib.empty(out_shape),
                )
            )

    def sync(self) -> None:
        self._lib.sync()

    def epoch(self) -> None:
        matmul, products = self._lib.matmul, self.products
        for _ in range(self.steps):
            for left, right, out in products:
                matmul(left, right, out=out)


def reference_rate(library: str, n: int, *, device: str = "cpu", repeats: int = 5) -> dict:
    """GFLOP/s of one float32 (n, n) @ (n, n) product: the median of ``repeats`` timings."""
    lib = _Library(library, device)
    rng = np.random.default_rng(2)
    a, b = (lib.copy(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
    out = lib.empty((n, n))
    flops = 2.0 * n**3
    # One warm-up, then enough products per timing to last about 0.2 s.
    lib.matmul(a, b, out=out)
    lib.sync()
    start = time.perf_counter()
    lib.matmul(a, b, out=out)
    lib.sync()
    reps = max(1, int(0.2 / max(time.perf_counter() - start, 1e-6)))
    rates = []
    for _ in range(repeats):
        lib.sync()
        start = time.perf_counter()
        for _ in range(reps):
            lib.matmul(a, b, out=out)
        lib.sync()
        rates.append(flops * reps / (time.perf_counter() - start) / 1e9)
    return {
        "library": library,
        "n": n,
        "gflops_median": statistics.median(rates),
        "gflops_max": max(rates),
        "gflops_all": rates,
    }
