"""Checkpoints: atomic writes, corruption, selection of the newest, portability across backends."""

from __future__ import annotations

import numpy as np
import pytest

import xpmlp
from xpmlp import checkpoint
from xpmlp.errors import CheckpointError


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
        pytest.importorskip("torch")
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
