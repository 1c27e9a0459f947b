"""Input checks and scaling, in one place: one label rule, one finite check, one row-count check,
and the :class:`Scaler` that a checkpoint carries so new data is scaled like the training data.

Everything here works on host NumPy arrays and raises :class:`~xpmlp.errors.DataError` with one
line saying what is wrong and where.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backend import to_numpy
from ..errors import CheckpointError, ConfigError, DataError
from ..machine import memory_limit

MAX_LABEL = 2**31 - 1  # a label beyond this is surely a mistake
MAX_CLASSES = 10_000
SCALING_METHODS = ("unit", "standard", "none")


def check_labels(
    y, n_classes: int | None = None, *, where: str | None = None, locate=None
) -> np.ndarray:
    """The label rule: whole numbers in ``[0, n_classes)``; without a count (a user's own labels,
    before their classes are found), any whole numbers up to ``MAX_LABEL`` in size.

    Parameters
    ----------
    y : array of shape (n_samples,)
        Integer labels; floats are accepted where every value is a whole number.
    n_classes : int, optional
    where : str, optional
        Where the labels came from, for the message (a file name, ``y_train``).
    locate : callable, optional
        ``locate(row) -> str`` names a row (e.g. ``line 12 of data.csv``); overrides ``where``.

    Returns
    -------
    array of shape (n_samples,), int64

    Raises
    ------
    DataError
        Naming the first bad label and its row, e.g. ``labels must be integers in [0, 10);
        found 12 at row 3047 of train-labels-idx1-ubyte.gz``.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(
            f"labels must be 1-D; found shape {y.shape}" + (f" in {where}" if where else "")
        )
    if y.dtype.kind not in "iuf":
        raise DataError(
            f"labels must be integers; found dtype {y.dtype}" + (f" in {where}" if where else "")
        )
    # a user's own labels may be any whole numbers (-1/+1 too): classes are their sorted values
    low, high = (0, n_classes) if n_classes is not None else (-MAX_LABEL, MAX_LABEL + 1)
    with np.errstate(invalid="ignore"):
        bad = ~(y >= low) | ~(y < high) | (y != np.trunc(y))  # NaN fails every comparison
    if bad.any():
        row = int(np.argmax(bad))
        interval = f"[0, {n_classes})" if n_classes is not None else f"[-{MAX_LABEL}, {MAX_LABEL}]"
        place = locate(row) if locate else f"row {row}" + (f" of {where}" if where else "")
        raise DataError(f"labels must be integers in {interval}; found {_shown(y[row])} at {place}")
    return y.astype(np.int64, copy=False)


def _shown(value) -> str:
    """A label as the user wrote it: -1, not -1.0."""
    value = value.item() if hasattr(value, "item") else value
    whole = isinstance(value, float) and value.is_integer() and abs(value) < 2**53
    return str(int(value)) if whole else f"{value:g}" if isinstance(value, float) else str(value)


def find_classes(*labels, where: str) -> np.ndarray:
    """The classes of a classification problem: the sorted distinct labels (as scikit-learn).

    Output ``k`` of a model stands for ``classes[k]``: labels {0, 1, 2, 99} make four classes,
    not a hundred; text labels {"cat", "dog"} make two.

    Parameters
    ----------
    *labels : arrays of shape (n_i,)
        Label arrays (training, test): text, or whole numbers checked by :func:`check_labels`.
    where : str
        For the message.

    Returns
    -------
    array of shape (n_classes,), int64 or str, sorted
    """
    arrays = [_class_labels(y, where) for y in labels if y is not None]
    if len({y.dtype.kind for y in arrays}) > 1:
        raise DataError(f"{where} are text in one file and numbers in another")
    classes = np.unique(np.concatenate(arrays)) if arrays else np.zeros(0, np.int64)
    if len(classes) < 2:
        raise DataError(
            f"{where} has {len(classes)} distinct label(s); a classifier needs two or more"
        )
    if len(classes) > MAX_CLASSES:
        raise DataError(
            f"{where} has {len(classes):,} distinct labels; xpmlp classifies into at most "
            f"{MAX_CLASSES:,} classes (are these labels a regression target?)"
        )
    return classes


