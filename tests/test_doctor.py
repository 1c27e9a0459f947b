"""The backprop doctor (xpmlp/doctor/) on a zoo of hand-written NumPy networks: correct ones
in several layouts get a clean bill; each buggy one is named by its bug, and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xpmlp.cli import main
from xpmlp.doctor import check_batches, check_forward, check_gradients


def _act(name, z):
    return {"relu": np.maximum(z, 0), "tanh": np.tanh(z), "sigmoid": 1 / (1 + np.exp(-z))}[name]


def _deriv(name, z, a):
    return {"relu": (z > 0) * 1.0, "tanh": 1 - a**2, "sigmoid": a * (1 - a)}[name]


def make_user_grads(activation="relu", *, bugs=(), int_labels=False, bias_2d=False,
                    mask_from_output=False):  # fmt: skip
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
            if i == 1:
                delta_rows = delta
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
                elif mask_from_output:  # ReLU's mask from a > 0: the same as from z > 0
                    d = (a > 0) * 1.0
                else:
                    d = _deriv(activation, z, a)
                delta = grad_a * d
        if "sign_flipped" in bugs:
            dW, db = [-g for g in dW], [-g for g in db]
        if "transposed" in bugs:
            dW[0] = dW[0].T
        if "bias_one_sample" in bugs:
            db[1] = delta_rows[-1]
        if "input_is_z" in bugs:
            dW[1] = pres[0].T @ delta_rows
        if "noise" in bugs:
            dW[1] = dW[1] + 0.3
        return dW, db

    return grads


LAYOUTS = [
    pytest.param("relu", [5, 7, 3], {}, id="relu-1-hidden"),
    pytest.param("tanh", [5, 7, 6, 4, 3], {}, id="tanh-3-hidden"),
    pytest.param("sigmoid", [4, 6, 3], {"int_labels": True}, id="sigmoid-int-labels"),
    pytest.param("relu", [5, 8, 8, 3], {"bias_2d": True}, id="relu-bias-keepdims"),
    pytest.param("relu", [5, 8, 3], {"mask_from_output": True}, id="relu-mask-from-output"),
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
    (
        ("missing_batch_mean", "derivative_of_z"),
        {"missing_batch_mean", "activation_derivative_wrong"},
    ),
    (("bias_over_units",), {"bias_gradient_wrong"}),
    (("transposed",), {"transposed"}),
    (("bias_one_sample",), {"bias_gradient_wrong"}),
    (("input_is_z",), {"wrong_layer_input"}),
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


# ---------------------------------------------------------------------- forward and batches


def make_user_forward(activation="relu", *, softmax="stable", hidden="right", logits=False):
    def forward(weights, biases, X):
        a = X
        for W, b in zip(weights[:-1], biases[:-1]):
            z = a @ W + b
            if hidden == "floor":
                a = np.maximum(0.001, z)
            elif hidden == "swapped":
                a = np.tanh(z) if activation == "sigmoid" else 1 / (1 + np.exp(-z))
            else:
                a = _act(activation, z)
        out = a @ weights[-1] + biases[-1]
        if logits:
            return out
        if softmax == "naive":
            e = np.exp(out)
        elif softmax == "clipped":
            e = np.exp(np.clip(out, -500, 500))
        else:
            e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return forward


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("logits", [False, True])
def test_a_correct_forward_pass_gets_a_clean_bill(activation, logits):
    returns = "logits" if logits else "probabilities"
    forward = make_user_forward(activation, logits=logits)
    assert check_forward(forward, [5, 7, 6, 3], activation=activation, returns=returns).ok


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"softmax": "naive"}, "softmax_unstable"),
    ({"softmax": "clipped"}, "softmax_unstable"),
    ({"hidden": "floor"}, "activation_forward_wrong"),
])  # fmt: skip
def test_forward_bugs_are_named(kwargs, code):
    report = check_forward(make_user_forward(**kwargs), [5, 7, 6, 3])
    assert report.codes == {code}, str(report)


def test_tanh_and_sigmoid_exchanged_are_named():
    report = check_forward(make_user_forward("sigmoid", hidden="swapped"), [5, 7, 3],
                           activation="sigmoid")  # fmt: skip
    assert report.codes == {"activation_forward_wrong"} and "compute tanh" in str(report)


def _data(n=40):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)), rng.integers(0, 3, n)


@pytest.mark.parametrize("onehot", [False, True])
def test_batches_shuffled_together_pass(onehot):
    X, y = _data()
    order = np.random.default_rng(1).permutation(len(y))
    Y = np.eye(3)[y] if onehot else y
    batches = [(X[order][i : i + 8], Y[order][i : i + 8]) for i in range(0, 40, 8)]
    assert check_batches(batches, X, Y).ok


@pytest.mark.parametrize("bug", ["two_permutations", "only_X"])
def test_batches_shuffled_apart_are_named(bug):
    X, y = _data()
    rng = np.random.default_rng(1)
    order = rng.permutation(len(y))
    label_order = rng.permutation(len(y)) if bug == "two_permutations" else np.arange(len(y))
    batches = [(X[order][i : i + 8], y[label_order][i : i + 8]) for i in range(0, 40, 8)]
    report = check_batches(batches, X, y)
    assert report.codes == {"labels_misaligned"} and "same permutation" in str(report)


# ---------------------------------------------------------------------- other layouts users write


class AugmentedNet:
    """Bias as the last row of each W, inputs with a column of ones appended; one hidden layer."""

    def __init__(self, W1, W2, *, bug=None):
        self.W1, self.W2, self.bug = W1, W2, bug

    def backprop(self, X, T):
        n = X.shape[0]
        X1 = np.hstack([X, np.ones((n, 1))])
        z = X1 @ self.W1
        h = np.tanh(z)
        H1 = np.hstack([h, np.ones((n, 1))])
        logits = H1 @ self.W2
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        d2 = (p - T) / n
        dW2 = H1.T @ d2
        d1 = (d2 @ self.W2[:-1].T) * (1 - (z**2 if self.bug == "derivative_of_z" else h**2))
        return X1.T @ d1, dW2


def augmented(bug=None):
    def grads(weights, biases, X, Y):
        net = AugmentedNet(*(np.vstack([W, b]) for W, b in zip(weights, biases)), bug=bug)
        dW1, dW2 = net.backprop(X, Y)
        return [dW1[:-1], dW2[:-1]], [dW1[-1], dW2[-1]]

    return grads


def per_sample_loop(bug=None):
    """One sample at a time, accumulated, then averaged; ReLU; integer labels."""

    def grads(weights, biases, X, y):
        dW = [np.zeros_like(W) for W in weights]
        db = [np.zeros_like(b) for b in biases]
        for x, label in zip(X, y):
            z1 = x @ weights[0] + biases[0]
            h = np.maximum(z1, 0)
            logits = h @ weights[1] + biases[1]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            d2 = p.copy()
            d2[label] -= 1
            d1 = (d2 @ weights[1].T) * (z1 > 0)
            dW[1] += np.outer(h, d2)
            dW[0] += np.outer(x, d1)
            if bug == "assign":
                db[1], db[0] = d2.copy(), d1.copy()
            else:
                db[1] += d2
                db[0] += d1
        n = len(X)
        return [g / n for g in dW], [g / n for g in db]

    return grads


@pytest.mark.parametrize(("grads", "labels", "codes"), [
    (augmented(), "onehot", set()),
    (augmented("derivative_of_z"), "onehot", {"activation_derivative_wrong"}),
    (per_sample_loop(), "int", set()),
    (per_sample_loop("assign"), "int", {"bias_gradient_wrong"}),
])  # fmt: skip
def test_augmented_and_per_sample_layouts(grads, labels, codes):
    activation = "tanh" if labels == "onehot" else "relu"
    report = check_gradients(grads, [4, 6, 3], activation=activation, labels=labels)
    assert report.codes == codes, str(report)


# ---------------------------------------------------------------------- the command line

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("page", ["README.md", "docs/doctor.md"])
def test_the_readme_example_prints_the_report_shown(page, capsys):
    assert main(["doctor", str(ROOT / "examples" / "doctor_broken_net.py")]) == 1
    shown = (ROOT / page).read_text().split("<!-- doctor-report -->\n```\n")[1]
    assert capsys.readouterr().out == shown.split("```")[0]


def test_the_fixed_example_gets_a_clean_bill(tmp_path, capsys):
    source = (ROOT / "examples" / "doctor_broken_net.py").read_text()
    fixed = source.replace("(p - Y) * p * (1 - p) / n", "(p - Y) / n").replace(
        "(1 - z1**2)", "(1 - h**2)"
    )
    assert fixed != source
    (tmp_path / "net.py").write_text(fixed)
    assert main(["doctor", str(tmp_path / "net.py")]) == 0
    assert capsys.readouterr().out.count("no bug found") == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["doctor", "missing.py"], "no such file"),
    (["doctor", "NET", "--grads", "nope"], "has no function nope"),
    (["doctor", "EMPTY"], "defines neither grads nor forward"),
    (["doctor", "RAISES"], "importing"),
])  # fmt: skip
def test_bad_usage_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    files = {"NET": "LAYER_SIZES = [3, 2]\ndef grads(w, b, X, Y):\n    return w, b\n",
             "EMPTY": "LAYER_SIZES = [3, 2]\n", "RAISES": "raise RuntimeError('boom')\n"}  # fmt: skip
    argv = list(argv)
    if argv[1] in files:
        (tmp_path / "f.py").write_text(files[argv[1]])
        argv[1] = str(tmp_path / "f.py")
    else:
        argv[1] = str(tmp_path / argv[1])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


class AttributeNet:
    """W and b as separate attributes of a class, three ReLU hidden layers, integer labels."""

    def __init__(self, weights, biases):
        self.W, self.b = weights, biases

    def backward(self, X, y):
        acts, zs = [X], []
        for W, b in zip(self.W[:-1], self.b[:-1]):
            zs.append(acts[-1] @ W + b)
            acts.append(np.maximum(zs[-1], 0))
        logits = acts[-1] @ self.W[-1] + self.b[-1]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        delta = p / len(y)
        dW, db = [None] * len(self.W), [None] * len(self.W)
        for i in range(len(self.W) - 1, -1, -1):
            dW[i], db[i] = acts[i].T @ delta, delta.sum(axis=0)
            if i:
                delta = (delta @ self.W[i].T) * (zs[i - 1] > 0)
        return dW, db


def test_a_class_with_weight_and_bias_attributes_gets_a_clean_bill():
    def grads(weights, biases, X, y):
        return AttributeNet(weights, biases).backward(X, y)

    assert check_gradients(grads, [6, 9, 8, 7, 4], labels="int").ok
