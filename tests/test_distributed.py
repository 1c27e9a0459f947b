"""Data-parallel training (xpmlp/train/distributed.py).

In one process: ``grad_shards`` (what W processes compute) agrees with the whole-batch gradient
to 1e-12 in float64. Under ``mpiexec -n 2`` (launched as a subprocess with a timeout; pytest
itself never runs under MPI): bit-identical to ``--grad-shards 2`` in float32 and float64, only
rank 0 writes and prints, a bad input exits 2 on every rank with one line, a killed rank ends the
job, and the resumed run is bit-identical to an uninterrupted one.
"""

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
from optional import MPIEXEC, has, need, reason

from xpmlp import MLP, ConfigError, Trainer
from xpmlp.train import distributed
from xpmlp.train.distributed import shard_bounds

TIMEOUT = 120


@pytest.mark.parametrize(("n", "shards"), [(10, 3), (16, 4), (5, 8), (1, 2), (128, 3)])
def test_shards_cut_a_batch_into_contiguous_slices(n, shards):
    bounds = [shard_bounds(n, shards, i) for i in range(shards)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def _train(shards=1, *, dtype="float64", dropout=0.0, batch_size=16, **settings):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(101, 6)), rng.integers(0, 3, 101)  # the last batch is short
    model = MLP([6, 10, 8, 3], dtype=dtype, seed=1, dropout=dropout)
    history = Trainer(model, batch_size=batch_size, epochs=3, grad_shards=shards, seed=2,
                      **settings).fit(X, y)  # fmt: skip
    return model.state_dict(), [r["train_loss"] for r in history]


@pytest.mark.parametrize("shards", [2, 3, 7])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_sharded_gradients_are_the_batch_gradient_in_float64(shards, dropout):
    whole, whole_loss = _train(dropout=dropout)
    sharded, sharded_loss = _train(shards, dropout=dropout, clip_norm=5.0)
    reference, _ = _train(dropout=dropout, clip_norm=5.0)
    for name, value in reference.items():
        np.testing.assert_allclose(sharded[name], value, rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(sharded_loss, whole_loss, rtol=1e-12)


def test_more_shards_than_rows_leaves_some_empty():
    # batch 16 over 32 shards, and a last batch of 5 rows: most slices are empty.
    sharded, _ = _train(32)
    whole, _ = _train()
    for name, value in whole.items():
        np.testing.assert_allclose(sharded[name], value, rtol=0, atol=1e-12, err_msg=name)


def test_one_process_is_its_own_communicator(monkeypatch):
    for name in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert distributed.communicator("auto").size == 1
    assert distributed.communicator("none").size == 1
    with pytest.raises(ConfigError, match="unknown --distributed 'slurm'"):
        distributed.communicator("slurm")


def test_mpi_without_mpi4py_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(
        ConfigError,
        match=r'mpi4py is not installed: pip install "mpi4py>=4" \(in an xpmlp checkout: pip install ".\[mpi\]"\)',
    ):
        distributed.communicator("mpi")


def test_a_launcher_whose_processes_mpi_cannot_see_is_refused():
    need("mpi")
    # A launcher said 2 processes, but this one initialises MPI alone (a singleton): the
    # mismatch of an mpi4py built against another MPI than the launcher's. In a subprocess:
    # MPI_Init is once per process.
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    env["OMPI_COMM_WORLD_SIZE"] = "2"
    code = "from xpmlp import distributed; distributed.communicator('auto')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=TIMEOUT)  # fmt: skip
    assert result.returncode != 0
    assert "the launcher started 2 processes but MPI sees only this one" in result.stderr


# ---------------------------------------------------------------------- under mpiexec


def needs_mpi(test):
    """Marked ``mpi``; skipped without mpiexec and mpi4py unless CI requires them."""
    return pytest.mark.mpi(pytest.mark.skipif(not has("mpi"), reason=reason("mpi"))(test))


class _Ranks:
    """A communicator of ``size`` processes seen from local rank ``local_rank``."""

    def __init__(self, local_rank: int, size: int = 4):
        self.rank, self.size, self.local_rank, self.local_size = local_rank, size, local_rank, size


@pytest.mark.parametrize(("visible", "local_rank", "device"), [
    (None, 0, 0), (None, 1, 1), (None, 3, 1),  # both GPUs of the node, shared round robin
    ("1", 1, 0),  # srun --gpus-per-task=1: each task sees its own GPU, renumbered cuda:0
    ("1,0", 1, 1), ("0,7,1", 1, 0),  # CUDA reads the list up to an entry naming no GPU
])  # fmt: skip
def test_a_rank_takes_a_visible_gpu_and_opens_no_other(cupy_standin, monkeypatch, visible,
                                                       local_rank, device):  # fmt: skip
    import cupy_standin as standin

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        monkeypatch.setenv("SLURM_LOCALID", str(local_rank))
        monkeypatch.setenv("SLURM_STEP_GPUS", visible)
    for spec in ("gpu", "auto"):
        standin.contexts.clear()
        backend = distributed.backend_for(spec, _Ranks(local_rank))
        assert backend.spec == f"cuda:{device}"
        model = MLP([3, 4, 2], device=backend)
        Trainer(model, batch_size=4, epochs=1).fit(np.ones((8, 3)), np.arange(8) % 2)
        assert standin.contexts == {device}  # none on GPU 0 when another one was chosen


def test_one_process_keeps_its_device_spec(cupy_standin):
    assert distributed.backend_for("cuda:1", _Ranks(0, size=1)).spec == "cuda:1"
    assert distributed.backend_for("cpu", _Ranks(3)).spec == "cpu"
    assert distributed.backend_for("cuda:1", _Ranks(0)).spec == "cuda:1"  # asked by number


@pytest.fixture
def dataset(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    path = tmp_path / "data.npz"
    np.savez(path, X=X, y=y)
    return path


def _train_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", str(dataset), "--hidden", "16,12", "--epochs", "3",
            "--batch-size", "32", "--device", "cpu", "--dropout", "0.2", "--quiet",
            "--out", str(out), *extra]  # fmt: skip


def _xpmlp(args, *, ranks: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "xpmlp", *args]
    if ranks is not None:
        command = [MPIEXEC, "-n", str(ranks), *command]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                          **kwargs)  # fmt: skip


