"""The layouts users write, turned into xpmlp's and back: row-major (samples × features, W of
shape (fan_in, fan_out)) or column-major (features × samples, W of shape (fan_out, fan_in)); biases
in their own list, absent, or folded into W as its first or last row (column); a function that
returns the gradient, the step it adds to the weights, or the weights after the step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .reference import Probe
from .report import Finding

LAYOUTS = ("rows", "columns")
BIAS_LAYOUTS = ("separate", "none", "folded_first", "folded_last")
RETURNS = ("gradient", "update", "updated")


@dataclass(frozen=True)
class Layout:
    layout: str = "rows"
    bias_layout: str = "separate"
    labels: str = "onehot"
    returns: str = "gradient"
    lr: float = 1.0

    def __post_init__(self):
        for value, allowed, what in ((self.layout, LAYOUTS, "layout"),
                                     (self.bias_layout, BIAS_LAYOUTS, "bias layout"),
                                     (self.labels, ("onehot", "int"), "labels"),
                                     (self.returns, RETURNS, "returns")):  # fmt: skip
            if value not in allowed:
                raise ConfigError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")

    @property
    def folded(self) -> bool:
        return self.bias_layout.startswith("folded")


def user_arguments(probe: Probe, shape: Layout) -> tuple:
    """(weights, biases, X, Y) as the user's code expects them, fresh copies."""
    columns = shape.layout == "columns"
    weights = [W.T.copy() if columns else W.copy() for W in probe.weights]
    biases = [b.reshape(-1, 1).copy() if columns else b.copy() for b in probe.biases]
    if shape.folded:
        weights = [_folded(W, b, shape) for W, b in zip(weights, biases)]
    biases = biases if shape.bias_layout == "separate" else None
    X = probe.X.T.copy() if columns else probe.X.copy()
    Y = probe.y.copy() if probe.output == "softmax" and shape.labels == "int" else probe.T.copy()
    if columns and Y.ndim == 2:
        Y = Y.T.copy()
    return weights, biases, X, Y


def _folded(W, b, shape: Layout):
    """W with its bias as the first or last row (column-major: column)."""
    rows = shape.layout == "rows"
    bias = b.reshape(1, -1) if rows else b.reshape(-1, 1)
    parts = [bias, W] if shape.bias_layout == "folded_first" else [W, bias]
    return np.concatenate(parts, axis=0 if rows else 1)


def call_user(grads, probe: Probe, shape: Layout) -> tuple[dict, Finding | None]:
    """The user's gradients in xpmlp's layout, by name; or a finding saying why not."""
    try:
        result = grads(*user_arguments(probe, shape))
    except Exception as exc:  # their code: say what it raised
        return {}, Finding("crashed", f"grads raised {type(exc).__name__}: {exc}")
    try:
        dweights, dbiases = _split(result, probe.n_layers)
        got = from_user(dweights, dbiases, probe, shape)
    except (TypeError, ValueError, IndexError) as exc:
        return {}, Finding("unreadable_return", f"grads returned {described(result)}; expected "
                           f"(dweights, dbiases), lists of arrays ({exc})")  # fmt: skip
    return got, None


def _split(result, n_layers: int):
    if isinstance(result, tuple | list) and len(result) == 2 and not _is_array(result[0]):
        return list(result[0]), None if result[1] is None else list(result[1])
    if isinstance(result, tuple | list) and len(result) == n_layers and all(map(_is_array, result)):
        return list(result), None  # weights only: a network without (separate) biases
    raise TypeError("not a pair of lists")


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or np.isscalar(value)


def described(value) -> str:
    """What a user's function returned, in a few words: "a dict of 3", "a str", "None"."""
    if value is None:
        return "None"
    kind = type(value).__name__
    return f"a {kind}" + (f" of {len(value)}" if isinstance(value, tuple | list | dict) else "")


def from_user(dweights, dbiases, probe: Probe, shape: Layout) -> dict:
    """The user's returned arrays in xpmlp's layout and as gradients, by parameter name."""
    columns, got = shape.layout == "columns", {}
    for i in range(probe.n_layers):
        dW = None if i >= len(dweights) or dweights[i] is None else np.asarray(dweights[i], float)
        db = None
        if shape.folded and dW is not None:
            axis = 1 if columns else 0
            index = 0 if shape.bias_layout == "folded_first" else -1
            db = np.take(dW, index, axis=axis)
            dW = np.delete(dW, index if index == 0 else dW.shape[axis] - 1, axis=axis)
        elif dbiases is not None and i < len(dbiases) and dbiases[i] is not None:
            db = np.asarray(dbiases[i], dtype=float)
        if dW is not None and columns and dW.ndim == 2:
            dW = dW.T
        if db is not None and db.ndim == 2 and 1 in db.shape:
            db = db.reshape(-1)
        got[f"layers.{i}.weight"] = _as_gradient(dW, probe.weights[i], shape)
        if probe.bias:
            got[f"layers.{i}.bias"] = _as_gradient(db, probe.biases[i], shape)
    return got


def _as_gradient(value, parameter, shape: Layout):
    if value is None or shape.returns == "gradient":
        return value
    if value.shape != parameter.shape:
        return value  # the shape check names it
    step = value if shape.returns == "update" else value - parameter
    return -step / shape.lr
