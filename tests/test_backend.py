"""Device specs, the errors for unusable ones, and moving arrays between backends."""

from __future__ import annotations

import re
import sys
import types

import array_api_compat
import numpy as np
import pytest
from optional import need

from xpmlp import Backend, ConfigError, DeviceError, get_backend, to_numpy
from xpmlp import backend as backend_module

CUDA_HINT = re.escape('pip install "xpmlp[cuda12]"')


@pytest.fixture
def no_cupy(monkeypatch):
    """Make ``import cupy`` fail, as on a machine without it (even where it is installed)."""
    monkeypatch.setitem(sys.modules, "cupy", None)


def _fake_cupy(monkeypatch, get_device_count):
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cupy", fake)


# ---------------------------------------------------------------------- parsing specs


@pytest.mark.parametrize("spec", ["cpu", "numpy", " CPU ", "Numpy"])
def test_cpu_specs_give_numpy(spec):
    backend = get_backend(spec)
    assert (backend.name, backend.spec, backend.device) == ("numpy", "cpu", None)
    assert backend.xp is array_api_compat.array_namespace(np.zeros(1))
    assert not backend.is_gpu


def test_default_is_cpu():
    assert get_backend().name == "numpy"


@pytest.mark.parametrize(
    ("spec", "device_name", "normalised"),
    [
        ("array-api-strict", "CPU_DEVICE", "array-api-strict:CPU_DEVICE"),
        ("array-api-strict:cpu", "CPU_DEVICE", "array-api-strict:CPU_DEVICE"),
        ("array_api_strict:CPU_DEVICE", "CPU_DEVICE", "array-api-strict:CPU_DEVICE"),
        ("array-api-strict:device1", "device1", "array-api-strict:device1"),
        ("ARRAY-API-STRICT:device2", "device2", "array-api-strict:device2"),
    ],
)
def test_strict_specs(spec, device_name, normalised):
    import array_api_strict

    backend = get_backend(spec)
    assert backend.name == "array_api_strict"
    assert backend.xp is array_api_strict
    assert backend.device == array_api_strict.Device(device_name)
    assert backend.spec == normalised
    assert get_backend(backend.spec) == backend  # the normalised spec selects it again


@pytest.mark.parametrize("spec", ["torch", "torch:cpu", "TORCH:CPU"])
def test_torch_specs(spec):
    torch = need("torch")
    backend = get_backend(spec)
    assert backend.name == "torch"
    assert backend.device == torch.device("cpu")
    assert backend.spec == "torch:cpu"
    assert not backend.is_gpu


def test_backend_passes_through():
    backend = get_backend("array-api-strict:device1")
    assert get_backend(backend) is backend


def test_auto_without_cupy_is_numpy(no_cupy):
    assert get_backend("auto").name == "numpy"


def test_auto_with_cupy_but_no_gpu_is_numpy(monkeypatch):
    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver")

    _fake_cupy(monkeypatch, no_driver)
    assert get_backend("auto").name == "numpy"


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tpu", "unknown device 'tpu'; use cpu, gpu, cuda:N, auto"),
        ("gpu0", "unknown device 'gpu0'"),
        ("", "unknown device ''"),
        ("cuda:x", "bad device 'cuda:x': the part after 'cuda:' must be a GPU number"),
        ("cuda:-1", "bad device 'cuda:-1'"),
        ("array-api-strict:device9", "array-api-strict has no device 'device9'"),
        ("torch:nonsense", "torch has no device 'nonsense'"),
    ],
)
def test_unknown_specs_raise_device_error(spec, message):
    if spec.startswith("torch"):
        need("torch")
    with pytest.raises(DeviceError, match=re.escape(message)):
        get_backend(spec)


@pytest.mark.parametrize("spec", ["gpu", "cuda", "cuda:0", "cuda:1", "GPU"])
def test_gpu_without_cupy_names_the_install_command(no_cupy, spec):
    with pytest.raises(DeviceError, match=f"CuPy is not installed; {CUDA_HINT}"):
        get_backend(spec)


def test_device_error_is_a_domain_error():
    from xpmlp import XpmlpError

    with pytest.raises(XpmlpError):
        get_backend("tpu")
    assert issubclass(DeviceError, RuntimeError)


