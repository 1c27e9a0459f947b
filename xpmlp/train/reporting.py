"""What a training run shows and leaves behind: progress, metrics.jsonl, config.json, curves.png."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings

import numpy as np

from ..files import open_in, write_atomic

METRIC_KEYS = (
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "test_loss", "test_accuracy", "lr", "seconds", "samples_per_second",
)  # fmt: skip


# Each writer takes a path, or with ``dir_fd`` a name in that open directory (never a link).


def write_text_atomic(path, text: str, *, dir_fd: int | None = None) -> None:
    write_atomic(path, lambda handle: handle.write(text), mode="w", dir_fd=dir_fd)


def write_json(path, data: dict, *, dir_fd: int | None = None) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", dir_fd=dir_fd)


def write_metrics(path, history: list[dict], *, dir_fd: int | None = None) -> None:
    """Rewrite ``metrics.jsonl`` from the whole history (used on start and on resume)."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    write_text_atomic(path, text, dir_fd=dir_fd)


def append_metrics(path, record: dict, *, dir_fd: int | None = None) -> None:
    with open(path, "a") if dir_fd is None else open_in(dir_fd, path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def format_epoch(record: dict, total_epochs: int) -> str:
    """One log line per epoch: ``epoch 3/10  train loss 0.3210 acc 0.8823  val ...  41,230 samples/s``."""
    parts = [f"epoch {record['epoch']}/{total_epochs}"]
    for split in ("train", "val", "test"):
        loss, acc = record.get(f"{split}_loss"), record.get(f"{split}_accuracy")
        if loss is not None:
            parts.append(
                f"{split} loss {loss:.4f}" + (f" acc {acc:.4f}" if acc is not None else "")
            )
    parts.append(f"lr {record['lr']:.3g}")
    parts.append(f"{record['seconds']:.1f}s ({record['samples_per_second']:,.0f} samples/s)")
    return "  ".join(parts)


class Progress:
    """A tqdm bar per epoch in a terminal or a notebook (tqdm's auto mode), then one line per
    epoch, and each training note the first time its code appears.

    ``quiet`` silences all of it. Without tqdm installed, only the lines are shown.
    """

    def __init__(self, total_epochs: int, *, quiet: bool = False, stream=None, heard=()):
        self.total_epochs = total_epochs
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.heard = set(heard)  # note codes already told (a resumed run's)
        self._bar = None
        self._tqdm = None
        if not quiet and (self.stream.isatty() or "ipykernel" in sys.modules):
            try:
                from tqdm.auto import tqdm

                self._tqdm = tqdm
            except ImportError:
                pass

    def on_batch(self, done: int, total: int) -> None:
        if self._tqdm is None:
            return
        if self._bar is None:
            self._bar = self._tqdm(total=total, unit="batch", leave=False, file=self.stream)
        self._bar.update(1)

    def on_epoch(self, record: dict) -> None:
        self.close()
        self.message(format_epoch(record, self.total_epochs))
        for note in record.get("notes", ()):
            if note["code"] not in self.heard:
                self.heard.add(note["code"])
                self.message(f"note [{note['code']}]: {note['message']}")

    def message(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def plot_curves(history: list[dict], path, *, title: str | None = None,
                best_epoch: int | None = None, dir_fd: int | None = None) -> bool:  # fmt: skip
    """Write :func:`curves_figure` to ``path`` (a PNG); False without matplotlib."""
    fig = curves_figure(history, title=title, best_epoch=best_epoch)
    if fig is None:
        return False
    _save(fig, path, dir_fd=dir_fd)
    return True


def curves_figure(history: list[dict], *, title: str | None = None,
                  best_epoch: int | None = None):  # fmt: skip
    """Loss and accuracy per epoch (train / val / test), the learning rate, and health (each
    layer's update ratio and gradient norm); ``best_epoch`` is marked. None without matplotlib.
    """
    plt = _pyplot()
    if plt is None:
        return None
    epochs = [r["epoch"] for r in history]
    with _quiet_matplotlib():
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        for ax, metric in zip(axes[0], ("loss", "accuracy")):
            for split in ("train", "val", "test"):
                _line(ax, epochs, [r.get(f"{split}_{metric}") for r in history], split)
            _finish(ax, metric, best_epoch)
        _line(axes[1, 0], epochs, [r.get("lr") for r in history], "learning rate")
        _finish(axes[1, 0], "learning rate (end of epoch)", best_epoch)
        _health(axes[1, 1], history, epochs)
        _finish(axes[1, 1], "health per layer (log scale)", best_epoch)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


# What the health panel draws of each layer (in the layer's colour), and its legend's words.
HEALTH_LINES = (("update_ratio", "-", "update ratio (solid)"),
                ("grad_norm", ":", "gradient norm (dotted)"))  # fmt: skip


def _health(ax, history: list[dict], epochs: list[int]) -> None:
    """Each layer's update ratio (how far an epoch moved its weights, relative to their norm)
    and gradient norm on the probe batch, on a log axis; the legend names the layers by colour
    and the fields by line style."""
    layers = sorted(
        {k for r in history for k in (r.get("health") or {}) if k.startswith("layers.")},
        key=lambda name: int(name.split(".")[1]),
    )
    drawn = set()
    for index, layer in enumerate(layers):
        for field, style, _ in HEALTH_LINES:
            values = [((r.get("health") or {}).get(layer) or {}).get(field) for r in history]
            positive = [v if v is not None and v > 0 else None for v in values]
            label = f"_{layer}" if layer in drawn else layer  # "_": no second legend entry
            if _line(ax, epochs, positive, label, linestyle=style, color=f"C{index}"):
                drawn.add(layer)
    if drawn:
        ax.set_yscale("log")
        for _, style, words in HEALTH_LINES:
            ax.plot([], [], color="grey", linestyle=style, label=words)


def plot_runs(runs: dict[str, list[dict]], metric: str, path) -> bool:
    """One ``metric`` (e.g. ``test_loss``) per epoch for several runs, overlaid."""
    plt = _pyplot()
    if plt is None:
        return False
    with _quiet_matplotlib():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, history in runs.items():
            _line(ax, [r["epoch"] for r in history], [r.get(metric) for r in history], name)
        _finish(ax, metric, None)
        fig.tight_layout()
    _save(fig, path)
    return True


def plotting_available() -> bool:
    """Import matplotlib now (about half a second, once per process) and say whether it is
    installed: a run does it when it starts, so that an interrupted one only has to draw."""
    return _pyplot() is not None


def _pyplot():
    try:
        with _quiet_matplotlib():
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, path, *, dir_fd: int | None = None) -> None:
    try:
        with _quiet_matplotlib():
            write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=100),
                         dir_fd=dir_fd)  # fmt: skip
    finally:
        _pyplot().close(fig)


@contextlib.contextmanager
def _quiet_matplotlib():
    """Keep matplotlib's log warnings (a font cache being built, a config directory it cannot
    write, a missing font) and its Python warnings (a layout that does not fit, an overflow)
    off stderr; errors still show."""
    logger = logging.getLogger("matplotlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _line(ax, epochs, values, label, **style) -> bool:
    """Plot ``values`` (None where missing) unless all are missing; whether it was drawn."""
    if all(v is None for v in values):
        return False
    ax.plot(epochs, [float("nan") if v is None else v for v in values], marker=".",
            label=label, **style)  # fmt: skip
    return True


def _finish(ax, ylabel: str, best_epoch: int | None) -> None:
    if best_epoch is not None:
        ax.axvline(
            best_epoch,
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"best (epoch {best_epoch})",
        )
    from matplotlib.ticker import MaxNLocator

    low, high = ax.get_xlim()
    if ax.has_data() and high - low < 2:  # one epoch: integer ticks would fall back to 0.945...
        middle = (low + high) / 2
        ax.set_xlim(middle - 1, middle + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
