"""What a checkpoint must hold, checked when it is read and before anything uses it.

Each field of the JSON header has its type and range (a string where a bool belongs is refused,
not read as True), and the arrays must agree with the header: every layer's weight and bias with
the shapes the model config implies, optimizer slots matching the parameters and the step
counter, a history as long as the epoch count, distinct classes, finite values everywhere, and
the scaling arrays wherever the header says the inputs were scaled.

The schema is written out here rather than in a validator library's language: most of its rules
relate fields to each other and to arrays (which JSON Schema does not express), the field rules
are one short table, and the messages name the field and what it must be, in words.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import DTYPES
from ..core.ops import ACTIVATIONS, LOSSES
from ..core.optim import make_optimizer
from ..data.inputs import SCALING_METHODS
from ..errors import CheckpointError, ConfigError
from .config import TrainConfig

GROUPS = ("params", "optimizer", "best", "scaling")


class _Wrong(Exception):
    """One thing wrong with the checkpoint, in words, and the part it is in (``MODEL_PART``,
    ``STATE``) where it has one; :func:`check` names the file."""

    def __init__(self, detail: str, part: str | None = None):
        super().__init__(detail)
        self.part = part


def _integer(low: int):
    return lambda v: _is_int(v) and v >= low, f"an integer >= {low}"


def _number(low: float, high: float, *, open_high: bool = False, infinite: bool = False):
    def test(v):
        if not _is_number(v) or math.isnan(v) or (math.isinf(v) and not infinite):
            return False
        return low <= v and (v < high if open_high else v <= high)

    return test, f"a number in [{low:g}, {high:g}{')' if open_high else ']'}"


def _one_of(choices):
    return lambda v: isinstance(v, str) and v in choices, f"one of {', '.join(choices)}"


def _optional(rule):
    test, what = rule
    return lambda v: v is None or test(v), f"{what}, or null"


_BOOLEAN = (lambda v: isinstance(v, bool), "true or false")
_OBJECT = (lambda v: isinstance(v, dict), "a JSON object")
_LIST = (lambda v: isinstance(v, list), "a list")
_SIZES = (
    lambda v: isinstance(v, list) and len(v) >= 2 and all(_is_int(s) and s > 0 for s in v),
    "a list of at least two positive integers",
)

# field -> (test, what it must be); required unless named in the part's *_OPTIONAL
MODEL = {
    "layer_sizes": _SIZES, "activation": _one_of(tuple(ACTIVATIONS)),
    "loss": _one_of(tuple(LOSSES)), "dropout": _number(0, 1, open_high=True),
    "l2": _number(0, math.inf), "init": _one_of(("auto", "he", "glorot")),
    "dtype": _one_of(DTYPES), "seed": _integer(0),
}  # fmt: skip
TRAINER = {
    "epoch": _integer(0), "config": _OBJECT, "history": _LIST, "optimizer_steps": _integer(0),
    "best": _OBJECT, "stopped_early": _BOOLEAN,
    "initial_loss": _optional(_number(-math.inf, math.inf)),
}  # fmt: skip
BEST = {"value": _number(-math.inf, math.inf, infinite=True), "epoch": _integer(0),
        "wait": _integer(0)}  # fmt: skip
TRAINER_OPTIONAL = ("stopped_early", "initial_loss")  # absent from early format-2 checkpoints
MODEL_OPTIONAL = tuple(MODEL)[1:]  # MLP's defaults apply; a resume names each one that differs
MODEL_PART, STATE = "model config", "trainer state"


def check(ckpt: dict) -> None:
    """Refuse a checkpoint (as :func:`xpmlp.train.checkpoint.load` returns it) whose header or
    arrays are malformed or disagree, with one line naming the file and what is wrong.

    Parts a checkpoint may lack (a model config, a trainer state) are checked where present;
    whoever needs them refuses their absence.

    Raises
    ------
    CheckpointError
    """
    try:
        _check(ckpt)
    except _Wrong as exc:
        path = ckpt["path"]
        where = {MODEL_PART: f"checkpoint {path} has a malformed model config",
                 STATE: f"the trainer state is malformed in checkpoint {path}"}  # fmt: skip
        raise CheckpointError(
            f"{where.get(exc.part, f'checkpoint {path} is invalid')}: {exc}"
        ) from None


def _check(ckpt: dict) -> None:
    meta = ckpt["meta"]
    for group in GROUPS:
        for name, array in (ckpt[group] or {}).items():
            _check_array(f"{group}/{name}", array)
    model = _section(meta, "model", MODEL, part=MODEL_PART, optional=MODEL_OPTIONAL)
    shapes = _param_shapes(model["layer_sizes"]) if model else None
    if model is not None:
        _same_params("params", ckpt["params"], shapes)
        if ckpt["best"] is not None:
            _same_params("best", ckpt["best"], shapes)
    params = shapes or {name: value.shape for name, value in ckpt["params"].items()}
    slots = _slots(ckpt["optimizer"], params)
    if meta.get("format") != 1:  # format 1 kept no training config; it is never resumed
        trainer = _section(meta, "trainer", TRAINER, optional=TRAINER_OPTIONAL, part=STATE)
        _check_trainer(trainer, slots, params, has_best=ckpt["best"] is not None)
    _check_scaling(meta, ckpt["scaling"], model)
    _check_classes(meta.get("classes"))


def _check_array(key: str, array: np.ndarray) -> None:
    if array.dtype.kind != "f":
        raise _Wrong(f"{key} holds {array.dtype} values; expected floating-point numbers")
    bad = ~np.isfinite(array)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise _Wrong(
            f"{key} holds {array[at]} at index {at}; a checkpoint's values must be finite "
            "(the file was altered, or written by a run that diverged)"
        )


def _section(meta: dict, name: str, fields: dict, *, part: str, optional=()) -> dict | None:
    """``meta[name]`` checked field by field against ``fields``; None where absent. Other
    fields are left to whoever reads them (a model setting this xpmlp lacks is named there)."""
    section = meta.get(name)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise _Wrong(f"{name} is {_shown(section)}, not a JSON object", part)
    for field, (test, what) in fields.items():
        if field not in section:
            if field in optional:
                continue
            raise _Wrong(f"{name}.{field} is missing", part)
        if not test(section[field]):
            raise _Wrong(f"{name}.{field} is {_shown(section[field])}; expected {what}", part)
    return section


def _param_shapes(sizes: list[int]) -> dict[str, tuple]:
    """The parameters a model of these layer sizes has, with their shapes."""
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"layers.{i}.weight"], shapes[f"layers.{i}.bias"] = (fan_in, fan_out), (fan_out,)
    return shapes


def _same_params(group: str, arrays: dict, shapes: dict) -> None:
    for name, shape in shapes.items():
        if name not in arrays:
            raise _Wrong(f"{group}/{name} is missing (the model config has {len(shapes)} arrays)")
        if arrays[name].shape != shape:
            raise _Wrong(
                f"{group}/{name} has shape {arrays[name].shape}; the model config implies {shape}"
            )
    extra = sorted(set(arrays) - set(shapes))
    if extra:
        raise _Wrong(f"{group}/{extra[0]} is not a parameter of the model config's layers")


def _slots(optimizer: dict, params: dict) -> dict[str, set]:
    """Parameter name -> its optimizer slots; each slot has its parameter's shape."""
    slots: dict[str, set] = {}
    for key, value in optimizer.items():
        name, _, slot = key.rpartition(".")
        if name not in params:
            raise _Wrong(f"optimizer/{key} belongs to no parameter (there is no {name or key})")
        if value.shape != tuple(params[name]):
            raise _Wrong(
                f"optimizer/{key} has shape {value.shape}; its parameter has {tuple(params[name])}"
            )
        slots.setdefault(name, set()).add(slot)
    return slots


