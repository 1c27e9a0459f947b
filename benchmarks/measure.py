"""The measurements of a run: throughput per workload (every contestant and the GEMM ceiling,
interleaved), peak memory in fresh processes (CPU), and time to accuracy.

Each returns the plain dict that goes into the JSON report under its own key.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import gemm
import peers
from timing import DeviceMemory, NoMemory, choose_samples, interleaved, timed
from workloads import HEADLINE, QUICK_HEADLINE, Workload

HERE = Path(__file__).resolve().parent
TARGET_ACCURACY = 0.88
GEMM_LIBRARIES = {"cpu": ("numpy", "torch"), "gpu": ("cupy", "torch")}
OWN_BLAS = {
    "xpmlp": {"cpu": "numpy", "gpu": "cupy"},
    "sklearn": {"cpu": "numpy"},
    "torch": {"cpu": "torch", "gpu": "torch"},
    "torch.compile": {"gpu": "torch"},
}


class BenchmarkError(Exception):
    """Something the user must fix before the benchmark can run (one line on stderr)."""


def bench_workload(workload: Workload, data, args, frameworks) -> dict:
    """One workload's record: each framework and GEMM step timed over the same rows."""
    device = args.device
    n = choose_samples(workload, data, device, args.seconds, args.quick)
    X, y = data.X_train[:n], data.y_train[:n]
    load_before = os.getloadavg()
    contestants, errors, memory = [], {}, {}
    init = None
    for name in frameworks:
        library = "cupy" if name == "xpmlp" else "torch"
        meter = DeviceMemory(library) if device == "gpu" and name != "sklearn" else NoMemory()
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
    contestants += _gemm_steps(workload, n, device, args.gap)
    times = interleaved(contestants, args.repeats, args.gap)
    flops = workload.flops_per_sample()
    results = {c.name: _result(c, times[c.name], n, flops, memory.get(c.name)) for c in contestants}
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


def _gemm_steps(workload: Workload, n: int, device: str, gap: float) -> list:
    """The GEMM-ceiling contestants of a workload, one per library here, each warmed up."""
    steps = []
    for library in GEMM_LIBRARIES[device]:
        if library == "torch" and not peers.available("torch"):
            continue
        g = gemm.GemmStep(library, workload, n, device=device)
        timed(g, gap)
        steps.append(g)
    return steps


def _result(contestant, seconds: list[float], n: int, flops: int, peak_mib) -> dict:
    """One contestant's timings as rates: every repeat, the median and the best."""
    rates = [n / t for t in seconds]
    result = {
        "kind": "gemm" if isinstance(contestant, gemm.GemmStep) else "framework",
        "library": getattr(contestant, "library", None),
        "seconds": seconds,
        "samples_per_s": rates,
        "median_samples_per_s": statistics.median(rates),
        "best_samples_per_s": max(rates),
        "median_gflops": statistics.median(rates) * flops / 1e9,
        "peak_device_memory_mib": peak_mib,
    }
    if isinstance(contestant, peers.Sklearn):
        result["compute_dtype"] = contestant.compute_dtype
    return result


def _add_ratios(results: dict, device: str) -> None:
    """Each framework's rate against xpmlp's and against the GEMM ceilings (own and best)."""
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
