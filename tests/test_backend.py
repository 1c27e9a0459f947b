"""Device specs, the errors for unusable ones, and moving arrays between backends."""

from __future__ import annotations

import re
import sys
import types

import array_api_compat
import numpy as np
import pytest
from optional import need

from xpmlp import Backend, ConfigError, DeviceError, get_backend, machine, to_numpy
from xpmlp import backend as backend_module

CUPY_12 = 'pip install "cupy-cuda12x[ctk]>=14"'
CUPY_13 = 'pip install "cupy-cuda13x[ctk]>=14"'
NO_DRIVER = "no NVIDIA GPU or driver found; the NVIDIA driver's CUDA library (libcuda) cannot be"


@pytest.fixture
def no_cupy(monkeypatch):
    """Make ``import cupy`` fail, as on a machine without it (even where it is installed)."""
    monkeypatch.setitem(sys.modules, "cupy", None)


@pytest.fixture(autouse=True)
def fresh_warnings():
    """``auto`` says why it falls back once per process: each test starts a fresh one."""
    backend_module._say_once.cache_clear()
    yield
    backend_module._say_once.cache_clear()


def _driver(monkeypatch, version: int | None):
    """Fake the NVIDIA driver's library: one supporting CUDA ``version`` (12080 for 12.8), or
    (None) none installed, as ``ctypes.CDLL("libcuda.so.1")`` fails then."""

    def load():
        if version is None:
            raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
        return types.SimpleNamespace(cuDriverGetVersion=report)

    def report(pointer):
        pointer._obj.value = version
        return 0  # CUDA_SUCCESS

    monkeypatch.setattr(backend_module, "_driver_library", load)


def _fake_cupy(monkeypatch, get_device_count, *, driver=13000, runtime=13020):
    """A CuPy whose CUDA runtime (version ``runtime``) sees a driver supporting CUDA ``driver``
    (0: no driver, as CUDA's runtime reports it)."""
    runtime_module = types.SimpleNamespace(
        getDeviceCount=get_device_count,
        driverGetVersion=lambda: driver,
        runtimeGetVersion=lambda: runtime,
    )
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=runtime_module)
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


def test_auto_with_cupy_but_no_gpu_is_numpy_saying_why_once_in_a_short_line(monkeypatch, capsys):
    _fake_cupy(monkeypatch, lambda: 0, driver=0)
    assert get_backend("auto").name == "numpy"
    assert get_backend("auto").name == "numpy"
    err = capsys.readouterr().err
    assert err == "xpmlp: no GPU (no NVIDIA GPU or driver found); using the CPU\n"
    assert len(err) < 100


def test_auto_without_cupy_is_numpy_and_says_nothing(no_cupy, monkeypatch, capsys):
    _driver(monkeypatch, 13000)  # even with a driver: no CuPy means a CPU install
    assert get_backend("auto").name == "numpy"
    assert capsys.readouterr().err == ""


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


# Each fault of a GPU spec gets its own message and fix: CuPy missing, no driver, a driver with
# no GPU, a driver older than CuPy's CUDA, a GPU number beyond the machine's.


@pytest.mark.parametrize("spec", ["gpu", "cuda", "cuda:0", "cuda:1", "GPU"])
@pytest.mark.parametrize(
    ("driver", "fix"),
    [
        (12080, f'install it with {CUPY_12}; in an xpmlp checkout, pip install ".[cuda12]"'),
        (13000, f'install it with {CUPY_13}; in an xpmlp checkout, pip install ".[cuda13]"'),
        (14000, f"install it with {CUPY_13};"),  # a newer driver runs the newest CuPy
        (0, f"install it with {CUPY_12} or {CUPY_13} (the CUDA major nvidia-smi shows); in an "
            'xpmlp checkout, pip install ".[cuda12]" or ".[cuda13]" (add -e if editable)'),
        (11040, "the NVIDIA driver supports CUDA 11.4 and CuPy needs 12 or newer: update the "
                f"driver, then {CUPY_12} or {CUPY_13}"),
    ],
)  # fmt: skip
def test_gpu_without_cupy_names_the_install_command_for_the_driver(
    no_cupy, monkeypatch, spec, driver, fix
):
    _driver(monkeypatch, driver)
    with pytest.raises(DeviceError, match=re.escape(f"CuPy is not installed; {fix}")):
        get_backend(spec)


def test_gpu_without_cupy_or_a_driver_says_there_is_no_gpu(no_cupy, monkeypatch):
    _driver(monkeypatch, None)  # installing CuPy would not help: that is not the fault
    with pytest.raises(DeviceError, match=re.escape(NO_DRIVER)) as info:
        get_backend("gpu")
    assert "use the cpu device" in str(info.value) and "pip install" not in str(info.value)


def test_the_driver_version_is_read_from_the_driver_library(monkeypatch):
    _driver(monkeypatch, 12080)
    assert backend_module._driver_cuda_version() == 12080
    _driver(monkeypatch, None)
    assert backend_module._driver_cuda_version() is None


def test_device_error_is_a_domain_error():
    from xpmlp import XpmlpError

    with pytest.raises(XpmlpError):
        get_backend("tpu")
    assert issubclass(DeviceError, RuntimeError)


