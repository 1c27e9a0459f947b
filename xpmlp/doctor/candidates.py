"""What a layer's delta should be, and what users compute instead: the candidates the doctor
matches the user's delta against.

The output delta is the loss's (``p - y``, ``s - y``, ``out - y``) at the scale of the user's
convention, or one of the known wrong forms (a softmax Jacobian on top, the sigmoid's derivative
twice, the sign flipped, the 1/n forgotten). A hidden layer's is back-propagated from the user's
own delta of the layer above, ``(delta_above · Wᵀ) * f'(z)``, or that with a wrong derivative,
through the wrong weights, or with the 1/n applied in the wrong layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import ops
from .reference import Probe, derivative_variants

SIGN = ("sign_flipped", "your gradients have the opposite sign (you return the ascent "
        "direction): return dL/dparameter, and let the update subtract it")  # fmt: skip
BATCH_MEAN = ("missing_batch_mean", "your gradients are n times too large: the loss is the mean "
              "over the batch, so divide the output delta (p - y) by the number of samples")  # fmt: skip
JACOBIAN_TWICE = ("softmax_jacobian_twice", "the softmax Jacobian is multiplied in twice: for "
                  "softmax followed by cross-entropy the output delta is already p - y; drop the "
                  "extra p * (1 - p) factor")  # fmt: skip
JACOBIAN_DIAGONAL = ("softmax_jacobian_diagonal", "only the diagonal p * (1 - p) of the softmax "
                     "Jacobian is used on dL/dp = -y / p: the full Jacobian diag(p) - p pᵀ gives "
                     "p - y, the output delta of softmax with cross-entropy; use p - y")  # fmt: skip
SIGMOID_TWICE = ("sigmoid_derivative_twice", "the sigmoid's derivative is multiplied in twice: "
                 "for sigmoid with binary cross-entropy the output delta is already s - y; drop "
                 "the extra s * (1 - s) factor")  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    """A delta the user may have computed, with the findings it implies (none for a right one)
    and ``ratio``, how much larger than the true delta it makes the user's (the 1/n of a mean
    loss forgotten: n)."""

    delta: np.ndarray
    findings: tuple[tuple[str, str], ...] = ()  # (code, message)
    ratio: float = 1.0


def conventions(probe: Probe) -> list[tuple[float, float, str]]:
    """The losses a user of the probe's output may mean, xpmlp's own first: (the loss's value
    on the probe, the output delta's scale it implies, what it is; '' for xpmlp's own)."""
    n, k = probe.n, probe.layer_sizes[-1]
    out, T = probe.outputs(), probe.T
    with np.errstate(all="ignore"):
        if probe.output == "softmax":
            total = float(-np.sum(T * np.log(out)))
            return [(total / n, 1 / n, ""), (total, 1.0, "cross-entropy summed over the samples")]
        if probe.output == "sigmoid":
            total = float(-np.sum(T * np.log(out) + (1 - T) * np.log(1 - out)))
            return [(total / n, 1 / n, ""),
                    (total / (n * k), 1 / (n * k), "binary cross-entropy averaged over the outputs too"),
                    (total, 1.0, "binary cross-entropy summed over the samples")]  # fmt: skip
    squares = float(np.sum((out - T) ** 2))
    return [(squares / (2 * n), 1 / n, ""),
            (squares / n, 2 / n, "the full squared error (not halved), averaged over the samples"),
            (squares / (2 * n * k), 1 / (n * k), "half the squared error averaged over samples and outputs"),
            (squares / (n * k), 2 / (n * k), "the mean squared error over samples and outputs"),
            (squares / 2, 1.0, "half the squared error summed over the samples"),
            (squares, 2.0, "the squared error summed over the samples")]  # fmt: skip


def accepted_scales(probe: Probe) -> dict[float, str]:
    """The output delta's scales the user may have chosen (scale: the loss it belongs to, '' for
    xpmlp's own), when their loss is not known. Cross-entropy is the mean (the API asks for its
    gradients); a summed or full squared error, or a binary cross-entropy averaged or summed
    otherwise, is a convention."""
    scales: dict[float, str] = {}
    for _, scale, what in conventions(probe):
        if probe.output == "softmax" and what:
            continue
        scales.setdefault(scale, what)  # with one or two outputs some coincide: the first names it
    return scales


def output_forms(probe: Probe) -> list[tuple[tuple, np.ndarray]]:
    """(findings, the output delta up to its scale): the right one first, then those users
    compute instead."""
    g = probe.output_error()
    forms = [((), g)]
    if probe.output == "softmax":
        p = probe.outputs()
        pg = p * g
        forms += [((JACOBIAN_TWICE,), pg * (1 - p)),
                  ((JACOBIAN_TWICE,), pg - p * pg.sum(axis=1, keepdims=True)),
                  ((JACOBIAN_DIAGONAL,), -probe.T * (1 - p))]  # fmt: skip
    elif probe.output == "sigmoid":
        s = probe.outputs()
        forms.append(((SIGMOID_TWICE,), g * s * (1 - s)))
    return forms


def summed(scale: float, n: int) -> bool:
    """Whether an output delta of this scale carries no 1/n (a loss summed over the samples)."""
    return n > 2 and scale >= 1.0


def output_candidates(probe: Probe, scales: dict) -> list[Candidate]:
    """The right output delta (at each accepted scale) first, then the known wrong ones."""
    n = probe.n
    every = set(scales) | {n * scale for scale in scales} | {1 / n, 1.0}
    candidates = []
    for sign in (1.0, -1.0):
        for findings, form in output_forms(probe):
            for scale in sorted(every, key=lambda s: (s not in scales, s)):
                candidates.append(scaled_output(sign * scale, findings, form, scales, n))
    return candidates


def scaled_output(factor: float, findings: tuple, form, scales: dict, n: int) -> Candidate:
    """``factor * form`` as the user's output delta, with what its sign and scale say."""
    scale = abs(factor)
    extra = () if scale in scales else (scale_finding(scale, scales, n),)
    signed = (SIGN,) if factor < 0 else ()
    return Candidate(factor * form, findings + signed + extra, n if summed(scale, n) else 1.0)


