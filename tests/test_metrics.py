"""evaluate: loss, accuracy, predictions and confusion matrix in one pass, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from xpmlp import MLP, evaluate, to_numpy


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_evaluate_gives_predictions_and_confusion_in_one_pass(backend, batch_size):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 4)), rng.integers(0, 4, 50)
    model = MLP([4, 8, 4], device=backend, dtype="float64", seed=1)
    result = evaluate(model, X, y, batch_size=batch_size)
    predicted = to_numpy(model.predict(X))
    np.testing.assert_array_equal(result["predictions"], predicted)
    expected = np.zeros((4, 4), np.int64)
    np.add.at(expected, (y, predicted), 1)
    np.testing.assert_array_equal(result["confusion_matrix"], expected)
    assert result["confusion_matrix"].dtype == np.int64
    assert result["accuracy"] == pytest.approx(np.mean(predicted == y), abs=1e-15)
    probabilities = to_numpy(model.predict_proba(X))
    expected_loss = -np.mean(np.log(probabilities[np.arange(50), y]))
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-12)


def test_evaluate_regression_has_no_confusion(backend):
    model = MLP([3, 2], loss="mse", device=backend, dtype="float64")
    X, targets = np.ones((5, 3)), np.zeros((5, 2))
    result = evaluate(model, X, targets)
    assert result["accuracy"] is None and result["confusion_matrix"] is None
    assert result["predictions"].shape == (5, 2)
