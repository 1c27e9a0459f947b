"""Gradient check: the analytic gradient against float64 central differences, on any backend."""

from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from .model import MLP


def gradcheck(
    model: MLP,
    X,
    y,
    *,
    eps: float = 1e-5,
    max_entries: int | None = 200,
    seed: int = 0,
    sample_weight=None,
) -> dict[str, float]:
    """Compare :meth:`MLP.loss_and_grads` with central finite differences in float64.

    The model is copied to float64 on its own backend and device; dropout masks, if any, are
    drawn once and held fixed, so the loss is a deterministic function of the parameters.

    Parameters
    ----------
    model : MLP
    X : array of shape (n_samples, n_inputs)
    y : labels of shape (n_samples,) or targets of shape (n_samples, n_outputs)
    eps : float
        Step of the central difference ``(L(p + eps) - L(p - eps)) / (2 eps)``.
    max_entries : int or None
        Entries checked per parameter, chosen at random with ``seed``; None checks them all.
    sample_weight : array of shape (n_samples,), optional
        Check the weighted loss ``sum(w_i * l_i) / sum(w)``.

    Returns
    -------
    dict
        Parameter name -> relative error ``max|analytic - numeric| / max(max|analytic|,
        max|numeric|)`` over the checked entries (0 where both gradients vanish).
    """
    probe = MLP.from_config(model.config(), device=model.backend, dtype="float64")
    probe.load_state_dict(model.state_dict())
    X, y = probe.as_input(X), probe.as_target(y)
    masks = probe.sample_masks(X.shape[0], np.random.default_rng(seed))
    weights = None if sample_weight is None else probe.backend.asarray(sample_weight, probe.dtype)
    _, grads = probe.loss_and_grads(X, y, masks=masks, sample_weight=weights)
    chooser = np.random.default_rng(seed)
    errors = {}
    for name, value in probe.params.items():
        host = to_numpy(value).copy()
        flat = host.reshape(-1)
        entries = np.arange(flat.size)
        if max_entries is not None and flat.size > max_entries:
            entries = chooser.choice(flat.size, size=max_entries, replace=False)
        numeric = np.empty(entries.size)
        for k, index in enumerate(entries):
            numeric[k] = _central_difference(probe, name, host, index, eps, X, y, masks, weights)
        analytic = to_numpy(grads[name]).reshape(-1)[entries]
        scale = max(np.max(np.abs(analytic)), np.max(np.abs(numeric)))
        errors[name] = float(np.max(np.abs(analytic - numeric)) / scale) if scale > 0 else 0.0
    return errors


def _central_difference(probe, name, host, index, eps, X, y, masks, weights) -> float:
    state = probe.state_dict()
    flat = state[name].reshape(-1)
    losses = []
    for shifted in (host.reshape(-1)[index] + eps, host.reshape(-1)[index] - eps):
        flat[index] = shifted
        probe.load_state_dict(state)
        loss, _ = probe.loss_and_grads(X, y, masks=masks, sample_weight=weights)
        losses.append(float(to_numpy(loss)))
    flat[index] = host.reshape(-1)[index]
    probe.load_state_dict(state)
    return (losses[0] - losses[1]) / (2 * eps)
