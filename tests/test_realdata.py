"""Training on the real Fashion-MNIST files, as the README's first command does (shorter)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from xpmlp.cli import main

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def fashion_dir():
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("XPMLP_REQUIRE_REALDATA"):
            pytest.fail(f"{FASHION} is missing but XPMLP_REQUIRE_REALDATA is set (CI installs it)")
        pytest.skip("apt-get install dataset-fashion-mnist to run the real-data tests")
    return FASHION


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
