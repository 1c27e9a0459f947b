"""Training that leaves a run directory behind: :func:`fit` for library users, and the pieces the
command line shares with it (resuming a run, refusing changed settings, writing checkpoints).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from ..core.model import MLP
from ..data.fingerprint import check_unchanged, fingerprint
from ..data.inputs import Scaler
from ..errors import CheckpointError, ConfigError, install_hint
from . import reporting
from .checkpoint import checkpoint_name
from .config import DataConfig, TrainConfig
from .distributed import communicator, on_root, together
from .fitdata import FitData
from .runs import RunDir, trainer_state
from .signals import DeferredStop
from .trainer import Trainer

# Settings that may change when a run is resumed: how long it runs and how it is checkpointed.
RESUMABLE = ("epochs", "checkpoint_every", "keep_checkpoints")
# Command-line flags a resumed run may change; every other explicit one must match the run's.
RESUME_FLAGS = (*RESUMABLE, "data_dir", "no_download", "device", "quiet", "resume", "out",
                "distributed", "reduce", "accept_changed_data")  # fmt: skip


def fit(
    model: MLP,
    X,
    y,
    *,
    validation_data: tuple | None = None,
    test_data: tuple | None = None,
    out=None,
    resume: bool = False,
    overwrite: bool = False,
    scaler: Scaler | None = None,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callable] = (),
    verbose: bool | None = None,
    distributed=None,
    sample_weight=None,
    accept_changed_data: bool = False,
    **settings,
) -> list[dict]:
    """Train ``model`` on (X, y) with minibatch gradient descent; returns the per-epoch history.

    Parameters
    ----------
    model : MLP
    X : array of shape (n_samples, n_inputs)
    y : array of shape (n_samples,) with integer labels (cross-entropy), or
        (n_samples, n_outputs) targets (mse)
    validation_data, test_data : (X, y) tuples, optional
        Evaluated after every epoch.
    out : path-like, optional
        A run directory (see :mod:`xpmlp.train.runs`): config, metrics, curves and checkpoints are
        written there, as by ``xpmlp train``.
    resume : bool
        Continue the run in ``out`` from its newest checkpoint, bit for bit (a fresh run when it
        has none, so the call is safe to repeat). The model's config and the training settings
        must match the run's, except ``epochs``, ``checkpoint_every`` and ``keep_checkpoints``;
        so must the data (their fingerprint, :mod:`xpmlp.data.fingerprint`), unless
        ``accept_changed_data``.
    overwrite : bool
        Replace a run already in ``out``.
    scaler : Scaler, optional
        The scaling already applied to X, saved with the checkpoints.
    config : TrainConfig, optional
    callbacks : callables ``(trainer, record)``, run after every epoch
    verbose : bool or None
        Show a progress bar and one line per epoch (with the training notes) on stderr; None
        (the default) shows them in a terminal or notebook only.
    distributed : str or communicator, optional
        ``"mpi"``, ``"auto"`` (MPI when an MPI launcher started this process) or ``"none"``, or a
        communicator from :func:`xpmlp.train.distributed.communicator`: train data-parallel, each
        process on its slice of every batch (see :mod:`xpmlp.train.distributed`); every process calls
        ``fit`` with the same data and settings, and only rank 0 writes ``out`` and reports.
    sample_weight : array of shape (n_samples,), optional
        Weights of the samples' losses: a batch's loss is ``sum(w_i l_i) / sum(w)``. They are not
        saved in ``out``: pass them again to resume.
    accept_changed_data : bool
        Resume on data other than the run's (whose fingerprint differs from the one it recorded).
    **settings
        :class:`~xpmlp.train.config.TrainConfig` fields (``optimizer``, ``lr``, ``batch_size``,
        ``epochs``, ``schedule``, ``seed``, ...), alone or overriding ``config``'s.

    Returns
    -------
    list of dict
        One record per epoch: ``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss``,
        ``val_accuracy``, ``test_loss``, ``test_accuracy``, ``lr``, ``seconds`` (training time
        of the epoch, evaluation excluded), ``samples_per_second`` and ``health`` (see
        :func:`xpmlp.train.health.health`), plus ``notes`` when there are any.

    Raises
    ------
    DataError
        Before the first step and before ``out`` is written, for data the command line would
        refuse too, in the same words: ``features must be finite; found nan in column 5 of row
        3 of X (1 rows affected)`` (see :func:`xpmlp.train.fitdata.check_fit_data`).
    """
    comm = (
        communicator(distributed or "none") if isinstance(distributed, str | None) else distributed
    )
    trainer = Trainer(model, config, comm=comm, **settings)

    def checked():  # before anything is written: bad data leave no run directory behind
        data = trainer.check_data(X, y, validation_data=validation_data, test_data=test_data,
                                  sample_weight=sample_weight)  # fmt: skip
        if out is None and comm.size == 1:  # hashing copies device arrays to the host
            return data, None
        arrays = {"X": X, "y": y, "sample_weight": sample_weight}
        for name, pair in (("val", validation_data), ("test", test_data)):
            arrays.update({f"X_{name}": pair[0], f"y_{name}": pair[1]} if pair else {})
        return data, fingerprint(arrays)

    # The processes of a job check that they agree on the settings and the data.
    data, given = together(comm, checked, facts=lambda found: _facts(trainer, found[1]))
    if verbose is None:
        verbose = sys.stderr.isatty() or "ipykernel" in sys.modules
    verbose = verbose and comm.rank == 0
    progress = reporting.Progress(trainer.epochs, quiet=not verbose)
    callbacks = [lambda trainer, record: progress.on_epoch(record), *callbacks]
    if out is None:
        try:
            return trainer.fit_checked(data, callbacks=callbacks, on_batch=progress.on_batch)
        finally:
            progress.close()
    run = RunDir(out, writer=comm.rank == 0)

    def open_here():
        resuming = resume and run.path.is_dir()
        run.open() if resuming else run.create(overwrite=overwrite)
        return run.load_latest() if resuming else None

    with run:  # its lock is released (and its file removed) however training ends
        ckpt = on_root(comm, open_here)
        if ckpt is not None:
            check_unchanged(ckpt["meta"].get("data_fingerprint"), given,
                            what="the data passed to fit", accept=accept_changed_data)  # fmt: skip
            resume_from(trainer, ckpt)
        try:
            return train_in_run(trainer, run, data, scaler=scaler, callbacks=callbacks,
                                on_batch=progress.on_batch, notify=progress.message,
                                fingerprint=given)  # fmt: skip
        finally:
            progress.close()


def _facts(trainer: Trainer, given: dict | None) -> dict:
    """What the processes of a job must agree on: settings, model and data."""
    model = {f"the model's {name}": value for name, value in trainer.model.config().items()}
    data = given["sha256"] if given else None
    return {**trainer.config.to_dict(), **model, "the data's fingerprint": data}


def resume_from(trainer: Trainer, ckpt: dict) -> None:
    """Load a checkpoint into ``trainer``, refusing a model or settings that differ from the run's."""
    state = trainer_state(ckpt)
    saved_model, ours = ckpt["meta"].get("model") or {}, trainer.model.config()
    differ = sorted(
        k for k in ours.keys() | saved_model.keys() if ours.get(k) != saved_model.get(k)
    )
    if differ:
        name = differ[0]
        raise ConfigError(
            f"the model differs from the run's in {ckpt['path']}: {name} is "
            f"{ours.get(name)!r} here but {saved_model.get(name)!r} in the run"
        )
    conflicts = setting_conflicts(trainer.config, state["meta"].get("config") or {})
    if conflicts:
        name, here, there = conflicts[0]
        raise ConfigError(
            f"{name} is {here!r} here but {there!r} in the run being resumed; only "
            f"{', '.join(RESUMABLE)} may change on resume"
        )
    trainer.load_state_dict(state)


