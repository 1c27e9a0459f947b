"""The user's own ``loss(weights, biases, X, Y)``: their gradients checked against its float64
central differences (no knowledge of their network needed), and its value read for the
convention it follows (mean or summed, half or full squared error)."""

from __future__ import annotations

import numpy as np

from .candidates import conventions
from .layouts import Layout, user_arguments
from .reference import Probe
from .report import Finding

ENTRIES = 16  # sampled entries per parameter
# per precision of the user's loss: (step of a central difference, relative to the entry; the
# largest relative error that still agrees; how close its value must be to a known loss's).
# float32 rounds at 6e-8: its differences need a step near sqrt(eps) and a looser verdict
PRECISION = {8: (1e-6, 1e-4, 1e-8), 4: (3e-3, 2e-2, 1e-5)}


def _value(loss, probe: Probe, shape: Layout) -> float:
    return float(np.asarray(loss(*user_arguments(probe, shape))))


def precision(loss, probe: Probe, shape: Layout) -> tuple[float, float, float]:
    """The step, agreement and closeness for the precision the user's loss computes in."""
    itemsize = np.asarray(loss(*user_arguments(probe, shape))).dtype.itemsize
    return PRECISION[4 if itemsize <= 4 else 8]


def loss_check(loss, probe: Probe, shape: Layout, got: dict) -> tuple[dict, list[Finding]]:
    """(parameter: largest relative error against central differences, findings where it
    disagrees). Each entry's step is scaled to the entry."""
    rng = np.random.default_rng(0)
    step, agree, _ = precision(loss, probe, shape)
    errors, findings = {}, []
    for name, value in got.items():
        if value is None:
            continue
        i, kind = int(name.split(".")[1]), name.split(".")[2]
        parameter = (probe.weights if kind == "weight" else probe.biases)[i]
        flat = parameter.reshape(-1)
        picked = rng.choice(flat.size, size=min(ENTRIES, flat.size), replace=False)
        numeric = np.array([_central_difference(loss, probe, shape, flat, j, step) for j in picked])
        mine = value.reshape(-1)[picked]
        floor = 1e-6 * max(np.max(np.abs(value)), 1e-12)
        errors[name] = float(
            np.max(np.abs(mine - numeric) / (np.maximum(np.abs(mine), np.abs(numeric)) + floor))
        )
        if errors[name] > agree:
            findings.append(Finding("disagrees_with_loss", f"your gradient for layer {i + 1}'s "
                            f"{kind}s disagrees with central differences of your own loss: "
                            f"largest relative error {errors[name]:.3g}", name, i + 1))  # fmt: skip
    return errors, findings


def _central_difference(loss, probe: Probe, shape: Layout, flat, j: int, relative: float) -> float:
    keep = flat[j]
    step = relative * max(1.0, abs(keep))
    try:
        flat[j] = keep + step
        up = _value(loss, probe, shape)
        flat[j] = keep - step
        down = _value(loss, probe, shape)
    finally:
        flat[j] = keep  # the probe's weights as they were, even when the loss raised
    return (up - down) / (2 * step)


def convention_of(loss, probe: Probe, shape: Layout) -> tuple[dict | None, str | None]:
    """({scale: what} the user's loss implies, a note), or (None, why) where the value is none
    of the known network's losses (another architecture: only the differences speak)."""
    value = _value(loss, probe, shape)
    _, _, closeness = precision(loss, probe, shape)
    for reference, scale, what in conventions(probe):
        if np.isclose(value, reference, rtol=closeness, atol=1e-12):
            return {scale: what}, (
                f"your loss is {what}: a convention, not a bug" if what else None
            )
    return None, (f"your loss is {value:.6g}, none of the {probe.output} network's losses the "
                  "doctor knows (another architecture, or a penalty term?): your gradients are "
                  "checked against your loss alone")  # fmt: skip
