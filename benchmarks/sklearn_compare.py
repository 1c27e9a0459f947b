"""xpmlp.sklearn.MLPClassifier beside scikit-learn's own, on the same data with the same settings.

    python benchmarks/sklearn_compare.py [--device cpu|gpu] [--rows 20000] [--epochs 20]
                                         [--repeats 3] [--json PATH]

Fashion-MNIST (pixels / 255, as float64 and as float32; both estimators train in X's
precision), one hidden layer of 100 ReLU units, Adam at scikit-learn's defaults, batch 200, a
fixed number of epochs (``tol=0``: no early stop), random_state 0. Fits are interleaved (ours,
theirs, ours, ...) and the median fit time is reported with the test accuracy of the last fit.
With ``--device gpu`` ours is given CuPy arrays (copied there before the clock starts) and trains
on the GPU; scikit-learn's trains on the CPU, as it must. A fit ends with the weights read back
(``coefs_``), so its time includes the GPU's work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args()
    from xpmlp import DeviceError, get_backend

    try:
        place = get_backend(args.device).asarray if args.device == "gpu" else (lambda a, dtype: a)
    except DeviceError as exc:
        print(f"sklearn_compare.py: --device gpu: {exc}", file=sys.stderr)
        return 2

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as Theirs

    from xpmlp.data.datasets import load_dataset
    from xpmlp.sklearn import MLPClassifier as Ours

    warnings.simplefilter("ignore", ConvergenceWarning)
    data = load_dataset("fashion-mnist", download=False)
    X = data.X_train[: args.rows].reshape(args.rows, -1) / 255.0
    y = data.y_train[: args.rows]
    X_test = data.X_test.reshape(len(data.y_test), -1) / 255.0
    settings = dict(hidden_layer_sizes=(100,), batch_size=200, max_iter=args.epochs, tol=0.0,
                    random_state=0)  # fmt: skip
    contestants = {"xpmlp.sklearn": Ours, "sklearn.neural_network": Theirs}
    seconds, accuracy = {}, {}
    for dtype in ("float64", "float32"):
        Xd, X_testd = X.astype(dtype), X_test.astype(dtype)
        inputs = {"xpmlp.sklearn": (place(Xd, dtype), place(X_testd, dtype)),
                  "sklearn.neural_network": (Xd, X_testd)}  # fmt: skip
        for _ in range(args.repeats):
            for name, cls in contestants.items():
                model, (X_fit, X_score) = cls(**settings), inputs[name]
                start = time.perf_counter()
                model.fit(X_fit, y)
                seconds.setdefault(f"{name} {dtype}", []).append(time.perf_counter() - start)
                accuracy[f"{name} {dtype}"] = float(model.score(X_score, data.y_test))
    lines = ["| estimator | X dtype | fit seconds (median) | test accuracy | sklearn's time ÷ this |",
             "|---|---|--:|--:|--:|"]  # fmt: skip
    for key in seconds:
        name, dtype = key.split()
        base = statistics.median(seconds[f"sklearn.neural_network {dtype}"])
        median = statistics.median(seconds[key])
        lines.append(f"| {name} | {dtype} | {median:.2f} | {accuracy[key]:.4f} | "
                     f"{base / median:.2f} |")  # fmt: skip
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({
            "settings": {**settings, "rows": args.rows, "epochs": args.epochs,
                         "device": args.device},
            "cpus": os.cpu_count(), "seconds": seconds, "accuracy": accuracy, "markdown": lines,
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
