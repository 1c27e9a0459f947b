"""The MLP: gradients against torch.autograd and a network worked by hand, initialisation,
dropout masks, state round trips, moving devices, numerical stability and input checks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from optional import need
from tolerances import rtol_for

import xpmlp.core.model
from xpmlp import MLP, CheckpointError, ConfigError, DataError, to_numpy
from xpmlp.core import ops

ACTIVATIONS = sorted(ops.ACTIVATIONS)
LOSSES = sorted(ops.LOSSES)


def _assert_close_relative(actual, expected, rtol, name=""):
    """max |actual - expected| <= rtol * max |expected|: relative to the array's scale."""
    actual, expected = to_numpy(actual), np.asarray(expected)
    assert actual.shape == expected.shape, name
    scale = max(np.max(np.abs(expected)), 1e-300)
    error = np.max(np.abs(actual - expected)) / scale
    assert error <= rtol, f"{name}: relative error {error:.3g} > {rtol:.3g}"


# ---------------------------------------------------------------------- torch.autograd as oracle


def _torch_loss_and_grads(model: MLP, X: np.ndarray, y: np.ndarray, masks: list):
    """The same network built by hand in torch from ``model.state_dict()``, differentiated by
    autograd. Returns (loss, {name: grad}) as float64 NumPy."""
    torch = need("torch")
    F = torch.nn.functional
    activation = {
        "relu": F.relu,
        "leaky_relu": lambda z: F.leaky_relu(z, negative_slope=0.01),
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "gelu": lambda z: F.gelu(z, approximate="tanh"),
        "identity": lambda z: z,
    }[model.activation.name]
    params = {
        name: torch.tensor(value, dtype=torch.float64, requires_grad=True)
        for name, value in model.state_dict().items()
    }
    a = torch.tensor(X, dtype=torch.float64)
    for i in range(model.n_layers):
        z = a @ params[f"layers.{i}.weight"] + params[f"layers.{i}.bias"]
        if i < model.n_layers - 1:
            a = activation(z)
            if masks:
                a = a * torch.tensor(to_numpy(masks[i]), dtype=torch.float64)
    if model.loss_name == "cross_entropy":
        loss = F.cross_entropy(z, torch.tensor(y))
    elif model.loss_name == "half_poisson":
        targets = torch.tensor(y, dtype=torch.float64)
        nll = F.poisson_nll_loss(z, targets, log_input=True, full=False, reduction="sum")
        positive = targets.clamp(min=0)  # y log y is 0 at y <= 0
        y_log_y = torch.special.xlogy(positive, positive) - targets  # the deviance's constant
        loss = (nll + y_log_y.sum()) / z.shape[0]
    elif model.loss_name == "binary_cross_entropy":
        targets = torch.tensor(y, dtype=torch.float64)
        loss = F.binary_cross_entropy_with_logits(z, targets, reduction="sum") / z.shape[0]
    else:
        loss = torch.nn.MSELoss(reduction="mean")(z, torch.tensor(y, dtype=torch.float64))
        loss = loss * z.shape[1] / 2 if model.loss_name == "half_squared_error" else loss
    for i in range(model.n_layers):
        loss = loss + model.l2 / 2 * torch.sum(params[f"layers.{i}.weight"] ** 2)
    loss.backward()
    return loss.item(), {name: p.grad.numpy() for name, p in params.items()}


@pytest.mark.parametrize(
    ("dropout", "decay"),
    [
        pytest.param(0.0, 0.0, id="plain"),
        pytest.param(0.25, 0.0, id="dropout"),
        pytest.param(0.0, 0.01, id="decay"),
        pytest.param(0.25, 0.01, id="dropout+decay"),
    ],
)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_equal_torch_autograd(backend, make_problem, activation, loss, dropout, decay):
    X, y = make_problem(n=7, n_in=4, n_out=3, loss=loss, seed=5)
    model = MLP(
        [4, 6, 5, 3],
        activation=activation,
        loss=loss,
        dropout=dropout,
        l2=decay,
        device=backend,
        dtype="float64",
        seed=11,
    )
    state = model.state_dict()
    for name in state:
        if name.endswith("bias"):
            state[name] = np.linspace(-0.3, 0.4, state[name].size)
    model.load_state_dict(state)
    masks = model.sample_masks(X.shape[0], np.random.default_rng(6))
    assert len(masks) == (2 if dropout else 0)

    loss_value, grads = model.loss_and_grads(backend.asarray(X), backend.asarray(y), masks=masks)
    expected_loss, expected_grads = _torch_loss_and_grads(model, X, y, masks)

    assert float(to_numpy(loss_value)) == pytest.approx(expected_loss, rel=rtol_for(backend, 1e-12))
    assert list(grads) == list(model.params)
    for name, grad in grads.items():
        assert backend.owns(grad)
        _assert_close_relative(grad, expected_grads[name], rtol_for(backend, 1e-10), name)


