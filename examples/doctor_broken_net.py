"""A hand-written NumPy MLP with two classic backprop bugs, for `xpmlp doctor`:

    xpmlp doctor examples/doctor_broken_net.py

The doctor names both: the softmax Jacobian multiplied onto p - y, and tanh's derivative taken
of the pre-activation. Fix them and it reports a clean bill.
"""

import numpy as np

LAYER_SIZES = [784, 64, 10]
ACTIVATION = "tanh"
LABELS = "onehot"


def forward(weights, biases, X):
    h = np.tanh(X @ weights[0] + biases[0])
    logits = h @ weights[1] + biases[1]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def grads(weights, biases, X, Y):
    n = X.shape[0]
    z1 = X @ weights[0] + biases[0]
    h = np.tanh(z1)
    p = forward(weights, biases, X)
    delta2 = (p - Y) * p * (1 - p) / n  # bug: softmax + cross-entropy's delta is p - Y
    dW2, db2 = h.T @ delta2, delta2.sum(axis=0)
    delta1 = (delta2 @ weights[1].T) * (1 - z1**2)  # bug: 1 - tanh(z1)**2, i.e. 1 - h**2
    dW1, db1 = X.T @ delta1, delta1.sum(axis=0)
    return [dW1, dW2], [db1, db2]
