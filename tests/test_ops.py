"""Activations, losses and their backward rules, against independent float64 NumPy formulas."""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from tolerances import rtol_for

from xpmlp import ConfigError, to_numpy
from xpmlp.core import ops

# Independent float64 references, written from the textbook definitions.
REFERENCE = {
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "gelu": lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))),
    "identity": lambda z: z,
}
# Points away from the kinks of relu and leaky_relu at 0, where the derivative is undefined.
Z = np.array([[-3.0, -1.2, -0.3, 0.2], [0.7, 1.5, 2.5, -0.05]])


def _lse(logits: np.ndarray) -> np.ndarray:
    return np.logaddexp.reduce(logits, axis=1, keepdims=True)


def test_registry_is_complete():
    assert set(ops.ACTIVATIONS) == set(REFERENCE)
    assert set(ops.LOSSES) == {
        "cross_entropy", "mse", "half_squared_error", "binary_cross_entropy", "half_poisson"
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_activation_forward(backend, dtype, name):
    act = ops.get_activation(name)
    z = backend.asarray(Z, dtype)
    a = act.forward(backend.xp, z)
    assert a.dtype == z.dtype
    assert array_api_compat.device(a) == array_api_compat.device(z)
    rtol = rtol_for(backend, 1e-6 if dtype == "float32" else 1e-14)
    np.testing.assert_allclose(to_numpy(a), REFERENCE[name](Z), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_activation_backward_matches_central_differences(backend, name):
    act = ops.get_activation(name)
    xp = backend.xp
    z = backend.asarray(Z, "float64")
    grad_a = backend.asarray(np.linspace(-1.0, 2.0, Z.size).reshape(Z.shape), "float64")
    grad_z = act.backward(xp, z, act.forward(xp, z), grad_a)
    assert array_api_compat.device(grad_z) == array_api_compat.device(z)
    eps = 1e-6
    numeric = (REFERENCE[name](Z + eps) - REFERENCE[name](Z - eps)) / (2 * eps)
    np.testing.assert_allclose(to_numpy(grad_z), to_numpy(grad_a) * numeric, rtol=1e-8, atol=1e-9)


def test_sigmoid_does_not_overflow(backend, dtype):
    # 1 / (1 + exp(1000)) overflows exp; with warnings as errors that would fail here.
    act = ops.get_activation("sigmoid")
    z = backend.asarray(np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]]), dtype)
    a = act.forward(backend.xp, z)
    grad = act.backward(backend.xp, z, a, backend.xp.ones_like(z))
    a, grad = to_numpy(a), to_numpy(grad)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(grad))
    assert a[0, 0] == 0.0 and a[0, 2] == 0.5 and a[0, 4] == 1.0
    assert grad[0, 0] == 0.0 and grad[0, 2] == 0.25 and grad[0, 4] == 0.0


@pytest.mark.parametrize("name", ["tanh", "gelu", "leaky_relu"])
def test_activations_stay_finite_at_extremes(backend, name):
    act = ops.get_activation(name)
    z = backend.asarray(np.array([[-1e4, -1e2, 1e2, 1e4]]), "float64")
    a = act.forward(backend.xp, z)
    grad = act.backward(backend.xp, z, a, backend.xp.ones_like(z))
    assert np.all(np.isfinite(to_numpy(a))) and np.all(np.isfinite(to_numpy(grad)))


def test_unknown_names_raise_config_error():
    with pytest.raises(ConfigError, match="unknown activation 'swish'; choose one of relu"):
        ops.get_activation("swish")
    with pytest.raises(ConfigError, match="unknown loss 'hinge'; choose one of cross_entropy, mse"):
        ops.get_loss("hinge")


def test_one_hot(backend, dtype):
    y = backend.asarray(np.array([2, 0, 1, 2], dtype=np.int64))
    encoded = ops.one_hot(backend.xp, y, 3, backend.dtype(dtype))
    assert encoded.dtype == backend.dtype(dtype)
    assert array_api_compat.device(encoded) == array_api_compat.device(y)
    np.testing.assert_array_equal(to_numpy(encoded), np.eye(3)[[2, 0, 1, 2]])


def test_cross_entropy_with_huge_logits(backend):
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4], [-1e4, -1e4, -1e4]])
    labels = np.array([1, 2, 0])
    targets = np.eye(3)[labels]
    loss, grad = ops.softmax_cross_entropy(
        backend.xp, backend.asarray(logits, "float64"), backend.asarray(targets, "float64")
    )
    loss, grad = float(to_numpy(loss)), to_numpy(grad)
    # Row 0: lse = 1e4 + log(1 + 2e^-1e4) = 1e4, loss 1e4 - 0; row 1: lse = 1e4 + log 2, loss
    # log 2; row 2: all equal, loss log 3. The mean is (1e4 + log 2 + log 3) / 3.
    expected = float(np.mean(_lse(logits)[:, 0] - logits[np.arange(3), labels]))
    assert expected == pytest.approx((1e4 + math.log(2) + math.log(3)) / 3, rel=1e-15)
    assert loss == pytest.approx(expected, rel=rtol_for(backend, 1e-14))
    # softmax rows: [1, e^-1e4, 0] = [1, 0, 0]; [0, 1/2, 1/2]; [1/3, 1/3, 1/3]. Minus the
    # one-hot rows of labels (1, 2, 0), over n = 3:
    expected_grad = np.array([[1, -1, 0], [0, 1 / 2, -1 / 2], [-2 / 3, 1 / 3, 1 / 3]]) / 3
    np.testing.assert_allclose(grad, expected_grad, rtol=rtol_for(backend, 1e-14), atol=1e-300)


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n(backend, dtype):
    logits = np.array([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]])
    targets = np.eye(3)[[2, 0]]
    loss, grad = ops.softmax_cross_entropy(
        backend.xp, backend.asarray(logits, dtype), backend.asarray(targets, dtype)
    )
    assert loss.dtype == backend.dtype(dtype) and grad.dtype == backend.dtype(dtype)
    softmax = np.exp(logits - _lse(logits))
    rtol = rtol_for(backend, 1e-6 if dtype == "float32" else 1e-14)
    np.testing.assert_allclose(to_numpy(grad), (softmax - targets) / 2, rtol=rtol)
    expected = -np.mean(np.log(softmax[[0, 1], [2, 0]]))
    assert float(to_numpy(loss)) == pytest.approx(expected, rel=rtol)