# ---------------------------------------------------------------------- worked by hand


def _two_two_two(backend, dtype, loss):
    """A 2-2-2 ReLU network with weights chosen so every number below is exact in binary.

    W1 = [[1, -1], [0.5, 1]], b1 = [0, -2], W2 = [[1, -1], [2, 3]], b2 = [0.5, 0] and the
    single sample x = [1, 2] (rows of W are inputs, columns outputs: z = x @ W + b).
    """
    model = MLP([2, 2, 2], activation="relu", loss=loss, device=backend, dtype=dtype)
    model.load_state_dict(
        {
            "layers.0.weight": np.array([[1.0, -1.0], [0.5, 1.0]]),
            "layers.0.bias": np.array([0.0, -2.0]),
            "layers.1.weight": np.array([[1.0, -1.0], [2.0, 3.0]]),
            "layers.1.bias": np.array([0.5, 0.0]),
        }
    )
    return model, np.array([[1.0, 2.0]])


def test_hand_worked_network_mse(backend, dtype):
    model, X = _two_two_two(backend, dtype, "mse")
    # Forward:
    #   z1 = [1*1 + 2*0.5 + 0, 1*(-1) + 2*1 - 2] = [2, -1];  h = relu(z1) = [2, 0]
    #   out = [2*1 + 0*2 + 0.5, 2*(-1) + 0*3 + 0] = [2.5, -2]
    # Loss against t = [3, -1]: diff = out - t = [-0.5, -1];
    #   L = (0.25 + 1) / 2 = 0.625  (mean over both elements, as torch's MSELoss)
    target = np.array([[3.0, -1.0]])
    np.testing.assert_array_equal(to_numpy(model.forward(X)), [[2.5, -2.0]])
    loss, grads = model.loss_and_grads(X, target)
    assert float(to_numpy(loss)) == 0.625
    # Backward:
    #   dL/dout = 2 * diff / 2 = [-0.5, -1]                       -> grad b2 = [-0.5, -1]
    #   grad W2 = h^T dL/dout = [[2*-0.5, 2*-1], [0*-0.5, 0*-1]] = [[-1, -2], [0, 0]]
    #   dL/dh = dL/dout @ W2^T = [-0.5*1 + -1*-1, -0.5*2 + -1*3] = [0.5, -4]
    #   dL/dz1 = dL/dh * (z1 > 0) = [0.5, -4] * [1, 0] = [0.5, 0]   -> grad b1 = [0.5, 0]
    #   grad W1 = x^T dL/dz1 = [[1*0.5, 1*0], [2*0.5, 2*0]] = [[0.5, 0], [1, 0]]
    expected = {
        "layers.1.bias": [-0.5, -1.0],
        "layers.1.weight": [[-1.0, -2.0], [0.0, 0.0]],
        "layers.0.bias": [0.5, 0.0],
        "layers.0.weight": [[0.5, 0.0], [1.0, 0.0]],
    }
    for name, value in expected.items():
        np.testing.assert_array_equal(to_numpy(grads[name]), value, err_msg=name)


