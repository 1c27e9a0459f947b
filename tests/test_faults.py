"""Fault injection: `xpmlp train` killed, interrupted or starved of disk at random moments, alone
or as rank 0 of a job under plain `mpiexec -n 2`.

Every trial ends in one of two ways: the run, resumed with the same command until it finishes,
has the weights of a run never interrupted, bit for bit; or the command says what went wrong in
one line, and nothing saved is lost. A fault on one rank of a job ends the whole job (no rank
waits for it). The moments are drawn from a seeded generator, so a failing trial is reproduced
by its test id.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from optional import MPIEXEC, need

from xpmlp.train import checkpoint

pytestmark = pytest.mark.slow

TRIALS = {"SIGKILL": 12, "SIGINT": 8, "SIGTERM": 6}  # 26 in all
EXPECTED = {  # exit statuses an interrupted command may end with; a negative one is a signal
    # that landed where Python handles it itself (start-up, shutdown), with nothing to save
    "SIGKILL": {-signal.SIGKILL, 0},
    "SIGINT": {130, -signal.SIGINT, 0},
    "SIGTERM": {128 + signal.SIGTERM, -signal.SIGTERM, 0},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12000, 20)).astype(np.float32)
    y = (X @ rng.normal(size=(20, 4))).argmax(axis=1)
    path = tmp_path_factory.mktemp("faults") / "train.npz"
    np.savez(path, X=X, y=y)
    return path


EPOCHS = 6


def _command(data: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "xpmlp", "train", "--device", "cpu", "--dataset", str(data),
            "--hidden", "64,64", "--batch-size", "8", "--epochs", str(EPOCHS), "--dropout", "0.1",
            "--val-fraction", "0.2", "--quiet", "--resume", str(out), *extra]  # fmt: skip


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)


def _assert_one_line_at_most(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("xpmlp: no checkpoint")]
    assert len(lines) <= 1, stderr


def _finish(data: Path, out: Path) -> dict:
    """Repeat the same command until it succeeds (as a supervisor would); the final weights."""
    for _ in range(3):
        result = _run(_command(data, out))
        _assert_one_line_at_most(result.stderr)
        if result.returncode == 0:
            final = checkpoint.load(out)
            assert final["meta"]["trainer"]["epoch"] == EPOCHS
            assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]
            return final["params"]
    raise AssertionError(f"the run in {out} never finished: {result.stderr}")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("straight") / "run"
    start = time.monotonic()
    result = _run(_command(data, out))
    DURATION.append(time.monotonic() - start)
    assert result.returncode == 0, result.stderr
    return checkpoint.load(out)["params"]


def _assert_same(final: dict, expected: dict) -> None:
    for name, value in expected.items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)


DURATION: list[float] = []  # seconds of the uninterrupted run, measured once
OUTCOMES: list[int] = []  # exit status of every interrupted command


def _epochs_done(out: Path) -> int:
    try:
        return (out / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _signal_at(process: subprocess.Popen, out: Path, moment: float, signum: int) -> None:
    """Send ``signum`` at ``moment`` of the run's own progress, not of a clock.

    ``moment * EPOCHS`` = k + f: wait until the run has finished k epochs (its metrics.jsonl has
    k lines), then wait the fraction f of its previous epoch, as long as it took in this very
    run (before the first epoch: of the uninterrupted run's first sixth). A loaded machine slows
    the run and the wait alike, so the signal lands at the same point of the run.
    """
    done, fraction = divmod(moment * EPOCHS, 1.0)
    stamps = [time.monotonic()]  # when the run was started, then when each epoch was seen done
    while len(stamps) <= done and process.poll() is None:
        if _epochs_done(out) >= len(stamps):
            stamps.append(time.monotonic())
        time.sleep(0.002)
    epoch = stamps[-1] - stamps[-2] if done else DURATION[0] / EPOCHS
    time.sleep(fraction * epoch)
    process.send_signal(signum)


def _trials() -> list:
    rng = np.random.default_rng(20261123)
    return [
        pytest.param(name, float(rng.uniform(0.0, 1.0)), id=f"{name}-{i}")
        for name, count in TRIALS.items()
        for i in range(count)
    ]


@pytest.mark.parametrize(("signal_name", "moment"), _trials())
def test_a_signal_at_any_moment_then_resume_is_bit_identical(
    tmp_path, data, uninterrupted, signal_name, moment
):
    # ``moment``: how far through the run the signal lands (start-up, data loading, any epoch,
    # evaluation, checkpointing, plotting), measured by the run's own progress.
    out = tmp_path / "run"
    process = subprocess.Popen(_command(data, out), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    _signal_at(process, out, moment, getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode in EXPECTED[signal_name], (process.returncode, stderr)
    OUTCOMES.append(process.returncode)
    if process.returncode == -signal.SIGINT:
        # Ctrl-C while Python itself is still importing NumPy (before xpmlp's main runs) is
        # Python's to report, with its traceback; nothing has been written yet. So is one during
        # the interpreter's shutdown, after the run has finished and said so.
        assert "Traceback" not in stderr or stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    elif signal_name != "SIGKILL":
        _assert_one_line_at_most(stderr)
    if process.returncode == 130 and (out / "checkpoints").is_dir() and checkpoint.latest(out):
        assert "--resume" in stderr
    _assert_same(_finish(data, out), uninterrupted)


def test_the_trials_interrupted_runs():
    # The trials above prove something only if most signals landed before the run finished.
    assert len(OUTCOMES) == sum(TRIALS.values())
    assert sum(code != 0 for code in OUTCOMES) >= 0.75 * len(OUTCOMES), OUTCOMES


def test_two_trainers_never_share_a_run(tmp_path, data, uninterrupted):
    out = tmp_path / "run"
    first = subprocess.Popen(_command(data, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out / ".lock").exists() or not (out / ".lock").read_text().strip():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    second = _run(_command(data, out))
    assert second.returncode == 2, second.stderr
    assert "in use by another xpmlp process" in second.stderr
    _assert_one_line_at_most(second.stderr)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    _assert_same(checkpoint.load(out)["params"], uninterrupted)


def test_a_full_disk_loses_nothing_saved(tmp_path, data, uninterrupted):
    out = tmp_path / "run"
    assert _run(_command(data, out, "--epochs", "1")).returncode == 0
    saved = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    size = max(len(b) for b in saved.values())

    def small_disk():  # as `ulimit -f`: a file may not grow past half a checkpoint
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    result = _run(_command(data, out), preexec_fn=small_disk)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("xpmlp: error:") and "file too large" in result.stderr
    assert str(out / "checkpoints") in result.stderr and "ulimit -f" in result.stderr  # where, fix
    _assert_one_line_at_most(result.stderr)
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == saved
    _assert_same(_finish(data, out), uninterrupted)


# ---------------------------------------------------------------------- rank 0 of an MPI job

MPI_TRIALS = {"kill": 2, "error-in-step": 2, "error-between-steps": 2}
MPI_EPOCHS, MPI_STEPS = 4, 4 * 50  # 1600 training rows in batches of 32
# Run as each rank: on rank 0, the `at`-th gradient (or progress update, between two steps'
# exchanges) is a fault: a SIGKILL or an exception that rank alone meets.
FAULTY_RANK_0 = """
import os, runpy, signal, sys
from mpi4py import MPI
fault, at = sys.argv[1], int(sys.argv[2])
del sys.argv[1:3]
if MPI.COMM_WORLD.Get_rank() == 0:
    from xpmlp.core.model import MLP
    from xpmlp.train.reporting import Progress
    owner, name = (Progress, "on_batch") if fault == "error-between-steps" else (MLP, "train_gradients")
    original, calls = getattr(owner, name), [0]
    def faulty(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise MemoryError("injected on rank 0")
        return original(*args, **kwargs)
    setattr(owner, name, faulty)
sys.argv[0] = "xpmlp"
runpy.run_module("xpmlp", run_name="__main__")
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    """The data, the faulty wrapper and the final weights of an uninterrupted 2-rank run."""
    need("mpi")
    where = tmp_path_factory.mktemp("mpi-faults")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 10)).astype(np.float32)
    np.savez(where / "train.npz", X=X, y=(X @ rng.normal(size=(10, 3))).argmax(axis=1))
    (where / "faulty.py").write_text(FAULTY_RANK_0)
    found = {"data": where / "train.npz", "wrapper": where / "faulty.py"}
    result = _run(_job_command(found, where / "straight"))
    assert result.returncode == 0, result.stderr
    return {**found, "final": checkpoint.load(where / "straight")["params"]}


