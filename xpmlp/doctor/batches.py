"""The user's minibatches: every row a row of X, with its own label."""

from __future__ import annotations

import numpy as np

from .report import Finding, Report


def check_batches(batches, X, y) -> Report:
    """Check that every row of every ``(X_batch, y_batch)`` is a row of ``X`` carrying its own
    label (integers, or one-hot rows): the bug of X and y shuffled with different permutations,
    or only one of them shuffled."""
    X, y = np.asarray(X), np.asarray(y)
    labels = y.argmax(axis=1) if y.ndim == 2 else y
    where = {}
    for index, row in enumerate(X):
        where.setdefault(row.tobytes(), set()).add(labels[index].item())
    seen = wrong = foreign = 0
    for Xb, yb in batches:
        Xb, yb = np.asarray(Xb, dtype=X.dtype), np.asarray(yb)
        yb = yb.argmax(axis=1) if yb.ndim == 2 else yb
        for row, label in zip(Xb, yb):
            seen += 1
            found = where.get(row.tobytes())
            foreign += found is None
            wrong += found is not None and label.item() not in found
    findings = []
    if foreign:
        findings.append(Finding("not_recognised", f"{foreign} of {seen} batch rows are not rows "
                                "of X (scaled or copied after X was given?)"))  # fmt: skip
    if wrong:
        findings.append(Finding("labels_misaligned", f"{wrong} of {seen} batch rows carry "
                                "another row's label: shuffle X and y with the same permutation "
                                "(order = rng.permutation(n); X[order], y[order])"))  # fmt: skip
    return Report(findings, "batches")
