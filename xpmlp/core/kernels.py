"""Fused kernels: the training step in fewer passes, each written as CUDA beside its NumPy twin.

A GPU step of a small MLP is bound by kernel launches, not arithmetic; on the CPU every pass over
a batch-sized array costs memory traffic. So the step's elementwise work is fused:

- ``bias_<act>[_dropout]``: ``z += b``; ``h = act(z)``; ``a = h * mask`` (one pass, not three);
- ``grad_<act>[_dropout]``: ``g = act'(z, h) * (g * mask)``, in place;
- ``softmax_xent``: softmax cross-entropy's gradient of the batch mean, a row per group of
  threads (many blocks, adjacent threads on adjacent logits), each row's loss and hit kept;
  ``xent_sums`` adds them to the epoch's running sums on the device, in a fixed order;
- ``adam``: one Adam/AdamW update of the whole flat parameter buffer;
- ``dropout_mask``: a layer's inverted-dropout mask from its key, the hash of
  :func:`xpmlp.core.rng.dropout_mask` in one pass (about 23 without).

The CUDA source (:mod:`xpmlp.core.kernel_source`) is compiled with NVRTC, without flushing float32
subnormals; the twin, a NumPy function with the same arguments, runs on the CPU (and on the CuPy
stand-in that tests the GPU path). Each twin performs the portable path's floating-point
operations in the same order, so on the CPU fused and portable training agree bit for bit
(tested). On a GPU the elementwise kernels without transcendental functions (the bias addition,
ReLU and leaky ReLU, every gradient, Adam, the dropout mask) round as NumPy does, the kernels are
compiled with ``--fmad=false`` and ``--ftz=false``; tanh, sigmoid, exp and log come from CUDA's
math library (within an ulp or two of NumPy's) and the loss is summed in another order: those
agree with the twins to a few ulps, not bit for bit. The portable Array API path
(:mod:`xpmlp.core.ops`) stays the reference and the path for every other namespace, and the
fallback: before first use on a device each kernel is checked against it on small inputs (several
blocks), and if one fails to compile or disagrees, the whole set is switched off with one line on
stderr. ``XPMLP_KERNELS=portable`` switches it off by hand.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading

import numpy as np

from ..backend import to_numpy
from . import ops, rng
from .kernel_source import (  # noqa: F401 (cuda_source, kernel_names, NVRTC_OPTIONS: public here)
    FUSED_ACTIVATIONS,
    NVRTC_OPTIONS,
    THREADS,
    compile_module,
    cuda_source,
    kernel_name,
    kernel_names,
)

MAX_BLOCKS = 4096
ADAM_CHUNK = 65536  # elements the CPU twin updates at a time (5 arrays of it: 1.3 MB in float32)

# ---------------------------------------------------------------------- NumPy twins
# Same arguments as the CUDA functions; the same floating-point operations as xpmlp.core.ops.

_scratch = threading.local()


def _scratch_like(array: np.ndarray) -> np.ndarray:
    cached = getattr(_scratch, "array", None)
    if cached is None or cached.shape != array.shape or cached.dtype != array.dtype:
        cached = _scratch.array = np.empty_like(array)
    return cached


def _forward_twin(act: str, z, h):
    if act == "relu":
        np.maximum(z, 0, out=h)
    elif act == "leaky_relu":
        np.multiply(z, ops.LEAKY_SLOPE, out=h)
        np.copyto(h, z, where=z > 0)
    elif act == "tanh":
        np.tanh(z, out=h)
    else:  # sigmoid: 0.5 * (tanh(0.5 * z) + 1)
        np.multiply(z, 0.5, out=h)
        np.tanh(h, out=h)
        h += 1
        h *= 0.5


def _bias_twin(act, dropout, z, b, mask, h, a, n, cols):
    z += b
    if act != "identity":
        _forward_twin(act, z, h)
    if dropout:
        np.multiply(z if act == "identity" else h, mask, out=a)


def _grad_twin(act, dropout, g, mask, z, h, n):
    if dropout:
        g *= mask
    if act == "relu":
        np.multiply(g, z > 0, out=g)
    elif act == "leaky_relu":
        np.multiply(g, ops.LEAKY_SLOPE, out=g, where=~(z > 0))
    elif act == "tanh":
        t = h * h
        np.subtract(1, t, out=t)
        g *= t
    elif act == "sigmoid":
        g *= h
        g *= 1 - h


def _softmax_xent_twin(logits, labels, grad, part, rows, cols, lanes):
    rows_index = np.arange(rows)
    shifted = logits - np.max(logits, axis=1, keepdims=True)
    logp = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    np.exp(logp, out=grad)
    grad[rows_index, labels] -= 1
    grad /= rows
    np.negative(logp[rows_index, labels], out=part[0])
    part[1] = np.argmax(logits, axis=1) == labels


def _xent_sums_twin(part, sums, rows):
    sums += np.sum(part, axis=1)


def adam_scalars(dtype, *, lr, betas, eps, weight_decay, step) -> tuple:
    """The update's constants, computed in float64 on the host and rounded to ``dtype`` once,
    as the portable path's Python floats are when they meet an array."""
    (b1, b2), t = betas, np.dtype(dtype).type
    return (t(b1), t(1 - b1), t(b2), t(1 - b2), t(1 - lr * weight_decay),
            t(math.sqrt(1 - b2**step)), t(eps), t(lr / (1 - b1**step)))  # fmt: skip


