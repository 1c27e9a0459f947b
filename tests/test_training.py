"""The training loop: trajectories agree across backends, batches and masks are keyed by the seed,
and fit, evaluate, early stopping and the non-finite rollback behave as documented."""

from __future__ import annotations

import math
import re

import array_api_compat
import numpy as np
import pytest
from tolerances import real_gpu, rtol_for

from xpmlp import (
    MLP,
    ConfigError,
    DataError,
    DivergedError,
    NonFiniteError,
    TrainConfig,
    Trainer,
    evaluate,
    fit,
    get_backend,
    to_numpy,
)
from xpmlp.core import rng

HISTORY_KEYS = {
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "lr",
    "seconds",
    "samples_per_second",
    "health",
}


class RecordingTrainer(Trainer):
    """A Trainer that keeps a host copy of every batch and dropout mask it trains on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def train_step(self, Xb, yb, masks, *, lr, sums=None, weights=None):
        self.seen.append((to_numpy(Xb), to_numpy(yb), [to_numpy(m) for m in masks], lr))
        return super().train_step(Xb, yb, masks, lr=lr, sums=sums, weights=weights)


def _assert_params_close(model, reference: dict, rtol: float):
    for name, value in model.state_dict().items():
        scale = np.max(np.abs(reference[name]))
        error = np.max(np.abs(value - reference[name])) / scale
        assert error <= rtol, f"{name}: relative difference {error:.3g} > {rtol:.3g}"


# ---------------------------------------------------------------------- the same run everywhere


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_trajectories_agree_across_backends(backend, make_problem, optimizer):
    # 100 samples in batches of 10 for 5 epochs: 50 steps, with dropout and a cosine schedule.
    X, y = make_problem(n=100, n_in=5, n_out=3, seed=4)
    X_val, y_val = make_problem(n=30, n_in=5, n_out=3, seed=5)
    settings = {"optimizer": optimizer, "lr": 0.05, "batch_size": 10, "epochs": 5, "seed": 3}

    def run(device):
        model = MLP([5, 8, 6, 3], activation="tanh", dropout=0.2, device=device, dtype="float64")
        history = fit(model, X, y, schedule="cosine", validation_data=(X_val, y_val), **settings)
        return model, history

    reference, reference_history = run("cpu")
    model, history = run(backend)
    assert all(backend.owns(value) for value in model.params.values())
    rtol = rtol_for(backend, 1e-12) * (100 if real_gpu(backend) else 1)  # 50 steps on a GPU
    _assert_params_close(model, reference.state_dict(), rtol)
    for ours, theirs in zip(history, reference_history):
        for key in ("train_loss", "val_loss", "lr"):
            assert ours[key] == pytest.approx(theirs[key], rel=rtol), key
        assert ours["train_accuracy"] == theirs["train_accuracy"]
    # The run moved far from its start: agreement is not that of two untrained models.
    start = MLP([5, 8, 6, 3], activation="tanh", dtype="float64").state_dict()["layers.0.weight"]
    assert np.max(np.abs(reference.state_dict()["layers.0.weight"] - start)) > 0.1


def test_same_batches_and_masks_on_every_backend(backend, make_problem):
    X, y = make_problem(n=25, n_in=3, n_out=2, seed=1)  # batches of 8, 8, 8 and 1

    def run(device):
        model = MLP([3, 4, 5, 2], dropout=0.5, device=device, dtype="float64")
        trainer = RecordingTrainer(model, batch_size=8, epochs=2, seed=7)
        trainer.fit(X, y)
        return trainer.seen

    reference, seen = run("cpu"), run(backend)
    assert len(seen) == len(reference) == 8
    for (Xb, yb, masks, lr), (Xr, yr, masks_r, lr_r) in zip(seen, reference):
        np.testing.assert_array_equal(Xb, Xr)
        np.testing.assert_array_equal(yb, yr)
        assert len(masks) == len(masks_r) == 2
        for mask, mask_r in zip(masks, masks_r):
            np.testing.assert_array_equal(mask, mask_r)
        assert lr == lr_r
    # Every sample once per epoch, in a shuffled order that differs between the epochs.
    epoch_1 = np.concatenate([batch[0] for batch in reference[:4]])
    epoch_2 = np.concatenate([batch[0] for batch in reference[4:]])
    np.testing.assert_array_equal(np.sort(epoch_1, axis=0), np.sort(X, axis=0))
    assert not np.array_equal(epoch_1, X) and not np.array_equal(epoch_1, epoch_2)


def test_batch_order_and_masks_depend_on_seed_and_epoch():
    order = rng.batch_order(50, seed=1, epoch=0)
    np.testing.assert_array_equal(order, rng.batch_order(50, seed=1, epoch=0))
    np.testing.assert_array_equal(np.sort(order), np.arange(50))
    assert order.dtype == np.int64
    assert not np.array_equal(order, rng.batch_order(50, seed=2, epoch=0))
    assert not np.array_equal(order, rng.batch_order(50, seed=1, epoch=1))
    np.testing.assert_array_equal(rng.batch_order(5, seed=1, epoch=0, shuffle=False), range(5))

    def masks(seed, epoch, step=0):
        key = rng.dropout_key(seed, epoch, step)
        return rng.dropout_mask(np, (20, 30), 0.5, key, dtype=np.float32, device=None)

    np.testing.assert_array_equal(masks(1, 0), masks(1, 0))
    assert not np.array_equal(masks(1, 0), masks(2, 0))
    assert not np.array_equal(masks(1, 0), masks(1, 1))
    assert not np.array_equal(masks(1, 0, 0), masks(1, 0, 1))


def test_different_seeds_train_differently(make_problem):
    X, y = make_problem(n=40, n_in=3, n_out=2)
    runs = []
    for seed in (0, 1):
        model = MLP([3, 4, 2], dtype="float64")
        fit(model, X, y, epochs=2, batch_size=8, seed=seed)
        runs.append(model.state_dict()["layers.0.weight"])
    assert not np.array_equal(*runs)


# ---------------------------------------------------------------------- fit and evaluate


def test_fit_learns_a_separable_problem(backend, dtype, make_problem):
    X, y = make_problem(n=200, n_in=4, n_out=3, seed=2)
    X_test, y_test = make_problem(n=100, n_in=4, n_out=3, seed=2)
    model = MLP([4, 16, 3], device=backend, dtype=dtype, seed=1)
    before = evaluate(model, X, y)["accuracy"]
    history = fit(model, X, y, lr=0.03, batch_size=32, epochs=30, test_data=(X_test, y_test))
    assert len(history) == 30
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 3
    assert history[-1]["train_accuracy"] >= 0.95 > before
    assert evaluate(model, X, y)["accuracy"] >= 0.95
    assert history[-1]["test_accuracy"] == evaluate(model, X_test, y_test)["accuracy"]


def test_history_records_have_the_documented_keys(backend, make_problem):
    X, y = make_problem(n=30)
    model = MLP([3, 4, 2], device=backend)
    history = fit(model, X, y, epochs=2, batch_size=8, validation_data=(X, y))
    assert [record["epoch"] for record in history] == [1, 2]
    for record in history:
        assert set(record) == HISTORY_KEYS
        assert record["test_loss"] is None and record["test_accuracy"] is None
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"):
            assert isinstance(record[key], float) and math.isfinite(record[key]), key
        assert 0.0 <= record["train_accuracy"] <= 1.0
        assert record["samples_per_second"] > 0


def test_regression_history_has_no_accuracy(backend, make_problem):
    X, y = make_problem(n=40, n_out=2, loss="mse")
    model = MLP([3, 8, 2], loss="mse", device=backend, dtype="float64")
    history = fit(model, X, y, lr=0.02, epochs=15, batch_size=8, validation_data=(X, y))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["train_accuracy"] is None and history[-1]["val_accuracy"] is None
    assert evaluate(model, X, y)["accuracy"] is None


def test_evaluate_matches_a_direct_computation(backend, make_problem):
    X, y = make_problem(n=23, n_in=3, n_out=3)
    model = MLP([3, 5, 3], l2=0.1, device=backend, dtype="float64")
    logits = to_numpy(model.forward(X))
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    loss = -np.mean(logp[np.arange(23), y])  # no weight-decay term: that is a training matter
    accuracy = np.mean(np.argmax(logits, axis=1) == y)
    for batch_size in (23, 5, 1000):  # one batch, a ragged last batch, more than the data
        metrics = evaluate(model, backend.asarray(X), backend.asarray(y), batch_size=batch_size)
        assert metrics["loss"] == pytest.approx(loss, rel=1e-13)
        assert metrics["accuracy"] == accuracy


def test_schedule_is_recorded_per_epoch(make_problem):
    X, y = make_problem(n=20)
    history = fit(
        MLP([3, 2]), X, y, optimizer="sgd", lr=0.1, batch_size=5, epochs=3,
        schedule="step", step_epochs=1, gamma=0.5,
    )  # fmt: skip
    # The lr of an epoch's last step: 0.1 in epoch 1, halved after each epoch.
    assert [record["lr"] for record in history] == pytest.approx([0.1, 0.05, 0.025])


def test_clip_norm_bounds_each_step(backend, make_problem):
    X, y = make_problem(n=16)
    model = MLP([3, 8, 2], device=backend, dtype="float64")
    trainer = Trainer(model, optimizer="sgd", lr=1.0, clip_norm=0.01)
    before = model.state_dict()
    Xb, yb = model.as_input(X), model.as_target(y)
    trainer.train_step(Xb, yb, [], lr=1.0)
    # With SGD at lr 1 the step is the clipped gradient itself: its global norm is <= 0.01.
    step = math.sqrt(sum(np.sum((v - before[k]) ** 2) for k, v in model.state_dict().items()))
    assert step == pytest.approx(0.01, rel=1e-3)


def test_callbacks_see_every_epoch_and_can_stop(make_problem):
    X, y = make_problem(n=20)
    seen = []

    def callback(trainer, record):
        seen.append(record["epoch"])
        if record["epoch"] == 2:
            trainer.stop_requested = True

    history = fit(MLP([3, 2]), X, y, epochs=5, batch_size=10, callbacks=[callback])
    assert seen == [1, 2] and len(history) == 2


def test_resumed_run_equals_an_uninterrupted_one(backend, make_problem):
    X, y = make_problem(n=30, seed=3)

    def trainer(epochs):
        model = MLP([3, 6, 2], dropout=0.3, device=backend, dtype="float64")
        return Trainer(model, optimizer="adam", lr=0.02, batch_size=8, epochs=epochs, seed=5)

    straight = trainer(4)
    straight.fit(X, y)
    first = trainer(2)
    first.fit(X, y)
    resumed = trainer(4)
    resumed.load_state_dict(first.state_dict())
    resumed.fit(X, y)
    assert resumed.epoch == 4 and len(resumed.history) == 4
    for name, value in resumed.model.state_dict().items():
        np.testing.assert_array_equal(value, straight.model.state_dict()[name], err_msg=name)


# ---------------------------------------------------------------------- early stopping


def test_early_stopping_restores_the_best_weights(backend, make_problem):
    # Validating on the flipped labels: the better the fit, the worse the validation loss, so
    # the best epoch is the first and training stops `patience` epochs later.
    X, y = make_problem(n=40, n_in=3, n_out=2, seed=6)
    model = MLP([3, 8, 2], device=backend, dtype="float64")
    snapshots = []
    history = fit(
        model, X, y, lr=0.05, batch_size=8, epochs=20, early_stopping=2,
        validation_data=(X, 1 - y), callbacks=[lambda t, r: snapshots.append(t.model.state_dict())],
    )  # fmt: skip
    val_losses = [record["val_loss"] for record in history]
    best = int(np.argmin(val_losses))
    assert best == 0
    assert len(history) == best + 1 + 2 and history[-1].get("early_stopped") is True
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, snapshots[best][name], err_msg=name)
    assert not np.array_equal(snapshots[-1]["layers.0.weight"], snapshots[best]["layers.0.weight"])


def test_early_stopping_without_validation_watches_the_training_loss(make_problem):
    X, y = make_problem(n=40)
    history = fit(MLP([3, 8, 2]), X, y, lr=0.01, epochs=4, batch_size=8, early_stopping=3)
    assert len(history) == 4 and "early_stopped" not in history[-1]


# ---------------------------------------------------------------------- non-finite loss


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_learning_rate_raises_and_rolls_back(backend, make_problem, dtype):
    X, y = make_problem(n=60, n_in=4, n_out=2, seed=0)
    model = MLP([4, 8, 2], device=backend, dtype=dtype, seed=1)
    trainer = Trainer(model, optimizer="sgd", lr=0.01, epochs=1, batch_size=10)
    trainer.fit(X, y)
    # Each completed epoch's state: with float64 an epoch at lr 1e30 may still end finite.
    completed = {1: (model.state_dict(), trainer.optimizer.steps)}

    def keep(trainer, record):
        completed[record["epoch"]] = (trainer.model.state_dict(), trainer.optimizer.steps)

    trainer.config = trainer.config.replace(epochs=10, lr=1e30)
    # A non-finite loss, or (float64) a finite one far above the start: both stop and roll back.
    with pytest.raises((NonFiniteError, DivergedError)) as info:
        trainer.fit(X, y, callbacks=[keep])
    message = str(info.value)
    if info.type is NonFiniteError:
        found = re.search(
            r"loss became non-finite in epoch (\d+), step (\d+) \(learning rate 1e\+30\)", message
        )
        assert found, message
        failed_epoch, failed_step = int(found[1]), int(found[2])
        assert failed_epoch >= 2 and 1 <= failed_step <= 6
        assert re.search(r"layers\.\d\.(weight|bias)", message), message
    else:
        found = re.search(r"the loss diverged in epoch (\d+): .* at learning rate 1e\+30", message)
        assert found and dtype == "float64", message
        failed_epoch = int(found[1])
    assert "the weights are those of the last good epoch" in message
    # Rolled back to the end of the last good epoch: finite, on the device, the optimizer too.
    good, good_steps = completed[failed_epoch - 1]
    assert trainer.epoch == failed_epoch - 1 and len(trainer.history) == failed_epoch - 1
    assert trainer.optimizer.steps == good_steps
    for name, value in model.state_dict().items():
        assert np.all(np.isfinite(value))
        np.testing.assert_array_equal(value, good[name], err_msg=name)
        assert backend.owns(model.params[name])


# ---------------------------------------------------------------------- on the device


def test_train_epoch_on_device_data(backend, make_problem):
    # On array-api-strict the data sit on device1: every array the epoch makes must follow.
    X, y = make_problem(n=30, n_in=3, n_out=2)
    model = MLP([3, 5, 2], dropout=0.2, device=backend, dtype="float64")
    X_dev, y_dev = model.as_input(backend.asarray(X)), model.as_target(backend.asarray(y))
    if backend.device is not None:
        assert array_api_compat.device(X_dev) == backend.device
    trainer = Trainer(model, batch_size=7, epochs=1)  # 7 + 7 + 7 + 7 + 2 rows
    progress = []
    metrics = trainer.train_epoch(X_dev, y_dev, on_batch=lambda done, total: progress.append(done))
    assert progress == [1, 2, 3, 4, 5]
    assert set(metrics) == {"train_loss", "train_accuracy", "lr", "seconds", "samples_per_second"}
    assert math.isfinite(metrics["train_loss"]) and 0.0 <= metrics["train_accuracy"] <= 1.0
    assert trainer.optimizer.steps == 5
    for name, value in model.params.items():
        assert backend.owns(value), name
    for slots in trainer.optimizer.state.values():
        assert all(backend.owns(v) for v in slots.values())


# ---------------------------------------------------------------------- bad settings and data


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"epochs": -1}, "epochs must be an integer >= 0"),
        ({"clip_norm": 0.0}, r"clip_norm must be a finite number in \(0, inf\]"),
        ({"early_stopping": 0}, "early_stopping must be an integer >= 1"),
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
        ({"schedule": "linear"}, "unknown schedule 'linear'"),
        ({"lr": 0.0}, r"lr must be a finite number in \(0, inf\]"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"warmup_epochs": float("inf")}, "warmup_epochs must be a finite number"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"gamma": -1.0}, "gamma must be a finite number"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite number"),
        ({"weight_decay": 0.1}, "weight_decay is AdamW's decoupled decay and adam has none"),
        ({"nonsense": 1}, "unknown training setting"),
    ],
)
def test_invalid_trainer_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(MLP([3, 2]), **kwargs)


def test_bad_training_data(backend):
    model = MLP([3, 2], device=backend)
    with pytest.raises(DataError, match="X has 4 rows but y has 3"):
        fit(model, np.zeros((4, 3)), np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError, match="the training set is empty"):
        fit(model, np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    with pytest.raises(DataError, match=r"X must have shape \(n_samples, 3\); got \(4, 2\)"):
        fit(model, np.zeros((4, 2)), np.zeros(4, dtype=np.int64))
    with pytest.raises(DataError, match=r"X must have shape \(n_samples, 3\)"):
        fit(
            model, np.zeros((4, 3)), np.zeros(4, dtype=np.int64), validation_data=(np.zeros(3), [0])
        )


def _set(array, index, value):
    array = np.array(array, dtype=np.float64)
    array[index] = value
    return array


def _label(y, row, value):
    return np.where(np.arange(len(y)) == row, value, y)


# Bad inputs to fit (from a good X of 12 rows and 4 features, y of 3 classes) and the message
# each gets: the command line's words, with the data set named.
BAD_DATA = {
    "nan in X": (
        lambda X, y: (_set(X, (3, 2), np.nan), y, {}),
        r"^features must be finite; found nan in column 2 of row 3 of X \(1 rows affected\)$",
    ),
    "inf in X": (lambda X, y: (_set(X, (5, 0), -np.inf), y, {}), "found -inf in column 0 of row 5"),
    "too large for float32": (
        lambda X, y: (_set(X, (1, 3), 1e39), y, {}),
        "^features must be finite; found inf in column 3 of row 1 of X converted to float32",
    ),
    "X not 2-d": (
        lambda X, y: (X[:, :, None], y, {}),
        r"^X must have shape \(n_samples, 4\); got \(12, 4, 1\)$",
    ),
    "fewer features than inputs": (
        lambda X, y: (X[:, :3], y, {}),
        r"^X must have shape \(n_samples, 4\); got \(12, 3\)$",
    ),
    "rows differ": (lambda X, y: (X, y[:11], {}), "^X has 12 rows but y has 11 labels$"),
    "more classes than outputs": (
        lambda X, y: (X, _label(y, 2, 3), {}),
        r"^labels must be integers in \[0, 3\); found 3 at row 2$",
    ),
    "labels not integers": (
        lambda X, y: (X, _label(y, 7, 1.5), {}),
        r"^labels must be integers in \[0, 3\); found 1.5 at row 7$",
    ),
    "nan in validation X": (
        lambda X, y: (X, y, {"validation_data": (_set(X, (0, 1), np.nan), y)}),
        "^validation_data: features must be finite; found nan in column 1 of row 0 of X",
    ),
    "validation label out of range": (
        lambda X, y: (X, y, {"validation_data": (X, _label(y, 4, 7))}),
        r"^validation_data: labels must be integers in \[0, 3\); found 7 at row 4$",
    ),
    "test rows differ": (
        lambda X, y: (X, y, {"test_data": (X, y[:11])}),
        "^test_data: X has 12 rows but y has 11 labels$",
    ),
    "test X not 2-d": (
        lambda X, y: (X, y, {"test_data": (X[0], y)}),
        r"^test_data: X must have shape \(n_samples, 4\); got \(4,\)$",
    ),
}


def _to_device(backend, X, y, kwargs):
    """The same arrays on the backend's device (in their own dtypes)."""
    move = lambda a: backend.asarray(a) if isinstance(a, np.ndarray) else a  # noqa: E731
    return move(X), move(y), {k: tuple(map(move, pair)) for k, pair in kwargs.items()}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_are_refused_before_the_first_step(backend, make_problem, tmp_path, case):
    # As the command line words it, before any step and before out= is written; for host arrays
    # and for arrays already on the device (checked there, without implicit host copies).
    make_bad, message = BAD_DATA[case]
    X, y = make_problem(n=12, n_in=4, n_out=3)
    host = make_bad(X, y)
    model = MLP([4, 5, 3], device=backend, seed=0)
    before = model.state_dict()
    for X_bad, y_bad, kwargs in (host, _to_device(backend, *host)):
        with pytest.raises(DataError, match=message):
            fit(model, X_bad, y_bad, out=tmp_path / "run", epochs=2, batch_size=4, **kwargs)
        assert not (tmp_path / "run").exists()
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_bad_regression_targets_are_refused_before_the_first_step(backend, make_problem):
    X, Y = make_problem(n=12, n_in=4, n_out=2, loss="mse")
    model = MLP([4, 5, 2], loss="mse", device=backend, seed=0)
    trainer = Trainer(model, epochs=2, batch_size=4)
    bad = {
        r"^targets must have shape \(n_samples, 2\); got \(12, 3\)$": (X, np.zeros((12, 3))),
        r"^targets must be finite; found nan in column 1 of row 2 of y \(1 rows affected\)$": (
            X, _set(Y, (2, 1), np.nan)
        ),
    }  # fmt: skip
    for message, (X_bad, Y_bad) in bad.items():
        for given in ((X_bad, Y_bad), (backend.asarray(X_bad), backend.asarray(Y_bad))):
            with pytest.raises(DataError, match=message):
                trainer.fit(*given)
            with pytest.raises(DataError, match="^test_data: " + message[1:]):
                trainer.fit(X, Y, test_data=given)
    assert trainer.epoch == 0 and trainer.optimizer.steps == 0 and trainer.history == []


