"""Where one xpmlp training step's time goes, operation by operation.

    python benchmarks/prototypes/profile_step.py [--batch 128] [--hidden 300,300] [--steps 400]

The step is replayed with the package's own code, split at every operation: the same calls
``Trainer.train_epoch`` makes (``xp.take``, ``model.targets``, each layer's ``a @ W`` and
``+ b``, the activation, the loss, ``a.T @ delta``, ``xp.sum``, ``delta @ W.T``, each
``Adam.update``, the per-step metrics), timed with ``perf_counter_ns`` around each. The replay is
checked to end with bit-identical parameters to ``Trainer.train_epoch`` from the same start, so
its breakdown is the package's. The package's own epoch is timed in the same run (interleaved),
and "Python glue" is the package's step time minus the sum of the timed operations.

Writes a JSON breakdown with ``--json``. With ``--pretrain-epochs`` the breakdown is taken later
in training, where Adam's moments of never-updated weights have decayed into float32's subnormal
range (see ``fastpaths.py``, switch (e)).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data
from workloads import LR, Workload

import xpmlp
from xpmlp import rng
from xpmlp.training import Trainer, _correct, _zero


class Clock:
    """Accumulates nanoseconds per category; ``clock(cat, fn, *args)`` times one call."""

    def __init__(self):
        self.ns: dict[str, int] = defaultdict(int)

    def __call__(self, category, fn, *args):
        start = time.perf_counter_ns()
        out = fn(*args)
        self.ns[category] += time.perf_counter_ns() - start
        return out


def replay_epoch(trainer: Trainer, X, y, clock: Clock) -> None:
    """``trainer.train_epoch(X, y)`` split into timed operations (no dropout, no clipping)."""
    model, xp, opt = trainer.model, trainer.model.xp, trainer.optimizer
    act, params = model.activation, model.params
    n, b = X.shape[0], trainer.batch_size
    schedule = trainer.schedule_for(n)
    order = model.backend.asarray(rng.batch_order(n, seed=trainer.seed, epoch=trainer.epoch))
    loss_sum, correct = _zero(model), _zero(model)
    L = model.n_layers
    for step in range(schedule.steps_per_epoch):
        index = order[step * b : (step + 1) * b]
        Xb = clock("gather X[idx], y[idx]", _take, xp, X, index)
        yb = clock("gather X[idx], y[idx]", _take, xp, y, index)
        targets = clock("one-hot targets", model.targets, yb)
        # forward (MLP._forward)
        caches, a = [], Xb
        for i in range(L):
            W, bias = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            z = clock(f"GEMM fwd {i}: a @ W", _matmul, a, W)
            z = clock("bias add (fwd)", _add, z, bias)
            if i == L - 1:
                caches.append((a, None, None))
                break
            h = clock("ReLU fwd", act.forward, xp, z)
            caches.append((a, z, h))
            a = h
        loss, grad_out = clock("softmax + cross-entropy", model._loss, xp, z, targets)
        # backward (MLP._backward)
        grads, delta = {}, grad_out
        for i in reversed(range(L)):
            a_in = caches[i][0]
            grads[f"layers.{i}.weight"] = clock(
                f"GEMM bwd {i}: a.T @ delta", _matmul, a_in.T, delta
            )
            grads[f"layers.{i}.bias"] = clock("bias grad: sum(delta, axis=0)", _sum0, xp, delta)
            if i == 0:
                break
            W = params[f"layers.{i}.weight"]
            grad_a = clock(f"GEMM bwd {i}: delta @ W.T", _matmul, delta, W.T)
            _, z_prev, h_prev = caches[i - 1]
            delta = clock("ReLU bwd", act.backward, xp, z_prev, h_prev, grad_a)
        lr = clock("Python glue", schedule, trainer.epoch * schedule.steps_per_epoch + step)
        # Optimizer.step, split per tensor
        opt.steps += 1
        for name in params:
            slots = opt.state.get(name)
            if slots is None:
                slots = opt.state[name] = {s: xp.zeros_like(grads[name]) for s in opt.slots}
            params[name] = _adam_update(clock, opt, params[name], grads[name], slots, lr)
        # per-step metrics, as train_epoch keeps them
        loss_sum = clock("per-step metrics (loss, correct)", _loss_sum, loss_sum, loss, index)
        correct = clock("per-step metrics (loss, correct)", _add_correct, model, correct, z, yb)
    float(loss_sum), float(correct)
    trainer.epoch += 1


def _adam_update(clock, opt, param, grad, slots, lr):
    """``xpmlp.optim.Adam.update`` line by line (no weight decay), each line timed."""
    b1, b2, t, xp = opt.beta1, opt.beta2, opt.steps, opt.xp
    m = clock("Adam: m = b1 m + (1-b1) g", lambda: b1 * slots["m"] + (1 - b1) * grad)
    v = clock("Adam: v = b2 v + (1-b2) g*g", lambda: b2 * slots["v"] + (1 - b2) * (grad * grad))
    slots["m"], slots["v"] = m, v
    step_size = lr / (1 - b1**t)
    denom = clock(
        "Adam: denom = sqrt(v)/c + eps", lambda: xp.sqrt(v) / math.sqrt(1 - b2**t) + opt.eps
    )
    return clock("Adam: p - step * (m / denom)", lambda: param - step_size * (m / denom))


def _take(xp, array, index):
    return xp.take(array, index, axis=0)


def _matmul(a, b):
    return a @ b


def _add(a, b):
    return a + b


def _sum0(xp, delta):
    return xp.sum(delta, axis=0)


def _loss_sum(loss_sum, loss, index):
    return loss_sum + loss * index.shape[0]


def _add_correct(model, correct, outputs, yb):
    return correct + _correct(model, outputs, yb)


def make_trainer(workload: Workload) -> Trainer:
    model = xpmlp.MLP(workload.layer_sizes, seed=0)
    return Trainer(model, optimizer="adam", lr=LR, batch_size=workload.batch, epochs=2**31)


def check_replay_is_faithful(workload, X, y) -> None:
    a, b = make_trainer(workload), make_trainer(workload)
    Xd, yd = a.model.as_input(X), a.model.as_target(y)
    for _ in range(2):
        a.train_epoch(Xd, yd)
        a.epoch += 1
        replay_epoch(b, Xd, yd, Clock())
    for name, value in a.model.params.items():
        if not np.array_equal(value, b.model.params[name]):
            raise SystemExit(f"replay differs from Trainer.train_epoch in {name}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", default="300,300")
    p.add_argument("--steps", type=int, default=400, help="steps per timed epoch")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        help="untimed epochs first (Adam's moments reach their long-run state)",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    workload = Workload(args.batch, tuple(int(h) for h in args.hidden.split(",")))
    d = data.load(None)
    rows = args.steps * workload.batch
    X, y = d.X_train[:rows], d.y_train[:rows]
    check_replay_is_faithful(workload, X[: 8 * workload.batch], y[: 8 * workload.batch])

    package, replay = make_trainer(workload), make_trainer(workload)
    Xd, yd = package.model.as_input(X), package.model.as_target(y)
    for _ in range(1 + args.pretrain_epochs):  # warm-up both
        package.train_epoch(Xd, yd)
        package.epoch += 1
        replay_epoch(replay, Xd, yd, Clock())
    package_ms, replay_ms, clocks = [], [], []
    for _ in range(args.repeats):
        time.sleep(0.25)
        start = time.perf_counter()
        package.train_epoch(Xd, yd)
        package.epoch += 1
        package_ms.append((time.perf_counter() - start) * 1e3 / args.steps)
        time.sleep(0.25)
        clock = Clock()
        start = time.perf_counter()
        replay_epoch(replay, Xd, yd, clock)
        replay_ms.append((time.perf_counter() - start) * 1e3 / args.steps)
        clocks.append(clock)
    # The repeat whose replay time is the median: its breakdown, per step.
    median_index = sorted(range(args.repeats), key=lambda k: replay_ms[k])[args.repeats // 2]
    ns = clocks[median_index].ns
    step_ms = statistics.median(package_ms)
    rows_out = {cat: total / 1e6 / args.steps for cat, total in ns.items()}
    timed_sum = sum(rows_out.values())
    rows_out["Python glue (rest of the step)"] = max(
        0.0, replay_ms[median_index] - timed_sum + rows_out.get("Python glue", 0.0)
    )
    rows_out.pop("Python glue", None)
    total = sum(rows_out.values())
    print(f"after {(1 + args.pretrain_epochs) * args.steps} untimed steps:")
    print(f"{workload.label}: package step {step_ms:.3f} ms (median of {args.repeats}, "
          f"{workload.batch / step_ms * 1e3:,.0f} samples/s); replay step "
          f"{replay_ms[median_index]:.3f} ms")  # fmt: skip
    print(f"{'operation':44s} {'ms/step':>8s} {'share':>6s}")
    for cat, ms in sorted(rows_out.items(), key=lambda kv: -kv[1]):
        print(f"{cat:44s} {ms:8.3f} {100 * ms / total:5.1f}%")
    gemm_ms = sum(ms for cat, ms in rows_out.items() if cat.startswith("GEMM"))
    adam_ms = sum(ms for cat, ms in rows_out.items() if cat.startswith("Adam"))
    print(f"{'all GEMMs':44s} {gemm_ms:8.3f} {100 * gemm_ms / total:5.1f}%")
    print(f"{'all of Adam':44s} {adam_ms:8.3f} {100 * adam_ms / total:5.1f}%")
    result = {
        "workload": workload.as_dict(),
        "package_step_ms": package_ms,
        "replay_step_ms": replay_ms,
        "untimed_steps_first": (1 + args.pretrain_epochs) * args.steps,
        "breakdown_ms_per_step": rows_out,
        "gemm_ms_per_step": gemm_ms,
        "adam_ms_per_step": adam_ms,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
