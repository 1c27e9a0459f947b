"""The report: the targets a run is held to, the markdown tables for the README, and where the
JSON goes by default.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import machine
from workloads import HEADLINE, LARGE

HERE = Path(__file__).resolve().parent


def _fmt(value, spec: str, empty: str = "—") -> str:
    return empty if value is None else format(value, spec)


def _trend(rates: list[float]) -> str:
    return f"{rates[0]:,.0f} → {rates[-1]:,.0f}" if rates else "—"


def markdown(report: dict) -> str:
    """The README's tables: throughput, time to accuracy, launches per step, targets."""
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


def _target(target: str, measured: str, met: bool) -> dict:
    return {"target": target, "measured": measured, "met": met}


def check_targets(report: dict) -> list[dict]:
    """The project's performance targets that this run measured, each met or not."""
    device, targets = report["settings"]["device"], []
    if report["settings"]["quick"]:
        return targets
    counted = [r for r in report["launches"]
               if r["workload"] == HEADLINE.name and r["framework"] == "xpmlp"]  # fmt: skip
    if counted:
        step = counted[0]
        targets.append(_target(
            "b128: <= 30 kernel launches per step, no host sync (stand-in count)",
            f"{step['launches']} launches, {step['syncs']} syncs",
            step["launches"] <= 30 and step["syncs"] == 0,
        ))  # fmt: skip
    by_name = {r["workload"]["name"]: r["contestants"] for r in report["throughput"]}
    head = by_name.get(HEADLINE.name, {})
    if device == "cpu" and "torch" in head:
        ratio = head["torch"]["xpmlp_over_this"]
        targets.append(
            _target("CPU b128: xpmlp >= 1.1x torch samples/s", f"{ratio:.2f}x", ratio >= 1.1)
        )
    large = by_name.get(LARGE.name, {})
    if device == "cpu" and "torch" in large:
        ratio = large["torch"]["xpmlp_over_this"]
        targets.append(_target(
            "CPU 784-1024-1024-1024-10 b128: xpmlp >= 0.9x torch samples/s",
            f"{ratio:.2f}x", ratio >= 0.9,
        ))  # fmt: skip
    if device == "cpu" and "xpmlp" in head:
        for which in ("own", "best"):
            pct = head["xpmlp"][f"pct_of_{which}_gemm_ceiling"]
            targets.append(_target(
                f"CPU b128: xpmlp >= 80% of GEMM ceiling ({which} BLAS)", f"{pct:.0f}%", pct >= 80
            ))  # fmt: skip
    full = [r for r in report["memory"] if r.get("full_epoch") and r["framework"] == "xpmlp"]
    if device == "cpu" and full:
        peak = full[0]["peak_rss_mib"]
        targets.append(_target(
            "CPU: xpmlp peak RSS of a full Fashion-MNIST run <= 1 GB",
            f"{peak:.0f} MiB", peak * 2**20 <= 1e9,
        ))  # fmt: skip
    if device == "gpu" and "torch" in head:
        ratio = head["torch"]["xpmlp_over_this"]
        targets.append(
            _target("GPU b128: xpmlp >= torch eager samples/s", f"{ratio:.2f}x", ratio >= 1.0)
        )
    big = by_name.get("b8192-h4096x4096")
    if device == "gpu" and big:
        ref = max((g["gflops_median"] for g in report["gemm_reference"]), default=None)
        gflops = big["xpmlp"]["median_gflops"]
        if ref:
            targets.append(_target(
                "GPU b8192 4096x4096: xpmlp >= 60% of the device's fp32 GEMM rate",
                f"{100 * gflops / ref:.0f}% ({gflops:.0f} of {ref:.0f} GFLOP/s)",
                gflops >= 0.6 * ref,
            ))  # fmt: skip
    return targets


def default_json_path(device: str, quick: bool) -> Path:
    """``benchmarks/results/<date>-<device>[-quick].json``."""
    date = datetime.date.today().isoformat()
    suffix = "-quick" if quick else ""
    return HERE / "results" / f"{date}-{machine.device_slug(device)}{suffix}.json"
