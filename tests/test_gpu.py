"""The GPU contract, counted on the CuPy stand-in: a training step copies nothing between host and
device and never waits for the device; everything runs on the model's own device; labels
already on the device are checked with one reduction."""

from __future__ import annotations

import re

import numpy as np
import pytest
from optional import has, reason

from xpmlp import MLP, DataError, DeviceError, Trainer, evaluate, get_backend, to_numpy
from xpmlp import backend as backend_module


@pytest.mark.parametrize("device", ["cuda:0", "cuda:1"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_training_step_neither_copies_nor_syncs(cupy_standin, make_problem, device, dropout):
    X, y = make_problem(n=64, n_in=5, n_out=3)
    model = MLP([5, 16, 16, 3], dropout=dropout, device=device)
    trainer = Trainer(model, batch_size=8, epochs=2, clip_norm=1.0, schedule="cosine")
    X, y = model.as_input(X), model.as_target(y)
    seen = []
    cupy_standin.reset()
    trainer.train_epoch(X, y, on_batch=lambda done, total: seen.append(cupy_standin.snapshot()))
    after_epoch = cupy_standin.snapshot()
    assert len(seen) == 8
    # Before the first step: the epoch's batch order, one host-to-device copy. Then nothing.
    assert (seen[0]["host_to_device"], seen[0]["device_to_host"], seen[0]["syncs"]) == (1, 0, 0)
    for before, after in zip(seen, seen[1:]):
        for counter in ("host_to_device", "device_to_host", "syncs"):
            assert after[counter] == before[counter], (counter, before, after)
    launches = [after["launches"] - before["launches"] for before, after in zip(seen, seen[1:])]
    assert len(set(launches)) == 1 and launches[0] > 0  # the same kernels every step
    # The epoch's metrics: read once, at its end (loss sum and correct count in one array).
    assert after_epoch["device_to_host"] - seen[-1]["device_to_host"] == 1
    assert after_epoch["syncs"] - seen[-1]["syncs"] == 1


def test_evaluation_reads_its_sums_once(cupy_standin, make_problem):
    X, y = make_problem(n=50, n_in=3, n_out=2)
    model = MLP([3, 8, 2], device="cuda:1")
    X, y = model.as_input(X), model.as_target(y)
    cupy_standin.reset()
    evaluate(model, X, y, batch_size=7, checked=True)
    # loss sum, confusion matrix, predictions: three reads for eight chunks.
    assert cupy_standin.device_to_host == 3 and cupy_standin.host_to_device == 0


def test_everything_lives_on_the_models_device(cupy_standin, make_problem):
    X, y = make_problem(n=30, n_in=4, n_out=3)
    model = MLP([4, 8, 3], dropout=0.2, device="cuda:1")
    Trainer(model, batch_size=8, epochs=2).fit(X, y, validation_data=(X, y))
    assert all(value.device.id == 1 for value in model.params.values())
    assert model.predict(X).device.id == 1
    assert all(m.device.id == 1 for m in model.sample_masks(4))


@pytest.mark.parametrize("bad", [3, -1, 1.5])
def test_labels_already_on_the_device_are_checked(cupy_standin, make_problem, bad):
    X, y = make_problem(n=12, n_in=3, n_out=3)
    labels = y.astype(np.float64 if bad == 1.5 else np.int64)
    labels[7] = bad
    model = MLP([3, 4, 3], device="cuda:0")
    device_labels = model.backend.asarray(labels)
    cupy_standin.reset()
    with pytest.raises(DataError, match=f"found {bad} at row 7"):
        Trainer(model, batch_size=4, epochs=1).fit(X, device_labels)
    good = model.backend.asarray(y)
    cupy_standin.reset()
    model.as_target(good)
    assert cupy_standin.syncs == 1  # one reduction read back, not one per label


def test_no_implicit_host_conversion(cupy_standin):
    backend = get_backend("cuda:0")
    array = backend.asarray(np.ones(3))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(array)
    np.testing.assert_array_equal(to_numpy(array), np.ones(3))


def test_an_operation_across_devices_is_refused_as_cupy_does(cupy_standin):
    on_1 = get_backend("cuda:1").asarray(np.ones(3))
    with pytest.raises(
        ValueError, match=r"resides \(1\) is different from the current device \(0\)"
    ):
        on_1 + 1.0  # device 0 is current: the stand-in, like CuPy, will not run it there


# ---------------------------------------------------------------------- real CuPy, no GPU


def _cli(*args, home):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(home)}
    env.pop("CUPY_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-m", "xpmlp", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


REAL_CUPY = pytest.mark.skipif(not has("cupy"), reason=reason("cupy"))


@REAL_CUPY
def test_real_cupy_without_a_usable_gpu_is_one_line_and_auto_falls_back(tmp_path):
    from xpmlp import backend

    if get_backend("auto").name == "cupy":
        pytest.skip("this machine has a working GPU: the -m gpu tests cover it")
    home = tmp_path / "home-is-a-file"  # no ~/.cupy can be made there, even by root
    home.write_text("")
    explicit = _cli("device", "--device", "gpu", home=home)
    assert explicit.returncode == 2
    assert explicit.stderr.startswith("xpmlp: error:")
    assert len(explicit.stderr.strip().splitlines()) == 1 and "Traceback" not in explicit.stderr
    auto = _cli("device", "--device", "auto", home=home)
    assert auto.returncode == 0 and auto.stdout.startswith("cpu:")
    assert auto.stderr.startswith("xpmlp: no GPU (") and auto.stderr.endswith("; using the CPU\n")
    assert len(auto.stderr.splitlines()) == 1 and len(auto.stderr) < 100
    if backend._driver_cuda_version() is None:  # CI: CuPy installed, no NVIDIA driver
        assert explicit.stderr.startswith("xpmlp: error: no NVIDIA GPU or driver found; ")
        assert "insufficient" not in explicit.stderr
        assert auto.stderr == "xpmlp: no GPU (no NVIDIA GPU or driver found); using the CPU\n"


@REAL_CUPY
def test_real_cupy_on_a_driver_older_than_its_cuda_names_the_cupy_to_install(monkeypatch):
    import cupy

    built = cupy.cuda.runtime.runtimeGetVersion() // 1000  # 13 for cupy-cuda13x
    monkeypatch.setattr(cupy.cuda.runtime, "driverGetVersion", lambda: 11040)
    with pytest.raises(DeviceError, match=re.escape(
        f"the NVIDIA driver supports CUDA 11.4, older than the CUDA {built} of this CuPy "
        f"(cupy-cuda{built}x); update the NVIDIA driver"
    )):  # fmt: skip
        get_backend("gpu")


def test_a_gpu_that_cannot_compute_is_one_line_and_auto_falls_back(cupy_standin, monkeypatch,
                                                                     capsys):  # fmt: skip
    # A machine with the driver but without CuPy's runtime libraries lists its GPUs and then fails
    # at the first kernel: the probe finds that when the device is chosen.
    import cupy

    def no_nvrtc(*args, **kwargs):
        raise RuntimeError("NVRTC_ERROR_COMPILATION (6)\nnvrtc: error: cannot open cuda_fp16.h")

    monkeypatch.setattr(cupy.ndarray, "__mul__", no_nvrtc)
    with pytest.raises(DeviceError, match=r"CuPy cannot run on cuda:0 \(RuntimeError: NVRTC_ERROR"):
        get_backend("gpu")
    backend_module._say_once.cache_clear()  # auto says why once per process
    assert get_backend("auto").name == "numpy"
    assert capsys.readouterr().err == "xpmlp: no GPU (CuPy cannot run on cuda:0); using the CPU\n"


def test_a_gpu_that_computes_wrong_results_is_refused_and_auto_falls_back(
    cupy_standin, monkeypatch, capsys
):
    import cupy

    right = cupy.ndarray.__mul__
    monkeypatch.setattr(cupy.ndarray, "__mul__", lambda self, other: right(self, other * 1.5))
    with pytest.raises(DeviceError, match=re.escape(
        "cuda:0 computes wrong results (the probe gave 279.0, expected 196); check the CUDA setup"
    )):  # fmt: skip
        get_backend("gpu")
    backend_module._say_once.cache_clear()
    assert get_backend("auto").name == "numpy"
    assert (
        capsys.readouterr().err == "xpmlp: no GPU (cuda:0 computes wrong results); using the CPU\n"
    )
