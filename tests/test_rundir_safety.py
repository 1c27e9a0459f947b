"""Nothing outside a run is touched: links in a run directory are refused, never followed; a
directory that is not a run is never modified; outputs never replace a file of a run; resume
passes over a newest checkpoint that does not load, and says so."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from xpmlp import MLP, ConfigError, fit
from xpmlp.cli import main
from xpmlp.train import checkpoint

SETTINGS = {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "schedule": "step",
            "step_epochs": 1, "gamma": 0.7, "seed": 3}  # fmt: skip


def _model():
    return MLP([5, 12, 3], seed=3, dtype="float64")


@pytest.fixture
def problem(make_problem):
    X, y = make_problem(n=120, n_in=5, n_out=3, seed=2)
    return X, y


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = (X @ rng.normal(size=(6, 3))).argmax(axis=1)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    return tmp_path / "data.npz"


def _train(data, out, *extra) -> int:
    return main(["train", "--device", "cpu", "--dataset", str(data), "--hidden", "8",
                 "--epochs", "1", "--out", str(out), "--quiet", *extra])  # fmt: skip


def _refused(capsys, argv, *, expect: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("xpmlp: error:"), err
    assert expect in err[0], err[0]
    return err[0]


def _snapshot(folder) -> dict:
    """Every entry under ``folder`` (links as their target), and the bytes of each file."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                found[path] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                found[path] = Path(path).read_bytes()
            else:
                found[path] = "dir"
    return found


# ---------------------------------------------------------------------- links are never followed


def test_a_lock_that_is_a_link_is_refused_and_its_target_never_written(tmp_path, problem, data,
                                                                       capsys):  # fmt: skip
    X, y = problem
    victim = tmp_path / "authorized_keys"
    victim.write_text("ssh-ed25519 AAAA precious\n")
    fit(_model(), X, y, epochs=1, out=tmp_path / "r", **SETTINGS)
    (tmp_path / "r" / ".lock").symlink_to(victim)
    with pytest.raises(ConfigError, match=r"r/\.lock is a symbolic link"):
        fit(_model(), X, y, epochs=2, out=tmp_path / "r", resume=True, **SETTINGS)
    with pytest.raises(ConfigError, match="symbolic link"):
        fit(_model(), X, y, epochs=2, out=tmp_path / "r", overwrite=True, **SETTINGS)
    assert _train(data, tmp_path / "cli") == 0
    (tmp_path / "cli" / ".lock").symlink_to(victim)
    _refused(capsys, ["train", "--resume", str(tmp_path / "cli"), "--epochs", "2"],
             expect=".lock is a symbolic link")  # fmt: skip
    _refused(capsys, ["train", "--device", "cpu", "--dataset", str(data), "--out",
                      str(tmp_path / "cli"), "--overwrite"], expect=".lock is a symbolic link")  # fmt: skip
    assert victim.read_text() == "ssh-ed25519 AAAA precious\n"
    assert checkpoint.load(tmp_path / "r")["meta"]["trainer"]["epoch"] == 1  # nothing trained


def test_a_checkpoints_folder_that_is_a_link_is_refused_and_nothing_outside_deleted(tmp_path,
                                                                                   problem):  # fmt: skip
    X, y = problem
    fit(_model(), X, y, epochs=1, out=tmp_path / "r", **SETTINGS)
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "r" / "checkpoints").rename(elsewhere)
    (elsewhere / ".tmp-the-users").write_text("mine")
    (elsewhere / checkpoint.checkpoint_name(7)).write_text("also mine")
    (tmp_path / "r" / "checkpoints").symlink_to(elsewhere)
    before = _snapshot(elsewhere)
    for flags in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(ConfigError, match=r"checkpoints is a symbolic link"):
            fit(_model(), X, y, epochs=3, keep_checkpoints=1, out=tmp_path / "r", **flags,
                **SETTINGS)  # fmt: skip
    assert _snapshot(elsewhere) == before


def test_a_run_writes_in_the_directory_it_opened_even_if_its_folders_are_swapped_for_links(
    tmp_path, problem
):
    X, y = problem
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".tmp-the-users").write_text("mine")
    before = _snapshot(elsewhere)

    def swap_after_epoch_1(trainer, record):  # someone replaces checkpoints/ mid-run
        if record["epoch"] == 1:
            (tmp_path / "r" / "checkpoints").rename(tmp_path / "r" / "moved")
            (tmp_path / "r" / "checkpoints").symlink_to(elsewhere)

    fit(_model(), X, y, epochs=3, keep_checkpoints=1, out=tmp_path / "r",
        callbacks=[swap_after_epoch_1], **SETTINGS)  # fmt: skip
    assert _snapshot(elsewhere) == before
    assert sorted(os.listdir(tmp_path / "r" / "moved")) == [checkpoint.checkpoint_name(3)]


