"""The user's gradients against xpmlp's float64 backward pass, and the bug named.

:func:`check_gradients` hands the user's ``grads(weights, biases, X, Y)`` float64 weights and
data, compares what it returns with xpmlp's own float64 backward pass on the same weights, finds
the first parameter (in backward order) that disagrees, and names the bug by matching the user's
gradients against the reference with each known bug applied, alone and in pairs, then against
per-parameter patterns (transposed, a constant bias vector, a factor n or -1). A correct
implementation is never blamed; what matches nothing is ``not_recognised``, with where it starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from ..core import ops
from ..core.model import MLP
from ..errors import ConfigError
from .report import Finding, Report, close, relative_error

# Bugs that change the whole backward pass: each is matched alone and in pairs.
WHOLE_PASS_BUGS = {
    "sign_flipped": "your gradients have the opposite sign (you return the ascent direction): "
    "return dL/dparameter, and let the update subtract it",
    "missing_batch_mean": "your gradients are n times too large: the loss is the mean over the "
    "batch, so divide the output delta (p - y) by the number of samples",
    "softmax_jacobian_twice": "the softmax Jacobian is multiplied in twice: for softmax followed "
    "by cross-entropy the output delta is already p - y; drop the extra p * (1 - p) factor",
    "activation_derivative_wrong": "the activation's derivative is wrong",
}
DERIVATIVE_ADVICE = {
    "relu": "ReLU's derivative is 1 where the pre-activation is > 0, else 0 (not softplus "
    "log(1 + e^z), and not the activation itself)",
    "tanh": "tanh's derivative is 1 - tanh(z)**2: take it of the layer's output a = tanh(z), "
    "not of the pre-activation z",
    "sigmoid": "sigmoid's derivative is s * (1 - s) with s = sigmoid(z): take it of the output, "
    "not of the pre-activation z",
}


def check_gradients(
    grads: Callable,
    layer_sizes: Sequence[int],
    *,
    activation: str = "relu",
    loss: str = "cross_entropy",
    labels: str = "onehot",
    returns: str = "gradient",
    n_samples: int = 8,
    seed: int = 0,
) -> Report:
    """Check ``grads(weights, biases, X, Y) -> (dweights, dbiases)`` against xpmlp.

    Parameters
    ----------
    grads : callable
        Your backward pass. It receives lists of float64 arrays, ``weights[i]`` of shape
        (fan_in, fan_out) and ``biases[i]`` of shape (fan_out,), X of shape (n, n_in) and Y:
        one-hot rows (n, n_classes) or integer labels (n,), per ``labels``. It returns the
        gradients of the mean loss in the same layout (a bias gradient of shape (1, fan_out)
        is accepted).
    layer_sizes : sequence of int
        ``(n_in, hidden..., n_classes)``.
    activation : str
        The hidden layers' activation: relu, tanh or sigmoid (or any of xpmlp's).
    labels : str
        ``onehot`` or ``int``: what your function expects as Y.
    returns : str
        ``gradient``, or ``update`` when your function returns the step you add to the weights
        (``-gradient``, before the learning rate).
    """
    if loss != "cross_entropy":
        raise ConfigError(f"the doctor checks softmax cross-entropy networks; got loss {loss!r}")
    model = MLP(layer_sizes, activation=activation, loss=loss, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, model.layer_sizes[0]))
    y = np.arange(n_samples) % model.n_outputs
    rng.shuffle(y)
    for i in range(model.n_layers):  # non-zero biases, so a bias bug shows
        model.params[f"layers.{i}.bias"][...] = rng.normal(scale=0.1, size=model.layer_sizes[i + 1])
    weights = [np.array(model.params[f"layers.{i}.weight"]) for i in range(model.n_layers)]
    biases = [np.array(model.params[f"layers.{i}.bias"]) for i in range(model.n_layers)]
    Y = np.eye(model.n_outputs)[y] if labels == "onehot" else y.copy()
    try:
        dweights, dbiases = grads(
            [w.copy() for w in weights], [b.copy() for b in biases], X.copy(), Y
        )
    except Exception as exc:  # their code: say what it raised
        return Report([Finding("crashed", f"grads raised {type(exc).__name__}: {exc}")])
    got = _as_named(model, dweights, dbiases)
    if returns == "update":
        got = {name: -value if value is not None else None for name, value in got.items()}
    return _diagnose(model, got, X, y)


def _as_named(model: MLP, dweights, dbiases) -> dict:
    named = {}
    for i in range(model.n_layers):
        w = dweights[i] if i < len(dweights) else None
        b = dbiases[i] if i < len(dbiases) else None
        named[f"layers.{i}.weight"] = None if w is None else np.asarray(w, dtype=np.float64)
        if b is not None:
            b = np.asarray(b, dtype=np.float64)
            b = b.reshape(-1) if b.ndim == 2 and b.shape[0] == 1 else b
        named[f"layers.{i}.bias"] = b
    return named


def _backprop(model: MLP, X, y, bugs: frozenset = frozenset(), *, trace: dict | None = None):
    """xpmlp's backward pass (through its public forward record), with ``bugs`` applied;
    ``trace`` receives the forward records and each layer's delta."""
    outputs, records = model.forward_record(X)
    trace = {} if trace is None else trace
    trace["records"], trace["deltas"] = records, {}
    n = X.shape[0]
    p = ops.softmax(np, outputs)
    delta = p - np.eye(model.n_outputs)[y]
    if "missing_batch_mean" not in bugs:
        delta = delta / n
    if "softmax_jacobian_twice" in bugs:
        delta = delta * p * (1 - p)
    grads = {}
    for i in reversed(range(model.n_layers)):
        trace["deltas"][i] = delta
        grads[f"layers.{i}.weight"] = records[i].inputs.T @ delta
        grads[f"layers.{i}.bias"] = delta.sum(axis=0)
        if i == 0:
            break
        grad_a = delta @ model.params[f"layers.{i}.weight"].T
        below = records[i - 1]
        if "activation_derivative_wrong" in bugs:
            delta = grad_a * _wrong_derivative(model.activation.name, below.pre_activation)
        else:
            delta = model.activation.backward(np, below.pre_activation, below.activation, grad_a)
    if "sign_flipped" in bugs:
        grads = {name: -value for name, value in grads.items()}
    return {name: grads[name] for name in model.param_names}


