"""Fused kernels (xpmlp/core/kernels.py): the CUDA source compiles; training with the NumPy twins is
the portable path's training bit for bit; on the CuPy stand-in a step takes at most 20 launches;
a kernel that fails to compile or disagrees is replaced by the portable path, said in one line;
on a real GPU the compiled kernels agree with the portable path."""

from __future__ import annotations

import numpy as np
import pytest
from optional import missing, need
from tolerances import real_gpu

from xpmlp import MLP, Trainer, to_numpy
from xpmlp.backend import get_backend
from xpmlp.core import kernels, ops, rng

CONFIGS = [
    pytest.param({"activation": act}, id=act) for act in (*kernels.FUSED_ACTIVATIONS, "gelu")
] + [
    pytest.param({"dropout": 0.3}, id="dropout"),
    pytest.param({"dropout": 0.3, "activation": "tanh"}, id="dropout-tanh"),
    pytest.param({"dropout": 0.2, "activation": "identity"}, id="dropout-identity"),
    pytest.param({"l2": 1e-2}, id="l2"),
    pytest.param({"optimizer": "adamw", "weight_decay": 0.05, "clip_norm": 0.5}, id="adamw-clip"),
    pytest.param({"optimizer": "momentum"}, id="momentum"),
    pytest.param({"loss": "mse"}, id="mse"),
    pytest.param({"dtype": "float64", "activation": "sigmoid"}, id="float64"),
]
TRAINER_KEYS = {"optimizer", "weight_decay", "clip_norm"}


def _train(make_problem, config: dict, device="cpu"):
    loss = config.get("loss", "cross_entropy")
    X, y = make_problem(n=50, n_in=4, n_out=3, loss=loss, seed=3)
    model_kwargs = {k: v for k, v in config.items() if k not in TRAINER_KEYS}
    trainer_kwargs = {k: v for k, v in config.items() if k in TRAINER_KEYS}
    model = MLP([4, 9, 7, 3], device=device, seed=5, **model_kwargs)
    trainer = Trainer(model, batch_size=16, epochs=3, lr=0.05, **trainer_kwargs)
    history = trainer.fit(X, y)
    return model, history


def _same_training(a, b) -> None:
    (model_a, history_a), (model_b, history_b) = a, b
    for key in ("train_loss", "train_accuracy"):
        assert [r[key] for r in history_a] == [r[key] for r in history_b], key
    for name, value in model_a.state_dict().items():
        np.testing.assert_array_equal(value, model_b.state_dict()[name], err_msg=name)


@pytest.mark.parametrize("config", CONFIGS)
def test_fused_training_is_the_portable_training_bit_for_bit(monkeypatch, make_problem, config):
    fused = _train(make_problem, config)
    assert fused[0].fused is not None
    monkeypatch.setenv("XPMLP_KERNELS", "portable")
    portable = _train(make_problem, config)
    assert portable[0].fused is None
    _same_training(fused, portable)


def test_the_softmax_twin_equals_the_portable_loss_on_huge_logits():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(64, 10)) * 1e4).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    fused = kernels.fused_for(get_backend("cpu"), "float32")
    sums = np.zeros(2, np.float32)
    grad = fused.softmax_xent(logits.copy(), labels, sums)
    total, want = ops.softmax_cross_entropy_total(np, logits, np.eye(10, dtype=np.float32)[labels])
    np.testing.assert_array_equal(grad, want)
    assert sums[0] == total and sums[0] > 1e4
    assert sums[1] == np.sum(np.argmax(logits, axis=1) == labels)


@pytest.mark.parametrize(("shape", "rate", "key"), [((5, 7), 0.5, (1, 2, 3)), ((128, 300), 0.2, (0,)),
                                                   ((3, 1), 0.99, (2**40, 7))])  # fmt: skip
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_dropout_mask_kernel_gives_the_portable_bits(shape, rate, key, dtype):
    fused = kernels.fused_for(get_backend("cpu"), dtype)
    want = rng.dropout_mask(np, shape, rate, key, dtype=np.dtype(dtype), device=None)
    got = fused.dropout_mask(shape, rate, key)
    assert got.dtype == want.dtype and got.shape == shape
    np.testing.assert_array_equal(got, want)


def test_namespaces_without_ufuncs_take_the_portable_path():
    assert kernels.fused_for(get_backend("array-api-strict"), "float32") is None


