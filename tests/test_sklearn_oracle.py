"""xpmlp.sklearn against scikit-learn's own MLPs as the oracle: from the same weights, with the
same parameters, the same loss curve and the same weights after training.

Full batches without shuffling, so that both see the same batches; float64. scikit-learn's warm
start is how both are given the same starting weights.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from optional import need

sklearn = need("sklearn")

from sklearn import neural_network  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import xpmlp.sklearn as ours  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SGD = {"solver": "sgd", "learning_rate_init": 0.05, "momentum": 0.0}
CASES = {
    "sgd": SGD,
    "sgd, alpha": {**SGD, "alpha": 0.05},
    "momentum": {**SGD, "momentum": 0.9, "nesterovs_momentum": False},
    "nesterov": {**SGD, "momentum": 0.9},
    "invscaling": {**SGD, "learning_rate": "invscaling", "learning_rate_init": 0.5, "power_t": 0.3},
    # tol beyond reach: the loss "never improves", so the rate is cut every n_iter_no_change + 1
    "adaptive": {**SGD, "learning_rate": "adaptive", "tol": 10.0, "n_iter_no_change": 2},
    "stopping": {**SGD, "tol": 10.0, "n_iter_no_change": 3},
}  # fmt: skip


@pytest.fixture(scope="module")
def data():
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    return X, y, X[:, :2] @ np.array([1.0, -2.0]) + 0.1


@pytest.fixture(scope="module")
def problems(data):
    """(estimator, y): three classes (softmax outputs), two (one sigmoid output), a multilabel
    indicator matrix (a sigmoid output per label), and regression."""
    X, labels, targets = data
    indicator = np.stack([labels == 0, X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(int)
    return {
        "three classes": ("MLPClassifier", labels),
        "two classes": ("MLPClassifier", np.where(labels == 2, "virginica", "other")),
        "multilabel": ("MLPClassifier", indicator),
        "regression": ("MLPRegressor", targets),
    }


def _start(n_in: int, n_out: int) -> tuple[list, list]:
    generator = np.random.default_rng(0)
    sizes = [n_in, 6, 5, n_out]
    coefs = [generator.normal(scale=0.5, size=pair) for pair in zip(sizes, sizes[1:])]
    return coefs, [generator.normal(scale=0.1, size=size) for size in sizes[1:]]


def _both(kind: str, settings: dict, X, y, sample_weight=None, epochs: int = 12):
    common = dict(hidden_layer_sizes=(6, 5), batch_size=len(X), shuffle=False, warm_start=True,
                  random_state=0, **{"tol": 0.0, "n_iter_no_change": 1000, **settings})  # fmt: skip
    theirs = getattr(neural_network, kind)(max_iter=1, **common).fit(X, y)
    coefs, intercepts = _start(X.shape[1], theirs.n_outputs_)
    theirs.t_, theirs.loss_curve_, theirs.best_loss_, theirs._no_improvement_count = (
        0,
        [],
        np.inf,
        0,
    )
    mine = getattr(ours, kind)(max_iter=epochs, **common)
    for model in (theirs, mine):
        model.set_params(max_iter=epochs)
        model.coefs_ = [c.copy() for c in coefs]
        model.intercepts_ = [b.copy() for b in intercepts]
        model.fit(X, y, sample_weight=sample_weight)
    return mine, theirs


def _assert_same(mine, theirs):
    np.testing.assert_allclose(mine.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    for a, b in zip(mine.coefs_ + mine.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert (mine.n_iter_, mine.t_) == (theirs.n_iter_, theirs.t_)
    assert mine.best_loss_ == pytest.approx(theirs.best_loss_, rel=1e-12)


@pytest.mark.parametrize("problem", ["three classes", "two classes", "multilabel", "regression"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_same_steps_as_scikit_learn(data, problems, problem, case):
    kind, y = problems[problem]
    mine, theirs = _both(kind, case, data[0], y)
    _assert_same(mine, theirs)
    assert (mine.n_outputs_, mine.out_activation_) == (theirs.n_outputs_, theirs.out_activation_)
    if kind == "MLPClassifier":
        np.testing.assert_array_equal(mine.classes_, theirs.classes_)
        np.testing.assert_array_equal(mine.predict(data[0]), theirs.predict(data[0]))
        np.testing.assert_allclose(mine.predict_proba(data[0]), theirs.predict_proba(data[0]),
                                   rtol=1e-9, atol=1e-12)  # fmt: skip


def test_the_adaptive_rate_is_cut_until_training_stops(data):
    X, labels, _ = data
    mine, theirs = _both("MLPClassifier", CASES["adaptive"], X, labels, epochs=200)
    _assert_same(mine, theirs)
    # The first epoch improves on no loss at all; then the rate is cut every third epoch, 7
    # times, and at 0.05 / 5**7 < 1e-6 training stops.
    assert mine.n_iter_ == 1 + 3 * 8
    assert mine.history_[-1]["lr"] == pytest.approx(0.05 / 5**7)


@pytest.mark.parametrize("problem", ["three classes", "two classes", "regression"])
def test_sample_weights_and_alpha_as_scikit_learn(data, problems, problem):
    kind, y = problems[problem]
    weights = np.random.default_rng(1).uniform(0.2, 3.0, size=len(y))
    mine, theirs = _both(kind, {**SGD, "alpha": 0.05}, data[0], y, sample_weight=weights)
    _assert_same(mine, theirs)


def test_adam_differs_only_in_where_epsilon_is_added(data):
    # scikit-learn adds epsilon to sqrt(v) before v's bias correction, torch (and xpmlp) after
    # it: the steps of parameters whose gradients are near epsilon differ, the rest agree.
    X, labels, _ = data
    mine, theirs = _both("MLPClassifier", {"solver": "adam", "learning_rate_init": 0.01}, X, labels)
    np.testing.assert_allclose(mine.loss_curve_, theirs.loss_curve_, rtol=1e-3)
    assert mine.loss_curve_[0] == pytest.approx(theirs.loss_curve_[0], rel=1e-14)  # no step yet


def test_solvers_xpmlp_does_not_have_are_refused_in_one_line(data):
    X, labels, _ = data
    with pytest.raises(ValueError, match="solver='lbfgs' is not supported"):
        ours.MLPClassifier(solver="lbfgs").fit(X, labels)
    with pytest.raises(ValueError, match="'learning_rate' parameter"):
        ours.MLPClassifier(learning_rate="optimal").fit(X, labels)


def test_every_parameter_of_scikit_learns_is_taken(data):
    for kind in ("MLPClassifier", "MLPRegressor"):
        theirs = set(getattr(neural_network, kind)().get_params())
        missing = theirs - set(getattr(ours, kind)().get_params())
        assert missing == {"max_fun"}, missing  # L-BFGS's, which xpmlp does not have
        for activation in ("identity", "logistic", "tanh", "relu"):  # scikit-learn's names
            getattr(ours, kind)(activation=activation, max_iter=2).fit(*data[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ours.MLPClassifier(max_iter=500, random_state=0).fit(*data[:2])  # converges, no warning


@pytest.mark.parametrize("case", ["sgd", "nesterov", "invscaling"])
def test_several_outputs_take_scikit_learns_steps(data, case):
    # scikit-learn steps down the squared error summed over outputs but reports its mean over
    # outputs; xpmlp reports the function it steps down: without alpha, twice scikit-learn's.
    X, _, targets = data
    y = np.stack([targets, np.tanh(X[:, 2])], axis=1)
    mine, theirs = _both("MLPRegressor", {**CASES[case], "alpha": 0.0}, X, y)
    np.testing.assert_allclose(mine.loss_curve_, 2 * np.array(theirs.loss_curve_), rtol=1e-12)
    for a, b in zip(mine.coefs_ + mine.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mine.predict(X), theirs.predict(X), rtol=1e-10)


@pytest.mark.parametrize("case", ["sgd", "sgd, alpha", "nesterov", "adaptive"])
def test_poisson_regression_takes_scikit_learns_steps(data, case):
    X = data[0]
    counts = np.random.default_rng(2).poisson(np.exp(0.5 * X[:, 0] - 0.3 * X[:, 1])).astype(float)
    mine, theirs = _both("MLPRegressor", {**CASES[case], "loss": "poisson"}, X, counts)
    _assert_same(mine, theirs)
    assert mine.out_activation_ == theirs.out_activation_ == "exp"
    np.testing.assert_allclose(mine.predict(X), theirs.predict(X), rtol=1e-10)
    with pytest.raises(ValueError, match="y >= 0"):
        ours.MLPRegressor(loss="poisson").fit(X, counts - 1)
