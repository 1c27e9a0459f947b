"""Optimizers, learning-rate schedules and gradient clipping, written once for every backend.

An optimizer keeps its state by parameter name and updates a ``params`` dict
(``params[name] = new``), so it never holds stale references when a model moves device.
Its rules follow torch.optim exactly (same moment definitions, bias correction and epsilon
placement), so the two can be compared step by step.

Each rule is written twice, side by side: ``update`` in portable Array API operations, and
``update_inplace`` with NumPy/CuPy ``out=`` ufuncs, which allocates nothing and is used where
the backend has them (the benchmark measured Adam at batch 128 going from about 1.06 to 0.5 ms
a step). Both perform the same floating-point operations in the same order, so they agree bit
for bit (tested).

Every ``FLUSH_EVERY`` steps, moment entries below ``FLUSH_BELOW`` in magnitude are set to zero.
A moment whose gradient stays (almost) zero decays geometrically into float32's subnormal range,
where x86 CPUs run about 13 times slower; in a long Fashion-MNIST run that made Adam twice as
slow as the matrix products. The change to any update is below ``lr * 1e-30 / eps``.
"""

from __future__ import annotations

import math

from ..backend import to_numpy, ufunc_module
from ..errors import CheckpointError, ConfigError
from . import kernels
from .flat import Layout

FLUSH_EVERY = 100
FLUSH_BELOW = 1e-30
FLAT = "flat"  # the one name a model's flat parameter buffer is stepped under