def encode_labels(y, classes, *, where: str) -> np.ndarray:
    """Each label's index in ``classes`` (the model's output), int64 of shape (n_samples,).

    A label that is not one of ``classes`` is a DataError naming it and its row.
    """
    y, classes = _class_labels(y, where), np.asarray(classes)
    shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
    if (y.dtype.kind == "U") != (classes.dtype.kind == "U"):
        kind = ("text", "numbers") if y.dtype.kind == "U" else ("a number", "text")
        raise DataError(
            f"label {y[0].item()!r} at row 0 of {where} is {kind[0]}; the model's classes are "
            f"{kind[1]}: {shown}"
        )
    index = np.minimum(np.searchsorted(classes, y), len(classes) - 1)
    unknown = classes[index] != y
    if unknown.any():
        row = int(np.argmax(unknown))
        raise DataError(
            f"label {y[row].item()!r} at row {row} of {where} is not one of the model's classes "
            f"({shown})"
        )
    return index


def _class_labels(y, where: str) -> np.ndarray:
    """Text labels as they are; numbers checked by :func:`check_labels`."""
    y = np.asarray(y)
    return y if y.dtype.kind == "U" and y.ndim == 1 else check_labels(y, where=where)


def check_finite(X, *, where: str, what: str = "features") -> None:
    """Check that every value of ``X`` (``what``: features, or regression targets) is finite.

    Raises
    ------
    DataError
        Naming the first non-finite value, its column and row, and how many rows have one.
    """
    X = np.asarray(X)
    row = first_nonfinite_row(X)
    if row is not None:
        flat = X.reshape(len(X), -1)
        column = int(np.argmax(~np.isfinite(flat[row])))
        n_bad = int((~np.isfinite(flat)).any(axis=1).sum())
        raise DataError(
            f"{what} must be finite; found {flat[row, column]} in column {column} of row {row}"
            f" of {where} ({n_bad} rows affected)"
        )


def first_nonfinite_row(X: np.ndarray) -> int | None:
    if X.ndim == 0 or X.size == 0 or X.dtype.kind not in "fc":
        return None
    rows = ~np.isfinite(X.reshape(len(X), -1)).all(axis=1)
    return int(np.argmax(rows)) if rows.any() else None


def check_device_finite(xp, X, *, where: str, what: str = "features") -> None:
    """:func:`check_finite` for an array already on a device: one reduction read back (once per
    fit, not per step); the value is looked for on the host only when one is not finite."""
    if not bool(xp.all(xp.isfinite(X))):
        check_finite(to_numpy(X), where=where, what=what)


def check_input_shape(X, n_inputs: int):
    """``X`` as an array (a host sequence becomes NumPy) of real numbers and shape
    (n_samples, n_inputs); a DataError naming the expected and the actual shape otherwise."""
    X = X if hasattr(X, "shape") else np.asarray(X)
    if len(X.shape) != 2 or X.shape[1] != n_inputs:
        raise DataError(f"X must have shape (n_samples, {n_inputs}); got {tuple(X.shape)}")
    if isinstance(X, np.ndarray) and X.dtype.kind not in "biuf":
        raise DataError(f"X has dtype {X.dtype}; expected real numbers")
    return X


def check_rows(X, y, *, where: str | None = None) -> None:
    """Check that features and labels have the same number of rows."""
    n_X, n_y = X.shape[0], y.shape[0]
    if n_X != n_y:
        place = f"{where}: " if where else ""
        raise DataError(f"{place}X has {n_X} rows but y has {n_y} labels")


