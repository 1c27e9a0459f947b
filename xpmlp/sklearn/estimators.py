"""scikit-learn estimators that train with xpmlp: :class:`MLPClassifier` and :class:`MLPRegressor`.

They take every parameter of scikit-learn's ``sklearn.neural_network`` estimators with its
meaning (``solver`` "adam" or "sgd", ``learning_rate`` and ``momentum`` for "sgd", ``alpha``
for the L2 penalty, ...; not ``max_fun``, which is for "lbfgs"), plus xpmlp's own (``device``,
``dtype``, ``optimizer``, which overrides ``solver``, ``schedule``, ``dropout``, ``clip_norm``,
and ``class_weight`` for the classifier). The namespace and device follow X: a CuPy array trains on
its GPU and predictions come back as CuPy arrays; NumPy in, NumPy out (``device`` then decides
where training runs). Needs scikit-learn: ``pip install "scikit-learn>=1.8"``.
"""

from __future__ import annotations

from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.neural_network import MLPClassifier as SklearnClassifier
from sklearn.neural_network import MLPRegressor as SklearnRegressor
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets

from ..backend import device_spec_of, to_numpy
from ..core.ops import log_softmax
from . import arrays
from .arrays import namespace, on_device_of_X
from .base import BaseMLP, shared_constraints
from .labels import Labels


class MLPClassifier(ClassifierMixin, BaseMLP):
    """A multilayer perceptron classifier trained by xpmlp: softmax outputs for three classes or
    more, one sigmoid output for two, one per label for a multilabel indicator matrix y.

    Like ``sklearn.neural_network.MLPClassifier`` (see the module docstring), plus
    ``class_weight``: ``"balanced"`` or a dict ``{class: weight}``, multiplied into
    ``sample_weight``. Labels may be any values scikit-learn accepts, strings included.
    """

    _y_rules = {"multi_output": True}  # a multilabel indicator matrix is 2-d
    _parameter_constraints = shared_constraints(SklearnClassifier)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, device="cpu",
                 dtype="auto", optimizer=None, schedule="constant", dropout=0.0,
                 clip_norm=None, class_weight=None):  # fmt: skip
        vars(self).update({name: value for name, value in locals().items() if name != "self"})

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True  # y may be an indicator matrix
        return tags

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y); the first call needs ``classes`` (every label there will be)."""
        if classes is None and not hasattr(self, "_trainer"):
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._partial_fit(X, y, sample_weight, classes)

    def _validate(self, X, y, sample_weight, *, reset: bool, classes=None):
        X, y = self._check_X(X, reset=reset, y=y, fit=True)
        y = arrays.ravel_column(y)
        if device_spec_of(y) is None:
            check_classification_targets(y)
        if reset:
            self._labels = Labels.fit(y, classes)
            self.classes_, self._loss = self._labels.classes, self._labels.loss
            self._n_outputs, self.out_activation_ = (
                self._labels.n_outputs,
                self._labels.out_activation,
            )
        targets = self._labels.encode(y)
        sample_weight = self._check_weights(sample_weight, X)
        if self.class_weight is not None:  # from the labels, read back once
            per_sample = compute_sample_weight(self.class_weight, to_numpy(y))
            sample_weight = sample_weight * arrays.as_X(X, per_sample)
        return X, targets, sample_weight

    def _validation_score(self, trainer, X_val, y_val, weight) -> float:
        model = trainer.model
        predicted = to_numpy(self._labels.decode(model.outputs(X_val), model.xp))
        return float(accuracy_score(to_numpy(y_val), predicted, sample_weight=to_numpy(weight)))

    def score(self, X, y, sample_weight=None):
        """The (weighted) accuracy of :meth:`predict` on (X, y), a float."""
        return self._score(super().score, accuracy_score, X, y, sample_weight)

    @on_device_of_X
    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order
        (for multilabel y, each label's probability)."""
        outputs = self._outputs(X, "predict_proba")
        return arrays.as_output(X, self._labels.probabilities(outputs, self._trainer.model.xp))

    @on_device_of_X
    def predict_log_proba(self, X):
        """The logarithm of :meth:`predict_proba` (for softmax outputs, without underflow)."""
        outputs = self._outputs(X, "predict_log_proba")
        xp = self._trainer.model.xp
        if self._labels.logistic:
            return arrays.as_output(X, xp.log(self._labels.probabilities(outputs, xp)))
        return arrays.as_output(X, log_softmax(xp, outputs))

    @on_device_of_X
    def predict(self, X):
        """The most probable class of each row, as values of ``classes_`` (for multilabel y, the
        indicator matrix of labels whose probability is above one half)."""
        outputs = self._outputs(X, "predict")
        xp = self._trainer.model.xp
        index = self._labels.decode(outputs, xp)
        return arrays.as_output(X, self._labels.labels_of(index, xp, device_spec_of(X) is not None))


class MLPRegressor(RegressorMixin, BaseMLP):
    """A multilayer perceptron regressor trained by xpmlp: squared error with identity outputs,
    or (``loss="poisson"``) half the Poisson deviance with predictions ``exp(outputs)``.

    Like ``sklearn.neural_network.MLPRegressor`` (see the module docstring); y may have several
    columns.
    """

    _losses = {
        "squared_error": ("half_squared_error", "identity"),
        "poisson": ("half_poisson", "exp"),
    }
    _y_rules = {"multi_output": True, "y_numeric": True}
    _parameter_constraints = shared_constraints(SklearnRegressor)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="squared_error",
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, device="cpu",
                 dtype="auto", optimizer=None, schedule="constant", dropout=0.0,
                 clip_norm=None):  # fmt: skip
        vars(self).update({name: value for name, value in locals().items() if name != "self"})

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y)."""
        return self._partial_fit(X, y, sample_weight)

    def _validate(self, X, y, sample_weight, *, reset: bool, classes=None):
        if self.loss not in self._losses:
            raise ValueError(f"loss must be 'squared_error' or 'poisson'; got {self.loss!r}")
        X, y = self._check_X(X, reset=reset, y=y, fit=True)
        xp = namespace(y)
        y = arrays.ravel_column(y)
        if self.loss == "poisson" and bool(xp.any(y < 0)):
            raise ValueError("loss='poisson' needs y >= 0 (counts, rates)")
        y = xp.reshape(y, (-1, 1)) if y.ndim == 1 else y
        if reset:
            self._loss, self.out_activation_ = self._losses[self.loss]
            self._n_outputs, self._single_output = y.shape[1], y.shape[1] == 1
        return X, xp.astype(y, X.dtype), self._check_weights(sample_weight, X)

    def _predictions(self, outputs, xp):
        return xp.exp(outputs) if self.out_activation_ == "exp" else outputs

    def _validation_score(self, trainer, X_val, y_val, weight) -> float:
        predicted = to_numpy(self._predictions(trainer.model.outputs(X_val), trainer.model.xp))
        return float(r2_score(to_numpy(y_val), predicted, sample_weight=to_numpy(weight)))

    def score(self, X, y, sample_weight=None):
        """The (weighted) coefficient of determination R² of :meth:`predict` on (X, y)."""
        return self._score(super().score, r2_score, X, y, sample_weight)

    @on_device_of_X
    def predict(self, X):
        """Predicted values, shape (n_samples,) (or (n_samples, n_outputs) for several)."""
        outputs = self._outputs(X, "predict")
        xp = self._trainer.model.xp
        predicted = self._predictions(outputs, xp)
        if self._single_output:
            predicted = xp.reshape(predicted, (-1,))
        return arrays.as_output(X, predicted)