class Optimizer:
    """Base class: subclasses define :meth:`update`, which returns the new value of one tensor."""

    slots: tuple[str, ...] = ()

    def __init__(self, xp, *, lr: float, inplace: bool = True):
        if not lr > 0:
            raise ConfigError(f"learning rate must be > 0; got {lr}")
        self.xp = xp
        self.fused: kernels.Fused | None = None  # set by the trainer: its model's kernels
        self.lr = float(lr)
        self.steps = 0
        self.state: dict[str, dict] = {}
        self._lib = ufunc_module(xp) if inplace else None
        self._scratch: dict[str, object] = {}

    def step(self, params: dict, grads: dict, *, lr: float | None = None) -> None:
        """Apply one update to every parameter in ``params``.

        With the in-place path (NumPy, CuPy) the arrays in ``params`` and the optimizer state
        are updated where they are; otherwise their entries are replaced.
        """
        self.steps += 1
        lr = self.lr if lr is None else float(lr)
        flush = self.steps % FLUSH_EVERY == 0
        for name, grad in grads.items():
            slots = self.state.get(name)
            if slots is None:
                slots = self.state[name] = {s: self.xp.zeros_like(grad) for s in self.slots}
            if self._lib is not None and _writable(params[name]):
                scratch = self._scratch.get(name)
                if scratch is None or scratch.shape != grad.shape or scratch.dtype != grad.dtype:
                    scratch = self._scratch[name] = self.xp.empty_like(grad)
                self.update_inplace(self._lib, params[name], grad, slots, scratch, lr)
                if flush:
                    for value in slots.values():
                        self._lib.multiply(value, abs(value) >= FLUSH_BELOW, out=value)
            else:
                params[name] = self.update(params[name], grad, slots, lr)
                if flush:
                    for slot, value in slots.items():
                        slots[slot] = value * self.xp.astype(
                            self.xp.abs(value) >= FLUSH_BELOW, value.dtype
                        )

    def update(self, param, grad, slots: dict, lr: float):
        """The new value of ``param``; may replace entries of ``slots``."""
        raise NotImplementedError

    def update_inplace(self, lib, param, grad, slots: dict, scratch, lr: float) -> None:
        """:meth:`update` written into ``param`` and ``slots`` with ``lib``'s ``out=`` ufuncs."""
        raise NotImplementedError

    def snapshot(self) -> dict:
        """A device-side copy of the state, for :meth:`restore` (cheap: no host transfer)."""
        slots = {
            name: {slot: self.xp.asarray(value, copy=True) for slot, value in values.items()}
            for name, values in self.state.items()
        }
        return {"steps": self.steps, "slots": slots}

    def restore(self, snapshot: dict) -> None:
        """Go back to a :meth:`snapshot` (which stays usable: it is copied again)."""
        self.steps = snapshot["steps"]
        self.state = {
            name: {slot: self.xp.asarray(value, copy=True) for slot, value in values.items()}
            for name, values in snapshot["slots"].items()
        }

    def state_dict(self, layout: Layout | None = None) -> dict:
        """``{"steps": int, "slots": {"<param>.<slot>": numpy array}}``.

        With ``layout``, the state of the flat buffer stepped as :data:`FLAT` is reported per
        parameter, as checkpoints store it.
        """
        arrays = {}
        for name, slots in self.state.items():
            for slot, value in slots.items():
                value = to_numpy(value).copy()
                parts = layout.split(value) if layout and name == FLAT else {name: value}
                arrays.update({f"{part}.{slot}": array for part, array in parts.items()})
        return {"steps": self.steps, "slots": arrays}

    def load_state_dict(
        self, state: dict, *, asarray, shapes: dict | None = None, layout: Layout | None = None
    ) -> None:
        """Restore from :meth:`state_dict`; ``asarray`` moves a host array to the device.

        With ``shapes`` (parameter name -> shape), every slot must belong to a parameter, have
        its shape, and every parameter must have all slots once any has been stepped. With
        ``layout`` (which implies its shapes), the slots are joined into flat buffers under
        :data:`FLAT`.
        """
        shapes = layout.shapes if layout is not None else shapes
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise CheckpointError(f"optimizer step count must be an integer >= 0; got {steps!r}")
        loaded: dict[str, dict] = {}
        for key, value in state["slots"].items():
            name, _, slot = key.rpartition(".")
            if slot not in self.slots:
                raise CheckpointError(
                    f"optimizer state has slot {slot!r} that {type(self).__name__} does not use"
                )
            if shapes is not None and tuple(value.shape) != tuple(shapes.get(name, ())):
                expected = shapes.get(name)
                raise CheckpointError(
                    f"optimizer slot {key} has shape {tuple(value.shape)}; "
                    + (
                        f"{name} has shape {tuple(expected)}"
                        if expected
                        else f"there is no parameter {name}"
                    )
                )
            loaded.setdefault(name, {})[slot] = value
        if shapes is not None and steps and self.slots:
            incomplete = [n for n in shapes if set(loaded.get(n, {})) != set(self.slots)]
            if incomplete:
                raise CheckpointError(
                    f"optimizer state after {steps} steps lacks {'/'.join(self.slots)} of "
                    f"{incomplete[0]}; the checkpoint is incomplete"
                )
        if layout is not None and loaded:
            dtype = next(iter(next(iter(loaded.values())).values())).dtype
            loaded = {FLAT: {s: layout.join({n: loaded[n][s] for n in loaded}, dtype, what="optimizer")
                             for s in self.slots}}  # fmt: skip
        self.steps = steps
        self.state = {
            name: {s: asarray(v) for s, v in slots.items()} for name, slots in loaded.items()
        }


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``."""

    def update(self, param, grad, slots, lr):
        return param - lr * grad

    def update_inplace(self, lib, param, grad, slots, scratch, lr):
        lib.multiply(grad, lr, out=scratch)
        param -= scratch


class Momentum(Optimizer):
    """Heavy-ball momentum as torch.optim.SGD: ``b = mu * b + g``; ``p -= lr * b``.

    With ``nesterov=True`` the step uses the look-ahead ``g + mu * b`` instead of ``b``.
    """

    slots = ("momentum",)

    def __init__(
        self, xp, *, lr: float, momentum: float = 0.9, nesterov: bool = False, inplace: bool = True
    ):
        super().__init__(xp, lr=lr, inplace=inplace)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1); got {momentum}")
        self.momentum = float(momentum)
        self.nesterov = nesterov

    def update(self, param, grad, slots, lr):
        buf = self.momentum * slots["momentum"] + grad
        slots["momentum"] = buf
        direction = grad + self.momentum * buf if self.nesterov else buf
        return param - lr * direction

    def update_inplace(self, lib, param, grad, slots, scratch, lr):
        buf = slots["momentum"]
        buf *= self.momentum
        buf += grad
        if self.nesterov:
            lib.multiply(buf, self.momentum, out=scratch)
            scratch += grad
        else:
            scratch[...] = buf
        scratch *= lr
        param -= scratch


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with torch's epsilon placement, and optional decoupled decay.

    ``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g^2``;
    ``p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``, where torch divides
    ``sqrt(v)`` by ``sqrt(1-b2^t)`` before adding eps.
    With ``weight_decay`` (AdamW, Loshchilov & Hutter 2019): ``p *= 1 - lr * weight_decay`` first.
    """

    slots = ("m", "v")

    def __init__(
        self,
        xp,
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        inplace: bool = True,
    ):
        super().__init__(xp, lr=lr, inplace=inplace)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ConfigError(f"Adam betas must be in [0, 1); got {betas}")
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)

    def update(self, param, grad, slots, lr):
        b1, b2, t = self.beta1, self.beta2, self.steps
        m = b1 * slots["m"] + (1 - b1) * grad
        v = b2 * slots["v"] + (1 - b2) * (grad * grad)
        slots["m"], slots["v"] = m, v
        if self.weight_decay:
            param = param * (1 - lr * self.weight_decay)
        step_size = lr / (1 - b1**t)
        denom = self.xp.sqrt(v) / math.sqrt(1 - b2**t) + self.eps
        return param - step_size * (m / denom)

    def update_inplace(self, lib, param, grad, slots, scratch, lr):
        settings = dict(lr=lr, betas=(self.beta1, self.beta2), eps=self.eps,
                        weight_decay=self.weight_decay, step=self.steps)  # fmt: skip
        if self.fused is not None:  # one kernel
            self.fused.adam(param, grad, slots["m"], slots["v"], **settings)
            return
        scalars = kernels.adam_scalars(param.dtype, **settings)
        kernels.adam_inplace(lib, param, grad, slots["m"], slots["v"], scratch, *scalars)


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