def _final_state(run: Path) -> dict:
    newest = sorted((run / "checkpoints").glob("*.npz"))[-1]
    with np.load(newest) as saved:
        return {k: saved[k] for k in saved.files if k.startswith(("params/", "optimizer/"))}


def _same_run(a: Path, b: Path) -> None:
    first, second = _final_state(a), _final_state(b)
    assert first.keys() == second.keys() and first
    for name, value in first.items():
        np.testing.assert_array_equal(value, second[name], err_msg=name)
    losses = [[line.split('"train_loss": ')[1].split(",")[0] for line in (run / "metrics.jsonl")
               .read_text().splitlines()] for run in (a, b)]  # fmt: skip
    assert losses[0] == losses[1]


@pytest.mark.slow
@needs_mpi
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_two_ranks_are_bit_identical_to_two_shards_in_one_process(tmp_path, dataset, dtype):
    mpi = _xpmlp(_train_args(dataset, tmp_path / "mpi", "--dtype", dtype), ranks=2)
    assert mpi.returncode == 0, mpi.stderr
    one = _xpmlp(_train_args(dataset, tmp_path / "one", "--dtype", dtype, "--grad-shards", "2"))
    assert one.returncode == 0, one.stderr
    _same_run(tmp_path / "mpi", tmp_path / "one")
    # Only rank 0 writes and reports: one summary line, and a second writer would have failed
    # on the run directory's lock.
    assert mpi.stdout.count("done: epoch 3") == 1, mpi.stdout
    assert sorted(p.name for p in (tmp_path / "mpi").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    processes = [json.loads((tmp_path / run / "config.json").read_text())["processes"]
                 for run in ("mpi", "one")]  # fmt: skip
    assert processes == [2, 1]


@pytest.mark.slow
@needs_mpi
def test_allreduce_agrees_with_the_ordered_sum(tmp_path, dataset):
    result = _xpmlp(_train_args(dataset, tmp_path / "ar", "--dtype", "float64", "--reduce",
                                "allreduce"), ranks=2)  # fmt: skip
    assert result.returncode == 0, result.stderr
    ordered = _xpmlp(_train_args(dataset, tmp_path / "or", "--dtype", "float64", "--grad-shards",
                                 "2"))  # fmt: skip
    assert ordered.returncode == 0
    for name, value in _final_state(tmp_path / "ar").items():
        np.testing.assert_allclose(value, _final_state(tmp_path / "or")[name], atol=1e-12)


@pytest.mark.slow
@needs_mpi
def test_a_bad_input_exits_2_on_every_rank_with_one_line(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((4, 3)), y=np.array([0, 1, np.nan, 1]))
    script = (f"{sys.executable} -m xpmlp train --dataset {bad} --out {tmp_path / 'run'} "
              "--device cpu --quiet; echo rank-exit-$?")  # fmt: skip
    result = subprocess.run([MPIEXEC, "-n", "2", "sh", "-c", script], capture_output=True,
                            text=True, timeout=TIMEOUT)  # fmt: skip
    assert result.stdout.split() == ["rank-exit-2", "rank-exit-2"], result
    errors = [line for line in result.stderr.splitlines() if line.startswith("xpmlp: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@needs_mpi
def test_resuming_with_another_number_of_processes(tmp_path, dataset):
    run = tmp_path / "run"
    assert _xpmlp(_train_args(dataset, run), ranks=2).returncode == 0
    shutil.copytree(run, tmp_path / "copy")
    # One process computes the two shards itself: the same run, and it says so.
    alone = _xpmlp(["train", "--resume", str(run), "--epochs", "4", "--quiet"])
    assert alone.returncode == 0, alone.stderr
    assert "trained by 2 processes; this job has 1" in alone.stderr
    pair = _xpmlp(["train", "--resume", str(tmp_path / "copy"), "--epochs", "4", "--quiet"],
                  ranks=2)  # fmt: skip
    assert pair.returncode == 0, pair.stderr
    _same_run(run, tmp_path / "copy")
    # Three processes cannot split the work of two.
    three = _xpmlp(["train", "--resume", str(run), "--epochs", "5", "--quiet"], ranks=3)
    assert three.returncode == 2
    assert "trained with 2 gradient shard(s) (processes) and this job has 3" in three.stderr


@pytest.mark.slow
@needs_mpi
@pytest.mark.parametrize("how", ["sigkill-rank-1", "sigterm-job"])
def test_a_killed_job_ends_everywhere_and_the_resumed_run_is_exact(tmp_path, how):
    big = tmp_path / "big.npz"
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20000, 8)).astype(np.float32)
    np.savez(big, X=X, y=(X[:, 0] > 0).astype(np.int64))
    args = _train_args(big, tmp_path / "killed", "--epochs", "6", "--hidden", "64,64")
    pids = tmp_path / "pids"
    pids.mkdir()
    script = f"echo $$ > {pids}/$PMI_RANK; exec {sys.executable} -m xpmlp {' '.join(args)}"
    job = subprocess.Popen([MPIEXEC, "-n", "2", "sh", "-c", script], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + TIMEOUT
    while not list(checkpoints.glob("*0002.npz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    if how == "sigkill-rank-1":
        os.kill(int((pids / "1").read_text()), signal.SIGKILL)
    else:  # mpiexec forwards it; every rank stops at the same step and rank 0 saves
        job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=30)  # the whole job ends: no rank waits for a dead one
    if how == "sigterm-job":
        assert job.returncode == 128 + signal.SIGTERM
        assert err.count("xpmlp: interrupted; saved epoch") == 1, err
    assert job.returncode != 0
    resumed = _xpmlp(["train", "--resume", str(tmp_path / "killed"), "--quiet"], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    whole = _xpmlp(_train_args(big, tmp_path / "whole", "--epochs", "6", "--hidden", "64,64"),
                   ranks=2)  # fmt: skip
    assert whole.returncode == 0
    _same_run(tmp_path / "killed", tmp_path / "whole")


# ---------------------------------------------------------------------- errors reach every rank


class _OneRankOfTwo:
    """One rank of a two-process job, alone: the other rank's part of every exchange is
    ``peer`` (what it would send), and its stop flag ``peer_stop``."""

    size, local_rank, local_size = 2, 0, 1

    def __init__(self, rank, peer=None, peer_stop=0):
        self.rank, self.peer, self.peer_stop = rank, peer, peer_stop

    def allgather(self, obj):
        return [obj, self.peer] if self.rank == 0 else [self.peer, obj]

    def broadcast(self, obj):
        return obj if self.rank == 0 else self.peer

    def reduce_gradients(self, grad, stop):
        return grad, max(stop, self.peer_stop)


def test_a_failure_at_start_on_another_rank_is_raised_here_and_named():
    failed = distributed.JobError("on rank 1: no such file: data.npz")
    comm = _OneRankOfTwo(0, peer=(failed, None))
    with pytest.raises(distributed.JobError, match="^on rank 1: no such file: data.npz$"):
        distributed.together(comm, lambda: "ready", facts=lambda ready: {})


def test_ranks_that_differ_all_refuse_naming_the_difference():
    comm = _OneRankOfTwo(1, peer=(None, {"--lr": 0.01, "--epochs": 3}))
    with pytest.raises(ConfigError, match=r"^the processes of this job differ: --lr is 0.1 on "
                       r"rank 1 but 0.01 on rank 0; start every process with the same command"):  # fmt: skip
        distributed.together(comm, lambda: 1, facts=lambda _: {"--lr": 0.1, "--epochs": 3})
    comm = _OneRankOfTwo(0, peer=(None, {"--lr": 0.1}))
    with pytest.raises(ConfigError, match="--lr is 0.1 on rank 1 but not given on rank 0"):
        distributed.together(comm, lambda: 1, facts=lambda _: {})
    assert distributed.together(_OneRankOfTwo(0, peer=(None, {"a": 1})), lambda: 7,
                                facts=lambda _: {"a": 1}) == 7  # fmt: skip


def test_a_failed_write_on_rank_0_is_raised_on_every_rank():
    def full_disk():
        raise OSError(27, "File too large")

    with pytest.raises(
        distributed.JobError, match=r"^file too large; .*ulimit -f"
    ) as raised:  # in words
        distributed.on_root(_OneRankOfTwo(0), full_disk)
    comm = _OneRankOfTwo(1, peer=("error", raised.value))
    with pytest.raises(distributed.JobError, match="file too large"):
        distributed.on_root(comm, lambda: pytest.fail("rank 1 does not write"))


def test_a_gradient_that_fails_on_one_rank_stops_every_rank_at_that_step():
    def gradient():
        raise MemoryError("cannot allocate 8 GiB")

    # Rank 1 fails: it sends zeros and the FAILED flag, then its error; rank 0 raises that.
    comm = _OneRankOfTwo(1, peer=None)
    with pytest.raises(distributed.JobError, match="^on rank 1: MemoryError: cannot allocate"):
        distributed.reduce_step(comm, gradient, 0, size=3, dtype="float32")
    sent = distributed.JobError("on rank 1: MemoryError: cannot allocate 8 GiB")
    comm = _OneRankOfTwo(0, peer=sent, peer_stop=distributed.FAILED)
    with pytest.raises(distributed.JobError, match="^on rank 1: MemoryError"):
        distributed.reduce_step(comm, lambda: np.ones(3), 0, size=3, dtype="float64")
    # Without a failure the stop flag (a signal) travels as before.
    comm = _OneRankOfTwo(0, peer_stop=15)
    total, stop = distributed.reduce_step(comm, lambda: np.ones(3), 0, size=3, dtype="float64")
    assert stop == 15 and total.tolist() == [1, 1, 1]


@pytest.mark.slow
@needs_mpi
def test_ranks_started_with_different_flags_all_refuse_in_one_line(tmp_path, dataset):
    args = " ".join(_train_args(dataset, tmp_path / "run"))
    script = (f'if [ "$PMI_RANK" = 1 ]; then lr="--lr 0.1"; fi; {sys.executable} -m xpmlp {args} '
              "$lr; echo rank-exit-$?")  # fmt: skip
    result = subprocess.run([MPIEXEC, "-n", "2", "sh", "-c", script], capture_output=True,
                            text=True, timeout=TIMEOUT)  # fmt: skip
    assert result.stdout.split() == ["rank-exit-2", "rank-exit-2"], result
    assert result.stderr == ("xpmlp: error: the processes of this job differ: --lr is 0.1 on rank "
                             "1 but not given on rank 0; start every process with the same "
                             "command and data\n")  # fmt: skip
    assert not (tmp_path / "run").exists()  # refused before anything is written


def _limited_rank_0(limit: int) -> str:
    """A script that runs xpmlp with rank 0's files limited to ``limit`` bytes (`ulimit -f`),
    set once MPI has started: its shared memory is a file too."""
    return ("import resource, runpy, sys\n"
            "from mpi4py import MPI\n"
            "if MPI.COMM_WORLD.Get_rank() == 0:\n"
            f"    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "sys.argv[0] = 'xpmlp'\n"
            "runpy.run_module('xpmlp', run_name='__main__')\n")  # fmt: skip


@pytest.mark.slow
@needs_mpi
def test_a_full_disk_on_rank_0_mid_run_ends_the_job_with_one_line(tmp_path, dataset):
    run = tmp_path / "run"
    assert _xpmlp(_train_args(dataset, run, "--epochs", "1"), ranks=2).returncode == 0
    saved = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    wrapper = tmp_path / "limited.py"
    wrapper.write_text(_limited_rank_0(max(map(len, saved.values())) // 2))
    # Resumed for 2 more epochs: rank 0 fails writing the checkpoint of epoch 2, after a whole
    # epoch of exchanges with rank 1, which would otherwise wait for it in the next step.
    command = [MPIEXEC, "-n", "2", sys.executable, str(wrapper), "train", "--resume", str(run),
               "--epochs", "3", "--quiet", "--device", "cpu"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2, result
    (line,) = result.stderr.splitlines()  # one line, from rank 0 only
    assert line.startswith("xpmlp: error: ") and "0002.npz: file too large" in line, line
    assert "[Errno" not in line and "ulimit -f" in line, line
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == saved
    resumed = _xpmlp(["train", "--resume", str(run), "--epochs", "3", "--quiet", "--device", "cpu"],
                     ranks=2)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
