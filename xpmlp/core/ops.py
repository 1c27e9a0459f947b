"""Where gradients are derived: each operation's forward formula with its backward rule beneath it.

Every function takes the Array API namespace ``xp`` first and never creates arrays on a device
of its own choosing: outputs live wherever the inputs do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError

LEAKY_SLOPE = 0.01
_GELU_C = math.sqrt(2.0 / math.pi)


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity ``a = f(z)``.

    ``backward(xp, z, a, grad_a)`` returns ``grad_z = grad_a * f'(z)``; it may use the
    pre-activation ``z`` or the output ``a``, whichever makes the derivative exact and cheap.
    ``init`` names the weight initialisation that keeps activations' variance stable.
    """

    name: str
    forward: Callable
    backward: Callable
    init: str


def _relu(xp, z):
    return xp.maximum(z, 0)


def _relu_backward(xp, z, a, grad):
    # f'(z) = 1 where z > 0, else 0 (the derivative of max(z, 0), not of softplus).
    return grad * xp.astype(z > 0, grad.dtype)


def _leaky_relu(xp, z):
    return xp.where(z > 0, z, z * LEAKY_SLOPE)


def _leaky_relu_backward(xp, z, a, grad):
    return xp.where(z > 0, grad, grad * LEAKY_SLOPE)


def _tanh(xp, z):
    return xp.tanh(z)


def _tanh_backward(xp, z, a, grad):
    return grad * (1 - a * a)


def _sigmoid(xp, z):
    # 1 / (1 + exp(-z)) overflows exp for z << 0; the tanh form is exact and never overflows.
    return 0.5 * (xp.tanh(0.5 * z) + 1)


def _sigmoid_backward(xp, z, a, grad):
    return grad * a * (1 - a)


def _gelu(xp, z):
    # The tanh approximation (Hendrycks & Gimpel): the standard has no erf.
    return 0.5 * z * (1 + xp.tanh(_GELU_C * (z + 0.044715 * z * z * z)))


def _gelu_backward(xp, z, a, grad):
    t = xp.tanh(_GELU_C * (z + 0.044715 * z * z * z))
    dt_dz = (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * z * z)
    return grad * (0.5 * (1 + t) + 0.5 * z * dt_dz)


def _identity(xp, z):
    return z


def _identity_backward(xp, z, a, grad):
    return grad


ACTIVATIONS = {
    act.name: act
    for act in (
        Activation("relu", _relu, _relu_backward, "he"),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_backward, "he"),
        Activation("gelu", _gelu, _gelu_backward, "he"),
        Activation("tanh", _tanh, _tanh_backward, "glorot"),
        Activation("sigmoid", _sigmoid, _sigmoid_backward, "glorot"),
        Activation("identity", _identity, _identity_backward, "glorot"),
    )
}


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(
            f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}"
        ) from None


def one_hot(xp, y, n_classes: int, dtype):
    """Integer labels ``y`` of shape (n,) to a (n, n_classes) one-hot matrix on y's device."""
    classes = xp.arange(n_classes, dtype=y.dtype, device=y.device)
    return xp.astype(y[:, None] == classes[None, :], dtype)


def log_softmax(xp, logits):
    """Row-wise log-softmax through log-sum-exp: exp never sees a positive argument."""
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def softmax(xp, logits):
    return xp.exp(log_softmax(xp, logits))


def softmax_cross_entropy(xp, logits, targets):
    """Mean cross-entropy of softmax(logits) against one-hot ``targets``, and its gradient.

    Parameters
    ----------
    logits : array of shape (n_samples, n_classes)
    targets : array of shape (n_samples, n_classes), one-hot rows

    Returns
    -------
    loss : 0-d array, the batch mean
    grad_logits : array of shape (n_samples, n_classes)

    Notes
    -----
    For softmax followed by cross-entropy the chain rule collapses:
    dL/dz = (softmax(z) - onehot) / n. The softmax Jacobian is never formed; multiplying it in
    again on top of this (a common hand-written bug) double-counts it.
    """
    total, grad = softmax_cross_entropy_total(xp, logits, targets)
    return total / logits.shape[0], grad


