"""A run's data from its DataConfig: loaded, checked, labels mapped to classes, split and scaled.

Shared by ``xpmlp train``, ``evaluate`` and ``predict`` (and the estimators to come).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import datasets, userdata
from ..data.fingerprint import fingerprint
from ..data.inputs import Scaler, check_finite, encode_labels, find_classes
from ..errors import DataError
from .config import DataConfig


def label_column(text):
    return int(text) if isinstance(text, str) and text.lstrip("-").isdigit() else text


def load_data(data: DataConfig):
    """Host arrays (X_train, y_train, X_test, y_test, classes, description), checked; labels are
    as in the files. ``classes`` is known for a built-in dataset, None for files."""
    if data.builtin:
        found = datasets.load_dataset(data.dataset, data_dir=data.data_dir, download=data.download)
        return (found.X_train, found.y_train, found.X_test, found.y_test,
                np.arange(found.n_classes), found.source)  # fmt: skip
    if not os.path.lexists(Path(data.dataset).expanduser()):
        raise datasets.unknown_dataset(data.dataset)
    userdata.check_regular_file(Path(data.dataset).expanduser())  # a directory, a FIFO: said so
    column = label_column(data.label_column)
    X, y = userdata.load_arrays(data.dataset, label_column=column)
    X_test = y_test = None
    if data.test_dataset:
        X_test, y_test = userdata.load_arrays(data.test_dataset, label_column=column)
        if X_test.shape[1] != X.shape[1]:
            raise DataError(
                f"the test data has {X_test.shape[1]} features; the training data has {X.shape[1]}"
            )
    return X, y, X_test, y_test, None, data.dataset


@dataclass(frozen=True)
class Prepared:
    """A run's data, ready for the device: (X, y) pairs with y as output indices."""

    train: tuple
    val: tuple | None
    test: tuple | None
    scaler: Scaler
    classes: np.ndarray
    source: str
    fingerprint: dict  # of the arrays as loaded (see xpmlp.data.fingerprint)


def scaled(scaler: Scaler, X, dtype: str, where: str):
    X = scaler.transform(X, dtype)
    check_finite(X, where=f"{where} after scaling to {dtype}")  # 1e39 is finite in float64 only
    return X


def prepare(data: DataConfig, *, seed: int, dtype: str, scaler: Scaler | None) -> Prepared:
    X, y, X_test, y_test, classes, source = load_data(data)
    loaded = fingerprint({"X": X, "y": y, "X_test": X_test, "y_test": y_test})
    if classes is None:
        classes = find_classes(y, y_test, where=f"the labels of {source}")
    y = encode_labels(y, classes, where=source)
    if y_test is not None:
        y_test = encode_labels(y_test, classes, where=data.test_dataset or source)
    X_train, y_train, X_val, y_val = datasets.train_val_split(X, y, data.val_fraction, seed=seed)
    if len(X_train) == 0:
        raise DataError(f"the training split of {source} is empty")
    scaler = scaler or Scaler.fit(X_train, data.scaling)
    return Prepared(
        train=(scaled(scaler, X_train, dtype, source), y_train),
        val=(scaled(scaler, X_val, dtype, source), y_val) if len(X_val) else None,
        test=(scaled(scaler, X_test, dtype, data.test_dataset or source), y_test)
        if X_test is not None
        else None,
        scaler=scaler, classes=classes, source=source, fingerprint=loaded,
    )  # fmt: skip
