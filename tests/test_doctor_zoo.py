"""The doctor on the networks people write (tests/doctor_zoo.py): every bug named at its layer,
alone and two or three at once, with and without biases, for each output, in each layout; a
correct network never blamed; fixing the findings in any order never makes a new one appear."""

from __future__ import annotations

import itertools
from pathlib import Path

import doctor_zoo as zoo
import numpy as np
import pytest

from xpmlp.cli import main
from xpmlp.doctor import check_forward, check_gradients

SIZES = [6, 9, 8, 7, 4]  # three hidden layers
LOSS = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "identity": "mse"}


def _check(grads, *, activation="relu", output="softmax", sizes=SIZES, **kwargs):
    return check_gradients(grads, sizes, activation=activation, loss=LOSS[output], **kwargs)


# ---------------------------------------------------------------------- correct networks


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("output", ["softmax", "sigmoid", "identity"])
@pytest.mark.parametrize("bias", [True, False])
def test_a_correct_network_gets_a_clean_bill_for_every_output(activation, output, bias):
    report = _check(zoo.net(activation, output, bias=bias), activation=activation,
                    output=output, bias=bias)  # fmt: skip
    assert report.ok and not report.notes, str(report)


@pytest.mark.parametrize(("grads", "kwargs"), [
    (zoo.column_major(), {"activation": "tanh", "layout": "columns"}),
    (zoo.folded_bias(first=False), {"activation": "sigmoid", "bias_layout": "folded_last"}),
    (zoo.folded_bias(first=True), {"activation": "sigmoid", "bias_layout": "folded_first"}),
    (zoo.sigmoid_bce(), {"output": "sigmoid"}),
    (zoo.one_sample_at_a_time(zoo.single_sample_tanh), {"activation": "tanh"}),
    (zoo.net(labels="int"), {"labels": "int"}),
])  # fmt: skip
def test_correct_networks_in_other_layouts_get_a_clean_bill(grads, kwargs):
    report = _check(grads, sizes=[6, 9, 4], **kwargs)
    assert report.ok, str(report)


def test_weights_in_a_dict_take_a_few_lines():
    def user_grads(params, X, Y):  # the user's own code, unchanged
        h = np.maximum(X @ params["W1"] + params["b1"], 0)
        logits = h @ params["W2"] + params["b2"]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d2 = (p - Y) / len(X)
        d1 = (d2 @ params["W2"].T) * (h > 0)
        return {"W1": X.T @ d1, "b1": d1.sum(0), "W2": h.T @ d2, "b2": d2.sum(0)}

    assert _check(zoo.dict_weights(user_grads), sizes=[6, 9, 4]).ok


@pytest.mark.parametrize("scale", ["half_mean", "full_mean", "full_sum"])
def test_squared_error_conventions_are_said_not_blamed(scale):
    grads, loss = zoo.no_bias_mse(scale=scale)
    without = _check(grads, sizes=[6, 9, 4], output="identity", bias=False)
    assert without.ok, str(without)
    if scale == "full_mean":  # xpmlp's own: half, averaged over the samples
        assert "a convention, not a bug" in str(without)
    if scale == "full_sum":  # without the loss, summed may be right or a forgotten 1/n: said
        assert "right if your loss is summed too" in str(without)
    with_loss = check_gradients(grads, [6, 9, 4], loss=loss, output="identity", bias=False)
    assert with_loss.ok, str(with_loss)
    assert max(with_loss.loss_check.values()) < 1e-6


# ---------------------------------------------------------------------- one bug


ONE_BUG = [
    ({"sign_flipped": 0}, None),
    ({"missing_batch_mean": 0}, None),
    ({"softmax_jacobian_twice": 0}, None),
    ({"softmax_jacobian_full": 0}, None),
    ({"softmax_jacobian_diagonal": 0}, None),
    *[({bug: layer}, layer) for bug in ("derivative_missing", "derivative_twice",
                                         "derivative_of_z", "through_updated_W")
      for layer in (1, 2, 3)],
    *[({bug: layer}, layer) for bug in ("bias_over_units", "bias_one_number", "bias_one_sample",
                                         "transposed") for layer in (1, 3, 4)],
    ({"input_is_z": 3}, 3),
]  # fmt: skip


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize(("bugs", "layer"), ONE_BUG, ids=str)
def test_each_bug_is_named_at_its_layer_and_nothing_else(activation, bugs, layer):
    if activation == "relu" and {"derivative_twice", "derivative_of_z"} & set(bugs):
        pytest.skip("ReLU's derivative squared, or taken of z, is the right one")
    report = _check(zoo.net(activation, bugs=bugs), activation=activation)
    assert report.codes == zoo.expected(bugs), str(report)
    if layer is not None:
        assert report.findings[0].layer == layer or f"layer {layer}" in str(report), str(report)


