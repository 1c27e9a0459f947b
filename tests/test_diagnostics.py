"""Training health and notes: each note triggered by a run (or a history) crafted for it, none on a
healthy run; a finite divergence stops the run and keeps the last good checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from optional import need

from xpmlp import MLP, DivergedError, Trainer, fit
from xpmlp.cli import main
from xpmlp.train import checkpoint
from xpmlp.train.health import LAYER_FIELDS, notes_for


def _codes(history) -> set[str]:
    return {note["code"] for record in history for note in record.get("notes", ())}


@pytest.fixture
def separable(make_problem):
    X, y = make_problem(n=400, n_in=6, n_out=3, seed=2)
    return X, y


def test_a_healthy_run_has_health_and_no_notes(backend, separable):
    X, y = separable
    model = MLP([6, 32, 16, 3], device=backend, dtype="float64", seed=1)
    history = fit(model, X, y, epochs=4, batch_size=32, lr=3e-3, validation_data=(X[:100], y[:100]))
    assert _codes(history) == set()
    for record in history:
        health = record["health"]
        assert set(health) == {"layers.0", "layers.1", "layers.2", "output"}
        for i in range(3):
            layer = health[f"layers.{i}"]
            assert set(layer) == set(LAYER_FIELDS)
            assert layer["grad_norm"] > 0 and layer["weight_norm"] > 0 and layer["update_ratio"] > 0
            assert layer["saturated_fraction"] is None  # relu: does not apply
            if i < 2:
                assert 0 <= layer["dead_fraction"] < 0.5 and layer["activation_std"] > 0
            else:  # the output layer has no activation
                assert layer["dead_fraction"] is None and layer["activation_std"] is None
        assert 1 / 3 <= health["output"]["confidence"] <= 1
        assert 0 <= health["output"]["entropy"] <= np.log(3)
    confidence = [r["health"]["output"]["confidence"] for r in history]
    assert confidence[-1] > confidence[0]  # it learns to be sure


def test_unscaled_input_is_noted_at_the_start(separable):
    X, y = separable
    history = fit(MLP([6, 8, 3]), X * 255, y, epochs=1, batch_size=32, lr=1e-4)
    notes = history[0]["notes"]
    assert notes[0]["code"] == "unscaled_input"  # first; huge gradients may follow from it
    assert "divide pixels by 255" in notes[0]["message"]
    assert "unscaled_input" not in _codes(fit(MLP([6, 8, 3]), X, y, epochs=1, batch_size=32))


def test_dead_units_are_noted(separable):
    X, y = separable
    model = MLP([6, 16, 3], seed=0)
    state = model.state_dict()
    state["layers.0.bias"][:] = -50.0  # no input reaches zero: every unit is dead from the start
    model.load_state_dict(state)
    history = fit(model, X, y, epochs=1, batch_size=32)
    assert "dead_units" in _codes(history)
    assert history[0]["health"]["layers.0"]["dead_fraction"] == 1.0


def test_saturated_units_are_noted(separable):
    X, y = separable
    history = fit(MLP([6, 16, 3], activation="tanh"), X * 8, y, epochs=1, batch_size=32, lr=1e-4)
    assert "saturated" in _codes(history)


def test_a_run_stuck_at_chance_is_noted():
    X = np.zeros((64, 4))  # nothing to learn from
    y = np.tile([0, 1, 2, 3], 16)
    history = fit(MLP([4, 8, 4]), X, y, epochs=3, batch_size=16)
    assert "stuck_at_chance" in _codes(history)
    assert "stuck_at_chance" not in _codes(history[:2])  # only from epoch 3


def _record(epoch, train_loss, val_loss, val_accuracy, grad_norms=(1.0, 1.0, 1.0)):
    layers = {f"layers.{i}": {**dict.fromkeys(LAYER_FIELDS), "grad_norm": g, "weight_norm": 1.0}
              for i, g in enumerate(grad_norms)}  # fmt: skip
    return {"epoch": epoch, "train_loss": train_loss, "train_accuracy": 0.9,
            "val_loss": val_loss, "val_accuracy": val_accuracy, "health": layers}  # fmt: skip


def test_overconfidence_and_overfitting_are_told_apart():
    # Validation loss rises for two epochs after epoch 2.
    confident = [_record(1, 1.0, 0.5, 0.80), _record(2, 0.8, 0.4, 0.85),
                 _record(3, 0.6, 0.45, 0.86), _record(4, 0.5, 0.5, 0.87)]  # fmt: skip
    notes = notes_for(confident, n_classes=10, input_max=1.0)
    assert [n["code"] for n in notes] == ["overconfident"]
    assert "restore epoch 2" in notes[0]["message"]
    overfit = [_record(1, 1.0, 0.5, 0.80), _record(2, 0.8, 0.4, 0.85),
               _record(3, 0.6, 0.45, 0.84), _record(4, 0.5, 0.5, 0.83)]  # fmt: skip
    assert [n["code"] for n in notes_for(overfit, n_classes=10, input_max=1.0)] == ["overfitting"]
    one_bad_epoch = confident[:3]
    assert notes_for(one_bad_epoch, n_classes=10, input_max=1.0) == []


def test_vanishing_and_exploding_gradients_are_noted():
    vanishing = [_record(1, 1.0, None, None, grad_norms=(1e-7, 1e-3, 1.0))]
    assert [n["code"] for n in notes_for(vanishing, n_classes=10, input_max=1.0)] == [
        "vanishing_gradients"
    ]
    exploding = [_record(1, 1.0, None, None, grad_norms=(1.0, 500.0, 1.0))]
    assert [n["code"] for n in notes_for(exploding, n_classes=10, input_max=1.0)] == [
        "exploding_gradients"
    ]


def _diverging_problem():
    # Linear least squares with SGD at twice the stable step: the loss grows geometrically and
    # stays finite for many epochs.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    return X, X @ rng.normal(size=(4, 2))


def test_a_finite_divergence_stops_the_run_and_rolls_back():
    X, Y = _diverging_problem()
    model = MLP([4, 2], loss="mse", dtype="float64")
    trainer = Trainer(model, optimizer="sgd", lr=2.0, batch_size=200, epochs=30)
    seen = {}
    with pytest.raises(DivergedError, match=r"the loss diverged in epoch (\d+): .*starting 3\.887"):
        trainer.fit(X, Y, callbacks=[lambda t, r: seen.update({r["epoch"]: t.model.state_dict()})])
    last_good = max(seen)
    assert trainer.epoch == last_good and len(trainer.history) == last_good
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, seen[last_good][name])


def test_a_finite_divergence_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    X, Y = _diverging_problem()
    np.savez(tmp_path / "d.npz", X=X, y=(Y[:, 0] > 0).astype(int))
    argv = ["train", "--device", "cpu", "--dataset", str(tmp_path / "d.npz"), "--hidden", "64",
            "--optimizer", "sgd", "--lr", "3", "--batch-size", "8", "--scaling", "none",
            "--epochs", "20", "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("xpmlp: error: the loss diverged in epoch") or "non-finite" in err[0]
    saved = checkpoint.load(tmp_path / "run")
    epoch = saved["meta"]["trainer"]["epoch"]
    assert all(np.isfinite(v).all() for v in saved["params"].values())
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(records) == epoch  # nothing recorded for the failed epoch


# ---------------------------------------------------------------------- the run's story


def test_fit_tells_its_progress_when_asked(separable, capsys):
    X, y = separable
    model = MLP([6, 16, 3], seed=0)
    state = model.state_dict()
    state["layers.0.bias"][:] = -50.0
    model.load_state_dict(state)
    fit(model, X, y, epochs=2, batch_size=64, verbose=True)
    err = capsys.readouterr().err
    assert [line.split()[1] for line in err.splitlines() if line.startswith("epoch ")] == [
        "1/2",
        "2/2",
    ]
    assert err.count("note [dead_units]") == 1  # told once, though both epochs carry it
    fit(MLP([6, 4, 3]), X, y, epochs=1, verbose=False)
    assert capsys.readouterr().err == ""


def test_plot_overlays_runs_and_curves_mark_the_best_epoch(tmp_path, separable, capsys):
    need("matplotlib")
    X, y = separable
    for name, lr in (("a", 1e-3), ("b", 1e-2)):
        fit(MLP([6, 8, 3]), X, y, epochs=3, lr=lr, validation_data=(X[:50], y[:50]),
            out=tmp_path / name)  # fmt: skip
        assert (tmp_path / name / "curves.png").read_bytes()[:4] == b"\x89PNG"
    out = tmp_path / "compare.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "val_loss",
                 "--output", str(out)]) == 0  # fmt: skip
    assert out.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "a"), "--metric", "nonsense"]) == 2
    assert "no values of 'nonsense'" in capsys.readouterr().err


def test_early_stopping_says_when_it_fired_and_done_reports_the_kept_epoch(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    y = (X @ rng.normal(size=(5, 3))).argmax(axis=1)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    np.savez(tmp_path / "v.npz", X=X[:60], y=(y[:60] + 1) % 3)  # a test set it cannot learn
    assert main(["train", "--device", "cpu", "--dataset", str(tmp_path / "d.npz"), "--hidden", "16",
                 "--val-fraction", "0.3", "--early-stopping", "2", "--lr", "0.05",
                 "--epochs", "40", "--out", str(tmp_path / "r"), "--quiet"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["val_loss"])
    assert records[-1]["early_stopped"] and best["epoch"] < records[-1]["epoch"]
    assert (
        f"early stopping: no better validation loss for 2 epochs after epoch {best['epoch']}"
        in captured.err
    )
    assert captured.out.startswith(f"done: epoch {best['epoch']} ")


def test_a_run_that_overfits_is_told_so():
    # A wide network on 600 noisy rows: validation loss turns up within a few epochs while the
    # training loss keeps falling and validation accuracy drops.
    rng = np.random.default_rng(0)
    X, w = rng.normal(size=(600, 10)), rng.normal(size=(10, 3))
    y = (X @ w + 1.5 * rng.normal(size=(600, 3))).argmax(1)
    Xv = rng.normal(size=(300, 10))
    yv = (Xv @ w + 1.5 * rng.normal(size=(300, 3))).argmax(1)
    history = fit(MLP([10, 128, 128, 3], seed=0), X, y, epochs=6, batch_size=32, lr=3e-3,
                  validation_data=(Xv, yv))  # fmt: skip
    assert "overfitting" in _codes(history)
    first = next(r for r in history if r.get("notes"))
    assert first["epoch"] >= 3  # it takes a rise over two epochs
