"""Optimizers, schedules and clipping: two steps worked by hand, and torch.optim as the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from optional import need
from tolerances import rtol_for

import xpmlp
from xpmlp import CheckpointError, ConfigError, Schedule, clip_grad_norm, make_optimizer, to_numpy
from xpmlp.core.optim import FLUSH_EVERY, OPTIMIZERS

P0 = np.array([1.0, -2.0])
G1 = np.array([0.5, -1.0])
G2 = np.array([0.25, 2.0])


def _two_steps(backend, name, *, lr, **kwargs):
    optimizer = make_optimizer(name, backend.xp, lr=lr, **kwargs)
    params = {"w": backend.asarray(P0, "float64", copy=True)}  # steps may update in place
    history = []
    for grad in (G1, G2):
        optimizer.step(params, {"w": backend.asarray(grad, "float64")})
        assert backend.owns(params["w"])
        history.append(to_numpy(params["w"]).copy())
    return history


# ---------------------------------------------------------------------- two steps by hand
# p0 = [1, -2], g1 = [0.5, -1], g2 = [0.25, 2] throughout.


def test_sgd_by_hand(backend):
    # lr = 0.5: p1 = p0 - 0.5 g1 = [1 - 0.25, -2 + 0.5] = [0.75, -1.5]
    #           p2 = p1 - 0.5 g2 = [0.75 - 0.125, -1.5 - 1] = [0.625, -2.5]
    p1, p2 = _two_steps(backend, "sgd", lr=0.5)
    np.testing.assert_array_equal(p1, [0.75, -1.5])
    np.testing.assert_array_equal(p2, [0.625, -2.5])


def test_momentum_by_hand(backend):
    # lr = 0.5, mu = 0.5 (torch.optim.SGD: the first buffer is the gradient itself)
    #   b1 = g1 = [0.5, -1];  p1 = p0 - 0.5 b1 = [0.75, -1.5]
    #   b2 = 0.5 b1 + g2 = [0.25 + 0.25, -0.5 + 2] = [0.5, 1.5];  p2 = p1 - 0.5 b2 = [0.5, -2.25]
    p1, p2 = _two_steps(backend, "momentum", lr=0.5, momentum=0.5)
    np.testing.assert_array_equal(p1, [0.75, -1.5])
    np.testing.assert_array_equal(p2, [0.5, -2.25])


def test_nesterov_by_hand(backend):
    # lr = 0.5, mu = 0.5; the step direction is g + mu b:
    #   b1 = [0.5, -1];  d1 = g1 + 0.5 b1 = [0.75, -1.5];  p1 = p0 - 0.5 d1 = [0.625, -1.25]
    #   b2 = [0.5, 1.5]; d2 = g2 + 0.5 b2 = [0.5, 2.75];   p2 = p1 - 0.5 d2 = [0.375, -2.625]
    p1, p2 = _two_steps(backend, "nesterov", lr=0.5, momentum=0.5)
    np.testing.assert_array_equal(p1, [0.625, -1.25])
    np.testing.assert_array_equal(p2, [0.375, -2.625])


def test_adam_by_hand(backend):
    # lr = 0.1, betas (0.9, 0.999), eps 1e-8.
    # Step 1: m = 0.1 g1 = [0.05, -0.1]; v = 0.001 g1^2 = [0.00025, 0.001]
    #   m_hat = m / 0.1 = [0.5, -1]; sqrt(v_hat) = sqrt(v / 0.001) = [0.5, 1]
    #   p1 = p0 - 0.1 m_hat / (sqrt(v_hat) + eps) = [1 - 0.1 * 0.5/0.50000001, ...]
    #      = [0.900000002, -1.900000001]   (the eps shows in the 9th digit)
    # Step 2: m = 0.9 m + 0.1 g2 = [0.045 + 0.025, -0.09 + 0.2] = [0.07, 0.11]
    #   v = 0.999 v + 0.001 g2^2 = [0.00024975 + 0.0000625, 0.000999 + 0.004]
    #     = [0.00031225, 0.004999]
    #   m_hat = m / (1 - 0.9^2) = m / 0.19 = [0.368421..., 0.578947...]
    #   sqrt(v_hat) = sqrt(v / (1 - 0.999^2)) = sqrt(v / 0.001999) = [0.395225..., 1.581376...]
    #   p2 = p1 - 0.1 m_hat / (sqrt(v_hat) + eps) = p1 - [0.093218..., 0.036610...]
    #      = [0.806782..., -1.936610...]
    p1, p2 = _two_steps(backend, "adam", lr=0.1)
    np.testing.assert_allclose(p1, [1 - 0.05 / (0.5 + 1e-8), -2 + 0.1 / (1 + 1e-8)], rtol=1e-15)
    np.testing.assert_allclose(p1, [0.900000002, -1.900000001], rtol=1e-15)
    m_hat = np.array([0.07, 0.11]) / 0.19
    root_v_hat = np.sqrt(np.array([0.00031225, 0.004999]) / 0.001999)
    np.testing.assert_allclose(root_v_hat, [0.3952253807, 1.5813761018], rtol=1e-10)
    np.testing.assert_allclose(p2, p1 - 0.1 * m_hat / (root_v_hat + 1e-8), rtol=1e-14)
    np.testing.assert_allclose(p2, [0.8067820405, -1.9366103535], rtol=1e-10)


def test_adamw_by_hand(backend):
    # As Adam, but each step first shrinks p by 1 - lr * wd = 1 - 0.1 * 0.1 = 0.99:
    #   p1 = 0.99 p0 - [0.1, -0.1] (to 1e-9) = [0.89, -1.88]
    #   p2 = 0.99 p1 - [0.093218..., 0.036610...] = [0.787882..., -1.897810...]
    p1, p2 = _two_steps(backend, "adamw", lr=0.1, weight_decay=0.1)
    np.testing.assert_allclose(p1, 0.99 * P0 - [0.05 / (0.5 + 1e-8), -0.1 / (1 + 1e-8)], rtol=1e-15)
    step2 = 0.1 * (np.array([0.07, 0.11]) / 0.19) / (np.sqrt([0.15620310155, 2.50075037519]) + 1e-8)
    np.testing.assert_allclose(p2, 0.99 * p1 - step2, rtol=1e-10)
    np.testing.assert_allclose(p2, [0.7878820405, -1.8978103535], rtol=1e-10)


def test_adam_ignores_weight_decay_and_adamw_uses_it(backend):
    adam = _two_steps(backend, "adam", lr=0.1, weight_decay=0.1)
    np.testing.assert_array_equal(adam[1], _two_steps(backend, "adam", lr=0.1)[1])
    assert not np.allclose(_two_steps(backend, "adamw", lr=0.1, weight_decay=0.1)[1], adam[1])


# ---------------------------------------------------------------------- torch.optim as oracle


def _torch_optimizer(torch, name, params, lr):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=name == "nesterov")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99), eps=1e-6)
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_match_torch(backend, name):
    torch = need("torch")
    generator = np.random.default_rng(0)
    start = {"w": generator.normal(size=(3, 4)), "b": generator.normal(size=4)}
    grads = [{k: generator.normal(size=v.shape) for k, v in start.items()} for _ in range(8)]
    lrs = [0.05, 0.05, 0.1, 0.02, 0.08, 0.01, 0.03, 0.05]  # a schedule changes lr between steps

    ours = make_optimizer(
        name, backend.xp, lr=0.05, momentum=0.9, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05
    )
    params = {k: backend.asarray(v, "float64") for k, v in start.items()}
    tensors = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in start.items()
    }
    theirs = _torch_optimizer(torch, name, list(tensors.values()), 0.05)
    for lr, grad in zip(lrs, grads):
        ours.step(params, {k: backend.asarray(g, "float64") for k, g in grad.items()}, lr=lr)
        for group in theirs.param_groups:
            group["lr"] = lr
        for k, tensor in tensors.items():
            tensor.grad = torch.tensor(grad[k], dtype=torch.float64)
        theirs.step()
        for k, tensor in tensors.items():
            np.testing.assert_allclose(
                to_numpy(params[k]),
                tensor.detach().numpy(),
                rtol=rtol_for(backend, 1e-13),
                atol=1e-15,
                err_msg=k,
            )
    assert ours.steps == len(lrs)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_round_trip(backend, name):
    generator = np.random.default_rng(1)
    grads = [{"w": generator.normal(size=(2, 3))} for _ in range(4)]

    def run(optimizer, params, sequence):
        for grad in sequence:
            optimizer.step(params, {"w": backend.asarray(grad["w"], "float64")})
        return params

    start = generator.normal(size=(2, 3))
    straight = run(
        make_optimizer(name, backend.xp, lr=0.1), {"w": backend.asarray(start, "float64")}, grads
    )
    first = make_optimizer(name, backend.xp, lr=0.1)
    halfway = run(first, {"w": backend.asarray(start, "float64")}, grads[:2])
    state = first.state_dict()
    assert state["steps"] == 2
    assert all(isinstance(v, np.ndarray) for v in state["slots"].values())
    resumed = make_optimizer(name, backend.xp, lr=0.1)
    resumed.load_state_dict(state, asarray=lambda a: backend.asarray(a, "float64"))
    for slots in resumed.state.values():
        assert all(backend.owns(v) for v in slots.values())
    run(resumed, halfway, grads[2:])
    np.testing.assert_array_equal(to_numpy(halfway["w"]), to_numpy(straight["w"]))


def test_loading_a_foreign_slot_is_a_checkpoint_error():
    adam = make_optimizer("adam", np, lr=0.1)
    with pytest.raises(CheckpointError, match="slot 'momentum' that Adam does not use"):
        adam.load_state_dict({"steps": 1, "slots": {"w.momentum": np.zeros(2)}}, asarray=np.asarray)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("rmsprop", {}, "unknown optimizer 'rmsprop'; choose one of sgd, momentum, nesterov"),
        ("sgd", {"lr": 0.0}, "learning rate must be > 0; got 0.0"),
        ("adam", {"lr": -1.0}, "learning rate must be > 0"),
        ("momentum", {"momentum": 1.0}, r"momentum must be in \[0, 1\); got 1.0"),
        ("adam", {"betas": (0.9, 1.0)}, r"Adam betas must be in \[0, 1\)"),
    ],
)
def test_invalid_optimizer_settings(name, kwargs, message):
    kwargs = {"lr": 0.1, **kwargs}
    with pytest.raises(ConfigError, match=message):
        make_optimizer(name, np, **kwargs)


# ---------------------------------------------------------------------- schedules


def _lrs(schedule, steps):
    return [schedule(step) for step in range(steps)]


def test_constant_schedule():
    assert _lrs(Schedule(0.3, steps_per_epoch=5, epochs=2), 12) == [0.3] * 12


def test_step_schedule_by_hand():
    # gamma 0.5 every 2 epochs of 3 steps: steps 0-5 at 1, 6-11 at 0.5, 12-17 at 0.25.
    schedule = Schedule(1.0, "step", steps_per_epoch=3, epochs=10, step_epochs=2, gamma=0.5)
    assert _lrs(schedule, 18) == [1.0] * 6 + [0.5] * 6 + [0.25] * 6


def test_cosine_schedule_by_hand():
    # From 1 to min_lr = 0.1 over 2 epochs of 2 steps: 0.1 + 0.45 (1 + cos(pi k / 4)):
    #   k = 0: 1;  k = 1: 0.1 + 0.45 * 1.7071 = 0.86820;  k = 2: 0.55;
    #   k = 3: 0.1 + 0.45 * 0.29289 = 0.23180;  k = 4: 0.1, and it stays there.
    schedule = Schedule(1.0, "cosine", steps_per_epoch=2, epochs=2, min_lr=0.1)
    expected = [1.0, 0.1 + 0.45 * (1 + math.sqrt(0.5)), 0.55, 0.1 + 0.45 * (1 - math.sqrt(0.5))]
    np.testing.assert_allclose(_lrs(schedule, 7), expected + [0.1] * 3, rtol=1e-15)
    np.testing.assert_allclose(_lrs(schedule, 4), [1.0, 0.86820, 0.55, 0.23180], atol=1e-5)


def test_warmup_by_hand():
    # One epoch of 4 steps rising linearly to base_lr: 0.25, 0.5, 0.75, 1; then constant.
    schedule = Schedule(1.0, steps_per_epoch=4, epochs=3, warmup_epochs=1)
    assert _lrs(schedule, 8) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]
    # Warm-up then step decay: decay epochs count from the start of the run.
    schedule = Schedule(
        1.0, "step", steps_per_epoch=2, epochs=6, step_epochs=2, gamma=0.1, warmup_epochs=1
    )
    np.testing.assert_allclose(_lrs(schedule, 10), [0.5, 1, 1, 1] + [0.1] * 4 + [0.01] * 2)


def _torch_lrs(torch, make_scheduler, steps):
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = make_scheduler(torch.optim.lr_scheduler, optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(
    ("schedule", "torch_scheduler", "steps"),
    [
        pytest.param(
            Schedule(1.0, "step", steps_per_epoch=3, epochs=8, step_epochs=2, gamma=0.3),
            lambda lr_s, opt: lr_s.StepLR(opt, step_size=6, gamma=0.3),
            24,
            id="step",
        ),
        pytest.param(
            Schedule(1.0, "cosine", steps_per_epoch=5, epochs=4, min_lr=0.01),
            lambda lr_s, opt: lr_s.CosineAnnealingLR(opt, T_max=20, eta_min=0.01),
            21,
            id="cosine",
        ),
        pytest.param(
            Schedule(1.0, steps_per_epoch=4, epochs=3, warmup_epochs=1.5),
            lambda lr_s, opt: lr_s.LinearLR(opt, start_factor=1 / 6, total_iters=5),
            12,
            id="warmup",
        ),
        pytest.param(
            Schedule(1.0, "cosine", steps_per_epoch=3, epochs=5, warmup_epochs=1),
            lambda lr_s, opt: lr_s.SequentialLR(
                opt,
                [
                    lr_s.LinearLR(opt, start_factor=1 / 3, total_iters=2),
                    lr_s.CosineAnnealingLR(opt, T_max=12),
                ],
                milestones=[3],
            ),
            15,
            id="warmup+cosine",
        ),
    ],
)
def test_schedules_match_torch(schedule, torch_scheduler, steps):
    torch = need("torch")
    expected = _torch_lrs(torch, torch_scheduler, steps)
    np.testing.assert_allclose(_lrs(schedule, steps), expected, rtol=1e-12, atol=1e-15)


@given(
    kind=st.sampled_from(["constant", "step", "cosine"]),
    steps_per_epoch=st.integers(1, 20),
    epochs=st.integers(1, 10),
    warmup=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    min_lr=st.sampled_from([0.0, 1e-4]),
)
def test_schedule_stays_in_range_and_peaks_after_warmup(
    kind, steps_per_epoch, epochs, warmup, min_lr
):
    schedule = Schedule(
        0.1, kind, steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_epochs=warmup,
        min_lr=min_lr, step_epochs=2, gamma=0.5,
    )  # fmt: skip
    run = steps_per_epoch * epochs
    lrs = _lrs(schedule, run + 3)
    assert all(min_lr <= lr <= 0.1 * (1 + 1e-15) for lr in lrs)  # 0.1 * 3 / 3 is 0.1 + 1 ulp
    assert all(lr > 0.0 for lr in lrs[:run])  # no step of the run is wasted at lr = 0
    rising = lrs[: schedule.warmup_steps]
    assert rising == sorted(rising)
    after = lrs[schedule.warmup_steps :]
    assert after == sorted(after, reverse=True)  # none of the schedules ever rises again


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("linear",), {}, "unknown schedule 'linear'; choose one of constant, step, cosine"),
        (("constant",), {"warmup_epochs": -1}, "warmup epochs must be >= 0"),
        (("step",), {"step_epochs": 0}, "step epochs >= 1"),
    ],
)
def test_invalid_schedules(args, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Schedule(0.1, *args, **kwargs)


# ---------------------------------------------------------------------- gradient clipping


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clip_grad_norm_matches_torch(backend, max_norm):
    torch = need("torch")
    generator = np.random.default_rng(2)
    host = {"w": generator.normal(size=(3, 4)), "b": generator.normal(size=4)}
    grads = {k: backend.asarray(v, "float64") for k, v in host.items()}
    norm = clip_grad_norm(backend.xp, grads, max_norm)
    assert backend.owns(norm) and tuple(norm.shape) == ()

    tensors = [torch.zeros(v.shape, dtype=torch.float64, requires_grad=True) for v in host.values()]
    for tensor, value in zip(tensors, host.values()):
        tensor.grad = torch.tensor(value, dtype=torch.float64)
    expected_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)

    total = math.sqrt(sum(float(np.sum(v * v)) for v in host.values()))
    rtol = rtol_for(backend, 1e-14)
    assert float(to_numpy(norm)) == pytest.approx(total, rel=rtol)
    assert float(to_numpy(norm)) == pytest.approx(expected_norm.item(), rel=rtol)
    for (name, grad), tensor in zip(grads.items(), tensors):
        np.testing.assert_allclose(to_numpy(grad), tensor.grad.numpy(), rtol=rtol, err_msg=name)
    clipped = math.sqrt(sum(float(np.sum(to_numpy(g) ** 2)) for g in grads.values()))
    assert clipped == pytest.approx(min(total, max_norm), rel=1e-5)  # the 1e-6 guard


# ---------------------------------------------------------------------- the in-place fast path


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inplace_path_equals_portable_path_bit_for_bit(name, dtype):
    """NumPy's out= path against the Array API path, over 250 steps (two moment flushes)."""
    rng = np.random.default_rng(0)
    start = {"w": rng.normal(size=(30, 7)).astype(dtype), "b": rng.normal(size=7).astype(dtype)}
    fast = make_optimizer(name, np, lr=0.01, weight_decay=0.1)
    portable = make_optimizer(name, np, lr=0.01, weight_decay=0.1, inplace=False)
    assert fast._lib is np and portable._lib is None
    p_fast = {k: v.copy() for k, v in start.items()}
    p_portable = {k: v.copy() for k, v in start.items()}
    for step in range(250):
        grads = {k: rng.normal(size=v.shape).astype(dtype) for k, v in start.items()}
        grads["w"][:5] = 0  # rows whose gradient vanishes: their moments decay towards zero
        if step % 3 == 0:
            grads["w"][5:10] = 1e-20
        fast.step(p_fast, {k: g.copy() for k, g in grads.items()}, lr=0.01 * (1 + step % 4))
        portable.step(p_portable, grads, lr=0.01 * (1 + step % 4))
    for k in start:
        np.testing.assert_array_equal(p_fast[k], p_portable[k])
    for k, slots in fast.state.items():
        for slot, value in slots.items():
            np.testing.assert_array_equal(value, portable.state[k][slot])


