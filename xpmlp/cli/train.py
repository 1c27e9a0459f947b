"""``xpmlp train``: a new run, or a resumed one, in one process or one of an MPI job.

Ctrl-C or SIGTERM during training saves the last completed epoch and exits 130 or 143.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from ..core.model import MLP
from ..data.fingerprint import check_unchanged
from ..errors import ConfigError, DataError, XpmlpError
from ..train import reporting
from ..train.config import DataConfig, TrainConfig
from ..train.distributed import (
    backend_for,
    communicator,
    describe,
    limit_blas_threads,
    on_root,
    together,
)
from ..train.fitting import resume_from, resumed_settings, train_in_run
from ..train.prepare import Prepared, prepare
from ..train.runs import RunDir, model_of, scaler_of
from ..train.trainer import Trainer
from .parser import DATA_FLAGS, DEFAULT_HIDDEN, TRAIN_FLAGS, defaults

PEER_GRACE_S = 2.0  # how long a process whose MPI call failed waits to be ended by the launcher


def explicit_flags(args) -> dict:
    """The train flags given on the command line (parsed defaults are None)."""
    return {k: v for k, v in vars(args).items() if v is not None and k != "command"}


def _new_run(flags: dict):
    """Settings of a new run from the flags: (TrainConfig, DataConfig, model settings)."""
    default = defaults()
    train = TrainConfig(**{k: flags[k] for k in TRAIN_FLAGS if k in flags})
    data = DataConfig(**{k: flags[k] for k in DATA_FLAGS if k in flags},
                      download=not flags.get("no_download", False)).absolute()  # fmt: skip
    model = {k: flags.get(k, default[k]) for k in ("activation", "dropout", "dtype", "l2")}
    model["hidden"] = list(flags.get("hidden", DEFAULT_HIDDEN))
    return train, data, model


def cmd_train(args) -> int:
    comm = communicator(args.distributed or "auto", reduce=args.reduce or "ordered")
    if comm.size == 1:
        return _cmd_train(args, comm)
    try:
        return _cmd_train(args, comm)
    except (XpmlpError, KeyboardInterrupt):  # met by every process alike (see distributed.py)
        raise
    except Exception as exc:  # this process's own: say it here, and end the job's other ones
        if comm.failed_communicating(exc):  # another process failed and says so: the launcher
            time.sleep(PEER_GRACE_S)  # is ending the job; only if it does not, say it here
        said = describe(exc).partition("\n")[0]
        print(f"xpmlp: error: {said} (on rank {comm.rank}; every process of the job is ended)",
              file=sys.stderr, flush=True)  # fmt: skip
        comm.abort(2)
        return 2  # not reached: abort ends this process too


def _cmd_train(args, comm) -> int:
    limit_blas_threads(comm)
    flags = explicit_flags(args)
    if comm.size > 1:  # one gradient shard per process
        if flags.setdefault("grad_shards", comm.size) != comm.size:
            raise ConfigError(f"--grad-shards {flags['grad_shards']} differs from the {comm.size} "
                              "processes of this job, each of which computes one shard")  # fmt: skip
    opened = {}  # on rank 0: the run directory is read, locked and written there only
    path, ckpt = on_root(comm, lambda: _open_run(args, flags, opened))
    run = opened.get("run") or RunDir(path, writer=False)
    with run:
        # Every process loads the data and builds the model; they then check, in one exchange,
        # that none failed and that they agree on the flags and the data's fingerprint.
        ready = together(comm, lambda: _set_up(args, flags, ckpt, comm, run.path),
                         facts=lambda ready: _facts(flags, ready))  # fmt: skip
        if ready is None:
            return 0
        trainer, prepared, data = ready
        if ckpt is None:
            on_root(comm, lambda: run.create(overwrite=bool(args.overwrite)) and None)
        return _train(trainer, run, prepared, data, quiet=bool(args.quiet) or comm.rank != 0)


def _facts(flags: dict, ready) -> dict:
    found = {"--" + name.replace("_", "-"): value for name, value in flags.items()}
    if ready is not None:
        found["the data's fingerprint"] = ready[1].fingerprint["sha256"]
    return found


def _set_up(args, flags: dict, ckpt, comm, path: Path):
    """(trainer, prepared data, data config) of the run, or None when a resumed one has nothing
    left to do. Writes nothing."""
    if ckpt is not None:
        train, data = resumed_settings(flags, ckpt)
        if comm.size < train.grad_shards and comm.rank == 0:
            print(f"xpmlp: the run was trained by {train.grad_shards} processes; this job "
                  f"has {comm.size}, which computes their {train.grad_shards} gradient shards "
                  "itself (the same result)", file=sys.stderr)  # fmt: skip
        state = ckpt["meta"]["trainer"]  # a malformed one is refused by resume_from below
        epoch = state.get("epoch") if isinstance(state.get("epoch"), int) else -1
        if epoch >= train.epochs or (epoch >= 0 and state.get("stopped_early") is True):
            how = "stopped early" if state.get("stopped_early") else "finished"
            if comm.rank == 0:
                print(f"the run in {path} has {how} at epoch {state['epoch']}; nothing "
                      "to do (pass a larger --epochs to extend it)")  # fmt: skip
            return None
    else:
        train, data, model_settings = _new_run(flags)
    backend = backend_for(args.device or "auto", comm)
    model = model_of(ckpt, device=backend) if ckpt else None
    dtype = model.dtype_name if model else model_settings["dtype"]
    saved_scaler = scaler_of(ckpt) if ckpt else None
    prepared = prepare(data, seed=train.seed, dtype=dtype, scaler=saved_scaler)
    n_features, n_classes = prepared.train[0].shape[1], len(prepared.classes)
    if model is None:
        model = MLP([n_features, *model_settings.pop("hidden"), n_classes],
                    device=backend, seed=train.seed, **model_settings)  # fmt: skip
    else:
        check_unchanged(ckpt["meta"].get("data_fingerprint"), prepared.fingerprint,
                        what=f"the data in {prepared.source}",
                        accept=bool(args.accept_changed_data))  # fmt: skip
        saved = ckpt["meta"].get("classes")
        if saved is not None and saved != prepared.classes.tolist():
            raise DataError(f"the labels of {prepared.source} make other classes than the "
                            "run's; resume it with the data it was trained on")  # fmt: skip
        sizes = model.layer_sizes
        if (sizes[0], sizes[-1]) != (n_features, n_classes):
            raise DataError(f"{prepared.source} has {n_features} features and {n_classes} "
                            f"classes; the run's model has {sizes[0]} and {sizes[-1]}")  # fmt: skip
    trainer = Trainer(model, train, comm=comm)
    if ckpt is not None:
        resume_from(trainer, ckpt)
    return trainer, prepared, data


def _open_run(args, flags: dict, opened: dict):
    """(run directory path, newest checkpoint or None); the directory, opened and locked for a
    resume or checked for a new run, goes into ``opened["run"]``."""
    resuming = args.resume is not None
    if resuming:
        where = args.resume or args.out
        if not where:
            raise ConfigError("--resume needs a run directory (or --out)")
        if args.out and args.resume and Path(args.out).resolve() != Path(args.resume).resolve():
            raise ConfigError(f"--resume {args.resume} and --out {args.out} name different runs")
        if Path(where).is_file():
            raise ConfigError(f"--resume takes a run directory; {where} is a file")
        if Path(where).is_dir():
            run = RunDir(where).open()  # refuses a directory that is not a run
            try:
                ckpt = run.load_latest()
            except BaseException:
                run.close()  # releases the lock and removes its file
                raise
            if ckpt is not None:
                opened["run"] = run
                return str(run.path), ckpt
            run.close()
        # killed before its first checkpoint, or never started: start it
        print(f"xpmlp: no checkpoint in {where} yet; starting the run there", file=sys.stderr)
        args.out, args.overwrite = where, True  # a run without a checkpoint holds nothing
    _, data, _ = _new_run(flags)
    run = RunDir(args.out or f"runs/{Path(data.dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    run.check_new(overwrite=bool(args.overwrite))
    opened["run"] = run
    return str(run.path), None


def _train(trainer, run, prepared: Prepared, data: DataConfig, *, quiet: bool) -> int:
    X_train, y_train = prepared.train
    heard = {n["code"] for r in trainer.history for n in r.get("notes", ())}
    progress = reporting.Progress(trainer.epochs, quiet=quiet, heard=heard)
    size = trainer.comm.size
    processes = f", on {size} MPI processes" if size > 1 else ""
    what = (f"resuming {trainer.model} at epoch {trainer.epoch + 1} of {trainer.epochs}"
            if trainer.epoch else f"training {trainer.model}")  # fmt: skip
    progress.message(f"{what} on {len(y_train):,} samples from {prepared.source}{processes}; "
                     f"run directory {run.path}")  # fmt: skip
    try:
        checked = trainer.check_data(X_train, y_train, validation_data=prepared.val,
                                     test_data=prepared.test)  # fmt: skip
        train_in_run(
            trainer, run, checked, scaler=prepared.scaler, classes=prepared.classes,
            data=data.to_dict(), info={"data_source": prepared.source, "n_train": len(y_train)},
            callbacks=[lambda trainer, record: progress.on_epoch(record)],
            on_batch=progress.on_batch, notify=progress.message, fingerprint=prepared.fingerprint,
        )  # fmt: skip
    except KeyboardInterrupt as exc:
        progress.close()
        if run.writer:
            print(f"xpmlp: interrupted; saved epoch {trainer.epoch}; continue with --resume "
                  f"{run.path}", file=sys.stderr)  # fmt: skip
        return 128 + getattr(exc, "signum", signal.SIGINT)
    finally:
        progress.close()
    if run.writer:
        _print_summary(trainer, run.path)
    return 0


def _print_summary(trainer: Trainer, out: Path) -> None:
    """The last line: the epoch whose weights the run ends with (the best one after early
    stopping, which says when it fired)."""
    last = trainer.history[-1]
    kept = last
    if trainer.stopped_early and trainer.best["params"] is not None:
        kept = trainer.history[trainer.best["epoch"] - 1]
        print(f"early stopping: no better validation loss for {trainer.config.early_stopping} "
              f"epochs after epoch {kept['epoch']}; its weights are restored "
              f"(epoch {last['epoch']} was the last trained)", file=sys.stderr)  # fmt: skip
    parts = [
        f"{k} {kept[k]:.4f}"
        for k in ("train_accuracy", "val_accuracy", "test_accuracy")
        if kept.get(k) is not None
    ]
    print(f"done: epoch {kept['epoch']}  " + "  ".join(parts) + f"  -> {out}")
