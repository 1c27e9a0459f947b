"""scikit-learn estimators (xpmlp/sklearn/): every check of scikit-learn's own conformance suite
passes with no expected failures, and they work where users put them (pipelines, grid search,
pickles, string labels, class and sample weights, partial_fit, device arrays)."""

from __future__ import annotations

import pickle
import warnings
from inspect import signature
from pathlib import Path

import numpy as np
import pytest
from optional import missing, need

sklearn = need("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_iris, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.neural_network import MLPClassifier as SklearnMLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import estimator_checks  # noqa: E402
from sklearn.utils.estimator_checks import check_array_api_input, parametrize_with_checks  # noqa: E402

from xpmlp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
def test_scikit_learn_conformance(estimator, check):
    # SCIPY_ARRAY_API is set (tests/conftest.py): the array-API checks run here too. Those that
    # need a GPU skip themselves where it is missing; real CuPy's need to be told.
    if "cupy" in repr(getattr(check, "keywords", {})):
        _skip_without_cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.fixture
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def test_string_labels_come_back_as_strings(iris):
    X, y = iris
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = MLPClassifier((16,), learning_rate_init=0.01, max_iter=100, random_state=0)
    model.fit(X, names)
    assert list(model.classes_) == ["setosa", "versicolor", "virginica"]
    assert set(model.predict(X)) <= set(names) and model.score(X, names) > 0.9
    np.testing.assert_allclose(model.predict_proba(X).sum(axis=1), 1.0)


def test_accuracy_is_that_of_scikit_learns_own(iris):
    X, y = iris
    ours = MLPClassifier(max_iter=200, random_state=0).fit(X, y).score(X, y)
    theirs = SklearnMLPClassifier(max_iter=200, random_state=0).fit(X, y).score(X, y)
    assert ours >= theirs - 0.03, (ours, theirs)


def test_pipeline_and_grid_search(iris):
    X, y = iris
    pipe = make_pipeline(StandardScaler(), MLPClassifier(learning_rate_init=0.01, max_iter=50,
                                                         random_state=0))  # fmt: skip
    search = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(8,), (16,)]}, cv=3)
    search.fit(X, y)
    assert search.best_score_ > 0.8
    assert search.best_params_["mlpclassifier__hidden_layer_sizes"] in [(8,), (16,)]


def test_pickled_models_predict_the_same(iris):
    X, y = iris
    model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    again.partial_fit(X, y)  # the optimizer state came along
    assert len(again.history_) == len(model.history_) + 1 and again.n_iter_ == 1


def test_fitted_attributes(iris):
    X, y = iris
    model = MLPClassifier(hidden_layer_sizes=(8, 6), max_iter=20, random_state=0).fit(X, y)
    assert model.n_features_in_ == 4 and model.n_layers_ == 4 and model.n_outputs_ == 3
    assert [c.shape for c in model.coefs_] == [(4, 8), (8, 6), (6, 3)]
    assert len(model.loss_curve_) == model.n_iter_ == len(model.history_) == 20
    assert model.best_loss_ == min(model.loss_curve_) and model.validation_scores_ is None
    stopped = MLPClassifier(max_iter=200, early_stopping=True, random_state=0).fit(X, y)
    assert len(stopped.validation_scores_) == stopped.n_iter_
    assert stopped.best_validation_score_ == max(stopped.validation_scores_)


@pytest.mark.parametrize("cls", [MLPClassifier, SklearnMLPClassifier], ids=["ours", "theirs"])
def test_loss_curve_grows_by_one_per_epoch_as_scikit_learns(iris, cls):
    X, y = iris
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        once = cls(hidden_layer_sizes=(8,), max_iter=1, random_state=0).fit(X, y)
    assert len(once.loss_curve_) == 1 and once.loss_ == once.best_loss_ == once.loss_curve_[0]
    stepped = cls(hidden_layer_sizes=(8,), random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # partial_fit never warns
        for _ in range(3):
            stepped.partial_fit(X, y, classes=[0, 1, 2])
    assert len(stepped.loss_curve_) == 3 and stepped.loss_ == stepped.loss_curve_[-1]
    assert stepped.best_loss_ == min(stepped.loss_curve_)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        cls(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])