def test_moments_that_would_go_subnormal_are_flushed_to_zero():
    adam = make_optimizer("adam", np, lr=0.1)
    params = {"w": np.ones(4, np.float32)}
    adam.step(params, {"w": np.full(4, 1e-3, np.float32)})
    for _ in range(FLUSH_EVERY * 9 - 1):  # 0.9 ** 899 * 1e-4 is about 1e-45: subnormal, not zero
        adam.step(params, {"w": np.zeros(4, np.float32)})
    m = adam.state["w"]["m"]
    assert np.all(m == 0), m
    assert np.all(np.isfinite(params["w"]))


def test_state_dicts_are_snapshots_not_views_of_live_state():
    model = xpmlp.MLP([3, 4, 2], seed=0)
    optimizer = make_optimizer("adam", model.xp, lr=0.1)
    X, y = np.ones((5, 3)), np.array([0, 1, 0, 1, 1])
    _, grads = model.loss_and_grads(X, y)
    optimizer.step(model.params, grads)
    saved_params, saved_slots = model.state_dict(), optimizer.state_dict()["slots"]
    before = {k: v.copy() for k, v in saved_params.items()}
    model.load_state_dict(saved_params)
    _, grads = model.loss_and_grads(X, y)
    optimizer.step(model.params, grads)
    for k, v in before.items():
        np.testing.assert_array_equal(
            saved_params[k], v
        )  # loading did not alias, stepping did not write
    assert not np.array_equal(
        saved_slots["layers.0.weight.m"], optimizer.state["layers.0.weight"]["m"]
    )
