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

from ..backend import on_device, to_numpy
from ..core import rng
from ..core.model import MLP
from ..core.optim import FLAT, Optimizer, Schedule, clip_grad_norm, make_optimizer
from ..errors import CheckpointError, ConfigError, DataError, DivergedError, NonFiniteError
from .config import TrainConfig
from .distributed import Local, reduce_step, shard_bounds
from .fitdata import FitData, check_fit_data
from .health import (
    DIVERGENCE_FACTOR,
    PROBE_ROWS,
    diagnose_nonfinite,
    diverged,
    health,
    notes_for,
    unscaled_advice,
)
from .metrics import evaluate
from .signals import DeferredStop, Interrupted


class Trainer:
    """Everything a training run carries from epoch to epoch, so it can be saved and resumed.

    Parameters
    ----------
    model : MLP
    config : TrainConfig, optional
        Every training setting; see :class:`xpmlp.train.config.TrainConfig`.
    **settings
        TrainConfig fields given as keywords, alone or to override ``config``'s.
    """

    def __init__(self, model: MLP, config: TrainConfig | None = None, *, comm=None, **settings):
        try:
            config = (config or TrainConfig()).replace(**settings)
        except TypeError as exc:
            raise ConfigError(f"unknown training setting: {exc}") from None
        self.comm = comm or Local()
        if self.comm.size > 1:  # one shard per process
            if config.grad_shards not in (1, self.comm.size):
                raise ConfigError(
                    f"grad_shards is {config.grad_shards} but {self.comm.size} processes train "
                    "together: each computes one shard"
                )
            config = config.replace(grad_shards=self.comm.size)
        self.model = model
        self.config = config
        self.optimizer: Optimizer = make_optimizer(
            config.optimizer, model.xp, lr=config.lr, momentum=config.momentum,
            betas=config.betas, eps=config.eps, weight_decay=config.weight_decay,
        )  # fmt: skip
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.best = {"value": math.inf, "epoch": 0, "params": None, "wait": 0}
        self.stopped_early = False
        self.initial_loss: float | None = None  # on the probe batch, before training: divergence
        self.input_max: float | None = None  # largest |input| on the probe batch: scaling advice
        self.stop_requested = False
        self.stop_signal: DeferredStop | None = None  # checked between steps (see signals.py)
        self._probe = None  # (X, y) rows health is measured on, set by fit
        self._grad = None  # the flat gradient buffer steps write into (zeros in its gaps)
        self._shard_grad = None  # the next shard's gradient, added to _grad
        self._collective_stop = 0  # a signal some process of a distributed run received
        self.sample_weight = None  # per-sample loss weights on the device, set by fit

    @property
    def backend(self):
        return self.model.backend

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def done(self) -> bool:
        """Whether the run has reached its last epoch or stopped early."""
        return self.epoch >= self.config.epochs or self.stopped_early

    # ------------------------------------------------------------------ one epoch

    def schedule_for(self, n_samples: int) -> Schedule:
        c = self.config
        return Schedule(
            c.lr, c.schedule, steps_per_epoch=math.ceil(n_samples / c.batch_size),
            epochs=c.epochs, step_epochs=c.step_epochs, gamma=c.gamma,
            warmup_epochs=c.warmup_epochs,
        )  # fmt: skip

    def batches(self, X, y):
        """The current epoch's batches, gathered on the device from a device copy of its order.

        Yields ``(step, X_batch, y_batch, dropout_masks, lr, weights)`` (``weights``: the batch's
        sample weights, or None); ``step`` counts from 0 within the epoch, and the order, masks
        and learning rates depend only on seed and epoch.
        """
        model, xp = self.model, self.model.xp
        n = X.shape[0]
        schedule = self.schedule_for(n)
        first_step = self.epoch * schedule.steps_per_epoch
        seed, size = self.config.seed, self.config.batch_size
        order = rng.batch_order(n, seed=seed, epoch=self.epoch, shuffle=self.config.shuffle)
        order = model.backend.asarray(order)

        for step in range(schedule.steps_per_epoch):
            index = order[step * size : min((step + 1) * size, n)]
            Xb, yb = xp.take(X, index, axis=0), xp.take(y, index, axis=0)
            masks = model.sample_masks(index.shape[0], rng.dropout_key(seed, self.epoch, step))
            wb = None if self.sample_weight is None else xp.take(self.sample_weight, index, axis=0)
            yield step, Xb, yb, masks, schedule(first_step + step), wb

    @on_device
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
        sums = self._zero_sums()
        self._grad = model.xp.zeros_like(model.flat)
        start_time = time.perf_counter()
        for step, Xb, yb, masks, lr, wb in self.batches(X, y):
            sums = self.train_step(Xb, yb, masks, lr=lr, sums=sums, weights=wb)
            if on_batch is not None:
                on_batch(step + 1, total_steps)
            self._check_stop()
        loss_sum, correct = (float(value) for value in self._epoch_sums(sums))
        seconds = time.perf_counter() - start_time
        return {
            "train_loss": loss_sum / n,
            "train_accuracy": correct / n if self._classifies else None,
            "lr": lr,
            "seconds": seconds,
            "samples_per_second": n / seconds if seconds > 0 else math.inf,
        }

    @on_device
    def train_step(
        self, Xb, yb, masks, *, lr: float, sums: list | None = None, weights=None
    ) -> list:
        """Forward, backward and update on one batch; returns ``sums`` with the batch added.

        ``sums`` holds, per gradient shard, a device array of the loss summed over samples and
        the correct count (zeros when None). With ``grad_shards`` > 1 the batch is cut into
        contiguous slices (:func:`~xpmlp.train.distributed.shard_bounds`); in a distributed run this
        process computes its own slice and the gradients are reduced across processes.
        """
        sums = self._zero_sums() if sums is None else sums
        if self._grad is None or self._grad.dtype != self.model.dtype:
            self._grad = self.model.xp.zeros_like(self.model.flat)  # zeros in its gaps
        if self.comm.size > 1:
            grad = self._reduce(lambda: to_numpy(self._local_gradient(Xb, yb, masks, sums)))
        elif weights is not None:
            grad, sums[0] = self.model.train_gradients(Xb, yb, masks, sums[0], self._grad, weights)
        else:
            grad = self._local_gradient(Xb, yb, masks, sums)
        self.apply_gradients(grad, lr=lr)
        return sums

    def _local_gradient(self, Xb, yb, masks, sums):
        model, n, shards = self.model, Xb.shape[0], self.config.grad_shards
        if shards == 1:
            grad, sums[0] = model.train_gradients(Xb, yb, masks, sums[0], self._grad)
            return grad
        total = None
        for index in self._own_shards:
            start, stop = shard_bounds(n, shards, index)
            if total is not None and self._shard_grad is None:
                self._shard_grad = model.xp.zeros_like(model.flat)
            buffer = self._grad if total is None else self._shard_grad
            if stop > start:
                rows = slice(start, stop)
                grad, sums[index] = model.train_gradients(
                    Xb[rows, ...], yb[rows, ...], [m[rows, ...] for m in masks], sums[index],
                    buffer,
                )  # fmt: skip
                grad = _scaled(model, grad, (stop - start) / n)
            else:  # fewer rows than shards: this slice is empty and adds zeros
                grad = model.xp.zeros_like(model.flat)
            total = grad if total is None else _added(model, total, grad)
        return total

    def _reduce(self, local_gradient):
        """The sum over processes of ``local_gradient()``, in one call that also says whether any
        received a signal or failed to compute its part (see :func:`reduce_step`)."""
        signal = self.stop_signal.received if self.stop_signal is not None else None
        total, self._collective_stop = reduce_step(
            self.comm, local_gradient, signal or 0,
            size=self.model.flat.shape[0], dtype=self.model.dtype_name,
        )  # fmt: skip
        return self.model.backend.asarray(total, self.model.dtype)

    def _check_stop(self) -> None:
        if self.comm.size > 1:  # every process stops at the same step
            if self._collective_stop:
                raise Interrupted(self._collective_stop)
        elif self.stop_signal is not None:
            self.stop_signal.check()

    @property
    def _own_shards(self) -> range:
        if self.comm.size > 1:
            return range(self.comm.rank, self.comm.rank + 1)
        return range(self.config.grad_shards)

    def _zero_sums(self) -> list:
        model = self.model
        return [model.xp.zeros(2, dtype=model.dtype, device=model.backend.device)
                for _ in range(self.config.grad_shards)]  # fmt: skip

    def _epoch_sums(self, sums: list):
        """The epoch's (loss sum, correct count), read once per shard, summed in shard order."""
        own = [to_numpy(sums[index]) for index in self._own_shards]
        total = own[0].copy() if len(own) > 1 else own[0]
        for values in own[1:]:
            total += values
        return self.comm.sum_in_rank_order(total)

    @on_device
    def apply_gradients(self, grad, *, lr: float) -> None:
        """Clip and step with ``grad``, a flat buffer laid out as the model's parameters."""
        model, grads = self.model, {FLAT: grad}
        if self.config.clip_norm is not None:
            clip_grad_norm(model.xp, grads, self.config.clip_norm)
        params = {FLAT: model.flat}
        self.optimizer.fused = model.fused
        self.optimizer.step(params, grads, lr=lr)
        if params[FLAT] is not model.flat:  # the portable path makes a new buffer
            model.set_flat(params[FLAT])

    # ------------------------------------------------------------------ the run

    @on_device
    def fit(
        self,
        X,
        y,
        *,
        validation_data: tuple | None = None,
        test_data: tuple | None = None,
        callbacks: Sequence[Callable[[Trainer, dict], None]] = (),
        on_batch: Callable[[int, int], None] | None = None,
        sample_weight=None,
    ) -> list[dict]:
        """Train from the current epoch up to ``epochs``; returns the whole history.

        ``callbacks(trainer, record)`` run after every epoch (checkpoints, logging); one may set
        ``trainer.stop_requested`` to end the run after that epoch. An interrupt (Ctrl-C) at any
        moment of an epoch, evaluation included, leaves the trainer at the last completed epoch.
        ``sample_weight`` (n_samples,) weights each sample's loss: a batch's loss is
        ``sum(w_i * l_i) / sum(w)`` over its samples (see :func:`xpmlp.core.ops.weighted_loss`).
        The data are checked first (:meth:`check_data`): a bad input raises DataError before
        the first step.
        """
        data = self.check_data(X, y, validation_data=validation_data, test_data=test_data,
                               sample_weight=sample_weight)  # fmt: skip
        return self.fit_checked(data, callbacks=callbacks, on_batch=on_batch)

    @on_device
    def check_data(
        self, X, y, *, validation_data=None, test_data=None, sample_weight=None
    ) -> FitData:
        """Every check :meth:`fit` makes of its data, made once before anything is trained (or,
        by :func:`xpmlp.fit`, written): the data on the device, as :meth:`fit_checked` takes it.
        See :func:`xpmlp.train.fitdata.check_fit_data` for the rules; a bad input raises DataError."""
        if sample_weight is not None and (self.config.grad_shards > 1 or self.comm.size > 1):
            raise ConfigError("sample weights are not supported with gradient shards or MPI yet")
        return check_fit_data(self.model, X, y, validation_data=validation_data,
                              test_data=test_data, sample_weight=sample_weight)  # fmt: skip

    @on_device
    def fit_checked(
        self,
        data: FitData,
        *,
        callbacks: Sequence[Callable[[Trainer, dict], None]] = (),
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[dict]:
        """:meth:`fit` on data :meth:`check_data` returned."""
        X, y = data.train
        self.sample_weight = data.sample_weight
        self.stop_requested = False
        self._probe = self._probe_batch(X, y)
        # Overflow is detected once per epoch and diagnosed below; NumPy's warnings would only
        # repeat it once per step.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self._run_epochs(X, y, data.validation, data.test, callbacks, on_batch)
        if self.config.early_stopping is not None and self.best["params"] is not None:
            self.model.load_state_dict(self.best["params"])
        return self.history

    def _probe_batch(self, X, y):
        """The fixed rows health is measured on; their scale and, before training, their loss
        (two reads, once per fit)."""
        model, xp = self.model, self.model.xp
        n = min(PROBE_ROWS, X.shape[0])
        probe = (X[:n, ...], y[:n, ...])
        self.input_max = float(to_numpy(xp.max(xp.abs(probe[0]))))
        if self.initial_loss is None:
            if self.history:  # resumed from a checkpoint that predates the probe
                self.initial_loss = float(self.history[0]["train_loss"])
            else:
                outputs = model.outputs(probe[0])
                loss, _ = model.output_loss(outputs, model.targets(probe[1]))
                self.initial_loss = float(to_numpy(loss))
        return probe

    def _run_epochs(self, X, y, validation_data, test_data, callbacks, on_batch) -> None:
        while not self.done and not self.stop_requested:
            if self.stop_signal is not None and self.comm.size == 1:  # a job's: at the next step
                self.stop_signal.check()
            good = self.snapshot()
            try:
                record = {"epoch": self.epoch + 1, **self.train_epoch(X, y, on_batch=on_batch)}
                if not math.isfinite(record["train_loss"]):
                    self.restore(good)
                    advice = unscaled_advice(self.input_max)
                    raise NonFiniteError(self.diagnose_nonfinite(X, y) + advice)
                if diverged(record["train_loss"], self.initial_loss):
                    self.restore(good)
                    raise DivergedError(self._divergence_message(record))
                record.update(self._evaluate("val", validation_data))
                record.update(self._evaluate("test", test_data))
                before = self.model.named(good["params"])
                record["health"] = health(self.model, *self._probe, before=before)
            except KeyboardInterrupt:
                self.restore(good)  # back to the last completed epoch, which can be resumed exactly
                raise
            notes = notes_for([*self.history, record], input_max=self.input_max,
                              n_classes=self.model.n_outputs if self._classifies else None)  # fmt: skip
            if notes:
                record["notes"] = notes
            self.epoch += 1
            self.history.append(record)
            self._early_stopping(record)
            for callback in callbacks:
                callback(self, record)

    @property
    def _classifies(self) -> bool:
        return self.model.loss_name == "cross_entropy"

    def _divergence_message(self, record: dict) -> str:
        return (
            f"the loss diverged in epoch {record['epoch']}: {record['train_loss']:.4g}, far above "
            f"its starting {self.initial_loss:.4g} (the run stops above "
            f"{DIVERGENCE_FACTOR:g}x + 1) at learning rate {record['lr']:.3g}. Lower the learning "
            "rate, or clip gradients (--clip-norm); the weights are those of the last good "
            f"epoch{unscaled_advice(self.input_max)}"
        )

    def _evaluate(self, prefix: str, data) -> dict:
        if data is None:
            return {f"{prefix}_loss": None, f"{prefix}_accuracy": None}
        metrics = evaluate(self.model, *data, checked=True)
        return {f"{prefix}_loss": metrics["loss"], f"{prefix}_accuracy": metrics["accuracy"]}

    def _early_stopping(self, record: dict) -> None:
        if self.config.early_stopping is None:
            return
        value = record["val_loss"] if record["val_loss"] is not None else record["train_loss"]
        if value < self.best["value"]:
            self.best.update(
                value=value, epoch=record["epoch"], wait=0, params=self.model.state_dict()
            )
            return
        self.best["wait"] += 1
        if self.best["wait"] >= self.config.early_stopping:
            self.stopped_early = True
            record["early_stopped"] = True

    # ------------------------------------------------------------------ state

    @on_device
    def snapshot(self) -> dict:
        """A device-side copy of the model and optimizer state (cheap; used to roll back)."""
        xp = self.model.xp
        return {
            "params": xp.asarray(self.model.flat, copy=True),
            "optimizer": self.optimizer.snapshot(),
        }

    def restore(self, snap: dict) -> None:
        """Go back to a :meth:`snapshot` (which stays usable: it is copied again)."""
        with self.backend.activate():
            self.model.set_flat(self.model.xp.asarray(snap["params"], copy=True))
        self.optimizer.restore(snap["optimizer"])

    @on_device
    def diagnose_nonfinite(self, X, y) -> str:
        """Replay the failed epoch step by step (from the restored state) to say where it broke."""
        start = self.snapshot()
        try:
            step = lambda grads, lr: self.apply_gradients(self.model.flatten(grads), lr=lr)  # noqa: E731
            return diagnose_nonfinite(self.model, self.batches(X, y), step, epoch=self.epoch + 1)
        finally:
            self.restore(start)

    def state_dict(self) -> dict:
        """Everything needed to resume, in the groups a checkpoint stores.

        Returns
        -------
        dict
            ``meta`` (JSON-able: epoch, history, config, early-stopping state, optimizer
            steps), ``params`` and ``optimizer`` (host arrays, as :meth:`MLP.state_dict` and
            :meth:`Optimizer.state_dict`) and ``best`` (the best weights so far, or None).
        """
        optimizer = self.optimizer.state_dict(self.model.layout)
        return {
            "meta": {
                "epoch": self.epoch,
                "config": self.config.to_dict(),
                "history": self.history,
                "optimizer_steps": optimizer["steps"],
                "best": {k: v for k, v in self.best.items() if k != "params"},
                "stopped_early": self.stopped_early,
                "initial_loss": self.initial_loss,
            },
            "params": self.model.state_dict(),
            "optimizer": optimizer["slots"],
            "best": self.best["params"],
        }

    @on_device
    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (or a checkpoint's groups); a malformed one raises
        :class:`CheckpointError` and changes nothing."""
        meta = state["meta"]
        try:
            epoch, history = meta["epoch"], list(meta["history"])
            steps, best = meta["optimizer_steps"], dict(meta["best"])
            stopped = bool(meta.get("stopped_early", False))
            valid = (
                isinstance(epoch, int) and epoch >= 0 and {"value", "epoch", "wait"} <= best.keys()
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"the checkpoint's trainer state is malformed ({exc!r})"
            ) from None
        if not valid:
            raise CheckpointError("the checkpoint's trainer state is malformed (epoch or best)")
        before = self.model.flat
        self.model.load_state_dict(state["params"])
        asarray = lambda a: self.model.backend.asarray(a, self.model.dtype, copy=True)  # noqa: E731
        try:
            self.optimizer.load_state_dict(
                {"steps": steps, "slots": state["optimizer"]}, asarray=asarray,
                layout=self.model.layout,
            )  # fmt: skip
        except CheckpointError:
            self.model.set_flat(before)
            raise
        self.epoch, self.history, self.stopped_early = epoch, history, stopped
        initial = meta.get("initial_loss")
        self.initial_loss = float(initial) if isinstance(initial, int | float) else None
        self.best = {**best, "params": state.get("best")}


def _scaled(model: MLP, grad, factor: float):
    if model.backend.lib is not None:
        grad *= factor
        return grad
    return grad * factor


def _added(model: MLP, total, grad):
    if model.backend.lib is not None:
        total += grad
        return total
    return total + grad
