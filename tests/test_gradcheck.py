"""Finite-difference gradient checks of every activation x loss, and proof the check can fail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xpmlp import MLP, to_numpy
from xpmlp.core import gradcheck, ops

ACTIVATIONS = sorted(ops.ACTIVATIONS)
LOSSES = sorted(ops.LOSSES)
REGULARISATION = [
    pytest.param(0.0, 0.0, id="plain"),
    pytest.param(0.3, 0.0, id="dropout"),
    pytest.param(0.0, 0.05, id="decay"),
    pytest.param(0.3, 0.05, id="dropout+decay"),
]


def _model_and_data(
    make_problem, backend, *, activation, loss, dropout=0.0, decay=0.0, dtype="float64"
):
    X, y = make_problem(n=6, n_in=3, n_out=3, loss=loss, seed=1)
    model = MLP(
        [3, 4, 3, 3],
        activation=activation,
        loss=loss,
        dropout=dropout,
        l2=decay,
        device=backend,
        dtype=dtype,
        seed=2,
    )
    # Non-zero biases, so a bias-gradient bug cannot hide behind b = 0.
    state = model.state_dict()
    generator = np.random.default_rng(3)
    for name in state:
        if name.endswith("bias"):
            state[name] = generator.normal(scale=0.5, size=state[name].shape)
    model.load_state_dict(state)
    return model, backend.asarray(X), backend.asarray(y)


@pytest.mark.parametrize(("dropout", "decay"), REGULARISATION)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_match_finite_differences(
    backend, make_problem, activation, loss, dropout, decay
):
    model, X, y = _model_and_data(
        make_problem, backend, activation=activation, loss=loss, dropout=dropout, decay=decay
    )
    errors = gradcheck(model, X, y, max_entries=None)
    assert set(errors) == set(model.params)
    assert max(errors.values()) < 1e-6, errors


def test_float32_model_is_checked_in_float64(backend, make_problem):
    model, X, y = _model_and_data(
        make_problem, backend, activation="tanh", loss="cross_entropy", dtype="float32"
    )
    before = model.state_dict()
    errors = gradcheck(model, X, y, max_entries=None)
    assert max(errors.values()) < 1e-6, errors
    assert model.dtype == backend.dtype("float32")  # the model itself is untouched
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_max_entries_samples_a_subset(make_problem, backend):
    model, X, y = _model_and_data(make_problem, backend, activation="gelu", loss="mse")
    calls = []
    original = MLP.loss_and_grads

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MLP, "loss_and_grads", counting)
        errors = gradcheck(model, X, y, max_entries=2)
    # One analytic pass, then two losses per checked entry: at most 2 entries per parameter.
    sizes = [min(2, int(np.prod(value.shape))) for value in model.params.values()]
    assert len(calls) == 1 + 2 * sum(sizes)
    assert max(errors.values()) < 1e-6


# ---------------------------------------------------------------------- the check can fail


def _relu_backward_of_softplus(xp, z, a, grad):
    # Bug: the derivative of softplus, sigmoid(z), instead of ReLU's step.
    return grad / (1 + xp.exp(-z))


def _sigmoid_backward_at_z(xp, z, a, grad):
    # Bug: sigma'(z) = a (1 - a) applied to the pre-activation z instead of the output a.
    return grad * z * (1 - z)


def _tanh_backward_without_the_square(xp, z, a, grad):
    # Bug: 1 - a**2 written as 1 - a, a typo that still type-checks.
    return grad * (1 - a)


def _cross_entropy_twice(xp, logits, targets):
    # Bug: the softmax Jacobian multiplied in again on top of the collapsed (p - y) / n.
    loss, grad = ops.softmax_cross_entropy(xp, logits, targets)
    p = ops.softmax(xp, logits)
    return loss, p * (grad - xp.sum(grad * p, axis=1, keepdims=True))


def _mse_without_the_two(xp, outputs, targets):
    # Bug: d/dx of x**2 taken as x.
    loss, grad = ops.mean_squared_error(xp, outputs, targets)
    return loss, grad / 2


BUGS = {
    "relu": ("relu", "cross_entropy", _relu_backward_of_softplus),
    "sigmoid": ("sigmoid", "mse", _sigmoid_backward_at_z),
    "tanh": ("tanh", "cross_entropy", _tanh_backward_without_the_square),
}


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_gradcheck_catches_a_wrong_activation_backward(backend, make_problem, monkeypatch, bug):
    activation, loss, backward = BUGS[bug]
    buggy = dataclasses.replace(ops.ACTIVATIONS[activation], backward=backward)
    monkeypatch.setitem(ops.ACTIVATIONS, activation, buggy)
    monkeypatch.setenv("XPMLP_KERNELS", "portable")  # the bug is in the portable formula
    model, X, y = _model_and_data(make_problem, backend, activation=activation, loss=loss)
    errors = gradcheck(model, X, y, max_entries=None)
    assert max(errors.values()) > 1e-2, errors
    # The output layer does not pass through the activation's backward: still right.
    assert errors["layers.2.weight"] < 1e-6 and errors["layers.2.bias"] < 1e-6
    assert errors["layers.0.weight"] > 1e-2


@pytest.mark.parametrize(
    ("loss", "buggy"),
    [("cross_entropy", _cross_entropy_twice), ("mse", _mse_without_the_two)],
)
def test_gradcheck_catches_a_wrong_loss_gradient(backend, make_problem, monkeypatch, loss, buggy):
    monkeypatch.setitem(ops.LOSSES, loss, buggy)
    model, X, y = _model_and_data(make_problem, backend, activation="tanh", loss=loss)
    errors = gradcheck(model, X, y, max_entries=None)
    assert min(errors.values()) > 1e-2, errors  # every layer inherits the wrong output delta


def test_gradcheck_catches_a_bias_gradient_over_the_wrong_axis(make_problem, monkeypatch):
    # Bug: the bias gradient summed over features (axis 1) instead of samples (axis 0). With
    # as many samples as units the shapes agree, so only the values can give it away.
    original = MLP.backward

    def backward_with_bias_over_axis_1(self, grad_out, records):
        grads = original(self, grad_out, records)
        last = self.n_layers - 1
        grads[f"layers.{last}.bias"] = self.xp.sum(grad_out, axis=1)
        return grads

    monkeypatch.setattr(MLP, "backward", backward_with_bias_over_axis_1)
    model = MLP([3, 4, 3], activation="tanh", loss="mse", dtype="float64", seed=0)
    X, y = make_problem(n=3, n_in=3, n_out=3, loss="mse")
    _, grads = model.loss_and_grads(X, y)
    assert grads["layers.1.bias"].shape == model.params["layers.1.bias"].shape
    errors = gradcheck(model, X, y, max_entries=None)
    assert errors["layers.1.bias"] > 1e-2, errors
    assert errors["layers.1.weight"] < 1e-6


def test_gradcheck_reports_zero_where_both_gradients_vanish():
    # A dead ReLU layer (all pre-activations negative): its weights get no gradient at all.
    model = MLP([2, 3, 2], activation="relu", dtype="float64", seed=0)
    state = model.state_dict()
    state["layers.0.weight"] = -np.abs(state["layers.0.weight"])
    state["layers.0.bias"] = np.full(3, -1.0)
    model.load_state_dict(state)
    X = np.array([[1.0, 2.0], [0.5, 0.25]])
    errors = gradcheck(model, X, np.array([0, 1]), max_entries=None)
    assert errors["layers.0.weight"] == 0.0 and errors["layers.0.bias"] == 0.0
    _, grads = model.loss_and_grads(X, np.array([0, 1]))
    assert not np.any(to_numpy(grads["layers.0.weight"]))


@pytest.mark.parametrize("loss", LOSSES)
def test_the_weighted_loss_passes_gradcheck(backend, make_problem, loss):
    X, y = make_problem(n=12, n_in=3, n_out=2, loss=loss)
    model = MLP([3, 5, 2], loss=loss, device=backend, dtype="float64", dropout=0.2)
    weights = np.random.default_rng(3).integers(0, 4, 12).astype(np.float64)
    weights[0] = 2.5
    errors = gradcheck(model, X, y, sample_weight=weights, max_entries=None)
    assert max(errors.values()) < 1e-6, errors
    unweighted = gradcheck(model, X, y, sample_weight=np.ones(12), max_entries=None)
    assert max(unweighted.values()) < 1e-6
