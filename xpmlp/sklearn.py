"""scikit-learn estimators that train with xpmlp: :class:`MLPClassifier` and :class:`MLPRegressor`.

Parameters are named as scikit-learn's ``sklearn.neural_network`` estimators where the meaning
matches (``hidden_layer_sizes``, ``alpha`` for the L2 penalty, ``learning_rate_init``,
``max_iter``, ``tol``, ``n_iter_no_change``, ``early_stopping``, ...), plus xpmlp's own
(``device``, ``dtype``, ``optimizer``, ``schedule``, ``dropout``, ``clip_norm``, and
``class_weight`` for the classifier). The namespace and device follow X: a CuPy array trains on
its GPU and predictions come back as CuPy arrays; NumPy in, NumPy out (``device`` then decides
where training runs). Needs scikit-learn: ``pip install 'xpmlp[sklearn]'``.
"""

from __future__ import annotations

import warnings

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils._array_api import move_to
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from . import sklearn_arrays as arrays
from .backend import device_spec_of, to_numpy
from .config import TrainConfig
from .model import MLP
from .ops import log_softmax
from .sklearn_arrays import namespace, on_device_of_X
from .training import Trainer

SEED_LIMIT = 2**31 - 1


class _BaseMLP(BaseEstimator):
    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        alpha=0.0001,
        batch_size="auto",
        learning_rate_init=0.001,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        device="cpu",
        dtype="auto",
        optimizer="adam",
        schedule="constant",
        dropout=0.0,
        clip_norm=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.dtype = dtype
        self.optimizer = optimizer
        self.schedule = schedule
        self.dropout = dropout
        self.clip_norm = clip_norm

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.array_api_support = True
        return tags

    def fit(self, X, y, sample_weight=None):
        """Train for up to ``max_iter`` epochs (from the current weights with ``warm_start``)."""
        keep = self.warm_start and hasattr(self, "_trainer")
        return self._fit(X, y, sample_weight, reset=not keep)

    def _partial_fit(self, X, y, sample_weight, classes=None):
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "_trainer")
        return self._fit(X, y, sample_weight, reset=first, classes=classes, incremental=True)

    @on_device_of_X
    def _fit(self, X, y, sample_weight, *, reset: bool, classes=None, incremental=False):
        epochs = 1 if incremental else self.max_iter
        if sklearn.get_config()["array_api_dispatch"] and device_spec_of(X) is not None:
            # y and sample_weight follow X's namespace and device
            y, sample_weight = move_to(y, sample_weight, xp=namespace(X), device=X.device)
        else:
            y = arrays.to_device_of(X, y)
        X, y, sample_weight = self._validate(X, y, sample_weight, reset=reset, classes=classes)
        if reset:
            self._start(X, sample_weight)
            self._fit_spec = device_spec_of(X)
        trainer = self._trainer
        validation = None
        if self.early_stopping:
            X, X_val, y, y_val, sample_weight = self._split(X, y, sample_weight)
            validation = (X_val, y_val)
        trainer.config = trainer.config.replace(
            epochs=trainer.epoch + epochs, batch_size=self._batch_size(X.shape[0])
        )
        stopper = _Stopper(self, validation)
        trainer.fit(X, y, validation_data=validation, sample_weight=sample_weight,
                    callbacks=[stopper])  # fmt: skip
        self._record(trainer, stopper, warn=not incremental)
        return self

    def _start(self, X, sample_weight) -> None:
        seed = _seed(self.random_state)
        # scikit-learn's alpha penalises alpha / (2 sum(w)) * sum(W**2) in a batch of weights w
        # (its size without weights), where l2 here is per batch; and its weights start
        # Glorot-uniform for every activation.
        mean_weight = float(namespace(sample_weight).mean(sample_weight))
        l2 = self.alpha / (self._batch_size(X.shape[0]) * mean_weight)
        model = MLP([X.shape[1], *_sizes(self.hidden_layer_sizes), self._n_outputs],
                    activation=self.activation, loss=self._loss, dropout=self.dropout, l2=l2,
                    init="glorot", device=device_spec_of(X) or self.device,
                    dtype=self._dtype_of(X), seed=seed)  # fmt: skip
        config = TrainConfig(optimizer=self.optimizer, lr=self.learning_rate_init,
                             schedule=self.schedule, clip_norm=self.clip_norm,
                             shuffle=bool(self.shuffle), seed=seed, epochs=0)  # fmt: skip
        self._trainer = Trainer(model, config)
        self.loss_curve_, self.validation_scores_ = [], [] if self.early_stopping else None
        self.best_loss_ = np.inf if not self.early_stopping else None
        self.best_validation_score_ = -np.inf if self.early_stopping else None
        self._no_improvement = 0

    def _record(self, trainer: Trainer, stopper, *, warn: bool) -> None:
        if stopper.best_params is not None:
            trainer.model.load_state_dict(stopper.best_params)
        self.n_iter_ = trainer.epoch
        self.history_ = trainer.history
        model = trainer.model
        self.n_layers_ = model.n_layers + 1
        self.n_outputs_ = model.n_outputs
        self.coefs_ = [to_numpy(model.params[f"layers.{i}.weight"]).copy()
                       for i in range(model.n_layers)]  # fmt: skip
        self.intercepts_ = [to_numpy(model.params[f"layers.{i}.bias"]).copy()
                            for i in range(model.n_layers)]  # fmt: skip
        self.loss_ = self.loss_curve_[-1]
        if warn and not stopper.converged:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)  # fmt: skip

    def _split(self, X, y, sample_weight):
        if device_spec_of(X) is not None:
            return arrays.split(X, y, sample_weight, self.validation_fraction,
                                _seed(self.random_state))  # fmt: skip
        classify = self._loss == "cross_entropy" and isinstance(y, np.ndarray)
        stratify = y if classify and len(np.unique(y)) > 1 else None
        parts = train_test_split(X, y, sample_weight, test_size=self.validation_fraction,
                                 random_state=_seed(self.random_state), stratify=stratify)  # fmt: skip
        X, X_val, y, y_val, weight, _ = parts
        return X, X_val, y, y_val, weight

    def _batch_size(self, n: int) -> int:
        if self.batch_size == "auto":
            return max(1, min(200, n))
        return max(1, min(int(self.batch_size), n))

    def _check_X(self, X, *, reset: bool, y=None, fit: bool = False):
        """scikit-learn's validation for host data (and under ``array_api_dispatch``); for a
        device array without it, the same rules checked on the device."""
        if device_spec_of(X) is None or sklearn.get_config()["array_api_dispatch"]:
            dtype = arrays.float_dtypes(X)
            if not fit:
                return validate_data(self, X, reset=reset, dtype=dtype)
            return validate_data(self, X, y, reset=reset, dtype=dtype, **self._y_rules)
        name = type(self).__name__
        X = arrays.check_X(X, None if reset else self.n_features_in_, name)
        if reset:
            self.n_features_in_ = X.shape[1]
        if fit and y is None:
            raise ValueError(f"{name} requires y to be passed, but the target y is None.")
        return (X, y) if fit else X

    def _check_weights(self, sample_weight, X):
        """scikit-learn's rules for sample weights (n finite numbers, not all zero) in X's
        namespace, on its device."""
        if device_spec_of(X) is None or sklearn.get_config()["array_api_dispatch"]:
            weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        else:
            weight = arrays.check_weights(sample_weight, X)
        if not bool(namespace(weight).any(weight != 0)):
            raise ValueError("Sample weights must contain at least one non-zero number.")
        return weight

    def _dtype_of(self, X) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float32" if "float32" in str(X.dtype) else "float64"

    def _score(self, mixin_score, metric, X, y, sample_weight):
        """scikit-learn's score; for device X, y and the weights follow X under
        ``array_api_dispatch``, and without it scikit-learn's metrics need NumPy: the predictions,
        y and the weights are read back explicitly."""
        if device_spec_of(X) is None:
            return mixin_score(X, y, sample_weight)
        if sklearn.get_config()["array_api_dispatch"]:
            y, sample_weight = move_to(y, sample_weight, xp=namespace(X), device=X.device)
            return mixin_score(X, y, sample_weight)
        weight = None if sample_weight is None else to_numpy(sample_weight)
        return float(metric(to_numpy(y), to_numpy(self.predict(X)), sample_weight=weight))

    def _outputs(self, X, method: str):
        check_is_fitted(self, "n_iter_")
        if sklearn.get_config()["array_api_dispatch"] and device_spec_of(X) != self._fit_spec:
            raise ValueError(f"{type(self).__name__}.{method}() was given "
                             f"{device_spec_of(X) or 'numpy'} arrays: inputs must use the same "
                             f"namespace and device as in fit ({self._fit_spec or 'numpy'})")  # fmt: skip
        X = self._check_X(X, reset=False)
        model = self._trainer.model
        return model.outputs(model.as_input(X))

    def __getstate__(self):
        state = dict(self.__dict__)
        trainer = state.pop("_trainer", None)
        if trainer is not None:
            state["_saved"] = {"model": trainer.model.config(), "trainer": trainer.state_dict(),
                               "device": trainer.model.backend.spec}  # fmt: skip
        return state

    def __setstate__(self, state):
        saved = state.pop("_saved", None)
        self.__dict__.update(state)
        if saved is not None:
            self._trainer = _restore(saved)