def test_hand_worked_network_cross_entropy(backend):
    model, X = _two_two_two(backend, "float64", "cross_entropy")
    # Same forward pass: logits = [2.5, -2], label 0. Let q = e^-4.5 / (1 + e^-4.5), the
    # softmax probability of class 1, so p = [1 - q, q].
    #   L = -log(1 - q) = log(1 + e^-4.5) = 0.011047...
    #   dL/dlogits = p - onehot = [-q, q]                      -> grad b2 = [-q, q]
    #   grad W2 = h^T [-q, q] = [[-2q, 2q], [0, 0]]
    #   dL/dh = [-q*1 + q*-1, -q*2 + q*3] = [-2q, q]; times (z1 > 0) = [1, 0]: [-2q, 0]
    #   grad b1 = [-2q, 0]; grad W1 = x^T [-2q, 0] = [[-2q, 0], [-4q, 0]]
    q = math.exp(-4.5) / (1 + math.exp(-4.5))
    loss, grads = model.loss_and_grads(X, np.array([0]))
    assert float(to_numpy(loss)) == pytest.approx(math.log1p(math.exp(-4.5)), rel=1e-14)
    assert float(to_numpy(loss)) == pytest.approx(0.011047, abs=1e-6)
    expected = {
        "layers.1.bias": [-q, q],
        "layers.1.weight": [[-2 * q, 2 * q], [0.0, 0.0]],
        "layers.0.bias": [-2 * q, 0.0],
        "layers.0.weight": [[-2 * q, 0.0], [-4 * q, 0.0]],
    }
    for name, value in expected.items():
        np.testing.assert_allclose(to_numpy(grads[name]), value, rtol=1e-14, err_msg=name)


def test_weight_decay_penalises_weights_not_biases(backend):
    model, X = _two_two_two(backend, "float64", "mse")
    decayed, _ = _two_two_two(backend, "float64", "mse")
    decayed.l2 = 0.5
    target = np.array([[3.0, -1.0]])
    _, grads = model.loss_and_grads(X, target)
    loss_wd, grads_wd = decayed.loss_and_grads(X, target)
    # sum W**2 = (1 + 1 + 0.25 + 1) + (1 + 1 + 4 + 9) = 18.25; 0.5 / 2 * 18.25 = 4.5625
    assert float(to_numpy(loss_wd)) == 0.625 + 4.5625
    for name in grads:
        extra = 0.5 * model.state_dict()[name] if name.endswith("weight") else 0.0
        np.testing.assert_array_equal(to_numpy(grads_wd[name]), to_numpy(grads[name]) + extra)


# ---------------------------------------------------------------------- initialisation and masks


def test_same_seed_same_weights_on_every_backend(backend, dtype):
    reference = MLP([5, 7, 3], dtype="float64", seed=7).state_dict()
    model = MLP([5, 7, 3], device=backend, dtype=dtype, seed=7)
    for name, value in model.state_dict().items():
        assert model.params[name].dtype == backend.dtype(dtype)
        np.testing.assert_array_equal(value, reference[name].astype(dtype), err_msg=name)


def test_different_seeds_give_different_weights():
    a, b = MLP([5, 7, 3], seed=1).state_dict(), MLP([5, 7, 3], seed=2).state_dict()
    assert not np.array_equal(a["layers.0.weight"], b["layers.0.weight"])
    assert not np.array_equal(a["layers.1.weight"], b["layers.1.weight"])


@pytest.mark.parametrize(
    ("activation", "init", "hidden", "output"),
    [
        ("relu", "auto", "he", "glorot"),
        ("gelu", "auto", "he", "glorot"),
        ("tanh", "auto", "glorot", "glorot"),
        ("sigmoid", "he", "he", "he"),
        ("relu", "glorot", "glorot", "glorot"),
    ],
)
def test_initialisation_schemes(activation, init, hidden, output):
    model = MLP([400, 300, 200], activation=activation, init=init, dtype="float64", seed=3)
    state = model.state_dict()
    for name, scheme in (("layers.0.weight", hidden), ("layers.1.weight", output)):
        weight = state[name]
        fan_in, fan_out = weight.shape
        if scheme == "he":
            assert np.std(weight) == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
            assert np.max(np.abs(weight)) > math.sqrt(6 / (fan_in + fan_out))  # not bounded
        else:
            limit = math.sqrt(6 / (fan_in + fan_out))
            assert np.max(np.abs(weight)) <= limit
            assert np.max(np.abs(weight)) > 0.99 * limit
            assert np.std(weight) == pytest.approx(limit / math.sqrt(3), rel=0.02)
    assert not np.any(state["layers.0.bias"]) and not np.any(state["layers.1.bias"])