def setting_conflicts(config: TrainConfig, saved: dict) -> list[tuple]:
    """(name, ours, saved) for each setting that differs from a run's, other than :data:`RESUMABLE`."""
    ours = config.to_dict()
    return [
        (name, ours[name], saved.get(name))
        for name in ours
        if name not in RESUMABLE and name in saved and saved[name] != ours[name]
    ]


def train_in_run(trainer: Trainer, run: RunDir, checked: FitData, *,
                 scaler: Scaler | None = None, classes=None, data: dict | None = None,
                 info: dict | None = None, callbacks: Sequence[Callable] = (), on_batch=None,
                 notify: Callable[[str], None] | None = None,
                 fingerprint: dict | None = None) -> list[dict]:  # fmt: skip
    """:meth:`Trainer.fit_checked` that leaves a run directory behind: config, metrics,
    checkpoints, curves. ``checked`` is :meth:`Trainer.check_data`'s, so bad data are refused
    before the run is made.

    A checkpoint of the starting epoch is written first, so the run can always be resumed; then
    one every ``checkpoint_every`` epochs and at the end. SIGINT and SIGTERM are deferred to the
    next step boundary (:class:`~xpmlp.train.signals.DeferredStop`); on an interrupt the last completed
    epoch is saved, and curves.png drawn from the epochs so far, before
    :class:`~xpmlp.train.signals.Interrupted` propagates. ``data`` (where the data
    came from) goes into the checkpoints, ``info`` into config.json, ``fingerprint`` (the data's,
    :mod:`xpmlp.data.fingerprint`) into both, and ``notify(text)`` hears what the user should
    know (a skipped plot). In a job, rank 0 writes, and a failed write raises on every rank.
    """
    model, config, comm = trainer.model, trainer.config, trainer.comm

    def save() -> None:
        run.save(trainer.state_dict(), model=model, data=data, scaler=scaler, classes=classes,
                 keep=config.keep_checkpoints, fingerprint=fingerprint)  # fmt: skip

    def start() -> None:
        run.write_config({
            "train": config.to_dict(), "model": model.config(), "data": data,
            "data_fingerprint": fingerprint,
            "scaling": scaler.method if scaler is not None else None,
            "device": model.backend.spec, "device_name": model.backend.device_name(),
            "processes": comm.size, **(info or {}),
        })  # fmt: skip
        run.write_metrics(trainer.history)
        if run.writer:
            reporting.plotting_available()  # an interrupt then costs only the drawing
        latest = run.latest()
        if latest is None or latest.name != checkpoint_name(trainer.epoch):
            save()

    def after_epoch(trainer: Trainer, record: dict) -> None:
        due = record["epoch"] % config.checkpoint_every == 0
        due = due or trainer.done or trainer.stop_requested

        def write() -> None:
            if due:
                save()
            run.append_metrics(record)

        on_root(comm, write)  # a failed write ends every process of a job here, together

    with DeferredStop() as stop:
        on_root(comm, start)
        trainer.stop_signal = stop
        try:
            trainer.fit_checked(checked, callbacks=[after_epoch, *callbacks], on_batch=on_batch)
        except KeyboardInterrupt:
            on_root(comm, save)
            _plot_so_far(trainer, run)
            raise
        finally:
            trainer.stop_signal = None
        plotted = _plot(trainer, run)
        if not plotted and notify is not None:
            hint = install_hint("matplotlib>=3.11", "plot")
            notify(f"matplotlib is not installed: curves.png skipped ({hint})")
        stop.check()  # a signal during the plot: everything is saved; report the interrupt
    return trainer.history


