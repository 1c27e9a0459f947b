"""Peak resident memory of one framework's training run, measured in a fresh process.

Run as a child of ``run.py``: ``python benchmarks/memory.py FRAMEWORK --batch B --hidden H,H
[--steps N] [--data-dir DIR | --synthetic]``. The child imports only what that framework needs,
loads the whole training and test set (float32), trains (a full epoch, or the first N steps),
evaluates on the test set, and prints one JSON line. The peak covers imports, data, the model,
the optimizer and every temporary, whichever allocator made them. It is the kernel's ``VmHWM`` (high-water mark of this address space) from ``/proc/self/status``, not
``getrusage(...).ru_maxrss``: Linux carries the parent's resident size into a child's ru_maxrss
across fork and exec, so a child of a 400 MiB parent would report at least 400 MiB.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _rss_mib() -> float | None:
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    peak = _status_mib("VmHWM")
    if peak is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS), with its caveat
        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    return peak


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=("xpmlp", "torch", "sklearn"))
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--hidden", required=True, help="comma-separated widths")
    parser.add_argument("--steps", type=int, default=0, help="train this many steps (0: an epoch)")
    parser.add_argument("--data-dir")
    parser.add_argument("--synthetic", action="store_true")
    args = parser.parse_args(argv)

    import data
    import peers
    from workloads import Workload

    workload = Workload(args.batch, tuple(int(h) for h in args.hidden.split(",")))
    # The framework's import cost belongs to its baseline.
    importlib.import_module(
        {"sklearn": "sklearn.neural_network"}.get(args.framework, args.framework)
    )
    baseline = _rss_mib()
    d = data.load(args.data_dir, synthetic=args.synthetic)
    after_data, peak_after_data = _rss_mib(), _peak_mib()
    n = d.X_train.shape[0]
    if args.steps:
        n = min(n, args.steps * workload.batch)
    # A view of the first n rows: the whole set stays loaded, as in a real run.
    init = None
    if args.framework == "torch":
        init = peers.make(
            "xpmlp", workload, d.X_train[:1], d.y_train[:1], device="cpu"
        ).initial_state()
    runner = peers.make(
        args.framework, workload, d.X_train[:n], d.y_train[:n], device="cpu", init=init
    )
    runner.set_test(d.X_test, d.y_test)
    start = time.perf_counter()
    runner.epoch()
    seconds = time.perf_counter() - start
    accuracy = runner.accuracy()
    print(
        json.dumps(
            {
                "framework": args.framework,
                "workload": workload.name,
                "samples_trained": n,
                "full_epoch": n == d.X_train.shape[0],
                "train_seconds": seconds,
                "test_accuracy": accuracy,
                "rss_after_import_mib": baseline,
                "rss_after_data_mib": after_data,
                "peak_rss_after_data_mib": peak_after_data,
                "peak_rss_mib": _peak_mib(),
            }
        )
    )


if __name__ == "__main__":
    main()