def adam_inplace(lib, p, g, m, v, scratch, b1, one_minus_b1, b2, one_minus_b2, decay, bias2_sqrt,
                 eps, step_size):  # fmt: skip
    """Adam with ``lib``'s (NumPy's or CuPy's) ``out=`` ufuncs: no allocation, one pass per
    operation, the portable path's operations in its order."""
    m *= b1
    lib.multiply(g, one_minus_b1, out=scratch)
    m += scratch
    v *= b2
    lib.multiply(g, g, out=scratch)
    scratch *= one_minus_b2
    v += scratch
    if decay != 1:
        p *= decay
    lib.sqrt(v, out=scratch)
    scratch /= bias2_sqrt
    scratch += eps
    lib.divide(m, scratch, out=scratch)
    scratch *= step_size
    p -= scratch


def _adam_twin(p, g, m, v, n, *scalars):
    # In chunks that stay in a core's L2 cache with their scratch: 13 passes over the whole
    # buffer would stream it from memory 13 times (measured 1.4-1.6x slower at 0.3M-2.9M
    # parameters on a 2-core Xeon).
    scratch = _scratch_like(g[:ADAM_CHUNK])
    for start in range(0, p.shape[0], ADAM_CHUNK):
        part = slice(start, start + ADAM_CHUNK)
        size = min(ADAM_CHUNK, p.shape[0] - start)
        adam_inplace(np, p[part], g[part], m[part], v[part], scratch[:size], *scalars)


def _dropout_mask_twin(mask, n, key, threshold, scale):
    keep = (rng.bits_uint32(np, n, int(key)) >> 8) >= threshold
    np.multiply(keep.astype(mask.dtype), scale, out=mask.reshape(-1))


TWINS = {"softmax_xent": _softmax_xent_twin, "xent_sums": _xent_sums_twin, "adam": _adam_twin,
         "dropout_mask": _dropout_mask_twin}  # fmt: skip
for _act in FUSED_ACTIVATIONS:
    for _dropout in (False, True):
        TWINS[kernel_name("bias", _act, _dropout)] = functools.partial(_bias_twin, _act, _dropout)
        TWINS[kernel_name("grad", _act, _dropout)] = functools.partial(_grad_twin, _act, _dropout)


# ---------------------------------------------------------------------- dispatch


