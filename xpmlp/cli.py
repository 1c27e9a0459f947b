"""The command line: ``xpmlp train``, ``xpmlp evaluate``, ``xpmlp predict``.

Every user error (bad flag, file, shape, label, NaN) ends as one line on stderr and exit
status 2; Ctrl-C during training writes a checkpoint of the last completed epoch and exits 130.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import checkpoint, datasets, reporting
from ._version import __version__
from .backend import get_backend, to_numpy
from .errors import ConfigError, DataError, XpmlpError
from .files import write_atomic
from .model import MLP
from .ops import ACTIVATIONS
from .optim import OPTIMIZERS, SCHEDULES
from .training import Trainer, evaluate

BUILTIN = ("fashion-mnist", "mnist")


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xpmlp", description="Train and use multilayer perceptrons on NumPy or CuPy."
    )
    parser.add_argument("--version", action="version", version=f"xpmlp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    train = commands.add_parser("train", help="train a model", formatter_class=fmt)
    data = train.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="fashion-mnist",
        help="fashion-mnist, mnist, or a .npz (arrays X, y) / .csv file",
    )
    data.add_argument("--test-dataset", help="a .npz/.csv test set for --dataset FILE")
    data.add_argument("--data-dir", help="directory holding the IDX files of a built-in dataset")
    data.add_argument(
        "--label-column", default="label", help="label column of a CSV file (name or index)"
    )
    data.add_argument(
        "--scaling",
        choices=("unit", "standard", "none"),
        default="unit",
        help="input scaling, with statistics of the training split",
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="fraction of the training set held out for validation, split with --seed",
    )
    data.add_argument(
        "--no-download", action="store_true", help="never download a built-in dataset"
    )
    model = train.add_argument_group("model")
    model.add_argument(
        "--hidden", type=_hidden, default=[300, 300], help="hidden layer sizes, e.g. 300,300"
    )
    model.add_argument(
        "--activation", choices=tuple(ACTIVATIONS), default="relu", help="hidden-layer activation"
    )
    model.add_argument("--dropout", type=float, default=0.0, help="dropout rate on hidden layers")
    model.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="floating-point precision",
    )
    optim = train.add_argument_group("optimization")
    optim.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="update rule")
    optim.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    optim.add_argument("--momentum", type=float, default=0.9, help="for momentum and nesterov")
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="decoupled decay for adamw; an L2 penalty in the loss otherwise",
    )
    optim.add_argument(
        "--schedule", choices=SCHEDULES, default="constant", help="learning-rate schedule"
    )
    optim.add_argument(
        "--warmup-epochs", type=float, default=0.0, help="linear learning-rate warm-up"
    )
    optim.add_argument(
        "--step-epochs", type=_positive_int, default=10, help="step schedule: decay every N epochs"
    )
    optim.add_argument("--gamma", type=float, default=0.1, help="step schedule: decay factor")
    optim.add_argument(
        "--clip-norm", type=float, default=None, help="clip gradients to this global norm"
    )
    optim.add_argument("--batch-size", type=_positive_int, default=128, help="minibatch size")
    optim.add_argument(
        "--epochs", type=_positive_int, default=None, help="number of epochs (default 10)"
    )
    optim.add_argument(
        "--early-stopping",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N epochs without a better validation loss; restore the best weights",
    )
    optim.add_argument(
        "--seed", type=int, default=0, help="seeds weights, split, batch order and dropout"
    )
    run = train.add_argument_group("run")
    run.add_argument("--device", default="auto", help="cpu, gpu, cuda:N or auto")
    run.add_argument("--out", help="run directory (default runs/<dataset>-<time>)")
    run.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=1,
        metavar="N",
        help="write a checkpoint every N epochs (and at the end)",
    )
    run.add_argument(
        "--keep-checkpoints", type=_positive_int, default=3, help="how many checkpoints to keep"
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="DIR|FILE",
        help="continue from the newest checkpoint in DIR (default: --out) or from FILE",
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")

    evaluate_cmd = commands.add_parser(
        "evaluate", help="evaluate a checkpoint", formatter_class=fmt
    )
    evaluate_cmd.add_argument("checkpoint", help="checkpoint file or run directory")
    evaluate_cmd.add_argument(
        "--dataset", default="fashion-mnist", help="built-in name or .npz/.csv file"
    )
    evaluate_cmd.add_argument("--data-dir", help="directory holding the IDX files")
    evaluate_cmd.add_argument("--label-column", default="label", help="label column of a CSV file")
    evaluate_cmd.add_argument(
        "--split", choices=("test", "train"), default="test", help="built-in datasets"
    )
    evaluate_cmd.add_argument("--device", default="auto", help="cpu, gpu, cuda:N or auto")
    evaluate_cmd.add_argument("--no-download", action="store_true", help="never download a dataset")
    evaluate_cmd.add_argument("--json", action="store_true", help="print the results as JSON")

    predict_cmd = commands.add_parser(
        "predict", help="predict labels with a checkpoint", formatter_class=fmt
    )
    predict_cmd.add_argument("checkpoint", help="checkpoint file or run directory")
    predict_cmd.add_argument("input", help=".npz with an array X of shape (n, n_features)")
    predict_cmd.add_argument(
        "--output", help="write labels and probabilities to this .npz instead of stdout"
    )
    predict_cmd.add_argument("--device", default="auto", help="cpu, gpu, cuda:N or auto")
    return parser


# ---------------------------------------------------------------------- data


def _load_split_data(source: str, args):
    """Host arrays (X_train, y_train, X_test, y_test, n_classes, description)."""
    if source in BUILTIN:
        data = datasets.load_dataset(source, data_dir=args.data_dir, download=not args.no_download)
        return data.X_train, data.y_train, data.X_test, data.y_test, data.n_classes, data.source
    X, y = datasets.load_arrays(source, label_column=_label_column(args.label_column))
    X_test = y_test = None
    if getattr(args, "test_dataset", None):
        X_test, y_test = datasets.load_arrays(
            args.test_dataset, label_column=_label_column(args.label_column)
        )
    n_classes = int(max(y.max(initial=0), -1 if y_test is None else y_test.max(initial=0))) + 1
    return X, y, X_test, y_test, n_classes, source


def _label_column(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def _prepare_training_data(args, seed: int):
    X, y, X_test, y_test, n_classes, source = _load_split_data(args.dataset, args)
    for name, features, labels in (("training", X, y), ("test", X_test, y_test)):
        if features is not None:
            datasets.check_finite(features, where=f"the {name} data")
            datasets.check_labels(labels, n_classes, where=f"the {name} labels")
            if len(features) != len(labels):
                raise DataError(
                    f"the {name} data has {len(features)} rows but {len(labels)} labels"
                )
    if X_test is not None and X_test.shape[1] != X.shape[1]:
        raise DataError(
            f"the test data has {X_test.shape[1]} features; the training data has {X.shape[1]}"
        )
    X_train, y_train, X_val, y_val = datasets.train_val_split(X, y, args.val_fraction, seed=seed)
    offset, factor = datasets.scaling_stats(X_train, args.scaling)
    prepared = {
        "train": (datasets.apply_scaling(X_train, offset, factor, args.dtype), y_train),
        "val": (datasets.apply_scaling(X_val, offset, factor, args.dtype), y_val)
        if len(X_val)
        else None,
        "test": (datasets.apply_scaling(X_test, offset, factor, args.dtype), y_test)
        if X_test is not None
        else None,
    }
    scaling = {
        "offset": np.broadcast_to(offset, X.shape[1:]).copy(),
        "factor": np.broadcast_to(factor, X.shape[1:]).copy(),
    }
    return prepared, scaling, n_classes, source


# ---------------------------------------------------------------------- train


def _run_settings(args) -> dict:
    return {
        "dataset": args.dataset, "test_dataset": args.test_dataset, "data_dir": args.data_dir,
        "label_column": args.label_column, "scaling": args.scaling, "val_fraction": args.val_fraction,
        "hidden": args.hidden, "activation": args.activation, "dropout": args.dropout, "dtype": args.dtype,
        "optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
        "weight_decay": args.weight_decay, "schedule": args.schedule, "warmup_epochs": args.warmup_epochs,
        "step_epochs": args.step_epochs, "gamma": args.gamma, "clip_norm": args.clip_norm,
        "batch_size": args.batch_size, "epochs": args.epochs or 10, "early_stopping": args.early_stopping,
        "seed": args.seed, "checkpoint_every": args.checkpoint_every,
        "keep_checkpoints": args.keep_checkpoints,
    }  # fmt: skip


def _restore_settings(args, saved: dict) -> None:
    """On resume the checkpoint's settings win, except the run length and where it runs."""
    epochs = args.epochs
    for key, value in saved.items():
        setattr(args, key, value)
    if epochs is not None:
        args.epochs = epochs