@pytest.mark.parametrize("bug", ["relu_softplus", "relu_mask_reversed"])
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_relu_derivative_bugs(bug, layer):
    report = _check(zoo.net(bugs={bug: layer}))
    assert report.codes == {zoo.CODES[bug]}, str(report)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_the_derivative_of_the_activated_output_is_named(activation):
    report = _check(zoo.net(activation, bugs={"derivative_of_a": 2}), activation=activation)
    assert report.codes == {"activation_derivative_wrong"}
    assert "applied twice" in str(report) or "of the sigmoid" in str(report), str(report)


@pytest.mark.parametrize(("grads", "kwargs", "codes"), [
    (zoo.column_major("derivative_of_z"), {"activation": "tanh", "layout": "columns"},
     {"activation_derivative_wrong"}),
    (zoo.column_major("bias_over_units"), {"activation": "tanh", "layout": "columns"},
     {"bias_gradient_wrong"}),
    (zoo.folded_bias("missing_batch_mean"), {"activation": "sigmoid", "bias_layout": "folded_last"},
     {"missing_batch_mean"}),
    (zoo.sigmoid_bce("sigmoid_derivative_twice"), {"output": "sigmoid"}, {"sigmoid_derivative_twice"}),
    (zoo.sigmoid_bce("derivative_missing"), {"output": "sigmoid"}, {"activation_derivative_missing"}),
    (zoo.no_bias_mse("relu_mask_reversed")[0], {"output": "identity", "bias": False}, {"relu_mask_wrong"}),
])  # fmt: skip
def test_bugs_in_other_layouts_and_outputs(grads, kwargs, codes):
    assert _check(grads, sizes=[6, 9, 4], **kwargs).codes == codes


# ---------------------------------------------------------------------- several bugs


SEVERAL = [
    {"softmax_jacobian_full": 0, "bias_one_number": 4},  # the two-bug network
    {"relu_softplus": 2, "missing_batch_mean": 0, "relu_floor": 0},  # and its three-bug one
    {"softmax_jacobian_twice": 0, "derivative_missing": 2},
    {"sign_flipped": 0, "derivative_of_z": 3, "bias_one_sample": 1},
    {"missing_batch_mean": 0, "through_updated_W": 2, "bias_over_units": 4},
    {"derivative_twice": 3, "derivative_missing": 1},
    {"softmax_jacobian_diagonal": 0, "input_is_z": 3, "transposed": 1},
    {"derivative_of_z": 1, "bias_one_sample": 4, "through_updated_W": 3},
]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("bugs", SEVERAL, ids=lambda bugs: "+".join(bugs))
@pytest.mark.parametrize("bias", [True, False])
def test_every_bug_of_a_network_is_named_in_one_run(activation, bugs, bias):
    if activation != "relu" and {"relu_softplus", "relu_floor"} & set(bugs):
        pytest.skip("ReLU's bugs")
    if not bias and {"bias_one_number", "bias_one_sample", "bias_over_units"} & set(bugs):
        pytest.skip("no biases")
    if activation == "relu" and {"derivative_twice", "derivative_of_z"} & set(bugs):
        pytest.skip("ReLU's derivative squared, or taken of z, is the right one")
    report = _check(zoo.net(activation, bugs=bugs, bias=bias), activation=activation, bias=bias)
    assert report.codes == zoo.expected(bugs), str(report)


@pytest.mark.parametrize("bugs", SEVERAL[2:], ids=lambda bugs: "+".join(bugs))
def test_fixing_the_findings_in_any_order_never_makes_a_new_one_appear(bugs):
    activation = "tanh"  # every bug of these shows with tanh
    for size in range(len(bugs) + 1):
        for kept in itertools.combinations(bugs, size):
            left = {name: bugs[name] for name in kept}
            report = _check(zoo.net(activation, bugs=left), activation=activation)
            assert report.codes == zoo.expected(left), (left, str(report))


# ---------------------------------------------------------------------- the user's own loss