class Fused:
    """The fused kernels on one backend and dtype: compiled CUDA on CuPy, the twins on NumPy.

    Every method writes into arrays it allocates or is given, and returns them.
    """

    def __init__(self, backend, dtype: str, functions: dict):
        self.backend, self.dtype = backend, dtype
        self._functions = functions  # name -> callable(blocks, args)

    @property
    def xp(self):
        return self.backend.xp

    def _launch(self, name: str, n: int, *args) -> None:
        self._functions[name](min(max(1, -(-n // THREADS)), MAX_BLOCKS), args)

    def bias_activation(self, act: str, z, b, mask=None):
        """``z += b`` in place; returns ``(h, a)``: ``h = act(z)`` (``z`` itself for identity)
        and ``a = h * mask`` (``h`` when there is no mask)."""
        dropout = mask is not None
        h = z if act == "identity" else self.xp.empty_like(z)
        a = self.xp.empty_like(z) if dropout else h
        rows, cols = z.shape
        self._launch(kernel_name("bias", act, dropout), rows * cols, z, b,
                     mask if dropout else z, h, a, np.int64(rows * cols), np.int64(cols))  # fmt: skip
        return h, a

    def activation_backward(self, act: str, g, mask, z, h):
        """``g = act'(z, h) * (g * mask)`` in place (``mask`` may be None); returns ``g``."""
        dropout = mask is not None
        n = g.shape[0] * g.shape[1]
        self._launch(kernel_name("grad", act, dropout), n, g, mask if dropout else g, z, h,
                     np.int64(n))  # fmt: skip
        return g

    def softmax_xent(self, logits, labels, sums):
        """The gradient of the mean softmax cross-entropy over the batch; adds the batch's loss
        sum and correct count to ``sums`` (a device array of 2) in place."""
        grad = self.xp.empty_like(logits)
        rows, cols = logits.shape
        part = self.xp.empty((2, rows), dtype=logits.dtype, device=self.backend.device)
        if labels.dtype != self.xp.int64:  # the kernel reads them as long long
            labels = self.xp.astype(labels, self.xp.int64)
        lanes = min(THREADS, 1 << (cols - 1).bit_length())  # threads per row: a power of two
        blocks = min(max(1, -(-rows // (THREADS // lanes))), MAX_BLOCKS)
        self._functions["softmax_xent"](blocks, (logits, labels, grad, part, np.int64(rows),
                                                 np.int64(cols), np.int32(lanes)))  # fmt: skip
        self._functions["xent_sums"](1, (part, sums, np.int64(rows)))
        return grad

    def dropout_mask(self, shape: tuple[int, int], rate: float, key: tuple[int, ...]):
        """:func:`xpmlp.core.rng.dropout_mask` (same bits) in one kernel."""
        mask = self.xp.empty(shape, dtype=getattr(self.xp, self.dtype), device=self.backend.device)
        n = shape[0] * shape[1]
        self._launch("dropout_mask", n, mask, np.int64(n), np.uint32(rng.key_hash(key)),
                     np.uint32(rng.drop_threshold(rate)), np.dtype(self.dtype).type(1.0 / (1.0 - rate)))  # fmt: skip
        return mask

    def adam(self, p, g, m, v, *, lr, betas, eps, weight_decay, step):
        """One Adam (AdamW with ``weight_decay``) update of ``p``, ``m`` and ``v`` in place."""
        scalars = adam_scalars(self.dtype, lr=lr, betas=betas, eps=eps,
                               weight_decay=weight_decay, step=step)  # fmt: skip
        self._launch("adam", p.shape[0], p, g, m, v, np.int64(p.shape[0]), *scalars)


_cache: dict = {}
_cache_lock = threading.Lock()


def fused_for(backend, dtype: str) -> Fused | None:
    """The fused kernels for ``backend`` and ``dtype``, or None where the portable path runs:
    namespaces without NumPy/CuPy ufuncs, ``XPMLP_KERNELS=portable``, or kernels that failed to
    compile or their self-check on this device (said once, on stderr)."""
    lib = backend.lib
    if lib is None or os.environ.get("XPMLP_KERNELS", "fused") == "portable":
        return None
    key = (backend.spec, dtype, id(lib))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _build(backend, lib, dtype)
        return _cache[key]


def forget() -> None:
    """Drop what :func:`fused_for` decided (after a driver change, or in tests)."""
    with _cache_lock:
        _cache.clear()


def _build(backend, lib, dtype: str) -> Fused | None:
    if lib is np:
        functions = {name: _twin_launcher(twin) for name, twin in TWINS.items()}
        return Fused(backend, dtype, functions)
    try:
        with backend.activate():
            module = compile_module(lib, dtype)
            functions = {name: _cuda_launcher(module.get_function(name)) for name in TWINS}
            fused = Fused(backend, dtype, functions)
            problem = self_check(fused)
    except Exception as exc:  # a compiler or driver error: the portable path still works
        problem = f"they failed to compile or run ({type(exc).__name__}: {exc})"
    if problem is None:
        return fused
    print(
        f"xpmlp: the fused CUDA kernels are off on {backend.spec} ({dtype}): {problem}; "
        "using the portable path",
        file=sys.stderr,
    )
    return None


def _twin_launcher(twin):
    return lambda blocks, args: twin(*args)


def _cuda_launcher(function):
    return lambda blocks, args: function((blocks,), (THREADS,), args)


def self_check(fused: Fused) -> str | None:
    """Run every kernel on small inputs of several blocks (and a softmax row per group of 16
    threads) and compare with the portable formulas computed on the host; a subnormal gradient
    must reach Adam's update unflushed. Returns what disagreed, or None."""
    dtype = np.dtype(fused.dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    draw = np.random.default_rng(0)
    host = lambda *shape: draw.normal(size=shape).astype(dtype)  # noqa: E731
    device = lambda array: fused.backend.asarray(array, fused.dtype, copy=True)  # noqa: E731
    results = []
    for act in FUSED_ACTIVATIONS:
        activation = ops.get_activation(act)
        z, b, g = host(129, 5), host(5), host(129, 5)
        for mask in (None, (draw.random((129, 5)) > 0.3).astype(dtype) * dtype.type(1 / 0.7)):
            dz, dmask = device(z), None if mask is None else device(mask)
            h, a = fused.bias_activation(act, dz, device(b), dmask)
            want_h = activation.forward(np, z + b)
            want_a = want_h if mask is None else want_h * mask
            bias, grad_name = (
                kernel_name(kind, act, mask is not None) for kind in ("bias", "grad")
            )
            results += [(bias, h, want_h), (bias, a, want_a)]
            got = fused.activation_backward(act, device(g), dmask, device(z + b), device(want_h))
            grad = g if mask is None else g * mask
            results.append((grad_name, got, activation.backward(np, z + b, want_h, grad)))
    logits, labels = host(700, 11) * 10, draw.integers(0, 11, 700)
    sums = device(np.zeros(2, dtype))
    grad = fused.softmax_xent(device(logits), fused.backend.asarray(labels), sums)
    loss, want = ops.softmax_cross_entropy(np, logits, np.eye(11, dtype=dtype)[labels])
    correct = np.sum(np.argmax(logits, axis=1) == labels)
    results += [("softmax_xent", grad, want), ("softmax_xent", sums, [loss * 700, correct])]
    results += _adam_check(fused, host, device)
    want = rng.dropout_mask(np, (37, 19), 0.3, (1, 2, 3), dtype=dtype, device=None)
    results.append(("dropout_mask", fused.dropout_mask((37, 19), 0.3, (1, 2, 3)), want))
    for name, got, want, *tolerance in results:
        got = to_numpy(got)
        if not np.allclose(got, want, *(tolerance or (rtol, rtol))):
            return f"{name} disagrees with the portable path ({got.ravel()[:3]} vs {np.ravel(want)[:3]})"
    return None


def _adam_check(fused: Fused, host, device) -> list:
    p, g, m = host(600), host(600), host(600)
    v = np.abs(host(600))
    p[0] = m[0] = v[0] = 0
    g[0] = 1e-39 if p.dtype == np.float32 else 1e-310  # subnormal: a flushing device loses it
    dp, dm, dv = device(p), device(m), device(v)
    lr, (b1, b2), eps, wd, step = 0.01, (0.9, 0.999), 1e-8, 0.1, 3
    fused.adam(dp, device(g), dm, dv, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, step=step)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p * (1 - lr * wd) - lr / (1 - b1**step) * m / (np.sqrt(v) / np.sqrt(1 - b2**step) + eps)
    # m[0] holds few bits and the reference rounds in another order: 1e-3, but not flushed
    subnormal = ("adam (a subnormal gradient)", dp[:1], p[:1], 1e-3, 0.0)
    return [("adam", dp, p), ("adam", dm, m), ("adam", dv, v), subnormal]
