"""The user's gradients, localised by the error signal: which layer's delta is wrong, and why.

:func:`check_gradients` hands the user's ``grads(weights, biases, X, Y)`` float64 weights and
data. Going down from the output, each layer's delta (its error signal, dL/dz) is read back from
what the user returned (``dW = a_prevᵀ · delta``, ``db = sum(delta)``: the probe has fewer samples
than any layer has inputs, so the delta is determined, or shown inconsistent) and compared with
what it should be *given the user's own delta of the layer above*: the output delta with the
loss's, a hidden one with ``(delta_above · Wᵀ) * f'(z)``. A wrong delta is named by what the user
multiplied by instead (no derivative, twice, of the wrong array, the softmax Jacobian...); then
whether dW and db are built right from the user's own delta. Every layer is judged against the
user's own upstream delta, so a bug is reported once, where it is, and never blamed downstream:
fixing the findings in any order makes no new one appear.

With the user's ``loss(weights, biases, X, Y)`` the gradients are first checked against central
differences of that loss (any architecture), and its value says which convention it follows
(mean or summed, half or full squared error).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .candidates import (
    BATCH_MEAN,
    Candidate,
    accepted_scales,
    hidden_candidates,
    observed,
    output_candidates,
    output_forms,
    scaled_output,
)
from .layouts import Layout, call_user
from .reference import HIDDEN_VARIANTS, OUTPUTS, Probe, make_probe, with_hidden
from .report import Finding, Report, close, relative_error
from .userloss import convention_of, loss_check


def check_gradients(
    grads: Callable,
    layer_sizes: Sequence[int],
    *,
    activation: str = "relu",
    loss: str | Callable = "cross_entropy",
    output: str | None = None,
    bias: bool = True,
    labels: str = "onehot",
    layout: str = "rows",
    bias_layout: str = "separate",
    returns: str = "gradient",
    lr: float = 1.0,
    n_samples: int | None = None,
    seed: int = 0,
) -> Report:
    """Check ``grads(weights, biases, X, Y) -> (dweights, dbiases)`` against xpmlp.

    Parameters
    ----------
    grads : callable
        Your backward pass. It receives lists of float64 arrays, ``weights[i]`` of shape
        (fan_in, fan_out) and ``biases[i]`` of shape (fan_out,) (``None`` with ``bias=False``),
        X of shape (n, n_in) and Y: one-hot rows (n, n_classes) or integer labels (n,), per
        ``labels`` (``layout="columns"``: everything transposed, as column-major code has it).
        It returns the gradients of the loss in the same layout (a bias gradient of shape
        (1, fan_out) or (fan_out, 1) is accepted).
    layer_sizes : sequence of int
        ``(n_in, hidden..., n_outputs)``.
    activation : str
        The hidden layers' activation: relu, tanh or sigmoid (or any of xpmlp's).
    loss : str or callable
        ``cross_entropy``, ``binary_cross_entropy`` or ``mse`` (the output it implies), or your
        own ``loss(weights, biases, X, Y) -> float``: your gradients are then checked against
        central differences of it, and its value tells mean from summed, half from full.
    output : str
        ``softmax``, ``sigmoid`` or ``identity`` (default: from ``loss``).
    bias, bias_layout : bool, str
        Whether the layers have biases; ``separate`` lists, or ``folded_first``/``folded_last``:
        each bias a row of its W (a column in ``layout="columns"``), for inputs with a ones
        column.
    returns, lr : str, float
        ``gradient``; ``update``, the step you add to the weights (``-lr * gradient``); or
        ``updated``, the weights after the step.
    """
    output = output or _output_of(loss)
    probe = make_probe(layer_sizes, activation=activation, output=output, bias=bias,
                       seed=seed, n_samples=n_samples)  # fmt: skip
    shape = Layout(layout=layout, bias_layout=bias_layout if bias else "none", labels=labels,
                   returns=returns, lr=lr)  # fmt: skip
    got, failure = call_user(grads, probe, shape)
    if failure is not None:
        return Report([failure])
    findings = _shape_findings(got, probe)
    if any(f.code in ("shape_mismatch", "non_finite") for f in findings):
        return Report(findings)  # nothing to read a delta from
    report = Report(findings)
    scales = accepted_scales(probe)
    if callable(loss):
        try:
            report.loss_check, disagree = loss_check(loss, probe, shape, got)
            scales, note = convention_of(loss, probe, shape)
        except Exception as exc:  # their code: say what it raised, as for grads
            return Report([Finding("crashed", f"loss raised {type(exc).__name__}: {exc}")])
        report.notes += [note] if note else []
        if scales is None:  # not a network xpmlp knows: the differences are the whole verdict
            report.findings += disagree
            return report
    probe, variant = _users_forward(probe, got, scales)
    report.findings += variant
    report.findings += _localise(probe, got, scales, [] if callable(loss) else report.notes)
    report.findings = _merged(report.findings, probe.n_layers)
    return report


def _output_of(loss) -> str:
    if callable(loss):
        return "softmax"
    for output, name in OUTPUTS.items():
        if loss == name:
            return output
    raise ValueError(f"loss must be one of {', '.join(OUTPUTS.values())} or a function")


# ---------------------------------------------------------------------- shapes


def _shape_findings(got: dict, probe: Probe) -> list[Finding]:
    """Missing or misshapen gradients (a transposed one is turned back, and named)."""
    findings = []
    for i in range(probe.n_layers):
        for kind, want in (("weight", probe.weights[i]), ("bias", probe.biases[i])):
            name = f"layers.{i}.{kind}"
            if kind == "bias" and not probe.bias:
                continue
            value = got.get(name)
            if value is not None and kind == "bias" and value.size == 1 and want.size > 1:
                value = got[name] = np.full(want.shape, value.item())  # summed to one number
            if value is None:
                findings.append(Finding("shape_mismatch", f"no gradient returned for "
                                        f"{_user(name)}", name, i + 1))  # fmt: skip
            elif value.shape != want.shape and value.T.shape == want.shape:
                got[name] = value.T
                findings.append(Finding("transposed", f"your gradient for {_user(name)} is "
                                        f"transposed: it should have shape {want.shape} like the "
                                        "weight (X.T @ delta, not delta.T @ X)", name, i + 1))  # fmt: skip
            elif value.shape != want.shape and kind == "bias":
                got[name] = None  # the layer is judged by its weight gradient alone
                findings.append(Finding("bias_gradient_wrong", f"your gradient for {_user(name)} "
                                        f"has shape {value.shape}; sum delta over axis 0 (the "
                                        f"samples) to get shape {want.shape}", name, i + 1))  # fmt: skip
            elif value.shape != want.shape:
                findings.append(Finding("shape_mismatch", f"your gradient for {_user(name)} has "
                                        f"shape {value.shape}; the parameter has {want.shape}",
                                        name, i + 1))  # fmt: skip
            elif not np.all(np.isfinite(value)):
                findings.append(Finding("non_finite", "your gradient has NaN or inf entries; "
                                        "look for exp overflow or a division by zero", name,
                                        i + 1))  # fmt: skip
    return findings


# ---------------------------------------------------------------------- layer by layer


def _users_forward(probe: Probe, got: dict, scales: dict) -> tuple[Probe, list[Finding]]:
    """The forward pass the user's gradients were computed on: xpmlp's, or (where the output
    layer's gradients say so) one with a floored or leaky ReLU, named."""
    if probe.activation != "relu":
        return probe, []
    candidates = output_candidates(probe, scales)
    last = probe.n_layers - 1
    if not _judge_layer(probe, last, got, candidates)[1]:
        return probe, []
    for variant, said in HIDDEN_VARIANTS.items():
        other = with_hidden(probe, variant)
        delta, findings, _ = _judge_layer(other, last, got, output_candidates(other, scales))
        if delta is not None and not any(f.code == "not_recognised" for f in findings):
            return other, [Finding("activation_forward_wrong", f"your grads' forward pass "
                                   f"computes {said}", None, None)]  # fmt: skip
    return probe, []


def _localise(probe: Probe, got: dict, scales: dict, notes: list) -> list[Finding]:
    """Every layer's findings, from the output down; each judged against the user's own delta
    of the layer above. ``ratio`` follows how much larger than the true delta the user's is
    (n where the 1/n of a mean loss is still to come, in a layer below)."""
    findings, above, ratio, per_layer_mean = [], None, 1.0, False
    convention = False  # the output delta has no 1/n and the user's loss may be summed
    last = probe.n_layers - 1
    for i in reversed(range(probe.n_layers)):
        if above is None:
            delta, layer_findings, match = _judge_output(probe, got, scales)
            convention = match is not None and match.ratio > 1.5 and not match.findings
        else:
            candidates = hidden_candidates(probe, i, above, got, ratio)
            delta, layer_findings, match = _judge_layer(probe, i, got, candidates)
            if match is not None and match.ratio < 1 and convention:
                per_layer_mean, convention = True, False
        findings += layer_findings
        if match is not None:
            ratio *= match.ratio
        if delta is None:
            break  # the user's delta here cannot be read back: the layers below can't be judged
        if above is None:
            output_notes = _convention_notes(probe, delta, scales)
        above = delta
    if per_layer_mean and not any(
        f.code == BATCH_MEAN[0] and f.layer == last + 1 for f in findings
    ):
        # the hidden layers take the 1/n the output layer left out: not a summed loss after all
        findings.append(Finding(*BATCH_MEAN, None, last + 1))
        output_notes = []
    notes += output_notes if above is not None else []
    return findings


def _judge_output(probe: Probe, got: dict, scales: dict):
    """The output layer: a known output delta, or a known form at a scale fitted to the user's
    gradients (a factor 2 or a 1/k forgotten)."""
    last = probe.n_layers - 1
    delta, findings, match = _judge_layer(probe, last, got, output_candidates(probe, scales))
    if match is not None:
        return delta, findings, match
    db = got.get(f"layers.{last}.bias")
    target = np.concatenate(
        [got[f"layers.{last}.weight"].ravel()] + ([db] if db is not None else [])
    )
    for form_findings, form in output_forms(probe):
        seen = observed(probe, last, form, db is not None)
        factor = float(np.vdot(seen, target) / max(np.vdot(seen, seen), 1e-300))
        if abs(factor) > 1e-12 and close(factor * seen, target):
            candidate = scaled_output(factor, form_findings, form, scales, probe.n)
            return candidate.delta, _located(candidate.findings, last, probe), candidate
    return delta, findings, None


def _judge_layer(probe: Probe, i: int, got: dict, candidates: list[Candidate]):
    """(the user's delta at layer ``i``, or None; the findings there; the candidate matched)."""
    A, dW = probe.inputs[i], got[f"layers.{i}.weight"]
    db = got.get(f"layers.{i}.bias")
    match = _first_match(candidates, A, dW, db)
    if match is not None:
        return match.delta, _located(match.findings, i, probe), match
    # dW and db disagree with every candidate: which of them is built wrong?
    for label, B, dW_used in _weight_sources(probe, i, dW):
        match = _first_match(candidates, B, dW_used, None)
        if match is None:
            continue
        findings = _located(match.findings, i, probe)
        if label == "transposed":
            findings.append(Finding("transposed", f"your gradient for layer {i + 1}'s weights is "
                                    "transposed (delta.T @ X, not X.T @ delta)",
                                    f"layers.{i}.weight", i + 1))  # fmt: skip
        elif label is not None:
            findings.append(_wrong_input_finding(i, label))
        if db is not None and not close(db, match.delta.sum(axis=0)):
            findings.append(_bias_finding(i, db, match.delta))
        return match.delta, findings, match
    if db is not None:  # the weight gradient matches nothing; is the bias right?
        match = next((c for c in candidates if close(db, c.delta.sum(axis=0))), None)
        if match is not None and not match.findings:
            return match.delta, [_unrecognised(f"layers.{i}.weight", dW, A.T @ match.delta)], match
    delta = _read_back(A, dW, db)
    if delta is not None:
        return delta, [_unrecognised_delta(probe, i, delta, candidates[0].delta)], None
    return None, [_unrecognised(f"layers.{i}.weight", dW, A.T @ candidates[0].delta)], None


def _first_match(candidates, A, dW, db) -> Candidate | None:
    for candidate in candidates:
        if close(dW, A.T @ candidate.delta) and (
            db is None or close(db, candidate.delta.sum(axis=0))
        ):
            return candidate
    return None


def _weight_sources(probe: Probe, i: int, dW):
    """(what it is, the array dW was built from, dW as used): the layer's own input first, then
    the arrays of the forward pass users take instead."""
    sources = [(None, probe.inputs[i], dW)]
    if dW.shape[0] == dW.shape[1]:
        sources.append(("transposed", probe.inputs[i], dW.T))
    for j, array in enumerate(probe.inputs):
        if j != i and array.shape[1] == dW.shape[0]:
            sources.append(("X" if j == 0 else f"layer {j}'s activation", array, dW))
    for j, z in enumerate(probe.pre[:-1]):
        if z.shape[1] == dW.shape[0]:
            sources.append((f"layer {j + 1}'s pre-activation z", z, dW))
    return sources


def _read_back(A, dW, db=None) -> np.ndarray | None:
    """The delta with ``Aᵀ · delta = dW`` (and ``sum(delta) = db``), where it is determined and
    exists."""
    if db is not None:
        A, dW = np.hstack([A, np.ones((A.shape[0], 1))]), np.vstack([dW, db])
    if np.linalg.matrix_rank(A) < A.shape[0]:
        return None
    delta, *_ = np.linalg.lstsq(A.T, dW, rcond=None)
    return delta if close(A.T @ delta, dW) else None


# ---------------------------------------------------------------------- findings


def _located(findings, i: int, probe: Probe) -> list[Finding]:
    """Output-delta findings concern the whole network (no parameter); hidden ones a layer."""
    return [Finding(code, message, None, i + 1) for code, message in findings]


def _bias_finding(i: int, db, delta) -> Finding:
    name, layer, n = f"layers.{i}.bias", i + 1, delta.shape[0]
    if any(close(db, row) for row in delta):
        message = (f"your bias gradient for layer {layer} is one sample's delta: in a per-sample "
                   "loop, add each sample's delta (+=), do not assign it (=)")  # fmt: skip
    elif db.size > 1 and np.allclose(db, db.flat[0]):
        message = (f"your bias gradient for layer {layer} has the same value in every entry: "
                   "sum delta over axis 0 (samples), not over the units")  # fmt: skip
    elif close(db, delta.mean(axis=0)):
        message = (f"your bias gradient for layer {layer} is delta averaged over the samples: "
                   "sum it (the 1/n is already in delta)")  # fmt: skip
    elif close(db, n * delta.sum(axis=0)):
        return Finding("missing_batch_mean", f"your bias gradient for layer {layer} is n times "
                       "too large: divide it by the batch size, as the weight gradient", name,
                       layer)  # fmt: skip
    elif close(db, -delta.sum(axis=0)):
        return Finding("sign_flipped", f"your bias gradient for layer {layer} has the opposite "
                       "sign of its weight gradient: flip its sign", name, layer)  # fmt: skip
    else:
        message = (f"your bias gradient for layer {layer} is not the sum of delta over the "
                   "samples (axis 0)")  # fmt: skip
    return Finding("bias_gradient_wrong", message, name, layer)


def _wrong_input_finding(i: int, label: str) -> Finding:
    return Finding("wrong_layer_input", f"your weight gradient for layer {i + 1} is built from "
                   f"{label}; it must be the layer's own input (X for layer 1, else the "
                   "previous layer's activation) transposed, times delta", f"layers.{i}.weight",
                   i + 1)  # fmt: skip


def _unrecognised(name: str, value, want) -> Finding:
    return Finding("not_recognised", f"your gradient for {_user(name)} is the first (going "
                   "backward from the output) that differs from xpmlp's, by "
                   f"{relative_error(value, want):.3g} relative; the layers after it are right",
                   name, _layer(name))  # fmt: skip


def _unrecognised_delta(probe: Probe, i: int, delta, right) -> Finding:
    where = ("the output delta" if i == probe.n_layers - 1
             else f"layer {i + 1}'s delta, back-propagated from layer {i + 2}'s,")  # fmt: skip
    return Finding("not_recognised", f"{where} differs from xpmlp's by "
                   f"{relative_error(delta, right):.3g} relative, in no way the doctor knows; "
                   "the layers after it are right", f"layers.{i}.weight", i + 1)  # fmt: skip


def _convention_notes(probe: Probe, delta, scales: dict) -> list[str]:
    for scale, what in scales.items():
        if what and any(close(delta, sign * scale * probe.output_error()) for sign in (1, -1)):
            if "summed" in what:
                return [
                    f"your gradients are those of {what}: right if your loss is summed too; "
                    "if it is the mean, divide the output delta by n (pass your loss() to "
                    "have it checked)"
                ]
            return [f"your gradients are those of {what}: a convention, not a bug"]
    return []


def _merged(findings: list[Finding], n_layers: int) -> list[Finding]:
    """One finding per cause: the same code and advice at several layers is reported once, at
    the layer nearest the output, naming the layers where it is (a hidden layer's delta: unless
    it is in all of them); then in layer order."""
    groups: dict[tuple, list[Finding]] = {}
    for finding in findings:
        same = _template(finding) if finding.parameter else finding.message
        groups.setdefault((finding.code, same), []).append(finding)
    out = []
    for group in groups.values():
        first, layers = group[0], sorted({f.layer for f in group if f.layer is not None})
        message = first.message
        if first.parameter is not None and len(layers) > 1:
            message += f" (also in layer {', '.join(str(k) for k in layers if k != first.layer)})"
        elif first.parameter is None and first.layer not in (None, n_layers):
            if len(layers) < n_layers - 1 and f"layer {first.layer}" not in message:
                message += f" (layer {', '.join(map(str, layers))})"
        out.append(Finding(first.code, message, first.parameter, first.layer))
    return sorted(out, key=lambda f: (f.layer is None, f.layer or 0))


def _template(finding: Finding) -> str:
    """The message with its layer numbers left out."""
    return "".join(ch for ch in finding.message if not ch.isdigit())


def _layer(name: str) -> int:
    return int(name.split(".")[1]) + 1


def _user(name: str) -> str:
    kind = "weights" if name.endswith(".weight") else "biases"
    return f"layer {_layer(name)}'s {kind}"
