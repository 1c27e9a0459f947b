"""The training loop: minibatch steps on the device, metrics read once per epoch.

Inside an epoch nothing is read back to the host: batches are gathered on the device from a
device copy of the epoch's permutation, loss and correct counts accumulate as device scalars,
and the learning rate is computed on the host from the step number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import rng
from .backend import to_numpy
from .errors import ConfigError, DataError, NonFiniteError
from .model import EVAL_BATCH, MLP
from .optim import Optimizer, Schedule, clip_grad_norm, make_optimizer


def evaluate(model: MLP, X, y, *, batch_size: int = EVAL_BATCH) -> dict:
    """Mean loss (without the weight-decay term) and, for classifiers, accuracy on (X, y).

    Returns
    -------
    dict with ``loss`` (float) and ``accuracy`` (float, or None for mse models)
    """
    X, y = model.as_input(X), model.as_target(y)
    xp = model.xp
    loss_sum, correct = _zero(model), _zero(model)
    for start in range(0, X.shape[0], batch_size):
        # The standard leaves slices that run past the end undefined.
        stop = min(start + batch_size, X.shape[0])
        Xb, yb = X[start:stop, ...], y[start:stop, ...]
        outputs = model._forward(Xb, None)[0]
        loss, _ = model._loss(xp, outputs, model.targets(yb))
        loss_sum = loss_sum + loss * Xb.shape[0]
        correct = correct + _correct(model, outputs, yb)
    n = X.shape[0]
    loss_sum, correct = float(to_numpy(loss_sum)), float(to_numpy(correct))
    accuracy = correct / n if model.loss_name == "cross_entropy" else None
    return {"loss": loss_sum / n, "accuracy": accuracy}


def _zero(model):
    return model.xp.zeros((), dtype=model.dtype, device=model.backend.device)


def _correct(model, outputs, labels):
    if model.loss_name != "cross_entropy":
        return _zero(model)
    xp = model.xp
    return xp.sum(xp.astype(xp.argmax(outputs, axis=1) == labels, model.dtype))


class Trainer:
    """Everything a training run carries from epoch to epoch, so it can be saved and resumed.

    Parameters
    ----------
    model : MLP
    optimizer : str
        sgd, momentum, nesterov, adam or adamw.
    lr, momentum, weight_decay : float
        ``weight_decay`` here is AdamW's decoupled decay; the L2 penalty belongs to the model.
    batch_size, epochs : int
    schedule : str
        constant, step or cosine (see :class:`xpmlp.optim.Schedule`), with ``warmup_epochs``,
        ``step_epochs`` and ``gamma``.
    clip_norm : float or None
        Clip gradients to this global L2 norm.
    early_stopping : int or None
        Patience in epochs on the validation loss (training loss without validation data);
        when it runs out, training stops and the best weights are restored.
    seed : int
        Seeds batch order and dropout masks (together with the epoch number).
    """

    def __init__(
        self,
        model: MLP,
        *,
        optimizer: str = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        epochs: int = 10,
        schedule: str = "constant",
        warmup_epochs: float = 0.0,
        step_epochs: int = 10,
        gamma: float = 0.1,
        clip_norm: float | None = None,
        early_stopping: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if batch_size < 1 or epochs < 0:
            raise ConfigError(
                f"batch_size must be >= 1 and epochs >= 0; got {batch_size}, {epochs}"
            )
        if clip_norm is not None and not clip_norm > 0:
            raise ConfigError(f"clip norm must be > 0; got {clip_norm}")
        if early_stopping is not None and early_stopping < 1:
            raise ConfigError(f"early-stopping patience must be >= 1; got {early_stopping}")
        self.model = model
        self.optimizer: Optimizer = make_optimizer(
            optimizer, model.xp, lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self.settings = dict(
            optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
            batch_size=batch_size, epochs=epochs, schedule=schedule, warmup_epochs=warmup_epochs,
            step_epochs=step_epochs, gamma=gamma, clip_norm=clip_norm,
            early_stopping=early_stopping, seed=seed, shuffle=shuffle,
        )  # fmt: skip
        self.batch_size, self.epochs, self.seed = batch_size, epochs, seed
        self.clip_norm, self.patience, self.shuffle = clip_norm, early_stopping, shuffle
        self._schedule_args = dict(
            kind=schedule, epochs=epochs, warmup_epochs=warmup_epochs,
            step_epochs=step_epochs, gamma=gamma,
        )  # fmt: skip
        Schedule(lr, **self._schedule_args)  # validate now, not at the first epoch
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.best = {"value": math.inf, "epoch": 0, "params": None, "wait": 0}
        self.stop_requested = False

    # ------------------------------------------------------------------ one epoch

    def schedule_for(self, n_samples: int) -> Schedule:
        steps = math.ceil(n_samples / self.batch_size)
        return Schedule(self.optimizer.lr, steps_per_epoch=steps, **self._schedule_args)

    def batches(self, X, y):
        """The current epoch's batches, gathered on the device from a device copy of its order.

        Yields ``(step, X_batch, y_batch, dropout_masks, lr)``; ``step`` counts from 0 within
        the epoch, and the order, masks and learning rates depend only on seed and epoch.
        """
        model, xp = self.model, self.model.xp
        n = X.shape[0]
        schedule = self.schedule_for(n)
        first_step = self.epoch * schedule.steps_per_epoch
        order = rng.batch_order(n, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle)
        order = model.backend.asarray(order)
        masks_rng = rng.dropout_generator(self.seed, self.epoch)
        for step in range(schedule.steps_per_epoch):
            index = order[step * self.batch_size : min((step + 1) * self.batch_size, n)]
            Xb, yb = xp.take(X, index, axis=0), xp.take(y, index, axis=0)
            masks = model.sample_masks(index.shape[0], masks_rng)
            yield step, Xb, yb, masks, schedule(first_step + step)

    def train_epoch(self, X, y, *, on_batch: Callable[[int, int], None] | None = None) -> dict:
        """One pass over (X, y) already on the device; returns the epoch's training metrics.

        The device scalars are read once, at the end. ``on_batch(done, total)`` is called
        after every step with host integers only (for progress bars).
        """
        model = self.model
        n = X.shape[0]
        if n == 0:
            raise DataError("the training set is empty")
        total_steps = self.schedule_for(n).steps_per_epoch
        loss_sum, correct = _zero(model), _zero(model)
        start_time = time.perf_counter()
        for step, Xb, yb, masks, lr in self.batches(X, y):
            loss, outputs = self.train_step(Xb, yb, masks, lr=lr)
            loss_sum = loss_sum + loss * Xb.shape[0]
            correct = correct + _correct(model, outputs, yb)
            if on_batch is not None:
                on_batch(step + 1, total_steps)
        loss_sum, correct = float(to_numpy(loss_sum)), float(to_numpy(correct))  # the one sync
        seconds = time.perf_counter() - start_time
        return {
            "train_loss": loss_sum / n,
            "train_accuracy": correct / n if model.loss_name == "cross_entropy" else None,
            "lr": lr,
            "seconds": seconds,
            "samples_per_second": n / seconds if seconds > 0 else math.inf,
        }

    def train_step(self, Xb, yb, masks, *, lr: float):
        """Forward, backward and update on one batch; returns (loss, outputs) as device arrays."""
        model = self.model
        loss, grads, outputs = model.batch_loss_and_grads(Xb, model.targets(yb), masks)
        self.apply_gradients(grads, lr=lr)
        return loss, outputs

    def apply_gradients(self, grads: dict, *, lr: float) -> None:
        if self.clip_norm is not None:
            clip_grad_norm(self.model.xp, grads, self.clip_norm)
        self.optimizer.step(self.model.params, grads, lr=lr)

    # ------------------------------------------------------------------ the run

    def fit(
        self,
        X,
        y,
        *,
        validation_data: tuple | None = None,
        test_data: tuple | None = None,
        callbacks: Sequence[Callable[[Trainer, dict], None]] = (),
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[dict]:
        """Train from the current epoch up to ``epochs``; returns the whole history.

        ``callbacks(trainer, record)`` run after every epoch (checkpoints, logging); one may set
        ``trainer.stop_requested`` to end the run after that epoch.
        """
        model = self.model
        X, y = model.as_input(X), model.as_target(y)
        if X.shape[0] != y.shape[0]:
            raise DataError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
        if X.shape[0] == 0:
            raise DataError("the training set is empty")
        validation_data = self._on_device(validation_data)
        test_data = self._on_device(test_data)
        self.stop_requested = False
        # Overflow is detected once per epoch and diagnosed below; NumPy's warnings would only
        # repeat it once per step.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self._run_epochs(X, y, validation_data, test_data, callbacks, on_batch)
        if self.patience is not None and self.best["params"] is not None:
            model.load_state_dict(self.best["params"])
        return self.history

    def _run_epochs(self, X, y, validation_data, test_data, callbacks, on_batch) -> None:
        while self.epoch < self.epochs and not self.stop_requested:
            good = self.snapshot()
            try:
                record = {"epoch": self.epoch + 1, **self.train_epoch(X, y, on_batch=on_batch)}
            except KeyboardInterrupt:
                self.restore(good)  # back to the last completed epoch, which can be resumed exactly
                raise
            if not math.isfinite(record["train_loss"]):
                self.restore(good)
                raise NonFiniteError(self.diagnose_nonfinite(X, y))
            record.update(self._evaluate("val", validation_data))
            record.update(self._evaluate("test", test_data))
            self.epoch += 1
            self.history.append(record)
            self._early_stopping(record)
            for callback in callbacks:
                callback(self, record)

    def _on_device(self, data):
        if data is None:
            return None
        X, y = data
        return self.model.as_input(X), self.model.as_target(y)

    def _evaluate(self, prefix: str, data) -> dict:
        if data is None:
            return {f"{prefix}_loss": None, f"{prefix}_accuracy": None}
        metrics = evaluate(self.model, *data)
        return {f"{prefix}_loss": metrics["loss"], f"{prefix}_accuracy": metrics["accuracy"]}

    def _early_stopping(self, record: dict) -> None:
        if self.patience is None:
            return
        value = record["val_loss"] if record["val_loss"] is not None else record["train_loss"]
        if value < self.best["value"]:
            self.best.update(
                value=value, epoch=record["epoch"], wait=0, params=self.model.state_dict()
            )
            return
        self.best["wait"] += 1
        if self.best["wait"] >= self.patience:
            self.stop_requested = True
            record["early_stopped"] = True

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict:
        """A device-side copy of the model and optimizer state (cheap; used to roll back)."""
        xp = self.model.xp
        return {
            "params": {k: xp.asarray(v, copy=True) for k, v in self.model.params.items()},
            "optimizer": {
                name: {s: xp.asarray(v, copy=True) for s, v in slots.items()}
                for name, slots in self.optimizer.state.items()
            },
            "steps": self.optimizer.steps,
        }

    def restore(self, snap: dict) -> None:
        self.model.params = dict(snap["params"])
        self.optimizer.state = {name: dict(slots) for name, slots in snap["optimizer"].items()}
        self.optimizer.steps = snap["steps"]

    def diagnose_nonfinite(self, X, y) -> str:
        """Replay the failed epoch step by step (from the restored state) to say where it broke."""
        model = self.model
        start = self.snapshot()
        message = f"loss became non-finite in epoch {self.epoch + 1}"
        try:
            for step, Xb, yb, masks, lr in self.batches(X, y):
                loss, grads, _ = model.batch_loss_and_grads(Xb, model.targets(yb), masks)
                loss = float(to_numpy(loss))
                where = _first_nonfinite(grads)
                if where is not None or not math.isfinite(loss):
                    blame = where or _largest_grad(grads)
                    return (
                        f"{message}, step {step + 1} (learning rate {lr:.3g}): loss = {loss:.4g}; "
                        f"{blame}. Lower the learning rate, or clip gradients (--clip-norm); "
                        f"the weights are those of the last good epoch"
                    )
                self.apply_gradients(grads, lr=lr)
            return f"{message} (not reproduced on replay); the weights are those of the last good epoch"
        finally:
            self.restore(start)

    def state_dict(self) -> dict:
        """Everything needed to resume: JSON-able ``meta`` plus host arrays."""
        return {
            "meta": {
                "epoch": self.epoch,
                "settings": self.settings,
                "history": self.history,
                "optimizer_steps": self.optimizer.steps,
                "best": {k: v for k, v in self.best.items() if k != "params"},
            },
            "params": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict()["slots"],
            "best_params": self.best["params"],
        }

    def load_state_dict(self, state: dict) -> None:
        meta = state["meta"]
        self.model.load_state_dict(state["params"])
        asarray = lambda a: self.model.backend.asarray(a, self.model.dtype, copy=True)  # noqa: E731
        self.optimizer.load_state_dict(
            {"steps": meta["optimizer_steps"], "slots": state["optimizer"]}, asarray=asarray
        )
        self.epoch = int(meta["epoch"])
        self.history = list(meta["history"])
        self.best = {**meta["best"], "params": state.get("best_params")}


def _first_nonfinite(grads: dict) -> str | None:
    """The parameter, in backward order (output layer first), whose gradient first has NaN/inf."""
    for name in reversed(list(grads)):
        values = to_numpy(grads[name])
        if not np.all(np.isfinite(values)):
            return f"the gradient of {name} is not finite"
    return None


def _largest_grad(grads: dict) -> str:
    norms = {name: float(np.linalg.norm(to_numpy(g))) for name, g in grads.items()}
    name = max(norms, key=norms.get)
    return f"the largest gradient is that of {name} (norm {norms[name]:.3g})"


def fit(
    model: MLP,
    X,
    y,
    *,
    optimizer: str = "adam",
    lr: float = 1e-3,
    batch_size: int = 128,
    epochs: int = 10,
    validation_data: tuple | None = None,
    test_data: tuple | None = None,
    seed: int = 0,
    callbacks: Sequence[Callable] = (),
    **settings,
) -> list[dict]:
    """Train ``model`` on (X, y) with minibatch gradient descent; returns the per-epoch history.

    Parameters
    ----------
    model : MLP
    X : array of shape (n_samples, n_inputs)
    y : array of shape (n_samples,) with integer labels (cross-entropy), or
        (n_samples, n_outputs) targets (mse)
    optimizer, lr, batch_size, epochs, seed
        See :class:`Trainer`, which also takes ``momentum``, ``weight_decay``, ``schedule``,
        ``warmup_epochs``, ``step_epochs``, ``gamma``, ``clip_norm``, ``early_stopping`` and
        ``shuffle`` as keywords here.
    validation_data, test_data : (X, y) tuples, optional
        Evaluated after every epoch.

    Returns
    -------
    list of dict
        One record per epoch: ``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss``,
        ``val_accuracy``, ``test_loss``, ``test_accuracy``, ``lr``, ``seconds`` (training time
        of the epoch, evaluation excluded) and ``samples_per_second``.
    """
    trainer = Trainer(
        model,
        optimizer=optimizer,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        **settings,
    )
    return trainer.fit(
        X, y, validation_data=validation_data, test_data=test_data, callbacks=callbacks
    )
