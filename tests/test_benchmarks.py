"""The benchmark harness still runs: ``benchmarks/run.py --quick`` end to end, in a subprocess.

No timing is asserted here; the numbers live in the benchmark's JSON and the README.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RUN = BENCHMARKS / "run.py"


def _run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, str(RUN), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    done = _run("--quick", "--json", str(path))
    assert done.returncode == 0, done.stderr
    return json.loads(path.read_text()), done.stdout


def test_quick_run_writes_the_expected_json(quick_report):
    report, _ = quick_report
    for key in ("machine", "settings", "flop_formula", "gemm_reference", "throughput", "memory",
                "time_to_accuracy", "targets", "markdown"):  # fmt: skip
        assert key in report, key
    machine = report["machine"]
    for key in ("cpu_model", "logical_cpus", "versions", "blas", "date", "load_average_at_start"):
        assert key in machine, key
    assert machine["versions"]["numpy"]
    assert report["settings"]["device"] == "cpu" and report["settings"]["quick"] is True
    assert all(g["gflops_median"] > 0 for g in report["gemm_reference"])

    assert len(report["throughput"]) >= 1
    for record in report["throughput"]:
        contestants = record["contestants"]
        assert "xpmlp" in contestants and "GEMM ceiling (numpy)" in contestants
        assert record["workload"]["flops_per_sample"] > 0
        assert record["samples_per_repeat"] % record["workload"]["batch"] == 0
        for result in contestants.values():
            assert len(result["samples_per_s"]) == report["settings"]["repeats"]
            assert result["median_samples_per_s"] > 0
        xpmlp = contestants["xpmlp"]
        assert xpmlp["xpmlp_over_this"] == pytest.approx(1.0)
        assert xpmlp["pct_of_own_gemm_ceiling"] > 0
        if "torch" in contestants:  # same weights, same batch: the same loss before training
            assert record["check"]["relative_difference"] < 1e-3


def test_quick_run_measures_memory_and_time_to_accuracy(quick_report):
    report, _ = quick_report
    memory = {r["framework"]: r for r in report["memory"]}
    assert "error" not in memory["xpmlp"], memory["xpmlp"]
    assert memory["xpmlp"]["peak_rss_mib"] >= memory["xpmlp"]["rss_after_import_mib"] > 0
    tta = report["time_to_accuracy"]
    xpmlp = tta["results"]["xpmlp"]
    assert 1 <= len(xpmlp["accuracy"]) <= tta["max_epochs"]
    assert xpmlp["train_seconds"] == sorted(xpmlp["train_seconds"])  # cumulative


def test_quick_run_counts_launches_copies_and_syncs_per_step(quick_report):
    report, stdout = quick_report
    counts = {(r["workload"], r["framework"]): r for r in report["launches"]}
    names = {record["workload"]["name"] for record in report["throughput"]}
    assert {w for w, _ in counts} == names
    for (_, framework), record in counts.items():
        assert record["launches"] > 0 and record["counted_by"]
        if framework == "xpmlp":  # the GPU contract, counted on the stand-in
            assert (record["host_to_device"], record["device_to_host"], record["syncs"]) == (
                0,
                0,
                0,
            )
    assert "| network @ batch | framework | kernel launches |" in stdout


def test_quick_run_prints_a_markdown_table(quick_report):
    report, stdout = quick_report
    assert "| network @ batch | contestant | samples/s" in stdout
    assert report["markdown"] in stdout


def test_flop_count_matches_the_gemm_shapes():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from workloads import HEADLINE, Workload
    finally:
        sys.path.remove(str(BENCHMARKS))
    # 784-300-300-10: 6 * (784*300 + 300*300 + 300*10) - 2 * 784*300
    assert HEADLINE.flops_per_sample() == 1_498_800
    for workload in (HEADLINE, Workload(7, (5, 3, 4))):
        gemm_flops = sum(2 * m * k * n for _, m, k, n in workload.gemm_shapes())
        assert gemm_flops == workload.flops_per_sample() * workload.batch


def test_gpu_without_a_usable_gpu_fails_with_one_line():
    from xpmlp import DeviceError, get_backend

    if importlib.util.find_spec("cupy") and get_backend("auto").name == "cupy":
        pytest.skip("this machine has a working GPU: benchmarks/run.py --device gpu runs there")
    done = _run("--device", "gpu", "--quick", "--json", "/nonexistent/never-written.json")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: --device gpu: " in lines[0], done.stderr
    try:  # the line is the device's own one-line reason
        get_backend("gpu")
    except DeviceError as exc:
        assert str(exc).splitlines()[0] in lines[0], (str(exc), lines[0])
