"""Run directories: where a training run keeps what it leaves behind, and how it is resumed.

A run directory holds::

    config.json      every setting (model, training, data), library versions, device, processes
    metrics.jsonl    one JSON object per epoch
    curves.png       loss, accuracy, learning rate and layer health per epoch
    checkpoints/     checkpoint-epoch-NNNN.npz (see xpmlp.train.checkpoint), the newest few
    .lock            held (flock) by the one process writing the run; removed when it ends
    .xpmlp-run       the marker that makes the directory a run (see xpmlp.train.marker)

Both ``xpmlp train`` and ``xpmlp.fit(..., out=...)`` write through :class:`RunDir`. A process
that must not write (a non-zero rank of a distributed run) opens it with ``writer=False``: it
reads checkpoints like the others, and every write becomes a no-op.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._version import __version__
from ..core.model import MLP
from ..data import datasets
from ..data.inputs import Scaler
from ..errors import CheckpointError, ConfigError
from ..files import NOFOLLOW, kind, open_dir, open_directory
from . import checkpoint, marker, reporting
from .marker import CHECKPOINTS, CONFIG, CURVES, LOCK, METRICS, Found

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one writer is then the user's business
    fcntl = None

TRAINER_GROUPS = ("params", "optimizer", "best")  # the groups of Trainer.state_dict()


class RunDir:
    """One run directory; see the module docstring for its layout.

    A writer holds the directory open while the run lasts and writes, reads and deletes each of
    its files by name in it, never through a symbolic link (see :mod:`xpmlp.train.marker` for
    what makes a directory a run).

    Parameters
    ----------
    path : path-like
    writer : bool
        Whether this process writes (and locks) the directory.
    """

    def __init__(self, path, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._fd = self._checkpoints_fd = self._lock_fd = None  # while open, as a writer

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    # ------------------------------------------------------------------ opening and locking

    def check_new(self, *, overwrite: bool = False) -> None:
        """Refuse to start a new run here unless the directory is missing or empty, or holds a
        run and ``overwrite`` (cheap; no writes)."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run directory {self.path} exists and is not a directory")
        if not self.path.is_dir():
            return
        with open_dir(self.path) as fd:
            found = marker.survey(fd, self.path)
            if found is Found.FOREIGN:
                raise marker.not_a_run(self.path, fd)
            if found is not Found.EMPTY and not overwrite:
                raise _holds_a_run(self.path)
            marker.check_entries(fd, self.path)

    def create(self, *, overwrite: bool = False) -> RunDir:
        """Start a new run here: the directory is made, marked, locked, and cleared of the
        run's files with ``overwrite`` (nothing else in it is touched)."""
        if not self.writer:  # the writer checks and creates it
            return self
        self.check_new(overwrite=overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        self._hold()
        try:
            if not overwrite and (self.latest() is not None or kind(self._fd, CONFIG)):
                # another process made a run here since check_new, before we held the lock
                raise _holds_a_run(self.path)
            for name in (CONFIG, METRICS, CURVES):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._fd)
            checkpoint.prune(self._checkpoints_fd, 0)
        except BaseException:
            self.close()
            raise
        return self

    def open(self) -> RunDir:
        """Open an existing run to resume it (locked). An empty directory becomes a run; one
        that holds anything else than a run is refused."""
        if not self.writer:  # the writer checks and opens it
            return self
        if not self.path.is_dir():
            raise CheckpointError(f"run directory {self.path} does not exist")
        self._hold()
        return self

    def _hold(self) -> None:
        """Open the directory, refuse it unless it is a run or empty, mark it a run, lock it,
        and open its ``checkpoints/``."""
        self._fd = open_directory(self.path)
        try:
            found = marker.survey(self._fd, self.path)
            if found is Found.FOREIGN:
                raise marker.not_a_run(self.path, self._fd)
            marker.check_entries(self._fd, self.path)
            if found is not Found.RUN:
                marker.write_marker(self._fd)  # first, before anything else is written
            self.lock()
            with contextlib.suppress(FileExistsError):
                os.mkdir(CHECKPOINTS, dir_fd=self._fd)
            self._checkpoints_fd = open_directory(CHECKPOINTS, dir_fd=self._fd, follow=False)
        except BaseException:
            self.close()
            raise

    def lock(self) -> None:
        """Take the run's lock, or fail with one line naming the process that holds it.

        :meth:`close` removes the lock file while holding the lock, so a process that opened
        the file just before that may win the lock on a file no longer in the directory: it
        then opens the path again (a new file, or one another process has since locked).
        """
        if fcntl is None or self._lock_fd is not None:
            return
        while True:
            fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o666, dir_fd=self._dir())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _lock_holder(os.pread(fd, 64, 0))
                os.close(fd)
                raise ConfigError(
                    f"run directory {self.path} is in use by another xpmlp process ({holder})"
                ) from None
            if self._names_lock(fd):
                break
            os.close(fd)  # removed by its last holder after we opened it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock and remove its file (while still holding it; see :meth:`lock`)."""
        if self._lock_fd is not None:
            if self._names_lock(self._lock_fd):
                os.unlink(LOCK, dir_fd=self._fd)
            os.close(self._lock_fd)  # closing releases the flock
        for fd in (self._checkpoints_fd, self._fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._checkpoints_fd = self._lock_fd = None

    def _names_lock(self, fd: int) -> bool:
        """Whether the run's ``.lock`` is still the file ``fd`` has open."""
        try:
            found = os.stat(LOCK, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        opened = os.fstat(fd)
        return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)

    def _dir(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"{self!r} is not open: create() or open() it before writing")
        return self._fd

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ checkpoints

    def latest(self) -> Path | None:
        found = self._checkpoint_names()
        return self.checkpoints / found[-1][1] if found else None

    def load_latest(self, *, notify: Callable[[str], None] | None = None) -> dict | None:
        """The newest checkpoint that loads (see :func:`xpmlp.train.checkpoint.load`), or None
        when there is none. Newer ones that do not load (truncated, corrupt, replaced) are passed
        over, and ``notify(text)`` (default: a line on stderr) says which and why; when none
        loads, the newest one's error is raised."""
        unreadable = []
        for _, name in reversed(self._checkpoint_names()):
            try:
                ckpt = checkpoint.load(self.checkpoints / name)
            except CheckpointError as exc:
                unreadable.append(exc)
                continue
            if unreadable:
                others = f" (and {len(unreadable) - 1} newer)" if len(unreadable) > 1 else ""
                (notify or _tell)(f"{str(unreadable[0]).rstrip('.')}{others}; resuming from {name}")
            return ckpt
        if unreadable:
            raise unreadable[0]
        return None

    def _checkpoint_names(self) -> list[tuple[int, str]]:
        if self._checkpoints_fd is not None:
            return checkpoint.checkpoints_in(self._checkpoints_fd)
        return checkpoint.checkpoints_in(self.checkpoints) if self.checkpoints.is_dir() else []

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
        name = checkpoint.checkpoint_name(epoch)
        self._dir()
        try:
            checkpoint.save(name, meta=meta, arrays=arrays, dir_fd=self._checkpoints_fd)
        except OSError as exc:  # written by name in the open directory: say which directory
            if exc.errno is None:
                raise
            raise type(exc)(exc.errno, exc.strerror, str(self.checkpoints / name)) from None
        checkpoint.prune(self._checkpoints_fd, keep)
        return self.checkpoints / name

    # ------------------------------------------------------------------ metrics, config, curves

    def write_config(self, info: dict) -> None:
        if self.writer:
            reporting.write_json(CONFIG, {**info, "versions": versions()}, dir_fd=self._dir())

    def write_metrics(self, history: list[dict]) -> None:
        """Rewrite ``metrics.jsonl`` from the whole history (on start and on resume)."""
        if self.writer:
            reporting.write_metrics(METRICS, history, dir_fd=self._dir())

    def append_metrics(self, record: dict) -> None:
        if self.writer:
            reporting.append_metrics(METRICS, record, dir_fd=self._dir())

    def plot(self, history: list[dict], *, title: str | None = None,
             best_epoch: int | None = None) -> bool:  # fmt: skip
        """Draw ``curves.png``; False when matplotlib is missing."""
        if not self.writer:
            return True
        return reporting.plot_curves(
            history, CURVES, title=title, best_epoch=best_epoch, dir_fd=self._dir()
        )


def _holds_a_run(path: Path) -> ConfigError:
    return ConfigError(
        f"{path} already holds a run; continue it with --resume {path} "
        "(resume=True), or replace it with --overwrite (overwrite=True)"
    )


def _lock_holder(head: bytes) -> str:
    """The pid a lock file names, or a short excerpt of what it holds instead (it is no more
    than 64 bytes read)."""
    first = head.split(b"\n")[0].strip()
    if first.isdigit():
        return f"pid {first.decode()}"
    shown = "".join(c if c.isprintable() else "?" for c in first.decode("ascii", "replace"))
    return f"its {LOCK} holds {shown[:32]!r}{'...' if len(shown) > 32 else ''}, not a pid"


def _tell(text: str) -> None:
    print(f"xpmlp: {text}", file=sys.stderr)


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