def softmax_cross_entropy_total(xp, logits, targets):
    """The cross-entropy summed over samples (each row's ``-log p[label]`` added in row order),
    and the gradient of its mean as :func:`softmax_cross_entropy` gives it."""
    n = logits.shape[0]
    logp = log_softmax(xp, logits)
    total = -xp.sum(xp.sum(targets * logp, axis=1))
    return total, (xp.exp(logp) - targets) / n


def mean_squared_error(xp, outputs, targets):
    """Mean over all elements of (outputs - targets)**2 (as torch's MSELoss), and its gradient.

    Parameters
    ----------
    outputs, targets : arrays of shape (n_samples, n_outputs)
    """
    diff = outputs - targets
    count = diff.shape[0] * diff.shape[1]
    return xp.sum(diff * diff) / count, diff * (2.0 / count)


def half_squared_error(xp, outputs, targets):
    """Half the squared error summed over outputs, averaged over samples, and its gradient
    ``(outputs - targets) / n``: the function scikit-learn's MLPRegressor steps down (with one
    output, half the mean squared error)."""
    diff = outputs - targets
    return 0.5 * xp.sum(diff * diff) / diff.shape[0], diff / diff.shape[0]


def _binary_cross_entropy_terms(xp, logits, targets):
    # -t log(sigmoid(z)) - (1 - t) log(1 - sigmoid(z)) = max(z, 0) - t z + log(1 + exp(-|z|)),
    # which never overflows.
    return xp.maximum(logits, 0.0) - targets * logits + xp.log1p(xp.exp(-xp.abs(logits)))


def binary_cross_entropy(xp, logits, targets):
    """Cross-entropy of sigmoid outputs against 0/1 targets, one per output (binary or
    multilabel classification), summed over outputs and averaged over samples as scikit-learn's
    binary log-loss; computed from the logits. Returns the loss and its gradient."""
    n = logits.shape[0]
    total = xp.sum(_binary_cross_entropy_terms(xp, logits, targets))
    return total / n, (_sigmoid(xp, logits) - targets) / n


def _half_poisson_terms(xp, logits, targets):
    # Half the Poisson deviance of exp(z) against y: y log(y / exp(z)) - y + exp(z), with
    # y log(y) = 0 at y = 0.
    y_log_y = xp.where(targets > 0, targets * xp.log(xp.where(targets > 0, targets, 1.0)), 0.0)
    return y_log_y - targets * logits - targets + xp.exp(logits)


def half_poisson_deviance(xp, logits, targets):
    """Half the Poisson deviance of the predictions ``exp(logits)`` (a log link) against
    targets >= 0, summed over outputs and averaged over samples (scikit-learn's poisson loss),
    and its gradient ``(exp(logits) - targets) / n``."""
    n = logits.shape[0]
    return xp.sum(_half_poisson_terms(xp, logits, targets)) / n, (xp.exp(logits) - targets) / n


# Each loss's terms per element: a loss is their sum over outputs, averaged over samples (mse
# also averages over outputs).
_PER_ELEMENT = {
    "cross_entropy": lambda xp, z, t: -t * log_softmax(xp, z),
    "mse": lambda xp, z, t: (z - t) * (z - t) / z.shape[1],
    "half_squared_error": lambda xp, z, t: 0.5 * (z - t) * (z - t),
    "binary_cross_entropy": _binary_cross_entropy_terms,
    "half_poisson": _half_poisson_terms,
}

LOSSES = {
    "cross_entropy": softmax_cross_entropy,
    "mse": mean_squared_error,
    "half_squared_error": half_squared_error,
    "binary_cross_entropy": binary_cross_entropy,
    "half_poisson": half_poisson_deviance,
}


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None


def weighted_loss(xp, name: str, outputs, targets, weights):
    """The loss ``sum(w_i * l_i) / sum(w)`` over the batch (sample weights, as scikit-learn's),
    and its gradient: each row of the unweighted mean's gradient times ``n * w_i / sum(w)``.

    With all weights equal it is the unweighted mean; a zero weight takes a sample out.
    """
    n = outputs.shape[0]
    _, grad = get_loss(name)(xp, outputs, targets)
    per_sample = xp.sum(_PER_ELEMENT[name](xp, outputs, targets), axis=1)
    share = weights / xp.sum(weights)
    return xp.sum(share * per_sample), grad * (share * n)[:, None]
