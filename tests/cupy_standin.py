"""A CuPy stand-in that proves the GPU path on the CPU.

NumPy underneath, but with what makes CuPy code differ from NumPy code:

- a distinct ``cupy.ndarray`` that refuses implicit host conversion (``np.asarray(x)`` raises
  TypeError, as CuPy's does); ``.get()``, ``float(x)``, ``x.item()`` and ``bool(x)`` work but are
  counted as device-to-host copies and host syncs;
- devices: every array lives on one of ``N_DEVICES`` fake GPUs (fewer where
  ``CUDA_VISIBLE_DEVICES`` hides some, renumbered from 0 as CUDA does); creation happens on the current
  device (``cupy.cuda.Device(i)`` as a context, or ``.use()``), and an operation on an array that
  lives elsewhere raises CuPy's "The device where the array resides (1) is different from the
  current device (0)";
- ``cupy.cuda``: ``Device``, ``runtime`` (device count and properties), streams (whose
  ``synchronize`` is a counted host sync) and a memory pool;
- counters for kernel launches (one per NumPy call made on device arrays or filling a new one;
  views and uninitialised allocations are free, as in CuPy), host to device copies, device to
  host copies and host syncs;
- contexts: ``contexts`` holds the devices a CUDA context was created on: by making one current
  (``cudaSetDevice`` creates it since CUDA 12; CuPy's ``with Device(i)`` sets the previous device
  again on exit, even device 0 that was never used) or by creating an array there;
- ``cupy.RawModule``: a "compiled" CUDA module whose functions run xpmlp's NumPy twin of the
  kernel of that name, one launch each, or with ``XPMLP_STANDIN_KERNELS=emulated`` the CUDA
  source itself, on the CPU (tests/cuda_emulator); ``kernel_faults`` makes one fail to compile
  or compute a wrong result, to test the fallback; ``cupy.cuda.compiler.compile_using_nvrtc``
  and ``cupy.cuda.function.Module`` load the same, with the options kept for tests to read.

Install it with :func:`installed` (a context manager that puts it in ``sys.modules``, with the
``array_api_compat.cupy`` wrapper re-imported over it, and takes both out again afterwards).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import types
from dataclasses import dataclass

import numpy as np

N_DEVICES = 2


@dataclass
class Counters:
    launches: int = 0
    host_to_device: int = 0
    device_to_host: int = 0
    syncs: int = 0

    def reset(self) -> None:
        self.launches = self.host_to_device = self.device_to_host = self.syncs = 0

    def snapshot(self) -> dict:
        return dict(self.__dict__)


counters = Counters()
_current = [0]  # the current device's id
contexts: set[int] = set()  # the devices with a CUDA context


def visible_devices() -> int:
    """How many fake GPUs this process sees: ``CUDA_VISIBLE_DEVICES`` is read as CUDA reads it,
    up to its first entry that names no device (unset: all of them)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return N_DEVICES
    seen: list[int] = []
    for entry in listed.split(","):
        entry = entry.strip()
        if not entry.isdigit() or int(entry) >= N_DEVICES or int(entry) in seen:
            break
        seen.append(int(entry))
    return len(seen)


def _set_device(index: int) -> None:
    """``cudaSetDevice``, which creates the device's context (CUDA 12 and later)."""
    _current[0] = index
    contexts.add(index)


kernel_faults: dict[str, str] = {}  # kernel name -> "compile" or "wrong"


class Device:
    """``cupy.cuda.Device``: a context manager that makes the device current."""

    def __init__(self, device=None):
        if isinstance(device, Device):
            device = device.id
        self.id = _current[0] if device is None else int(device)
        if not 0 <= self.id < visible_devices():
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal ({self.id})")
        self._previous: list[int] = []

    def use(self) -> None:
        _set_device(self.id)

    def __enter__(self):  # as CuPy's: set the device only when it is not current ...
        self._previous.append(_current[0])
        if self.id != _current[0]:
            _set_device(self.id)
        return self

    def __exit__(self, *exc):  # ... and set the previous one again, always
        _set_device(self._previous.pop())

    def synchronize(self) -> None:
        counters.syncs += 1

    @property
    def compute_capability(self) -> str:
        return "90"

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(("fake-cuda", self.id))

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def _check_device(array: ndarray) -> None:
    if array._device != _current[0]:
        raise ValueError(
            f"The device where the array resides ({array._device}) is different from the "
            f"current device ({_current[0]}). Peer access has been activated automatically."
        )


