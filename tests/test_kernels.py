"""Fused kernels (xpmlp/core/kernels.py): the CUDA source compiles, without flushing float32
subnormals; training with the NumPy twins is the portable path's training bit for bit; on the CuPy
stand-in a step takes 21 launches; a kernel that fails to compile or disagrees is replaced by the
portable path, said in one line. Each kernel against its twin, on the stand-in and on a real GPU:
bit for bit where the operations are IEEE's (masks, counts, ReLU, gradients, Adam, subnormals
included), within a few ulps where CUDA's tanh, exp and log or a summation order differ."""

from __future__ import annotations

import re

import numpy as np
import pytest
from optional import missing, need
from tolerances import fused_tolerance, real_gpu, twins_run

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


def _same_training(a, b, exact: bool = True) -> None:
    """Training ``a`` is ``b``'s: bit for bit, or (``exact`` false: the CUDA source ran) within
    :func:`fused_tolerance` (and one sample's accuracy of 50)."""
    (model_a, history_a), (model_b, history_b) = a, b
    close = fused_tolerance(exact, model_a.dtype_name)
    for key, tolerance in (
        ("train_loss", close),
        ("train_accuracy", {"atol": 0 if exact else 0.02}),
    ):
        got, want = [r[key] for r in history_a], [r[key] for r in history_b]
        if None in want:  # no accuracy for a regression
            assert got == want, key
        else:
            np.testing.assert_allclose(got, want, **tolerance, err_msg=key)
    for name, value in model_a.state_dict().items():
        np.testing.assert_allclose(value, model_b.state_dict()[name], **close, err_msg=name)


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


def _ptx(dtype: str, options) -> str:
    nvrtc = _nvrtc()
    program = nvrtc.createProgram(kernels.cuda_source(dtype), "xpmlp_kernels.cu", [], [])
    try:
        nvrtc.compileProgram(program, ["-arch=compute_80", *options])
    except Exception as exc:
        pytest.fail(f"{exc}\n{nvrtc.getProgramLog(program)}")
    ptx = nvrtc.getPTX(program)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_cuda_source_compiles_with_nvrtc(dtype):
    ptx = _ptx(dtype, kernels.NVRTC_OPTIONS)
    for name in kernels.kernel_names():
        assert f".entry {name}(" in ptx, name
    # Subnormals kept: the only flushing instructions are the approximations inside CUDA's exp
    # and tanh, whose arguments they range-reduce first.
    assert _flushing(ptx) <= {"ex2.approx.ftz.f32", "rcp.approx.ftz.f32", "rcp.approx.ftz.f64"}


def _flushing(ptx: str) -> set[str]:
    return set(re.findall(r"\b[a-z0-9]+(?:\.[a-z0-9]+)*\.ftz[.a-z0-9]*", ptx))


def test_the_flush_cupy_appends_would_show_in_the_ptx():
    # What RawModule(code=...) compiles: CuPy appends -ftz=true after the caller's options, and
    # NVRTC keeps the last. So the kernels are compiled with NVRTC directly.
    flushing = _flushing(_ptx("float32", (*kernels.NVRTC_OPTIONS, "-ftz=true")))
    assert {"add.rn.ftz.f32", "mul.rn.ftz.f32", "div.rn.ftz.f32", "sqrt.rn.ftz.f32"} <= flushing


def test_the_kernels_are_compiled_without_cupys_flush(cupy_standin, fresh_kernels):
    import cupy

    module = kernels.compile_module(cupy, "float32")
    options = module.raw.options
    assert "--ftz=false" in options and "--fmad=false" in options
    assert not any(option.startswith("-ftz=true") for option in options)


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


