"""What a training run shows and leaves behind: progress, metrics.jsonl, config.json, curves.png."""

from __future__ import annotations

import json
import sys

from .files import write_atomic

METRIC_KEYS = (
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "test_loss", "test_accuracy", "lr", "seconds", "samples_per_second",
)  # fmt: skip


def write_text_atomic(path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text), mode="w")


def write_json(path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_metrics(path, history: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` from the whole history (used on start and on resume)."""
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in history))


def append_metrics(path, record: dict) -> None:
    with open(path, "a") as handle:
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
    """A tqdm bar per epoch when stderr is a terminal; otherwise one line per epoch.

    ``quiet`` silences both. Without tqdm installed, the per-epoch lines are used.
    """

    def __init__(self, total_epochs: int, *, quiet: bool = False, stream=None):
        self.total_epochs = total_epochs
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._bar = None
        self._tqdm = None
        if not quiet and self.stream.isatty():
            try:
                from tqdm import tqdm

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
        if not self.quiet:
            print(format_epoch(record, self.total_epochs), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def plot_curves(history: list[dict], path) -> bool:
    """Loss and accuracy per epoch for train / val / test; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split in ("train", "val", "test"):
            values = [r.get(f"{split}_{metric}") for r in history]
            if any(v is not None for v in values):
                ax.plot(
                    epochs,
                    [float("nan") if v is None else v for v in values],
                    marker=".",
                    label=split,
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
    return True