def test_mse_is_mean_over_all_elements(backend):
    outputs = np.array([[1.0, 2.0], [3.0, 5.0], [0.0, -1.0]])
    targets = np.array([[0.0, 2.0], [1.0, 1.0], [0.5, -1.5]])
    loss, grad = ops.mean_squared_error(
        backend.xp, backend.asarray(outputs, "float64"), backend.asarray(targets, "float64")
    )
    # diff = [[1, 0], [2, 4], [-0.5, 0.5]]; squares sum to 1 + 4 + 16 + 0.25 + 0.25 = 21.5,
    # over 6 elements: 3.583...; the gradient is 2 * diff / 6.
    assert float(to_numpy(loss)) == pytest.approx(21.5 / 6, rel=1e-15)
    np.testing.assert_allclose(to_numpy(grad), (outputs - targets) / 3, rtol=1e-15)
    half, half_grad = ops.half_squared_error(
        backend.xp, backend.asarray(outputs, "float64"), backend.asarray(targets, "float64")
    )  # scikit-learn's squared error
    assert float(to_numpy(half)) == pytest.approx(21.5 / 2 / 3, rel=1e-15)  # summed over outputs
    np.testing.assert_allclose(to_numpy(half_grad), (outputs - targets) / 3, rtol=1e-15)


def test_binary_cross_entropy_by_hand_and_at_huge_logits(backend):
    logits = np.array([[0.0, 2.0], [-1.0, 1e4], [-1e4, 3.0]])
    targets = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    loss, grad = ops.binary_cross_entropy(
        backend.xp, backend.asarray(logits, "float64"), backend.asarray(targets, "float64")
    )
    p = 1 / (1 + np.exp(-np.clip(logits, -700, 700)))
    # Huge logits with the matching target contribute 0 (log(1 + e^-10000) underflows to 0).
    terms = [-np.log(p[0, 0]), -np.log(1 - p[0, 1]), -np.log(1 - p[1, 0]), 0.0, 0.0,
             -np.log(p[2, 1])]  # fmt: skip
    assert float(to_numpy(loss)) == pytest.approx(sum(terms) / 3, rel=1e-14)
    np.testing.assert_allclose(to_numpy(grad), (p - targets) / 3, rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("name", sorted(ops.LOSSES))
def test_equal_sample_weights_give_the_unweighted_loss(backend, name):
    generator = np.random.default_rng(0)
    outputs = backend.asarray(generator.normal(size=(5, 3)), "float64")
    targets = backend.asarray(np.eye(3)[[0, 2, 1, 1, 0]], "float64")
    weights = backend.asarray(np.full(5, 0.7), "float64")
    loss, grad = ops.get_loss(name)(backend.xp, outputs, targets)
    weighted, weighted_grad = ops.weighted_loss(backend.xp, name, outputs, targets, weights)
    assert float(to_numpy(weighted)) == pytest.approx(float(to_numpy(loss)), rel=1e-14)
    np.testing.assert_allclose(to_numpy(weighted_grad), to_numpy(grad), rtol=1e-14)


@given(
    logits=arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 6)),
        elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
    )
)
def test_log_softmax_is_stable(backend, logits):
    logp = to_numpy(ops.log_softmax(backend.xp, backend.asarray(logits, "float64")))
    assert np.all(np.isfinite(logp))
    assert np.all(logp <= 0.0)
    # The reference subtracts two numbers as large as the logits: allow a few of their ulps.
    atol = 8 * np.spacing(np.max(np.abs(logits), initial=1.0))
    np.testing.assert_allclose(
        logp, logits - _lse(logits), rtol=rtol_for(backend, 1e-13), atol=atol
    )
    np.testing.assert_allclose(np.sum(np.exp(logp), axis=1), 1.0, rtol=1e-12)


@given(
    logits=arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.just(4)),
        elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
    ),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_gradient_rows_sum_to_zero(backend, logits, seed):
    labels = np.random.default_rng(seed).integers(0, 4, size=logits.shape[0])
    targets = np.eye(4)[labels]
    loss, grad = ops.softmax_cross_entropy(
        backend.xp, backend.asarray(logits, "float64"), backend.asarray(targets, "float64")
    )
    loss, grad = float(to_numpy(loss)), to_numpy(grad)
    assert math.isfinite(loss) and loss >= 0.0
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(np.sum(grad, axis=1), 0.0, atol=1e-15)
