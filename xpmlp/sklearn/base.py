"""What the two estimators share: scikit-learn's parameters mapped onto xpmlp's Trainer, the fit
and partial_fit loop with scikit-learn's stopping rule, fitted attributes, pickling."""

from __future__ import annotations

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils._array_api import move_to
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from ..backend import device_spec_of, to_numpy
from ..core.model import MLP
from ..errors import CheckpointError, DeviceError
from ..train.config import TrainConfig
from ..train.trainer import Trainer
from . import arrays
from .arrays import namespace, on_device_of_X

SEED_LIMIT = 2**31 - 1


SGD_OPTIMIZERS = ("sgd", "momentum", "nesterov")  # those scikit-learn's learning_rate adapts
ACTIVATIONS = {"logistic": "sigmoid"}  # scikit-learn's names that are not xpmlp's


def shared_constraints(theirs) -> dict:
    """scikit-learn's own checks of its parameters, but for ``activation``, where xpmlp has more
    (its own check names them), and ``max_fun``, which xpmlp does not take."""
    constraints = getattr(theirs, "_parameter_constraints", {})
    return {
        name: rule for name, rule in constraints.items() if name not in ("activation", "max_fun")
    }


class BaseMLP(BaseEstimator):
    """What the two estimators share; each has its own ``__init__`` (scikit-learn reads the
    parameters from its signature)."""

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
        self._validate_params()  # scikit-learn's checks of the parameters it shares with us
        if sklearn.get_config()["array_api_dispatch"] and device_spec_of(X) is not None:
            # y and sample_weight follow X's namespace and device
            y, sample_weight = move_to(y, sample_weight, xp=namespace(X), device=X.device)
        else:
            y = arrays.to_device_of(X, y)
        X, y, sample_weight = self._validate(X, y, sample_weight, reset=reset, classes=classes)
        if reset:
            self._start(X)
        trainer, validation, weight_val = self._trainer, None, None
        if self.warm_start and not incremental and hasattr(self, "coefs_"):
            self._load_coefs(trainer.model)
        if self.early_stopping:
            X, X_val, y, y_val, sample_weight, weight_val = self._split(X, y, sample_weight)
            validation = (X_val, y_val)
        self._configure(trainer, X, sample_weight, incremental)
        epoch_end, first_epoch = _EpochEnd(self, X.shape[0], validation, weight_val), trainer.epoch
        trainer.fit(X, y, validation_data=validation, sample_weight=sample_weight,
                    callbacks=[epoch_end])  # fmt: skip
        self._record(trainer, epoch_end, trainer.epoch - first_epoch, warn=not incremental)
        return self

    def _start(self, X) -> None:
        seed = _seed(self.random_state)
        # scikit-learn's weights start Glorot-uniform for every activation.
        model = MLP([X.shape[1], *_sizes(self.hidden_layer_sizes), self._n_outputs],
                    activation=ACTIVATIONS.get(self.activation, self.activation),
                    loss=self._loss, dropout=self.dropout,
                    init="glorot", device=device_spec_of(X) or self.device,
                    dtype=self._dtype_of(X), seed=seed)  # fmt: skip
        config = TrainConfig(optimizer=self._optimizer_name(), lr=self.learning_rate_init,
                             momentum=self.momentum, betas=(self.beta_1, self.beta_2),
                             eps=self.epsilon, schedule=self.schedule, seed=seed, epochs=0)  # fmt: skip
        self._trainer, self._fit_spec = Trainer(model, config), device_spec_of(X)
        self.loss_curve_, self.validation_scores_ = [], [] if self.early_stopping else None
        self.best_loss_ = np.inf if not self.early_stopping else None
        self.best_validation_score_ = -np.inf if self.early_stopping else None
        self._no_improvement, self.t_ = 0, 0

    def _optimizer_name(self) -> str:
        """xpmlp's optimizer: ``optimizer`` where given, else scikit-learn's ``solver``."""
        if self.optimizer is not None:
            return self.optimizer
        if self.solver == "sgd" and not self.momentum:
            return "sgd"
        if self.solver == "sgd":
            return "nesterov" if self.nesterovs_momentum else "momentum"
        if self.solver != "adam":
            raise ValueError(f"solver={self.solver!r} is not supported: xpmlp trains with "
                             "minibatches; use solver='adam' or 'sgd' (or optimizer=...)")  # fmt: skip
        return "adam"

    def _configure(self, trainer: Trainer, X, sample_weight, incremental: bool) -> None:
        """This call's settings, so that parameters set since the last fit take effect.

        scikit-learn's alpha penalises ``alpha / (2 sum(w)) * sum(W**2)`` in a batch of weights
        w (its size without weights); the model's l2 is per batch, so alpha is divided by the
        batch size times the mean weight (the same for batches of equal weight sums).
        """
        batch = self._batch_size(X.shape[0])
        trainer.model.l2 = self.alpha / (
            batch * float(namespace(sample_weight).mean(sample_weight))
        )
        changes = dict(epochs=trainer.epoch + (1 if incremental else self.max_iter),
                       batch_size=batch, clip_norm=self.clip_norm, shuffle=bool(self.shuffle))  # fmt: skip
        if not incremental:  # partial_fit keeps the learning rate that learning_rate adapted
            changes["lr"] = self.learning_rate_init
        trainer.config = trainer.config.replace(**changes)

    def _load_coefs(self, model: MLP) -> None:
        """scikit-learn's warm start: from ``coefs_`` and ``intercepts_``, which may have been
        set by hand (also before the first fit)."""
        layers = range(model.n_layers)
        if len(self.coefs_) != model.n_layers or len(self.intercepts_) != model.n_layers:
            raise ValueError(f"coefs_ and intercepts_ need {model.n_layers} arrays each, one per "
                             "layer, for this network")  # fmt: skip
        state = {f"layers.{i}.weight": self.coefs_[i] for i in layers}
        state |= {f"layers.{i}.bias": self.intercepts_[i] for i in layers}
        try:
            model.load_state_dict(state)
        except CheckpointError as error:
            raise ValueError(f"coefs_ and intercepts_ do not fit this network: {error}") from None

    def _record(self, trainer: Trainer, epoch_end, epochs: int, *, warn: bool) -> None:
        if epoch_end.best_params is not None:
            trainer.model.load_state_dict(epoch_end.best_params)
        self.n_iter_ = epochs  # in this call, as scikit-learn counts
        self.history_ = trainer.history
        model, state = trainer.model, trainer.model.state_dict()  # one read of the weights
        self.n_layers_ = model.n_layers + 1
        self.n_outputs_ = model.n_outputs
        self.coefs_ = [state[f"layers.{i}.weight"] for i in range(model.n_layers)]
        self.intercepts_ = [state[f"layers.{i}.bias"] for i in range(model.n_layers)]
        self.loss_ = self.loss_curve_[-1]
        if warn and not epoch_end.converged:
            arrays.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                "the optimization hasn't converged yet.",
                ConvergenceWarning,
            )

    def _split(self, X, y, sample_weight):
        """scikit-learn's validation split (stratified for classes), drawn on the host (device
        labels read back once), so that it is the same on every device."""
        labels = to_numpy(y) if is_classifier(self) and y.ndim == 1 else None
        stratify = labels if labels is not None and len(np.unique(labels)) > 1 else None
        train, val = train_test_split(np.arange(X.shape[0]), test_size=self.validation_fraction,
                                      random_state=_seed(self.random_state), stratify=stratify)  # fmt: skip
        return arrays.take_rows(train, val, X, y, sample_weight)

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


