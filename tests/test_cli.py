"""The command line: outputs of a run, exact resume after SIGKILL and Ctrl-C, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tolerances import fused_tolerance, twins_run

from xpmlp import get_backend
from xpmlp.cli import build_parser, main
from xpmlp.cli import train as cli_train
from xpmlp.data import datasets
from xpmlp.train import checkpoint, reporting
from xpmlp.train.runs import RunDir

REQUIRED_METRICS = {
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "test_loss", "test_accuracy", "lr", "seconds", "samples_per_second",
}  # fmt: skip


def _toy(path: Path, n=600, features=12, classes=3, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features)).astype(np.float32)
    y = (X @ rng.normal(size=(features, classes))).argmax(axis=1)
    np.savez(path, X=X, y=y)
    return path


@pytest.fixture
def toy(tmp_path):
    return _toy(tmp_path / "toy.npz"), _toy(tmp_path / "toy_test.npz", n=200, seed=1)


def _train(tmp_path, data, *extra, out="run"):
    train, test = data
    argv = ["train", "--device", "cpu", "--dataset", str(train), "--test-dataset", str(test),
            "--hidden", "16,16", "--batch-size", "32", "--out", str(tmp_path / out), "--quiet", *extra]  # fmt: skip
    return main(argv)


def _final_params(run_dir: Path) -> dict:
    return checkpoint.load(run_dir)["params"]


def test_help_lists_every_flag_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--device", "--dataset", "--data-dir", "--hidden", "--activation", "--dropout",
                 "--optimizer", "--lr", "--momentum", "--weight-decay", "--schedule", "--batch-size",
                 "--epochs", "--seed", "--dtype", "--val-fraction", "--early-stopping", "--out",
                 "--checkpoint-every", "--resume", "--quiet"):  # fmt: skip
        assert flag in text
    assert "(default: 128)" in text and "(default: adam)" in text


def test_run_directory_has_metrics_config_curves_and_checkpoints(tmp_path, toy):
    assert _train(tmp_path, toy, "--epochs", "3", "--val-fraction", "0.2") == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert REQUIRED_METRICS <= record.keys()
        assert record["val_loss"] is not None and record["test_accuracy"] is not None
        assert record["seconds"] > 0 and record["samples_per_second"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["seed"] == 0 and config["model"]["layer_sizes"][1:-1] == [16, 16]
    assert "numpy" in config["versions"] and config["device_name"] and config["processes"] == 1
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint.latest(run).name == "checkpoint-epoch-0003.npz"
    names = sorted(p.name for p in run.iterdir())  # no .lock
    assert names == [".xpmlp-run", "checkpoints", "config.json", "curves.png", "metrics.jsonl"]


def test_one_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path, toy, capsys):
    train, test = toy
    assert main(["train", "--device", "cpu", "--dataset", str(train), "--hidden", "8",
                 "--epochs", "2", "--out", str(tmp_path / "r")]) == 0  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("training MLP(") and "process" not in err[0]  # one process: no news
    lines = [line for line in err if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]


class _RankZeroOfTwo:
    """Rank 0 of a two-process job, alone: the other rank adds nothing to the gradients and
    sums, which is enough for what the job prints and writes."""

    rank, size, local_rank, local_size = 0, 2, 0, 1

    def reduce_gradients(self, grad, stop):
        return grad, stop

    def sum_in_rank_order(self, values):
        return values

    def broadcast(self, obj):
        return obj

    def allgather(self, obj):  # the other rank agrees
        return [obj, obj]


def test_an_mpi_run_says_how_many_processes(tmp_path, toy, monkeypatch, capsys):
    monkeypatch.setattr(cli_train, "communicator", lambda *args, **kwargs: _RankZeroOfTwo())
    assert main(["train", "--device", "cpu", "--dataset", str(toy[0]), "--hidden", "8",
                 "--epochs", "1", "--out", str(tmp_path / "r")]) == 0  # fmt: skip
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("training MLP(") and ", on 2 MPI processes;" in first, first
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["processes"] == 2 and config["train"]["grad_shards"] == 2


def test_an_interrupted_run_leaves_curves_and_no_lock(tmp_path, toy, monkeypatch, capsys):
    on_epoch = reporting.Progress.on_epoch

    def sigterm_after_epoch_2(self, record):  # as `docker stop` would, mid-run
        on_epoch(self, record)
        if record["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(reporting.Progress, "on_epoch", sigterm_after_epoch_2)
    assert _train(tmp_path, toy, "--epochs", "5") == 128 + signal.SIGTERM
    run = tmp_path / "run"
    assert checkpoint.load(run)["meta"]["trainer"]["epoch"] == 2
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / ".lock").exists()
    err = capsys.readouterr().err.splitlines()
    assert err == [f"xpmlp: interrupted; saved epoch 2; continue with --resume {run}"]


def test_an_interrupt_is_reported_even_when_the_plot_fails(tmp_path, toy, monkeypatch):
    on_epoch = reporting.Progress.on_epoch

    def ctrl_c(self, record):
        on_epoch(self, record)
        os.kill(os.getpid(), signal.SIGINT)

    def broken_plot(history, path, **kwargs):
        raise RuntimeError("matplotlib broke")

    monkeypatch.setattr(reporting.Progress, "on_epoch", ctrl_c)
    monkeypatch.setattr(reporting, "plot_curves", broken_plot)
    assert _train(tmp_path, toy, "--epochs", "5") == 130
    assert checkpoint.load(tmp_path / "run")["meta"]["trainer"]["epoch"] == 1
    assert not (tmp_path / "run" / "curves.png").exists()


def test_resume_continues_bit_for_bit(tmp_path, toy):
    common = ("--dropout", "0.2", "--optimizer", "adamw", "--weight-decay", "0.01", "--schedule", "step",
              "--step-epochs", "1", "--gamma", "0.7")  # fmt: skip
    assert _train(tmp_path, toy, "--epochs", "4", *common, out="straight") == 0
    assert _train(tmp_path, toy, "--epochs", "2", *common, out="split") == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "4", "--quiet"]) == 0
    straight, split = _final_params(tmp_path / "straight"), _final_params(tmp_path / "split")
    for name in straight:
        np.testing.assert_array_equal(straight[name], split[name])
    history = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2, 3, 4]


def test_checkpoint_every_and_keep(tmp_path, toy):
    assert (
        _train(tmp_path, toy, "--epochs", "5", "--checkpoint-every", "2", "--keep-checkpoints", "2")
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["checkpoint-epoch-0004.npz", "checkpoint-epoch-0005.npz"]


def test_early_stopping_keeps_best_weights_for_evaluate(tmp_path, toy, capsys):
    assert _train(tmp_path, toy, "--epochs", "40", "--val-fraction", "0.3", "--lr", "0.05",
                  "--early-stopping", "2") == 0  # fmt: skip
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) < 40 and records[-1].get("early_stopped")
    best = min(records, key=lambda r: r["val_loss"])
    ckpt = checkpoint.load(tmp_path / "run")
    assert ckpt["meta"]["trainer"]["best"]["epoch"] == best["epoch"]
    assert ckpt["best"] is not None


def test_evaluate_and_predict(tmp_path, toy, capsys):
    assert _train(tmp_path, toy, "--epochs", "3") == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run"),
                "--dataset",
                str(toy[1]),
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (3, 3) and confusion.sum() == 200
    assert result["accuracy"] == pytest.approx(np.trace(confusion) / 200)
    assert len(result["per_class_accuracy"]) == 3
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(last["test_accuracy"])
    out = tmp_path / "pred.npz"
    assert (
        main(
            ["predict", str(tmp_path / "run"), str(toy[1]), "--device", "cpu", "--output", str(out)]
        )
        == 0
    )
    with np.load(out) as predictions:
        assert predictions["labels"].shape == (200,)
        np.testing.assert_allclose(predictions["probabilities"].sum(axis=1), 1, rtol=1e-5)
        assert np.mean(predictions["labels"] == np.load(toy[1])["y"]) == pytest.approx(
            result["accuracy"]
        )


def _bad(tmp_path, argv, capsys, *, expect: str):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("xpmlp: error:"), err
    assert expect.lower() in err[0].lower(), err[0]


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["train", "--bogus"], "unrecognized arguments"),
        (["train", "--lr", "abc"], "--lr"),
        (["train", "--activation", "softplus"], "invalid choice"),
        (["train", "--epochs", "0"], "positive integer"),
        (["train", "--hidden", "300,x"], "comma-separated"),
        (["train", "--device", "tpu"], "unknown device"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_flags(tmp_path, capsys, argv, expect):
    _bad(tmp_path, argv, capsys, expect=expect)


def test_bad_data(tmp_path, toy, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    nan = X.copy()
    nan[17, 2] = np.nan
    np.savez(tmp_path / "nan.npz", X=nan, y=y)
    fractional = y.astype(float)
    fractional[9] = 1.5  # a label must be a whole number (of any sign: -1 is a class)
    np.savez(tmp_path / "neg.npz", X=X, y=fractional)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all")
    (tmp_path / "bad.csv").write_text("a,b,label\n1,2,0\n3,oops,1\n")
    common = ["train", "--device", "cpu", "--quiet", "--out", str(tmp_path / "r")]
    _bad(tmp_path, [*common, "--dataset", str(tmp_path / "nan.npz")], capsys, expect="row 17")
    _bad(tmp_path, [*common, "--dataset", str(tmp_path / "neg.npz")], capsys, expect="row 9")
    _bad(
        tmp_path,
        [*common, "--dataset", str(tmp_path / "garbage.npz")],
        capsys,
        expect="garbage.npz",
    )
    _bad(tmp_path, [*common, "--dataset", str(tmp_path / "bad.csv")], capsys, expect="bad.csv")
    _bad(
        tmp_path,
        [*common, "--dataset", str(tmp_path / "missing.npz")],
        capsys,
        expect="missing.npz",
    )
    _bad(
        tmp_path, [*common, "--dataset", str(toy[0]), "--val-fraction", "1.5"], capsys, expect="1.5"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIRS", ())
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty))
    monkeypatch.delenv("XPMLP_DATA_DIR", raising=False)
    _bad(tmp_path, [*common, "--dataset", "fashion-mnist", "--data-dir", str(empty), "--no-download"], capsys,
         expect="apt-get install dataset-fashion-mnist")  # fmt: skip


def test_checkpoint_mismatch_and_corruption(tmp_path, toy, capsys):
    assert _train(tmp_path, toy, "--epochs", "1") == 0
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, X=np.zeros((5, 7), np.float32), y=np.zeros(5, int))
    _bad(
        tmp_path,
        ["predict", str(tmp_path / "run"), str(wrong), "--device", "cpu"],
        capsys,
        expect="(n, 12)",
    )
    _bad(tmp_path, ["evaluate", str(tmp_path / "run"), "--dataset", str(wrong), "--device", "cpu"], capsys,
         expect="(n, 12)")  # fmt: skip
    broken = tmp_path / "checkpoint-epoch-0001.npz"
    data = (tmp_path / "run" / "checkpoints" / "checkpoint-epoch-0001.npz").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    _bad(tmp_path, ["evaluate", str(broken), "--dataset", str(toy[1]), "--device", "cpu"], capsys,
         expect="checkpoint")  # fmt: skip
    _bad(tmp_path, ["train", "--resume", str(broken)], capsys, expect="takes a run directory")
    for saved in (tmp_path / "run" / "checkpoints").iterdir():  # none left to fall back to
        saved.write_bytes(saved.read_bytes()[:100])
    _bad(tmp_path, ["train", "--resume", str(tmp_path / "run")], capsys, expect="checkpoint")
    assert not (tmp_path / "run" / ".lock").exists()  # the resume had locked it


def test_resume_without_a_checkpoint_starts_the_run(tmp_path, toy, capsys):
    # What a supervisor repeats: the same command, whether or not the run has begun.
    argv = ["train", "--device", "cpu", "--dataset", str(toy[0]), "--hidden", "8", "--epochs", "2",
            "--resume", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    RunDir(tmp_path / "run").create().close()  # killed before its first checkpoint
    (tmp_path / "run" / "config.json").write_text("{}")
    assert main(argv) == 0
    assert "no checkpoint" in capsys.readouterr().err
    first = _final_params(tmp_path / "run")
    assert main(argv) == 0  # finished: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    for name, value in _final_params(tmp_path / "run").items():
        np.testing.assert_array_equal(value, first[name])


def test_diverging_run_is_diagnosed_and_keeps_the_last_good_checkpoint(tmp_path, toy, capsys):
    argv = ["--epochs", "3", "--optimizer", "sgd", "--lr", "0.01", "--schedule", "step",
            "--step-epochs", "1", "--gamma", "1e30"]  # fmt: skip
    code = _train(tmp_path, toy, *argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert (
        "epoch 2" in err[0]
        and "step" in err[0]
        and "learning rate" in err[0]
        and "layers." in err[0]
    )
    good = checkpoint.load(tmp_path / "run")
    assert good["meta"]["trainer"]["epoch"] == 1
    assert not (tmp_path / "run" / ".lock").exists()
    assert all(np.isfinite(v).all() for v in good["params"].values())


# ---------------------------------------------------------------------- kill and interrupt


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "xpmlp", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def _wait_for(path: Path, process, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slow")
    return _toy(folder / "train.npz", n=8000, features=40, classes=5)


def _slow_args(data, out):
    return ["train", "--device", "cpu", "--dataset", str(data), "--hidden", "64,64", "--batch-size", "16",
            "--epochs", "8", "--dropout", "0.1", "--out", str(out), "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(slow_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    process = _cli(*_slow_args(slow_data, out))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return _final_params(out)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.137, 0.61])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, slow_data, uninterrupted, delay):
    out = tmp_path / "run"
    process = _cli(*_slow_args(slow_data, out))
    _wait_for(out / "checkpoints" / "checkpoint-epoch-0002.npz", process)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    resumed = _cli("train", "--resume", str(out), "--quiet")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    final = _final_params(out)
    for name, value in uninterrupted.items():
        np.testing.assert_array_equal(final[name], value)
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_resumes_exactly(tmp_path, slow_data, uninterrupted):
    out = tmp_path / "run"
    process = _cli(*_slow_args(slow_data, out))
    _wait_for(out / "checkpoints" / "checkpoint-epoch-0001.npz", process)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    epoch = checkpoint.load(out)["meta"]["trainer"]["epoch"]
    assert epoch >= 1
    assert (out / "curves.png").exists() and not (out / ".lock").exists()
    resumed = _cli("train", "--resume", str(out), "--quiet")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    final = _final_params(out)
    for name, value in uninterrupted.items():
        np.testing.assert_array_equal(final[name], value)


def test_python_dash_m_reports_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "xpmlp", "train", "--dataset", str(tmp_path / "x.npz"),
                             "--device", "cpu"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_console_script_is_installed():
    # pip puts the script beside this Python (a virtualenv's bin/, active or not)
    script = shutil.which(
        "xpmlp", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    assert script, f"no xpmlp script beside {sys.executable} or on PATH"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("xpmlp ")


# ---------------------------------------------------------------------- one vocabulary for a run


def test_a_new_run_never_replaces_an_old_one(tmp_path, toy, capsys):
    assert _train(tmp_path, toy, "--epochs", "1") == 0
    before = _final_params(tmp_path / "run")
    _bad(tmp_path, ["train", "--device", "cpu", "--dataset", str(toy[0]), "--out",
                    str(tmp_path / "run"), "--quiet"], capsys, expect="already holds a run")  # fmt: skip
    for name, value in _final_params(tmp_path / "run").items():
        np.testing.assert_array_equal(value, before[name])
    assert _train(tmp_path, toy, "--epochs", "2", "--seed", "5", "--overwrite") == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["seed"] == 5 and checkpoint.latest(tmp_path / "run").name.endswith(
        "0002.npz"
    )


def test_resume_refuses_a_changed_setting_and_a_file(tmp_path, toy, capsys):
    assert _train(tmp_path, toy, "--epochs", "1") == 0
    run = str(tmp_path / "run")
    _bad(tmp_path, ["train", "--resume", run, "--lr", "0.5", "--epochs", "2"], capsys,
         expect="--lr 0.5 differs from the resumed run's 0.001")  # fmt: skip
    _bad(tmp_path, ["train", "--resume", run, "--hidden", "8"], capsys, expect="--hidden")
    latest = str(checkpoint.latest(tmp_path / "run"))
    _bad(tmp_path, ["train", "--resume", latest], capsys, expect="takes a run directory")
    # The same value as the run's is not a change; --epochs may change.
    assert main(["train", "--resume", run, "--lr", "0.001", "--epochs", "2", "--quiet"]) == 0
    assert checkpoint.load(tmp_path / "run")["meta"]["trainer"]["epoch"] == 2


def test_resume_of_a_finished_run_does_nothing(tmp_path, toy, capsys):
    assert _train(tmp_path, toy, "--epochs", "2") == 0
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert "finished at epoch 2; nothing to do" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


def test_l2_is_the_models_and_weight_decay_is_adamws(tmp_path, toy, capsys):
    assert _train(tmp_path, toy, "--epochs", "1", "--l2", "0.01") == 0
    assert checkpoint.load(tmp_path / "run")["meta"]["model"]["l2"] == 0.01
    _bad(tmp_path, ["train", "--weight-decay", "0.01", "--optimizer", "sgd"], capsys, expect="--l2")


def test_the_resumed_dataset_path_is_absolute(tmp_path, toy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--device", "cpu", "--dataset", "toy.npz", "--hidden", "8",
                 "--epochs", "1", "--out", "run", "--quiet"]) == 0  # fmt: skip
    monkeypatch.chdir(tmp_path / "run")  # elsewhere: toy.npz is no longer in the working directory
    assert main(["train", "--resume", ".", "--epochs", "2", "--quiet"]) == 0
    assert checkpoint.load(tmp_path / "run")["meta"]["data"]["dataset"] == str(tmp_path / "toy.npz")


# ---------------------------------------------------------------------- reliability


def test_classes_are_the_distinct_labels_in_their_own_values(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    raw = np.array([0, 1, 2, 99])[(X @ rng.normal(size=(6, 4))).argmax(axis=1)]
    np.savez(tmp_path / "d.npz", X=X, y=raw)
    np.savez(tmp_path / "x.npz", X=X[:20])
    argv = ["train", "--device", "cpu", "--dataset", str(tmp_path / "d.npz"), "--hidden", "8",
            "--epochs", "2", "--out", str(tmp_path / "r"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    ckpt = checkpoint.load(tmp_path / "r")
    assert (
        ckpt["meta"]["classes"] == [0, 1, 2, 99] and ckpt["meta"]["model"]["layer_sizes"][-1] == 4
    )
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r"), "--dataset", str(tmp_path / "d.npz"),
                 "--device", "cpu", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == [0, 1, 2, 99] and np.array(result["confusion_matrix"]).shape == (
        4,
        4,
    )
    assert main(["predict", str(tmp_path / "r"), str(tmp_path / "x.npz"), "--device", "cpu"]) == 0
    labels = [int(line) for line in capsys.readouterr().out.split()]
    assert len(labels) == 20 and set(labels) <= {0, 1, 2, 99}
    huge = raw.copy()
    huge[huge == 99] = 2147483646  # a large label is a class like any other
    np.savez(tmp_path / "huge.npz", X=X, y=huge)
    assert (
        main(
            [
                *argv[:4],
                str(tmp_path / "huge.npz"),
                *argv[5:-3],
                "--out",
                str(tmp_path / "h"),
                "--quiet",
            ]
        )
        == 0
    )
    np.savez(tmp_path / "many.npz", X=np.zeros((20001, 2), np.float32), y=np.arange(20001))
    _bad(tmp_path, [*argv[:4], str(tmp_path / "many.npz"), "--out", str(tmp_path / "m")], capsys,
         expect="20,001 distinct labels")  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--warmup-epochs", "nan"], "warmup_epochs must be a finite number"),
        (["--warmup-epochs", "inf"], "warmup_epochs must be a finite number"),
        (["--seed", "-1"], "seed must be an integer >= 0"),
        (["--hidden", "100000000"], "GiB to train; this machine's memory is"),
        (["--warmup-epochs", "1e308"], "warmup_epochs must be a finite number in [0, 1e+09]"),
        (["--schedule", "step", "--gamma", "-1"], "gamma must be a finite number"),
        (["--optimizer", "adamw", "--weight-decay", "-1"], "weight_decay must be a finite number"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--dropout", "nan"], "dropout"),
        (["--l2", "nan"], "l2 must be >= 0 and finite"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, toy, capsys, extra, expect):
    _bad(tmp_path, ["train", "--device", "cpu", "--dataset", str(toy[0]), "--out",
                    str(tmp_path / "r"), "--quiet", *extra], capsys, expect=expect)  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_test_dataset_needs_a_file_dataset(tmp_path, toy, capsys):
    _bad(tmp_path, ["train", "--dataset", "mnist", "--test-dataset", str(toy[1])], capsys,
         expect="brings its own test set")  # fmt: skip


def test_bad_prediction_inputs_are_one_line(tmp_path, toy, capsys):
    assert _train(tmp_path, toy, "--epochs", "1") == 0
    run = str(tmp_path / "run")
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "single.npy", np.zeros((3, 12)))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    np.savez(tmp_path / "zero.npz", X=np.zeros((0, 12), np.float32))
    np.savez(tmp_path / "text.npz", X=np.array([["a"] * 12]))
    np.savez(tmp_path / "complex.npz", X=np.ones((2, 12), np.complex64))
    np.savez(tmp_path / "dates.npz", X=np.zeros((2, 12), "datetime64[s]"))
    np.savez(tmp_path / "big.npz", X=np.full((2, 12), 1e39))  # finite in float64, not float32
    for name, expect in [("empty.npz", "cannot read"), ("single.npz", "single array"),
                         ("zero.npz", "no rows"), ("text.npz", "real numbers"),
                         ("complex.npz", "real numbers"), ("dates.npz", "real numbers"),
                         ("big.npz", "after scaling to float32")]:  # fmt: skip
        _bad(
            tmp_path,
            ["predict", run, str(tmp_path / name), "--device", "cpu"],
            capsys,
            expect=expect,
        )
    np.savez(tmp_path / "noxy.npz", X=np.zeros((0, 12), np.float32), y=np.zeros(0, int))
    _bad(tmp_path, ["evaluate", run, "--dataset", str(tmp_path / "noxy.npz"), "--device", "cpu"],
         capsys, expect="no rows")  # fmt: skip


def test_predict_warns_about_input_already_scaled(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(200, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 127).astype(int))
    np.savez(tmp_path / "scaled.npz", X=X[:5] / 255)
    assert main(["train", "--device", "cpu", "--dataset", str(tmp_path / "d.npz"), "--hidden", "4",
                 "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert (
        main(["predict", str(tmp_path / "r"), str(tmp_path / "scaled.npz"), "--device", "cpu"]) == 0
    )
    err = capsys.readouterr().err
    assert "looks already scaled" in err and len(err.strip().splitlines()) == 1


def test_outputs_never_replace_what_is_not_a_regular_file(tmp_path, toy, capsys):
    assert _train(tmp_path, toy, "--epochs", "1") == 0
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _bad(tmp_path, ["predict", str(tmp_path / "run"), str(toy[1]), "--device", "cpu", "--output",
                    str(fifo)], capsys, expect="not a regular file")  # fmt: skip
    assert fifo.is_fifo()
    # A FIFO among the checkpoints is passed over (opening it would hang the reader).
    os.mkfifo(tmp_path / "run" / "checkpoints" / checkpoint.checkpoint_name(99))
    assert checkpoint.latest(tmp_path / "run").name == checkpoint.checkpoint_name(1)
    _bad(tmp_path, ["evaluate", str(fifo), "--dataset", str(toy[1]), "--device", "cpu"], capsys,
         expect="not a regular file")  # fmt: skip


def test_written_files_follow_the_umask(tmp_path, toy):
    old = os.umask(0o022)
    try:
        assert _train(tmp_path, toy, "--epochs", "1") == 0
    finally:
        os.umask(old)
    for path in [tmp_path / "run" / "config.json", checkpoint.latest(tmp_path / "run")]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_a_closed_pipe_is_not_an_error(tmp_path, toy):
    assert _train(tmp_path, toy, "--epochs", "1") == 0
    process = _cli("predict", str(tmp_path / "run"), str(toy[1]), "--device", "cpu")
    process.stdout.close()  # the reader has left before the first line, as `| head -0` does
    err = process.stderr.read()
    process.stderr.close()
    process.wait(timeout=60)
    assert err == "" and process.returncode == 128 + signal.SIGPIPE


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        (lambda meta: meta["model"].pop("dtype"), "dtype is 'float32' here but None in the run"),
        (lambda meta: meta["model"].update(dropout="lots"), "malformed model config"),
        (lambda meta: meta["trainer"].pop("history"), "trainer state is malformed"),
        (lambda meta: meta["trainer"]["config"].update(lr="fast"), "lr must be a finite number"),
        (lambda meta: meta.update(classes=[0, 1]), "other classes than the run's"),
        (lambda meta: meta.pop("model"), "malformed settings"),
    ],
)
def test_damaged_checkpoint_metadata_is_one_line(tmp_path, toy, capsys, damage, expect):
    # One checkpoint kept: no older one for the resume to fall back to.
    assert _train(tmp_path, toy, "--epochs", "1", "--keep-checkpoints", "1") == 0
    path = checkpoint.latest(tmp_path / "run")
    ckpt = checkpoint.load(path)
    meta = {k: v for k, v in ckpt["meta"].items() if k != "format"}
    damage(meta)
    arrays = {group: ckpt[group] for group in ("params", "optimizer", "best", "scaling")}
    checkpoint.save(path, meta=meta, arrays=arrays)
    code = main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--quiet",
                 "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expect in err[0], err
    if "classes" in expect:
        code = main(["predict", str(tmp_path / "run"), str(toy[1]), "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err == [
            f"xpmlp: error: {path} records 2 classes for a model with 3 outputs"
        ]


# ---------------------------------------------------------------------- on a GPU (the stand-in)


def test_gpu_without_cupy_says_how_to_install_it(tmp_path, toy, capsys, monkeypatch):
    from xpmlp import backend

    monkeypatch.setitem(sys.modules, "cupy", None)  # as if CuPy were not installed
    monkeypatch.setattr(backend, "_driver_cuda_version", lambda: 12080)  # on a CUDA 12.8 driver
    _bad(tmp_path, ["train", "--device", "gpu", "--dataset", str(toy[0])], capsys,
         expect='CuPy is not installed; install it with pip install "cupy-cuda12x[ctk]>=14"')  # fmt: skip


def test_gpu_without_a_driver_says_there_is_no_gpu(tmp_path, toy, capsys, monkeypatch):
    from xpmlp import backend

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(backend, "_driver_cuda_version", lambda: None)
    _bad(tmp_path, ["train", "--device", "gpu", "--dataset", str(toy[0])], capsys,
         expect="no NVIDIA GPU or driver found")  # fmt: skip


@pytest.mark.parametrize("device", ["gpu", "cuda:1"])
def test_training_on_a_gpu_matches_the_cpu(tmp_path, toy, cupy_standin, device):
    # The same batches and dropout masks (made on the device) on either device: where the
    # stand-in runs the kernels' NumPy twins, the GPU run is the CPU run bit for bit; where CUDA
    # code runs, tanh, exp, log and the loss's sums differ by ulps (tests/tolerances.py).
    extra = ("--epochs", "2", "--dropout", "0.2")
    assert _train(tmp_path, toy, *extra, out="cpu") == 0
    argv = ["train", "--device", device, "--dataset", str(toy[0]), "--test-dataset", str(toy[1]),
            "--hidden", "16,16", "--batch-size", "32", "--out", str(tmp_path / "gpu"), "--quiet",
            *extra]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((tmp_path / "gpu" / "config.json").read_text())
    assert config["device"] == ("cuda:0" if device == "gpu" else device)
    assert config["device_name"].startswith("CuPy stand-in device")
    cpu, gpu = _final_params(tmp_path / "cpu"), _final_params(tmp_path / "gpu")
    close = fused_tolerance(twins_run(get_backend(device)), "float32")
    for name in cpu:
        np.testing.assert_allclose(gpu[name], cpu[name], **close, err_msg=name)
    assert (
        main(["evaluate", str(tmp_path / "gpu"), "--dataset", str(toy[1]), "--device", device]) == 0
    )


def test_device_command_probes_the_device(capsys, cupy_standin):
    assert main(["device", "--device", "cuda:1"]) == 0
    out = capsys.readouterr().out
    assert "cuda:1" in out and "CuPy stand-in device 1" in out and "probe passed" in out
    assert cupy_standin.launches > 0 and cupy_standin.syncs >= 1


def _fake_fashion_mnist(folder: Path) -> list[str]:
    """Tiny IDX files standing in for Fashion-MNIST (4x4 images); returns the train command."""
    from xpmlp.data.datasets import FILENAMES
    from xpmlp.data.idx import write_idx

    rng = np.random.default_rng(0)
    folder.mkdir()
    for name, array in zip(FILENAMES, (rng.integers(0, 256, (50, 4, 4), dtype=np.uint8),
                                       np.arange(50, dtype=np.uint8) % 10,
                                       rng.integers(0, 256, (20, 4, 4), dtype=np.uint8),
                                       np.arange(20, dtype=np.uint8) % 10)):  # fmt: skip
        write_idx(folder / name, array)
    return ["--dataset", "fashion-mnist", "--data-dir", str(folder), "--device", "cpu"]


def test_evaluate_names_the_classes_of_a_built_in_dataset(tmp_path, capsys):
    from xpmlp.data.datasets import CLASS_NAMES

    common = _fake_fashion_mnist(tmp_path / "fmnist")
    assert main(["train", *common, "--hidden", "8", "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r"), *common]) == 0
    out = capsys.readouterr().out
    assert "Ankle boot:" in out and "T-shirt/top:" in out
    assert main(["evaluate", str(tmp_path / "r"), *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["class_names"] == CLASS_NAMES["fashion-mnist"]


# ---------------------------------------------------------------------- a new user's data


def _headerless_csv(path: Path, n_rows=3000) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, 4)).round(3)
    y = (X @ rng.normal(size=(4, 3))).argmax(axis=1)
    path.write_text("".join(f"{label},{','.join(map(str, row))}\n" for label, row in zip(y, X)))
    return path


def test_headerless_csv_trains_on_every_row(tmp_path, capsys):
    data = _headerless_csv(tmp_path / "h.csv")
    argv = ["train", "--device", "cpu", "--dataset", str(data), "--hidden", "8", "--epochs", "1",
            "--out", str(tmp_path / "r"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"xpmlp: error: {data} has no header row (line 1 is numbers like the rest), so no column "
        "'label'; choose the label column by index: --label-column 0 for the first, -1 for the "
        "last\n"
    )
    assert main([*argv, "--label-column", "0"]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["n_train"] == 3000  # 3,000 rows in, 3,000 used


def test_missing_label_column_suggests_the_flag(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("\ufeffclass,a,b\n1,2,3\n0,3,4\n")  # with a BOM
    argv = ["train", "--device", "cpu", "--dataset", str(tmp_path / "d.csv"), "--hidden", "8",
            "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"xpmlp: error: no column 'label' in {tmp_path / 'd.csv'} (columns: class, a, b); choose "
        "the label column with --label-column NAME_OR_INDEX\n"
    )
    assert main([*argv, "--label-column", "class"]) == 0  # the BOM is not part of 'class'


@pytest.mark.parametrize(
    ("dataset", "expect"),
    [
        ("fashion-mnsit", "unknown dataset 'fashion-mnsit'; built-in: mnist, fashion-mnist; "
                          "did you mean 'fashion-mnist'?"),
        ("cifar10", "unknown dataset 'cifar10'; built-in: mnist, fashion-mnist"),
        ("data/train.csv", "no such file: {}/data/train.csv (built-in datasets: mnist, "
                           "fashion-mnist)"),
    ],
)  # fmt: skip
def test_an_unknown_dataset_lists_the_built_in_ones(tmp_path, capsys, monkeypatch, dataset, expect):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--device", "cpu", "--dataset", dataset, "--quiet"]) == 2
    assert capsys.readouterr().err == f"xpmlp: error: {expect.format(tmp_path)}\n"
    assert not (tmp_path / "runs").exists()


def test_predict_prints_the_names_of_a_built_in_datasets_classes(tmp_path, capsys):
    from xpmlp.data.datasets import CLASS_NAMES

    common = _fake_fashion_mnist(tmp_path / "fmnist")
    assert main(["train", *common, "--hidden", "8", "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0  # fmt: skip
    np.savez(tmp_path / "x.npz", X=np.random.default_rng(1).integers(0, 256, (30, 16)))
    capsys.readouterr()
    predict = ["predict", str(tmp_path / "r"), str(tmp_path / "x.npz"), "--device", "cpu"]
    assert main(predict) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 30 and set(printed) <= set(CLASS_NAMES["fashion-mnist"])
    assert main([*predict, "--output", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as saved:
        assert saved["labels"].dtype == np.int64  # the label values stay
        assert saved["names"].tolist() == printed
        assert saved["class_names"].tolist() == CLASS_NAMES["fashion-mnist"]
        assert [CLASS_NAMES["fashion-mnist"][label] for label in saved["labels"]] == printed


def test_text_labels_are_the_classes_predict_prints(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)).round(3)
    names = ["setosa", "versicolor", "virginica"]
    species = np.array(names)[(X @ rng.normal(size=(3, 3))).argmax(axis=1)]
    (tmp_path / "d.csv").write_text("species,a,b,c\n" + "".join(
        f"{s},{','.join(map(str, row))}\n" for s, row in zip(species, X)))  # fmt: skip
    np.savez(tmp_path / "x.npz", X=X[:20])
    assert main(["train", "--device", "cpu", "--dataset", str(tmp_path / "d.csv"), "--label-column",
                 "species", "--hidden", "8", "--epochs", "2", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0  # fmt: skip
    assert checkpoint.load(tmp_path / "r")["meta"]["classes"] == names
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "r"), str(tmp_path / "x.npz"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 20 and set(printed) <= set(names)
    assert main(["evaluate", str(tmp_path / "r"), "--dataset", str(tmp_path / "d.csv"),
                 "--label-column", "species", "--device", "cpu"]) == 0  # fmt: skip
    assert "per-class accuracy: setosa:" in capsys.readouterr().out
    (tmp_path / "n.csv").write_text("species,a,b,c\n1,5,5,5\n")
    _bad(tmp_path, ["evaluate", str(tmp_path / "r"), "--dataset", str(tmp_path / "n.csv"),
                    "--label-column", "species", "--device", "cpu"], capsys,
         expect="label 1 at row 0 of the labels of {} is a number; the model's classes are "
                "text: setosa, versicolor, virginica".format(tmp_path / "n.csv"))  # fmt: skip


def test_labels_minus_one_and_plus_one_are_two_classes(tmp_path, capsys):
    # As scikit-learn's: the classes are the sorted distinct labels, whatever their sign.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = np.where(X[:, 0] > 0, 1, -1)
    lines = ["a,b,c,label"] + [f"{a},{b},{c},{label}" for (a, b, c), label in zip(X, y)]
    (tmp_path / "pm1.csv").write_text("\n".join(lines) + "\n")
    np.savez(tmp_path / "new.npz", X=X[:5])
    run = tmp_path / "run"
    assert main(["train", "--device", "cpu", "--dataset", str(tmp_path / "pm1.csv"),
                 "--hidden", "8", "--epochs", "2", "--out", str(run), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["predict", str(run), str(tmp_path / "new.npz"), "--device", "cpu"]) == 0
    assert set(capsys.readouterr().out.split()) <= {"-1", "1"}


def test_a_resumed_run_says_where_it_resumes(tmp_path, toy, capsys):
    assert _train(tmp_path, toy, "--epochs", "2") == 0
    capsys.readouterr()
    assert (
        main(["train", "--resume", str(tmp_path / "run"), "--epochs", "3", "--device", "cpu"]) == 0
    )
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("resuming MLP(") and " at epoch 3 of 3 on " in first, first
