"""Randomness made on the host from one seed, so every backend sees the same numbers.

Each use of randomness gets its own stream, keyed by (seed, purpose, epoch): batch order and
dropout masks of epoch ``e`` depend on nothing but the seed and ``e``. That is what makes a
resumed run bit-identical to an uninterrupted one without saving generator state mid-epoch,
and what makes a CuPy run comparable step by step with a NumPy run.
"""

from __future__ import annotations

import numpy as np

_INIT, _SHUFFLE, _DROPOUT = 0, 1, 2
_MODEL_DROPOUT = 99  # masks drawn by MLP.forward/loss_and_grads when none are passed


def generator(seed: int, purpose: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), purpose, *map(int, key)])


def init_generator(seed: int) -> np.random.Generator:
    return generator(seed, _INIT)


def dropout_generator(seed: int, epoch: int) -> np.random.Generator:
    return generator(seed, _DROPOUT, epoch)


def model_dropout_generator(seed: int) -> np.random.Generator:
    return generator(seed, _MODEL_DROPOUT)


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


def dropout_mask(rng: np.random.Generator, shape: tuple[int, int], rate: float, dtype=np.float32):
    """Inverted-dropout multipliers of ``shape``: 0 with probability ``rate``, else 1 / (1 - rate).

    The draw is float32 whatever ``dtype`` is, so float32 and float64 runs drop the same units.
    """
    keep = rng.random(shape, dtype=np.float32) >= rate
    return keep.astype(dtype) * dtype(1.0 / (1.0 - rate))
