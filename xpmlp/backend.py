"""Where the device is chosen: the one module that knows about NumPy, CuPy, torch and array-api-strict.

Everything else receives a :class:`Backend` and computes with ``backend.xp`` (an Array API
namespace from array-api-compat) on ``backend.device``.

Device specs
------------
``cpu``                       NumPy on the host.
``gpu``, ``cuda``, ``cuda:N``  CuPy on CUDA device N (0 by default).
``auto``                      CuPy when it is installed and sees a CUDA device, else NumPy.
``array-api-strict[:NAME]``   array-api-strict, for testing; NAME picks one of its devices
                              (``CPU_DEVICE``, ``device1``, ``device2``).
``torch[:DEVICE]``            PyTorch through array-api-compat, for testing (``torch``, ``torch:cuda``).

Imports from: xpmlp.errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from .errors import ConfigError, DeviceError, GpuUnavailableError

DTYPES = ("float32", "float64")
CUDA_MAJORS = (12, 13)  # the CuPy packages of pyproject.toml's cuda12 and cuda13 extras
_CUDA_ERROR_NO_DEVICE = 100  # cudaErrorNoDevice


def cupy_package(cuda_major: int) -> str:
    """The pip requirement of the CuPy built for ``cuda_major`` (with its CUDA runtime libraries)."""
    return f"cupy-cuda{cuda_major}x[ctk]>=14"


def cupy_install_hint(cuda_major: int | None = None) -> str:
    """How to install CuPy, from an installed xpmlp and from a checkout, for one CUDA major or
    (None) for either."""
    majors = [cuda_major] if cuda_major else list(CUDA_MAJORS)
    wheels = " or ".join(f'pip install "{cupy_package(major)}"' for major in majors)
    extras = " or ".join(f'".[cuda{major}]"' for major in majors)
    which = "" if cuda_major else " (the CUDA major nvidia-smi shows)"
    return f"{wheels}{which}; in an xpmlp checkout, pip install {extras} (add -e if editable)"


CUDA_INSTALL_HINT = cupy_install_hint()


@dataclass(frozen=True)
class Backend:
    """An array namespace and a device on it.

    Attributes
    ----------
    name : str
        ``numpy``, ``cupy``, ``array_api_strict`` or ``torch``.
    spec : str
        The normalised device spec that selects this backend again (``cpu``, ``cuda:0``, ...).
    xp : module
        The Array API namespace.
    device : object
        The device object arrays are created on (``None`` means the namespace's default).
    """

    name: str
    spec: str
    xp: Any
    device: Any

    @property
    def is_gpu(self) -> bool:
        return self.spec.startswith("cuda") or self.spec.startswith("torch:cuda")

    @property
    def lib(self):
        """NumPy or CuPy itself, for ``out=`` ufuncs and compiled kernels; None for other
        namespaces (see :func:`ufunc_module`)."""
        return ufunc_module(self.xp)

    def dtype(self, name: str):
        """Return the namespace's floating dtype for ``"float32"`` or ``"float64"``."""
        if name not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {name!r}")
        return getattr(self.xp, name)

    def asarray(self, host, dtype=None, *, copy: bool | None = None):
        """Put a host array (or an array of any backend) on this backend's device.

        ``copy=True`` guarantees a new array even where NumPy could share the host's memory
        (parameters must never alias a caller's arrays: optimizers update them in place).
        """
        if dtype is not None and isinstance(dtype, str):
            dtype = self.dtype(dtype)
        if not isinstance(host, np.ndarray):
            host = to_numpy(host)
        return self.xp.asarray(host, dtype=dtype, device=self.device, copy=copy)

    def owns(self, array) -> bool:
        """Whether ``array`` already belongs to this namespace and sits on this device."""
        if _library_of(array) != self.name:
            return False
        return self.device is None or array_api_compat.device(array) == self.device

    def probe(self) -> None:
        """Run one elementwise kernel and one matmul here and read the result back: a CUDA setup
        that lists a GPU but cannot run on it (no runtime libraries, no NVRTC, a driver too old)
        fails here, in one line that names the fix, instead of at the first training step."""
        xp = self.xp
        try:
            with self.activate():
                x = xp.reshape(xp.arange(6, dtype=xp.float32), (2, 3))
                y = x * 2.0 + 1.0  # compiles an elementwise kernel
                total = float(xp.sum(y @ xp.matrix_transpose(x)))  # cuBLAS
        except Exception as exc:
            raise GpuUnavailableError(
                f"CuPy cannot run on {self.spec}",
                f"install the CUDA runtime libraries CuPy needs: {CUDA_INSTALL_HINT}",
                detail=_first_line(exc),
            ) from exc
        if total != 196.0:  # sum of (2x + 1) @ x.T for x = [[0, 1, 2], [3, 4, 5]]
            raise GpuUnavailableError(
                f"{self.spec} computes wrong results",
                "check the CUDA setup (driver, CuPy, its CUDA libraries)",
                detail=f"the probe gave {total}, expected 196",
            )

    def activate(self):
        """A context in which this backend's device is the current one (CuPy creates arrays and
        launches kernels on the current device, whatever ``device=`` says)."""
        return self.device if self.name == "cupy" else contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait until queued device work is done (a no-op on the CPU)."""
        if self.name == "cupy":
            with self.device:  # the compat namespace has no ``cuda``: CuPy's own module has
                importlib.import_module("cupy").cuda.get_current_stream().synchronize()
        elif self.name == "torch" and self.is_gpu:
            import torch

            torch.cuda.synchronize()

    def device_name(self) -> str:
        """A human-readable name of the hardware, for logs and config files."""
        if self.name == "cupy":
            import cupy

            props = cupy.cuda.runtime.getDeviceProperties(self.device.id)
            return props["name"].decode()
        if self.name == "torch" and self.is_gpu:
            import torch

            return torch.cuda.get_device_name(self.device)
        return f"{self.name} {self.device}" if self.device is not None else "cpu"


_active = threading.local()  # the backend whose device an on_device call has made current


def on_device(method):
    """Run a method of an object with a ``backend`` attribute with that backend's device current.

    Calls nested inside one (the training step inside an epoch) switch nothing: the device is
    made current once, by the outermost call.
    """

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        backend = self.backend
        outer = getattr(_active, "backend", None)
        if outer is backend:
            return method(self, *args, **kwargs)
        _active.backend = backend
        try:
            with backend.activate():
                return method(self, *args, **kwargs)
        finally:
            _active.backend = outer

    return run


def ufunc_module(xp):
    """NumPy or CuPy, when ``xp`` is (a wrapper of) one of them, for the ``out=`` fast paths.

    None for every other namespace, which then takes the portable path.
    """
    if array_api_compat.is_numpy_namespace(xp):
        return np
    if array_api_compat.is_cupy_namespace(xp):
        return importlib.import_module("cupy")
    return None


def device_spec_of(array) -> str | None:
    """The device spec (see :func:`get_backend`) of an array that is not NumPy's, or None."""
    library = _library_of(array)
    if library == "cupy":
        return f"cuda:{array.device.id}"
    if library == "torch":
        return f"torch:{array.device}"
    if library == "array_api_strict":
        return f"array-api-strict:{str(array.device).split(chr(39))[1]}"
    return None


def _library_of(array) -> str:
    module = type(array).__module__.split(".")[0]
    return module if module in ("cupy", "torch", "array_api_strict") else "numpy"


def to_numpy(x) -> np.ndarray:
    """Copy an array of any supported backend to a host NumPy array."""
    if isinstance(x, np.ndarray | np.generic):
        return np.asarray(x)
    module = _library_of(x)
    if module == "cupy":
        return x.get()
    if module == "torch":
        return x.detach().cpu().numpy()
    if module == "array_api_strict":
        import array_api_strict

        return np.asarray(array_api_strict.asarray(x, device=array_api_strict.Device("CPU_DEVICE")))
    return np.asarray(x)


def get_backend(spec: str | Backend = "cpu") -> Backend:
    """Resolve a device spec (see the module docstring) to a :class:`Backend`.

    Raises
    ------
    DeviceError
        If the spec is unknown, or names a GPU that is not available; the message names the fix.
    """
    if isinstance(spec, Backend):
        return spec
    spec = str(spec).strip().lower()
    if spec in ("cpu", "numpy"):
        import array_api_compat.numpy as xp

        return Backend("numpy", "cpu", xp, None)
    if spec == "auto":
        return _auto_backend()
    if spec in ("gpu", "cuda") or spec.startswith("cuda:"):
        return _cupy_backend(_cuda_index(spec))
    if spec.startswith("array-api-strict") or spec.startswith("array_api_strict"):
        return _strict_backend(spec)
    if spec == "torch" or spec.startswith("torch:"):
        return _torch_backend(spec)
    raise DeviceError(
        f"unknown device {spec!r}; use cpu, gpu, cuda:N, auto, array-api-strict[:DEVICE] or torch"
    )


def local_backend(spec: str | Backend, local_rank: int) -> Backend:
    """The backend of one of a distributed job's processes on a machine, ``local_rank`` among them.

    ``gpu``, ``cuda`` and ``auto`` take visible GPU ``local_rank % count``. CUDA counts the GPUs
    that ``CUDA_VISIBLE_DEVICES`` and Slurm's binding leave this process, without creating a
    context (``srun --gpus-per-task=1`` leaves each task one: every rank takes its ``cuda:0``).
    That GPU becomes the process's current device before anything runs, so no other GPU gets a
    context (setting a device creates one, and CuPy's ``with Device(i)`` sets the previous device
    again on exit, device 0 in a fresh process). Any other spec is :func:`get_backend`'s.
    """
    name = spec if isinstance(spec, Backend) else str(spec).strip().lower()
    if name == "auto":
        return _auto_backend(local_rank)
    if name in ("gpu", "cuda"):
        return _cupy_backend(local_rank, by_rank=True)
    return get_backend(spec)


def _cuda_index(spec: str) -> int:
    if ":" not in spec:
        return 0
    index = spec.split(":", 1)[1]
    if not index.isdigit():
        raise DeviceError(f"bad device {spec!r}: the part after 'cuda:' must be a GPU number")
    return int(index)


def _cupy_backend(index: int, *, by_rank: bool = False) -> Backend:
    """CuPy on GPU ``index``, probed; ``by_rank``: on GPU ``index % count``, made current."""
    cupy = _import_cupy()
    _check_driver(cupy.cuda.runtime)
    count = _device_count(cupy.cuda.runtime)
    if by_rank:
        index %= count
        cupy.cuda.Device(index).use()
    elif index >= count:
        raise DeviceError(f"no CUDA device cuda:{index}; this machine has {count}")
    import array_api_compat.cupy as xp

    backend = Backend("cupy", f"cuda:{index}", xp, cupy.cuda.Device(index))
    backend.probe()
    return backend


def _import_cupy():
    """CuPy, or the fault that keeps it from a GPU: with no NVIDIA driver that is the fault
    whatever else is wrong, as installing or repairing CuPy would not help."""
    try:
        return importlib.import_module("cupy")
    except Exception as exc:
        driver = _driver_cuda_version()
        if driver is None:
            raise _no_driver() from exc
        if isinstance(exc, ImportError):
            raise GpuUnavailableError("CuPy is not installed", _install_for(driver)) from exc
        raise GpuUnavailableError(  # e.g. a HOME it cannot write its kernel cache into
            "CuPy fails to import",
            "if it cannot write its kernel cache, set CUPY_CACHE_DIR to a writable directory",
            detail=_first_line(exc),
        ) from exc


def _driver_library() -> ctypes.CDLL:
    """The NVIDIA driver's CUDA library; OSError where it is not installed."""
    return ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")


def _driver_cuda_version() -> int | None:
    """The CUDA version the NVIDIA driver supports (12080 for 12.8), asked without CuPy: None
    where no driver is installed, 0 where it does not say."""
    try:
        library = _driver_library()
    except OSError:
        return None
    version = ctypes.c_int(0)
    return version.value if library.cuDriverGetVersion(ctypes.byref(version)) == 0 else 0


def _no_driver() -> GpuUnavailableError:
    return GpuUnavailableError(
        "no NVIDIA GPU or driver found",
        "the NVIDIA driver's CUDA library (libcuda) cannot be loaded; use the cpu device, or "
        "install the NVIDIA driver if this machine has an NVIDIA GPU",
    )


def _install_for(driver: int) -> str:
    """How to install the CuPy that runs on a driver supporting CUDA ``driver`` (0: unknown)."""
    major = driver // 1000
    if not driver:
        return f"install it with {CUDA_INSTALL_HINT}"
    if major < min(CUDA_MAJORS):
        return (
            f"the NVIDIA driver supports CUDA {_version(driver)} and CuPy needs "
            f"{min(CUDA_MAJORS)} or newer: update the driver, then {CUDA_INSTALL_HINT}"
        )
    return f"install it with {cupy_install_hint(min(major, max(CUDA_MAJORS)))}"


def _version(cuda: int) -> str:
    return f"{cuda // 1000}.{cuda % 1000 // 10}"


def _check_driver(runtime) -> None:
    """Refuse a missing driver (CUDA's runtime reports version 0 then) or one older than the
    CUDA major CuPy was built for (a newer minor of the same major runs)."""
    try:
        driver, built = runtime.driverGetVersion(), runtime.runtimeGetVersion()
    except Exception:  # the device count below reports the fault
        return
    if driver == 0:
        raise _no_driver()
    have, need = driver // 1000, built // 1000
    if have >= need:
        return
    fix = "update the NVIDIA driver"
    if have in CUDA_MAJORS:
        fix = f"pip uninstall cupy-cuda{need}x, then {cupy_install_hint(have)}; or {fix}"
    else:
        fix += f" (CuPy needs CUDA {min(CUDA_MAJORS)} or newer)"
    raise GpuUnavailableError(
        f"the NVIDIA driver supports CUDA {_version(driver)}, older than the CUDA {need} "
        f"of this CuPy (cupy-cuda{need}x)",
        fix,
    )


def _device_count(runtime) -> int:
    try:
        count = runtime.getDeviceCount()
    except Exception as exc:
        if getattr(exc, "status", None) != _CUDA_ERROR_NO_DEVICE and "NoDevice" not in str(exc):
            raise GpuUnavailableError(
                "CuPy cannot reach the GPU",
                "check the NVIDIA driver with nvidia-smi",
                detail=_first_line(exc),
            ) from exc
        count = 0
    if count == 0:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        hides = (
            f"CUDA_VISIBLE_DEVICES={hidden!r} does not hide it and " if hidden is not None else ""
        )
        raise GpuUnavailableError(
            "the NVIDIA driver is installed but sees no GPU",
            f"check that {hides}nvidia-smi lists one, or use the cpu device",
        )
    return count


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _auto_backend(local_rank: int | None = None) -> Backend:
    """CuPy on GPU 0 (or a local rank's, see :func:`local_backend`) when CuPy is installed and
    works there; else NumPy, saying why in one short line (once per process) when CuPy is
    installed but cannot run."""
    if not _cupy_installed():
        return get_backend("cpu")
    try:
        return _cupy_backend(0) if local_rank is None else _cupy_backend(local_rank, by_rank=True)
    except GpuUnavailableError as exc:
        if not local_rank:  # in a job, the first process on each machine says it for all
            _say_once(f"xpmlp: no GPU ({exc.reason}); using the CPU")
        return get_backend("cpu")


def _cupy_installed() -> bool:
    if "cupy" in sys.modules:
        return sys.modules["cupy"] is not None  # None: an import blocked on purpose
    return importlib.util.find_spec("cupy") is not None


@functools.cache
def _say_once(line: str) -> None:
    print(line, file=sys.stderr)


def _strict_backend(spec: str) -> Backend:
    try:
        import array_api_strict
    except ImportError as exc:
        raise DeviceError(
            "array-api-strict is not installed; pip install array-api-strict"
        ) from exc
    name = spec.split(":", 1)[1] if ":" in spec else "CPU_DEVICE"
    name = {"cpu_device": "CPU_DEVICE", "cpu": "CPU_DEVICE"}.get(name, name)
    try:
        device = array_api_strict.Device(name)
    except ValueError as exc:
        raise DeviceError(f"array-api-strict has no device {name!r}") from exc
    return Backend("array_api_strict", f"array-api-strict:{name}", array_api_strict, device)


def _torch_backend(spec: str) -> Backend:
    try:
        import array_api_compat.torch as xp
        import torch
    except ImportError as exc:
        raise DeviceError("torch is not installed; pip install torch") from exc
    name = spec.split(":", 1)[1] if ":" in spec else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"torch has no device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("torch sees no CUDA device")
    return Backend("torch", f"torch:{name}", xp, device)
