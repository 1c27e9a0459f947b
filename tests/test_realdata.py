"""Training on the real Fashion-MNIST files, as the README's first command does (shorter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optional import need

from xpmlp.cli import main


@pytest.fixture
def fashion_dir():
    return need("realdata")


@pytest.mark.realdata
@pytest.mark.slow
def test_two_epochs_on_fashion_mnist_reach_85_percent(tmp_path, fashion_dir):
    out = tmp_path / "run"
    argv = ["train", "--device", "cpu", "--dataset", "fashion-mnist", "--data-dir", str(fashion_dir),
            "--hidden", "300,300", "--epochs", "2", "--schedule", "cosine", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert records[-1]["test_accuracy"] >= 0.85, records[-1]
    assert records[-1]["train_loss"] < records[0]["train_loss"]


@pytest.mark.realdata
def test_example_script_runs(fashion_dir, monkeypatch):
    import runpy
    import sys

    example = Path(__file__).resolve().parent.parent / "examples" / "fashion_mnist.py"
    monkeypatch.setenv("XPMLP_DATA_DIR", str(fashion_dir))
    monkeypatch.setattr(
        sys, "argv", [str(example), "--epochs", "1", "--device", "cpu", "--limit", "2000"]
    )
    runpy.run_path(str(example), run_name="__main__")


@pytest.mark.realdata
def test_the_scikit_learn_comparison_runs(fashion_dir, tmp_path):
    import subprocess
    import sys

    need("sklearn")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "sklearn_compare.py"
    report = tmp_path / "compare.json"
    argv = [sys.executable, str(script), "--rows", "1000", "--epochs", "3", "--repeats", "1",
            "--json", str(report)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads(report.read_text())
    names = {f"{who} {dtype}" for who in ("xpmlp.sklearn", "sklearn.neural_network")
             for dtype in ("float64", "float32")}  # fmt: skip
    assert set(results["accuracy"]) == set(results["seconds"]) == names
    assert all(accuracy > 0.6 for accuracy in results["accuracy"].values()), results["accuracy"]
    assert "| xpmlp.sklearn | float32 |" in done.stdout


@pytest.mark.realdata
def test_the_scikit_learn_comparison_on_a_gpu(fashion_dir, tmp_path, cupy_standin, monkeypatch):
    import importlib.util

    need("sklearn")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "sklearn_compare.py"
    spec = importlib.util.spec_from_file_location("sklearn_compare", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = tmp_path / "compare.json"
    monkeypatch.setattr("sys.argv", ["sklearn_compare.py", "--device", "gpu", "--rows", "600",
                                     "--epochs", "2", "--repeats", "1", "--json", str(report)])  # fmt: skip
    launches = cupy_standin.launches
    assert module.main() == 0
    assert cupy_standin.launches > launches  # ours trained on the (stand-in) GPU
    results = json.loads(report.read_text())
    assert results["settings"]["device"] == "gpu"
    assert all(accuracy > 0.3 for accuracy in results["accuracy"].values()), results["accuracy"]
