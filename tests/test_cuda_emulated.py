"""The kernels' CUDA source executed (tests/cuda_emulator: compiled with g++, each CUDA thread a
fiber), launched through xpmlp's own path (``kernels.fused_for`` on the CuPy stand-in, whose
``RawModule`` runs the emulator with ``XPMLP_STANDIN_KERNELS=emulated``): every kernel against its
NumPy twin from 1 element to several blocks and grid-stride passes, odd widths and special values;
the same results whatever the order of threads and blocks; no access outside a buffer (guard
pages); and broken control kernels that prove each check can fail."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emulator import DeviceArray, EmulatorError, Module
from optional import need

from xpmlp import to_numpy
from xpmlp.backend import get_backend
from xpmlp.core import kernels

need("gxx")
ACTS = kernels.FUSED_ACTIVATIONS
LIBM = ("tanh", "sigmoid")  # CUDA's tanh is its own (within 2 ulp of the C library's)
SHAPES = [(1, 1), (2, 3), (1, 257), (7, 37), (256, 1), (33, 1031), (300, 301)]


@pytest.fixture
def emulate(cupy_standin, monkeypatch):
    """``emulate(dtype, seed=0, guard=None)``: xpmlp's fused kernels on the stand-in's cuda:0,
    running the emulated CUDA source (after passing xpmlp's own self-check)."""
    monkeypatch.setenv("XPMLP_STANDIN_KERNELS", "emulated")

    def make(dtype: str, seed: int = 0, guard: str | None = None):
        monkeypatch.setenv("XPMLP_STANDIN_SEED", str(seed))
        monkeypatch.setenv("XPMLP_STANDIN_GUARD", guard or "")
        kernels.forget()
        fused = kernels.fused_for(get_backend("cuda:0"), dtype)
        assert fused is not None, "the emulated kernels failed xpmlp's self-check"
        return fused

    yield make
    kernels.forget()


def _inputs(shape, dtype, draw, values=None) -> dict:
    rows, cols = shape
    pick = (lambda *s: draw.choice(values, size=s).astype(dtype)) if values is not None else (
        lambda *s: draw.normal(size=s).astype(dtype))  # fmt: skip
    mask = (draw.random(shape) > 0.3).astype(dtype) / dtype.type(0.7)
    return {
        "z": pick(rows, cols), "b": pick(cols), "g": pick(rows, cols),
        "h": np.tanh(pick(rows, cols)), "mask": pick(rows, cols) if values is not None else mask,
        "logits": draw.normal(size=shape).astype(dtype) * 5, "labels": draw.integers(0, cols, rows),
    }  # fmt: skip


def _run(fused, inputs, *, acts=ACTS, softmax=True) -> dict:
    """Every bias and grad kernel (and softmax_xent) on ``inputs``: name -> host arrays."""
    device = lambda a: fused.backend.asarray(a, copy=True)  # noqa: E731
    out = {}
    for act in acts:
        for mask in (None, inputs["mask"]):
            dropout = mask is not None
            z = device(inputs["z"])
            h, a = fused.bias_activation(
                act, z, device(inputs["b"]), mask if mask is None else device(mask)
            )
            out[kernels.kernel_name("bias", act, dropout)] = [to_numpy(x) for x in (z, h, a)]
            g = fused.activation_backward(act, device(inputs["g"]), mask if mask is None else device(mask),
                                          device(inputs["z"]), device(inputs["h"]))  # fmt: skip
            out[kernels.kernel_name("grad", act, dropout)] = [to_numpy(g)]
    if softmax:
        sums = device(np.array([1.5, 2.0], inputs["z"].dtype))
        grad = fused.softmax_xent(device(inputs["logits"]), device(inputs["labels"]), sums)
        out["softmax_xent"] = [to_numpy(grad), to_numpy(sums)]
    return out


def _cpu(dtype):
    return kernels.fused_for(get_backend("cpu"), dtype)


def _ulps(dtype, n):
    return n * np.finfo(dtype).eps


def _assert_same(got: dict, want: dict, dtype, *, exact=False) -> None:
    for name, arrays in want.items():
        for got_array, want_array in zip(got[name], arrays):
            if exact or not (
                name.startswith("bias_") and name.split("_")[1] in LIBM or name == "softmax_xent"
            ):
                np.testing.assert_array_equal(got_array, want_array, err_msg=name)
                finite = ~np.isnan(want_array)
                assert (np.signbit(got_array) == np.signbit(want_array))[finite].all(), name
            elif name == "softmax_xent":  # exp and log, and another summation order
                np.testing.assert_allclose(got_array, want_array, rtol=_ulps(dtype, 64),
                                           atol=_ulps(dtype, 4), err_msg=name)  # fmt: skip
            else:  # |tanh| <= 1: 2 ulp of 1 (sigmoid's 0.5 * (tanh + 1) near 0 keeps that error)
                np.testing.assert_allclose(got_array, want_array, rtol=_ulps(dtype, 2),
                                           atol=_ulps(dtype, 2), err_msg=name)  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_kernel_matches_its_twin(emulate, dtype, shape):
    dtype = np.dtype(dtype)
    inputs = _inputs(shape, dtype, np.random.default_rng(sum(shape)))
    _assert_same(_run(emulate(dtype.name), inputs), _run(_cpu(dtype.name), inputs), dtype)


def _adam(fused, arrays, step=3) -> list:
    p, g, m, v = (fused.backend.asarray(a, copy=True) for a in arrays)
    fused.adam(p, g, m, v, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, step=step)
    return [to_numpy(x) for x in (p, m, v)]


def _adam_inputs(n, dtype, draw) -> list:
    p, g, m, v = (draw.normal(size=n).astype(dtype) for _ in range(4))
    return [p, g, m, np.abs(v)]


@pytest.mark.parametrize("n", [1, 255, 257, 70_001, 3_000_017])
def test_adam_and_the_dropout_mask_match_their_twins_bit_for_bit(emulate, dtype, n):
    """Up to 3,000,017 elements: 4096 blocks of 256 threads, each thread three grid-stride
    passes (--fmad=false: Adam rounds as NumPy does)."""
    arrays = _adam_inputs(n, dtype, np.random.default_rng(n))
    fused, cpu = emulate(dtype), _cpu(dtype)
    for got, want in zip(_adam(fused, arrays), _adam(cpu, arrays)):
        np.testing.assert_array_equal(got, want)
    shape, key = (n // 7 + 1, 7), (n, 2)
    mask = fused.dropout_mask(shape, 0.3, key)
    np.testing.assert_array_equal(to_numpy(mask), cpu.dropout_mask(shape, 0.3, key))


def test_bias_and_grad_kernels_over_several_grid_stride_passes(emulate):
    """1,052,651 elements: more than 4096 blocks x 256 threads, so some threads take two."""
    inputs = _inputs((1021, 1031), np.dtype("float32"), np.random.default_rng(1))
    got = _run(emulate("float32"), inputs, acts=("leaky_relu",), softmax=False)
    _assert_same(
        got, _run(_cpu("float32"), inputs, acts=("leaky_relu",), softmax=False), np.float32
    )


def test_softmax_xent_on_a_large_batch(emulate, dtype):
    inputs = _inputs((8192, 10), np.dtype(dtype), np.random.default_rng(2))
    got = _run(emulate(dtype), inputs, acts=())
    _assert_same(got, _run(_cpu(dtype), inputs, acts=()), np.dtype(dtype))


SPECIAL = {
    "float64": [np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, -5e-324, 1e-310, 2.2250738585072014e-308,
                1.0, -1.0, 0.5, 3.0, 1e308, -1e308],
    "float32": [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 1e-39, 1.1754944e-38,
                1.0, -1.0, 0.5, 3.0, 3e38, -3e38],
}  # fmt: skip


def _flush(array):
    """What CUDA's -ftz=true does to a float32 subnormal: a zero of its sign."""
    array = np.asarray(array)
    if array.dtype != np.float32:
        return array
    return np.where(np.abs(array) < np.finfo(np.float32).tiny, np.copysign(0, array), array).astype(
        array.dtype
    )


def _same_bits(got, want):
    return (got == want) & (np.signbit(got) == np.signbit(want)) | np.isnan(got) & np.isnan(want)


def test_special_values(emulate, dtype):
    """NaN, infinities, -0 and subnormals through every bias and grad kernel: the twins' results
    bit for bit, zeros' signs and float32 subnormals included (xpmlp compiles its kernels with
    --ftz=false, calling NVRTC itself: CuPy's RawModule would append -ftz=true); tanh and
    sigmoid within CUDA's math library's ulps."""
    dtype = np.dtype(dtype)
    inputs = _inputs((7, 37), dtype, np.random.default_rng(3), SPECIAL[dtype.name])
    got = _run(emulate(dtype.name), inputs, softmax=False)
    with np.errstate(all="ignore"):
        raw = _run(_cpu(dtype.name), inputs, softmax=False)
    if dtype == np.float64:
        return _assert_same(got, raw, dtype)
    libm = [n for n in got if n.startswith("bias_") and n.split("_")[1] in LIBM]
    _assert_same({n: got[n] for n in libm}, {n: raw[n] for n in libm}, dtype)
    _assert_same({n: got[n] for n in set(got) - set(libm)},
                 {n: raw[n] for n in set(got) - set(libm)}, dtype, exact=True)  # fmt: skip


def test_float32_adam_keeps_a_subnormal_gradient_as_numpy_does(emulate):
    """Issue 24's example: p = m = v = 0, g = 1e-39 gives p = -9.99995e-35, as NumPy's float32
    and the twin, because xpmlp's kernels are compiled with --ftz=false. Compiled as CuPy's
    RawModule compiles (-ftz=true last) the same source leaves p = 0: the check can fail."""
    zeros = np.zeros(3, np.float32)
    arrays = [zeros, np.full(3, 1e-39, np.float32), zeros, zeros]
    p, m, _ = _adam(emulate("float32"), arrays, step=1)
    want, *_ = _adam(_cpu("float32"), arrays, step=1)
    assert (p < 0).all() and (m > 0).all()
    np.testing.assert_array_equal(p, want)
    flushing = Module(kernels.cuda_source("float32"), kernels.NVRTC_OPTIONS, cupy_appends_ftz=True)
    p = np.zeros(3, np.float32)
    scalars = kernels.adam_scalars(
        "float32", lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, step=1
    )
    device = _device(p, np.full(3, 1e-39, np.float32), p.copy(), p.copy())
    flushing.get_function("adam")((1,), (256,), (*device, 3, *scalars))
    assert (p == 0).all()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_order_of_threads_and_blocks_changes_nothing(emulate, dtype, seed):
    """A race would show as a difference: seeds shuffle the order of the 44 blocks and of the
    threads at every barrier (softmax_xent's 300 rows are more than its 256 threads)."""
    dtype = np.dtype(dtype)
    draw = np.random.default_rng(4)
    inputs, arrays = _inputs((300, 37), dtype, draw), _adam_inputs(11_111, dtype, draw)
    shuffled, natural = emulate(dtype.name, seed=seed), emulate(dtype.name)
    _assert_same(_run(shuffled, inputs), _run(natural, inputs), dtype, exact=True)
    for got, want in zip(_adam(shuffled, arrays), _adam(natural, arrays)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("guard", ["end", "start"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 37), (33, 1031)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_no_kernel_touches_memory_outside_its_buffers(emulate, dtype, guard, shape):
    """Every buffer between two inaccessible pages, flush with the one after it (``end``) or
    the one before it (``start``): an access outside one fails the launch."""
    dtype = np.dtype(dtype)
    draw = np.random.default_rng(5)
    inputs, arrays = _inputs(shape, dtype, draw), _adam_inputs(shape[0] * shape[1], dtype, draw)
    guarded, plain = emulate(dtype.name, guard=guard), emulate(dtype.name)
    _assert_same(_run(guarded, inputs), _run(plain, inputs), dtype, exact=True)
    for got, want in zip(_adam(guarded, arrays), _adam(plain, arrays)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(to_numpy(guarded.dropout_mask(shape, 0.5, (1,))),
                                  to_numpy(plain.dropout_mask(shape, 0.5, (1,))))  # fmt: skip


# ---------------------------------------------------------------------- each check can fail

CONTROLS = r"""
#define LOOP for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; \
                  i += (long long)blockDim.x * gridDim.x)
extern "C" __global__ void copy(float* out, const float* x, long long n) { LOOP out[i] = x[i]; }
extern "C" __global__ void write_one_past_end(float* out, const float* x, long long n) {
  LOOP out[i + 1] = x[i];
}
extern "C" __global__ void read_one_before_start(float* out, const float* x, long long n) {
  LOOP out[i] = x[i - 1];
}
// A block's sum by a fixed tree; with barrier = 0 the tree's __syncthreads() is missing.
extern "C" __global__ void block_sum(const float* x, float* out, int barrier) {
  __shared__ float part[256];
  part[threadIdx.x] = x[blockIdx.x * 256 + threadIdx.x];
  __syncthreads();
  for (int half = 128; half > 0; half /= 2) {
    if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
    if (barrier) __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = part[0];
}
extern "C" __global__ void barrier_in_a_branch(float* x) {
  if (threadIdx.x < 128) __syncthreads();
  x[threadIdx.x] = 1;
}
extern "C" __global__ void early_exit(float* x) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  x[threadIdx.x] = 1;
}
extern "C" __global__ void two_barriers(float* x) {
  if (threadIdx.x % 2) { x[threadIdx.x] = 1; __syncthreads(); }
  else { __syncthreads(); x[threadIdx.x] = 2; }
}
extern "C" __global__ void scale_float(float* x, float s) { x[0] *= s; }
extern "C" __global__ void scale_double(double* x, double s) { x[0] *= s; }
"""


def _control(name: str, **kwargs):
    return Module(CONTROLS, kernels.NVRTC_OPTIONS, **kwargs).get_function(name)


def _device(*arrays):
    return tuple(DeviceArray(a) for a in arrays)


@pytest.mark.parametrize(("kernel", "guard", "message"), [
    ("write_one_past_end", "end", r"outside argument 0 \(float32\*, 1000 elements\) at element 1000, past its end"),
    ("read_one_before_start", "start", r"outside argument 1 \(float32\*, 1000 elements\) at element -1, before its start"),
])  # fmt: skip
def test_guard_pages_catch_one_element_out_of_bounds(kernel, guard, message):
    out, x = np.zeros(1000, np.float32), np.ones(1000, np.float32)
    _control("copy", guard=guard)((4,), (256,), (*_device(out, x), 1000))
    assert (out == 1).all()
    with pytest.raises(EmulatorError, match=message):
        _control(kernel, guard=guard)((4,), (256,), (*_device(out, x), 1000))


def test_a_missing_barrier_shows_as_a_difference_between_orders():
    x = np.random.default_rng(6).normal(size=4 * 256).astype(np.float32)
    results = {}
    for barrier in (1, 0):
        for seed in range(6):
            out = np.zeros(4, np.float32)
            _control("block_sum", seed=seed)((4,), (256,), (*_device(x, out), np.int32(barrier)))
            results[barrier, seed] = out.tobytes()
    assert len({results[1, seed] for seed in range(6)}) == 1  # the fixed tree: one result
    np.testing.assert_allclose(np.frombuffer(results[1, 0], np.float32),
                               x.reshape(4, 256).sum(axis=1), rtol=1e-5)  # fmt: skip
    assert len({results[0, seed] for seed in range(6)}) > 1  # the race: one per order


@pytest.mark.parametrize(("kernel", "message"), [
    ("barrier_in_a_branch", r"line \d+: 128 of the 256 threads of block \(0,0,0\) wait there, but "
                            r"thread \(128,0,0\) returned without reaching it"),
    ("early_exit", r"255 of the 256 threads .* thread \(5,0,0\) returned without reaching it"),
    ("two_barriers", r"divergent __syncthreads\(\) in block \(0,0,0\)"),
])  # fmt: skip
def test_a_barrier_not_reached_by_every_thread_is_an_error(kernel, message):
    with pytest.raises(EmulatorError, match=message):
        _control(kernel)((1,), (256,), _device(np.zeros(256, np.float32)))


def test_arguments_follow_cupys_rules():
    """CuPy hands an argument's bytes to the kernel unconverted: what it would misread fails."""
    adam = Module(kernels.cuda_source("float32"), kernels.NVRTC_OPTIONS).get_function("adam")
    p = np.zeros(8, np.float32)
    scalars = kernels.adam_scalars(
        "float32", lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0, step=1
    )
    arrays = _device(p, np.ones(8, np.float32), p.copy(), p.copy())
    adam((1,), (256,), (*arrays, 8, *scalars))  # a Python int is an int64: long long n takes it
    assert (p < 0).all()
    wrong = {
        "a float64 array": ((*_device(p.astype(np.float64)), *arrays[1:], 8, *scalars), "gets a float64 array"),
        "a Python float": ((*arrays, 8, 0.9, *scalars[1:]), "gets float 0.9, which CuPy passes as the 8 bytes of a float64"),
        "a float64 scalar": ((*arrays, 8, np.float64(0.9), *scalars[1:]), "float64"),
        "an int32 size": ((*arrays, np.int32(8), *scalars), "the 4 bytes of a int32"),
        "a strided array": ((*_device(np.zeros(16, np.float32)[::2]), *arrays[1:], 8, *scalars), "non-C-contiguous"),
        "a value for a pointer": ((0.0, *arrays[1:], 8, *scalars), r"argument 0 \(float32\*\) gets float"),
        "an array for a value": ((*arrays, arrays[0], *scalars), "is a value, but gets a device array"),
        "an argument short": ((*arrays, 8, *scalars[1:]), "takes 13 arguments, got 12"),
    }  # fmt: skip
    for args, message in wrong.values():
        with pytest.raises(EmulatorError, match=message):
            adam((1,), (256,), args)
    with pytest.raises(TypeError, match="Only numpy.ndarrays of size one"):  # CuPy's own refusal
        adam((1,), (256,), (*arrays, np.array([8, 9]), *scalars))
    with pytest.raises(EmulatorError, match="1024"):
        adam((1,), (2048,), (*arrays, 8, *scalars))


def test_float32_kernels_flush_subnormals_and_float64_kernels_do_not():
    """CuPy appends -ftz=true after the caller's options, so even -ftz=false flushes float32."""
    for options in ((), ("-ftz=false",)):
        x, y = np.full(1, 1e-39, np.float32), np.full(1, 1e-310)
        module = Module(CONTROLS, options)
        module.get_function("scale_float")((1,), (1,), (*_device(x), np.float32(1)))
        module.get_function("scale_double")((1,), (1,), (*_device(y), 1.0))
        assert x[0] == 0 and y[0] == 1e-310
