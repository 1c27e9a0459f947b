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
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as data_module
import gemm
import launches
import machine
import peers
from workloads import (
    CPU_WORKLOADS,
    FLOP_FORMULA,
    GPU_WORKLOADS,
    HEADLINE,
    LARGE,
    QUICK_HEADLINE,
    QUICK_WORKLOADS,
    Workload,
)

HERE = Path(__file__).resolve().parent
TARGET_ACCURACY = 0.88
IDLE_GAP_S = 0.25  # between timed epochs; see `timed`
FRAMEWORKS = {"cpu": ("xpmlp", "torch", "sklearn"), "gpu": ("xpmlp", "torch", "torch.compile")}
GEMM_LIBRARIES = {"cpu": ("numpy", "torch"), "gpu": ("cupy", "torch")}
OWN_BLAS = {
    "xpmlp": {"cpu": "numpy", "gpu": "cupy"},
    "sklearn": {"cpu": "numpy"},
    "torch": {"cpu": "torch", "gpu": "torch"},
    "torch.compile": {"gpu": "torch"},
}


class BenchmarkError(Exception):
    """Something the user must fix before the benchmark can run (one line on stderr)."""


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


# ---------------------------------------------------------------------------- timing


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


# ---------------------------------------------------------------------------- device memory


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


def _nullcontext_memory():
    class _Null:
        mib = None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    return _Null()


# ---------------------------------------------------------------------------- one workload


def bench_workload(workload: Workload, data, args, frameworks) -> dict:
    device = args.device
    n = choose_samples(workload, data, device, args.seconds, args.quick)
    X, y = data.X_train[:n], data.y_train[:n]
    load_before = os.getloadavg()
    contestants, errors, memory = [], {}, {}
    init = None
    for name in frameworks:
        library = "cupy" if name == "xpmlp" else "torch"
        meter = (
            DeviceMemory(library)
            if device == "gpu" and name != "sklearn"
            else _nullcontext_memory()
        )
        try:
            with meter:
                c = peers.make(name, workload, X, y, device=device, init=init)
                if name == "xpmlp":
                    init = c.initial_state()
                    xpmlp_loss = c.first_batch_loss()
                elif name == "torch":
                    torch_loss = c.first_batch_loss()
                c.sync()
                for _ in range(2 if name == "torch.compile" else 1):
                    timed(c, args.gap)  # warm-up: allocator, BLAS threads, compilation
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            if name == "xpmlp":
                raise
            errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            continue
        memory[name] = meter.mib
        contestants.append(c)
    check = {"xpmlp_first_batch_loss": xpmlp_loss}
    if "torch" in memory:
        check["torch_first_batch_loss"] = torch_loss
        check["relative_difference"] = abs(xpmlp_loss - torch_loss) / abs(torch_loss)
        if check["relative_difference"] > 1e-3:
            raise BenchmarkError(
                f"{workload.label}: xpmlp and torch disagree on the first batch's loss from the "
                f"same weights ({xpmlp_loss:.6g} vs {torch_loss:.6g}); not timing a wrong model"
            )
    for library in GEMM_LIBRARIES[device]:
        if library == "torch" and not peers.available("torch"):
            continue
        g = gemm.GemmStep(library, workload, n, device=device)
        timed(g, args.gap)
        contestants.append(g)

    times: dict[str, list[float]] = {c.name: [] for c in contestants}
    for _ in range(args.repeats):
        for c in contestants:  # interleaved: A B C ... A B C ...
            times[c.name].append(timed(c, args.gap))

    flops = workload.flops_per_sample()
    results = {}
    for c in contestants:
        rates = [n / t for t in times[c.name]]
        results[c.name] = {
            "kind": "gemm" if isinstance(c, gemm.GemmStep) else "framework",
            "library": getattr(c, "library", None),
            "seconds": times[c.name],
            "samples_per_s": rates,
            "median_samples_per_s": statistics.median(rates),
            "best_samples_per_s": max(rates),
            "median_gflops": statistics.median(rates) * flops / 1e9,
            "peak_device_memory_mib": memory.get(c.name),
        }
        if isinstance(c, peers.Sklearn):
            results[c.name]["compute_dtype"] = c.compute_dtype
    _add_ratios(results, device)
    record = {
        "workload": workload.as_dict(),
        "label": workload.label,
        "samples_per_repeat": n,
        "steps_per_repeat": n // workload.batch,
        "repeats": args.repeats,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "check": check,
        "contestants": results,
        "errors": errors,
    }
    del contestants
    gc.collect()
    return record


