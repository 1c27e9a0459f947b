"""A run's data fingerprint (xpmlp/data/fingerprint.py): recorded in config.json and every
checkpoint; resuming on changed data is refused in one line, by `xpmlp train --resume` and by
`fit(out=..., resume=True)`, unless the change is accepted; a run made before fingerprints
resumes as before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xpmlp import MLP, DataError, fit
from xpmlp.cli import main
from xpmlp.data.fingerprint import check_unchanged, fingerprint
from xpmlp.train import checkpoint


def _npz(path, *, seed=0, n=200):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    np.savez(path, X=X, y=(X[:, 0] > 0).astype(np.int64))
    return path


def test_the_same_arrays_have_the_same_fingerprint_and_any_change_shows():
    X = np.arange(12.0).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    first = fingerprint({"X": X, "y": y, "X_test": None})
    assert first == fingerprint({"X": X.copy(), "y": y.copy()})
    assert first["arrays"] == {"X": {"shape": [4, 3], "dtype": "<f8"},
                               "y": {"shape": [4], "dtype": "<i8"}}  # fmt: skip
    changed = X.copy()
    changed[2, 1] += 1e-12
    assert fingerprint({"X": changed, "y": y})["sha256"] != first["sha256"]
    # The same bytes in another dtype or shape, or under another name, are other data.
    assert fingerprint({"X": X.view(np.int64), "y": y})["sha256"] != first["sha256"]
    assert fingerprint({"X": X.reshape(3, 4), "y": y})["sha256"] != first["sha256"]
    assert fingerprint({"X_val": X, "y": y})["sha256"] != first["sha256"]
    assert json.loads(json.dumps(first)) == first


def test_a_change_is_named_by_shape_or_by_fingerprint():
    X, y = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    saved = fingerprint({"X": X, "y": y})
    check_unchanged(saved, fingerprint({"X": X, "y": y}), what="the data in d.npz")
    check_unchanged(None, fingerprint({"X": X + 1, "y": y}), what="d")  # an older run
    more = fingerprint({"X": np.zeros((5, 3), np.float32), "y": np.zeros(5, np.int64)})
    with pytest.raises(DataError, match=r"^the data in d.npz changed since the run started "
                       r"\(X was 4x3 float32 and is now 5x3 float32\); resume with the data it "
                       "was trained on, or pass --accept-changed-data"):  # fmt: skip
        check_unchanged(saved, more, what="the data in d.npz")
    other = fingerprint({"X": X + 1, "y": y})
    with pytest.raises(DataError, match=rf"\(fingerprint {saved['sha256'][:12]}, now "):
        check_unchanged(saved, other, what="the data in d.npz")
    check_unchanged(saved, other, what="the data in d.npz", accept=True)


def _train(*args):
    return main(["train", "--device", "cpu", "--hidden", "8", "--batch-size", "32", "--quiet",
                 *map(str, args)])  # fmt: skip


def test_train_resume_refuses_changed_data_unless_accepted(tmp_path, capsys):
    data, run = _npz(tmp_path / "d.npz"), tmp_path / "run"
    assert _train("--dataset", data, "--epochs", "2", "--out", run) == 0
    recorded = json.loads((run / "config.json").read_text())["data_fingerprint"]
    assert checkpoint.load(run)["meta"]["data_fingerprint"] == recorded
    assert recorded["arrays"]["X"] == {"shape": [200, 6], "dtype": "<f4"}
    saved = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    capsys.readouterr()

    _npz(data, seed=1)  # rewritten in place: same shapes, other values
    assert _train("--resume", run, "--epochs", "3") == 2
    err = capsys.readouterr().err
    assert err == (f"xpmlp: error: the data in {data} changed since the run started "
                   f"(fingerprint {recorded['sha256'][:12]}, now "
                   f"{fingerprint(dict(np.load(data)))['sha256'][:12]}); resume with the data it "
                   "was trained on, or pass --accept-changed-data (accept_changed_data=True) "
                   "to continue on the new data\n")  # fmt: skip
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == saved

    assert _train("--resume", run, "--epochs", "3", "--accept-changed-data") == 0
    now = json.loads((run / "config.json").read_text())["data_fingerprint"]
    assert now["sha256"] != recorded["sha256"]
    assert checkpoint.load(run)["meta"]["data_fingerprint"] == now
    # The run now carries the new data's fingerprint: the next resume needs no flag.
    assert _train("--resume", run, "--epochs", "4") == 0


def test_a_run_without_a_fingerprint_resumes_as_before(tmp_path):
    data, run = _npz(tmp_path / "d.npz"), tmp_path / "run"
    assert _train("--dataset", data, "--epochs", "2", "--out", run) == 0
    newest = checkpoint.latest(run / "checkpoints")
    old = checkpoint.load(newest)
    del old["meta"]["data_fingerprint"]  # as written before fingerprints
    groups = ("params", "optimizer", "best", "scaling")
    checkpoint.save(newest, meta=old["meta"], arrays={g: old[g] for g in groups})
    _npz(data, seed=1)
    assert _train("--resume", run, "--epochs", "3") == 0
    assert checkpoint.load(run)["meta"]["data_fingerprint"]["sha256"]  # recorded from now on


def test_fit_resume_refuses_changed_data_unless_accepted(tmp_path, make_problem):
    X, y = make_problem(n=60, n_in=4, n_out=3, seed=1)
    X_val, y_val = make_problem(n=20, n_in=4, n_out=3, seed=2)

    def run(X, y, epochs, **kwargs):
        model = MLP([4, 6, 3], seed=0, dtype="float64")
        return fit(model, X, y, validation_data=(X_val, y_val), epochs=epochs, batch_size=16,
                   out=tmp_path / "run", resume=True, **kwargs)  # fmt: skip

    run(X, y, 2)
    saved = checkpoint.load(tmp_path / "run")["meta"]["data_fingerprint"]
    assert set(saved["arrays"]) == {"X", "y", "X_val", "y_val"}
    assert len(run(X, y, 3)) == 3  # the same data: resumed
    changed = y.copy()
    changed[0] = (changed[0] + 1) % 3
    with pytest.raises(DataError, match=r"^the data passed to fit changed since the run started"):
        run(X, changed, 4)
    assert checkpoint.load(tmp_path / "run")["meta"]["trainer"]["epoch"] == 3
    with pytest.raises(DataError, match=r"X was 60x4 float64 and is now 59x4 float64"):
        run(X[:-1], y[:-1], 4)
    assert len(run(X, changed, 4, accept_changed_data=True)) == 4
    assert checkpoint.load(tmp_path / "run")["meta"]["data_fingerprint"] != saved
