"""Benchmark xpmlp against PyTorch and scikit-learn on the same networks, batches and data.

    python benchmarks/run.py [--device cpu|gpu] [--quick] [--data-dir DIR] [--json PATH]

For each workload (network x batch size; see ``workloads.py``) every contestant trains the same
784-...-10 ReLU network with softmax cross-entropy and Adam (lr 1e-3, float32) on the same
Fashion-MNIST rows. After one warm-up epoch each, the contestants run interleaved
(A B C A B C ...), one timed epoch over the same subset each, and the median of the repeats is
reported. Two GEMM contestants run the step's matrix products alone in the same interleaving:
the *GEMM-bound ceiling*. Then, in fresh processes, the peak resident memory of each framework
(CPU), and the training time each needs to reach 0.88 test accuracy on Fashion-MNIST.

Writes JSON to ``benchmarks/results/<date>-<device>.json`` (or ``--json``) and prints markdown
tables for docs/speed.md. ``--quick`` runs tiny sizes on synthetic data (the smoke test).

This file is the command line; ``timing.py`` times an epoch, ``measure.py`` runs the
measurements, ``report.py`` checks the targets and writes the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as data_module
import gemm
import launches
import machine
import peers
from measure import GEMM_LIBRARIES, BenchmarkError, bench_workload, measure_memory, time_to_accuracy
from report import check_targets, default_json_path, markdown
from timing import IDLE_GAP_S
from workloads import CPU_WORKLOADS, FLOP_FORMULA, GPU_WORKLOADS, QUICK_WORKLOADS

FRAMEWORKS = {"cpu": ("xpmlp", "torch", "sklearn"), "gpu": ("xpmlp", "torch", "torch.compile")}


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny networks, synthetic data, one repeat: checks that the harness runs",
    )
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files")
    p.add_argument("--json", type=Path, help="where to write the results")
    p.add_argument("--repeats", type=int, help="timed repeats per contestant (default 5; quick 1)")
    p.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="aim for timed epochs of about this long (xpmlp's speed sets the size)",
    )
    p.add_argument(
        "--frameworks",
        help="comma-separated subset of "
        + ", ".join(sorted({f for fs in FRAMEWORKS.values() for f in fs})),
    )
    p.add_argument(
        "--workloads", help="comma-separated subset of workload names (b128-h300x300, ...)"
    )
    p.add_argument("--max-epochs", type=int, default=15, help="cap on epochs for time-to-accuracy")
    p.add_argument(
        "--skip", default="", help="comma-separated parts to skip: memory, tta, launches"
    )
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    args.gap = 0.0 if args.quick else IDLE_GAP_S
    if args.repeats < 1 or args.seconds <= 0:
        p.error("--repeats must be >= 1 and --seconds > 0")
    return args


def check_device(device: str) -> None:
    if device != "gpu":
        return
    from xpmlp import DeviceError, get_backend

    try:
        get_backend("gpu")
    except DeviceError as exc:
        raise BenchmarkError(f"--device gpu: {exc}") from None


def run(args) -> dict:
    check_device(args.device)
    frameworks = [f for f in FRAMEWORKS[args.device] if peers.available(f)]
    if args.frameworks:
        wanted = [f.strip() for f in args.frameworks.split(",") if f.strip()]
        unknown = sorted(set(wanted) - set(FRAMEWORKS[args.device]))
        if unknown:
            raise BenchmarkError(f"--frameworks: unknown on {args.device}: {', '.join(unknown)}")
        frameworks = [f for f in frameworks if f in wanted or f == "xpmlp"]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = time.perf_counter()
    report: dict = {
        "schema": 1,
        "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        "machine": machine.describe(args.device),
    }
    try:
        data = data_module.load(args.data_dir, synthetic=args.quick)
    except (OSError, ValueError) as exc:  # xpmlp's DataError is a ValueError
        raise BenchmarkError(f"cannot load Fashion-MNIST: {exc}") from None
    report["settings"] = {
        "device": args.device,
        "quick": args.quick,
        "repeats": args.repeats,
        "warmup_epochs": 1,
        "target_seconds_per_repeat": args.seconds,
        "idle_gap_s": args.gap,
        "frameworks": frameworks,
        "data_source": data.source,
        "n_train": int(data.X_train.shape[0]),
        "n_test": int(data.X_test.shape[0]),
        "dtype": "float32",
        "optimizer": "adam, lr 1e-3",
        "loss": "softmax cross-entropy",
        "activation": "relu",
    }
    report["flop_formula"] = FLOP_FORMULA
    workloads = (
        QUICK_WORKLOADS
        if args.quick
        else (GPU_WORKLOADS if args.device == "gpu" else CPU_WORKLOADS)
    )
    if args.workloads:
        wanted = {w.strip() for w in args.workloads.split(",")}
        unknown = wanted - {w.name for w in workloads}
        if unknown:
            raise BenchmarkError(
                f"--workloads: unknown: {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(w.name for w in workloads)}"
            )
        workloads = tuple(w for w in workloads if w.name in wanted)
    report["gemm_reference"] = [
        gemm.reference_rate(library, n, device=args.device, repeats=1 if args.quick else 5)
        for library in GEMM_LIBRARIES[args.device]
        if library != "torch" or peers.available("torch")
        for n in ((256,) if args.quick else (2048, 8192) if args.device == "gpu" else (2048,))
    ]
    report["launches"] = []
    if "launches" not in skip:
        print("counting launches per step ...", file=sys.stderr, flush=True)
        report["launches"] = launches.launch_counts(workloads)
    report["throughput"] = []
    for workload in workloads:
        print(f"timing {workload.label} ...", file=sys.stderr, flush=True)
        report["throughput"].append(bench_workload(workload, data, args, frameworks))
    report["memory"] = []
    if args.device == "cpu" and "memory" not in skip:
        print("peak memory (fresh processes) ...", file=sys.stderr, flush=True)
        report["memory"] = measure_memory(
            workloads, report["throughput"], args.data_dir, frameworks, args.quick
        )
    report["time_to_accuracy"] = None
    if "tta" not in skip:
        print("time to accuracy ...", file=sys.stderr, flush=True)
        report["time_to_accuracy"] = time_to_accuracy(data, args, frameworks)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["wall_seconds"] = time.perf_counter() - started
    report["targets"] = check_targets(report)
    report["markdown"] = markdown(report)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except BenchmarkError as exc:
        print(f"benchmarks/run.py: error: {exc}", file=sys.stderr)
        return 2
    path = args.json or default_json_path(args.device, args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(report["markdown"])
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
