"""CUDA on the CPU, for the tests: a kernel's exact CUDA source compiled as C++ with g++ and run
with CUDA's execution model (threads as fibers, barriers, blocks, per-block shared memory).

``Module(code, options)`` stands for ``cupy.RawModule(code=..., options=...)`` and its
``get_function(name)`` for CuPy's ``RawModule.get_function``: a callable
``(grid, block, args)``. The source is compiled once per text into a cache directory
(``XPMLP_EMULATOR_CACHE``, else ``~/.cache/xpmlp-cuda-emulator``) with the headers beside this
file: ``cuda_shim.h`` (CUDA's built-ins), ``runtime.cpp`` (the scheduler) and ``exports.h``
(each kernel's parameter types and a cuLaunchKernel-style entry point).

A launch is checked as a GPU would not check it, so that what would be silently wrong there fails
here:

- the arguments by CuPy's rules (``cupy/cuda/function.pyx``: ``_pointer``; ``cupy/_core/
  _scalar.pyx``: ``CScalar``): a device array passes its data pointer (so it must be C-contiguous
  and of the parameter's exact dtype), a Python int is an int64 (uint64 from 2**63), a Python
  float a float64, a NumPy scalar or size-1 NumPy array its own dtype; CuPy hands the bytes over
  unconverted, so any other type than the parameter's exact C type is an error here;
- barriers: every live thread of a block must wait at the same ``__syncthreads()``;
- ``seed``: a non-zero seed shuffles the order of the blocks and, at every barrier, of the
  threads (a race then shows as a difference between seeds);
- ``guard="end"`` or ``"start"``: every buffer is copied between two inaccessible pages, flush
  with the one after it or the one before it, and the launch runs in a child process (clone with
  shared memory, so it costs about what a thread does): an access
  outside a buffer is an :class:`EmulatorError` naming the argument and element.

Float32 kernels run with the CPU's flush-to-zero and denormals-are-zero bits set, as CuPy
compiles every module with ``-ftz=true`` (appended after the caller's options, so it wins); a
float64 kernel is not flushed (neither is it on a GPU). CUDA's math functions are the C library's
(CUDA's are within 1 or 2 ulp of them).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
HEADERS = ("cuda_shim.h", "exports.h", "runtime.cpp")
_KERNEL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(")
_IGNORED = re.compile(
    r"(-arch|--gpu-architecture|-lineinfo|--generate-line-info|--prec-(div|sqrt)=true)"
)
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)


class EmulatorError(RuntimeError):
    """A launch that a GPU would run wrongly or not at all: a barrier error, an access outside a
    buffer, an argument CuPy would pass unconverted, a launch configuration out of range."""


class CompileError(RuntimeError):
    """g++ rejected the source (its message follows)."""


@dataclass(frozen=True)
class DeviceArray:
    """A device array as a kernel argument: CuPy passes its data pointer."""

    array: np.ndarray


def translate_options(options) -> tuple[list[str], bool]:
    """NVRTC's options as g++ flags, and whether float32 flushes subnormals (the last
    ``-ftz=``; CuPy appends ``-ftz=true``). An option whose effect is not emulated raises."""
    flags, ftz = ["-std=c++17"], False
    for option in options:
        if option.startswith(("-std=", "--std=")):
            flags[0] = "-std=" + option.split("=", 1)[1]
        elif option.startswith(("-ftz=", "--ftz=")):
            ftz = option.split("=", 1)[1] == "true"
        elif option.startswith(("-D", "-U", "-I")):
            flags.append(option)
        elif option == "--fmad=false" or _IGNORED.match(option):
            pass  # g++ runs with -ffp-contract=off always: no fused multiply-add
        else:
            raise NotImplementedError(f"the CUDA emulator does not emulate the option {option!r}")
    return flags, ftz


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xpmlp-cuda-emulator"
    return Path(os.environ.get("XPMLP_EMULATOR_CACHE", default))


def _translation_unit(code: str) -> str:
    exports = "".join(f"XEMU_EXPORT({name})\n" for name in _KERNEL.findall(code))
    return f'#include "cuda_shim.h"\n#line 1 "kernels.cu"\n{code}\n#include "exports.h"\n{exports}'


def build(code: str, flags: list[str]) -> Path:
    """The shared library of ``code`` (compiled at most once per text, flags and headers)."""
    unit = _translation_unit(code)
    command = ["g++", *flags, "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-U_FORTIFY_SOURCE",
               "-I", str(HERE)]  # fmt: skip
    digest = hashlib.sha256("\0".join([unit, *command]).encode())
    for part in (*HEADERS, "runtime.cpp"):
        digest.update((HERE / part).read_bytes())
    target = cache_dir() / f"kernels-{digest.hexdigest()[:24]}.so"
    if target.exists():
        return target
    if shutil.which("g++") is None:
        raise CompileError("the CUDA emulator needs g++ (Debian: apt-get install g++)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        (Path(work) / "kernels.cpp").write_text(unit)
        built = Path(work) / target.name
        done = subprocess.run(
            [*command, "kernels.cpp", str(HERE / "runtime.cpp"), "-o", built.name],
            cwd=work, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode:
            raise CompileError(f"g++ could not compile the kernels:\n{done.stderr}")
        os.replace(built, target)  # atomic: concurrent builders of one text agree
    return target


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.PyDLL(str(path))  # holds the GIL: one launch at a time (the state is global)
    dims = ctypes.POINTER(ctypes.c_uint)
    common = [ctypes.c_void_p, ctypes.c_void_p, dims, dims, ctypes.c_uint64, ctypes.c_int,
              ctypes.c_char_p, ctypes.c_int]  # fmt: skip
    lib.xemu_launch.argtypes = common
    lib.xemu_launch_forked.argtypes = [*common, ctypes.POINTER(ctypes.c_size_t),
                                       ctypes.POINTER(ctypes.c_int)]  # fmt: skip
    lib.xemu_map.restype = ctypes.c_void_p
    lib.xemu_map.argtypes = [ctypes.c_size_t, ctypes.c_int]
    lib.xemu_unmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return lib


class Module:
    """``cupy.RawModule(code=..., options=...)`` on the CPU (see the module's docstring)."""

    def __init__(self, code: str, options=(), *, seed: int = 0, guard: str | None = None,
                 cupy_appends_ftz: bool = True):  # fmt: skip
        # CuPy's RawModule appends -ftz=true after the caller's options (it wins); NVRTC called
        # directly, as xpmlp does, keeps the options it is given
        flags, self.ftz = translate_options(
            (*options, "-ftz=true") if cupy_appends_ftz else options
        )
        self.code, self.seed, self.guard = code, seed, guard
        self.kernel_names = _KERNEL.findall(code)
        self.lib = _load(build(code, flags))

    def get_function(self, name: str) -> Function:
        if name not in self.kernel_names:
            raise EmulatorError(f"no __global__ function named {name!r} in the module")
        return Function(self, name)


@dataclass(frozen=True)
class Param:
    dtype: str  # a NumPy dtype name, or "void" for void*
    pointer: bool

    def __str__(self):
        return self.dtype + "*" * self.pointer


class Function:
    """One kernel: ``function(grid, block, args)`` as CuPy's ``Function.__call__``."""

    def __init__(self, module: Module, name: str):
        self.module, self.name = module, name
        self._entry = ctypes.cast(getattr(module.lib, f"xemu_run_{name}"), ctypes.c_void_p)
        describe = getattr(module.lib, f"xemu_sig_{name}")
        describe.restype = ctypes.c_char_p
        self.params = [Param(p.rstrip("*"), p.endswith("*"))
                       for p in describe().decode().split(",") if p]  # fmt: skip
        floats = {p.dtype for p in self.params} & {"float32", "float64"}
        if module.ftz and len(floats) == 2:
            raise NotImplementedError(f"{name}: -ftz=true on a kernel with float and double")
        self.flush = module.ftz and floats == {"float32"}

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid, block = _dims(grid, MAX_GRID, "grid"), _dims(block, MAX_BLOCK, "block")
        if np.prod(block) > 1024:
            raise EmulatorError(f"{self.name}: {np.prod(block)} threads per block (at most 1024)")
        if shared_mem:
            raise NotImplementedError("dynamic shared memory is not emulated")
        args = tuple(args)
        if len(args) != len(self.params):
            raise EmulatorError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        values = [
            self._argument(i, param, arg) for i, (param, arg) in enumerate(zip(self.params, args))
        ]
        if self.module.guard:
            run_guarded(self, grid, block, values)
        else:
            cells = [_cell(v) for v in values]
            self._launch(grid, block, [ctypes.addressof(c) for c in cells])

    def _argument(self, index: int, param: Param, arg):
        where = f"{self.name}: argument {index} ({param})"
        if isinstance(arg, DeviceArray) or arg is None:
            if not param.pointer:
                raise EmulatorError(f"{where} is a value, but gets a device array's address")
            if arg is None:
                return ctypes.c_void_p(0)  # CuPy passes None as a null pointer
            array = arg.array
            if param.dtype not in ("void", array.dtype.name):
                raise EmulatorError(f"{where} gets a {array.dtype.name} array")
            if not array.flags.c_contiguous:
                raise EmulatorError(f"{where} gets a non-C-contiguous array (strides "
                                    f"{array.strides}): the kernel reads it as contiguous")  # fmt: skip
            return arg
        dtype = cupy_scalar_dtype(arg)
        if param.pointer or dtype.name != param.dtype:
            raise EmulatorError(f"{where} gets {type(arg).__name__} {arg!r}, which CuPy passes as "
                                f"the {dtype.itemsize} bytes of a {dtype.name}, unconverted")  # fmt: skip
        return ctypes.create_string_buffer(np.array(arg, dtype=dtype).tobytes(), dtype.itemsize)

    def _launch(self, grid, block, addresses, forked=False):
        args = (ctypes.c_void_p * max(1, len(addresses)))(*addresses)
        message = ctypes.create_string_buffer(2048)
        common = (self._entry, args, (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block),
                  self.module.seed, int(self.flush), message, len(message))  # fmt: skip
        if not forked:
            if self.module.lib.xemu_launch(*common):
                raise EmulatorError(f"{self.name}: {message.value.decode()}")
            return None
        fault, signal = ctypes.c_size_t(0), ctypes.c_int(0)
        status = self.module.lib.xemu_launch_forked(
            *common, ctypes.byref(fault), ctypes.byref(signal)
        )
        if status == 1:
            raise EmulatorError(f"{self.name}: {message.value.decode()}")
        return (fault.value, signal.value) if status == 2 else None


def cupy_scalar_dtype(value) -> np.dtype:
    """The dtype whose bytes CuPy passes for a non-array kernel argument (``_pointer`` and
    ``numpy_dtype_from_pyscalar``)."""
    kind = type(value)
    if kind is bool:
        return np.dtype(np.bool_)
    if kind is float:
        return np.dtype(np.float64)
    if kind is complex:
        return np.dtype(np.complex128)
    if kind is int:
        return np.dtype(np.uint64 if value >= 2**63 else np.int64)
    if isinstance(value, np.generic):
        return value.dtype
    if isinstance(value, np.ndarray):
        if value.size == 1:
            return value.dtype
        raise TypeError(f"You are trying to pass a numpy.ndarray of shape {value.shape} as a "
                        "kernel parameter. Only numpy.ndarrays of size one can be passed by value.")  # fmt: skip
    raise TypeError(f"Unsupported type {kind}")


def _dims(dims, limits, what) -> tuple[int, int, int]:
    dims = tuple(max(1, int(d)) for d in (*tuple(dims), 1, 1)[:3])  # as CuPy pads and clamps
    if any(d > limit for d, limit in zip(dims, limits)):
        raise EmulatorError(f"{what} {dims} exceeds CUDA's limits {limits}")
    return dims


def _cell(value, address=None):
    """The bytes of one kernel parameter (what cuLaunchKernel's ``args[i]`` points to)."""
    if isinstance(value, DeviceArray):
        return ctypes.c_void_p(value.array.ctypes.data if address is None else address)
    return value


from .guard import run_guarded  # noqa: E402  (it uses the names above)
