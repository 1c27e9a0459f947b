"""Kernel launches, copies and host syncs per training step: the cost a GPU step pays in launch
overhead (about 5-10 us of host time each) whatever its arithmetic.

- xpmlp: counted on the CuPy stand-in (``tests/cupy_standin.py``): every NumPy call it makes on
  device arrays, or to fill a new one, is one launch, and so is each call of a fused kernel
  (compiled functions, which the stand-in runs as their NumPy twins); views and
  ``empty`` allocations are free, as in CuPy; ``.get()``, ``float()`` and friends are a
  device-to-host copy and a sync; ``cupy.asarray`` of host data is a host-to-device copy. The
  step is the same code as on real CuPy, so the count is CuPy's, give or take kernels CuPy fuses
  or splits internally (checked on a real GPU per shared/GPU.md). Counted with the fused kernels
  (the default) and with ``XPMLP_KERNELS=portable`` (the Array API path every namespace runs).
- torch: ``torch.profiler`` on the CPU, as a proxy where no GPU exists: the leaf ``aten::`` ops
  (those that call no other op) of one step, which on CUDA is roughly one kernel each. Adam is
  ``foreach=True`` (torch's default on CUDA).

Both count a step in steady state (the third, after warm-up), Adam, one batch of the workload.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
from workloads import Workload

TESTS = Path(__file__).resolve().parent.parent / "tests"
STEPS = 4


def _standin():
    if "cupy_standin" in sys.modules:
        return sys.modules["cupy_standin"]
    spec = importlib.util.spec_from_file_location("cupy_standin", TESTS / "cupy_standin.py")
    module = sys.modules["cupy_standin"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def xpmlp_counts(workload: Workload, *, dropout: float = 0.0, fused: bool = True) -> dict:
    """Launches, copies and syncs of one steady-state xpmlp training step on the stand-in."""
    saved = os.environ.get("XPMLP_KERNELS")
    os.environ["XPMLP_KERNELS"] = "fused" if fused else "portable"
    try:
        counts = _xpmlp_counts(workload, dropout)
    finally:
        if saved is None:
            del os.environ["XPMLP_KERNELS"]
        else:
            os.environ["XPMLP_KERNELS"] = saved
    name = "xpmlp" if fused else "xpmlp (portable path)"
    return {**counts, "framework": name + (f", dropout {dropout}" if dropout else "")}


def _xpmlp_counts(workload: Workload, dropout: float) -> dict:
    standin = _standin()
    rng = np.random.default_rng(0)
    n = workload.batch * STEPS
    X = rng.normal(size=(n, workload.layer_sizes[0])).astype(np.float32)
    y = rng.integers(0, workload.layer_sizes[-1], n)
    with standin.installed() as counters:
        import xpmlp

        model = xpmlp.MLP(list(workload.layer_sizes), dropout=dropout, device="cuda:0")
        trainer = xpmlp.Trainer(model, optimizer="adam", batch_size=workload.batch, epochs=1)
        X, y = model.as_input(X), model.as_target(y)
        seen = []
        trainer.train_epoch(X, y, on_batch=lambda done, total: seen.append(counters.snapshot()))
    step = {k: seen[2][k] - seen[1][k] for k in seen[2]}
    return {"framework": "xpmlp", "counted_by": "CuPy stand-in", **step}


def torch_counts(workload: Workload) -> dict | None:
    """Leaf aten ops of one steady-state torch step (foreach Adam), profiled on the CPU."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    torch.manual_seed(0)
    sizes = workload.layer_sizes
    layers = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-2], sizes[-1]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    X = torch.randn(workload.batch, sizes[0])
    y = torch.randint(0, sizes[-1], (workload.batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(X), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return {"framework": "torch", "counted_by": COUNTED_BY, "launches": _kernels(prof.events()),
            "host_to_device": 0, "device_to_host": 0, "syncs": 0}  # fmt: skip


# aten ops that only make views or allocate: no kernel on CUDA.
NO_KERNEL = {
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::t", "aten::transpose",
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::expand",
    "aten::detach", "aten::alias", "aten::unsqueeze", "aten::squeeze", "aten::select",
    "aten::slice", "aten::permute", "aten::lift_fresh", "aten::resize_", "aten::result_type",
    "aten::_unsafe_view", "aten::numpy_T", "aten::resolve_conj", "aten::resolve_neg",
}  # fmt: skip
COUNTED_BY = (
    "torch.profiler on the CPU (proxy): leaf aten ops that run a kernel on CUDA (views and "
    "allocations left out), each aten::_foreach_* call counted once (one multi-tensor kernel "
    "on CUDA; the CPU runs it per tensor)"
)


def _kernels(events) -> int:
    def foreach_ancestor(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::_foreach_"):
                return True
            parent = parent.cpu_parent
        return False

    count = 0
    for event in events:
        if not event.name.startswith("aten::") or foreach_ancestor(event):
            continue
        if event.name.startswith("aten::_foreach_"):
            count += 1
        elif not event.cpu_children and event.name not in NO_KERNEL:
            count += 1
    return count


def launch_counts(workloads) -> list[dict]:
    records = []
    for workload in workloads:
        variants = (xpmlp_counts(workload), xpmlp_counts(workload, dropout=0.2),
                    xpmlp_counts(workload, fused=False), torch_counts(workload))  # fmt: skip
        for counts in variants:
            if counts is not None:
                records.append({"workload": workload.name, "label": workload.label, **counts})
    return records
