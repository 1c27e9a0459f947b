"""The user's forward pass against xpmlp's: on ordinary inputs with non-zero biases, then with
logits in the thousands (scaled, and shifted by a constant that softmax does not see), where
``exp`` overflows unless each row's maximum is subtracted first and where any ``np.clip``, floor
or missing shift changes the probabilities."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ..core import ops
from .layouts import Layout, described, user_arguments
from .reference import FLOORED_RELU, Probe, forward, make_probe
from .report import Finding, Report, close, relative_error

SHIFT = 1000.0  # added to every logit of a row: softmax is unchanged, a naive exp overflows
HIDDEN_VARIANTS = ("floored_relu", "leaky_relu", "tanh", "sigmoid", "relu")


def check_forward(
    forward_fn: Callable,
    layer_sizes: Sequence[int],
    *,
    activation: str = "relu",
    returns: str = "probabilities",
    output: str = "softmax",
    bias: bool = True,
    layout: str = "rows",
    bias_layout: str = "separate",
    n_samples: int = 8,
    seed: int = 0,
) -> Report:
    """Check ``forward(weights, biases, X) -> probabilities`` (or ``returns="logits"``).

    Names ``softmax_unstable`` (overflow, or an ``np.clip`` that bites), ``forward_ignores_biases``
    and ``activation_forward_wrong`` (recognised: ReLU with a floor ``max(0.001, z)``, leaky ReLU,
    tanh and sigmoid exchanged). ``output`` is ``softmax``, ``sigmoid`` or ``identity``; the
    layouts are :func:`~xpmlp.doctor.check_gradients`'.
    """
    base = make_probe(layer_sizes, activation=activation, output=output, bias=bias, seed=seed,
                      n_samples=n_samples)  # fmt: skip
    shape = Layout(layout=layout, bias_layout=bias_layout if bias else "none")
    for probe in (base, _scaled(base, 1e3), _shifted(base)):
        try:
            with np.errstate(all="ignore"):
                result = _call(forward_fn, probe, shape)
        except Exception as exc:
            return Report([Finding("crashed", f"forward raised {type(exc).__name__}: {exc}")],
                          "forward pass")  # fmt: skip
        got = _as_array(result, shape)
        if got is None:
            return Report([Finding("unreadable_return", f"forward returned {described(result)}; "
                                   "expected an array of shape (samples, outputs)")], "forward pass")  # fmt: skip
        finding = _finding(got, probe, returns, large=probe is not base)
        if finding is not None:
            return Report([finding], "forward pass")
    return Report(subject="forward pass")


def _call(forward_fn, probe: Probe, shape: Layout):
    weights, biases, X, _ = user_arguments(probe, shape)
    return forward_fn(weights, biases, X)


def _as_array(result, shape: Layout) -> np.ndarray | None:
    """The user's outputs in xpmlp's layout, or None where they are no array of numbers."""
    try:
        got = None if result is None else np.asarray(result, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return got.T if got is not None and shape.layout == "columns" and got.ndim == 2 else got


def _scaled(probe: Probe, factor: float) -> Probe:
    weights = [*probe.weights[:-1], probe.weights[-1] * factor]
    return _with(probe, weights=weights)


def _shifted(probe: Probe) -> Probe:
    if not probe.bias or probe.output != "softmax":
        return _scaled(probe, 10.0)
    return _with(probe, biases=[*probe.biases[:-1], probe.biases[-1] + SHIFT])


def _with(probe: Probe, **changes) -> Probe:
    new = dataclasses.replace(probe, **changes)
    forward(new)
    return new


def _reference(probe: Probe, returns: str, hidden: str | None = None, *, bias=True):
    """The outputs xpmlp computes, with another hidden activation or without biases."""
    act = None if hidden == "floored_relu" else ops.get_activation(hidden or probe.activation)
    a = probe.X
    for i, (W, b) in enumerate(zip(probe.weights, probe.biases)):
        z = a @ W + (b if bias else 0)
        if i == probe.n_layers - 1:
            break
        a = np.maximum(z, FLOORED_RELU) if act is None else act.forward(np, z)
    if returns == "logits" or probe.output == "identity":
        return z
    if probe.output == "softmax":
        return ops.softmax(np, z)
    with np.errstate(over="ignore"):  # exp(-z) overflows for z << 0, where the sigmoid is 0
        return 1 / (1 + np.exp(-z))


def _finding(got, probe: Probe, returns: str, *, large: bool) -> Finding | None:
    want = _reference(probe, returns)
    if got.shape != want.shape:
        return Finding("shape_mismatch", f"your forward returns shape {got.shape}; expected "
                       f"{want.shape} (samples, outputs)")  # fmt: skip
    if close(got, want):
        return None
    if large and (not np.all(np.isfinite(got)) or returns == "probabilities"):
        how = "overflows to inf/NaN" if not np.all(np.isfinite(got)) else "gives wrong values"
        return Finding("softmax_unstable", f"with logits in the thousands your softmax {how}: "
                       "subtract each row's maximum before exp (softmax is unchanged by it), "
                       "instead of clipping")  # fmt: skip
    if not np.all(np.isfinite(got)):
        return Finding("non_finite", "your forward pass returns NaN or inf on ordinary inputs")
    if probe.bias and close(got, _reference(probe, returns, bias=False)):
        return Finding("forward_ignores_biases", "your forward pass leaves out the biases: "
                       "z = a @ W + b in every layer")  # fmt: skip
    for other in HIDDEN_VARIANTS:
        if other != probe.activation and close(got, _reference(probe, returns, other)):
            said = "max(0.001, z)" if other == "floored_relu" else other
            return Finding("activation_forward_wrong", f"your hidden layers compute {said} where "
                           f"{probe.activation} was said: {_advice(probe.activation)}")  # fmt: skip
    return Finding("not_recognised", "your forward pass differs from xpmlp's by "
                   f"{relative_error(got, want):.3g} relative on ordinary inputs")  # fmt: skip


def _advice(activation: str) -> str:
    return {
        "relu": "ReLU is max(0, z), exactly 0 for negative z",
        "tanh": "use np.tanh(z)",
        "sigmoid": "sigmoid is 1 / (1 + exp(-z))",
    }.get(activation, f"use xpmlp's {activation}")