def test_summed_gradients_of_a_mean_loss_are_a_bug_and_of_a_summed_loss_a_convention():
    grads, _ = zoo.no_bias_mse(scale="full_sum")
    _, mean_loss = zoo.no_bias_mse(scale="full_mean")
    _, summed_loss = zoo.no_bias_mse(scale="full_sum")
    wrong = check_gradients(grads, [6, 9, 4], loss=mean_loss, output="identity", bias=False)
    assert wrong.codes == {"missing_batch_mean"}, str(wrong)
    assert max(wrong.loss_check.values()) > 0.5  # n times off, and the differences say so
    right = check_gradients(grads, [6, 9, 4], loss=summed_loss, output="identity", bias=False)
    assert right.ok and "summed over the samples" in str(right), str(right)


def test_any_architecture_is_checked_against_its_own_loss():
    # A network the doctor does not know (a skip connection): only the differences speak.
    def loss(weights, biases, X, Y):
        h = np.tanh(X @ weights[0] + biases[0])
        out = h @ weights[1] + biases[1] + X[:, : weights[1].shape[1]]
        return 0.5 * np.mean(np.sum((out - Y) ** 2, axis=1))

    def grads(weights, biases, X, Y, *, bug=False):
        n = len(X)
        h = np.tanh(X @ weights[0] + biases[0])
        d2 = (h @ weights[1] + biases[1] + X[:, : weights[1].shape[1]] - Y) / n
        d1 = (d2 @ weights[1].T) * (1 - (h if bug else h**2))
        return [X.T @ d1, h.T @ d2], [d1.sum(0), d2.sum(0)]

    good = check_gradients(grads, [6, 9, 4], loss=loss, output="identity")
    assert good.ok and "checked against your loss alone" in str(good), str(good)
    bad = check_gradients(lambda *a: grads(*a, bug=True), [6, 9, 4], loss=loss, output="identity")
    assert bad.codes == {"disagrees_with_loss"}
    assert {f.parameter for f in bad.findings} == {"layers.0.weight", "layers.0.bias"}


# ---------------------------------------------------------------------- the forward pass


def _forward(*, clip=False, biases=True, hidden="relu"):
    def forward(weights, bs, X):
        a = X
        for i, (W, b) in enumerate(zip(weights, bs)):
            z = a @ W + (b if biases else 0)
            if i < len(weights) - 1:
                a = np.maximum(z, 0.01 * z) if hidden == "leaky" else np.maximum(z, 0)
        z = np.clip(z, -500, 500) if clip else z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    return forward


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"clip": True}, "softmax_unstable"),
    ({"biases": False}, "forward_ignores_biases"),
    ({"hidden": "leaky"}, "activation_forward_wrong"),
])  # fmt: skip
def test_forward_checks_that_bite(kwargs, code):
    assert check_forward(_forward(**kwargs), SIZES).codes == {code}
    assert check_forward(_forward(), SIZES).ok


# ---------------------------------------------------------------------- the command line


def test_a_file_with_a_column_major_network_and_its_loss(tmp_path, capsys):
    (tmp_path / "net.py").write_text(
        "import numpy as np\nLAYER_SIZES = [5, 8, 3]\nACTIVATION = 'relu'\nBIAS = False\n"
        "OUTPUT = 'identity'\nLAYOUT = 'columns'\n"
        "def loss(W, b, X, Y):\n    out = W[1] @ np.maximum(W[0] @ X, 0)\n"
        "    return 0.5 * np.sum((out - Y) ** 2) / X.shape[1]\n"
        "def grads(W, b, X, Y):\n    n = X.shape[1]\n    z = W[0] @ X\n    h = np.maximum(z, 0)\n"
        "    d2 = (W[1] @ h - Y) / n\n    d1 = (W[1].T @ d2) * (z > 0)\n"
        "    return [d1 @ X.T, d2 @ h.T]\n"
        "def forward(W, X):\n    return X\n"
    )
    assert main(["doctor", str(tmp_path / "net.py")]) == 0
    out = capsys.readouterr().out
    assert "grads: your gradients match" in out
    assert "forward: skipped: forward(W, X) does not take (weights, biases, X)" in out


def test_no_bias_flag(tmp_path, capsys):
    (tmp_path / "net.py").write_text(
        "import numpy as np\nLAYER_SIZES = [5, 8, 3]\n"
        "def grads(W, b, X, Y):\n    n = len(X)\n    z = X @ W[0]\n    h = np.maximum(z, 0)\n"
        "    o = h @ W[1]\n    p = np.exp(o - o.max(1, keepdims=True))\n    p /= p.sum(1, keepdims=True)\n"
        "    d2 = (p - Y) / n\n    d1 = (d2 @ W[1].T) * (z > 0)\n    return [X.T @ d1, h.T @ d2]\n"
    )
    assert main(["doctor", str(tmp_path / "net.py"), "--no-bias"]) == 0
    assert "no bug found" in capsys.readouterr().out