def test_device_data_are_checked_once_per_fit_at_a_cost_independent_of_its_size(
    cupy_standin, make_problem
):
    backend, reads = get_backend("cuda:1"), []
    for n in (16, 4096):
        X, y = make_problem(n=n, n_in=4, n_out=3)
        model = MLP([4, 3], device=backend)
        X_dev, y_dev = backend.asarray(X, "float32"), backend.asarray(y)
        trainer = Trainer(model)
        cupy_standin.reset()
        trainer.check_data(X_dev, y_dev, validation_data=(X_dev, y_dev))
        reads.append(cupy_standin.snapshot())
    assert reads[0] == reads[1]
    # One value read per check: the labels and the features of each of the two sets.
    assert reads[0]["host_to_device"] == 0 and reads[0]["device_to_host"] == 4


def test_sample_weights_are_checked_on_the_device(backend, make_problem):
    X, y = make_problem(n=16)
    model = MLP([3, 4, 2], device=backend, dtype="float64", seed=0)
    trainer = Trainer(model, TrainConfig(batch_size=8, epochs=1))
    bad = {
        "shape": np.ones(15),
        "NaN": np.r_[np.ones(15), np.nan],
        "negative": np.r_[np.ones(15), -1.0],
    }
    for weights in bad.values():
        for given in (weights, backend.asarray(weights, "float64")):
            with pytest.raises(DataError, match="sample_weight must be 16 finite values >= 0"):
                trainer.fit(X, y, sample_weight=given)
    with pytest.raises(DataError, match="zero everywhere"):
        trainer.fit(X, y, sample_weight=backend.asarray(np.zeros(16), "float64"))
    assert trainer.epoch == 0