@dataclass(frozen=True)
class Scaler:
    """Feature scaling ``X_scaled = (X - offset) / factor``, with training-set statistics.

    ``unit`` maps to [0, 1]: uint8 data is divided by 255; other data is min-max scaled per
    feature with the training minimum and maximum (a constant feature maps to 0). ``standard``
    subtracts the training mean and divides by the training standard deviation (a zero deviation
    by 1). ``none`` only converts the dtype.

    Attributes
    ----------
    method : str
    offset, factor : arrays of shape (n_features,), float64
    """

    method: str
    offset: np.ndarray = field(repr=False)
    factor: np.ndarray = field(repr=False)

    @classmethod
    def fit(cls, X_train, method: str = "unit") -> Scaler:
        """Statistics of ``X_train`` (n_samples, n_features) for ``method``."""
        if method not in SCALING_METHODS:
            raise ConfigError(f"scale method must be 'unit', 'standard' or 'none'; got {method!r}")
        X = np.asarray(X_train)
        shape = X.shape[1:]
        if method == "none":
            offset, factor = 0.0, 1.0
        elif method == "unit" and X.dtype == np.uint8:
            offset, factor = 0.0, 255.0
        elif len(X) == 0:
            raise DataError("cannot compute scaling statistics from an empty training set")
        elif method == "unit":
            low, high = X.min(axis=0).astype(np.float64), X.max(axis=0).astype(np.float64)
            offset, factor = low, np.where(high > low, high - low, 1.0)
        else:
            std = X.std(axis=0, dtype=np.float64)
            offset, factor = X.mean(axis=0, dtype=np.float64), np.where(std > 0, std, 1.0)
        return cls(
            method,
            np.broadcast_to(np.asarray(offset, np.float64), shape).copy(),
            np.broadcast_to(np.asarray(factor, np.float64), shape).copy(),
        )

    @property
    def n_features(self) -> int:
        return int(self.offset.size)

    def transform(self, X, dtype=np.float32) -> np.ndarray:
        """``(X - offset) / factor`` as ``dtype``; X of shape (n_samples, n_features)."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise ConfigError(f"scale dtype must be a floating dtype; got {dtype}")
        X = np.asarray(X)
        if X.shape[1:] != self.offset.shape:
            raise DataError(
                f"data to scale has shape {X.shape}; the scaler was fitted on "
                f"(n, {', '.join(map(str, self.offset.shape))}) data"
            )
        with np.errstate(over="ignore"):  # values beyond dtype's range become inf: check after
            return (X.astype(dtype) - self.offset.astype(dtype)) / self.factor.astype(dtype)

    def looks_already_scaled(self, X) -> bool:
        """Whether raw-looking ``X`` is in fact already scaled: a ``unit`` scaler fitted on data
        reaching 2 or more, given data that stays within [-1, 1] (e.g. pixels already / 255)."""
        if self.method != "unit" or X.size == 0:
            return False
        trained_high = float(np.max(self.offset + self.factor))
        return trained_high >= 2.0 and float(np.max(np.abs(X))) <= 1.0

    def state_dict(self) -> dict[str, np.ndarray]:
        """The arrays a checkpoint stores (``scaling/offset``, ``scaling/factor``)."""
        return {"offset": self.offset, "factor": self.factor}

    @classmethod
    def from_state_dict(cls, state: dict, method: str = "unknown") -> Scaler:
        try:
            offset = np.asarray(state["offset"], np.float64)
            factor = np.asarray(state["factor"], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"the checkpoint's scaling is incomplete or not numeric ({exc})"
            ) from None
        if offset.shape != factor.shape or not (
            np.all(np.isfinite(factor)) and np.all(factor != 0)
        ):
            raise CheckpointError("the checkpoint's scaling factors are malformed")
        return cls(method, offset, factor)


def check_device_labels(xp, y, n_classes: int) -> None:
    """:func:`check_labels` for labels already on a device: one reduction read back (once per
    fit, not per step); the rows are looked for on the host only when a label is bad."""
    bad = (y < 0) | (y >= n_classes)
    if xp.isdtype(y.dtype, "real floating"):
        bad = bad | (y != xp.trunc(y)) | xp.isnan(y)
    if bool(xp.any(bad)):
        check_labels(to_numpy(y), n_classes)
        raise DataError(f"labels must be integers in [0, {n_classes})")  # unreachable


def check_labels_on(xp, y, n_classes: int):
    """Labels on the host (checked by :func:`check_labels`, returned as int64) or on xp's device
    (by :func:`check_device_labels`, returned as they are)."""
    if isinstance(y, np.ndarray):
        return check_labels(y, n_classes)
    check_device_labels(xp, y, n_classes)
    return y


# Bytes per parameter a training run holds at once: the float64 initial draw on the host, then
# parameters, gradients, two Adam moments and a scratch buffer.
BYTES_PER_PARAMETER = 8 + 5 * 8


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB" if size < 10 * 2**30 else f"{size / 2**30:,.0f} GiB"


def check_layer_sizes(layer_sizes) -> tuple[int, ...]:
    """``(n_inputs, hidden..., n_outputs)`` as ints, refused when a run could not fit in memory."""
    sizes = tuple(layer_sizes)
    if len(sizes) < 2 or not all(isinstance(s, int | np.integer) and s > 0 for s in sizes):
        raise ConfigError(f"layer_sizes must be at least two positive integers; got {list(sizes)}")
    sizes = tuple(int(s) for s in sizes)
    n_params = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))
    limit = memory_limit()
    if limit is not None and n_params * BYTES_PER_PARAMETER > limit[0]:
        raise ConfigError(
            f"layer sizes {list(sizes)} make {n_params:,} parameters, about "
            f"{_gib(n_params * BYTES_PER_PARAMETER)} to train; {limit[1]} is "
            f"{_gib(limit[0])}; use smaller layers"
        )
    return sizes