def test_dropout_masks_identical_on_every_backend(backend, dtype):
    rate = 0.3
    model = MLP([4, 50, 40, 2], dropout=rate, device=backend, dtype=dtype)
    reference = MLP([4, 50, 40, 2], dropout=rate, dtype="float64")
    masks = model.sample_masks(60, np.random.default_rng(9))
    expected = reference.sample_masks(60, np.random.default_rng(9))
    assert [tuple(m.shape) for m in masks] == [(60, 50), (60, 40)]
    for mask, host in zip(masks, expected):
        assert backend.owns(mask) and mask.dtype == backend.dtype(dtype)
        # float32 and float64 runs drop the same units; kept ones are scaled by 1 / (1 - rate).
        np.testing.assert_array_equal(to_numpy(mask) == 0, host == 0)
        kept = to_numpy(mask)[host != 0]
        np.testing.assert_array_equal(kept, np.asarray(1 / (1 - rate), dtype=dtype))
        assert np.mean(host == 0) == pytest.approx(rate, abs=0.03)


def test_no_dropout_no_masks():
    assert MLP([3, 4, 2]).sample_masks(5) == []


def test_dropout_only_in_training(backend):
    X = np.random.default_rng(0).normal(size=(8, 3))
    model = MLP([3, 16, 2], dropout=0.5, device=backend, dtype="float64")
    evaluation = to_numpy(model.forward(X))
    np.testing.assert_array_equal(to_numpy(model.forward(X)), evaluation)
    assert not np.allclose(to_numpy(model.forward(X, train=True)), evaluation)
    masks = [backend.asarray(np.ones((8, 16)))]
    np.testing.assert_allclose(to_numpy(model.forward(X, train=True, masks=masks)), evaluation)


# ---------------------------------------------------------------------- state and devices


def test_state_dict_round_trip(backend, dtype):
    source = MLP([3, 5, 2], device=backend, dtype=dtype, seed=1)
    target = MLP([3, 5, 2], dtype=dtype, seed=2)
    state = source.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    target.load_state_dict(state)
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value, state[name])
    # Device arrays of any backend load too.
    other = MLP([3, 5, 2], device=backend, dtype=dtype, seed=3)
    other.load_state_dict(source.params)
    for name, value in other.state_dict().items():
        np.testing.assert_array_equal(value, state[name])
        assert backend.owns(other.params[name])


def test_load_state_dict_shape_mismatch_names_the_layer():
    model = MLP([4, 8, 3], seed=0)
    before = model.state_dict()
    state = MLP([4, 6, 3]).state_dict()
    message = "layers.0.weight has shape (4, 6) in the checkpoint but (4, 8) in the model"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(value, before[name])


def test_load_state_dict_names_missing_and_unexpected_parameters():
    model = MLP([4, 8, 3])
    state = model.state_dict()
    del state["layers.1.bias"]
    with pytest.raises(CheckpointError, match=re.escape("missing ['layers.1.bias']")):
        model.load_state_dict(state)
    state = MLP([4, 8, 8, 3]).state_dict()
    with pytest.raises(CheckpointError, match=r"unexpected \['layers.2.weight', 'layers.2.bias'\]"):
        model.load_state_dict(state)


def test_to_moves_params_and_results_agree(backend, dtype):
    X = np.random.default_rng(0).normal(size=(9, 4))
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    model = MLP([4, 6, 3], activation="tanh", dtype=dtype, seed=4)
    state = model.state_dict()
    proba = to_numpy(model.predict_proba(X))
    loss, grads = model.loss_and_grads(X, y)

    assert model.to(backend) is model
    assert model.backend == backend
    for name, value in model.params.items():
        assert backend.owns(value) and value.dtype == backend.dtype(dtype)
        np.testing.assert_array_equal(to_numpy(value), state[name])
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(to_numpy(model.predict_proba(X)), proba, rtol=rtol)
    moved_loss, moved_grads = model.loss_and_grads(backend.asarray(X), backend.asarray(y))
    assert float(to_numpy(moved_loss)) == pytest.approx(float(to_numpy(loss)), rel=rtol)
    for name in grads:
        _assert_close_relative(moved_grads[name], to_numpy(grads[name]), rtol, name)

    model.to("cpu")
    assert model.backend.name == "numpy"
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[name])


