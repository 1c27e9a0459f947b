"""Hand-written NumPy MLPs as users write them, for the doctor's tests: one vectorised network in
row-major layout that takes its bugs as a parameter (``bugs={"derivative_of_z": {1}}``: that bug
at hidden layer 1), and networks written natively in the other layouts (column-major, bias
folded into W, no biases, one sample at a time, weights in a dict).

Each bug name maps to the code the doctor must report (``CODES``).
"""

from __future__ import annotations

import numpy as np

CODES = {
    "sign_flipped": "sign_flipped",
    "missing_batch_mean": "missing_batch_mean",
    "softmax_jacobian_twice": "softmax_jacobian_twice",  # diag(p(1-p)) on top of p - y
    "softmax_jacobian_full": "softmax_jacobian_twice",  # the full Jacobian on top of p - y
    "softmax_jacobian_diagonal": "softmax_jacobian_diagonal",  # diag only, on -y/p
    "sigmoid_derivative_twice": "sigmoid_derivative_twice",
    "derivative_missing": "activation_derivative_missing",
    "derivative_twice": "activation_derivative_twice",
    "derivative_of_z": "activation_derivative_wrong",
    "derivative_of_a": "activation_derivative_wrong",
    "relu_softplus": "activation_derivative_wrong",
    "relu_mask_reversed": "relu_mask_wrong",
    "through_updated_W": "delta_through_wrong_weights",
    "bias_over_units": "bias_gradient_wrong",
    "bias_one_number": "bias_gradient_wrong",
    "bias_one_sample": "bias_gradient_wrong",
    "input_is_z": "wrong_layer_input",
    "transposed": "transposed",
    "relu_floor": "activation_forward_wrong",
}
OUTPUT_BUGS = {"sign_flipped", "missing_batch_mean", "softmax_jacobian_twice",
               "softmax_jacobian_full", "softmax_jacobian_diagonal", "sigmoid_derivative_twice"}  # fmt: skip


def act(name, z, *, floor=False):
    if name == "relu":
        return np.maximum(z, 0.001 if floor else 0.0)
    return np.tanh(z) if name == "tanh" else 1 / (1 + np.exp(-z))


def derivative(name, z, a, bug=None):
    """f'(z) as written right, or with one of the derivative bugs."""
    if bug == "derivative_missing":
        return np.ones_like(z)
    if bug == "relu_softplus":
        return np.log1p(np.exp(z))
    if bug == "relu_mask_reversed":
        return (z < 0) * 1.0
    if bug == "derivative_of_z":
        return {"relu": (z > 0) * 1.0, "tanh": 1 - z**2, "sigmoid": z * (1 - z)}[name]
    if bug == "derivative_of_a":
        s = 1 / (1 + np.exp(-a))
        return {"relu": (a > 0) * 1.0, "tanh": 1 - np.tanh(a) ** 2, "sigmoid": s * (1 - s)}[name]
    right = {"relu": (z > 0) * 1.0, "tanh": 1 - a**2, "sigmoid": a * (1 - a)}[name]
    return right * right if bug == "derivative_twice" else right


