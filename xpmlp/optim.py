"""Optimizers, learning-rate schedules and gradient clipping, written once for every backend.

An optimizer keeps its state by parameter name and updates a ``params`` dict in place
(``params[name] = new``), so it never holds stale references when a model moves device.
Its rules follow torch.optim exactly (same moment definitions, bias correction and epsilon
placement), so the two can be compared step by step.
"""

from __future__ import annotations

import math

from .backend import to_numpy
from .errors import CheckpointError, ConfigError


class Optimizer:
    """Base class: subclasses define :meth:`update`, which returns the new value of one tensor."""

    slots: tuple[str, ...] = ()

    def __init__(self, xp, *, lr: float):
        if not lr > 0:
            raise ConfigError(f"learning rate must be > 0; got {lr}")
        self.xp = xp
        self.lr = float(lr)
        self.steps = 0
        self.state: dict[str, dict] = {}

    def step(self, params: dict, grads: dict, *, lr: float | None = None) -> None:
        """Apply one update to every parameter in ``params`` (replacing its entries)."""
        self.steps += 1
        lr = self.lr if lr is None else float(lr)
        for name, grad in grads.items():
            slots = self.state.get(name)
            if slots is None:
                slots = self.state[name] = {s: self.xp.zeros_like(grad) for s in self.slots}
            params[name] = self.update(params[name], grad, slots, lr)

    def update(self, param, grad, slots: dict, lr: float):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """``{"steps": int, "slots": {"<param>.<slot>": numpy array}}``."""
        arrays = {
            f"{name}.{slot}": to_numpy(value)
            for name, slots in self.state.items()
            for slot, value in slots.items()
        }
        return {"steps": self.steps, "slots": arrays}

    def load_state_dict(self, state: dict, *, asarray) -> None:
        """Restore from :meth:`state_dict`; ``asarray`` moves a host array to the device."""
        self.steps = int(state["steps"])
        self.state = {}
        for key, value in state["slots"].items():
            name, _, slot = key.rpartition(".")
            if slot not in self.slots:
                raise CheckpointError(
                    f"optimizer state has slot {slot!r} that {type(self).__name__} does not use"
                )
            self.state.setdefault(name, {})[slot] = asarray(value)


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``."""

    def update(self, param, grad, slots, lr):
        return param - lr * grad


class Momentum(Optimizer):
    """Heavy-ball momentum as torch.optim.SGD: ``b = mu * b + g``; ``p -= lr * b``.

    With ``nesterov=True`` the step uses the look-ahead ``g + mu * b`` instead of ``b``.
    """

    slots = ("momentum",)

    def __init__(self, xp, *, lr: float, momentum: float = 0.9, nesterov: bool = False):
        super().__init__(xp, lr=lr)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1); got {momentum}")
        self.momentum = float(momentum)
        self.nesterov = nesterov

    def update(self, param, grad, slots, lr):
        buf = self.momentum * slots["momentum"] + grad
        slots["momentum"] = buf
        direction = grad + self.momentum * buf if self.nesterov else buf
        return param - lr * direction


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
    ):
        super().__init__(xp, lr=lr)
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


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


def make_optimizer(
    name: str,
    xp,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Optimizer:
    """Build an optimizer by name: sgd, momentum, nesterov, adam, adamw.

    ``weight_decay`` is used by ``adamw`` only (decoupled); for the others put the L2 penalty
    in the model (``MLP(weight_decay=...)``).
    """
    if name == "sgd":
        return SGD(xp, lr=lr)
    if name in ("momentum", "nesterov"):
        return Momentum(xp, lr=lr, momentum=momentum, nesterov=name == "nesterov")
    if name == "adam":
        return Adam(xp, lr=lr, betas=betas, eps=eps)
    if name == "adamw":
        return Adam(xp, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
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
            return self.base_lr * self.gamma ** (step // (self.step_epochs * self.steps_per_epoch))
        if self.kind == "cosine":
            total = self.epochs * self.steps_per_epoch - self.warmup_steps
            progress = min(1.0, (step - self.warmup_steps) / max(1, total))
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (
                1 + math.cos(math.pi * progress)
            )
        return self.base_lr