def _check_trainer(trainer: dict | None, slots: dict, params: dict, *, has_best: bool) -> None:
    if trainer is None:
        return
    try:
        config = TrainConfig.from_dict(trainer["config"])
    except (ConfigError, TypeError) as exc:
        raise _Wrong(f"trainer.config: {exc}", STATE) from None
    epoch, steps, history = trainer["epoch"], trainer["optimizer_steps"], trainer["history"]
    if len(history) != epoch:
        raise _Wrong(f"trainer.history has {len(history)} epochs; trainer.epoch is {epoch}", STATE)
    for i, record in enumerate(history):
        if not isinstance(record, dict) or record.get("epoch") != i + 1:
            raise _Wrong(f"trainer.history[{i}] is not the record of epoch {i + 1}", STATE)
    best = _section(trainer, "best", BEST, part=STATE)
    if best["epoch"] > epoch:
        raise _Wrong(f"best.epoch is {best['epoch']}, after trainer.epoch {epoch}", STATE)
    _check_early_stopping(config, best, stopped=trainer.get("stopped_early"), has_best=has_best)
    if (steps == 0) != (epoch == 0) or steps < epoch:
        raise _Wrong(
            f"trainer.optimizer_steps is {steps} after {epoch} epoch{'s' * (epoch != 1)}; "
            "every epoch takes at "
            "least one step",
            STATE,
        )
    expected = set(make_optimizer(config.optimizer, np, lr=1.0, inplace=False).slots)
    for name in params:
        found = slots.get(name, set())
        if found != (expected if steps else set()):
            shown = "/".join(sorted(found)) or "none"
            raise _Wrong(
                f"the optimizer state of {name} has slots {shown} after {steps} steps of "
                f"{config.optimizer}, which keeps {'/'.join(sorted(expected)) or 'none'}"
                + (" once it has stepped" if expected else ""),
                STATE,
            )


