"""NumPy formulations of one Adam step over the 784-300-300-10 parameters, timed alone.

    python benchmarks/prototypes/adam_kernels.py [--hidden 300,300] [--repeats 7]

Same update as ``xpmlp.optim.Adam`` (torch's epsilon placement); each variant is checked against
the package's formula after 5 steps, then timed interleaved (median of the repeats, 200 steps
each). For scale, ``torch.optim.Adam`` (foreach, the default, and fused) on the same tensors.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workloads import Workload

from xpmlp.optim import Adam

B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 1e-3


def shapes_of(workload):
    sizes = workload.layer_sizes
    out = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        out += [(fan_in, fan_out), (fan_out,)]
    return out


class PerTensor:
    """The package (``xpmlp.optim.Adam.step``) or per-tensor in-place with ``out=``."""

    def __init__(self, shapes, grads, mode):
        rng = np.random.default_rng(0)
        self.params = {
            str(i): rng.standard_normal(s, dtype=np.float32) for i, s in enumerate(shapes)
        }
        self.grads = {str(i): g for i, g in enumerate(grads)}
        self.mode = mode
        if mode == "package":
            import array_api_compat.numpy as xp

            self.opt = Adam(xp, lr=LR)
        else:
            self.m = {k: np.zeros_like(v) for k, v in self.params.items()}
            self.v = {k: np.zeros_like(v) for k, v in self.params.items()}
            self.d = {k: np.empty_like(v) for k, v in self.params.items()}
            self.t = 0

    def step(self):
        if self.mode == "package":
            self.opt.step(self.params, self.grads)
            return
        self.t += 1
        s, r = LR / (1 - B1**self.t), math.sqrt(1 - B2**self.t)
        for k in self.params:
            adam_out(self.params[k], self.grads[k], self.m[k], self.v[k], self.d[k], s, r)

    def flat_params(self):
        return np.concatenate([np.ravel(self.params[k]) for k in self.params])


class Flat:
    """One flat buffer; optionally processed in cache-sized chunks, on one or more threads."""

    def __init__(self, shapes, grads, chunk=None, threads=1, kernel="out"):
        rng = np.random.default_rng(0)
        self.p = np.concatenate([rng.standard_normal(s, dtype=np.float32).ravel() for s in shapes])
        self.g = np.concatenate([g.ravel() for g in grads])
        self.m, self.v = np.zeros_like(self.p), np.zeros_like(self.p)
        self.d = np.empty_like(self.p)
        n = self.p.size
        chunk = chunk or n
        self.slices = [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)]
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None
        if threads > 1:  # contiguous halves, each walked in chunks
            per = math.ceil(len(self.slices) / threads)
            self.groups = [self.slices[i : i + per] for i in range(0, len(self.slices), per)]
        self.kernel = {"out": adam_out, "epshat": adam_epshat}[kernel]
        self.t = 0

    def _run(self, slices, s, r):
        for sl in slices:
            self.kernel(self.p[sl], self.g[sl], self.m[sl], self.v[sl], self.d[sl], s, r)

    def step(self):
        self.t += 1
        s, r = LR / (1 - B1**self.t), math.sqrt(1 - B2**self.t)
        if self.pool is None:
            self._run(self.slices, s, r)
        else:
            list(self.pool.map(lambda group: self._run(group, s, r), self.groups))

    def flat_params(self):
        return self.p


def adam_out(p, g, m, v, d, step_size, root):
    np.multiply(g, 1 - B1, out=d)
    m *= B1
    m += d
    np.multiply(g, g, out=d)
    d *= 1 - B2
    v *= B2
    v += d
    np.sqrt(v, out=d)
    d /= root
    d += EPS
    np.divide(m, d, out=d)
    d *= step_size
    p -= d


def adam_epshat(p, g, m, v, d, step_size, root):
    """As adam_out with the bias corrections folded into two scalars (same value in exact
    arithmetic): p -= (step_size * root) * m / (sqrt(v) + eps * root)."""
    np.multiply(g, 1 - B1, out=d)
    m *= B1
    m += d
    np.multiply(g, g, out=d)
    d *= 1 - B2
    v *= B2
    v += d
    np.sqrt(v, out=d)
    d += EPS * root
    np.divide(m, d, out=d)
    d *= step_size * root
    p -= d


class TorchAdam:
    def __init__(self, shapes, grads, **kwargs):
        import torch

        rng = np.random.default_rng(0)
        self.params = [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s, dtype=np.float32)))
                       for s in shapes]  # fmt: skip
        for p, g in zip(self.params, grads):
            p.grad = torch.from_numpy(g.copy())
        self.opt = torch.optim.Adam(self.params, lr=LR, **kwargs)

    def step(self):
        self.opt.step()

    def flat_params(self):
        return np.concatenate([p.detach().numpy().ravel() for p in self.params])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="300,300")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    workload = Workload(128, tuple(int(h) for h in args.hidden.split(",")))
    shapes = shapes_of(workload)
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(s, dtype=np.float32) * 1e-2 for s in shapes]
    n = sum(math.prod(s) for s in shapes)
    variants = {
        "package: Adam.step (allocating)": lambda: PerTensor(shapes, grads, "package"),
        "per tensor, out=": lambda: PerTensor(shapes, grads, "out"),
        "flat, out=": lambda: Flat(shapes, grads),
        "flat, out=, eps folded": lambda: Flat(shapes, grads, kernel="epshat"),
        "flat, out=, chunks of 16K": lambda: Flat(shapes, grads, chunk=16384),
        "flat, out=, chunks of 64K": lambda: Flat(shapes, grads, chunk=65536),
        "flat, out=, 2 threads": lambda: Flat(shapes, grads, threads=2),
        "flat, out=, 2 threads, chunks of 64K": lambda: Flat(shapes, grads, chunk=65536, threads=2),
    }
    try:
        import torch  # noqa: F401

        variants["torch.optim.Adam (foreach, default)"] = lambda: TorchAdam(
            shapes, grads, foreach=True
        )
        variants["torch.optim.Adam (fused=True)"] = lambda: TorchAdam(shapes, grads, fused=True)
    except ImportError:
        pass
    runners = {name: make() for name, make in variants.items()}
    for runner in runners.values():
        for _ in range(5):
            runner.step()
    reference = runners["package: Adam.step (allocating)"].flat_params()
    diffs = {
        name: float(np.max(np.abs(r.flat_params() - reference))) for name, r in runners.items()
    }
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            time.sleep(0.2)
            start = time.perf_counter()
            for _ in range(args.steps):
                runner.step()
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    print(f"Adam over {n:,} float32 parameters ({workload.label}); ms per step, median of "
          f"{args.repeats}; max |p - package's p| after 5 steps")  # fmt: skip
    base = statistics.median(times["package: Adam.step (allocating)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:42s} {med:7.3f} ms  {base / med:5.2f}x   {diffs[name]:.1e}")
    if args.json:
        args.json.write_text(json.dumps({
            "workload": workload.as_dict(),
            "n_parameters": n,
            "ms_per_step": {name: statistics.median(ts) for name, ts in times.items()},
            "all_ms_per_step": times,
            "max_abs_diff_vs_package_after_5_steps": diffs,
        }, indent=1) + "\n")  # fmt: skip
    return times, diffs


if __name__ == "__main__":
    main()