def make_optimizer(
    name: str,
    xp,
    *,
    lr: float,
    inplace: bool = True,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Optimizer:
    """Build an optimizer by name: sgd, momentum, nesterov, adam, adamw.

    ``weight_decay`` is used by ``adamw`` only (decoupled); for the others put the L2 penalty
    in the model (``MLP(weight_decay=...)``). ``inplace=False`` forces the portable path.
    """
    if name == "sgd":
        return SGD(xp, lr=lr, inplace=inplace)
    if name in ("momentum", "nesterov"):
        nesterov = name == "nesterov"
        return Momentum(xp, lr=lr, momentum=momentum, nesterov=nesterov, inplace=inplace)
    if name == "adam":
        return Adam(xp, lr=lr, betas=betas, eps=eps, inplace=inplace)
    if name == "adamw":
        return Adam(xp, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, inplace=inplace)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def clip_grad_norm(xp, grads: dict, max_norm: float):
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    Works on the device without reading the norm back (no host sync): the scale is
    ``min(1, max_norm / (norm + 1e-6))`` as torch.nn.utils.clip_grad_norm_ computes it.
    Returns the norm before clipping, a 0-d array.
    """
    norm = xp.sqrt(sum(xp.sum(g * g) for g in grads.values()))
    scale = xp.minimum(max_norm / (norm + 1e-6), 1.0)
    for name in grads:
        grads[name] = grads[name] * scale
    return norm


# ---------------------------------------------------------------------- learning-rate schedules

SCHEDULES = ("constant", "step", "cosine")


class Schedule:
    """Learning rate as a function of the global step (0-based), computed on the host.

    Parameters
    ----------
    base_lr : float
    kind : str
        ``constant``; ``step`` (multiply by ``gamma`` every ``step_epochs`` epochs);
        ``cosine`` (from base_lr down to ``min_lr`` over the whole run).
    steps_per_epoch, epochs : int
        The run's length, which step and cosine decay are laid out on.
    warmup_epochs : float
        Linear warm-up from ``base_lr / warmup_steps`` to ``base_lr`` over this many epochs,
        then the chosen schedule over the rest.
    """

    def __init__(
        self,
        base_lr: float,
        kind: str = "constant",
        *,
        steps_per_epoch: int = 1,
        epochs: int = 1,
        step_epochs: int = 10,
        gamma: float = 0.1,
        min_lr: float = 0.0,
        warmup_epochs: float = 0.0,
    ):
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
        if warmup_epochs < 0 or step_epochs < 1:
            raise ConfigError("warmup epochs must be >= 0 and step epochs >= 1")
        self.base_lr, self.kind = float(base_lr), kind
        self.steps_per_epoch, self.epochs = max(1, steps_per_epoch), max(1, epochs)
        self.step_epochs, self.gamma, self.min_lr = step_epochs, gamma, min_lr
        self.warmup_steps = round(warmup_epochs * self.steps_per_epoch)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "step":
            periods = step // (self.step_epochs * self.steps_per_epoch)
            try:
                return self.base_lr * self.gamma**periods
            except OverflowError:  # gamma > 1 grown past the largest float: training says so
                return math.inf
        if self.kind == "cosine":
            total = self.epochs * self.steps_per_epoch - self.warmup_steps
            progress = min(1.0, (step - self.warmup_steps) / max(1, total))
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (
                1 + math.cos(math.pi * progress)
            )
        return self.base_lr


def _writable(array) -> bool:
    # NumPy arrays can be read-only (np.load of a memory map, broadcast views); CuPy's flags
    # have no ``writeable`` at all: its arrays always are.
    return getattr(getattr(array, "flags", None), "writeable", True)
