"""Diagnostics: what went wrong in a training run, said in terms a user can act on.

Today: where a non-finite loss first appeared. The backprop doctor and the per-epoch health
report grow here; they read the model through its public forward record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from ..backend import to_numpy
from ..core import ops
from ..core.model import MLP


def diagnose_nonfinite(
    model: MLP, batches: Iterable, apply_gradients: Callable, *, epoch: int
) -> str:
    """Replay an epoch step by step and say where the loss or a gradient first stopped being finite.

    Parameters
    ----------
    model : MLP
        In the state it had at the start of the failed epoch; the replay updates it (the caller
        restores it afterwards).
    batches : iterable of (step, X_batch, y_batch, masks, lr, weights)
        The failed epoch's batches, as :meth:`Trainer.batches` yields them.
    apply_gradients : callable
        ``apply_gradients(grads, lr=lr)``: the step the run takes (clipping, optimizer).
    epoch : int
        The failed epoch, 1-based, for the message.

    Returns
    -------
    str
        One line: epoch, step, learning rate, loss, and the gradient to blame.
    """
    message = f"loss became non-finite in epoch {epoch}"
    for step, Xb, yb, masks, lr, wb in batches:
        loss, grads, _ = model.batch_loss_and_grads(Xb, model.targets(yb), masks, wb)
        loss = float(to_numpy(loss))
        where = first_nonfinite_gradient(grads)
        if where is not None or not math.isfinite(loss):
            blame = where or largest_gradient(grads)
            return (
                f"{message}, step {step + 1} (learning rate {lr:.3g}): loss = {loss:.4g}; "
                f"{blame}. Lower the learning rate, or clip gradients (--clip-norm); "
                f"the weights are those of the last good epoch"
            )
        apply_gradients(grads, lr=lr)
    return f"{message} (not reproduced on replay); the weights are those of the last good epoch"


def first_nonfinite_gradient(grads: dict) -> str | None:
    """The parameter, in backward order (output layer first), whose gradient first has NaN/inf."""
    for name in reversed(list(grads)):
        if not np.all(np.isfinite(to_numpy(grads[name]))):
            return f"the gradient of {name} is not finite"
    return None


def largest_gradient(grads: dict) -> str:
    norms = {name: float(np.linalg.norm(to_numpy(g))) for name, g in grads.items()}
    name = max(norms, key=norms.get)
    return f"the largest gradient is that of {name} (norm {norms[name]:.3g})"


# ---------------------------------------------------------------------- per-epoch health

PROBE_ROWS = 256  # the fixed probe batch: the first rows of the training set


def health(model: MLP, X_probe, y_probe, before: dict) -> dict:
    """Per-layer health of ``model`` on a fixed probe batch, read back in one transfer.

    Parameters
    ----------
    model : MLP
    X_probe, y_probe : device arrays
        The probe batch (the same rows every epoch) and its labels or targets.
    before : dict
        The parameters at the start of the epoch (device arrays), for the update ratio.

    Returns
    -------
    dict
        ``layers.<i>``: ``dead_fraction`` (ReLU units never active on the probe),
        ``saturated_fraction`` (tanh/sigmoid outputs within 0.01 of their bounds),
        ``activation_std``, ``grad_norm``, ``weight_norm`` and ``update_ratio`` (how far the
        epoch moved the weights, relative to their norm); null where a field does not apply.
        ``output``: mean ``confidence`` (largest class probability) and ``entropy``.
    """
    xp, act = model.xp, model.activation.name
    outputs, records = model.forward_record(X_probe)
    _, grad_outputs = model.output_loss(outputs, model.targets(y_probe))
    grads = model.backward(grad_outputs, records)
    names, values = [], []

    def add(name, value):
        names.append(name)
        values.append(xp.astype(value, model.dtype))

    for i, record in enumerate(records):
        layer = f"layers.{i}"
        if record.activation is not None:
            a, z = record.activation, record.pre_activation
            if act == "relu":
                add(
                    (layer, "dead_fraction"),
                    xp.mean(xp.astype(xp.all(z <= 0, axis=0), model.dtype)),
                )
            if act in ("tanh", "sigmoid"):
                low, high = (-0.99, 0.99) if act == "tanh" else (0.01, 0.99)
                add(
                    (layer, "saturated_fraction"),
                    xp.mean(xp.astype((a < low) | (a > high), model.dtype)),
                )
            add((layer, "activation_std"), xp.std(a))
        weight = model.params[f"{layer}.weight"]
        add((layer, "grad_norm"), _norm(xp, grads[f"{layer}.weight"]))
        add((layer, "weight_norm"), _norm(xp, weight))
        moved = _norm(xp, weight - before[f"{layer}.weight"])
        add((layer, "update_ratio"), moved / (_norm(xp, before[f"{layer}.weight"]) + 1e-12))
    if model.loss_name == "cross_entropy":
        logp = ops.log_softmax(xp, outputs)
        p = xp.exp(logp)
        add(("output", "confidence"), xp.mean(xp.max(p, axis=1)))
        add(("output", "entropy"), xp.mean(-xp.sum(p * logp, axis=1)))
    read = to_numpy(xp.stack(values)).tolist()  # the one transfer
    report: dict = {f"layers.{i}": dict.fromkeys(LAYER_FIELDS) for i in range(model.n_layers)}
    report["output"] = {"confidence": None, "entropy": None}
    for (group, field), value in zip(names, read):
        report[group][field] = float(value)
    return report


LAYER_FIELDS = ("dead_fraction", "saturated_fraction", "activation_std", "grad_norm",
                "weight_norm", "update_ratio")  # fmt: skip


def _norm(xp, array):
    return xp.sqrt(xp.sum(array * array))


# ---------------------------------------------------------------------- notes

UNSCALED_ABOVE = 10.0  # inputs reaching beyond this have likely not been scaled
DIVERGENCE_FACTOR = 10.0  # a training loss above 10x its starting value (+1) has diverged


SCALE_HINT = "scale them to about [0, 1] (--scaling unit, or divide pixels by 255)"


def unscaled_advice(input_max: float | None) -> str:
    """A clause to append to an error when the inputs look unscaled, else ''."""
    if input_max is None or input_max <= UNSCALED_ABOVE:
        return ""
    return f"; your inputs reach {input_max:.4g}: {SCALE_HINT}"


def diverged(train_loss: float, initial_loss: float | None) -> bool:
    """The finite-divergence rule: far above the loss the run started from."""
    return initial_loss is not None and train_loss > DIVERGENCE_FACTOR * initial_loss + 1.0


def notes_for(history: list[dict], *, n_classes: int | None, input_max: float | None) -> list[dict]:
    """What the newest record of ``history`` shows that a user should hear about.

    Each note is ``{"code", "message"}``; codes: ``unscaled_input`` (first epoch only),
    ``dead_units``, ``saturated``, ``vanishing_gradients``, ``exploding_gradients``,
    ``overconfident``, ``overfitting``, ``stuck_at_chance``.
    """
    record, found = history[-1], []

    def note(code: str, message: str) -> None:
        found.append({"code": code, "message": message})

    if record["epoch"] == 1 and input_max is not None and input_max > UNSCALED_ABOVE:
        note("unscaled_input", f"inputs reach {input_max:.4g}: {SCALE_HINT}")
    layers = {k: v for k, v in (record.get("health") or {}).items() if k.startswith("layers.")}
    for name, h in layers.items():
        if (h["dead_fraction"] or 0) > 0.5:
            note("dead_units", f"{name}: {h['dead_fraction']:.0%} of its ReLU units never activate "
                 "on the probe batch; lower the learning rate, or use leaky_relu")  # fmt: skip
        if (h["saturated_fraction"] or 0) > 0.5:
            note("saturated", f"{name}: {h['saturated_fraction']:.0%} of its outputs sit at the "
                 "ends of the activation, where its gradient vanishes; scale the inputs, lower "
                 "the learning rate, or use relu")  # fmt: skip
        if h["grad_norm"] is not None and h["grad_norm"] > 100 * max(h["weight_norm"], 1e-12):
            note("exploding_gradients", f"{name}: gradient norm {h['grad_norm']:.3g} is over "
                 f"100x its weights' ({h['weight_norm']:.3g}); lower the learning rate or clip "
                 "gradients (--clip-norm)")  # fmt: skip
    norms = [h["grad_norm"] for h in layers.values()]
    if len(norms) >= 3 and norms[-1] > 0 and norms[0] < 1e-4 * norms[-1]:
        note("vanishing_gradients", f"the first layer's gradient is {norms[0] / norms[-1]:.1e} of "
             "the last's: it barely learns; use relu and He initialisation")  # fmt: skip
    _validation_notes(history, note)
    chance = 1.0 / n_classes if n_classes else None
    accuracy = record.get("train_accuracy")
    if chance and record["epoch"] >= 3 and accuracy is not None and accuracy < 1.5 * chance:
        note("stuck_at_chance", f"training accuracy {accuracy:.3f} after {record['epoch']} epochs "
             f"is near chance ({chance:.3f}): check that labels match their rows, scale the "
             "inputs, or change the learning rate")  # fmt: skip
    return found


def _validation_notes(history: list[dict], note) -> None:
    """Validation loss rising for two epochs since its best: over-confidence or over-fitting."""
    if history[-1].get("val_loss") is None:  # nothing new to say (and no scan of a long history)
        return
    scored = [r for r in history if r.get("val_loss") is not None]
    if len(scored) < 3:
        return
    best = min(scored, key=lambda r: r["val_loss"])
    last, previous = scored[-1], scored[-2]
    if not (last["val_loss"] > previous["val_loss"] > best["val_loss"]):
        return
    rise = f"validation loss has risen for 2 epochs since its best ({best['val_loss']:.4f}, epoch {best['epoch']})"
    if last["val_accuracy"] is not None and last["val_accuracy"] >= best["val_accuracy"]:
        note("overconfident", f"{rise} while validation accuracy holds or rises "
             f"({last['val_accuracy']:.4f}): the model grows confident on the examples it gets "
             f"wrong; early stopping on loss would restore epoch {best['epoch']}")  # fmt: skip
    elif last["train_loss"] < best["train_loss"]:
        note("overfitting", f"{rise} while the training loss keeps falling: the model is "
             "fitting the training set's noise; add dropout or l2, or stop early "
             f"(--early-stopping; epoch {best['epoch']} was best)")  # fmt: skip
