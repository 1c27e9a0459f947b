"""The networks the doctor knows, in float64 NumPy: the forward pass it hands the user's weights
to, each output's loss and delta, and the derivatives users write instead of the right one.

The probe: ``n`` samples, fewer than any layer's fan-in, so that a layer's delta is determined by
its weight gradient ``a_prevᵀ · delta`` and the bias gradient (``sum(delta)``) has a redundant
check; weights from xpmlp's initialisation and non-zero biases, so that a bias bug shows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..core import ops
from ..core.model import MLP
from ..errors import ConfigError

OUTPUTS = {  # output: (its loss, the old name of that loss in check_gradients(loss=...))
    "softmax": "cross_entropy",
    "sigmoid": "binary_cross_entropy",
    "identity": "mse",
}


@dataclass
class Probe:
    """One call's worth of weights and data, and the reference forward pass through them."""

    layer_sizes: tuple[int, ...]
    activation: str
    output: str
    bias: bool
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    X: np.ndarray
    T: np.ndarray  # targets: one-hot rows (softmax), 0/1 (sigmoid), real values (identity)
    y: np.ndarray  # integer labels for softmax, else T
    hidden_variant: str | None = None  # floored_relu, leaky_relu: what the user's forward does
    inputs: list[np.ndarray] = field(default_factory=list)  # each layer's input a_{i-1}
    pre: list[np.ndarray] = field(default_factory=list)  # each layer's pre-activation z_i

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def outputs(self) -> np.ndarray:
        """The network's outputs: probabilities (softmax, sigmoid) or values (identity)."""
        z = self.pre[-1]
        if self.output == "softmax":
            return ops.softmax(np, z)
        if self.output == "identity":
            return z
        with np.errstate(over="ignore"):  # exp(-z) overflows for z << 0, where it is 0
            return 1 / (1 + np.exp(-z))

    def output_error(self) -> np.ndarray:
        """``outputs - targets``: every supported output's delta is this, scaled."""
        return self.outputs() - self.T

    def derivative(self, i: int) -> np.ndarray:
        """f'(z) of hidden layer ``i`` (0-based), elementwise."""
        z, a = self.pre[i], self.inputs[i + 1]
        return ops.get_activation(self.activation).backward(np, z, a, np.ones_like(z))

    def reference_gradients(self) -> dict[str, np.ndarray]:
        """xpmlp's float64 backprop of the mean loss (summed over outputs for sigmoid and
        identity, halved for identity)."""
        delta = self.output_error() / self.n
        grads = {}
        for i in reversed(range(self.n_layers)):
            grads[f"layers.{i}.weight"] = self.inputs[i].T @ delta
            if self.bias:
                grads[f"layers.{i}.bias"] = delta.sum(axis=0)
            if i:
                delta = (delta @ self.weights[i].T) * self.derivative(i - 1)
        return grads


def make_probe(layer_sizes, *, activation: str, output: str, bias: bool, seed: int,
               n_samples: int | None = None) -> Probe:  # fmt: skip
    if output not in OUTPUTS:
        raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
    model = MLP(layer_sizes, activation=activation, dtype="float64", seed=seed)
    sizes = model.layer_sizes
    rng = np.random.default_rng(seed)
    # fewer samples than any layer's inputs: each layer's delta is then determined by its weight
    # gradient, and a gradient built from another array shows as inconsistent
    n = n_samples or max(2, min(8, min(sizes[:-1]) - (0 if bias else 1)))
    weights = [np.array(model.params[f"layers.{i}.weight"]) for i in range(model.n_layers)]
    biases = [rng.normal(scale=0.1, size=size) * bias for size in sizes[1:]]
    X = rng.normal(size=(n, sizes[0]))
    k = sizes[-1]
    y = np.arange(n) % k
    rng.shuffle(y)
    if output == "softmax":
        T = np.eye(k)[y]
    elif output == "sigmoid":
        T = (rng.random((n, k)) < 0.5) * 1.0
        y = T
    else:
        T = rng.normal(size=(n, k))
        y = T
    probe = Probe(tuple(sizes), activation, output, bias, weights, biases, X, T, y)
    forward(probe)
    return probe


