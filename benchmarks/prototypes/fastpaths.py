"""Prototype fast paths for xpmlp's NumPy training step, each timed against the package itself.

    python benchmarks/prototypes/fastpaths.py [--batch 128] [--hidden 300,300] [--steps 300]

Scratch code, not a proposal of API: one configurable re-implementation of the package's step
(784-...-10 ReLU MLP, softmax cross-entropy, Adam with torch's epsilon placement, the same
initial weights and batch order as ``xpmlp.MLP(seed=0)`` + ``Trainer``), with switches for

(a) ``flat``: every parameter, gradient and Adam moment is a view into one flat buffer, so the
    optimizer is one pass of whole-array operations instead of one per tensor; gradients are
    written into their views with ``out=``.
(b) ``adam``: ``alloc`` (the package's formulas, a new array per operation), ``inplace-std``
    (in-place operators only, ``m *= b1; m += (1 - b1) * g`` ...: what the Array API standard
    allows), or ``inplace-out`` (NumPy ``out=`` into one scratch buffer: no temporaries at all).
(c) ``fused``: bias add and ReLU in place on the GEMM's output (``z += b``;
    ``maximum(z, 0, out=h)``), ReLU's backward as one in-place multiply by the saved mask.
(d) ``prealloc``: every activation, delta, gradient and batch buffer allocated once; GEMMs
    write with ``matmul(..., out=)``, the gather with ``take(..., out=)``, softmax in place.

(e) ``flush_every=K``: every K steps, set Adam moments with ``|m|, |v| < 1e-30`` to zero. A
    weight whose gradient is exactly zero (an always-black pixel, a dead ReLU unit) has its
    first moment decay by 0.9 per step into float32's subnormal range (< 1.2e-38) within ~800
    steps; x86 handles subnormals in microcode, ~13x slower per element in NumPy, and NumPy
    never sets flush-to-zero. Zeroing them changes the update by < lr * 1e-30 / eps = 1e-25.

plus ``metrics=False`` (skip the per-step loss/correct accumulation), ``threads=2`` (Adam's
flat pass split over two Python threads; NumPy releases the GIL inside ufunc loops) and
``ftz=True`` (the hardware answer to (e), for reference: the CPU's flush-to-zero and
denormals-are-zero modes on for the epoch, through ``torch.set_flush_denormal``).

Every variant runs interleaved with ``Trainer.train_epoch`` on the same rows, median of the
repeats, and is checked against the package's parameters after the same steps.
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

import data
import peers
from workloads import LR, Workload

import xpmlp
from xpmlp import ops, rng
from xpmlp.training import Trainer

B1, B2, EPS = 0.9, 0.999, 1e-8


class Step:
    """One configurable NumPy training loop; see the module docstring for the switches."""

    def __init__(
        self, workload: Workload, X, y, *, flat=False, adam="alloc", fused=False,
        prealloc=False, metrics=True, threads=1, flush_every=0, ftz=False,
    ):  # fmt: skip
        self.X, self.y, self.b = X, y, workload.batch
        self.flat, self.adam, self.fused, self.prealloc = flat, adam, fused, prealloc
        self.metrics, self.threads = metrics, threads
        self.flush_every, self.ftz = flush_every, ftz
        self.epoch_index, self.t = 0, 0
        sizes = workload.layer_sizes
        self.L = len(sizes) - 1
        init = xpmlp.MLP(sizes, seed=0).state_dict()
        names = [f"layers.{i}.{kind}" for i in range(self.L) for kind in ("weight", "bias")]
        shapes = {name: init[name].shape for name in names}
        if flat:
            total = sum(math.prod(s) for s in shapes.values())
            self.theta, self.gtheta = np.empty(total, np.float32), np.empty(total, np.float32)
            self.m_flat, self.v_flat = np.zeros(total, np.float32), np.zeros(total, np.float32)
            self.scratch_flat = np.empty(total, np.float32)
            self.params, self.grads, offset = {}, {}, 0
            for name in names:
                size = math.prod(shapes[name])
                self.params[name] = self.theta[offset : offset + size].reshape(shapes[name])
                self.grads[name] = self.gtheta[offset : offset + size].reshape(shapes[name])
                self.params[name][...] = init[name]
                offset += size
            if threads > 1:
                self.pool = ThreadPoolExecutor(threads)
                bounds = np.linspace(0, total, threads + 1).astype(int)
                self.chunks = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        else:
            self.params = {name: init[name].astype(np.float32) for name in names}
            self.grads = {}
            self.m = {name: np.zeros(shapes[name], np.float32) for name in names}
            self.v = {name: np.zeros(shapes[name], np.float32) for name in names}
            self.scratch = {name: np.empty(shapes[name], np.float32) for name in names}
        b = self.b
        if prealloc:
            self.Xb = np.empty((b, sizes[0]), np.float32)
            self.yb = np.empty(b, np.int64)
            self.probs = np.empty((b, sizes[-1]), np.float32)
            self.rows = np.arange(b)
            self.Z = [np.empty((b, d), np.float32) for d in sizes[1:]]
            self.H = [np.empty((b, d), np.float32) for d in sizes[1:-1]]
            self.GA = [np.empty((b, d), np.float32) for d in sizes[:-1]]
            self.rowmax = np.empty((b, 1), np.float32)
            self.rowsum = np.empty((b, 1), np.float32)
        if fused:
            self.masks = [np.empty((b, d), np.bool_) for d in sizes[1:-1]]
        if not flat and prealloc:
            self.grads = {name: np.empty(shapes[name], np.float32) for name in names}

    def sync(self) -> None:
        pass

    # ------------------------------------------------------------------ the loop

    def epoch(self) -> float:
        if not self.ftz:
            return self._epoch()
        import torch

        torch.set_flush_denormal(True)
        try:
            return self._epoch()
        finally:
            torch.set_flush_denormal(False)

    def _epoch(self) -> float:
        n, b = self.X.shape[0], self.b
        order = rng.batch_order(n, seed=0, epoch=self.epoch_index)
        loss_sum = np.zeros((), np.float32)
        correct = np.zeros((), np.float32)
        for start in range(0, n, b):
            index = order[start : start + b]
            if self.prealloc:
                Xb = np.take(self.X, index, axis=0, out=self.Xb)
                yb = np.take(self.y, index, axis=0, out=self.yb)
            else:
                Xb, yb = np.take(self.X, index, axis=0), np.take(self.y, index, axis=0)
            loss, logits = self.step(Xb, yb)
            if self.metrics:  # as train_epoch: device scalars, read once per epoch
                loss_sum = loss_sum + loss * b
                correct = correct + np.sum((np.argmax(logits, axis=1) == yb).astype(np.float32))
        self.epoch_index += 1
        return float(loss_sum) / n

    def step(self, Xb, yb):
        P, G = self.params, self.grads
        acts, zs, a = [Xb], [], Xb
        for i in range(self.L):
            W, bias = P[f"layers.{i}.weight"], P[f"layers.{i}.bias"]
            z = np.matmul(a, W, out=self.Z[i]) if self.prealloc else a @ W
            last = i == self.L - 1
            if self.fused or self.prealloc:
                z += bias
            else:
                z = z + bias
            zs.append(z)
            if last:
                break
            if self.fused:
                np.greater(z, 0, out=self.masks[i])
                h = np.maximum(z, 0, out=self.H[i] if self.prealloc else z)
            else:
                h = np.maximum(z, 0, out=self.H[i]) if self.prealloc else np.maximum(z, 0)
            acts.append(h)
            a = h
        logits = zs[-1]
        loss, delta = self.softmax_ce(logits, yb)
        for i in reversed(range(self.L)):
            gw, gb = f"layers.{i}.weight", f"layers.{i}.bias"
            if self.flat or self.prealloc:
                np.matmul(acts[i].T, delta, out=G[gw])
                np.sum(delta, axis=0, out=G[gb])
            else:
                G[gw] = acts[i].T @ delta
                G[gb] = np.sum(delta, axis=0)
            if i == 0:
                break
            W = P[f"layers.{i}.weight"]
            grad_a = np.matmul(delta, W.T, out=self.GA[i]) if self.prealloc else delta @ W.T
            if self.fused:
                np.multiply(grad_a, self.masks[i - 1], out=grad_a)
                delta = grad_a
            else:
                delta = grad_a * (zs[i - 1] > 0).astype(np.float32)
        self.update()
        return loss, logits

    def softmax_ce(self, logits, yb):
        b = logits.shape[0]
        if not self.prealloc:  # the package's ops
            targets = ops.one_hot(np, yb, logits.shape[1], np.float32)
            loss, grad = ops.softmax_cross_entropy(np, logits, targets)
            return loss, grad
        # in place in a preallocated buffer (the logits are kept for the metrics)
        p = self.probs
        np.max(logits, axis=1, keepdims=True, out=self.rowmax)
        np.subtract(logits, self.rowmax, out=p)
        target_shifted = np.take_along_axis(p, yb[:, None], axis=1)
        np.exp(p, out=p)
        np.sum(p, axis=1, keepdims=True, out=self.rowsum)
        loss = (np.sum(np.log(self.rowsum)) - np.sum(target_shifted)) / b
        p /= self.rowsum
        p[self.rows, yb] -= 1
        p *= 1.0 / b
        return loss, p

    # ------------------------------------------------------------------ Adam

    def update(self) -> None:
        self.t += 1
        t = self.t
        step_size = LR / (1 - B1**t)
        root = math.sqrt(1 - B2**t)
        if self.flush_every and t % self.flush_every == 0:
            self.flush_tiny_moments()
        if self.flat:
            if self.threads > 1:
                list(self.pool.map(lambda s: self.adam_flat(s, step_size, root), self.chunks))
            else:
                self.adam_flat(slice(None), step_size, root)
            return
        for name in self.params:
            g, m, v = self.grads[name], self.m[name], self.v[name]
            p = self.params[name]
            if self.adam == "alloc":  # xpmlp.optim.Adam.update, verbatim
                m = B1 * m + (1 - B1) * g
                v = B2 * v + (1 - B2) * (g * g)
                self.m[name], self.v[name] = m, v
                denom = np.sqrt(v) / root + EPS
                self.params[name] = p - step_size * (m / denom)
            elif self.adam == "inplace-std":
                _adam_inplace_std(p, g, m, v, step_size, root)
            else:
                _adam_inplace_out(p, g, m, v, self.scratch[name], step_size, root)

    def flush_tiny_moments(self) -> None:
        moments = [self.m_flat, self.v_flat] if self.flat else [*self.m.values(), *self.v.values()]
        for a in moments:
            np.copyto(a, 0, where=np.abs(a) < 1e-30)

    def adam_flat(self, s: slice, step_size: float, root: float) -> None:
        p, g, m, v = self.theta[s], self.gtheta[s], self.m_flat[s], self.v_flat[s]
        if self.adam == "alloc":
            m_new = B1 * m + (1 - B1) * g
            v_new = B2 * v + (1 - B2) * (g * g)
            m[...], v[...] = m_new, v_new
            denom = np.sqrt(v_new) / root + EPS
            p[...] = p - step_size * (m_new / denom)
        elif self.adam == "inplace-std":
            _adam_inplace_std(p, g, m, v, step_size, root)
        else:
            _adam_inplace_out(p, g, m, v, self.scratch_flat[s], step_size, root)


def _adam_inplace_std(p, g, m, v, step_size, root):
    """In-place operators only (Array API standard): 5 temporaries instead of 11."""
    m *= B1
    m += (1 - B1) * g
    v *= B2
    v += (1 - B2) * (g * g)
    denom = np.sqrt(v)
    denom /= root
    denom += EPS
    p -= step_size * (m / denom)


def _adam_inplace_out(p, g, m, v, d, step_size, root):
    """NumPy ``out=`` into one scratch buffer ``d``: no temporaries."""
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


# ---------------------------------------------------------------------------- harness


class Package:
    """The package itself: Trainer.train_epoch."""

    def __init__(self, workload, X, y):
        model = xpmlp.MLP(workload.layer_sizes, seed=0)
        self.trainer = Trainer(model, optimizer="adam", lr=LR, batch_size=workload.batch,
                               epochs=2**31)  # fmt: skip
        self.X, self.y = model.as_input(X), model.as_target(y)
        self.params = model.params

    def sync(self):
        pass

    def epoch(self):
        record = self.trainer.train_epoch(self.X, self.y)
        self.trainer.epoch += 1
        self.params = self.trainer.model.params
        return record["train_loss"]


ALL = {"flat": True, "adam": "inplace-out", "fused": True, "prealloc": True}
VARIANTS = {
    "package (Trainer.train_epoch)": None,
    "replica, all switches off": {},
    "(b) Adam in place, operators only": {"adam": "inplace-std"},
    "(b) Adam in place, out=": {"adam": "inplace-out"},
    "(a) flat buffer, Adam allocating": {"flat": True},
    "(a)+(b) flat buffer, Adam out=": {"flat": True, "adam": "inplace-out"},
    "(c) fused bias+ReLU in place": {"fused": True},
    "(d) preallocated buffers": {"prealloc": True},
    "(c)+(d)": {"fused": True, "prealloc": True},
    "(e) flush tiny Adam moments /100 steps": {"flush_every": 100},
    "(b)+(e)": {"adam": "inplace-out", "flush_every": 100},
    "(a)+(b)+(c)+(d) all": ALL,
    "all+(e)": {**ALL, "flush_every": 100},
    "all+(e), no per-step metrics": {**ALL, "flush_every": 100, "metrics": False},
    "all+(e), Adam on 2 threads": {**ALL, "flush_every": 100, "threads": 2},
    "replica under FTZ/DAZ (reference)": {"ftz": True},
}


def agreement(package: Package, variant: Step) -> float:
    """Largest |difference| between the package's and the variant's parameters."""
    return max(
        float(np.max(np.abs(np.asarray(package.params[k]) - variant.params[k])))
        for k in variant.params
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", default="300,300")
    p.add_argument("--steps", type=int, default=300, help="steps per timed epoch")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--gap", type=float, default=0.25, help="idle seconds between timed epochs")
    p.add_argument("--only", help="comma-separated substrings of variant names")
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        help="untimed epochs first (Adam's moments reach their long-run state)",
    )
    p.add_argument("--no-torch", action="store_true", help="leave out the torch loop")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    workload = Workload(args.batch, tuple(int(h) for h in args.hidden.split(",")))
    d = data.load(None)
    rows = args.steps * workload.batch
    X, y = d.X_train[:rows], d.y_train[:rows]

    variants = {
        name: Package(workload, X, y) if cfg is None else Step(workload, X, y, **cfg)
        for name, cfg in VARIANTS.items()
        if cfg is None or not args.only or any(s in name for s in args.only.split(","))
    }
    if not args.no_torch and peers.available("torch"):
        init = variants["package (Trainer.train_epoch)"].trainer.model.state_dict()
        variants["torch (benchmarks/peers.py loop)"] = peers.make(
            "torch", workload, X, y, device="cpu", init=init
        )
    # Correctness first. Adam turns rounding-level differences in a near-zero gradient into
    # lr-sized steps, so parameters are compared after one step, and the training loss after
    # one epoch.
    b = workload.batch
    one_step = {name: cfg for name, cfg in VARIANTS.items() if name in variants}
    reference = Package(workload, X[:b], y[:b])
    reference.epoch()
    step_diffs = {}
    for name, cfg in one_step.items():
        if cfg is not None:
            runner = Step(workload, X[:b], y[:b], **cfg)
            runner.epoch()
            step_diffs[name] = agreement(reference, runner)
    losses = {name: runner.epoch() for name, runner in variants.items()}  # also the warm-up
    for _ in range(args.pretrain_epochs):
        for runner in variants.values():
            runner.epoch()
    base_loss = losses["package (Trainer.train_epoch)"]
    diffs = {
        name: (step_diffs[name], abs(loss - base_loss) / base_loss)
        for name, loss in losses.items()
        if name in step_diffs
    }
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, runner in variants.items():
            time.sleep(args.gap)
            start = time.perf_counter()
            runner.epoch()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["package (Trainer.train_epoch)"])
    print(f"{workload.label}, {args.steps} steps per epoch, median of {args.repeats}, timed "
          f"after {1 + args.pretrain_epochs} untimed epochs")  # fmt: skip
    print(f"{'variant':42s} {'samples/s':>10s} {'ms/step':>8s} {'speed-up':>8s} "
          f"{'max |dp| 1 step':>15s} {'rel. diff loss, epoch 1':>23s}")  # fmt: skip
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {
            "samples_per_s": rows / med,
            "ms_per_step": med * 1e3 / args.steps,
            "speedup_vs_package": base / med,
            "all_seconds": ts,
            "max_abs_param_diff_after_1_step": diffs.get(name, (None, None))[0],
            "relative_train_loss_diff_epoch_1": diffs.get(name, (None, None))[1],
        }
        diff = diffs.get(name)
        check = "" if diff is None else f"{diff[0]:15.1e} {diff[1]:23.1e}"
        print(f"{name:42s} {rows / med:10,.0f} {med * 1e3 / args.steps:8.3f} {base / med:7.2f}x "
              f"{check}")  # fmt: skip
    out = {
        "workload": workload.as_dict(),
        "steps": args.steps,
        "untimed_epochs_first": 1 + args.pretrain_epochs,
        "variants": results,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