class _EpochEnd:
    """scikit-learn's bookkeeping after every epoch: ``loss_curve_``, ``t_``, the validation
    score; its learning-rate rules for SGD (``invscaling``; ``adaptive``: divided by 5 where it
    would stop, until below 1e-6); and its stopping rule: no improvement of the training loss (or
    the validation score) by ``tol`` for more than ``n_iter_no_change`` epochs."""

    def __init__(self, estimator: BaseMLP, n_samples: int, validation, weight_val):
        self.estimator, self.n_samples = estimator, n_samples
        self.validation, self.weight_val = validation, weight_val
        self.best_params, self.converged = None, False

    def __call__(self, trainer: Trainer, record: dict) -> None:
        est, loss = self.estimator, record["train_loss"]
        est.loss_curve_.append(loss)
        est.t_ += self.n_samples
        if est.verbose:
            print(f"Iteration {record['epoch']}, loss = {loss:.8f}")
        self._count_no_improvement(trainer, loss)
        sgd = trainer.config.optimizer in SGD_OPTIMIZERS
        if sgd and est.learning_rate == "invscaling":
            _set_lr(trainer, est.learning_rate_init / (est.t_ + 1) ** est.power_t)
        if est._no_improvement <= est.n_iter_no_change:
            return
        what = "Validation score" if self.validation else "Training loss"
        message = (f"{what} did not improve more than tol={est.tol:f} for "
                   f"{est.n_iter_no_change} consecutive epochs.")  # fmt: skip
        if sgd and est.learning_rate == "adaptive" and trainer.config.lr > 1e-6:
            _set_lr(trainer, trainer.config.lr / 5)
            est._no_improvement = 0
            message += f" Setting learning rate to {trainer.config.lr:f}"
        else:
            self.converged = trainer.stop_requested = True
            message += " Stopping."
        if est.verbose:
            print(message)

    def _count_no_improvement(self, trainer: Trainer, loss: float) -> None:
        est = self.estimator
        if self.validation is not None:
            score = est._validation_score(trainer, *self.validation, self.weight_val)
            est.validation_scores_.append(score)
            improved = score >= est.best_validation_score_ + est.tol
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.best_params = trainer.model.state_dict()
        else:
            improved = loss <= est.best_loss_ - est.tol
            est.best_loss_ = min(est.best_loss_, loss)
        est._no_improvement = 0 if improved else est._no_improvement + 1


def _set_lr(trainer: Trainer, lr: float) -> None:
    trainer.config = trainer.config.replace(lr=lr)


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
    try:
        model = MLP.from_config(saved["model"], device=saved["device"])
    except DeviceError:
        arrays.warn(
            f"{saved['device']} is not available here; the model is on the CPU", UserWarning
        )
        model = MLP.from_config(saved["model"], device="cpu")
    trainer = Trainer(model, TrainConfig.from_dict(saved["trainer"]["meta"]["config"]))
    trainer.load_state_dict(saved["trainer"])
    return trainer