def _unwrap(value):
    if isinstance(value, ndarray):
        _check_device(value)
        return value._a
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, np.ndarray):
        raise TypeError(
            "Unsupported type <class 'numpy.ndarray'>: a NumPy array passed to a CuPy function "
            "(copy it to the device with cupy.asarray first)"
        )
    return value


def _wrap(value):
    if isinstance(value, np.ndarray):
        return ndarray(value, _current[0])
    if isinstance(value, np.generic):  # CuPy reductions return 0-d device arrays
        return ndarray(np.asarray(value), _current[0])
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _kernel(function):
    """A NumPy function run as one 'kernel' on the current device."""

    @functools.wraps(function)
    def launch(*args, **kwargs):
        counters.launches += 1
        args, kwargs = _unwrap(args), {k: _unwrap(v) for k, v in kwargs.items()}
        return _wrap(function(*args, **kwargs))

    return launch


def _view(function):
    """A NumPy call that makes a view, as CuPy does without a kernel; a copy counts as one."""

    @functools.wraps(function)
    def view(*args, **kwargs):
        args, kwargs = _unwrap(args), {k: _unwrap(v) for k, v in kwargs.items()}
        result = function(*args, **kwargs)
        if not (isinstance(result, np.ndarray) and np.shares_memory(result, args[0])):
            counters.launches += 1
        return _wrap(result)

    return view


def _host_sync_read(array: ndarray) -> np.ndarray:
    # A copy to the host works from any current device (CuPy switches to the array's).
    counters.device_to_host += 1
    counters.syncs += 1
    return array._a


class ndarray:
    """``cupy.ndarray`` over a NumPy array, pinned to one fake device."""

    __slots__ = ("_a", "_device")
    __array_priority__ = 100

    def __init__(self, array: np.ndarray, device: int):
        self._a = array
        self._device = device
        contexts.add(device)

    # --- what CuPy refuses or counts
    def __array__(self, *args, **kwargs):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly."
        )

    def get(self, stream=None, order="C", out=None):
        return _host_sync_read(self).copy()

    def item(self):
        return _host_sync_read(self).item()

    def __float__(self):
        return float(_host_sync_read(self))

    def __int__(self):
        return int(_host_sync_read(self))

    def __bool__(self):
        return bool(_host_sync_read(self))

    def __index__(self):
        return int(_host_sync_read(self))

    def tolist(self):
        return _host_sync_read(self).tolist()

    # --- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    device = property(lambda self: Device(self._device))
    T = property(lambda self: _view(np.transpose)(self))
    mT = property(lambda self: _view(np.swapaxes)(self, -1, -2))

    @property
    def flags(self):
        return types.SimpleNamespace(
            c_contiguous=self._a.flags.c_contiguous, f_contiguous=self._a.flags.f_contiguous,
            owndata=self._a.flags.owndata,
        )  # fmt: skip  # CuPy's flags have no ``writeable``

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"cupy.ndarray(shape={self.shape}, dtype={self.dtype}, device={self._device})"

    def __array_namespace__(self, api_version=None):
        import array_api_compat.cupy

        return array_api_compat.cupy

    def __getitem__(self, key):
        return _view(lambda a, k: a[k])(self, key)

    def __setitem__(self, key, value):
        counters.launches += 1
        self._a[_unwrap(key)] = _unwrap(value)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __dlpack__(self, **kwargs):
        raise TypeError("DLPack export from the CuPy stand-in is not supported")


