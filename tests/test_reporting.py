"""Run outputs: progress display, per-epoch lines, and the plot with and without matplotlib."""

from __future__ import annotations

import builtins
import io
import json
import logging

import pytest
from optional import need

from xpmlp.train import reporting

RECORD = {
    "epoch": 2, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": None, "val_accuracy": None,
    "test_loss": 0.6, "test_accuracy": 0.75, "lr": 1e-3, "seconds": 1.5, "samples_per_second": 40000.0,
}  # fmt: skip


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_progress_bar_and_a_log_gets_one_line_per_epoch():
    need("tqdm")
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
    need("matplotlib")
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


def _history(epochs=6):
    """A cosine-like learning rate falling to zero, and health of two layers (one dead)."""
    return [
        {**RECORD, "epoch": e, "lr": 1e-3 * (epochs - e) / epochs, "val_loss": 0.7 - e / 100,
         "health": {"layers.0": {"update_ratio": 1e-3 / e, "grad_norm": 0.5},
                    "layers.1": {"update_ratio": 0.0, "grad_norm": None},
                    "output": {"confidence": 0.9, "entropy": 0.3}}}
        for e in range(1, epochs + 1)
    ]  # fmt: skip


def test_the_learning_rate_is_on_a_linear_axis_and_the_health_legend_is_in_words():
    need("matplotlib")
    import matplotlib.pyplot as plt

    fig = reporting.curves_figure(_history(), best_epoch=4)
    try:
        loss, accuracy, lr, health = fig.axes
        assert lr.get_yscale() == "linear"  # a cosine fall to zero: a curve, not a cliff
        assert health.get_yscale() == "log"
        words = [text.get_text() for text in health.get_legend().get_texts()]
        # layers.1 has nothing positive to show on a log axis
        assert words == ["layers.0", "update ratio (solid)", "gradient norm (dotted)",
                         "best (epoch 4)"]  # fmt: skip
        assert all(tick == int(tick) for tick in loss.get_xticks())  # whole epochs
        styles = {line.get_label(): line.get_linestyle() for line in health.get_lines()}
        assert styles["update ratio (solid)"] == "-" and styles["gradient norm (dotted)"] == ":"
    finally:
        plt.close(fig)


@pytest.mark.parametrize("history", [[], _history(1), [{**RECORD, "lr": 0.0}]],
                         ids=["no epoch", "one epoch", "no health"])  # fmt: skip
def test_few_epochs_plot_without_warnings(tmp_path, history):
    need("matplotlib")
    assert reporting.plot_curves(history, tmp_path / "curves.png")  # warnings are errors here
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_matplotlibs_log_warnings_stay_off_stderr(tmp_path, monkeypatch, caplog):
    # As on a fresh machine: "Matplotlib is building the font cache", or a config directory it
    # cannot write; matplotlib logs these as warnings, which Python prints on stderr.
    need("matplotlib")
    import matplotlib.figure as figure

    savefig = figure.Figure.savefig

    def noisy_savefig(self, *args, **kwargs):
        logging.getLogger("matplotlib.font_manager").warning("building the font cache")
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(figure.Figure, "savefig", noisy_savefig)
    with caplog.at_level(logging.WARNING):
        assert reporting.plot_curves(_history(), tmp_path / "curves.png")
        assert "font cache" not in caplog.text
        logging.getLogger("matplotlib.font_manager").warning("after the plot")  # level restored
        assert "after the plot" in caplog.text


def test_one_epoch_has_whole_epoch_ticks():
    need("matplotlib")
    import matplotlib.pyplot as plt

    fig = reporting.curves_figure(_history(1))
    try:
        fig.canvas.draw()
        for ax in fig.axes[:3]:
            assert all(tick == int(tick) for tick in ax.get_xticks()), ax.get_xticks()
    finally:
        plt.close(fig)