def test_config_round_trip(backend):
    model = MLP([3, 4, 2], activation="gelu", loss="mse", dropout=0.1, l2=0.01, seed=5)
    clone = MLP.from_config(model.config(), device=backend, dtype="float64")
    assert clone.config() == {**model.config(), "dtype": "float64"}
    assert clone.backend == backend
    for name, value in clone.state_dict().items():  # the same seed: the same initial weights
        np.testing.assert_array_equal(value.astype(np.float32), model.state_dict()[name])
    assert "MLP(3-4-2, activation=gelu, loss=mse" in repr(clone)


# ---------------------------------------------------------------------- numerical stability


def test_cross_entropy_with_huge_logits_is_finite(backend):
    # One linear layer whose logits are the rows of W (X is the identity): up to 1e4 apart.
    model = MLP([2, 3], device=backend, dtype="float64")
    W = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]])
    model.load_state_dict({"layers.0.weight": W, "layers.0.bias": np.zeros(3)})
    X, y = np.eye(2), np.array([2, 0])
    loss, grads = model.loss_and_grads(X, y)
    # Float64 log-sum-exp: row 0 lse = 1e4, row 1 lse = 1e4 + log 2. The losses are
    # 1e4 - (-1e4) = 2e4 and 1e4 + log 2 - 0; their mean is (3e4 + log 2) / 2.
    lse = np.logaddexp.reduce(W, axis=1)
    expected = np.mean(lse - W[[0, 1], y])
    assert expected == pytest.approx((3e4 + math.log(2)) / 2, rel=1e-15)
    assert float(to_numpy(loss)) == pytest.approx(expected, rel=1e-15)
    softmax = np.exp(W - lse[:, None])
    expected_grad = (softmax - np.eye(3)[y]) / 2  # X = I, so grad W = (p - y) / n row by row
    np.testing.assert_allclose(to_numpy(grads["layers.0.weight"]), expected_grad, atol=1e-16)
    assert all(np.all(np.isfinite(to_numpy(g))) for g in grads.values())
    np.testing.assert_allclose(to_numpy(model.predict_proba(X)), softmax, atol=1e-16)


def test_sigmoid_hidden_layer_at_minus_1000(backend, dtype):
    model = MLP([1, 2, 2], activation="sigmoid", device=backend, dtype=dtype)
    state = model.state_dict()
    state["layers.0.weight"] = np.array([[-1000.0, 1000.0]])
    model.load_state_dict(state)
    loss, grads = model.loss_and_grads(np.array([[1.0]]), np.array([1]))
    assert math.isfinite(float(to_numpy(loss)))
    for grad in grads.values():
        assert np.all(np.isfinite(to_numpy(grad)))
    # Both hidden units are saturated: sigma' = 0, so the first layer learns nothing.
    np.testing.assert_array_equal(to_numpy(grads["layers.0.weight"]), [[0.0, 0.0]])


# ---------------------------------------------------------------------- prediction and inputs


def test_predict_shapes(backend, dtype):
    X = np.random.default_rng(0).normal(size=(11, 4))
    classifier = MLP([4, 5, 3], device=backend, dtype=dtype)
    labels, proba = classifier.predict(X), classifier.predict_proba(X)
    assert tuple(labels.shape) == (11,) and tuple(proba.shape) == (11, 3)
    assert backend.owns(labels) and backend.owns(proba)
    np.testing.assert_allclose(np.sum(to_numpy(proba), axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(labels), np.argmax(to_numpy(proba), axis=1))
    regressor = MLP([4, 5, 2], loss="mse", device=backend, dtype=dtype)
    assert tuple(regressor.predict(X).shape) == (11, 2)
    with pytest.raises(ConfigError, match="predict_proba needs a classification model"):
        regressor.predict_proba(X)


def test_predict_in_chunks_equals_one_pass(backend, monkeypatch):
    X = np.random.default_rng(1).normal(size=(23, 4))
    model = MLP([4, 5, 3], device=backend, dtype="float64")
    whole = to_numpy(model.predict_proba(X))
    monkeypatch.setattr(xpmlp.core.model, "EVAL_BATCH", 5)  # 5 + 5 + 5 + 5 + 3 rows
    np.testing.assert_allclose(to_numpy(model.predict_proba(X)), whole, rtol=1e-14)
    np.testing.assert_array_equal(to_numpy(model.predict(X)), np.argmax(whole, axis=1))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((5,), r"X must have shape \(n_samples, 4\); got \(5,\)"),
        ((5, 3), r"X must have shape \(n_samples, 4\); got \(5, 3\)"),
        ((2, 5, 4), r"got \(2, 5, 4\)"),
    ],
)
def test_bad_input_shape_raises_data_error(backend, shape, message):
    # Named before any matmul, for device arrays and host sequences alike.
    model = MLP([4, 5, 3], device=backend)
    for X in (backend.asarray(np.zeros(shape), "float32"), np.zeros(shape).tolist()):
        for method in (model.predict, model.predict_proba, model.forward, model.outputs):
            with pytest.raises(DataError, match=message):
                method(X)
        with pytest.raises(DataError, match=message):
            model.loss_and_grads(X, np.zeros(5, dtype=np.int64))