def _method(name):
    def method(self, *args, **kwargs):
        return _kernel(getattr(np.ndarray, name))(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in ("astype", "copy", "sum", "max", "min", "mean", "std",
              "var", "argmax", "argmin", "all", "any", "ravel", "flatten", "squeeze", "clip",
              "dot", "prod", "cumsum", "fill", "view", "swapaxes", "take", "nonzero", "sort",
              "argsort", "round", "conj", "repeat"):  # fmt: skip
    setattr(ndarray, _name, _method(_name))
for _name in ("reshape", "transpose"):
    setattr(ndarray, _name, (lambda name: lambda self, *a, **k: _view(getattr(np.ndarray, name))(
        self, *a, **k))(_name))  # fmt: skip


def _operator(name, function, *, reflected=False, inplace=False):
    def op(self, other=None):
        if other is None and name in ("__neg__", "__pos__", "__abs__", "__invert__"):
            return _kernel(function)(self)
        if isinstance(other, np.ndarray):
            return NotImplemented
        if inplace:
            _kernel(function)(self, other, out=self)
            return self
        if reflected:
            return _kernel(function)(other, self)
        return _kernel(function)(self, other)

    op.__name__ = name
    return op


_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
    "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor, "lshift": np.left_shift,
    "rshift": np.right_shift,
}  # fmt: skip
for _name, _function in _BINARY.items():
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__", _function))
    setattr(ndarray, f"__r{_name}__", _operator(f"__r{_name}__", _function, reflected=True))
    if _name != "matmul":
        setattr(ndarray, f"__i{_name}__", _operator(f"__i{_name}__", _function, inplace=True))
for _name, _function in {"lt": np.less, "le": np.less_equal, "gt": np.greater,
                         "ge": np.greater_equal, "eq": np.equal, "ne": np.not_equal}.items():  # fmt: skip
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__", _function))
for _name, _function in {"neg": np.negative, "pos": np.positive, "abs": np.absolute,
                         "invert": np.invert}.items():  # fmt: skip
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__", _function))
ndarray.__hash__ = None
ndarray.__module__ = "cupy"  # xpmlp and array-api-compat tell arrays apart by their module
Device.__module__ = "cupy.cuda.device"


# ---------------------------------------------------------------------- creation and transfers


def asarray(obj, dtype=None, order=None, *, blocking=False):
    if isinstance(obj, ndarray):
        if obj._device != _current[0]:  # a peer copy, device to device
            counters.launches += 1
            return ndarray(obj._a.astype(dtype or obj.dtype, copy=True), _current[0])
        return obj if dtype is None or np.dtype(dtype) == obj.dtype else obj.astype(dtype)
    counters.host_to_device += 1
    return ndarray(np.array(obj, dtype=dtype, copy=True), _current[0])


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, blocking=False):
    if isinstance(obj, ndarray) and not copy:
        return asarray(obj, dtype)
    if isinstance(obj, ndarray):
        counters.launches += 1
        _check_device(obj)
        return ndarray(np.array(obj._a, dtype=dtype, copy=True), _current[0])
    return asarray(obj, dtype)


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def _creation(function):
    @functools.wraps(function)
    def create(*args, **kwargs):
        counters.launches += 1
        kwargs.pop("device", None)
        return ndarray(function(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}),
                       _current[0])  # fmt: skip

    return create


def _allocation(function):
    """``empty``/``empty_like``: memory from the pool, no kernel."""

    @functools.wraps(function)
    def allocate(*args, **kwargs):
        kwargs.pop("device", None)
        return ndarray(function(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}),
                       _current[0])  # fmt: skip

    return allocate


def kernel_mode() -> str:
    """``XPMLP_STANDIN_KERNELS``: ``twins`` (the default) or ``emulated``."""
    mode = os.environ.get("XPMLP_STANDIN_KERNELS", "twins")
    if mode not in ("twins", "emulated"):
        raise ValueError(f"XPMLP_STANDIN_KERNELS={mode!r}: twins or emulated")
    return mode


