"""Arrays for the scikit-learn estimators (:mod:`xpmlp.sklearn`): in X's namespace, on X's device.

scikit-learn validates host data itself (and device data under ``array_api_dispatch``); without
dispatch a device X is checked here by the same rules, on the device, with one value read back
per check, and labels and weights are moved to X's device rather than through NumPy.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings

import array_api_compat
import numpy as np
from sklearn.exceptions import DataConversionWarning

from ..backend import device_spec_of, get_backend, to_numpy


def on_device_of_X(method):
    """Run ``method(self, X, ...)`` with X's device current (CuPy computes on the current one)."""

    @functools.wraps(method)
    def run(self, X, *args, **kwargs):
        spec = device_spec_of(X)
        with get_backend(spec).activate() if spec else contextlib.nullcontext():
            return method(self, X, *args, **kwargs)

    return run


def namespace(array):
    """The array's Array API namespace; NumPy itself for NumPy arrays and host sequences."""
    if device_spec_of(array) is None:
        return np
    return array_api_compat.array_namespace(array)


def float_dtypes(X) -> tuple:
    """The float dtypes validation may keep, in X's namespace."""
    xp = namespace(X)
    return (xp.float64, xp.float32)


def as_X(X, values):
    """Host values (or another device's) as an array in X's namespace, dtype and device."""
    if device_spec_of(X) is None:
        return np.asarray(values, dtype=X.dtype)
    xp = namespace(X)
    if device_spec_of(values) is None:
        values = np.asarray(values, dtype=np.float64)
    return xp.astype(xp.asarray(values, device=X.device), X.dtype)


def as_output(X, values):
    """The model's outputs as NumPy for NumPy X; else as they are, in X's namespace already."""
    return to_numpy(values) if device_spec_of(X) is None else values


def to_device_of(X, y):
    """Labels on another GPU than X's, moved to X's; anything else as it is."""
    if device_spec_of(y) in (None, device_spec_of(X)):
        return y
    return namespace(X).asarray(y, device=X.device)


def check_X(X, n_features: int | None, name: str):
    """A device X checked as scikit-learn checks host data: 2-d, ``n_features`` columns (when
    given), finite; floats (integers become float64)."""
    xp = namespace(X)
    if X.ndim != 2:
        raise ValueError(f"Expected a 2-dimensional array; got shape {tuple(X.shape)}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, but {name} is expecting {n_features} "
                         "features as input.")  # fmt: skip
    if not xp.isdtype(X.dtype, "real floating"):
        X = xp.astype(X, xp.float64)
    if not bool(xp.all(xp.isfinite(X))):
        raise ValueError("Input X contains NaN or infinity.")
    return X


def check_weights(sample_weight, X):
    """Sample weights for a device X as scikit-learn checks them: None (ones), a number, or n
    finite numbers; in X's dtype, on its device."""
    xp, n = namespace(X), X.shape[0]
    weight = as_X(X, 1.0 if sample_weight is None else sample_weight)
    weight = xp.broadcast_to(weight, (n,)) if weight.ndim == 0 else weight
    if weight.shape != (n,):
        raise ValueError(f"sample_weight.shape == {tuple(weight.shape)}, expected ({n},)!")
    if not bool(xp.all(xp.isfinite(weight))):
        raise ValueError("Input sample_weight contains NaN or infinity.")
    return weight


def take_rows(train, val, X, y, sample_weight):
    """``(X, X_val, y, y_val, sample_weight, sample_weight_val)``: the rows ``train`` and ``val``
    (host indices) of each, gathered in X's namespace, on its device."""
    xp = namespace(X)
    if device_spec_of(X) is not None:
        train, val = (xp.asarray(rows, device=X.device) for rows in (train, val))
        y = y if device_spec_of(y) is not None else xp.asarray(y, device=X.device)

    def take(array, rows):
        return xp.take(array, rows, axis=0)

    return (take(X, train), take(X, val), take(y, train), take(y, val),
            take(sample_weight, train), take(sample_weight, val))  # fmt: skip


def ravel_column(y):
    """A y of shape (n, 1) as shape (n,), with scikit-learn's warning; any other y as it is."""
    if y.ndim != 2 or y.shape[1] != 1:
        return y
    warn(
        "A column-vector y was passed when a 1d array was expected. Please change the shape of "
        "y to (n_samples,), for example using ravel().",
        DataConversionWarning,
    )
    return namespace(y).reshape(y, (-1,))


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn``, attributed to the first caller outside xpmlp (the user's line)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