def test_cupy_without_a_driver_says_there_is_no_gpu(monkeypatch):
    def insufficient():  # what CuPy's CUDA runtime raises when it finds no driver at all
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    _fake_cupy(monkeypatch, insufficient, driver=0)
    with pytest.raises(DeviceError, match=re.escape(NO_DRIVER)) as info:
        get_backend("cuda:0")
    assert "insufficient" not in str(info.value)


@pytest.mark.parametrize("no_device", ["count 0", "cudaErrorNoDevice"])
def test_a_driver_without_a_gpu_says_so(monkeypatch, no_device):
    def count():
        if no_device == "count 0":
            return 0
        error = RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        error.status = 100
        raise error

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_cupy(monkeypatch, count)
    with pytest.raises(DeviceError, match=re.escape(
        "the NVIDIA driver is installed but sees no GPU; check that nvidia-smi lists one"
    )):  # fmt: skip
        get_backend("gpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError, match="check that CUDA_VISIBLE_DEVICES='' does not hide it"):
        get_backend("gpu")


@pytest.mark.parametrize(
    ("driver", "runtime", "message"),
    [
        (12080, 13020, "the NVIDIA driver supports CUDA 12.8, older than the CUDA 13 of this CuPy "
                       f"(cupy-cuda13x); pip uninstall cupy-cuda13x, then {CUPY_12}; in an xpmlp "
                       'checkout, pip install ".[cuda12]" (add -e if editable); or update the '
                       "NVIDIA driver"),
        (11040, 12060, "the NVIDIA driver supports CUDA 11.4, older than the CUDA 12 of this CuPy "
                       "(cupy-cuda12x); update the NVIDIA driver (CuPy needs CUDA 12 or newer)"),
    ],
)  # fmt: skip
def test_a_driver_older_than_cupys_cuda_names_the_cupy_to_install(
    monkeypatch, driver, runtime, message
):
    _fake_cupy(monkeypatch, lambda: 1, driver=driver, runtime=runtime)
    with pytest.raises(DeviceError, match=re.escape(message)):
        get_backend("gpu")


def test_a_newer_minor_of_the_same_cuda_major_is_not_refused(monkeypatch):
    _fake_cupy(monkeypatch, lambda: 1, driver=13000, runtime=13020)  # minor-version compatible
    with pytest.raises(DeviceError, match=re.escape("no CUDA device cuda:3; this machine has 1")):
        get_backend("cuda:3")  # past the version check, to the device count


def test_cupy_that_cannot_reach_the_gpu_says_what_cuda_said(monkeypatch):
    def unknown():
        raise RuntimeError("cudaErrorUnknown: unknown error")

    _fake_cupy(monkeypatch, unknown)
    with pytest.raises(DeviceError, match=re.escape(
        "CuPy cannot reach the GPU (RuntimeError: cudaErrorUnknown: unknown error); check the "
        "NVIDIA driver with nvidia-smi"
    )):  # fmt: skip
        get_backend("gpu")


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


def test_cupy_install_hint_matches_the_cuda_extras_of_pyproject():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for major in backend_module.CUDA_MAJORS:
        assert extras[f"cuda{major}"] == [backend_module.cupy_package(major)]
        assert f'pip install "{backend_module.cupy_package(major)}"' in (
            backend_module.CUDA_INSTALL_HINT
        )
        assert f'".[cuda{major}]"' in backend_module.CUDA_INSTALL_HINT
    assert "xpmlp[" not in backend_module.CUDA_INSTALL_HINT  # xpmlp is not on PyPI


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


# ---------------------------------------------------------------------- memory limits


def test_the_smallest_memory_limit_wins_and_is_named(tmp_path, monkeypatch):
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("max\n")  # cgroup v2 without a limit
    v1.write_text(f"{2**30}\n")
    monkeypatch.setattr(machine, "CGROUP_MEMORY_FILES", (str(v2), str(v1)))
    size, name = machine.memory_limit()
    assert size == 2**30 and name == f"the cgroup memory limit ({v1})"
    v2.write_text(f"{2**29}\n")
    assert machine.memory_limit() == (2**29, f"the cgroup memory limit ({v2})")


def test_without_a_cgroup_limit_physical_memory_or_rlimit_as_is_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "CGROUP_MEMORY_FILES", (str(tmp_path / "absent"),))
    size, name = machine.memory_limit()
    assert size <= machine.host_memory_bytes()
    assert name in ("this machine's memory", "the address-space limit RLIMIT_AS (ulimit -v)")


def test_a_large_network_is_refused_naming_the_cgroup_limit(tmp_path, monkeypatch):
    from xpmlp.data.inputs import check_layer_sizes

    (tmp_path / "memory.max").write_text(f"{2**30}\n")
    monkeypatch.setattr(machine, "CGROUP_MEMORY_FILES", (str(tmp_path / "memory.max"),))
    assert check_layer_sizes([784, 300, 10]) == (784, 300, 10)
    with pytest.raises(ConfigError, match=r"the cgroup memory limit \(.*memory.max\) is 1.0 GiB"):
        check_layer_sizes([784, 10000, 10000, 10])
