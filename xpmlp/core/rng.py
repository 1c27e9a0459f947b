"""Randomness from one seed, the same on every backend.

Each use of randomness gets its own stream, keyed by (seed, purpose, epoch, ...): batch order and
dropout masks of epoch ``e`` depend on nothing but the seed and ``e``. That is what makes a
resumed run bit-identical to an uninterrupted one without saving generator state mid-epoch,
and what makes a CuPy run comparable step by step with a NumPy run.

Weights and batch order are drawn on the host (once per run, once per epoch). Dropout masks are
needed every step, so they are made on the device, from a counter-based generator written in
Array API integer operations: a mask's bits are a hash of (key, element index), where the key
hashes (seed, epoch, step, layer) on the host. No random numbers cross from host to device inside
a step, and the masks are bit-identical on NumPy, CuPy, torch and array-api-strict.
"""

from __future__ import annotations

import numpy as np

from ..backend import ufunc_module

_INIT, _SHUFFLE, _DROPOUT = 0, 1, 2
_MODEL_DROPOUT = 99  # masks drawn by MLP.forward/loss_and_grads when none are passed
_M32 = 0xFFFFFFFF


def generator(seed: int, purpose: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), purpose, *map(int, key)])


def init_generator(seed: int) -> np.random.Generator:
    return generator(seed, _INIT)


def dropout_key(seed: int, epoch: int, step: int) -> tuple[int, ...]:
    """The key of a training step's dropout masks (a layer index is appended per layer)."""
    return (int(seed), _DROPOUT, int(epoch), int(step))


def model_dropout_key(seed: int, call: int) -> tuple[int, ...]:
    """The key of the masks the model draws itself, on its ``call``-th draw."""
    return (int(seed), _MODEL_DROPOUT, int(call))


def batch_order(n_samples: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Indices of the training set in the order epoch ``epoch`` visits them, shape (n_samples,)."""
    if not shuffle:
        return np.arange(n_samples, dtype=np.int64)
    return generator(seed, _SHUFFLE, epoch).permutation(n_samples).astype(np.int64)


def init_weight(rng: np.random.Generator, fan_in: int, fan_out: int, scheme: str) -> np.ndarray:
    """A (fan_in, fan_out) float64 weight matrix.

    ``he``: normal with std sqrt(2 / fan_in), for ReLU-like activations (He et al. 2015).
    ``glorot``: uniform in +-sqrt(6 / (fan_in + fan_out)), for tanh, sigmoid and linear
    layers (Glorot & Bengio 2010).
    """
    if scheme == "he":
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
    if scheme == "glorot":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out))
    raise ValueError(f"unknown init scheme {scheme!r}")


def _mul32(x, c: int):
    """``(x * c) mod 2**32`` for 0 <= x < 2**32 without overflowing int64: in 16-bit halves."""
    return ((x & 0xFFFF) * c + (((x >> 16) * c) & 0xFFFF) * 65536) & _M32


def _hash32(x):
    """A 32-bit integer hash (Wellons' lowbias32), on Python ints or int64 arrays alike."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def key_hash(key: tuple[int, ...]) -> int:
    """Fold a tuple of non-negative ints into one 32-bit key, on the host."""
    h = 0x9E3779B9
    for value in key:
        for part in (value & _M32, (value >> 32) & _M32):
            h = _hash32(h ^ part)
    return h


def dropout_mask(xp, shape: tuple[int, int], rate: float, key: tuple[int, ...], *, dtype, device):
    """Inverted-dropout multipliers of ``shape`` on ``device``: 0 with probability ``rate``,
    else ``1 / (1 - rate)``; the same bits on every backend for the same ``key``.

    Element ``i`` is dropped when the top 24 bits of ``hash(hash(i * golden) ^ key)`` fall below
    ``rate * 2**24``: the drop probability is ``rate`` rounded to a multiple of 2**-24, and the
    decision does not depend on ``dtype``.
    """
    n = shape[0] * shape[1]
    lib = ufunc_module(xp)
    if lib is not None:
        bits = bits_uint32(lib, n, key_hash(key))
    else:
        index = xp.arange(n, dtype=xp.int64, device=device)
        bits = _hash32(_hash32(_mul32(index, 0x9E3779B9)) ^ key_hash(key))
    keep = (bits >> 8) >= drop_threshold(rate)
    return xp.reshape(xp.astype(keep, dtype), shape) * (1.0 / (1.0 - rate))


def drop_threshold(rate: float) -> int:
    """An element is kept when the top 24 bits of its hash are at least this."""
    return round(rate * 2**24)


def bits_uint32(lib, n: int, key: int):
    """The same bits with NumPy/CuPy uint32 arithmetic, which wraps modulo 2**32 by itself: a
    third of the passes of the portable int64 path (tested bit-identical)."""
    x = lib.arange(n, dtype=lib.uint32)
    x *= lib.uint32(0x9E3779B9)
    _hash32_inplace(lib, x)
    x ^= lib.uint32(key)
    _hash32_inplace(lib, x)
    return x


def _hash32_inplace(lib, x) -> None:
    """:func:`_hash32` on a uint32 array, in place."""
    x ^= x >> lib.uint32(16)
    x *= lib.uint32(0x7FEB352D)
    x ^= x >> lib.uint32(15)
    x *= lib.uint32(0x846CA68B)
    x ^= x >> lib.uint32(16)


def as_key(key) -> tuple:
    """A dropout key as a tuple of ints: a tuple as is, an int as a 1-tuple, a NumPy Generator
    as one draw from it."""
    if isinstance(key, np.random.Generator):
        return (int(key.integers(2**63)),)
    if isinstance(key, int | np.integer):
        return (int(key),)
    return tuple(key)
