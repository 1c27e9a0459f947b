"""The backprop doctor (xpmlp/doctor.py) on a zoo of hand-written NumPy networks: correct ones
in several layouts get a clean bill; each buggy one is named by its bug, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from xpmlp.doctor import check_gradients


def _act(name, z):
    return {"relu": np.maximum(z, 0), "tanh": np.tanh(z), "sigmoid": 1 / (1 + np.exp(-z))}[name]


def _deriv(name, z, a):
    return {"relu": (z > 0) * 1.0, "tanh": 1 - a**2, "sigmoid": a * (1 - a)}[name]


def make_user_grads(activation="relu", *, bugs=(), int_labels=False, bias_2d=False):
    """A user's vectorised backprop, as people write it, with ``bugs`` planted."""

    def grads(weights, biases, X, Y):
        n = X.shape[0]
        T = np.eye(weights[-1].shape[1])[Y] if int_labels else Y
        activations, pres = [X], []
        for W, b in zip(weights[:-1], biases[:-1]):
            z = activations[-1] @ W + b
            pres.append(z)
            activations.append(_act(activation, z))
        logits = activations[-1] @ weights[-1] + biases[-1]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        delta = p - T
        if "softmax_jacobian_twice" in bugs:
            delta = delta * p * (1 - p)
        if "missing_batch_mean" not in bugs:
            delta = delta / n
        dW, db = [], []
        for i in reversed(range(len(weights))):
            dW.insert(0, activations[i].T @ delta)
            if "bias_over_units" in bugs:
                db.insert(0, np.full(delta.shape[1], delta.sum()))
            else:
                db.insert(0, delta.sum(axis=0, keepdims=bias_2d))
            if i:
                grad_a = delta @ weights[i].T
                z, a = pres[i - 1], activations[i]
                if "derivative_of_z" in bugs:
                    d = np.log1p(np.exp(z)) if activation == "relu" else _deriv(activation, z, z)
                else:
                    d = _deriv(activation, z, a)
                delta = grad_a * d
        if "sign_flipped" in bugs:
            dW, db = [-g for g in dW], [-g for g in db]
        if "transposed" in bugs:
            dW[0] = dW[0].T
        if "noise" in bugs:
            dW[1] = dW[1] + 0.3
        return dW, db

    return grads


LAYOUTS = [
    pytest.param("relu", [5, 7, 3], {}, id="relu-1-hidden"),
    pytest.param("tanh", [5, 7, 6, 4, 3], {}, id="tanh-3-hidden"),
    pytest.param("sigmoid", [4, 6, 3], {"int_labels": True}, id="sigmoid-int-labels"),
    pytest.param("relu", [5, 8, 8, 3], {"bias_2d": True}, id="relu-bias-keepdims"),
]


@pytest.mark.parametrize(("activation", "sizes", "layout"), LAYOUTS)
def test_a_correct_network_gets_a_clean_bill(activation, sizes, layout):
    labels = "int" if layout.get("int_labels") else "onehot"
    report = check_gradients(make_user_grads(activation, **layout), sizes,
                             activation=activation, labels=labels)  # fmt: skip
    assert report.ok, str(report)
    assert "no bug found" in str(report)


BUGS = [
    (("sign_flipped",), {"sign_flipped"}),
    (("missing_batch_mean",), {"missing_batch_mean"}),
    (("softmax_jacobian_twice",), {"softmax_jacobian_twice"}),
    (("derivative_of_z",), {"activation_derivative_wrong"}),
    (("sign_flipped", "missing_batch_mean"), {"sign_flipped", "missing_batch_mean"}),
    (
        ("softmax_jacobian_twice", "derivative_of_z"),
        {"softmax_jacobian_twice", "activation_derivative_wrong"},
    ),
    (("bias_over_units",), {"bias_gradient_wrong"}),
    (("transposed",), {"transposed"}),
    (("noise",), {"not_recognised"}),
]


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize(("bugs", "codes"), BUGS)
def test_each_bug_is_named_and_nothing_else(activation, bugs, codes):
    report = check_gradients(make_user_grads(activation, bugs=bugs), [5, 7, 6, 3],
                             activation=activation)  # fmt: skip
    assert report.codes == codes, str(report)
    assert all(code in str(report) for code in codes)


def test_the_report_says_where_and_how_to_fix():
    report = check_gradients(make_user_grads(bugs=("bias_over_units",)), [5, 7, 3])
    (finding,) = report.findings
    assert finding.layer == 2 and finding.parameter == "layers.1.bias"
    assert "sum delta over axis 0 (samples)" in finding.message
    report = check_gradients(make_user_grads(bugs=("noise",)), [5, 7, 6, 3])
    assert report.findings[0].layer == 2 and "the layers after it are right" in str(report)


def test_an_update_direction_is_accepted_when_said():
    flipped = make_user_grads(bugs=("sign_flipped",))
    assert check_gradients(flipped, [5, 7, 3], returns="update").ok


def test_bad_returns_are_named():
    def wrong_shape(weights, biases, X, Y):
        return [np.zeros((2, 2)) for _ in weights], [np.zeros(b.shape) for b in biases]

    assert "shape_mismatch" in check_gradients(wrong_shape, [5, 7, 3]).codes

    def nan(weights, biases, X, Y):
        return [np.full(w.shape, np.nan) for w in weights], [np.zeros(b.shape) for b in biases]

    assert check_gradients(nan, [5, 7, 3]).codes == {"non_finite"}