def test_pruning_removes_links_and_never_what_they_point_to(tmp_path):
    folder, outside = tmp_path / "checkpoints", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (outside / "precious").write_text("mine")
    (folder / ".tmp-link").symlink_to(outside / "precious")
    (folder / checkpoint.checkpoint_name(9)).symlink_to(outside / "precious")
    checkpoint.save(folder / checkpoint.checkpoint_name(1), meta={}, arrays={})
    checkpoint.prune(folder, keep=0)
    assert sorted(os.listdir(folder)) == [checkpoint.checkpoint_name(9)]  # a link is not the run's
    assert (outside / "precious").read_text() == "mine"
    assert checkpoint.latest(folder) is None


def test_a_run_entry_that_is_not_a_regular_file_is_refused(tmp_path, problem):
    X, y = problem
    fit(_model(), X, y, epochs=1, out=tmp_path / "r", **SETTINGS)
    os.unlink(tmp_path / "r" / "metrics.jsonl")
    os.mkfifo(tmp_path / "r" / "metrics.jsonl")  # appending to it would hang
    with pytest.raises(ConfigError, match="metrics.jsonl is not a regular file"):
        fit(_model(), X, y, epochs=2, out=tmp_path / "r", resume=True, **SETTINGS)


# ---------------------------------------------------------------------- only a run is modified


@pytest.fixture
def project(tmp_path):
    """A directory of someone's: a config.json and a checkpoints/model.pt of theirs."""
    folder = tmp_path / "project"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text('{"lr": 0.1, "model": "resnet"}\n')
    (folder / "checkpoints" / "model.pt").write_bytes(b"\x80\x02weights")
    return folder


def test_resume_and_overwrite_refuse_what_is_not_a_run(project, problem, data, capsys):
    X, y = problem
    before = _snapshot(project)
    named = "(checkpoints/model.pt, config.json)"
    for flags in ({"resume": True}, {"overwrite": True}, {}):
        with pytest.raises(ConfigError, match=re.escape(f"not an xpmlp run {named}")):
            fit(_model(), X, y, epochs=1, out=project, **flags, **SETTINGS)
    line = _refused(capsys, ["train", "--resume", str(project)], expect="not an xpmlp run")
    assert line == (f"xpmlp: error: {project} holds files that are not an xpmlp run {named}; "
                    "choose another --out (out=)")  # fmt: skip
    _refused(capsys, ["train", "--device", "cpu", "--dataset", str(data), "--out", str(project),
                      "--overwrite"], expect=named)  # fmt: skip
    _refused(capsys, ["train", "--device", "cpu", "--dataset", str(data), "--out", str(project)],
             expect=named)  # fmt: skip
    assert _snapshot(project) == before  # not even a marker or a lock file


def test_overwrite_refuses_a_folder_holding_only_someone_elses_checkpoints(tmp_path, data, capsys):
    (tmp_path / "x" / "checkpoints").mkdir(parents=True)
    (tmp_path / "x" / "checkpoints" / "epoch-12.ckpt").write_bytes(b"theirs")
    before = _snapshot(tmp_path / "x")
    _refused(capsys, ["train", "--device", "cpu", "--dataset", str(data), "--out",
                      str(tmp_path / "x"), "--overwrite"], expect="checkpoints/epoch-12.ckpt")  # fmt: skip
    assert _snapshot(tmp_path / "x") == before


def test_an_empty_or_missing_directory_makes_a_new_run_marked_first(tmp_path, problem):
    X, y = problem
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "missing" / "run"):
        fit(_model(), X, y, epochs=1, out=out, resume=True, **SETTINGS)
        marker = json.loads((out / ".xpmlp-run").read_text())
        assert marker["xpmlp_run"] == 1
    # A writer killed while writing the marker leaves only its temporary file: still empty.
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / ".tmp-0a1b2c.json").write_text('{"xpml')
    fit(_model(), X, y, epochs=1, out=tmp_path / "killed", **SETTINGS)