FLOORED_RELU = 1e-3  # max(0.001, z): a "ReLU" that never outputs 0
HIDDEN_VARIANTS = {  # what users compute instead of ReLU: how the doctor names it
    "floored_relu": "max(0.001, z), a ReLU with a floor: ReLU is max(0, z), exactly 0 for z < 0",
    "leaky_relu": "a leaky ReLU: ReLU is max(0, z), exactly 0 for z < 0",
}


def forward(probe: Probe) -> None:
    variant = probe.hidden_variant
    act = ops.get_activation(variant if variant == "leaky_relu" else probe.activation)
    probe.inputs, probe.pre = [probe.X], []
    for i, (W, b) in enumerate(zip(probe.weights, probe.biases)):
        z = probe.inputs[-1] @ W + b
        probe.pre.append(z)
        if i < probe.n_layers - 1:
            floored = variant == "floored_relu"
            probe.inputs.append(np.maximum(z, FLOORED_RELU) if floored else act.forward(np, z))


def with_hidden(probe: Probe, variant: str) -> Probe:
    """The same probe with the user's variant of the hidden activation in the forward pass."""
    new = dataclasses.replace(probe, hidden_variant=variant)
    forward(new)
    return new


RIGHT_DERIVATIVE = {
    "relu": "ReLU's derivative is 1 where the pre-activation is > 0, else 0 (not softplus "
    "log(1 + e^z), and not the activation itself)",
    "tanh": "tanh's derivative is 1 - tanh(z)**2: take it of the layer's output a = tanh(z), "
    "not of the pre-activation z",
    "sigmoid": "sigmoid's derivative is s * (1 - s) with s = sigmoid(z): take it of the output, "
    "not of the pre-activation z",
}


def derivative_variants(probe: Probe, i: int) -> list[tuple[str, str, np.ndarray]]:
    """What users multiply the back-propagated gradient by at hidden layer ``i`` instead of
    f'(z): (code, message, factor); the right factor is not among them."""
    z, a, name = probe.pre[i], probe.inputs[i + 1], probe.activation
    right = probe.derivative(i)
    advice = RIGHT_DERIVATIVE.get(name, f"use {name}'s derivative f'(z)")
    wrong = "activation_derivative_wrong"
    variants = []
    if name != "identity":
        variants += [
            ("activation_derivative_missing", "the activation's derivative is missing: multiply "
             f"the back-propagated gradient by f'(z); {advice}", np.ones_like(z)),
            ("activation_derivative_twice", "the activation's derivative is applied twice: "
             f"multiply by f'(z) once; {advice}", right * right),
        ]  # fmt: skip
    with np.errstate(all="ignore"):
        if name == "relu":
            s = 1 / (1 + np.exp(-z))
            variants += [
                ("relu_mask_wrong", "the ReLU mask is taken the wrong way round (z < 0): keep "
                 "the gradient where z > 0", (z < 0) * 1.0),
                (wrong, f"the activation's derivative is wrong: {advice}", np.log1p(np.exp(z))),
                (wrong, "the activation's derivative is wrong: you multiply by the activation "
                 f"max(0, z) itself; {advice}", a),
                (wrong, "the activation's derivative is wrong: you multiply by sigmoid(z), "
                 f"softplus's derivative; {advice}", s),
            ]  # fmt: skip
        elif name == "tanh":
            variants += [
                (wrong, f"the activation's derivative is wrong: {advice}", 1 - z * z),
                (wrong, "the activation's derivative is wrong: you take 1 - tanh(a)**2 of the "
                 "layer's output a, i.e. tanh applied twice; use 1 - a**2", 1 - np.tanh(a) ** 2),
            ]  # fmt: skip
        elif name == "sigmoid":
            s = 1 / (1 + np.exp(-a))
            variants += [
                (wrong, f"the activation's derivative is wrong: {advice}", z * (1 - z)),
                (wrong, "the activation's derivative is wrong: you take sigmoid(a) * (1 - "
                 "sigmoid(a)) of the layer's output a, the sigmoid of the sigmoid; use "
                 "a * (1 - a)", s * (1 - s)),
            ]  # fmt: skip
    return variants