def test_cupy_without_a_device_names_the_fix(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    _fake_cupy(monkeypatch, no_device)
    with pytest.raises(DeviceError, match=f"sees no CUDA device.*{CUDA_HINT}") as info:
        get_backend("gpu")
    assert "cudaErrorNoDevice" in str(info.value)


def test_cuda_index_beyond_the_machine(monkeypatch):
    _fake_cupy(monkeypatch, lambda: 1)
    with pytest.raises(DeviceError, match=re.escape("no CUDA device cuda:3; this machine has 1")):
        get_backend("cuda:3")


def test_torch_cuda_without_cuda():
    torch = need("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        get_backend("torch:cuda")


# ---------------------------------------------------------------------- dtypes and arrays


def test_dtype_names(backend):
    assert backend.dtype("float32") == backend.xp.float32
    assert backend.dtype("float64") == backend.xp.float64
    with pytest.raises(ConfigError, match=re.escape("dtype must be one of float32, float64")):
        backend.dtype("float16")


def test_to_numpy_round_trip(backend, dtype):
    host = np.linspace(-3.0, 3.0, 12).reshape(3, 4)
    array = backend.asarray(host, dtype)
    assert backend.owns(array)
    assert array.dtype == backend.dtype(dtype)
    if backend.device is not None:
        assert array_api_compat.device(array) == backend.device
    back = to_numpy(array)
    assert isinstance(back, np.ndarray)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, host.astype(dtype))


def test_to_numpy_keeps_integers_and_scalars(backend):
    labels = np.array([3, 0, 2, 9], dtype=np.int64)
    np.testing.assert_array_equal(to_numpy(backend.asarray(labels)), labels)
    with backend.activate():  # raw namespace calls run on the current device
        scalar = backend.xp.sum(backend.asarray(np.array([1.5, 2.0])))
    assert float(to_numpy(scalar)) == 3.5
    assert to_numpy(np.float64(2.5)) == 2.5


def test_asarray_accepts_other_backends_arrays(backend):
    strict = get_backend("array-api-strict:device2")
    source = strict.asarray(np.array([[1.0, 2.0], [3.0, 4.0]]), "float64")
    moved = backend.asarray(source)
    assert backend.owns(moved)
    np.testing.assert_array_equal(to_numpy(moved), [[1.0, 2.0], [3.0, 4.0]])


def test_owns_checks_library_and_device():
    import array_api_strict

    device1 = get_backend("array-api-strict:device1")
    numpy = get_backend("cpu")
    on_default = array_api_strict.asarray([1.0])
    on_device1 = device1.asarray(np.array([1.0]))
    assert device1.owns(on_device1)
    assert not device1.owns(on_default)  # the right library on the wrong device
    assert not device1.owns(np.array([1.0]))
    assert numpy.owns(np.array([1.0]))
    assert not numpy.owns(on_device1)


def test_synchronize_and_device_name_work_everywhere(backend):
    backend.synchronize()  # a no-op on the host, a stream sync on a GPU
    assert isinstance(backend.device_name(), str)


def test_backend_is_a_value():
    assert get_backend("cpu") == Backend("numpy", "cpu", get_backend("cpu").xp, None)
    with pytest.raises(AttributeError):
        get_backend("cpu").spec = "gpu"


def test_cuda_hint_names_both_cuda_extras():
    assert 'pip install "xpmlp[cuda12]"' in backend_module.CUDA_INSTALL_HINT
    assert '"xpmlp[cuda13]"' in backend_module.CUDA_INSTALL_HINT


@pytest.mark.parametrize("backend", ["array-api-strict:device1"], indirect=True)
def test_strict_backend_is_on_a_non_default_device_in_its_strictest_mode(backend):
    # Guards the fixture itself: a forgotten device= or a data-dependent shape must fail.
    import array_api_strict

    assert backend.device != array_api_strict.Device("CPU_DEVICE")
    flags = array_api_strict.get_array_api_strict_flags()
    assert flags["data_dependent_shapes"] is False and flags["boolean_indexing"] is False
    default = array_api_strict.zeros(3)
    on_device = backend.xp.zeros(3, device=backend.device)
    with pytest.raises(ValueError, match="different devices"):
        default + on_device