def test_a_run_made_before_markers_still_resumes_and_is_marked(tmp_path, problem):
    X, y = problem
    straight = _model()
    fit(straight, X, y, epochs=3, **SETTINGS)
    fit(_model(), X, y, epochs=2, out=tmp_path / "old", **SETTINGS)
    os.unlink(tmp_path / "old" / ".xpmlp-run")  # as an older xpmlp left it
    resumed = _model()
    fit(resumed, X, y, epochs=3, out=tmp_path / "old", resume=True, **SETTINGS)
    assert (tmp_path / "old" / ".xpmlp-run").is_file()
    for name, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name], value, err_msg=name)
    # Its config.json gone too: a checkpoint that loads is enough.
    os.unlink(tmp_path / "old" / ".xpmlp-run")
    os.unlink(tmp_path / "old" / "config.json")
    fit(_model(), X, y, epochs=4, out=tmp_path / "old", resume=True, **SETTINGS)
    assert checkpoint.load(tmp_path / "old")["meta"]["trainer"]["epoch"] == 4


# ---------------------------------------------------------------------- outputs


def test_outputs_never_replace_a_file_of_a_run_or_their_input(tmp_path, data, capsys):
    assert _train(data, tmp_path / "run") == 0
    newest = checkpoint.latest(tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.jsonl"
    before = {path: path.read_bytes() for path in (newest, metrics, data)}
    predict = ["predict", str(tmp_path / "run"), str(data), "--device", "cpu", "--output"]
    for target in (newest, metrics, tmp_path / "run" / "new.npz"):
        _refused(capsys, [*predict, str(target)], expect="inside the run directory")
    _refused(capsys, [*predict, str(data)], expect="is a file this command reads")
    plot = ["plot", str(tmp_path / "run"), "--metric", "train_loss", "--output"]
    for target in (metrics, tmp_path / "run" / "curves.png"):
        _refused(capsys, [*plot, str(target)], expect="inside the run directory")
    assert {path: path.read_bytes() for path in before} == before
    assert main([*predict, str(tmp_path / "predictions.npz")]) == 0


# ---------------------------------------------------------------------- resume falls back


def test_resume_passes_over_a_truncated_newest_checkpoint_and_says_so(tmp_path, problem, capsys):
    X, y = problem
    straight = _model()
    fit(straight, X, y, epochs=4, **SETTINGS)
    fit(_model(), X, y, epochs=3, out=tmp_path / "r", **SETTINGS)
    newest = tmp_path / "r" / "checkpoints" / checkpoint.checkpoint_name(3)
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    resumed = _model()
    fit(resumed, X, y, epochs=4, out=tmp_path / "r", resume=True, **SETTINGS)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xpmlp: ") and str(newest) in err[0], err
    assert err[0].endswith(f"; resuming from {checkpoint.checkpoint_name(2)}")
    for name, value in straight.state_dict().items():  # epochs 3 and 4 trained again, exactly
        np.testing.assert_array_equal(resumed.state_dict()[name], value, err_msg=name)
    assert checkpoint.load(newest)["meta"]["trainer"]["epoch"] == 3  # written again, whole


def test_cli_resume_passes_over_a_replaced_newest_checkpoint(tmp_path, data, capsys):
    assert _train(data, tmp_path / "run", "--epochs", "2") == 0
    newest = checkpoint.latest(tmp_path / "run")
    np.savez(newest, labels=np.zeros(3))  # e.g. predictions written over it by an older xpmlp
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "3", "--quiet",
                 "--device", "cpu"]) == 0  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xpmlp: ") and str(newest) in err[0], err
    assert err[0].endswith(f"; resuming from {checkpoint.checkpoint_name(1)}")
    assert checkpoint.load(tmp_path / "run")["meta"]["trainer"]["epoch"] == 3


def test_a_run_made_after_the_check_is_never_replaced(tmp_path, problem, monkeypatch):
    # Another process may make a run between check_new and the lock: create() looks again.
    from xpmlp.train.runs import RunDir

    X, y = problem
    fit(_model(), X, y, epochs=1, out=tmp_path / "r", **SETTINGS)
    before = {p.name: p.read_bytes() for p in (tmp_path / "r" / "checkpoints").iterdir()}
    monkeypatch.setattr(RunDir, "check_new", lambda self, overwrite=False: None)
    with pytest.raises(ConfigError, match="already holds a run"):
        RunDir(tmp_path / "r").create(overwrite=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r" / "checkpoints").iterdir()} == before
    assert not (tmp_path / "r" / ".lock").exists()
