"""The user's forward pass against xpmlp's, on ordinary inputs and on logits in the thousands."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..core import ops
from ..core.model import MLP
from .report import Finding, Report, close, relative_error

FLOORED_RELU = 1e-3  # max(0.001, z): a "ReLU" that never outputs 0


def check_forward(
    forward: Callable,
    layer_sizes: Sequence[int],
    *,
    activation: str = "relu",
    returns: str = "probabilities",
    n_samples: int = 8,
    seed: int = 0,
) -> Report:
    """Check ``forward(weights, biases, X) -> probabilities`` (or ``returns="logits"``).

    It runs on ordinary inputs, then with the output layer scaled so the logits reach the
    thousands (where ``exp`` overflows unless the row maximum is subtracted first, and where an
    ``np.clip`` patch changes the result), and names ``softmax_unstable`` or
    ``activation_forward_wrong`` (recognised: ReLU with a floor ``max(0.001, z)``, leaky ReLU,
    and tanh/sigmoid exchanged).
    """
    model = MLP(layer_sizes, activation=activation, dtype="float64", seed=seed)
    X = np.random.default_rng(seed).normal(size=(n_samples, model.layer_sizes[0]))
    for scale in (1.0, 1e3):
        weights = [np.array(model.params[f"layers.{i}.weight"]) for i in range(model.n_layers)]
        biases = [np.array(model.params[f"layers.{i}.bias"]) for i in range(model.n_layers)]
        weights[-1] = weights[-1] * scale
        try:
            with np.errstate(all="ignore"):
                got = np.asarray(forward(weights, biases, X.copy()), dtype=np.float64)
        except Exception as exc:
            return Report([Finding("crashed", f"forward raised {type(exc).__name__}: {exc}")],
                          "forward pass")  # fmt: skip
        finding = _forward_finding(got, weights, biases, X, model.activation.name, returns, scale)
        if finding is not None:
            return Report([finding], "forward pass")
    return Report(subject="forward pass")


def _reference_forward(weights, biases, X, activation: str, returns: str):
    act = ops.get_activation(activation) if activation != "floored_relu" else None
    a = X
    for W, b in zip(weights[:-1], biases[:-1]):
        z = a @ W + b
        a = np.maximum(z, FLOORED_RELU) if act is None else act.forward(np, z)
    logits = a @ weights[-1] + biases[-1]
    return logits if returns == "logits" else ops.softmax(np, logits)


def _forward_finding(got, weights, biases, X, activation: str, returns: str, scale: float):
    want = _reference_forward(weights, biases, X, activation, returns)
    if got.shape != want.shape:
        return Finding("shape_mismatch", f"your forward returns shape {got.shape}; expected "
                       f"{want.shape} (samples, classes)")  # fmt: skip
    if close(got, want):
        return None
    if scale > 1 and (not np.all(np.isfinite(got)) or returns == "probabilities"):
        how = "overflows to inf/NaN" if not np.all(np.isfinite(got)) else "gives wrong values"
        return Finding("softmax_unstable", f"with logits in the thousands your softmax {how}: "
                       "subtract each row's maximum before exp (softmax is unchanged by it), "
                       "instead of clipping")  # fmt: skip
    if not np.all(np.isfinite(got)):
        return Finding("non_finite", "your forward pass returns NaN or inf on ordinary inputs")
    for other in ("floored_relu", "leaky_relu", "tanh", "sigmoid", "relu"):
        if other != activation and close(got, _reference_forward(weights, biases, X, other,
                                                                  returns)):  # fmt: skip
            said = "max(0.001, z)" if other == "floored_relu" else other
            return Finding("activation_forward_wrong", f"your hidden layers compute {said} where "
                           f"{activation} was said: {_activation_advice(activation)}")  # fmt: skip
    return Finding("not_recognised", "your forward pass differs from xpmlp's by "
                   f"{relative_error(got, want):.3g} relative on ordinary inputs")  # fmt: skip


def _activation_advice(activation: str) -> str:
    return {
        "relu": "ReLU is max(0, z), exactly 0 for negative z",
        "tanh": "use np.tanh(z)",
        "sigmoid": "sigmoid is 1 / (1 + exp(-z))",
    }.get(activation, f"use xpmlp's {activation}")