def test_host_sequences_and_non_numbers():
    model = MLP([2, 3], dtype="float64")
    expected = model.predict_proba(np.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(model.predict_proba([[1, 2]]), expected)
    with pytest.raises(DataError, match="^X has dtype <U1; expected real numbers$"):
        model.predict(np.array([["a", "b"]]))


def test_bad_targets_raise_data_error(backend):
    classifier = MLP([4, 3], device=backend)
    X = np.zeros((5, 4))
    with pytest.raises(DataError, match=r"labels must have shape \(n_samples,\); got \(5, 1\)"):
        classifier.loss_and_grads(X, np.zeros((5, 1), dtype=np.int64))
    with pytest.raises(DataError, match="X has 5 rows but y has 4"):
        classifier.loss_and_grads(X, np.zeros(4, dtype=np.int64))
    regressor = MLP([4, 2], loss="mse", device=backend)
    with pytest.raises(DataError, match=r"targets must have shape \(n_samples, 2\); got \(5, 3\)"):
        regressor.loss_and_grads(X, np.zeros((5, 3)))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 2, 3, 1], r"labels must be integers in \[0, 3\); found 3 at row 2"),
        ([0, -1, 1, 1], "found -1 at row 1"),
        ([0.0, 1.0, 1.5, 2.0], "found 1.5 at row 2"),
        ([0.0, 1.0, 2.0, np.nan], "found nan at row 3"),
    ],
)
def test_labels_out_of_range_raise_data_error(backend, labels, message):
    # A label >= n_classes would one-hot to a zero row: the loss would be silently wrong.
    model = MLP([4, 3], device=backend)
    with pytest.raises(DataError, match=message):
        model.loss_and_grads(np.zeros((4, 4)), np.array(labels))


def test_integral_float_labels_are_accepted(backend):
    model = MLP([4, 3], device=backend, dtype="float64")
    as_float, _ = model.loss_and_grads(np.eye(4), np.array([0.0, 1.0, 2.0, 1.0]))
    as_int, _ = model.loss_and_grads(np.eye(4), np.array([0, 1, 2, 1]))
    assert float(to_numpy(as_float)) == float(to_numpy(as_int))


def test_mse_with_one_output_accepts_flat_targets(backend):
    model = MLP([2, 1], loss="mse", device=backend, dtype="float64")
    X, y = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, -1.0])
    flat, _ = model.loss_and_grads(X, y)
    column, _ = model.loss_and_grads(X, y[:, None])
    assert float(to_numpy(flat)) == float(to_numpy(column))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer_sizes": [4]}, "layer_sizes must be at least two positive integers"),
        ({"layer_sizes": [4, 0, 2]}, r"got \[4, 0, 2\]"),
        ({"layer_sizes": [4, 2.5, 2]}, "layer_sizes must be at least two positive integers"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\); got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"l2": -1e-4}, "l2 must be >= 0"),
        ({"init": "xavier"}, "init must be auto, he or glorot; got 'xavier'"),
        ({"dtype": "float16"}, "dtype must be one of float32, float64; got 'float16'"),
    ],
)
def test_invalid_config_raises_config_error(kwargs, message):
    kwargs = {"layer_sizes": [4, 3, 2], **kwargs}
    with pytest.raises(ConfigError, match=message):
        MLP(kwargs.pop("layer_sizes"), **kwargs)


