"""Checkpoints: atomic writes, corruption, selection of the newest, portability across backends."""

from __future__ import annotations

import numpy as np
import pytest
from optional import need

import xpmlp
from xpmlp.errors import CheckpointError
from xpmlp.train import checkpoint


def _arrays(value=1.0):
    return {"params": {"layers.0.weight": np.full((3, 2), value, np.float32)}, "best": None}


def test_round_trip_keeps_meta_and_arrays(tmp_path):
    path = checkpoint.save(
        tmp_path / checkpoint.checkpoint_name(3), meta={"epoch": 3}, arrays=_arrays()
    )
    loaded = checkpoint.load(path)
    assert loaded["meta"]["epoch"] == 3 and loaded["meta"]["format"] == checkpoint.FORMAT_VERSION
    np.testing.assert_array_equal(loaded["params"]["layers.0.weight"], np.ones((3, 2), np.float32))
    assert loaded["best"] is None
    with np.load(path, allow_pickle=False) as archive:  # no pickled objects inside
        assert "meta" in archive.files


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / checkpoint.checkpoint_name(1)
    checkpoint.save(path, meta={"epoch": 1}, arrays=_arrays(1.0))
    before = path.read_bytes()

    def crash(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, meta={"epoch": 2}, arrays=_arrays(2.0))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-meta"])
def test_damaged_checkpoints_raise_checkpoint_error(tmp_path, damage):
    path = checkpoint.save(tmp_path / "c.npz", meta={}, arrays=_arrays())
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:
        np.savez(path, x=np.zeros(3))
    with pytest.raises(CheckpointError, match="c.npz"):
        checkpoint.load(path)


def test_latest_and_prune(tmp_path):
    for epoch in (1, 2, 10, 9):
        checkpoint.save(tmp_path / checkpoint.checkpoint_name(epoch), meta={}, arrays=_arrays())
    (tmp_path / ".tmp-stale.npz").write_bytes(b"half")
    assert checkpoint.latest(tmp_path).name == "checkpoint-epoch-0010.npz"
    checkpoint.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-epoch-0009.npz",
        "checkpoint-epoch-0010.npz",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.resolve(tmp_path / "empty")


@pytest.mark.parametrize("source", ["array-api-strict:device1", "torch"])
def test_train_on_one_backend_evaluate_on_numpy(tmp_path, source):
    if source == "torch":
        need("torch")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 5)), rng.integers(0, 3, 64)
    model = xpmlp.MLP([5, 8, 3], device=source, seed=1)
    trainer = xpmlp.Trainer(model, batch_size=16, epochs=2)
    trainer.fit(X, y)
    state = trainer.state_dict()
    path = checkpoint.save(tmp_path / "c.npz", meta={"model": model.config()},
                           arrays={"params": state["params"], "optimizer": state["optimizer"]})  # fmt: skip
    loaded = checkpoint.load(path)
    on_cpu = xpmlp.MLP.from_config(loaded["meta"]["model"], device="cpu")
    on_cpu.load_state_dict(loaded["params"])
    np.testing.assert_allclose(
        xpmlp.to_numpy(on_cpu.predict_proba(X)),
        xpmlp.to_numpy(model.predict_proba(X)),
        rtol=1e-5,
        atol=1e-6,
    )
    resumed = xpmlp.Trainer(xpmlp.MLP([5, 8, 3], device="cpu", seed=1), batch_size=16, epochs=2)
    resumed.load_state_dict({"meta": state["meta"], "params": loaded["params"],
                             "optimizer": loaded["optimizer"], "best": None})  # fmt: skip
    assert resumed.optimizer.steps == trainer.optimizer.steps == 8


def _format_1_checkpoint(folder):
    """A checkpoint as xpmlp wrote it before format 2: the L2 penalty named weight_decay, the
    run's settings under "run", no training config in the trainer state."""
    model = xpmlp.MLP([4, 6, 3], seed=2)
    meta = {
        "format": 1,
        "model": {"layer_sizes": [4, 6, 3], "activation": "relu", "loss": "cross_entropy",
                  "dropout": 0.0, "weight_decay": 0.001, "init": "auto", "dtype": "float32",
                  "seed": 2},
        "run": {"dataset": "x.npz", "epochs": 2},
        "trainer": {"epoch": 2, "settings": {}, "history": [], "optimizer_steps": 4,
                    "best": {"value": 1.0, "epoch": 0, "wait": 0}},
    }  # fmt: skip
    scaling = {"offset": np.zeros(4), "factor": np.full(4, 2.0)}
    folder.mkdir(parents=True)
    checkpoint.save(folder / checkpoint.checkpoint_name(2), meta=meta,
                    arrays={"params": model.state_dict(), "scaling": scaling})  # fmt: skip
    return model


def test_format_1_checkpoints_still_evaluate_but_do_not_resume(tmp_path):
    from xpmlp.train.runs import load_model, trainer_state

    original = _format_1_checkpoint(tmp_path / "old" / "checkpoints")
    model, scaler, ckpt = load_model(tmp_path / "old")
    assert model.l2 == 0.001 and scaler.factor.tolist() == [2.0] * 4
    X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        xpmlp.to_numpy(model.predict(X)), xpmlp.to_numpy(original.predict(X))
    )
    with pytest.raises(CheckpointError, match="format 1.*not resumed"):
        trainer_state(ckpt)


def test_unknown_formats_are_one_clear_error(tmp_path):
    path = checkpoint.save(tmp_path / "c.npz", meta={"format": 99}, arrays={})
    with pytest.raises(CheckpointError, match="format 99; this xpmlp reads formats 1, 2"):
        checkpoint.load(path)


def test_a_malformed_trainer_state_changes_nothing(tmp_path):
    model = xpmlp.MLP([3, 4, 2], seed=1)
    trainer = xpmlp.Trainer(model, epochs=1)
    trainer.fit(np.ones((8, 3)), np.zeros(8, int))
    state = trainer.state_dict()
    before = model.state_dict()
    fresh = xpmlp.Trainer(xpmlp.MLP([3, 4, 2], seed=5), epochs=1)
    kept = fresh.model.state_dict()
    wrong = dict(state["optimizer"])
    wrong["layers.0.weight.m"] = np.zeros((4, 4), np.float32)
    with pytest.raises(
        CheckpointError,
        match=r"layers.0.weight.m has shape \(4, 4\); layers.0.weight has shape \(3, 4\)",
    ):
        fresh.load_state_dict({**state, "optimizer": wrong})
    missing = {k: v for k, v in state["optimizer"].items() if not k.startswith("layers.1.bias")}
    with pytest.raises(CheckpointError, match="lacks m/v of layers.1.bias"):
        fresh.load_state_dict({**state, "optimizer": missing})
    with pytest.raises(CheckpointError, match="trainer state is malformed"):
        fresh.load_state_dict({**state, "meta": {**state["meta"], "epoch": "two"}})
    with pytest.raises(CheckpointError, match="trainer state is malformed"):
        fresh.load_state_dict(
            {**state, "meta": {k: v for k, v in state["meta"].items() if k != "best"}}
        )
    for name, value in fresh.model.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(value, kept[name])
    assert fresh.epoch == 0 and fresh.optimizer.steps == 0
    fresh.load_state_dict(state)
    for name, value in fresh.model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