def _add_ratios(results: dict, device: str) -> None:
    ceilings = {
        name.split("(")[1].rstrip(")"): r["median_samples_per_s"]
        for name, r in results.items()
        if r["kind"] == "gemm"
    }
    best = max(ceilings.values()) if ceilings else None
    xpmlp_rate = results["xpmlp"]["median_samples_per_s"]
    for name, r in results.items():
        if r["kind"] != "framework":
            continue
        rate = r["median_samples_per_s"]
        own = ceilings.get(OWN_BLAS.get(name, {}).get(device))
        r["xpmlp_over_this"] = xpmlp_rate / rate
        r["pct_of_own_gemm_ceiling"] = 100 * rate / own if own else None
        r["pct_of_best_gemm_ceiling"] = 100 * rate / best if best else None
        r["own_gemm_ceiling"] = OWN_BLAS.get(name, {}).get(device)


# ---------------------------------------------------------------------------- memory, accuracy


def measure_memory(workloads, throughput, data_dir, frameworks, quick) -> list[dict]:
    """Peak RSS per framework and workload, each in a fresh process (CPU runs)."""
    records = []
    steps_of = {r["workload"]["name"]: r["steps_per_repeat"] for r in throughput}
    headline = QUICK_HEADLINE if quick else HEADLINE
    for workload in [headline] if quick else workloads:
        for name in frameworks:
            steps = 0 if workload == headline else steps_of.get(workload.name, 8)
            command = [
                sys.executable,
                str(HERE / "memory.py"),
                name,
                "--batch",
                str(workload.batch),
                "--hidden",
                ",".join(map(str, workload.hidden)),
                "--steps",
                str(steps),
            ]
            command += ["--synthetic"] if quick else (["--data-dir", data_dir] if data_dir else [])
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                records.append({"framework": name, "workload": workload.name, "error": tail})
                continue
            records.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return records


def time_to_accuracy(data, args, frameworks) -> dict:
    """Epochs (interleaved across frameworks) until test accuracy >= the target."""
    workload = QUICK_HEADLINE if args.quick else HEADLINE
    target = 0.3 if args.quick else TARGET_ACCURACY
    max_epochs = 2 if args.quick else args.max_epochs
    names = [f for f in frameworks if f != "torch.compile"]
    runners, init = {}, None
    for name in names:
        try:
            runner = peers.make(
                name, workload, data.X_train, data.y_train, device=args.device, init=init
            )
        except Exception as exc:
            if name == "xpmlp":
                raise
            print(f"time-to-accuracy: skipping {name}: {exc}", file=sys.stderr)
            continue
        if name == "xpmlp":
            init = runner.initial_state()
        runner.set_test(data.X_test, data.y_test)
        runners[name] = runner
    results = {
        name: {
            "accuracy": [],
            "train_seconds": [],
            "samples_per_s": [],
            "reached": False,
            "epochs_to_target": None,
            "seconds_to_target": None,
            "library": r.library,
        }
        for name, r in runners.items()
    }
    for _ in range(max_epochs):
        active = [name for name in runners if not results[name]["reached"]]
        if not active:
            break
        for name in active:
            res = results[name]
            seconds = timed(runners[name], args.gap)
            total = (res["train_seconds"][-1] if res["train_seconds"] else 0.0) + seconds
            res["train_seconds"].append(total)
            res["samples_per_s"].append(data.X_train.shape[0] / seconds)
            res["accuracy"].append(runners[name].accuracy())
            if res["accuracy"][-1] >= target:
                res.update(
                    reached=True, epochs_to_target=len(res["accuracy"]), seconds_to_target=total
                )
    return {
        "workload": workload.as_dict(),
        "target_accuracy": target,
        "max_epochs": max_epochs,
        "note": "train_seconds is cumulative training time (evaluation excluded); torch starts "
        "from xpmlp's initial weights and visits the same batches; sklearn uses its own init",
        "results": results,
    }


# ---------------------------------------------------------------------------- report


def _fmt(value, spec: str, empty: str = "—") -> str:
    return empty if value is None else format(value, spec)