def test_an_adam_step_takes_twenty_one_launches_on_the_standin(cupy_standin, fresh_kernels, capfd):
    model = MLP([6, 16, 16, 3], device="cuda:0")
    assert model.fused is not None and capfd.readouterr().err == ""
    # gather 2, forward 2 per layer, loss 2 (the rows, then their sums), backward 4 per hidden
    # layer and 2 for the first, Adam 1: what benchmarks/launches.py reports for 784-300-300-10.
    assert _step_launches(cupy_standin, model) == [21, 21, 21]
    # Dropout adds one kernel per hidden layer: its mask.
    dropout = MLP([6, 16, 16, 3], dropout=0.2, device="cuda:0")
    assert _step_launches(cupy_standin, dropout) == [23, 23, 23]


def test_fused_kernels_on_the_standin_train_as_on_the_cpu(
    cupy_standin, fresh_kernels, make_problem
):
    config = {"dropout": 0.3, "activation": "tanh"}
    on_gpu = _train(make_problem, config, "cuda:1")
    _same_training(on_gpu, _train(make_problem, config, "cpu"), twins_run(on_gpu[0].backend))


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


# ---------------------------------------------------------------------- each kernel against its twin


@pytest.fixture(params=[pytest.param("standin", id="cupy_standin"),
                        pytest.param("gpu", id="cupy", marks=pytest.mark.gpu)])  # fmt: skip
def device_backend(request):
    """The CuPy stand-in's device 1, or a real GPU's device 0, made current, with fresh kernels
    (the kernels launch on the current device, as the model makes it)."""
    kernels.forget()
    if request.param == "standin":
        request.getfixturevalue("cupy_standin")
        backend = get_backend("cuda:1")
    else:
        need("cupy")
        try:
            backend = get_backend("cuda:0")
        except Exception as exc:
            missing("gpu", str(exc))
    with backend.activate():
        yield backend
    kernels.forget()


def _special(dtype, shape, seed: int) -> np.ndarray:
    """Normal values with NaN, +-inf, -0 and subnormals among them."""
    values = np.random.default_rng(seed).normal(size=shape).astype(dtype).reshape(-1)
    tiny = np.finfo(dtype).smallest_normal / 4
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, tiny, -tiny, 3 * tiny], dtype)
    values[: len(specials)] = specials[: values.size]
    return values.reshape(shape)


def _math_tolerance(dtype) -> dict:
    """CUDA's tanh, exp and log against NumPy's (a few ulps), and another summation order."""
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-13}


class _Pair:
    """The same call on the device and on the CPU's twins; ``check`` compares the results."""

    def __init__(self, backend, dtype: str):
        self.dtype, self.exact = dtype, twins_run(backend)
        self.device = kernels.fused_for(backend, dtype)
        self.cpu = kernels.fused_for(get_backend("cpu"), dtype)
        assert self.device is not None

    def put(self, host):
        return self.device.backend.asarray(host, copy=True)

    def check(self, got, want, *, exact: bool, name: str) -> None:
        tolerance = {"rtol": 0, "atol": 0} if exact or self.exact else _math_tolerance(self.dtype)
        np.testing.assert_allclose(to_numpy(got), want, **tolerance, err_msg=name)


