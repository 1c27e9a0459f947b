"""The backprop doctor: check a user's own hand-written network against xpmlp and name the bug.

:func:`check_gradients` hands the user's ``grads(weights, biases, X, Y)`` float64 weights and
data, compares what it returns with xpmlp's own float64 backward pass on the same weights, finds
the first parameter (in backward order) that disagrees, and names the bug by matching the user's
gradients against the reference with each known bug applied, alone and in pairs, then against
per-parameter patterns (transposed, a constant bias vector, a factor n or -1). A correct
implementation is never blamed; what matches nothing is ``not_recognised``, with where it starts.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core import ops
from ..core.model import MLP
from ..errors import ConfigError

RTOL, ATOL = 1e-6, 1e-9
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


@dataclass(frozen=True)
class Finding:
    """One diagnosis: ``code`` (e.g. ``sign_flipped``), where (``parameter``, 1-based ``layer``
    in your numbering, or None for the whole network) and a ``message`` saying how to fix it."""

    code: str
    message: str
    parameter: str | None = None
    layer: int | None = None


@dataclass
class Report:
    """What the doctor found: ``ok`` when nothing; ``findings`` otherwise."""

    findings: list[Finding] = field(default_factory=list)
    subject: str = "gradients"  # what was checked: gradients, forward pass, batches

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def codes(self) -> set[str]:
        return {finding.code for finding in self.findings}

    def __str__(self) -> str:
        if self.ok:
            verb = "matches" if self.subject == "forward pass" else "match"
            return f"your {self.subject} {verb} xpmlp's float64 reference: no bug found"
        lines = [f"{len(self.findings)} problem(s) in your {self.subject}:"]
        for finding in self.findings:
            where = f" [{finding.parameter}]" if finding.parameter else ""
            lines.append(f"- {finding.code}{where}: {finding.message}")
        return "\n".join(lines)


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


def _close(a, b) -> bool:
    return a is not None and a.shape == b.shape and np.allclose(a, b, rtol=RTOL, atol=ATOL)


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
    if all(_close(got[name], reference[name]) for name in reference):
        return Report()
    names = set(WHOLE_PASS_BUGS) if model.activation.name in DERIVATIVE_ADVICE else set(
        WHOLE_PASS_BUGS) - {"activation_derivative_wrong"}  # fmt: skip
    for size in (1, 2):
        for bugs in itertools.combinations(sorted(names), size):
            variant = _backprop(model, X, y, frozenset(bugs))
            if all(_close(got[name], variant[name]) for name in variant):
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
            if value.T.shape == want.shape and _close(value.T, want):
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
        if _close(value, want):
            continue
        user, layer = _user(name), _layer(name)
        delta = trace["deltas"][layer - 1]
        if name.endswith(".bias") and any(_close(value, row) for row in delta):
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
            if _close(value, factor * want):
                return [Finding(code, f"your gradient for {user} is {factor:g} times the right "
                                f"one: {advice}", name, layer)]  # fmt: skip
        if name.endswith(".bias"):
            return [Finding("bias_gradient_wrong", f"your bias gradient for layer {layer} is not "
                            "the sum of delta over the samples (axis 0)", name, layer)]  # fmt: skip
        return [Finding("not_recognised", f"your gradient for {user} is the first (going "
                        "backward from the output) that differs from xpmlp's, by "
                        f"{_relative_error(value, want):.3g} relative; the layers after it are "
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
        if array.shape[1] == value.shape[0] and _close(value, array.T @ delta):
            return label
    return None


def _whole_pass_finding(bug: str, model: MLP) -> Finding:
    message = WHOLE_PASS_BUGS[bug]
    if bug == "activation_derivative_wrong":
        message += ": " + DERIVATIVE_ADVICE[model.activation.name]
    return Finding(bug, message)


def _relative_error(a, b) -> float:
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300)
    return float(np.max(np.abs(a - b)) / scale)


def _layer(name: str) -> int:
    return int(name.split(".")[1]) + 1


def _user(name: str) -> str:
    kind = "weights" if name.endswith(".weight") else "biases"
    return f"layer {_layer(name)}'s {kind}"


# ---------------------------------------------------------------------- the forward pass

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
    if _close(got, want):
        return None
    if scale > 1 and (not np.all(np.isfinite(got)) or returns == "probabilities"):
        how = "overflows to inf/NaN" if not np.all(np.isfinite(got)) else "gives wrong values"
        return Finding("softmax_unstable", f"with logits in the thousands your softmax {how}: "
                       "subtract each row's maximum before exp (softmax is unchanged by it), "
                       "instead of clipping")  # fmt: skip
    if not np.all(np.isfinite(got)):
        return Finding("non_finite", "your forward pass returns NaN or inf on ordinary inputs")
    for other in ("floored_relu", "leaky_relu", "tanh", "sigmoid", "relu"):
        if other != activation and _close(got, _reference_forward(weights, biases, X, other,
                                                                  returns)):  # fmt: skip
            said = "max(0.001, z)" if other == "floored_relu" else other
            return Finding("activation_forward_wrong", f"your hidden layers compute {said} where "
                           f"{activation} was said: {_activation_advice(activation)}")  # fmt: skip
    return Finding("not_recognised", "your forward pass differs from xpmlp's by "
                   f"{_relative_error(got, want):.3g} relative on ordinary inputs")  # fmt: skip


def _activation_advice(activation: str) -> str:
    return {
        "relu": "ReLU is max(0, z), exactly 0 for negative z",
        "tanh": "use np.tanh(z)",
        "sigmoid": "sigmoid is 1 / (1 + exp(-z))",
    }.get(activation, f"use xpmlp's {activation}")


# ---------------------------------------------------------------------- the batches


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


# ---------------------------------------------------------------------- a user's file


def check_file(path, *, grads: str | None = None, forward: str | None = None,
               layer_sizes: Sequence[int] | None = None, activation: str | None = None,
               labels: str | None = None, returns: str = "gradient") -> dict[str, Report]:  # fmt: skip
    """Import a user's Python file and check its ``grads`` and ``forward`` functions (or the
    ones named); layer sizes, activation and label format come from the arguments or the
    file's ``LAYER_SIZES``, ``ACTIVATION`` and ``LABELS``. Returns name -> report."""
    module = _import_user_file(path)
    layer_sizes = layer_sizes or getattr(module, "LAYER_SIZES", None)
    if not layer_sizes:
        raise ConfigError(f"{path} has no LAYER_SIZES; pass --layer-sizes, e.g. 784,300,10")
    activation = activation or getattr(module, "ACTIVATION", "relu")
    labels = labels or getattr(module, "LABELS", "onehot")
    found = {}
    for kind, name in (("grads", grads), ("forward", forward)):
        function = getattr(module, name or kind, None)
        if name and not callable(function):
            raise ConfigError(f"{path} has no function {name}")
        if callable(function):
            found[kind] = (name or kind, function)
    if not found:
        raise ConfigError(f"{path} defines neither grads nor forward; name yours with --grads "
                          "NAME or --forward NAME")  # fmt: skip
    reports = {}
    if "grads" in found:
        name, function = found["grads"]
        reports[name] = check_gradients(function, layer_sizes, activation=activation,
                                        labels=labels, returns=returns)  # fmt: skip
    if "forward" in found:
        name, function = found["forward"]
        reports[name] = check_forward(function, layer_sizes, activation=activation)
    return reports


def _import_user_file(path):
    spec = importlib.util.spec_from_file_location("xpmlp_doctor_patient", path)
    if spec is None or not str(path).endswith(".py"):
        raise ConfigError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except Exception as exc:  # their code: one line about it
        raise ConfigError(f"importing {path} raised {type(exc).__name__}: {exc}") from None
    sys.modules.pop("xpmlp_doctor_patient", None)
    return module