def _wrong_derivative(activation: str, z):
    """The derivative users most often write instead: softplus for ReLU, the formula applied to
    the pre-activation for tanh and sigmoid."""
    if activation == "relu":
        return np.log1p(np.exp(z))
    if activation == "tanh":
        return 1 - z * z
    if activation == "sigmoid":
        return z * (1 - z)
    return np.full_like(z, np.nan)


def _diagnose(model: MLP, got: dict, X, y) -> Report:
    trace = {}
    reference = _backprop(model, X, y, trace=trace)
    findings = _shape_findings(got, reference)
    if findings:
        return Report(findings)
    bad = [name for name, value in got.items() if not np.all(np.isfinite(value))]
    if bad:
        return Report([Finding("non_finite", "your gradient has NaN or inf entries; look for "
                               "exp overflow or a division by zero", bad[-1], _layer(bad[-1]))])  # fmt: skip
    if all(close(got[name], reference[name]) for name in reference):
        return Report()
    names = set(WHOLE_PASS_BUGS) if model.activation.name in DERIVATIVE_ADVICE else set(
        WHOLE_PASS_BUGS) - {"activation_derivative_wrong"}  # fmt: skip
    for size in (1, 2):
        for bugs in itertools.combinations(sorted(names), size):
            variant = _backprop(model, X, y, frozenset(bugs))
            if all(close(got[name], variant[name]) for name in variant):
                return Report([_whole_pass_finding(bug, model) for bug in bugs])
    return Report(_per_parameter_findings(got, reference, X.shape[0], trace))


