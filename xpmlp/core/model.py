"""The multilayer perceptron: parameters, forward pass, backward pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Backend, get_backend, on_device, to_numpy
from ..data.inputs import check_input_shape, check_labels_on, check_layer_sizes, check_rows
from ..errors import ConfigError, DataError
from . import kernels, ops, rng
from .flat import Layout

EVAL_BATCH = 8192


@dataclass(frozen=True)
class LayerRecord:
    """What one layer saw and produced in a forward pass (device arrays).

    Attributes
    ----------
    inputs : array of shape (n_samples, fan_in)
        The layer's input: X, or the previous layer's activation after its dropout mask.
    pre_activation : array of shape (n_samples, fan_out)
        ``z = inputs @ W + b``; for the output layer, the network's raw outputs.
    activation : array of shape (n_samples, fan_out), or None for the output layer
        ``f(z)`` before dropout.
    mask : array of shape (n_samples, fan_out), or None
        The inverted-dropout multipliers applied to ``activation``.
    """

    inputs: Any
    pre_activation: Any
    activation: Any = None
    mask: Any = None


class MLP:
    """A fully connected network: hidden layers with one activation, then a linear output layer.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``(n_inputs, hidden_1, ..., hidden_k, n_outputs)``; at least two entries.
    activation : str
        Hidden-layer activation: relu, leaky_relu, tanh, sigmoid, gelu or identity.
    loss : str
        ``cross_entropy`` (softmax output, integer labels), ``mse`` (identity output), or one
        of the others in :data:`xpmlp.core.ops.LOSSES` (float targets, one column per output).
    dropout : float
        Inverted-dropout rate on every hidden layer's output, in [0, 1).
    l2 : float
        L2 penalty ``l2 / 2 * sum(W**2)`` over weight matrices (not biases), added to the loss.
        For decoupled weight decay use the ``adamw`` optimizer's ``weight_decay`` instead.
    init : str
        ``auto`` (He for ReLU-like, Glorot otherwise), ``he`` or ``glorot``.
    device : str or Backend
        Where the parameters live; see :func:`xpmlp.backend.get_backend`.
    dtype : str
        ``float32`` (default) or ``float64``.
    seed : int
        Seeds initialisation and the model's own dropout stream; the same seed gives the same
        weights on every backend.
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        *,
        activation: str = "relu",
        loss: str = "cross_entropy",
        dropout: float = 0.0,
        l2: float = 0.0,
        init: str = "auto",
        device: str | Backend = "cpu",
        dtype: str = "float32",
        seed: int = 0,
    ):
        self.layer_sizes = check_layer_sizes(layer_sizes)
        self.activation = ops.get_activation(activation)
        self.loss_name = loss
        self._loss = ops.get_loss(loss)
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1); got {dropout}")
        if not 0.0 <= l2 < np.inf:
            raise ConfigError(f"l2 must be >= 0 and finite; got {l2}")
        if init not in ("auto", "he", "glorot"):
            raise ConfigError(f"init must be auto, he or glorot; got {init!r}")
        self.dropout = float(dropout)
        self.l2 = float(l2)
        self.init = init
        self.seed = int(seed)
        self.backend = get_backend(device)
        self.dtype_name = dtype
        self.dtype = self.backend.dtype(dtype)
        self._mask_draws = 0  # the model's own dropout stream: key (seed, draw number)
        self._out_views = (None, {})  # the last gradient buffer train_gradients wrote, named
        initial = self._initial_params()
        # Weights first, so the L2 penalty's gradient is one pass over the buffer's start.
        order = sorted(initial, key=lambda name: name.endswith(".bias"))
        self.layout = Layout.of({name: initial[name].shape for name in order})
        self.set_flat(self.backend.asarray(self.layout.join(initial, np.float64), self.dtype))

    # ------------------------------------------------------------------ construction and state

    @property
    def xp(self):
        return self.backend.xp

    @property
    def params(self) -> dict:
        """Parameter name -> array: views into :attr:`flat`, the one buffer that holds them all
        (``layers.<i>.weight`` of shape (fan_in, fan_out), ``layers.<i>.bias`` (fan_out,))."""
        return self._params

    def set_flat(self, flat) -> None:
        """Make ``flat`` (a device array of ``layout.size``) the parameter buffer."""
        with self.backend.activate():
            self.flat = flat
            self._params = self.named(flat)
            self.fused = kernels.fused_for(self.backend, self.dtype_name)

    def named(self, flat) -> dict:
        """Name -> view of a flat buffer laid out as :attr:`flat` (gradients, snapshots)."""
        views = self.layout.views(self.xp, flat)
        return {name: views[name] for name in self.param_names}

    def flatten(self, arrays: dict):
        """A new flat buffer from name -> array (e.g. gradients, one tensor at a time)."""
        return self.layout.concat(self.xp, arrays)

    @property
    def param_names(self) -> list[str]:
        return [f"layers.{i}.{kind}" for i in range(self.n_layers) for kind in ("weight", "bias")]

    @property
    def n_layers(self) -> int:
        return len(self.layer_sizes) - 1

    @property
    def n_outputs(self) -> int:
        return self.layer_sizes[-1]

    def _initial_params(self) -> dict[str, np.ndarray]:
        generator = rng.init_generator(self.seed)
        hidden_scheme = self.activation.init if self.init == "auto" else self.init
        params = {}
        for i, (fan_in, fan_out) in enumerate(zip(self.layer_sizes[:-1], self.layer_sizes[1:])):
            last = i == self.n_layers - 1
            scheme = "glorot" if last and self.init == "auto" else hidden_scheme
            params[f"layers.{i}.weight"] = rng.init_weight(generator, fan_in, fan_out, scheme)
            params[f"layers.{i}.bias"] = np.zeros(fan_out)
        return params

    def config(self) -> dict:
        """Everything needed to rebuild this model (not its weights): JSON-serialisable."""
        return {"layer_sizes": list(self.layer_sizes), "activation": self.activation.name,
                "loss": self.loss_name, "dropout": self.dropout, "l2": self.l2, "init": self.init,
                "dtype": self.dtype_name, "seed": self.seed}  # fmt: skip

    @classmethod
    def from_config(cls, config: dict, *, device: str | Backend = "cpu", dtype: str | None = None):
        """Rebuild a model from :meth:`config` (fresh weights; load them with :meth:`load_state_dict`)."""
        kwargs = dict(config)
        sizes = kwargs.pop("layer_sizes")
        if dtype is not None:
            kwargs["dtype"] = dtype
        return cls(sizes, device=device, **kwargs)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters as host NumPy arrays, keyed like :attr:`params`."""
        # A copy even on NumPy: optimizers update parameters in place.
        split = self.layout.split(to_numpy(self.flat))
        return {name: split[name] for name in self.param_names}

    @on_device
    def load_state_dict(self, state: dict) -> None:
        """Copy parameters from ``state`` (NumPy or any backend's arrays) onto this model."""
        host = self.layout.join({name: to_numpy(value) for name, value in state.items()},
                                self.dtype_name)  # fmt: skip
        self.set_flat(self.backend.asarray(host, self.dtype, copy=True))

    def to(self, device: str | Backend) -> MLP:
        """Move the parameters to another device (in place); returns the model."""
        host = to_numpy(self.flat).copy()
        self.backend = get_backend(device)
        self.dtype = self.backend.dtype(self.dtype_name)
        self.set_flat(self.backend.asarray(host, self.dtype))
        return self

    # ------------------------------------------------------------------ inputs

    @on_device
    def as_input(self, X):
        """``X`` of shape (n_samples, n_inputs) as an array of this model's dtype and device."""
        return self._on_device(check_input_shape(X, self.layer_sizes[0]), self.dtype)

    @on_device
    def as_target(self, y):
        """Labels (cross-entropy: integer array of shape (n,)) or targets (mse: (n, n_outputs))."""
        y = y if hasattr(y, "shape") else np.asarray(y)
        if self.loss_name == "cross_entropy":
            if len(y.shape) != 1:
                raise DataError(f"labels must have shape (n_samples,); got {tuple(y.shape)}")
            return self._on_device(check_labels_on(self.xp, y, self.n_outputs), self.xp.int64)
        if len(y.shape) == 1 and self.n_outputs == 1:
            y = y.reshape((-1, 1)) if isinstance(y, np.ndarray) else self.xp.reshape(y, (-1, 1))
        if len(y.shape) != 2 or y.shape[1] != self.n_outputs:
            raise DataError(
                f"targets must have shape (n_samples, {self.n_outputs}); got {tuple(y.shape)}"
            )
        return self._on_device(y, self.dtype)

    def _on_device(self, array, dtype):
        if not self.backend.owns(array):
            return self.backend.asarray(array, dtype)
        return array if array.dtype == dtype else self.xp.astype(array, dtype)

    @on_device
    def targets(self, y):
        """Device targets for the loss: one-hot rows for cross-entropy, the values for mse."""
        if self.loss_name == "cross_entropy":
            return ops.one_hot(self.xp, y, self.n_outputs, self.dtype)
        return y

    @on_device
    def sample_masks(self, n_samples: int, key=None) -> list:
        """One inverted-dropout mask per hidden layer for a batch of ``n_samples`` rows, made on
        the model's device (see :func:`xpmlp.core.rng.dropout_mask`).

        ``key`` is a tuple of non-negative ints (the trainer passes (seed, epoch, step)), an int,
        or a NumPy Generator to draw one from; None takes the next key of the model's own stream.
        """
        if self.dropout == 0.0:
            return []
        if key is None:
            key = rng.model_dropout_key(self.seed, self._mask_draws)
            self._mask_draws += 1
        key = rng.as_key(key)
        if self.fused is not None:
            widths = enumerate(self.layer_sizes[1:-1])
            return [
                self.fused.dropout_mask((n_samples, w), self.dropout, (*key, i)) for i, w in widths
            ]
        return [
            rng.dropout_mask(
                self.xp,
                (n_samples, width),
                self.dropout,
                (*key, layer),
                dtype=self.dtype,
                device=self.backend.device,
            )  # fmt: skip
            for layer, width in enumerate(self.layer_sizes[1:-1])
        ]

    # ------------------------------------------------------------------ forward and backward

    @on_device
    def forward_record(self, X, masks: list | None = None):
        """Raw outputs (n_samples, n_outputs) and a :class:`LayerRecord` per layer.

        ``masks`` (as from :meth:`sample_masks`) apply dropout; None runs the network without.
        This is the forward pass that training, evaluation and diagnostics all use.
        """
        return self._forward(self.as_input(X), masks)

    def _forward(self, X, masks):
        records = []
        a = X
        for i in range(self.n_layers):
            last = i == self.n_layers - 1
            mask = masks[i] if masks and not last else None
            z, h, dropped = self._layer_forward(i, a, mask)
            records.append(LayerRecord(a, z) if last else LayerRecord(a, z, h, mask))
            a = dropped
        return a, records

    def _layer_forward(self, i: int, a, mask):
        """(z, h, h * mask) of layer ``i``: one fused pass after the matmul where kernels run."""
        W, b = self.params[f"layers.{i}.weight"], self.params[f"layers.{i}.bias"]
        act = "identity" if i == self.n_layers - 1 else self.activation.name
        if self._fuses(act):
            z = a @ W
            h, dropped = self.fused.bias_activation(act, z, b, mask)
            return z, h, dropped
        z = a @ W + b
        h = z if act == "identity" else self.activation.forward(self.xp, z)
        return z, h, h * mask if mask is not None else h

    def _fuses(self, activation: str) -> bool:
        return self.fused is not None and activation in kernels.FUSED_ACTIVATIONS

    @on_device
    def backward(self, grad_outputs, records: list[LayerRecord], *, out: dict | None = None):
        """Gradients of every parameter (names as :attr:`params`) given dL/d(outputs).

        ``records`` are those :meth:`forward_record` returned for the same batch. With ``out``
        (name -> array, e.g. views of a flat gradient buffer) and NumPy or CuPy, each gradient
        is written into its array; other namespaces return new arrays.
        """
        xp, act, lib = self.xp, self.activation, self.backend.lib
        write = out is not None and lib is not None
        grads = dict(out) if write else {}
        delta = grad_outputs
        for i in reversed(range(self.n_layers)):
            weight, bias, inputs = f"layers.{i}.weight", f"layers.{i}.bias", records[i].inputs
            if write:
                lib.matmul(inputs.T, delta, out=grads[weight])
                lib.sum(delta, axis=0, out=grads[bias])
            else:
                grads[weight] = inputs.T @ delta
                grads[bias] = xp.sum(delta, axis=0)  # over samples, not features
            if i == 0:
                break  # the input's gradient is never needed
            grad_a = delta @ self.params[weight].T
            below = records[i - 1]
            if self._fuses(act.name):
                delta = self.fused.activation_backward(
                    act.name, grad_a, below.mask, below.pre_activation, below.activation
                )
                continue
            if below.mask is not None:
                grad_a = grad_a * below.mask
            delta = act.backward(xp, below.pre_activation, below.activation, grad_a)
        return {name: grads[name] for name in self.param_names}

    @on_device
    def output_loss(self, outputs, targets):
        """Batch-mean loss of raw ``outputs`` against :meth:`targets` (no L2 term), and dL/doutputs.

        Returns
        -------
        loss : 0-d array
        grad_outputs : array of shape (n_samples, n_outputs)
        """
        return self._loss(self.xp, outputs, targets)

    @on_device
    def forward(self, X, *, train: bool = False, masks: list | None = None):
        """Raw outputs (logits for cross-entropy), shape (n_samples, n_outputs).

        With ``train=True`` and dropout set, hidden units are dropped (``masks`` as from
        :meth:`sample_masks`, or drawn from the model's own seeded stream).
        """
        X = self.as_input(X)
        if train and self.dropout and masks is None:
            masks = self.sample_masks(X.shape[0])
        return self._forward(X, masks if train else None)[0]

    @on_device
    def loss_and_grads(self, X, y, *, masks: list | None = None, sample_weight=None):
        """The training loss on one batch and its gradient with respect to every parameter.

        Parameters
        ----------
        X : array of shape (n_samples, n_inputs)
        y : labels of shape (n_samples,) for cross-entropy; targets (n_samples, n_outputs) for mse
        masks : list of arrays, optional
            Dropout masks (see :meth:`sample_masks`); drawn from the model's stream when
            dropout is set and none are given.
        sample_weight : array of shape (n_samples,), optional
            The loss is then ``sum(w_i * l_i) / sum(w)`` (see :func:`xpmlp.core.ops.weighted_loss`).

        Returns
        -------
        loss : 0-d array
            Batch-mean loss, plus ``l2 / 2 * sum(W**2)`` when the L2 penalty is set.
        grads : dict
            Same names and shapes as :attr:`params`.
        """
        X, y = self.as_input(X), self.as_target(y)
        check_rows(X, y)
        if self.dropout and masks is None:
            masks = self.sample_masks(X.shape[0])
        weights = None if sample_weight is None else self._on_device(sample_weight, self.dtype)
        loss, grads, _ = self.batch_loss_and_grads(X, self.targets(y), masks, weights)
        return loss, grads

    @on_device
    def batch_loss_and_grads(self, X, targets, masks, weights=None):
        """:meth:`loss_and_grads` for inputs already on the device and checked.

        Returns (loss, grads, outputs); ``outputs`` are the raw network outputs of the batch.
        """
        outputs, records = self._forward(X, masks)
        if weights is None:
            loss, grad_outputs = self.output_loss(outputs, targets)
        else:
            loss, grad_outputs = ops.weighted_loss(
                self.xp, self.loss_name, outputs, targets, weights
            )
        grads = self.backward(grad_outputs, records)
        if self.l2:
            loss = loss + self._l2_penalty()
            for name in self._weight_names():
                grads[name] = grads[name] + self.l2 * self.params[name]
        return loss, grads, outputs

    @on_device
    def train_gradients(self, X, y, masks, sums, out, weights=None):
        """The training step's hot path: the gradient of the batch's mean loss (with the L2
        penalty) as one flat buffer, and the epoch's running ``sums`` (a device array of 2:
        loss summed over samples, correct count) with this batch added.

        ``X``, ``y`` are on the device and checked; ``out`` is a flat buffer of ``layout.size``
        with zeros in its gaps, which NumPy and CuPy write into (and return); other namespaces
        return a new buffer. ``sums`` is updated in place where kernels are fused.
        """
        outputs, records = self._forward(X, masks)
        grad_outputs, sums = self._output_step(outputs, y, sums, weights)
        if self._out_views[0] is not out:
            self._out_views = (out, self.named(out))
        grads = self.backward(grad_outputs, records, out=self._out_views[1])
        if self.l2:
            penalty = self._l2_penalty() * X.shape[0]
            sums = sums + self.xp.stack([penalty, self.xp.zeros_like(penalty)])
        if self.backend.lib is not None:
            if self.l2:  # all weights lie at the buffer's start
                end = self.layout.span(self._weight_names()[-1])[1]
                out[:end] += self.l2 * self.flat[:end]
            return out, sums
        for name in self._weight_names() if self.l2 else ():
            grads[name] = grads[name] + self.l2 * self.params[name]
        return self.flatten(grads), sums

    def _output_step(self, outputs, y, sums, weights=None):
        xp, classify = self.xp, self.loss_name == "cross_entropy"
        if classify and self.fused is not None and weights is None:
            return self.fused.softmax_xent(outputs, y, sums), sums
        targets = self.targets(y)
        if weights is not None:  # sample weights: the weighted mean
            loss, grad = ops.weighted_loss(xp, self.loss_name, outputs, targets, weights)
            total = loss * outputs.shape[0]
        elif classify:
            total, grad = ops.softmax_cross_entropy_total(xp, outputs, targets)
        else:
            loss, grad = self.output_loss(outputs, targets)
            total = loss * outputs.shape[0]
        hits = xp.argmax(outputs, axis=1) == y if classify else None
        correct = xp.sum(xp.astype(hits, self.dtype)) if classify else xp.zeros_like(total)
        return grad, sums + xp.stack([total, correct])

    def _weight_names(self):
        return [f"layers.{i}.weight" for i in range(self.n_layers)]

    def _l2_penalty(self):
        xp = self.xp
        total = sum(xp.sum(self.params[name] * self.params[name]) for name in self._weight_names())
        return 0.5 * self.l2 * total

    # ------------------------------------------------------------------ prediction

    @on_device
    def outputs(self, X, *, batch_size: int = EVAL_BATCH):
        """Raw outputs of the whole of ``X`` (n_samples, n_outputs), computed in chunks, no dropout."""
        X = self.as_input(X)
        n = X.shape[0]
        # X[i:j, :] with j <= n: the standard leaves partial indices and out-of-range stops undefined
        chunks = [
            self._forward(X[i : min(i + batch_size, n), :], None)[0]
            for i in range(0, n, batch_size)
        ]
        if not chunks:
            return self.xp.zeros((0, self.n_outputs), dtype=self.dtype, device=self.backend.device)
        return chunks[0] if len(chunks) == 1 else self.xp.concat(chunks, axis=0)

    @on_device
    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes); cross-entropy models only."""
        if self.loss_name != "cross_entropy":
            raise ConfigError("predict_proba needs a classification model (loss='cross_entropy')")
        return ops.softmax(self.xp, self.outputs(X))

    @on_device
    def predict(self, X):
        """Class labels (n_samples,) for classification; outputs (n_samples, n_outputs) for mse."""
        outputs = self.outputs(X)
        if self.loss_name == "cross_entropy":
            return self.xp.argmax(outputs, axis=1)
        return outputs

    def __repr__(self) -> str:
        sizes = "-".join(map(str, self.layer_sizes))
        return (
            f"MLP({sizes}, activation={self.activation.name}, loss={self.loss_name}, "
            f"dtype={self.dtype_name}, device={self.backend.spec})"
        )