def scale_finding(scale: float, scales: dict, n: int) -> tuple[str, str]:
    accepted = min(scales, key=lambda s: abs(np.log(scale / s)))
    if np.isclose(scale, n * accepted):
        return BATCH_MEAN
    return ("wrong_scale", f"your output delta is {scale / accepted:.3g} times the one your loss "
            "implies: check the 1/n of a mean loss (and the factor 2 of a squared error)")  # fmt: skip


def hidden_candidates(probe: Probe, i: int, above, got: dict, ratio: float) -> list[Candidate]:
    """Layer ``i``'s delta as back-propagated from the user's own delta above: right, with each
    wrong derivative, through weights other than the ones used forward, and with the 1/n of a
    mean loss forgotten here (or applied here, where the delta above lacks it)."""
    n = probe.n
    back = above @ probe.weights[i + 1].T
    right = back * probe.derivative(i)
    candidates = [Candidate(right)]
    if probe.hidden_variant == "leaky_relu":  # its forward is named; its derivative is fine
        leaky = ops.get_activation("leaky_relu")
        candidates.append(Candidate(leaky.backward(np, probe.pre[i], None, back)))
    if ratio > 1.5:  # the 1/n is applied layer by layer, and the layer above forgot it
        candidates.append(Candidate(right / n, ratio=1 / n))
    candidates.append(Candidate(right * n, ((BATCH_MEAN[0], f"layer {i + 1}'s gradients are "
                                "n times too large: divide them by the number of samples, as "
                                "the other layers'"),), n))  # fmt: skip
    candidates += [Candidate(back * factor, ((code, message),))
                   for code, message, factor in derivative_variants(probe, i)]  # fmt: skip
    candidates += wrong_weight_candidates(probe, i, above, got, right)
    return candidates


def wrong_weight_candidates(probe: Probe, i: int, above, got: dict, right) -> list[Candidate]:
    derivative, W = probe.derivative(i), probe.weights[i + 1]
    code = "delta_through_wrong_weights"
    found = []
    dW_above = got.get(f"layers.{i + 1}.weight")
    if dW_above is not None:
        # W - eta * dW: the weights after this step's update, eta fitted to what the user returned
        step = (above @ dW_above.T) * derivative
        eta = fitted_step(probe, i, got, right, step)
        if abs(eta) > 1e-9:
            found.append(Candidate(right - eta * step, ((code, f"layer {i + 1}'s delta is "
                         f"back-propagated through layer {i + 2}'s weights after they were "
                         f"updated (W - {eta:.3g} * dW): back-propagate first, with the weights "
                         "the forward pass used, and update after"),)))  # fmt: skip
    for j, other in enumerate(probe.weights):
        if j != i + 1 and other.shape == W.shape:
            found.append(Candidate((above @ other.T) * derivative, ((code, f"layer {i + 1}'s "
                         f"delta is back-propagated through layer {j + 1}'s weights; use layer "
                         f"{i + 2}'s (the layer above it)"),)))  # fmt: skip
    return found


def observed(probe: Probe, i: int, delta, with_bias: bool) -> np.ndarray:
    """What the user returns for layer ``i`` if its delta is ``delta``: dW and db, flat."""
    parts = [(probe.inputs[i].T @ delta).ravel()]
    return np.concatenate(parts + [delta.sum(axis=0)] if with_bias else parts)


def fitted_step(probe: Probe, i: int, got: dict, right, step) -> float:
    """The eta with the user's layer-``i`` gradients closest to those of ``right - eta * step``
    (least squares in what they returned: it needs no read-back of their delta)."""
    db = got.get(f"layers.{i}.bias")
    target = np.concatenate([got[f"layers.{i}.weight"].ravel()] + ([db] if db is not None else []))
    base = observed(probe, i, right, db is not None)
    direction = observed(probe, i, step, db is not None)
    return float(np.vdot(base - target, direction) / max(np.vdot(direction, direction), 1e-300))