class _Stopper:
    """scikit-learn's stopping rule, after every epoch: no improvement of the training loss (or
    of the validation score with ``early_stopping``) by ``tol`` for ``n_iter_no_change`` epochs."""

    def __init__(self, estimator: _BaseMLP, validation):
        self.estimator, self.validation = estimator, validation
        self.best_params, self.converged = None, False

    def __call__(self, trainer: Trainer, record: dict) -> None:
        est = self.estimator
        loss = record["train_loss"]
        est.loss_curve_.append(loss)
        if est.verbose:
            print(f"Iteration {record['epoch']}, loss = {loss:.8f}")
        if self.validation is not None:
            score = est._validation_score(trainer, *self.validation)
            est.validation_scores_.append(score)
            improved = score > est.best_validation_score_ + est.tol
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.best_params = trainer.model.state_dict()
        else:
            improved = loss < est.best_loss_ - est.tol
            est.best_loss_ = min(est.best_loss_, loss)
        est._no_improvement = 0 if improved else est._no_improvement + 1
        if est._no_improvement > est.n_iter_no_change:
            self.converged = trainer.stop_requested = True


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multilayer perceptron classifier trained by xpmlp (softmax cross-entropy).

    Like ``sklearn.neural_network.MLPClassifier`` (see the module docstring), plus
    ``class_weight``: ``"balanced"`` or a dict ``{class: weight}``, multiplied into
    ``sample_weight``. Labels may be any values scikit-learn accepts, strings included.
    """

    _loss = "cross_entropy"
    _y_rules = {}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=10,
                 device="cpu", dtype="auto", optimizer="adam", schedule="constant",
                 dropout=0.0, clip_norm=None, class_weight=None):  # fmt: skip
        super().__init__(hidden_layer_sizes, activation, alpha=alpha, batch_size=batch_size,
                         learning_rate_init=learning_rate_init, max_iter=max_iter,
                         shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, early_stopping=early_stopping,
                         validation_fraction=validation_fraction,
                         n_iter_no_change=n_iter_no_change, device=device, dtype=dtype,
                         optimizer=optimizer, schedule=schedule, dropout=dropout,
                         clip_norm=clip_norm)  # fmt: skip
        self.class_weight = class_weight

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y); the first call needs ``classes`` (every label there will be)."""
        if classes is None and not hasattr(self, "_trainer"):
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._partial_fit(X, y, sample_weight, classes)

    def _validate(self, X, y, sample_weight, *, reset: bool, classes=None):
        X, y = self._check_X(X, reset=reset, y=y, fit=True)
        if device_spec_of(y) is None:
            check_classification_targets(y)
        xp = namespace(y)
        if reset:
            labels = classes if classes is not None else y
            self.classes_ = unique_labels(labels) if xp is np else xp.unique_values(labels)
            self._n_outputs = self.classes_.shape[0]
        index = (
            xp.searchsorted(self.classes_, y) if xp is not np else np.searchsorted(self.classes_, y)
        )
        known = xp.take(self.classes_, xp.clip(index, 0, self._n_outputs - 1)) == y
        if not bool(xp.all(known)):
            raise ValueError(f"y has labels that are not in classes_ {self.classes_}")
        sample_weight = self._check_weights(sample_weight, X)
        if self.class_weight is not None:  # from the labels, read back once
            per_sample = compute_sample_weight(self.class_weight, to_numpy(y))
            sample_weight = sample_weight * arrays.as_X(X, per_sample)
        return X, index, sample_weight

    def _validation_score(self, trainer, X_val, y_val) -> float:
        predicted = np.argmax(to_numpy(trainer.model.outputs(X_val)), axis=1)
        return float(np.mean(predicted == to_numpy(y_val)))

    def score(self, X, y, sample_weight=None):
        """The (weighted) accuracy of :meth:`predict` on (X, y), a float."""
        return self._score(super().score, accuracy_score, X, y, sample_weight)

    @on_device_of_X
    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        outputs = self._outputs(X, "predict_proba")
        xp = self._trainer.model.xp
        return arrays.as_output(X, xp.exp(log_softmax(xp, outputs)))

    @on_device_of_X
    def predict_log_proba(self, X):
        """The logarithm of :meth:`predict_proba`, computed without underflow."""
        outputs = self._outputs(X, "predict_log_proba")
        return arrays.as_output(X, log_softmax(self._trainer.model.xp, outputs))

    @on_device_of_X
    def predict(self, X):
        """The most probable class of each row, as values of ``classes_``."""
        outputs = self._outputs(X, "predict")
        xp = self._trainer.model.xp
        index = xp.argmax(outputs, axis=1)
        if not isinstance(self.classes_, np.ndarray):  # labels on the device already
            return xp.take(self.classes_, index)
        if device_spec_of(X) is not None and self.classes_.dtype.kind in "biuf":
            return xp.take(xp.asarray(self.classes_, device=outputs.device), index)
        return self.classes_[to_numpy(index)]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multilayer perceptron regressor trained by xpmlp (squared error, identity output).

    Like ``sklearn.neural_network.MLPRegressor`` (see the module docstring); y may have several
    columns.
    """

    _loss = "half_mse"  # scikit-learn's squared error: half the mean of squares
    _y_rules = {"multi_output": True, "y_numeric": True}

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y)."""
        return self._partial_fit(X, y, sample_weight)

    def _validate(self, X, y, sample_weight, *, reset: bool, classes=None):
        X, y = self._check_X(X, reset=reset, y=y, fit=True)
        xp = namespace(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        self._single_output = y.ndim == 1
        y = xp.reshape(y, (-1, 1)) if y.ndim == 1 else y
        if reset:
            self._n_outputs = y.shape[1]
        return X, xp.astype(y, X.dtype), self._check_weights(sample_weight, X)

    def _validation_score(self, trainer, X_val, y_val) -> float:
        return float(r2_score(to_numpy(y_val), to_numpy(trainer.model.outputs(X_val))))

    def score(self, X, y, sample_weight=None):
        """The (weighted) coefficient of determination R² of :meth:`predict` on (X, y)."""
        return self._score(super().score, r2_score, X, y, sample_weight)

    @on_device_of_X
    def predict(self, X):
        """Predicted values, shape (n_samples,) (or (n_samples, n_outputs) for several)."""
        outputs = self._outputs(X, "predict")
        if self._single_output:
            outputs = self._trainer.model.xp.reshape(outputs, (-1,))
        return arrays.as_output(X, outputs)


# ---------------------------------------------------------------------- helpers


def _sizes(hidden) -> list[int]:
    return [int(hidden)] if np.isscalar(hidden) else [int(size) for size in hidden]


def _seed(random_state) -> int:
    if random_state is None:
        return int(np.random.randint(SEED_LIMIT))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(SEED_LIMIT))
    return int(random_state)


def _restore(saved: dict) -> Trainer:
    """A pickled estimator's trainer, on its device where it exists, else on the CPU."""
    from .errors import DeviceError

    try:
        model = MLP.from_config(saved["model"], device=saved["device"])
    except DeviceError:
        warnings.warn(f"{saved['device']} is not available here; the model is on the CPU",
                      stacklevel=3)  # fmt: skip
        model = MLP.from_config(saved["model"], device="cpu")
    trainer = Trainer(model, TrainConfig.from_dict(saved["trainer"]["meta"]["config"]))
    trainer.load_state_dict(saved["trainer"])
    return trainer