SHAPES = [(1, 1), (3, 5), (129, 5), (300, 7), (2049, 520)]  # the last: grid-stride passes


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_each_elementwise_kernel_against_its_twin(device_backend, dtype, shape):
    pair = _Pair(device_backend, dtype)
    z, b, g = _special(dtype, shape, 1), _special(dtype, shape[1:], 2), _special(dtype, shape, 3)
    mask = (np.random.default_rng(4).random(shape) > 0.3).astype(dtype) * dtype_scale(dtype)
    with np.errstate(all="ignore"):
        for act in kernels.FUSED_ACTIVATIONS:
            math = act in ("tanh", "sigmoid")  # CUDA's tanh: within an ulp or two of NumPy's
            for m in (None, mask):
                dz = pair.put(z)
                h, a = pair.device.bias_activation(
                    act, dz, pair.put(b), None if m is None else pair.put(m)
                )
                want_z = z.copy()
                want_h, want_a = pair.cpu.bias_activation(act, want_z, b, m)
                pair.check(dz, want_z, exact=True, name=f"bias {act} z")
                pair.check(h, want_h, exact=not math, name=f"bias {act} h")
                pair.check(a, want_a, exact=not math, name=f"bias {act} a")
                h = np.tanh(z)  # any activation values: the gradients' arithmetic is IEEE's
                got = pair.device.activation_backward(
                    act, pair.put(g), None if m is None else pair.put(m), pair.put(z), pair.put(h)
                )
                want = pair.cpu.activation_backward(act, g.copy(), m, z, h)
                pair.check(got, want, exact=True, name=f"grad {act}")
    got = pair.device.dropout_mask(shape, 0.3, (5, 6))
    pair.check(got, pair.cpu.dropout_mask(shape, 0.3, (5, 6)), exact=True, name="dropout mask")


def dtype_scale(dtype):
    return np.dtype(dtype).type(1 / 0.7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (700, 11), (37, 300), (5, 1000), (20000, 10)],
                         ids=str)  # fmt: skip
def test_softmax_xent_against_its_twin(device_backend, dtype, shape):
    pair = _Pair(device_backend, dtype)
    draw = np.random.default_rng(7)
    logits = (draw.normal(size=shape) * 5).astype(dtype)
    labels = draw.integers(0, shape[1], shape[0])
    if shape[0] > 3:
        logits[1] = 0  # a tie: the first column is the arg max
        logits[2, -1] = np.nan
        logits[3] = np.inf
    sums, want_sums = pair.put(np.array([1.5, 2], dtype)), np.array([1.5, 2], dtype)
    with np.errstate(all="ignore"):
        got = pair.device.softmax_xent(pair.put(logits), device_backend.asarray(labels), sums)
        want = pair.cpu.softmax_xent(logits, labels, want_sums)
    pair.check(got, want, exact=False, name="gradient")
    pair.check(sums[1:], want_sums[1:], exact=True, name="correct count")
    pair.check(sums[:1], want_sums[:1], exact=False, name="loss sum")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 40, 1_100_000])
def test_adam_against_its_twin_bit_for_bit(device_backend, dtype, n):
    pair = _Pair(device_backend, dtype)
    p, g, m = (_special(dtype, (n,), seed) for seed in (1, 2, 3))
    v = np.abs(_special(dtype, (n,), 4))
    device = [pair.put(x) for x in (p, g, m, v)]
    settings = {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "step": 3}
    with np.errstate(all="ignore"):
        pair.device.adam(*device, **settings)
        pair.cpu.adam(p, g, m, v, **settings)
    for name, got, want in zip("pgmv", device, (p, g, m, v)):
        pair.check(got, want, exact=True, name=name)


def test_a_float32_subnormal_gradient_moves_the_parameter(device_backend):
    # p = m = v = 0, g = 1e-39 (subnormal): NumPy gives p = -9.99995e-35; a device that flushes
    # subnormals (CuPy's -ftz=true) leaves p = 0.
    pair = _Pair(device_backend, "float32")
    settings = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "step": 1}
    host = [np.zeros(1, np.float32), np.full(1, 1e-39, np.float32)]
    host += [np.zeros(1, np.float32), np.zeros(1, np.float32)]
    device = [pair.put(x) for x in host]
    pair.device.adam(*device, **settings)
    pair.cpu.adam(*host, **settings)
    assert to_numpy(device[0])[0] == host[0][0] and host[0][0] == pytest.approx(-9.99995e-35, 1e-5)
    z, b = pair.put(np.full((2, 3), 1e-39, np.float32)), pair.put(np.zeros(3, np.float32))
    h, _ = pair.device.bias_activation("relu", z, b)
    assert (to_numpy(h) == np.float32(1e-39)).all()  # a subnormal input is not flushed either


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
