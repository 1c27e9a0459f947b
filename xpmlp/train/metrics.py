"""Evaluation: loss, accuracy, predictions and the confusion matrix of a model, in one pass.

Everything accumulates on the device; the host reads the sums once, at the end.
"""

from __future__ import annotations

from ..backend import to_numpy
from ..core import ops
from ..core.model import EVAL_BATCH, MLP
from ..data.inputs import check_rows


def zero(model: MLP):
    """A device scalar 0 of the model's dtype, to accumulate into."""
    return model.xp.zeros((), dtype=model.dtype, device=model.backend.device)


def correct_count(model: MLP, outputs, labels):
    """How many rows of ``outputs`` have their largest value at ``labels`` (a device scalar)."""
    if model.loss_name != "cross_entropy":
        return zero(model)
    xp = model.xp
    return xp.sum(xp.astype(xp.argmax(outputs, axis=1) == labels, model.dtype))


def confusion_counts(xp, labels, predicted, n_classes: int, dtype):
    """(n_classes, n_classes) int64 counts, rows the true class, columns the predicted one.

    One matmul of one-hot matrices in the float ``dtype`` (exact: a chunk's counts stay far below
    2**24; GPUs have no integer GEMM), converted to int64 before chunks are summed.
    """
    true = ops.one_hot(xp, labels, n_classes, dtype)
    guess = ops.one_hot(xp, xp.astype(predicted, labels.dtype), n_classes, dtype)
    return xp.astype(true.T @ guess, xp.int64)


def evaluate(model: MLP, X, y, *, batch_size: int = EVAL_BATCH, checked: bool = False) -> dict:
    """Loss, accuracy, predictions and confusion matrix of ``model`` on (X, y), in one pass.

    Parameters
    ----------
    model : MLP
    X : array of shape (n_samples, n_inputs)
    y : integer labels of shape (n_samples,) (cross-entropy) or targets (n_samples, n_outputs)
    batch_size : int
        Rows per forward pass.
    checked : bool
        X and y are already the model's device arrays, checked (the trainer's per-epoch
        evaluation): no label check, which on a GPU costs a host sync.

    Returns
    -------
    dict
        ``loss`` (float, the mean loss without the L2 term), ``accuracy`` (float; None for mse),
        ``predictions`` (host array: labels (n_samples,), or outputs (n_samples, n_outputs) for
        mse) and ``confusion_matrix`` (host int64 array (n_classes, n_classes), rows the true
        class; None for mse).
    """
    with model.backend.activate():
        if not checked:
            X, y = model.as_input(X), model.as_target(y)
            check_rows(X, y)
        return _evaluate(model, X, y, batch_size)


def _evaluate(model: MLP, X, y, batch_size: int) -> dict:
    xp, n = model.xp, X.shape[0]
    classify = model.loss_name == "cross_entropy"
    loss_sum, confusion, predictions = zero(model), None, []
    for start in range(0, n, batch_size):
        # The standard leaves slices that run past the end undefined.
        stop = min(start + batch_size, n)
        Xb, yb = X[start:stop, ...], y[start:stop, ...]
        outputs = model.outputs(Xb, batch_size=batch_size)
        loss, _ = model.output_loss(outputs, model.targets(yb))
        loss_sum = loss_sum + loss * Xb.shape[0]
        if classify:
            predicted = xp.argmax(outputs, axis=1)
            counts = confusion_counts(xp, yb, predicted, model.n_outputs, model.dtype)
            confusion = counts if confusion is None else confusion + counts
            predictions.append(predicted)
        else:
            predictions.append(outputs)
    if n == 0:
        return {"loss": float("nan"), "accuracy": None, "predictions": to_numpy(model.outputs(X)),
                "confusion_matrix": None}  # fmt: skip
    predictions = predictions[0] if len(predictions) == 1 else xp.concat(predictions, axis=0)
    result = {"loss": float(to_numpy(loss_sum)) / n, "accuracy": None,
              "predictions": to_numpy(predictions), "confusion_matrix": None}  # fmt: skip
    if classify:
        confusion = to_numpy(confusion)
        result["confusion_matrix"] = confusion
        result["accuracy"] = float(confusion.trace()) / n
    return result
