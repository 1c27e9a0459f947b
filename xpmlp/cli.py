"""The command line: ``xpmlp train``, ``xpmlp evaluate``, ``xpmlp predict``.

Every user error (bad flag, file, shape, label, NaN) ends as one line on stderr and exit
status 2; Ctrl-C during training writes a checkpoint of the last completed epoch and exits 130.
The settings and their defaults are :class:`~xpmlp.config.TrainConfig`'s, :class:`DataConfig`'s
and :class:`~xpmlp.model.MLP`'s; the run directory is :class:`~xpmlp.runs.RunDir`.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import reporting, userdata
from ._version import __version__
from .backend import get_backend, to_numpy
from .config import DataConfig, TrainConfig
from .distributed import (
    REDUCTIONS,
    communicator,
    device_for,
    launched_rank,
    limit_blas_threads,
    on_root,
)  # fmt: skip
from .doctor import check_file
from .errors import CheckpointError, ConfigError, DataError, XpmlpError, install_hint
from .files import write_atomic
from .fitting import RESUMABLE, resume_from, resumed_settings, train_in_run
from .inputs import Scaler, check_rows, encode_labels
from .metrics import evaluate
from .model import MLP
from .ops import ACTIVATIONS
from .optim import OPTIMIZERS, SCHEDULES
from .prepare import Prepared, load_data, prepare, scaled
from .runs import RunDir, class_names_of, classes_of, load_model, model_of, scaler_of, versions
from .training import Trainer

DEFAULT_HIDDEN = (300, 300)
MODEL_FLAGS = ("hidden", "activation", "dropout", "dtype", "l2")
TRAIN_FLAGS = tuple(f for f in TrainConfig().to_dict() if f != "shuffle")
DATA_FLAGS = ("dataset", "test_dataset", "data_dir", "label_column", "scaling", "val_fraction")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2."""

    def error(self, message):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers like 300,300; got {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive; got {text!r}")
    return sizes


@functools.cache
def _defaults() -> dict:
    """Every train flag's default, from the one place it is defined."""
    model = {name: p.default for name, p in inspect.signature(MLP).parameters.items()}
    return {
        **TrainConfig().to_dict(), **DataConfig().to_dict(),
        **{name: model[name] for name in ("activation", "dropout", "dtype", "l2")},
        "hidden": ",".join(map(str, DEFAULT_HIDDEN)), "device": "auto",
    }  # fmt: skip


def _add(group, flag: str, help: str, **kwargs) -> None:
    """A flag whose parsed default is None (so an explicit one can be told apart), with the real
    default shown in its help."""
    name = flag.lstrip("-").replace("-", "_")
    default = _defaults().get(name)
    shown = f" (default: {default})" if default is not None else ""
    group.add_argument(flag, default=None, help=help + shown, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xpmlp", description="Train and use multilayer perceptrons on NumPy or CuPy."
    )
    parser.add_argument("--version", action="version", version=f"xpmlp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    train = commands.add_parser("train", help="train a model")
    data = train.add_argument_group("data")
    _add(data, "--dataset", "fashion-mnist, mnist, or a .npz (arrays X, y) / .csv file")
    _add(data, "--test-dataset", "a .npz/.csv test set for --dataset FILE")
    _add(data, "--data-dir", "directory holding the IDX files of a built-in dataset")
    _add(data, "--label-column", "label column of a CSV file (name or index)")
    _add(data, "--scaling", "input scaling, with statistics of the training split",
         choices=("unit", "standard", "none"))  # fmt: skip
    _add(data, "--val-fraction", "fraction of the training set held out for validation, split "
         "with --seed", type=float)  # fmt: skip
    _add(data, "--no-download", "never download a built-in dataset", action="store_true")
    model = train.add_argument_group("model")
    _add(model, "--hidden", "hidden layer sizes, e.g. 300,300", type=_hidden)
    _add(model, "--activation", "hidden-layer activation", choices=tuple(ACTIVATIONS))
    _add(model, "--dropout", "dropout rate on hidden layers", type=float)
    _add(model, "--dtype", "floating-point precision", choices=("float32", "float64"))
    _add(model, "--l2", "L2 penalty l2/2 * sum(W**2) on the weights, in the loss", type=float)
    optim = train.add_argument_group("optimization")
    _add(optim, "--optimizer", "update rule", choices=OPTIMIZERS)
    _add(optim, "--lr", "learning rate", type=float)
    _add(optim, "--momentum", "for momentum and nesterov", type=float)
    _add(optim, "--weight-decay", "AdamW's decoupled weight decay (adamw only; see --l2)",
         type=float)  # fmt: skip
    _add(optim, "--schedule", "learning-rate schedule", choices=SCHEDULES)
    _add(optim, "--warmup-epochs", "linear learning-rate warm-up", type=float)
    _add(optim, "--step-epochs", "step schedule: decay every N epochs", type=_positive_int)
    _add(optim, "--gamma", "step schedule: decay factor", type=float)
    _add(optim, "--clip-norm", "clip gradients to this global norm", type=float)
    _add(optim, "--batch-size", "minibatch size", type=_positive_int)
    _add(optim, "--epochs", "number of epochs", type=_positive_int)
    _add(optim, "--early-stopping", "stop after N epochs without a better validation loss; "
         "restore the best weights", type=_positive_int, metavar="N")  # fmt: skip
    _add(optim, "--seed", "seeds weights, split, batch order and dropout", type=int)
    run = train.add_argument_group("run")
    _add(run, "--device", "cpu, gpu, cuda:N or auto")
    _add(run, "--out", "run directory (default runs/<dataset>-<time>)")
    _add(run, "--checkpoint-every", "write a checkpoint every N epochs (and at the end)",
         type=_positive_int, metavar="N")  # fmt: skip
    _add(run, "--keep-checkpoints", "how many checkpoints to keep", type=_positive_int)
    _add(run, "--overwrite", "replace the run already in --out", action="store_true")
    run.add_argument(
        "--resume", nargs="?", const="", metavar="DIR",
        help="continue the run in DIR (default: --out) from its newest checkpoint; only "
        f"--{', --'.join(f.replace('_', '-') for f in RESUMABLE)}, --device and --data-dir may "
        "change. Without a checkpoint there yet, the run starts (with the flags given), so the "
        "same command is safe to repeat",
    )  # fmt: skip
    _add(run, "--quiet", "no progress output", action="store_true")
    _add(
        run,
        "--distributed",
        "data-parallel over MPI processes (mpiexec -n N xpmlp train ...): "
        "auto (when launched by an MPI launcher), none or mpi",
        choices=("auto", "none", "mpi"),
    )
    _add(
        run,
        "--reduce",
        "how processes sum gradients: ordered (bit-identical to --grad-shards N "
        "in one process) or allreduce (MPI's order)",
        choices=REDUCTIONS,
    )
    _add(
        optim,
        "--grad-shards",
        "cut each batch into N slices and sum their gradients in order, as N processes do",
        type=_positive_int,
        metavar="N",
    )

    # fmt: off
    evaluate_cmd = commands.add_parser("evaluate", help="evaluate a checkpoint", formatter_class=fmt)
    evaluate_cmd.add_argument("checkpoint", help="checkpoint file or run directory")
    evaluate_cmd.add_argument("--dataset", default="fashion-mnist", help="built-in name or .npz/.csv file")
    evaluate_cmd.add_argument("--data-dir", help="directory holding the IDX files")
    evaluate_cmd.add_argument("--label-column", default="label", help="label column of a CSV file")
    evaluate_cmd.add_argument("--split", choices=("test", "train"), default="test", help="built-in datasets")
    evaluate_cmd.add_argument("--device", default="auto", help="cpu, gpu, cuda:N or auto")
    evaluate_cmd.add_argument("--no-download", action="store_true", help="never download a dataset")
    evaluate_cmd.add_argument("--json", action="store_true", help="print the results as JSON")

    predict_cmd = commands.add_parser("predict", help="predict labels with a checkpoint", formatter_class=fmt)
    predict_cmd.add_argument("checkpoint", help="checkpoint file or run directory")
    predict_cmd.add_argument("input", help=".npz with an array X of shape (n, n_features)")
    predict_cmd.add_argument("--output", help="write labels and probabilities to this .npz instead of stdout")
    predict_cmd.add_argument("--device", default="auto", help="cpu, gpu, cuda:N or auto")

    plot_cmd = commands.add_parser("plot", help="overlay a metric of several runs", formatter_class=fmt)
    plot_cmd.add_argument("runs", nargs="+", help="run directories")
    plot_cmd.add_argument("--metric", default="test_loss", help="a metrics.jsonl field: train_loss, val_accuracy, lr, ...")
    plot_cmd.add_argument("--output", default="compare.png", help="the PNG to write")

    doctor_cmd = commands.add_parser("doctor", help="check your own hand-written network's backprop", formatter_class=fmt)
    doctor_cmd.add_argument("file", help="your .py file, with grads(weights, biases, X, Y) and/or forward(weights, biases, X)")
    doctor_cmd.add_argument("--grads", help="name of your gradient function (default grads)")
    doctor_cmd.add_argument("--forward", help="name of your forward function (default forward)")
    doctor_cmd.add_argument("--layer-sizes", type=_hidden, help="e.g. 784,300,10 (default: the file's LAYER_SIZES)")
    doctor_cmd.add_argument("--activation", choices=tuple(ACTIVATIONS), help="hidden activation (default: the file's ACTIVATION, or relu)")
    doctor_cmd.add_argument("--labels", choices=("onehot", "int"), help="what your Y is (default: the file's LABELS, or onehot)")
    doctor_cmd.add_argument("--returns", choices=("gradient", "update"), default="gradient", help="your grads returns the gradient, or the update direction")
    # fmt: on

    device_cmd = commands.add_parser(
        "device", help="check a device: run a kernel and a matmul on it", formatter_class=fmt
    )
    device_cmd.add_argument("--device", default="auto", help="cpu, gpu, cuda:N or auto")
    return parser


# ---------------------------------------------------------------------- train


def _explicit(args) -> dict:
    """The train flags given on the command line (parsed defaults are None)."""
    return {k: v for k, v in vars(args).items() if v is not None and k != "command"}


def _new_run(flags: dict):
    """Settings of a new run from the flags: (TrainConfig, DataConfig, model settings)."""
    defaults = _defaults()
    train = TrainConfig(**{k: flags[k] for k in TRAIN_FLAGS if k in flags})
    data = DataConfig(**{k: flags[k] for k in DATA_FLAGS if k in flags},
                      download=not flags.get("no_download", False)).absolute()  # fmt: skip
    model = {k: flags.get(k, defaults[k]) for k in ("activation", "dropout", "dtype", "l2")}
    model["hidden"] = list(flags.get("hidden", DEFAULT_HIDDEN))
    return train, data, model


def cmd_train(args) -> int:
    comm = communicator(args.distributed or "auto", reduce=args.reduce or "ordered")
    limit_blas_threads(comm)
    flags = _explicit(args)
    if comm.size > 1:  # one gradient shard per process
        if flags.setdefault("grad_shards", comm.size) != comm.size:
            raise ConfigError(f"--grad-shards {flags['grad_shards']} differs from the {comm.size} "
                              "processes of this job, each of which computes one shard")  # fmt: skip
    opened = {}  # on rank 0: the run directory is read, locked and written there only
    path, ckpt = on_root(comm, lambda: _open_run(args, flags, opened))
    run = opened.get("run") or RunDir(path, writer=False)
    with run:
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
                    print(f"the run in {run.path} has {how} at epoch {state['epoch']}; nothing "
                          "to do (pass a larger --epochs to extend it)")  # fmt: skip
                return 0
        else:
            train, data, model_settings = _new_run(flags)
        backend = get_backend(device_for(args.device or "auto", comm))
        model = model_of(ckpt, device=backend) if ckpt else None
        dtype = model.dtype_name if model else model_settings["dtype"]
        saved_scaler = scaler_of(ckpt) if ckpt else None
        prepared = prepare(data, seed=train.seed, dtype=dtype, scaler=saved_scaler)
        n_features, n_classes = prepared.train[0].shape[1], len(prepared.classes)
        if model is None:
            model = MLP([n_features, *model_settings.pop("hidden"), n_classes],
                        device=backend, seed=train.seed, **model_settings)  # fmt: skip
            run.create(overwrite=bool(args.overwrite))
        else:
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
        return _train(trainer, run, prepared, data, quiet=bool(args.quiet) or comm.rank != 0)


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
        resuming = RunDir(where).latest() is not None
        if not resuming:  # killed before its first checkpoint, or never started: start it
            print(f"xpmlp: no checkpoint in {where} yet; starting the run there", file=sys.stderr)
            args.out, args.overwrite = where, True  # a run without a checkpoint holds nothing
    if resuming:
        run = RunDir(where).open()
        try:
            ckpt = run.load_latest()
            if ckpt is None:
                raise CheckpointError(f"no checkpoint found in {run.checkpoints}")
        except BaseException:
            run.close()  # releases the lock and removes its file
            raise
        opened["run"] = run
        return str(run.path), ckpt
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
    progress.message(f"training {trainer.model} on {len(y_train):,} samples from "
                     f"{prepared.source}{processes}; run directory {run.path}")  # fmt: skip
    try:
        checked = trainer.check_data(X_train, y_train, validation_data=prepared.val,
                                     test_data=prepared.test)  # fmt: skip
        train_in_run(
            trainer, run, checked, scaler=prepared.scaler, classes=prepared.classes,
            data=data.to_dict(), info={"data_source": prepared.source, "n_train": len(y_train)},
            callbacks=[lambda trainer, record: progress.on_epoch(record)],
            on_batch=progress.on_batch, notify=progress.message,
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


# ---------------------------------------------------------------------- evaluate and predict


def _scale_input(X, scaler: Scaler | None, model: MLP, where: str):
    if X.ndim != 2 or X.shape[1] != model.layer_sizes[0]:
        raise DataError(
            f"{where} has shape {X.shape}; the checkpoint's model expects (n, {model.layer_sizes[0]}) inputs"
        )
    if scaler is None:
        scaler = Scaler.fit(X[:0], "none")
    elif scaler.looks_already_scaled(X):
        print(f"xpmlp: warning: {where} looks already scaled (values within [{X.min():.3g}, "
              f"{X.max():.3g}]; the model was trained on raw values and scales them itself "
              f"({scaler.method})); pass raw values", file=sys.stderr)  # fmt: skip
    return scaled(scaler, X, model.dtype_name, where)


def cmd_evaluate(args) -> int:
    model, scaler, ckpt = load_model(args.checkpoint, device=get_backend(args.device))
    classes = classes_of(ckpt, model)
    data = DataConfig(dataset=args.dataset, data_dir=args.data_dir, label_column=args.label_column,
                      download=not args.no_download)  # fmt: skip
    X_train, y_train, X_test, y_test, _, source = load_data(data)
    X, y = (X_test, y_test) if data.builtin and args.split == "test" else (X_train, y_train)
    check_rows(X, y, where=args.dataset)
    X = _scale_input(X, scaler, model, where=f"{args.dataset}")
    y = encode_labels(y, classes, where=f"the labels of {args.dataset}")
    metrics = evaluate(model, X, y)
    confusion = metrics["confusion_matrix"]
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    names = class_names_of(ckpt, classes, dataset=args.dataset if data.builtin else None)
    result = {
        "checkpoint": str(ckpt["path"]), "dataset": args.dataset, "samples": len(y),
        "loss": metrics["loss"], "accuracy": metrics["accuracy"], "classes": classes.tolist(),
        "class_names": names,
        "per_class_accuracy": per_class.tolist(), "confusion_matrix": confusion.tolist(),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['checkpoint']} on {args.dataset} ({len(y)} samples): "
          f"loss {metrics['loss']:.4f}  accuracy {metrics['accuracy']:.4f}")  # fmt: skip
    labels = names or [str(c) for c in classes]
    print("per-class accuracy: " + "  ".join(f"{c}:{a:.3f}" for c, a in zip(labels, per_class)))
    print("confusion matrix (rows: true class, columns: predicted; classes " +
          " ".join(map(str, classes)) + "):")  # fmt: skip
    width = max(len(str(confusion.max())), 3)
    for row in confusion:
        print(" ".join(f"{v:>{width}}" for v in row))
    return 0


def cmd_predict(args) -> int:
    model, scaler, ckpt = load_model(args.checkpoint, device=get_backend(args.device))
    classes = classes_of(ckpt, model)
    X = _scale_input(userdata.load_features(args.input), scaler, model, where=str(args.input))
    probabilities = to_numpy(model.predict_proba(X))
    index = probabilities.argmax(axis=1)
    labels = classes[index]  # in the labels' own values
    names = class_names_of(ckpt, classes)
    named = {} if names is None else {"names": np.asarray(names)[index], "class_names": names}
    if args.output:
        write_atomic(args.output, lambda h: np.savez(h, labels=labels, probabilities=probabilities,
                                                     classes=classes, **named))  # fmt: skip
        print(f"wrote {len(labels)} predictions to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write("".join(f"{label}\n" for label in named.get("names", labels)))
    return 0


def cmd_doctor(args) -> int:
    """Exit 0 when every checked function is right, 1 with the reports when not."""
    reports = check_file(args.file, grads=args.grads, forward=args.forward,
                         layer_sizes=args.layer_sizes, activation=args.activation,
                         labels=args.labels, returns=args.returns)  # fmt: skip
    for name, report in reports.items():
        print(f"{name}: {report}")
    return 0 if all(report.ok for report in reports.values()) else 1


def cmd_device(args) -> int:
    """Resolve the device, run the probe (an elementwise kernel and a matmul), say what it is."""
    backend = get_backend(args.device)
    backend.probe()
    print(f"{backend.spec}: {backend.device_name()} ({backend.name}); probe passed")
    for name, version in versions().items():
        print(f"  {name} {version}")
    return 0


def cmd_plot(args) -> int:
    runs = {}
    for name in args.runs:
        path = Path(name) / "metrics.jsonl"
        if not path.is_file():
            raise DataError(f"{name} is not a run directory (no metrics.jsonl)")
        try:
            runs[name] = [json.loads(line) for line in path.read_text().splitlines() if line]
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not JSON lines: {exc}") from None
        if not any(record.get(args.metric) is not None for record in runs[name]):
            raise DataError(f"{path} has no values of {args.metric!r}")
    if not reporting.plot_runs(runs, args.metric, args.output):
        raise ConfigError(f"xpmlp plot needs matplotlib: {install_hint('matplotlib>=3.11', 'plot')}")
    print(f"wrote {args.output}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "device": cmd_device, "plot": cmd_plot, "doctor": cmd_doctor}  # fmt: skip


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except XpmlpError as exc:
        if launched_rank() == 0:  # every process of a distributed job meets the same error
            print(f"xpmlp: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `xpmlp predict ... | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:
        print(f"xpmlp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("xpmlp: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
