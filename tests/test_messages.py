"""Messages are bounded and in words: memory limits named, a held lock's file excerpted, data
paths that are no files said so, strict JSON, no raw errno, no library warnings, and flags too
large to compute with refused in one line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from optional import need

from xpmlp import ConfigError, RunDir
from xpmlp.cli import main
from xpmlp.cli import results as cli_results
from xpmlp.cli.main import os_error_message


@pytest.fixture
def toy(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "toy.npz", X=X, y=(X[:, 0] > 0).astype(int))
    return tmp_path / "toy.npz"


def _one_line(capsys, code: int, expected: int = 2) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected and len(err) == 1 and err[0].startswith("xpmlp: error:"), err
    assert "[Errno" not in err[0] and "Traceback" not in err[0]
    return err[0]


def _train(toy: Path, out: Path, *flags: str) -> int:
    return main(["train", "--device", "cpu", "--dataset", str(toy), "--out", str(out),
                 "--hidden", "5", "--epochs", "1", "--quiet", *flags])  # fmt: skip


def test_rlimit_as_is_the_limit_a_large_network_is_refused_by(toy):
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from xpmlp.cli import main\n"
        f"sys.exit(main(['train', '--device', 'cpu', '--dataset', {str(toy)!r}, '--hidden', '100000,100000', "
        f"'--out', {str(toy.parent / 'r')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert "RLIMIT_AS" in err[0] and "3.0 GiB" in err[0], err[0]
    assert not (toy.parent / "r").exists()


def test_a_held_lock_with_megabytes_in_its_file_is_excerpted(tmp_path):
    with RunDir(tmp_path / "r").create():
        (tmp_path / "r" / ".lock").write_bytes(b"\x00garbage" * 830_000)  # 6.6 MB, no pid
        with pytest.raises(ConfigError) as info:
            RunDir(tmp_path / "r").open()
    message = str(info.value)
    assert len(message) < 300 and "\n" not in message and "not a pid" in message, message


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_a_data_path_that_is_no_regular_file_is_named_as_such(tmp_path, toy, capsys, kind):
    path = {"directory": tmp_path / "data.npz", "fifo": tmp_path / "pipe.npz",
            "device": Path("/dev/zero")}[kind]  # fmt: skip
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # opened, it would block the reader for ever
    said = "is a directory" if kind == "directory" else "is not a regular file"
    line = _one_line(capsys, _train(toy, tmp_path / "r", "--dataset", str(path)))
    assert said in line and str(path) in line and "no such file" not in line
    line = _one_line(capsys, _train(toy, tmp_path / "r", "--test-dataset", str(path)))
    assert said in line


def test_evaluate_json_is_strict_json_with_a_nan_loss(tmp_path, toy, capsys, monkeypatch):
    assert _train(toy, tmp_path / "r") == 0
    real = cli_results.evaluate
    monkeypatch.setattr(cli_results, "evaluate",
                        lambda *a, **k: {**real(*a, **k), "loss": float("nan")})  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r"), "--dataset", str(toy), "--json"]) == 0
    captured = capsys.readouterr()

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    result = json.loads(captured.out, parse_constant=refuse)
    assert result["loss"] is None and 0 <= result["accuracy"] <= 1
    assert "loss" in captured.err and "not finite" not in captured.out


def test_a_step_schedule_grown_past_float_range_is_one_line(tmp_path, toy, capsys):
    code = _train(toy, tmp_path / "r", "--epochs", "4", "--batch-size", "10", "--schedule",
                  "step", "--step-epochs", "1", "--gamma", "1e200", "--lr", "1e-300")  # fmt: skip
    assert "learning rate inf" in _one_line(capsys, code)


def test_os_errors_are_in_words_naming_the_file_not_a_temporary_one():
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/.tmp-x81k2.npz")
    assert os_error_message(full) == "/runs/a: no space left on device; free some space and run the command again"  # fmt: skip
    exists = FileExistsError(errno.EEXIST, "File exists", "/runs/a")
    assert os_error_message(exists) == "/runs/a: file exists; choose another path, or remove what is there"  # fmt: skip


def test_an_output_in_a_missing_directory_is_in_words(tmp_path, toy, capsys):
    assert _train(toy, tmp_path / "r") == 0
    capsys.readouterr()
    code = main(["predict", str(tmp_path / "r"), str(toy), "--output",
                 str(tmp_path / "nope" / "p.npz")])  # fmt: skip
    line = _one_line(capsys, code)
    assert "no such file or directory" in line and ".tmp-" not in line


@pytest.mark.parametrize(("lines", "said"), [
    (['{"epoch": 1, "test_loss": "abc"}'], "test_loss on line 1"),
    (['{"epoch": 1e308, "test_loss": 1}'], "no integer epoch"),
    (['[' * 100_000], "line 1"),
    (['{"epoch": 1, "test_loss": 1e308}', '{"epoch": 2, "test_loss": -1e308}'], "cannot plot"),
])  # fmt: skip
def test_plot_refuses_metrics_it_cannot_draw_in_one_line(tmp_path, capsys, lines, said):
    need("matplotlib")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    code = main(["plot", str(tmp_path / "run"), "--output", str(tmp_path / "o.png")])
    assert said in _one_line(capsys, code)


def test_plot_keeps_matplotlib_warnings_off_stderr(tmp_path, capsys):
    need("matplotlib")
    run = tmp_path / ("x" * 200)  # a label too long for the layout: matplotlib warns
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "test_loss": 0.5}\n')
    assert main(["plot", str(run), "--output", str(tmp_path / "o.png")]) == 0
    assert capsys.readouterr().err == ""
