"""Diagnostics: what went wrong in a training run, said in terms a user can act on.

Today: where a non-finite loss first appeared. The backprop doctor and the per-epoch health
report grow here; they read the model through its public forward record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from .backend import to_numpy
from .model import MLP


def diagnose_nonfinite(
    model: MLP, batches: Iterable, apply_gradients: Callable, *, epoch: int
) -> str:
    """Replay an epoch step by step and say where the loss or a gradient first stopped being finite.

    Parameters
    ----------
    model : MLP
        In the state it had at the start of the failed epoch; the replay updates it (the caller
        restores it afterwards).
    batches : iterable of (step, X_batch, y_batch, masks, lr)
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
    for step, Xb, yb, masks, lr in batches:
        loss, grads, _ = model.batch_loss_and_grads(Xb, model.targets(yb), masks)
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