def _trend(rates: list[float]) -> str:
    return f"{rates[0]:,.0f} → {rates[-1]:,.0f}" if rates else "—"


def markdown(report: dict) -> str:
    m = report["machine"]
    torch_info = m.get("torch") or {}
    blas = (m.get("blas") or {}).get("threadpools") or []
    blas_text = ", ".join(
        f"{p['internal_api']} {p.get('version') or ''} ({p.get('architecture') or p.get('threading_layer')}, "
        f"{p['num_threads']} threads)"
        for p in blas
        if p.get("user_api") == "blas"
    )
    device_text = (
        m["gpu"] if m["device"] == "gpu" else f"{m['cpu_model']}, {m['usable_cpus']} cores"
    )
    lines = [
        (
            f"Measured {m['date'][:10]} on {device_text}; NumPy {m['versions'].get('numpy')} with "
            f"{blas_text or 'unknown BLAS'}; torch {torch_info.get('version', 'not installed')} "
            f"({torch_info.get('num_threads', '?')} threads); load average at start "
            f"{m['load_average_at_start'][0]:.2f}. Median of {report['settings']['repeats']} "
            f"interleaved repeats."
        ),
        "",
        (
            "| network @ batch | contestant | samples/s | GFLOP/s | xpmlp ÷ this "
            "| % of own GEMM ceiling | % of best GEMM ceiling | peak memory (MiB) |"
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    peaks = {(r["workload"], r["framework"]): r.get("peak_rss_mib") for r in report["memory"]}
    for record in report["throughput"]:
        for name, r in record["contestants"].items():
            peak = r["peak_device_memory_mib"]
            if peak is None:
                peak = peaks.get((record["workload"]["name"], name))
            lines.append(
                f"| {record['label']} | {name} | {r['median_samples_per_s']:,.0f} "
                f"| {r['median_gflops']:.1f} | {_fmt(r.get('xpmlp_over_this'), '.2f')} "
                f"| {_fmt(r.get('pct_of_own_gemm_ceiling'), '.0f')} "
                f"| {_fmt(r.get('pct_of_best_gemm_ceiling'), '.0f')} | {_fmt(peak, ',.0f')} |"
            )
        for name, error in record["errors"].items():
            lines.append(f"| {record['label']} | {name} | failed: {error[:80]} | | | | | |")
    tta = report.get("time_to_accuracy")
    if tta:
        lines += [
            "",
            (
                f"Time to {tta['target_accuracy']:.2f} test accuracy, "
                f"{'-'.join(map(str, tta['workload']['layer_sizes']))} at batch "
                f"{tta['workload']['batch']} (training seconds only, at most {tta['max_epochs']} epochs):"
            ),
            "",
            "| framework | epochs | seconds | best test accuracy | samples/s, first → last epoch |",
            "|---|--:|--:|--:|--:|",
        ]
        for name, r in tta["results"].items():
            lines.append(
                f"| {name} | {_fmt(r['epochs_to_target'], 'd', 'not reached')} "
                f"| {_fmt(r['seconds_to_target'], '.1f', '—')} "
                f"| {max(r['accuracy']) if r['accuracy'] else float('nan'):.4f} "
                f"| {_trend(r['samples_per_s'])} |"
            )
    if report["launches"]:
        lines += ["", "Per training step (Adam; see benchmarks/launches.py for how each is counted):",
                  "", "| network @ batch | framework | kernel launches | host→device | "
                  "device→host | host syncs |", "|---|---|--:|--:|--:|--:|"]  # fmt: skip
        for r in report["launches"]:
            lines.append(f"| {r['label']} | {r['framework']} | {r['launches']} | "
                         f"{r['host_to_device']} | {r['device_to_host']} | {r['syncs']} |")  # fmt: skip
    if report["targets"]:
        lines += ["", "| target | measured | met |", "|---|--:|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
    lines += [
        "",
        "GEMM ceiling: the step's matrix products alone, at the exact shapes, timed in the same "
        "interleaving (own = the contestant's BLAS; best = the fastest library's). "
        + (
            "Peak memory: device memory of building and one epoch."
            if report["settings"]["device"] == "gpu"
            else "Peak memory: peak RSS (VmHWM) of a fresh process that imports the framework, "
            "loads Fashion-MNIST as float32 and trains (a full epoch and a test evaluation for "
            "784-300-300-10 at batch 128; as many steps as one timed repeat otherwise)."
        )
        + " Rates are not stationary: each repeat continues the same training run, and xpmlp "
        "slows as it goes (its per-repeat rates are in the JSON; the first → last epoch column "
        "above shows it over a real run).",
    ]
    return "\n".join(lines)


def check_targets(report: dict) -> list[dict]:
    device, targets = report["settings"]["device"], []
    if report["settings"]["quick"]:
        return targets
    counted = [r for r in report["launches"]
               if r["workload"] == HEADLINE.name and r["framework"] == "xpmlp"]  # fmt: skip
    if counted:
        step = counted[0]
        targets.append({
            "target": "b128: <= 30 kernel launches per step, no host sync (stand-in count)",
            "measured": f"{step['launches']} launches, {step['syncs']} syncs",
            "met": step["launches"] <= 30 and step["syncs"] == 0,
        })  # fmt: skip
    by_name = {r["workload"]["name"]: r["contestants"] for r in report["throughput"]}
    head = by_name.get(HEADLINE.name, {})
    if device == "cpu" and "torch" in head:
        ratio = head["torch"]["xpmlp_over_this"]
        targets.append(
            {
                "target": "CPU b128: xpmlp >= 1.1x torch samples/s",
                "measured": f"{ratio:.2f}x",
                "met": ratio >= 1.1,
            }
        )
    large = by_name.get(LARGE.name, {})
    if device == "cpu" and "torch" in large:
        ratio = large["torch"]["xpmlp_over_this"]
        targets.append({
            "target": "CPU 784-1024-1024-1024-10 b128: xpmlp >= 0.9x torch samples/s",
            "measured": f"{ratio:.2f}x", "met": ratio >= 0.9,
        })  # fmt: skip
    if device == "cpu" and "xpmlp" in head:
        pct = head["xpmlp"]["pct_of_own_gemm_ceiling"]
        targets.append(
            {
                "target": "CPU b128: xpmlp >= 80% of GEMM ceiling (own BLAS)",
                "measured": f"{pct:.0f}%",
                "met": pct >= 80,
            }
        )
        best = head["xpmlp"]["pct_of_best_gemm_ceiling"]
        targets.append(
            {
                "target": "CPU b128: xpmlp >= 80% of GEMM ceiling (best BLAS)",
                "measured": f"{best:.0f}%",
                "met": best >= 80,
            }
        )
    full = [r for r in report["memory"] if r.get("full_epoch") and r["framework"] == "xpmlp"]
    if device == "cpu" and full:
        peak = full[0]["peak_rss_mib"]
        targets.append(
            {
                "target": "CPU: xpmlp peak RSS of a full Fashion-MNIST run <= 1 GB",
                "measured": f"{peak:.0f} MiB",
                "met": peak * 2**20 <= 1e9,
            }
        )
    if device == "gpu" and "torch" in head:
        ratio = head["torch"]["xpmlp_over_this"]
        targets.append(
            {
                "target": "GPU b128: xpmlp >= torch eager samples/s",
                "measured": f"{ratio:.2f}x",
                "met": ratio >= 1.0,
            }
        )
    big = by_name.get("b8192-h4096x4096")
    if device == "gpu" and big:
        ref = max((g["gflops_median"] for g in report["gemm_reference"]), default=None)
        gflops = big["xpmlp"]["median_gflops"]
        if ref:
            targets.append(
                {
                    "target": "GPU b8192 4096x4096: xpmlp >= 60% of the device's fp32 GEMM rate",
                    "measured": f"{100 * gflops / ref:.0f}% ({gflops:.0f} of {ref:.0f} GFLOP/s)",
                    "met": gflops >= 0.6 * ref,
                }
            )
    return targets


# ---------------------------------------------------------------------------- main


def check_device(device: str) -> None:
    if device != "gpu":
        return
    from xpmlp import DeviceError, get_backend

    try:
        get_backend("gpu")
    except DeviceError as exc:
        raise BenchmarkError(f"--device gpu: {exc}") from None


def default_json_path(device: str, quick: bool) -> Path:
    date = datetime.date.today().isoformat()
    suffix = "-quick" if quick else ""
    return HERE / "results" / f"{date}-{machine.device_slug(device)}{suffix}.json"


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