def test_every_kernel_has_a_twin_and_a_cuda_function():
    for dtype in ("float32", "float64"):
        source = kernels.cuda_source(dtype)
        for name in kernels.kernel_names():
            assert f"void {name}(" in source
    assert set(kernels.kernel_names()) == set(kernels.TWINS)


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception as exc:  # no CuPy, or no libnvrtc: CI installs both
        missing("nvrtc", str(exc))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_cuda_source_compiles_with_nvrtc(dtype):
    nvrtc = _nvrtc()
    program = nvrtc.createProgram(kernels.cuda_source(dtype), "xpmlp_kernels.cu", [], [])
    try:
        nvrtc.compileProgram(program, ["-arch=compute_80", *kernels.NVRTC_OPTIONS])
    except Exception as exc:
        pytest.fail(f"{exc}\n{nvrtc.getProgramLog(program)}")
    ptx = nvrtc.getPTX(program)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    for name in kernels.kernel_names():
        assert f".entry {name}(" in ptx, name


# ---------------------------------------------------------------------- on the CuPy stand-in


@pytest.fixture
def fresh_kernels():
    """Forget which kernels passed their self-check, before and after the test."""
    import cupy_standin

    kernels.forget()
    yield cupy_standin.kernel_faults
    cupy_standin.kernel_faults.clear()
    kernels.forget()


def _step_launches(counters, model, **trainer_kwargs) -> list[int]:
    X = np.random.default_rng(0).normal(size=(64, model.layer_sizes[0]))
    y = np.arange(64) % model.n_outputs
    trainer = Trainer(model, batch_size=16, epochs=1, **trainer_kwargs)
    X, y = model.as_input(X), model.as_target(y)
    seen = []
    trainer.train_epoch(X, y, on_batch=lambda done, total: seen.append(counters.launches))
    return [after - before for before, after in zip(seen, seen[1:])]


def test_an_adam_step_takes_twenty_launches_on_the_standin(cupy_standin, fresh_kernels, capfd):
    model = MLP([6, 16, 16, 3], device="cuda:0")
    assert model.fused is not None and capfd.readouterr().err == ""
    # gather 2, forward 2 per layer, loss 1, backward 4 per hidden layer and 2 for the first,
    # Adam 1: what benchmarks/launches.py reports for 784-300-300-10.
    assert _step_launches(cupy_standin, model) == [20, 20, 20]
    # Dropout adds one kernel per hidden layer: its mask.
    dropout = MLP([6, 16, 16, 3], dropout=0.2, device="cuda:0")
    assert _step_launches(cupy_standin, dropout) == [22, 22, 22]


def test_fused_kernels_on_the_standin_train_as_on_the_cpu(
    cupy_standin, fresh_kernels, make_problem
):
    config = {"dropout": 0.3, "activation": "tanh"}
    _same_training(_train(make_problem, config, "cuda:1"), _train(make_problem, config, "cpu"))


@pytest.mark.parametrize(("kernel", "fault"), [("adam", "wrong"), ("softmax_xent", "compile"),
                                               ("grad_relu_dropout", "wrong")])  # fmt: skip
def test_a_failing_kernel_switches_to_the_portable_path_with_one_line(
    cupy_standin, fresh_kernels, make_problem, monkeypatch, capfd, kernel, fault
):
    fresh_kernels[kernel] = fault
    config = {"dropout": 0.2}
    fallen_back = _train(make_problem, config, "cuda:0")
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fused CUDA kernels are off on cuda:0 (float32)" in err[0], err
    assert kernel in err[0] and fallen_back[0].fused is None
    monkeypatch.setenv("XPMLP_KERNELS", "portable")
    _same_training(fallen_back, _train(make_problem, config, "cpu"))


# ---------------------------------------------------------------------- on a real GPU


@pytest.mark.gpu
@pytest.mark.parametrize("config", CONFIGS[:6])
def test_cuda_kernels_agree_with_the_portable_path_on_a_gpu(monkeypatch, make_problem, config):
    need("cupy")
    try:
        backend = get_backend("cuda:0")
    except Exception as exc:
        missing("gpu", str(exc))
    assert real_gpu(backend)
    config = {**config, "dtype": "float64"}
    fused = _train(make_problem, config, "cuda:0")
    assert fused[0].fused is not None
    monkeypatch.setenv("XPMLP_KERNELS", "portable")
    portable = _train(make_problem, config, "cuda:0")
    for name, value in fused[0].state_dict().items():
        np.testing.assert_allclose(value, portable[0].state_dict()[name], rtol=1e-9, atol=1e-12)
    assert to_numpy(fused[0].flat).dtype == np.float64