def test_integer_sample_weights_are_repeated_rows():
    X, y = make_regression(n_samples=40, n_features=3, random_state=0)
    weights = np.random.default_rng(0).integers(0, 3, 40)
    settings = dict(hidden_layer_sizes=(8,), max_iter=30, random_state=0, shuffle=False)
    weighted = MLPRegressor(**settings).fit(X, y, sample_weight=weights)
    repeated = MLPRegressor(**settings).fit(np.repeat(X, weights, axis=0), np.repeat(y, weights))
    np.testing.assert_allclose(weighted.predict(X), repeated.predict(X), rtol=1e-9, atol=1e-9)


def test_balanced_class_weight_lifts_a_rare_class():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 2))
    y = (X[:, 0] > 1.3).astype(int)  # about 10% ones
    plain = MLPClassifier(hidden_layer_sizes=(8,), max_iter=60, random_state=0).fit(X, y)
    balanced = MLPClassifier(hidden_layer_sizes=(8,), max_iter=60, random_state=0,
                             class_weight="balanced").fit(X, y)  # fmt: skip
    assert balanced.predict(X).sum() > plain.predict(X).sum()


def test_partial_fit_needs_classes_first(iris):
    X, y = iris
    model = MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        model.partial_fit(X, y)
    model.partial_fit(X[:50], y[:50], classes=[0, 1, 2])
    model.partial_fit(X, y)
    assert len(model.loss_curve_) == 2 and model.n_iter_ == 1  # as scikit-learn counts
    assert list(model.classes_) == [0, 1, 2]


def test_device_arrays_in_device_arrays_out(cupy_standin, iris):
    from xpmlp import get_backend

    X, y = iris
    backend = get_backend("cuda:1")
    X_gpu = backend.asarray(X, "float32")
    model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X_gpu, y)
    assert model._trainer.model.backend.spec == "cuda:1"
    predicted = model.predict(X_gpu)
    assert type(predicted).__module__ == "cupy" and predicted.device.id == 1
    host = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(host.predict(X_gpu).get(), predicted.get())


DEVICE_FITS = {
    "labels": dict(estimator=MLPClassifier, y="device"),
    "host labels, weights": dict(estimator=MLPClassifier, y="host", weights="device"),
    "class weights": dict(estimator=MLPClassifier, y="device", weights="device",
                          class_weight={0: 1.0, 1: 2.0, 2: 0.5}),
    "balanced": dict(estimator=MLPClassifier, y="device", class_weight="balanced"),
    "targets": dict(estimator=MLPRegressor, y="device", weights="device"),
    "host targets": dict(estimator=MLPRegressor, y="host"),
    "two classes": dict(estimator=MLPClassifier, y="device", weights="device", labels="binary"),
    "balanced, two classes": dict(estimator=MLPClassifier, y="device", labels="binary",
                                  class_weight="balanced"),
    "multilabel": dict(estimator=MLPClassifier, y="device", labels="multilabel"),
    "host multilabel": dict(estimator=MLPClassifier, y="host", labels="multilabel"),
    "early stopping": dict(estimator=MLPClassifier, y="device", weights="device", early=True),
    "early stopping, two classes": dict(estimator=MLPClassifier, y="host", labels="binary",
                                        early=True),
    "early stopping, multilabel": dict(estimator=MLPClassifier, y="device", labels="multilabel",
                                       early=True),
    "early stopping, targets": dict(estimator=MLPRegressor, y="device", early=True),
}  # fmt: skip