def _shape_findings(got: dict, reference: dict) -> list[Finding]:
    findings = []
    for name, want in reference.items():
        value = got[name]
        if value is None:
            findings.append(Finding("shape_mismatch", f"no gradient returned for {_user(name)}",
                                    name, _layer(name)))  # fmt: skip
        elif value.shape != want.shape:
            if value.T.shape == want.shape and close(value.T, want):
                findings.append(Finding("transposed", f"your gradient for {_user(name)} is "
                                        f"transposed: it should have shape {want.shape} like the "
                                        "weight (X.T @ delta, not delta.T @ X)", name, _layer(name)))  # fmt: skip
            else:
                findings.append(Finding("shape_mismatch", f"your gradient for {_user(name)} has "
                                        f"shape {value.shape}; the parameter has {want.shape}",
                                        name, _layer(name)))  # fmt: skip
    return findings


def _per_parameter_findings(got: dict, reference: dict, n: int, trace: dict) -> list[Finding]:
    """The first disagreeing parameter in backward order, and what its pattern says."""
    for name in reversed(list(reference)):
        value, want = got[name], reference[name]
        if close(value, want):
            continue
        user, layer = _user(name), _layer(name)
        delta = trace["deltas"][layer - 1]
        if name.endswith(".bias") and any(close(value, row) for row in delta):
            return [Finding("bias_gradient_wrong", f"your bias gradient for layer {layer} is one "
                            "sample's delta: in a per-sample loop, add each sample's delta "
                            "(+=), do not assign it (=)", name, layer)]  # fmt: skip
        if name.endswith(".weight") and (source := _wrong_input(value, delta, trace, layer - 1)):
            return [Finding("wrong_layer_input", f"your weight gradient for layer {layer} is "
                            f"built from {source}; it must be the layer's own input (X for "
                            "layer 1, else the previous layer's activation) transposed, times "
                            "delta", name, layer)]  # fmt: skip
        if name.endswith(".bias") and value.size > 1 and np.allclose(value, value.flat[0]):
            return [Finding("bias_gradient_wrong", f"your bias gradient for layer {layer} has the "
                            "same value in every entry: sum delta over axis 0 (samples), not over "
                            "the units", name, layer)]  # fmt: skip
        for factor, code, advice in ((n, "missing_batch_mean", "divide it by the batch size"),
                                     (-1.0, "sign_flipped", "flip its sign")):  # fmt: skip
            if close(value, factor * want):
                return [Finding(code, f"your gradient for {user} is {factor:g} times the right "
                                f"one: {advice}", name, layer)]  # fmt: skip
        if name.endswith(".bias"):
            return [Finding("bias_gradient_wrong", f"your bias gradient for layer {layer} is not "
                            "the sum of delta over the samples (axis 0)", name, layer)]  # fmt: skip
        return [Finding("not_recognised", f"your gradient for {user} is the first (going "
                        "backward from the output) that differs from xpmlp's, by "
                        f"{relative_error(value, want):.3g} relative; the layers after it are "
                        "right", name, layer)]  # fmt: skip
    return []


def _wrong_input(value, delta, trace: dict, index: int) -> str | None:
    """What ``value`` was built from, if it is ``A.T @ delta`` for another array of the forward
    pass than the layer's own input."""
    records = trace["records"]
    candidates = []
    for j, record in enumerate(records):
        if j != index:
            candidates.append((record.inputs, "X" if j == 0 else f"layer {j}'s activation"))
        if record.activation is not None:
            candidates.append((record.pre_activation, f"layer {j + 1}'s pre-activation z"))
    for array, label in candidates:
        if array.shape[1] == value.shape[0] and close(value, array.T @ delta):
            return label
    return None


def _whole_pass_finding(bug: str, model: MLP) -> Finding:
    message = WHOLE_PASS_BUGS[bug]
    if bug == "activation_derivative_wrong":
        message += ": " + DERIVATIVE_ADVICE[model.activation.name]
    return Finding(bug, message)


def _layer(name: str) -> int:
    return int(name.split(".")[1]) + 1


def _user(name: str) -> str:
    kind = "weights" if name.endswith(".weight") else "biases"
    return f"layer {_layer(name)}'s {kind}"