def test_equal_sample_weights_train_as_none(backend, make_problem):
    X, y = make_problem(n=16)
    runs = []
    for weights in (None, backend.asarray(np.full(16, 3.0), "float64")):
        model = MLP([3, 4, 2], device=backend, dtype="float64", seed=0)
        Trainer(model, TrainConfig(batch_size=8, epochs=2)).fit(X, y, sample_weight=weights)
        runs.append(model.state_dict())
    for name in runs[0]:
        np.testing.assert_allclose(runs[1][name], runs[0][name], rtol=1e-12, atol=1e-14)


def test_fit_passes_sample_weights_on_with_and_without_a_run_directory(tmp_path, make_problem):
    X, y = make_problem(n=16)
    weights = np.random.default_rng(0).integers(0, 3, 16).astype(float)
    weights[0] = 1.0
    results = []
    for out in (None, tmp_path / "run"):
        model = MLP([3, 4, 2], dtype="float64", seed=0)
        fit(model, X, y, batch_size=16, epochs=3, out=out, sample_weight=weights, verbose=False)
        results.append(model.state_dict())
    repeated = MLP([3, 4, 2], dtype="float64", seed=0)  # integer weights: rows repeated
    rows = np.repeat(np.arange(16), weights.astype(int))
    fit(repeated, X[rows], y[rows], batch_size=len(rows), epochs=3, shuffle=False, verbose=False)
    for name, value in repeated.state_dict().items():
        np.testing.assert_allclose(results[0][name], value, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(results[1][name], results[0][name])
