"""The command line's flags: every subcommand's parser, with each train flag's default taken
from the one place it is defined (:class:`~xpmlp.train.config.TrainConfig`,
:class:`~xpmlp.train.config.DataConfig`, :class:`~xpmlp.core.model.MLP`)."""

from __future__ import annotations

import argparse
import functools
import inspect

from .._version import __version__
from ..core.model import MLP
from ..core.ops import ACTIVATIONS
from ..core.optim import OPTIMIZERS, SCHEDULES
from ..doctor.userfile import TIMEOUT_S
from ..errors import ConfigError
from ..train.config import DataConfig, TrainConfig
from ..train.distributed import REDUCTIONS
from ..train.fitting import RESUMABLE

DEFAULT_HIDDEN = (300, 300)
MODEL_FLAGS = ("hidden", "activation", "dropout", "dtype", "l2")
TRAIN_FLAGS = tuple(f for f in TrainConfig().to_dict() if f != "shuffle")
DATA_FLAGS = ("dataset", "test_dataset", "data_dir", "label_column", "scaling", "val_fraction")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2."""

    def error(self, message):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number; got {text}")
    return value


def layer_sizes(text: str) -> list[int]:
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
def defaults() -> dict:
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
    default = defaults().get(name)
    shown = f" (default: {default})" if default is not None else ""
    group.add_argument(flag, default=None, help=help + shown, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="xpmlp", description="Train and use multilayer perceptrons on NumPy or CuPy."
    )
    parser.add_argument("--version", action="version", version=f"xpmlp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
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
    _add(model, "--hidden", "hidden layer sizes, e.g. 300,300", type=layer_sizes)
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
    _add(optim, "--step-epochs", "step schedule: decay every N epochs", type=positive_int)
    _add(optim, "--gamma", "step schedule: decay factor", type=float)
    _add(optim, "--clip-norm", "clip gradients to this global norm", type=float)
    _add(optim, "--batch-size", "minibatch size", type=positive_int)
    _add(optim, "--epochs", "number of epochs", type=positive_int)
    _add(optim, "--early-stopping", "stop after N epochs without a better validation loss; "
         "restore the best weights", type=positive_int, metavar="N")  # fmt: skip
    _add(optim, "--seed", "seeds weights, split, batch order and dropout", type=int)
    run = train.add_argument_group("run")
    _add(run, "--device", "cpu, gpu, cuda:N or auto")
    _add(run, "--out", "run directory (default runs/<dataset>-<time>)")
    _add(run, "--checkpoint-every", "write a checkpoint every N epochs (and at the end)",
         type=positive_int, metavar="N")  # fmt: skip
    _add(run, "--keep-checkpoints", "how many checkpoints to keep", type=positive_int)
    _add(run, "--overwrite", "replace the run already in --out", action="store_true")
    run.add_argument(
        "--resume", nargs="?", const="", metavar="DIR",
        help="continue the run in DIR (default: --out) from its newest checkpoint; only "
        f"--{', --'.join(f.replace('_', '-') for f in RESUMABLE)}, --device and --data-dir may "
        "change. Without a checkpoint there yet, the run starts (with the flags given), so the "
        "same command is safe to repeat",
    )  # fmt: skip
    _add(run, "--accept-changed-data", "resume on data other than the run was trained on "
         "(its fingerprint, recorded at the start, differs)", action="store_true")  # fmt: skip
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
        type=positive_int,
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
    doctor_cmd.add_argument("--layer-sizes", type=layer_sizes, help="e.g. 784,300,10 (default: the file's LAYER_SIZES)")
    doctor_cmd.add_argument("--activation", choices=tuple(ACTIVATIONS), help="hidden activation (default: the file's ACTIVATION, or relu)")
    doctor_cmd.add_argument("--labels", choices=("onehot", "int"), help="what your Y is (default: the file's LABELS, or onehot)")
    doctor_cmd.add_argument("--loss", help="name of your loss(weights, biases, X, Y) function: gradients checked against its central differences (default: loss, if the file has one)")
    doctor_cmd.add_argument("--output", choices=("softmax", "sigmoid", "identity"), help="output layer and loss: softmax + cross-entropy, sigmoid + binary cross-entropy, identity + squared error (default: the file's OUTPUT, or softmax)")
    doctor_cmd.add_argument("--no-bias", dest="bias", action="store_false", default=None, help="your layers have no biases: biases is None (default: the file's BIAS, or True)")
    doctor_cmd.add_argument("--layout", choices=("rows", "columns"), help="rows: X (samples, features), W (fan_in, fan_out); columns: X (features, samples), W (fan_out, fan_in) (default: the file's LAYOUT, or rows)")
    doctor_cmd.add_argument("--bias-layout", choices=("separate", "folded_first", "folded_last"), help="biases in their own list, or folded into W as its first/last row (column) (default: the file's BIAS_LAYOUT, or separate)")
    doctor_cmd.add_argument("--returns", choices=("gradient", "update", "updated"), help="your grads returns the gradient, the step it adds (-lr * gradient), or the weights after it (default: the file's RETURNS, or gradient)")
    doctor_cmd.add_argument("--timeout", type=positive_number, default=TIMEOUT_S, metavar="SECONDS", help="your file runs in a child process; stop it after this long")
    doctor_cmd.add_argument("--lr", type=float, help="the learning rate of --returns update/updated (default: the file's LR, or 1)")
    # fmt: on

    device_cmd = commands.add_parser(
        "device", help="check a device: run a kernel and a matmul on it", formatter_class=fmt
    )
    device_cmd.add_argument("--device", default="auto", help="cpu, gpu, cuda:N or auto")
    return parser
