"""Run outputs: progress display, per-epoch lines, and the plot with and without matplotlib."""

from __future__ import annotations

import builtins
import io
import json

import pytest

from xpmlp import reporting

RECORD = {
    "epoch": 2, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": None, "val_accuracy": None,
    "test_loss": 0.6, "test_accuracy": 0.75, "lr": 1e-3, "seconds": 1.5, "samples_per_second": 40000.0,
}  # fmt: skip


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_progress_bar_and_a_log_gets_one_line_per_epoch():
    pytest.importorskip("tqdm")
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = reporting.Progress(5, stream=stream)
        for step in range(1, 11):
            progress.on_batch(step, 10)
        progress.on_epoch(RECORD)
    assert "| 0/10 [" in terminal.getvalue()  # tqdm drew its bar (then rate-limits redraws)
    assert log.getvalue().splitlines() == [reporting.format_epoch(RECORD, 5)]
    assert "test loss 0.6000 acc 0.7500" in log.getvalue() and "val" not in log.getvalue()


def test_quiet_prints_nothing():
    stream = _Terminal()
    progress = reporting.Progress(5, quiet=True, stream=stream)
    progress.on_batch(1, 10)
    progress.on_epoch(RECORD)
    progress.message("hello")
    assert stream.getvalue() == ""


def test_metrics_files_round_trip(tmp_path):
    path = tmp_path / "metrics.jsonl"
    reporting.write_metrics(path, [RECORD])
    reporting.append_metrics(path, {**RECORD, "epoch": 3})
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [2, 3]


def test_curves_png_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    assert reporting.plot_curves([{**RECORD, "epoch": 1}, RECORD], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_without_matplotlib_the_plot_is_skipped_not_fatal(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert reporting.plot_curves([RECORD], tmp_path / "curves.png") is False
    assert not (tmp_path / "curves.png").exists()