def test_the_column_major_example_of_the_docs_gets_a_clean_bill():
    page = (Path(__file__).resolve().parent.parent / "docs" / "doctor.md").read_text()
    code = page.split("Column-major, no biases:\n\n```python\n")[1].split("```")[0]
    namespace = {"np": np}
    exec(compile(code, "docs/doctor.md", "exec"), namespace)
    report = check_gradients(namespace["grads"], namespace["LAYER_SIZES"], layout="columns",
                             bias=False)  # fmt: skip
    assert report.ok, str(report)


# ---------------------------------------------------------------------- what an adversarial review found


def test_the_1_over_m_applied_layer_by_layer_and_forgotten_in_one():
    kwargs = {"sizes": [6, 9, 8, 3], "output": "sigmoid", "layout": "columns"}
    assert _check(zoo.andrew_ng(), **kwargs).ok
    for layer in (1, 2):  # a hidden layer's dW and db without 1/m: named there, nowhere else
        report = _check(zoo.andrew_ng(no_mean_at=layer), **kwargs)
        assert [(f.code, f.layer) for f in report.findings] == [("missing_batch_mean", layer)]
    # the output layer's: its hidden layers take their 1/n, so it is no summed convention
    report = _check(zoo.andrew_ng(no_mean_at=3), **kwargs)
    assert [(f.code, f.layer) for f in report.findings] == [("missing_batch_mean", 3)]
    assert not report.notes


def test_the_same_bug_in_two_layers_with_layer_numbers_in_its_message_is_said_twice():
    report = _check(zoo.net("tanh", bugs={"through_updated_W": (1, 2)}), activation="tanh")
    assert sorted(f.layer for f in report.findings) == [1, 2], str(report)


@pytest.mark.parametrize("factor", [0.5, 0.25])
def test_an_output_scale_outside_the_known_ones_is_named_against_the_users_loss(factor):
    grads, loss = zoo.no_bias_mse(scale="full_mean")

    def scaled(*args):
        return [factor * g for g in grads(*args)]

    report = check_gradients(scaled, [6, 9, 4], loss=loss, output="identity", bias=False)
    assert report.codes == {"wrong_scale"} and f"{factor:.3g} times" in str(report), str(report)


def test_a_leaky_forward_with_its_own_derivative_is_named_once():
    def grads(weights, biases, X, Y):
        z = X @ weights[0] + biases[0]
        h = np.where(z > 0, z, 0.01 * z)
        o = h @ weights[1] + biases[1]
        p = np.exp(o - o.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        d2 = (p - Y) / len(X)
        d1 = (d2 @ weights[1].T) * np.where(z > 0, 1.0, 0.01)
        return [X.T @ d1, h.T @ d2], [d1.sum(0), d2.sum(0)]

    assert _check(grads, sizes=[6, 9, 4]).codes == {"activation_forward_wrong"}


@pytest.mark.parametrize(("output", "sizes"), [("sigmoid", [6, 9, 1]), ("identity", [6, 9, 2])])
def test_a_correct_network_with_one_or_two_outputs_gets_no_note(output, sizes):
    report = _check(zoo.net("tanh", output), activation="tanh", output=output, sizes=sizes)
    assert report.ok and not report.notes, str(report)


def test_a_loss_computed_in_float32_does_not_make_right_gradients_wrong():
    grads, loss = zoo.no_bias_mse(scale="half_mean")

    def loss32(weights, biases, X, Y):
        return np.float32(loss([w.astype(np.float32) for w in weights], biases,
                               X.astype(np.float32), Y.astype(np.float32)))  # fmt: skip

    report = check_gradients(grads, [6, 9, 4], loss=loss32, output="identity", bias=False)
    assert report.ok and not report.notes, str(report)
    wrong = check_gradients(lambda *a: [2 * g for g in grads(*a)], [6, 9, 4], loss=loss32,
                            output="identity", bias=False)  # fmt: skip
    assert wrong.codes == {"wrong_scale"}, str(wrong)


def test_a_loss_that_raises_is_a_finding_and_leaves_the_check_usable():
    grads, _ = zoo.no_bias_mse()

    def broken(weights, biases, X, Y):
        raise ValueError("shapes (9,4) and (6,9) not aligned")

    report = check_gradients(grads, [6, 9, 4], loss=broken, output="identity", bias=False)
    assert report.codes == {"crashed"} and "loss raised ValueError" in str(report)
