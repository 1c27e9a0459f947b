"""Run directories: where a training run keeps what it leaves behind, and how it is resumed.

A run directory holds::

    config.json      every setting (model, training, data), library versions, device, processes
    metrics.jsonl    one JSON object per epoch
    curves.png       loss, accuracy, learning rate and layer health per epoch
    checkpoints/     checkpoint-epoch-NNNN.npz (see xpmlp.train.checkpoint), the newest few
    .lock            held (flock) by the one process writing the run; removed when it ends

Both ``xpmlp train`` and ``xpmlp.fit(..., out=...)`` write through :class:`RunDir`. A process
that must not write (a non-zero rank of a distributed run) opens it with ``writer=False``: it
reads checkpoints like the others, and every write becomes a no-op.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np

from .._version import __version__
from ..core.model import MLP
from ..data import datasets
from ..data.inputs import Scaler
from ..errors import CheckpointError, ConfigError
from . import checkpoint, reporting

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one writer is then the user's business
    fcntl = None

CONFIG, METRICS, CURVES, CHECKPOINTS, LOCK = (
    "config.json", "metrics.jsonl", "curves.png", "checkpoints", ".lock",
)  # fmt: skip
RUN_ENTRIES = {CONFIG, METRICS, CURVES, CHECKPOINTS, LOCK}
TRAINER_GROUPS = ("params", "optimizer", "best")  # the groups of Trainer.state_dict()


class RunDir:
    """One run directory; see the module docstring for its layout.

    Parameters
    ----------
    path : path-like
    writer : bool
        Whether this process writes (and locks) the directory.
    """

    def __init__(self, path, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._lock_file = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    # ------------------------------------------------------------------ opening and locking

    def check_new(self, *, overwrite: bool = False) -> None:
        """Refuse to start a new run over an existing one unless ``overwrite`` (cheap; no writes)."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run directory {self.path} exists and is not a directory")
        entries = set(os.listdir(self.path)) if self.path.is_dir() else set()
        if not entries:
            return
        if not overwrite:
            raise ConfigError(
                f"{self.path} already holds a run; continue it with --resume {self.path} "
                "(resume=True), or replace it with --overwrite (overwrite=True)"
            )
        foreign = sorted(entries - RUN_ENTRIES)
        if foreign:
            raise ConfigError(
                f"{self.path} is not a run directory (it holds {foreign[0]}); "
                "--overwrite only replaces runs"
            )

    def create(self, *, overwrite: bool = False) -> RunDir:
        """Start a new run here: the directory is made, locked, and cleared with ``overwrite``."""
        if not self.writer:  # the writer checks and creates it
            return self
        self.check_new(overwrite=overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        for name in (CONFIG, METRICS, CURVES):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        self.checkpoints.mkdir()
        return self

    def open(self) -> RunDir:
        """Open an existing run to resume it (locked)."""
        if not self.writer:  # the writer checks and opens it
            return self
        if not self.path.is_dir():
            raise CheckpointError(f"run directory {self.path} does not exist")
        self.lock()
        self.checkpoints.mkdir(exist_ok=True)
        return self

    def lock(self) -> None:
        """Take the run's lock, or fail with one line naming the process that holds it.

        :meth:`close` removes the lock file while holding the lock, so a process that opened
        the file just before that may win the lock on a file no longer in the directory: it
        then opens the path again (a new file, or one another process has since locked).
        """
        if fcntl is None or self._lock_file is not None:
            return
        path = self.path / LOCK
        while True:
            handle = open(path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise ConfigError(
                    f"run directory {self.path} is in use by another xpmlp process (pid {holder})"
                ) from None
            if _names(path, handle):
                break
            handle.close()  # removed by its last holder after we opened it
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def close(self) -> None:
        """Release the lock and remove its file (while still holding it; see :meth:`lock`)."""
        if self._lock_file is not None:
            if _names(self.path / LOCK, self._lock_file):
                (self.path / LOCK).unlink()
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ checkpoints

    def latest(self) -> Path | None:
        return checkpoint.latest(self.checkpoints) if self.checkpoints.is_dir() else None

    def load_latest(self) -> dict | None:
        """The newest checkpoint (see :func:`xpmlp.train.checkpoint.load`), or None when there is none."""
        path = self.latest()
        return None if path is None else checkpoint.load(path)

    def save(self, state: dict, *, model: MLP, data: dict | None = None,
             scaler: Scaler | None = None, classes=None, keep: int = 3,
             fingerprint: dict | None = None) -> Path | None:  # fmt: skip
        """Write ``state`` (:meth:`Trainer.state_dict`) as the checkpoint of its epoch; prune.
        ``fingerprint`` is the data's (:mod:`xpmlp.data.fingerprint`), checked on resume.

        Returns the path written (None when this process is not the writer).
        """
        if not self.writer:
            return None
        epoch = state["meta"]["epoch"]
        meta = {
            "model": model.config(),
            "trainer": state["meta"],
            "data": data,
            "scaling": scaler.method if scaler is not None else None,
            "classes": None if classes is None else np.asarray(classes).tolist(),
            "data_fingerprint": fingerprint,
            "rng": {"seed": state["meta"]["config"]["seed"],
                    "streams": "numpy.random.default_rng([seed, purpose, epoch]); resumes at "
                               f"epoch {epoch}"},
        }  # fmt: skip
        arrays = {group: state[group] for group in TRAINER_GROUPS}
        arrays["scaling"] = scaler.state_dict() if scaler is not None else None
        path = checkpoint.save(
            self.checkpoints / checkpoint.checkpoint_name(epoch), meta=meta, arrays=arrays
        )
        checkpoint.prune(self.checkpoints, keep)
        return path

    # ------------------------------------------------------------------ metrics, config, curves

    def write_config(self, info: dict) -> None:
        if self.writer:
            reporting.write_json(self.path / CONFIG, {**info, "versions": versions()})

    def write_metrics(self, history: list[dict]) -> None:
        """Rewrite ``metrics.jsonl`` from the whole history (on start and on resume)."""
        if self.writer:
            reporting.write_metrics(self.path / METRICS, history)

    def append_metrics(self, record: dict) -> None:
        if self.writer:
            reporting.append_metrics(self.path / METRICS, record)

    def plot(self, history: list[dict], *, title: str | None = None,
             best_epoch: int | None = None) -> bool:  # fmt: skip
        """Draw ``curves.png``; False when matplotlib is missing."""
        if not self.writer:
            return True
        return reporting.plot_curves(
            history, self.path / CURVES, title=title, best_epoch=best_epoch
        )


def _names(path: Path, handle) -> bool:
    """Whether ``path`` is still the file ``handle`` has open."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)


def trainer_state(ckpt: dict) -> dict:
    """The :meth:`Trainer.load_state_dict` argument held in a loaded checkpoint."""
    meta = ckpt["meta"]
    if meta.get("format") == 1:
        raise CheckpointError(
            f"{ckpt['path']} was written by an older xpmlp (checkpoint format 1): it can be "
            "evaluated and used for predictions, but not resumed; start a new run"
        )
    if not isinstance(meta.get("trainer"), dict):
        raise CheckpointError(f"{ckpt['path']} has no trainer state; it cannot be resumed")
    return {"meta": meta["trainer"], **{group: ckpt[group] for group in TRAINER_GROUPS}}


def load_model(path, *, device="cpu") -> tuple[MLP, Scaler | None, dict]:
    """The model of a checkpoint file or run directory, with its best weights when the run used
    early stopping, the scaler its inputs need, and the checkpoint itself.
    """
    ckpt = checkpoint.load(path)
    model = model_of(ckpt, device=device)
    model.load_state_dict(ckpt["best"] or ckpt["params"])
    scaler = scaler_of(ckpt)
    if scaler is not None:
        if scaler.offset.shape not in ((), (model.layer_sizes[0],)):
            raise CheckpointError(
                f"{ckpt['path']} scales {scaler.offset.size} features but its model takes "
                f"{model.layer_sizes[0]}"
            )
    return model, scaler, ckpt


def scaler_of(ckpt: dict) -> Scaler | None:
    """The scaling a checkpoint's model expects its inputs to have had, if it recorded one."""
    if not ckpt["scaling"]:
        return None
    return Scaler.from_state_dict(ckpt["scaling"], ckpt["meta"].get("scaling") or "unknown")


def model_of(ckpt: dict, *, device="cpu") -> MLP:
    """A fresh model built from a checkpoint's model config (weights not loaded)."""
    config = ckpt["meta"].get("model")
    if not isinstance(config, dict) or "layer_sizes" not in config:
        raise CheckpointError(f"{ckpt['path']} has no model config")
    try:
        return MLP.from_config(config, device=device)
    except (TypeError, KeyError, ValueError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(f"{ckpt['path']} has a malformed model config: {exc}") from None


def classes_of(ckpt: dict, model: MLP) -> np.ndarray:
    """The label each output of a checkpoint's classifier stands for (0..k-1 when not recorded):
    int64, or str for text labels."""
    saved = ckpt["meta"].get("classes")
    classes = np.arange(model.n_outputs) if saved is None else np.asarray(saved)
    if classes.ndim != 1 or len(classes) != model.n_outputs or classes.dtype.kind not in "iuU":
        raise CheckpointError(
            f"{ckpt['path']} records {classes.size} classes for a model with {model.n_outputs} outputs"
        )
    return classes if classes.dtype.kind == "U" else classes.astype(np.int64)


def class_names_of(ckpt: dict, classes: np.ndarray, *, dataset: str | None = None):
    """What each class is called, where that is known: text labels name themselves; a run on a
    built-in dataset (or, failing that, ``dataset``) has that dataset's names. Else None."""
    if classes.dtype.kind == "U":
        return classes.tolist()
    data = ckpt["meta"].get("data")
    trained_on = data.get("dataset") if isinstance(data, dict) else None
    for name in (trained_on, dataset):
        names = datasets.CLASS_NAMES.get(name) if isinstance(name, str) else None
        if names is not None and classes.tolist() == list(range(len(names))):
            return list(names)
    return None


def versions() -> dict:
    """Versions of Python, xpmlp and the array libraries this process has imported."""
    found = {"xpmlp": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in ("array_api_compat", "cupy", "torch", "array_api_strict"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "?")
    return found