def _job_command(job: dict, out: Path, *fault) -> list[str]:
    program = [str(job["wrapper"]), *map(str, fault)] if fault else ["-m", "xpmlp"]
    return [MPIEXEC, "-n", "2", sys.executable, *program, "train", "--device", "cpu",
            "--dataset", str(job["data"]), "--hidden", "32,32", "--batch-size", "32",
            "--epochs", str(MPI_EPOCHS), "--dropout", "0.1", "--val-fraction", "0.2",
            "--quiet", "--resume", str(out)]  # fmt: skip


def _mpi_trials() -> list:
    rng = np.random.default_rng(20261205)
    return [
        pytest.param(fault, int(rng.integers(1, MPI_STEPS + 1)), id=f"{fault}-{i}")
        for fault, count in MPI_TRIALS.items()
        for i in range(count)
    ]


@pytest.mark.mpi
@pytest.mark.parametrize(("fault", "at"), _mpi_trials())
def test_a_fault_on_rank_0_ends_the_job_and_resume_is_bit_identical(tmp_path, job, fault, at):
    out = tmp_path / "run"
    result = _run(_job_command(job, out, fault, at))  # a hang fails by the timeout
    assert result.returncode != 0, result.stderr
    if fault != "kill":  # rank 0 says what it met in one line; the job exits 2
        assert result.returncode == 2, result.stderr
        ours = [line for line in result.stderr.splitlines() if line.startswith("xpmlp: error:")]
        assert len(ours) == 1 and "MemoryError: injected on rank 0" in ours[0], result.stderr
        assert "Traceback" not in result.stderr
    assert not [p for p in (out / "checkpoints").glob(".tmp*")] or fault == "kill"
    for _ in range(2):
        resumed = _run(_job_command(job, out))
        if resumed.returncode == 0:
            break
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(checkpoint.load(out)["params"], job["final"])