def _versions(backend) -> dict:
    versions = {"xpmlp": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in ("array_api_compat", "cupy", "torch", "array_api_strict"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


def cmd_train(args) -> int:
    resumed = None
    if args.resume is not None:
        where = args.resume or args.out
        if not where:
            raise ConfigError("--resume needs a run directory or checkpoint file (or --out)")
        resumed = checkpoint.load(where)
        _restore_settings(args, resumed["meta"]["run"])
        if args.out is None:
            path = Path(resumed["path"]).parent
            args.out = str(path.parent if path.name == "checkpoints" else path)
    settings = _run_settings(args)
    out = Path(args.out or f"runs/{Path(args.dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    backend = get_backend(args.device)
    data, scaling, n_classes, source = _prepare_training_data(args, settings["seed"])
    X_train, y_train = data["train"]
    l2 = settings["weight_decay"] if settings["optimizer"] != "adamw" else 0.0
    model = MLP(
        [X_train.shape[1], *settings["hidden"], n_classes], activation=settings["activation"],
        dropout=settings["dropout"], weight_decay=l2, device=backend, dtype=settings["dtype"],
        seed=settings["seed"],
    )  # fmt: skip
    trainer = Trainer(
        model, optimizer=settings["optimizer"], lr=settings["lr"], momentum=settings["momentum"],
        weight_decay=settings["weight_decay"] if settings["optimizer"] == "adamw" else 0.0,
        batch_size=settings["batch_size"], epochs=settings["epochs"], schedule=settings["schedule"],
        warmup_epochs=settings["warmup_epochs"], step_epochs=settings["step_epochs"],
        gamma=settings["gamma"], clip_norm=settings["clip_norm"],
        early_stopping=settings["early_stopping"], seed=settings["seed"],
    )  # fmt: skip
    if resumed is not None:
        trainer.load_state_dict(_trainer_state(resumed))
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    reporting.write_json(out / "config.json", {
        "settings": settings, "model": model.config(), "device": backend.spec,
        "device_name": backend.device_name(), "data_source": source, "n_train": len(y_train),
        "versions": _versions(backend), "resumed_from": str(resumed["path"]) if resumed else None,
    })  # fmt: skip
    reporting.write_metrics(out / "metrics.jsonl", trainer.history)
    progress = reporting.Progress(settings["epochs"], quiet=args.quiet)
    progress.message(
        f"training {model} on {len(y_train):,} samples from {source}; run directory {out}"
    )
    run = _RunFiles(out, settings, model, scaling)

    def after_epoch(trainer, record):
        progress.on_epoch(record)
        last = trainer.epoch >= trainer.epochs or trainer.stop_requested
        if record["epoch"] % settings["checkpoint_every"] == 0 or last:
            run.save(trainer)
        reporting.append_metrics(out / "metrics.jsonl", record)

    try:
        trainer.fit(X_train, y_train, validation_data=data["val"], test_data=data["test"],
                    callbacks=[after_epoch], on_batch=progress.on_batch)  # fmt: skip
    except KeyboardInterrupt:
        progress.close()
        path = run.save(trainer)
        print(f"xpmlp: interrupted; saved epoch {trainer.epoch} to {path}; continue with --resume {out}",
              file=sys.stderr)  # fmt: skip
        return 130
    finally:
        progress.close()
    if not reporting.plot_curves(trainer.history, out / "curves.png"):
        progress.message(
            "matplotlib is not installed: curves.png skipped (pip install 'xpmlp[plot]')"
        )
    _print_summary(trainer.history, out)
    return 0


def _trainer_state(resumed: dict) -> dict:
    return {
        "meta": resumed["meta"]["trainer"],
        "params": resumed["params"],
        "optimizer": resumed["optimizer"],
        "best_params": resumed["best"],
    }


class _RunFiles:
    """Writes checkpoints of one run directory."""

    def __init__(self, out: Path, settings: dict, model: MLP, scaling: dict):
        self.out, self.settings, self.model, self.scaling = out, settings, model, scaling

    def save(self, trainer: Trainer) -> Path:
        state = trainer.state_dict()
        meta = {
            "model": self.model.config(),
            "run": self.settings,
            "trainer": state["meta"],
            "rng": {"seed": self.settings["seed"],
                    "streams": "numpy.random.default_rng([seed, purpose, epoch]); resumes at epoch "
                               f"{trainer.epoch}"},
        }  # fmt: skip
        arrays = {"params": state["params"], "optimizer": state["optimizer"],
                  "best": state["best_params"], "scaling": self.scaling}  # fmt: skip
        folder = self.out / "checkpoints"
        path = checkpoint.save(
            folder / checkpoint.checkpoint_name(trainer.epoch), meta=meta, arrays=arrays
        )
        checkpoint.prune(folder, self.settings["keep_checkpoints"])
        return path


def _print_summary(history: list[dict], out: Path) -> None:
    if not history:
        print(f"nothing to train: the run in {out} has already reached its last epoch")
        return
    last = history[-1]
    parts = [
        f"{k} {last[k]:.4f}"
        for k in ("train_accuracy", "val_accuracy", "test_accuracy")
        if last.get(k) is not None
    ]
    print(f"done: epoch {last['epoch']}  " + "  ".join(parts) + f"  -> {out}")


# ---------------------------------------------------------------------- evaluate and predict


def _model_from_checkpoint(path, device: str):
    """The model of a checkpoint, with its best weights when the run used early stopping."""
    ckpt = checkpoint.load(path)
    model = MLP.from_config(ckpt["meta"]["model"], device=device)
    model.load_state_dict(ckpt["best"] or ckpt["params"])
    return model, ckpt


def _scale_input(X, ckpt, model, where: str):
    datasets.check_finite(X, where=where)
    if X.ndim != 2 or X.shape[1] != model.layer_sizes[0]:
        raise DataError(
            f"{where} has shape {X.shape}; the checkpoint's model expects (n, {model.layer_sizes[0]}) inputs"
        )
    return datasets.apply_scaling(
        X, ckpt["scaling"]["offset"], ckpt["scaling"]["factor"], model.dtype_name
    )


def cmd_evaluate(args) -> int:
    model, ckpt = _model_from_checkpoint(args.checkpoint, args.device)
    X_train, y_train, X_test, y_test, _, source = _load_split_data(args.dataset, args)
    if args.dataset in BUILTIN and args.split == "test":
        X, y = X_test, y_test
    else:
        X, y = X_train, y_train
    X = _scale_input(X, ckpt, model, where=f"{args.dataset}")
    datasets.check_labels(y, model.n_outputs, where=f"the labels of {args.dataset}")
    metrics = evaluate(model, X, y)
    predicted = to_numpy(model.predict(X))
    k = model.n_outputs
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    result = {
        "checkpoint": str(ckpt["path"]), "dataset": args.dataset, "samples": len(y),
        "loss": metrics["loss"], "accuracy": metrics["accuracy"],
        "per_class_accuracy": per_class.tolist(), "confusion_matrix": confusion.tolist(),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['checkpoint']} on {args.dataset} ({len(y)} samples): "
          f"loss {metrics['loss']:.4f}  accuracy {metrics['accuracy']:.4f}")  # fmt: skip
    print("per-class accuracy: " + "  ".join(f"{c}:{a:.3f}" for c, a in enumerate(per_class)))
    print("confusion matrix (rows: true class, columns: predicted):")
    width = max(len(str(confusion.max())), 3)
    for row in confusion:
        print(" ".join(f"{v:>{width}}" for v in row))
    return 0


def cmd_predict(args) -> int:
    model, ckpt = _model_from_checkpoint(args.checkpoint, args.device)
    path = Path(args.input)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            if "X" not in archive.files:
                raise DataError(
                    f"{path} has no array named X (it has {', '.join(archive.files) or 'none'})"
                )
            X = archive["X"]
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    X = _scale_input(X, ckpt, model, where=str(path))
    probabilities = to_numpy(model.predict_proba(X))
    labels = probabilities.argmax(axis=1)
    if args.output:
        write_atomic(args.output, lambda h: np.savez(h, labels=labels, probabilities=probabilities))
        print(f"wrote {len(labels)} predictions to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write("".join(f"{label}\n" for label in labels))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except XpmlpError as exc:
        print(f"xpmlp: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"xpmlp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xpmlp: interrupted", file=sys.stderr)
        return 130