def _plot(trainer: Trainer, run: RunDir) -> bool:
    return run.plot(trainer.history, title=_title(trainer), best_epoch=_best_epoch(trainer))


def _plot_so_far(trainer: Trainer, run: RunDir) -> None:
    """curves.png of an interrupted run's completed epochs. Its checkpoint is saved already, so
    a failed plot, or a second Ctrl-C to skip it, costs only the plot."""
    if not trainer.history:
        return
    try:
        _plot(trainer, run)
    except (Exception, KeyboardInterrupt):
        pass


def _title(trainer: Trainer) -> str:
    model, c = trainer.model, trainer.config
    sizes = "-".join(map(str, model.layer_sizes))
    return (f"{sizes} {model.activation.name}, {c.optimizer} lr {c.lr:g} ({c.schedule}), "
            f"batch {c.batch_size}")  # fmt: skip


def _best_epoch(trainer: Trainer) -> int | None:
    """The epoch early stopping kept, else the one with the lowest validation loss."""
    if trainer.config.early_stopping is not None and trainer.best["epoch"]:
        return int(trainer.best["epoch"])
    scored = [r for r in trainer.history if r.get("val_loss") is not None]
    return min(scored, key=lambda r: r["val_loss"])["epoch"] if scored else None


def resumed_settings(flags: dict, ckpt: dict):
    """Settings of a resumed run: the checkpoint's, with the few flags that may change applied;
    any other explicit flag that differs from the run's setting is refused."""
    state = trainer_state(ckpt)
    meta = ckpt["meta"]
    try:
        train = TrainConfig.from_dict(state["meta"]["config"])
        data = DataConfig.from_dict(meta.get("data") or {})
        model = dict(meta["model"])
        saved = {**train.to_dict(), **data.to_dict(), **model,
                 "hidden": list(model["layer_sizes"][1:-1]), "no_download": not data.download}  # fmt: skip
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{ckpt['path']} has malformed settings ({exc})") from None
    for name, value in flags.items():
        if name in RESUME_FLAGS or name not in saved:
            continue
        if name in ("dataset", "test_dataset"):
            value = DataConfig(**{name: value}).absolute().to_dict()[name]
        if name == "grad_shards" and value != saved[name]:
            raise ConfigError(
                f"the run was trained with {saved[name]} gradient shard(s) (processes) and this "
                f"job has {value}; resume it with mpiexec -n {saved[name]} or --grad-shards "
                f"{saved[name]}"
            )
        if value != saved[name]:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {value} differs from the resumed run's {saved[name]}; a resumed run keeps "
                f"its settings (only --{', --'.join(f.replace('_', '-') for f in RESUMABLE)}, "
                "--device and --data-dir may change)"
            )
    train = train.replace(**{k: flags[k] for k in RESUMABLE if k in flags})
    data = data.replace(
        data_dir=flags.get("data_dir", data.data_dir),
        download=not flags.get("no_download", not data.download),
    ).absolute()
    return train, data