def net(activation="relu", output="softmax", *, bugs=None, bias=True, labels="onehot", lr=0.1):
    """A vectorised row-major backprop: X (n, n_in), W (fan_in, fan_out).

    ``bugs``: name -> the 1-based layers it is planted at (output bugs: any value).
    """
    bugs = {name: set(layers) if isinstance(layers, set | tuple | list) else {layers}
            for name, layers in (bugs or {}).items()}  # fmt: skip

    def at(name, layer):
        return layer in bugs.get(name, ())

    def grads(weights, biases, X, Y):
        L, n = len(weights), X.shape[0]
        biases = biases if bias else [0.0] * L
        T = np.eye(weights[-1].shape[1])[Y] if labels == "int" else Y
        acts, zs = [X], []
        for W, b in zip(weights[:-1], biases[:-1]):
            zs.append(acts[-1] @ W + b)
            acts.append(act(activation, zs[-1], floor="relu_floor" in bugs))
        out = acts[-1] @ weights[-1] + biases[-1]
        if output == "softmax":
            e = np.exp(out - out.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
        else:
            p = 1 / (1 + np.exp(-out)) if output == "sigmoid" else out
        delta = p - T
        if "softmax_jacobian_twice" in bugs or "sigmoid_derivative_twice" in bugs:
            delta = delta * p * (1 - p)
        if "softmax_jacobian_full" in bugs:
            delta = p * delta - p * (p * delta).sum(axis=1, keepdims=True)
        if "softmax_jacobian_diagonal" in bugs:
            delta = (-T / p) * p * (1 - p)
        if "missing_batch_mean" not in bugs:
            delta = delta / n
        if "sign_flipped" in bugs:
            delta = -delta
        dW, db = [None] * L, [None] * L
        for i in reversed(range(L)):
            layer = i + 1
            source = zs[i - 1] if at("input_is_z", layer) else acts[i]
            dW[i] = source.T @ delta
            db[i] = delta.sum(axis=0)
            if at("bias_over_units", layer):
                db[i] = np.full(delta.shape[1], delta.sum())
            if at("bias_one_number", layer):
                db[i] = delta.sum()
            if at("bias_one_sample", layer):
                db[i] = delta[-1]
            if at("transposed", layer):
                dW[i] = dW[i].T
            if i:
                W = weights[i] - lr * dW[i] if at("through_updated_W", layer - 1) else weights[i]
                bug = next((b for b in bugs if at(b, layer - 1) and b not in OUTPUT_BUGS), None)
                delta = (delta @ W.T) * derivative(activation, zs[i - 1], acts[i], bug)
        return (dW, db) if bias else dW

    return grads


def expected(bugs: dict) -> set[str]:
    return {CODES[name] for name in bugs}


# ---------------------------------------------------------------------- other layouts, written natively


def column_major(bug=None):
    """One tanh hidden layer, column-major: X (n_in, n), W (fan_out, fan_in), b (fan_out, 1)."""

    def grads(weights, biases, X, Y):
        n = X.shape[1]
        z1 = weights[0] @ X + biases[0]
        h = np.tanh(z1)
        logits = weights[1] @ h + biases[1]
        e = np.exp(logits - logits.max(axis=0, keepdims=True))
        p = e / e.sum(axis=0, keepdims=True)
        d2 = (p - Y) / n
        d1 = (weights[1].T @ d2) * (1 - (z1**2 if bug == "derivative_of_z" else h**2))
        db1 = d1.sum(axis=1, keepdims=True)
        if bug == "bias_over_units":
            db1 = np.full_like(db1, d1.sum())
        return [d1 @ X.T, d2 @ h.T], [db1, d2.sum(axis=1, keepdims=True)]

    return grads


def folded_bias(bug=None, *, first=False):
    """Bias as a row of each W, a ones column on each layer's input; one sigmoid hidden layer."""

    def ones(A):
        column = np.ones((A.shape[0], 1))
        return np.hstack([column, A] if first else [A, column])

    def grads(weights, biases, X, Y):
        n = X.shape[0]
        X1 = ones(X)
        h = 1 / (1 + np.exp(-(X1 @ weights[0])))
        H1 = ones(h)
        logits = H1 @ weights[1]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        d2 = (p - Y) / (1 if bug == "missing_batch_mean" else n)
        W2 = weights[1][1:] if first else weights[1][:-1]
        d1 = (d2 @ W2.T) * h * (1 - h)
        return [X1.T @ d1, H1.T @ d2]

    return grads


def no_bias_mse(bug=None, *, scale="half_mean"):
    """No biases, ReLU, identity outputs with a squared error of the given convention."""
    factor = {"half_mean": 1.0, "full_mean": 2.0, "full_sum": 2.0}[scale]

    def grads(weights, biases, X, Y):
        assert biases is None
        n = X.shape[0]
        z1 = X @ weights[0]
        h = np.maximum(z1, 0)
        out = h @ weights[1]
        d2 = factor * (out - Y) / (1 if scale.endswith("sum") else n)
        mask = (z1 < 0) if bug == "relu_mask_reversed" else (z1 > 0)
        d1 = (d2 @ weights[1].T) * mask
        return [X.T @ d1, h.T @ d2]

    def loss(weights, biases, X, Y):
        out = np.maximum(X @ weights[0], 0) @ weights[1]
        total = np.sum((out - Y) ** 2)
        return total / (2 * len(X)) if scale == "half_mean" else (
            total / len(X) if scale == "full_mean" else total)  # fmt: skip

    return grads, loss


def sigmoid_bce(bug=None):
    """Sigmoid outputs with binary cross-entropy (mean over samples), one ReLU hidden layer."""

    def grads(weights, biases, X, Y):
        n = X.shape[0]
        z1 = X @ weights[0] + biases[0]
        h = np.maximum(z1, 0)
        s = 1 / (1 + np.exp(-(h @ weights[1] + biases[1])))
        d2 = (s - Y) / n
        if bug == "sigmoid_derivative_twice":
            d2 = d2 * s * (1 - s)
        d1 = (d2 @ weights[1].T) * (np.ones_like(z1) if bug == "derivative_missing" else z1 > 0)
        return [X.T @ d1, h.T @ d2], [d1.sum(axis=0), d2.sum(axis=0)]

    return grads


def dict_weights(weights_dict_grads):
    """The few lines a user with weights in a dict {'W1', 'b1', ...} writes for the doctor."""

    def grads(weights, biases, X, Y):
        params = {f"{kind}{i + 1}": value for i, (W, b) in enumerate(zip(weights, biases))
                  for kind, value in (("W", W), ("b", b))}  # fmt: skip
        g = weights_dict_grads(params, X, Y)
        return [g[f"W{i + 1}"] for i in range(len(weights))], [
            g[f"b{i + 1}"] for i in range(len(weights))
        ]

    return grads


def one_sample_at_a_time(single):
    """The few lines a user whose backprop takes one sample as a column vector writes."""

    def grads(weights, biases, X, Y):
        sums = None
        for x, y in zip(X, Y):
            g = single([W.T for W in weights], [b[:, None] for b in biases], x[:, None], y[:, None])
            flat = [gw.T for gw in g[0]] + [gb.ravel() for gb in g[1]]
            sums = flat if sums is None else [s + f for s, f in zip(sums, flat)]
        half = len(weights)
        return [s / len(X) for s in sums[:half]], [s / len(X) for s in sums[half:]]

    return grads


def single_sample_tanh(weights, biases, x, y):
    """Column-vector backprop of one sample: W (fan_out, fan_in), x (n_in, 1), y one-hot (k, 1)."""
    z1 = weights[0] @ x + biases[0]
    h = np.tanh(z1)
    logits = weights[1] @ h + biases[1]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    d2 = p - y
    d1 = (weights[1].T @ d2) * (1 - h**2)
    return [d1 @ x.T, d2 @ h.T], [d1, d2]


def andrew_ng(*, no_mean_at=None, output="sigmoid"):
    """Column-major, the 1/m applied to each layer's dW and db (not to the delta): two ReLU
    hidden layers; ``no_mean_at``: the 1-based layer whose dW and db forget it."""

    def grads(W, b, X, Y):
        m = X.shape[1]
        A, Z = [X], []
        for Wi, bi in zip(W[:-1], b[:-1]):
            Z.append(Wi @ A[-1] + bi)
            A.append(np.maximum(Z[-1], 0))
        out = W[-1] @ A[-1] + b[-1]
        P = 1 / (1 + np.exp(-out)) if output == "sigmoid" else out
        dZ = P - Y
        dW, db = [None] * len(W), [None] * len(W)
        for i in reversed(range(len(W))):
            scale = 1.0 if no_mean_at == i + 1 else 1 / m
            dW[i] = scale * dZ @ A[i].T
            db[i] = scale * dZ.sum(axis=1, keepdims=True)
            if i:
                dZ = (W[i].T @ dZ) * (Z[i - 1] > 0)
        return dW, db

    return grads
