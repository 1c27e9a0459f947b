"""Run directories from the library: fit(out=...) writes what `xpmlp train` writes, resumes bit
for bit, refuses to clobber a run, locks, and survives an interrupt during evaluation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import xpmlp
from xpmlp import MLP, CheckpointError, ConfigError, RunDir, fit, load_model
from xpmlp.train import fitting
from xpmlp.train import trainer as training
from xpmlp.train.checkpoint import checkpoint_name
from xpmlp.train.runs import fcntl

# A step schedule: unlike cosine, it does not depend on the run's length, so a run of 2 epochs
# extended to 4 is the same as one of 4.
SETTINGS = {"optimizer": "adamw", "weight_decay": 0.01, "lr": 0.01, "batch_size": 16,
            "schedule": "step", "step_epochs": 1, "gamma": 0.7, "seed": 3}  # fmt: skip


def _model():
    return MLP([5, 12, 3], dropout=0.2, seed=3, dtype="float64")


@pytest.fixture
def problem(make_problem):
    X, y = make_problem(n=120, n_in=5, n_out=3, seed=2)
    X_val, y_val = make_problem(n=40, n_in=5, n_out=3, seed=9)
    return X, y, (X_val, y_val)


def _assert_same_params(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_fit_out_leaves_a_run_directory(tmp_path, problem):
    X, y, val = problem
    history = fit(_model(), X, y, validation_data=val, epochs=3, out=tmp_path / "run", **SETTINGS)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records == json.loads(json.dumps(history)) and [r["epoch"] for r in records] == [1, 2, 3]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["optimizer"] == "adamw" and config["model"]["layer_sizes"] == [5, 12, 3]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [checkpoint_name(e) for e in (1, 2, 3)]  # epoch 0 written, then pruned
    model, scaler, ckpt = load_model(run)
    assert scaler is None and ckpt["meta"]["trainer"]["epoch"] == 3


def test_fit_resumes_bit_for_bit(tmp_path, problem):
    X, y, val = problem
    straight = _model()
    fit(straight, X, y, validation_data=val, epochs=4, **SETTINGS)
    fit(_model(), X, y, validation_data=val, epochs=2, out=tmp_path / "r", **SETTINGS)
    resumed = _model()  # a fresh process would build the model again, then resume
    history = fit(resumed, X, y, validation_data=val, epochs=4, out=tmp_path / "r", resume=True,
                  **SETTINGS)  # fmt: skip
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    _assert_same_params(resumed.state_dict(), straight.state_dict())
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_resume_is_safe_to_repeat(tmp_path, problem):
    X, y, _ = problem
    first = _model()
    fit(first, X, y, epochs=2, out=tmp_path / "r", resume=True, **SETTINGS)  # nothing yet: fresh
    again = _model()
    history = fit(again, X, y, epochs=2, out=tmp_path / "r", resume=True, **SETTINGS)
    assert len(history) == 2  # finished: nothing more was trained
    _assert_same_params(again.state_dict(), first.state_dict())


def test_an_early_stopped_run_stays_stopped(tmp_path, problem):
    X, y, _ = problem
    # Validation labels the model cannot learn: the validation loss stops improving at once.
    bad_val = (X[:40], (y[:40] + 1) % 3)
    settings = {**SETTINGS, "lr": 0.05, "early_stopping": 1}
    history = fit(
        _model(), X, y, validation_data=bad_val, epochs=30, out=tmp_path / "r", **settings
    )
    assert len(history) < 30 and history[-1]["early_stopped"]
    again = fit(_model(), X, y, validation_data=bad_val, epochs=30, out=tmp_path / "r",
                resume=True, **settings)  # fmt: skip
    assert len(again) == len(history)


def test_a_run_is_never_overwritten_by_accident(tmp_path, problem):
    X, y, _ = problem
    fit(_model(), X, y, epochs=1, out=tmp_path / "r", **SETTINGS)
    before = (tmp_path / "r" / "checkpoints" / checkpoint_name(1)).read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(_model(), X, y, epochs=2, out=tmp_path / "r", **SETTINGS)
    assert (tmp_path / "r" / "checkpoints" / checkpoint_name(1)).read_bytes() == before
    fit(_model(), X, y, epochs=2, out=tmp_path / "r", overwrite=True, **{**SETTINGS, "seed": 4})
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["seed"] == 4
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match=r"holds files that are not an xpmlp run \(thesis.tex\)"):
        fit(_model(), X, y, epochs=1, out=tmp_path / "mine", overwrite=True, **SETTINGS)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_resume_refuses_other_settings_or_another_model(tmp_path, problem):
    X, y, _ = problem
    fit(_model(), X, y, epochs=1, out=tmp_path / "r", **SETTINGS)
    with pytest.raises(ConfigError, match=r"lr is 0.1 here but 0.01 in the run"):
        fit(_model(), X, y, epochs=2, out=tmp_path / "r", resume=True, **{**SETTINGS, "lr": 0.1})
    other = MLP([5, 7, 3], dropout=0.2, seed=3, dtype="float64")
    with pytest.raises(ConfigError, match="layer_sizes"):
        fit(other, X, y, epochs=2, out=tmp_path / "r", resume=True, **SETTINGS)
    # What may change on resume: the length of the run and its checkpointing.
    fit(_model(), X, y, epochs=2, keep_checkpoints=1, out=tmp_path / "r", resume=True, **SETTINGS)


def test_one_writer_at_a_time(tmp_path):
    with RunDir(tmp_path / "r").create():
        assert (tmp_path / "r" / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(ConfigError, match=r"in use by another xpmlp process \(pid \d+\)"):
            RunDir(tmp_path / "r").open()
    assert not (tmp_path / "r" / ".lock").exists()  # released and removed on exit
    with RunDir(tmp_path / "r").open():
        pass


def _while_opening_the_lock(monkeypatch, meanwhile):
    """Run ``meanwhile()`` once, when the next RunDir has opened its lock file but not locked it."""
    flock = fcntl.flock
    pending = [meanwhile]

    def late_flock(handle, operation):
        if pending:
            pending.pop()()
        return flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", late_flock)


def _holds(run: RunDir) -> bool:
    """Whether ``run`` holds the lock of the file its .lock path names now."""
    path = run.path / ".lock"
    if not path.exists():
        return False
    with open(path) as other:  # a second open file: flock refuses it while ``run`` holds it
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(other, fcntl.LOCK_UN)
    return False


@pytest.mark.skipif(fcntl is None, reason="no flock")
def test_a_lock_file_removed_under_a_waiter_is_opened_again(tmp_path, monkeypatch):
    first = RunDir(tmp_path / "r").create()
    waiter = RunDir(tmp_path / "r")
    # The first writer finishes (unlocking and removing .lock) after the waiter opened the file:
    # the waiter's flock succeeds on a file no longer in the directory, and must not count.
    _while_opening_the_lock(monkeypatch, first.close)
    with waiter.open():
        assert _holds(waiter) and (tmp_path / "r" / ".lock").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / "r" / ".lock").exists()


@pytest.mark.skipif(fcntl is None, reason="no flock")
def test_a_lock_file_removed_and_recreated_under_a_waiter_is_not_shared(tmp_path, monkeypatch):
    first = RunDir(tmp_path / "r").create()
    third = RunDir(tmp_path / "r")

    def first_ends_and_a_third_starts():
        first.close()
        third.open()

    _while_opening_the_lock(monkeypatch, first_ends_and_a_third_starts)
    with pytest.raises(ConfigError, match="in use by another xpmlp process"):
        RunDir(tmp_path / "r").open()  # it locked the removed file, then met the third's
    assert _holds(third)
    third.close()
    assert not (tmp_path / "r" / ".lock").exists()


def test_the_lock_file_goes_when_training_fails_or_is_interrupted(tmp_path, problem):
    X, y, _ = problem

    def failing(trainer, record):
        raise RuntimeError("a callback's bug")

    with pytest.raises(RuntimeError, match="a callback's bug"):
        fit(_model(), X, y, epochs=2, out=tmp_path / "r", callbacks=[failing], **SETTINGS)
    assert not (tmp_path / "r" / ".lock").exists()

    def ctrl_c(trainer, record):
        raise training.Interrupted()

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), X, y, epochs=3, out=tmp_path / "r", resume=True, callbacks=[ctrl_c],
            **SETTINGS)  # fmt: skip
    assert not (tmp_path / "r" / ".lock").exists()
    for broken in (tmp_path / "r" / "checkpoints").iterdir():  # none left to fall back to
        broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=checkpoint_name(2)):  # the newest one's error
        fit(_model(), X, y, epochs=3, out=tmp_path / "r", resume=True, **SETTINGS)
    assert not (tmp_path / "r" / ".lock").exists()


def test_a_reader_writes_nothing(tmp_path, problem):
    X, y, _ = problem
    reader = RunDir(tmp_path / "r", writer=False).create()
    trainer = xpmlp.Trainer(_model(), epochs=1, **{k: v for k, v in SETTINGS.items()})
    fitting.train_in_run(trainer, reader, trainer.check_data(X, y))
    assert not (tmp_path / "r").exists() and trainer.epoch == 1


def test_interrupt_during_evaluation_keeps_the_last_completed_epoch(tmp_path, problem, monkeypatch):
    X, y, val = problem
    straight = _model()
    fit(straight, X, y, validation_data=val, epochs=3, **SETTINGS)
    calls = {"n": 0}
    evaluate = training.evaluate

    def interrupted_second_validation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2's validation: epoch 2's training is done, not recorded
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", interrupted_second_validation)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), X, y, validation_data=val, epochs=3, out=tmp_path / "r", **SETTINGS)
    monkeypatch.setattr(training, "evaluate", evaluate)
    _, _, ckpt = load_model(tmp_path / "r")
    assert ckpt["path"].name == checkpoint_name(1) and ckpt["meta"]["trainer"]["epoch"] == 1
    assert (tmp_path / "r" / "curves.png").read_bytes()[:4] == b"\x89PNG"  # the epochs so far
    assert not (tmp_path / "r" / ".lock").exists()
    resumed = _model()
    fit(resumed, X, y, validation_data=val, epochs=3, out=tmp_path / "r", resume=True, **SETTINGS)
    _assert_same_params(resumed.state_dict(), straight.state_dict())


def test_load_model_names_a_malformed_checkpoint(tmp_path):
    from xpmlp.train import checkpoint

    params = {"layers.0.weight": np.zeros((2, 2)), "layers.0.bias": np.zeros(2)}
    checkpoint.save(tmp_path / "c.npz", meta={"model": {"layer_sizes": [2, 2], "colour": 1}},
                    arrays={"params": params})  # fmt: skip
    with pytest.raises(CheckpointError, match="malformed model config"):
        load_model(tmp_path / "c.npz")


def test_resume_names_a_model_setting_only_the_run_has(tmp_path, problem):
    from xpmlp.train import checkpoint

    X, y, _ = problem
    fit(_model(), X, y, epochs=1, out=tmp_path / "r", **SETTINGS)
    path = checkpoint.latest(tmp_path / "r")
    ckpt = checkpoint.load(path)
    meta = {k: v for k, v in ckpt["meta"].items() if k != "format"}
    meta["model"]["colour"] = "blue"  # a key this xpmlp's model does not have
    checkpoint.save(
        path, meta=meta, arrays={g: ckpt[g] for g in ("params", "optimizer", "best", "scaling")}
    )
    with pytest.raises(ConfigError, match="colour is None here but 'blue' in the run"):
        fit(_model(), X, y, epochs=2, out=tmp_path / "r", resume=True, **SETTINGS)