def _check_early_stopping(config: TrainConfig, best: dict, *, stopped, has_best: bool) -> None:
    """Best weights are kept, from the first epoch on, only by a run with early stopping."""
    if config.early_stopping is None:
        if has_best or stopped:
            what = "holds best weights" if has_best else "says it stopped early"
            raise _Wrong(f"it {what}, but trainer.config.early_stopping is null", STATE)
    elif has_best != (best["epoch"] > 0):
        raise _Wrong(
            f"best.epoch is {best['epoch']} but the best weights (best/...) are "
            + ("there" if has_best else "missing"),
            STATE,
        )


def _check_scaling(meta: dict, arrays: dict, model: dict | None) -> None:
    method = meta.get("scaling")
    if method is not None and method not in SCALING_METHODS:
        raise _Wrong(f"scaling is {_shown(method)}; expected one of {', '.join(SCALING_METHODS)}")
    data = meta.get("data")
    if data is not None and not isinstance(data, dict):
        raise _Wrong(f"data is {_shown(data)}; expected a JSON object")
    said = (data or {}).get("scaling")
    if said is not None and said != (method or "none"):
        raise _Wrong(f"data.scaling is {_shown(said)} but scaling is {_shown(method)}")
    if not arrays:
        if method not in (None, "none"):
            raise _Wrong(
                f"the model was trained on {method}-scaled inputs, but scaling/offset and "
                "scaling/factor are missing; it would predict on unscaled inputs"
            )
        return
    if set(arrays) != {"offset", "factor"}:
        raise _Wrong(f"scaling holds {', '.join(sorted(arrays))}; expected offset and factor")
    offset, factor = arrays["offset"], arrays["factor"]
    n_inputs = model["layer_sizes"][0] if model else offset.size
    for name, array in arrays.items():
        if array.shape not in ((), (n_inputs,)):
            raise _Wrong(
                f"scaling/{name} has shape {array.shape}; the model takes {n_inputs} inputs"
            )
    if not np.all(factor != 0):
        raise _Wrong("scaling/factor holds 0; inputs would be divided by zero")


def _check_classes(classes) -> None:
    """Distinct labels of one kind (their count against the model is checked where read)."""
    if classes is None:
        return
    if not isinstance(classes, list) or not (
        all(_is_int(c) for c in classes) or all(isinstance(c, str) and c for c in classes)
    ):
        raise _Wrong("classes must be a list of whole numbers, or of non-empty texts")
    seen = set()
    for label in classes:
        if label in seen:
            raise _Wrong(f"classes lists {_shown(label)} twice")
        seen.add(label)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shown(value) -> str:
    """A value for a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