# ---------------------------------------------------------------------- the public forward record


def test_forward_record_names_what_each_layer_saw(backend):
    model = MLP([4, 6, 5, 3], activation="tanh", dropout=0.5, device=backend, dtype="float64")
    X = np.random.default_rng(0).normal(size=(7, 4))
    masks = model.sample_masks(7, np.random.default_rng(1))
    outputs, records = model.forward_record(X, masks)
    assert len(records) == 3
    host = {name: to_numpy(v) for name, v in model.params.items()}
    inputs = X
    for i, record in enumerate(records):
        np.testing.assert_allclose(to_numpy(record.inputs), inputs, rtol=1e-12)
        z = inputs @ host[f"layers.{i}.weight"] + host[f"layers.{i}.bias"]
        np.testing.assert_allclose(to_numpy(record.pre_activation), z, rtol=1e-12)
        if i == 2:  # the output layer: raw outputs, no activation, no dropout
            assert record.activation is None and record.mask is None
            np.testing.assert_array_equal(to_numpy(outputs), to_numpy(record.pre_activation))
        else:
            np.testing.assert_allclose(to_numpy(record.activation), np.tanh(z), rtol=1e-12)
            np.testing.assert_array_equal(to_numpy(record.mask), to_numpy(masks[i]))
            inputs = np.tanh(z) * to_numpy(masks[i])


def test_public_backward_and_output_loss_give_loss_and_grads(backend, make_problem):
    model = MLP([3, 5, 2], dropout=0.3, device=backend, dtype="float64", seed=2)
    X, y = make_problem(n=9)
    masks = model.sample_masks(9, np.random.default_rng(3))
    loss, grads = model.loss_and_grads(X, y, masks=masks)
    outputs, records = model.forward_record(X, masks)
    own_loss, grad_outputs = model.output_loss(outputs, model.targets(model.as_target(y)))
    own = model.backward(grad_outputs, records)
    assert float(to_numpy(own_loss)) == float(to_numpy(loss))
    for name in grads:
        np.testing.assert_array_equal(to_numpy(own[name]), to_numpy(grads[name]))


def test_outputs_are_chunked_without_changing_them(backend):
    model = MLP([4, 6, 3], device=backend, dtype="float64")
    X = np.random.default_rng(0).normal(size=(23, 4))
    whole = to_numpy(model.outputs(X, batch_size=100))
    np.testing.assert_allclose(to_numpy(model.outputs(X, batch_size=5)), whole, rtol=1e-14)
    assert tuple(model.outputs(X[:0]).shape) == (0, 3)


@pytest.mark.parametrize("key", [(0,), (1, 2, 0, 3, 1), (2**40 + 7, 2, 5, 9, 0)])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (128, 300)])
def test_device_masks_are_the_same_bits_on_every_backend(backend, key, shape):
    # NumPy and CuPy take a uint32 path, array-api-strict and torch a portable int64 one: the
    # same bits, compared here with NumPy's.
    from xpmlp.core import rng

    expected = rng.dropout_mask(np, shape, 0.3, key, dtype=np.float64, device=None)
    with backend.activate():  # rng runs on the current device; the model makes its own current
        mask = rng.dropout_mask(backend.xp, shape, 0.3, key, dtype=backend.dtype("float64"),
                                device=backend.device)  # fmt: skip
    assert backend.owns(mask)
    np.testing.assert_array_equal(to_numpy(mask), expected)


def test_device_masks_drop_at_the_rate_independently():
    from xpmlp.core import rng

    masks = np.stack([rng.dropout_mask(np, (500, 200), 0.25, (3, i), dtype=np.float64, device=None)
                      for i in range(10)])  # fmt: skip
    dropped = masks == 0
    assert dropped.mean() == pytest.approx(0.25, abs=0.005)
    assert abs(np.corrcoef(dropped[:, :, :-1].ravel(), dropped[:, :, 1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(dropped[:-1].ravel(), dropped[1:].ravel())[0, 1]) < 0.01
    np.testing.assert_array_equal(masks[~dropped], 1 / 0.75)
