"""The data of one fit, checked once before the first step and put on the model's device.

The rules and messages are the command line's (:mod:`xpmlp.data.inputs`): features finite (the
first bad value named by column and row), labels whole numbers in ``[0, n_outputs)``, as many
labels as rows, and shapes the model can take. Device arrays are checked on their device, one
value read back per check; nothing here runs per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..core.model import MLP
from ..data.inputs import check_device_finite, check_finite, check_rows
from ..errors import DataError


@dataclass(frozen=True)
class FitData:
    """What :meth:`xpmlp.train.trainer.Trainer.fit_checked` trains on: (X, y) pairs on the model's
    device, in its dtype, checked; ``sample_weight`` of shape (n_samples,) or None."""

    train: tuple
    validation: tuple | None = None
    test: tuple | None = None
    sample_weight: Any = None


def check_fit_data(
    model: MLP, X, y, *, validation_data=None, test_data=None, sample_weight=None
) -> FitData:
    """Check the data of a fit as the command line checks its files, and move it to the device.

    Parameters
    ----------
    model : MLP
    X : array of shape (n_samples, n_inputs)
    y : labels of shape (n_samples,) (cross-entropy) or targets (n_samples, n_outputs)
    validation_data, test_data : (X, y) pairs, optional
    sample_weight : array of shape (n_samples,), optional

    Raises
    ------
    DataError
        One line saying what is wrong and where: ``features must be finite; found nan in column
        5 of row 3 of X (1 rows affected)``; a problem of ``validation_data`` or ``test_data``
        starts with that name.
    """
    with model.backend.activate():
        train = _checked_pair(model, X, y)
        if train[0].shape[0] == 0:
            raise DataError("the training set is empty")
        weights = _checked_weights(model, sample_weight, train[0].shape[0])
        validation = _checked_set(model, validation_data, "validation_data")
        test = _checked_set(model, test_data, "test_data")
    return FitData(train, validation, test, weights)


def _checked_set(model: MLP, data, name: str) -> tuple | None:
    """An (X, y) pair checked as the training data, its name in front of any message."""
    if data is None:
        return None
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise DataError(f"{name} must be an (X, y) pair; got {type(data).__name__}")
    try:
        return _checked_pair(model, *data)
    except DataError as err:
        raise DataError(f"{name}: {err}") from None


def _checked_pair(model: MLP, X, y) -> tuple:
    given_X, given_y = X, y
    with np.errstate(over="ignore"):  # 1e39 becomes inf in float32: the finite check names it
        X, y = model.as_input(X), model.as_target(y)
    check_rows(X, y)
    _check_finite(model, given_X, X, where="X")
    if model.loss_name != "cross_entropy":
        _check_finite(model, given_y, y, where="y", what="targets")
    return X, y


def _check_finite(model: MLP, given, array, *, where: str, what: str = "features") -> None:
    """``array`` (``given``, in the model's dtype) finite; a bad value is named as given where it
    is bad there (1e39 is finite as given in float64 and infinite in float32)."""
    converted = f"{where} converted to {model.dtype_name}"
    try:
        check_device_finite(model.xp, array, where=converted, what=what)
    except DataError:
        check_finite(to_numpy(given), where=where, what=what)
        raise


def _checked_weights(model: MLP, weights, n: int):
    """Sample weights on the device, checked there with one read: n finite values >= 0, not all
    zero."""
    if weights is None:
        return None
    xp = model.xp
    if model.backend.owns(weights):
        weights = xp.astype(weights, model.dtype, copy=False)
    else:
        weights = model.backend.asarray(weights, model.dtype)
    if tuple(weights.shape) != (n,):
        raise DataError(f"sample_weight must be {n} finite values >= 0")
    valid = xp.all(xp.isfinite(weights)) & xp.all(weights >= 0)
    valid, nonzero = to_numpy(xp.stack([valid, xp.any(weights != 0)])).tolist()
    if not valid:
        raise DataError(f"sample_weight must be {n} finite values >= 0")
    if not nonzero:
        raise DataError("sample_weight is zero everywhere: nothing to learn from")
    return weights