class RawModule:
    """``cupy.RawModule(code=..., options=...)``: its functions run xpmlp's NumPy twins, or, with
    ``XPMLP_STANDIN_KERNELS=emulated``, the CUDA source itself on the CPU (tests/cuda_emulator:
    CuPy's argument rules, barriers, flush-to-zero for float32; ``XPMLP_STANDIN_SEED``, 1 unless
    set, shuffles the order of blocks and threads, 0 keeps it; ``XPMLP_STANDIN_GUARD=end`` or
    ``start`` puts guard pages around every buffer)."""

    def __init__(self, code: str = "", options: tuple = (), *, cupy_appends_ftz=True, **kwargs):
        # cupy_appends_ftz: RawModule compiles with CuPy's -ftz=true last; NVRTC called
        # directly (compile_using_nvrtc, then Module.load) takes the options as given
        self.code, self.options = code, options
        self._emulated = None
        if kernel_mode() == "emulated":
            import cuda_emulator

            self._emulated = cuda_emulator.Module(
                code, options, seed=int(os.environ.get("XPMLP_STANDIN_SEED", "1")),
                guard=os.environ.get("XPMLP_STANDIN_GUARD") or None,
                cupy_appends_ftz=cupy_appends_ftz,
            )  # fmt: skip

    def get_function(self, name: str):
        from xpmlp.core.kernels import TWINS

        if kernel_faults.get(name) == "compile" or name not in TWINS:
            raise RuntimeError(f"CompileException: {name}: stand-in compilation failure")
        run = _emulated_launcher(self._emulated.get_function(name)) if self._emulated else None
        twin = TWINS[name]

        def launch(grid, block, args, shared_mem=0, stream=None):
            counters.launches += 1
            if run is not None:
                first = run(grid, block, args, shared_mem)
            else:
                host = _unwrap(tuple(args))
                twin(*host)
                first = host[0]
            if kernel_faults.get(name) == "wrong":
                first.reshape(-1)[0] += 1  # its first output is off

        return launch


class _Binary(bytes):
    """What the stand-in's NVRTC makes: the source, with the options it was compiled with."""

    options: tuple = ()


def _compile_using_nvrtc(source, options=(), arch=None, filename="kern.cu", **kwargs):
    binary = _Binary(source.encode())
    binary.options = tuple(options)
    return binary


class Module:
    """``cupy.cuda.function.Module``: ``load`` takes what ``compile_using_nvrtc`` made, and its
    functions are those of a :class:`RawModule` of that source and options."""

    raw: RawModule | None = None

    def load(self, binary: _Binary) -> None:
        self.raw = RawModule(code=binary.decode(), options=binary.options, cupy_appends_ftz=False)

    def get_function(self, name: str):
        return self.raw.get_function(name)


def _emulated_launcher(function):
    """The emulated kernel with the stand-in's arrays as device pointers (on the current
    device, as CuPy requires); returns the first argument's memory."""
    from cuda_emulator import DeviceArray

    def run(grid, block, args, shared_mem):
        args = tuple(DeviceArray(_unwrap(a)) if isinstance(a, ndarray) else a for a in args)
        function(grid, block, args, shared_mem)
        return args[0].array if isinstance(args[0], DeviceArray) else None

    return run


# ---------------------------------------------------------------------- cupy.cuda


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False):
        pass

    def synchronize(self) -> None:
        counters.syncs += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def use(self):
        return self


class MemoryPool:
    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        pass


def _runtime_module():
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDeviceCount = visible_devices
    runtime.getDeviceProperties = lambda i: {
        "name": f"CuPy stand-in device {i}".encode(), "totalGlobalMem": 80 * 2**30,
        "multiProcessorCount": 132, "major": 9, "minor": 0,
    }  # fmt: skip
    runtime.runtimeGetVersion = lambda: 13000
    runtime.driverGetVersion = lambda: 13000
    runtime.deviceSynchronize = lambda: setattr(counters, "syncs", counters.syncs + 1)
    runtime.CUDARuntimeError = RuntimeError
    return runtime