@pytest.mark.parametrize("case", DEVICE_FITS.values(), ids=DEVICE_FITS.keys())
def test_a_fit_on_device_arrays_is_the_fit_on_host_arrays(cupy_standin, iris, case):
    # The stand-in refuses implicit host conversion, so this also shows that labels, weights
    # and scores never go through NumPy behind the user's back.
    import cupy

    from xpmlp import get_backend

    X, y = iris
    X = X.astype(np.float32)
    y = y if case["estimator"] is MLPClassifier else y.astype(np.float32)
    if case.get("labels") == "binary":
        y = (y == 2).astype(np.int64)
    if case.get("labels") == "multilabel":
        y = np.stack([y == 0, X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(np.int64)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, size=len(y)).astype(np.float32)
    settings = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    if "class_weight" in case:
        settings["class_weight"] = case["class_weight"]
    if case.get("early"):  # the same validation split on every device
        settings.update(early_stopping=True, n_iter_no_change=2, max_iter=12)
    backend = get_backend("cuda:1")
    on_device = {"host": lambda a: a, "device": cupy.asarray}
    X_gpu = backend.asarray(X, "float32")
    with cupy.cuda.Device(1):
        y_in = on_device[case["y"]](y)
        w_in = on_device[case["weights"]](weights) if "weights" in case else None
    w_host = weights if "weights" in case else None

    model = case["estimator"](**settings).fit(X_gpu, y_in, sample_weight=w_in)
    reference = case["estimator"](**settings).fit(X, y, sample_weight=w_host)

    assert model._trainer.model.backend.spec == "cuda:1"
    predicted = model.predict(X_gpu)
    assert type(predicted).__module__ == "cupy" and predicted.device.id == 1
    np.testing.assert_array_equal(predicted.get(), reference.predict(X))
    assert model.loss_curve_ == reference.loss_curve_
    assert model.validation_scores_ == reference.validation_scores_
    assert model.score(X_gpu, y_in, sample_weight=w_in) == reference.score(X, y, w_host)
    if case["estimator"] is MLPClassifier:
        proba = model.predict_proba(X_gpu)
        np.testing.assert_array_equal(proba.get(), reference.predict_proba(X))


def test_labels_on_another_gpu_follow_X(cupy_standin, iris):
    import cupy

    from xpmlp import get_backend

    X, y = iris
    X_gpu = get_backend("cuda:1").asarray(X, "float32")
    settings = dict(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
    model = MLPClassifier(**settings).fit(X_gpu, cupy.asarray(y))  # y on device 0
    reference = MLPClassifier(**settings).fit(X.astype(np.float32), y)
    np.testing.assert_array_equal(model.predict(X_gpu).get(), reference.predict(X))


def test_bad_weights_on_device_are_refused_as_on_the_host(cupy_standin, iris):
    import cupy

    from xpmlp import get_backend

    X, y = iris
    X_gpu = get_backend("cuda:0").asarray(X, "float32")
    model = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(3,\), expected \(150,\)"):
        model.fit(X_gpu, y, sample_weight=cupy.ones(3))
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.fit(X_gpu, y, sample_weight=cupy.full(150, np.nan))
    with pytest.raises(ValueError, match="at least one non-zero"):
        model.fit(X_gpu, y, sample_weight=cupy.zeros(150))


def test_gpu_fitted_pickles_load_on_a_cpu_only_machine(iris):
    import cupy_standin as standin

    from xpmlp import get_backend

    X, y = iris
    with standin.installed():
        X_gpu = get_backend("cuda:1").asarray(X, "float32")
        model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X_gpu, y)
        expected = model.predict_proba(X_gpu).get()
        saved = pickle.dumps(model)
    with pytest.warns(UserWarning, match="cuda:1 is not available here; the model is on the CPU"):
        host = pickle.loads(saved)
    np.testing.assert_array_equal(host.predict_proba(X.astype(np.float32)), expected)
    host.partial_fit(X, y)  # and it trains on, from the same optimizer state
    assert len(host.loss_curve_) == 6


def _skip_without_cuda():
    need("cupy")
    from xpmlp import DeviceError, get_backend

    try:
        get_backend("cuda:0")
    except DeviceError as exc:
        missing("gpu", str(exc))


ARRAY_API_INPUTS = [("array_api_strict", "CPU_DEVICE"), ("array_api_strict", "device1"),
                    ("torch", "cpu")]  # fmt: skip


@pytest.mark.parametrize("estimator", [MLPClassifier(), MLPRegressor()], ids=type)
@pytest.mark.parametrize("namespace, device", ARRAY_API_INPUTS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_array_api_values_and_sample_weights_match_numpy(estimator, namespace, device, dtype):
    # Stricter than parametrize_with_checks' defaults: the predictions' values, and sample
    # weights, must agree with the same fit on NumPy.
    if namespace == "torch":
        need("torch")
    name = type(estimator).__name__
    if "device_name" not in signature(check_array_api_input).parameters:
        pytest.skip(f"scikit-learn {sklearn.__version__}'s check takes device objects, not names")
    # torch's float32 matrix products round otherwise than NumPy's BLAS, and 200 epochs carry
    # that to ~2e-4 in a log-probability, past the check's fixed 1e-4: there the values are
    # compared below, with a tolerance float32 training can honour.
    exact = not (namespace == "torch" and dtype == "float32")
    check_array_api_input(name, estimator, array_namespace=namespace, device_name=device,
                          dtype_name=dtype, check_values=exact, check_sample_weight=exact)  # fmt: skip
    if not exact:
        torch = need("torch")
        X, y = load_iris(return_X_y=True)
        X = X.astype(np.float32)
        host = clone(estimator).set_params(random_state=0, max_iter=50).fit(X, y)
        ours = clone(estimator).set_params(random_state=0, max_iter=50)
        ours.fit(torch.asarray(X), torch.asarray(y))
        predicted = ours.predict(torch.asarray(X))
        assert isinstance(predicted, torch.Tensor)
        np.testing.assert_allclose(predicted.numpy(), host.predict(X), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("namespace, device", ARRAY_API_INPUTS)
def test_predicting_from_another_namespace_is_refused(namespace, device):
    if namespace == "torch":
        need("torch")
    check = getattr(estimator_checks, "check_array_api_same_namespace", None)
    if check is None:
        pytest.skip(f"scikit-learn {sklearn.__version__} has no check_array_api_same_namespace")
    for estimator in (MLPClassifier(), MLPRegressor()):
        check(type(estimator).__name__, estimator, namespace, device)


@pytest.mark.slow  # a GridSearchCV of six fits: about 50 s on two cores
def test_the_readme_example_runs(capsys):
    page = (Path(__file__).resolve().parent.parent / "docs" / "sklearn.md").read_text()
    code = page.split("```python\n")[1].split("```")[0]
    exec(compile(code, "docs/sklearn.md", "exec"), {})
    assert "mlpclassifier__hidden_layer_sizes" in capsys.readouterr().out


BAD_PARAMETERS = [
    ({"max_iter": 0}, "'max_iter' parameter of MLPClassifier must be an int in the range"),
    ({"alpha": -1.0}, "'alpha' parameter"),
    ({"batch_size": 0}, "'batch_size' parameter"),
    ({"tol": -1.0}, "'tol' parameter"),
    ({"n_iter_no_change": 0}, "'n_iter_no_change' parameter"),
    ({"early_stopping": True, "validation_fraction": 1.0}, "'validation_fraction' parameter"),
    ({"solver": "lbfgs"}, "solver='lbfgs' is not supported"),
    ({"activation": "softmax"}, "unknown activation 'softmax'"),
    ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
]


@pytest.mark.parametrize(("parameters", "message"), BAD_PARAMETERS)
def test_bad_parameters_are_refused_with_one_clear_error(iris, parameters, message):
    # scikit-learn's own checks for the parameters it shares with us, xpmlp's for the rest
    with pytest.raises((ValueError, RuntimeError), match=message):
        MLPClassifier(**parameters).fit(*iris)


def test_numpy_in_device_gpu_trains_there_and_answers_in_numpy(cupy_standin, iris):
    X, y = iris
    settings = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    on_gpu = MLPClassifier(device="gpu", **settings).fit(X, y)
    on_cpu = MLPClassifier(**settings).fit(X, y)
    assert on_gpu._trainer.model.backend.spec == "cuda:0" and cupy_standin.launches > 0
    for method in ("predict", "predict_proba"):
        answer = getattr(on_gpu, method)(X)
        assert isinstance(answer, np.ndarray)
        np.testing.assert_array_equal(answer, getattr(on_cpu, method)(X))
    assert on_gpu.score(X, y) == on_cpu.score(X, y)


def test_two_classes_and_multilabel_have_sigmoid_outputs_as_scikit_learns(iris):
    X, y = iris
    binary = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0)
    binary.fit(X, np.where(y == 2, "b", "a"))
    assert binary.coefs_[-1].shape == (8, 1) and binary.out_activation_ == "logistic"
    proba = binary.predict_proba(X)
    assert proba.shape == (150, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert set(binary.predict(X)) <= {"a", "b"}
    indicator = np.stack([y == 0, X[:, 0] > 0], axis=1).astype(int)
    multilabel = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0)
    multilabel.fit(X, indicator)
    assert multilabel.predict(X).shape == (150, 2) and multilabel.predict_proba(X).shape == (150, 2)
    assert list(multilabel.classes_) == [0, 1] and multilabel.n_outputs_ == 2
    with pytest.raises(ValueError, match="indicator matrix of 2 columns, as in fit"):
        multilabel.partial_fit(X, indicator[:, :1].repeat(3, axis=1))
    with pytest.raises(ValueError, match="indicator matrix of 0s and 1s"):
        MLPClassifier().fit(X, indicator * 2)


def test_warnings_point_at_the_users_line(iris):
    X, y = iris
    with pytest.warns(ConvergenceWarning) as caught:
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=1).fit(X, y)
    assert caught[0].filename == __file__
    with pytest.warns(sklearn.exceptions.DataConversionWarning) as caught:
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=1).partial_fit(
            X, y[:, None], classes=[0, 1, 2]
        )
    assert caught[0].filename == __file__
