"""What a trained run gives: ``xpmlp evaluate``, ``xpmlp predict`` and ``xpmlp plot``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from ..backend import get_backend, to_numpy
from ..core.model import MLP
from ..data import userdata
from ..data.inputs import Scaler, check_rows, encode_labels
from ..errors import ConfigError, DataError, install_hint
from ..files import write_atomic
from ..train import reporting
from ..train.config import DataConfig
from ..train.marker import run_holding
from ..train.metrics import evaluate
from ..train.prepare import load_data, scaled
from ..train.runs import class_names_of, classes_of, load_model


def check_output(output, inputs) -> None:
    """Refuse an output file inside a run directory (its files are the run's) or one of the
    command's own ``inputs``."""
    output = Path(output)
    run = run_holding(output)
    if run is not None:
        raise ConfigError(f"--output {output} is inside the run directory {run}, whose files "
                          "are the run's; choose a file outside it")  # fmt: skip
    if any(_same_file(output, Path(source)) for source in inputs):
        raise ConfigError(f"--output {output} is a file this command reads; choose another file")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet)
        return False


def scaled_input(X, scaler: Scaler | None, model: MLP, where: str):
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
    X = scaled_input(X, scaler, model, where=f"{args.dataset}")
    y = encode_labels(y, classes, where=f"the labels of {args.dataset}")
    with np.errstate(all="ignore"):  # inputs that overflow the model: said below, in words
        metrics = evaluate(model, X, y)
    if not math.isfinite(metrics["loss"]):
        print(f"xpmlp: warning: the loss on {args.dataset} is {metrics['loss']}: its inputs "
              "overflow the model's float range", file=sys.stderr)  # fmt: skip
    confusion = metrics["confusion_matrix"]
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    names = class_names_of(ckpt, classes, dataset=args.dataset if data.builtin else None)
    result = {
        "checkpoint": str(ckpt["path"]), "dataset": args.dataset, "samples": len(y),
        "loss": metrics["loss"], "accuracy": metrics["accuracy"], "classes": classes.tolist(),
        "class_names": names,
        "per_class_accuracy": per_class.tolist(), "confusion_matrix": confusion.tolist(),
    }  # fmt: skip
    if args.json:  # strict JSON: a NaN loss (an overflowing model) is null
        print(json.dumps(finite_or_none(result), allow_nan=False))
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


def finite_or_none(value):
    """``value`` with every NaN or infinite float inside it (dicts, lists) replaced by None."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cmd_predict(args) -> int:
    model, scaler, ckpt = load_model(args.checkpoint, device=get_backend(args.device))
    if args.output:
        check_output(args.output, [ckpt["path"], args.input])
    classes = classes_of(ckpt, model)
    X = scaled_input(userdata.load_features(args.input), scaler, model, where=str(args.input))
    with np.errstate(all="ignore"):
        probabilities = to_numpy(model.predict_proba(X))
    if not np.isfinite(probabilities).all():
        row = int(np.argmin(np.isfinite(probabilities).all(axis=1)))
        raise DataError(f"the model's outputs for row {row} of {args.input} are not finite: its "
                        "inputs overflow the model's float range; check their scale")  # fmt: skip
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


def cmd_plot(args) -> int:
    check_output(args.output, [Path(name) / "metrics.jsonl" for name in args.runs])
    runs = {name: _records(Path(name), args.metric) for name in args.runs}
    try:
        drawn = reporting.plot_runs(runs, args.metric, args.output)
    except (ValueError, OverflowError) as exc:  # values matplotlib cannot lay out (1e308)
        raise DataError(f"cannot plot {args.metric} of {', '.join(args.runs)}: {exc}") from None
    if not drawn:
        raise ConfigError(
            f"xpmlp plot needs matplotlib: {install_hint('matplotlib>=3.11', 'plot')}"
        )
    print(f"wrote {args.output}")
    return 0


def _records(run: Path, metric: str) -> list[dict]:
    """A run's metrics.jsonl, each line checked: an integer epoch, ``metric`` a finite number."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{run} is not a run directory (no metrics.jsonl)")
    if path.stat().st_size > MAX_METRICS_BYTES:
        raise DataError(f"{path} is {path.stat().st_size:,} bytes, more than a run writes "
                        f"({MAX_METRICS_BYTES:,} at most); is it a metrics file?")  # fmt: skip
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, RecursionError):
            raise DataError(f"line {number} of {path} is not JSON") from None
        if record is None:
            continue
        epoch, value = (record.get("epoch"), record.get(metric)) if isinstance(record, dict) else (None, None)  # fmt: skip
        if not isinstance(record, dict) or not _is_number(epoch, integer=True):
            raise DataError(f"line {number} of {path} has no integer epoch")
        if value is not None and not _is_number(value):
            raise DataError(f"{metric} on line {number} of {path} is {_excerpt(value)}; expected a "
                            "finite number")  # fmt: skip
        records.append(record)
    if not any(record.get(metric) is not None for record in records):
        raise DataError(f"{path} has no values of {metric!r}")
    return records


MAX_METRICS_BYTES = 256 * 2**20


def _is_number(value, *, integer: bool = False) -> bool:
    kind = int if integer else (int, float)
    return isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)


def _excerpt(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
