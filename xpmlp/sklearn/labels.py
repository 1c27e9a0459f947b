"""A classifier's labels and the network's outputs, as scikit-learn's MLPClassifier maps them.

Three classes or more: one softmax output per class (cross-entropy). Two classes: one sigmoid
output, the probability of the second (binary cross-entropy). A 0/1 indicator matrix
(multilabel): one sigmoid output per column. Labels stay in their namespace: host labels (any
values, strings included) are encoded on the host, device labels on their device.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.multiclass import type_of_target, unique_labels

from ..backend import device_spec_of, to_numpy
from ..core.ops import get_activation, log_softmax
from .arrays import namespace


class Labels:
    """The label coding of one fitted classifier: ``classes`` (NumPy, or on the labels' device)
    and whether y is a multilabel indicator matrix."""

    def __init__(self, classes, multilabel: bool):
        self.classes, self.multilabel = classes, multilabel
        self.logistic = multilabel or classes.shape[0] == 2

    @classmethod
    def fit(cls, y, classes=None) -> Labels:
        """From the training labels, or from ``classes`` (partial_fit's every label)."""
        if y.ndim == 2:
            _check_indicator(y)
            return cls(np.arange(y.shape[1]), multilabel=True)
        labels = classes if classes is not None else y
        xp = namespace(y)
        return cls(unique_labels(labels) if xp is np else xp.unique_values(labels), False)

    @property
    def n_outputs(self) -> int:
        return 1 if self.logistic and not self.multilabel else self.classes.shape[0]

    @property
    def loss(self) -> str:
        return "binary_cross_entropy" if self.logistic else "cross_entropy"

    @property
    def out_activation(self) -> str:
        return "logistic" if self.logistic else "softmax"

    def encode(self, y):
        """The network's targets: the indicator matrix, or each label's index in ``classes``."""
        if self.multilabel:
            if y.ndim != 2 or y.shape[1] != self.classes.shape[0]:
                raise ValueError(f"y must be an indicator matrix of {self.classes.shape[0]} "
                                 f"columns, as in fit; got shape {tuple(y.shape)}")  # fmt: skip
            _check_indicator(y)
            return y
        xp, n_classes = namespace(y), self.classes.shape[0]
        index = np.searchsorted(self.classes, y) if xp is np else xp.searchsorted(self.classes, y)
        known = xp.take(self.classes, xp.clip(index, 0, n_classes - 1)) == y
        if not bool(xp.all(known)):
            raise ValueError(f"y has labels that are not in classes_ {self.classes}")
        return index

    def decode(self, outputs, xp):
        """The predicted targets (indices, or an indicator matrix) from the network's outputs."""
        if self.multilabel:
            return xp.astype(outputs > 0, xp.int64)
        if self.logistic:  # sigmoid(z) > 0.5
            return xp.astype(outputs[:, 0] > 0, xp.int64)
        return xp.argmax(outputs, axis=1)

    def probabilities(self, outputs, xp):
        """predict_proba's values: a column per class (per label for multilabel)."""
        if not self.logistic:
            return xp.exp(log_softmax(xp, outputs))
        p = get_activation("sigmoid").forward(xp, outputs)
        return p if self.multilabel else xp.concat([1 - p, p], axis=1)

    def labels_of(self, index, xp, device_output: bool):
        """Predicted indices as values of ``classes``, in the outputs' namespace where the
        classes can live there (numbers), else NumPy; indicator matrices as they are."""
        if self.multilabel:
            return index
        if device_spec_of(self.classes) is not None:  # labels on the device already
            return xp.take(self.classes, index)
        if device_output and self.classes.dtype.kind in "biuf":
            return xp.take(xp.asarray(self.classes, device=index.device), index)
        return self.classes[to_numpy(index)]


def _check_indicator(y) -> None:
    xp = namespace(y)
    host_type = type_of_target(y) if xp is np else "multilabel-indicator"
    if host_type != "multilabel-indicator" or not bool(xp.all((y == 0) | (y == 1))):
        raise ValueError("a 2-d y must be a multilabel indicator matrix of 0s and 1s")