def _build() -> dict[str, types.ModuleType]:
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "14.0.0-standin"
    cupy.__file__ = __file__
    public = {}
    for name in dir(np):
        if name.startswith("_") or name in ("testing", "ctypeslib", "lib", "ma", "rec", "char",
                                            "polynomial", "typing", "f2py", "emath", "strings",
                                            "exceptions", "dtypes", "version"):  # fmt: skip
            continue
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):
            public[name] = value  # dtypes (np.float32 ...), constants, np.dtype itself
        else:
            public[name] = _kernel(value)
    for name in ("zeros", "ones", "empty", "full", "arange", "eye", "linspace", "identity"):
        public[name] = _creation(getattr(np, name))
    for name in ("zeros_like", "ones_like", "full_like"):
        public[name] = _kernel(getattr(np, name))
    for name in ("reshape", "transpose", "swapaxes", "expand_dims", "squeeze", "ravel"):
        public[name] = _view(getattr(np, name))
    public["empty"] = _allocation(np.empty)
    public["empty_like"] = _allocation(np.empty_like)
    public.update(RawModule=RawModule, ndarray=ndarray, asarray=asarray, array=array, asnumpy=asnumpy,
                  asanyarray=asarray, ascontiguousarray=asarray, get_array_module=lambda *a: cupy)  # fmt: skip
    public["issubdtype"] = np.issubdtype
    public["result_type"] = np.result_type
    public["can_cast"] = np.can_cast
    public["finfo"], public["iinfo"] = np.finfo, np.iinfo
    for name, value in public.items():
        setattr(cupy, name, value)
    cupy.__all__ = sorted(public)

    cuda = types.ModuleType("cupy.cuda")
    device = types.ModuleType("cupy.cuda.device")
    device.Device = Device
    device.get_device_id = lambda: _current[0]
    cuda.Device, cuda.device = Device, device
    cuda.runtime = _runtime_module()
    cuda.Stream, cuda.ExternalStream = Stream, Stream
    cuda.get_current_stream = lambda device=None: Stream()
    cuda.MemoryPool = MemoryPool
    cuda.get_device_id = device.get_device_id
    cuda.is_available = lambda: True
    cuda.compiler = types.ModuleType("cupy.cuda.compiler")
    cuda.compiler.compile_using_nvrtc = _compile_using_nvrtc
    cuda.function = types.ModuleType("cupy.cuda.function")
    cuda.function.Module = Module
    cupy.cuda = cuda
    cupy.get_default_memory_pool = lambda: MemoryPool()

    linalg = types.ModuleType("cupy.linalg")
    fft = types.ModuleType("cupy.fft")
    for module, source in ((linalg, np.linalg), (fft, np.fft)):
        names = [n for n in dir(source) if not n.startswith("_") and callable(getattr(source, n))]
        names = [n for n in names if not isinstance(getattr(source, n), type)]
        for name in names:
            setattr(module, name, _kernel(getattr(source, name)))
        module.__all__ = names
    cupy.linalg, cupy.fft = linalg, fft
    return {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.device": device,
            "cupy.cuda.runtime": cuda.runtime, "cupy.cuda.compiler": cuda.compiler,
            "cupy.cuda.function": cuda.function, "cupy.linalg": linalg, "cupy.fft": fft}  # fmt: skip


_MODULES = _build()


def _is_swapped(name: str) -> bool:
    # cupyx too: a real CuPy imported earlier leaves a lazy ``cupyx`` in sys.modules whose first
    # touch (inspect walks sys.modules when torch is first imported) imports cupy._core
    return name in ("cupy", "cupyx") or name.startswith(
        ("cupy.", "cupyx.", "array_api_compat.cupy")
    )


@contextlib.contextmanager
def installed():
    """Put the stand-in in ``sys.modules`` as ``cupy`` (and ``array_api_compat.cupy`` over it);
    restore whatever was there (nothing, or the real CuPy) afterwards."""
    saved = {name: module for name, module in sys.modules.items() if _is_swapped(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(_MODULES)
    _current[0] = 0
    contexts.clear()
    counters.reset()
    try:
        yield counters
    finally:
        for name in [n for n in sys.modules if _is_swapped(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
        _current[0] = 0
